//! One Raft group, driven sans-IO: raft-rs's `RawNode` over an in-memory log.
//!
//! # Driving a `RaftGroup`
//! Inputs: [`RaftGroup::tick`] every tick of the owner's clock, [`RaftGroup::step`] for each
//! message from a peer, [`RaftGroup::propose`] for a new entry. After inputs, call
//! [`RaftGroup::drive`]: it handles raft-rs's `Ready` in the order raft-rs documents and
//! returns [`Effects`]. The owner must make `Effects::persist` durable *before* any of
//! `Effects::messages` leaves the node (votes and acknowledgements promise durable state),
//! then install `Effects::snapshot` and apply `Effects::committed` in order.
//!
//! Randomness: raft-rs draws election timeouts from the OS, which the simulator cannot
//! replay. Whenever raft-rs may have drawn one (a change of term, role or leader), the group
//! overwrites it, before any tick can use it, with a draw from its own seeded RNG.

pub mod memlog;

use std::collections::BTreeMap;

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, Message, Snapshot};
use raft::{RawNode, StateRole, Storage};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use memlog::{MemLog, RaftPersist};
pub use raft::eraftpb;

/// How a group is set up.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// This replica's id (the node id).
    pub id: u64,
    /// Ticks without a leader before a follower campaigns (the minimum; jitter adds up to
    /// as many again).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Index the owner's state machine has already applied.
    pub applied: u64,
    /// Seeds the election-timeout jitter.
    pub seed: u64,
}

/// Terms at or past this are refused from peers: a billion elections is past any real
/// cluster, and a partition's term must stay a Kafka leader epoch (an i32).
pub(crate) const ABSURD_TERM: u64 = 1 << 30;

/// Indexes at or past this are refused from peers: raft-rs adds to them unchecked.
const ABSURD_INDEX: u64 = u64::MAX / 2;

/// True if raft-rs can restore `conf` from a snapshot: voters, and no id twice or zero.
fn membership_restorable(conf: &ConfState) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    let ids = conf
        .voters
        .iter()
        .chain(&conf.learners)
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners_next);
    let unique = conf
        .voters
        .iter()
        .chain(&conf.learners)
        .all(|id| seen.insert(*id));
    !conf.voters.is_empty() && unique && ids.clone().all(|&id| id != raft::INVALID_ID)
}

/// What one [`RaftGroup::drive`] produced; see the module doc for the order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Durable state to write first.
    pub persist: RaftPersist,
    /// Messages to peers, to send once `persist` is durable.
    pub messages: Vec<Message>,
    /// A snapshot the state machine must load (before `committed`).
    pub snapshot: Option<Snapshot>,
    /// Committed entries to apply, in order.
    pub committed: Vec<Entry>,
}

impl Effects {
    /// True if the drive produced nothing.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.snapshot.is_none()
            && self.committed.is_empty()
    }
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader is known to take it.
    NoLeader,
    /// raft-rs refused it (for example, a leader transfer is under way).
    Dropped,
}

/// One Raft group's replica on this node, over any raft-rs storage: [`MemLog`] for the
/// metadata quorum, the partition's own segment log for a partition replica.
pub struct RaftGroup<S: Storage = MemLog> {
    node: RawNode<S>,
    rng: ChaCha8Rng,
    election_ticks: usize,
    /// (term, role, leader) when the election timeout was last drawn.
    drawn_for: (u64, StateRole, u64),
    /// Ticks each follower has waited in raft-rs's snapshot state, on a leader.
    snapshot_waits: BTreeMap<u64, usize>,
}

impl<S: Storage> RaftGroup<S> {
    /// A replica over `log` (for the quorum: fresh from [`MemLog::bootstrap`] or recovered).
    pub fn new(config: &GroupConfig, log: S) -> Result<Self, String> {
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            // raft-rs draws from this range with the OS's randomness; the group overwrites
            // each draw before it is used (see `redraw_election_timeout`).
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks * 2,
            heartbeat_tick: config.heartbeat_ticks,
            applied: config.applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config.validate().map_err(|e| e.to_string())?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_config, log, &logger).map_err(|e| e.to_string())?;
        let mut group = RaftGroup {
            node,
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ config.id.rotate_left(32)),
            election_ticks: config.election_ticks,
            drawn_for: (u64::MAX, StateRole::Follower, 0),
            snapshot_waits: BTreeMap::new(),
        };
        group.redraw_election_timeout();
        Ok(group)
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// True if this replica leads the group.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// True if raft-rs has output for [`Self::drive`].
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// The current voters and learners.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// One tick of the owner's clock.
    pub fn tick(&mut self) {
        self.node.tick();
        self.redraw_election_timeout();
        self.retry_lost_snapshots();
    }

    /// A leader that sent a follower a snapshot waits (raft-rs's snapshot state: only
    /// heartbeats) until the follower acknowledges it or the owner reports it failed. Peer
    /// frames can be lost (a link redialled drops what it held), so a snapshot unanswered
    /// for two election timeouts counts as failed and is sent again. (Simulator:
    /// cluster5-swarm seed 85, where a deposed controller heard only heartbeats for good.)
    fn retry_lost_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshot_waits.clear();
            return;
        }
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_waits.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_waits.entry(id).or_default();
            *ticks += 1;
            if *ticks > 2 * self.election_ticks {
                self.snapshot_waits.remove(&id);
                self.node.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    /// A message from a peer. Malformed or stale messages are ignored (raft-rs logs them).
    pub fn step(&mut self, mut message: Message) {
        use crate::canary::{is_planted, Canary};
        if let Some(why) = self.refusal(&message) {
            tracing::warn!(
                from = message.from,
                kind = message.msg_type,
                why,
                "refusing a raft message"
            );
            return;
        }
        let last = self.node.raft.raft_log.last_index();
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
            && message.commit > last
        {
            // raft-rs would assert: a leader never counts entries this log does not hold.
            message.commit = last;
        }
        if is_planted(Canary::VoteTwice)
            && message.get_msg_type() == raft::eraftpb::MessageType::MsgRequestVote
            && message.term == self.node.raft.term
        {
            // The planted bug: forget whom this term's vote went to.
            self.node.raft.vote = raft::INVALID_ID;
        }
        if let Err(e) = self.node.step(message) {
            tracing::debug!(error = %e, "raft step refused a message");
        }
        self.redraw_election_timeout();
    }

    /// Why a message from a peer must not reach raft-rs, if it must not. raft-rs asserts on
    /// what only a broken or hostile peer sends (a read index without its context, a
    /// proposal without entries, a vote without a term, entries that do not follow each
    /// other, an acknowledgement past the log, a snapshot whose membership cannot be
    /// restored, terms near overflow), and an assertion would stop the broker: such a
    /// message is dropped instead.
    pub fn refusal(&self, m: &Message) -> Option<&'static str> {
        use raft::eraftpb::MessageType::*;
        let log = &self.node.raft.raft_log;
        // raft-rs's accessors panic on a type number they do not know.
        let Some(kind) = raft::eraftpb::MessageType::from_i32(m.msg_type) else {
            return Some("an unknown message type");
        };
        let sent_by_peers = matches!(
            kind,
            MsgAppend
                | MsgAppendResponse
                | MsgRequestVote
                | MsgRequestVoteResponse
                | MsgRequestPreVote
                | MsgRequestPreVoteResponse
                | MsgSnapshot
                | MsgHeartbeat
                | MsgHeartbeatResponse
                | MsgTimeoutNow
                | MsgTransferLeader
                | MsgPropose
        );
        if !sent_by_peers || m.from == raft::INVALID_ID {
            return Some("not a message peers send");
        }
        // No real term or index comes near these: raft-rs adds to them unchecked, and a
        // partition's term is its Kafka leader epoch, an i32.
        let meta = m.get_snapshot().get_metadata();
        let mut terms = [m.term, m.log_term, m.commit_term, meta.term]
            .into_iter()
            .chain(m.entries.iter().map(|e| e.term));
        let mut indexes = [
            m.index,
            m.commit,
            m.reject_hint,
            m.request_snapshot,
            meta.index,
        ]
        .into_iter()
        .chain(m.entries.iter().map(|e| e.index));
        if terms.any(|t| t >= ABSURD_TERM) || indexes.any(|i| i >= ABSURD_INDEX) {
            return Some("a term or index past any real one");
        }
        let vote = matches!(
            kind,
            MsgRequestVote | MsgRequestVoteResponse | MsgRequestPreVote | MsgRequestPreVoteResponse
        );
        if vote && m.term == 0 {
            return Some("a vote without a term");
        }
        if kind == MsgPropose && m.entries.is_empty() {
            return Some("a proposal without entries");
        }
        // A follower forwards these to its leader as raft-rs made them: without a term
        // (raft-rs asserts on sending one that has a term, when it forwards them on).
        if matches!(kind, MsgPropose | MsgTransferLeader) && m.term != 0 {
            return Some("a forwarded request with a term");
        }
        // raft-rs takes an acknowledgement as it comes: one past this log would let the
        // commit index pass the log's end, where it asserts.
        if kind == MsgAppendResponse && !m.reject && m.index > log.last_index() {
            return Some("an acknowledgement of entries this log does not hold");
        }
        if kind == MsgAppend {
            let mut previous_term = m.log_term;
            for (i, e) in m.entries.iter().enumerate() {
                if raft::eraftpb::EntryType::from_i32(e.entry_type).is_none() {
                    return Some("an unknown entry type");
                }
                if Some(e.index) != m.index.checked_add(1 + i as u64) {
                    return Some("entries that do not follow each other");
                }
                if e.term < previous_term || e.term > m.term {
                    return Some("entry terms out of order");
                }
                previous_term = e.term;
            }
        }
        if kind == MsgSnapshot {
            let conf = m.get_snapshot().get_metadata().get_conf_state();
            if !membership_restorable(conf) {
                return Some("a snapshot whose membership cannot be restored");
            }
        }
        None
    }

    /// Proposes `data` as a new entry. A follower forwards it to the leader; it may still be
    /// lost on the way, so the proposer must watch for it to be applied, with a deadline.
    pub fn propose(&mut self, data: impl Into<bytes::Bytes>) -> Result<(), ProposeError> {
        if self.leader().is_none() {
            return Err(ProposeError::NoLeader);
        }
        // What `RawNode::propose` does, but with the data as given: it takes a `Vec`, which
        // a record batch (a slice of its request) would be copied into.
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
        m.from = self.node.raft.id;
        let entry = raft::eraftpb::Entry {
            data: data.into(),
            ..Default::default()
        };
        m.entries = vec![entry];
        self.node.raft.step(m).map_err(|_| ProposeError::Dropped)
    }

    /// If this replica leads, asks the most caught-up voter to take over (a graceful
    /// handover before shutting down). Returns the chosen successor.
    pub fn hand_over(&mut self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let me = self.id();
        let voters = self.node.raft.prs().conf().voters().ids();
        let successor = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(**id))
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)?;
        self.node.transfer_leader(successor);
        Some(successor)
    }

    /// Index of the last entry in the log (stable or not).
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Index of the last committed entry.
    pub fn committed(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Voters in sync with the leader, itself included: heard from within the current
    /// election timeout (raft-rs's check-quorum bookkeeping, cleared at each timeout) or
    /// holding everything committed; 0 on a follower.
    pub fn in_sync_voters(&self) -> usize {
        if !self.is_leader() {
            return 0;
        }
        let me = self.id();
        let committed = self.committed();
        let voters = self.node.raft.prs().conf().voters().ids();
        self.node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| {
                voters.contains(**id) && (**id == me || p.recent_active || p.matched >= committed)
            })
            .count()
    }

    /// The raft-rs node, for owners that handle `Ready` themselves.
    pub fn raw(&mut self) -> &mut RawNode<S> {
        &mut self.node
    }

    /// The raft-rs node, read-only.
    pub fn raw_ref(&self) -> &RawNode<S> {
        &self.node
    }

    /// Proposes a membership change (adding a learner, for example).
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> Result<(), ProposeError> {
        if self.leader().is_none() {
            return Err(ProposeError::NoLeader);
        }
        self.node
            .propose_conf_change(Vec::new(), change)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Starts an election now (used to elect a single-voter group without waiting).
    pub fn campaign(&mut self) {
        let _ = self.node.campaign();
        self.redraw_election_timeout();
    }

    /// Draws a new election timeout whenever raft-rs would have drawn one. Owners that
    /// drive raft-rs through [`Self::raw`] call it after every step they take.
    pub fn redraw_election_timeout(&mut self) {
        let raft = &self.node.raft;
        let now = (raft.term, raft.state, raft.leader_id);
        if now == self.drawn_for {
            return;
        }
        self.drawn_for = now;
        let jitter = (self.rng.next_u64() % self.election_ticks as u64) as usize;
        self.node
            .raft
            .set_randomized_election_timeout(self.election_ticks + jitter);
    }
}

impl RaftGroup<MemLog> {
    /// The in-memory log.
    pub fn log(&self) -> &MemLog {
        self.node.store()
    }

    /// Applies a committed membership change; returns the change to persist.
    pub fn apply_conf_change(&mut self, change: &ConfChangeV2) -> Option<RaftPersist> {
        match self.node.apply_conf_change(change) {
            Ok(conf_state) => {
                let change = RaftPersist {
                    conf_state: Some(conf_state),
                    ..Default::default()
                };
                self.node.mut_store().apply(&change);
                Some(change)
            }
            Err(e) => {
                tracing::warn!(error = %e, "membership change refused");
                None
            }
        }
    }

    /// Replaces the log prefix up to `applied` with a snapshot of the state machine.
    /// Returns the change to persist.
    pub fn compact(&mut self, applied: u64, data: Vec<u8>) -> Option<RaftPersist> {
        let term = self.node.store().term(applied).ok()?;
        let mut snapshot = Snapshot {
            data,
            ..Default::default()
        };
        snapshot.mut_metadata().index = applied;
        snapshot.mut_metadata().term = term;
        *snapshot.mut_metadata().mut_conf_state() = self.conf_state();
        let change = RaftPersist {
            snapshot: Some(snapshot),
            ..Default::default()
        };
        self.node.mut_store().apply(&change);
        Some(change)
    }

    /// Handles everything raft-rs has ready; see the module doc for what to do with it.
    pub fn drive(&mut self) -> Effects {
        let mut effects = Effects::default();
        // Each round persists what the previous one made ready; raft-rs settles in a few.
        for _ in 0..8 {
            if !self.node.has_ready() {
                break;
            }
            let mut ready = self.node.ready();
            effects.messages.extend(ready.take_messages());
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                self.store(
                    &mut effects.persist,
                    RaftPersist {
                        snapshot: Some(snapshot.clone()),
                        ..Default::default()
                    },
                );
                effects.snapshot = Some(snapshot);
                // A snapshot replaces whatever was waiting to be applied before it.
                effects.committed.clear();
            }
            effects.committed.extend(ready.take_committed_entries());
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            self.store(
                &mut effects.persist,
                RaftPersist {
                    entries,
                    hard_state,
                    ..Default::default()
                },
            );
            effects.messages.extend(ready.take_persisted_messages());
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut hard_state = self.node.store().hard_state().clone();
                hard_state.commit = commit;
                self.store(
                    &mut effects.persist,
                    RaftPersist {
                        hard_state: Some(hard_state),
                        ..Default::default()
                    },
                );
            }
            effects.messages.extend(light.take_messages());
            effects.committed.extend(light.take_committed_entries());
            self.node.advance_apply();
        }
        self.redraw_election_timeout();
        effects
    }

    /// Writes `change` to the in-memory log and folds it into `into`.
    fn store(&mut self, into: &mut RaftPersist, change: RaftPersist) {
        if change.is_empty() {
            return;
        }
        self.node.mut_store().apply(&change);
        if let Some(snapshot) = change.snapshot {
            // A snapshot supersedes entries written before it in this batch.
            into.entries.clear();
            into.snapshot = Some(snapshot);
        }
        if let Some(first) = change.entries.first() {
            into.entries.retain(|e| e.index < first.index);
            into.entries.extend(change.entries);
        }
        if change.hard_state.is_some() {
            into.hard_state = change.hard_state;
        }
        if change.conf_state.is_some() {
            into.conf_state = change.conf_state;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Three replicas stepped in-process; messages are delivered until none are left.
    struct Trio {
        groups: BTreeMap<u64, RaftGroup>,
        applied: BTreeMap<u64, Vec<Vec<u8>>>,
        down: Option<u64>,
    }

    impl Trio {
        fn new(seed: u64) -> Self {
            let groups = (1..=3)
                .map(|id| {
                    let config = GroupConfig {
                        id,
                        election_ticks: 10,
                        heartbeat_ticks: 2,
                        applied: 0,
                        seed,
                    };
                    (
                        id,
                        RaftGroup::new(&config, MemLog::bootstrap(&[1, 2, 3])).unwrap(),
                    )
                })
                .collect();
            Trio {
                groups,
                applied: BTreeMap::new(),
                down: None,
            }
        }

        fn settle(&mut self) {
            for _ in 0..100 {
                let mut inflight = Vec::new();
                for (id, group) in &mut self.groups {
                    let effects = group.drive();
                    for entry in effects.committed {
                        if !entry.data.is_empty() {
                            self.applied
                                .entry(*id)
                                .or_default()
                                .push(entry.data.to_vec());
                        }
                    }
                    inflight.extend(effects.messages);
                }
                if inflight.is_empty() {
                    return;
                }
                for m in inflight {
                    if Some(m.to) != self.down && Some(m.from) != self.down {
                        self.groups.get_mut(&m.to).unwrap().step(m);
                    }
                }
            }
        }

        fn tick_all(&mut self, ticks: usize) {
            for _ in 0..ticks {
                for (id, group) in &mut self.groups {
                    if Some(*id) != self.down {
                        group.tick();
                    }
                }
                self.settle();
            }
        }

        fn leader(&self) -> Option<u64> {
            self.groups
                .iter()
                .find(|(id, g)| g.is_leader() && Some(**id) != self.down)
                .map(|(id, _)| *id)
        }
    }

    #[test]
    fn three_replicas_elect_one_leader_and_commit_everywhere() {
        let mut trio = Trio::new(7);
        trio.tick_all(40);
        let leader = trio.leader().expect("a leader within 40 ticks");
        let leaders = trio.groups.values().filter(|g| g.is_leader()).count();
        assert_eq!(leaders, 1);
        trio.groups
            .get_mut(&leader)
            .unwrap()
            .propose(b"hello".to_vec())
            .unwrap();
        trio.settle();
        for id in 1..=3 {
            assert_eq!(trio.applied[&id], vec![b"hello".to_vec()], "replica {id}");
        }
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        trio.groups
            .get_mut(&follower)
            .unwrap()
            .propose(b"forwarded".to_vec())
            .unwrap();
        trio.settle();
        assert_eq!(
            trio.applied[&leader].len(),
            2,
            "a follower's proposal reaches the leader"
        );
    }

    #[test]
    fn a_new_leader_takes_over_when_the_old_one_is_cut_off() {
        let mut trio = Trio::new(11);
        trio.tick_all(40);
        let first = trio.leader().unwrap();
        trio.down = Some(first);
        trio.tick_all(60);
        let second = trio.leader().expect("a new leader");
        assert_ne!(first, second);
        let term = trio.groups[&second].term();
        assert!(term > trio.groups[&first].term());
    }

    #[test]
    fn election_timeouts_come_from_the_seed() {
        let timeouts = |seed| {
            let trio = Trio::new(seed);
            trio.groups
                .values()
                .map(|g| g.node.raft.randomized_election_timeout())
                .collect::<Vec<_>>()
        };
        assert_eq!(timeouts(3), timeouts(3));
        assert!((1..20).any(|s| timeouts(s) != timeouts(3)));
    }
}
