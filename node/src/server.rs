//! The driver: one loop that feeds the broker core its inputs and carries out its outputs.
//!
//! Connection tasks only frame bytes: a reader turns the socket into request frames, a writer
//! turns response frames into bytes on the socket. Everything else happens in [`Driver::run`],
//! in one place, in the order core asks for.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use seedlog_core::broker::METADATA_GROUP;
use seedlog_core::canary::{is_planted, Canary};
use seedlog_core::cluster::records::Endpoint;
use seedlog_core::storage::{StorageCompletion, StorageOp};
use seedlog_core::{Broker, ConnectionId, Now, Observation, Output};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::listeners::{accept_clients, Accepted, ClientStream, Tls};
use crate::metrics::{ApiMetrics, Metrics, StageMetrics};
use crate::peer::Peers;
use crate::stages::StageClock;
use crate::storage::{Storage, SyncFailure};

/// How long a stopping broker waits for another to take over its roles.
const HANDOVER_MS: i64 = 5_000;

/// Responses a connection may have queued and unwritten before its requests stop being read.
const RESPONSE_BACKLOG_MAX: usize = 256;

/// A count of one connection's queued responses, and a way for its reader to wait for it
/// to drop.
#[derive(Default)]
struct Backlog {
    queued: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Backlog {
    fn add(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.drained.notify_one();
    }

    /// Stops holding the reader back (the writer is gone).
    fn open(&self) {
        self.queued.store(0, Ordering::Relaxed);
        self.drained.notify_one();
    }

    async fn wait_below(&self, limit: usize) {
        while self.queued.load(Ordering::Relaxed) >= limit {
            self.drained.notified().await;
        }
    }
}

/// Requests queued from all connections before readers wait (back-pressure).
const EVENT_QUEUE: usize = 1024;

/// Events already queued that one turn of the driver takes together (see
/// `Broker::begin_batch`): bounded, so timers and syncs still get their turn.
const EVENT_BATCH: usize = 64;

/// What the connection tasks and the fsync thread tell the driver.
pub enum Event {
    /// A complete request frame, size prefix removed, and when it was read.
    Request {
        conn: ConnectionId,
        frame: Bytes,
        received: Instant,
    },
    /// The connection is gone (EOF, error, or an unreadable frame).
    Disconnected { conn: ConnectionId },
    /// A frame from another broker, on a connection that proved to be broker `sender`'s.
    Peer { sender: i32, frame: Bytes },
}

/// The system's wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A broker's two clocks (see `seedlog_core::time`): monotonic time since the driver
/// started, for timers, and the wall clock, for timestamps.
#[derive(Clone, Debug)]
pub struct Clock {
    origin: Instant,
    /// The wall clock at `origin`: the canary `timers-on-wall-clock` counts from it.
    origin_wall: i64,
    /// Milliseconds added to the system's wall clock: zero, unless the simulator's clock
    /// faults step it.
    wall_offset: Arc<AtomicI64>,
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Self {
        Clock::with_wall_offset(Arc::default())
    }

    /// The system's clocks, with the wall clock moved by whatever `offset` holds.
    pub fn with_wall_offset(offset: Arc<AtomicI64>) -> Self {
        Clock {
            origin: Instant::now(),
            origin_wall: now_ms().saturating_add(offset.load(Ordering::Relaxed)),
            wall_offset: offset,
        }
    }

    /// The time now, on both clocks.
    pub fn now(&self) -> Now {
        let wall = now_ms().saturating_add(self.wall_offset.load(Ordering::Relaxed));
        let mono = if is_planted(Canary::TimersOnWallClock) {
            wall - self.origin_wall
        } else {
            i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
        };
        Now { mono, wall }
    }
}

struct ConnectionHandle {
    responses: mpsc::UnboundedSender<Bytes>,
    /// Responses queued for the writer and not yet written (see [`Backlog`]).
    backlog: Arc<Backlog>,
    reader: JoinHandle<()>,
    /// The largest request frame its reader takes: small until the client authenticates.
    max_frame: Arc<AtomicUsize>,
    /// Where it comes from, for `max.connections.per.ip`.
    ip: IpAddr,
}

/// Largest request before a SASL client has authenticated (Kafka's
/// `sasl.server.max.receive.size`): a stranger cannot make the broker allocate more.
const UNAUTHENTICATED_MAX_FRAME: usize = 512 * 1024;

/// How long a client on a SASL listener has to authenticate.
const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Owns the broker core and its storage and runs them.
pub struct Driver {
    broker: Broker,
    storage: Box<dyn Storage>,
    connections: BTreeMap<ConnectionId, ConnectionHandle>,
    /// Completions ready now (reads), fed back before the next event.
    ready: Vec<StorageCompletion>,
    /// Connections to the other brokers.
    peers: Peers,
    /// Tasks that live as long as the driver (the peer listener).
    tasks: Vec<JoinHandle<()>>,
    /// Who hears the broker's observations (the simulator's checkers).
    observer: Option<Observer>,
    /// Peer addresses being dialled, by broker.
    peer_addresses: BTreeMap<i32, String>,
    clock: Clock,
    /// Open client connections by IP address.
    per_ip: BTreeMap<IpAddr, usize>,
    /// `max.connections.per.ip`.
    max_connections_per_ip: usize,
    /// `socket.request.max.bytes`.
    max_frame: usize,
    /// What the driver counts for the metrics; with no admin listener, nothing is counted.
    metrics: Option<Metrics>,
    /// Each API's metric handles, by key, once seen.
    api_metrics: BTreeMap<i16, ApiMetrics>,
    /// Requests not answered yet, per connection in the order they came (Kafka answers in
    /// that order): correlation id, API key, arrival. Bounded: an acks=0 produce is never
    /// answered, and is passed over when a later answer comes.
    in_flight: BTreeMap<ConnectionId, VecDeque<(i32, i16, Instant)>>,
    /// Syncs under way: token -> (start, files).
    syncs_started: BTreeMap<u64, (Instant, usize)>,
    /// The stages of appends on their way to consumers (with metrics only).
    stages: Option<(StageClock, StageMetrics)>,
    /// Where the admin listener asks for core's snapshot.
    stats_requests: Option<StatsRequestsReceiver>,
}

/// Requests of one connection remembered for their answer's time, at most.
const IN_FLIGHT_MAX: usize = 1024;

/// Receives what a broker reports about itself, with the broker's id.
pub type Observer = std::sync::Arc<dyn Fn(i32, &Observation) + Send + Sync>;

impl Driver {
    /// A driver for `broker` over `storage`, talking to `peers`.
    pub fn new(
        broker: Broker,
        storage: Box<dyn Storage>,
        peers: Peers,
        peer_addresses: BTreeMap<i32, String>,
        clock: Clock,
    ) -> Self {
        Driver {
            clock,
            broker,
            storage,
            connections: BTreeMap::new(),
            ready: Vec::new(),
            peers,
            tasks: Vec::new(),
            observer: None,
            peer_addresses,
            per_ip: BTreeMap::new(),
            max_connections_per_ip: usize::MAX,
            max_frame: 100 << 20,
            metrics: None,
            api_metrics: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            syncs_started: BTreeMap::new(),
            stages: None,
            stats_requests: None,
        }
    }

    /// Counts into `metrics` and answers core's snapshot to `requests` (the admin listener).
    pub fn with_metrics(mut self, metrics: Metrics, requests: StatsRequestsReceiver) -> Self {
        self.stages = Some((StageClock::default(), metrics.stages()));
        self.metrics = Some(metrics);
        self.stats_requests = Some(requests);
        self
    }

    /// The metric handles of API `key`.
    fn api_metrics(
        api_metrics: &mut BTreeMap<i16, ApiMetrics>,
        metrics: &Metrics,
        key: i16,
    ) -> ApiMetrics {
        api_metrics
            .entry(key)
            .or_insert_with(|| metrics.api(key))
            .clone()
    }

    /// A request frame came in: counted, and remembered until its answer.
    fn count_request(&mut self, conn: ConnectionId, frame: &Bytes, received: Instant) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.received(frame.len() + 4);
        if let Some((_, stages)) = &self.stages {
            stages.queued(received.elapsed());
        }
        let (Some(key), Some(correlation)) = (frame.get(..2), frame.get(4..8)) else {
            return;
        };
        let key = i16::from_be_bytes([key[0], key[1]]);
        let correlation = i32::from_be_bytes(correlation.try_into().expect("four bytes"));
        Self::api_metrics(&mut self.api_metrics, metrics, key).request();
        let queue = self.in_flight.entry(conn).or_default();
        if queue.len() == IN_FLIGHT_MAX {
            queue.pop_front();
        }
        queue.push_back((correlation, key, received));
    }

    /// A response frame (size prefix included) goes out: the time of its request.
    fn count_response(&mut self, conn: ConnectionId, frame: &Bytes) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.sent(frame.len());
        let Some(correlation) = frame.get(4..8) else {
            return;
        };
        let correlation = i32::from_be_bytes(correlation.try_into().expect("four bytes"));
        let Some(queue) = self.in_flight.get_mut(&conn) else {
            return;
        };
        // Earlier requests without an answer (acks=0 produces) are passed over; a frame
        // that answers none (a bare SASL token) leaves the queue as it is.
        let Some(at) = queue.iter().position(|(c, _, _)| *c == correlation) else {
            return;
        };
        let (_, key, received) = queue.drain(..=at).next_back().expect("found above");
        let took = received.elapsed();
        Self::api_metrics(&mut self.api_metrics, metrics, key).answered(took);
    }

    /// Refuses connections from an IP address that has `max` open already.
    pub fn with_max_connections_per_ip(mut self, max: usize) -> Self {
        self.max_connections_per_ip = max;
        self
    }

    /// Forgets a connection's handle and its place in the per-IP count.
    fn drop_connection(&mut self, conn: ConnectionId) -> Option<ConnectionHandle> {
        self.in_flight.remove(&conn);
        let handle = self.connections.remove(&conn)?;
        if let Some(metrics) = &self.metrics {
            metrics.set_connections(self.connections.len());
        }
        if let Some(count) = self.per_ip.get_mut(&handle.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&handle.ip);
            }
        }
        Some(handle)
    }

    /// Reports the broker's observations to `observer`.
    pub fn with_observer(mut self, observer: Option<Observer>) -> Self {
        self.observer = observer;
        self
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Request {
                conn,
                frame,
                received,
            } => {
                self.count_request(conn, &frame, received);
                self.broker.handle_request(self.clock.now(), conn, frame)
            }
            Event::Disconnected { conn } => {
                self.drop_connection(conn);
                self.broker.handle_disconnect(conn);
            }
            Event::Peer { sender, frame } => {
                self.broker.handle_peer(self.clock.now(), sender, frame)
            }
        }
    }

    /// Serves the connections `accepts` brings until `shutdown` resolves, then drains and
    /// flushes.
    pub async fn run(
        mut self,
        mut accepts: mpsc::Receiver<Accepted>,
        peer_listener: Option<TcpListener>,
        mut syncs: SyncReceiver,
        shutdown: impl std::future::Future<Output = ()>,
        socket_request_max_bytes: usize,
    ) -> anyhow::Result<()> {
        self.max_frame = socket_request_max_bytes;
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        if let Some(peer_listener) = peer_listener {
            let identity = self.peers.identity();
            let accept = crate::peer::accept_peers(peer_listener, events_tx.clone(), identity);
            self.tasks.push(tokio::spawn(accept));
        }
        let mut next_conn: ConnectionId = 1;
        tokio::pin!(shutdown);
        // Set when the shutdown signal came: the broker hands its roles over, then stops.
        let mut stop_by: Option<i64> = None;
        loop {
            let timeout = self.broker.poll_timeout().unwrap_or(i64::MAX);
            let sleep_ms = timeout
                .saturating_sub(self.clock.now().mono)
                .clamp(0, 60_000) as u64;
            tokio::select! {
                biased;
                // First: rare and cheap, and a scrape must be answered under any load.
                Some((console, answer)) = next_stats_request(&mut self.stats_requests) => {
                    let _ = answer.send(self.broker.stats(console));
                }
                sync = syncs.recv() => {
                    let completion = sync_outcome(sync)?;
                    self.count_sync(&completion);
                    self.broker.handle_storage(self.clock.now(), completion);
                }
                Some(event) = events.recv() => {
                    // What else is queued already shares this event's Raft drive, peer frames
                    // and fsync: one frame per follower and one sync for many requests. A
                    // disconnect ends the batch and waits until the answers queued before it
                    // are written: a client that half-closes after its request still gets
                    // its answer.
                    self.broker.begin_batch();
                    let mut next = Some(event);
                    let mut taken = 0;
                    let mut goodbye = None;
                    while let Some(event) = next.take() {
                        if matches!(event, Event::Disconnected { .. }) {
                            goodbye = Some(event);
                            break;
                        }
                        self.on_event(event);
                        taken += 1;
                        if taken < EVENT_BATCH {
                            next = events.try_recv().ok();
                        }
                    }
                    self.broker.end_batch();
                    if let Some(event) = goodbye {
                        self.carry_out()?;
                        self.on_event(event);
                    }
                }
                Some(accepted) = accepts.recv(), if stop_by.is_none() => {
                    let conn = next_conn;
                    next_conn += 1;
                    self.connect(conn, accepted, events_tx.clone());
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                    self.broker.handle_timeout(self.clock.now());
                }
                _ = &mut shutdown, if stop_by.is_none() => {
                    info!("shutdown requested: handing roles over to other brokers");
                    stop_by = Some(self.clock.now().mono + HANDOVER_MS);
                    self.broker.begin_shutdown();
                }
            }
            self.carry_out()?;
            // `biased` serves syncs and events first, so under steady load the sleep arm may
            // never win: a due timer (heartbeats, election timeouts) fires here whatever arm
            // ran, or followers starve of heartbeats and call elections mid-run.
            if self
                .broker
                .poll_timeout()
                .is_some_and(|due| due <= self.clock.now().mono)
            {
                self.broker.handle_timeout(self.clock.now());
                self.carry_out()?;
            }
            if stop_by.is_some_and(|deadline| {
                self.broker.has_handed_over() || self.clock.now().mono >= deadline
            }) {
                break;
            }
        }
        info!("shutting down: finishing in-flight writes");
        drop(accepts);
        for handle in self.connections.values() {
            handle.reader.abort();
        }
        while !self.broker.is_quiescent() {
            let completion = sync_outcome(syncs.recv().await)?;
            self.broker.handle_storage(self.clock.now(), completion);
            self.carry_out()?;
        }
        self.storage.close()?;
        // Let writers flush the last responses.
        self.connections.clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
        info!("shutdown complete");
        Ok(())
    }

    /// Carries out every output core has queued, feeding back immediate completions.
    fn carry_out(&mut self) -> anyhow::Result<()> {
        loop {
            while let Some(output) = self.broker.poll_output() {
                match output {
                    Output::Send { conn, frame } => {
                        self.count_response(conn, &frame);
                        if let Some(handle) = self.connections.get(&conn) {
                            // A send error means the writer already quit; the reader reports it.
                            handle.backlog.add();
                            let _ = handle.responses.send(frame);
                        }
                    }
                    Output::Close(conn) => {
                        if let Some(handle) = self.drop_connection(conn) {
                            handle.reader.abort();
                        }
                    }
                    Output::Authenticated { conn } => {
                        if let Some(handle) = self.connections.get(&conn) {
                            handle.max_frame.store(self.max_frame, Ordering::Relaxed);
                        }
                    }
                    Output::Storage(op) => {
                        if self.metrics.is_some() {
                            self.time_storage(&op);
                        }
                        if let Some(completion) = self.storage.execute(op)? {
                            self.ready.push(completion);
                        }
                    }
                    Output::Peer { to, frame } => self.peers.send(to, frame),
                    Output::PeerAddress { broker, address } => {
                        if self.peer_addresses.get(&broker) != Some(&address) {
                            info!(broker, %address, "dialling a peer");
                            self.peer_addresses.insert(broker, address.clone());
                            self.peers.add(broker, address);
                        }
                    }
                    Output::Observed(Observation::Visible {
                        partition,
                        high_watermark,
                        leader,
                    }) => {
                        if let Some((clock, metrics)) = &mut self.stages {
                            let now = Instant::now();
                            for stages in clock.visible(&partition, high_watermark, leader, now) {
                                metrics.timed(&stages);
                            }
                        }
                    }
                    Output::Observed(observation) => {
                        if let (Some(m), Observation::Elected { group, .. }) =
                            (&self.metrics, &observation)
                        {
                            m.elected(group == METADATA_GROUP);
                        }
                        if let Some(observer) = &self.observer {
                            observer(self.broker.config().broker_id, &observation);
                        }
                    }
                }
            }
            if self.ready.is_empty() {
                return Ok(());
            }
            let now = self.clock.now();
            for completion in std::mem::take(&mut self.ready) {
                self.broker.handle_storage(now, completion);
            }
        }
    }

    fn connect(&mut self, conn: ConnectionId, accepted: Accepted, events: mpsc::Sender<Event>) {
        let Accepted {
            stream,
            peer,
            listener,
        } = accepted;
        let ip = peer.ip();
        let open = self.per_ip.entry(ip).or_default();
        if *open >= self.max_connections_per_ip {
            warn!(%peer, max = self.max_connections_per_ip, "refusing a connection: too many from this address (max.connections.per.ip)");
            return;
        }
        *open += 1;
        debug!(conn, %peer, listener = %listener.name, "connected");
        let sasl = listener.protocol.needs_sasl();
        self.broker
            .handle_connect(conn, &peer.to_string(), &listener);
        let (read_half, write_half) = tokio::io::split(stream);
        let (responses, outgoing) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let limit = if sasl {
            UNAUTHENTICATED_MAX_FRAME.min(self.max_frame)
        } else {
            self.max_frame
        };
        let max_frame = Arc::new(AtomicUsize::new(limit));
        let reader = tokio::spawn(read_requests(
            conn,
            read_half,
            events,
            (max_frame.clone(), sasl.then_some(self.max_frame)),
            backlog.clone(),
        ));
        tokio::spawn(write_responses(conn, write_half, outgoing, backlog.clone()));
        let handle = ConnectionHandle {
            responses,
            backlog,
            reader,
            max_frame,
            ip,
        };
        self.connections.insert(conn, handle);
        if let Some(metrics) = &self.metrics {
            metrics.set_connections(self.connections.len());
        }
    }

    /// Notes the start of a sync or an append for the metrics.
    fn time_storage(&mut self, op: &StorageOp) {
        let now = Instant::now();
        match op {
            StorageOp::Sync { token, segments } => {
                self.syncs_started.insert(*token, (now, segments.len()));
                if let Some((clock, _)) = &mut self.stages {
                    clock.sync_started(*token, now);
                }
            }
            StorageOp::Append { segment, data } => {
                if let Some((clock, _)) = &mut self.stages {
                    clock.appended(&segment.partition, data.next_offset(), now);
                }
            }
            _ => {}
        }
    }

    /// A sync finished: how long it took and how many files it covered.
    fn count_sync(&mut self, completion: &StorageCompletion) {
        if let StorageCompletion::Synced { token } = completion {
            if let Some((clock, _)) = &mut self.stages {
                clock.synced(*token, Instant::now());
            }
            let started = self.syncs_started.remove(token);
            if let (Some(metrics), Some((started, files))) = (&self.metrics, started) {
                metrics.synced(started.elapsed(), files);
            }
        }
    }
}

/// The admin listener's requests for core's snapshot.
pub type StatsRequestsReceiver = mpsc::Receiver<crate::metrics::StatsRequest>;

/// The next snapshot request, or never when there is no admin listener.
async fn next_stats_request(
    requests: &mut Option<StatsRequestsReceiver>,
) -> Option<crate::metrics::StatsRequest> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A finished sync, or the error that must stop the node: after a failed fsync the state of
/// the file is unknown, and carrying on could acknowledge data that is already gone.
fn sync_outcome(
    sync: Option<Result<StorageCompletion, SyncFailure>>,
) -> anyhow::Result<StorageCompletion> {
    use seedlog_core::canary::{is_planted, Canary};
    match sync {
        None => anyhow::bail!("the storage stopped reporting syncs"),
        Some(Ok(completion)) => Ok(completion),
        Some(Err(failure)) if is_planted(Canary::IgnoreFsyncError) => {
            warn!(error = %failure.error, "canary: ignoring a failed fsync");
            Ok(StorageCompletion::Synced {
                token: failure.token,
            })
        }
        Some(Err(failure)) => {
            Err(anyhow::anyhow!(failure.error).context("stopping: the disk failed a sync"))
        }
    }
}

impl Drop for Driver {
    /// However the driver ends, its connections end with it: readers stop, and writers stop
    /// once their response channels close.
    fn drop(&mut self) {
        for handle in self.connections.values() {
            handle.reader.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads request frames until EOF. `limit` is the largest frame taken now and, for a
/// connection that must authenticate, the limit once it has: until then it must do so
/// within [`AUTHENTICATION_TIMEOUT`].
async fn read_requests(
    conn: ConnectionId,
    mut socket: ReadHalf<Box<dyn ClientStream>>,
    events: mpsc::Sender<Event>,
    limit: (Arc<AtomicUsize>, Option<usize>),
    backlog: Arc<Backlog>,
) {
    let (max_frame, authenticated_max) = limit;
    let deadline = Instant::now() + AUTHENTICATION_TIMEOUT;
    // EOF or reset ends the loop: the client is gone.
    loop {
        // A client that does not read its responses stops being read (Kafka mutes it too):
        // its queued responses, not the broker's memory, absorb the pressure.
        backlog.wait_below(RESPONSE_BACKLOG_MAX).await;
        let unauthenticated = authenticated_max.is_some_and(|full| current(&max_frame) < full);
        let size = if unauthenticated {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.read_i32()).await {
                Ok(size) => size,
                Err(_) => {
                    warn!(conn, "closing connection: no SASL authentication in time");
                    break;
                }
            }
        } else {
            socket.read_i32().await
        };
        let Ok(size) = size else {
            break;
        };
        // Read the limit once the size is here: the answer that authenticated the client
        // (which raised it) went out before the client could send this.
        let max_frame = current(&max_frame);
        if size < 0 || size as usize > max_frame {
            warn!(
                conn,
                size, max_frame, "closing connection: request frame size out of bounds"
            );
            break;
        }
        let Some(frame) = read_frame(&mut socket, size as usize).await else {
            break;
        };
        if events
            .send(Event::Request {
                conn,
                frame: frame.freeze(),
                received: Instant::now(),
            })
            .await
            .is_err()
        {
            return; // The driver stopped.
        }
    }
    let _ = events.send(Event::Disconnected { conn }).await;
}

/// The next `size` bytes of `reader`, or `None` if it ends or fails first. They are read
/// into spare capacity: zeroing a frame first cost as much CPU as the broker's CRC checks of
/// it (a memset of every byte received, from clients and on followers from their leader).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> Option<BytesMut> {
    let mut frame = BytesMut::with_capacity(size);
    let mut rest = reader.take(size as u64);
    while frame.len() < size {
        match rest.read_buf(&mut frame).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(frame)
}

fn current(max_frame: &AtomicUsize) -> usize {
    max_frame.load(Ordering::Relaxed)
}

async fn write_responses(
    conn: ConnectionId,
    mut socket: WriteHalf<Box<dyn ClientStream>>,
    mut outgoing: mpsc::UnboundedReceiver<Bytes>,
    backlog: Arc<Backlog>,
) {
    while let Some(frame) = outgoing.recv().await {
        // Write every response already queued, then flush once: a no-op for tokio's
        // TcpStream, but the simulator's stream sends only on flush.
        let mut result = socket.write_all(&frame).await;
        backlog.remove();
        while let (Ok(()), Ok(frame)) = (&result, outgoing.try_recv()) {
            result = socket.write_all(&frame).await;
            backlog.remove();
        }
        if let Err(e) = result.and(socket.flush().await) {
            debug!(conn, error = %e, "write failed");
            // Nothing more will be written: let the reader run on to notice the end.
            backlog.open();
            return;
        }
    }
    // The driver dropped the sender: flush and close our side.
    let _ = socket.shutdown().await;
}

/// Finished syncs, as reported by a [`Storage`] to the driver.
pub type SyncReceiver = mpsc::UnboundedReceiver<Result<StorageCompletion, SyncFailure>>;

/// A [`crate::storage::SyncReport`] that feeds a driver, and the receiving end it needs.
pub fn sync_channel() -> (crate::storage::SyncReport, SyncReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let report: crate::storage::SyncReport = Box::new(move |result| {
        let _ = tx.send(result);
    });
    (report, rx)
}

/// Binds the listener, opens and recovers the configured storage, and serves until
/// `shutdown`.
pub async fn serve(
    config: crate::config::NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (report, syncs) = sync_channel();
    let storage: Box<dyn Storage> = match config.storage {
        crate::config::StorageKind::Disk => Box::new(crate::storage::FileStorage::open(
            &config.data_dir,
            config.socket_request_max_bytes,
            report,
        )?),
        crate::config::StorageKind::Memory => Box::new(crate::storage::MemoryStorage::default()),
    };
    serve_with(config, storage, syncs, shutdown, None, Clock::system()).await
}

/// Serves with a given storage and clock (the simulator passes its disk model and a clock
/// it can step here). `syncs` must receive what the storage's
/// [`crate::storage::SyncReport`] sends.
pub async fn serve_with(
    config: crate::config::NodeConfig,
    mut storage: Box<dyn Storage>,
    syncs: SyncReceiver,
    shutdown: impl std::future::Future<Output = ()>,
    observer: Option<Observer>,
    clock: Clock,
) -> anyhow::Result<()> {
    let mut broker_config = config.broker.clone();
    let (accepted, accepts) = mpsc::channel(EVENT_QUEUE);
    let tls = tls_server(&config)?;
    let mut accept_tasks = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.bind)
            .await
            .with_context(|| format!("binding listener {} on {}", listener.name, listener.bind))?;
        let bound = socket.local_addr()?;
        let (host, port) =
            (listener.advertised.clone()).unwrap_or((bound.ip().to_string(), bound.port()));
        info!(listener = %listener.name, protocol = listener.protocol.name(), %bound, advertised = %format!("{host}:{port}"), "listening");
        broker_config.endpoints.push(Endpoint {
            name: listener.name.clone(),
            host,
            port: i32::from(port),
        });
        let task = accept_clients(socket, listener.clone(), tls.clone(), accepted.clone());
        accept_tasks.push(tokio::spawn(task));
    }
    let first = broker_config
        .endpoints
        .first()
        .context("no listener configured")?;
    broker_config.advertised_host = first.host.clone();
    broker_config.advertised_port = first.port;
    let bound = format!("{}:{}", first.host, first.port);
    let peer_listener = match config.peer_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the peer listener on {addr}"))?,
        ),
        None => None,
    };
    let recovered = storage.recover(broker_config.index_interval_bytes)?;
    // The record stages are timed only where the metrics are read.
    broker_config.report_visible = config.admin_listen.is_some();
    // Ids only need to differ between brokers and restarts: the start time and the broker id
    // do that, and keep simulated runs deterministic.
    let seed = clock.now().wall as u64 ^ (broker_config.broker_id as u64) << 48;
    let broker = Broker::new(broker_config, recovered, seed, clock.now())
        .map_err(|e| anyhow::anyhow!(e).context("starting the broker from its stored state"))?;
    info!(listen = %bound, peer_listen = ?config.peer_listen, data_dir = %config.data_dir.display(), storage = ?config.storage, "seedlog broker ready");
    let identity = crate::peer::Identity {
        id: config.broker.broker_id,
        newest: config.peer_protocol,
        secret: config.peer_secret.as_bytes().into(),
        #[cfg(not(madsim))]
        tls: peer_tls(&config)?,
    };
    #[cfg(madsim)]
    if config.peer_tls {
        anyhow::bail!("the simulator runs no TLS between brokers");
    }
    let peers = Peers::start(&config.peers, identity);
    let mut driver = Driver::new(broker, storage, peers, config.peers.clone(), clock)
        .with_observer(observer)
        .with_max_connections_per_ip(config.max_connections_per_ip);
    driver.tasks.extend(accept_tasks);
    if let Some(addr) = config.admin_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        let metrics = Metrics::default();
        let (requests, answers) = mpsc::channel(16);
        let admin = crate::metrics::serve_admin(listener, metrics.clone(), requests);
        driver.tasks.push(tokio::spawn(admin));
        driver = driver.with_metrics(metrics, answers);
    }
    let result = driver
        .run(
            accepts,
            peer_listener,
            syncs,
            shutdown,
            config.socket_request_max_bytes,
        )
        .await;
    if let Err(e) = &result {
        error!(error = %format!("{e:#}"), "broker stopped");
    }
    result
}

/// The TLS server for the listeners that use TLS.
#[cfg(not(madsim))]
fn tls_server(config: &crate::config::NodeConfig) -> anyhow::Result<Tls> {
    match &config.tls {
        None => Ok(Tls::None),
        Some(settings) => Ok(Tls::Server(Arc::new(crate::tls::TlsServer::load(
            settings.clone(),
        )?))),
    }
}

/// Mutual TLS between brokers, when configured.
#[cfg(not(madsim))]
fn peer_tls(
    config: &crate::config::NodeConfig,
) -> anyhow::Result<Option<Arc<crate::tls::PeerTls>>> {
    match (&config.tls, config.peer_tls) {
        (_, false) => Ok(None),
        (None, true) => {
            anyhow::bail!("inter_broker_security_protocol SSL needs ssl_keystore_location")
        }
        (Some(settings), true) => Ok(Some(Arc::new(crate::tls::PeerTls::load(settings)?))),
    }
}

/// The simulator runs no TLS: its listeners are plaintext or SASL over plaintext.
#[cfg(madsim)]
fn tls_server(config: &crate::config::NodeConfig) -> anyhow::Result<Tls> {
    match config.listeners.iter().find(|l| l.protocol.is_tls()) {
        Some(l) => anyhow::bail!(
            "listener {} uses TLS, which the simulator does not run",
            l.name
        ),
        None => Ok(Tls::None),
    }
}
