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

/// `cleanup.policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Old segments go by `retention.ms` and `retention.bytes`.
    Delete,
    /// Kafka keeps the latest record of each key. seedlog does not compact yet, so it keeps
    /// every record: a superset of what compaction would keep, never less.
    Compact,
    /// Both: old segments go by retention, and (in Kafka) the rest is compacted.
    CompactDelete,
}

impl CleanupPolicy {
    /// True if retention deletes old segments.
    pub fn deletes(self) -> bool {
        self != CleanupPolicy::Compact
    }
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
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// Values set for keys that are checked, stored and reported but not acted on yet
    /// (see [`TOPIC_CONFIGS`]).
    pub stored: BTreeMap<String, String>,
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
            cleanup_policy: CleanupPolicy::Delete,
            stored: BTreeMap::new(),
        }
    }
}

/// What values a topic config key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// An integer at least this.
    Long(i64),
    /// `true` or `false`.
    Bool,
    /// A number between 0 and 1.
    Ratio,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these words, at least one.
    ListOf(&'static [&'static str]),
    /// Any text (replica lists, versions).
    Text,
}

/// One topic config key Kafka defines.
#[derive(Clone, Copy, Debug)]
pub struct TopicKey {
    /// Kafka's name.
    pub name: &'static str,
    /// What values it takes.
    pub kind: ConfigKind,
    /// True if seedlog acts on it; false if it is checked, stored and reported only.
    pub honoured: bool,
    /// Kafka's default, as DescribeConfigs prints it, for the keys that are only stored.
    pub default: &'static str,
}

const fn key(
    name: &'static str,
    kind: ConfigKind,
    honoured: bool,
    default: &'static str,
) -> TopicKey {
    TopicKey {
        name,
        kind,
        honoured,
        default,
    }
}

const NEVER: &str = "9223372036854775807";

/// Every topic config of Kafka 3.9, in the order DescribeConfigs lists them. A client may
/// set any of them (a malformed value is INVALID_CONFIG); those not honoured are kept and
/// reported back, as the README's table says.
pub const TOPIC_CONFIGS: &[TopicKey] = &[
    key(
        "cleanup.policy",
        ConfigKind::ListOf(&["delete", "compact"]),
        true,
        "",
    ),
    key(
        "compression.type",
        ConfigKind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        false,
        "producer",
    ),
    key(
        "delete.retention.ms",
        ConfigKind::Long(0),
        false,
        "86400000",
    ),
    key("file.delete.delay.ms", ConfigKind::Long(0), false, "60000"),
    key("flush.messages", ConfigKind::Long(1), false, NEVER),
    key("flush.ms", ConfigKind::Long(0), false, NEVER),
    key(
        "follower.replication.throttled.replicas",
        ConfigKind::Text,
        false,
        "",
    ),
    key("index.interval.bytes", ConfigKind::Long(0), false, "4096"),
    key(
        "leader.replication.throttled.replicas",
        ConfigKind::Text,
        false,
        "",
    ),
    key("local.retention.bytes", ConfigKind::Long(-2), false, "-2"),
    key("local.retention.ms", ConfigKind::Long(-2), false, "-2"),
    key("max.compaction.lag.ms", ConfigKind::Long(1), false, NEVER),
    key("max.message.bytes", ConfigKind::Long(0), true, ""),
    key(
        "message.downconversion.enable",
        ConfigKind::Bool,
        false,
        "true",
    ),
    key("message.format.version", ConfigKind::Text, false, "3.0-IV1"),
    key(
        "message.timestamp.after.max.ms",
        ConfigKind::Long(0),
        false,
        NEVER,
    ),
    key(
        "message.timestamp.before.max.ms",
        ConfigKind::Long(0),
        false,
        NEVER,
    ),
    key(
        "message.timestamp.difference.max.ms",
        ConfigKind::Long(0),
        false,
        NEVER,
    ),
    key(
        "message.timestamp.type",
        ConfigKind::OneOf(&["CreateTime", "LogAppendTime"]),
        true,
        "",
    ),
    key("min.cleanable.dirty.ratio", ConfigKind::Ratio, false, "0.5"),
    key("min.compaction.lag.ms", ConfigKind::Long(0), false, "0"),
    key("min.insync.replicas", ConfigKind::Long(1), true, ""),
    key("preallocate", ConfigKind::Bool, false, "false"),
    key("remote.storage.enable", ConfigKind::Bool, false, "false"),
    key("retention.bytes", ConfigKind::Long(-1), true, ""),
    key("retention.ms", ConfigKind::Long(-1), true, ""),
    key("segment.bytes", ConfigKind::Long(14), true, ""),
    key(
        "segment.index.bytes",
        ConfigKind::Long(4),
        false,
        "10485760",
    ),
    key("segment.jitter.ms", ConfigKind::Long(0), false, "0"),
    key("segment.ms", ConfigKind::Long(1), true, ""),
    key(
        "unclean.leader.election.enable",
        ConfigKind::Bool,
        false,
        "false",
    ),
];

/// Broker configs that change at run time (IncrementalAlterConfigs or AlterConfigs on a
/// BROKER resource), as in Kafka: cluster-wide or per-broker defaults of topic configs.
/// Each pair is (the broker key, the topic key it is the default of).
pub const DYNAMIC_BROKER_CONFIGS: &[(&str, &str)] = &[
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.message.timestamp.type", "message.timestamp.type"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.retention.ms", "retention.ms"),
    ("log.roll.ms", "segment.ms"),
    ("log.segment.bytes", "segment.bytes"),
    ("message.max.bytes", "max.message.bytes"),
    ("min.insync.replicas", "min.insync.replicas"),
];

/// The topic key that dynamic broker config `broker_key` is the default of.
pub fn dynamic_topic_key(broker_key: &str) -> Option<&'static str> {
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .find(|(b, _)| *b == broker_key)
        .map(|(_, t)| *t)
}

/// A config value that could not be applied, with the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl ConfigKind {
    /// Checks `value`, returning it as the broker keeps it (trimmed).
    fn check(self, key: &str, value: &str) -> Result<String, ConfigError> {
        let value = value.trim();
        let bad = || ConfigError(format!("invalid value {value:?} for {key}"));
        let ok = match self {
            ConfigKind::Long(min) => value.parse::<i64>().is_ok_and(|v| v >= min),
            ConfigKind::Bool => value == "true" || value == "false",
            ConfigKind::Ratio => value.parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)),
            ConfigKind::OneOf(words) => words.contains(&value),
            ConfigKind::ListOf(words) => {
                let mut items = value.split(',').map(str::trim);
                items.all(|w| words.contains(&w))
            }
            ConfigKind::Text => true,
        };
        ok.then(|| value.to_string()).ok_or_else(bad)
    }
}

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

    /// Applies dynamic broker configs (Kafka's broker names, see [`DYNAMIC_BROKER_CONFIGS`])
    /// on top of `self`: the topic defaults they make.
    pub fn with_broker_configs(
        &self,
        configs: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        for (key, value) in configs {
            let topic_key = dynamic_topic_key(key).ok_or_else(|| {
                ConfigError(format!(
                    "{key} is not a broker config that changes at run time"
                ))
            })?;
            config
                .set(topic_key, value)
                .map_err(|e| ConfigError(e.0.replace(topic_key, key)))?;
        }
        Ok(config)
    }

    /// Sets one Kafka-named key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(spec) = TOPIC_CONFIGS.iter().find(|k| k.name == key) else {
            return Err(ConfigError(format!("unknown topic config {key}")));
        };
        let value = spec.kind.check(key, value)?;
        let int = || value.parse::<i64>().expect("checked above");
        match key {
            "retention.ms" => self.retention_ms = int(),
            "retention.bytes" => self.retention_bytes = int(),
            "segment.bytes" => self.segment_bytes = int() as u64,
            "segment.ms" => self.segment_ms = int(),
            "max.message.bytes" => self.max_message_bytes = int() as usize,
            "min.insync.replicas" => self.min_insync_replicas = int() as usize,
            "message.timestamp.type" => {
                self.timestamp_type = match value.as_str() {
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => TimestampType::CreateTime,
                }
            }
            "cleanup.policy" => {
                let has = |w: &str| value.split(',').any(|v| v.trim() == w);
                self.cleanup_policy = match (has("compact"), has("delete")) {
                    (true, true) => CleanupPolicy::CompactDelete,
                    (true, false) => CleanupPolicy::Compact,
                    _ => CleanupPolicy::Delete,
                }
            }
            _ => {
                self.stored.insert(key.to_string(), value);
            }
        }
        Ok(())
    }

    /// The value of one key as Kafka prints it.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "cleanup.policy" => match self.cleanup_policy {
                CleanupPolicy::Delete => "delete",
                CleanupPolicy::Compact => "compact",
                CleanupPolicy::CompactDelete => "compact,delete",
            }
            .to_string(),
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
            _ => {
                let spec = TOPIC_CONFIGS.iter().find(|k| k.name == key)?;
                (self.stored.get(key).map(String::as_str))
                    .unwrap_or(spec.default)
                    .to_string()
            }
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
    /// Report each rise of a partition's high watermark as an [`crate::Observation`]: the
    /// node times the stages of a record's way to consumers with them (metrics on only).
    pub report_visible: bool,
    /// `advertised.listeners` by name; empty: one `PLAINTEXT` listener at
    /// `advertised_host:advertised_port`.
    pub endpoints: Vec<crate::cluster::records::Endpoint>,
    /// Authentication and authorization.
    pub security: SecurityConfig,
}

/// SASL and ACL settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `sasl.enabled.mechanisms`.
    pub sasl_mechanisms: Vec<String>,
    /// The authorizer: off unless `authorizer.class.name` is set.
    pub authorizer: crate::security::acl::AuthorizerConfig,
    /// Seeds the SCRAM server nonces; the driver passes fresh entropy.
    pub nonce_seed: u64,
    /// `connections.max.reauth.ms`: a SASL session's lifetime, after which the client must
    /// authenticate again on its connection (KIP-368); 0: sessions do not expire.
    pub reauthentication_ms: i64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            sasl_mechanisms: crate::security::MECHANISMS.map(String::from).to_vec(),
            authorizer: Default::default(),
            nonce_seed: 0,
            reauthentication_ms: 0,
        }
    }
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
            report_visible: false,
            endpoints: Vec::new(),
            security: SecurityConfig::default(),
        }
    }
}
