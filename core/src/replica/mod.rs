//! A partition replica: one Raft group whose log *is* the partition's segment log
//! (docs/replication.md).
//!
//! # Driving a `Replica`
//! The broker owns the partition's [`PartitionLog`] and lends it to every call. Inputs:
//! [`Replica::tick`], [`Replica::step`] (a peer's message), [`Replica::propose`] (a produce
//! on the leader), [`Replica::on_read`] (a read it asked for finished) and
//! [`Replica::on_synced`] (a group-commit sync finished). After inputs call
//! [`Replica::drive`] and carry out its [`ReplicaOutput`]: the storage operations in order
//! (they include `SaveReplica`, durable when executed), then the messages, then the reads.
//!
//! One entry is one stored batch, stamped with its offset and the entry's term as leader
//! epoch when it is written, on every replica alike: identical logs give identical offsets.
//! Persistence is asynchronous (raft-rs's `advance_append_async`): appended bytes join the
//! broker's group commit, and what promises them (a follower's acknowledgement, the
//! leader's own vote towards commit) waits for that sync. The commit index becomes the
//! high watermark.
//!
//! Start-up: a replica with recovered segments first reads them all back (a [`Loader`]) to
//! rebuild its entry table, then joins its group.

pub mod entries;
mod load;

use crate::time::Now;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use raft::eraftpb::{ConfState, EntryType, HardState, Message, MessageType, Snapshot};
use raft::Storage as _;
use tracing::{debug, info, warn};

use crate::batch::{self, BatchView, StampedBatch};
use crate::canary::{is_planted, Canary};
use crate::config::TopicConfig;
use crate::consensus::{GroupConfig, ProposeError, RaftGroup, RaftPersist};
use crate::log::{CommitPoint, PartitionLog};
use crate::producer::{ProducerBatch, TxnEvent, Written};
use crate::storage::{SegmentId, StorageOp, TopicPartition};

pub use entries::{EntryKind, EntryLog, EntryMeta, LogStart};
use load::{CatchUp, Loader};

/// Largest read issued for a lagging follower or at start-up.
const READ_CHUNK: usize = 1 << 20;

/// The scrubber re-reads at most this many bytes of the log every [`SCRUB_EVERY_TICKS`]
/// ticks and checks every batch's CRC: a bounded background rate (64 KiB a second per
/// replica at the default 100 ms tick) that still finds damage on a replica nobody reads.
const SCRUB_BYTES: usize = 64 << 10;

/// Ticks between scrub reads.
const SCRUB_EVERY_TICKS: u32 = 10;

/// Read tags of the scrubber carry this bit (reads for followers are tagged by index).
const SCRUB_TAG: u64 = 1 << 63;

/// How a replica is set up.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This broker.
    pub broker: i32,
    /// The partition's first replicas (broker ids): the voters the group started with.
    /// Later membership changes are entries of its log.
    pub replicas: Vec<i32>,
    /// Ticks before a follower campaigns.
    pub election_ticks: usize,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: usize,
    /// Seeds election-timeout jitter.
    pub seed: u64,
    /// Fill [`ReplicaOutput::committed`].
    pub report_commits: bool,
}

/// A read the replica needs; the broker issues it and hands the bytes to
/// [`Replica::on_read`] with the same `tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// Echoed back.
    pub tag: u64,
    /// Where.
    pub segment: SegmentId,
    /// Byte position.
    pub position: u64,
    /// Bytes.
    pub len: usize,
}

/// What one [`Replica::drive`] asks the broker to do.
#[derive(Debug, Default)]
pub struct ReplicaOutput {
    /// Storage operations, in order.
    pub ops: Vec<StorageOp>,
    /// Raft messages to other replicas (`to` is broker id + 1).
    pub messages: Vec<Message>,
    /// Reads to issue.
    pub reads: Vec<ReadRequest>,
    /// This replica became leader in this term.
    pub elected: Option<u64>,
    /// The high watermark moved.
    pub advanced: bool,
    /// Entries committed since the last drive, with their Raft index (only if the config
    /// asks for them).
    pub committed: Vec<(u64, EntryMeta)>,
}

/// Where a reassignment stands, seen from the partition leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReassignStep {
    /// A change is under way (or this replica does not lead): ask again later.
    Waiting,
    /// The group's members are the target: the metadata may record the move.
    Done,
}

/// Readies whose entries wait for a sync before raft-rs may count them as persisted.
#[derive(Debug)]
struct Unpersisted {
    /// Sync token that makes them durable; `None`: durable already.
    token: Option<u64>,
    number: u64,
    messages: Vec<Message>,
}

/// Where the scrubber is.
#[derive(Debug, Default)]
struct Scrub {
    /// The first entry the next read checks.
    next: u64,
    /// Tag and first entry of the read in flight.
    in_flight: Option<(u64, u64)>,
    ticks: u32,
}

enum State {
    Loading(Box<Loader>),
    Running(Box<RaftGroup<EntryLog>>),
}

/// One partition's replica on this broker.
pub struct Replica {
    tp: TopicPartition,
    config: ReplicaConfig,
    state: State,
    /// Durable (term, vote) last written.
    persisted_vote: (u64, u64),
    unpersisted: VecDeque<Unpersisted>,
    /// Reads for lagging followers in flight, by first index: raft-rs contexts waiting.
    fetching: BTreeMap<u64, Vec<raft::GetEntriesContext>>,
    next_tag: u64,
    /// (term, leader?) last reported, to report each election once.
    reported: (u64, bool),
    /// The last Raft index reported committed, when commits are reported.
    commit_reported: u64,
    /// This replica may lack entries its group counts on — start-up cut a corrupt log, or
    /// it joins a group that already has a history — so it does not vote or campaign until
    /// it has caught up with a leader. (Without this, fresh replicas added by moves could
    /// form a majority of the group's first membership among themselves and start a second
    /// history: simulator, cluster5-moves seed 216.) Recorded with the log start, so that
    /// a restart keeps it, but for the one case [`CatchUp::UntilRestart`] says.
    catching_up: CatchUp,
    /// Entries whose bytes on this disk fail their CRC (found at start-up, in a read for a
    /// follower or a consumer, or by the scrubber). Protocol-aware repair: they stay in the
    /// table (the log's shape is known), their copy never counts towards a quorum (this
    /// replica acknowledges nothing from the first of them on, and asks its leader to send
    /// them again), it is never served, and the bytes the leader resends are written back in
    /// place. A leader that finds one steps aside.
    damaged: BTreeSet<u64>,
    /// Damaged entries rewritten from a peer's copy, with the sync that makes the rewrite
    /// durable (`None` until the next drive names it); they stay damaged until it completes.
    rewrites: BTreeMap<u64, Option<u64>>,
    /// Idempotent producers' batches among the entries just repaired, for the producer
    /// table (which was built without them) at the next drive.
    repaired_producers: Vec<(ProducerBatch, Written)>,
    /// A repaired entry was a transaction's: the transaction index is rebuilt.
    rebuild_txns: bool,
    /// The scrubber: the next entry to check, the read in flight and ticks since the last.
    scrub: Scrub,
    /// Ticks this replica has led while holding a damaged entry.
    leading_damaged_ticks: usize,
    /// Output accumulated by inputs between drives.
    pending: ReplicaOutput,
}

/// Raft ids are broker ids + 1 (raft-rs reserves 0).
pub fn raft_id(broker: i32) -> u64 {
    (broker as u64).wrapping_add(1)
}

/// The broker id of a Raft id.
pub fn broker_of(raft_id: u64) -> i32 {
    raft_id.wrapping_sub(1) as i32
}

impl Replica {
    /// A replica of `log`. `persisted` is its durable Raft state, if it had one. A log with
    /// data is read back before the replica takes part in its group.
    pub fn new(
        tp: TopicPartition,
        config: ReplicaConfig,
        persisted: Option<RaftPersist>,
        log: &mut PartitionLog,
    ) -> Self {
        let persisted = persisted.unwrap_or_default();
        let catching_up = if is_catching_up(&persisted) {
            CatchUp::Recorded
        } else {
            CatchUp::No
        };
        let hard_state = persisted.hard_state.unwrap_or_default();
        let start = persisted
            .snapshot
            .as_ref()
            .and_then(LogStart::from_snapshot)
            .unwrap_or_default();
        // The membership recorded with the log start, else the group's first membership
        // (a new replica replays every later change from the log, like its peers did).
        let conf_state = persisted
            .snapshot
            .map(|s| s.get_metadata().get_conf_state().clone())
            .filter(|c| !c.voters.is_empty())
            .unwrap_or_else(|| ConfState {
                voters: config.replicas.iter().map(|&b| raft_id(b)).collect(),
                ..Default::default()
            });
        let persisted_vote = (hard_state.term, hard_state.vote);
        let mut replica = Replica {
            tp,
            config,
            state: State::Loading(Box::new(Loader::new(start, hard_state, conf_state, log))),
            persisted_vote,
            unpersisted: VecDeque::new(),
            fetching: BTreeMap::new(),
            next_tag: 1,
            reported: (0, false),
            commit_reported: 0,
            catching_up,
            damaged: BTreeSet::new(),
            rewrites: BTreeMap::new(),
            repaired_producers: Vec::new(),
            rebuild_txns: false,
            scrub: Scrub::default(),
            leading_damaged_ticks: 0,
            pending: ReplicaOutput::default(),
        };
        replica.continue_loading(log);
        replica
    }

    fn group(&self) -> Option<&RaftGroup<EntryLog>> {
        match &self.state {
            State::Running(group) => Some(group),
            State::Loading(_) => None,
        }
    }

    /// True once the replica takes part in its group.
    pub fn is_running(&self) -> bool {
        self.group().is_some()
    }

    /// True if this replica leads its partition.
    pub fn is_leader(&self) -> bool {
        self.group().is_some_and(|g| g.is_leader())
    }

    /// True if this replica leads and may serve reads: it has committed an entry of its own
    /// term, so its high watermark covers everything any earlier leader committed (until
    /// then it could report a high watermark below one a consumer has already seen).
    pub fn is_serving(&self) -> bool {
        self.group().is_some_and(|g| {
            let log = g.raw_ref().store();
            g.is_leader() && log.meta(g.committed()).is_some_and(|m| m.term == g.term())
        })
    }

    /// The leader's broker id, if known.
    pub fn leader(&self) -> Option<i32> {
        self.group()?.leader().map(broker_of)
    }

    /// The current term: the partition's leader epoch.
    pub fn term(&self) -> u64 {
        self.group().map_or(0, |g| g.term())
    }

    /// Voters in sync with the leader (itself included); 0 unless leader.
    pub fn in_sync_replicas(&self) -> usize {
        self.group().map_or(0, |g| g.in_sync_voters())
    }

    /// The entry table, once running.
    pub fn entries(&self) -> Option<&EntryLog> {
        self.group().map(|g| g.raw_ref().store())
    }

    /// True if [`Self::drive`] has something to do.
    pub fn has_work(&self) -> bool {
        match &self.state {
            State::Running(group) => group.has_ready() || !self.pending.is_empty(),
            State::Loading(_) => !self.pending.is_empty(),
        }
    }

    /// One tick of the broker's clock. A replica catching up, or holding damaged entries,
    /// does not tick: a follower's ticks only lead to campaigns, and it must not stand until
    /// caught up or repaired.
    pub fn tick(&mut self) {
        if let State::Running(group) = &mut self.state {
            let damaged = !self.damaged.is_empty();
            if (self.catching_up == CatchUp::No && !damaged) || group.is_leader() {
                group.tick();
            }
            if damaged && group.is_leader() {
                // Still leading with a damaged entry: the handover did not take (its target
                // may be cut off). Try again, and after an election timeout just step down.
                self.leading_damaged_ticks += 1;
                let give_up = self.leading_damaged_ticks > self.config.election_ticks;
                step_aside(group, give_up);
            } else {
                self.leading_damaged_ticks = 0;
            }
        }
        self.scrub.ticks += 1;
        if self.scrub.ticks >= SCRUB_EVERY_TICKS && self.scrub.in_flight.is_none() {
            self.scrub.ticks = 0;
            self.plan_scrub();
        }
    }

    /// Issues the scrubber's next read: whole entries of one segment from where it stopped,
    /// up to [`SCRUB_BYTES`]; back to the log start after the last entry.
    fn plan_scrub(&mut self) {
        let Some(store) = self.entries() else {
            return;
        };
        let first = store.start().index + 1;
        let mut next = self.scrub.next.max(first);
        if next > store.last() {
            next = first;
        }
        let Some(head) = store.meta(next).copied() else {
            return;
        };
        let mut len = 0usize;
        for (_, meta) in store.iter_from(next) {
            if meta.segment_base != head.segment_base
                || (len > 0 && len + meta.size as usize > SCRUB_BYTES)
            {
                break;
            }
            len += meta.size as usize;
        }
        let tag = SCRUB_TAG | self.next_tag;
        self.next_tag += 1;
        self.scrub.in_flight = Some((tag, next));
        self.pending.reads.push(ReadRequest {
            tag,
            segment: SegmentId {
                partition: self.tp.clone(),
                base_offset: head.segment_base,
            },
            position: head.position,
            len,
        });
    }

    /// The scrubber's read came back: every entry in it must pass its CRC.
    fn on_scrub_read(&mut self, tag: u64, result: Result<Bytes, String>) {
        let Some((expected, first)) = self.scrub.in_flight else {
            return;
        };
        if expected != tag {
            return;
        }
        self.scrub.in_flight = None;
        let Ok(bytes) = result else {
            return; // Retention may have deleted the segment meanwhile; read on next time.
        };
        let Some(store) = self.entries() else {
            return;
        };
        let (mut damaged, next) = damaged_in(store, first, &bytes);
        self.scrub.next = next;
        if is_planted(Canary::TrustRecoveredBatches) {
            damaged.clear();
        }
        for index in damaged {
            self.report_damage(index, "the scrubber");
        }
    }

    /// This replica's copy of entry `index` fails its CRC (`found_by` says who saw it).
    pub fn report_damage(&mut self, index: u64, found_by: &str) {
        let State::Running(group) = &mut self.state else {
            return;
        };
        if group.raw_ref().store().meta(index).is_none() || !self.damaged.insert(index) {
            return;
        }
        warn!(partition = %self.tp, index, found_by, leader = group.is_leader(), "damaged entry on disk; repairing it from a peer");
        if group.is_leader() {
            step_aside(group, false);
        }
    }

    /// A consumer's read found the batch at `offset` damaged on this disk.
    pub fn report_damage_at(&mut self, offset: i64) {
        if let Some(index) = self.entries().and_then(|s| s.index_of_offset(offset)) {
            self.report_damage(index, "a fetch");
        }
    }

    /// Marks a new replica of a group that already has a history: it waits for a leader
    /// instead of standing for election (see `catching_up`).
    pub fn join_existing_group(&mut self) {
        if self.catching_up != CatchUp::Recorded {
            self.catching_up = CatchUp::Recorded;
            self.save_start(); // While loading, the end of loading saves it.
        }
    }

    /// Records the log start, membership and catching-up flag (durable when executed).
    fn save_start(&mut self) {
        if let State::Running(group) = &self.state {
            let store = group.raw_ref().store();
            let snapshot = start_record(store.start(), store.conf_state(), self.catching_up);
            let op = self.save(RaftPersist {
                snapshot: Some(snapshot),
                ..Default::default()
            });
            self.pending.ops.push(op);
        }
    }

    /// Starts an election now (the preferred replica of a new partition).
    pub fn campaign(&mut self) {
        if let State::Running(group) = &mut self.state {
            group.campaign();
        }
    }

    /// A message from another replica. Dropped while loading (Raft resends).
    ///
    /// Two repairs for a replica that lost entries it had acknowledged (a corrupt log cut at
    /// start-up), which raft-rs assumes never happens: the leader lowers its view of what
    /// that follower holds when the follower says so, and the follower neither takes a
    /// commit index beyond its log nor votes until it has caught up with its leader.
    pub fn step(&mut self, mut message: Message) {
        let State::Running(group) = &mut self.state else {
            return;
        };
        if let Some(why) = group.refusal(&message) {
            warn!(partition = %self.tp, from = message.from, kind = message.msg_type, why, "refusing a raft message");
            return;
        }
        let last = group.last_index();
        match message.get_msg_type() {
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.catching_up != CatchUp::No =>
            {
                return; // It may have lost entries a majority needs: no vote until repaired.
            }
            MessageType::MsgHeartbeat if message.commit > last => {
                // The leader counts entries this replica no longer holds. Heartbeats do not
                // draw a rejection by themselves, so answer with one: the leader's own
                // repair (below, on its side) then resends from what is really here.
                message.commit = last;
                let reject = resend_from(&message, group.raw_ref().store(), last);
                self.pending.messages.push(reject);
            }
            MessageType::MsgAppend if !is_planted(Canary::AckDamagedArrivals) => {
                // A batch damaged on the way (a bit the network's checksums let through, a
                // bad NIC or memory) is never written nor acknowledged: Raft takes the
                // entries before it and answers for those alone, and the leader, finding
                // this replica behind what it sent, sends the rest again.
                if let Some(bad) = message.entries.iter().position(|e| !arrived_intact(e)) {
                    let index = message.entries[bad].index;
                    warn!(partition = %self.tp, leader = broker_of(message.from), index, "an entry arrived damaged; taking only those before it");
                    message.entries.truncate(bad);
                }
            }
            MessageType::MsgAppendResponse if message.reject => {
                if let Some(pr) = group.raw().raft.mut_prs().get_mut(message.from) {
                    let hint = message.reject_hint;
                    // A follower with a damaged copy of the entry just past what it
                    // acknowledged asks for that entry again (see `take_repairs`); raft-rs
                    // would take it for a stale rejection while probing further on.
                    let damaged_next =
                        hint == pr.matched && message.index == hint + 1 && pr.next_idx > hint + 1;
                    if hint < pr.matched || damaged_next {
                        // The follower lost entries it had acknowledged, or holds a damaged
                        // copy of the next one. raft-rs only ever moves `matched` up, so it
                        // is lowered here; raft-rs (below) then takes the rejection of entry
                        // `index` as fresh and probes from `hint + 1` if the follower holds
                        // `hint` whole (`index` past it), or from `hint` if that entry does
                        // not match either.
                        if !damaged_next {
                            warn!(partition = %self.tp, follower = broker_of(message.from), held = hint, acknowledged = pr.matched, "a follower lost entries it had acknowledged; resending them");
                        }
                        pr.matched = hint;
                        if message.index > hint {
                            pr.become_replicate();
                        } else {
                            pr.become_probe();
                        }
                    }
                }
            }
            _ => {}
        }
        let from_leader = matches!(
            message.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend
        );
        if from_leader && !self.damaged.is_empty() {
            self.take_repairs(&message);
        }
        let State::Running(group) = &mut self.state else {
            return;
        };
        let leader_commit = from_leader.then_some(message.commit);
        group.step(message);
        if let Some(commit) = leader_commit.filter(|_| self.catching_up != CatchUp::No) {
            if group.last_index() >= commit && group.committed() >= commit {
                info!(partition = %self.tp, "replica caught up: it holds every committed entry");
                if std::mem::replace(&mut self.catching_up, CatchUp::No) == CatchUp::Recorded {
                    self.save_start();
                }
            }
        }
    }

    /// Repair, on a replica with damaged entries: the intact copies of them that the
    /// leader's append carries are written back in place; for the first one still missing,
    /// the leader is told to send from there (a rejection with that hint, which also lowers
    /// its view of what this replica holds).
    fn take_repairs(&mut self, message: &Message) {
        let State::Running(group) = &mut self.state else {
            return;
        };
        let store = group.raw_ref().store();
        let mut repaired_txns = Vec::new();
        for entry in &message.entries {
            if !self.damaged.contains(&entry.index) || self.rewrites.contains_key(&entry.index) {
                continue;
            }
            let Some(meta) = store.meta(entry.index).filter(|m| m.term == entry.term) else {
                continue;
            };
            // A rare rewrite in place: stamped in a copy of its own.
            let mut bytes = BytesMut::from(&entry_batch(entry)[..]);
            batch::stamp_base_offset(&mut bytes, meta.base_offset);
            batch::stamp_leader_epoch(&mut bytes, entry.term as i32);
            let intact = BatchView::split_first(&bytes)
                .is_ok_and(|(view, rest)| rest.is_empty() && view.crc_ok());
            if !intact || bytes.len() != meta.size as usize {
                warn!(partition = %self.tp, index = entry.index, "the leader's copy of a damaged entry does not fit it; not written");
                continue;
            }
            if is_planted(Canary::SkipFollowerRepair) {
                continue;
            }
            let view = BatchView::split_first(&bytes).ok().map(|(view, _)| view);
            let txn = view.and_then(|v| TxnEvent::of(&v, meta.base_offset));
            if txn.is_some() {
                // The transaction index was built without it: rebuilt with it in place.
                repaired_txns.push((entry.index, txn));
            }
            if let Some(producer) =
                view.and_then(|view| ProducerBatch::of(&view).filter(|_| !view.is_control()))
            {
                // The table was built without it; it goes back in with the rewrite.
                let written =
                    Written::of(&producer, entry.index, entry.term, Some(meta.base_offset));
                self.repaired_producers.push((producer, written));
            }
            self.pending.ops.push(StorageOp::Rewrite {
                segment: SegmentId {
                    partition: self.tp.clone(),
                    base_offset: meta.segment_base,
                },
                position: meta.position,
                data: bytes.freeze(),
            });
            self.rewrites.insert(entry.index, None);
            info!(partition = %self.tp, index = entry.index, "damaged entry rewritten from the leader's copy");
        }
        let missing = self
            .damaged
            .iter()
            .copied()
            .find(|i| !self.rewrites.contains_key(i));
        if let Some(first) = missing {
            self.pending
                .messages
                .push(resend_from(message, store, first - 1));
        }
        for (index, txn) in repaired_txns {
            group.raw().mut_store().set_txn(index, txn);
            self.rebuild_txns = true;
        }
    }

    /// Proposes one batch (validated by the caller). Only the leader accepts: clients are
    /// sent to it. Returns the entry's (index, term) to wait on.
    pub fn propose(&mut self, batch: Bytes) -> Result<(u64, u64), ProposeError> {
        let State::Running(group) = &mut self.state else {
            return Err(ProposeError::NoLeader);
        };
        if !group.is_leader() {
            return Err(ProposeError::NoLeader);
        }
        group.propose(batch)?;
        Ok((group.last_index(), group.term()))
    }

    /// Where the entry `index` stands: `Some(true)` committed in `term`, `Some(false)`
    /// lost (replaced, or leadership moved before it committed), `None` still waiting.
    pub fn outcome(&self, index: u64, term: u64) -> Option<bool> {
        let group = self.group()?;
        let log = group.raw_ref().store();
        let held_term = log.meta(index).map(|m| m.term);
        if group.committed() >= index && index <= log.last() {
            return Some(held_term == Some(term));
        }
        if group.term() != term || !group.is_leader() {
            return Some(false);
        }
        None
    }

    /// Offsets of the appended entries `first..=last`, once both are written here.
    pub fn offsets(&self, first: u64, last: u64) -> Option<(i64, i64)> {
        let log = self.entries()?;
        Some((log.meta(first)?.base_offset, log.meta(last)?.next_offset))
    }

    /// If this replica leads, hands leadership to the most caught-up other voter.
    pub fn hand_over(&mut self) -> bool {
        match &mut self.state {
            State::Running(group) => group.hand_over().is_some(),
            State::Loading(_) => false,
        }
    }

    /// If this replica leads and `broker`'s replica holds everything this one does, hands
    /// leadership to it (preferred-leader balancing). Returns true if a transfer began.
    pub fn transfer_to(&mut self, broker: i32) -> bool {
        let State::Running(group) = &mut self.state else {
            return false;
        };
        if !group.is_leader() || broker == self.config.broker {
            return false;
        }
        let last = group.last_index();
        let caught_up = group
            .raw_ref()
            .raft
            .prs()
            .get(raft_id(broker))
            .is_some_and(|pr| pr.matched >= last);
        if caught_up {
            group.raw().transfer_leader(raft_id(broker));
        }
        caught_up
    }

    /// On the leader, takes the next step of moving this partition to `target`: one
    /// membership change at a time, each a simple Raft change (no joint consensus): add the
    /// missing replicas as learners, promote each once it has caught up, hand leadership to
    /// a target replica if this one is leaving, then remove the replicas not in the target.
    pub fn reassign_step(&mut self, target: &[i32]) -> ReassignStep {
        use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
        let State::Running(group) = &mut self.state else {
            return ReassignStep::Waiting;
        };
        if !group.is_leader() {
            return ReassignStep::Waiting;
        }
        let raft = &group.raw_ref().raft;
        let conf = group.conf_state();
        let changing = raft.has_pending_conf() || !conf.voters_outgoing.is_empty();
        if changing {
            return ReassignStep::Waiting;
        }
        let voters: Vec<i32> = conf.voters.iter().map(|&id| broker_of(id)).collect();
        let learners: Vec<i32> = conf.learners.iter().map(|&id| broker_of(id)).collect();
        let last = group.last_index();
        // Caught up: holds every entry. (raft-rs's `recent_active` is cleared at every
        // election timeout, the very moment these checks run, so it cannot tell.)
        let caught_up = |broker: i32| {
            raft.prs()
                .get(raft_id(broker))
                .is_some_and(|pr| pr.matched >= last)
        };
        let change = |kind: ConfChangeType, broker: i32| {
            let mut single = ConfChangeSingle {
                node_id: raft_id(broker),
                ..Default::default()
            };
            single.set_change_type(kind);
            ConfChangeV2 {
                changes: vec![single],
                ..Default::default()
            }
        };
        let next = if let Some(&b) = target
            .iter()
            .find(|b| !voters.contains(b) && !learners.contains(b))
        {
            Some(change(ConfChangeType::AddLearnerNode, b))
        } else if let Some(&b) = target.iter().find(|b| learners.contains(b)) {
            if !caught_up(b) {
                return ReassignStep::Waiting;
            }
            Some(change(ConfChangeType::AddNode, b))
        } else if !target.contains(&self.config.broker) {
            let successor = target.iter().copied().find(|&b| caught_up(b));
            return match successor {
                Some(b) => {
                    group.raw().transfer_leader(raft_id(b));
                    ReassignStep::Waiting
                }
                None => ReassignStep::Waiting,
            };
        } else {
            voters
                .iter()
                .chain(&learners)
                .find(|b| !target.contains(b))
                .map(|&b| change(ConfChangeType::RemoveNode, b))
        };
        match next {
            Some(cc) => {
                info!(partition = %self.tp, change = ?cc.changes, "moving partition replicas");
                if let Err(e) = group.propose_conf_change(cc) {
                    debug!(partition = %self.tp, error = ?e, "membership change not proposed");
                }
                ReassignStep::Waiting
            }
            None => ReassignStep::Done,
        }
    }

    /// Moves the retained log's start to `offset` after retention deleted segments before
    /// it; returns the state to save *before* those segments are deleted.
    pub fn compact_to_offset(&mut self, offset: i64) -> Option<StorageOp> {
        let State::Running(group) = &mut self.state else {
            return None;
        };
        let log = group.raw().mut_store();
        let index = log
            .iter_from(0)
            .take_while(|(_, m)| m.next_offset <= offset)
            .map(|(i, _)| i)
            .last()?;
        log.compact_to(index);
        self.damaged.retain(|&i| i > index);
        self.rewrites.retain(|&i, _| i > index);
        let snapshot = start_record(log.start(), log.conf_state(), self.catching_up);
        Some(self.save(RaftPersist {
            snapshot: Some(snapshot),
            ..Default::default()
        }))
    }

    /// A sync finished: readies waiting for it count as persisted now, and entries
    /// rewritten before it are whole again.
    pub fn on_synced(&mut self, token: u64) {
        self.rewrites.retain(|index, synced_by| {
            let durable = synced_by.is_some_and(|t| t <= token);
            if durable {
                self.damaged.remove(index);
            }
            !durable
        });
        if let State::Running(group) = &mut self.state {
            release(
                group,
                &mut self.unpersisted,
                &mut self.pending.messages,
                Some(token),
            );
        }
    }

    /// A read this replica asked for finished.
    pub fn on_read(&mut self, tag: u64, log: &mut PartitionLog, result: Result<Bytes, String>) {
        if let State::Loading(loader) = &mut self.state {
            loader.on_read(tag, log, result, &mut self.pending.ops);
            return self.continue_loading(log);
        }
        if tag & SCRUB_TAG != 0 {
            return self.on_scrub_read(tag, result);
        }
        let State::Running(group) = &mut self.state else {
            return;
        };
        let Some(contexts) = self.fetching.remove(&tag) else {
            return;
        };
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(partition = %self.tp, error = %e, "reading entries for a follower failed");
                return;
            }
        };
        // Slice by the entry table, not by parsing: the table knows each batch's extent.
        // A damaged copy is never sent: the read stops before it, and this leader steps
        // aside for a replica that holds it intact.
        let low = tag;
        let (damaged, _) = damaged_in(group.raw_ref().store(), low, &bytes);
        let first_damaged = damaged
            .first()
            .copied()
            .filter(|_| !is_planted(Canary::TrustRecoveredBatches));
        let store = group.raw().mut_store();
        let mut at = 0usize;
        for index in low.. {
            let Some(meta) = store.meta(index).copied() else {
                break;
            };
            let end = at + meta.size as usize;
            if end > bytes.len() || Some(index) == first_damaged {
                break;
            }
            if meta.kind == EntryKind::Data {
                store.add_fetched(index, bytes.slice(at..end));
            }
            at = end;
        }
        if let Some(index) = first_damaged {
            self.report_damage(index, "a read for a follower");
            let State::Running(group) = &mut self.state else {
                return;
            };
            group.raw().mut_store().clear_fetched();
            return;
        }
        let State::Running(group) = &mut self.state else {
            return;
        };
        if at == 0 {
            // Nothing usable (the file is shorter than the table says): asking raft-rs to
            // retry now would read the same again; its next heartbeat round asks anew.
            warn!(partition = %self.tp, index = low, "read for a follower came back short");
            return;
        }
        for context in contexts {
            group.raw().on_entries_fetched(context);
        }
        group.raw().mut_store().clear_fetched();
    }

    /// Handles everything raft-rs has ready; see the module doc.
    pub fn drive(
        &mut self,
        log: &mut PartitionLog,
        topic: &TopicConfig,
        index_interval: u32,
        now: Now,
        sync_token: Option<u64>,
    ) -> ReplicaOutput {
        if let State::Running(group) = &mut self.state {
            for _ in 0..8 {
                if !group.has_ready() {
                    break;
                }
                let mut ready = group.raw().ready();
                self.pending.messages.extend(ready.take_messages());
                if !ready.snapshot().is_empty() {
                    let snapshot = ready.snapshot().clone();
                    let ops = &mut self.pending.ops;
                    install_snapshot(&self.tp, group, log, snapshot, self.catching_up, ops);
                    self.damaged.clear();
                    self.rewrites.clear();
                }
                let entries = ready.take_entries();
                let wrote = !entries.is_empty();
                if let Some(first) = entries.first().map(|e| e.index) {
                    // Entries from here on are replaced: whatever was damaged there is gone.
                    self.damaged.split_off(&first);
                    self.rewrites.split_off(&first);
                }
                if wrote {
                    write_entries(
                        group,
                        log,
                        entries,
                        topic,
                        index_interval,
                        now,
                        &mut self.pending.ops,
                    );
                }
                if let Some(hs) = ready.hs() {
                    group.raw().mut_store().set_hard_state(hs.clone());
                    if (hs.term, hs.vote) != self.persisted_vote {
                        self.persisted_vote = (hs.term, hs.vote);
                        let save = RaftPersist {
                            hard_state: Some(HardState {
                                commit: 0,
                                ..hs.clone()
                            }),
                            ..Default::default()
                        };
                        let op = StorageOp::SaveReplica {
                            partition: self.tp.clone(),
                            state: Box::new(save),
                        };
                        self.pending.ops.push(op);
                    }
                }
                for entry in ready.take_committed_entries() {
                    if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                        let ops = &mut self.pending.ops;
                        apply_membership(&self.tp, group, &entry, self.catching_up, ops);
                    }
                }
                self.unpersisted.push_back(Unpersisted {
                    token: if wrote { sync_token } else { None },
                    number: ready.number(),
                    messages: ready.take_persisted_messages(),
                });
                group.raw().advance_append_async(ready);
                group.raw().advance_apply();
                release(
                    group,
                    &mut self.unpersisted,
                    &mut self.pending.messages,
                    None,
                );
            }
            group.redraw_election_timeout();
            // Rewrites issued since the last drive become durable with this drive's sync.
            for synced_by in self.rewrites.values_mut().filter(|t| t.is_none()) {
                *synced_by = sync_token;
            }
            if sync_token.is_none() {
                let done: Vec<u64> = self.rewrites.keys().copied().collect();
                self.rewrites.clear();
                for index in done {
                    self.damaged.remove(&index);
                }
            }
            // A damaged copy never counts towards a quorum: acknowledge only what precedes it.
            if let Some(&first) = self.damaged.first() {
                for m in &mut self.pending.messages {
                    if m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject {
                        m.index = m.index.min(first - 1);
                    }
                }
            }
            for (batch, written) in std::mem::take(&mut self.repaired_producers) {
                log.producers_mut().restore(batch, written, now.wall);
            }
            if std::mem::take(&mut self.rebuild_txns) {
                let mut txns = group.raw_ref().store().txn_index();
                txns.advance(log.high_watermark());
                log.set_txns(txns);
            }
            let store = group.raw_ref().store();
            let committed = group.committed().min(store.last());
            if self.config.report_commits && committed > self.commit_reported {
                let from = self.commit_reported.max(store.start().index) + 1;
                let entries = (from..=committed).filter_map(|i| Some((i, *store.meta(i)?)));
                self.pending.committed.extend(entries);
                self.commit_reported = committed;
            }
            log.producers_mut().commit(committed);
            if let Some(meta) = store.meta(committed) {
                let point = CommitPoint {
                    offset: meta.next_offset,
                    segment_base: meta.segment_base,
                    position: meta.position + u64::from(meta.size),
                };
                self.pending.advanced |= log.commit(point);
            }
            if group.is_leader() && self.reported != (group.term(), true) {
                self.pending.elected = Some(group.term());
                if is_planted(Canary::ForgetProducersOnLeaderChange) {
                    *log.producers_mut() = crate::producer::ProducerTable::new();
                }
            }
            self.reported = (group.term(), group.is_leader());
            self.plan_fetches();
        }
        std::mem::take(&mut self.pending)
    }

    /// Turns raft-rs's misses into reads, one per distinct first index.
    fn plan_fetches(&mut self) {
        let State::Running(group) = &mut self.state else {
            return;
        };
        let misses = group.raw().mut_store().take_misses();
        let store = group.raw_ref().store();
        for miss in misses {
            if let Some(waiting) = self.fetching.get_mut(&miss.low) {
                if waiting.len() < 8 {
                    waiting.push(miss.context);
                }
                continue;
            }
            let Some(first) = store.meta(miss.low) else {
                continue;
            };
            let mut len = 0usize;
            for (_, meta) in store.iter_from(miss.low) {
                if meta.segment_base != first.segment_base
                    || (len > 0 && len + meta.size as usize > READ_CHUNK)
                {
                    break;
                }
                len += meta.size as usize;
            }
            self.pending.reads.push(ReadRequest {
                tag: miss.low,
                segment: SegmentId {
                    partition: self.tp.clone(),
                    base_offset: first.segment_base,
                },
                position: first.position,
                len,
            });
            self.fetching.insert(miss.low, vec![miss.context]);
        }
    }

    fn continue_loading(&mut self, log: &mut PartitionLog) {
        let State::Loading(loader) = &mut self.state else {
            return;
        };
        match loader.next(&self.tp, self.next_tag) {
            load::Step::Read(read) => {
                self.next_tag += 1;
                self.pending.reads.push(read);
                return;
            }
            load::Step::Wait => return,
            load::Step::Done => {}
        }
        let placeholder = State::Loading(Box::new(Loader::new(
            LogStart::default(),
            HardState::default(),
            ConfState::default(),
            log,
        )));
        let State::Loading(loader) = std::mem::replace(&mut self.state, placeholder) else {
            unreachable!("checked above");
        };
        let (entry_log, fixes, catch_up, damaged) = loader.finish(log);
        self.catching_up = self.catching_up.max(catch_up);
        if !is_planted(Canary::TrustRecoveredBatches) {
            self.damaged.extend(damaged);
        }
        if self.catching_up == CatchUp::Recorded {
            // Durable before the cut that made it so: a replica that crashes while catching
            // up must not come back with a shorter but clean log and vote again.
            let snapshot =
                start_record(entry_log.start(), entry_log.conf_state(), CatchUp::Recorded);
            self.pending.ops.push(self.save(RaftPersist {
                snapshot: Some(snapshot),
                ..Default::default()
            }));
        }
        self.pending.ops.extend(fixes);
        let group_config = GroupConfig {
            id: raft_id(self.config.broker),
            election_ticks: self.config.election_ticks,
            heartbeat_ticks: self.config.heartbeat_ticks,
            applied: entry_log.start().index,
            seed: self.config.seed ^ hash_partition(&self.tp),
        };
        match RaftGroup::new(&group_config, entry_log) {
            Ok(group) => {
                debug!(partition = %self.tp, "replica running");
                self.state = State::Running(Box::new(group));
            }
            Err(e) => warn!(partition = %self.tp, error = %e, "replica cannot start its group"),
        }
    }

    fn save(&self, state: RaftPersist) -> StorageOp {
        StorageOp::SaveReplica {
            partition: self.tp.clone(),
            state: Box::new(state),
        }
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("partition", &self.tp)
            .field("running", &self.is_running())
            .field("leader", &self.leader())
            .field("term", &self.term())
            .finish()
    }
}

impl ReplicaOutput {
    fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.messages.is_empty()
            && self.reads.is_empty()
            && self.elected.is_none()
            && !self.advanced
    }
}

/// Releases the persisted messages of readies made durable by `synced`, in order.
fn release(
    group: &mut RaftGroup<EntryLog>,
    unpersisted: &mut VecDeque<Unpersisted>,
    out: &mut Vec<Message>,
    synced: Option<u64>,
) {
    while let Some(front) = unpersisted.front() {
        let durable = match (front.token, synced) {
            (None, _) => true,
            (Some(t), Some(s)) => t <= s,
            (Some(_), None) => false,
        };
        if !durable {
            break;
        }
        let done = unpersisted.pop_front().expect("front exists");
        group.raw().on_persist_ready(done.number);
        out.extend(done.messages);
    }
}

/// A stable hash of a partition id, so each partition's elections draw differently.
fn hash_partition(tp: &TopicPartition) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in tp.topic.bytes().chain(tp.partition.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends raft-rs's entries to the log as batches, replacing any suffix they overwrite.
fn write_entries(
    group: &mut RaftGroup<EntryLog>,
    log: &mut PartitionLog,
    entries: Vec<raft::eraftpb::Entry>,
    topic: &TopicConfig,
    index_interval: u32,
    now: Now,
    ops: &mut Vec<StorageOp>,
) {
    let store = group.raw().mut_store();
    let first = entries[0].index;
    if first <= store.last() {
        // Raft never replaces what it committed: the suffix replaced starts at or above the
        // high watermark (which this drive has not moved yet; raft-rs's own commit index
        // may already count the entries that replace it).
        if let Some(replaced) = store.meta(first) {
            assert!(
                replaced.base_offset >= log.high_watermark(),
                "{}: entries from {first} would replace committed offset {} (high watermark {})",
                log.partition(),
                replaced.base_offset,
                log.high_watermark()
            );
        }
        let meta = store
            .meta(first)
            .copied()
            .filter(|_| !is_planted(Canary::KeepConflictingSuffix));
        if let Some(meta) = meta {
            if log
                .truncate_to(meta.base_offset, meta.segment_base, meta.position, ops)
                .is_err()
            {
                warn!(partition = %log.partition(), index = first, "cannot truncate the log for a replaced suffix");
            }
        }
        store.truncate_from(first);
        log.producers_mut().truncate_from(first);
    }
    for entry in entries {
        let membership = entry.get_entry_type() != EntryType::EntryNormal;
        let mut bytes = entry_batch(&entry);
        let mut producer = None;
        let mut txn = None;
        // Stamping the base offset and leader epoch below leaves the CRC as it is.
        let (delta, max_timestamp, kind, crc) = match BatchView::split_first(&bytes) {
            Ok((view, [])) => (
                view.last_offset_delta().max(0),
                view.max_timestamp(),
                match (membership, batch::is_leader_change(&view)) {
                    (true, _) => EntryKind::Membership,
                    (false, true) => EntryKind::LeaderChange,
                    (false, false) => {
                        producer = ProducerBatch::of(&view);
                        // Placed at its offset below, once the offset is known.
                        txn = TxnEvent::of(&view, 0);
                        EntryKind::Data
                    }
                },
                Some(view.stored_crc()),
            ),
            _ => {
                // The leader validated it; bytes that do not parse mean a bug upstream.
                // Every replica receives the same bytes, so all write the same marker.
                warn!(partition = %log.partition(), index = entry.index, "entry is not one batch; storing a marker");
                bytes = batch::leader_change_batch(entry.term).freeze();
                let crc = BatchView::split_first(&bytes)
                    .ok()
                    .map(|(v, _)| v.stored_crc());
                (0, -1, EntryKind::LeaderChange, crc)
            }
        };
        let base_offset = log.log_end_offset();
        let bytes = StampedBatch::new(bytes, base_offset, Some(entry.term as i32));
        let size = bytes.len() as u32;
        log.maybe_roll(u64::from(size), now.wall, topic, ops);
        let at = log.end_point();
        log.append(delta + 1, size, max_timestamp, now.wall, index_interval);
        let txn = txn.map(|event| event.at(base_offset));
        if let Some(event) = txn {
            log.txns_mut().apply(event);
        }
        let meta = EntryMeta {
            term: entry.term,
            base_offset,
            next_offset: base_offset + i64::from(delta) + 1,
            segment_base: at.segment_base,
            position: at.position,
            size,
            crc,
            kind,
            txn,
        };
        ops.push(StorageOp::Append {
            segment: log.active_segment_id(),
            data: bytes,
        });
        if let Some(batch) = producer {
            let written = Written::of(&batch, entry.index, entry.term, Some(base_offset));
            log.producers_mut().record(batch, written, now.wall);
        }
        store.push(meta, entry.data);
    }
}

/// The byte after a replica's recorded start (offset, membership index) that says it is
/// catching up: it may have lost entries it acknowledged and votes only once it has caught
/// up with a leader. Kept with the start so that it survives a restart.
const CATCHING_UP: u8 = 1;

/// The recorded start of a replica's log, as persisted: what a leader would send as its
/// snapshot, and the catching-up flag.
fn start_record(start: LogStart, conf_state: &ConfState, catching_up: CatchUp) -> Snapshot {
    let mut snapshot = start.to_snapshot(conf_state);
    if catching_up == CatchUp::Recorded {
        snapshot.data.push(CATCHING_UP);
    }
    snapshot
}

/// Marks a replica's persisted state as catching up (see [`CATCHING_UP`]): what storage
/// does, durably, before it cuts batches of a replicated partition at start-up (see
/// [`crate::recovery::PartitionRecovery::lost`]).
pub fn mark_catching_up(state: &mut RaftPersist) {
    let snapshot = state
        .snapshot
        .get_or_insert_with(|| LogStart::default().to_snapshot(&ConfState::default()));
    snapshot.data.resize(LogStart::RECORD_LEN, 0);
    snapshot.data.push(CATCHING_UP);
}

/// True if a replica's persisted state says it was catching up (see [`CATCHING_UP`]).
pub fn is_catching_up(state: &RaftPersist) -> bool {
    state
        .snapshot
        .as_ref()
        .is_some_and(|s| s.data.get(LogStart::RECORD_LEN) == Some(&CATCHING_UP))
}

/// Applies a committed membership change to the group and records the new membership with
/// the log start (durably). A change the recorded membership already reflects is skipped.
fn apply_membership(
    tp: &TopicPartition,
    group: &mut RaftGroup<EntryLog>,
    entry: &raft::eraftpb::Entry,
    catching_up: CatchUp,
    ops: &mut Vec<StorageOp>,
) {
    use prost::Message as _;
    if entry.index <= group.raw_ref().store().start().conf_index {
        return;
    }
    let change = match raft::eraftpb::ConfChangeV2::decode(&entry.data[..]) {
        Ok(change) => change,
        Err(e) => {
            warn!(partition = %tp, index = entry.index, error = %e, "unreadable membership change");
            return;
        }
    };
    match group.raw().apply_conf_change(&change) {
        Ok(conf_state) => {
            info!(partition = %tp, voters = ?conf_state.voters, learners = ?conf_state.learners, "partition membership changed");
            let store = group.raw().mut_store();
            store.set_membership(conf_state, entry.index);
            ops.push(StorageOp::SaveReplica {
                partition: tp.clone(),
                state: Box::new(RaftPersist {
                    snapshot: Some(start_record(store.start(), store.conf_state(), catching_up)),
                    ..Default::default()
                }),
            });
        }
        Err(e) => warn!(partition = %tp, error = %e, "membership change refused"),
    }
}

/// A follower too far behind takes the leader's log start: its log restarts empty there.
fn install_snapshot(
    tp: &TopicPartition,
    group: &mut RaftGroup<EntryLog>,
    log: &mut PartitionLog,
    snapshot: raft::eraftpb::Snapshot,
    catching_up: CatchUp,
    ops: &mut Vec<StorageOp>,
) {
    let Some(start) = LogStart::from_snapshot(&snapshot) else {
        warn!(partition = %tp, "snapshot without a start offset; ignored");
        return;
    };
    // Old segments go before the new start is recorded: a crash in between leaves an empty
    // log, which start-up reconciles with the older recorded start.
    log.reset(start.offset, ops);
    let conf_state = snapshot.get_metadata().get_conf_state().clone();
    let record = start_record(start, &conf_state, catching_up);
    group.raw().mut_store().reset(start, conf_state);
    ops.push(StorageOp::SaveReplica {
        partition: tp.clone(),
        state: Box::new(RaftPersist {
            snapshot: Some(record),
            ..Default::default()
        }),
    });
}

/// The damaged entries among those a read from entry `first` on holds whole, and the entry
/// after the last whole one.
fn damaged_in(store: &EntryLog, first: u64, bytes: &[u8]) -> (Vec<u64>, u64) {
    let mut damaged = Vec::new();
    let mut at = 0usize;
    let mut next = first;
    for (index, meta) in store.iter_from(first) {
        let end = at + meta.size as usize;
        let Some(frame) = bytes.get(at..end) else {
            break;
        };
        let intact = BatchView::split_first(frame).is_ok_and(|(view, rest)| {
            rest.is_empty()
                && view.crc_ok()
                && view.base_offset() == meta.base_offset
                && u64::try_from(view.leader_epoch()) == Ok(meta.term)
        });
        if !intact {
            damaged.push(index);
        }
        at = end;
        next = index + 1;
    }
    (damaged, next)
}

/// A leader that holds a damaged entry hands leadership to a voter that holds everything
/// (it cannot send that entry to anyone), or else (or if `now`) steps down and lets the
/// others elect.
fn step_aside(group: &mut RaftGroup<EntryLog>, now: bool) {
    if !group.is_leader() || (!now && group.raw_ref().raft.lead_transferee.is_some()) {
        return;
    }
    let last = group.last_index();
    let me = group.id();
    let raft = &group.raw_ref().raft;
    let voters = raft.prs().conf().voters().ids();
    let successor = raft
        .prs()
        .iter()
        .filter(|(id, pr)| **id != me && voters.contains(**id) && pr.matched >= last)
        .map(|(id, _)| *id)
        .min();
    match successor.filter(|_| !now) {
        Some(id) => group.raw().transfer_leader(id),
        None => {
            let term = group.term();
            group.raw().raft.become_follower(term, raft::INVALID_ID);
        }
    }
}

/// The rejection that asks the leader of `message` to send entries again from just after
/// `held`: the index this replica holds whole (raft-rs's leader probes from there once it
/// lowers its view of this follower; see the repairs in [`Replica::step`]).
fn resend_from(message: &Message, store: &EntryLog, held: u64) -> Message {
    let mut reject = Message {
        to: message.from,
        from: message.to,
        term: message.term,
        // "Entry `held + 1` does not match here": the leader sends from it, anchored at `held`.
        index: held + 1,
        reject: true,
        reject_hint: held,
        log_term: store.term(held).unwrap_or(0),
        ..Default::default()
    };
    reject.set_msg_type(MessageType::MsgAppendResponse);
    reject
}

/// True unless `entry` carries a batch that fails its CRC or is not one whole batch (its
/// base offset and leader epoch, outside the CRC, are stamped by the receiver).
fn arrived_intact(entry: &raft::eraftpb::Entry) -> bool {
    entry.get_entry_type() != EntryType::EntryNormal
        || entry.data.is_empty()
        || BatchView::split_first(&entry.data)
            .is_ok_and(|(view, rest)| rest.is_empty() && view.crc_ok())
}

/// The batch an entry stands for, before its offset and epoch are stamped: a data entry's
/// own bytes (shared, not copied), or the control batch that stands for a membership change
/// or a leader's empty entry.
fn entry_batch(entry: &raft::eraftpb::Entry) -> Bytes {
    if entry.get_entry_type() != EntryType::EntryNormal {
        batch::control_batch(batch::MEMBERSHIP_CONTROL_TYPE, Some(&entry.data)).freeze()
    } else if entry.data.is_empty() {
        batch::leader_change_batch(entry.term).freeze()
    } else {
        entry.data.clone()
    }
}
