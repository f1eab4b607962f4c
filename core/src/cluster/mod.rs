//! The cluster's metadata quorum: one Raft group whose log holds brokers and topics.
//!
//! Every broker runs a [`Controller`]; the voters (`controller.quorum.voters`) elect a
//! leader, the active controller. Any broker may propose a change (a follower forwards it to
//! the leader); every broker applies the committed log to its [`MetadataImage`] and so
//! learns the same topics and replicas in the same order.
//!
//! # Driving a `Controller`
//! Inputs: [`Controller::handle_timeout`] at [`Controller::poll_timeout`],
//! [`Controller::step`] for each Raft message of the metadata group, and
//! [`Controller::propose`] for a change. Then call [`Controller::drive`] and carry out the
//! returned [`Drive`] in order: persist, send, then act on what was applied.

pub mod image;
pub mod records;

use crate::time::Now;
use std::collections::BTreeMap;

use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, EntryType, Message};
use tracing::{debug, info, warn};

use crate::consensus::{GroupConfig, MemLog, ProposeError, RaftGroup, RaftPersist};
use image::{Applied, MetadataImage};
use records::{BrokerFence, BrokerRegistration, Change, MetadataRecord, Origin};

/// How the metadata quorum runs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Broker ids of the voters; a single node with no configuration votes alone. A broker
    /// not among them joins the quorum as a learner.
    pub voters: Vec<i32>,
    /// Where other brokers reach this broker's peer listener (`host:port`), if anywhere.
    pub peer_address: String,
    /// `broker.rack`, empty if none.
    pub rack: String,
    /// Milliseconds per Raft tick.
    pub tick_ms: i64,
    /// Ticks without a leader before a voter campaigns.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between metadata snapshots.
    pub snapshot_entries: u64,
    /// Milliseconds without a message from a broker before the controller fences it
    /// (Kafka's broker.session.timeout.ms).
    pub session_timeout_ms: i64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            voters: Vec::new(),
            peer_address: String::new(),
            rack: String::new(),
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 1000,
            session_timeout_ms: 6000,
        }
    }
}

/// Raft ids cannot be zero and Kafka broker ids can: Raft sees each broker as id + 1.
pub fn raft_id(broker: i32) -> u64 {
    broker as u64 + 1
}

/// The broker id behind a Raft id.
pub fn broker_of(raft_id: u64) -> i32 {
    raft_id.saturating_sub(1) as i32
}

/// What one [`Controller::drive`] asks of the owner, in order.
#[derive(Debug, Default)]
pub struct Drive {
    /// Durable state to write before anything below.
    pub persist: RaftPersist,
    /// Raft messages for other brokers.
    pub messages: Vec<(i32, Message)>,
    /// The image was replaced wholesale by a snapshot from the leader.
    pub image_replaced: bool,
    /// Records applied to the image, with their outcome, in log order.
    pub applied: Vec<(MetadataRecord, Applied)>,
    /// The term this broker just became the active controller in.
    pub elected: Option<u64>,
    /// Ask the voters to let this broker join: it is not a member of the quorum yet.
    pub join: Option<BrokerRegistration>,
    /// The voters, to send `join` to.
    pub voters: Vec<i32>,
}

/// This broker's member of the metadata quorum and its applied image.
pub struct Controller {
    me: i32,
    registration: BrokerRegistration,
    group: RaftGroup,
    image: MetadataImage,
    applied: u64,
    snapshot_entries: u64,
    tick_ms: i64,
    next_tick: i64,
    /// When this broker last proposed its own registration, so it does not flood the log.
    registered_at: Option<i64>,
    /// A new node's initial state (its voter set), written with the first drive.
    bootstrap: Option<RaftPersist>,
    /// The last term this broker led the quorum in, to report each election once.
    led_term: u64,
    /// When each broker was last heard from (as active controller: the fencing clock).
    last_heard: BTreeMap<i32, i64>,
    /// When this broker last proposed to fence each broker, so it does not flood the log.
    fence_proposed: BTreeMap<i32, i64>,
    session_timeout_ms: i64,
    voters: Vec<i32>,
    /// Set when a join request is due (this broker is outside the quorum).
    join_due: bool,
    /// When this broker last asked to join.
    join_asked_at: Option<i64>,
}

impl Controller {
    /// Starts the quorum member from its recovered durable state (`None`: a new node).
    /// Returns the controller and the image it recovered.
    pub fn new(
        config: &ClusterConfig,
        registration: BrokerRegistration,
        recovered: Option<RaftPersist>,
        seed: u64,
        now: Now,
    ) -> Result<Self, String> {
        let me = registration.id;
        let voters: Vec<u64> = if config.voters.is_empty() {
            vec![raft_id(me)]
        } else {
            config.voters.iter().map(|&v| raft_id(v)).collect()
        };
        let (log, bootstrap) = match recovered {
            Some(state) => (MemLog::recovered(state), None),
            None => {
                let log = MemLog::bootstrap(&voters);
                let initial = log.as_persist();
                (log, Some(initial))
            }
        };
        let snapshot = log.snapshot_ref();
        let mut image = MetadataImage::decode(&snapshot.data)
            .map_err(|e| format!("metadata snapshot unreadable: {e}"))?;
        let mut applied = snapshot.get_metadata().index;
        let commit = log.hard_state().commit;
        for entry in log.held_entries(applied + 1, commit + 1) {
            if let Some(record) = decode_entry(entry) {
                image.apply(&record);
            }
            applied = entry.index;
        }
        let group_config = GroupConfig {
            id: raft_id(me),
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            applied,
            seed,
        };
        let mut group = RaftGroup::new(&group_config, log)?;
        if voters == [raft_id(me)] {
            // A quorum of one needs no election timeout to know who leads, and registers
            // this broker before any client can ask for a topic.
            group.campaign();
        }
        let voter_ids: Vec<i32> = voters.iter().map(|&v| broker_of(v)).collect();
        info!(
            broker = me,
            voters = ?voter_ids,
            applied,
            topics = image.topics.len(),
            "metadata quorum member started"
        );
        let mut controller = Controller {
            me,
            registration,
            group,
            image,
            applied,
            snapshot_entries: config.snapshot_entries.max(1),
            tick_ms: config.tick_ms.max(1),
            next_tick: now.mono,
            registered_at: None,
            bootstrap,
            led_term: 0,
            last_heard: BTreeMap::new(),
            fence_proposed: BTreeMap::new(),
            session_timeout_ms: config.session_timeout_ms.max(1),
            voters: voters.iter().map(|&v| broker_of(v)).collect(),
            join_due: false,
            join_asked_at: None,
        };
        controller.handle_timeout(now);
        Ok(controller)
    }

    /// The applied metadata.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The active controller's broker id, if known.
    pub fn leader(&self) -> Option<i32> {
        self.group.leader().map(broker_of)
    }

    /// True once this broker knows the active controller and has applied every record it
    /// knows to be committed: its metadata is as current as the quorum's (a restarted
    /// broker serves with what it recovered until then).
    pub fn caught_up(&self) -> bool {
        self.leader().is_some() && self.applied >= self.group.committed()
    }

    /// True if this broker is the active controller.
    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// Hands the active controller's role to another voter (before a clean shutdown).
    pub fn hand_over(&mut self) {
        if let Some(successor) = self.group.hand_over() {
            info!(
                to = broker_of(successor),
                "handing the controller role over"
            );
        }
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> i64 {
        self.next_tick
    }

    /// Time passed: ticks Raft and re-announces this broker if the image lacks it.
    pub fn handle_timeout(&mut self, now: Now) {
        while self.next_tick <= now.mono {
            self.group.tick();
            self.next_tick += self.tick_ms;
        }
        let current = self.image.brokers.get(&self.me) == Some(&self.registration);
        let due = retry_due(self.registered_at, now, self.tick_ms);
        if !current && due && self.group.leader().is_some() {
            self.registered_at = Some(now.mono);
            let change = Change::RegisterBroker(self.registration.clone());
            let _ = self.propose(change, 0);
        }
        if self.group.is_leader() {
            self.fence_silent_brokers(now);
        }
        if !self.is_member(self.me) && retry_due(self.join_asked_at, now, self.tick_ms) {
            self.join_asked_at = Some(now.mono);
            self.join_due = true;
        }
    }

    /// True if the quorum may have something for [`Self::drive`]: Raft output, the first
    /// write of a new node, or a join request. Nothing else changes between inputs.
    pub fn has_work(&self) -> bool {
        self.bootstrap.is_some() || self.join_due || self.group.has_ready()
    }

    /// True if `broker` votes in or learns from the quorum.
    fn is_member(&self, broker: i32) -> bool {
        let conf = self.group.conf_state();
        let id = raft_id(broker);
        conf.voters.contains(&id) || conf.learners.contains(&id)
    }

    /// A broker outside the quorum asks to join. The active controller adds it as a learner
    /// (it receives the metadata log but does not vote) and records its registration.
    pub fn handle_join(&mut self, registration: BrokerRegistration) {
        if !self.group.is_leader() || registration.id == self.me {
            return;
        }
        if !self.is_member(registration.id) {
            let mut change = ConfChangeV2::default();
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ConfChangeType::AddLearnerNode);
            single.node_id = raft_id(registration.id);
            change.changes.push(single);
            match self.group.propose_conf_change(change) {
                Ok(()) => info!(
                    broker = registration.id,
                    "adding a broker to the quorum as a learner"
                ),
                Err(e) => debug!(broker = registration.id, error = ?e, "join deferred"),
            }
        }
        if self.image.brokers.get(&registration.id) != Some(&registration) {
            let _ = self.propose(Change::RegisterBroker(registration), 0);
        }
    }

    /// Any message from `broker` shows it is alive.
    pub fn heard_from(&mut self, broker: i32, now: Now) {
        self.last_heard.insert(broker, now.mono);
    }

    /// As active controller: fences registered brokers that have gone silent. A fenced
    /// broker is unfenced by its own next registration, which it makes once it can reach
    /// the controller again.
    fn fence_silent_brokers(&mut self, now: Now) {
        let silent: Vec<i32> = self
            .image
            .live_brokers()
            .map(|b| b.id)
            .filter(|&id| id != self.me)
            .filter(|id| {
                // A new controller gives everyone a full session before judging them.
                let heard = *self.last_heard.entry(*id).or_insert(now.mono);
                now.mono - heard >= self.session_timeout_ms
            })
            .collect();
        for id in silent {
            if !retry_due(self.fence_proposed.get(&id).copied(), now, self.tick_ms) {
                continue;
            }
            info!(broker = id, "fencing a broker that stopped answering");
            self.fence_proposed.insert(id, now.mono);
            let _ = self.propose(Change::FenceBroker(BrokerFence { id, fenced: true }), 0);
        }
    }

    /// A Raft message of the metadata group.
    pub fn step(&mut self, message: Message) {
        self.group.step(message);
    }

    /// Proposes a change; `token` comes back with the applied record (0: nobody waits).
    pub fn propose(&mut self, change: Change, token: u64) -> Result<(), ProposeError> {
        let record = MetadataRecord {
            origin: Some(Origin {
                broker: self.me,
                token,
            }),
            change: Some(change),
        };
        self.group.propose(record.encode_to_vec())
    }

    /// Handles what Raft has ready and applies committed records.
    pub fn drive(&mut self) -> Drive {
        let mut effects = self.group.drive();
        if let Some(mut initial) = self.bootstrap.take() {
            // The voter set goes first: everything else builds on it.
            initial.hard_state = effects.persist.hard_state.take().or(initial.hard_state);
            initial.entries = std::mem::take(&mut effects.persist.entries);
            effects.persist = initial;
        }
        let mut drive = Drive {
            join: std::mem::take(&mut self.join_due).then(|| self.registration.clone()),
            voters: self.voters.clone(),
            persist: effects.persist,
            messages: effects
                .messages
                .into_iter()
                .map(|m| (broker_of(m.to), m))
                .collect(),
            ..Drive::default()
        };
        if let Some(snapshot) = effects.snapshot {
            match MetadataImage::decode(&snapshot.data) {
                Ok(image) => {
                    self.image = image;
                    self.applied = snapshot.get_metadata().index;
                    drive.image_replaced = true;
                    info!(
                        index = self.applied,
                        "metadata image loaded from the leader's snapshot"
                    );
                }
                Err(e) => warn!(error = %e, "ignoring an unreadable metadata snapshot"),
            }
        }
        let mut membership_changed = false;
        for entry in effects.committed {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
                match ConfChangeV2::decode(&entry.data[..]) {
                    Ok(change) => {
                        if let Some(persist) = self.group.apply_conf_change(&change) {
                            drive.persist.conf_state = persist.conf_state;
                            // A joining broker may need a snapshot, and one taken before
                            // the change would not name it: take a fresh one.
                            membership_changed = true;
                        }
                    }
                    Err(e) => {
                        warn!(index = entry.index, error = %e, "undecodable membership change")
                    }
                }
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal {
                warn!(index = entry.index, "unexpected entry type; skipped");
                continue;
            }
            if let Some(record) = decode_entry(&entry) {
                let outcome = self.image.apply(&record);
                debug!(index = entry.index, ?outcome, "metadata record applied");
                drive.applied.push((record, outcome));
            }
        }
        self.maybe_snapshot(&mut drive.persist, membership_changed);
        if self.group.is_leader() && self.group.term() != self.led_term {
            self.led_term = self.group.term();
            self.last_heard.clear();
            drive.elected = Some(self.led_term);
            info!(
                broker = self.me,
                term = self.led_term,
                "became the active controller"
            );
        }
        drive
    }

    /// Folds the applied prefix into a snapshot once it is long enough.
    fn maybe_snapshot(&mut self, persist: &mut RaftPersist, force: bool) {
        let first = self.group.log().snapshot_ref().get_metadata().index;
        if self.applied == first || (!force && self.applied - first < self.snapshot_entries) {
            return;
        }
        if let Some(change) = self.group.compact(self.applied, self.image.encode()) {
            debug!(index = self.applied, "metadata snapshot taken");
            persist.entries.retain(|e| e.index > self.applied);
            persist.snapshot = change.snapshot;
        }
    }
}

/// True if a proposal last made `at` (or never) may be made again: proposals can be lost on
/// the way to the leader, so they are repeated, but at most once every ten ticks.
fn retry_due(at: Option<i64>, now: Now, tick_ms: i64) -> bool {
    at.is_none_or(|at| now.mono - at >= tick_ms * 10)
}

/// The record an entry carries; empty entries (a new leader's first) carry none.
fn decode_entry(entry: &raft::eraftpb::Entry) -> Option<MetadataRecord> {
    if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
        return None;
    }
    match MetadataRecord::decode(&entry.data[..]) {
        Ok(record) => Some(record),
        Err(e) => {
            // Every replica skips the same entry, so images still agree.
            warn!(index = entry.index, error = %e, "skipping an undecodable metadata record");
            None
        }
    }
}
