//! What the clients saw, and the checkers that judge it (the oracle).
//!
//! Workloads report every outcome here as it happens. Facts are kept per partition offset:
//! a record acknowledged with acks=all, or read by any consumer (reads only ever show
//! committed data), is a fact, and two facts about one offset must agree. At the end a full
//! read of every partition must still hold every acknowledged record.

use seedlog_core::security::acl::{
    authorize, AclBinding, AuthorizerConfig, Operation, Requester, ResourceType,
};
use seedlog_core::security::scram::{Mechanism, ScramCredential};
use seedlog_core::security::ANONYMOUS;

use std::collections::{BTreeMap, BTreeSet};

use seedlog_core::broker::RaftStateFacts;
use seedlog_core::CommittedEntry;

use crate::group_facts::GroupFacts;

/// A partition, as the simulator names it.
pub type Partition = (String, i32);

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which check found it.
    pub check: Check,
    /// What was seen.
    pub detail: String,
}

/// The checks, each a promise the cluster makes. A new checker is a variant here (its
/// name is what the summary prints) and the code in [`History`] that calls `violate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// Every acks=all record is in the final read at the offset it was acknowledged at.
    AckedWritesDurable,
    /// Every topic whose creation was acknowledged exists with its partitions.
    TopicsDurable,
    /// Any two observations of one offset agree, and the final read has no holes.
    OffsetsAgree,
    /// A consumer reads each partition in offset order, skipping nothing.
    ReadsInOrder,
    /// A consumer never sees a partition's high watermark move back.
    HwMonotonic,
    /// No fetch returns bytes that fail to decode.
    NoCorruptReads,
    /// At most one broker leads a Raft group in a term.
    OneLeaderPerTerm,
    /// Replicas of a partition hold the same batch at each offset.
    ReplicasAgree,
    /// Every broker that reports a partition entry committed reports the same entry at
    /// that Raft index: same term, offsets and CRC (the brokers' own commit events, the
    /// state machine safety of Raft checked as it happens, not only at the end).
    CommitsAgree,
    /// When an entry is first reported committed, a majority of its partition's replicas
    /// hold an intact copy of it on disk (or one a fault damaged at rest since): a copy
    /// never intact never counts towards a quorum.
    CommitsIntact,
    /// A group generation gives each partition to at most one member.
    GroupOneOwner,
    /// Committed offsets read back are the ones committed, and never move back.
    CommittedOffsets,
    /// An idempotent producer's records are in the log once each, in the order it sent
    /// them, and an in-sequence batch is never refused as out of sequence.
    IdempotentOnce,
    /// No producer id is handed out twice.
    ProducerIdsUnique,
    /// A read_committed consumer never reads past the last stable offset, nor a record of
    /// a transaction that aborted.
    ReadCommitted,
    /// The last stable offset a consumer sees never moves back.
    LsoMonotonic,
    /// Read with read_committed after the heal, a committed transaction is there whole
    /// (each record once), an aborted one not at all, one of unknown outcome whole or not
    /// at all; and every partition becomes stable.
    TxnAtomic,
    /// Read with read_committed after the heal, the consume-transform-produce output holds
    /// each input record below its group's committed offset exactly once, with its value,
    /// and nothing of a record at or above it.
    TransformExactlyOnce,
    /// No write to the guarded topic is acknowledged by a broker whose ACLs denied it for
    /// the whole time the request was in flight (judged by core's own decision function
    /// over the ACLs the broker reported as it applied them).
    AclsEnforced,
    /// What a broker reads back of a Raft group's durable state at start (hard state,
    /// snapshot) is what it last wrote: nothing lost, nothing damaged taken for real.
    StateDurable,
    /// No broker accepts a SASL login whose password none of the credentials it held
    /// while the login was under way takes (a changed or deleted password stops working).
    CredentialsEnforced,
    /// Every peer handshake agrees the newest protocol version both brokers' binaries
    /// speak, and none is refused: through a rolling upgrade, old and new binaries talk.
    PeerVersions,
    /// After the faults heal, the cluster serves again within the deadline.
    Liveness,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 23] = [
        Check::AckedWritesDurable,
        Check::TopicsDurable,
        Check::OffsetsAgree,
        Check::ReadsInOrder,
        Check::HwMonotonic,
        Check::NoCorruptReads,
        Check::OneLeaderPerTerm,
        Check::ReplicasAgree,
        Check::CommitsAgree,
        Check::CommitsIntact,
        Check::StateDurable,
        Check::GroupOneOwner,
        Check::CommittedOffsets,
        Check::IdempotentOnce,
        Check::ProducerIdsUnique,
        Check::ReadCommitted,
        Check::LsoMonotonic,
        Check::TxnAtomic,
        Check::TransformExactlyOnce,
        Check::AclsEnforced,
        Check::CredentialsEnforced,
        Check::PeerVersions,
        Check::Liveness,
    ];

    /// The name the summary prints.
    pub fn name(self) -> &'static str {
        match self {
            Check::AckedWritesDurable => "acked-writes-durable",
            Check::TopicsDurable => "topics-durable",
            Check::OffsetsAgree => "offsets-agree",
            Check::ReadsInOrder => "reads-in-order",
            Check::HwMonotonic => "hw-monotonic",
            Check::NoCorruptReads => "no-corrupt-reads",
            Check::OneLeaderPerTerm => "one-leader-per-term",
            Check::ReplicasAgree => "replicas-agree",
            Check::CommitsAgree => "commits-agree",
            Check::CommitsIntact => "commits-intact",
            Check::StateDurable => "state-durable",
            Check::GroupOneOwner => "group-one-owner",
            Check::CommittedOffsets => "committed-offsets",
            Check::IdempotentOnce => "idempotent-once",
            Check::ProducerIdsUnique => "producer-ids-unique",
            Check::ReadCommitted => "read-committed",
            Check::LsoMonotonic => "lso-monotonic",
            Check::TxnAtomic => "txn-atomic",
            Check::TransformExactlyOnce => "transform-exactly-once",
            Check::AclsEnforced => "acls-enforced",
            Check::CredentialsEnforced => "credentials-enforced",
            Check::PeerVersions => "peer-versions",
            Check::Liveness => "liveness",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// The value prefix of records written by idempotent producers: `idem<producer>-<n>`,
/// `n` rising with every record the producer sends.
pub const IDEMPOTENT_PREFIX: &str = "idem";

/// The value prefix of records written by transactional producers:
/// `txn<producer>-<transaction>-<k>`.
pub const TXN_PREFIX: &str = "txn";

/// The value a consumer reports for a control record.
pub const CONTROL_VALUE: &str = "<control>";

/// The value prefix of the transform's output records:
/// `ctp|<input topic>|<input partition>|<input offset>|<input value>`.
pub const TRANSFORM_PREFIX: &str = "ctp|";

/// The output record of input record `offset` of `partition`.
pub fn transformed(partition: &Partition, offset: i64, value: &str) -> String {
    format!(
        "{TRANSFORM_PREFIX}{}|{}|{offset}|{value}",
        partition.0, partition.1
    )
}

/// The input record an output value came from: (input partition, offset, value).
fn source_of(output: &str) -> Option<(Partition, i64, &str)> {
    let mut parts = output.strip_prefix(TRANSFORM_PREFIX)?.splitn(4, '|');
    let topic = parts.next()?;
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(((topic.to_string(), partition), offset, parts.next()?))
}

/// How a transaction ended, as its producer learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFate {
    /// EndTxn(commit) was answered.
    Committed,
    /// EndTxn(abort) was answered, or the producer was fenced or gave up before it.
    Aborted,
    /// EndTxn was sent and never answered.
    Unknown,
}

/// One transaction: its fate once known, and the values it sent, by partition.
type TxnSent = (Option<TxnFate>, BTreeMap<Partition, Vec<String>>);

/// What the transactional workload wrote and read.
#[derive(Default)]
struct Txns {
    /// By (producer, transaction).
    txns: BTreeMap<(u32, u64), TxnSent>,
    /// Records read with read_committed during the run: (value, partition, offset).
    reads: Vec<(String, Partition, i64)>,
    /// The last LSO each (reader, partition) saw.
    last_lso: BTreeMap<(u32, Partition), i64>,
}

/// Counters for the summary.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Produce requests sent.
    pub produce_requests: u64,
    /// Records acknowledged with acks=all.
    pub acked_durable: u64,
    /// Records acknowledged with acks=1.
    pub acked_leader: u64,
    /// Records whose produce timed out or lost its connection.
    pub indeterminate: u64,
    /// Records refused with an error code.
    pub refused: u64,
    /// Records read by consumers.
    pub reads: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Acknowledged records missing from the final read that were excused: they lived in a
    /// partition's only copy, and its disk damaged them.
    pub excused: u64,
    /// Transactions ended: committed, aborted, of unknown outcome.
    pub txns: [u64; 3],
    /// Peer connections opened, by the protocol version they agreed.
    pub peer_links: BTreeMap<u8, u64>,
}

/// The topic whose writes the `acl_flippers` workload denies now and then.
pub const GUARDED: &str = "guarded";

/// The user whose password the `credential_flippers` workload changes now and then.
pub const SASL_USER: &str = "sim-user";

/// The `n`th password the credential flippers give [`SASL_USER`] (0: one never given).
pub fn sasl_password(n: u32) -> String {
    format!("password-{n}")
}

/// Everything the run observed.
#[derive(Default)]
pub struct History {
    facts: BTreeMap<Partition, BTreeMap<i64, (String, &'static str)>>,
    durable_acks: BTreeMap<Partition, BTreeMap<i64, String>>,
    /// Per partition with a single copy, the lowest offset whose batch the disk corrupted:
    /// losses at or after it are excused (a single copy cannot survive a flipped bit), wrong
    /// data never is. The fault atlas keeps a partition with more copies recoverable, and
    /// nothing of it is ever excused.
    damaged: BTreeMap<Partition, i64>,
    /// (broker index, partition, base offset) of each batch a bit flip struck at rest.
    flipped_at_rest: BTreeSet<(usize, Partition, i64)>,
    last_hw: BTreeMap<(u32, Partition), i64>,
    /// (Raft group, term) -> the broker that said it leads it.
    leaders: BTreeMap<(String, u64), i32>,
    /// Per partition (and topic id), the first report of each committed Raft index, and
    /// the broker that made it.
    commits: BTreeMap<(String, [u8; 16]), Commits>,
    violations: Vec<Violation>,
    groups: GroupFacts,
    /// Producer ids handed out, and when.
    producer_ids: BTreeMap<i64, u64>,
    txns: Txns,
    /// Every partition as the final read found it (the transform's input is judged by it).
    final_logs: BTreeMap<Partition, BTreeMap<i64, String>>,
    /// Per broker, when it applied each change of its ACLs and whether they then denied
    /// writes to the guarded topic.
    guarded_denied: BTreeMap<i32, Vec<(u64, bool)>>,
    /// Per broker and Raft group, the durable state it last wrote (or read back at start).
    raft_states: BTreeMap<(i32, String), RaftStateFacts>,
    /// Per broker, when it applied each change of its SCRAM credentials, and those of
    /// [`SASL_USER`] from then on.
    sasl_credentials: BTreeMap<i32, Vec<(u64, Vec<ScramCredential>)>>,
    /// The newest password the credential flippers gave [`SASL_USER`].
    newest_password: u32,
    /// Counters for the report.
    pub counts: Counts,
    trace: TraceHash,
    events: u64,
}

/// One partition's committed entries by Raft index, each as first reported, and by whom.
type Commits = BTreeMap<u64, (i32, CommittedEntry)>;

/// The run's fingerprint: FNV-1a over every traced event's time and text. Its output is
/// fixed by this code alone (std's `DefaultHasher` may change between toolchains, and a
/// pinned trace hash with it).
#[derive(Debug, Clone, Copy)]
struct TraceHash(u64);

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }
}

impl TraceHash {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Adds an event to the trace: its hash is the run's fingerprint, and it goes to the
    /// `seedlog_sim::trace` tracing target (the `--trace-out` file).
    pub fn trace(&mut self, at_ms: u64, event: impl std::fmt::Debug) {
        let line = format!("{event:?}");
        self.trace.add(&at_ms.to_le_bytes());
        self.trace.add(line.as_bytes());
        self.trace.add(b"\n");
        self.events += 1;
        tracing::info!(target: "seedlog_sim::trace", at_ms, event = %line);
    }

    /// The fingerprint of everything traced so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.0
    }

    /// Number of traced events.
    pub fn event_count(&self) -> u64 {
        self.events
    }

    pub(crate) fn violate(&mut self, check: Check, detail: String) {
        if self.violations.len() < 100 {
            self.violations.push(Violation { check, detail });
        }
    }

    /// Records a fact about an offset and checks it against earlier facts.
    fn fact(&mut self, partition: &Partition, offset: i64, value: &str, source: &'static str) {
        let excused = self.damaged_from(partition).is_some_and(|d| offset >= d);
        let facts = self.facts.entry(partition.clone()).or_default();
        match facts.get(&offset) {
            // Past a corrupted batch, recovery cut the log and the offsets were reused.
            Some((known, _)) if known != value && excused => {
                facts.insert(offset, (value.to_string(), source));
            }
            Some((known, known_source)) if known != value => {
                let detail = format!(
                    "{}-{} offset {offset}: {known_source} saw {known:?}, {source} saw {value:?}",
                    partition.0, partition.1
                );
                self.violate(Check::OffsetsAgree, detail);
            }
            Some(_) => {}
            None => {
                facts.insert(offset, (value.to_string(), source));
            }
        }
    }

    /// A broker reports the ACLs it enforces from now on.
    pub fn acls_applied(&mut self, at_ms: u64, broker: i32, bindings: &[AclBinding]) {
        let config = AuthorizerConfig {
            enabled: true,
            super_users: Vec::new(),
            allow_if_no_acl: true,
        };
        let who = Requester {
            principal: ANONYMOUS,
            host: "10.0.1.1",
        };
        let denied = !authorize(
            &config,
            bindings,
            who,
            Operation::Write,
            ResourceType::Topic,
            GUARDED,
        );
        self.trace(at_ms, ("acls", broker, bindings.len(), denied));
        self.guarded_denied
            .entry(broker)
            .or_default()
            .push((at_ms, denied));
    }

    /// A write to the guarded topic, sent at `sent_ms`, was answered by `broker` at
    /// `at_ms` with `error` (0: acknowledged).
    pub fn guarded_write(&mut self, sent_ms: u64, at_ms: u64, broker: i32, error: i16) {
        self.trace(at_ms, ("guarded-write", broker, error));
        if error != 0 {
            return;
        }
        let timeline = self.guarded_denied.get(&broker).map_or(&[][..], |t| &t[..]);
        // The state in force when the request was sent, and every change while in flight.
        let at_send = timeline.iter().rev().find(|(t, _)| *t <= sent_ms);
        let during = timeline.iter().filter(|(t, _)| *t > sent_ms && *t <= at_ms);
        let denied_throughout = at_send.is_some_and(|(_, d)| *d) && during.clone().all(|(_, d)| *d);
        if denied_throughout {
            let detail = format!(
                "broker {broker} acknowledged a write to {GUARDED} in flight {sent_ms}-{at_ms} ms \
                 while its ACLs denied it (since {} ms)",
                at_send.map_or(0, |(t, _)| *t)
            );
            self.violate(Check::AclsEnforced, detail);
        }
    }

    /// A broker wrote part of a Raft group's durable state.
    pub fn raft_state_written(&mut self, broker: i32, group: &str, facts: RaftStateFacts) {
        let last = self
            .raft_states
            .entry((broker, group.to_string()))
            .or_default();
        last.hard_state = facts.hard_state.or(last.hard_state);
        last.snapshot = facts.snapshot.or(last.snapshot);
    }

    /// A broker deleted a replica's durable state.
    pub fn raft_state_cleared(&mut self, broker: i32, group: &str) {
        self.raft_states.remove(&(broker, group.to_string()));
    }

    /// A broker started and read back `groups`: each must be what it last wrote, and no
    /// group it wrote may be missing.
    pub fn raft_state_loaded(
        &mut self,
        at_ms: u64,
        broker: i32,
        groups: &[(String, RaftStateFacts)],
    ) {
        self.trace(at_ms, ("raft-state-loaded", broker, groups.len()));
        let loaded: BTreeMap<&str, RaftStateFacts> =
            groups.iter().map(|(g, f)| (g.as_str(), *f)).collect();
        let written: Vec<(String, RaftStateFacts)> = self
            .raft_states
            .range((broker, String::new())..(broker + 1, String::new()))
            .map(|((_, g), f)| (g.clone(), *f))
            .collect();
        let mut wrong = Vec::new();
        for (group, last) in &written {
            let found = loaded.get(group.as_str()).copied().unwrap_or_default();
            if found != *last {
                wrong.push(format!("{group}: wrote {last:?}, read back {found:?}"));
            }
        }
        for (group, found) in &loaded {
            let never_written = !written.iter().any(|(g, _)| g == group);
            if never_written && *found != RaftStateFacts::default() {
                wrong.push(format!("{group}: read back {found:?}, never written"));
            }
        }
        for detail in wrong {
            self.violate(
                Check::StateDurable,
                format!("broker {broker} at start, {detail}"),
            );
        }
        self.raft_states.retain(|(b, _), _| *b != broker);
        for (group, facts) in loaded {
            self.raft_states.insert((broker, group.to_string()), facts);
        }
    }

    /// A broker reports the SCRAM credentials it checks logins against from now on.
    pub fn credentials_applied(&mut self, at_ms: u64, broker: i32, all: &[ScramCredential]) {
        let user: Vec<ScramCredential> = all
            .iter()
            .filter(|c| c.user == SASL_USER)
            .cloned()
            .collect();
        self.trace(at_ms, ("credentials", broker, all.len(), user.len()));
        self.sasl_credentials
            .entry(broker)
            .or_default()
            .push((at_ms, user));
    }

    /// A credential flipper is about to give [`SASL_USER`] password `n` (newer than any
    /// before it).
    pub fn password_set(&mut self, at_ms: u64, n: u32) {
        self.trace(at_ms, ("password-set", n));
        self.newest_password = self.newest_password.max(n);
    }

    /// The newest password the credential flippers gave, or are giving, [`SASL_USER`].
    pub fn newest_password(&self) -> u32 {
        self.newest_password
    }

    /// A login of [`SASL_USER`] with `mechanism` and `password`, begun at `sent_ms`, was
    /// answered by `broker` at `at_ms`: accepted or refused. An accepted one must be
    /// taken by the credentials the broker held at some moment while it was under way.
    pub fn login(
        &mut self,
        sent_ms: u64,
        at_ms: u64,
        broker: i32,
        mechanism: &str,
        password: &str,
        accepted: bool,
    ) {
        self.trace(at_ms, ("login", broker, mechanism, password, accepted));
        if !accepted {
            return;
        }
        let scram = Mechanism::from_name(mechanism).map(|m| m as i32);
        let takes = |held: &[ScramCredential]| {
            held.iter().any(|c| {
                scram.is_none_or(|m| c.mechanism == m) && c.verify_password(password.as_bytes())
            })
        };
        let timeline = self
            .sasl_credentials
            .get(&broker)
            .map_or(&[][..], |t| &t[..]);
        let at_send = timeline.iter().rev().find(|(t, _)| *t <= sent_ms);
        let during = timeline.iter().filter(|(t, _)| *t > sent_ms && *t <= at_ms);
        if !at_send
            .into_iter()
            .chain(during)
            .any(|(_, held)| takes(held))
        {
            let detail = format!(
                "broker {broker} accepted a {mechanism} login of {SASL_USER} with {password:?} \
                 in {sent_ms}-{at_ms} ms while no credential it held took that password"
            );
            self.violate(Check::CredentialsEnforced, detail);
        }
    }

    /// A broker reported that it became the leader of `group` in `term`.
    pub fn elected(&mut self, at_ms: u64, broker: i32, group: &str, term: u64) {
        self.trace(at_ms, ("elected", broker, group, term));
        match self.leaders.get(&(group.to_string(), term)) {
            Some(&first) if first != broker => {
                let detail = format!("{group} term {term}: brokers {first} and {broker} both lead");
                self.violate(Check::OneLeaderPerTerm, detail);
            }
            Some(_) => {}
            None => {
                self.leaders.insert((group.to_string(), term), broker);
            }
        }
    }

    /// Broker `broker` committed `entries` of partition `group` (topic `topic_id`): each
    /// must match what any broker reported committed at its index. Returns those reported
    /// for the first time.
    pub fn committed(
        &mut self,
        broker: i32,
        group: &str,
        topic_id: &[u8; 16],
        entries: &[CommittedEntry],
    ) -> Vec<CommittedEntry> {
        let known = self
            .commits
            .entry((group.to_string(), *topic_id))
            .or_default();
        let mut clashes = Vec::new();
        let mut fresh = Vec::new();
        for entry in entries {
            let (first_broker, first) = known.entry(entry.index).or_insert_with(|| {
                fresh.push(entry.clone());
                (broker, entry.clone())
            });
            let same_place = (first.term, first.base_offset, first.next_offset)
                == (entry.term, entry.base_offset, entry.next_offset);
            // A damaged copy reports no CRC; intact copies must agree.
            let same_bytes = first.crc.zip(entry.crc).is_none_or(|(a, b)| a == b);
            if !(same_place && same_bytes) {
                clashes.push(format!(
                    "{group} index {}: broker {first_broker} committed {first:?}, broker {broker} {entry:?}",
                    entry.index
                ));
            }
        }
        for detail in clashes {
            self.violate(Check::CommitsAgree, detail);
        }
        fresh
    }

    /// A broker asked to stop cleanly did not (a hung handover or drain).
    pub fn stop_hung(&mut self, at_ms: u64, broker: usize, why: &str) {
        self.trace(at_ms, ("stop-hung", broker));
        self.violate(Check::Liveness, format!("broker index {broker}: {why}"));
    }

    /// The broker that reported leading `group` in the highest term seen.
    pub fn current_leader(&self, group: &str) -> Option<i32> {
        self.leaders
            .iter()
            .filter(|((g, _), _)| g == group)
            .max_by_key(|((_, term), _)| *term)
            .map(|(_, broker)| *broker)
    }

    /// A produce was acknowledged: `values` took offsets from `base_offset` on.
    pub fn acked(
        &mut self,
        at_ms: u64,
        partition: &Partition,
        base_offset: i64,
        values: &[String],
        durable: bool,
    ) {
        self.trace(
            at_ms,
            ("acked", partition, base_offset, values.len(), durable),
        );
        for (i, value) in values.iter().enumerate() {
            let offset = base_offset + i as i64;
            if durable {
                self.fact(partition, offset, value, "acks=all");
                self.durable_acks
                    .entry(partition.clone())
                    .or_default()
                    .insert(offset, value.clone());
            }
        }
        if durable {
            self.counts.acked_durable += values.len() as u64;
        } else {
            self.counts.acked_leader += values.len() as u64;
        }
    }

    /// A produce failed with an error code (nothing was written).
    pub fn refused(&mut self, at_ms: u64, partition: &Partition, records: usize, error: i16) {
        self.trace(at_ms, ("refused", partition, records, error));
        self.counts.refused += records as u64;
    }

    /// A produce got no answer: its records may or may not be in the log.
    pub fn indeterminate(&mut self, at_ms: u64, partition: &Partition, records: usize) {
        self.trace(at_ms, ("indeterminate", partition, records));
        self.counts.indeterminate += records as u64;
    }

    /// A consumer read `value` at `offset`; `expected` is the offset it asked for next.
    pub fn read(
        &mut self,
        at_ms: u64,
        client: u32,
        partition: &Partition,
        expected: i64,
        offset: i64,
        value: &str,
    ) {
        self.trace(at_ms, ("read", client, partition, offset));
        self.counts.reads += 1;
        if offset != expected {
            let what = if offset > expected {
                "skipped to"
            } else {
                "went back to"
            };
            self.violate(
                Check::ReadsInOrder,
                format!(
                    "consumer {client} on {}-{} expected offset {expected}, {what} {offset}",
                    partition.0, partition.1
                ),
            );
        }
        self.fact(partition, offset, value, "a read");
    }

    /// A consumer saw the high watermark `hw`.
    pub fn high_watermark(&mut self, at_ms: u64, client: u32, partition: &Partition, hw: i64) {
        // Past a corrupted batch, recovery cut the log: the watermark may fall back to it.
        let excused = self.damaged_from(partition).is_some_and(|d| hw >= d);
        let last = self
            .last_hw
            .entry((client, partition.clone()))
            .or_insert(hw);
        if hw < *last && !excused {
            let detail = format!(
                "consumer {client} on {}-{}: high watermark went from {last} to {hw}",
                partition.0, partition.1
            );
            *last = hw;
            self.trace(at_ms, ("hw-regressed", client, partition, hw));
            self.violate(Check::HwMonotonic, detail);
        } else {
            *last = hw;
        }
    }

    /// A fetch returned bytes that do not decode as valid batches.
    pub fn corrupt_read(
        &mut self,
        at_ms: u64,
        client: u32,
        partition: &Partition,
        offset: i64,
        error: &str,
    ) {
        self.trace(at_ms, ("corrupt-read", client, partition, offset));
        self.violate(
            Check::NoCorruptReads,
            format!(
                "consumer {client} on {}-{} at offset {offset}: {error}",
                partition.0, partition.1
            ),
        );
    }

    /// A fault was injected.
    pub fn fault(&mut self, at_ms: u64, kind: &'static str, detail: impl std::fmt::Debug) {
        self.trace(at_ms, ("fault", kind, detail));
        *self.counts.faults.entry(kind).or_default() += 1;
    }

    /// A peer connection opened in protocol `version`.
    pub fn peer_link(&mut self, version: u8) {
        *self.counts.peer_links.entry(version).or_default() += 1;
    }

    /// The disk corrupted the batch holding `offset` on `partition`, its only copy.
    pub fn damaged(&mut self, partition: &Partition, offset: i64) {
        let entry = self.damaged.entry(partition.clone()).or_insert(offset);
        *entry = (*entry).min(offset);
    }

    /// A bit flip struck broker `broker`'s copy of the batch at `offset` of `partition` at
    /// rest (whatever its header says since).
    pub fn flip_at_rest(&mut self, broker: usize, partition: &Partition, offset: i64) {
        self.flipped_at_rest
            .insert((broker, partition.clone(), offset));
    }

    /// True if a bit flip struck broker `broker`'s copy of that batch at rest.
    pub fn flipped_at_rest(&self, broker: usize, partition: &Partition, offset: i64) -> bool {
        self.flipped_at_rest
            .contains(&(broker, partition.clone(), offset))
    }

    /// The first corrupted offset of a partition, if any.
    pub fn damaged_from(&self, partition: &Partition) -> Option<i64> {
        self.damaged.get(partition).copied()
    }

    /// An admin client looked up a topic whose creation with `partitions` partitions was
    /// acknowledged (and which it has not deleted): `found` is what the broker reported.
    pub fn topic_checked(&mut self, at_ms: u64, topic: &str, partitions: i32, found: Option<i32>) {
        self.trace(at_ms, ("topic-checked", topic, found));
        if found != Some(partitions) {
            let seen = found.map_or("missing".to_string(), |n| format!("{n} partitions"));
            self.violate(
                Check::TopicsDurable,
                format!("topic {topic} created with {partitions} partitions is {seen}"),
            );
        }
    }

    /// Two replicas of a partition hold different batches at one offset.
    pub fn replicas_disagree(&mut self, detail: String) {
        self.violate(Check::ReplicasAgree, detail);
    }

    /// The cluster did not recover in time after the faults healed.
    pub fn liveness_failed(&mut self, detail: String) {
        self.violate(Check::Liveness, detail);
    }

    /// Checks the final, complete read of a partition: `log` maps offsets to values.
    pub fn check_final(&mut self, partition: &Partition, log: &BTreeMap<i64, String>) {
        for (offset, value) in log {
            self.fact(partition, *offset, value, "the final read");
        }
        let offsets: BTreeSet<i64> = log.keys().copied().collect();
        if let (Some(first), Some(last)) = (offsets.first(), offsets.last()) {
            let damaged = self.damaged_from(partition);
            let gaps = (*first..=*last)
                .filter(|o| !offsets.contains(o) && damaged.is_none_or(|d| *o < d))
                .count();
            if gaps > 0 {
                self.violate(
                    Check::OffsetsAgree,
                    format!(
                        "{}-{}: {gaps} holes between offsets {first} and {last}",
                        partition.0, partition.1
                    ),
                );
            }
        }
        self.check_idempotent(partition, log);
        self.final_logs.insert(partition.clone(), log.clone());
        let excused_from = self.damaged_from(partition).unwrap_or(i64::MAX);
        let acked = self
            .durable_acks
            .get(partition)
            .cloned()
            .unwrap_or_default();
        let (lost, excused): (Vec<i64>, Vec<i64>) = acked
            .keys()
            .copied()
            .filter(|o| !log.contains_key(o))
            .partition(|o| *o < excused_from);
        self.counts.excused += excused.len() as u64;
        if let Some(first) = lost.first() {
            self.violate(
                Check::AckedWritesDurable,
                format!(
                    "{}-{}: {} acknowledged records missing, first at offset {first}",
                    partition.0,
                    partition.1,
                    lost.len()
                ),
            );
        }
    }

    /// Idempotent producers' records in the final read of a partition: each once, and
    /// each producer's in the order it sent them.
    fn check_idempotent(&mut self, partition: &Partition, log: &BTreeMap<i64, String>) {
        let mut seen = BTreeSet::new();
        let mut newest: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
        let mut broken = Vec::new();
        for (&offset, value) in log {
            let Some((producer, n)) = idempotent_record(value) else {
                continue;
            };
            if !seen.insert(value.as_str()) {
                broken.push(format!("{value:?} again at offset {offset}"));
            } else if let Some(&(last, at)) = newest.get(producer).filter(|(last, _)| n < *last) {
                broken.push(format!(
                    "{value:?} at offset {offset} after record {last} of its producer at {at}"
                ));
            }
            let entry = newest.entry(producer).or_insert((n, offset));
            if n >= entry.0 {
                *entry = (n, offset);
            }
        }
        if let Some(first) = broken.first() {
            let detail = format!(
                "{}-{}: {} records out of place or written twice; first: {first}",
                partition.0,
                partition.1,
                broken.len()
            );
            self.violate(Check::IdempotentOnce, detail);
        }
    }

    /// InitProducerId handed out `id`.
    pub fn producer_id(&mut self, at_ms: u64, id: i64) {
        self.trace(at_ms, ("producer-id", id));
        if let Some(first) = self.producer_ids.insert(id, at_ms) {
            let detail =
                format!("producer id {id} handed out at {first} ms and again at {at_ms} ms");
            self.violate(Check::ProducerIdsUnique, detail);
        }
    }

    /// A broker refused an idempotent producer's batch as out of sequence or fenced
    /// although the producer sent its batches one at a time, in order, and retried each
    /// until it was answered: the broker lost track of what it wrote.
    pub fn sequence_refused(&mut self, at_ms: u64, partition: &Partition, error: i16) {
        self.trace(at_ms, ("sequence-refused", partition, error));
        self.violate(
            Check::IdempotentOnce,
            format!(
                "{}-{}: an in-sequence batch was refused with error {error}",
                partition.0, partition.1
            ),
        );
    }

    /// A group member was handed `partitions` in `generation`.
    pub fn assigned(
        &mut self,
        at_ms: u64,
        generation: i32,
        member: &str,
        partitions: &[Partition],
    ) {
        self.trace(at_ms, ("assigned", generation, member, partitions));
        if let Some(detail) = self.groups.assigned(at_ms, generation, member, partitions) {
            self.violate(Check::GroupOneOwner, detail);
        }
    }

    /// A group member sent a commit of `offset`.
    pub fn commit_sent(&mut self, at_ms: u64, partition: &Partition, offset: i64) {
        self.trace(at_ms, ("commit-sent", partition, offset));
        self.groups.commit_sent(at_ms, partition, offset);
    }

    /// A commit of `offset` was acknowledged.
    pub fn commit_acked(&mut self, at_ms: u64, partition: &Partition, offset: i64) {
        self.trace(at_ms, ("commit-acked", partition, offset));
        self.groups.commit_acked(at_ms, partition, offset);
    }

    /// A group member asked for a partition's committed offset at `sent_ms` and got
    /// `offset` at `at_ms` (-1: none).
    pub fn offset_fetched(&mut self, sent_ms: u64, at_ms: u64, partition: &Partition, offset: i64) {
        self.trace(at_ms, ("offset-fetched", partition, offset));
        if let Some(detail) = self.groups.fetched(sent_ms, at_ms, partition, offset) {
            self.violate(Check::CommittedOffsets, detail);
        }
    }

    /// A transactional producer began transaction `t` (its partitions were added).
    pub fn txn_begun(&mut self, at_ms: u64, producer: u32, t: u64) {
        self.trace(at_ms, ("txn-begun", producer, t));
        self.txns.txns.entry((producer, t)).or_default();
    }

    /// Transaction `t` of `producer` sends `values` to `partition` (they may land even if
    /// the produce is never answered).
    pub fn txn_values(&mut self, producer: u32, t: u64, partition: &Partition, values: &[String]) {
        let entry = self.txns.txns.entry((producer, t)).or_default();
        let sent = entry.1.entry(partition.clone()).or_default();
        sent.extend(values.iter().cloned());
    }

    /// Transaction `t` of `producer` ended as `fate`.
    pub fn txn_ended(&mut self, at_ms: u64, producer: u32, t: u64, fate: TxnFate) {
        self.trace(at_ms, ("txn-ended", producer, t, fate));
        self.counts.txns[fate as usize] += 1;
        self.txns.txns.entry((producer, t)).or_default().0 = Some(fate);
    }

    /// A read_committed consumer read `value` at `offset`, in a fetch whose last stable
    /// offset was `lso`.
    pub fn committed_read(
        &mut self,
        at_ms: u64,
        reader: u32,
        partition: &Partition,
        offset: i64,
        value: &str,
        lso: i64,
    ) {
        self.trace(at_ms, ("committed-read", reader, partition, offset));
        self.counts.reads += 1;
        if offset >= lso {
            let detail = format!(
                "reader {reader} on {}-{} got offset {offset} at or past the last stable offset {lso}",
                partition.0, partition.1
            );
            self.violate(Check::ReadCommitted, detail);
        }
        if value.starts_with(TXN_PREFIX) {
            self.txns
                .reads
                .push((value.to_string(), partition.clone(), offset));
        }
        self.fact(partition, offset, value, "a read_committed read");
    }

    /// A read_committed consumer saw the last stable offset `lso`.
    pub fn stable_offset(&mut self, at_ms: u64, reader: u32, partition: &Partition, lso: i64) {
        let excused = self.damaged_from(partition).is_some_and(|d| lso >= d);
        let last = self
            .txns
            .last_lso
            .entry((reader, partition.clone()))
            .or_insert(lso);
        if lso < *last && !excused {
            let detail = format!(
                "reader {reader} on {}-{}: last stable offset went from {last} to {lso}",
                partition.0, partition.1
            );
            *last = lso;
            self.trace(at_ms, ("lso-regressed", reader, partition, lso));
            self.violate(Check::LsoMonotonic, detail);
        } else {
            *last = lso;
        }
    }

    /// A partition did not become stable (or readable) after the heal.
    pub fn txn_stuck(&mut self, detail: String) {
        self.violate(Check::TxnAtomic, detail);
    }

    /// Judges the transactions against what read_committed reads showed: during the run
    /// (`committed_read`) and in the final read of every partition (`visible`). Partitions
    /// whose only copy the disk damaged are left out, as for acknowledged writes.
    pub fn check_txns_final(&mut self, visible: &BTreeMap<Partition, Vec<(i64, String)>>) {
        let mut fate_of: BTreeMap<&str, (TxnFate, (u32, u64))> = BTreeMap::new();
        for (key, (fate, sent)) in &self.txns.txns {
            let fate = fate.unwrap_or(TxnFate::Unknown);
            for value in sent.values().flatten() {
                fate_of.insert(value, (fate, *key));
            }
        }
        let mut broken = Vec::new();
        for (value, partition, offset) in &self.txns.reads {
            if fate_of
                .get(value.as_str())
                .is_some_and(|(f, _)| *f == TxnFate::Aborted)
            {
                broken.push((
                    Check::ReadCommitted,
                    format!(
                        "{}-{} offset {offset}: read {value:?} of an aborted transaction",
                        partition.0, partition.1
                    ),
                ));
            }
        }
        let damaged: BTreeSet<&Partition> = self.damaged.keys().collect();
        let mut copies_of: BTreeMap<(&Partition, &str), usize> = BTreeMap::new();
        for (partition, log) in visible {
            for (_, value) in log {
                *copies_of.entry((partition, value.as_str())).or_default() += 1;
            }
        }
        for (key, (fate, sent)) in &self.txns.txns {
            let fate = fate.unwrap_or(TxnFate::Unknown);
            let mut present = 0;
            let mut total = 0;
            let mut example = None;
            for (partition, values) in sent.iter().filter(|(p, _)| !damaged.contains(p)) {
                for value in values {
                    total += 1;
                    let copies = copies_of
                        .get(&(partition, value.as_str()))
                        .copied()
                        .unwrap_or(0);
                    present += usize::from(copies > 0);
                    let odd = (copies > 0) == (fate == TxnFate::Aborted);
                    if odd && example.is_none() {
                        let shown = if copies > 0 { "visible" } else { "missing" };
                        example = Some(format!(
                            "{value:?} in {}-{} {shown}",
                            partition.0, partition.1
                        ));
                    }
                    if copies > 1 {
                        broken.push((
                            Check::TxnAtomic,
                            format!(
                                "{value:?} is in {}-{} {copies} times",
                                partition.0, partition.1
                            ),
                        ));
                    }
                }
            }
            let whole = present == total;
            let wrong = match fate {
                TxnFate::Committed => !whole,
                TxnFate::Aborted => present > 0,
                TxnFate::Unknown => present > 0 && !whole,
            };
            if wrong {
                broken.push((
                    Check::TxnAtomic,
                    format!(
                        "transaction {} of producer {} ({fate:?}): {present} of its {total} records visible ({})",
                        key.1,
                        key.0,
                        example.unwrap_or_default()
                    ),
                ));
            }
        }
        for (check, detail) in broken {
            self.violate(check, detail);
        }
    }

    /// Judges the consume-transform-produce output (each output partition read whole with
    /// read_committed) against the input's final read and the transform group's committed
    /// offsets. A missing record is excused only where a single copy's disk damaged its
    /// input or an output partition; a duplicate, a wrong value or the output of an
    /// uncommitted position never is.
    pub fn check_transform(
        &mut self,
        committed: &BTreeMap<Partition, i64>,
        output: &BTreeMap<Partition, Vec<(i64, String)>>,
    ) {
        let mut broken = Vec::new();
        let mut copies: BTreeMap<(Partition, i64), Vec<String>> = BTreeMap::new();
        for (out, log) in output {
            for (at, value) in log {
                let Some((input, offset, v)) = source_of(value) else {
                    continue;
                };
                let here = format!("{}-{}@{at}", out.0, out.1);
                let source = self.final_logs.get(&input).and_then(|l| l.get(&offset));
                if source.map(String::as_str) != Some(v) {
                    broken.push(format!(
                        "{here} holds {value:?}, but input {}-{} offset {offset} is {source:?}",
                        input.0, input.1
                    ));
                }
                let reached = committed.get(&input).copied().unwrap_or(-1);
                if offset >= reached {
                    broken.push(format!(
                        "{here} holds input {}-{} offset {offset}, at or above the committed offset {reached}",
                        input.0, input.1
                    ));
                }
                copies.entry((input, offset)).or_default().push(here);
            }
        }
        for ((input, offset), places) in &copies {
            if places.len() > 1 {
                broken.push(format!(
                    "input {}-{} offset {offset} is in the output {} times: {}",
                    input.0,
                    input.1,
                    places.len(),
                    places.join(", ")
                ));
            }
        }
        // A single copy's damaged disk may have lost an output record for good.
        let output_damaged = output.keys().any(|p| self.damaged.contains_key(p));
        for (input, &reached) in committed {
            let damaged = self.damaged_from(input).unwrap_or(i64::MAX);
            let log = self.final_logs.get(input).cloned().unwrap_or_default();
            let (missing, excused): (Vec<i64>, Vec<i64>) = log
                .range(..reached)
                .filter(|(o, v)| *v != CONTROL_VALUE && !copies.contains_key(&(input.clone(), **o)))
                .map(|(o, _)| *o)
                .partition(|o| *o < damaged && !output_damaged);
            self.counts.excused += excused.len() as u64;
            if let Some(first) = missing.first() {
                broken.push(format!(
                    "{} records of {}-{} below its committed offset {reached} are not in the output, first at offset {first}",
                    missing.len(),
                    input.0,
                    input.1
                ));
            }
        }
        for detail in broken {
            self.violate(Check::TransformExactlyOnce, detail);
        }
    }

    /// The latest generation, if it gave each of `all` to one of `members`.
    pub fn group_settled(&self, members: usize, all: &[Partition]) -> Option<i32> {
        self.groups.settled(members, all)
    }

    /// Every violation found, in the order found.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}

/// The producer and number of an idempotent producer's record, if `value` is one.
fn idempotent_record(value: &str) -> Option<(&str, u64)> {
    let rest = value.strip_prefix(IDEMPOTENT_PREFIX)?;
    let (producer, n) = rest.split_once('-')?;
    Some((producer, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Partition {
        ("t".to_string(), 0)
    }

    #[test]
    fn a_lost_acknowledged_record_is_caught_unless_the_disk_was_damaged() {
        let mut h = History::new();
        h.acked(0, &p(), 0, &["a".into(), "b".into()], true);
        h.check_final(&p(), &BTreeMap::from([(0, "a".to_string())]));
        assert_eq!(h.violations()[0].check, Check::AckedWritesDurable);

        let mut h = History::new();
        h.acked(0, &p(), 0, &["a".into(), "b".into()], true);
        h.damaged(&p(), 1);
        h.check_final(&p(), &BTreeMap::from([(0, "a".to_string())]));
        assert!(h.violations().is_empty());
        assert_eq!(h.counts.excused, 1, "the summary says what was forgiven");
    }

    #[test]
    fn two_readers_disagreeing_on_an_offset_is_caught() {
        let mut h = History::new();
        h.read(0, 1, &p(), 0, 0, "a");
        h.read(0, 2, &p(), 0, 0, "b");
        assert_eq!(h.violations()[0].check, Check::OffsetsAgree);
    }

    #[test]
    fn skips_and_watermark_regressions_are_caught() {
        let mut h = History::new();
        h.read(0, 1, &p(), 3, 5, "x");
        h.high_watermark(0, 1, &p(), 10);
        h.high_watermark(0, 1, &p(), 9);
        let checks: Vec<_> = h.violations().iter().map(|v| v.check).collect();
        assert_eq!(checks, vec![Check::ReadsInOrder, Check::HwMonotonic]);
    }

    #[test]
    fn acks_one_records_are_not_promises() {
        let mut h = History::new();
        h.acked(0, &p(), 0, &["weak".into()], false);
        h.check_final(&p(), &BTreeMap::from([(0, "other".to_string())]));
        assert!(h.violations().is_empty());
    }

    #[test]
    fn an_idempotent_record_twice_or_out_of_order_is_caught() {
        let log = |values: &[&str]| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as i64, v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let at = |i| ("t".to_string(), i);
        let mut h = History::new();
        h.check_final(
            &at(0),
            &log(&["idem1-1", "p0-1", "idem2-1", "idem1-3", "idem2-2"]),
        );
        assert!(h.violations().is_empty());
        h.check_final(&at(1), &log(&["idem1-1", "idem1-2", "idem1-1"]));
        h.check_final(&at(2), &log(&["idem1-2", "idem1-1"]));
        let checks: Vec<_> = h.violations().iter().map(|v| v.check).collect();
        assert_eq!(checks, vec![Check::IdempotentOnce, Check::IdempotentOnce]);
    }
}
