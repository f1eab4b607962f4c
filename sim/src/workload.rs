//! Clients of the simulated cluster: producers, consumers, the liveness probe and the final
//! read. Each reports what it saw to the [`History`]. Adding a workload is adding a function
//! here that takes a [`Ctx`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use seedlog_core::wire::record_batch;
use tokio::time::Instant;

use crate::client::{CallError, Client};
use crate::history::{History, Partition};
use crate::scenario::{Dice, Plan};

/// What every client task shares.
#[derive(Clone)]
pub struct Ctx {
    /// The run's plan.
    pub plan: Arc<Plan>,
    /// Where the broker listens.
    pub broker: SocketAddr,
    /// The oracle.
    pub history: Arc<Mutex<History>>,
    /// Set when the workload phase ends.
    pub stop: Arc<AtomicBool>,
    /// Simulated start of the run.
    pub start: Instant,
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
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Every partition of every topic, in a stable order.
    pub fn partitions(&self) -> Vec<Partition> {
        let topics = &self.plan.scenario.topics;
        topics
            .iter()
            .flat_map(|(name, t)| (0..t.partitions).map(move |p| (name.clone(), p)))
            .collect()
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
    let mut client = Client::new(ctx.broker, Duration::from_secs(2));
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
                .with_replication_factor(1)
                .with_configs(configs)
        })
        .collect();
    let request = RequestKind::CreateTopics(
        CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(2000),
    );
    loop {
        if let Ok(ResponseKind::CreateTopics(r)) =
            client.call(ApiKey::CreateTopics, 7, request.clone()).await
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

fn produce_request(partition: &Partition, acks: i16, records: Bytes) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name(&partition.0))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition.1)
                    .with_records(Some(records))])]),
    )
}

/// Produces batches of unique values to random partitions until the workload stops.
pub async fn producer(ctx: Ctx, id: u32, acks: i16) {
    let mut dice = Dice::new(ctx.plan.seed, 1000 + u64::from(id));
    let mut client = Client::new(ctx.broker, Duration::from_secs(5));
    let partitions = ctx.partitions();
    let workload = &ctx.plan.scenario.workload;
    let mut seq = 0u64;
    while !ctx.stopped() {
        let partition = &partitions[dice.between(0, partitions.len() as u64 - 1) as usize];
        let count = dice.pick(workload.batch_records).round().max(1.0) as usize;
        let values: Vec<String> = (0..count)
            .map(|_| {
                seq += 1;
                format!("p{id}-{seq}")
            })
            .collect();
        let timestamp = seedlog_node::server::now_ms();
        let batch = record_batch(values.iter().map(|v| (None, v.as_bytes(), timestamp)));
        ctx.history().counts.produce_requests += 1;
        let outcome = client
            .call(ApiKey::Produce, 9, produce_request(partition, acks, batch))
            .await;
        let now = ctx.now_ms();
        match outcome {
            Ok(ResponseKind::Produce(r)) => {
                let p = &r.responses[0].partition_responses[0];
                if p.error_code == 0 {
                    ctx.history()
                        .acked(now, partition, p.base_offset, &values, acks == -1);
                } else {
                    ctx.history().refused(now, partition, count, p.error_code);
                }
            }
            Ok(_) => ctx.history().indeterminate(now, partition, count),
            Err(CallError::Connect(_)) => {
                ctx.history().refused(now, partition, count, -1);
                sleep_ms(dice.between(50, 300)).await;
            }
            Err(CallError::Lost(_)) => ctx.history().indeterminate(now, partition, count),
        }
        sleep_ms(dice.pick(workload.think_ms) as u64).await;
    }
}

fn fetch_request(positions: &BTreeMap<Partition, i64>, max_wait_ms: i32) -> RequestKind {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for ((topic, partition), offset) in positions {
        topics.entry(topic).or_default().push(
            FetchPartition::default()
                .with_partition(*partition)
                .with_fetch_offset(*offset)
                .with_partition_max_bytes(64 << 10),
        );
    }
    let topics = topics
        .into_iter()
        .map(|(topic, partitions)| {
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(partitions)
        })
        .collect();
    RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(topics),
    )
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
                                (
                                    r.offset,
                                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                                        .into_owned(),
                                )
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
async fn list_offset(client: &mut Client, partition: &Partition, timestamp: i64) -> Option<i64> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(&partition.0))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition.1)
                .with_timestamp(timestamp)])]);
    match client
        .call(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request))
        .await
    {
        Ok(ResponseKind::ListOffsets(r)) => {
            let p = &r.topics[0].partitions[0];
            (p.error_code == 0).then_some(p.offset)
        }
        _ => None,
    }
}

/// Reads every partition in offset order, checking each record against the history.
pub async fn consumer(ctx: Ctx, id: u32) {
    let mut client = Client::new(ctx.broker, Duration::from_secs(3));
    let mut positions: BTreeMap<Partition, i64> =
        ctx.partitions().into_iter().map(|p| (p, 0)).collect();
    while !ctx.stopped() {
        let response = match client
            .call(ApiKey::Fetch, 12, fetch_request(&positions, 100))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                sleep_ms(100).await;
                continue;
            }
        };
        for (partition, fetched) in parse_fetch(response) {
            let now = ctx.now_ms();
            let position = positions.get_mut(&partition).expect("asked for it");
            match fetched {
                Fetched::Records(records, hw) => {
                    let mut history = ctx.history();
                    history.high_watermark(now, id, &partition, hw);
                    let from = *position;
                    for (offset, value) in records.into_iter().filter(|(o, _)| *o >= from) {
                        history.read(now, id, &partition, *position, offset, &value);
                        *position = offset + 1;
                    }
                }
                Fetched::Corrupt(e) => {
                    ctx.history()
                        .corrupt_read(now, id, &partition, *position, &e);
                    *position += 1;
                }
                Fetched::Error(code) => {
                    handle_fetch_error(&ctx, &mut client, id, &partition, position, code).await
                }
            }
        }
    }
}

async fn handle_fetch_error(
    ctx: &Ctx,
    client: &mut Client,
    id: u32,
    partition: &Partition,
    position: &mut i64,
    code: i16,
) {
    if code == ResponseError::KafkaStorageError.code() {
        // A damaged batch is refused, not served; step over it only where the disk was hurt.
        if ctx
            .history()
            .damaged_from(partition)
            .is_some_and(|d| d <= *position)
        {
            *position += 1;
        }
    } else if code == ResponseError::OffsetOutOfRange.code() {
        let earliest = list_offset(client, partition, -2).await;
        let latest = list_offset(client, partition, -1).await;
        if let (Some(earliest), Some(latest)) = (earliest, latest) {
            let now = ctx.now_ms();
            if *position < earliest {
                *position = earliest;
            } else if *position > latest {
                // We read up to here before: the committed log end moved back.
                ctx.history().high_watermark(now, id, partition, latest);
                *position = latest;
            }
        }
    }
}

/// The topic the liveness probe creates and writes to.
const PROBE_TOPIC: &str = "liveness-probe";

/// After the faults heal: a topic can be created, and a produce to it succeeds and reads
/// back, within the deadline.
/// Returns the simulated milliseconds it took, or why it failed.
pub async fn liveness_probe(ctx: &Ctx, deadline: Instant) -> Result<u64, String> {
    let began = Instant::now();
    // A fresh topic: creating it is part of the proof, and no flipped bit can sit near it
    // (on a single copy, records near a corrupt batch may be unreadable for good).
    let partition = (PROBE_TOPIC.to_string(), 0);
    let mut client = Client::new(ctx.broker, Duration::from_secs(2));
    let create = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(
        vec![CreatableTopic::default()
            .with_name(name(PROBE_TOPIC))
            .with_num_partitions(1)
            .with_replication_factor(1)],
    ));
    loop {
        if Instant::now() >= deadline {
            return Err("the probe topic could not be created after the faults healed".into());
        }
        if let Ok(ResponseKind::CreateTopics(r)) =
            client.call(ApiKey::CreateTopics, 7, create.clone()).await
        {
            let created = r.topics.first().map(|t| t.error_code);
            if created == Some(0) || created == Some(ResponseError::TopicAlreadyExists.code()) {
                break;
            }
        }
        sleep_ms(100).await;
    }
    let mut attempt = 0;
    let (offset, value) = loop {
        if Instant::now() >= deadline {
            return Err("no produce succeeded after the faults healed".into());
        }
        attempt += 1;
        let value = format!("liveness-{attempt}");
        let batch = record_batch([(None, value.as_bytes(), seedlog_node::server::now_ms())]);
        if let Ok(ResponseKind::Produce(r)) = client
            .call(ApiKey::Produce, 9, produce_request(&partition, -1, batch))
            .await
        {
            let p = &r.responses[0].partition_responses[0];
            if p.error_code == 0 {
                ctx.history().acked(
                    ctx.now_ms(),
                    &partition,
                    p.base_offset,
                    std::slice::from_ref(&value),
                    true,
                );
                break (p.base_offset, value);
            }
        }
        sleep_ms(100).await;
    };
    let positions = BTreeMap::from([(partition.clone(), offset)]);
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "the record acknowledged at offset {offset} could not be read back"
            ));
        }
        if let Ok(response) = client
            .call(ApiKey::Fetch, 12, fetch_request(&positions, 100))
            .await
        {
            if let Some(Fetched::Records(records, _)) = parse_fetch(response).remove(&partition) {
                if records.iter().any(|(o, v)| *o == offset && *v == value) {
                    return Ok(began.elapsed().as_millis() as u64);
                }
            }
        }
        sleep_ms(50).await;
    }
}

/// Reads every partition from its start to its high watermark and hands the result to the
/// final checks.
pub async fn final_read(ctx: &Ctx) -> Result<(), String> {
    let mut client = Client::new(ctx.broker, Duration::from_secs(2));
    for partition in ctx.partitions() {
        let earliest = list_offset(&mut client, &partition, -2)
            .await
            .ok_or("ListOffsets(earliest) failed")?;
        let latest = list_offset(&mut client, &partition, -1)
            .await
            .ok_or("ListOffsets(latest) failed")?;
        let mut log = BTreeMap::new();
        let mut position = earliest;
        let mut stalls = 0;
        while position < latest {
            let positions = BTreeMap::from([(partition.clone(), position)]);
            let response = client
                .call(ApiKey::Fetch, 12, fetch_request(&positions, 0))
                .await
                .map_err(|e| format!("{e:?}"))?;
            match parse_fetch(response).remove(&partition) {
                Some(Fetched::Records(records, _)) if !records.is_empty() => {
                    let from = position;
                    for (offset, value) in records.into_iter().filter(|(o, _)| *o >= from) {
                        log.insert(offset, value);
                        position = offset + 1;
                    }
                }
                Some(Fetched::Error(code)) if code == ResponseError::KafkaStorageError.code() => {
                    if ctx
                        .history()
                        .damaged_from(&partition)
                        .is_some_and(|d| d <= position)
                    {
                        position += 1;
                    } else {
                        return Err(format!(
                            "{partition:?}: storage error at undamaged offset {position}"
                        ));
                    }
                }
                Some(Fetched::Corrupt(e)) => {
                    ctx.history()
                        .corrupt_read(ctx.now_ms(), u32::MAX, &partition, position, &e);
                    position += 1;
                }
                other => {
                    stalls += 1;
                    if stalls > 50 {
                        let what = match other {
                            Some(Fetched::Error(code)) => format!("error {code}"),
                            _ => "nothing".to_string(),
                        };
                        return Err(format!(
                            "{partition:?}: final read stuck at {position} of {latest}: {what}"
                        ));
                    }
                    sleep_ms(20).await;
                }
            }
        }
        ctx.history().check_final(&partition, &log);
    }
    Ok(())
}
