//! ApiVersions, Metadata and the admin APIs: topics, partitions and configs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
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
use tracing::info;
use uuid::Uuid;

use super::Broker;
use crate::canary::{is_planted, Canary};
use crate::config::{TopicConfig, TOPIC_CONFIG_KEYS};
use crate::log::PartitionLog;
use crate::storage::{StorageOp, TopicPartition};
use crate::topic::{is_valid_topic_name, Topic};

/// The APIs this broker serves and the versions of each, as advertised in ApiVersions.
/// Every range is within what `kafka-protocol` can decode and what the handlers implement
/// (Fetch and Produce stop before the versions that address topics only by id).
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
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

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Broker {
    pub(super) fn metadata(&mut self, request: MetadataRequest) -> ResponseKind {
        let me = BrokerId(self.config.broker_id);
        let broker = MetadataResponseBroker::default()
            .with_node_id(me)
            .with_host(str_bytes(&self.config.advertised_host))
            .with_port(self.config.advertised_port);
        let mut response = MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(str_bytes(&self.config.cluster_id)))
            .with_controller_id(me);
        // v0 sends an empty list for "all topics"; later versions send null.
        let wanted: Option<Vec<_>> = request.topics.filter(|t| !t.is_empty());
        let Some(wanted) = wanted else {
            response.topics = self
                .topics
                .values()
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
            if !self.topics.contains_key(name.as_str()) && auto_create && is_valid_topic_name(&name)
            {
                let partitions = self.config.default_partitions;
                let config = self.config.topic_defaults.clone();
                info!(topic = %name, partitions, "auto-creating topic");
                self.create_topic(&name, partitions, BTreeMap::new(), config);
            }
            let topic = match self.topics.get(name.as_str()) {
                Some(topic) => self.metadata_topic(topic),
                None => {
                    let error = if is_valid_topic_name(&name) {
                        ResponseError::UnknownTopicOrPartition
                    } else {
                        ResponseError::InvalidTopicException
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
        let me = BrokerId(self.config.broker_id);
        let partitions = (0..topic.partitions.len() as i32)
            .map(|i| {
                MetadataResponsePartition::default()
                    .with_partition_index(i)
                    .with_leader_id(me)
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![me])
                    .with_isr_nodes(vec![me])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&topic.name))))
            .with_topic_id(Uuid::from_bytes(topic.id))
            .with_partitions(partitions)
    }

    /// Creates a topic that does not exist yet and records it durably.
    fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
        config: TopicConfig,
    ) -> [u8; 16] {
        let name: Arc<str> = Arc::from(name);
        let id = self.new_topic_id();
        let mut topic = Topic {
            name: name.clone(),
            id,
            overrides,
            config,
            partitions: Vec::new(),
        };
        let mut ops = Vec::new();
        add_partitions(&mut topic, partitions, &mut ops);
        if !is_planted(Canary::VolatileTopics) {
            self.storage(StorageOp::SaveTopic {
                name: name.clone(),
                record: topic.record(),
            });
        }
        self.emit_log_ops(ops);
        self.topics.insert(name, topic);
        id
    }

    pub(super) fn create_topics(
        &mut self,
        version: i16,
        request: CreateTopicsRequest,
    ) -> ResponseKind {
        let mut response = CreateTopicsResponse::default();
        for creatable in request.topics {
            let mut result = CreatableTopicResult::default()
                .with_name(creatable.name.clone())
                .with_error_message(None)
                .with_configs(None);
            match self.check_creatable(&creatable) {
                Err((error, message)) => {
                    result.error_code = error.code();
                    result.error_message = Some(str_bytes(&message));
                }
                Ok((partitions, overrides, config)) => {
                    result.num_partitions = partitions;
                    result.replication_factor = 1;
                    // v5 added the effective configs to the response.
                    result.configs = (version >= 5).then(|| {
                        TOPIC_CONFIG_KEYS
                            .iter()
                            .filter_map(|key| {
                                let value = config.get(key)?;
                                let source = if overrides.contains_key(*key) { 1 } else { 5 };
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
                        info!(topic = %creatable.name.0, partitions, "creating topic");
                        let id =
                            self.create_topic(&creatable.name.0, partitions, overrides, config);
                        result.topic_id = Uuid::from_bytes(id);
                    }
                }
            }
            response.topics.push(result);
        }
        ResponseKind::CreateTopics(response)
    }

    /// Checks a CreateTopics entry; returns its partition count, overrides and config.
    #[allow(clippy::type_complexity)]
    fn check_creatable(
        &self,
        t: &CreatableTopic,
    ) -> Result<(i32, BTreeMap<String, String>, TopicConfig), (ResponseError, String)> {
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
        let partitions = if t.assignments.is_empty() {
            if t.replication_factor != -1 && t.replication_factor != 1 {
                return Err((
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "replication factor {} is larger than the 1 available broker",
                        t.replication_factor
                    ),
                ));
            }
            match t.num_partitions {
                -1 => self.config.default_partitions,
                n if n >= 1 => n,
                n => return Err((ResponseError::InvalidPartitions, format!("{n} partitions"))),
            }
        } else {
            let me = BrokerId(self.config.broker_id);
            let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
            indexes.sort_unstable();
            let dense = indexes.iter().enumerate().all(|(i, p)| *p == i as i32);
            if !dense || t.assignments.iter().any(|a| a.broker_ids != [me]) {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "replicas must be [this broker]".into(),
                ));
            }
            t.assignments.len() as i32
        };
        let mut overrides = BTreeMap::new();
        for c in &t.configs {
            let Some(value) = &c.value else { continue };
            overrides.insert(c.name.to_string(), value.to_string());
        }
        let config = self
            .config
            .topic_defaults
            .with_overrides(&overrides)
            .map_err(|e| (ResponseError::InvalidConfig, e.0))?;
        Ok((partitions, overrides, config))
    }

    pub(super) fn delete_topics(&mut self, request: DeleteTopicsRequest) -> ResponseKind {
        let by_name = request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()));
        let by_state = request.topics.into_iter().map(|t| (t.name, t.topic_id));
        let mut response = DeleteTopicsResponse::default();
        for (name, id) in by_name.chain(by_state) {
            let found = match &name {
                Some(n) => self.topics.get(&*n.0).map(|t| t.name.clone()),
                None => self
                    .topics
                    .values()
                    .find(|t| Uuid::from_bytes(t.id) == id)
                    .map(|t| t.name.clone()),
            };
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone())
                .with_topic_id(id);
            match found {
                None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(found) => {
                    let topic = self.topics.remove(&found).expect("found above");
                    info!(topic = %found, "deleting topic");
                    result.name = Some(TopicName(str_bytes(&found)));
                    result.topic_id = Uuid::from_bytes(topic.id);
                    self.storage(StorageOp::RemoveTopic(found.clone()));
                    for i in 0..topic.partitions.len() as i32 {
                        self.storage(StorageOp::DeletePartition(TopicPartition::new(&found, i)));
                    }
                    self.dirty_segments.retain(|s| s.partition.topic != found);
                    self.dirty_partitions.retain(|p| p.topic != found);
                }
            }
            response.responses.push(result);
        }
        ResponseKind::DeleteTopics(response)
    }

    pub(super) fn create_partitions(&mut self, request: CreatePartitionsRequest) -> ResponseKind {
        let mut response = CreatePartitionsResponse::default();
        for t in request.topics {
            let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let me = BrokerId(self.config.broker_id);
            let error = match self.topics.get(&*t.name.0) {
                None => Some((
                    ResponseError::UnknownTopicOrPartition,
                    "no such topic".to_string(),
                )),
                Some(topic) if t.count <= topic.partitions.len() as i32 => Some((
                    ResponseError::InvalidPartitions,
                    format!(
                        "topic has {} partitions; the count can only grow",
                        topic.partitions.len()
                    ),
                )),
                Some(_)
                    if t.assignments
                        .as_ref()
                        .is_some_and(|a| a.iter().any(|a| a.broker_ids != [me])) =>
                {
                    Some((
                        ResponseError::InvalidReplicaAssignment,
                        "replicas must be [this broker]".into(),
                    ))
                }
                Some(_) => None,
            };
            if let Some((error, message)) = error {
                result.error_code = error.code();
                result.error_message = Some(str_bytes(&message));
            } else if !request.validate_only {
                let topic = self.topics.get_mut(&*t.name.0).expect("checked above");
                let mut ops = Vec::new();
                add_partitions(topic, t.count - topic.partitions.len() as i32, &mut ops);
                let save = StorageOp::SaveTopic {
                    name: topic.name.clone(),
                    record: topic.record(),
                };
                info!(topic = %topic.name, count = t.count, "adding partitions");
                self.storage(save);
                self.emit_log_ops(ops);
            }
            response.results.push(result);
        }
        ResponseKind::CreatePartitions(response)
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
                    Some(topic) => TOPIC_CONFIG_KEYS
                        .iter()
                        .filter_map(|key| {
                            let source = if topic.overrides.contains_key(*key) {
                                1
                            } else {
                                5
                            };
                            Some((key.to_string(), topic.config.get(key)?, source))
                        })
                        .collect(),
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        Vec::new()
                    }
                },
                BROKER => self.broker_config_entries(),
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
                        .with_read_only(source != 1)
                })
                .collect();
            response.results.push(result);
        }
        ResponseKind::DescribeConfigs(response)
    }

    fn broker_config_entries(&self) -> Vec<(String, String, i8)> {
        const STATIC: i8 = 4;
        let d = &self.config.topic_defaults;
        let c = &self.config;
        [
            (
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
            ),
            ("broker.id", c.broker_id.to_string()),
            ("log.retention.bytes", d.retention_bytes.to_string()),
            ("log.retention.ms", d.retention_ms.to_string()),
            ("log.segment.bytes", d.segment_bytes.to_string()),
            ("log.roll.ms", d.segment_ms.to_string()),
            ("message.max.bytes", d.max_message_bytes.to_string()),
            ("num.partitions", c.default_partitions.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v, STATIC))
        .collect()
    }
}

/// Adds `count` empty partitions to `topic`.
fn add_partitions(topic: &mut Topic, count: i32, ops: &mut Vec<StorageOp>) {
    for _ in 0..count {
        let index = topic.partitions.len() as i32;
        let (log, op) = PartitionLog::new(TopicPartition::new(&topic.name, index));
        topic.partitions.push(log);
        ops.push(op);
    }
}
