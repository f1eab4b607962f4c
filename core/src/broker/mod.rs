//! The broker state machine: Kafka requests in, responses and disk operations out.
//!
//! # Driving a `Broker`
//! Inputs: [`Broker::handle_request`] for each complete request frame (size prefix removed),
//! [`Broker::handle_storage`] for each completion of a [`StorageOp`] that has one,
//! [`Broker::handle_disconnect`] when a client goes away, and [`Broker::handle_timeout`] when
//! the deadline from [`Broker::poll_timeout`] passes. After any input, drain
//! [`Broker::poll_output`] until it returns `None` and carry the outputs out *in order*: a
//! response may depend on the storage operations emitted before it.
//!
//! Every input takes `now` ([`Now`]): a monotonic time for timers and the wall clock for
//! timestamps, in milliseconds. The monotonic time must never go back from one input to the
//! next; the wall clock may jump either way. The broker reads no clock and performs no I/O.

mod admin;
mod authorize;
mod configs;
mod fetch;
mod groups;
mod produce;
mod producers;
mod quorum;
mod reassign;
mod replication;
mod security;
mod stats;
mod txns;

pub use stats::{BrokerStats, GroupLag, PartitionStats};

use crate::canary::{is_planted, Canary};
use crate::time::Now;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use tracing::{debug, warn};

use crate::cluster::records::{BrokerRegistration, GroupMessage};
use crate::cluster::Controller;
use crate::config::{BrokerConfig, FlushPolicy, TopicConfig};
use crate::consensus::RaftPersist;
use crate::group::Coordinator;
use crate::log::{CommitPoint, PartitionLog, Segment};
use crate::security::{Authentication, Listener};
use crate::storage::{SegmentId, StorageCompletion, StorageOp, TopicPartition, TopicRecord};
use crate::topic::Topic;
use crate::txn::TxnCoordinator;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use fetch::{Job, ParkedFetch};
use groups::GroupLoad;
use produce::{PendingProduce, ProduceFor};
use replication::ReplicatedProduce;

/// Identifies one client connection; chosen by the driver, unique while it is open.
pub type ConnectionId = u64;

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write a complete response frame (size prefix included) to a connection.
    Send {
        /// Destination.
        conn: ConnectionId,
        /// The frame.
        frame: Bytes,
    },
    /// Close a connection (after sending what was queued before this output).
    Close(ConnectionId),
    /// Perform a disk operation.
    Storage(StorageOp),
    /// Something an outside observer (the simulator's checkers, logs) may want to know;
    /// nothing to carry out.
    Observed(Observation),
    /// Another broker's peer listener is at `address` (`host:port`): dial it from now on.
    PeerAddress {
        /// The broker.
        broker: i32,
        /// Where its peer listener is.
        address: String,
    },
    /// The client on a connection authenticated: it may now send requests as large as any
    /// client's (before, the driver keeps them small).
    Authenticated {
        /// The connection.
        conn: ConnectionId,
    },
    /// Send a frame (size prefix not included) to another broker. Peer messages may be
    /// dropped when the peer cannot be reached: Raft retries what matters.
    Peer {
        /// Destination broker id.
        to: i32,
        /// An encoded [`crate::cluster::records::PeerFrame`].
        frame: crate::cluster::records::PeerBytes,
    },
}

/// A fact a broker reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// This broker became the leader of a Raft group in a term.
    Elected {
        /// The group: `metadata` for the quorum, else `topic-partition`.
        group: String,
        /// The term.
        term: u64,
    },
    /// The ACLs this broker enforces changed (only with `report_commits`): the
    /// simulator's checker judges each request by the ACLs in force where it was decided.
    Acls {
        /// Every binding in force now.
        bindings: Vec<crate::security::acl::AclBinding>,
    },
    /// The SCRAM credentials this broker checks SASL logins against changed (only with
    /// `report_commits`): the simulator's checker judges each login by them.
    Credentials {
        /// Every credential in force now, by user and mechanism.
        credentials: Vec<crate::security::scram::ScramCredential>,
    },
    /// This broker wrote a Raft group's durable state (only with `report_commits`).
    RaftStateWritten {
        /// `metadata` for the quorum, else `topic-partition`.
        group: String,
        /// What the write changed.
        facts: RaftStateFacts,
    },
    /// This broker deleted a replica's durable state with its partition (only with
    /// `report_commits`).
    RaftStateCleared {
        /// `topic-partition`.
        group: String,
    },
    /// At start, every Raft group's durable state as this broker read it back (only with
    /// `report_commits`): the simulator's `state-durable` checker holds it to the last
    /// writes.
    RaftStateLoaded {
        /// Each group with a stored state, and that state.
        groups: Vec<(String, RaftStateFacts)>,
    },
    /// This broker's replica of a partition committed entries (only with
    /// `report_commits`): the facts a state checker compares across brokers.
    Committed {
        /// `topic-partition`.
        group: String,
        /// The topic's id: a topic deleted and created again under its name is another.
        topic_id: [u8; 16],
        /// The entries, in index order.
        entries: Vec<CommittedEntry>,
    },
    /// A partition's high watermark rose: records below it are visible to consumers (only
    /// with `report_visible`).
    Visible {
        /// The partition.
        partition: TopicPartition,
        /// The new high watermark.
        high_watermark: i64,
        /// This broker leads the partition (a follower learns of commits later than its
        /// consumers could).
        leader: bool,
    },
}

/// What a write of a Raft group's durable state set, or what a load found: the hard state
/// (term, vote, commit) and the snapshot's (index, term), each where present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStateFacts {
    /// Term, vote and commit.
    pub hard_state: Option<[u64; 3]>,
    /// The snapshot's index and term.
    pub snapshot: Option<[u64; 2]>,
}

impl RaftStateFacts {
    /// The facts of a persisted change or a recovered state.
    pub fn of(state: &RaftPersist) -> Self {
        RaftStateFacts {
            hard_state: state
                .hard_state
                .as_ref()
                .map(|h| [h.term, h.vote, h.commit]),
            // A start at index 0 is the start a replica without a snapshot has: storage
            // records one to mark a replica catching up (`replica::mark_catching_up`).
            snapshot: state
                .snapshot
                .as_ref()
                .map(|s| [s.get_metadata().index, s.get_metadata().term])
                .filter(|&start| start != [0, 0]),
        }
    }
}

/// The Raft state a storage operation writes or deletes, as the simulator's checker sees it.
fn raft_state_observation(op: &StorageOp) -> Option<Observation> {
    match op {
        StorageOp::SaveQuorum(change) => Some(Observation::RaftStateWritten {
            group: METADATA_GROUP.to_string(),
            facts: RaftStateFacts::of(change),
        }),
        StorageOp::SaveReplica { partition, state } => Some(Observation::RaftStateWritten {
            group: partition.to_string(),
            facts: RaftStateFacts::of(state),
        }),
        StorageOp::DeletePartition(partition) => Some(Observation::RaftStateCleared {
            group: partition.to_string(),
        }),
        _ => None,
    }
}

/// The broker's timers: the one table behind [`Broker::poll_timeout`] and
/// [`Broker::handle_timeout`]. Each kind's deadline is read from where it lives (a kind with
/// many deadlines, such as parked fetches, gives its earliest), so it cannot go stale, and a
/// new timer is a new row here, which both the next deadline and its dispatch must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Fetches waiting for data or `max_wait_ms`.
    ParkedFetches,
    /// Admin requests waiting for the metadata quorum.
    PendingAdmin,
    /// acks=all produces waiting for a commit.
    ReplicatedProduces,
    /// A block of producer ids asked of the quorum, and InitProducerId waiting for it.
    ProducerIds,
    /// Raft ticks of the partition replicas.
    ReplicaTick,
    /// The metadata quorum's member.
    Controller,
    /// The group coordinator.
    Groups,
    /// The transaction coordinator.
    Transactions,
    /// Transaction markers to deliver or retry.
    Markers,
    /// Retention (and segment rolls by time).
    Retention,
    /// Appends nobody waits for, synced within a bound.
    UnawaitedSync,
}

impl Timer {
    /// Every timer, in the order they fire when due together.
    const ALL: [Timer; 11] = [
        Timer::ParkedFetches,
        Timer::PendingAdmin,
        Timer::ReplicatedProduces,
        Timer::ProducerIds,
        Timer::ReplicaTick,
        Timer::Controller,
        Timer::Groups,
        Timer::Transactions,
        Timer::Markers,
        Timer::Retention,
        Timer::UnawaitedSync,
    ];
}

/// The metadata quorum's name in observations.
pub const METADATA_GROUP: &str = "metadata";

/// One committed entry of a partition replica, as its broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Raft index.
    pub index: u64,
    /// Raft term that wrote it (its batch's leader epoch).
    pub term: u64,
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset after its last record.
    pub next_offset: i64,
    /// Its batch's CRC, unless this broker's copy is damaged.
    pub crc: Option<u32>,
}

/// Everything found on disk at startup.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Topics with partition data here.
    pub topics: Vec<RecoveredTopic>,
    /// The metadata quorum's Raft state, if this node has been started before.
    pub quorum: Option<RaftPersist>,
    /// Partition replicas' Raft state (hard state, log start), by partition.
    pub replicas: BTreeMap<TopicPartition, RaftPersist>,
    /// Producer-table snapshots of partitions of one copy, by partition.
    pub producers: BTreeMap<TopicPartition, Bytes>,
}

/// A recovered topic's id and its partitions' segments, by partition index.
type RecoveredLogs = ([u8; 16], BTreeMap<i32, Vec<Segment>>);

/// A topic as found on disk at startup.
#[derive(Debug, Clone)]
pub struct RecoveredTopic {
    /// Topic name.
    pub name: String,
    /// Its durable definition.
    pub record: TopicRecord,
    /// Each partition's recovered segments, oldest first.
    pub partitions: Vec<Vec<Segment>>,
}

/// Where a response goes and how to encode it.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    conn: ConnectionId,
    seq: u64,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
}

/// Responses of one connection, released in request order as Kafka requires.
#[derive(Debug, Default)]
struct Connection {
    /// Where the client connects from, as Kafka shows it (`/127.0.0.1`); may be empty.
    host: String,
    /// The listener it came in on, by name.
    listener: String,
    /// Who it is, or how far its SASL exchange has got.
    auth: Authentication,
    /// After a SaslHandshake v0: the next frames are bare SASL tokens, not requests.
    raw_sasl: bool,
    /// When its SASL session runs out (with `connections.max.reauth.ms`), on the
    /// monotonic clock.
    session_expires: Option<i64>,
    /// Authenticating again (KIP-368): the principal it must stay.
    reauthenticating: Option<String>,
    next_seq: u64,
    next_to_send: u64,
    /// Finished responses waiting for earlier ones; `None` means "no response" (acks=0).
    ready: BTreeMap<u64, Option<Bytes>>,
}

/// How long appends that nobody waits for may stay out of a sync. Under a steady acks=1
/// load with no consumer at the log's end, syncs had run back to back (one every few
/// hundred microseconds, each costing this machine's broker 85-140 us of CPU: a quarter of
/// its CPU per record); a few milliseconds of appends now share one. The promise of acks=1
/// is only the leader's append, and a record becomes visible to consumers only once synced,
/// so a consumer that parks at the end starts the sync at once (see `sync_awaited`).
const UNAWAITED_SYNC_DELAY_MS: i64 = 5;

/// How long after a consumer last waited at a high watermark its appends still count as
/// awaited. A consumer reading at the end is parked only between its answer and its next
/// fetch's arrival; appends that came in that gap (or while it was descheduled for a few
/// milliseconds) were held for the full `UNAWAITED_SYNC_DELAY_MS`, which at 250 k
/// records/s was 5% of syncs and the whole of the p99 wait before a sync
/// (`seedlog bench e2e --admin`: appended -> sync started p99 6.4 ms, the syncs' own p99
/// 1.6-2.3 ms). A load with no consumer at the end keeps sharing syncs.
const READER_AT_END_MS: i64 = 1_000;

/// Appends made since the last sync started.
#[derive(Clone, Copy, Debug)]
struct Unsynced {
    /// When the first of them was made.
    since: i64,
    /// Someone waited for them at some point (see `Broker::sync_awaited`). It stays set:
    /// a consumer answered by the sync in flight is back for these in a moment, and its
    /// round trip should not hold them back.
    awaited: bool,
}

/// The sync in flight and the commit points it makes durable.
#[derive(Debug)]
struct InFlightSync {
    token: u64,
    commits: Vec<(TopicPartition, [u8; 16], CommitPoint)>,
}

/// A single broker's state.
pub struct Broker {
    config: BrokerConfig,
    /// Topic defaults in force: the configured ones with the dynamic broker configs over
    /// them (IncrementalAlterConfigs on a BROKER resource, from the metadata quorum).
    topic_defaults: TopicConfig,
    /// The dynamic broker configs those came from: every broker's, then this broker's own.
    dynamic_configs: BTreeMap<String, String>,
    topics: BTreeMap<Arc<str>, Topic>,
    connections: BTreeMap<ConnectionId, Connection>,
    outputs: VecDeque<Output>,
    /// Segment files appended to since the last sync was issued.
    dirty_segments: BTreeSet<SegmentId>,
    /// Partitions appended to since the last sync was issued.
    dirty_partitions: BTreeSet<TopicPartition>,
    in_flight_sync: Option<InFlightSync>,
    /// Appends not yet in a sync: since when, and whether anyone waits for them.
    unsynced: Option<Unsynced>,
    /// A controlled shutdown has begun: every sync is started at once.
    shutting_down: bool,
    /// Token for the next storage operation that has a completion.
    next_token: u64,
    /// Token the next sync will carry; appends made now are durable once it completes.
    next_sync_token: u64,
    pending_produces: VecDeque<PendingProduce>,
    /// Index files of sealed segments, each waiting for the sync (by token) that makes the
    /// segment's data durable.
    pending_seals: Vec<(u64, StorageOp)>,
    parked_fetches: Vec<ParkedFetch>,
    /// Until when appends count as awaited because a consumer waited at a high watermark
    /// (see `READER_AT_END_MS`).
    reader_at_end_until: i64,
    jobs: BTreeMap<u64, Job>,
    /// Read token -> (job id, slot in that job).
    reads: BTreeMap<u64, (u64, usize)>,
    next_job: u64,
    next_retention_check: i64,
    /// State for topic ids: a counter mixed with the broker id, so ids never repeat.
    id_counter: u64,
    id_seed: u64,
    /// This broker's member of the metadata quorum.
    controller: Controller,
    /// Admin requests waiting for their metadata record, by proposal token.
    pending_admin: BTreeMap<u64, quorum::PendingAdmin>,
    /// Peer addresses already handed to the driver, by broker.
    peer_addresses: BTreeMap<i32, String>,
    /// Partition data found at startup, until the metadata says which topics it belongs to.
    recovered_logs: BTreeMap<Arc<str>, RecoveredLogs>,
    /// Replicas' Raft state found at startup, until their partitions are created.
    recovered_replicas: BTreeMap<TopicPartition, RaftPersist>,
    /// The time of the input being handled.
    now: Now,
    /// Replicas with work for the next drive.
    dirty_replicas: BTreeSet<TopicPartition>,
    /// Read token -> the replica that asked (partition, topic id, its tag).
    replica_reads: BTreeMap<u64, (TopicPartition, Vec<u8>, u64)>,
    /// Replica ticks so far, and when the next is due.
    replica_ticks: u64,
    next_replica_tick: i64,
    /// Raft messages of this step, by peer: sent as one frame each.
    outbox: BTreeMap<i32, Vec<GroupMessage>>,
    /// Produces waiting for replicated partitions.
    replicated_produces: Vec<ReplicatedProduce>,
    /// The last sync that completed.
    last_synced: u64,
    /// The consumer groups this broker coordinates.
    coordinator: Coordinator,
    /// Group requests waiting for the coordinator's answer, by waiter handle.
    group_waiters: BTreeMap<u64, (ReplyTo, Option<authorize::Narrowed>)>,
    /// Internal topics' partitions being read back for their coordinator.
    group_loads: BTreeMap<(groups::Internal, i32), GroupLoad>,
    /// Internal partitions whose load found a damaged batch, with the leader epoch it was
    /// found in: not loaded again until the leadership moves.
    blocked_loads: BTreeMap<(groups::Internal, i32), i32>,
    /// The transactions this broker coordinates.
    txn_coordinator: TxnCoordinator,
    /// Transaction requests waiting for the coordinator's answer, by waiter handle.
    txn_waiters: BTreeMap<u64, ReplyTo>,
    /// Transaction markers being delivered and written.
    markers: txns::Markers,
    /// Something that decides which groups this broker coordinates may have changed (a
    /// replica of `__consumer_offsets` was driven, the metadata changed, a tick passed).
    coordinator_stale: bool,
    /// Inside a batch of inputs: `after_input` waits for its end.
    batching: bool,
    /// Producer ids for InitProducerId.
    producer_ids: producers::ProducerIds,
    /// Draws SCRAM server nonces.
    nonce_rng: ChaCha8Rng,
    /// The ACLs last reported as an [`Observation::Acls`].
    reported_acls: Option<BTreeSet<crate::security::acl::AclBinding>>,
    /// The credentials last reported as an [`Observation::Credentials`].
    reported_scram: Option<BTreeMap<(String, i32), crate::security::scram::ScramCredential>>,
    /// Only with the canary [`Canary::CacheCredentials`] planted: each user's credentials as
    /// its first login found them.
    canary_credential_cache: BTreeMap<String, Vec<crate::security::scram::ScramCredential>>,
}

impl Broker {
    /// A broker with the given config and what was recovered from disk.
    /// `seed` makes generated ids and election timeouts deterministic (the simulator passes
    /// its seed). Fails if the recovered quorum state cannot be used.
    pub fn new(
        config: BrokerConfig,
        recovered: Recovered,
        seed: u64,
        now: Now,
    ) -> Result<Self, String> {
        let registration = BrokerRegistration {
            id: config.broker_id,
            host: config.advertised_host.clone(),
            port: config.advertised_port,
            rack: config.cluster.rack.clone(),
            fenced: false,
            peer_address: config.cluster.peer_address.clone(),
            endpoints: config.endpoints.clone(),
        };
        let loaded = config.report_commits.then(|| {
            let quorum = recovered
                .quorum
                .iter()
                .map(|q| (METADATA_GROUP.to_string(), q));
            let replicas = recovered.replicas.iter().map(|(tp, r)| (tp.to_string(), r));
            let groups = quorum
                .chain(replicas)
                .map(|(group, state)| (group, RaftStateFacts::of(state)))
                .collect();
            Observation::RaftStateLoaded { groups }
        });
        let controller =
            Controller::new(&config.cluster, registration, recovered.quorum, seed, now)?;
        let recovered_logs = recovered
            .topics
            .into_iter()
            .map(|t| {
                let parts = t
                    .partitions
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (i as i32, s));
                (Arc::from(t.name.as_str()), (t.record.id, parts.collect()))
            })
            .collect();
        let next_retention_check = now.mono + config.retention_check_interval_ms;
        let coordinator = Coordinator::new(config.groups.clone(), seed ^ 0x6772_6f75_7073, now);
        let config_txns = config.txns.clone();
        let nonce_seed = config.security.nonce_seed;
        let mut broker = Broker {
            topic_defaults: config.topic_defaults.clone(),
            dynamic_configs: BTreeMap::new(),
            config,
            topics: BTreeMap::new(),
            connections: BTreeMap::new(),
            outputs: VecDeque::new(),
            dirty_segments: BTreeSet::new(),
            dirty_partitions: BTreeSet::new(),
            in_flight_sync: None,
            unsynced: None,
            shutting_down: false,
            next_token: 1,
            next_sync_token: 1,
            pending_produces: VecDeque::new(),
            pending_seals: Vec::new(),
            parked_fetches: Vec::new(),
            reader_at_end_until: i64::MIN,
            jobs: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_job: 1,
            next_retention_check,
            id_counter: 0,
            id_seed: seed,
            controller,
            pending_admin: BTreeMap::new(),
            peer_addresses: BTreeMap::new(),
            recovered_logs,
            recovered_replicas: recovered.replicas,
            now,
            dirty_replicas: BTreeSet::new(),
            replica_reads: BTreeMap::new(),
            replica_ticks: 0,
            next_replica_tick: now.mono,
            outbox: BTreeMap::new(),
            replicated_produces: Vec::new(),
            last_synced: 0,
            coordinator,
            group_waiters: BTreeMap::new(),
            group_loads: BTreeMap::new(),
            blocked_loads: BTreeMap::new(),
            txn_coordinator: TxnCoordinator::new(config_txns, now),
            txn_waiters: BTreeMap::new(),
            markers: txns::Markers::default(),
            coordinator_stale: true,
            batching: false,
            producer_ids: producers::ProducerIds::new(recovered.producers),
            nonce_rng: ChaCha8Rng::seed_from_u64(seed ^ nonce_seed),
            reported_acls: None,
            reported_scram: None,
            canary_credential_cache: BTreeMap::new(),
        };
        // Topic defaults as the recovered image's dynamic broker configs make them, before
        // any topic takes its config from them.
        broker.refresh_topic_defaults();
        let names: Vec<String> = broker.controller.image().topics.keys().cloned().collect();
        for name in names {
            broker.reconcile_topic(&name);
        }
        // Data of topics the metadata no longer has (deleted while this broker was away).
        for (name, (_, partitions)) in std::mem::take(&mut broker.recovered_logs) {
            warn!(topic = %name, "deleting local data of a topic the cluster no longer has");
            broker.storage(StorageOp::RemoveTopic(name.clone()));
            for index in partitions.into_keys() {
                broker.storage(StorageOp::DeletePartition(TopicPartition::new(
                    &name, index,
                )));
            }
        }
        // What it read back of its Raft state, before anything it writes.
        if let Some(loaded) = loaded {
            broker.outputs.push_front(Output::Observed(loaded));
        }
        // A restarted broker knows its peers from the recovered image before any record.
        broker.announce_peer_addresses();
        // The ACLs and credentials it enforces from the start (a restarted broker: what it
        // recovered).
        broker.report_security();
        broker.after_input();
        Ok(broker)
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The log of one partition, for inspection (tests, admin tools).
    pub fn log(&self, topic: &str, partition: i32) -> Option<&PartitionLog> {
        self.topics.get(topic)?.partition(partition)
    }

    /// The log of a partition a client asked for, or the error to answer with.
    fn log_for_client(&self, topic: &str, partition: i32) -> Result<&PartitionLog, ResponseError> {
        self.topics
            .get(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?
            .log_for_client(partition)
    }

    /// Names of all topics, sorted.
    pub fn topic_names(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(|k| &**k)
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A complete request frame from `conn` (without its 4-byte size prefix).
    pub fn handle_request(&mut self, now: Now, conn: ConnectionId, frame: Bytes) {
        self.advance_clock(now);
        let connection = self.connections.entry(conn).or_default();
        let seq = connection.next_seq;
        connection.next_seq += 1;
        if connection.raw_sasl {
            self.raw_sasl_token(conn, seq, &frame);
            return self.after_input();
        }
        match self.decode_request(conn, seq, frame) {
            Ok(Some((reply_to, request, client_id))) => {
                self.dispatch(now, reply_to, request, &client_id)
            }
            Ok(None) => {}
            Err(reason) => {
                warn!(conn, %reason, "closing connection: bad request");
                self.close(conn);
            }
        }
        self.after_input();
    }

    /// A client connected from `address` (an IP, or `ip:port`) on `listener`. A
    /// connection never announced counts as an anonymous one on a PLAINTEXT listener.
    pub fn handle_connect(&mut self, conn: ConnectionId, address: &str, listener: &Listener) {
        let ip = address.rsplit_once(':').map_or(address, |(ip, _)| ip);
        let connection = self.connections.entry(conn).or_default();
        connection.host = format!("/{ip}");
        connection.listener = listener.name.clone();
        connection.auth = Authentication::new(listener);
    }

    /// A storage operation finished.
    pub fn handle_storage(&mut self, now: Now, completion: StorageCompletion) {
        self.advance_clock(now);
        match completion {
            StorageCompletion::Synced { token } => self.on_synced(token),
            StorageCompletion::Read { token, result } => {
                if !self.on_replica_read(token, &result)
                    && !self.on_load_read(token, &result)
                    && !self.on_producer_load_read(token, &result)
                {
                    self.on_read(token, result)
                }
            }
        }
        self.after_input();
    }

    /// The client on `conn` disconnected; forget its pending responses.
    pub fn handle_disconnect(&mut self, conn: ConnectionId) {
        self.connections.remove(&conn);
        self.parked_fetches.retain(|f| f.reply_to.conn != conn);
    }

    /// Time passed; call at or after [`Self::poll_timeout`]. Every timer of the table that
    /// is due fires, in the table's order.
    pub fn handle_timeout(&mut self, now: Now) {
        self.advance_clock(now);
        for timer in Timer::ALL {
            if self.deadline(timer).is_some_and(|due| now.mono >= due) {
                self.fire(timer, now);
            }
        }
        self.after_input();
    }

    /// When `timer` is next due, if it is set.
    fn deadline(&self, timer: Timer) -> Option<i64> {
        match timer {
            Timer::ParkedFetches => self.parked_fetches.iter().map(|f| f.deadline).min(),
            Timer::PendingAdmin => self.pending_admin.values().map(|p| p.deadline).min(),
            Timer::ReplicatedProduces => self.replicated_produce_deadline(),
            Timer::ProducerIds => self.producer_id_deadline(),
            Timer::ReplicaTick => Some(self.next_replica_tick),
            Timer::Controller => Some(self.controller.poll_timeout()),
            Timer::Groups => Some(self.coordinator.poll_timeout()),
            Timer::Transactions => Some(self.txn_coordinator.poll_timeout()),
            Timer::Markers => self.marker_deadline(),
            Timer::Retention => Some(self.next_retention_check),
            Timer::UnawaitedSync => self.unawaited_sync_deadline(),
        }
    }

    /// Carries out what `timer` stands for; it is due.
    fn fire(&mut self, timer: Timer, now: Now) {
        match timer {
            Timer::ParkedFetches => self.expire_parked_fetches(now),
            Timer::PendingAdmin => self.expire_pending_admin(now),
            Timer::ReplicatedProduces => self.expire_replicated_produces(now),
            Timer::ProducerIds => self.expire_producer_id_waits(now),
            Timer::ReplicaTick => {
                self.next_replica_tick = now.mono + self.config.cluster.tick_ms;
                self.tick_replicas();
                self.coordinator_stale = true;
            }
            Timer::Controller => self.controller.handle_timeout(now),
            Timer::Groups => self.coordinator.tick(now),
            Timer::Transactions => self.txn_coordinator.tick(now),
            Timer::Markers => self.push_markers(now),
            Timer::Retention => {
                self.next_retention_check = now.mono + self.config.retention_check_interval_ms;
                self.enforce_retention(now);
            }
            // `after_input`, which every input ends with, starts the sync.
            Timer::UnawaitedSync => {}
        }
    }

    /// Takes the time of an input. A driver whose monotonic clock went back is a bug in
    /// the driver, and every timer here would misfire: it stops the broker loudly.
    fn advance_clock(&mut self, now: Now) {
        assert!(
            now.mono >= self.now.mono || is_planted(Canary::TimersOnWallClock),
            "monotonic time went back from {} to {}",
            self.now.mono,
            now.mono
        );
        self.now = now;
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing the driver must do, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called, on the monotonic clock: the
    /// earliest deadline of the timer table. A broker without replicated partitions ticks
    /// them only along with another timer.
    pub fn poll_timeout(&self) -> Option<i64> {
        Timer::ALL
            .into_iter()
            .filter(|&t| t != Timer::ReplicaTick || self.has_replicas())
            .filter_map(|t| self.deadline(t))
            .min()
    }

    /// Starts a controlled shutdown: roles this broker leads are handed to others, so the
    /// cluster does not wait out an election timeout. Keep driving the broker until
    /// [`Self::has_handed_over`] (or a deadline), then stop.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.snapshot_producers();
        self.controller.hand_over();
        self.hand_over_partitions();
        self.after_input();
    }

    /// True once this broker leads nothing another broker could take over.
    pub fn has_handed_over(&self) -> bool {
        (!self.controller.is_leader() || self.config.cluster.voters.len() <= 1)
            && !self.leads_any_partition()
    }

    /// True once nothing is waiting on the disk: used for a clean shutdown.
    pub fn is_quiescent(&self) -> bool {
        self.in_flight_sync.is_none()
            && self.dirty_segments.is_empty()
            && self.reads.is_empty()
            && self.pending_seals.is_empty()
    }

    // ---- plumbing -----------------------------------------------------------------------

    fn decode_request(
        &mut self,
        conn: ConnectionId,
        seq: u64,
        mut frame: Bytes,
    ) -> Result<Option<(ReplyTo, RequestKind, String)>, String> {
        if frame.len() < 8 {
            return Err(format!(
                "frame of {} bytes is shorter than a request header",
                frame.len()
            ));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api_key =
            ApiKey::try_from(raw_key).map_err(|_| format!("unknown api key {raw_key}"))?;
        let reply_to = ReplyTo {
            conn,
            seq,
            api_key,
            version,
            correlation_id,
        };
        let Some(range) = admin::supported_versions(api_key) else {
            return Err(format!("api {api_key:?} is not implemented"));
        };
        if version < range.0 || version > range.1 {
            if api_key == ApiKey::ApiVersions {
                // KIP-511: answer with v0 so any client can read the error and our ranges.
                let response = admin::api_versions_response(true);
                self.respond(
                    ReplyTo {
                        version: 0,
                        ..reply_to
                    },
                    Some(response),
                );
                return Ok(None);
            }
            return Err(format!("{api_key:?} v{version} is not supported"));
        }
        let header_version = api_key.request_header_version(version);
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| format!("bad {api_key:?} header: {e}"))?;
        let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
        let request = if crate::legacy::is_legacy(api_key, version) {
            crate::legacy::decode(api_key, version, frame, self.now.wall)
        } else {
            RequestKind::decode(api_key, &mut frame, version).map_err(|e| e.to_string())
        }
        .map_err(|e| format!("bad {api_key:?} v{version} body: {e}"))?;
        debug!(conn, ?api_key, version, correlation_id, "request");
        Ok(Some((reply_to, request, client_id)))
    }

    fn dispatch(&mut self, now: Now, reply_to: ReplyTo, request: RequestKind, client_id: &str) {
        let conn = reply_to.conn;
        if !security::allowed_before_authentication(reply_to.api_key) {
            // Kafka closes the connection too: a client that skips SASL is misconfigured.
            if let Some(why) = self.session_refusal(conn) {
                warn!(conn, api = ?reply_to.api_key, why, "closing the connection");
                return self.close(conn);
            }
        }
        if let Some(refusal) = self.request_refusal(conn, &request) {
            return self.respond(reply_to, Some(refusal));
        }
        let mut response = match request {
            RequestKind::ApiVersions(_) => Some(admin::api_versions_response(false)),
            RequestKind::SaslHandshake(r) => Some(self.sasl_handshake(reply_to, &r)),
            RequestKind::SaslAuthenticate(r) => return self.sasl_authenticate(reply_to, &r),
            RequestKind::DescribeAcls(r) => Some(self.describe_acls(conn, &r)),
            RequestKind::CreateAcls(r) => return self.create_acls(now, reply_to, r),
            RequestKind::DeleteAcls(r) => return self.delete_acls(now, reply_to, r),
            RequestKind::DescribeUserScramCredentials(r) => Some(self.describe_scram(conn, &r)),
            RequestKind::AlterUserScramCredentials(r) => return self.alter_scram(now, reply_to, r),
            RequestKind::Metadata(r) => return self.metadata(now, reply_to, r),
            RequestKind::CreateTopics(r) => return self.create_topics(now, reply_to, r),
            RequestKind::DeleteTopics(r) => return self.delete_topics(now, reply_to, r),
            RequestKind::CreatePartitions(r) => return self.create_partitions(now, reply_to, r),
            RequestKind::DescribeConfigs(r) => Some(self.describe_configs(r)),
            RequestKind::IncrementalAlterConfigs(r) => {
                return self.incremental_alter_configs(now, reply_to, r)
            }
            RequestKind::AlterConfigs(r) => return self.alter_configs(now, reply_to, r),
            RequestKind::Produce(r) => return self.produce(now, ProduceFor::Client(reply_to), r),
            RequestKind::Fetch(r) => return self.fetch(now, reply_to, r),
            RequestKind::ListOffsets(r) => return self.list_offsets(reply_to, r),
            RequestKind::OffsetForLeaderEpoch(r) => Some(self.offset_for_leader_epoch(r)),
            RequestKind::AlterPartitionReassignments(r) => {
                return self.alter_partition_reassignments(now, reply_to, r)
            }
            RequestKind::ListPartitionReassignments(r) => {
                Some(self.list_partition_reassignments(r))
            }
            RequestKind::FindCoordinator(r) => return self.find_coordinator(now, reply_to, r),
            RequestKind::InitProducerId(r) => return self.init_producer_id(now, reply_to, r),
            r @ (RequestKind::AddPartitionsToTxn(_)
            | RequestKind::AddOffsetsToTxn(_)
            | RequestKind::EndTxn(_)) => return self.txn_request(now, reply_to, r),
            RequestKind::DescribeTransactions(r) => Some(self.txn_coordinator.describe(&r)),
            RequestKind::ListTransactions(r) => Some(self.txn_coordinator.list(now, &r)),
            RequestKind::ListGroups(r) => Some(self.coordinator.list_groups(&r)),
            RequestKind::DescribeGroups(r) => Some(self.coordinator.describe_groups(&r)),
            r @ (RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetCommit(_)
            | RequestKind::OffsetFetch(_)
            | RequestKind::OffsetDelete(_)
            | RequestKind::TxnOffsetCommit(_)
            | RequestKind::DeleteGroups(_)) => {
                return self.group_request(now, reply_to, client_id, r)
            }
            _ => {
                // decode_request admits only supported APIs; anything else is a bug here.
                warn!(api = ?reply_to.api_key, "no handler; closing");
                self.close(reply_to.conn);
                return;
            }
        };
        if let Some(response) = &mut response {
            self.filter_response(conn, response);
        }
        self.respond(reply_to, response);
    }

    /// Queues the response to one request; `None` sends nothing (acks=0).
    fn respond(&mut self, reply_to: ReplyTo, response: Option<ResponseKind>) {
        if !self.connections.contains_key(&reply_to.conn) {
            return; // The client left; its answer has nowhere to go.
        }
        let frame = match response.map(|r| encode_response(reply_to, &r)).transpose() {
            Ok(frame) => frame,
            Err(e) => {
                warn!(conn = reply_to.conn, api = ?reply_to.api_key, error = %e, "response encoding failed");
                self.close(reply_to.conn);
                return;
            }
        };
        self.queue_frame(reply_to.conn, reply_to.seq, frame);
    }

    /// Queues the frame answering request `seq` of `conn`, and sends what is now in order.
    fn queue_frame(&mut self, conn: ConnectionId, seq: u64, frame: Option<Bytes>) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        connection.ready.insert(seq, frame);
        while let Some(frame) = connection.ready.remove(&connection.next_to_send) {
            connection.next_to_send += 1;
            if let Some(frame) = frame {
                self.outputs.push_back(Output::Send { conn, frame });
            }
        }
    }

    fn close(&mut self, conn: ConnectionId) {
        self.handle_disconnect(conn);
        self.outputs.push_back(Output::Close(conn));
    }

    fn storage(&mut self, op: StorageOp) {
        let observed = self
            .config
            .report_commits
            .then(|| raft_state_observation(&op))
            .flatten();
        self.outputs.push_back(Output::Storage(op));
        // After the write: the driver carries both out with no await between them, so
        // the simulator never sees a write reported that a crash kept from the disk.
        if let Some(observation) = observed {
            self.outputs.push_back(Output::Observed(observation));
        }
    }

    fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// A fresh topic id: deterministic from the seed, unique per broker run and id.
    fn new_topic_id(&mut self) -> [u8; 16] {
        self.id_counter += 1;
        let mut x = self.id_seed ^ (self.id_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            // splitmix64: a well-mixed stream from a counter.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        out
    }

    /// Starts a batch of inputs: until [`Self::end_batch`], the work that follows each input
    /// (driving the Raft groups, sending their messages, starting a sync) waits, so inputs
    /// that arrived together share it: one frame per follower carries the appends of many
    /// requests, and one fsync makes them durable. Outputs of the inputs themselves
    /// (answers, appends) are not held back.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends a batch of inputs (see [`Self::begin_batch`]) and does the work they wait for.
    pub fn end_batch(&mut self) {
        self.batching = false;
        self.after_input();
    }

    /// Work that follows every input: drive the metadata quorum, then start a group-commit
    /// sync if data is waiting.
    fn after_input(&mut self) {
        if self.batching {
            return;
        }
        self.drive_quorum();
        // The coordinator writes through replicas, and replicas' commits answer its writes:
        // go round until neither has work left. Replicas are driven first: a message may
        // have moved a replica's commit point, and its log's high watermark follows only in
        // the drive (a load must not begin below it).
        loop {
            if !self.dirty_replicas.is_empty() {
                self.drive_replicas();
            }
            if std::mem::take(&mut self.coordinator_stale) {
                self.reconcile_coordinator();
            }
            self.drain_coordinator(self.now);
            self.drain_txn_coordinator(self.now);
            if self.dirty_replicas.is_empty() {
                break;
            }
        }
        self.flush_outbox();
        if self.config.flush == FlushPolicy::GroupCommit {
            self.maybe_start_sync();
        }
    }

    /// True if appends were made since the last sync started.
    fn has_unsynced_appends(&self) -> bool {
        !self.dirty_partitions.is_empty() || !self.dirty_segments.is_empty()
    }

    fn maybe_start_sync(&mut self) {
        if !self.has_unsynced_appends() {
            self.unsynced = None;
            return;
        }
        let since = self.unsynced.map_or(self.now.mono, |u| u.since);
        let awaited = self.unsynced.is_some_and(|u| u.awaited) || self.sync_awaited();
        self.unsynced = Some(Unsynced { since, awaited });
        let due = awaited || self.now.mono >= since + UNAWAITED_SYNC_DELAY_MS;
        if self.in_flight_sync.is_some() || !due {
            return;
        }
        self.unsynced = None;
        let token = self.next_sync_token;
        self.next_sync_token += 1;
        let commits = std::mem::take(&mut self.dirty_partitions)
            .into_iter()
            .filter_map(|tp| {
                let topic = self.topics.get(&tp.topic)?;
                let point = topic.partition(tp.partition)?.end_point();
                Some((tp, topic.id, point))
            })
            .collect();
        let segments = std::mem::take(&mut self.dirty_segments)
            .into_iter()
            .collect();
        self.in_flight_sync = Some(InFlightSync { token, commits });
        self.storage(StorageOp::Sync { token, segments });
    }

    /// True if anyone waits for the next sync: an acks=all produce, a consumer parked at a
    /// high watermark or back there soon (it was parked within `READER_AT_END_MS`), a replica whose Raft log must be durable before it acknowledges or
    /// commits, a broker that is stopping. Appends nobody waits for (acks=1 and acks=0 to
    /// partitions of one replica, with no consumer at their end) can wait for company.
    fn sync_awaited(&self) -> bool {
        self.shutting_down
            || !self.pending_produces.is_empty()
            || !self.parked_fetches.is_empty()
            || self.now.mono < self.reader_at_end_until
            || self.dirty_segments.iter().any(|segment| {
                let tp = &segment.partition;
                self.topics
                    .get(&tp.topic)
                    .is_some_and(|topic| topic.raft.contains_key(&tp.partition))
            })
    }

    /// When appends that nobody waits for must be synced, if any are waiting.
    fn unawaited_sync_deadline(&self) -> Option<i64> {
        let unsynced = self
            .unsynced
            .filter(|_| self.has_unsynced_appends() && self.in_flight_sync.is_none())?;
        Some(unsynced.since + UNAWAITED_SYNC_DELAY_MS)
    }

    fn on_synced(&mut self, token: u64) {
        let Some(sync) = self.in_flight_sync.take_if(|s| s.token == token) else {
            warn!(token, "completion for a sync that is not in flight");
            return;
        };
        let (durable, waiting) = std::mem::take(&mut self.pending_seals)
            .into_iter()
            .partition(|(t, _)| *t <= token);
        self.pending_seals = waiting;
        for (_, seal) in durable {
            self.storage(seal);
        }
        let mut advanced = BTreeSet::new();
        for (tp, topic_id, point) in sync.commits {
            let Some(topic) = self.topics.get_mut(&tp.topic).filter(|t| t.id == topic_id) else {
                continue; // Deleted (or deleted and recreated) while the sync ran.
            };
            if let Some(log) = topic.partition_mut(tp.partition) {
                if log.commit(point) {
                    advanced.insert(tp);
                }
            }
        }
        self.complete_produces(token);
        self.replicas_synced(token);
        self.advanced(&advanced);
    }

    /// Marks an append as made: in group-commit mode it becomes visible at the next sync,
    /// otherwise at once. Returns the sync token that makes it durable.
    fn note_append(&mut self, tp: &TopicPartition) -> u64 {
        match self.config.flush {
            FlushPolicy::GroupCommit => {
                self.dirty_partitions.insert(tp.clone());
            }
            FlushPolicy::Never => {
                let log = self
                    .topics
                    .get_mut(&tp.topic)
                    .and_then(|t| t.partition_mut(tp.partition))
                    .expect("appended partition exists");
                if log.commit(log.end_point()) {
                    self.advanced(&BTreeSet::from([tp.clone()]));
                }
            }
        }
        self.next_sync_token
    }

    fn enforce_retention(&mut self, now: Now) {
        let mut ops = Vec::new();
        let expiration = self.config.producer_id_expiration_ms;
        for topic in self.topics.values_mut() {
            for (index, log) in &mut topic.logs {
                log.producers_mut().expire(now.wall, expiration);
                let mut log_ops = Vec::new();
                log.maybe_roll(0, now.wall, &topic.config, &mut log_ops);
                let moved = log.enforce_retention(now.wall, &topic.config, &mut log_ops);
                let replica = topic.raft.get_mut(index);
                ops.extend(Self::retention_ops(replica, log, moved, log_ops));
            }
        }
        self.emit_log_ops(ops);
        self.snapshot_producers();
    }

    /// Emits a log's storage operations; in group-commit mode the files they write (and the
    /// directory entries of new files) join the next sync.
    ///
    /// A sealed segment's index file is written only after the sync that makes the segment's
    /// last bytes durable: recovery trusts a segment whose index matches its length, so the
    /// index must never describe bytes a power loss could still tear.
    fn emit_log_ops(&mut self, ops: Vec<StorageOp>) {
        for op in ops {
            if self.config.flush == FlushPolicy::GroupCommit {
                match &op {
                    StorageOp::Append { segment, .. }
                    | StorageOp::CreateSegment(segment)
                    | StorageOp::TruncateSegment { segment, .. }
                    | StorageOp::Rewrite { segment, .. } => {
                        self.dirty_segments.insert(segment.clone());
                    }
                    StorageOp::SealSegment { .. } => {
                        self.pending_seals.push((self.next_sync_token, op));
                        continue;
                    }
                    StorageOp::DeletePartition(tp) => {
                        self.dirty_segments.retain(|s| s.partition != *tp);
                        self.pending_seals.retain(|(_, seal)| {
                            !matches!(seal, StorageOp::SealSegment { segment, .. } if segment.partition == *tp)
                        });
                    }
                    _ => {}
                }
            }
            self.storage(op);
        }
    }
}

/// Encodes a response frame: size, header, body.
/// Codec errors come back as text: core keeps `anyhow` out of its API.
fn encode_response(reply_to: ReplyTo, response: &ResponseKind) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0); // size, patched below
    let header = ResponseHeader::default().with_correlation_id(reply_to.correlation_id);
    let header_version = reply_to.api_key.response_header_version(reply_to.version);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    if crate::legacy::is_legacy(reply_to.api_key, reply_to.version) {
        crate::legacy::encode(reply_to.version, response, &mut buf)?;
    } else {
        response
            .encode(&mut buf, reply_to.version)
            .map_err(|e| e.to_string())?;
    }
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}
