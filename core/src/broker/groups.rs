//! The broker's side of consumer groups: FindCoordinator, the group APIs handed to the
//! [`Coordinator`], its writes carried out as acks=all produces to `__consumer_offsets`, and
//! the partitions it leads read back when their leadership arrives here.

use crate::time::Now;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{
    Coordinator as Found, FindCoordinatorResponse,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{BrokerId, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{error, info, warn};

use super::admin::str_bytes;
use super::quorum::Waiting;
use super::txns::{internal_produce, produce_error};
use super::{Broker, ProduceFor, ReplyTo};
use crate::batch::complete_batches;
use crate::batch::BatchView;
use crate::cluster::records::{Change, TopicCreations};
use crate::group::membership::Parked;
use crate::group::{partition_for, Coordinator, CoordinatorOutput, OFFSETS_TOPIC};
use crate::log::ReadPlan;
use crate::storage::StorageOp;
use crate::topic::Topic;
use crate::txn::{TxnCoordinator, TXN_TOPIC};

/// How long a FindCoordinator that creates `__consumer_offsets` waits for it.
const CREATE_WAIT_MS: i64 = 5_000;
/// Bytes read at a time while loading a partition's groups.
const LOAD_READ_BYTES: usize = 1 << 20;
/// `__consumer_offsets` and `__transaction_state` keep their records until their
/// coordinator deletes them: tombstones are the only way records go (there is no
/// compaction yet to drop superseded ones).
const INTERNAL_TOPIC_CONFIGS: &[(&str, &str)] =
    &[("retention.ms", "-1"), ("segment.bytes", "104857600")];
/// FindCoordinator key types.
const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

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
        now: Now,
        reply_to: ReplyTo,
        client_id: &str,
        mut request: RequestKind,
    ) {
        let narrowed = match self.group_refusal(reply_to.conn, &mut request) {
            Ok(narrowed) => narrowed,
            Err(refusal) => return self.respond(reply_to, Some(refusal)),
        };
        let waiter = self.token();
        self.group_waiters.insert(waiter, (reply_to, narrowed));
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
                coordinator.commit(now, parked, &r, partition_exists(&self.topics))
            }
            RequestKind::TxnOffsetCommit(r) => {
                coordinator.txn_commit(now, parked, &r, partition_exists(&self.topics))
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
    pub(super) fn drain_coordinator(&mut self, now: Now) {
        while let Some(output) = self.coordinator.poll_output() {
            match output {
                CoordinatorOutput::Reply {
                    waiter,
                    mut response,
                } => {
                    if let Some((reply_to, narrowed)) = self.group_waiters.remove(&waiter) {
                        if let Some(narrowed) = narrowed {
                            narrowed.merge(&mut response);
                        }
                        self.filter_response(reply_to.conn, &mut response);
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
    fn write_for_coordinator(&mut self, now: Now, id: u64, partition: i32, batch: Bytes) {
        let request = internal_produce(OFFSETS_TOPIC, partition, batch);
        self.produce(now, ProduceFor::Coordinator(id), request);
    }

    /// A coordinator write's produce is answered.
    pub(super) fn coordinator_write_done(&mut self, id: u64, response: Option<ProduceResponse>) {
        let result = match produce_error(response.as_ref()) {
            None => Ok(()),
            Some(e) => Err(e),
        };
        self.coordinator.write_done(self.now, id, result);
    }

    /// FindCoordinator: the leader of the group's partition of `__consumer_offsets` (or the
    /// transactional id's of `__transaction_state`), which is created on first use.
    pub(super) fn find_coordinator(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: FindCoordinatorRequest,
    ) {
        let (which, partitions) = match request.key_type {
            TRANSACTION_KEY => (Internal::Transactions, self.config.txns.partitions),
            _ => (Internal::Offsets, self.config.groups.offsets_partitions),
        };
        let name = which.topic();
        if request.key_type > TRANSACTION_KEY || self.topics.contains_key(name) {
            let response = self.find_coordinator_response(reply_to, &request);
            return self.respond(reply_to, Some(response));
        }
        let configs: BTreeMap<String, String> = INTERNAL_TOPIC_CONFIGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let change = match self.place(partitions, self.default_replication()) {
            Ok(replicas) => {
                info!(partitions, "creating {name}");
                let topic = self.topic_creation(name, configs, replicas);
                Some(Change::CreateTopics(TopicCreations {
                    topics: vec![topic],
                }))
            }
            Err((_, message)) => {
                warn!(%message, "cannot create {name} yet");
                None
            }
        };
        let waiting = Waiting::FindCoordinator(request);
        self.propose_for(now, reply_to, change, waiting, CREATE_WAIT_MS);
    }

    /// The FindCoordinator answer from what this broker knows now.
    pub(super) fn find_coordinator_response(
        &self,
        reply_to: ReplyTo,
        request: &FindCoordinatorRequest,
    ) -> ResponseKind {
        let version = reply_to.version;
        let listener = self
            .connections
            .get(&reply_to.conn)
            .map_or("", |c| c.listener.as_str());
        let keys: Vec<StrBytes> = if version >= 4 {
            request.coordinator_keys.clone()
        } else {
            vec![request.key.clone()]
        };
        let found: Vec<Found> = keys
            .into_iter()
            .map(|key| {
                let located = match self.may_find(reply_to.conn, request.key_type, &key) {
                    Ok(()) => self.locate_coordinator(request.key_type, &key, listener),
                    Err(e) => Err(e),
                };
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

    /// Kafka asks for Describe on the group or transactional id.
    fn may_find(&self, conn: u64, key_type: i8, key: &str) -> Result<(), ResponseError> {
        use crate::security::acl::{Operation::Describe, ResourceType};
        match key_type {
            GROUP_KEY if !self.allowed(conn, Describe, ResourceType::Group, key) => {
                Err(ResponseError::GroupAuthorizationFailed)
            }
            TRANSACTION_KEY
                if !self.allowed(conn, Describe, ResourceType::TransactionalId, key) =>
            {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            }
            _ => Ok(()),
        }
    }

    /// The broker (id, host, port on `listener`) coordinating `key`.
    fn locate_coordinator(
        &self,
        key_type: i8,
        key: &str,
        listener: &str,
    ) -> Result<(i32, String, i32), ResponseError> {
        let which = match key_type {
            GROUP_KEY => Internal::Offsets,
            TRANSACTION_KEY => Internal::Transactions,
            _ => return Err(ResponseError::InvalidRequest),
        };
        if key.is_empty() {
            return Err(match which {
                Internal::Offsets => ResponseError::InvalidGroupId,
                Internal::Transactions => ResponseError::InvalidRequest,
            });
        }
        let topic = self
            .topics
            .get(which.topic())
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let p = partition_for(key, topic.partition_count());
        let (leader, _) = self.partition_leader(topic, p);
        let broker = leader
            .and_then(|id| self.controller.image().brokers.get(&id))
            .filter(|b| !b.fenced)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let (host, port) = broker.address(listener);
        Ok((broker.id, host.to_string(), port))
    }

    /// Makes each coordinator serve exactly the partitions of its internal topic this
    /// broker leads (and serves reads for): new ones are read back, lost ones dropped.
    pub(super) fn reconcile_coordinator(&mut self) {
        for which in [Internal::Offsets, Internal::Transactions] {
            self.reconcile_owner(which);
        }
    }

    fn reconcile_owner(&mut self, which: Internal) {
        let me = self.config.broker_id;
        let mut wanted = Vec::new();
        let mut count = None;
        if let Some(topic) = self.topics.get(which.topic()) {
            count = Some(topic.partition_count());
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
        if let Some(count) = count {
            self.owner(which).set_partitions(count);
        }
        for p in self.owner(which).owned_partitions() {
            if !wanted.iter().any(|(w, _)| *w == p) {
                self.owner(which).unload(p);
                self.group_loads.remove(&(which, p));
            }
        }
        for (p, epoch) in wanted {
            let blocked = self.blocked_loads.get(&(which, p)) == Some(&epoch);
            if blocked || self.owner(which).owned_epoch(p) == Some(epoch) {
                continue;
            }
            self.blocked_loads.remove(&(which, p));
            self.owner(which).begin_load(p, epoch);
            let log = self.log(which.topic(), p).expect("listed from the logs");
            let load = GroupLoad {
                next: log.log_start_offset(),
                end: None,
                read: None,
            };
            self.group_loads.insert((which, p), load);
            self.continue_load(which, p);
        }
    }

    /// The coordinator of an internal topic.
    fn owner(&mut self, which: Internal) -> &mut dyn PartitionOwner {
        match which {
            Internal::Offsets => &mut self.coordinator,
            Internal::Transactions => &mut self.txn_coordinator,
        }
    }

    /// Issues the next read of a load, or finishes it.
    fn continue_load(&mut self, which: Internal, p: i32) {
        let Some(load) = self.group_loads.get(&(which, p)) else {
            return;
        };
        let next = load.next;
        let stop = load.end;
        let plan = self.log(which.topic(), p).map(|log| {
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
                self.group_loads.get_mut(&(which, p)).expect("exists").next = start;
                return self.continue_load(which, p);
            }
            _ => None,
        };
        match plan {
            Some(plan) => self.issue_load_read(which, p, plan),
            None => {
                self.group_loads.remove(&(which, p));
                self.owner(which).finish_load(p);
            }
        }
    }

    fn issue_load_read(&mut self, which: Internal, p: i32, plan: ReadPlan) {
        let token = self.token();
        self.storage(StorageOp::Read {
            token,
            segment: plan.segment.clone(),
            position: plan.position,
            len: plan.len,
        });
        if let Some(load) = self.group_loads.get_mut(&(which, p)) {
            load.read = Some((token, plan));
        }
    }

    /// A read completed; true if it was one of a load's.
    pub(super) fn on_load_read(&mut self, token: u64, result: &Result<Bytes, String>) -> bool {
        let Some((&(which, p), load)) = self
            .group_loads
            .iter_mut()
            .find(|(_, l)| l.read.as_ref().is_some_and(|(t, _)| *t == token))
        else {
            return false;
        };
        let (_, plan) = load.read.take().expect("matched");
        let topic = which.topic();
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                // Give the partition up; the next reconcile starts its load over.
                error!(topic, partition = p, error = %e, "reading an internal topic failed");
                self.group_loads.remove(&(which, p));
                self.owner(which).unload(p);
                self.coordinator_stale = true;
                return true;
            }
        };
        let before = load.next;
        let end = load.end.unwrap_or(i64::MAX);
        let mut next = load.next;
        let now = self.now;
        let owner: &mut dyn PartitionOwner = match which {
            Internal::Offsets => &mut self.coordinator,
            Internal::Transactions => &mut self.txn_coordinator,
        };
        let replicated = self
            .topics
            .get(topic)
            .is_some_and(|t| t.raft.contains_key(&p));
        let mut damaged = None;
        // Each batch must start where the last one ended: the base offset is outside the
        // CRC, and a flipped one would make the coordinator skip what follows.
        let mut expected = plan.first_offset;
        for view in complete_batches(bytes) {
            let follows_on = view.base_offset() == expected;
            if follows_on && view.base_offset() >= end {
                break;
            }
            if !follows_on || view.next_offset() > next {
                if (!view.crc_ok() || !follows_on) && replicated {
                    damaged = Some(expected);
                    break;
                }
                if !follows_on {
                    break; // One copy: what follows cannot be placed; loading stops here.
                }
                // A damaged batch of a single copy cannot be repaired: the coordinator
                // skips it (what it held is lost, as for any topic of one copy).
                owner.load(now, p, &view);
                next = view.next_offset();
            }
            expected = view.next_offset();
        }
        if let Some(offset) = damaged {
            self.internal_damage(which, p, offset);
            return true;
        }
        let load = self.group_loads.get_mut(&(which, p)).expect("found above");
        load.next = next;
        if load.next == before {
            // Nothing whole in the read: a batch larger than the read, read whole next.
            if let Some(plan) = plan.widened_for(bytes) {
                self.issue_load_read(which, p, plan);
                return true;
            }
            if replicated {
                // A damaged length or magic (outside the CRC): repaired like a bad CRC.
                self.internal_damage(which, p, before);
                return true;
            }
            error!(
                topic,
                partition = p,
                offset = before,
                "unreadable batch in an internal topic; loading stops here"
            );
            load.end = Some(before);
        }
        self.continue_load(which, p);
        true
    }

    /// A coordinator's load found the batch at `offset` of a replicated internal partition
    /// damaged. What it would load without it is an older state: the replica steps aside
    /// and is repaired, and the next leader loads the intact copy.
    fn internal_damage(&mut self, which: Internal, p: i32, offset: i64) {
        let topic = which.topic();
        error!(
            topic,
            partition = p,
            offset,
            "damaged batch in an internal topic; its coordinator steps aside"
        );
        if let Some(replica) = self.topics.get_mut(topic).and_then(|t| t.raft.get_mut(&p)) {
            replica.report_damage_at(offset);
        }
        // Not loaded again in this leader epoch: the next leader loads it.
        if let Some(epoch) = self.owner(which).owned_epoch(p) {
            self.blocked_loads.insert((which, p), epoch);
        }
        self.dirty_replicas
            .insert(crate::storage::TopicPartition::new(&Arc::from(topic), p));
        self.group_loads.remove(&(which, p));
        self.owner(which).unload(p);
        self.coordinator_stale = true;
    }
}

/// Whether a topic partition exists, for requests that name partitions.
pub(super) fn partition_exists(
    topics: &BTreeMap<Arc<str>, Topic>,
) -> impl Fn(&str, i32) -> bool + '_ {
    |topic, p| {
        topics
            .get(topic)
            .is_some_and(|t| (0..t.partition_count()).contains(&p))
    }
}

/// An internal topic whose partitions' leaders coordinate what those partitions hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Internal {
    /// `__consumer_offsets`: the group coordinator.
    Offsets,
    /// `__transaction_state`: the transaction coordinator.
    Transactions,
}

impl Internal {
    pub(super) fn topic(self) -> &'static str {
        match self {
            Internal::Offsets => OFFSETS_TOPIC,
            Internal::Transactions => TXN_TOPIC,
        }
    }
}

/// What the broker asks of a coordinator as the partitions it leads come and go.
trait PartitionOwner {
    fn set_partitions(&mut self, partitions: i32);
    fn owned_partitions(&self) -> Vec<i32>;
    fn owned_epoch(&self, p: i32) -> Option<i32>;
    fn begin_load(&mut self, p: i32, epoch: i32);
    fn load(&mut self, now: Now, p: i32, view: &BatchView<'_>);
    fn finish_load(&mut self, p: i32);
    fn unload(&mut self, p: i32);
}

macro_rules! partition_owner {
    ($type:ty, |$this:ident, $now:ident, $p:ident, $view:ident| $load:expr) => {
        impl PartitionOwner for $type {
            fn set_partitions(&mut self, partitions: i32) {
                <$type>::set_partitions(self, partitions)
            }
            fn owned_partitions(&self) -> Vec<i32> {
                <$type>::owned_partitions(self)
            }
            fn owned_epoch(&self, p: i32) -> Option<i32> {
                <$type>::owned_epoch(self, p)
            }
            fn begin_load(&mut self, p: i32, epoch: i32) {
                <$type>::begin_load(self, p, epoch)
            }
            fn load(&mut self, $now: Now, $p: i32, $view: &BatchView<'_>) {
                let $this = self;
                $load
            }
            fn finish_load(&mut self, p: i32) {
                <$type>::finish_load(self, p)
            }
            fn unload(&mut self, p: i32) {
                <$type>::unload(self, p)
            }
        }
    };
}

partition_owner!(Coordinator, |this, now, p, view| this.load(now, p, view));
partition_owner!(TxnCoordinator, |this, now, p, view| this.load(now, p, view));
