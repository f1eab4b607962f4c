//! The broker's side of idempotent producers: InitProducerId, answered from the
//! [`IdPool`] of producer ids this broker took from the metadata quorum.
//!
//! The sequence checks themselves are each partition's [`crate::producer::ProducerTable`],
//! consulted where batches are appended (see `produce` and `replication`).

use crate::time::Now;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::{ProducerId, ResponseKind};
use kafka_protocol::ResponseError;
use tracing::{debug, warn};

use super::{Broker, ReplyTo};
use crate::batch::complete_batches;
use crate::cluster::records::{Change, ProducerIdBlock};
use crate::log::ReadPlan;
use crate::producer::{IdPool, ProducerBatch, ProducerTable, Written, ID_BLOCK};
use crate::storage::{StorageOp, TopicPartition};

/// How long an InitProducerId waits for a block of ids before it is answered with
/// COORDINATOR_NOT_AVAILABLE (which clients retry).
const WAIT_MS: i64 = 5_000;

/// How soon a broker asks for producer ids again when no controller could take the ask.
const ASK_RETRY_MS: i64 = 100;

/// Bytes read at a time while a producer table is rebuilt.
const LOAD_READ_BYTES: usize = 1 << 20;

/// A partition of one copy whose producer table is being rebuilt from its log at start
/// (a replicated partition's replica rebuilds its own as it loads its entries).
#[derive(Debug)]
pub(super) struct ProducerLoad {
    /// The next offset to read.
    next: i64,
    /// Where the log ended at start: appends after it are recorded as they are made.
    end: i64,
    /// The read in flight.
    read: Option<(u64, ReadPlan)>,
}

/// Producer ids on hand and the requests waiting for some, and the producer tables
/// still being rebuilt.
#[derive(Debug, Default)]
pub(super) struct ProducerIds {
    /// Partitions whose producer table is not whole yet: an idempotent producer's batch
    /// is refused there (retriably) until it is, since its retry could not be recognised.
    pub(super) loads: BTreeMap<TopicPartition, ProducerLoad>,
    /// Snapshots found at startup, until their partitions are created.
    pub(super) recovered: BTreeMap<TopicPartition, Bytes>,
    /// The table change count each partition's last snapshot was taken at.
    snapshotted: BTreeMap<TopicPartition, u64>,
    pool: IdPool,
    /// Requests waiting for a block, with their deadlines, oldest first.
    waiting: VecDeque<(ReplyTo, InitProducerIdRequest, i64)>,
    /// The block asked for: its nonce and when to give up on it (a proposal forwarded to
    /// a controller that then lost its leadership is never applied).
    asked: Option<(u64, i64)>,
    /// When to ask again after there was no controller to ask.
    retry_ask: Option<i64>,
}

impl ProducerIds {
    /// Nothing on hand yet; `recovered` holds the snapshots found at startup.
    pub(super) fn new(recovered: BTreeMap<TopicPartition, Bytes>) -> Self {
        ProducerIds {
            recovered,
            ..Self::default()
        }
    }
}

impl Broker {
    /// InitProducerId (KIP-98): a fresh producer id at epoch 0 for an idempotent producer.
    /// As in Kafka, a producer that asks again (KIP-360, after its sequences went wrong)
    /// gets another fresh id: only a transactional id keeps its producer id across calls
    /// (its coordinator decides, and takes the fresh id only for a new transactional id).
    pub(super) fn init_producer_id(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: InitProducerIdRequest,
    ) {
        if let Some(id) = self.producer_ids.pool.take() {
            self.grant_producer_id(now, reply_to, &request, id);
        } else {
            self.producer_ids
                .waiting
                .push_back((reply_to, request, now.mono + WAIT_MS));
        }
        self.ask_for_producer_ids(now);
    }

    fn grant_producer_id(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: &InitProducerIdRequest,
        id: i64,
    ) {
        if request
            .transactional_id
            .as_ref()
            .is_some_and(|t| !t.0.is_empty())
        {
            self.init_transactional(now, reply_to, request, id);
        } else {
            self.answer_producer_id(reply_to, Ok(id));
        }
    }

    fn answer_producer_id(&mut self, reply_to: ReplyTo, id: Result<i64, ResponseError>) {
        let response = match id {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(error) => InitProducerIdResponse::default()
                .with_error_code(error.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        };
        self.respond(reply_to, Some(ResponseKind::InitProducerId(response)));
    }

    /// Asks the metadata quorum for a block of ids when the pool runs low.
    fn ask_for_producer_ids(&mut self, now: Now) {
        if !self.producer_ids.pool.should_ask() {
            return;
        }
        // The seed alone may repeat across runs (a driver that seeds from the broker id):
        // the time of asking makes a replayed block of an earlier run never look like ours.
        let id = self.new_topic_id();
        let nonce = u64::from_be_bytes(id[..8].try_into().expect("8 bytes")) ^ now.wall as u64;
        let change = Change::AllocateProducerIds(ProducerIdBlock {
            broker: self.config.broker_id,
            count: ID_BLOCK,
            nonce,
        });
        match self.controller.propose(change, 0) {
            Ok(()) => {
                self.producer_ids.asked = Some((nonce, now.mono + WAIT_MS));
                self.producer_ids.retry_ask = None;
            }
            Err(e) => {
                debug!(error = ?e, "no controller to ask for producer ids; retried");
                self.producer_ids.pool.ask_failed();
                self.producer_ids.retry_ask = Some(now.mono + ASK_RETRY_MS);
            }
        }
    }

    /// A block of producer ids was applied from the metadata log: this broker's, if it is
    /// the block this broker's current run asked for (a restarted broker replays the
    /// blocks it took before, and must not hand those out again).
    pub(super) fn producer_ids_granted(&mut self, block: &ProducerIdBlock, first: i64, count: i64) {
        let ours = block.broker == self.config.broker_id
            && self
                .producer_ids
                .asked
                .is_some_and(|(n, _)| n == block.nonce);
        if !ours {
            return;
        }
        self.producer_ids.asked = None;
        self.producer_ids.pool.granted(first, count);
        while !self.producer_ids.waiting.is_empty() {
            let Some(id) = self.producer_ids.pool.take() else {
                break;
            };
            let (reply_to, request, _) = self.producer_ids.waiting.pop_front().expect("not empty");
            self.grant_producer_id(self.now, reply_to, &request, id);
        }
        self.ask_for_producer_ids(self.now);
    }

    /// Gives up on a block that did not come in time (asking again), answers requests
    /// that waited too long, and asks again if no controller could take the last ask.
    pub(super) fn expire_producer_id_waits(&mut self, now: Now) {
        if self
            .producer_ids
            .asked
            .is_some_and(|(_, deadline)| deadline <= now.mono)
        {
            warn!("no block of producer ids came from the metadata quorum in time; asking again");
            self.producer_ids.asked = None;
            self.producer_ids.pool.ask_failed();
        }
        while let Some(&(reply_to, _, _)) = self
            .producer_ids
            .waiting
            .front()
            .filter(|(_, _, deadline)| *deadline <= now.mono)
        {
            self.producer_ids.waiting.pop_front();
            self.answer_producer_id(reply_to, Err(ResponseError::CoordinatorNotAvailable));
        }
        if !self.producer_ids.waiting.is_empty() {
            self.ask_for_producer_ids(now);
        }
    }

    /// When [`Self::expire_producer_id_waits`] must next run.
    pub(super) fn producer_id_deadline(&self) -> Option<i64> {
        let asked = self.producer_ids.asked.map(|(_, deadline)| deadline);
        let retry = self
            .producer_ids
            .retry_ask
            .filter(|_| !self.producer_ids.waiting.is_empty());
        let waiting = self
            .producer_ids
            .waiting
            .front()
            .map(|(_, _, deadline)| *deadline);
        asked.into_iter().chain(waiting).chain(retry).min()
    }

    /// Starts rebuilding the producer table of a recovered partition of one copy: from its
    /// snapshot, if one was saved, and the log after it.
    pub(super) fn load_producers(&mut self, tp: TopicPartition) {
        let snapshot = self.producer_ids.recovered.remove(&tp);
        let Some(log) = self
            .topics
            .get_mut(&tp.topic)
            .and_then(|t| t.partition_mut(tp.partition))
        else {
            return;
        };
        let mut next = log.log_start_offset();
        match snapshot.map(|s| ProducerTable::from_snapshot(&s)) {
            Some(Some((table, txns, upto))) if upto <= log.log_end_offset() => {
                debug!(partition = %tp, upto, producers = table.len(), "producer snapshot loaded");
                self.producer_ids
                    .snapshotted
                    .insert(tp.clone(), table.changes());
                *log.producers_mut() = table;
                log.set_txns(txns);
                next = next.max(upto);
            }
            Some(_) => {
                warn!(partition = %tp, "producer snapshot unreadable or past the log's end; reading the whole log back");
            }
            None => {}
        }
        if next >= log.log_end_offset() {
            return;
        }
        let load = ProducerLoad {
            next,
            end: log.log_end_offset(),
            read: None,
        };
        self.producer_ids.loads.insert(tp.clone(), load);
        self.continue_producer_load(&tp);
    }

    fn continue_producer_load(&mut self, tp: &TopicPartition) {
        let Some(load) = self.producer_ids.loads.get(tp) else {
            return;
        };
        let log = self
            .topics
            .get(&tp.topic)
            .and_then(|t| t.partition(tp.partition));
        let plan = match log {
            Some(log) if load.next < load.end.min(log.log_end_offset()) => {
                let from = load.next.max(log.log_start_offset());
                log.plan_read(from, LOAD_READ_BYTES).unwrap_or_default()
            }
            _ => None,
        };
        match plan {
            Some(plan) => self.issue_producer_read(tp, plan),
            None => {
                let load = self.producer_ids.loads.remove(tp).expect("exists");
                let producers = log.map_or(0, |l| l.producers().len());
                debug!(partition = %tp, offset = load.next, producers, "producer table rebuilt");
            }
        }
    }

    fn issue_producer_read(&mut self, tp: &TopicPartition, plan: ReadPlan) {
        let token = self.token();
        self.storage(StorageOp::Read {
            token,
            segment: plan.segment.clone(),
            position: plan.position,
            len: plan.len,
        });
        if let Some(load) = self.producer_ids.loads.get_mut(tp) {
            load.read = Some((token, plan));
        }
    }

    /// A read completed; true if it was one of a producer table's load.
    pub(super) fn on_producer_load_read(
        &mut self,
        token: u64,
        result: &Result<Bytes, String>,
    ) -> bool {
        let Some((tp, load)) = self
            .producer_ids
            .loads
            .iter_mut()
            .find(|(_, l)| l.read.as_ref().is_some_and(|(t, _)| *t == token))
        else {
            return false;
        };
        let tp = tp.clone();
        let (_, plan) = load.read.take().expect("matched");
        let before = load.next;
        let log = self
            .topics
            .get_mut(&tp.topic)
            .and_then(|t| t.partition_mut(tp.partition));
        let (Ok(bytes), Some(log)) = (result, log) else {
            warn!(partition = %tp, "reading the log back for its producer table failed; idempotent producers start afresh here");
            self.producer_ids.loads.remove(&tp);
            return true;
        };
        for view in complete_batches(bytes) {
            if view.base_offset() >= load.end {
                break;
            }
            if view.next_offset() <= load.next {
                continue;
            }
            load.next = view.next_offset();
            if let Some(batch) = ProducerBatch::of(&view) {
                let at = view.base_offset() as u64;
                let written = Written::of(&batch, at, 0, Some(view.base_offset()));
                log.producers_mut().record(batch, written, self.now.wall);
                log.producers_mut().commit(at);
            }
            log.note_txn(&view, view.base_offset());
        }
        if load.next == before {
            // Nothing whole in the read: a batch larger than the read, read whole next.
            if let Some(plan) = plan.widened_for(bytes) {
                self.issue_producer_read(&tp, plan);
                return true;
            }
            warn!(partition = %tp, offset = before, "unreadable batch while rebuilding the producer table; it stops here");
            self.producer_ids.loads.remove(&tp);
            return true;
        }
        self.continue_producer_load(&tp);
        true
    }

    /// Saves the producer table of every partition of one copy that changed since its last
    /// snapshot, as of its durable end: a restart then reads back only the log after it.
    pub(super) fn snapshot_producers(&mut self) {
        let mut ops = Vec::new();
        for topic in self.topics.values() {
            for (&index, log) in &topic.logs {
                if topic.raft.contains_key(&index) {
                    continue; // A replica rebuilds its table as it loads its entries.
                }
                let tp = TopicPartition::new(&topic.name, index);
                let table = log.producers();
                let stale = self.producer_ids.snapshotted.get(&tp) != Some(&table.changes());
                if !stale || table.is_empty() || self.producer_ids.loads.contains_key(&tp) {
                    continue;
                }
                let snapshot = table.snapshot(log.high_watermark(), log.txns());
                self.producer_ids
                    .snapshotted
                    .insert(tp.clone(), table.changes());
                ops.push(StorageOp::SaveProducers {
                    partition: tp,
                    snapshot: Bytes::from(snapshot),
                });
            }
        }
        for op in ops {
            self.storage(op);
        }
    }
}
