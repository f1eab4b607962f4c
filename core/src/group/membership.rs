//! One consumer group's membership: the classic rebalance protocol as a state machine.
//!
//! Empty → PreparingRebalance (a member joins, leaves, dies or changes its subscription; the
//! coordinator waits for every member to send JoinGroup again, or for the rebalance timeout)
//! → CompletingRebalance (the generation is bumped, a protocol chosen, every member answered;
//! the leader member computes the assignment and sends it with its SyncGroup) → Stable (the
//! assignment is durable in `__consumer_offsets`; every member's SyncGroup is answered).
//!
//! Requests that must wait (JoinGroup until the join phase ends, SyncGroup until the
//! assignment is durable) are parked on their member as a [`Parked`] waiter and answered
//! later through an [`Effect`]. Inputs are plain values with `now`; the group reads no clock.

use crate::time::Now;
use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::records::{Committed, GroupRecord, MemberRecord};
use super::GroupConfig;
use crate::canary::{is_planted, Canary};

/// A request waiting for its answer: who to answer, and in which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// The driver's handle for the request.
    pub waiter: u64,
    /// The request's API version.
    pub version: i16,
}

/// What a group asks of its coordinator.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Drained as soon as made; boxing would only allocate.
pub enum Effect {
    /// Answer a parked or current request.
    Reply(u64, ResponseKind),
    /// Make the assignment of this generation durable, then call
    /// [`Group::assignment_written`].
    PersistAssignment,
    /// Record that the group became empty (its new generation).
    PersistEmpty,
}

/// The classic protocol's group states, named as DescribeGroups reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members; may still hold committed offsets.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Generation chosen; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl State {
    /// The name Kafka uses for the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// One member of a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Static membership id (KIP-345), if the member has one.
    pub instance_id: Option<String>,
    /// The client's `client.id`.
    pub client_id: String,
    /// Where the member connects from.
    pub client_host: String,
    /// How long the member may go silent before it is removed (ms).
    pub session_timeout: i32,
    /// How long the member may take to rejoin during a rebalance (ms).
    pub rebalance_timeout: i32,
    /// The protocols (assignors) it supports with its metadata for each, preferred first.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in this generation.
    pub assignment: Bytes,
    join: Option<Parked>,
    sync: Option<Parked>,
    /// When the member's session ends unless it is heard from.
    expires: i64,
    /// Order of arrival: the longest-standing member becomes leader.
    seq: u64,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| Some(name.as_str()) == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A consumer group and its committed offsets.
#[derive(Debug)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// Its state.
    pub state: State,
    /// When the state was entered, by the wall clock: written to the log with the group.
    pub state_since: i64,
    /// When the state was entered here, by the monotonic clock (a loaded group's starts at
    /// its load): offsets of a group empty for long enough by both clocks expire.
    pub state_timer: i64,
    /// The generation; bumped by every completed join phase.
    pub generation: i32,
    /// The members' protocol type (`consumer`), set by the first member.
    pub protocol_type: Option<String>,
    /// The protocol chosen for this generation.
    pub protocol: Option<String>,
    /// The leader member of this generation.
    pub leader: Option<String>,
    /// Members by member id.
    pub members: BTreeMap<String, Member>,
    /// Committed offsets by (topic, partition).
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// End of the join phase (PreparingRebalance) or of the wait for the leader's
    /// assignment (CompletingRebalance).
    deadline: i64,
    /// A join phase that began with an empty group waits this long for more members.
    join_not_before: i64,
    /// The assignment write of this generation is in flight.
    persisting: bool,
    /// This join phase began with an empty group (see `initial_rebalance_delay_ms`).
    delayed_join: bool,
    next_seq: u64,
}

/// How a request names its member.
pub struct Identity<'a> {
    /// The member id ("" for a new member).
    pub member_id: &'a str,
    /// The static instance id, if any.
    pub instance_id: Option<&'a str>,
}

impl Group {
    /// A new, empty group.
    pub fn new(id: &str, now: Now) -> Self {
        Group {
            id: id.to_string(),
            state: State::Empty,
            state_since: now.wall,
            state_timer: now.mono,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            deadline: i64::MAX,
            join_not_before: 0,
            persisting: false,
            delayed_join: false,
            next_seq: 0,
        }
    }

    fn state_changed(&mut self, now: Now) {
        self.state_since = now.wall;
        self.state_timer = now.mono;
    }

    /// The group as its durable record describes it, once loaded: members are given a full
    /// session from `now` to show up at their new coordinator.
    pub fn restore(&mut self, record: GroupRecord, now: Now) {
        self.generation = record.generation;
        self.protocol_type = Some(record.protocol_type).filter(|t| !t.is_empty());
        self.protocol = record.protocol;
        self.leader = record.leader;
        self.state_since = record.state_timestamp.max(0);
        self.state_timer = now.mono;
        self.members.clear();
        for (seq, m) in record.members.into_iter().enumerate() {
            let protocols = match &self.protocol {
                Some(p) => vec![(p.clone(), m.subscription)],
                None => Vec::new(),
            };
            self.members.insert(
                m.member_id,
                Member {
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocols,
                    assignment: m.assignment,
                    join: None,
                    sync: None,
                    expires: now.mono + i64::from(m.session_timeout),
                    seq: seq as u64,
                },
            );
        }
        self.next_seq = self.members.len() as u64;
        self.state = if self.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        self.deadline = i64::MAX;
        self.persisting = false;
    }

    /// The durable record of the group as it is now.
    pub fn record(&self) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_since,
            members: self
                .members
                .iter()
                .map(|(id, m)| MemberRecord {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout: m.rebalance_timeout,
                    session_timeout: m.session_timeout,
                    subscription: m.metadata(self.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Every request parked on the group, answered with `error`: the coordinator is going.
    pub fn abandon(&mut self, error: ResponseError, fx: &mut Vec<Effect>) {
        for (id, m) in &mut self.members {
            if let Some(p) = m.join.take() {
                fx.push(Effect::Reply(p.waiter, join_error(p.version, error, id)));
            }
            if let Some(p) = m.sync.take() {
                fx.push(Effect::Reply(p.waiter, sync_error(error)));
            }
        }
    }

    /// The member a request names, checked: an unknown member id, or a static instance now
    /// held by another member id, is refused.
    fn check_member(&self, who: &Identity<'_>) -> Result<(), ResponseError> {
        if let Some(instance) = who.instance_id {
            match self.static_member(instance) {
                Some(holder) if holder != who.member_id => {
                    return Err(ResponseError::FencedInstanceId)
                }
                _ => {}
            }
        }
        match self.members.get(who.member_id) {
            Some(_) => Ok(()),
            None => Err(ResponseError::UnknownMemberId),
        }
    }

    fn static_member(&self, instance: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.as_str())
    }

    /// True if a member with `protocol_type` and `protocols` may join: same type, and at
    /// least one protocol every member supports.
    fn accepts(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// JoinGroup from a client (its id and host). `new_id` makes a member id for a member
    /// that has none.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        now: Now,
        config: &GroupConfig,
        parked: Parked,
        (client_id, client_host): (&str, &str),
        request: &JoinGroupRequest,
        new_id: impl FnOnce() -> String,
        fx: &mut Vec<Effect>,
    ) {
        let version = parked.version;
        let member_id = request.member_id.as_str();
        let reply_error = |fx: &mut Vec<Effect>, e: ResponseError| {
            fx.push(Effect::Reply(
                parked.waiter,
                join_error(version, e, member_id),
            ))
        };
        let session = i64::from(request.session_timeout_ms);
        if session < config.min_session_timeout_ms || session > config.max_session_timeout_ms {
            return reply_error(fx, ResponseError::InvalidSessionTimeout);
        }
        let protocols: Vec<(String, Bytes)> = request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        if !self.accepts(&request.protocol_type, &protocols) {
            return reply_error(fx, ResponseError::InconsistentGroupProtocol);
        }
        let instance = request.group_instance_id.as_deref();
        let rebalance_timeout = if version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        };
        let update = |m: &mut Member| {
            m.protocols = protocols.clone();
            m.session_timeout = request.session_timeout_ms;
            m.rebalance_timeout = rebalance_timeout;
            m.client_id = client_id.to_string();
            m.client_host = client_host.to_string();
            m.expires = now.mono + session;
        };
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.to_string());
        }
        // A static member coming back under a new member id takes over its old entry.
        let replaced = match (member_id.is_empty(), instance) {
            (true, Some(instance)) => self.static_member(instance).map(str::to_string),
            _ => None,
        };
        if let Some(old_id) = replaced {
            let mut member = self.members.remove(&old_id).expect("found above");
            let fenced = ResponseError::FencedInstanceId;
            if let Some(p) = member.join.take() {
                fx.push(Effect::Reply(
                    p.waiter,
                    join_error(p.version, fenced, &old_id),
                ));
            }
            if let Some(p) = member.sync.take() {
                fx.push(Effect::Reply(p.waiter, sync_error(fenced)));
            }
            let changed = member.protocols != protocols;
            update(&mut member);
            let id = new_id();
            if self.leader.as_deref() == Some(old_id.as_str()) {
                self.leader = Some(id.clone());
            }
            if self.state == State::Stable && !changed {
                // Nothing about the group changed: the member gets its old place back.
                self.members.insert(id.clone(), member);
                let answer = self.join_answer(version, &id);
                return fx.push(Effect::Reply(parked.waiter, answer));
            }
            member.join = Some(parked);
            self.members.insert(id, member);
            self.prepare_rebalance(now, config, fx);
            return self.maybe_complete_join(now, fx);
        }
        if member_id.is_empty() {
            let id = new_id();
            let seq = self.next_seq;
            self.next_seq += 1;
            let mut member = Member {
                instance_id: instance.map(str::to_string),
                client_id: String::new(),
                client_host: String::new(),
                session_timeout: 0,
                rebalance_timeout: 0,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                join: Some(parked),
                sync: None,
                expires: 0,
                seq,
            };
            update(&mut member);
            self.members.insert(id, member);
            self.prepare_rebalance(now, config, fx);
            if self.delayed_join {
                // The first join phase of an empty group waits a little longer for each
                // newcomer, so a group starting up forms in one generation, not one per member.
                self.join_not_before =
                    (now.mono + config.initial_rebalance_delay_ms).min(self.deadline);
            }
            return self.maybe_complete_join(now, fx);
        }
        let who = Identity {
            member_id,
            instance_id: instance,
        };
        if let Err(e) = self.check_member(&who) {
            return reply_error(fx, e);
        }
        let is_leader = self.leader.as_deref() == Some(member_id);
        let member = self.members.get_mut(member_id).expect("checked");
        let changed = member.protocols != protocols;
        update(member);
        match self.state {
            State::CompletingRebalance if !changed => {
                let answer = self.join_answer(version, member_id);
                fx.push(Effect::Reply(parked.waiter, answer));
            }
            State::Stable if !changed && !is_leader => {
                let answer = self.join_answer(version, member_id);
                fx.push(Effect::Reply(parked.waiter, answer));
            }
            _ => {
                if let Some(old) = member.join.replace(parked) {
                    let answer =
                        join_error(old.version, ResponseError::RebalanceInProgress, member_id);
                    fx.push(Effect::Reply(old.waiter, answer));
                }
                self.prepare_rebalance(now, config, fx);
                self.maybe_complete_join(now, fx);
            }
        }
    }

    /// The JoinGroup answer of the current generation for `member_id`; the leader also gets
    /// every member's metadata, to compute the assignment from.
    fn join_answer(&self, version: i16, member_id: &str) -> ResponseKind {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            self.members
                .iter()
                .map(|(id, m)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id.clone()))
                        .with_group_instance_id(m.instance_id.clone().map(StrBytes::from_string))
                        .with_metadata(m.metadata(self.protocol.as_deref()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let protocol_type = (version >= 7)
            .then(|| self.protocol_type.clone().map(StrBytes::from_string))
            .flatten();
        ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_generation_id(self.generation)
                .with_protocol_type(protocol_type)
                .with_protocol_name(Some(StrBytes::from_string(
                    self.protocol.clone().unwrap_or_default(),
                )))
                .with_leader(StrBytes::from_string(
                    self.leader.clone().unwrap_or_default(),
                ))
                .with_member_id(StrBytes::from_string(member_id.to_string()))
                .with_members(members),
        )
    }

    /// Starts a join phase (if one is not under way).
    fn prepare_rebalance(&mut self, now: Now, config: &GroupConfig, fx: &mut Vec<Effect>) {
        if self.state == State::PreparingRebalance {
            return;
        }
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(p) = m.sync.take() {
                    let answer = sync_error(ResponseError::RebalanceInProgress);
                    fx.push(Effect::Reply(p.waiter, answer));
                }
            }
        }
        let was_empty = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        self.state_changed(now);
        self.persisting = false;
        let longest = self.members.values().map(|m| m.rebalance_timeout).max();
        self.deadline = now.mono + i64::from(longest.unwrap_or(0));
        self.delayed_join = was_empty;
        self.join_not_before = if was_empty {
            (now.mono + config.initial_rebalance_delay_ms).min(self.deadline)
        } else {
            now.mono
        };
    }

    /// Ends the join phase if every member has rejoined (and the delay of a first join
    /// phase has passed), or if its deadline has passed: members that did not rejoin are
    /// removed.
    fn maybe_complete_join(&mut self, now: Now, fx: &mut Vec<Effect>) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join.is_some());
        if !(all_joined && now.mono >= self.join_not_before) && now.mono < self.deadline {
            return;
        }
        let keep_dead = is_planted(Canary::KeepDeadMembers);
        self.members.retain(|_, m| m.join.is_some() || keep_dead);
        self.delayed_join = false;
        if !is_planted(Canary::ReuseGeneration) {
            self.generation += 1;
        }
        self.state_changed(now);
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            self.deadline = i64::MAX;
            fx.push(Effect::PersistEmpty);
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.seq)
                .map(|(id, _)| id.clone());
        }
        self.state = State::CompletingRebalance;
        let longest = self.members.values().map(|m| m.rebalance_timeout).max();
        self.deadline = now.mono + i64::from(longest.unwrap_or(0));
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let m = self.members.get_mut(&id).expect("listed");
            m.expires = now.mono + i64::from(m.session_timeout);
            m.assignment = Bytes::new();
            if let Some(p) = m.join.take() {
                let answer = self.join_answer(p.version, &id);
                fx.push(Effect::Reply(p.waiter, answer));
            }
        }
    }

    /// The protocol every member supports that most members prefer (ties: by name).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(n, _)| n.to_string())
    }

    /// SyncGroup.
    pub fn sync(
        &mut self,
        now: Now,
        parked: Parked,
        request: &SyncGroupRequest,
        fx: &mut Vec<Effect>,
    ) {
        let member_id = request.member_id.as_str();
        let who = Identity {
            member_id,
            instance_id: request.group_instance_id.as_deref(),
        };
        let reply =
            |fx: &mut Vec<Effect>, r: ResponseKind| fx.push(Effect::Reply(parked.waiter, r));
        if let Err(e) = self.check_member(&who) {
            return reply(fx, sync_error(e));
        }
        if request.generation_id != self.generation {
            return reply(fx, sync_error(ResponseError::IllegalGeneration));
        }
        let mismatch = |asked: &Option<StrBytes>, ours: &Option<String>| {
            asked
                .as_ref()
                .is_some_and(|a| ours.as_deref() != Some(a.as_str()))
        };
        if mismatch(&request.protocol_type, &self.protocol_type)
            || mismatch(&request.protocol_name, &self.protocol)
        {
            return reply(fx, sync_error(ResponseError::InconsistentGroupProtocol));
        }
        let is_leader = self.leader.as_deref() == Some(member_id);
        let member = self.members.get_mut(member_id).expect("checked");
        member.expires = now.mono + i64::from(member.session_timeout);
        match self.state {
            State::Empty => reply(fx, sync_error(ResponseError::UnknownMemberId)),
            State::PreparingRebalance => reply(fx, sync_error(ResponseError::RebalanceInProgress)),
            State::Stable => {
                let answer = self.sync_answer(member_id);
                reply(fx, answer);
            }
            State::CompletingRebalance => {
                if let Some(old) = member.sync.replace(parked) {
                    let answer = sync_error(ResponseError::RebalanceInProgress);
                    fx.push(Effect::Reply(old.waiter, answer));
                }
                if is_leader && !self.persisting {
                    let given: BTreeMap<&str, &Bytes> = request
                        .assignments
                        .iter()
                        .map(|a| (a.member_id.as_str(), &a.assignment))
                        .collect();
                    for (id, m) in &mut self.members {
                        m.assignment = given
                            .get(id.as_str())
                            .map(|b| (*b).clone())
                            .unwrap_or_default();
                    }
                    self.persisting = true;
                    fx.push(Effect::PersistAssignment);
                }
            }
        }
    }

    fn sync_answer(&self, member_id: &str) -> ResponseKind {
        let assignment = self
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default();
        ResponseKind::SyncGroup(
            SyncGroupResponse::default()
                .with_protocol_type(self.protocol_type.clone().map(StrBytes::from_string))
                .with_protocol_name(self.protocol.clone().map(StrBytes::from_string))
                .with_assignment(assignment),
        )
    }

    /// The assignment write of `generation` finished: on success the group is stable and
    /// every parked SyncGroup gets its assignment; on failure they get the error and the
    /// group rebalances.
    pub fn assignment_written(
        &mut self,
        now: Now,
        config: &GroupConfig,
        generation: i32,
        result: Result<(), ResponseError>,
        fx: &mut Vec<Effect>,
    ) {
        if generation != self.generation
            || self.state != State::CompletingRebalance
            || !self.persisting
        {
            return; // A later rebalance has overtaken it.
        }
        self.persisting = false;
        match result {
            Ok(()) => {
                self.state = State::Stable;
                self.state_changed(now);
                self.deadline = i64::MAX;
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    if let Some(p) = self.members.get_mut(&id).and_then(|m| m.sync.take()) {
                        let answer = self.sync_answer(&id);
                        fx.push(Effect::Reply(p.waiter, answer));
                    }
                }
            }
            Err(e) => {
                for m in self.members.values_mut() {
                    m.assignment = Bytes::new();
                    if let Some(p) = m.sync.take() {
                        fx.push(Effect::Reply(p.waiter, sync_error(e)));
                    }
                }
                self.prepare_rebalance(now, config, fx);
            }
        }
    }

    /// Heartbeat: keeps a member's session alive and tells it whether to rejoin.
    pub fn heartbeat(&mut self, now: Now, request: &HeartbeatRequest) -> ResponseKind {
        let who = Identity {
            member_id: request.member_id.as_str(),
            instance_id: request.group_instance_id.as_deref(),
        };
        let error = match self.check_member(&who) {
            Err(e) => Some(e),
            Ok(()) => {
                let member = self.members.get_mut(who.member_id).expect("checked");
                member.expires = now.mono + i64::from(member.session_timeout);
                match self.state {
                    State::Empty => Some(ResponseError::UnknownMemberId),
                    State::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
                    _ if request.generation_id != self.generation => {
                        Some(ResponseError::IllegalGeneration)
                    }
                    _ => None,
                }
            }
        };
        ResponseKind::Heartbeat(
            HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code())),
        )
    }

    /// LeaveGroup for one member; `Ok(())` once it is gone.
    pub fn leave(
        &mut self,
        now: Now,
        config: &GroupConfig,
        who: &Identity<'_>,
        fx: &mut Vec<Effect>,
    ) -> Result<(), ResponseError> {
        let id = match (who.member_id.is_empty(), who.instance_id) {
            // KIP-345: a static member may be removed by its instance id alone.
            (true, Some(instance)) => self
                .static_member(instance)
                .map(str::to_string)
                .ok_or(ResponseError::UnknownMemberId)?,
            _ => {
                self.check_member(who)?;
                who.member_id.to_string()
            }
        };
        self.remove_member(now, config, &id, fx);
        Ok(())
    }

    fn remove_member(&mut self, now: Now, config: &GroupConfig, id: &str, fx: &mut Vec<Effect>) {
        let Some(mut member) = self.members.remove(id) else {
            return;
        };
        if let Some(p) = member.join.take() {
            let answer = join_error(p.version, ResponseError::UnknownMemberId, id);
            fx.push(Effect::Reply(p.waiter, answer));
        }
        if let Some(p) = member.sync.take() {
            fx.push(Effect::Reply(
                p.waiter,
                sync_error(ResponseError::UnknownMemberId),
            ));
        }
        match self.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(now, config, fx);
                self.maybe_complete_join(now, fx);
            }
            State::PreparingRebalance => self.maybe_complete_join(now, fx),
            State::Empty => {}
        }
    }

    /// Checks an OffsetCommit's member and generation. Generation -1 with no member id is a
    /// commit from outside the group protocol (an admin tool, a manually assigned consumer),
    /// allowed only while the group has no members.
    pub fn check_commit(
        &mut self,
        now: Now,
        generation: i32,
        who: &Identity<'_>,
    ) -> Result<(), ResponseError> {
        let simple = generation < 0 && who.member_id.is_empty() && self.members.is_empty();
        if simple || is_planted(Canary::AcceptStaleCommit) {
            return Ok(());
        }
        self.check_member(who)?;
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if self.state == State::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        let member = self.members.get_mut(who.member_id).expect("checked");
        member.expires = now.mono + i64::from(member.session_timeout);
        Ok(())
    }

    /// The next time [`Self::tick`] has work.
    pub fn next_deadline(&self) -> i64 {
        let reaps = !is_planted(Canary::KeepDeadMembers);
        let sessions = self
            .members
            .values()
            .filter(|m| reaps && m.join.is_none() && m.sync.is_none())
            .map(|m| m.expires);
        // Only deadlines at which `tick` has something to do: a past one would spin.
        let phase = match self.state {
            State::PreparingRebalance if self.members.values().all(|m| m.join.is_some()) => {
                self.deadline.min(self.join_not_before)
            }
            State::PreparingRebalance => self.deadline,
            State::CompletingRebalance if reaps && !self.persisting => self.deadline,
            _ => i64::MAX,
        };
        sessions.chain([phase]).min().unwrap_or(i64::MAX)
    }

    /// Time passed: members whose session ran out are removed, a join phase whose
    /// deadline (or first-join delay) passed completes, and members that never sent their
    /// SyncGroup by the end of the rebalance timeout are removed.
    pub fn tick(&mut self, now: Now, config: &GroupConfig, fx: &mut Vec<Effect>) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join.is_none() && m.sync.is_none() && m.expires <= now.mono)
            .filter(|_| !is_planted(Canary::KeepDeadMembers))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_member(now, config, &id, fx);
        }
        match self.state {
            State::PreparingRebalance => self.maybe_complete_join(now, fx),
            State::CompletingRebalance if now.mono >= self.deadline && !self.persisting => {
                let silent: Vec<String> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.sync.is_none())
                    .filter(|_| !is_planted(Canary::KeepDeadMembers))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in silent {
                    self.remove_member(now, config, &id, fx);
                }
            }
            _ => {}
        }
    }

    /// The topics the members consume, when they speak the consumer protocol; `None` if that
    /// cannot be known (another protocol type, or metadata that does not parse).
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let mut topics = Vec::new();
        for m in self.members.values() {
            let mut metadata = m.metadata(self.protocol.as_deref());
            if metadata.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([metadata[0], metadata[1]]);
            bytes::Buf::advance(&mut metadata, 2);
            let subscription =
                ConsumerProtocolSubscription::decode(&mut metadata, version.clamp(0, 3)).ok()?;
            topics.extend(subscription.topics.into_iter().map(|t| t.to_string()));
        }
        topics.sort();
        topics.dedup();
        Some(topics)
    }
}

/// A JoinGroup answer carrying only an error.
pub fn join_error(version: i16, error: ResponseError, member_id: &str) -> ResponseKind {
    ResponseKind::JoinGroup(
        JoinGroupResponse::default()
            .with_error_code(error.code())
            .with_protocol_name((version < 7).then(StrBytes::default))
            .with_member_id(StrBytes::from_string(member_id.to_string())),
    )
}

/// A SyncGroup answer carrying only an error.
pub fn sync_error(error: ResponseError) -> ResponseKind {
    ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(error.code()))
}
