//! The coordinator of every group whose `__consumer_offsets` partition this broker leads.
//!
//! Inputs: the group APIs' requests (each with a `waiter` handle the driver maps back to its
//! connection), [`Coordinator::write_done`] when a write it asked for is committed or has
//! failed, the records of a partition being loaded, and [`Coordinator::tick`]. Outputs
//! ([`CoordinatorOutput`]): answers, and record batches to append to a partition with
//! acks=all. A group's state changes only once what it depends on is durable: a commit is
//! acknowledged, and an assignment handed out, after its write has committed.

use crate::time::Now;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequest;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{GroupId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use super::membership::{join_error, sync_error, Effect, Group, Identity, Parked, State};
use super::records::{self, Committed, Key, Record};
use super::{partition_for, GroupConfig};
use crate::batch::{self, BatchView};
use crate::canary::{is_planted, Canary};

/// Something the driver must do for the coordinator.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Drained as soon as made; boxing would only allocate.
pub enum CoordinatorOutput {
    /// Answer the request `waiter`.
    Reply {
        /// The handle the request came with.
        waiter: u64,
        /// The answer.
        response: ResponseKind,
    },
    /// Append `batch` to `partition` of `__consumer_offsets` with acks=all; report the
    /// outcome with [`Coordinator::write_done`] and `id`.
    Write {
        /// Identifies the write.
        id: u64,
        /// The partition.
        partition: i32,
        /// One record batch.
        batch: Bytes,
    },
}

/// Where a partition of `__consumer_offsets` led here stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Its records are being read back; its groups' requests are told to retry.
    Loading,
    /// Its groups are served.
    Loaded,
}

/// What a write was for: what to do once it is durable (or has failed).
#[derive(Debug)]
enum PendingWrite {
    Commit {
        parked: Parked,
        group: String,
        response: OffsetCommitResponse,
        offsets: Vec<(String, i32, Committed)>,
        /// A TxnOffsetCommit's producer (id, epoch): the offsets wait for its
        /// transaction's marker.
        txn: Option<(i64, i16)>,
    },
    Assignment {
        group: String,
        generation: i32,
    },
    /// Offsets (and maybe the group) deleted: by DeleteGroups (`job`), OffsetDelete
    /// (`parked`), or expiry (neither).
    Deletion {
        group: String,
        offsets: Vec<(String, i32)>,
        whole_group: bool,
        job: Option<(u64, usize)>,
        reply: Option<(Parked, OffsetDeleteResponse)>,
    },
    /// Nothing waits on it (an empty group's new generation).
    Record,
}

/// A DeleteGroups request waiting for its groups' tombstones.
#[derive(Debug)]
struct DeleteJob {
    parked: Parked,
    response: DeleteGroupsResponse,
    outstanding: usize,
}

/// The group coordinator of one broker.
#[derive(Debug)]
pub struct Coordinator {
    config: GroupConfig,
    partitions: i32,
    /// Partitions of `__consumer_offsets` this broker leads, with the leader epoch they were
    /// loaded for.
    owned: BTreeMap<i32, (i32, Load)>,
    groups: BTreeMap<String, Group>,
    writes: BTreeMap<u64, PendingWrite>,
    deletes: BTreeMap<u64, DeleteJob>,
    next_id: u64,
    id_seed: u64,
    outputs: VecDeque<CoordinatorOutput>,
    next_expiry_check: i64,
    /// Offsets committed inside open transactions, by producer id: (group, topic,
    /// partition, offset). They take effect when the transaction's commit marker reaches
    /// the group's partition, and are dropped by its abort marker.
    txn_offsets: BTreeMap<i64, Vec<(String, String, i32, Committed)>>,
    /// The epoch of the newest marker of each producer in each partition this broker
    /// leads: a transactional write with an older epoch comes from an incarnation whose
    /// transaction has ended (aborted on its timeout, or by its successor), and is dropped.
    /// Without this, a zombie's late offsets would wait for the next marker of its producer
    /// id and commit with its successor's transaction.
    marker_epochs: BTreeMap<(i32, i64), i16>,
}

impl Coordinator {
    /// The groups served here, by id.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values().filter(|g| self.locate(&g.id).is_ok())
    }

    /// Every committed offset of the groups loaded here: (group, (topic, partition), offset).
    pub fn committed_offsets(&self) -> impl Iterator<Item = (&str, &(String, i32), &Committed)> {
        self.groups
            .iter()
            .flat_map(|(id, g)| g.offsets.iter().map(move |(tp, c)| (id.as_str(), tp, c)))
    }

    /// A coordinator that leads nothing yet. `seed` makes member ids deterministic.
    pub fn new(config: GroupConfig, seed: u64, now: Now) -> Self {
        let next_expiry_check = now.mono + config.offsets_retention_check_interval_ms;
        Coordinator {
            partitions: config.offsets_partitions,
            config,
            owned: BTreeMap::new(),
            groups: BTreeMap::new(),
            writes: BTreeMap::new(),
            deletes: BTreeMap::new(),
            next_id: 1,
            id_seed: seed,
            outputs: VecDeque::new(),
            next_expiry_check,
            txn_offsets: BTreeMap::new(),
            marker_epochs: BTreeMap::new(),
        }
    }

    /// The next thing to carry out.
    pub fn poll_output(&mut self) -> Option<CoordinatorOutput> {
        self.outputs.pop_front()
    }

    /// The leader epoch partition `p` was loaded (or is loading) for, if it is led here.
    pub fn owned_epoch(&self, p: i32) -> Option<i32> {
        self.owned.get(&p).map(|(epoch, _)| *epoch)
    }

    /// The partitions led here.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.owned.keys().copied().collect()
    }

    // ---- ownership ----------------------------------------------------------------------

    /// This broker now leads partition `p` (in leader `epoch`): its records are about to be
    /// read back with [`Self::load`], then [`Self::finish_load`].
    pub fn begin_load(&mut self, p: i32, epoch: i32) {
        self.unload(p);
        info!(partition = p, epoch, "loading consumer groups");
        self.owned.insert(p, (epoch, Load::Loading));
    }

    /// Applies the records of one batch read back from partition `p`.
    pub fn load(&mut self, now: Now, p: i32, view: &BatchView<'_>) {
        if !view.crc_ok() {
            return;
        }
        if view.is_control() {
            if let Some(commit) = batch::txn_marker(view) {
                let producer = (view.producer_id(), view.producer_epoch());
                self.end_txn(now, p, producer, commit);
            }
            return;
        }
        let txn = view.is_transactional().then(|| view.producer_id());
        if view.is_transactional() && self.fenced(p, (view.producer_id(), view.producer_epoch())) {
            warn!(
                partition = p,
                producer_id = view.producer_id(),
                epoch = view.producer_epoch(),
                "transactional offsets written after their transaction ended; dropped"
            );
            return;
        }
        let Some(key_values) = view.key_values() else {
            warn!(
                partition = p,
                "compressed batch in __consumer_offsets; skipped"
            );
            return;
        };
        for kv in key_values {
            let Some(record) = kv.key.and_then(|k| records::decode(k, kv.value)) else {
                warn!(
                    partition = p,
                    offset = kv.offset,
                    "unreadable record in __consumer_offsets"
                );
                continue;
            };
            match (txn, record) {
                (
                    Some(producer_id),
                    Record::Offset {
                        group,
                        topic,
                        partition,
                        value: Some(value),
                    },
                ) => {
                    let pending = (group, topic, partition, value);
                    self.txn_offsets
                        .entry(producer_id)
                        .or_default()
                        .push(pending);
                }
                (_, record) => self.apply(now, record),
            }
        }
    }

    /// True if `producer` (id, epoch) is older than the newest marker of its id in `p`.
    fn fenced(&self, p: i32, (producer_id, epoch): (i64, i16)) -> bool {
        !is_planted(Canary::AcceptFencedTxnOffsets)
            && self
                .marker_epochs
                .get(&(p, producer_id))
                .is_some_and(|&newest| epoch < newest)
    }

    /// A transaction marker of `producer` (id, epoch) is committed in partition `p`: the
    /// offsets the transaction wrote there take effect (commit) or are dropped (abort).
    /// Ignored unless `p` is loaded: a load reads its log up to the high watermark, so it
    /// meets this marker in its place, after the offsets it ends (applied earlier, the
    /// marker's epoch would fence them).
    pub fn complete_txn(&mut self, now: Now, p: i32, producer: (i64, i16), commit: bool) {
        if self.loaded(p) {
            self.end_txn(now, p, producer, commit);
        }
    }

    fn loaded(&self, p: i32) -> bool {
        matches!(self.owned.get(&p), Some((_, Load::Loaded)))
    }

    fn end_txn(&mut self, now: Now, p: i32, producer: (i64, i16), commit: bool) {
        let (producer_id, epoch) = producer;
        let newest = self.marker_epochs.entry((p, producer_id)).or_insert(epoch);
        *newest = (*newest).max(epoch);
        let Some(pending) = self.txn_offsets.remove(&producer_id) else {
            return;
        };
        let n = self.partitions;
        let (here, elsewhere): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(group, ..)| partition_for(group, n) == p);
        if !elsewhere.is_empty() {
            self.txn_offsets.insert(producer_id, elsewhere);
        }
        if !commit {
            return;
        }
        for (group, topic, partition, committed) in here {
            // A group may exist only through its transactional commits.
            let g = self.group_entry(&group, now);
            g.offsets.insert((topic, partition), committed);
        }
    }

    fn apply(&mut self, now: Now, record: Record) {
        match record {
            Record::Offset {
                group,
                topic,
                partition,
                value: Some(value),
            } => {
                self.group_entry(&group, now)
                    .offsets
                    .insert((topic, partition), value);
            }
            Record::Offset {
                group,
                topic,
                partition,
                value: None,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
            Record::Group {
                group,
                value: Some(value),
            } => {
                self.group_entry(&group, now).restore(value, now);
            }
            Record::Group { group, value: None } => {
                self.groups.remove(&group);
            }
        }
    }

    /// The group `id`, created empty if it does not exist.
    fn group_entry(&mut self, id: &str, now: Now) -> &mut Group {
        self.groups
            .entry(id.to_string())
            .or_insert_with(|| Group::new(id, now))
    }

    /// Partition `p` is read back to its high watermark: its groups are served from now on.
    pub fn finish_load(&mut self, p: i32) {
        if let Some((epoch, load)) = self.owned.get_mut(&p) {
            *load = Load::Loaded;
            let epoch = *epoch;
            let groups = self.groups_of(p).count();
            info!(partition = p, epoch, groups, "consumer groups loaded");
        }
    }

    /// This broker no longer leads partition `p`: its groups go, and requests parked on them
    /// are told NOT_COORDINATOR so their clients look the new coordinator up.
    pub fn unload(&mut self, p: i32) {
        let n = self.partitions;
        for pending in self.txn_offsets.values_mut() {
            pending.retain(|(group, ..)| partition_for(group, n) != p);
        }
        self.txn_offsets.retain(|_, pending| !pending.is_empty());
        self.marker_epochs.retain(|(q, _), _| *q != p);
        if self.owned.remove(&p).is_none() {
            return;
        }
        let ids: Vec<String> = self.groups_of(p).map(|g| g.id.clone()).collect();
        let mut fx = Vec::new();
        for id in ids {
            if let Some(mut group) = self.groups.remove(&id) {
                group.abandon(ResponseError::NotCoordinator, &mut fx);
            }
        }
        // Abandoning answers waiters and writes nothing: no clock is read.
        self.effects("", Now::at(0), fx);
        info!(partition = p, "consumer groups unloaded");
    }

    /// How many partitions `__consumer_offsets` has (groups hash onto them).
    pub fn set_partitions(&mut self, partitions: i32) {
        self.partitions = partitions;
    }

    fn partition_of(&self, group: &str) -> i32 {
        partition_for(group, self.partitions)
    }

    fn groups_of(&self, p: i32) -> impl Iterator<Item = &Group> {
        let n = self.partitions;
        self.groups
            .values()
            .filter(move |g| partition_for(&g.id, n) == p)
    }

    /// Whether `group` is served here: its partition, or the error to answer with.
    fn locate(&self, group: &str) -> Result<i32, ResponseError> {
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let p = self.partition_of(group);
        match self.owned.get(&p) {
            None => Err(ResponseError::NotCoordinator),
            Some((_, Load::Loading)) => Err(ResponseError::CoordinatorLoadInProgress),
            Some((_, Load::Loaded)) => Ok(p),
        }
    }

    // ---- the group protocol -------------------------------------------------------------

    /// JoinGroup from `client` (its client id and host).
    pub fn join(
        &mut self,
        now: Now,
        parked: Parked,
        client: (&str, &str),
        request: &JoinGroupRequest,
    ) {
        let client_id = client.0;
        let group_id = request.group_id.as_str();
        let member_id = request.member_id.as_str();
        let refuse = |this: &mut Self, e| {
            this.reply(parked.waiter, join_error(parked.version, e, member_id));
        };
        if let Err(e) = self.locate(group_id) {
            return refuse(self, e);
        }
        if !member_id.is_empty() && !self.groups.contains_key(group_id) {
            return refuse(self, ResponseError::UnknownMemberId);
        }
        let fresh = self.new_member_id(client_id);
        let group = self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, now));
        let mut fx = Vec::new();
        group.join(
            now,
            &self.config,
            parked,
            client,
            request,
            || fresh,
            &mut fx,
        );
        self.effects(group_id, now, fx);
    }

    /// SyncGroup.
    pub fn sync(&mut self, now: Now, parked: Parked, request: &SyncGroupRequest) {
        let group_id = request.group_id.as_str();
        let group = match self.locate(group_id) {
            Err(e) => return self.reply(parked.waiter, sync_error(e)),
            Ok(_) => self.groups.get_mut(group_id),
        };
        let Some(group) = group else {
            return self.reply(parked.waiter, sync_error(ResponseError::UnknownMemberId));
        };
        let mut fx = Vec::new();
        group.sync(now, parked, request, &mut fx);
        self.effects(group_id, now, fx);
    }

    /// Heartbeat.
    pub fn heartbeat(&mut self, now: Now, parked: Parked, request: &HeartbeatRequest) {
        let group_id = request.group_id.as_str();
        let response = match self.locate(group_id) {
            Err(e) => heartbeat_error(e),
            Ok(_) => match self.groups.get_mut(group_id) {
                Some(group) => group.heartbeat(now, request),
                None => heartbeat_error(ResponseError::UnknownMemberId),
            },
        };
        self.reply(parked.waiter, response);
    }

    /// LeaveGroup: one member (v0–2) or several (v3+).
    pub fn leave(&mut self, now: Now, parked: Parked, request: &LeaveGroupRequest) {
        let group_id = request.group_id.as_str();
        let leavers: Vec<(StrBytes, Option<StrBytes>)> = if parked.version >= 3 {
            request
                .members
                .iter()
                .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
                .collect()
        } else {
            vec![(request.member_id.clone(), None)]
        };
        let mut response = LeaveGroupResponse::default();
        let mut fx = Vec::new();
        let located = self.locate(group_id);
        for (member_id, instance_id) in leavers {
            let result = match (&located, self.groups.get_mut(group_id)) {
                (Err(e), _) => Err(*e),
                (Ok(_), None) => Err(ResponseError::UnknownMemberId),
                (Ok(_), Some(group)) => {
                    let who = Identity {
                        member_id: &member_id,
                        instance_id: instance_id.as_deref(),
                    };
                    group.leave(now, &self.config, &who, &mut fx)
                }
            };
            if parked.version >= 3 {
                response.members.push(
                    MemberResponse::default()
                        .with_member_id(member_id)
                        .with_group_instance_id(instance_id)
                        .with_error_code(result.err().map_or(0, |e| e.code())),
                );
            } else if let Err(e) = result {
                response.error_code = e.code();
            }
        }
        if let (Err(e), true) = (located, parked.version >= 3) {
            // A group not served here is a request-level error.
            response.error_code = e.code();
        }
        self.effects(group_id, now, fx);
        self.reply(parked.waiter, ResponseKind::LeaveGroup(response));
    }

    /// Time passed: sessions, join phases and offsets retention.
    pub fn tick(&mut self, now: Now) {
        let due: Vec<String> = self
            .groups
            .values()
            .filter(|g| g.next_deadline() <= now.mono)
            .map(|g| g.id.clone())
            .collect();
        for id in due {
            let mut fx = Vec::new();
            if let Some(group) = self.groups.get_mut(&id) {
                group.tick(now, &self.config, &mut fx);
            }
            self.effects(&id, now, fx);
        }
        if now.mono >= self.next_expiry_check {
            self.next_expiry_check = now.mono + self.config.offsets_retention_check_interval_ms;
            self.expire_offsets(now);
        }
    }

    /// When [`Self::tick`] must next run.
    pub fn poll_timeout(&self) -> i64 {
        self.groups
            .values()
            .map(Group::next_deadline)
            .chain([self.next_expiry_check])
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Carries out a group's effects.
    fn effects(&mut self, group_id: &str, now: Now, fx: Vec<Effect>) {
        for effect in fx {
            match effect {
                Effect::Reply(waiter, response) => self.reply(waiter, response),
                Effect::PersistAssignment | Effect::PersistEmpty => {
                    let Some(group) = self.groups.get(group_id) else {
                        continue;
                    };
                    let value = group.record().encode();
                    let pending = match effect {
                        Effect::PersistAssignment => PendingWrite::Assignment {
                            group: group_id.to_string(),
                            generation: group.generation,
                        },
                        _ => PendingWrite::Record,
                    };
                    let key = Key::Group(group_id.to_string()).encode();
                    let p = self.partition_of(group_id);
                    self.write(now, p, &[(key, Some(value))], pending);
                }
            }
        }
    }

    // ---- offsets ------------------------------------------------------------------------

    /// OffsetCommit. `exists` says whether a topic partition exists in the cluster.
    pub fn commit(
        &mut self,
        now: Now,
        parked: Parked,
        request: &OffsetCommitRequest,
        exists: impl Fn(&str, i32) -> bool,
    ) {
        self.commit_as(now, parked, request, exists, None)
    }

    /// TxnOffsetCommit (KIP-98, KIP-447): offsets written inside the producer's
    /// transaction. They are checked and written as a commit's are, in a transactional
    /// batch of the producer's, and take effect only with its commit marker.
    pub fn txn_commit(
        &mut self,
        now: Now,
        parked: Parked,
        request: &TxnOffsetCommitRequest,
        exists: impl Fn(&str, i32) -> bool,
    ) {
        let topics = request
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p.partition_index)
                            .with_committed_offset(p.committed_offset)
                            .with_committed_leader_epoch(p.committed_leader_epoch)
                            .with_committed_metadata(p.committed_metadata.clone())
                    })
                    .collect();
                OffsetCommitRequestTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        let as_commit = OffsetCommitRequest::default()
            .with_group_id(request.group_id.clone())
            .with_generation_id_or_member_epoch(request.generation_id)
            .with_member_id(request.member_id.clone())
            .with_group_instance_id(request.group_instance_id.clone())
            .with_topics(topics);
        let producer = (request.producer_id.0, request.producer_epoch);
        self.commit_as(now, parked, &as_commit, exists, Some(producer))
    }

    fn commit_as(
        &mut self,
        now: Now,
        parked: Parked,
        request: &OffsetCommitRequest,
        exists: impl Fn(&str, i32) -> bool,
        txn: Option<(i64, i16)>,
    ) {
        let group_id = request.group_id.as_str();
        let mut response = OffsetCommitResponse::default();
        for t in &request.topics {
            response.topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                            })
                            .collect(),
                    ),
            );
        }
        let who = Identity {
            member_id: &request.member_id,
            instance_id: request.group_instance_id.as_deref(),
        };
        let generation = request.generation_id_or_member_epoch;
        let simple = generation < 0 && who.member_id.is_empty();
        let checked = self.locate(group_id).and_then(|p| {
            if txn.is_some_and(|producer| self.fenced(p, producer)) {
                return Err(ResponseError::InvalidProducerEpoch);
            }
            if simple {
                self.group_entry(group_id, now);
            }
            match self.groups.get_mut(group_id) {
                None => Err(ResponseError::UnknownMemberId),
                Some(group) => group.check_commit(now, generation, &who),
            }
        });
        if let Err(e) = checked {
            set_commit_errors(&mut response, e, |_| true);
            return self.reply(parked.waiter, commit_answer(response, txn.is_some()));
        }
        let mut offsets = Vec::new();
        for (t, topic) in request.topics.iter().enumerate() {
            for (i, p) in topic.partitions.iter().enumerate() {
                let metadata = p.committed_metadata.as_deref().unwrap_or("");
                let error = if metadata.len() > self.config.offset_metadata_max_bytes {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else if !exists(&topic.name, p.partition_index) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else {
                    None
                };
                match error {
                    Some(e) => response.topics[t].partitions[i].error_code = e.code(),
                    None => offsets.push((
                        topic.name.to_string(),
                        p.partition_index,
                        Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: metadata.to_string(),
                            timestamp: now.wall,
                        },
                    )),
                }
            }
        }
        if offsets.is_empty() {
            return self.reply(parked.waiter, commit_answer(response, txn.is_some()));
        }
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = offsets
            .iter()
            .map(|(t, p, c)| {
                let key = Key::Offset(group_id.to_string(), t.clone(), *p).encode();
                (key, Some(c.encode()))
            })
            .collect();
        let partition = self.partition_of(group_id);
        if is_planted(Canary::AckCommitBeforeDurable) && txn.is_none() {
            if let Some(g) = self.groups.get_mut(group_id) {
                for (t, p, c) in offsets {
                    g.offsets.insert((t, p), c);
                }
            }
            self.reply(parked.waiter, ResponseKind::OffsetCommit(response));
            return self.write(now, partition, &records, PendingWrite::Record);
        }
        let pending = PendingWrite::Commit {
            parked,
            group: group_id.to_string(),
            response,
            offsets,
            txn,
        };
        self.write_as(now, partition, &records, pending, txn);
    }

    /// OffsetFetch: one group (v1–7) or several (v8).
    pub fn offset_fetch(&mut self, parked: Parked, request: &OffsetFetchRequest) {
        let version = parked.version;
        let mut response = OffsetFetchResponse::default();
        if version >= 8 {
            for g in &request.groups {
                let wanted = g.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let (error, found) =
                    self.fetch_offsets(&g.group_id, wanted, request.require_stable);
                let mut topics: Vec<OffsetFetchResponseTopics> = Vec::new();
                for (topic, p, c, unstable) in found {
                    if topics.last().is_none_or(|t| *t.name != *topic) {
                        topics.push(
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(topic.clone()))),
                        );
                    }
                    let (offset, epoch, metadata) = committed_fields(c);
                    topics.last_mut().expect("pushed").partitions.push(
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(epoch)
                            .with_metadata(Some(StrBytes::from_string(metadata)))
                            .with_error_code(unstable_code(unstable)),
                    );
                }
                response.groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_topics(topics)
                        .with_error_code(error.map_or(0, |e| e.code())),
                );
            }
            return self.reply(parked.waiter, ResponseKind::OffsetFetch(response));
        }
        let wanted = request.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let require_stable = request.require_stable && version >= 7;
        let (error, found) = self.fetch_offsets(&request.group_id, wanted, require_stable);
        for (topic, p, c, unstable) in found {
            if response.topics.last().is_none_or(|t| *t.name != *topic) {
                response.topics.push(
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone()))),
                );
            }
            let (offset, epoch, metadata) = committed_fields(c);
            let mut partition = OffsetFetchResponsePartition::default()
                .with_partition_index(p)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(epoch)
                .with_metadata(Some(StrBytes::from_string(metadata)));
            partition.error_code = unstable_code(unstable);
            if version < 2 {
                // v1 has no group-level error code: each partition carries it.
                partition.error_code = error.map_or(0, |e| e.code());
            }
            response
                .topics
                .last_mut()
                .expect("pushed")
                .partitions
                .push(partition);
        }
        if version >= 2 {
            response.error_code = error.map_or(0, |e| e.code());
        }
        self.reply(parked.waiter, ResponseKind::OffsetFetch(response));
    }

    /// The committed offsets of `group` for `wanted` partitions (all, if `None`), in
    /// (topic, partition) order, with the group-level error, if any. With `require_stable`,
    /// a partition whose commit is still being written is flagged unstable (and its offset
    /// withheld): a member that takes a partition over must not start from an offset that
    /// a commit in flight is about to move (KIP-447's answer, used for every commit here).
    #[allow(clippy::type_complexity)]
    fn fetch_offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> (
        Option<ResponseError>,
        Vec<(String, i32, Option<Committed>, bool)>,
    ) {
        let error = self.locate(group).err();
        let offsets = self
            .groups
            .get(group)
            .filter(|_| error.is_none())
            .map(|g| &g.offsets);
        let found: Vec<(String, i32, Option<Committed>)> = match wanted {
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                .collect(),
            Some(wanted) => wanted
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .map(|(t, p)| {
                    let c = offsets.and_then(|o| o.get(&(t.clone(), p))).cloned();
                    (t, p, c)
                })
                .collect(),
        };
        let found = found
            .into_iter()
            .map(|(t, p, c)| {
                let unstable = require_stable && self.commit_in_flight(group, &t, p);
                (t, p, c.filter(|_| !unstable), unstable)
            })
            .collect();
        (error, found)
    }

    /// True if a commit of `group` for `topic`/`partition` is still being written, or was
    /// written inside a transaction whose marker has not reached the group's partition yet
    /// (KIP-447: a member that takes the partition over waits for that transaction to end).
    fn commit_in_flight(&self, group: &str, topic: &str, partition: i32) -> bool {
        let in_txn = self
            .txn_offsets
            .values()
            .flatten()
            .any(|(g, t, p, _)| g == group && t == topic && *p == partition);
        if in_txn && !is_planted(Canary::ServeUnstableOffsets) {
            return true;
        }
        self.writes.values().any(|w| match w {
            PendingWrite::Commit {
                group: g, offsets, ..
            } => {
                g == group
                    && offsets
                        .iter()
                        .any(|(t, p, _)| t == topic && *p == partition)
            }
            _ => false,
        })
    }

    /// OffsetDelete: removes committed offsets of partitions the group does not consume.
    pub fn offset_delete(&mut self, now: Now, parked: Parked, request: &OffsetDeleteRequest) {
        let group_id = request.group_id.as_str();
        let mut response = OffsetDeleteResponse::default();
        let group = match self.locate(group_id) {
            Err(e) => Err(e),
            Ok(_) => self
                .groups
                .get(group_id)
                .ok_or(ResponseError::GroupIdNotFound),
        };
        let group = match group {
            Err(e) => {
                response.error_code = e.code();
                return self.reply(parked.waiter, ResponseKind::OffsetDelete(response));
            }
            Ok(group) => group,
        };
        let subscribed = match group.state {
            State::Empty => Some(Vec::new()),
            _ => group.subscribed_topics(),
        };
        let mut deleted = Vec::new();
        for t in &request.topics {
            let in_use = subscribed
                .as_ref()
                .is_none_or(|s| s.contains(&t.name.to_string()));
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = if in_use {
                        ResponseError::GroupSubscribedToTopic.code()
                    } else {
                        deleted.push((t.name.to_string(), p.partition_index));
                        0
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error)
                })
                .collect();
            response.topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions),
            );
        }
        deleted.retain(|k| group.offsets.contains_key(k));
        if deleted.is_empty() {
            return self.reply(parked.waiter, ResponseKind::OffsetDelete(response));
        }
        self.delete(
            now,
            group_id,
            deleted,
            false,
            None,
            Some((parked, response)),
        );
    }

    /// DeleteGroups: removes empty groups and their offsets.
    pub fn delete_groups(&mut self, now: Now, parked: Parked, request: &DeleteGroupsRequest) {
        let job = self.next_id();
        let mut response = DeleteGroupsResponse::default();
        let mut deletions = Vec::new();
        for (i, group_id) in request.groups_names.iter().enumerate() {
            let checked =
                self.locate(group_id)
                    .and_then(|_| match self.groups.get(group_id.as_str()) {
                        None => Err(ResponseError::GroupIdNotFound),
                        Some(g) if !g.members.is_empty() => Err(ResponseError::NonEmptyGroup),
                        Some(g) => Ok(g.offsets.keys().cloned().collect::<Vec<_>>()),
                    });
            let error = match checked {
                Ok(offsets) => {
                    deletions.push((i, group_id.to_string(), offsets));
                    0
                }
                Err(e) => e.code(),
            };
            response.results.push(
                DeletableGroupResult::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(error),
            );
        }
        if deletions.is_empty() {
            return self.reply(parked.waiter, ResponseKind::DeleteGroups(response));
        }
        self.deletes.insert(
            job,
            DeleteJob {
                parked,
                response,
                outstanding: deletions.len(),
            },
        );
        for (i, group_id, offsets) in deletions {
            self.delete(now, &group_id, offsets, true, Some((job, i)), None);
        }
    }

    /// Writes tombstones for `offsets` of `group` (and for the group itself if
    /// `whole_group`); applied once durable.
    fn delete(
        &mut self,
        now: Now,
        group: &str,
        offsets: Vec<(String, i32)>,
        whole_group: bool,
        job: Option<(u64, usize)>,
        reply: Option<(Parked, OffsetDeleteResponse)>,
    ) {
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = offsets
            .iter()
            .map(|(t, p)| (Key::Offset(group.to_string(), t.clone(), *p).encode(), None))
            .collect();
        if whole_group {
            records.push((Key::Group(group.to_string()).encode(), None));
        }
        let partition = self.partition_of(group);
        let pending = PendingWrite::Deletion {
            group: group.to_string(),
            offsets,
            whole_group,
            job,
            reply,
        };
        self.write(now, partition, &records, pending);
    }

    /// Deletes the offsets of groups that have been empty for longer than the retention.
    fn expire_offsets(&mut self, now: Now) {
        let retention = self.config.offsets_retention_ms;
        let expired: Vec<(String, Vec<(String, i32)>)> = self
            .groups
            .values()
            .filter(|g| g.state == State::Empty && self.locate(&g.id).is_ok())
            .filter(|g| {
                // Kafka's rule, `now - max(last commit, empty since) >= retention`, by the
                // wall clock (those times are in the log), and by this coordinator's own
                // monotonic timer too, so a wall clock stepped forward expires nothing early.
                let last_commit = g.offsets.values().map(|c| c.timestamp).max();
                let since = last_commit.unwrap_or(0).max(g.state_since);
                now.wall.saturating_sub(since) >= retention
                    && now.mono.saturating_sub(g.state_timer) >= retention
            })
            .map(|g| (g.id.clone(), g.offsets.keys().cloned().collect()))
            .collect();
        for (group, offsets) in expired {
            info!(%group, offsets = offsets.len(), "expiring the offsets of an empty group");
            self.delete(now, &group, offsets, true, None, None);
        }
    }

    // ---- listing ------------------------------------------------------------------------

    /// ListGroups: the groups served here, filtered by state (v4+) and type (v5+).
    pub fn list_groups(&self, request: &ListGroupsRequest) -> ResponseKind {
        let mut response = ListGroupsResponse::default();
        if self.owned.values().any(|(_, l)| *l == Load::Loading) {
            response.error_code = ResponseError::CoordinatorLoadInProgress.code();
        }
        let states: Vec<String> = request
            .states_filter
            .iter()
            .map(|s| s.to_lowercase())
            .collect();
        let classic = request.types_filter.is_empty()
            || request
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"));
        for g in self.groups.values().filter(|g| self.locate(&g.id).is_ok()) {
            let state = g.state.name();
            if !classic || (!states.is_empty() && !states.contains(&state.to_lowercase())) {
                continue;
            }
            response.groups.push(
                ListedGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(g.id.clone())))
                    .with_protocol_type(StrBytes::from_string(
                        g.protocol_type.clone().unwrap_or_default(),
                    ))
                    .with_group_state(StrBytes::from_static_str(state))
                    .with_group_type(StrBytes::from_static_str("classic")),
            );
        }
        ResponseKind::ListGroups(response)
    }

    /// DescribeGroups.
    pub fn describe_groups(&self, request: &DescribeGroupsRequest) -> ResponseKind {
        let mut response = DescribeGroupsResponse::default();
        for group_id in &request.groups {
            let mut described = DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_group_state(StrBytes::from_static_str("Dead"));
            match self.locate(group_id) {
                Err(e) => described.error_code = e.code(),
                Ok(_) => {
                    if let Some(g) = self.groups.get(group_id.as_str()) {
                        let stable = g.state == State::Stable;
                        let protocol = g.protocol.as_deref();
                        described.group_state = StrBytes::from_static_str(g.state.name());
                        described.protocol_type =
                            StrBytes::from_string(g.protocol_type.clone().unwrap_or_default());
                        described.protocol_data = StrBytes::from_string(
                            protocol.filter(|_| stable).unwrap_or_default().to_string(),
                        );
                        described.members = g
                            .members
                            .iter()
                            .map(|(id, m)| {
                                DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(id.clone()))
                                    .with_group_instance_id(
                                        m.instance_id.clone().map(StrBytes::from_string),
                                    )
                                    .with_client_id(StrBytes::from_string(m.client_id.clone()))
                                    .with_client_host(StrBytes::from_string(m.client_host.clone()))
                                    .with_member_metadata(m.metadata(protocol))
                                    .with_member_assignment(if stable {
                                        m.assignment.clone()
                                    } else {
                                        Bytes::new()
                                    })
                            })
                            .collect();
                    }
                }
            }
            response.groups.push(described);
        }
        ResponseKind::DescribeGroups(response)
    }

    // ---- writes -------------------------------------------------------------------------

    fn write(
        &mut self,
        now: Now,
        partition: i32,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        pending: PendingWrite,
    ) {
        self.write_as(now, partition, records, pending, None)
    }

    /// Writes records; inside `txn`'s transaction (producer id, epoch) if given.
    fn write_as(
        &mut self,
        now: Now,
        partition: i32,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        pending: PendingWrite,
        txn: Option<(i64, i16)>,
    ) {
        let id = self.next_id();
        let refs: Vec<batch::KeyAndValue<'_>> = records
            .iter()
            .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
            .collect();
        let batch = match txn {
            Some((producer_id, epoch)) => {
                batch::txn_data_batch(now.wall, producer_id, epoch, &refs)
            }
            None => batch::data_batch(now.wall, &refs),
        }
        .freeze();
        debug!(id, partition, records = records.len(), "group write");
        self.writes.insert(id, pending);
        self.outputs.push_back(CoordinatorOutput::Write {
            id,
            partition,
            batch,
        });
    }

    /// The write `id` is committed (`Ok`) or failed with the produce error it got.
    pub fn write_done(&mut self, now: Now, id: u64, result: Result<(), ResponseError>) {
        let Some(pending) = self.writes.remove(&id) else {
            return;
        };
        let error = result.map_err(coordinator_error);
        if let Err(e) = error {
            warn!(id, error = ?e, "group write failed");
        }
        match pending {
            PendingWrite::Commit {
                parked,
                group,
                mut response,
                offsets,
                txn,
            } => {
                let n = self.partitions;
                let error = match (error, txn) {
                    // Its transaction ended while the write was in flight.
                    (Ok(()), Some(producer)) if self.fenced(partition_for(&group, n), producer) => {
                        Err(ResponseError::InvalidProducerEpoch)
                    }
                    (error, _) => error,
                };
                match (error, txn) {
                    // Loaded again since (or not at all): the load read it from the log.
                    (Ok(()), Some(_)) if !self.loaded(partition_for(&group, n)) => {}
                    (Ok(()), Some((producer_id, _))) => {
                        let pending = self.txn_offsets.entry(producer_id).or_default();
                        for (t, p, c) in offsets {
                            pending.push((group.clone(), t, p, c));
                        }
                    }
                    (Ok(()), None) => {
                        if let Some(g) = self.groups.get_mut(&group) {
                            for (t, p, c) in offsets {
                                g.offsets.insert((t, p), c);
                            }
                        }
                    }
                    (Err(e), _) => set_commit_errors(&mut response, e, |code| code == 0),
                }
                self.reply(parked.waiter, commit_answer(response, txn.is_some()));
            }
            PendingWrite::Assignment { group, generation } => {
                let mut fx = Vec::new();
                if let Some(g) = self.groups.get_mut(&group) {
                    g.assignment_written(now, &self.config, generation, error, &mut fx);
                }
                self.effects(&group, now, fx);
            }
            PendingWrite::Deletion {
                group,
                offsets,
                whole_group,
                job,
                reply,
            } => {
                if error.is_ok() {
                    if whole_group {
                        self.groups.remove(&group);
                    } else if let Some(g) = self.groups.get_mut(&group) {
                        for k in &offsets {
                            g.offsets.remove(k);
                        }
                    }
                }
                if let Some((parked, mut response)) = reply {
                    if let Err(e) = error {
                        response.error_code = e.code();
                    }
                    self.reply(parked.waiter, ResponseKind::OffsetDelete(response));
                }
                if let Some((job, index)) = job {
                    self.delete_done(job, index, error.err());
                }
            }
            PendingWrite::Record => {}
        }
    }

    fn delete_done(&mut self, job: u64, index: usize, error: Option<ResponseError>) {
        let Some(pending) = self.deletes.get_mut(&job) else {
            return;
        };
        if let Some(e) = error {
            pending.response.results[index].error_code = e.code();
        }
        pending.outstanding -= 1;
        if pending.outstanding == 0 {
            let done = self.deletes.remove(&job).expect("exists");
            self.reply(
                done.parked.waiter,
                ResponseKind::DeleteGroups(done.response),
            );
        }
    }

    fn reply(&mut self, waiter: u64, response: ResponseKind) {
        self.outputs
            .push_back(CoordinatorOutput::Reply { waiter, response });
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// `<client id>-<uuid>`, as Kafka makes them; the uuid is drawn from the seed.
    fn new_member_id(&mut self, client_id: &str) -> String {
        let n = self.next_id();
        let mut x = self.id_seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut words = [0u64; 2];
        for w in &mut words {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *w = z ^ (z >> 31);
        }
        let uuid = uuid::Uuid::from_u64_pair(words[0], words[1]);
        format!("{client_id}-{uuid}")
    }
}

/// The error a client of the group APIs gets for a failed write to `__consumer_offsets`,
/// as Kafka maps them: all retriable except the last.
fn coordinator_error(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge => {
            ResponseError::InvalidCommitOffsetSize
        }
        _ => ResponseError::UnknownServerError,
    }
}

/// An OffsetCommit's answer, or a TxnOffsetCommit's (the same per-partition codes).
fn commit_answer(response: OffsetCommitResponse, txn: bool) -> ResponseKind {
    if !txn {
        return ResponseKind::OffsetCommit(response);
    }
    let topics = response
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(p.error_code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
}

fn set_commit_errors(
    response: &mut OffsetCommitResponse,
    error: ResponseError,
    only: impl Fn(i16) -> bool,
) {
    for p in response.topics.iter_mut().flat_map(|t| &mut t.partitions) {
        if only(p.error_code) {
            p.error_code = error.code();
        }
    }
}

fn heartbeat_error(e: ResponseError) -> ResponseKind {
    ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(e.code()))
}

fn unstable_code(unstable: bool) -> i16 {
    if unstable {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

/// Offset, leader epoch and metadata of a committed offset; -1s and "" if there is none.
fn committed_fields(c: Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata),
        None => (-1, -1, String::new()),
    }
}
