//! The peer transport: Raft messages between brokers, framed over TCP.
//!
//! Each broker dials every other broker it must talk to and sends on that one connection;
//! it receives on the connections others dial to it. A frame is a 4-byte big-endian length
//! and an encoded `PeerFrame` that batches every message for that peer from one step of the
//! core. Delivery is best effort: a full queue or a broken connection drops frames, and Raft
//! resends what matters. Nothing here blocks the driver.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::server::Event;

/// Frames queued for one peer before new ones are dropped.
const PEER_QUEUE: usize = 256;

/// Largest peer frame accepted.
pub const PEER_FRAME_MAX: usize = 64 << 20;

/// How long a connection attempt may take; a partitioned peer must not stall its queue.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Outgoing connections, one task per peer.
pub struct Peers {
    senders: BTreeMap<i32, mpsc::Sender<Bytes>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Peers {
    /// Starts a sender per peer (`id -> host:port` of its peer listener).
    pub fn start(peers: &BTreeMap<i32, String>) -> Self {
        let mut senders = BTreeMap::new();
        let mut tasks = Vec::new();
        for (&id, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            senders.insert(id, tx);
            tasks.push(tokio::spawn(send_to_peer(id, addr.clone(), rx)));
        }
        Peers { senders, tasks }
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

async fn send_to_peer(id: i32, addr: String, mut frames: mpsc::Receiver<Bytes>) {
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = frames.recv().await {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await;
        let mut stream = match connected {
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
        backoff = Duration::from_millis(50);
        let _ = stream.set_nodelay(true);
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            let mut result = write_frame(&mut stream, &frame).await;
            while let (Ok(()), Ok(frame)) = (&result, frames.try_recv()) {
                result = write_frame(&mut stream, &frame).await;
            }
            // The simulator's stream sends only on flush.
            if let Err(e) = result.and(stream.flush().await) {
                debug!(peer = id, error = %e, "peer connection lost");
                break;
            }
            next = frames.recv().await;
        }
    }
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    stream
        .write_all(&(frame.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(frame).await
}

/// Accepts peer connections and forwards their frames to the driver.
pub async fn accept_peers(listener: TcpListener, events: mpsc::Sender<Event>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                debug!(%from, "peer connected");
                tokio::spawn(read_peer(stream, events.clone()));
            }
            Err(e) => warn!(error = %e, "peer accept failed"),
        }
    }
}

async fn read_peer(mut stream: TcpStream, events: mpsc::Sender<Event>) {
    while let Ok(size) = stream.read_u32().await {
        if size as usize > PEER_FRAME_MAX {
            warn!(size, "closing peer connection: frame too large");
            return;
        }
        let mut frame = BytesMut::zeroed(size as usize);
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        if events.send(Event::Peer(frame.freeze())).await.is_err() {
            return;
        }
    }
}
