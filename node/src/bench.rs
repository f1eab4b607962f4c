//! `seedlog bench`: a Kafka load generator that works against any Kafka-compatible broker.
//!
//! Every figure comes from a real run over TCP: records/s and MB/s from the wall clock, and
//! latency percentiles from an HDR histogram (produce: request round trip; e2e: from the
//! producer stamping a record to a consumer reading it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::{
    ApiKey, BrokerId, ProducerId, RequestKind, ResponseKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use seedlog_core::batch::{data_batch, BatchView};
use seedlog_core::wire::{fetch_request, produce_request, record_batch};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::client::Client;

/// `seedlog bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce records as fast as the broker takes them.
    Produce(ProduceArgs),
    /// Read a topic from the start as fast as the broker serves it.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while consuming; report produce-to-consume latency.
    E2e(E2eArgs),
}

/// Where and what to benchmark.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: SocketAddr,
    /// Topic (created if missing).
    #[arg(long, default_value = "seedlog-bench")]
    pub topic: String,
    /// Partitions of the topic, written round-robin.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// acks as Kafka spells them.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Acks {
    /// No response.
    #[value(name = "0")]
    None,
    /// Leader append.
    #[value(name = "1")]
    Leader,
    /// Committed (fsynced on this broker).
    #[value(name = "all")]
    All,
}

impl Acks {
    fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// `seedlog bench produce`.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    target: Target,
    /// Records to produce.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Records per batch (one batch per request).
    #[arg(long, default_value_t = 200)]
    batch_records: usize,
    /// acks: 1 or all (0 is not measurable by round trip).
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    /// Connections producing at once, each with one request in flight.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Produce as idempotent producers: each connection takes a producer id
    /// (InitProducerId) and numbers its batches per partition.
    #[arg(long)]
    idempotent: bool,
    /// Produce in transactions of this many batches (each connection a transactional
    /// producer, committing each transaction); reports the commit latency too.
    #[arg(long, value_name = "BATCHES")]
    transactional: Option<usize>,
}

/// `seedlog bench consume`.
#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    /// Records to read (stops early at the end of the log).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per fetch response.
    #[arg(long, default_value_t = 4 << 20)]
    fetch_bytes: i32,
}

/// `seedlog bench e2e`.
#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    target: Target,
    /// Records per second to offer.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per record value (at least 8: the send time is stamped in).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// acks: 1 or all.
    #[arg(long, value_enum, default_value = "1")]
    acks: Acks,
    /// Producer connections taking the batches in turn, each with one request in flight.
    /// Sixteen give room for 16 ms of one-millisecond batches in flight: with four, every
    /// acks=all answer slower than 4 ms queued the next batches in this process (at 250 k
    /// records/s, sent -> acked p99 22 ms while the broker's appended -> visible was 9 ms).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Milliseconds of offered records gathered into each batch (a client's linger.ms).
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// A broker's admin listener (host:port; repeat for each broker): its stage histograms
    /// (`seedlog_record_stage_seconds`) over the run join the report.
    #[arg(long, value_name = "ADDR")]
    admin: Vec<String>,
}

/// What a run measured.
#[derive(Serialize, Debug)]
pub struct BenchReport {
    /// produce, consume or e2e.
    pub mode: &'static str,
    /// Records moved.
    pub records: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// Megabytes (10^6) of record values per second.
    pub mb_per_sec: f64,
    /// Latency percentiles in milliseconds: p50, p99, p99.9, max.
    pub latency_ms: Option<[f64; 4]>,
    /// What the latency measures.
    pub latency_of: &'static str,
    /// Produce requests sent (produce, e2e) or fetches made (consume).
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// EndTxn(commit) round trips in milliseconds (produce --transactional): p50, p99,
    /// p99.9, max.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_latency_ms: Option<[f64; 4]>,
    /// Where a record's time went (e2e): each stage's percentiles in milliseconds, p50,
    /// p99, p99.9, max, in pipeline order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
}

/// One stage of a record's way from producer to consumer.
#[derive(Serialize, Debug)]
pub struct Stage {
    /// From which event to which, e.g. `sent -> acked`.
    pub name: String,
    /// Where it was measured: `client` (this process's clock) or `broker` (its metrics).
    pub by: &'static str,
    /// p50, p99, p99.9, max in milliseconds.
    pub ms: [f64; 4],
}

impl BenchReport {
    fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("a report serializes")
            );
            return;
        }
        println!(
            "{}: {} records in {} requests, {:.2} s = {:.0} records/s, {:.1} MB/s, {} errors",
            self.mode,
            self.records,
            self.requests,
            self.seconds,
            self.records_per_sec,
            self.mb_per_sec,
            self.errors
        );
        if let Some([p50, p99, p999, max]) = self.latency_ms {
            println!(
                "latency ({}): p50 {p50:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms, max {max:.3} ms",
                self.latency_of
            );
        }
        if let Some([p50, p99, p999, max]) = self.commit_latency_ms {
            println!(
                "transaction commit (EndTxn round trip): p50 {p50:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms, max {max:.3} ms"
            );
        }
        for Stage { name, by, ms } in &self.stages {
            let [p50, p99, p999, max] = ms;
            println!(
                "  {name:<28} ({by}): p50 {p50:.3} ms, p99 {p99:.3} ms, p99.9 {p999:.3} ms, max {max:.3} ms"
            );
        }
    }
}

/// Runs a bench subcommand and prints its report.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let (report, json) = match command {
        BenchCommand::Produce(a) => (produce(&a).await?, a.target.json),
        BenchCommand::Consume(a) => (consume(&a).await?, a.target.json),
        BenchCommand::E2e(a) => (e2e(&a).await?, a.target.json),
    };
    report.print(json);
    Ok(())
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn client(target: &Target) -> Client {
    Client::new(target.bootstrap, Duration::from_secs(30))
}

async fn ensure_topic(target: &Target) -> anyhow::Result<()> {
    let request = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(topic_name(&target.topic))
        .with_num_partitions(target.partitions)
        .with_replication_factor(-1)]);
    let response = client(target)
        .call(ApiKey::CreateTopics, 5, RequestKind::CreateTopics(request))
        .await
        .map_err(|e| anyhow::anyhow!("CreateTopics: {e:?}"))?;
    let ResponseKind::CreateTopics(r) = response else {
        bail!("unexpected CreateTopics answer")
    };
    let code = r.topics.first().map_or(-1, |t| t.error_code);
    if code != 0 && code != ResponseError::TopicAlreadyExists.code() {
        bail!("creating topic {}: error {code}", target.topic);
    }
    Ok(())
}

fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn produce(args: &ProduceArgs) -> anyhow::Result<BenchReport> {
    if matches!(args.acks, Acks::None) {
        bail!("acks=0 has no round trip to time; use 1 or all");
    }
    ensure_topic(&args.target).await?;
    let value = vec![b'x'; args.record_size];
    let batch =
        record_batch((0..args.batch_records).map(|_| (None, &value[..], crate::server::now_ms())));
    let requests = args.records.div_ceil(args.batch_records as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(histogram()));
    let commits = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_txn = args.transactional.filter(|n| *n > 0);
    for connection in 0..args.connections.max(1) {
        let (next, latencies, commits, errors) = (
            next.clone(),
            latencies.clone(),
            commits.clone(),
            errors.clone(),
        );
        let batch = match per_txn {
            // The transactional bit is under the CRC: the batch is built with it.
            Some(_) => seedlog_core::wire::transactional_batch(
                (0, 0, 0),
                (0..args.batch_records).map(|_| (None, &value[..], crate::server::now_ms())),
            ),
            None => batch.clone(),
        };
        let batch_records = args.batch_records;
        let (target, acks, idempotent) = (args.target.clone(), args.acks, args.idempotent);
        tasks.push(tokio::spawn(async move {
            let mut client = client(&target);
            let mut local = histogram();
            let mut local_commits = histogram();
            let producer = match (per_txn, idempotent) {
                (Some(_), _) => {
                    let id = format!("seedlog-bench-{connection}");
                    Some(init_transactional(&mut client, &id).await?)
                }
                (None, true) => Some((init_producer_id(&mut client).await?, 0)),
                (None, false) => None,
            };
            let txn_id = format!("seedlog-bench-{connection}");
            let mut in_txn = 0usize;
            let mut sequences = vec![0i32; target.partitions.max(1) as usize];
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                if let (Some(_), Some(producer), 0) = (per_txn, producer, in_txn) {
                    add_partitions(&mut client, &txn_id, producer, &target).await?;
                }
                let partition = (n % target.partitions as u64) as i32;
                let batch = match producer {
                    Some((id, epoch)) => {
                        let sequence = &mut sequences[partition as usize];
                        let mut numbered = BytesMut::from(&batch[..]);
                        seedlog_core::batch::stamp_producer(&mut numbered, id, epoch, *sequence);
                        *sequence = sequence.wrapping_add(batch_records as i32);
                        numbered.freeze()
                    }
                    None => batch.clone(),
                };
                let sent = Instant::now();
                let ok = match client
                    .call(
                        ApiKey::Produce,
                        9,
                        produce_request(&target.topic, partition, acks.code(), 30_000, batch),
                    )
                    .await
                {
                    Ok(ResponseKind::Produce(r)) => {
                        r.responses[0].partition_responses[0].error_code == 0
                    }
                    _ => false,
                };
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let _ = local.record(sent.elapsed().as_micros() as u64);
                in_txn += 1;
                if let (Some(per), Some(producer)) = (per_txn, producer) {
                    if in_txn == per {
                        in_txn = 0;
                        let began = Instant::now();
                        end_txn(&mut client, &txn_id, producer).await?;
                        let _ = local_commits.record(began.elapsed().as_micros() as u64);
                    }
                }
            }
            if let (Some(_), Some(producer), true) = (per_txn, producer, in_txn > 0) {
                let began = Instant::now();
                end_txn(&mut client, &txn_id, producer).await?;
                let _ = local_commits.record(began.elapsed().as_micros() as u64);
            }
            latencies.lock().await.add(&local).expect("same bounds");
            commits
                .lock()
                .await
                .add(&local_commits)
                .expect("same bounds");
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a producer task failed")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let records = requests * args.batch_records as u64;
    let latency = percentiles(&*latencies.lock().await);
    Ok(BenchReport {
        mode: "produce",
        requests,
        records,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: (records * args.record_size as u64) as f64 / seconds / 1e6,
        latency_ms: Some(latency),
        latency_of: "produce request round trip",
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        commit_latency_ms: match per_txn {
            Some(_) => Some(percentiles(&*commits.lock().await)),
            None => None,
        },
        stages: Vec::new(),
    })
}

/// A transactional producer's (producer id, epoch): its coordinator is the broker benched
/// (FindCoordinator creates `__transaction_state` first), retried while it is busy.
async fn init_transactional(client: &mut Client, id: &str) -> anyhow::Result<(i64, i16)> {
    use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    let find = RequestKind::FindCoordinator(
        FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_key(StrBytes::from_string(id.to_string())),
    );
    for _ in 0..100 {
        let found = client.call(ApiKey::FindCoordinator, 3, find.clone()).await;
        if !matches!(found, Ok(ResponseKind::FindCoordinator(ref r)) if r.error_code == 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let request = RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.to_string()))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        match client.call(ApiKey::InitProducerId, 4, request).await {
            Ok(ResponseKind::InitProducerId(r)) if r.error_code == 0 => {
                return Ok((r.producer_id.0, r.producer_epoch))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("no transactional producer id for {id} (is the broker benched the coordinator?)")
}

/// Adds every partition of the benched topic to the producer's transaction.
async fn add_partitions(
    client: &mut Client,
    id: &str,
    (producer_id, epoch): (i64, i16),
    target: &Target,
) -> anyhow::Result<()> {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnRequest, AddPartitionsToTxnTopic,
    };
    let request = RequestKind::AddPartitionsToTxn(
        AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(
                id.to_string(),
            )))
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(topic_name(&target.topic))
                .with_partitions((0..target.partitions).collect())]),
    );
    for _ in 0..5000 {
        if let Ok(ResponseKind::AddPartitionsToTxn(r)) = client
            .call(ApiKey::AddPartitionsToTxn, 3, request.clone())
            .await
        {
            let codes = r.results_by_topic_v3_and_below.iter();
            let mut codes = codes.flat_map(|t| t.results_by_partition.iter());
            if codes.all(|p| p.partition_error_code == 0) {
                return Ok(());
            }
        }
        // CONCURRENT_TRANSACTIONS while the last one's markers are written.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("AddPartitionsToTxn kept failing")
}

/// Commits the producer's transaction.
async fn end_txn(
    client: &mut Client,
    id: &str,
    (producer_id, epoch): (i64, i16),
) -> anyhow::Result<()> {
    use kafka_protocol::messages::end_txn_request::EndTxnRequest;
    let request = RequestKind::EndTxn(
        EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(id.to_string())))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(true),
    );
    match client.call(ApiKey::EndTxn, 3, request).await {
        Ok(ResponseKind::EndTxn(r)) if r.error_code == 0 => Ok(()),
        other => bail!("EndTxn failed: {other:?}"),
    }
}

/// A producer id for an idempotent producer.
async fn init_producer_id(client: &mut Client) -> anyhow::Result<i64> {
    let request = RequestKind::InitProducerId(
        InitProducerIdRequest::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    match client.call(ApiKey::InitProducerId, 4, request).await {
        Ok(ResponseKind::InitProducerId(r)) if r.error_code == 0 => Ok(r.producer_id.0),
        Ok(ResponseKind::InitProducerId(r)) => bail!("InitProducerId: error {}", r.error_code),
        other => bail!("InitProducerId failed: {other:?}"),
    }
}

/// A Fetch of every partition of `topic` from `positions` (indexed by partition).
fn fetch(topic: &str, positions: &[i64], max_bytes: i32, max_wait_ms: i32) -> RequestKind {
    let positions = positions
        .iter()
        .enumerate()
        .map(|(p, offset)| (topic, p as i32, *offset));
    fetch_request(positions, max_wait_ms, max_bytes, max_bytes)
}

/// Walks fetched batches by their headers; calls `each` with every whole batch at or after
/// the position, and moves the position past it.
fn walk_batches(bytes: &[u8], position: &mut i64, mut each: impl FnMut(&BatchView<'_>)) {
    for batch in seedlog_core::batch::complete_batches(bytes) {
        if batch.last_offset() >= *position {
            each(&batch);
            *position = batch.next_offset();
        }
    }
}

async fn consume(args: &ConsumeArgs) -> anyhow::Result<BenchReport> {
    let mut client = client(&args.target);
    let mut positions = vec![0i64; args.target.partitions as usize];
    let (mut records, mut bytes, mut errors, mut fetches) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    while records < args.records {
        let request = fetch(&args.target.topic, &positions, args.fetch_bytes, 500);
        fetches += 1;
        let Ok(ResponseKind::Fetch(r)) = client.call(ApiKey::Fetch, 12, request).await else {
            errors += 1;
            continue;
        };
        let mut progressed = false;
        for p in r.responses.iter().flat_map(|t| &t.partitions) {
            let Some(position) = positions.get_mut(p.partition_index as usize) else {
                continue;
            };
            if p.error_code != 0 {
                errors += 1;
                continue;
            }
            let data = p.records.clone().unwrap_or_default();
            walk_batches(&data, position, |batch| {
                records += batch.record_count() as u64;
                bytes += batch.bytes().len() as u64;
                progressed = true;
            });
        }
        if !progressed {
            break; // the end of the log
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(BenchReport {
        mode: "consume",
        requests: fetches,
        records,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / 1e6,
        latency_ms: None,
        latency_of: "none",
        errors,
        commit_latency_ms: None,
        stages: Vec::new(),
    })
}

async fn e2e(args: &E2eArgs) -> anyhow::Result<BenchReport> {
    if args.record_size < 8 {
        bail!("--record-size must be at least 8: each record carries its send time");
    }
    ensure_topic(&args.target).await?;
    // Start the consumer at the current end of every partition.
    let mut positions = Vec::new();
    for partition in 0..args.target.partitions {
        positions.push(latest_offset(&args.target, partition).await?);
    }
    let stages_before = broker_stages(&args.admin).await?;
    let epoch = Instant::now();
    let deadline = Duration::from_secs(args.seconds);
    let total = args.rate * args.seconds;
    let consumer_target = args.target.clone();
    let consumer = tokio::spawn(async move {
        let mut client = client(&consumer_target);
        let mut h = histogram();
        let mut seen = 0u64;
        while seen < total && epoch.elapsed() < deadline + Duration::from_secs(10) {
            let request = fetch(&consumer_target.topic, &positions, 1 << 20, 100);
            let Ok(ResponseKind::Fetch(r)) = client.call(ApiKey::Fetch, 12, request).await else {
                continue;
            };
            let now = epoch.elapsed().as_micros() as u64;
            for p in r.responses.iter().flat_map(|t| &t.partitions) {
                let Some(position) = positions.get_mut(p.partition_index as usize) else {
                    continue;
                };
                let data = p.records.clone().unwrap_or_default();
                // Walk the batches in place (as `consume` does), and read one stamp per
                // batch: every record of a batch carries the same one (a batch is one
                // linger's records), and decoding every record cost the client more CPU
                // than the broker spent, which on a shared two-core machine showed up as
                // broker latency.
                let from = *position;
                walk_batches(&data, position, |batch| {
                    let records = (batch.last_offset() - batch.base_offset().max(from) + 1) as u64;
                    let sent = batch
                        .key_values()
                        .and_then(|mut records| records.next())
                        .and_then(|record| record.value)
                        .and_then(|v| v.get(..8))
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes);
                    if let Some(sent) = sent {
                        let _ = h.record_n(now.saturating_sub(sent).max(1), records);
                    }
                    seen += records;
                });
            }
        }
        (h, seen)
    });
    // One batch per linger tick (a millisecond by default) keeps the offered load smooth at
    // any rate. Senders on their own connections take the batches in turn, so a round trip
    // that outlasts a tick does not hold the next batch back (a single connection with one
    // request in flight fell behind near 2 M records/s, and the catching up showed as
    // latency).
    let (batches, queue) = tokio::sync::mpsc::channel::<(i32, bytes::Bytes, u64, u64)>(64);
    let queue = Arc::new(Mutex::new(queue));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (queue, errors, target, acks) = (
            queue.clone(),
            errors.clone(),
            args.target.clone(),
            args.acks,
        );
        senders.push(tokio::spawn(async move {
            let mut producer = client(&target);
            let mut acked = histogram();
            loop {
                let Some((partition, batch, stamp, count)) = queue.lock().await.recv().await else {
                    break;
                };
                let request = produce_request(&target.topic, partition, acks.code(), 30_000, batch);
                match producer.call(ApiKey::Produce, 9, request).await {
                    Ok(ResponseKind::Produce(r))
                        if r.responses[0].partition_responses[0].error_code == 0 =>
                    {
                        let now = epoch.elapsed().as_micros() as u64;
                        let _ = acked.record_n(now.saturating_sub(stamp).max(1), count);
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            acked
        }));
    }
    let (mut sent, mut batches_sent) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(args.linger_ms.max(1)));
    for ticks in 0u64.. {
        if sent >= total {
            break;
        }
        tick.tick().await;
        let due = (args.rate as u128 * epoch.elapsed().as_micros() / 1_000_000) as u64;
        // A producer that fell behind catches up in batches a broker accepts (the default
        // message.max.bytes is about 1 MB), not in one oversize batch that is refused.
        let batch_max = (512 * 1024 / args.record_size.max(1)).max(1) as u64;
        let count = due.min(total).saturating_sub(sent).min(batch_max);
        if count == 0 {
            continue;
        }
        let stamp = epoch.elapsed().as_micros() as u64;
        let mut value = BytesMut::with_capacity(args.record_size);
        value.put_u64(stamp);
        value.resize(args.record_size, b'x');
        // Built as the broker builds its own batches (no per-record allocation): the
        // generic encoder's per-record allocations cost the load generator more CPU than
        // the broker spent on the same records.
        let records = vec![(None, Some(&value[..])); count as usize];
        let batch = data_batch(crate::server::now_ms(), &records).freeze();
        let partition = (ticks % args.target.partitions as u64) as i32;
        if batches
            .send((partition, batch, stamp, count))
            .await
            .is_err()
        {
            break;
        }
        sent += count;
        batches_sent += 1;
    }
    drop(batches);
    let mut acked = histogram();
    for sender in senders {
        let _ = acked.add(sender.await.context("a producer task failed")?);
    }
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    let seconds = epoch.elapsed().as_secs_f64();
    let (latencies, seen) = consumer.await.context("the consumer task failed")?;
    let stages_after = broker_stages(&args.admin).await?;
    Ok(BenchReport {
        mode: "e2e",
        requests: batches_sent,
        records: seen,
        seconds,
        records_per_sec: seen as f64 / seconds,
        mb_per_sec: (seen * args.record_size as u64) as f64 / seconds / 1e6,
        latency_ms: Some(percentiles(&latencies)),
        latency_of: "produce to consume",
        errors: errors + total.saturating_sub(seen),
        commit_latency_ms: None,
        stages: vec![
            Stage {
                name: "sent -> acked".into(),
                by: "client",
                ms: percentiles(&acked),
            },
            Stage {
                name: "sent -> fetched".into(),
                by: "client",
                ms: percentiles(&latencies),
            },
        ]
        .into_iter()
        .chain(stages_after.since(&stages_before))
        .collect(),
    })
}

async fn latest_offset(target: &Target, partition: i32) -> anyhow::Result<i64> {
    use kafka_protocol::messages::list_offsets_request::{
        ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
    };
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(&target.topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    match client(target)
        .call(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request))
        .await
    {
        Ok(ResponseKind::ListOffsets(r)) => Ok(r.topics[0].partitions[0].offset),
        other => bail!("ListOffsets failed: {other:?}"),
    }
}

/// The brokers' `seedlog_record_stage_seconds` buckets, summed over brokers: stage ->
/// (upper bound in seconds, cumulative count).
#[derive(Default)]
struct StageBuckets(BTreeMap<String, BTreeMap<u64, (f64, u64)>>);

/// Scrapes each admin listener's stage histograms.
async fn broker_stages(admins: &[String]) -> anyhow::Result<StageBuckets> {
    let mut buckets = StageBuckets::default();
    for admin in admins {
        let text = scrape(admin)
            .await
            .with_context(|| format!("scraping {admin}/metrics"))?;
        buckets.add(&text);
    }
    Ok(buckets)
}

async fn scrape(admin: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

impl StageBuckets {
    /// Adds the stage buckets of one scrape.
    fn add(&mut self, text: &str) {
        let label = |line: &str, name: &str| {
            let from = line.find(&format!("{name}=\""))? + name.len() + 2;
            let to = from + line[from..].find('"')?;
            Some(line[from..to].to_string())
        };
        for line in text.lines() {
            if !line.starts_with("seedlog_record_stage_seconds_bucket{") {
                continue;
            }
            let (Some(stage), Some(le), Some(count)) = (
                label(line, "stage"),
                label(line, "le"),
                line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            // Keyed by the bound's bits: buckets sort by bound, as positive floats do.
            let entry = self.0.entry(stage).or_default();
            let bucket = entry.entry(bound.to_bits()).or_insert((bound, 0));
            bucket.1 += count as u64;
        }
    }

    /// Each stage's percentiles over what happened between `before` and now, read off
    /// the bucket bounds (so each is an upper bound, within a factor of √2).
    fn since(&self, before: &StageBuckets) -> Vec<Stage> {
        const ORDER: [&str; 5] = [
            "queued",
            "sync_wait",
            "sync",
            "commit",
            "appended_to_visible",
        ];
        let mut out = Vec::new();
        for name in ORDER {
            let Some(after) = self.0.get(name) else {
                continue;
            };
            let earlier = before.0.get(name);
            let counts: Vec<(f64, u64)> = after
                .iter()
                .map(|(bits, (bound, n))| {
                    let was = earlier.and_then(|e| e.get(bits)).map_or(0, |b| b.1);
                    (*bound, n.saturating_sub(was))
                })
                .collect();
            let total = counts.last().map_or(0, |c| c.1);
            if total == 0 {
                continue;
            }
            let at = |q: f64| {
                let rank = (q * total as f64).ceil() as u64;
                let bound = counts
                    .iter()
                    .find(|(_, n)| *n >= rank.max(1))
                    .map_or(f64::INFINITY, |(b, _)| *b);
                bound * 1000.0
            };
            out.push(Stage {
                name: match name {
                    "queued" => "read -> taken (requests)",
                    "sync_wait" => "appended -> sync started",
                    "sync" => "sync started -> synced",
                    "commit" => "synced -> visible",
                    _ => "appended -> visible",
                }
                .into(),
                by: "broker",
                ms: [at(0.5), at(0.99), at(0.999), at(1.0)],
            });
        }
        out
    }
}
