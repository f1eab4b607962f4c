//! The `seedlog` broker's settings: command-line flags, `SEEDLOG_*` environment variables and
//! an optional TOML file, in that order of precedence, over safe defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use seedlog_core::config::{BrokerConfig, FlushPolicy, SecurityConfig, TopicConfig};
use seedlog_core::security::{SecurityProtocol, MECHANISMS};

use crate::listeners::{parse_listeners, ListenerConfig};
use serde::{Deserialize, Serialize};

/// Where partition data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    /// Segment files on disk and small state in sled (the default).
    Disk,
    /// Everything in memory, nothing durable: for measuring the protocol path only.
    Memory,
}

/// When appended data is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushMode {
    /// fsync before data counts as committed, grouped across requests (the default).
    GroupCommit,
    /// Never fsync: fast, and a crash loses recent writes.
    Never,
}

/// Settings for `seedlog run`. Every flag can also come from `SEEDLOG_<NAME>` or, under the
/// same name with underscores, from the TOML file.
#[derive(Args, Deserialize, Serialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with any of the settings below (flags and env override it).
    #[arg(long, env = "SEEDLOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address the Kafka listener binds [default: 127.0.0.1:9092].
    #[arg(long, env = "SEEDLOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// host:port that clients are told to connect to [default: the listen address].
    #[arg(long, env = "SEEDLOG_ADVERTISED")]
    pub advertised: Option<String>,
    /// Directory for partition data and broker state [default: ./seedlog-data].
    #[arg(long, env = "SEEDLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This broker's id (Kafka's node.id) [default: 1].
    #[arg(long, env = "SEEDLOG_BROKER_ID")]
    #[serde(alias = "node_id")]
    pub broker_id: Option<i32>,
    /// Partitions of auto-created topics (num.partitions) [default: 1].
    #[arg(long, env = "SEEDLOG_NUM_PARTITIONS")]
    pub num_partitions: Option<i32>,
    /// Create unknown topics on first Metadata request (auto.create.topics.enable) [default: true].
    #[arg(long, env = "SEEDLOG_AUTO_CREATE_TOPICS")]
    #[serde(alias = "auto_create_topics_enable")]
    pub auto_create_topics: Option<bool>,
    /// Default retention.ms (-1: keep forever) [default: 604800000, 7 days].
    #[arg(long, env = "SEEDLOG_LOG_RETENTION_MS", allow_negative_numbers = true)]
    pub log_retention_ms: Option<i64>,
    /// Default retention.bytes per partition (-1: no limit) [default: -1].
    #[arg(
        long,
        env = "SEEDLOG_LOG_RETENTION_BYTES",
        allow_negative_numbers = true
    )]
    pub log_retention_bytes: Option<i64>,
    /// Default segment.bytes [default: 1073741824].
    #[arg(long, env = "SEEDLOG_LOG_SEGMENT_BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// Default segment.ms [default: 604800000].
    #[arg(long, env = "SEEDLOG_LOG_SEGMENT_MS")]
    #[serde(alias = "log_roll_ms")]
    pub log_segment_ms: Option<i64>,
    /// Largest record batch accepted (message.max.bytes) [default: 1048588].
    #[arg(long, env = "SEEDLOG_MESSAGE_MAX_BYTES")]
    pub message_max_bytes: Option<usize>,
    /// How often retention runs (log.retention.check.interval.ms) [default: 300000].
    #[arg(long, env = "SEEDLOG_RETENTION_CHECK_INTERVAL_MS")]
    #[serde(alias = "log_retention_check_interval_ms")]
    pub retention_check_interval_ms: Option<i64>,
    /// Largest request frame accepted (socket.request.max.bytes) [default: 104857600].
    #[arg(long, env = "SEEDLOG_SOCKET_REQUEST_MAX_BYTES")]
    pub socket_request_max_bytes: Option<usize>,
    /// Where partition data lives [default: disk].
    #[arg(long, env = "SEEDLOG_STORAGE", value_enum)]
    pub storage: Option<StorageKind>,
    /// When appended data is fsynced [default: group-commit].
    #[arg(long, env = "SEEDLOG_FLUSH", value_enum)]
    pub flush: Option<FlushMode>,
    /// The metadata quorum's voters as `id@host:port` of their peer listeners, comma
    /// separated (KRaft's controller.quorum.voters) [default: this broker alone].
    #[arg(long, env = "SEEDLOG_CONTROLLER_QUORUM_VOTERS")]
    pub controller_quorum_voters: Option<String>,
    /// Address the peer listener binds [default: this broker's entry in the voters].
    #[arg(long, env = "SEEDLOG_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Address of the HTTP admin listener: Prometheus `/metrics`, `/health`, `/ready`
    /// [default: none, no admin listener].
    #[arg(long, env = "SEEDLOG_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// host:port other brokers dial to reach this broker's peer listener [default: its
    /// voter entry, or the peer listen address].
    #[arg(long, env = "SEEDLOG_PEER_ADVERTISED")]
    pub peer_advertised: Option<String>,
    /// This broker's rack (broker.rack), used to spread replicas [default: none].
    #[arg(long, env = "SEEDLOG_RACK")]
    #[serde(alias = "broker_rack")]
    pub rack: Option<String>,
    /// Partitions of __consumer_offsets, fixed when it is first created
    /// (offsets.topic.num.partitions) [default: 8].
    #[arg(long, env = "SEEDLOG_OFFSETS_TOPIC_NUM_PARTITIONS")]
    pub offsets_topic_num_partitions: Option<i32>,
    /// How long the first rebalance of an empty group waits for more members
    /// (group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, env = "SEEDLOG_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<i64>,
    /// Smallest session.timeout.ms a consumer may ask for (group.min.session.timeout.ms)
    /// [default: 6000].
    #[arg(long, env = "SEEDLOG_GROUP_MIN_SESSION_TIMEOUT_MS")]
    pub group_min_session_timeout_ms: Option<i64>,
    /// How long the committed offsets of an empty group are kept
    /// (offsets.retention.minutes) [default: 10080, 7 days].
    #[arg(long, env = "SEEDLOG_OFFSETS_RETENTION_MINUTES")]
    pub offsets_retention_minutes: Option<i64>,
    /// How long a producer that writes nothing to a partition is remembered there
    /// (producer.id.expiration.ms) [default: 86400000, 1 day].
    #[arg(long, env = "SEEDLOG_PRODUCER_ID_EXPIRATION_MS")]
    pub producer_id_expiration_ms: Option<i64>,
    /// Partitions of __transaction_state, fixed when it is first created
    /// (transaction.state.log.num.partitions) [default: 8].
    #[arg(long, env = "SEEDLOG_TRANSACTION_STATE_LOG_NUM_PARTITIONS")]
    pub transaction_state_log_num_partitions: Option<i32>,
    /// Longest transaction.timeout.ms a producer may ask for (transaction.max.timeout.ms)
    /// [default: 900000, 15 minutes].
    #[arg(long, env = "SEEDLOG_TRANSACTION_MAX_TIMEOUT_MS")]
    pub transaction_max_timeout_ms: Option<i64>,
    /// How often open transactions are checked against their timeout
    /// (transaction.abort.timed.out.transaction.cleanup.interval.ms) [default: 10000].
    #[arg(long, env = "SEEDLOG_TRANSACTION_ABORT_CHECK_INTERVAL_MS")]
    #[serde(alias = "transaction_abort_timed_out_transaction_cleanup_interval_ms")]
    pub transaction_abort_check_interval_ms: Option<i64>,
    /// How long an idle transactional id is remembered (transactional.id.expiration.ms)
    /// [default: 604800000, 7 days].
    #[arg(long, env = "SEEDLOG_TRANSACTIONAL_ID_EXPIRATION_MS")]
    pub transactional_id_expiration_ms: Option<i64>,
    /// Client listeners as `NAME://host:port`, comma separated (Kafka's listeners); a name
    /// is a security protocol or an entry of listener_security_protocol_map. Replaces
    /// `listen` [default: PLAINTEXT://<listen>].
    #[arg(long, env = "SEEDLOG_LISTENERS")]
    pub listeners: Option<String>,
    /// Where clients reach each listener, `NAME://host:port` (advertised.listeners)
    /// [default: the bound address].
    #[arg(long, env = "SEEDLOG_ADVERTISED_LISTENERS")]
    pub advertised_listeners: Option<String>,
    /// `NAME:PROTOCOL` pairs for listeners not named after their protocol
    /// (listener.security.protocol.map), e.g. `CLIENT:SASL_SSL`.
    #[arg(long, env = "SEEDLOG_LISTENER_SECURITY_PROTOCOL_MAP")]
    pub listener_security_protocol_map: Option<String>,
    /// SASL mechanisms offered (sasl.enabled.mechanisms)
    /// [default: PLAIN,SCRAM-SHA-256,SCRAM-SHA-512].
    #[arg(long, env = "SEEDLOG_SASL_ENABLED_MECHANISMS")]
    pub sasl_enabled_mechanisms: Option<String>,
    /// PEM file with the listeners' TLS certificate chain and private key
    /// (ssl.keystore.location, PEM keystore); read again when it changes.
    #[arg(long, env = "SEEDLOG_SSL_KEYSTORE_LOCATION")]
    pub ssl_keystore_location: Option<PathBuf>,
    /// PEM file with the CAs that client certificates must chain to (ssl.truststore.location).
    #[arg(long, env = "SEEDLOG_SSL_TRUSTSTORE_LOCATION")]
    pub ssl_truststore_location: Option<PathBuf>,
    /// none, requested or required (ssl.client.auth) [default: none].
    #[arg(long, env = "SEEDLOG_SSL_CLIENT_AUTH")]
    pub ssl_client_auth: Option<String>,
    /// Turns the ACL authorizer on when set to any class name, e.g.
    /// org.apache.kafka.metadata.authorizer.StandardAuthorizer (authorizer.class.name)
    /// [default: none, every request allowed].
    #[arg(long, env = "SEEDLOG_AUTHORIZER_CLASS_NAME")]
    pub authorizer_class_name: Option<String>,
    /// Principals allowed everything, `User:admin;User:ops` (super.users).
    #[arg(long, env = "SEEDLOG_SUPER_USERS")]
    pub super_users: Option<String>,
    /// With the authorizer on, allow what no ACL names (allow.everyone.if.no.acl.found)
    /// [default: false].
    #[arg(long, env = "SEEDLOG_ALLOW_EVERYONE_IF_NO_ACL_FOUND")]
    pub allow_everyone_if_no_acl_found: Option<bool>,
    /// Most connections from one IP address (max.connections.per.ip) [default: 1000].
    #[arg(long, env = "SEEDLOG_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// A secret every broker of the cluster shares: each peer connection proves it (HMAC
    /// of a challenge), and frames are taken only in the name of the broker that proved
    /// it. Unset: peers' ids are taken on trust (a development cluster) [default: unset].
    #[arg(long, env = "SEEDLOG_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,
    /// Lifetime of a SASL session: clients authenticate again on their connection before
    /// it runs out, or are disconnected (connections.max.reauth.ms, KIP-368) [default: 0,
    /// sessions do not expire].
    #[arg(long, env = "SEEDLOG_CONNECTIONS_MAX_REAUTH_MS")]
    pub connections_max_reauth_ms: Option<i64>,
    /// PLAINTEXT, or SSL: mutual TLS on every peer connection with the keystore and
    /// truststore (security.inter.broker.protocol) [default: PLAINTEXT].
    #[arg(long, env = "SEEDLOG_INTER_BROKER_SECURITY_PROTOCOL")]
    #[serde(alias = "security_inter_broker_protocol")]
    pub inter_broker_security_protocol: Option<String>,
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Client listeners; the first is the one `host`/`port` registrations name.
    pub listeners: Vec<ListenerConfig>,
    /// TLS material, if a listener uses TLS.
    #[cfg(not(madsim))]
    pub tls: Option<crate::tls::TlsSettings>,
    /// Most connections from one IP address.
    pub max_connections_per_ip: usize,
    /// The cluster's shared peer secret; empty: none.
    pub peer_secret: String,
    /// Mutual TLS between brokers.
    pub peer_tls: bool,
    /// The newest peer protocol version spoken: [`crate::peer::PROTOCOL_NEWEST`]; the
    /// simulator sets an older one to play an older binary (not a setting: each connection
    /// agrees the newest both ends speak by itself).
    pub peer_protocol: u8,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Storage backend.
    pub storage: StorageKind,
    /// Largest request frame.
    pub socket_request_max_bytes: usize,
    /// Peer listener address, if this broker is part of a cluster.
    pub peer_listen: Option<SocketAddr>,
    /// The HTTP admin listener's address (metrics, health, readiness), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Peer listener addresses of the other brokers, by id.
    pub peers: BTreeMap<i32, String>,
    /// What core decides with.
    pub broker: BrokerConfig,
}

impl RunArgs {
    /// Merges flags/env over the file over defaults, and checks the result.
    pub fn resolve(self) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => RunArgs::default(),
        };
        let given = explicit_settings(&self, &file);
        // Every setting resolved from flags, file or default, for the log at start.
        let mut effective = toml::Table::new();
        macro_rules! pick {
            ($field:ident, $default:expr) => {{
                let value = self.$field.or(file.$field).unwrap_or($default);
                if let Ok(v) = toml::Value::try_from(&value) {
                    effective.insert(stringify!($field).to_string(), v);
                }
                value
            }};
        }
        let defaults = TopicConfig::default();
        let listen = pick!(listen, "127.0.0.1:9092".parse().expect("valid address"));
        let advertised = match self.advertised.clone().or(file.advertised.clone()) {
            None => None,
            Some(a) => Some(parse_host_port(&a)?),
        };
        let listeners = match self.listeners.clone().or(file.listeners.clone()) {
            Some(text) => parse_listeners(
                &text,
                self.advertised_listeners
                    .as_deref()
                    .or(file.advertised_listeners.as_deref()),
                (self.listener_security_protocol_map.as_deref())
                    .or(file.listener_security_protocol_map.as_deref()),
            )?,
            None => vec![ListenerConfig {
                name: "PLAINTEXT".into(),
                protocol: SecurityProtocol::Plaintext,
                bind: listen,
                advertised,
            }],
        };
        let security = self.security(&file, &listeners)?;
        let peer_tls = match (self.inter_broker_security_protocol.as_deref())
            .or(file.inter_broker_security_protocol.as_deref())
        {
            None | Some("PLAINTEXT") => false,
            Some("SSL") => true,
            Some(other) => {
                bail!("inter_broker_security_protocol must be PLAINTEXT or SSL, not {other}")
            }
        };
        #[cfg(not(madsim))]
        let tls = self.tls(&file, &listeners)?;
        let flush = match pick!(flush, FlushMode::GroupCommit) {
            FlushMode::GroupCommit => FlushPolicy::GroupCommit,
            FlushMode::Never => FlushPolicy::Never,
        };
        let topic_defaults = TopicConfig {
            retention_ms: pick!(log_retention_ms, defaults.retention_ms),
            retention_bytes: pick!(log_retention_bytes, defaults.retention_bytes),
            segment_bytes: pick!(log_segment_bytes, defaults.segment_bytes),
            segment_ms: pick!(log_segment_ms, defaults.segment_ms),
            max_message_bytes: pick!(message_max_bytes, defaults.max_message_bytes),
            ..defaults
        };
        let mut broker = BrokerConfig {
            security,
            broker_id: pick!(broker_id, 1),
            default_partitions: pick!(num_partitions, 1),
            auto_create_topics: pick!(auto_create_topics, true),
            topic_defaults,
            flush,
            ..BrokerConfig::default()
        };
        broker.retention_check_interval_ms = pick!(
            retention_check_interval_ms,
            broker.retention_check_interval_ms
        );
        broker.producer_id_expiration_ms =
            pick!(producer_id_expiration_ms, broker.producer_id_expiration_ms);
        if broker.producer_id_expiration_ms < 1 {
            bail!("producer_id_expiration_ms must be positive");
        }
        let txns = &mut broker.txns;
        txns.partitions = pick!(transaction_state_log_num_partitions, txns.partitions);
        txns.max_timeout_ms = pick!(transaction_max_timeout_ms, txns.max_timeout_ms);
        txns.abort_check_interval_ms = pick!(
            transaction_abort_check_interval_ms,
            txns.abort_check_interval_ms
        );
        txns.id_expiration_ms = pick!(transactional_id_expiration_ms, txns.id_expiration_ms);
        if txns.partitions < 1 || txns.partitions > 1000 {
            bail!("transaction_state_log_num_partitions must be between 1 and 1000");
        }
        if txns.max_timeout_ms < 1 || txns.abort_check_interval_ms < 1 || txns.id_expiration_ms < 1
        {
            bail!("transaction timeouts and intervals must be positive");
        }
        let groups = &mut broker.groups;
        groups.offsets_partitions = pick!(offsets_topic_num_partitions, groups.offsets_partitions);
        groups.initial_rebalance_delay_ms = pick!(
            group_initial_rebalance_delay_ms,
            groups.initial_rebalance_delay_ms
        );
        groups.min_session_timeout_ms =
            pick!(group_min_session_timeout_ms, groups.min_session_timeout_ms);
        groups.offsets_retention_ms = pick!(
            offsets_retention_minutes,
            groups.offsets_retention_ms / 60_000
        )
        .saturating_mul(60_000);
        if groups.offsets_partitions < 1 || groups.offsets_partitions > 1000 {
            bail!("offsets_topic_num_partitions must be between 1 and 1000");
        }
        if groups.initial_rebalance_delay_ms < 0 || groups.min_session_timeout_ms < 1 {
            bail!("group timeouts must not be negative");
        }
        let voters = match self
            .controller_quorum_voters
            .or(file.controller_quorum_voters)
        {
            Some(text) => parse_voters(&text)?,
            None => BTreeMap::new(),
        };
        let me = broker.broker_id;
        if broker.broker_id < 0 {
            bail!("broker_id must not be negative");
        }
        let peer_listen_given = self.peer_listen.or(file.peer_listen);
        if !voters.is_empty() && !voters.contains_key(&me) && peer_listen_given.is_none() {
            bail!("broker {me} is not a voter: it joins the cluster as a learner and needs peer_listen");
        }
        let peer_listen = match peer_listen_given {
            Some(addr) => Some(addr),
            None => match voters.get(&me) {
                Some(addr) => Some(addr.parse().with_context(|| {
                    format!("voter address {addr:?} is not ip:port; set peer_listen")
                })?),
                None => None,
            },
        };
        broker.cluster.peer_address = match (
            self.peer_advertised.or(file.peer_advertised),
            voters.get(&me),
            peer_listen,
        ) {
            (Some(addr), _, _) => {
                parse_host_port(&addr)?;
                addr
            }
            (None, Some(addr), _) => addr.clone(),
            (None, None, Some(listen)) => listen.to_string(),
            (None, None, None) => String::new(),
        };
        broker.cluster.voters = voters.keys().copied().collect();
        broker.cluster.rack = self.rack.or(file.rack).unwrap_or_default();
        let peers = voters.into_iter().filter(|(id, _)| *id != me).collect();
        if broker.default_partitions < 1 {
            bail!("num_partitions must be at least 1");
        }
        if broker.topic_defaults.segment_bytes < 1024 {
            bail!("log_segment_bytes must be at least 1024");
        }
        if broker.retention_check_interval_ms < 1 || broker.topic_defaults.segment_ms < 1 {
            bail!("intervals must be positive");
        }
        let max_connections_per_ip = pick!(max_connections_per_ip, 1000).max(1);
        let data_dir = pick!(data_dir, PathBuf::from("seedlog-data"));
        let storage = pick!(storage, StorageKind::Disk);
        let socket_request_max_bytes = pick!(socket_request_max_bytes, 100 * 1024 * 1024);
        tracing::info!(
            settings = %given.0,
            effective = %effective_settings(effective, given.1),
            "configuration (settings: given, flags and environment over the file; effective: \
             with the defaults)"
        );
        Ok(NodeConfig {
            listeners,
            #[cfg(not(madsim))]
            tls,
            max_connections_per_ip,
            peer_secret: self
                .peer_secret
                .clone()
                .or(file.peer_secret.clone())
                .unwrap_or_default(),
            peer_tls,
            peer_protocol: crate::peer::PROTOCOL_NEWEST,
            data_dir,
            storage,
            socket_request_max_bytes,
            peer_listen,
            admin_listen: self.admin_listen.or(file.admin_listen),
            peers,
            broker,
        })
    }
}

impl RunArgs {
    /// SASL and authorizer settings, checked against the listeners.
    fn security(
        &self,
        file: &RunArgs,
        listeners: &[ListenerConfig],
    ) -> anyhow::Result<SecurityConfig> {
        let mut security = SecurityConfig::default();
        if let Some(text) = self
            .sasl_enabled_mechanisms
            .as_ref()
            .or(file.sasl_enabled_mechanisms.as_ref())
        {
            security.sasl_mechanisms = text
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            if let Some(unknown) = security
                .sasl_mechanisms
                .iter()
                .find(|m| !MECHANISMS.contains(&m.as_str()))
            {
                bail!(
                    "sasl_enabled_mechanisms: {unknown} is not one of {}",
                    MECHANISMS.join(", ")
                );
            }
        }
        if security.sasl_mechanisms.is_empty() && listeners.iter().any(|l| l.protocol.needs_sasl())
        {
            bail!("a SASL listener needs at least one of sasl_enabled_mechanisms");
        }
        let authorizer = &mut security.authorizer;
        authorizer.enabled = (self.authorizer_class_name.as_ref())
            .or(file.authorizer_class_name.as_ref())
            .is_some_and(|c| !c.trim().is_empty());
        authorizer.allow_if_no_acl = self
            .allow_everyone_if_no_acl_found
            .or(file.allow_everyone_if_no_acl_found)
            .unwrap_or(false);
        if let Some(text) = self.super_users.as_ref().or(file.super_users.as_ref()) {
            for user in text.split(';').map(str::trim).filter(|u| !u.is_empty()) {
                if !user.starts_with("User:") {
                    bail!("super_users: {user:?} is not User:<name>");
                }
                authorizer.super_users.push(user.to_string());
            }
        }
        security.reauthentication_ms = (self.connections_max_reauth_ms)
            .or(file.connections_max_reauth_ms)
            .unwrap_or(0);
        if security.reauthentication_ms < 0 {
            bail!("connections_max_reauth_ms must not be negative");
        }
        // Fresh entropy for SCRAM nonces.
        let mut seed = [0u8; 8];
        crate::os_random(&mut seed);
        security.nonce_seed = u64::from_be_bytes(seed);
        Ok(security)
    }

    /// TLS settings, required when a listener uses TLS.
    #[cfg(not(madsim))]
    fn tls(
        &self,
        file: &RunArgs,
        listeners: &[ListenerConfig],
    ) -> anyhow::Result<Option<crate::tls::TlsSettings>> {
        let keystore = self
            .ssl_keystore_location
            .clone()
            .or(file.ssl_keystore_location.clone());
        let needs = listeners.iter().find(|l| l.protocol.is_tls());
        let client_auth = match self
            .ssl_client_auth
            .as_ref()
            .or(file.ssl_client_auth.as_ref())
        {
            Some(text) => crate::tls::ClientAuth::parse(text)?,
            None => crate::tls::ClientAuth::None,
        };
        match (keystore, needs) {
            (None, Some(l)) => bail!(
                "listener {} uses TLS and needs ssl_keystore_location",
                l.name
            ),
            (None, None) => Ok(None),
            (Some(keystore), _) => Ok(Some(crate::tls::TlsSettings {
                keystore,
                truststore: self
                    .ssl_truststore_location
                    .clone()
                    .or(file.ssl_truststore_location.clone()),
                client_auth,
            })),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<RunArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&kafka_names(&text))
        .with_context(|| format!("parsing config file {}", path.display()))
}

/// Spells Kafka's dotted keys (`log.retention.ms = 1000`, quoted or not) as this file's
/// underscored ones, line by line: TOML would read an unquoted dotted key as nested tables,
/// and an error keeps pointing at the line the user wrote. Lines inside multi-line strings
/// are left alone.
fn kafka_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    for line in text.split_inclusive('\n') {
        let was_in_string = in_string;
        in_string ^= (line.matches("\"\"\"").count() + line.matches("'''").count()) % 2 == 1;
        let rewritten = (!was_in_string)
            .then(|| line.split_once('='))
            .flatten()
            .and_then(|(key, rest)| {
                let name = key.trim().trim_matches('"');
                let kafka = name.contains('.')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                kafka.then(|| format!("{} ={rest}", name.replace('.', "_")))
            });
        out.push_str(rewritten.as_deref().unwrap_or(line));
    }
    out
}

/// Names whose values are never printed.
const SECRETS: [&str; 1] = ["peer_secret"];

/// The settings given explicitly, flags and environment over the file, secrets masked:
/// `key = value` pairs for the log at start (everything else is its default), and the
/// same as a table.
fn explicit_settings(flags: &RunArgs, file: &RunArgs) -> (String, toml::Table) {
    let table = |args: &RunArgs| toml::Table::try_from(args).unwrap_or_default();
    let mut merged = table(file);
    merged.extend(table(flags));
    for (key, value) in merged.iter_mut() {
        if SECRETS.contains(&key.as_str()) {
            *value = toml::Value::String("********".into());
        }
    }
    (listed(&merged), merged)
}

/// Every setting in force: those resolved with their defaults, and those given that have no
/// single default (listeners, security, voters: given or not set).
fn effective_settings(mut resolved: toml::Table, given: toml::Table) -> String {
    for (key, value) in given {
        resolved.entry(key).or_insert(value);
    }
    listed(&resolved)
}

/// `key = value, ...` in key order.
fn listed(table: &toml::Table) -> String {
    table
        .iter()
        .map(|(key, value)| format!("{key} = {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `1@host:9093,2@host:9094`.
fn parse_voters(text: &str) -> anyhow::Result<BTreeMap<i32, String>> {
    let mut voters = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .with_context(|| format!("voter {entry:?} is not id@host:port"))?;
        let id: i32 = id
            .parse()
            .with_context(|| format!("voter id in {entry:?}"))?;
        parse_host_port(addr)?;
        if voters.insert(id, addr.to_string()).is_some() {
            bail!("voter {id} is listed twice");
        }
    }
    if voters.is_empty() {
        bail!("controller_quorum_voters lists no voter");
    }
    Ok(voters)
}

fn parse_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("advertised {s:?} is not host:port"))?;
    let port = port
        .parse()
        .with_context(|| format!("advertised port in {s:?}"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("seedlog-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seedlog.toml");
        std::fs::write(
            &path,
            "broker_id = 7\nnum_partitions = 3\nlisten = \"127.0.0.1:19092\"\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            num_partitions: Some(5),
            ..RunArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.broker.broker_id, 7);
        assert_eq!(config.broker.default_partitions, 5);
        assert_eq!(config.listeners[0].bind.port(), 19092);
        assert_eq!(config.data_dir, PathBuf::from("seedlog-data"));
        std::fs::write(&path, "brokerid = 7\n").unwrap();
        let err = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn a_file_takes_kafkas_names_and_an_error_names_the_key_and_line() {
        let dir = std::env::temp_dir().join(format!("seedlog-kafka-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.toml");
        let text = "# as in server.properties\nnode.id = 4\nlog.retention.ms = 1000\n\
                    \"num.partitions\" = 6\nauto.create.topics.enable = false\n\
                    broker.rack = \"r1\"\nlog.roll.ms = 60000\n\
                    peer_secret = \"hush\"\n";
        std::fs::write(&path, text).unwrap();
        let file = RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        };
        let config = file.clone().resolve().unwrap();
        assert_eq!(config.broker.broker_id, 4);
        assert_eq!(config.broker.default_partitions, 6);
        assert!(!config.broker.auto_create_topics);
        assert_eq!(config.broker.topic_defaults.retention_ms, 1000);
        assert_eq!(config.broker.topic_defaults.segment_ms, 60_000);
        assert_eq!(config.broker.cluster.rack, "r1");
        // What the broker logs at start: every setting given, the secret masked.
        let (given, _) = explicit_settings(&RunArgs::default(), &read_file(&path).unwrap());
        assert!(given.contains("log_retention_ms = 1000"), "{given}");
        assert!(given.contains("peer_secret = \"********\""), "{given}");
        assert!(!given.contains("hush"), "{given}");

        // An unknown key, dotted or not, and a bad value: refused, naming key and line.
        for (text, key, line) in [
            (
                "num.partitions = 2\nlog.retention.mss = 5\n",
                "log_retention_mss",
                2,
            ),
            ("\n\nbrokerid = 7\n", "brokerid", 3),
            ("log.retention.ms = \"soon\"\n", "log_retention_ms", 1),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", file.clone().resolve().unwrap_err());
            assert!(err.contains(&format!("line {line}")), "{text:?}: {err}");
            assert!(err.contains(key), "{text:?}: {err}");
        }
        // A dotted key inside a multi-line string is the string's, not a setting.
        let kept = "super_users = \"\"\"\nlog.retention.ms = 1\n\"\"\"\n";
        assert_eq!(kafka_names(kept), kept);
    }

    #[test]
    fn transaction_settings_are_read_and_checked() {
        let config = RunArgs {
            transaction_state_log_num_partitions: Some(3),
            transaction_max_timeout_ms: Some(60_000),
            transactional_id_expiration_ms: Some(1_000),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap();
        let txns = &config.broker.txns;
        assert_eq!((txns.partitions, txns.max_timeout_ms), (3, 60_000));
        assert_eq!(txns.id_expiration_ms, 1_000);
        assert_eq!(txns.abort_check_interval_ms, 10_000);
        let err = RunArgs {
            transaction_abort_check_interval_ms: Some(0),
            ..RunArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("positive"), "{err:#}");
    }
}
