//! ApiVersions, Metadata and the admin APIs: topics, partitions and configs.

use crate::time::Now;
use std::collections::BTreeMap;

use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{info, warn};
use uuid::Uuid;

use super::quorum::Waiting;
use super::{Broker, ConnectionId, ReplyTo};
use crate::cluster::records::{
    Change, PartitionAddition, PartitionAdditions, Replicas, TopicCreation, TopicCreations,
    TopicDeletions, TopicRef, CLUSTER_DEFAULT,
};
use crate::config::{dynamic_topic_key, TopicConfig, DYNAMIC_BROKER_CONFIGS, TOPIC_CONFIGS};
use crate::security::acl::{Operation, ResourceType};
use crate::topic::{is_valid_topic_name, Topic};

/// Most partitions one CreateTopics or CreatePartitions request may add (Kafka's limit).
const MAX_PARTITIONS_PER_REQUEST: i64 = 10_000;

/// The APIs this broker serves and the versions of each, as advertised in ApiVersions.
/// Every range is what the handlers implement, decoded by `kafka-protocol` or, below its
/// floors, by [`crate::legacy`] (Fetch and Produce stop before the versions that address
/// topics only by id).
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 0, 12),
    (ApiKey::ListOffsets, 0, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // v9 of OffsetCommit and OffsetFetch belong to KIP-848's new group protocol.
    (ApiKey::OffsetCommit, 0, 8),
    (ApiKey::OffsetFetch, 0, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    // Transactions as Kafka 3.x serves them to clients. The next versions belong to
    // KIP-890's second part (a new epoch per transaction) or are between brokers only.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    // After v0 of SaslHandshake the SASL tokens come bare, outside Kafka frames; clients
    // since KIP-152 use v1 and SaslAuthenticate (librdkafka 2.0 checks that v0 is served).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// The version range served for `key`, if the API is served at all.
pub(super) fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

pub(super) fn api_versions_response(unsupported_version: bool) -> ResponseKind {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    let error_code = if unsupported_version {
        ResponseError::UnsupportedVersion.code()
    } else {
        0
    };
    ResponseKind::ApiVersions(
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(api_keys),
    )
}

pub(super) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Replication factor of topics created without one (auto-created, or `-1`): three copies,
/// or as many as there are brokers in a smaller cluster.
const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// How long an auto-creating Metadata request waits for its topics.
const AUTO_CREATE_WAIT_MS: i64 = 5_000;

/// Kafka's config sources (DescribeConfigs v1+).
const DYNAMIC_TOPIC: i8 = 1;
const DYNAMIC_BROKER: i8 = 2;
const DYNAMIC_DEFAULT_BROKER: i8 = 3;
const STATIC_BROKER: i8 = 4;
const DEFAULT: i8 = 5;

impl Broker {
    pub(super) fn metadata(&mut self, now: Now, reply_to: ReplyTo, request: MetadataRequest) {
        let auto_create = request.allow_auto_topic_creation && self.config.auto_create_topics;
        let missing: Vec<String> = request
            .topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .filter(|n| is_valid_topic_name(n) && !self.topics.contains_key(n.as_str()))
            .filter(|n| self.may_create_topic(reply_to.conn, n))
            .collect();
        if !auto_create || missing.is_empty() {
            let response = self.metadata_response(reply_to.conn, request);
            return self.respond(reply_to, Some(response));
        }
        let mut topics = Vec::new();
        for name in &missing {
            let partitions = self.config.default_partitions;
            match self.place(partitions, self.default_replication()) {
                Ok(replicas) => {
                    info!(topic = %name, partitions, "auto-creating topic");
                    topics.push(self.topic_creation(name, BTreeMap::new(), replicas));
                }
                Err((_, message)) => warn!(topic = %name, %message, "cannot auto-create topic"),
            }
        }
        let change =
            (!topics.is_empty()).then_some(Change::CreateTopics(TopicCreations { topics }));
        let waiting = Waiting::Metadata(request);
        self.propose_for(now, reply_to, change, waiting, AUTO_CREATE_WAIT_MS);
    }

    /// May the client on `conn` create topic `name` (Create on the cluster or the topic)?
    pub(super) fn may_create_topic(&self, conn: ConnectionId, name: &str) -> bool {
        self.allowed_on_cluster(conn, Operation::Create)
            || self.allowed(conn, Operation::Create, ResourceType::Topic, name)
    }

    /// The Metadata answer for the client on `conn` from what this broker knows now: the
    /// brokers' addresses on its listener, and only the topics it may describe.
    pub(super) fn metadata_response(
        &self,
        conn: ConnectionId,
        request: MetadataRequest,
    ) -> ResponseKind {
        let image = self.controller.image();
        let listener = self
            .connections
            .get(&conn)
            .map_or("", |c| c.listener.as_str());
        let described =
            |name: &str| self.allowed(conn, Operation::Describe, ResourceType::Topic, name);
        // Only registered brokers: a broker appears once the quorum knows it, as in KRaft.
        let brokers: Vec<MetadataResponseBroker> = image
            .live_brokers()
            .map(|b| {
                let (host, port) = b.address(listener);
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(str_bytes(host))
                    .with_port(port)
                    .with_rack((!b.rack.is_empty()).then(|| str_bytes(&b.rack)))
            })
            .collect();
        // The active controller, once it is listed here: a client told of a controller it
        // cannot find waits for it until its next metadata refresh (librdkafka's admin
        // client waited out a 30 s CreateTopics so, just after start, while this broker had
        // yet to apply the controller's own registration). Any broker takes admin requests
        // (its proposals reach the active controller), so until then this broker names
        // itself, as KRaft brokers name a live broker; with no controller known, none.
        let listed = |id: &i32| brokers.iter().any(|b| b.node_id.0 == *id);
        let controller = match self.controller.leader() {
            Some(leader) if listed(&leader) => leader,
            Some(_) if listed(&self.config.broker_id) => self.config.broker_id,
            _ => -1,
        };
        let mut response = MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(str_bytes(&self.config.cluster_id)))
            .with_controller_id(BrokerId(controller));
        // v0 sends an empty list for "all topics"; later versions send null.
        let wanted: Option<Vec<_>> = request.topics.filter(|t| !t.is_empty());
        let Some(wanted) = wanted else {
            response.topics = self
                .topics
                .values()
                .filter(|t| described(&t.name))
                .map(|t| self.metadata_topic(t))
                .collect();
            return ResponseKind::Metadata(response);
        };
        let auto_create = request.allow_auto_topic_creation && self.config.auto_create_topics;
        for requested in wanted {
            let by_name = requested.name.as_ref().map(|n| n.0.to_string());
            let name = by_name.or_else(|| {
                self.topics
                    .values()
                    .find(|t| Uuid::from_bytes(t.id) == requested.topic_id)
                    .map(|t| t.name.to_string())
            });
            let Some(name) = name else {
                let mut t = MetadataResponseTopic::default()
                    .with_name(None)
                    .with_topic_id(requested.topic_id);
                t.error_code = ResponseError::UnknownTopicId.code();
                response.topics.push(t);
                continue;
            };
            let topic = match self.topics.get(name.as_str()) {
                _ if !described(&name) => MetadataResponseTopic::default()
                    .with_name(Some(TopicName(str_bytes(&name))))
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                Some(topic) => self.metadata_topic(topic),
                None => {
                    let error = if !is_valid_topic_name(&name) {
                        ResponseError::InvalidTopicException
                    } else if auto_create && self.may_create_topic(conn, &name) {
                        // Being created (or the creation timed out): the client retries.
                        ResponseError::LeaderNotAvailable
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    };
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(str_bytes(&name))))
                        .with_error_code(error.code())
                }
            };
            response.topics.push(topic);
        }
        ResponseKind::Metadata(response)
    }

    fn metadata_topic(&self, topic: &Topic) -> MetadataResponseTopic {
        let image = self.controller.image();
        let live = |b: &i32| image.brokers.get(b).is_some_and(|r| !r.fenced);
        let partitions = topic
            .replicas
            .iter()
            .enumerate()
            .map(|(i, replicas)| {
                // During a move, the brokers it moves to are replicas too (as in Kafka).
                let mut all = replicas.clone();
                if let Some(target) = topic.targets.get(&(i as i32)) {
                    all.extend(target.iter().filter(|b| !replicas.contains(b)));
                }
                let in_sync: Vec<BrokerId> = replicas
                    .iter()
                    .filter(|b| live(b))
                    .map(|&b| BrokerId(b))
                    .collect();
                let (leader, epoch) = self.partition_leader(topic, i as i32);
                let leader = leader.filter(|b| live(b));
                let error = match leader {
                    Some(_) => 0,
                    None => ResponseError::LeaderNotAvailable.code(),
                };
                MetadataResponsePartition::default()
                    .with_error_code(error)
                    .with_partition_index(i as i32)
                    .with_leader_id(BrokerId(leader.unwrap_or(-1)))
                    .with_leader_epoch(epoch)
                    .with_isr_nodes(in_sync)
                    .with_replica_nodes(all.iter().map(|&b| BrokerId(b)).collect())
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&topic.name))))
            .with_topic_id(Uuid::from_bytes(topic.id))
            .with_is_internal(&*topic.name == crate::group::OFFSETS_TOPIC)
            .with_partitions(partitions)
    }

    /// A new topic's definition with a fresh id.
    pub(super) fn topic_creation(
        &mut self,
        name: &str,
        configs: BTreeMap<String, String>,
        replicas: Vec<Vec<i32>>,
    ) -> TopicCreation {
        TopicCreation {
            name: name.to_string(),
            id: self.new_topic_id().to_vec(),
            configs,
            partitions: replicas
                .into_iter()
                .map(|brokers| Replicas {
                    brokers,
                    origin: Vec::new(),
                })
                .collect(),
            leaders: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// The replication factor of topics created without one.
    pub(super) fn default_replication(&self) -> usize {
        DEFAULT_REPLICATION_FACTOR.min(self.placeable_brokers().len().max(1))
    }

    /// Brokers replicas can be placed on: the registered ones (clients can reach them).
    fn placeable_brokers(&self) -> Vec<i32> {
        self.controller
            .image()
            .live_brokers()
            .map(|b| b.id)
            .collect()
    }

    /// Places `partitions` new partitions of `replication` replicas each: round robin over
    /// the brokers from a fresh starting point, so topics do not all lead on one broker.
    #[allow(clippy::type_complexity)]
    pub(super) fn place(
        &mut self,
        partitions: i32,
        replication: usize,
    ) -> Result<Vec<Vec<i32>>, (ResponseError, String)> {
        let brokers = self.placeable_brokers();
        if brokers.is_empty() {
            return Err((
                ResponseError::InvalidReplicationFactor,
                "no broker has registered with the controller yet; retry".into(),
            ));
        }
        if replication > brokers.len() {
            return Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication} is larger than the {} live brokers",
                    brokers.len()
                ),
            ));
        }
        self.id_counter += 1;
        let start = (self.id_seed ^ self.id_counter) as usize;
        Ok((0..partitions as usize)
            .map(|p| {
                (0..replication)
                    .map(|r| brokers[(start + p + r) % brokers.len()])
                    .collect()
            })
            .collect())
    }

    pub(super) fn create_topics(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: CreateTopicsRequest,
    ) {
        let mut response = CreateTopicsResponse::default();
        let mut creations = Vec::new();
        // As Kafka (KAFKA-17870): one request creates at most MAX_PARTITIONS_PER_REQUEST
        // partitions, checked before any is placed, so that a count of 2^31 - 1 costs
        // nothing but the answer.
        let asked: i64 = (request.topics.iter())
            .map(|t| match (t.assignments.len(), t.num_partitions) {
                (0, -1) => i64::from(self.config.default_partitions),
                (0, n) => i64::from(n.max(0)),
                (n, _) => n as i64,
            })
            .sum();
        let too_many = asked > MAX_PARTITIONS_PER_REQUEST;
        for creatable in request.topics {
            let mut result = CreatableTopicResult::default()
                .with_name(creatable.name.clone())
                .with_error_message(None)
                .with_configs(None);
            let checked = match too_many {
                _ if !self.may_create_topic(reply_to.conn, &creatable.name.0) => Err((
                    ResponseError::TopicAuthorizationFailed,
                    "not allowed to create it".into(),
                )),
                true => Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "{asked} partitions in one request; at most {MAX_PARTITIONS_PER_REQUEST}"
                    ),
                )),
                false => self.check_creatable(&creatable),
            };
            match checked {
                Err((error, message)) => {
                    result.error_code = error.code();
                    result.error_message = Some(str_bytes(&message));
                }
                Ok((replicas, overrides, config)) => {
                    result.num_partitions = replicas.len() as i32;
                    result.replication_factor = replicas.first().map_or(0, |r| r.len() as i16);
                    // v5 added the effective configs to the response.
                    result.configs = (reply_to.version >= 5).then(|| {
                        TOPIC_CONFIGS
                            .iter()
                            .filter_map(|spec| {
                                let key = spec.name;
                                let value = config.get(key)?;
                                let source = if overrides.contains_key(key) { 1 } else { 5 };
                                Some(
                                    CreatableTopicConfigs::default()
                                        .with_name(str_bytes(key))
                                        .with_value(Some(str_bytes(&value)))
                                        .with_config_source(source),
                                )
                            })
                            .collect()
                    });
                    if !request.validate_only {
                        info!(topic = %creatable.name.0, partitions = replicas.len(), "creating topic");
                        let creation = self.topic_creation(&creatable.name.0, overrides, replicas);
                        result.topic_id = Uuid::from_slice(&creation.id).unwrap_or_default();
                        creations.push(creation);
                    }
                }
            }
            response.topics.push(result);
        }
        let change = (!creations.is_empty())
            .then_some(Change::CreateTopics(TopicCreations { topics: creations }));
        let waiting = Waiting::CreateTopics(response);
        self.propose_for(
            now,
            reply_to,
            change,
            waiting,
            i64::from(request.timeout_ms),
        );
    }

    /// Checks a CreateTopics entry; returns its replicas, overrides and config.
    #[allow(clippy::type_complexity)]
    fn check_creatable(
        &mut self,
        t: &CreatableTopic,
    ) -> Result<(Vec<Vec<i32>>, BTreeMap<String, String>, TopicConfig), (ResponseError, String)>
    {
        let name = &*t.name.0;
        if !is_valid_topic_name(name) {
            return Err((
                ResponseError::InvalidTopicException,
                format!("invalid topic name {name:?}"),
            ));
        }
        if self.topics.contains_key(name) {
            return Err((
                ResponseError::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ));
        }
        let mut overrides = BTreeMap::new();
        for c in &t.configs {
            let Some(value) = &c.value else { continue };
            overrides.insert(c.name.to_string(), value.to_string());
        }
        let config = self
            .topic_defaults
            .with_overrides(&overrides)
            .map_err(|e| (ResponseError::InvalidConfig, e.0))?;
        let replicas = if t.assignments.is_empty() {
            let partitions = match t.num_partitions {
                -1 => self.config.default_partitions,
                n if n >= 1 => n,
                n => return Err((ResponseError::InvalidPartitions, format!("{n} partitions"))),
            };
            let replication = match t.replication_factor {
                -1 => self.default_replication(),
                n if n >= 1 => n as usize,
                n => {
                    return Err((
                        ResponseError::InvalidReplicationFactor,
                        format!("replication factor {n}"),
                    ))
                }
            };
            self.place(partitions, replication)?
        } else {
            let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
            indexes.sort_unstable();
            if !indexes.iter().enumerate().all(|(i, p)| *p == i as i32) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "partition indexes must be 0..n".into(),
                ));
            }
            let mut assignments: Vec<_> = t.assignments.iter().collect();
            assignments.sort_by_key(|a| a.partition_index);
            let replicas: Vec<Vec<i32>> = assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect();
            self.check_assignment(&replicas)?;
            replicas
        };
        Ok((replicas, overrides, config))
    }

    /// Checks replica lists given by a client.
    fn check_assignment(&self, replicas: &[Vec<i32>]) -> Result<(), (ResponseError, String)> {
        let brokers = self.placeable_brokers();
        for r in replicas {
            let mut unique = r.clone();
            unique.sort_unstable();
            unique.dedup();
            if r.is_empty() || unique.len() != r.len() || r.iter().any(|b| !brokers.contains(b)) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicas {r:?}: want distinct brokers of {brokers:?}"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn delete_topics(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: DeleteTopicsRequest,
    ) {
        let by_name = request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()));
        let by_state = request.topics.into_iter().map(|t| (t.name, t.topic_id));
        let mut response = DeleteTopicsResponse::default();
        let mut deletions = Vec::new();
        for (name, id) in by_name.chain(by_state) {
            let found = match &name {
                Some(n) => self.topics.get(&*n.0),
                None => self.topics.values().find(|t| Uuid::from_bytes(t.id) == id),
            };
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone())
                .with_topic_id(id);
            let deletable = |t: &Topic| {
                self.allowed(
                    reply_to.conn,
                    Operation::Delete,
                    ResourceType::Topic,
                    &t.name,
                )
            };
            match found {
                None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(topic) if !deletable(topic) => {
                    result.error_code = ResponseError::TopicAuthorizationFailed.code()
                }
                Some(topic) => {
                    info!(topic = %topic.name, "deleting topic");
                    result.name = Some(TopicName(str_bytes(&topic.name)));
                    result.topic_id = Uuid::from_bytes(topic.id);
                    deletions.push(TopicRef {
                        name: topic.name.to_string(),
                        id: topic.id.to_vec(),
                    });
                }
            }
            response.responses.push(result);
        }
        let change = (!deletions.is_empty())
            .then_some(Change::DeleteTopics(TopicDeletions { topics: deletions }));
        let waiting = Waiting::DeleteTopics(response);
        self.propose_for(
            now,
            reply_to,
            change,
            waiting,
            i64::from(request.timeout_ms),
        );
    }

    pub(super) fn create_partitions(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: CreatePartitionsRequest,
    ) {
        let mut response = CreatePartitionsResponse::default();
        let mut additions = Vec::new();
        let asked: i64 = (request.topics.iter())
            .map(|t| {
                let current = self
                    .topics
                    .get(&*t.name.0)
                    .map_or(0, |t| t.partition_count());
                i64::from(t.count) - i64::from(current)
            })
            .filter(|n| *n > 0)
            .sum();
        for t in request.topics {
            let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let checked = match asked > MAX_PARTITIONS_PER_REQUEST {
                _ if !self.allowed(reply_to.conn, Operation::Alter, ResourceType::Topic, &t.name.0) => {
                    Err((ResponseError::TopicAuthorizationFailed, "not allowed to alter it".into()))
                }
                true => Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "{asked} new partitions in one request; at most {MAX_PARTITIONS_PER_REQUEST}"
                    ),
                )),
                false => self.check_partition_growth(&t),
            };
            match checked {
                Err((error, message)) => {
                    result.error_code = error.code();
                    result.error_message = Some(str_bytes(&message));
                }
                Ok(addition) => {
                    info!(topic = %t.name.0, count = t.count, "adding partitions");
                    additions.push(addition);
                }
            }
            response.results.push(result);
        }
        let change = (!additions.is_empty() && !request.validate_only).then_some(
            Change::AddPartitions(PartitionAdditions { topics: additions }),
        );
        let waiting = Waiting::CreatePartitions(response);
        self.propose_for(
            now,
            reply_to,
            change,
            waiting,
            i64::from(request.timeout_ms),
        );
    }

    fn check_partition_growth(
        &mut self,
        t: &CreatePartitionsTopic,
    ) -> Result<PartitionAddition, (ResponseError, String)> {
        let topic = self.topics.get(&*t.name.0).ok_or((
            ResponseError::UnknownTopicOrPartition,
            "no such topic".to_string(),
        ))?;
        let (current, id) = (topic.partition_count(), topic.id);
        let replication = topic.replicas.first().map_or(1, Vec::len);
        if t.count <= current {
            return Err((
                ResponseError::InvalidPartitions,
                format!("topic has {current} partitions; the count can only grow"),
            ));
        }
        let replicas = match &t.assignments {
            Some(assignments) => {
                let replicas: Vec<Vec<i32>> = assignments
                    .iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect();
                if replicas.len() as i32 != t.count - current {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "{} assignments for {} new partitions",
                            replicas.len(),
                            t.count - current
                        ),
                    ));
                }
                self.check_assignment(&replicas)?;
                replicas
            }
            None => self.place(t.count - current, replication)?,
        };
        Ok(PartitionAddition {
            topic: Some(TopicRef {
                name: t.name.0.to_string(),
                id: id.to_vec(),
            }),
            partitions: replicas
                .into_iter()
                .map(|brokers| Replicas {
                    brokers,
                    origin: Vec::new(),
                })
                .collect(),
        })
    }

    pub(super) fn describe_configs(&self, request: DescribeConfigsRequest) -> ResponseKind {
        const TOPIC: i8 = 2;
        const BROKER: i8 = 4;
        let mut response = DescribeConfigsResponse::default();
        for resource in request.resources {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries: Vec<(String, String, i8)> = match resource.resource_type {
                TOPIC => match self.topics.get(&*resource.resource_name) {
                    Some(topic) => TOPIC_CONFIGS
                        .iter()
                        .filter_map(|spec| {
                            let key = spec.name;
                            let source = if topic.overrides.contains_key(key) {
                                DYNAMIC_TOPIC
                            } else {
                                self.dynamic_source(key).unwrap_or(DEFAULT)
                            };
                            Some((key.to_string(), topic.config.get(key)?, source))
                        })
                        .collect(),
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        Vec::new()
                    }
                },
                BROKER if resource.resource_name.is_empty() => {
                    // The cluster-wide defaults alone, as Kafka describes them.
                    let image = self.controller.image();
                    (image
                        .broker_configs
                        .get(&CLUSTER_DEFAULT)
                        .into_iter()
                        .flatten())
                    .map(|(k, v)| (k.clone(), v.clone(), DYNAMIC_DEFAULT_BROKER))
                    .collect()
                }
                // A broker describes its own configs (clients send to the broker named).
                BROKER
                    if resource.resource_name.parse::<i32>().ok()
                        == Some(self.config.broker_id) =>
                {
                    self.broker_config_entries()
                }
                BROKER => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message = Some(str_bytes(&format!(
                        "broker {} describes broker {} or every broker (an empty name), not {:?}",
                        self.config.broker_id,
                        self.config.broker_id,
                        resource.resource_name.as_str()
                    )));
                    Vec::new()
                }
                _ => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message =
                        Some(str_bytes("only TOPIC and BROKER resources are supported"));
                    Vec::new()
                }
            };
            let keys = resource.configuration_keys.as_ref();
            result.configs = entries
                .into_iter()
                .filter(|(name, _, _)| keys.is_none_or(|k| k.iter().any(|k| **k == **name)))
                .map(|(name, value, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&name))
                        .with_value(Some(str_bytes(&value)))
                        .with_config_source(source)
                        // Topic configs can all be changed (AlterConfigs); broker ones
                        // only where Kafka changes them at run time.
                        .with_read_only(
                            resource.resource_type == BROKER && dynamic_topic_key(&name).is_none(),
                        )
                })
                .collect();
            response.results.push(result);
        }
        ResponseKind::DescribeConfigs(response)
    }

    /// Where the value of topic key `key` comes from when a dynamic broker config sets its
    /// default: this broker's own, or every broker's.
    fn dynamic_source(&self, key: &str) -> Option<i8> {
        let (broker_key, _) = DYNAMIC_BROKER_CONFIGS.iter().find(|(_, t)| *t == key)?;
        let image = self.controller.image();
        let set = |scope: i32| image.broker_configs.get(&scope)?.get(*broker_key);
        match (set(self.config.broker_id), set(CLUSTER_DEFAULT)) {
            (Some(_), _) => Some(DYNAMIC_BROKER),
            (None, Some(_)) => Some(DYNAMIC_DEFAULT_BROKER),
            (None, None) => None,
        }
    }

    fn broker_config_entries(&self) -> Vec<(String, String, i8)> {
        let d = &self.topic_defaults;
        let c = &self.config;
        [
            (
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
            ),
            ("broker.id", c.broker_id.to_string()),
            ("node.id", c.broker_id.to_string()),
            ("broker.rack", c.cluster.rack.clone()),
            (
                "offsets.topic.num.partitions",
                c.groups.offsets_partitions.to_string(),
            ),
            (
                "transaction.state.log.num.partitions",
                c.txns.partitions.to_string(),
            ),
            ("num.partitions", c.default_partitions.to_string()),
        ]
        .into_iter()
        // An unset rack is left out, as Kafka leaves it without a value.
        .filter(|(k, v)| *k != "broker.rack" || !v.is_empty())
        .map(|(k, v)| (k.to_string(), v, STATIC_BROKER))
        .chain(
            DYNAMIC_BROKER_CONFIGS
                .iter()
                .filter_map(|(broker_key, topic_key)| {
                    let source = self.dynamic_source(topic_key).unwrap_or(STATIC_BROKER);
                    Some((broker_key.to_string(), d.get(topic_key)?, source))
                }),
        )
        .collect()
    }
}
