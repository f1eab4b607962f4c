//! IncrementalAlterConfigs and AlterConfigs: topic and broker configs changed at run time.
//!
//! A change is checked here against the same rules as CreateTopics' configs, then written
//! to the metadata quorum as the topic's whole new set of overrides, so every broker applies
//! the same set in the same order. Broker configs change as in Kafka: those that are
//! defaults of topic configs ([`DYNAMIC_BROKER_CONFIGS`]), for one broker or for all (a
//! BROKER resource named by its id, or with an empty name); the rest are read-only.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyResult, AlterConfigsResponse,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;
use tracing::info;

use super::admin::str_bytes;
use super::quorum::Waiting;
use super::{Broker, ReplyTo};
use crate::cluster::records::{
    BrokerConfigChange, Change, TopicConfigChange, TopicConfigChanges, TopicRef, CLUSTER_DEFAULT,
};
use crate::config::{dynamic_topic_key, ConfigKind, DYNAMIC_BROKER_CONFIGS, TOPIC_CONFIGS};
use crate::security::acl::{Operation, ResourceType};
use crate::time::Now;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// What one resource of a request changes.
enum Altered {
    Topic(TopicConfigChange),
    Broker(BrokerConfigChange),
}

/// One change of one key, as either request spells it.
enum Op {
    Set(String),
    Delete,
    Append(String),
    Subtract(String),
}

/// A resource of either request: its type, name, and each key with its change (`None`
/// for an operation the protocol does not define).
type Resource = (i8, String, Vec<(String, Option<Op>)>);

/// The outcome of one resource, until the answer is sent.
#[derive(Debug, Clone)]
pub(super) struct ResourceResult {
    pub resource_type: i8,
    pub name: String,
    pub error: Option<(ResponseError, String)>,
}

/// A prepared answer to either request.
#[derive(Debug, Clone)]
pub(super) struct AlterAnswer {
    pub incremental: bool,
    pub results: Vec<ResourceResult>,
}

impl AlterAnswer {
    /// The response, with `refused(name)` filling in what the quorum refused.
    pub fn response(mut self, refused: impl Fn(&str) -> Option<ResponseError>) -> ResponseKind {
        for r in self.results.iter_mut().filter(|r| r.error.is_none()) {
            if let Some(e) = refused(&r.name) {
                r.error = Some((e, "the topic is gone".to_string()));
            }
        }
        let parts = self.results.into_iter().map(|r| {
            let (code, message) = r
                .error
                .map_or((0, None), |(e, m)| (e.code(), Some(str_bytes(&m))));
            (r.resource_type, str_bytes(&r.name), code, message)
        });
        if self.incremental {
            let responses = parts
                .map(|(kind, name, code, message)| {
                    AlterConfigsResourceResponse::default()
                        .with_resource_type(kind)
                        .with_resource_name(name)
                        .with_error_code(code)
                        .with_error_message(message)
                })
                .collect();
            ResponseKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsResponse::default().with_responses(responses),
            )
        } else {
            let responses = parts
                .map(|(kind, name, code, message)| {
                    LegacyResult::default()
                        .with_resource_type(kind)
                        .with_resource_name(name)
                        .with_error_code(code)
                        .with_error_message(message)
                })
                .collect();
            ResponseKind::AlterConfigs(AlterConfigsResponse::default().with_responses(responses))
        }
    }

    /// Sets `error` on every resource not refused already.
    pub fn fail_all(&mut self, error: ResponseError) {
        for r in self.results.iter_mut().filter(|r| r.error.is_none()) {
            r.error = Some((error, format!("{error:?}")));
        }
    }
}

impl Broker {
    pub(super) fn incremental_alter_configs(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: IncrementalAlterConfigsRequest,
    ) {
        let resources = request.resources.into_iter().map(|r| {
            let ops = r.configs.into_iter().map(|c| {
                let value = c.value.map(|v| v.to_string()).unwrap_or_default();
                let op = match c.config_operation {
                    0 => Some(Op::Set(value)),
                    1 => Some(Op::Delete),
                    2 => Some(Op::Append(value)),
                    3 => Some(Op::Subtract(value)),
                    _ => None,
                };
                (c.name.to_string(), op)
            });
            (r.resource_type, r.resource_name.to_string(), ops.collect())
        });
        let resources = resources.collect();
        self.alter_configs_as(now, reply_to, true, resources, request.validate_only);
    }

    pub(super) fn alter_configs(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: AlterConfigsRequest,
    ) {
        let resources = request.resources.into_iter().map(|r| {
            let ops = r.configs.into_iter().map(|c| {
                let op = c.value.map(|v| Op::Set(v.to_string()));
                (c.name.to_string(), Some(op.unwrap_or(Op::Delete)))
            });
            (r.resource_type, r.resource_name.to_string(), ops.collect())
        });
        let resources = resources.collect();
        self.alter_configs_as(now, reply_to, false, resources, request.validate_only);
    }

    /// Checks each resource's changes and proposes the topics' new overrides.
    /// `incremental` is false for AlterConfigs, which replaces a topic's overrides whole.
    fn alter_configs_as(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        incremental: bool,
        resources: Vec<Resource>,
        validate_only: bool,
    ) {
        let mut results = Vec::new();
        let mut changes = Vec::new();
        let mut broker_changes = Vec::new();
        let count = |name: &str| resources.iter().filter(|(_, n, _)| n == name).count();
        for (resource_type, name, ops) in &resources {
            let outcome = match *resource_type {
                _ if count(name) > 1 => Err((
                    ResponseError::InvalidRequest,
                    format!("{name} is named more than once"),
                )),
                TOPIC
                    if !self.allowed(
                        reply_to.conn,
                        Operation::AlterConfigs,
                        ResourceType::Topic,
                        name,
                    ) =>
                {
                    Err((ResponseError::TopicAuthorizationFailed, String::new()))
                }
                _ if *resource_type != TOPIC
                    && !self.allowed_on_cluster(reply_to.conn, Operation::AlterConfigs) =>
                {
                    Err((ResponseError::ClusterAuthorizationFailed, String::new()))
                }
                TOPIC => self
                    .topic_change(name, ops, incremental)
                    .map(Altered::Topic),
                BROKER => self
                    .broker_change(name, ops, incremental)
                    .map(Altered::Broker),
                other => Err((
                    ResponseError::InvalidRequest,
                    format!("resource type {other} has no configs to change"),
                )),
            };
            let error = match outcome {
                Ok(Altered::Topic(change)) => {
                    info!(topic = %name, configs = ?change.configs, validate_only, "altering topic configs");
                    changes.push(change);
                    None
                }
                Ok(Altered::Broker(change)) => {
                    info!(broker = change.broker, configs = ?change.configs, validate_only, "altering dynamic broker configs");
                    broker_changes.push(change);
                    None
                }
                Err(e) => Some(e),
            };
            results.push(ResourceResult {
                resource_type: *resource_type,
                name: name.clone(),
                error,
            });
        }
        let any = !changes.is_empty() || !broker_changes.is_empty();
        let change =
            (any && !validate_only).then_some(Change::AlterTopicConfigs(TopicConfigChanges {
                topics: changes,
                brokers: broker_changes,
            }));
        let waiting = Waiting::AlterConfigs(AlterAnswer {
            incremental,
            results,
        });
        self.propose_for(now, reply_to, change, waiting, 30_000);
    }

    /// The topic's new overrides after `ops`, checked as CreateTopics checks them.
    fn topic_change(
        &self,
        name: &str,
        ops: &[(String, Option<Op>)],
        incremental: bool,
    ) -> Result<TopicConfigChange, (ResponseError, String)> {
        let topic = self.topics.get(name).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("no topic {name}"),
        ))?;
        let base = match incremental {
            true => topic.overrides.clone(),
            false => BTreeMap::new(),
        };
        let is_list = |key: &str| {
            let spec = TOPIC_CONFIGS
                .iter()
                .find(|k| k.name == key)
                .ok_or_else(|| {
                    (
                        ResponseError::InvalidConfig,
                        format!("unknown topic config {key}"),
                    )
                })?;
            Ok(matches!(spec.kind, ConfigKind::ListOf(_)) || key.ends_with(".throttled.replicas"))
        };
        let current = |key: &str| topic.config.get(key).unwrap_or_default();
        let overrides = apply_ops(base, ops, is_list, current)?;
        self.topic_defaults
            .with_overrides(&overrides)
            .map_err(|e| (ResponseError::InvalidConfig, e.0))?;
        Ok(TopicConfigChange {
            topic: Some(TopicRef {
                name: name.to_string(),
                id: topic.id.to_vec(),
            }),
            configs: overrides,
        })
    }

    /// The new dynamic configs of broker scope `name` (a broker id, or empty: every broker)
    /// after `ops`. Only [`DYNAMIC_BROKER_CONFIGS`] change at run time, as in Kafka; the
    /// rest are read-only (INVALID_REQUEST, as Kafka answers).
    fn broker_change(
        &self,
        name: &str,
        ops: &[(String, Option<Op>)],
        incremental: bool,
    ) -> Result<BrokerConfigChange, (ResponseError, String)> {
        let broker = match name {
            "" => CLUSTER_DEFAULT,
            id => id
                .parse::<i32>()
                .ok()
                .filter(|id| self.controller.image().brokers.contains_key(id))
                .ok_or((ResponseError::InvalidRequest, format!("no broker {id:?}")))?,
        };
        let image = self.controller.image();
        let base = match incremental {
            true => image
                .broker_configs
                .get(&broker)
                .cloned()
                .unwrap_or_default(),
            false => BTreeMap::new(),
        };
        let is_list = |key: &str| match dynamic_topic_key(key) {
            // A list where the topic key it defaults is one.
            Some(topic_key) => Ok(TOPIC_CONFIGS
                .iter()
                .any(|k| k.name == topic_key && matches!(k.kind, ConfigKind::ListOf(_)))),
            None => Err((
                ResponseError::InvalidRequest,
                format!(
                    "{key} cannot change at run time: set it in the config file or on the \
                     command line (these can: {})",
                    DYNAMIC_BROKER_CONFIGS
                        .iter()
                        .map(|(b, _)| *b)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        };
        let current = |key: &str| {
            let topic_key = dynamic_topic_key(key).unwrap_or_default();
            self.topic_defaults.get(topic_key).unwrap_or_default()
        };
        let configs = apply_ops(base, ops, is_list, current)?;
        self.config
            .topic_defaults
            .with_broker_configs(&configs)
            .map_err(|e| (ResponseError::InvalidConfig, e.0))?;
        Ok(BrokerConfigChange { broker, configs })
    }
}

/// `base` after `ops`: SET and DELETE on any key `is_list` knows, APPEND and SUBTRACT on
/// lists (whose value now is `current`).
fn apply_ops(
    mut configs: BTreeMap<String, String>,
    ops: &[(String, Option<Op>)],
    is_list: impl Fn(&str) -> Result<bool, (ResponseError, String)>,
    current: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, String>, (ResponseError, String)> {
    let invalid = |m: String| (ResponseError::InvalidConfig, m);
    let items = |v: &str| -> Vec<String> {
        (v.split(',').map(str::trim))
            .filter(|i| !i.is_empty())
            .map(String::from)
            .collect()
    };
    for (key, op) in ops {
        let list = is_list(key)?;
        match op {
            None => return Err(invalid(format!("unknown operation on {key}"))),
            Some(Op::Set(value)) => {
                configs.insert(key.clone(), value.clone());
            }
            Some(Op::Delete) => {
                configs.remove(key);
            }
            Some(Op::Append(_) | Op::Subtract(_)) if !list => {
                return Err(invalid(format!(
                    "{key} is not a list: it takes SET and DELETE"
                )))
            }
            Some(Op::Append(value)) => {
                let now = configs.get(key).cloned().unwrap_or_else(|| current(key));
                let mut list = items(&now);
                for item in items(value) {
                    if !list.contains(&item) {
                        list.push(item);
                    }
                }
                configs.insert(key.clone(), list.join(","));
            }
            Some(Op::Subtract(value)) => {
                let now = configs.get(key).cloned().unwrap_or_else(|| current(key));
                let gone = items(value);
                let list: Vec<String> = items(&now)
                    .into_iter()
                    .filter(|i| !gone.contains(i))
                    .collect();
                configs.insert(key.clone(), list.join(","));
            }
        }
    }
    Ok(configs)
}
