//! Produce: validate batches, stamp offsets, append, and answer per `acks`.

use crate::time::Now;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::ResponseKind;
use kafka_protocol::ResponseError;
use tracing::debug;

use super::{Broker, ReplyTo};
use crate::batch::{self, BatchError, BatchSummary, BatchView, StampedBatch};
use crate::canary::{is_planted, Canary};
use crate::config::{TimestampType, TopicConfig};
use crate::group::OFFSETS_TOPIC;
use crate::producer::{ProducerBatch, Verdict, Written};
use crate::security::acl::{Operation, ResourceType};
use crate::storage::{StorageOp, TopicPartition};
use crate::txn::TXN_TOPIC;

/// Whom a produce answers: a client, the group coordinator (its write `id`), the
/// transaction coordinator (its write `id`), or a transaction marker's delivery (`id`).
#[derive(Debug, Clone, Copy)]
pub(super) enum ProduceFor {
    Client(ReplyTo),
    Coordinator(u64),
    Transactions(u64),
    Marker(u64),
}

impl ProduceFor {
    /// True for the broker's own writes, which may carry control batches (markers).
    fn is_broker(self) -> bool {
        !matches!(self, ProduceFor::Client(_))
    }
}

/// An acks=all produce waiting for the sync that makes its batches durable.
#[derive(Debug)]
pub(super) struct PendingProduce {
    reply_to: ProduceFor,
    sync_token: u64,
    response: ProduceResponse,
}

fn batch_error_code(e: BatchError) -> ResponseError {
    match e {
        BatchError::CorruptCrc | BatchError::Truncated => ResponseError::CorruptMessage,
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::InvalidRecords => ResponseError::InvalidRecord,
    }
}

/// A replicated partition's batches outlive the request that brought them (in Raft's log
/// until written, in the frames queued for its followers), and a slice of the request
/// holds all of it: they stay a slice while they are at least an eighth of the request's
/// records, and get a compact copy below that, so what the queues hold is at most eight
/// times what they carry.
fn own_share(records: Bytes, request_payload: usize) -> Bytes {
    const SHARE_MIN_PART: usize = 8;
    if records.len() * SHARE_MIN_PART < request_payload {
        Bytes::copy_from_slice(&records)
    } else {
        records
    }
}

/// Validates a produce payload against the topic's limits; the batches' summaries. Only
/// the broker itself writes control batches (transaction markers), as in Kafka.
pub(super) fn check_batches(
    records: &Bytes,
    config: &TopicConfig,
    by_broker: bool,
) -> Result<Vec<BatchSummary>, ResponseError> {
    let summaries = batch::validate_produce_payload(records).map_err(batch_error_code)?;
    if !by_broker && summaries.iter().any(|s| s.control) {
        return Err(ResponseError::InvalidRecord);
    }
    if summaries.iter().any(|s| s.size > config.max_message_bytes) {
        return Err(ResponseError::MessageTooLarge);
    }
    Ok(summaries)
}

/// The idempotence fields of a validated produce payload; `None` for a plain producer. An
/// idempotent producer's payload is one batch (Kafka refuses more for Produce v3 and
/// later): the table checks batches one at a time, and a retry must match one.
pub(super) fn producer_batch(
    records: &Bytes,
    summaries: &[BatchSummary],
) -> Result<Option<ProducerBatch>, ResponseError> {
    let (view, _) = BatchView::split_first(records).map_err(batch_error_code)?;
    let batch = ProducerBatch::of(&view);
    if batch.is_some() && summaries.len() > 1 {
        return Err(ResponseError::InvalidRecord);
    }
    Ok(batch)
}

impl Broker {
    /// Why a client may not write to `topic` at all, if it may not.
    fn produce_refusal(
        &self,
        conn: u64,
        topic: &str,
        transactional_id: Option<&str>,
    ) -> Option<ResponseError> {
        if [OFFSETS_TOPIC, TXN_TOPIC].contains(&topic) {
            // Only the coordinators write their records (as in Kafka).
            Some(ResponseError::InvalidTopicException)
        } else if transactional_id.is_some_and(|id| {
            !self.allowed(conn, Operation::Write, ResourceType::TransactionalId, id)
        }) {
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        } else if !self.allowed(conn, Operation::Write, ResourceType::Topic, topic)
            && !is_planted(Canary::ProduceIgnoresAcls)
        {
            Some(ResponseError::TopicAuthorizationFailed)
        } else {
            None
        }
    }

    pub(super) fn produce(&mut self, now: Now, reply_to: ProduceFor, request: ProduceRequest) {
        let acks = request.acks;
        let mut response = ProduceResponse::default();
        let mut sync_token = None;
        let mut proposals = Vec::new();
        let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
        let payload: usize = (request.topic_data.iter())
            .flat_map(|topic| &topic.partition_data)
            .map(|partition| partition.records.as_ref().map_or(0, Bytes::len))
            .sum();
        for (t, topic_data) in request.topic_data.into_iter().enumerate() {
            let mut topic_response =
                TopicProduceResponse::default().with_name(topic_data.name.clone());
            let refusal = match reply_to {
                ProduceFor::Client(to) => {
                    self.produce_refusal(to.conn, &topic_data.name.0, transactional_id.as_deref())
                }
                _ => None,
            };
            for (p, partition_data) in topic_data.partition_data.into_iter().enumerate() {
                if let Some(error) = refusal {
                    topic_response.partition_responses.push(
                        PartitionProduceResponse::default()
                            .with_index(partition_data.index)
                            .with_base_offset(-1)
                            .with_error_code(error.code()),
                    );
                    continue;
                }
                let replicated = self
                    .topics
                    .get(topic_data.name.0.as_str())
                    .is_some_and(|topic| topic.raft.contains_key(&partition_data.index));
                if replicated && (-1..=1).contains(&acks) {
                    let name = &topic_data.name.0;
                    let index = partition_data.index;
                    let mut answer = PartitionProduceResponse::default()
                        .with_index(index)
                        .with_base_offset(-1);
                    let records = partition_data.records.map(|r| own_share(r, payload));
                    let by_broker = reply_to.is_broker();
                    match self.propose_batches(now, name, index, records, acks, by_broker) {
                        Ok(proposed) => {
                            let tp = TopicPartition::new(&Arc::from(name.as_str()), index);
                            proposals.push(((t, p), tp, proposed));
                        }
                        Err(error) => {
                            debug!(topic = %name, partition = index, ?error, "produce refused");
                            answer.error_code = error.code();
                        }
                    }
                    topic_response.partition_responses.push(answer);
                    continue;
                }
                let result = if !(-1..=1).contains(&acks) {
                    Err(ResponseError::InvalidRequiredAcks)
                } else {
                    self.append(
                        now,
                        &topic_data.name.0,
                        partition_data.index,
                        partition_data.records,
                        reply_to.is_broker(),
                    )
                };
                let mut p = PartitionProduceResponse::default().with_index(partition_data.index);
                match result {
                    Ok(appended) => {
                        p.base_offset = appended.base_offset;
                        p.log_append_time_ms = appended.log_append_time;
                        p.log_start_offset = appended.log_start_offset;
                        sync_token = sync_token.max(appended.sync_token);
                    }
                    Err(error) => {
                        debug!(topic = %topic_data.name.0, partition = partition_data.index, ?error, "produce refused");
                        p.error_code = error.code();
                        p.base_offset = -1;
                    }
                }
                topic_response.partition_responses.push(p);
            }
            response.responses.push(topic_response);
        }
        if !proposals.is_empty() {
            let durable = (acks == -1
                && self.config.flush == crate::config::FlushPolicy::GroupCommit)
                .then_some(sync_token)
                .flatten();
            let timeout = request.timeout_ms;
            return self
                .wait_for_replication(now, reply_to, acks, timeout, durable, response, proposals);
        }
        match (acks, sync_token) {
            (0, _) => self.answer_produce(reply_to, None),
            (-1, Some(sync_token))
                if self.config.flush == crate::config::FlushPolicy::GroupCommit
                    && !is_planted(Canary::AckBeforeFsync) =>
            {
                self.pending_produces.push_back(PendingProduce {
                    reply_to,
                    sync_token,
                    response,
                })
            }
            _ => self.answer_produce(reply_to, Some(response)),
        }
    }

    /// Sends a produce's answer where it goes; `None` for acks=0.
    pub(super) fn answer_produce(&mut self, to: ProduceFor, response: Option<ProduceResponse>) {
        match to {
            ProduceFor::Client(reply_to) => {
                self.respond(reply_to, response.map(ResponseKind::Produce))
            }
            ProduceFor::Coordinator(id) => self.coordinator_write_done(id, response),
            ProduceFor::Transactions(id) => self.txn_write_done(id, response),
            ProduceFor::Marker(id) => self.marker_written(id, response),
        }
    }

    /// Answers the acks=all produces made durable by sync `token`.
    pub(super) fn complete_produces(&mut self, token: u64) {
        while self
            .pending_produces
            .front()
            .is_some_and(|p| p.sync_token <= token)
        {
            let p = self.pending_produces.pop_front().expect("front exists");
            self.answer_produce(p.reply_to, Some(p.response));
        }
    }

    fn append(
        &mut self,
        now: Now,
        topic: &str,
        partition: i32,
        records: Option<Bytes>,
        by_broker: bool,
    ) -> Result<Appended, ResponseError> {
        let topic = self
            .topics
            .get_mut(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let config = topic.config.clone();
        let tp = TopicPartition::new(&topic.name, partition);
        let log = topic.log_for_client_mut(partition)?;
        let records = records.ok_or(ResponseError::InvalidRecord)?;
        let summaries = check_batches(&records, &config, by_broker)?;
        let producer = producer_batch(&records, &summaries)?;
        if producer.is_some() && self.producer_ids.loads.contains_key(&tp) {
            // Its table is still being read back: a retry could not be recognised yet.
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if let Some(batch) = &producer {
            if let Verdict::Duplicate(original) = log.producers().check(batch)? {
                // Written before: answer as the first time, once that write is durable.
                let base_offset = original.base_offset.unwrap_or(-1);
                let log_start_offset = log.log_start_offset();
                let synced = log.high_watermark() > base_offset;
                return Ok(Appended {
                    base_offset,
                    log_append_time: -1,
                    log_start_offset,
                    sync_token: (!synced).then(|| self.sync_covering(&tp)),
                });
            }
        }
        let log_append_time = match config.timestamp_type {
            TimestampType::LogAppendTime => now.wall,
            TimestampType::CreateTime => -1,
        };
        // Each batch is written as a slice of the request, its offset stamped beside it;
        // only append times, which the CRC covers, need a copy to write into.
        let mut payload = records;
        let base_offset = log.log_end_offset();
        let mut ops = Vec::with_capacity(summaries.len() + 2);
        for summary in &summaries {
            let mut one = payload.split_to(summary.size);
            let max_timestamp = if log_append_time >= 0 {
                one = batch::with_log_append_time(&one, log_append_time);
                log_append_time
            } else {
                summary.max_timestamp
            };
            if let Ok((view, _)) = BatchView::split_first(&one) {
                log.note_txn(&view, log.log_end_offset());
            }
            let one = StampedBatch::new(one, log.log_end_offset(), None);
            log.maybe_roll(summary.size as u64, now.wall, &config, &mut ops);
            let segment = log.active_segment_id();
            log.append(
                summary.record_count,
                summary.size as u32,
                max_timestamp,
                now.wall,
                self.config.index_interval_bytes,
            );
            ops.push(StorageOp::Append {
                segment: segment.clone(),
                data: one,
            });
        }
        if let Some(batch) = producer {
            // One replica: nothing written is ever replaced by another copy's history.
            let at = base_offset as u64;
            let written = Written::of(&batch, at, 0, Some(base_offset));
            let producers = log.producers_mut();
            producers.record(batch, written, now.wall);
            producers.commit(at);
        }
        let log_start_offset = log.log_start_offset();
        self.emit_log_ops(ops);
        let sync_token = self.note_append(&tp);
        Ok(Appended {
            base_offset,
            log_append_time,
            log_start_offset,
            sync_token: Some(sync_token),
        })
    }

    /// The sync that makes what is already appended to `tp` durable: the next if it was
    /// appended to since the sync in flight started, else that one if it carries the
    /// partition (else the next: what it waits for is in no sync yet).
    fn sync_covering(&self, tp: &TopicPartition) -> u64 {
        match &self.in_flight_sync {
            Some(sync)
                if !self.dirty_partitions.contains(tp)
                    && sync.commits.iter().any(|(p, _, _)| p == tp) =>
            {
                sync.token
            }
            _ => self.next_sync_token,
        }
    }
}

struct Appended {
    base_offset: i64,
    log_append_time: i64,
    log_start_offset: i64,
    /// The sync to wait for; `None` if the batch is durable already.
    sync_token: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_share_of_a_request_gets_a_copy_of_its_own() {
        let request = Bytes::from(vec![7u8; 8000]);
        let large = request.slice(0..1000);
        assert_eq!(own_share(large.clone(), 8000).as_ptr(), large.as_ptr());
        let small = request.slice(0..999);
        let owned = own_share(small.clone(), 8000);
        assert_ne!(owned.as_ptr(), small.as_ptr());
        assert_eq!(owned, small);
    }
}
