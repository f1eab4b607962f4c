//! Transactions, as librdkafka and the Java client run them: a transactional id, its
//! coordinator (FindCoordinator), InitProducerId, then transactions over a few partitions
//! (AddPartitionsToTxn, idempotent produces retried until answered, EndTxn), committed or
//! aborted at random, through coordinator and leader kills, cuts and lost packets. A
//! producer fenced by its transaction's timeout starts a new incarnation, as a restarted
//! client does.
//!
//! A `read_committed` reader runs beside them, filtering aborted transactions the way
//! clients do (the aborted list of each fetch, ended by the producer's next marker), and
//! after the heal every partition is read again that way: the `read-committed`,
//! `lso-monotonic` and `txn-atomic` checkers judge what they saw.

use std::collections::BTreeSet;

use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnTopic,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::{ProducerId, TransactionalId};
use seedlog_core::wire::transactional_batch;

use super::*;
use crate::history::{TxnFate, TXN_PREFIX};

/// What producers ask as `transaction.timeout.ms`: short, so that faults time some out.
pub(super) const TXN_TIMEOUT_MS: i32 = 4_000;

/// Errors that mean "this incarnation is over": fenced by a newer epoch (a timeout abort).
fn is_fenced(code: i16) -> bool {
    [
        ResponseError::ProducerFenced,
        ResponseError::InvalidProducerEpoch,
        ResponseError::InvalidProducerIdMapping,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// Errors after which the request goes to the coordinator again (found afresh).
fn is_coordinator_moving(code: i16) -> bool {
    [
        ResponseError::NotCoordinator,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::ConcurrentTransactions,
        ResponseError::RequestTimedOut,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// What a request to the coordinator came to.
pub(super) enum Answer {
    Ok(Box<ResponseKind>),
    /// Fenced: this incarnation is over.
    Fenced,
    /// Another error the producer cannot retry.
    Failed,
    /// The workload stopped before an answer came.
    Stopped,
}

/// A transactional producer's client side: its coordinator, and requests retried the way
/// clients retry them.
pub(super) struct TxnProducer {
    ctx: Ctx,
    txn_id: String,
    pub(super) client: ClusterClient,
    dice: Dice,
    coordinator: Option<i32>,
    /// It works through the group phase (as group members do), not only the workload's.
    lasting: bool,
    /// Its `transaction.timeout.ms`.
    timeout_ms: i32,
}

impl TxnProducer {
    /// A producer of `txn_id`; `stream` seeds its dice.
    pub(super) fn new(
        ctx: Ctx,
        txn_id: String,
        stream: u64,
        lasting: bool,
        timeout_ms: i32,
    ) -> TxnProducer {
        TxnProducer {
            timeout_ms,
            dice: Dice::new(ctx.plan.seed, stream),
            client: ctx.client(Duration::from_secs(5)),
            txn_id,
            coordinator: None,
            lasting,
            ctx,
        }
    }

    fn done(&self) -> bool {
        if self.lasting {
            self.ctx.groups_stopped()
        } else {
            self.ctx.stopped()
        }
    }

    pub(super) fn txn_id(&self) -> TransactionalId {
        TransactionalId(StrBytes::from_string(self.txn_id.clone()))
    }

    /// Sends `request` to the coordinator until it answers with something other than
    /// "try again"; `code` reads the answer's error.
    pub(super) async fn ask(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
        code: impl Fn(&ResponseKind) -> i16,
    ) -> Answer {
        loop {
            if self.done() {
                return Answer::Stopped;
            }
            let coordinator = match self.coordinator {
                Some(c) => c,
                None => match self.client.txn_coordinator(&self.txn_id).await {
                    Ok(c) => *self.coordinator.insert(c),
                    Err(_) => {
                        sleep_ms(self.dice.between(50, 300)).await;
                        continue;
                    }
                },
            };
            let outcome = self
                .client
                .call_broker(coordinator, api, version, request.clone())
                .await;
            match outcome {
                Ok(response) => match code(&response) {
                    0 => return Answer::Ok(Box::new(response)),
                    c if is_fenced(c) => return Answer::Fenced,
                    c if is_coordinator_moving(c) => {
                        if c != ResponseError::ConcurrentTransactions.code() {
                            self.coordinator = None;
                        }
                    }
                    c => {
                        let now = self.ctx.now_ms();
                        self.ctx.history().trace(now, ("txn-refused", api, c));
                        return Answer::Failed;
                    }
                },
                Err(_) => self.coordinator = None,
            }
            sleep_ms(self.dice.between(20, 200)).await;
        }
    }

    /// A new incarnation: (producer id, epoch).
    pub(super) async fn init(&mut self) -> Option<(i64, i16)> {
        let request = RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(self.txn_id()))
                .with_transaction_timeout_ms(self.timeout_ms)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        let code = |r: &ResponseKind| match r {
            ResponseKind::InitProducerId(r) => r.error_code,
            _ => -1,
        };
        loop {
            match self
                .ask(ApiKey::InitProducerId, 4, request.clone(), code)
                .await
            {
                Answer::Ok(response) => {
                    if let ResponseKind::InitProducerId(r) = *response {
                        return Some((r.producer_id.0, r.producer_epoch));
                    }
                }
                Answer::Stopped => return None,
                _ => sleep_ms(self.dice.between(50, 300)).await,
            }
        }
    }

    pub(super) async fn add_partitions(
        &mut self,
        producer: (i64, i16),
        partitions: &[Partition],
    ) -> Answer {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in partitions {
            topics.entry(t).or_default().push(*p);
        }
        let topics = topics
            .into_iter()
            .map(|(t, ps)| {
                AddPartitionsToTxnTopic::default()
                    .with_name(name(t))
                    .with_partitions(ps)
            })
            .collect();
        let request = RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(self.txn_id())
                .with_v3_and_below_producer_id(ProducerId(producer.0))
                .with_v3_and_below_producer_epoch(producer.1)
                .with_v3_and_below_topics(topics),
        );
        let code = |r: &ResponseKind| match r {
            ResponseKind::AddPartitionsToTxn(r) => r
                .results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| &t.results_by_partition)
                .map(|p| p.partition_error_code)
                .find(|c| *c != 0)
                .unwrap_or(0),
            _ => -1,
        };
        self.ask(ApiKey::AddPartitionsToTxn, 3, request, code).await
    }

    /// EndTxn at `version`: from 5 on (KIP-890's transactions V2) the answer carries the
    /// epoch the next transaction uses.
    pub(super) async fn end(&mut self, producer: (i64, i16), commit: bool, version: i16) -> Answer {
        let request = RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(self.txn_id())
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_committed(commit),
        );
        let code = |r: &ResponseKind| match r {
            ResponseKind::EndTxn(r) => r.error_code,
            _ => -1,
        };
        self.ask(ApiKey::EndTxn, version, request, code).await
    }

    /// Produces one transactional batch until answered: `Ok` if written, `Err(fenced)`.
    pub(super) async fn produce(
        &mut self,
        partition: &Partition,
        batch: Bytes,
        values: &[String],
    ) -> Result<(), bool> {
        loop {
            if self.done() {
                return Err(false);
            }
            self.ctx.history().counts.produce_requests += 1;
            let request = produce_request(partition, -1, batch.clone());
            let outcome =
                call_partition(&mut self.client, partition, ApiKey::Produce, 9, request).await;
            if let Ok(ResponseKind::Produce(r)) = outcome {
                let p = &r.responses[0].partition_responses[0];
                let now = self.ctx.now_ms();
                match p.error_code {
                    0 => {
                        self.ctx
                            .history()
                            .acked(now, partition, p.base_offset, values, true);
                        return Ok(());
                    }
                    c if is_fenced(c) => return Err(true),
                    c if is_stale_leader(c) => {
                        self.client.forget_leader(&partition.0, partition.1);
                    }
                    c if c == ResponseError::DuplicateSequenceNumber.code()
                        || c == ResponseError::OutOfOrderSequenceNumber.code() =>
                    {
                        // The partition forgot this producer (a single copy lost its
                        // tail): start a new incarnation, as a client would.
                        return Err(true);
                    }
                    _ => {}
                }
            }
            sleep_ms(self.dice.between(20, 200)).await;
        }
    }
}

/// Runs transactions until the workload stops.
pub async fn txn_producer(ctx: Ctx, id: u32) {
    let txn_id = format!("sim-txn-{id}");
    let mut producer = TxnProducer::new(ctx, txn_id, 5000 + u64::from(id), false, TXN_TIMEOUT_MS);
    let partitions = producer.ctx.source_partitions();
    let workload = producer.ctx.plan.scenario.workload.clone();
    let mut t = 0u64;
    'incarnation: while let Some(me) = producer.init().await {
        let mut sequences: BTreeMap<Partition, i32> = BTreeMap::new();
        loop {
            t += 1;
            let wanted = producer.dice.between(1, 3.min(partitions.len() as u64));
            let mut chosen: Vec<Partition> = Vec::new();
            while chosen.len() < wanted as usize {
                let i = producer.dice.between(0, partitions.len() as u64 - 1) as usize;
                if !chosen.contains(&partitions[i]) {
                    chosen.push(partitions[i].clone());
                }
            }
            chosen.sort();
            match producer.add_partitions(me, &chosen).await {
                Answer::Ok(_) => {}
                Answer::Stopped => return,
                // Nothing was added: the transaction never began.
                Answer::Fenced | Answer::Failed => continue 'incarnation,
            }
            let now = producer.ctx.now_ms();
            producer.ctx.history().txn_begun(now, id, t);
            for partition in &chosen {
                let count = producer.dice.pick(workload.batch_records).round().max(1.0) as usize;
                let values: Vec<String> = (0..count)
                    .map(|k| format!("{TXN_PREFIX}{id}-{t}-{k}"))
                    .collect();
                let sequence = sequences.entry(partition.clone()).or_insert(0);
                let timestamp = seedlog_node::server::now_ms();
                let batch = transactional_batch(
                    (me.0, me.1, *sequence),
                    values.iter().map(|v| (None, v.as_bytes(), timestamp)),
                );
                *sequence = sequence.wrapping_add(count as i32);
                producer.ctx.history().txn_values(id, t, partition, &values);
                match producer.produce(partition, batch, &values).await {
                    Ok(()) => {}
                    Err(fenced) => {
                        // Never ended by this producer: its timeout (or the next
                        // incarnation) aborts it.
                        let now = producer.ctx.now_ms();
                        producer
                            .ctx
                            .history()
                            .txn_ended(now, id, t, TxnFate::Aborted);
                        if fenced {
                            continue 'incarnation;
                        }
                        return;
                    }
                }
                sleep_ms(producer.dice.pick(workload.think_ms) as u64).await;
            }
            let commit = producer.dice.between(0, 9) < 7;
            let fate = match producer.end(me, commit, 3).await {
                Answer::Ok(_) if commit => TxnFate::Committed,
                Answer::Ok(_) => TxnFate::Aborted,
                // Fenced: the transaction timed out and was aborted before the decision;
                // refused otherwise, it stays open until its timeout aborts it.
                Answer::Fenced | Answer::Failed => TxnFate::Aborted,
                Answer::Stopped => TxnFate::Unknown,
            };
            let now = producer.ctx.now_ms();
            producer.ctx.history().txn_ended(now, id, t, fate);
            if producer.ctx.stopped() {
                return;
            }
            if !matches!(fate, TxnFate::Committed) || producer.dice.between(0, 19) == 0 {
                // Now and then, and after trouble, the client restarts.
                if producer.dice.between(0, 3) == 0 {
                    continue 'incarnation;
                }
            }
        }
    }
}

/// A `read_committed` view of one partition: the aborted transactions a fetch listed that
/// the reader has not passed the end of yet, applied to records as clients apply them.
#[derive(Default)]
pub struct CommittedFilter {
    /// Listed aborted transactions not reached yet: (first offset, producer id).
    pending: BTreeSet<(i64, i64)>,
    /// Producers whose records are being dropped until their next marker.
    dropping: BTreeSet<i64>,
}

/// One record of a fetch, as a read_committed client sees its batch.
pub struct FetchedRecord {
    /// Offset.
    pub offset: i64,
    /// Value (lossy UTF-8).
    pub value: String,
    /// A control record (marker).
    pub control: bool,
    /// Producer id of its batch.
    pub producer_id: i64,
    /// In a transaction.
    pub transactional: bool,
}

impl CommittedFilter {
    /// The records a client hands the application, from one fetch's records (in order) and
    /// its aborted list.
    pub fn apply(
        &mut self,
        aborted: &[(i64, i64)],
        records: Vec<FetchedRecord>,
    ) -> Vec<FetchedRecord> {
        self.pending
            .extend(aborted.iter().map(|&(pid, first)| (first, pid)));
        let mut out = Vec::new();
        for r in records {
            while let Some(&(first, pid)) = self.pending.first() {
                if first > r.offset {
                    break;
                }
                self.pending.pop_first();
                self.dropping.insert(pid);
            }
            if r.control {
                self.dropping.remove(&r.producer_id);
                continue;
            }
            if r.transactional && self.dropping.contains(&r.producer_id) {
                continue;
            }
            out.push(r);
        }
        out
    }
}

/// What one partition of a read_committed fetch said.
pub struct CommittedFetch {
    /// Records at or after the fetch position.
    pub records: Vec<FetchedRecord>,
    /// Aborted transactions listed: (producer id, first offset).
    pub aborted: Vec<(i64, i64)>,
    /// Last stable offset.
    pub lso: i64,
    /// High watermark.
    pub hw: i64,
}

/// A read_committed fetch of one partition from `position`: its answer, or an error code.
pub async fn fetch_committed(
    client: &mut ClusterClient,
    partition: &Partition,
    position: i64,
    max_wait_ms: i32,
) -> Result<CommittedFetch, i16> {
    let positions = BTreeMap::from([(partition.clone(), position)]);
    let mut request = fetch_request(client, &positions, max_wait_ms);
    if let RequestKind::Fetch(f) = &mut request {
        f.isolation_level = 1;
    }
    let Ok(ResponseKind::Fetch(r)) =
        call_partition(client, partition, ApiKey::Fetch, 12, request).await
    else {
        return Err(-1);
    };
    let Some(p) = r.responses.into_iter().flat_map(|t| t.partitions).next() else {
        return Err(-1);
    };
    if p.error_code != 0 {
        if is_stale_leader(p.error_code) {
            client.forget_leader(&partition.0, partition.1);
        }
        return Err(p.error_code);
    }
    let mut bytes = p.records.unwrap_or_default();
    let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|_| -2i16)?;
    let records = sets
        .iter()
        .flat_map(|s| s.records.iter())
        .filter(|r| r.offset >= position)
        .map(|r| FetchedRecord {
            offset: r.offset,
            value: String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
            control: r.control,
            producer_id: r.producer_id,
            transactional: r.transactional,
        })
        .collect();
    let aborted = p
        .aborted_transactions
        .unwrap_or_default()
        .iter()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    Ok(CommittedFetch {
        records,
        aborted,
        lso: p.last_stable_offset,
        hw: p.high_watermark,
    })
}

/// Reads every partition with read_committed until the workload stops.
pub async fn txn_reader(ctx: Ctx, id: u32) {
    let reader = 1000 + id;
    let mut client = ctx.client(Duration::from_secs(2));
    let mut positions: BTreeMap<Partition, (i64, CommittedFilter)> = ctx
        .partitions()
        .into_iter()
        .map(|p| (p, (0, CommittedFilter::default())))
        .collect();
    while !ctx.stopped() {
        for (partition, (position, filter)) in &mut positions {
            let Ok(fetched) = fetch_committed(&mut client, partition, *position, 50).await else {
                continue;
            };
            let now = ctx.now_ms();
            let mut history = ctx.history();
            history.stable_offset(now, reader, partition, fetched.lso);
            if let Some(last) = fetched.records.last() {
                *position = last.offset + 1;
            }
            let lso = fetched.lso;
            for r in filter.apply(&fetched.aborted, fetched.records) {
                history.committed_read(now, reader, partition, r.offset, &r.value, lso);
            }
        }
        sleep_ms(20).await;
    }
}

/// After the heal: every partition becomes stable (its open transactions end, by their
/// producers or their timeout), then is read whole with read_committed for `txn-atomic`.
pub async fn final_committed_read(ctx: &Ctx, deadline: Instant) -> Result<(), String> {
    let mut client = ctx.client(Duration::from_secs(2));
    let mut visible: BTreeMap<Partition, Vec<(i64, String)>> = BTreeMap::new();
    for partition in ctx.partitions() {
        let seen = read_committed_whole(ctx, &mut client, &partition, deadline).await;
        visible.insert(partition, seen);
    }
    ctx.history().check_txns_final(&visible);
    Ok(())
}

/// Reads `partition` from its start with read_committed, as a client hands records to its
/// application, once it is stable (no transaction open below its high watermark). Past
/// the deadline, the partition is reported stuck and what was read so far returned.
pub(super) async fn read_committed_whole(
    ctx: &Ctx,
    client: &mut ClusterClient,
    partition: &Partition,
    deadline: Instant,
) -> Vec<(i64, String)> {
    let mut filter = CommittedFilter::default();
    let mut position = 0;
    let mut seen = Vec::new();
    loop {
        if Instant::now() >= deadline {
            let detail = format!("{partition:?}: read_committed stuck at {position}");
            ctx.history().txn_stuck(detail);
            return seen;
        }
        match fetch_committed(client, partition, position, 0).await {
            Ok(fetched) => {
                if let Some(last) = fetched.records.last() {
                    position = last.offset + 1;
                }
                let stable = fetched.lso == fetched.hw && position >= fetched.lso;
                for r in filter.apply(&fetched.aborted, fetched.records) {
                    seen.push((r.offset, r.value));
                }
                if stable {
                    return seen;
                }
                if position >= fetched.lso {
                    sleep_ms(100).await; // Waiting for open transactions to end.
                }
            }
            Err(code) if code == ResponseError::KafkaStorageError.code() => {
                if ctx
                    .history()
                    .damaged_from(partition)
                    .is_some_and(|d| d <= position)
                {
                    position += 1;
                } else {
                    sleep_ms(50).await;
                }
            }
            Err(_) => sleep_ms(50).await,
        }
    }
}
