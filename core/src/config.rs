//! Broker defaults and per-topic overrides, under Kafka's own config names.

use std::collections::BTreeMap;

/// How long the broker may hold appended data before it is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append is fsynced before it counts as committed; fsyncs are grouped across
    /// requests and partitions. The safe default.
    GroupCommit,
    /// Never fsync; appended data is committed at once. For benchmarks of the protocol path.
    Never,
}

/// Whether record timestamps come from producers or from the broker's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// Keep the producer's timestamps (`CreateTime`).
    CreateTime,
    /// Stamp each batch with the broker's append time (`LogAppendTime`).
    LogAppendTime,
}

/// The settings that govern one topic's log. Kafka names in comments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 for no limit.
    pub retention_bytes: i64,
    /// `segment.bytes`: roll the active segment past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once it is this old.
    pub segment_ms: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `min.insync.replicas`: acks=all produces are refused with NOT_ENOUGH_REPLICAS when
    /// fewer replicas (leader included) are keeping up. Raft commits on a majority anyway.
    pub min_insync_replicas: usize,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            min_insync_replicas: 1,
        }
    }
}

/// Topic config keys this broker understands, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "max.message.bytes",
    "message.timestamp.type",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// A config value that could not be applied, with the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl TopicConfig {
    /// Applies Kafka-named overrides on top of `self`.
    pub fn with_overrides(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one Kafka-named key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = || ConfigError(format!("invalid value {value:?} for {key}"));
        let int = |min: i64| -> Result<i64, ConfigError> {
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= min)
                .ok_or_else(bad)
        };
        match key {
            "retention.ms" => self.retention_ms = int(-1)?,
            "retention.bytes" => self.retention_bytes = int(-1)?,
            "segment.bytes" => self.segment_bytes = int(14)? as u64,
            "segment.ms" => self.segment_ms = int(1)?,
            "max.message.bytes" => self.max_message_bytes = int(0)? as usize,
            "min.insync.replicas" => self.min_insync_replicas = int(1)? as usize,
            "message.timestamp.type" => {
                self.timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(bad()),
                }
            }
            // Only `delete` is implemented; compaction comes later.
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(ConfigError(format!(
                    "cleanup.policy={value} is not supported yet"
                )))
            }
            _ => return Err(ConfigError(format!("unknown topic config {key}"))),
        }
        Ok(())
    }

    /// The value of one key as Kafka prints it.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "cleanup.policy" => "delete".to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "message.timestamp.type" => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".to_string(),
                TimestampType::LogAppendTime => "LogAppendTime".to_string(),
            },
            _ => return None,
        })
    }
}

/// Broker-wide settings that core decides with.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `node.id`.
    pub broker_id: i32,
    /// Host clients should connect to (advertised listener).
    pub advertised_host: String,
    /// Port clients should connect to.
    pub advertised_port: i32,
    /// Cluster id reported in Metadata.
    pub cluster_id: String,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions` for auto-created topics.
    pub default_partitions: i32,
    /// Defaults for every topic (`log.retention.ms` and friends).
    pub topic_defaults: TopicConfig,
    /// When appended data becomes durable.
    pub flush: FlushPolicy,
    /// How often retention and segment age are checked (`log.retention.check.interval.ms`).
    pub retention_check_interval_ms: i64,
    /// Bytes between sparse index entries (`index.interval.bytes`).
    pub index_interval_bytes: u32,
    /// Largest Fetch response we build, whatever the client asks.
    pub fetch_max_bytes: i32,
    /// The metadata quorum and this broker's place in the cluster.
    pub cluster: crate::cluster::ClusterConfig,
    /// Consumer group coordination.
    pub groups: crate::group::GroupConfig,
    /// Transaction coordination.
    pub txns: crate::txn::TxnConfig,
    /// `producer.id.expiration.ms`: a producer that wrote nothing to a partition for this
    /// long is forgotten there (a later batch of it may start at any sequence).
    pub producer_id_expiration_ms: i64,
    /// Report every entry a partition replica commits as an [`crate::Observation`] (the
    /// simulator's state checker reads them); off in a real broker, where nobody listens.
    pub report_commits: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_id: 1,
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            cluster_id: "seedlog".to_string(),
            auto_create_topics: true,
            default_partitions: 1,
            topic_defaults: TopicConfig::default(),
            flush: FlushPolicy::GroupCommit,
            retention_check_interval_ms: 5 * 60 * 1000,
            index_interval_bytes: 4096,
            fetch_max_bytes: 55 * 1024 * 1024,
            cluster: crate::cluster::ClusterConfig::default(),
            groups: crate::group::GroupConfig::default(),
            txns: crate::txn::TxnConfig::default(),
            producer_id_expiration_ms: 24 * 3600 * 1000,
            report_commits: false,
        }
    }
}
