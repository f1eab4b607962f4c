//! The peer transport: Raft messages between brokers, framed over TCP.
//!
//! Each broker dials every other broker it must talk to and sends on that one connection;
//! it receives on the connections others dial to it. A frame is a 4-byte big-endian length
//! and an encoded `PeerFrame` that batches every message for that peer from one step of the
//! core; the receiver answers the frames it got with one byte on the same connection (at
//! most one per `ACK_DELAY`), so a sender notices a half-open connection (writes accepted,
//! nothing delivered) and redials.
//! Delivery is best effort: a full queue or a broken connection drops frames, and Raft
//! resends what matters. Nothing here blocks the driver.
//!
//! A connection opens with a handshake that names the protocol version and the dialling
//! broker: the acceptor sends a challenge, the dialler answers with its id and an HMAC of
//! the challenge under the cluster's shared secret. The acceptor then takes frames only in
//! that broker's name; a peer that cannot prove itself, or speaks another version, is
//! refused and logged. Without a secret (a development cluster) the id is taken on trust,
//! but still binds the connection.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::server::Event;

/// Frames queued for one peer before new ones are dropped.
const PEER_QUEUE: usize = 256;

/// Largest peer frame accepted.
pub const PEER_FRAME_MAX: usize = 64 << 20;

/// How long a connection attempt may take; a partitioned peer must not stall its queue.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long one batch of writes may take. A cut link can hold an open stream's data
/// forever; after this the connection is dropped and dialled again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long sent frames may go unacknowledged before the connection is redialled.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a receiver may hold the ack of a frame so that later frames share it; far
/// below `ACK_TIMEOUT`, so a live connection is never taken for a dead one.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Frames written in one vectored write at most (two slices each, far below `IOV_MAX`).
const WRITE_FRAMES_MAX: usize = 64;

/// How long an inbound connection may stay silent. Leaders heartbeat several times a
/// second, so a silent connection is a dead one (its peer dials a new one).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The peer protocol: its magic and version, first on every connection.
const MAGIC: &[u8; 4] = b"SLPR";
const VERSION: u8 = 1;

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this broker is to its peers, and the secret that proves it.
#[derive(Clone)]
pub struct Identity {
    /// This broker's id.
    pub id: i32,
    /// The cluster's shared secret (`peer_secret`); empty: ids are taken on trust.
    pub secret: Arc<[u8]>,
    /// TLS on every peer connection, both ways authenticated (`SSL` as
    /// `inter_broker_security_protocol`); none in the simulator.
    #[cfg(not(madsim))]
    pub tls: Option<Arc<crate::tls::PeerTls>>,
}

/// A peer connection's bytes: TCP, or TLS over it.
type PeerStream = Box<dyn crate::listeners::ClientStream>;

impl Identity {
    /// The dialler's stream to `addr`: TLS when the cluster runs it.
    async fn client_stream(&self, stream: TcpStream, addr: &str) -> anyhow::Result<PeerStream> {
        #[cfg(not(madsim))]
        if let Some(tls) = &self.tls {
            return tls.connect(stream, addr).await;
        }
        let _ = addr;
        Ok(Box::new(stream))
    }

    /// The acceptor's stream: TLS, with the dialler's certificate checked, when the
    /// cluster runs it.
    async fn server_stream(&self, stream: TcpStream) -> anyhow::Result<PeerStream> {
        #[cfg(not(madsim))]
        if let Some(tls) = &self.tls {
            return tls.accept(stream).await;
        }
        Ok(Box::new(stream))
    }
}

impl Identity {
    fn mac(&self, challenge: &[u8], id: i32) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(MAGIC);
        mac.update(challenge);
        mac.update(&id.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// A fresh challenge.
fn challenge() -> [u8; 16] {
    let mut out = [0u8; 16];
    crate::os_random(&mut out);
    out
}

/// The dialler's side of the handshake.
async fn prove(stream: &mut PeerStream, identity: &Identity) -> anyhow::Result<()> {
    let mut hello = [0u8; 21];
    stream.read_exact(&mut hello).await?;
    check_version(&hello[..5])?;
    let mac = identity.mac(&hello[5..], identity.id);
    let mut answer = Vec::with_capacity(41);
    answer.extend_from_slice(MAGIC);
    answer.push(VERSION);
    answer.extend_from_slice(&identity.id.to_be_bytes());
    answer.extend_from_slice(&mac);
    stream.write_all(&answer).await?;
    stream.flush().await?;
    Ok(())
}

/// The acceptor's side: the id the dialler proved.
async fn verify(stream: &mut PeerStream, identity: &Identity) -> anyhow::Result<i32> {
    let challenge = challenge();
    let mut hello = Vec::with_capacity(21);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&challenge);
    stream.write_all(&hello).await?;
    stream.flush().await?;
    let mut answer = [0u8; 41];
    stream.read_exact(&mut answer).await?;
    check_version(&answer[..5])?;
    let id = i32::from_be_bytes(answer[5..9].try_into().expect("four bytes"));
    let expected = identity.mac(&challenge, id);
    // Compared in time that does not depend on where the bytes differ.
    let differs = expected
        .iter()
        .zip(&answer[9..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if !identity.secret.is_empty() && differs != 0 {
        anyhow::bail!("broker {id} did not prove the shared secret (peer_secret differs?)");
    }
    Ok(id)
}

fn check_version(header: &[u8]) -> anyhow::Result<()> {
    if &header[..4] != MAGIC {
        anyhow::bail!("not a seedlog peer (no SLPR header)");
    }
    if header[4] != VERSION {
        anyhow::bail!(
            "peer speaks peer protocol version {}; this broker speaks {VERSION}",
            header[4]
        );
    }
    Ok(())
}

/// Outgoing connections, one task per peer.
pub struct Peers {
    senders: BTreeMap<i32, mpsc::Sender<Bytes>>,
    tasks: Vec<JoinHandle<()>>,
    identity: Identity,
}

impl Peers {
    /// Starts a sender per peer (`id -> host:port` of its peer listener).
    pub fn start(peers: &BTreeMap<i32, String>, identity: Identity) -> Self {
        let mut started = Peers {
            senders: BTreeMap::new(),
            tasks: Vec::new(),
            identity,
        };
        for (&id, addr) in peers {
            started.add(id, addr.clone());
        }
        started
    }

    /// Who this broker is to its peers.
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    /// Dials `id` at `addr` from now on (a broker that joined after start, or moved).
    pub fn add(&mut self, id: i32, addr: String) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        // Replacing the sender ends the old task once its queue drains.
        self.senders.insert(id, tx);
        let identity = self.identity.clone();
        self.tasks
            .push(tokio::spawn(send_to_peer(id, addr, rx, identity)));
    }

    /// Queues a frame for `to`; dropped if the peer is unknown or its queue is full.
    pub fn send(&self, to: i32, frame: Bytes) {
        match self.senders.get(&to) {
            Some(tx) => {
                if tx.try_send(frame).is_err() {
                    debug!(peer = to, "peer queue full; frame dropped");
                }
            }
            None => debug!(peer = to, "no address for peer; frame dropped"),
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn send_to_peer(
    id: i32,
    addr: String,
    mut frames: mpsc::Receiver<Bytes>,
    identity: Identity,
) {
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = frames.recv().await {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(peer = id, %addr, error = %e, "peer unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue; // `first` is dropped: Raft will send again.
            }
            Err(_) => {
                debug!(peer = id, %addr, "peer connect timed out");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let secured = async {
            let mut stream = identity.client_stream(stream, &addr).await?;
            prove(&mut stream, &identity).await?;
            anyhow::Ok(stream)
        };
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, secured).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                warn!(peer = id, %addr, error = %format!("{e:#}"), "peer handshake failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(_) => {
                debug!(peer = id, %addr, "peer handshake timed out");
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (acks, mut writer) = tokio::io::split(stream);
        let acked = Arc::new(Mutex::new(Instant::now()));
        let ack_reader = tokio::spawn(read_acks(acks, acked.clone()));
        let mut next = Some(first);
        // When the oldest write not yet followed by an ack went out.
        let mut unacked_since: Option<Instant> = None;
        while let Some(frame) = next.take() {
            let last_ack = *acked.lock().expect("ack clock");
            match unacked_since {
                Some(since) if last_ack >= since => unacked_since = None,
                Some(since) if since.elapsed() > ACK_TIMEOUT => {
                    // A half-open connection (a cut link, a peer that restarted) accepts
                    // writes and delivers nothing: only the missing acks tell.
                    debug!(peer = id, "peer stopped acknowledging; reconnecting");
                    break;
                }
                _ => {}
            }
            // Every frame already queued goes out in the same write.
            let mut batch = vec![frame];
            while batch.len() < WRITE_FRAMES_MAX {
                match frames.try_recv() {
                    Ok(frame) => batch.push(frame),
                    Err(_) => break,
                }
            }
            let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                write_frames(&mut writer, &batch).await?;
                // The simulator's stream sends only on flush.
                writer.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    unacked_since.get_or_insert_with(Instant::now);
                }
                Ok(Err(e)) => {
                    debug!(peer = id, error = %e, "peer connection lost");
                    break;
                }
                Err(_) => {
                    debug!(peer = id, "peer write stalled; reconnecting");
                    break;
                }
            }
            next = frames.recv().await;
        }
        ack_reader.abort();
    }
}

/// Notes the time of every ack byte the peer sends back on our connection.
async fn read_acks(mut acks: ReadHalf<PeerStream>, acked: Arc<Mutex<Instant>>) {
    while acks.read_u8().await.is_ok() {
        *acked.lock().expect("ack clock") = Instant::now();
    }
}

/// Writes `frames`, each behind its 4-byte length, in one vectored write when the socket
/// takes it all. A length written on its own went out as a packet of its own, and woke the
/// receiver once for it and once more for the frame.
async fn write_frames(stream: &mut WriteHalf<PeerStream>, frames: &[Bytes]) -> std::io::Result<()> {
    let lengths: Vec<[u8; 4]> = frames
        .iter()
        .map(|frame| (frame.len() as u32).to_be_bytes())
        .collect();
    let mut slices: Vec<IoSlice<'_>> = lengths
        .iter()
        .zip(frames)
        .flat_map(|(length, frame)| [IoSlice::new(length), IoSlice::new(frame)])
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = stream.write_vectored(rest).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Accepts peer connections and forwards their frames to the driver.
pub async fn accept_peers(listener: TcpListener, events: mpsc::Sender<Event>, identity: Identity) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                debug!(%from, "peer connected");
                tokio::spawn(read_peer(stream, events.clone(), identity.clone()));
            }
            Err(e) => warn!(error = %e, "peer accept failed"),
        }
    }
}

async fn read_peer(stream: TcpStream, events: mpsc::Sender<Event>, identity: Identity) {
    let address = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let proven = async {
        let mut stream = identity.server_stream(stream).await?;
        let sender = verify(&mut stream, &identity).await?;
        anyhow::Ok((stream, sender))
    };
    let (stream, sender) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, proven).await {
        Ok(Ok(proven)) => proven,
        Ok(Err(e)) => {
            return warn!(%address, error = %format!("{e:#}"), "refusing a peer connection");
        }
        Err(_) => return debug!(%address, "peer handshake timed out"),
    };
    let (frames, acks) = tokio::io::split(stream);
    let received = Arc::new(Notify::new());
    let acker = tokio::spawn(send_acks(acks, received.clone()));
    let receiver = identity.id;
    forward_frames(frames, (sender, receiver), events, &received).await;
    // The acker holds the write half: the connection closes once it is gone too.
    acker.abort();
}

/// Hands each frame to the driver until the connection ends, goes silent or breaks a rule.
async fn forward_frames(
    mut frames: ReadHalf<PeerStream>,
    (sender, _receiver): (i32, i32),
    events: mpsc::Sender<Event>,
    received: &Notify,
) {
    while let Ok(Ok(size)) = tokio::time::timeout(IDLE_TIMEOUT, frames.read_u32()).await {
        if size as usize > PEER_FRAME_MAX {
            warn!(size, "closing peer connection: frame too large");
            return;
        }
        let mut frame = BytesMut::zeroed(size as usize);
        if frames.read_exact(&mut frame).await.is_err() {
            return;
        }
        let frame = frame.freeze();
        #[cfg(madsim)]
        let frame = wire::tap(sender, _receiver, frame);
        if events.send(Event::Peer { sender, frame }).await.is_err() {
            return;
        }
        received.notify_one();
    }
}

/// Answers frames received with one byte each `ACK_DELAY` at most: the sender's proof that
/// the connection still carries. Frames that arrive while an ack waits share it; a byte
/// per frame had cost a packet, a write and a wakeup of the sender for every frame.
async fn send_acks(mut acks: WriteHalf<PeerStream>, received: Arc<Notify>) {
    loop {
        received.notified().await;
        tokio::time::sleep(ACK_DELAY).await;
        if acks.write_u8(0).await.is_err() || acks.flush().await.is_err() {
            return; // The reader notices the end, or the sender redials.
        }
    }
}

/// The simulator's hand on the wire: it sees each peer frame as it arrives and may damage
/// it (what a checksum on the way let through). Per thread, as madsim runs a simulation on
/// one; without a tap, frames pass untouched.
#[cfg(madsim)]
pub mod wire {
    use std::cell::RefCell;

    use bytes::Bytes;

    /// A tap: (sender, receiver, frame) to the frame delivered.
    pub type Tap = Box<dyn FnMut(i32, i32, Bytes) -> Bytes>;

    thread_local! {
        static TAP: RefCell<Option<Tap>> = const { RefCell::new(None) };
    }

    /// Sets (or with `None` removes) this thread's tap.
    pub fn set_tap(tap: Option<Tap>) {
        TAP.with(|t| *t.borrow_mut() = tap);
    }

    pub(super) fn tap(sender: i32, receiver: i32, frame: Bytes) -> Bytes {
        TAP.with(|t| match t.borrow_mut().as_mut() {
            Some(tap) => tap(sender, receiver, frame),
            None => frame,
        })
    }
}
