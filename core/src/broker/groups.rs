//! The broker's side of consumer groups: FindCoordinator, the group APIs handed to the
//! [`Coordinator`], its writes carried out as acks=all produces to `__consumer_offsets`, and
//! the partitions it leads read back when their leadership arrives here.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{
    Coordinator as Found, FindCoordinatorResponse,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{BrokerId, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{error, info, warn};

use super::admin::str_bytes;
use super::quorum::Waiting;
use super::{Broker, ProduceFor, ReplyTo};
use crate::batch::complete_batches;
use crate::cluster::records::{Change, TopicCreations};
use crate::group::membership::Parked;
use crate::group::{partition_for, CoordinatorOutput, OFFSETS_TOPIC};
use crate::log::ReadPlan;
use crate::storage::StorageOp;

/// How long a FindCoordinator that creates `__consumer_offsets` waits for it.
const CREATE_WAIT_MS: i64 = 5_000;
/// How long a coordinator write may wait for its commit.
const WRITE_TIMEOUT_MS: i32 = 5_000;
/// Bytes read at a time while loading a partition's groups.
const LOAD_READ_BYTES: usize = 1 << 20;
/// `__consumer_offsets` keeps its records until the coordinator deletes them: tombstones
/// are the only way offsets go (there is no compaction yet to drop superseded ones).
const OFFSETS_TOPIC_CONFIGS: &[(&str, &str)] =
    &[("retention.ms", "-1"), ("segment.bytes", "104857600")];

/// A partition of `__consumer_offsets` being read back.
#[derive(Debug)]
pub(super) struct GroupLoad {
    /// The next offset to apply.
    next: i64,
    /// Set where an unreadable batch stops the load; otherwise it reads up to the high
    /// watermark as it stands (only the coordinator writes here, and not while loading).
    end: Option<i64>,
    /// The read in flight.
    read: Option<(u64, ReadPlan)>,
}

impl Broker {
    /// A group API request that may wait (for a rebalance, for a write): handed to the
    /// coordinator, answered through its outputs.
    pub(super) fn group_request(
        &mut self,
        now: i64,
        reply_to: ReplyTo,
        client_id: &str,
        request: RequestKind,
    ) {
        let waiter = self.token();
        self.group_waiters.insert(waiter, reply_to);
        let parked = Parked {
            waiter,
            version: reply_to.version,
        };
        let coordinator = &mut self.coordinator;
        match request {
            RequestKind::JoinGroup(r) => {
                let host = self.connections.get(&reply_to.conn).map_or("", |c| &c.host);
                coordinator.join(now, parked, (client_id, host), &r)
            }
            RequestKind::SyncGroup(r) => coordinator.sync(now, parked, &r),
            RequestKind::Heartbeat(r) => coordinator.heartbeat(now, parked, &r),
            RequestKind::LeaveGroup(r) => coordinator.leave(now, parked, &r),
            RequestKind::OffsetFetch(r) => coordinator.offset_fetch(parked, &r),
            RequestKind::OffsetDelete(r) => coordinator.offset_delete(now, parked, &r),
            RequestKind::DeleteGroups(r) => coordinator.delete_groups(now, parked, &r),
            RequestKind::OffsetCommit(r) => {
                let topics = &self.topics;
                let exists = |topic: &str, p: i32| {
                    topics
                        .get(topic)
                        .is_some_and(|t| (0..t.partition_count()).contains(&p))
                };
                coordinator.commit(now, parked, &r, exists)
            }
            other => {
                warn!(api = ?reply_to.api_key, "not a group request: {other:?}");
                self.group_waiters.remove(&waiter);
                return self.close(reply_to.conn);
            }
        }
        self.drain_coordinator(now);
    }

    /// Carries out what the coordinator asked for: answers and writes.
    pub(super) fn drain_coordinator(&mut self, now: i64) {
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                CoordinatorOutput::Reply { waiter, response } => {
                    if let Some(reply_to) = self.group_waiters.remove(&waiter) {
                        self.respond(reply_to, Some(response));
                    }
                }
                CoordinatorOutput::Write {
                    id,
                    partition,
                    batch,
                } => self.write_for_coordinator(now, id, partition, batch),
            }
        }
    }

    /// Appends a coordinator's batch to its partition with acks=all.
    fn write_for_coordinator(&mut self, now: i64, id: u64, partition: i32, batch: Bytes) {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(WRITE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(OFFSETS_TOPIC)))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        self.produce(now, ProduceFor::Coordinator(id), request);
    }

    /// A coordinator write's produce is answered.
    pub(super) fn coordinator_write_done(&mut self, id: u64, response: Option<ProduceResponse>) {
        let code = response
            .as_ref()
            .and_then(|r| r.responses.first())
            .and_then(|t| t.partition_responses.first())
            .map_or(ResponseError::UnknownServerError.code(), |p| p.error_code);
        let result = match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(e) => Err(e),
        };
        self.coordinator.write_done(self.now, id, result);
    }

    /// FindCoordinator: the leader of the group's partition of `__consumer_offsets`,
    /// which is created on first use.
    pub(super) fn find_coordinator(
        &mut self,
        now: i64,
        reply_to: ReplyTo,
        request: FindCoordinatorRequest,
    ) {
        if self.topics.contains_key(OFFSETS_TOPIC) {
            let response = self.find_coordinator_response(reply_to.version, &request);
            return self.respond(reply_to, Some(response));
        }
        let partitions = self.config.groups.offsets_partitions;
        let configs: BTreeMap<String, String> = OFFSETS_TOPIC_CONFIGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let change = match self.place(partitions, self.default_replication()) {
            Ok(replicas) => {
                info!(partitions, "creating {OFFSETS_TOPIC}");
                let topic = self.topic_creation(OFFSETS_TOPIC, configs, replicas);
                Some(Change::CreateTopics(TopicCreations {
                    topics: vec![topic],
                }))
            }
            Err((_, message)) => {
                warn!(%message, "cannot create {OFFSETS_TOPIC} yet");
                None
            }
        };
        let waiting = Waiting::FindCoordinator(request);
        self.propose_for(now, reply_to, change, waiting, CREATE_WAIT_MS);
    }

    /// The FindCoordinator answer from what this broker knows now.
    pub(super) fn find_coordinator_response(
        &self,
        version: i16,
        request: &FindCoordinatorRequest,
    ) -> ResponseKind {
        let keys: Vec<StrBytes> = if version >= 4 {
            request.coordinator_keys.clone()
        } else {
            vec![request.key.clone()]
        };
        let found: Vec<Found> = keys
            .into_iter()
            .map(|key| {
                let located = self.locate_coordinator(request.key_type, &key);
                let mut found = Found::default().with_key(key).with_node_id(BrokerId(-1));
                match located {
                    Ok((id, host, port)) => {
                        found.node_id = BrokerId(id);
                        found.host = str_bytes(&host);
                        found.port = port;
                    }
                    Err(e) => {
                        found.error_code = e.code();
                        found.error_message = Some(StrBytes::from_string(e.to_string()));
                    }
                }
                found
            })
            .collect();
        let mut response = FindCoordinatorResponse::default();
        if version >= 4 {
            response.coordinators = found;
        } else if let Some(f) = found.into_iter().next() {
            response.error_code = f.error_code;
            response.error_message = f.error_message.filter(|_| version >= 1);
            response.node_id = f.node_id;
            response.host = f.host;
            response.port = f.port;
        }
        ResponseKind::FindCoordinator(response)
    }

    /// The broker (id, host, port) coordinating `key`.
    fn locate_coordinator(
        &self,
        key_type: i8,
        key: &str,
    ) -> Result<(i32, String, i32), ResponseError> {
        if key_type != 0 {
            return Err(ResponseError::InvalidRequest); // Transactions are not served.
        }
        if key.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let topic = self
            .topics
            .get(OFFSETS_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let p = partition_for(key, topic.partition_count());
        let (leader, _) = self.partition_leader(topic, p);
        let broker = leader
            .and_then(|id| self.controller.image().brokers.get(&id))
            .filter(|b| !b.fenced)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        Ok((broker.id, broker.host.clone(), broker.port))
    }

    /// Makes the coordinator serve exactly the `__consumer_offsets` partitions this broker
    /// leads (and serves reads for): new ones are read back, lost ones dropped.
    pub(super) fn reconcile_coordinator(&mut self) {
        let me = self.config.broker_id;
        let mut wanted = Vec::new();
        if let Some(topic) = self.topics.get(OFFSETS_TOPIC) {
            self.coordinator.set_partitions(topic.partition_count());
            for &p in topic.logs.keys() {
                match topic.raft.get(&p) {
                    Some(r) if r.is_leader() && r.is_serving() => wanted.push((p, r.term() as i32)),
                    Some(_) => {}
                    None if topic.replicas.get(p as usize).is_some_and(|r| r == &[me]) => {
                        wanted.push((p, 0))
                    }
                    None => {}
                }
            }
        }
        for p in self.coordinator.owned_partitions() {
            if !wanted.iter().any(|(w, _)| *w == p) {
                self.coordinator.unload(p);
                self.group_loads.remove(&p);
            }
        }
        for (p, epoch) in wanted {
            if self.coordinator.owned_epoch(p) == Some(epoch) {
                continue;
            }
            self.coordinator.begin_load(p, epoch);
            let log = self.log(OFFSETS_TOPIC, p).expect("listed from the logs");
            let load = GroupLoad {
                next: log.log_start_offset(),
                end: None,
                read: None,
            };
            self.group_loads.insert(p, load);
            self.continue_load(p);
        }
    }

    /// Issues the next read of a load, or finishes it.
    fn continue_load(&mut self, p: i32) {
        let Some(load) = self.group_loads.get(&p) else {
            return;
        };
        let next = load.next;
        let stop = load.end;
        let plan = self.log(OFFSETS_TOPIC, p).map(|log| {
            let end = stop
                .unwrap_or(log.high_watermark())
                .min(log.high_watermark());
            (
                end,
                log.log_start_offset(),
                log.plan_read(next, LOAD_READ_BYTES),
            )
        });
        let end = plan.as_ref().map_or(next, |(end, _, _)| *end);
        let plan = plan.map(|(_, start, plan)| (start, plan));
        let plan = match plan {
            Some(_) if next >= end => None,
            Some((_, Ok(plan))) => plan,
            Some((start, Err(_))) if next < start => {
                // Retention or a truncation moved the start past us: go on from there.
                self.group_loads.get_mut(&p).expect("exists").next = start;
                return self.continue_load(p);
            }
            _ => None,
        };
        match plan {
            Some(plan) => self.issue_load_read(p, plan),
            None => {
                self.group_loads.remove(&p);
                self.coordinator.finish_load(p);
            }
        }
    }

    fn issue_load_read(&mut self, p: i32, plan: ReadPlan) {
        let token = self.token();
        self.storage(StorageOp::Read {
            token,
            segment: plan.segment.clone(),
            position: plan.position,
            len: plan.len,
        });
        if let Some(load) = self.group_loads.get_mut(&p) {
            load.read = Some((token, plan));
        }
    }

    /// A read completed; true if it was one of a load's.
    pub(super) fn on_load_read(&mut self, token: u64, result: &Result<Bytes, String>) -> bool {
        let Some((&p, load)) = self
            .group_loads
            .iter_mut()
            .find(|(_, l)| l.read.as_ref().is_some_and(|(t, _)| *t == token))
        else {
            return false;
        };
        let (_, plan) = load.read.take().expect("matched");
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                // Give the partition up; the next reconcile starts its load over.
                error!(partition = p, error = %e, "reading {OFFSETS_TOPIC} failed");
                self.group_loads.remove(&p);
                self.coordinator.unload(p);
                self.coordinator_stale = true;
                return true;
            }
        };
        let before = load.next;
        let end = load.end.unwrap_or(i64::MAX);
        for view in complete_batches(bytes) {
            if view.base_offset() >= end {
                break;
            }
            if view.next_offset() > load.next {
                self.coordinator.load(self.now, p, &view);
                load.next = view.next_offset();
            }
        }
        if load.next == before {
            // Nothing whole in the read: a batch larger than the read, read whole next.
            if let Some(plan) = plan.widened_for(bytes) {
                self.issue_load_read(p, plan);
                return true;
            }
            error!(
                partition = p,
                offset = before,
                "unreadable batch in {OFFSETS_TOPIC}; loading stops here"
            );
            load.end = Some(before);
        }
        self.continue_load(p);
        true
    }
}
