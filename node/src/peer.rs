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
//! A connection opens with a handshake that agrees the protocol version and names the
//! dialling broker: the acceptor sends a challenge that offers the newest version it speaks,
//! the dialler answers with the version both speak (the lower of the two newest), its id and
//! an HMAC of the challenge under the cluster's shared secret. The acceptor then takes frames
//! only in that broker's name, in that version; a peer that cannot prove itself, or answers
//! a version the acceptor does not speak, is refused and logged. Without a secret (a
//! development cluster) the id is taken on trust, but still binds the connection.
//!
//! Versions: 1 frames a `PeerFrame` behind its length; 2 adds a CRC32C of the length and the
//! frame, so a bit the network's checksums let through (in a term, a commit index, a batch)
//! closes the connection instead of misleading Raft. Brokers of version 1 made no offer and
//! refused a handshake that named another version, so the handshake keeps their layout: the
//! offer rides in the challenge, which they read as random bytes, and a version 1 acceptor
//! is answered in version 1. A rolling upgrade therefore needs nothing: each connection
//! speaks the newest version both ends know, the newest once both ends run a binary with it.
//! Version 3 keeps version 2's layout, but its CRC skips what the own CRC of each long record
//! batch of a partition's append covers, reading that CRC instead (`PeerBytes::checksum`):
//! the follower checks every such batch against its CRC before it takes it, so reading the
//! batch for the frame's CRC as well cost the leader one pass over every replicated byte
//! per follower, and each follower one more.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use seedlog_core::cluster::records::{self, PeerBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use seedlog_core::canary::{is_planted, Canary};

use crate::server::{read_frame, Event};

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

/// The peer protocol's magic and the handshake's layout, first on every connection. Version
/// 1 brokers refuse any other layout byte, so it stays 1 whatever version is agreed.
const MAGIC: &[u8; 4] = b"SLPR";
const HANDSHAKE: u8 = 1;

/// The newest peer protocol version this binary speaks.
pub const PROTOCOL_NEWEST: u8 = 3;

/// The start of an acceptor's challenge that offers a version: then that version, then 12
/// random bytes. A version 1 acceptor's random challenge starts so once in 2^24 handshakes:
/// the dialler then answers a version that acceptor refuses, and the next dial, with a new
/// challenge, succeeds.
const OFFER: &[u8; 3] = b"SLv";

/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this broker is to its peers, and the secret that proves it.
#[derive(Clone)]
pub struct Identity {
    /// This broker's id.
    pub id: i32,
    /// The newest peer protocol version it speaks: [`PROTOCOL_NEWEST`], or lower where the
    /// simulator plays an older binary.
    pub newest: u8,
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
    /// The HMAC that proves `id`; from version 2 on it covers the agreed version too, so a
    /// man in the middle cannot talk two brokers down to an older one.
    fn mac(&self, challenge: &[u8], id: i32, version: u8) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes a key of any length.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(MAGIC);
        mac.update(challenge);
        mac.update(&id.to_be_bytes());
        if version >= 2 {
            mac.update(&[version]);
        }
        mac.finalize().into_bytes().into()
    }

    /// The layout byte this broker writes and expects. The canary `StrictPeerVersion` is
    /// the upgrade done naively: the newest version named there, and nothing else taken.
    fn layout(&self) -> u8 {
        if is_planted(Canary::StrictPeerVersion) {
            self.newest
        } else {
            HANDSHAKE
        }
    }
}

/// A fresh challenge.
fn challenge() -> [u8; 16] {
    let mut out = [0u8; 16];
    crate::os_random(&mut out);
    out
}

/// The dialler's side of the handshake with broker `to`: the version agreed.
async fn prove(stream: &mut PeerStream, identity: &Identity, to: i32) -> anyhow::Result<u8> {
    let mut hello = [0u8; 21];
    stream.read_exact(&mut hello).await?;
    let checked = check_header(&hello[..5], identity.layout());
    #[cfg(madsim)]
    if let Err(e) = &checked {
        wire::handshake(identity.id, to, Err(format!("{e:#}")));
    }
    checked?;
    let challenge = &hello[5..];
    let offered = if is_planted(Canary::StrictPeerVersion) {
        identity.newest // The naive upgrade: the layout byte named it, checked above.
    } else {
        // A version 1 acceptor offers nothing.
        challenge
            .strip_prefix(OFFER)
            .map_or(1, |rest| rest[0].max(1))
    };
    let version = identity.newest.min(offered);
    let mac = identity.mac(challenge, identity.id, version);
    let mut answer = Vec::with_capacity(41);
    answer.extend_from_slice(MAGIC);
    answer.push(version);
    answer.extend_from_slice(&identity.id.to_be_bytes());
    answer.extend_from_slice(&mac);
    stream.write_all(&answer).await?;
    stream.flush().await?;
    let _ = to; // Named to the simulator only.
    Ok(version)
}

/// The acceptor's side: the id the dialler proved and the version agreed.
async fn verify(stream: &mut PeerStream, identity: &Identity) -> anyhow::Result<(i32, u8)> {
    let mut challenge = challenge();
    if identity.newest > 1 && !is_planted(Canary::StrictPeerVersion) {
        challenge[..3].copy_from_slice(OFFER);
        challenge[3] = identity.newest;
    }
    let mut hello = Vec::with_capacity(21);
    hello.extend_from_slice(MAGIC);
    hello.push(identity.layout());
    hello.extend_from_slice(&challenge);
    stream.write_all(&hello).await?;
    stream.flush().await?;
    let mut answer = [0u8; 41];
    stream.read_exact(&mut answer).await?;
    let id = i32::from_be_bytes(answer[5..9].try_into().expect("four bytes"));
    let checked = check_answer(&answer, &challenge, id, identity);
    #[cfg(madsim)]
    wire::handshake(
        id,
        identity.id,
        checked.as_ref().map(|v| *v).map_err(|e| format!("{e:#}")),
    );
    Ok((id, checked?))
}

/// The version a dialler's answer agreed, if this broker speaks it and the MAC holds.
fn check_answer(
    answer: &[u8; 41],
    challenge: &[u8],
    id: i32,
    identity: &Identity,
) -> anyhow::Result<u8> {
    if &answer[..4] != MAGIC {
        anyhow::bail!("not a seedlog peer (no SLPR header)");
    }
    let version = answer[4];
    let speaks = if is_planted(Canary::StrictPeerVersion) {
        version == identity.newest
    } else {
        (1..=identity.newest).contains(&version)
    };
    if !speaks {
        anyhow::bail!(
            "broker {id} answered peer protocol version {version}; this broker speaks 1 to {}",
            identity.newest
        );
    }
    let expected = identity.mac(challenge, id, version);
    // Compared in time that does not depend on where the bytes differ.
    let differs = expected
        .iter()
        .zip(&answer[9..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if !identity.secret.is_empty() && differs != 0 {
        anyhow::bail!("broker {id} did not prove the shared secret (peer_secret differs?)");
    }
    Ok(version)
}

/// Checks an acceptor's hello: the magic, and the handshake layout this broker reads.
fn check_header(header: &[u8], layout: u8) -> anyhow::Result<()> {
    if &header[..4] != MAGIC {
        anyhow::bail!("not a seedlog peer (no SLPR header)");
    }
    if header[4] != layout {
        anyhow::bail!(
            "peer speaks peer protocol version {}; this broker speaks {layout}",
            header[4]
        );
    }
    Ok(())
}

/// Outgoing connections, one task per peer.
pub struct Peers {
    senders: BTreeMap<i32, mpsc::Sender<PeerBytes>>,
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
    pub fn send(&self, to: i32, frame: PeerBytes) {
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
    mut frames: mpsc::Receiver<PeerBytes>,
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
            let version = prove(&mut stream, &identity, id).await?;
            anyhow::Ok((stream, version))
        };
        let (stream, version) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, secured).await {
            Ok(Ok(secured)) => secured,
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
        debug!(peer = id, version, "peer connection open");
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
                write_frames(&mut writer, &batch, version).await?;
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

/// A frame's header in `version`: its length, and from version 2 on a CRC32C of that
/// length and the frame (version 3's as `PeerBytes::checksum` takes it).
fn frame_header(frame: &PeerBytes, version: u8) -> ([u8; 8], usize) {
    let length = (frame.len() as u32).to_be_bytes();
    let crc = match version {
        ..=1 => None,
        2 => Some(
            frame
                .chunks()
                .iter()
                .fold(crc32c::crc32c(&length), |crc, piece| {
                    crc32c::crc32c_append(crc, piece)
                }),
        ),
        _ => Some(frame.checksum(crc32c::crc32c(&length))),
    };
    header(length, crc)
}

/// The header a frame that arrived should have come behind, in `version`.
fn received_header(frame: &Bytes, version: u8) -> ([u8; 8], usize) {
    if version < 3 {
        return frame_header(&PeerBytes::from(frame.clone()), version);
    }
    let length = (frame.len() as u32).to_be_bytes();
    let crc = records::received_checksum(crc32c::crc32c(&length), frame);
    header(length, Some(crc))
}

fn header(length: [u8; 4], crc: Option<u32>) -> ([u8; 8], usize) {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&length);
    match crc {
        None => (header, 4),
        Some(crc) => {
            header[4..].copy_from_slice(&crc.to_be_bytes());
            (header, 8)
        }
    }
}

/// The most pieces one `writev` takes (Linux's `IOV_MAX`).
const WRITEV_MAX: usize = 1024;

/// Writes `frames`, each behind its header, in as few vectored writes as the socket takes.
/// A header written on its own went out as a packet of its own, and woke the receiver once
/// for it and once more for the frame.
async fn write_frames(
    stream: &mut WriteHalf<PeerStream>,
    frames: &[PeerBytes],
    version: u8,
) -> std::io::Result<()> {
    let headers: Vec<([u8; 8], usize)> = frames
        .iter()
        .map(|frame| frame_header(frame, version))
        .collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 3);
    for ((header, len), frame) in headers.iter().zip(frames) {
        slices.push(IoSlice::new(&header[..*len]));
        slices.extend(frame.chunks().iter().map(|chunk| IoSlice::new(chunk)));
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let at_most = rest.len().min(WRITEV_MAX);
        let written = stream.write_vectored(&rest[..at_most]).await?;
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
        let (sender, version) = verify(&mut stream, &identity).await?;
        anyhow::Ok((stream, sender, version))
    };
    let (stream, sender, version) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, proven).await {
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
    forward_frames(frames, version, (sender, receiver), events, &received).await;
    // The acker holds the write half: the connection closes once it is gone too.
    acker.abort();
}

/// Hands each frame to the driver until the connection ends, goes silent or breaks a rule
/// (too large; from version 2 on, a CRC that does not hold: the sender redials and Raft
/// sends again what was lost).
async fn forward_frames(
    mut frames: ReadHalf<PeerStream>,
    version: u8,
    (sender, _receiver): (i32, i32),
    events: mpsc::Sender<Event>,
    received: &Notify,
) {
    while let Ok(Ok(size)) = tokio::time::timeout(IDLE_TIMEOUT, frames.read_u32()).await {
        if size as usize > PEER_FRAME_MAX {
            warn!(
                peer = sender,
                size, "closing peer connection: frame too large"
            );
            return;
        }
        let crc = if version >= 2 {
            match frames.read_u32().await {
                Ok(crc) => Some(crc),
                Err(_) => return,
            }
        } else {
            None
        };
        let Some(frame) = read_frame(&mut frames, size as usize).await else {
            return;
        };
        let frame = frame.freeze();
        if let Some(crc) = crc {
            let (header, _) = received_header(&frame, version);
            if header[4..] != crc.to_be_bytes() {
                warn!(
                    peer = sender,
                    size, "closing peer connection: a frame failed its CRC"
                );
                return;
            }
        }
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

    /// Hears each handshake's outcome: (dialler, acceptor, the version agreed or why it
    /// was refused), from the side that decided it.
    pub type Handshakes = Box<dyn FnMut(i32, i32, Result<u8, String>)>;

    thread_local! {
        static TAP: RefCell<Option<Tap>> = const { RefCell::new(None) };
        static HANDSHAKES: RefCell<Option<Handshakes>> = const { RefCell::new(None) };
    }

    /// Sets (or with `None` removes) this thread's handshake listener.
    pub fn set_handshakes(listener: Option<Handshakes>) {
        HANDSHAKES.with(|h| *h.borrow_mut() = listener);
    }

    pub(super) fn handshake(dialler: i32, acceptor: i32, outcome: Result<u8, String>) {
        HANDSHAKES.with(|h| {
            if let Some(listener) = h.borrow_mut().as_mut() {
                listener(dialler, acceptor, outcome);
            }
        });
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

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn identity(id: i32, newest: u8, secret: &str) -> Identity {
        Identity {
            id,
            newest,
            secret: secret.as_bytes().into(),
            tls: None,
        }
    }

    fn run<F: std::future::Future>(test: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(test)
    }

    /// A connected pair of peer streams: (dialler's, acceptor's).
    async fn pair() -> (PeerStream, PeerStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let dialled: PeerStream = Box::new(dialled.expect("connect"));
        let accepted: PeerStream = Box::new(accepted.expect("accept").0);
        (dialled, accepted)
    }

    /// The handshake between a dialler and an acceptor speaking up to the given versions:
    /// what each side made of it.
    fn handshake(
        dialler: Identity,
        acceptor: Identity,
    ) -> (anyhow::Result<u8>, anyhow::Result<(i32, u8)>) {
        run(async move {
            let (mut d, mut a) = pair().await;
            let to = acceptor.id;
            tokio::join!(prove(&mut d, &dialler, to), verify(&mut a, &acceptor))
        })
    }

    #[test]
    fn each_connection_speaks_the_newest_version_both_ends_know() {
        for (d, a, agreed) in [
            (2, 2, 2),
            (1, 2, 1),
            (2, 1, 1),
            (1, 1, 1),
            (3, 2, 2),
            (2, 3, 2),
            (3, 3, 3),
            (3, 1, 1),
        ] {
            let (proved, verified) = handshake(identity(1, d, "s"), identity(2, a, "s"));
            assert_eq!(
                proved.expect("dialler"),
                agreed,
                "dialler {d}, acceptor {a}"
            );
            assert_eq!(
                verified.expect("acceptor"),
                (1, agreed),
                "dialler {d}, acceptor {a}"
            );
        }
    }

    #[test]
    fn a_version_the_acceptor_does_not_speak_or_a_wrong_secret_is_refused() {
        let (_, verified) = handshake(identity(1, 2, "s"), identity(2, 2, "other"));
        let refusal = format!("{:#}", verified.expect_err("a wrong secret"));
        assert!(
            refusal.contains("did not prove the shared secret"),
            "{refusal}"
        );
        // A dialler that answers a version above the acceptor's offer (a forged answer).
        run(async {
            let (mut d, mut a) = pair().await;
            let acceptor = identity(2, 1, "");
            let forged = async {
                let mut hello = [0u8; 21];
                d.read_exact(&mut hello).await.expect("hello");
                let mut answer = Vec::from(*MAGIC);
                answer.push(2);
                answer.extend_from_slice(&1i32.to_be_bytes());
                answer.extend_from_slice(&[0; 32]);
                d.write_all(&answer).await.expect("answer");
            };
            let (_, verified) = tokio::join!(forged, verify(&mut a, &acceptor));
            let refusal = format!(
                "{:#}",
                verified.expect_err("version 2 to a version 1 broker")
            );
            assert!(
                refusal.contains("answered peer protocol version 2"),
                "{refusal}"
            );
        });
    }

    #[test]
    fn the_agreed_version_is_under_the_mac() {
        // A man in the middle rewrites a version 2 answer to version 1: the MAC no longer
        // holds.
        let dialler = identity(1, 2, "s");
        let acceptor = identity(2, 2, "s");
        run(async move {
            let (mut d, mut a) = pair().await;
            let middle = async {
                let mut hello = [0u8; 21];
                d.read_exact(&mut hello).await.expect("hello");
                let mac = dialler.mac(&hello[5..], 1, 2);
                let mut answer = Vec::from(*MAGIC);
                answer.push(1);
                answer.extend_from_slice(&1i32.to_be_bytes());
                answer.extend_from_slice(&mac);
                d.write_all(&answer).await.expect("answer");
            };
            let (_, verified) = tokio::join!(middle, verify(&mut a, &acceptor));
            assert!(verified.is_err(), "a downgraded answer was taken");
        });
    }

    /// Frames written in `version` and read back; the bit `flip` (if any) is flipped on
    /// the way. The frames the reader forwarded.
    fn through(version: u8, frames: &[&[u8]], flip: Option<usize>) -> Vec<Bytes> {
        let frames = (frames.iter())
            .map(|f| Bytes::copy_from_slice(f).into())
            .collect();
        through_pieces(version, frames, flip)
    }

    fn through_pieces(version: u8, frames: Vec<PeerBytes>, flip: Option<usize>) -> Vec<Bytes> {
        run(async move {
            let (d, a) = pair().await;
            let (_, mut writer) = tokio::io::split(d);
            let (reader, _) = tokio::io::split(a);
            // What write_frames sends: each frame behind its header.
            let (w, mut r) = tokio::io::duplex(1 << 16);
            {
                let (_, mut dw) = tokio::io::split(Box::new(w) as PeerStream);
                write_frames(&mut dw, &frames, version)
                    .await
                    .expect("write");
            }
            let mut wire = Vec::new();
            r.read_to_end(&mut wire).await.expect("read back");
            let laid_out: Vec<u8> = (frames.iter())
                .flat_map(|frame| {
                    let (header, len) = frame_header(frame, version);
                    [&header[..len], &frame.to_bytes()[..]].concat()
                })
                .collect();
            assert_eq!(wire, laid_out);
            if let Some(bit) = flip {
                wire[bit / 8] ^= 1 << (bit % 8);
            }
            writer.write_all(&wire).await.expect("write");
            drop(writer);
            let (events, mut out) = mpsc::channel(16);
            forward_frames(reader, version, (1, 2), events, &Notify::new()).await;
            let mut got = Vec::new();
            while let Ok(Event::Peer { frame, .. }) = out.try_recv() {
                got.push(frame);
            }
            got
        })
    }

    #[test]
    fn a_frame_in_pieces_arrives_whole_under_its_crc() {
        use prost::Message as _;
        use seedlog_core::cluster::records::TopicRef;
        use seedlog_core::cluster::records::{GroupMessage, PeerFrame};
        use seedlog_core::consensus::eraftpb::MessageType;
        use seedlog_core::consensus::eraftpb::{Entry, Message};
        // Three batches a partition's leader appends: version 3 leaves them to their CRCs.
        let entries = (1..=3)
            .map(|index| Entry {
                index,
                data: seedlog_core::wire::record_batch([(None, &[index as u8; 5000][..], 0)]),
                ..Entry::default()
            })
            .collect();
        let frame = PeerFrame {
            from: 1,
            messages: vec![GroupMessage {
                partition: Some(TopicRef::default()),
                message: Some(Message {
                    msg_type: MessageType::MsgAppend as i32,
                    entries,
                    ..Message::default()
                }),
                ..GroupMessage::default()
            }],
            ..PeerFrame::default()
        };
        let pieces = frame.clone().encode_shared();
        assert!(
            pieces.chunks().len() > 3,
            "{} pieces",
            pieces.chunks().len()
        );
        for version in [1, 2, 3] {
            let got = through_pieces(version, vec![pieces.clone(), pieces.clone()], None);
            assert_eq!(got.len(), 2);
            for bytes in got {
                assert_eq!(PeerFrame::decode(bytes).expect("decodes"), frame);
            }
        }
        // A bit flipped in the second piece (a batch's records) of a version 2 frame: it
        // does not arrive. In version 3 it arrives, to fail the batch's own CRC.
        let bit = (8 + pieces.chunks()[0].len() + 100) * 8;
        assert!(through_pieces(2, vec![pieces.clone()], Some(bit)).is_empty());
        let got = through_pieces(3, vec![pieces.clone()], Some(bit));
        let decoded = PeerFrame::decode(got[0].clone()).expect("decodes");
        let data = &decoded.messages[0]
            .message
            .as_ref()
            .expect("message")
            .entries[0]
            .data;
        let (batch, _) = seedlog_core::batch::BatchView::split_first(data).expect("a batch");
        assert!(!batch.crc_ok());
        // A bit flipped in its base offset, which no batch CRC covers: it does not arrive.
        let bit = (8 + pieces.chunks()[0].len() + 3) * 8;
        assert!(through_pieces(3, vec![pieces], Some(bit)).is_empty());
    }

    #[test]
    fn a_frame_damaged_on_the_way_closes_a_version_2_connection() {
        let frames: [&[u8]; 2] = [b"first frame", b"second frame"];
        assert_eq!(through(2, &frames, None), frames);
        // A flip in the second frame: the first arrives, the second does not.
        let second = (8 + frames[0].len() + 8 + 3) * 8 + 5;
        assert_eq!(through(2, &frames, Some(second)), frames[..1]);
        // A flip in its length (12 read as 8) or its CRC: the same.
        for bit in [
            (8 + frames[0].len() + 3) * 8 + 2,
            (8 + frames[0].len() + 5) * 8,
        ] {
            assert_eq!(through(2, &frames, Some(bit)), frames[..1], "bit {bit}");
        }
        // Version 1 has no CRC: the damaged frame is taken as it came.
        let second = (4 + frames[0].len() + 4 + 3) * 8 + 5;
        let got = through(1, &frames, Some(second));
        assert_eq!(got.len(), 2);
        assert_ne!(got[1], frames[1]);
    }
}
