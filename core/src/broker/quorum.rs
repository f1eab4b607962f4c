//! The broker's side of the metadata quorum: peer messages in, the controller driven,
//! applied records turned into local partitions and into answers for waiting admin requests.

use crate::time::Now;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::alter_partition_reassignments_response::AlterPartitionReassignmentsResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsResponse;
use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;
use kafka_protocol::messages::delete_topics_response::DeleteTopicsResponse;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;
use prost::Message as _;
use tracing::{info, warn};

use super::{Broker, Observation, Output, ReplyTo};
use crate::canary::{is_planted, Canary};
use crate::cluster::image::{Applied, Refusal};
use crate::cluster::raft_id;
use crate::cluster::records::{Change, GroupMessage, PeerFrame, CLUSTER_DEFAULT};
use crate::log::{PartitionLog, Segment};
use crate::storage::{StorageOp, TopicPartition};
use crate::topic::Topic;

/// An admin request waiting for its metadata record to be applied.
pub(super) struct PendingAdmin {
    pub reply_to: ReplyTo,
    pub deadline: i64,
    pub waiting: Waiting,
}

/// What the waiting request answers once its record is applied (or its deadline passes).
pub(super) enum Waiting {
    /// Metadata that auto-creates topics: answered afresh once they exist.
    Metadata(MetadataRequest),
    /// Prepared answers; per-topic refusals at apply time are filled in.
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    CreatePartitions(CreatePartitionsResponse),
    Reassign(AlterPartitionReassignmentsResponse),
    /// FindCoordinator that creates `__consumer_offsets`: answered afresh once it exists.
    FindCoordinator(FindCoordinatorRequest),
    /// IncrementalAlterConfigs or AlterConfigs.
    AlterConfigs(super::configs::AlterAnswer),
    /// CreateAcls, DeleteAcls, AlterUserScramCredentials.
    Security(super::security::SecurityAnswer),
}

impl Broker {
    /// A frame from another broker (size prefix removed), which arrived on a connection
    /// whose peer proved to be broker `sender` (see node's peer handshake). An unreadable
    /// frame is dropped: Raft tolerates lost messages, and a peer is not a client to answer.
    /// So is a frame that claims another sender: one broker cannot speak for another.
    pub fn handle_peer(&mut self, now: Now, sender: i32, frame: Bytes) {
        self.advance_clock(now);
        match PeerFrame::decode(frame) {
            Ok(frame) if frame.from != sender || sender == self.config.broker_id => {
                warn!(
                    sender,
                    claimed = frame.from,
                    "refusing a peer frame sent in another broker's name, or in this one's"
                );
            }
            Ok(frame) => {
                self.controller.heard_from(frame.from, now);
                if let Some(registration) = frame.join {
                    self.controller.handle_join(registration);
                }
                let (from, to) = (raft_id(frame.from), raft_id(self.config.broker_id));
                for GroupMessage {
                    partition,
                    index,
                    message,
                } in frame.messages
                {
                    // A proposal or a leadership transfer is forwarded on as it came, in the
                    // name of the broker that made it; every other message is the sender's.
                    let forwarded = |m: &raft::eraftpb::Message| {
                        use raft::eraftpb::MessageType::{MsgPropose, MsgTransferLeader};
                        [MsgPropose as i32, MsgTransferLeader as i32].contains(&m.msg_type)
                    };
                    // A forwarded request of this broker's own that came back means two
                    // brokers each take the other for the leader: dropped, or it circles
                    // (its proposer retries).
                    let misaddressed = |m: &&raft::eraftpb::Message| {
                        m.to != to || (m.from != from && !forwarded(m)) || m.from == to
                    };
                    if let Some(m) = message.as_ref().filter(misaddressed) {
                        warn!(
                            sender,
                            m.from,
                            m.to,
                            m.msg_type,
                            "refusing a raft message not from its frame's sender to here"
                        );
                        continue;
                    }
                    match (partition, message) {
                        (None, Some(message)) => self.controller.step(message),
                        (Some(topic), Some(message)) => self.step_replica(&topic, index, message),
                        _ => warn!(from = frame.from, "peer message without a message"),
                    }
                }
                if !frame.markers.is_empty() || !frame.marker_results.is_empty() {
                    let (markers, results) = (frame.markers, frame.marker_results);
                    self.handle_peer_markers(now, frame.from, markers, results);
                }
            }
            Err(e) => warn!(error = %e, "dropping an unreadable peer frame"),
        }
        self.after_input();
    }

    /// Drives the metadata quorum: persist, send, then apply what committed.
    pub(super) fn drive_quorum(&mut self) {
        // Called after every input, produce and fetch included: most have nothing here.
        if !self.controller.has_work() {
            return;
        }
        let drive = self.controller.drive();
        // The volatile-topics canary forgets the quorum's state, and so every topic, on restart.
        if !drive.persist.is_empty() && !is_planted(Canary::VolatileTopics) {
            self.storage(StorageOp::SaveQuorum(Box::new(drive.persist)));
        }
        if let Some(registration) = drive.join {
            for &voter in drive.voters.iter().filter(|&&v| v != self.config.broker_id) {
                let frame = PeerFrame {
                    from: self.config.broker_id,
                    join: Some(registration.clone()),
                    ..PeerFrame::default()
                };
                self.outputs.push_back(Output::Peer {
                    to: voter,
                    frame: frame.encode_shared(),
                });
            }
        }
        if let Some(term) = drive.elected {
            self.outputs
                .push_back(Output::Observed(Observation::Elected {
                    group: super::METADATA_GROUP.into(),
                    term,
                }));
        }
        for (to, message) in drive.messages {
            self.outbox.entry(to).or_default().push(GroupMessage {
                partition: None,
                index: 0,
                message: Some(message),
            });
        }
        let image_changed = drive.image_replaced || !drive.applied.is_empty();
        if image_changed {
            self.refresh_topic_defaults();
        }
        if drive.image_replaced {
            let names: Vec<String> = self
                .controller
                .image()
                .topics
                .keys()
                .cloned()
                .chain(self.topics.keys().map(|k| k.to_string()))
                .collect();
            for name in names {
                self.reconcile_topic(&name);
            }
        }
        for (record, outcome) in drive.applied {
            if let (Applied::ProducerIds { first, count }, Some(Change::AllocateProducerIds(b))) =
                (&outcome, &record.change)
            {
                self.producer_ids_granted(b, *first, *count);
            }
            if let Applied::Topics(results) = &outcome {
                for (name, result) in results {
                    if result.is_ok() {
                        self.reconcile_topic(name);
                    }
                }
            }
            let mine = record
                .origin
                .filter(|o| o.broker == self.config.broker_id && o.token != 0);
            if let Some(origin) = mine {
                if let Some(pending) = self.pending_admin.remove(&origin.token) {
                    self.answer_admin(pending, Some(&outcome));
                }
            }
            match &record.change {
                Some(Change::Reassign(r)) => {
                    let names: BTreeSet<String> = r
                        .partitions
                        .iter()
                        .filter_map(|p| p.topic.as_ref().map(|t| t.name.clone()))
                        .collect();
                    for name in names {
                        self.reconcile_topic(&name);
                    }
                }
                Some(Change::Reassigned(p)) => {
                    if let Some(t) = &p.topic {
                        self.reconcile_topic(&t.name);
                    }
                }
                Some(Change::RegisterBroker(b)) => {
                    info!(broker = b.id, host = %b.host, port = b.port, "broker registered")
                }
                Some(Change::FenceBroker(f)) => {
                    info!(broker = f.id, fenced = f.fenced, "broker fenced")
                }
                _ => {}
            }
        }
        if image_changed {
            self.announce_peer_addresses();
            self.coordinator_stale = true;
        }
        self.report_security();
    }

    /// Takes up the dynamic broker configs of the image, if they changed: new topic defaults,
    /// and every topic's config again over them (its own overrides still win).
    pub(super) fn refresh_topic_defaults(&mut self) {
        let image = self.controller.image();
        let scopes = [CLUSTER_DEFAULT, self.config.broker_id];
        let dynamic: BTreeMap<String, String> = (scopes.iter())
            .filter_map(|scope| image.broker_configs.get(scope))
            .flat_map(|configs| configs.clone())
            .collect();
        if dynamic == self.dynamic_configs {
            return;
        }
        match self.config.topic_defaults.with_broker_configs(&dynamic) {
            Ok(defaults) => {
                info!(configs = ?dynamic, "dynamic broker configs changed");
                for topic in self.topics.values_mut() {
                    match defaults.with_overrides(&topic.overrides) {
                        Ok(config) => topic.config = config,
                        Err(e) => {
                            warn!(topic = %topic.name, error = %e.0, "topic config invalid; keeping the old")
                        }
                    }
                }
                self.topic_defaults = defaults;
            }
            Err(e) => warn!(error = %e.0, "dynamic broker configs invalid; keeping the old"),
        }
        self.dynamic_configs = dynamic;
    }

    /// Tells the driver where registered brokers' peer listeners are (brokers that joined
    /// after start are not in the static voter list).
    pub(super) fn announce_peer_addresses(&mut self) {
        let me = self.config.broker_id;
        let changed: Vec<(i32, String)> = self
            .controller
            .image()
            .brokers
            .values()
            .filter(|b| b.id != me && !b.peer_address.is_empty())
            .filter(|b| self.peer_addresses.get(&b.id) != Some(&b.peer_address))
            .map(|b| (b.id, b.peer_address.clone()))
            .collect();
        for (broker, address) in changed {
            self.peer_addresses.insert(broker, address.clone());
            self.outputs
                .push_back(Output::PeerAddress { broker, address });
        }
    }

    /// Proposes `change` for the request `reply_to`, which waits for it with `waiting`;
    /// with no change to make, it is answered at once. If no controller is known the
    /// request is answered now with `NOT_CONTROLLER`.
    pub(super) fn propose_for(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        change: Option<Change>,
        waiting: Waiting,
        timeout_ms: i64,
    ) {
        let pending = PendingAdmin {
            reply_to,
            deadline: now.mono + timeout_ms.clamp(1, 60_000),
            waiting,
        };
        let Some(change) = change else {
            return self.answer_admin(pending, None);
        };
        let token = self.token();
        match self.controller.propose(change, token) {
            Ok(()) => {
                self.pending_admin.insert(token, pending);
            }
            Err(e) => {
                warn!(error = ?e, "metadata change not proposed");
                self.answer_admin_error(pending, ResponseError::NotController);
            }
        }
    }

    /// Answers admin requests whose records were not applied in time.
    pub(super) fn expire_pending_admin(&mut self, now: Now) {
        let expired: Vec<u64> = self
            .pending_admin
            .iter()
            .filter(|(_, p)| p.deadline <= now.mono)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            let pending = self.pending_admin.remove(&token).expect("listed above");
            self.answer_admin_error(pending, ResponseError::RequestTimedOut);
        }
    }

    fn answer_admin_error(&mut self, mut pending: PendingAdmin, error: ResponseError) {
        let code = error.code();
        match &mut pending.waiting {
            Waiting::Metadata(_) | Waiting::FindCoordinator(_) => {}
            Waiting::CreateTopics(r) => {
                for t in r.topics.iter_mut().filter(|t| t.error_code == 0) {
                    t.error_code = code;
                }
            }
            Waiting::DeleteTopics(r) => {
                for t in r.responses.iter_mut().filter(|t| t.error_code == 0) {
                    t.error_code = code;
                }
            }
            Waiting::CreatePartitions(r) => {
                for t in r.results.iter_mut().filter(|t| t.error_code == 0) {
                    t.error_code = code;
                }
            }
            Waiting::AlterConfigs(answer) => answer.fail_all(error),
            Waiting::Security(answer) => answer.fail_all(error),
            Waiting::Reassign(r) => {
                let partitions = r.responses.iter_mut().flat_map(|t| &mut t.partitions);
                for p in partitions.filter(|p| p.error_code == 0) {
                    p.error_code = code;
                }
            }
        }
        self.answer_admin(pending, None);
    }

    /// Sends the answer of a waiting admin request, with the refusals of `outcome`.
    fn answer_admin(&mut self, pending: PendingAdmin, outcome: Option<&Applied>) {
        let refusal = |name: &str| match outcome {
            Some(Applied::Topics(results)) => results
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, r)| r.err())
                .map(|r| match r {
                    Refusal::AlreadyExists => ResponseError::TopicAlreadyExists.code(),
                    Refusal::Unknown => ResponseError::UnknownTopicOrPartition.code(),
                }),
            _ => None,
        };
        let response = match pending.waiting {
            Waiting::Metadata(request) => self.metadata_response(pending.reply_to.conn, request),
            Waiting::CreateTopics(mut r) => {
                for t in &mut r.topics {
                    if let Some(code) = refusal(&t.name.0) {
                        t.error_code = code;
                    }
                }
                ResponseKind::CreateTopics(r)
            }
            Waiting::DeleteTopics(mut r) => {
                for t in &mut r.responses {
                    if let Some(code) = t.name.as_ref().and_then(|n| refusal(&n.0)) {
                        t.error_code = code;
                    }
                }
                ResponseKind::DeleteTopics(r)
            }
            Waiting::CreatePartitions(mut r) => {
                for t in &mut r.results {
                    if let Some(code) = refusal(&t.name.0) {
                        t.error_code = code;
                    }
                }
                ResponseKind::CreatePartitions(r)
            }
            Waiting::Reassign(r) => ResponseKind::AlterPartitionReassignments(r),
            Waiting::AlterConfigs(answer) => {
                answer.response(|name| refusal(name).and_then(ResponseError::try_from_code))
            }
            Waiting::FindCoordinator(request) => {
                self.find_coordinator_response(pending.reply_to, &request)
            }
            Waiting::Security(answer) => answer.response(),
        };
        self.respond(pending.reply_to, Some(response));
    }

    /// Makes the local state of topic `name` match the image: creates its partitions held
    /// here, grows them, or deletes the topic.
    pub(super) fn reconcile_topic(&mut self, name: &str) {
        let wanted = self.controller.image().topics.get(name).cloned();
        let local_id = self.topics.get(name).map(|t| t.id);
        match (wanted, local_id) {
            (None, None) => {}
            (None, Some(_)) => self.drop_local_topic(name),
            (Some(image), Some(id)) if id != image.id => {
                self.drop_local_topic(name);
                self.reconcile_topic(name);
            }
            (Some(image), _) => {
                let me = self.config.broker_id;
                let name: Arc<str> = match self.topics.get_key_value(name) {
                    Some((k, _)) => k.clone(),
                    None => Arc::from(name),
                };
                let mut ops = Vec::new();
                let mut replicas_to_make = Vec::new();
                let mut producer_loads = Vec::new();
                let mut recovered = self.recovered_logs.remove(&*name);
                let fresh = !self.topics.contains_key(&name);
                let topic = self.topics.entry(name.clone()).or_insert_with(|| Topic {
                    name: name.clone(),
                    id: image.id,
                    overrides: image.configs.clone(),
                    config: self
                        .topic_defaults
                        .with_overrides(&image.configs)
                        .unwrap_or_else(|e| {
                            warn!(topic = %name, error = %e.0, "topic config invalid; using defaults");
                            self.topic_defaults.clone()
                        }),
                    replicas: Vec::new(),
                    targets: BTreeMap::new(),
                    logs: BTreeMap::new(),
                    raft: BTreeMap::new(),
                });
                if topic.overrides != image.configs {
                    // IncrementalAlterConfigs or AlterConfigs changed them.
                    match self.topic_defaults.with_overrides(&image.configs) {
                        Ok(config) => {
                            info!(topic = %name, configs = ?image.configs, "topic configs changed");
                            topic.config = config;
                        }
                        Err(e) => {
                            warn!(topic = %name, error = %e.0, "topic config invalid; keeping the old")
                        }
                    }
                    topic.overrides = image.configs.clone();
                }
                let grew = topic.replicas.len() != image.replicas.len();
                topic.replicas = image.replicas.clone();
                topic.targets = image.targets.clone();
                let mut moved_away = Vec::new();
                for (index, replicas) in image.replicas.iter().enumerate() {
                    let index = index as i32;
                    let target = image.targets.get(&index);
                    let held = topic.logs.contains_key(&index)
                        || recovered.as_ref().is_some_and(|(id, parts)| {
                            *id == image.id && parts.contains_key(&index)
                        });
                    // While a move is under way this broker may still be in the partition's
                    // Raft group whatever the target says: a copy goes only once the move
                    // is recorded as done (the leader removes members before that).
                    let hosted = replicas.contains(&me)
                        || target.is_some_and(|t| t.contains(&me))
                        || (target.is_some() && held);
                    if !hosted {
                        if topic.logs.contains_key(&index) {
                            moved_away.push(index);
                        }
                        continue;
                    }
                    if topic.logs.contains_key(&index) {
                        continue;
                    }
                    let tp = TopicPartition::new(&name, index);
                    let segments = recovered
                        .as_mut()
                        .filter(|(id, _)| *id == image.id)
                        .and_then(|(_, parts)| parts.remove(&index))
                        .filter(|segments: &Vec<Segment>| !segments.is_empty());
                    let log = match segments {
                        Some(segments) => {
                            if replicas.len() <= 1 {
                                producer_loads.push(tp.clone());
                            }
                            PartitionLog::recovered(tp.clone(), segments)
                        }
                        None => {
                            let (log, op) = PartitionLog::new(tp.clone());
                            ops.push(op);
                            log
                        }
                    };
                    if replicas.len() > 1 {
                        // A replica starts from its group's first membership and replays
                        // the changes since (a broker a move adds joins as their learner).
                        let origin = image.origins.get(index as usize).unwrap_or(replicas);
                        replicas_to_make.push((tp, origin.clone()));
                    }
                    topic.logs.insert(index, log);
                }
                // Reassigned elsewhere (the move finished): this copy goes.
                for index in moved_away {
                    info!(topic = %name, partition = index, "partition moved to other brokers; deleting the local copy");
                    topic.logs.remove(&index);
                    topic.raft.remove(&index);
                    ops.push(StorageOp::DeletePartition(TopicPartition::new(
                        &name, index,
                    )));
                }
                if fresh || grew {
                    let save = StorageOp::SaveTopic {
                        name: name.clone(),
                        record: topic.record(),
                    };
                    self.storage(save);
                }
                if fresh {
                    info!(topic = %name, partitions = image.replicas.len(), "topic created");
                }
                self.emit_log_ops(ops);
                for (tp, origin) in replicas_to_make {
                    self.add_replica(&tp, &origin);
                }
                for tp in producer_loads {
                    self.load_producers(tp);
                }
            }
        }
    }

    fn drop_local_topic(&mut self, name: &str) {
        let Some((name, topic)) = self.topics.remove_entry(name) else {
            return;
        };
        info!(topic = %name, "topic deleted");
        self.storage(StorageOp::RemoveTopic(name.clone()));
        for i in 0..topic.partition_count() {
            self.storage(StorageOp::DeletePartition(TopicPartition::new(&name, i)));
        }
        self.dirty_segments.retain(|s| s.partition.topic != name);
        self.dirty_partitions.retain(|p| p.topic != name);
    }
}
