//! Consumer-group members: join one group, take the partitions its leader hands out, resume
//! each from its committed offset, read, commit and heartbeat; and now and then crash (go
//! silent, come back as a new member), pause past their session (and then try to commit as
//! the zombie they are), or leave. Everything they are told goes to the history.

use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::GroupId;

use super::*;

/// The group every member joins.
pub const GROUP: &str = "sim-group";
const SESSION_MS: i32 = 3_000;
const REBALANCE_MS: i32 = 5_000;
const HEARTBEAT_MS: u64 = 500;
/// Per poll, the chance of each misbehaviour.
const CRASH_CHANCE: f64 = 0.003;
const PAUSE_CHANCE: f64 = 0.003;
const LEAVE_CHANCE: f64 = 0.002;

/// Why a member's session in one generation ended.
pub(super) enum Rejoin {
    /// Join again under the same member id.
    Same,
    /// Join as a new member (the coordinator forgot us, or we "restarted").
    Fresh,
}

/// A member of a consumer group: its membership (join, sync, heartbeat, leave) and its
/// committed offsets; what it does with its partitions is its workload's.
pub(super) struct Member {
    ctx: Ctx,
    id: u32,
    group: &'static str,
    /// Its group is [`GROUP`], whose history the group checkers judge.
    checked: bool,
    pub(super) client: ClusterClient,
    dice: Dice,
    pub(super) member_id: String,
}

/// One group member, until the group phase of the run ends.
pub async fn group_member(ctx: Ctx, id: u32) {
    let mut m = Member::new(ctx, id, GROUP, 3000);
    while !m.ctx.groups_stopped() {
        let Ok(coordinator) = m.client.coordinator(GROUP).await else {
            sleep_ms(200).await;
            continue;
        };
        let Some((generation, partitions)) = m.join_and_sync(coordinator).await else {
            sleep_ms(m.dice.between(50, 250)).await;
            continue;
        };
        match m.consume(coordinator, generation, &partitions).await {
            Rejoin::Same => {}
            Rejoin::Fresh => m.member_id.clear(),
        }
    }
}

impl Member {
    /// A member of `group` that has not joined yet; `stream` seeds its dice.
    pub(super) fn new(ctx: Ctx, id: u32, group: &'static str, stream: u64) -> Member {
        Member {
            client: ctx.client(Duration::from_secs(3)),
            dice: Dice::new(ctx.plan.seed, stream + u64::from(id)),
            checked: group == GROUP,
            ctx,
            id,
            group,
            member_id: String::new(),
        }
    }

    fn now(&self) -> u64 {
        self.ctx.now_ms()
    }

    /// JoinGroup then SyncGroup: the generation and the partitions handed to us.
    pub(super) async fn join_and_sync(
        &mut self,
        coordinator: i32,
    ) -> Option<(i32, Vec<Partition>)> {
        let join = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
            .with_session_timeout_ms(SESSION_MS)
            .with_rebalance_timeout_ms(REBALANCE_MS)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default().with_name(StrBytes::from_static_str("sim"))
            ]);
        let response = self
            .client
            .call_broker(
                coordinator,
                ApiKey::JoinGroup,
                5,
                RequestKind::JoinGroup(join),
            )
            .await;
        let Ok(ResponseKind::JoinGroup(joined)) = response else {
            return None;
        };
        if joined.error_code == ResponseError::UnknownMemberId.code() {
            self.member_id.clear();
        }
        if joined.error_code != 0 {
            return None;
        }
        self.member_id = joined.member_id.to_string();
        let generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id {
            // The leader's assignor: partitions round robin over the members by id.
            let mut members: Vec<String> = joined
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect();
            members.sort();
            let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (i, (topic, p)) in self.ctx.source_partitions().into_iter().enumerate() {
                let owner = &members[i % members.len()];
                given
                    .entry(owner.clone())
                    .or_default()
                    .push(format!("{topic}:{p}"));
            }
            members
                .into_iter()
                .map(|m| {
                    let text = given.remove(&m).unwrap_or_default().join(",");
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(m))
                        .with_assignment(Bytes::from(text))
                })
                .collect()
        } else {
            Vec::new()
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
            .with_generation_id(generation)
            .with_member_id(joined.member_id.clone())
            .with_assignments(assignments);
        let response = self
            .client
            .call_broker(
                coordinator,
                ApiKey::SyncGroup,
                3,
                RequestKind::SyncGroup(sync),
            )
            .await;
        let Ok(ResponseKind::SyncGroup(synced)) = response else {
            return None;
        };
        if synced.error_code == ResponseError::UnknownMemberId.code() {
            self.member_id.clear();
        }
        if synced.error_code != 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&synced.assignment).into_owned();
        let partitions: Vec<Partition> = text
            .split(',')
            .filter_map(|tp| {
                let (topic, p) = tp.rsplit_once(':')?;
                Some((topic.to_string(), p.parse().ok()?))
            })
            .collect();
        if self.checked {
            let now = self.now();
            self.ctx
                .history()
                .assigned(now, generation, &self.member_id, &partitions);
        }
        Some((generation, partitions))
    }

    /// Reads the assigned partitions from their committed offsets until the generation ends.
    async fn consume(
        &mut self,
        coordinator: i32,
        generation: i32,
        partitions: &[Partition],
    ) -> Rejoin {
        let mut positions = BTreeMap::new();
        for partition in partitions {
            match self.committed(coordinator, partition).await {
                Some(offset) => {
                    positions.insert(partition.clone(), offset);
                }
                None => return Rejoin::Same,
            }
        }
        let mut committed = positions.clone();
        let mut last_heartbeat = self.now();
        loop {
            if self.ctx.groups_stopped() {
                return Rejoin::Same;
            }
            if !self.ctx.stopped() {
                if self.dice.chance(CRASH_CHANCE) {
                    // A crash: silence, then a new process with no member id.
                    let now = self.now();
                    self.ctx.history().trace(now, ("member-crash", self.id));
                    sleep_ms(self.dice.between(500, 6_000)).await;
                    return Rejoin::Fresh;
                }
                if self.dice.chance(PAUSE_CHANCE) {
                    // A pause past the session: afterwards we are a zombie and must be refused.
                    let now = self.now();
                    self.ctx.history().trace(now, ("member-pause", self.id));
                    sleep_ms(SESSION_MS as u64 + self.dice.between(500, 3_000)).await;
                    // Its positions again, stale now: a new owner may have gone past them.
                    committed.clear();
                    let _ = self
                        .commit(coordinator, generation, &positions, &mut committed)
                        .await;
                    return Rejoin::Same;
                }
                if self.dice.chance(LEAVE_CHANCE) {
                    self.leave(coordinator).await;
                    sleep_ms(self.dice.between(100, 2_000)).await;
                    return Rejoin::Fresh;
                }
            }
            if self.now() >= last_heartbeat + HEARTBEAT_MS {
                last_heartbeat = self.now();
                if let Some(rejoin) = self.heartbeat(coordinator, generation).await {
                    // Commit what was read before rejoining, as clients do on revocation.
                    let _ = self
                        .commit(coordinator, generation, &positions, &mut committed)
                        .await;
                    return rejoin;
                }
            }
            self.read(&mut positions).await;
            if let Some(rejoin) = self
                .commit(coordinator, generation, &positions, &mut committed)
                .await
            {
                return rejoin;
            }
            sleep_ms(self.dice.between(20, 100)).await;
        }
    }

    /// The committed offset to resume `partition` from (its earliest offset if none);
    /// `None` if the coordinator could not say.
    pub(super) async fn committed(
        &mut self,
        coordinator: i32,
        partition: &Partition,
    ) -> Option<i64> {
        for _ in 0..50 {
            let request = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
                .with_require_stable(true)
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(name(&partition.0))
                    .with_partition_indexes(vec![partition.1])]));
            let sent = self.now();
            let response = self
                .client
                .call_broker(
                    coordinator,
                    ApiKey::OffsetFetch,
                    7,
                    RequestKind::OffsetFetch(request),
                )
                .await;
            let Ok(ResponseKind::OffsetFetch(r)) = response else {
                return None;
            };
            let answer = r.topics.first().and_then(|t| t.partitions.first());
            let (code, offset) = answer.map_or((-1, -1), |p| (p.error_code, p.committed_offset));
            if r.error_code != 0 {
                return None;
            }
            if code == ResponseError::UnstableOffsetCommit.code() {
                sleep_ms(100).await;
                continue;
            }
            if code != 0 {
                return None;
            }
            if self.checked {
                let now = self.now();
                self.ctx
                    .history()
                    .offset_fetched(sent, now, partition, offset);
            }
            if offset >= 0 {
                return Some(offset);
            }
            return list_offset(&mut self.client, partition, -2).await;
        }
        None
    }

    /// A heartbeat; `Some` if the generation is over.
    pub(super) async fn heartbeat(&mut self, coordinator: i32, generation: i32) -> Option<Rejoin> {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let response = self
            .client
            .call_broker(
                coordinator,
                ApiKey::Heartbeat,
                3,
                RequestKind::Heartbeat(request),
            )
            .await;
        match response {
            Ok(ResponseKind::Heartbeat(r)) => rejoin_after(r.error_code),
            _ => Some(Rejoin::Same),
        }
    }

    /// Commits the positions that moved; `Some` if the generation is over.
    async fn commit(
        &mut self,
        coordinator: i32,
        generation: i32,
        positions: &BTreeMap<Partition, i64>,
        committed: &mut BTreeMap<Partition, i64>,
    ) -> Option<Rejoin> {
        let moved: Vec<(Partition, i64)> = positions
            .iter()
            .filter(|(p, o)| committed.get(*p) != Some(*o))
            .map(|(p, o)| (p.clone(), *o))
            .collect();
        if moved.is_empty() {
            return None;
        }
        let now = self.now();
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, p), offset) in &moved {
            self.ctx
                .history()
                .commit_sent(now, &(topic.clone(), *p), *offset);
            by_topic.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*offset),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(name(t))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let response = self
            .client
            .call_broker(
                coordinator,
                ApiKey::OffsetCommit,
                7,
                RequestKind::OffsetCommit(request),
            )
            .await;
        let Ok(ResponseKind::OffsetCommit(r)) = response else {
            return Some(Rejoin::Same);
        };
        let now = self.now();
        let mut worst = 0;
        for t in &r.topics {
            for p in &t.partitions {
                let partition = (t.name.to_string(), p.partition_index);
                if p.error_code == 0 {
                    if let Some(offset) = positions.get(&partition) {
                        self.ctx.history().commit_acked(now, &partition, *offset);
                        committed.insert(partition, *offset);
                    }
                } else {
                    worst = p.error_code;
                }
            }
        }
        rejoin_after(worst)
    }

    /// Fetches the assigned partitions once (one request per leader) and checks each record.
    async fn read(&mut self, positions: &mut BTreeMap<Partition, i64>) {
        let reader = 1000 + self.id;
        for (leader, wanted) in by_leader(&mut self.client, positions).await {
            let request = fetch_request(&self.client, &wanted, 0);
            let Ok(response) = self
                .client
                .call_broker(leader, ApiKey::Fetch, 12, request)
                .await
            else {
                continue;
            };
            for (partition, fetched) in parse_fetch(response) {
                let now = self.now();
                let Some(position) = positions.get_mut(&partition) else {
                    continue;
                };
                match fetched {
                    Fetched::Records(records, _) => {
                        let mut history = self.ctx.history();
                        let from = *position;
                        for (offset, value) in records.into_iter().filter(|(o, _)| *o >= from) {
                            history.read(now, reader, &partition, *position, offset, &value);
                            *position = offset + 1;
                        }
                    }
                    Fetched::Corrupt(e) => {
                        self.ctx
                            .history()
                            .corrupt_read(now, reader, &partition, *position, &e);
                        *position += 1;
                    }
                    Fetched::Error(code) => {
                        if is_stale_leader(code) {
                            self.client.forget_leader(&partition.0, partition.1);
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn leave(&mut self, coordinator: i32) {
        let now = self.now();
        self.ctx.history().trace(now, ("member-leave", self.id));
        let request = LeaveGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(self.group)))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))]);
        let _ = self
            .client
            .call_broker(
                coordinator,
                ApiKey::LeaveGroup,
                3,
                RequestKind::LeaveGroup(request),
            )
            .await;
    }
}

/// What an error from the coordinator means for a member: `None` carries on.
pub(super) fn rejoin_after(code: i16) -> Option<Rejoin> {
    match ResponseError::try_from_code(code) {
        None => None,
        Some(ResponseError::UnknownMemberId | ResponseError::FencedInstanceId) => {
            Some(Rejoin::Fresh)
        }
        Some(_) => Some(Rejoin::Same),
    }
}
