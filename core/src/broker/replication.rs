//! The broker's side of partition replication: replicas made from the metadata, peer
//! messages routed to them, their output carried out, and produces that wait for commits.

use crate::time::Now;
use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;
use tracing::{debug, info};

use super::{Broker, CommittedEntry, Observation, Output, ProduceFor};
use crate::batch;
use crate::canary::{is_planted, Canary};
use crate::cluster::records::{
    Change, GroupMessage, PartitionLeader, PartitionReplicaSet, PeerFrame, TopicRef,
};
use crate::config::{FlushPolicy, TimestampType};
use crate::consensus::RaftPersist;
use crate::log::PartitionLog;
use crate::producer::{Verdict, Written};
use crate::replica::{broker_of, ReassignStep, Replica, ReplicaConfig};
use crate::storage::{StorageOp, TopicPartition};
use crate::topic::Topic;

/// Replica ticks between checks that the metadata names each partition's leader.
const LEADER_RECORD_CHECK_TICKS: u64 = 10;

/// Replica ticks between preferred-leader checks: a leader that is not its partition's
/// first replica hands over to it once that replica is live and caught up.
const PREFERRED_LEADER_CHECK_TICKS: u64 = 30;

/// A produce with batches proposed to replicated partitions, waiting for them.
pub(super) struct ReplicatedProduce {
    reply_to: ProduceFor,
    acks: i16,
    deadline: i64,
    /// The sync that makes the request's unreplicated appends durable, if it has any.
    sync_token: Option<u64>,
    response: ProduceResponse,
    waits: Vec<Wait>,
}

/// One partition's batches of a [`ReplicatedProduce`].
struct Wait {
    /// Where its answer goes in the response (topic, partition).
    slot: (usize, usize),
    tp: TopicPartition,
    topic_id: [u8; 16],
    /// Raft indexes of the first and last proposed batch, and the term they were proposed in.
    first: u64,
    last: u64,
    term: u64,
    log_append_time: i64,
    /// The first offset of a retried batch that is committed already: nothing to wait
    /// for (its entry may be gone from the entry table by now).
    base_offset: Option<i64>,
    done: bool,
}

/// What [`Broker::propose_batches`] proposed.
pub(super) struct Proposed {
    first: u64,
    last: u64,
    term: u64,
    log_append_time: i64,
    /// The first offset of a retried batch that is committed already: the answer.
    base_offset: Option<i64>,
}

impl Broker {
    /// Starts this broker's replica of a partition that has more than one (its log exists).
    pub(super) fn add_replica(&mut self, tp: &TopicPartition, replicas: &[i32]) {
        let persisted: Option<RaftPersist> = self.recovered_replicas.remove(tp);
        let empty = self
            .topics
            .get(&tp.topic)
            .and_then(|t| t.partition(tp.partition))
            .is_some_and(|log| log.log_end_offset() == 0);
        let stateful = persisted.is_some();
        let fresh = !stateful && empty;
        let config = ReplicaConfig {
            broker: self.config.broker_id,
            replicas: replicas.to_vec(),
            election_ticks: self.config.cluster.election_ticks,
            heartbeat_ticks: self.config.cluster.heartbeat_ticks,
            seed: self.id_seed,
            report_commits: self.config.report_commits,
        };
        let Some(topic) = self.topics.get_mut(&tp.topic) else {
            return;
        };
        let Some(log) = topic.logs.get_mut(&tp.partition) else {
            return;
        };
        let mut replica = Replica::new(tp.clone(), config, persisted, log);
        // A founding member of a new partition: the replicas are still the first ones and
        // nothing is moving. Any other replica without Raft state joins a group that has a
        // history, and waits for its leader.
        let founding = topic
            .replicas
            .get(tp.partition as usize)
            .is_some_and(|c| c == replicas)
            && !topic.targets.contains_key(&tp.partition);
        if !stateful && !founding {
            replica.join_existing_group();
        }
        if fresh && founding && replicas.first() == Some(&self.config.broker_id) {
            // The preferred leader of a new partition stands at once, so leadership starts
            // spread the way placement spread the first replicas.
            replica.campaign();
        }
        topic.raft.insert(tp.partition, replica);
        self.dirty_replicas.insert(tp.clone());
    }

    /// A Raft message for a partition replica.
    pub(super) fn step_replica(
        &mut self,
        topic: &TopicRef,
        index: i32,
        message: raft::eraftpb::Message,
    ) {
        let Some(t) = self
            .topics
            .get_mut(topic.name.as_str())
            .filter(|t| t.id[..] == *topic.id)
        else {
            debug!(topic = %topic.name, index, "raft message for a partition not held here");
            return;
        };
        if let Some(replica) = t.raft.get_mut(&index) {
            replica.step(message);
            self.dirty_replicas
                .insert(TopicPartition::new(&t.name, index));
        }
    }

    /// True if any replicated partition is held here.
    pub(super) fn has_replicas(&self) -> bool {
        self.topics.values().any(|t| !t.raft.is_empty())
    }

    /// One tick for every replica; now and then, make sure the metadata names the
    /// partitions this broker leads.
    pub(super) fn tick_replicas(&mut self) {
        self.replica_ticks += 1;
        let check = self.replica_ticks.is_multiple_of(LEADER_RECORD_CHECK_TICKS);
        let balance = self
            .replica_ticks
            .is_multiple_of(PREFERRED_LEADER_CHECK_TICKS);
        let image = self.controller.image();
        let mut records = Vec::new();
        let mut moved = Vec::new();
        for topic in self.topics.values_mut() {
            for (&index, replica) in &mut topic.raft {
                replica.tick();
                self.dirty_replicas
                    .insert(TopicPartition::new(&topic.name, index));
                if check && replica.is_leader() {
                    records.push((topic.name.clone(), topic.id, index, replica.term()));
                }
                if let Some(target) = topic.targets.get(&index) {
                    if check && replica.reassign_step(target) == ReassignStep::Done {
                        moved.push((topic.name.clone(), topic.id, index, target.clone()));
                    }
                    continue; // No preferred-leader moves while the replicas change.
                }
                let preferred = topic.replicas.get(index as usize).and_then(|r| r.first());
                let live = |b: &&i32| image.brokers.get(*b).is_some_and(|r| !r.fenced);
                if let Some(&preferred) = preferred.filter(|b| balance && live(b)) {
                    if replica.transfer_to(preferred) {
                        debug!(topic = %topic.name, index, preferred, "handing leadership back to the preferred replica");
                    }
                }
            }
        }
        for (name, id, index, replicas) in moved {
            info!(topic = %name, partition = index, ?replicas, "partition moved");
            let change = Change::Reassigned(PartitionReplicaSet {
                topic: Some(TopicRef {
                    name: name.to_string(),
                    id: id.to_vec(),
                }),
                partition: index,
                replicas,
            });
            if let Err(e) = self.controller.propose(change, 0) {
                debug!(topic = %name, partition = index, error = ?e, "move not recorded yet; retried");
            }
        }
        for (name, id, index, term) in records {
            let image = self.controller.image();
            let known = image
                .topic(&name, &id)
                .and_then(|t| t.leaders.get(&index).copied());
            if known != Some((self.config.broker_id, term as i32)) {
                self.propose_leader(&name, id, index, term);
            }
        }
    }

    fn propose_leader(&mut self, name: &str, id: [u8; 16], partition: i32, term: u64) {
        let change = Change::PartitionLeader(PartitionLeader {
            topic: Some(TopicRef {
                name: name.to_string(),
                id: id.to_vec(),
            }),
            partition,
            leader: self.config.broker_id,
            epoch: term as i32,
        });
        if let Err(e) = self.controller.propose(change, 0) {
            debug!(topic = %name, partition, error = ?e, "leader record not proposed; retried later");
        }
    }

    /// The leader and leader epoch of a partition, as best known here: its own replica's
    /// view when it holds one, else the metadata's; the only replica for unreplicated ones.
    pub(super) fn partition_leader(&self, topic: &Topic, index: i32) -> (Option<i32>, i32) {
        let replicas = topic.replicas.get(index as usize);
        if replicas.is_none_or(|r| r.len() <= 1) {
            return (replicas.and_then(|r| r.first().copied()), 0);
        }
        let image = self
            .controller
            .image()
            .topic(&topic.name, &topic.id)
            .and_then(|t| t.leaders.get(&index).copied());
        let me = self.config.broker_id;
        let Some(replica) = topic.raft.get(&index) else {
            return image.map_or((None, 0), |(l, e)| (Some(l), e));
        };
        let term = replica.term() as i32;
        match (replica.leader(), image) {
            (_, Some((l, e))) if e > term && l != me => (Some(l), e),
            (Some(l), _) => (Some(l), term),
            // This replica does not know the leader yet (it may be starting): the metadata's
            // word counts only if it names another broker.
            (None, Some((l, e))) if l != me => (Some(l), e),
            (None, _) => (None, term),
        }
    }

    /// Drives every replica that has work and carries out what it asks for.
    pub(super) fn drive_replicas(&mut self) {
        let sync_token = match self.config.flush {
            FlushPolicy::GroupCommit => Some(self.next_sync_token),
            FlushPolicy::Never => None,
        };
        let mut advanced = BTreeSet::new();
        for tp in std::mem::take(&mut self.dirty_replicas) {
            if &*tp.topic == crate::group::OFFSETS_TOPIC {
                self.coordinator_stale = true;
            }
            let Some(topic) = self.topics.get_mut(&tp.topic) else {
                continue;
            };
            let (Some(log), Some(replica)) = (
                topic.logs.get_mut(&tp.partition),
                topic.raft.get_mut(&tp.partition),
            ) else {
                continue;
            };
            let out = replica.drive(
                log,
                &topic.config,
                self.config.index_interval_bytes,
                self.now,
                sync_token,
            );
            let topic_ref = TopicRef {
                name: topic.name.to_string(),
                id: topic.id.to_vec(),
            };
            self.emit_log_ops(out.ops);
            for message in out.messages {
                self.outbox
                    .entry(broker_of(message.to))
                    .or_default()
                    .push(GroupMessage {
                        partition: Some(topic_ref.clone()),
                        index: tp.partition,
                        message: Some(message),
                    });
            }
            for read in out.reads {
                let token = self.token();
                self.replica_reads
                    .insert(token, (tp.clone(), topic_ref.id.clone(), read.tag));
                self.storage(StorageOp::Read {
                    token,
                    segment: read.segment,
                    position: read.position,
                    len: read.len,
                });
            }
            if let Some(term) = out.elected {
                info!(partition = %tp, term, "elected partition leader");
                self.outputs
                    .push_back(Output::Observed(Observation::Elected {
                        group: tp.to_string(),
                        term,
                    }));
                let id = self.topics[&tp.topic].id;
                self.propose_leader(&tp.topic, id, tp.partition, term);
            }
            if !out.committed.is_empty() {
                let entries = out.committed.iter().map(|(index, meta)| CommittedEntry {
                    index: *index,
                    term: meta.term,
                    base_offset: meta.base_offset,
                    next_offset: meta.next_offset,
                    crc: meta.crc,
                });
                self.outputs
                    .push_back(Output::Observed(Observation::Committed {
                        group: tp.to_string(),
                        topic_id: self.topics[&tp.topic].id,
                        entries: entries.collect(),
                    }));
            }
            if out.advanced {
                advanced.insert(tp);
            }
        }
        self.advanced(&advanced);
        if !self.replicated_produces.is_empty() {
            self.settle_replicated_produces();
        }
    }

    /// A read a replica asked for finished; false if `token` was not a replica's.
    pub(super) fn on_replica_read(&mut self, token: u64, result: &Result<Bytes, String>) -> bool {
        let Some((tp, id, tag)) = self.replica_reads.remove(&token) else {
            return false;
        };
        let Some(topic) = self.topics.get_mut(&tp.topic).filter(|t| t.id[..] == *id) else {
            return true;
        };
        if let (Some(log), Some(replica)) = (
            topic.logs.get_mut(&tp.partition),
            topic.raft.get_mut(&tp.partition),
        ) {
            replica.on_read(tag, log, result.clone());
            self.dirty_replicas.insert(tp);
        }
        true
    }

    /// A group-commit sync finished: replicas' appends up to it are durable.
    pub(super) fn replicas_synced(&mut self, token: u64) {
        self.last_synced = token;
        for topic in self.topics.values_mut() {
            for (&index, replica) in &mut topic.raft {
                replica.on_synced(token);
                if replica.has_work() {
                    self.dirty_replicas
                        .insert(TopicPartition::new(&topic.name, index));
                }
            }
        }
    }

    /// Hands every partition this broker leads to another replica (controlled shutdown).
    pub(super) fn hand_over_partitions(&mut self) {
        for topic in self.topics.values_mut() {
            for (&index, replica) in &mut topic.raft {
                if replica.hand_over() {
                    self.dirty_replicas
                        .insert(TopicPartition::new(&topic.name, index));
                }
            }
        }
    }

    /// True if this broker leads a replicated partition.
    pub fn leads_any_partition(&self) -> bool {
        self.topics
            .values()
            .any(|t| t.raft.values().any(Replica::is_leader))
    }

    /// Proposes a produce's batches for one replicated partition (the leader's side).
    pub(super) fn propose_batches(
        &mut self,
        now: Now,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
        acks: i16,
        by_broker: bool,
    ) -> Result<Proposed, ResponseError> {
        let topic = self
            .topics
            .get_mut(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let replica = topic
            .raft
            .get_mut(&partition)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        if !replica.is_leader() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let records = records.ok_or(ResponseError::InvalidRecord)?;
        let summaries = super::produce::check_batches(&records, &topic.config, by_broker)?;
        if acks == -1 && replica.in_sync_replicas() < topic.config.min_insync_replicas {
            return Err(ResponseError::NotEnoughReplicas);
        }
        let log_append_time = match topic.config.timestamp_type {
            TimestampType::LogAppendTime => now.wall,
            TimestampType::CreateTime => -1,
        };
        let producer = super::produce::producer_batch(&records, &summaries)?;
        let log = topic
            .logs
            .get_mut(&partition)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if let Some(batch) = &producer {
            if let Verdict::Duplicate(original) = log.producers().check(batch)? {
                // Proposed or written before: the answer waits on that entry instead.
                return Ok(Proposed {
                    first: original.at,
                    last: original.at,
                    term: original.term,
                    log_append_time,
                    base_offset: original
                        .base_offset
                        .filter(|base| *base < log.high_watermark()),
                });
            }
        }
        let mut proposed: Option<Proposed> = None;
        let mut at = 0;
        for summary in &summaries {
            // A slice of the request (or of its own copy: `own_share`), shared by Raft's
            // copies of the entry and the frames to followers until it is written and sent
            // (the resend cache keeps a compact copy: see `EntryLog::push`).
            let mut one = records.slice(at..at + summary.size);
            at += summary.size;
            if log_append_time >= 0 {
                one = batch::with_log_append_time(&one, log_append_time);
            }
            let (index, term) = replica
                .propose(one)
                .map_err(|_| ResponseError::NotLeaderOrFollower)?;
            let p = proposed.get_or_insert(Proposed {
                first: index,
                last: index,
                term,
                log_append_time,
                base_offset: None,
            });
            p.last = index;
            if let Some(batch) = producer {
                // Until it is written, a retry of it finds the proposal.
                let written = Written::of(&batch, index, term, None);
                log.producers_mut().record(batch, written, now.wall);
            }
        }
        self.dirty_replicas
            .insert(TopicPartition::new(&topic.name, partition));
        proposed.ok_or(ResponseError::InvalidRecord)
    }

    /// Registers a produce that waits for replicated partitions.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wait_for_replication(
        &mut self,
        now: Now,
        reply_to: ProduceFor,
        acks: i16,
        timeout_ms: i32,
        sync_token: Option<u64>,
        response: ProduceResponse,
        proposals: Vec<((usize, usize), TopicPartition, Proposed)>,
    ) {
        let waits = proposals
            .into_iter()
            .filter_map(|(slot, tp, p)| {
                let topic_id = self.topics.get(&tp.topic)?.id;
                Some(Wait {
                    slot,
                    tp,
                    topic_id,
                    first: p.first,
                    last: p.last,
                    term: p.term,
                    log_append_time: p.log_append_time,
                    base_offset: p.base_offset,
                    done: false,
                })
            })
            .collect();
        self.replicated_produces.push(ReplicatedProduce {
            reply_to,
            acks,
            deadline: now.mono + i64::from(timeout_ms.clamp(1, 300_000)),
            sync_token,
            response,
            waits,
        });
    }

    /// Answers the produces whose batches are committed (acks=all) or appended (acks=1),
    /// or lost to a change of leader.
    pub(super) fn settle_replicated_produces(&mut self) {
        let mut pending = std::mem::take(&mut self.replicated_produces);
        for produce in &mut pending {
            let on_append = produce.acks != -1 || is_planted(Canary::AckAllOnLocalAppend);
            for wait in produce.waits.iter_mut().filter(|w| !w.done) {
                let topic = self
                    .topics
                    .get(&wait.tp.topic)
                    .filter(|t| t.id == wait.topic_id);
                let replica = topic.and_then(|t| t.raft.get(&wait.tp.partition));
                let outcome = replica.and_then(|r| {
                    if wait.base_offset.is_some() {
                        return Some(true);
                    }
                    let appended = r
                        .entries()
                        .and_then(|e| e.meta(wait.last))
                        .is_some_and(|m| m.term == wait.term);
                    match r.outcome(wait.last, wait.term) {
                        Some(true) => Some(true),
                        _ if on_append && appended => Some(true),
                        other => other,
                    }
                });
                let answer =
                    &mut produce.response.responses[wait.slot.0].partition_responses[wait.slot.1];
                match (outcome, replica) {
                    (None, Some(_)) => continue,
                    (Some(true), Some(r)) => {
                        let offsets = r.offsets(wait.first, wait.last);
                        let Some(base) = wait.base_offset.or(offsets.map(|(base, _)| base)) else {
                            continue;
                        };
                        answer.base_offset = base;
                        answer.log_append_time_ms = wait.log_append_time;
                        answer.log_start_offset = topic
                            .and_then(|t| t.partition(wait.tp.partition))
                            .map_or(0, PartitionLog::log_start_offset);
                    }
                    _ => {
                        answer.error_code = ResponseError::NotLeaderOrFollower.code();
                        answer.base_offset = -1;
                    }
                }
                wait.done = true;
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| {
            p.waits.iter().all(|w| w.done) && p.sync_token.is_none_or(|t| t <= self.last_synced)
        });
        self.replicated_produces = waiting;
        for produce in done {
            self.answer_replicated(produce);
        }
    }

    /// Answers produces still waiting at their deadline with REQUEST_TIMED_OUT.
    pub(super) fn expire_replicated_produces(&mut self, now: Now) {
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replicated_produces)
            .into_iter()
            .partition(|p| p.deadline <= now.mono);
        self.replicated_produces = waiting;
        for mut produce in expired {
            for wait in produce.waits.iter().filter(|w| !w.done) {
                let answer =
                    &mut produce.response.responses[wait.slot.0].partition_responses[wait.slot.1];
                answer.error_code = ResponseError::RequestTimedOut.code();
                answer.base_offset = -1;
            }
            self.answer_replicated(produce);
        }
    }

    /// The earliest deadline of a waiting produce.
    pub(super) fn replicated_produce_deadline(&self) -> Option<i64> {
        self.replicated_produces.iter().map(|p| p.deadline).min()
    }

    fn answer_replicated(&mut self, produce: ReplicatedProduce) {
        let response = (produce.acks != 0).then_some(produce.response);
        self.answer_produce(produce.reply_to, response);
    }

    /// The log a client may read, checking the leader epoch it believes current (KIP-320):
    /// an older one is FENCED_LEADER_EPOCH, a newer one (this broker is a deposed leader that
    /// has not heard yet) UNKNOWN_LEADER_EPOCH; -1 skips the check.
    pub(super) fn serving_log(
        &self,
        topic: &str,
        partition: i32,
        current_epoch: i32,
    ) -> Result<&PartitionLog, ResponseError> {
        let log = self.log_for_client(topic, partition)?;
        if current_epoch >= 0 {
            let epoch = self.leader_epoch(topic, partition);
            if current_epoch < epoch {
                return Err(ResponseError::FencedLeaderEpoch);
            }
            if current_epoch > epoch {
                return Err(ResponseError::UnknownLeaderEpoch);
            }
        }
        Ok(log)
    }

    /// This broker's leader epoch of a partition (0 for unreplicated partitions).
    pub(super) fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.topics
            .get(topic)
            .and_then(|t| t.raft.get(&partition))
            .map_or(0, |r| r.term() as i32)
    }

    /// OffsetForLeaderEpoch (KIP-320): where each asked-for leader epoch ended, so a client
    /// that read from an older leader can tell whether its position was truncated away.
    pub(super) fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
    ) -> ResponseKind {
        let mut response = OffsetForLeaderEpochResponse::default();
        for t in request.topics {
            let topic = self.topics.get(t.topic.0.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut out = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    match topic.map(|t| self.epoch_end(t, p)) {
                        Some(Ok((epoch, end))) => {
                            out.leader_epoch = epoch;
                            out.end_offset = end;
                        }
                        Some(Err(error)) => out.error_code = error.code(),
                        None => out.error_code = ResponseError::UnknownTopicOrPartition.code(),
                    }
                    out
                })
                .collect();
            response.topics.push(
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic)
                    .with_partitions(partitions),
            );
        }
        ResponseKind::OffsetForLeaderEpoch(response)
    }

    fn epoch_end(
        &self,
        topic: &Topic,
        p: &OffsetForLeaderPartition,
    ) -> Result<(i32, i64), ResponseError> {
        let log = topic.log_for_client(p.partition)?;
        let Some(replica) = topic.raft.get(&p.partition) else {
            // One replica: every batch is in epoch 0.
            return Ok((0, log.log_end_offset()));
        };
        let term = replica.term() as i32;
        if p.current_leader_epoch >= 0 && p.current_leader_epoch < term {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        if p.current_leader_epoch > term {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        let entries = replica
            .entries()
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        Ok(entries
            .epoch_end(p.leader_epoch.max(0) as u64)
            .map_or((-1, -1), |(epoch, end)| (epoch as i32, end)))
    }

    /// Sends the Raft messages gathered in this step: one frame per peer, every group's
    /// messages (the metadata quorum's and each partition's) together.
    pub(super) fn flush_outbox(&mut self) {
        for (to, messages) in std::mem::take(&mut self.outbox) {
            let frame = PeerFrame {
                from: self.config.broker_id,
                messages,
                ..PeerFrame::default()
            };
            self.outputs.push_back(Output::Peer {
                to,
                frame: frame.encode_shared(),
            });
        }
    }

    /// Retention moved a replicated log's start: the replica's recorded start follows,
    /// durably, before the segments go.
    pub(super) fn retention_ops(
        replica: Option<&mut Replica>,
        log: &PartitionLog,
        moved: bool,
        ops: Vec<StorageOp>,
    ) -> Vec<StorageOp> {
        match replica.filter(|_| moved) {
            Some(replica) => replica
                .compact_to_offset(log.log_start_offset())
                .into_iter()
                .chain(ops)
                .collect(),
            None => ops,
        }
    }
}
