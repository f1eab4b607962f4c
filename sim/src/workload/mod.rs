//! Clients of the simulated cluster, one file per workload: producers, consumers, an admin
//! client, and the checks that close a run (the liveness probe, the final read). Each reports
//! what it saw to the [`History`]; a new workload is a new file here that takes a [`Ctx`].

mod acls;
mod admin;
mod consumer;
mod credentials;
mod group;
mod idempotent;
mod mover;
mod producer;
mod transform;
mod txn;
mod verify;

pub use acls::{acl_flipper, guarded_producer};
pub use admin::admin;
pub use consumer::consumer;
pub use credentials::{credential_flipper, sasl_client};
pub use group::{group_member, GROUP};
pub use idempotent::idempotent_producer;
pub use mover::mover;
pub use producer::producer;
pub use transform::{final_transform_check, transform_caught_up, transform_member, TRANSFORMED};
pub use txn::{final_committed_read, txn_producer, txn_reader};
pub use verify::{final_read, liveness_probe};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use seedlog_core::wire::record_batch;
use tokio::time::Instant;

pub use crate::history::CONTROL_VALUE;
use crate::history::{History, Partition};
use crate::scenario::{Dice, Plan};
use seedlog_node::client::{CallError, ClusterClient};

/// What every client task shares.
#[derive(Clone)]
pub struct Ctx {
    /// The run's plan.
    pub plan: Arc<Plan>,
    /// Where the brokers listen (clients bootstrap from these).
    pub brokers: Vec<SocketAddr>,
    /// The oracle.
    pub history: Arc<Mutex<History>>,
    /// Set when the workload phase ends.
    pub stop: Arc<AtomicBool>,
    /// Set when group members must stop (they outlive the workload phase: the group must
    /// settle after the heal).
    pub groups_stop: Arc<AtomicBool>,
    /// Simulated start of the run.
    pub start: Instant,
    /// Appends to damage on the way, per receiving broker id (armed by `wire-flip`).
    pub wire: Arc<Mutex<BTreeMap<i32, u32>>>,
}

impl Ctx {
    /// Milliseconds of simulated time since the run began.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    /// The history, locked.
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().expect("history lock")
    }
    /// A client of the simulated cluster.
    pub fn client(&self, timeout: Duration) -> ClusterClient {
        ClusterClient::new(self.brokers.clone(), timeout)
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn groups_stopped(&self) -> bool {
        self.groups_stop.load(Ordering::Relaxed)
    }
    /// Every partition of every topic, in a stable order.
    pub fn partitions(&self) -> Vec<Partition> {
        let topics = &self.plan.scenario.topics;
        topics
            .iter()
            .flat_map(|(name, t)| (0..t.partitions).map(move |p| (name.clone(), p)))
            .collect()
    }
    /// The partitions clients write to and groups consume: all but the transform's output.
    pub fn source_partitions(&self) -> Vec<Partition> {
        let mut all = self.partitions();
        all.retain(|(topic, _)| topic != TRANSFORMED);
        all
    }
    /// The partitions of the transform's output topic (none without one).
    pub fn output_partitions(&self) -> Vec<Partition> {
        let mut all = self.partitions();
        all.retain(|(topic, _)| topic == TRANSFORMED);
        all
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Creates the scenario's topics, retrying until the broker answers.
pub async fn create_topics(ctx: &Ctx) {
    let mut client = ctx.client(Duration::from_secs(2));
    let topics: Vec<CreatableTopic> = ctx
        .plan
        .scenario
        .topics
        .iter()
        .map(|(topic, spec)| {
            let configs = spec
                .configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect();
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(spec.partitions)
                .with_replication_factor(spec.replication as i16)
                .with_configs(configs)
        })
        .collect();
    let request = RequestKind::CreateTopics(
        CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(2000),
    );
    loop {
        if let Ok(ResponseKind::CreateTopics(r)) = client
            .call_any(ApiKey::CreateTopics, 7, request.clone())
            .await
        {
            let ok = r.topics.iter().all(|t| {
                t.error_code == 0 || t.error_code == ResponseError::TopicAlreadyExists.code()
            });
            if ok {
                return;
            }
        }
        sleep_ms(100).await;
    }
}

/// True for the error codes that mean "ask someone else": the leader map is stale.
fn is_stale_leader(code: i16) -> bool {
    [
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::UnknownTopicOrPartition,
        ResponseError::FencedLeaderEpoch,
        ResponseError::UnknownLeaderEpoch,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Sends a request about one partition to its leader.
async fn call_partition(
    client: &mut ClusterClient,
    partition: &Partition,
    api: ApiKey,
    version: i16,
    request: RequestKind,
) -> Result<ResponseKind, CallError> {
    client
        .call_leader(&partition.0, partition.1, api, version, request)
        .await
}

fn produce_request(partition: &Partition, acks: i16, records: Bytes) -> RequestKind {
    seedlog_core::wire::produce_request(&partition.0, partition.1, acks, 5000, records)
}

/// A Fetch from `positions`, each partition carrying the newest leader epoch `client` has
/// seen, so a deposed leader that has not noticed refuses it (KIP-320).
fn fetch_request(
    client: &ClusterClient,
    positions: &BTreeMap<Partition, i64>,
    max_wait_ms: i32,
) -> RequestKind {
    let list = positions
        .iter()
        .map(|((topic, partition), offset)| (topic.as_str(), *partition, *offset));
    let mut request = seedlog_core::wire::fetch_request(list, max_wait_ms, 1 << 20, 64 << 10);
    if let RequestKind::Fetch(fetch) = &mut request {
        for topic in &mut fetch.topics {
            for p in &mut topic.partitions {
                p.current_leader_epoch = client.leader_epoch(&topic.topic.0, p.partition);
            }
        }
    }
    request
}

/// The positions of the partitions whose leader is known, grouped by leader: one fetch
/// each, as real consumers do.
async fn by_leader(
    client: &mut ClusterClient,
    positions: &BTreeMap<Partition, i64>,
) -> BTreeMap<i32, BTreeMap<Partition, i64>> {
    let all: Vec<Partition> = positions.keys().cloned().collect();
    let mut grouped: BTreeMap<i32, BTreeMap<Partition, i64>> = BTreeMap::new();
    for (partition, leader) in client.leaders(&all).await {
        let position = positions[&partition];
        grouped
            .entry(leader)
            .or_default()
            .insert(partition, position);
    }
    grouped
}

/// What one partition of a fetch response said.
enum Fetched {
    /// Records (offset, value) at or after the position, and the high watermark.
    Records(Vec<(i64, String)>, i64),
    /// The bytes did not decode: served corrupt data.
    Corrupt(String),
    /// An error code.
    Error(i16),
}

fn parse_fetch(response: ResponseKind) -> BTreeMap<Partition, Fetched> {
    let mut out = BTreeMap::new();
    let ResponseKind::Fetch(r) = response else {
        return out;
    };
    for topic in r.responses {
        for p in topic.partitions {
            let key = (topic.topic.0.to_string(), p.partition_index);
            let fetched = if p.error_code != 0 {
                Fetched::Error(p.error_code)
            } else {
                let mut bytes = p.records.unwrap_or_default();
                match RecordBatchDecoder::decode_all(&mut bytes) {
                    Err(e) => Fetched::Corrupt(e.to_string()),
                    Ok(sets) => {
                        let records = sets
                            .iter()
                            .flat_map(|s| s.records.iter())
                            .map(|r| {
                                // A leader-change marker of a replicated partition: it takes
                                // an offset, so it is read like a record with a known value.
                                let value = if r.control {
                                    CONTROL_VALUE.to_string()
                                } else {
                                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                                        .into_owned()
                                };
                                (r.offset, value)
                            })
                            .collect();
                        Fetched::Records(records, p.high_watermark)
                    }
                }
            };
            out.insert(key, fetched);
        }
    }
    out
}

/// Looks up a partition's earliest or latest offset.
async fn list_offset(
    client: &mut ClusterClient,
    partition: &Partition,
    timestamp: i64,
) -> Option<i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(&partition.0))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition.1)
                .with_timestamp(timestamp)])]);
    let request = RequestKind::ListOffsets(request);
    match client
        .call_leader(&partition.0, partition.1, ApiKey::ListOffsets, 6, request)
        .await
    {
        Ok(ResponseKind::ListOffsets(r)) => {
            let p = &r.topics[0].partitions[0];
            if is_stale_leader(p.error_code) {
                client.forget_leader(&partition.0, partition.1);
            }
            (p.error_code == 0).then_some(p.offset)
        }
        _ => None,
    }
}
