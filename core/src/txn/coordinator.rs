//! The coordinator of every transactional id whose `__transaction_state` partition this
//! broker leads.
//!
//! Inputs: the transaction APIs' requests (each with a `waiter` handle the driver maps back
//! to its connection), [`TxnCoordinator::write_done`] when a write it asked for is
//! committed or has failed, [`TxnCoordinator::markers_done`] when every partition of a
//! [`MarkerJob`] holds its marker, the records of a partition being loaded, and
//! [`TxnCoordinator::tick`]. Outputs ([`TxnOutput`]): answers, record batches to append to
//! a partition of `__transaction_state` with acks=all, and marker jobs.
//!
//! A transaction moves Empty → Ongoing (partitions added) → PrepareCommit or PrepareAbort
//! (EndTxn, a timeout, or a newer incarnation fencing it) → CompleteCommit or
//! CompleteAbort (every marker written). Each step is taken only once its record is
//! durable; while a write is in flight, other requests for the id are told
//! CONCURRENT_TRANSACTIONS, which clients retry.

use crate::time::Now;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnRequest;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState,
};
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::list_transactions_response::{
    ListTransactionsResponse, TransactionState as ListedTransaction,
};
use kafka_protocol::messages::{ProducerId, ResponseKind, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, info, warn};

use super::records::{self, TxnRecord, TxnState};
use super::TxnConfig;
use crate::batch::{self, BatchView};
use crate::canary::{is_planted, Canary};
use crate::group::membership::Parked;
use crate::group::partition_for;

/// Something the driver must do for the coordinator.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Drained as soon as made; boxing would only allocate.
pub enum TxnOutput {
    /// Answer the request `waiter`.
    Reply {
        /// The handle the request came with.
        waiter: u64,
        /// The answer.
        response: ResponseKind,
    },
    /// Append `batch` to `partition` of `__transaction_state` with acks=all; report the
    /// outcome with [`TxnCoordinator::write_done`] and `id`.
    Write {
        /// Identifies the write.
        id: u64,
        /// The partition.
        partition: i32,
        /// One record batch.
        batch: Bytes,
    },
    /// Write a transaction's marker to each of its partitions; report with
    /// [`TxnCoordinator::markers_done`] once all hold it.
    Markers(MarkerJob),
}

/// The markers that end one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerJob {
    /// Identifies the job.
    pub id: u64,
    /// The transaction's producer.
    pub producer_id: i64,
    /// The epoch the markers carry (a fenced producer's successor's).
    pub epoch: i16,
    /// Commit or abort.
    pub commit: bool,
    /// The transaction's number (see [`TxnRecord::txn_number`]).
    pub txn_number: i32,
    /// The leader epoch of the coordinator's partition.
    pub coordinator_epoch: i32,
    /// Where the markers go.
    pub partitions: Vec<(String, i32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Loading,
    Loaded,
}

/// One transactional id.
#[derive(Debug)]
struct Entry {
    record: TxnRecord,
    /// A write for it is in flight.
    writing: bool,
    /// A marker job for it is in flight.
    marking: Option<u64>,
    /// Monotonic times, for the timeout and the id's expiry, of its transaction's start and
    /// of its last write. The record's own `start_ms` and `last_update_ms` are wall-clock
    /// times for DescribeTransactions; a loaded entry's timers start at its load.
    started: i64,
    updated: i64,
}

impl Entry {
    fn loaded(record: TxnRecord, now: Now) -> Self {
        Entry {
            record,
            writing: false,
            marking: None,
            started: now.mono,
            updated: now.mono,
        }
    }
}

/// The request a write answers, and how to answer it with an error.
#[derive(Debug, Clone)]
enum Answer {
    Init(i16),
    AddPartitions(i16, Vec<(TopicName, Vec<i32>)>),
    AddOffsets(i16),
    /// EndTxn of a version; the producer (id, epoch) its next transaction uses (v5).
    End(i16, (i64, i16)),
}

impl Answer {
    /// The request's response carrying `e` (`None`: success, for those with no payload).
    fn with(&self, e: Option<ResponseError>) -> ResponseKind {
        match self {
            Answer::Init(version) => {
                let code = e.map_or(0, |e| fenced_code(e, *version, 4));
                ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                )
            }
            Answer::AddPartitions(version, topics) => {
                let code = e.map_or(0, |e| fenced_code(e, *version, 2));
                let results = topics
                    .iter()
                    .map(|(name, partitions)| {
                        let partitions = partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(code)
                            })
                            .collect();
                        AddPartitionsToTxnTopicResult::default()
                            .with_name(name.clone())
                            .with_results_by_partition(partitions)
                    })
                    .collect();
                ResponseKind::AddPartitionsToTxn(
                    AddPartitionsToTxnResponse::default()
                        .with_results_by_topic_v3_and_below(results),
                )
            }
            Answer::AddOffsets(version) => ResponseKind::AddOffsetsToTxn(
                AddOffsetsToTxnResponse::default()
                    .with_error_code(e.map_or(0, |e| fenced_code(e, *version, 2))),
            ),
            Answer::End(version, (producer_id, epoch)) => {
                let (producer_id, epoch) = if e.is_none() {
                    (*producer_id, *epoch)
                } else {
                    (-1, -1)
                };
                ResponseKind::EndTxn(
                    EndTxnResponse::default()
                        .with_error_code(e.map_or(0, |e| fenced_code(e, *version, 2)))
                        .with_producer_id(ProducerId(producer_id))
                        .with_producer_epoch(epoch),
                )
            }
        }
    }
}

/// What to do once a write is durable.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One per write in flight, a few at a time.
enum After {
    /// Answer with `ok` (a failure answers with the write's error instead).
    Reply(u64, Answer, ResponseKind),
    /// Answer, then write the prepared transaction's markers.
    ReplyThenMarkers(u64, Answer),
    /// Write the prepared transaction's markers.
    Markers,
    /// The write was the id's tombstone: forget it.
    Forget,
    /// Nothing waits for it.
    Nothing,
}

#[derive(Debug)]
struct PendingWrite {
    id: String,
    record: TxnRecord,
    after: After,
    /// When it was written (monotonic).
    at: i64,
}

/// The transaction coordinator of one broker.
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    partitions: i32,
    /// Partitions of `__transaction_state` led here, with the leader epoch they were
    /// loaded for.
    owned: BTreeMap<i32, (i32, Load)>,
    entries: BTreeMap<String, Entry>,
    writes: BTreeMap<u64, PendingWrite>,
    /// Marker jobs in flight: job id -> transactional id.
    marking: BTreeMap<u64, String>,
    next_id: u64,
    outputs: VecDeque<TxnOutput>,
    next_check: i64,
}

/// A producer's view of a request: its transactional id, producer id and epoch.
#[derive(Debug, Clone, Copy)]
pub struct Producer<'a> {
    /// Transactional id.
    pub transactional_id: &'a str,
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
}

impl TxnCoordinator {
    /// A coordinator that leads nothing yet.
    pub fn new(config: TxnConfig, now: Now) -> Self {
        TxnCoordinator {
            partitions: config.partitions,
            next_check: now.mono + config.abort_check_interval_ms,
            config,
            owned: BTreeMap::new(),
            entries: BTreeMap::new(),
            writes: BTreeMap::new(),
            marking: BTreeMap::new(),
            next_id: 1,
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to carry out.
    pub fn poll_output(&mut self) -> Option<TxnOutput> {
        self.outputs.pop_front()
    }

    // ---- ownership ----------------------------------------------------------------------

    /// The leader epoch partition `p` was loaded (or is loading) for, if it is led here.
    pub fn owned_epoch(&self, p: i32) -> Option<i32> {
        self.owned.get(&p).map(|(epoch, _)| *epoch)
    }

    /// The partitions led here.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.owned.keys().copied().collect()
    }

    /// How many partitions `__transaction_state` has.
    pub fn set_partitions(&mut self, partitions: i32) {
        self.partitions = partitions;
    }

    /// This broker now leads partition `p` in leader `epoch`: its records follow through
    /// [`Self::load`], then [`Self::finish_load`].
    pub fn begin_load(&mut self, p: i32, epoch: i32) {
        self.unload(p);
        info!(partition = p, epoch, "loading transactional ids");
        self.owned.insert(p, (epoch, Load::Loading));
    }

    /// Applies the records of one batch read back from partition `p`.
    pub fn load(&mut self, now: Now, p: i32, view: &BatchView<'_>) {
        if view.is_control() || !view.crc_ok() {
            return;
        }
        let Some(key_values) = view.key_values() else {
            warn!(
                partition = p,
                "compressed batch in __transaction_state; skipped"
            );
            return;
        };
        for kv in key_values {
            match kv.key.and_then(|k| records::decode(k, kv.value)) {
                Some((id, Some(record))) => {
                    self.entries.insert(id, Entry::loaded(record, now));
                }
                Some((id, None)) => {
                    self.entries.remove(&id);
                }
                None => warn!(
                    partition = p,
                    offset = kv.offset,
                    "unreadable record in __transaction_state"
                ),
            }
        }
    }

    /// Partition `p` is read back: its ids are served, and the transactions it had
    /// decided get their markers written (again).
    pub fn finish_load(&mut self, p: i32) {
        let Some((epoch, load)) = self.owned.get_mut(&p) else {
            return;
        };
        *load = Load::Loaded;
        let epoch = *epoch;
        let prepared: Vec<String> = self
            .ids_of(p)
            .filter(|(_, e)| e.record.state.is_prepared())
            .map(|(id, _)| id.clone())
            .collect();
        info!(
            partition = p,
            epoch,
            ids = self.ids_of(p).count(),
            prepared = prepared.len(),
            "transactional ids loaded"
        );
        for id in prepared {
            self.send_markers(&id);
        }
    }

    /// This broker no longer leads partition `p`: its ids go. Writes in flight answer
    /// NOT_COORDINATOR when they finish; the new leader finishes prepared transactions.
    pub fn unload(&mut self, p: i32) {
        if self.owned.remove(&p).is_none() {
            return;
        }
        let n = self.partitions;
        self.entries.retain(|id, _| partition_for(id, n) != p);
        self.marking.retain(|_, id| partition_for(id, n) != p);
        info!(partition = p, "transactional ids unloaded");
    }

    fn ids_of(&self, p: i32) -> impl Iterator<Item = (&String, &Entry)> {
        let n = self.partitions;
        self.entries
            .iter()
            .filter(move |(id, _)| partition_for(id, n) == p)
    }

    /// Whether `id` is served here: its partition, or the error to answer with.
    fn locate(&self, id: &str) -> Result<i32, ResponseError> {
        if id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        let p = partition_for(id, self.partitions);
        match self.owned.get(&p) {
            None => Err(ResponseError::NotCoordinator),
            Some((_, Load::Loading)) => Err(ResponseError::CoordinatorLoadInProgress),
            Some((_, Load::Loaded)) => Ok(p),
        }
    }

    /// The entry a producer's request is about, checked: it exists, belongs to this
    /// producer id and epoch, and nothing is being written for it.
    fn producer_entry(&self, producer: Producer<'_>) -> Result<&Entry, ResponseError> {
        self.locate(producer.transactional_id)?;
        let entry = self
            .entries
            .get(producer.transactional_id)
            .filter(|e| e.record.producer_id == producer.producer_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if producer.epoch != entry.record.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if entry.writing {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(entry)
    }

    // ---- requests -----------------------------------------------------------------------

    /// InitProducerId with a transactional id: a new id starts at epoch 0; a known one has
    /// its epoch bumped (fencing every older incarnation), and a transaction it left open
    /// is aborted first (the client is told CONCURRENT_TRANSACTIONS and retries).
    /// `fresh_id` is a producer id never handed out, for a new id or an exhausted epoch.
    #[allow(clippy::too_many_arguments)]
    pub fn init_producer_id(
        &mut self,
        now: Now,
        parked: Parked,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        fresh_id: i64,
    ) {
        let answer = Answer::Init(parked.version);
        let granted = |producer_id: i64, epoch: i16| {
            ResponseKind::InitProducerId(
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch),
            )
        };
        if let Err(e) = self.locate(transactional_id) {
            return self.reply(parked.waiter, answer.with(Some(e)));
        }
        if timeout_ms <= 0 || i64::from(timeout_ms) > self.config.max_timeout_ms {
            let e = ResponseError::InvalidTransactionTimeout;
            return self.reply(parked.waiter, answer.with(Some(e)));
        }
        let Some(entry) = self.entries.get(transactional_id) else {
            let record = TxnRecord {
                producer_id: fresh_id,
                epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now.wall,
                start_ms: -1,
                txn_number: 0,
            };
            let after = After::Reply(parked.waiter, answer, granted(fresh_id, 0));
            return self.write(now, transactional_id, record, after);
        };
        let current = &entry.record;
        let stale = |(p, e): (i64, i16)| p >= 0 && (p, e) != (current.producer_id, current.epoch);
        let refused = if entry.writing || current.state.is_prepared() {
            Some(ResponseError::ConcurrentTransactions)
        } else if expected.is_some_and(stale) {
            // KIP-360: a producer that says who it was must still be the current one.
            Some(ResponseError::ProducerFenced)
        } else {
            None
        };
        if let Some(e) = refused {
            return self.reply(parked.waiter, answer.with(Some(e)));
        }
        if current.state == TxnState::Ongoing {
            // The previous incarnation's transaction: aborted under a new epoch, so its
            // markers fence that incarnation's late batches in every partition.
            let (_, epoch) = bump(current.producer_id, current.epoch, current.producer_id);
            info!(
                transactional_id,
                producer_id = current.producer_id,
                epoch,
                "aborting the transaction a fenced producer left open"
            );
            let record = TxnRecord {
                epoch,
                state: TxnState::PrepareAbort,
                last_update_ms: now.wall,
                ..current.clone()
            };
            self.write(now, transactional_id, record, After::Markers);
            let e = ResponseError::ConcurrentTransactions;
            return self.reply(parked.waiter, answer.with(Some(e)));
        }
        let (producer_id, epoch) = bump(current.producer_id, current.epoch, fresh_id);
        let record = TxnRecord {
            producer_id,
            epoch,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now.wall,
            start_ms: -1,
            txn_number: current.txn_number,
        };
        let after = After::Reply(parked.waiter, answer, granted(producer_id, epoch));
        self.write(now, transactional_id, record, after);
    }

    /// AddPartitionsToTxn (v0-3): the partitions join the producer's transaction, which
    /// is open from then on. `exists` says whether a topic partition exists.
    pub fn add_partitions(
        &mut self,
        now: Now,
        parked: Parked,
        request: &AddPartitionsToTxnRequest,
        exists: impl Fn(&str, i32) -> bool,
    ) {
        let producer = Producer {
            transactional_id: &request.v3_and_below_transactional_id.0,
            producer_id: request.v3_and_below_producer_id.0,
            epoch: request.v3_and_below_producer_epoch,
        };
        let topics: Vec<(TopicName, Vec<i32>)> = request
            .v3_and_below_topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions.clone()))
            .collect();
        let wanted: Vec<(String, i32)> = topics
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(|&p| (t.0.to_string(), p)))
            .collect();
        let answer = Answer::AddPartitions(parked.version, topics);
        if wanted.iter().any(|(t, p)| !exists(t, *p)) {
            // Nothing is added: the unknown ones say why, the others were not attempted.
            let mut response = answer.with(Some(ResponseError::OperationNotAttempted));
            if let ResponseKind::AddPartitionsToTxn(r) = &mut response {
                for t in &mut r.results_by_topic_v3_and_below {
                    for p in &mut t.results_by_partition {
                        if !exists(&t.name.0, p.partition_index) {
                            p.partition_error_code = ResponseError::UnknownTopicOrPartition.code();
                        }
                    }
                }
            }
            return self.reply(parked.waiter, response);
        }
        if let Err(e) = self.join_transaction(now, producer, wanted, parked.waiter, answer.clone())
        {
            self.reply(parked.waiter, answer.with(Some(e)));
        }
    }

    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction,
    /// so the offsets a TxnOffsetCommit writes there are committed or aborted with it.
    pub fn add_offsets(
        &mut self,
        now: Now,
        parked: Parked,
        producer: Producer<'_>,
        offsets_partition: (String, i32),
    ) {
        let answer = Answer::AddOffsets(parked.version);
        let partitions = vec![offsets_partition];
        if let Err(e) =
            self.join_transaction(now, producer, partitions, parked.waiter, answer.clone())
        {
            self.reply(parked.waiter, answer.with(Some(e)));
        }
    }

    /// Adds partitions to the producer's transaction; answers once that is durable.
    fn join_transaction(
        &mut self,
        now: Now,
        producer: Producer<'_>,
        partitions: Vec<(String, i32)>,
        waiter: u64,
        answer: Answer,
    ) -> Result<(), ResponseError> {
        let entry = self.producer_entry(producer)?;
        let current = &entry.record;
        if current.state.is_prepared() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let ongoing = current.state == TxnState::Ongoing;
        if ongoing && partitions.iter().all(|p| current.partitions.contains(p)) {
            self.reply(waiter, answer.with(None));
            return Ok(());
        }
        let mut record = current.clone();
        record.partitions.extend(partitions);
        record.state = TxnState::Ongoing;
        record.last_update_ms = now.wall;
        if !ongoing {
            record.start_ms = now.wall;
            record.txn_number = record.txn_number.wrapping_add(1);
        }
        let ok = answer.with(None);
        let after = After::Reply(waiter, answer, ok);
        self.write(now, producer.transactional_id, record, after);
        Ok(())
    }

    /// EndTxn: commit or abort the open transaction. Answered once the decision is durable
    /// (PrepareCommit or PrepareAbort written); the markers follow.
    ///
    /// From v5 on (KIP-890, transactions V2), every transaction ends with the producer's
    /// epoch bumped: its markers carry the new epoch, the client starts its next
    /// transaction with it, and a request of the ended transaction that arrives late (a
    /// produce, a TxnOffsetCommit resent on a new connection) is fenced instead of joining
    /// the next one. A retry of such an EndTxn comes with the epoch before the bump.
    pub fn end_txn(&mut self, now: Now, parked: Parked, producer: Producer<'_>, commit: bool) {
        let version = parked.version;
        let retried = self.locate(producer.transactional_id).ok().and_then(|_| {
            let e = self.entries.get(producer.transactional_id)?;
            let r = &e.record;
            let bumped = version >= 5
                && r.producer_id == producer.producer_id
                && i32::from(r.epoch) == i32::from(producer.epoch) + 1
                && r.state != TxnState::Ongoing;
            bumped.then_some((r.state, (r.producer_id, r.epoch)))
        });
        if let Some((state, current)) = retried {
            let answer = Answer::End(version, current);
            let error = match (state, commit) {
                (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => None,
                (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                    Some(ResponseError::ConcurrentTransactions)
                }
                _ => Some(ResponseError::ProducerFenced),
            };
            return self.reply(parked.waiter, answer.with(error));
        }
        let entry = match self.producer_entry(producer) {
            Ok(entry) => entry,
            Err(e) => {
                let answer = Answer::End(version, (-1, -1));
                return self.reply(parked.waiter, answer.with(Some(e)));
            }
        };
        let mut answer = Answer::End(version, (entry.record.producer_id, entry.record.epoch));
        let refused = match (entry.record.state, commit) {
            (TxnState::Ongoing, _) => None,
            // A retry of an EndTxn already decided, or already done.
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Some(ResponseError::ConcurrentTransactions)
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                return self.reply(parked.waiter, answer.with(None));
            }
            _ => Some(ResponseError::InvalidTxnState),
        };
        if let Some(e) = refused {
            return self.reply(parked.waiter, answer.with(Some(e)));
        }
        let state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        let mut record = TxnRecord {
            state,
            last_update_ms: now.wall,
            ..entry.record.clone()
        };
        if version >= 5 && record.epoch < i16::MAX - 1 {
            // At the last epoch there is no bump: the producer must init again.
            record.epoch += 1;
            answer = Answer::End(version, (record.producer_id, record.epoch));
        }
        let after = After::ReplyThenMarkers(parked.waiter, answer);
        self.write(now, producer.transactional_id, record, after);
    }

    /// DescribeTransactions: the state of each id asked for.
    pub fn describe(&self, request: &DescribeTransactionsRequest) -> ResponseKind {
        let states = request
            .transactional_ids
            .iter()
            .map(|id| {
                let mut out = TransactionState::default()
                    .with_transactional_id(id.clone())
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1);
                let found = self.locate(&id.0).and_then(|_| {
                    self.entries
                        .get(&*id.0)
                        .ok_or(ResponseError::TransactionalIdNotFound)
                });
                match found {
                    Err(e) => out.error_code = e.code(),
                    Ok(entry) => {
                        let r = &entry.record;
                        out.transaction_state = StrBytes::from_static_str(r.state.name());
                        out.transaction_timeout_ms = r.timeout_ms;
                        out.transaction_start_time_ms = r.start_ms;
                        out.producer_id = ProducerId(r.producer_id);
                        out.producer_epoch = r.epoch;
                        out.topics = topics_of(&r.partitions);
                    }
                }
                out
            })
            .collect();
        ResponseKind::DescribeTransactions(
            DescribeTransactionsResponse::default().with_transaction_states(states),
        )
    }

    /// ListTransactions: the ids coordinated here that pass the filters.
    pub fn list(&self, now: Now, request: &ListTransactionsRequest) -> ResponseKind {
        let known = [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ];
        let unknown: Vec<StrBytes> = request
            .state_filters
            .iter()
            .filter(|f| !known.iter().any(|s| s.name() == &***f))
            .cloned()
            .collect();
        let loaded = |id: &str| self.locate(id).is_ok();
        let states = self
            .entries
            .iter()
            .filter(|(id, _)| loaded(id))
            .filter(|(_, e)| {
                let r = &e.record;
                let state_ok = request.state_filters.is_empty()
                    || request.state_filters.iter().any(|f| &**f == r.state.name());
                let producer_ok = request.producer_id_filters.is_empty()
                    || request
                        .producer_id_filters
                        .contains(&ProducerId(r.producer_id));
                // KIP-994: only transactions running longer than this many ms.
                let duration_ok = request.duration_filter < 0
                    || r.state == TxnState::Ongoing
                        && now.wall.saturating_sub(r.start_ms) > request.duration_filter;
                state_ok && producer_ok && duration_ok
            })
            .map(|(id, e)| {
                ListedTransaction::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_string(id.clone())))
                    .with_producer_id(ProducerId(e.record.producer_id))
                    .with_transaction_state(StrBytes::from_static_str(e.record.state.name()))
            })
            .collect();
        ResponseKind::ListTransactions(
            ListTransactionsResponse::default()
                .with_unknown_state_filters(unknown)
                .with_transaction_states(states),
        )
    }

    // ---- time ---------------------------------------------------------------------------

    /// Aborts transactions open longer than their timeout (fencing their producer, as
    /// Kafka does), writes the markers of decided transactions whose earlier attempt
    /// failed, and forgets ids idle past `transactional.id.expiration.ms`.
    pub fn tick(&mut self, now: Now) {
        if now.mono < self.next_check {
            return;
        }
        self.next_check = now.mono + self.config.abort_check_interval_ms;
        let mut expired = Vec::new();
        let mut stalled = Vec::new();
        let mut idle = Vec::new();
        for (id, entry) in &self.entries {
            let r = &entry.record;
            if entry.writing || self.locate(id).is_err() {
                continue;
            }
            let timed_out = now.mono.saturating_sub(entry.started) > i64::from(r.timeout_ms);
            if r.state == TxnState::Ongoing && timed_out {
                expired.push(id.clone());
            } else if r.state.is_prepared() && entry.marking.is_none() {
                stalled.push(id.clone());
            } else if matches!(
                r.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            ) && now.mono.saturating_sub(entry.updated) > self.config.id_expiration_ms
            {
                idle.push(id.clone());
            }
        }
        for id in expired {
            let Some(current) = self.entries.get(&id).map(|e| e.record.clone()) else {
                continue;
            };
            let (_, epoch) = bump(current.producer_id, current.epoch, current.producer_id);
            info!(transactional_id = %id, producer_id = current.producer_id, "aborting a transaction that timed out");
            let record = TxnRecord {
                epoch,
                state: TxnState::PrepareAbort,
                last_update_ms: now.wall,
                ..current
            };
            self.write(now, &id, record, After::Markers);
        }
        for id in stalled {
            self.send_markers(&id);
        }
        for id in idle {
            self.forget(now, &id);
        }
    }

    /// When [`Self::tick`] next has work.
    pub fn poll_timeout(&self) -> i64 {
        self.next_check
    }

    // ---- completions --------------------------------------------------------------------

    /// The write `id` is committed (`Ok`) or failed with the produce error it got.
    pub fn write_done(&mut self, id: u64, result: Result<(), ResponseError>) {
        let Some(pending) = self.writes.remove(&id) else {
            return;
        };
        let failed = match (self.entries.get_mut(&pending.id), result) {
            // Unloaded meanwhile: the new coordinator reads the outcome from the log.
            (None, _) => Some(ResponseError::NotCoordinator),
            (Some(entry), Err(e)) => {
                entry.writing = false;
                warn!(transactional_id = %pending.id, error = ?e, "transaction state write failed");
                Some(coordinator_error(e))
            }
            (Some(_), Ok(())) => None,
        };
        if let Some(e) = failed {
            if let After::Reply(waiter, answer, _) | After::ReplyThenMarkers(waiter, answer) =
                pending.after
            {
                self.reply(waiter, answer.with(Some(e)));
            }
            return;
        }
        let entry = self.entries.get_mut(&pending.id).expect("checked above");
        entry.writing = false;
        debug!(transactional_id = %pending.id, state = ?pending.record.state, "transaction state written");
        if pending.record.txn_number != entry.record.txn_number {
            entry.started = pending.at;
        }
        entry.updated = pending.at;
        entry.record = pending.record;
        match pending.after {
            After::Reply(waiter, _, response) => self.reply(waiter, response),
            After::ReplyThenMarkers(waiter, answer) => {
                self.reply(waiter, answer.with(None));
                self.send_markers(&pending.id);
            }
            After::Markers => self.send_markers(&pending.id),
            After::Forget => {
                info!(transactional_id = %pending.id, "transactional id expired");
                self.entries.remove(&pending.id);
            }
            After::Nothing => {}
        }
    }

    /// Every partition of marker job `id` holds its marker: the transaction is complete.
    pub fn markers_done(&mut self, now: Now, id: u64) {
        let Some(txn_id) = self.marking.remove(&id) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&txn_id) else {
            return;
        };
        entry.marking = None;
        let state = match entry.record.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return,
        };
        let record = TxnRecord {
            state,
            partitions: BTreeSet::new(),
            last_update_ms: now.wall,
            start_ms: -1,
            ..entry.record.clone()
        };
        self.write(now, &txn_id, record, After::Nothing);
    }

    // ---- internals ----------------------------------------------------------------------

    fn send_markers(&mut self, txn_id: &str) {
        let Ok(p) = self.locate(txn_id) else {
            return;
        };
        let coordinator_epoch = self.owned_epoch(p).unwrap_or(0);
        let job_id = self.next_id;
        let Some(entry) = self.entries.get_mut(txn_id) else {
            return;
        };
        let r = &entry.record;
        let commit = match r.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return,
        };
        self.next_id += 1;
        entry.marking = Some(job_id);
        self.marking.insert(job_id, txn_id.to_string());
        let mut partitions: Vec<(String, i32)> = r.partitions.iter().cloned().collect();
        if is_planted(Canary::MarkerToSomePartitions) {
            partitions.truncate(1);
        }
        let job = MarkerJob {
            id: job_id,
            producer_id: r.producer_id,
            epoch: r.epoch,
            commit,
            txn_number: r.txn_number,
            coordinator_epoch,
            partitions,
        };
        debug!(
            transactional_id = txn_id,
            job = job_id,
            commit,
            partitions = job.partitions.len(),
            "writing transaction markers"
        );
        self.outputs.push_back(TxnOutput::Markers(job));
    }

    fn write(&mut self, now: Now, txn_id: &str, record: TxnRecord, after: After) {
        let value = record.encode();
        self.write_value(now, txn_id, Some(&value), record, after);
    }

    /// Writes the tombstone of an idle id; the id is served as it was until it is durable
    /// (a request meanwhile gets `CONCURRENT_TRANSACTIONS`).
    fn forget(&mut self, now: Now, txn_id: &str) {
        let Some(record) = self.entries.get(txn_id).map(|e| e.record.clone()) else {
            return;
        };
        self.write_value(now, txn_id, None, record, After::Forget);
    }

    fn write_value(
        &mut self,
        now: Now,
        txn_id: &str,
        value: Option<&[u8]>,
        record: TxnRecord,
        after: After,
    ) {
        let partition = partition_for(txn_id, self.partitions);
        let id = self.next_id;
        self.next_id += 1;
        let key = records::encode_key(txn_id);
        let batch = batch::data_batch(now.wall, &[(Some(&key), value)]).freeze();
        let entry = (self.entries)
            .entry(txn_id.to_string())
            .or_insert_with(|| Entry::loaded(record.clone(), now));
        entry.writing = true;
        self.writes.insert(
            id,
            PendingWrite {
                id: txn_id.to_string(),
                record,
                after,
                at: now.mono,
            },
        );
        self.outputs.push_back(TxnOutput::Write {
            id,
            partition,
            batch,
        });
    }

    fn reply(&mut self, waiter: u64, response: ResponseKind) {
        self.outputs
            .push_back(TxnOutput::Reply { waiter, response });
    }
}

/// The next (producer id, epoch) of an id: the epoch bumped, or a fresh producer id once
/// the epoch is exhausted.
fn bump(producer_id: i64, epoch: i16, fresh_id: i64) -> (i64, i16) {
    if epoch < i16::MAX - 1 {
        (producer_id, epoch + 1)
    } else {
        (fresh_id, 0)
    }
}

/// The code for `e` in a response of `version`: PRODUCER_FENCED is newer than the
/// requests before `since`, which get INVALID_PRODUCER_EPOCH for it.
fn fenced_code(e: ResponseError, version: i16, since: i16) -> i16 {
    match e {
        ResponseError::ProducerFenced if version < since => {
            ResponseError::InvalidProducerEpoch.code()
        }
        e => e.code(),
    }
}

/// What a client is told when a write failed with a produce error.
fn coordinator_error(e: ResponseError) -> ResponseError {
    match e {
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        _ => ResponseError::CoordinatorNotAvailable,
    }
}

fn topics_of(partitions: &BTreeSet<(String, i32)>) -> Vec<TopicData> {
    let mut out: Vec<TopicData> = Vec::new();
    for (topic, p) in partitions {
        match out.last_mut() {
            Some(t) if *t.topic.0 == **topic => t.partitions.push(*p),
            _ => out.push(
                TopicData::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![*p]),
            ),
        }
    }
    out
}
