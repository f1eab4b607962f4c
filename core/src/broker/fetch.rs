//! Fetch (with long polling) and ListOffsets: requests answered from segment reads.
//!
//! A request that needs bytes from disk becomes a [`Job`] with one slot per partition read;
//! each slot issues a [`StorageOp::Read`] and the job answers when its last read completes.

use crate::time::Now;
use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ProducerId, ResponseKind};
use kafka_protocol::ResponseError;
use tracing::{error, warn};

use super::{Broker, ReplyTo};
use crate::batch::{frame_size, BatchView};
use crate::log::ReadPlan;
use crate::security::acl::{Operation, ResourceType};
use crate::storage::{StorageOp, TopicPartition};
use crate::{Observation, Output};

/// ListOffsets timestamp asking for the log start offset.
const EARLIEST: i64 = -2;
/// ListOffsets timestamp asking for the high watermark.
const LATEST: i64 = -1;

/// A fetch waiting for `min_bytes` of data or its deadline.
#[derive(Debug)]
pub(super) struct ParkedFetch {
    pub(super) reply_to: ReplyTo,
    pub(super) deadline: i64,
    request: FetchRequest,
}

/// A response being assembled from disk reads.
#[derive(Debug)]
pub(super) enum Job {
    Fetch {
        reply_to: ReplyTo,
        response: FetchResponse,
        slots: Vec<ReadSlot>,
        outstanding: usize,
    },
    ListOffsets {
        reply_to: ReplyTo,
        response: ListOffsetsResponse,
        slots: Vec<ReadSlot>,
        outstanding: usize,
    },
}

/// One partition's read within a job.
#[derive(Debug)]
pub(super) struct ReadSlot {
    topic_index: usize,
    partition_index: usize,
    /// Fetch offset, or the timestamp searched for by ListOffsets.
    target: i64,
    /// Batches at or past this offset are left out (the last stable offset of a
    /// `read_committed` fetch).
    upto: i64,
    plan: ReadPlan,
}

/// `isolation_level` of a consumer that reads only committed transactions.
const READ_COMMITTED: i8 = 1;

impl Broker {
    pub(super) fn fetch(&mut self, now: Now, reply_to: ReplyTo, request: FetchRequest) {
        let denied = |t: &FetchTopic| !self.may_read(reply_to.conn, &t.topic.0);
        if self.fetch_is_ready(&request) || request.topics.iter().any(denied) {
            self.execute_fetch(reply_to, request);
        } else {
            let deadline = now.mono + i64::from(request.max_wait_ms);
            self.reader_at_end_until = now.mono + super::READER_AT_END_MS;
            self.parked_fetches.push(ParkedFetch {
                reply_to,
                deadline,
                request,
            });
        }
    }

    /// May the client on `conn` read `topic`?
    fn may_read(&self, conn: u64, topic: &str) -> bool {
        self.allowed(conn, Operation::Read, ResourceType::Topic, topic)
    }

    /// True if a fetch should be answered now rather than wait for more data.
    fn fetch_is_ready(&self, request: &FetchRequest) -> bool {
        if request.max_wait_ms <= 0 || request.min_bytes <= 0 {
            return true;
        }
        let mut available = 0u64;
        for topic in &request.topics {
            for p in &topic.partitions {
                let Ok(log) = self.serving_log(&topic.topic.0, p.partition, p.current_leader_epoch)
                else {
                    return true; // Errors are answered at once.
                };
                if p.fetch_offset < log.log_start_offset() || p.fetch_offset > log.high_watermark()
                {
                    return true;
                }
                let stable = request.isolation_level != READ_COMMITTED
                    || p.fetch_offset < log.last_stable_offset();
                if stable {
                    available += log.committed_bytes_after(p.fetch_offset);
                }
            }
        }
        available >= request.min_bytes as u64
    }

    /// High watermarks rose in `advanced`: report them (with `report_visible`) and answer
    /// the fetches parked on them that now have enough to read.
    pub(super) fn advanced(&mut self, advanced: &BTreeSet<TopicPartition>) {
        if advanced.is_empty() {
            return;
        }
        if self.config.report_visible {
            for tp in advanced {
                let Some(topic) = self.topics.get(&tp.topic) else {
                    continue;
                };
                let Some(log) = topic.partition(tp.partition) else {
                    continue;
                };
                let leader = topic.raft.get(&tp.partition).is_none_or(|r| r.is_leader());
                let visible = Observation::Visible {
                    partition: tp.clone(),
                    high_watermark: log.high_watermark(),
                    leader,
                };
                self.outputs.push_back(Output::Observed(visible));
            }
        }
        self.wake_parked_fetches(advanced);
    }

    fn wake_parked_fetches(&mut self, advanced: &BTreeSet<TopicPartition>) {
        let touched = |f: &ParkedFetch| {
            f.request.topics.iter().any(|t| {
                t.partitions.iter().any(|p| {
                    advanced
                        .iter()
                        .any(|tp| *tp.topic == *t.topic.0 && tp.partition == p.partition)
                })
            })
        };
        let mut i = 0;
        while i < self.parked_fetches.len() {
            let f = &self.parked_fetches[i];
            if touched(f) && self.fetch_is_ready(&f.request) {
                let f = self.parked_fetches.swap_remove(i);
                self.execute_fetch(f.reply_to, f.request);
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn expire_parked_fetches(&mut self, now: Now) {
        let (due, waiting) = std::mem::take(&mut self.parked_fetches)
            .into_iter()
            .partition(|f| f.deadline <= now.mono);
        self.parked_fetches = waiting;
        let mut due: Vec<ParkedFetch> = due;
        due.sort_by_key(|f| (f.deadline, f.reply_to.conn, f.reply_to.seq));
        for f in due {
            self.execute_fetch(f.reply_to, f.request);
        }
    }

    fn execute_fetch(&mut self, reply_to: ReplyTo, request: FetchRequest) {
        let mut budget = match request.max_bytes {
            b if b > 0 => b.min(self.config.fetch_max_bytes) as usize,
            _ => self.config.fetch_max_bytes as usize,
        };
        let committed_only = request.isolation_level == READ_COMMITTED;
        let aborted = committed_only.then(Vec::new);
        let mut response = FetchResponse::default();
        let mut slots = Vec::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let mut topic_response = FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id);
            let readable = self.may_read(reply_to.conn, &topic.topic.0);
            for (partition_index, p) in topic.partitions.iter().enumerate() {
                let mut data = PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_aborted_transactions(aborted.clone())
                    .with_records(Some(Bytes::new()));
                let log = match readable {
                    true => self.serving_log(&topic.topic.0, p.partition, p.current_leader_epoch),
                    false => Err(ResponseError::TopicAuthorizationFailed),
                };
                match log {
                    Err(error) => data.error_code = error.code(),
                    Ok(log) => {
                        let stable = log.last_stable_offset();
                        data.high_watermark = log.high_watermark();
                        data.last_stable_offset = stable;
                        data.log_start_offset = log.log_start_offset();
                        let upto = if committed_only {
                            // The client drops the records of these as it reads them.
                            let ranges = log.txns().aborted_between(p.fetch_offset, stable);
                            data.aborted_transactions = Some(
                                ranges
                                    .map(|a| {
                                        AbortedTransaction::default()
                                            .with_producer_id(ProducerId(a.producer_id))
                                            .with_first_offset(a.first_offset)
                                    })
                                    .collect(),
                            );
                            stable
                        } else {
                            // The read plan itself stops at the high watermark.
                            i64::MAX
                        };
                        let want = budget.min(p.partition_max_bytes.max(0) as usize);
                        match log.plan_read(p.fetch_offset, want) {
                            Err(_) => data.error_code = ResponseError::OffsetOutOfRange.code(),
                            Ok(Some(plan)) if want > 0 && p.fetch_offset < upto => {
                                budget -= plan.len;
                                slots.push(ReadSlot {
                                    topic_index,
                                    partition_index,
                                    target: p.fetch_offset,
                                    upto,
                                    plan,
                                });
                            }
                            Ok(_) => {}
                        }
                    }
                }
                topic_response.partitions.push(data);
            }
            response.responses.push(topic_response);
        }
        let job = Job::Fetch {
            reply_to,
            response,
            outstanding: slots.len(),
            slots: Vec::new(),
        };
        self.start_job(job, slots);
    }

    pub(super) fn list_offsets(&mut self, reply_to: ReplyTo, request: ListOffsetsRequest) {
        let mut response = ListOffsetsResponse::default();
        let mut slots = Vec::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let mut topic_response =
                ListOffsetsTopicResponse::default().with_name(topic.name.clone());
            let described = self.allowed(
                reply_to.conn,
                Operation::Describe,
                ResourceType::Topic,
                &topic.name.0,
            );
            for (partition_index, p) in topic.partitions.iter().enumerate() {
                let mut out = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                let log = match described {
                    true => {
                        self.serving_log(&topic.name.0, p.partition_index, p.current_leader_epoch)
                    }
                    false => Err(ResponseError::TopicAuthorizationFailed),
                };
                match (log, p.timestamp) {
                    (Err(error), _) => out.error_code = error.code(),
                    (Ok(log), EARLIEST) => out.offset = log.log_start_offset(),
                    (Ok(log), LATEST) if request.isolation_level == READ_COMMITTED => {
                        out.offset = log.last_stable_offset()
                    }
                    (Ok(log), LATEST) => out.offset = log.high_watermark(),
                    (Ok(log), ts) if ts >= 0 => {
                        if let Some(plan) = log.plan_timestamp_read(ts) {
                            slots.push(ReadSlot {
                                topic_index,
                                partition_index,
                                target: ts,
                                upto: i64::MAX,
                                plan,
                            });
                        }
                    }
                    (Ok(_), _) => out.error_code = ResponseError::InvalidRequest.code(),
                }
                if out.error_code == 0 && reply_to.version >= 4 {
                    out.leader_epoch = self.leader_epoch(&topic.name.0, p.partition_index);
                }
                topic_response.partitions.push(out);
            }
            response.topics.push(topic_response);
        }
        let job = Job::ListOffsets {
            reply_to,
            response,
            outstanding: slots.len(),
            slots: Vec::new(),
        };
        self.start_job(job, slots);
    }

    /// Issues a job's reads, or answers at once if it has none.
    fn start_job(&mut self, mut job: Job, slots: Vec<ReadSlot>) {
        if slots.is_empty() {
            return self.finish_job(job);
        }
        let job_id = self.next_job;
        self.next_job += 1;
        for (i, slot) in slots.iter().enumerate() {
            self.issue_read(job_id, i, &slot.plan);
        }
        match &mut job {
            Job::Fetch { slots: s, .. } | Job::ListOffsets { slots: s, .. } => *s = slots,
        }
        self.jobs.insert(job_id, job);
    }

    fn issue_read(&mut self, job_id: u64, slot: usize, plan: &ReadPlan) {
        let token = self.token();
        self.reads.insert(token, (job_id, slot));
        self.storage(StorageOp::Read {
            token,
            segment: plan.segment.clone(),
            position: plan.position,
            len: plan.len,
        });
    }

    pub(super) fn on_read(&mut self, token: u64, result: Result<Bytes, String>) {
        let Some((job_id, slot_index)) = self.reads.remove(&token) else {
            warn!(token, "completion for an unknown read");
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let reissue = match job {
            Job::Fetch {
                response,
                slots,
                outstanding,
                ..
            } => {
                let slot = &mut slots[slot_index];
                let data =
                    &mut response.responses[slot.topic_index].partitions[slot.partition_index];
                let mut damaged_at = None;
                let reissue = fill_fetch_slot(slot, data, result, &mut damaged_at);
                let tp = &slot.plan.segment.partition;
                let replica = self
                    .topics
                    .get_mut(&tp.topic)
                    .and_then(|t| t.raft.get_mut(&tp.partition));
                if let (Some(offset), Some(replica)) = (damaged_at, replica) {
                    // Another replica holds it intact: this one steps aside and repairs, and
                    // the client asks the new leader.
                    replica.report_damage_at(offset);
                    data.error_code = ResponseError::NotLeaderOrFollower.code();
                    self.dirty_replicas.insert(tp.clone());
                }
                if reissue.is_none() {
                    *outstanding -= 1;
                }
                reissue
            }
            Job::ListOffsets {
                response,
                slots,
                outstanding,
                ..
            } => {
                let slot = &slots[slot_index];
                let out = &mut response.topics[slot.topic_index].partitions[slot.partition_index];
                fill_list_offsets_slot(slot, out, result);
                *outstanding -= 1;
                None
            }
        };
        if let Some(plan) = reissue {
            return self.issue_read(job_id, slot_index, &plan);
        }
        let done = matches!(
            self.jobs.get(&job_id),
            Some(Job::Fetch { outstanding: 0, .. } | Job::ListOffsets { outstanding: 0, .. })
        );
        if done {
            let job = self.jobs.remove(&job_id).expect("job exists");
            self.finish_job(job);
        }
    }

    fn finish_job(&mut self, job: Job) {
        match job {
            Job::Fetch {
                reply_to, response, ..
            } => self.respond(reply_to, Some(ResponseKind::Fetch(response))),
            Job::ListOffsets {
                reply_to, response, ..
            } => self.respond(reply_to, Some(ResponseKind::ListOffsets(response))),
        }
    }
}

/// Trims a read to the whole, intact batches at or after the fetch offset. Returns a new plan
/// if the first wanted batch did not fit in the read (it is then read whole, as KIP-74 asks).
/// A damaged batch where the answer would start sets `damaged_at` to its offset.
fn fill_fetch_slot(
    slot: &mut ReadSlot,
    data: &mut PartitionData,
    result: Result<Bytes, String>,
    damaged_at: &mut Option<i64>,
) -> Option<ReadPlan> {
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            error!(segment = ?slot.plan.segment, error = %e, "segment read failed");
            data.error_code = ResponseError::KafkaStorageError.code();
            return None;
        }
    };
    let (mut start, mut end) = (0usize, 0usize);
    let mut rest = &bytes[..];
    // Each batch must start where the last one ended: the base offset is outside the CRC.
    let mut expected_offset = slot.plan.first_offset;
    let mut skipped_to = slot.plan.first_offset;
    let mut at_limit = false;
    let corrupt = loop {
        match BatchView::split_first(rest) {
            Ok((view, tail)) => {
                if view.base_offset() != expected_offset || view.last_offset_delta() < 0 {
                    break true;
                }
                if view.base_offset() >= slot.upto {
                    at_limit = true;
                    break false;
                }
                let after = bytes.len() - tail.len();
                if view.last_offset() < slot.target {
                    start = after;
                    skipped_to = view.next_offset();
                } else if view.crc_ok() {
                    end = after;
                } else {
                    break true;
                }
                expected_offset = view.next_offset();
                rest = tail;
            }
            // A whole frame that is not a v2 batch is as corrupt as a bad CRC.
            Err(_) => {
                break frame_size(rest).is_some_and(|size| size <= rest.len())
                    || (rest.len() >= crate::batch::LOG_OVERHEAD && frame_size(rest).is_none());
            }
        }
    };
    end = end.max(start);
    if end > start {
        data.records = Some(bytes.slice(start..end));
        return None;
    }
    if at_limit {
        return None; // Nothing stable at or after the target yet.
    }
    if corrupt {
        let position = slot.plan.position + (bytes.len() - rest.len()) as u64;
        error!(segment = ?slot.plan.segment, position, "corrupt batch on disk; not serving it");
        data.error_code = ResponseError::KafkaStorageError.code();
        *damaged_at = Some(expected_offset);
        return None;
    }
    // Nothing whole at or after the target: read on from `start`, at least one whole batch
    // (or its header first, if not even that arrived). The committed bytes end on a batch
    // boundary, so a batch that claims to run past them is corrupt; refusing it also
    // guarantees every re-read makes progress.
    let remaining = slot.plan.available.saturating_sub(start as u64);
    let needed = frame_size(&bytes[start..]).unwrap_or(crate::batch::HEADER_BYTES);
    let short_read = bytes.len() < slot.plan.len;
    if remaining == 0 || (start == 0 && (short_read || needed <= bytes.len())) {
        return None;
    }
    if needed as u64 > remaining {
        error!(segment = ?slot.plan.segment, position = slot.plan.position + start as u64, needed, remaining, "batch runs past the committed log; not serving it");
        data.error_code = ResponseError::KafkaStorageError.code();
        // Its length (outside the CRC) is damaged: a replica repairs it like a bad CRC.
        *damaged_at = Some(expected_offset);
        return None;
    }
    let len = (needed.max(slot.plan.len) as u64).min(remaining) as usize;
    let first_offset = if start == 0 {
        slot.plan.first_offset
    } else {
        skipped_to
    };
    slot.plan = ReadPlan {
        segment: slot.plan.segment.clone(),
        position: slot.plan.position + start as u64,
        first_offset,
        len,
        available: remaining,
    };
    Some(slot.plan.clone())
}

/// Finds the first record with timestamp >= the target in a read of one index interval.
fn fill_list_offsets_slot(
    slot: &ReadSlot,
    out: &mut ListOffsetsPartitionResponse,
    result: Result<Bytes, String>,
) {
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            error!(segment = ?slot.plan.segment, error = %e, "segment read failed");
            out.error_code = ResponseError::KafkaStorageError.code();
            return;
        }
    };
    for view in crate::batch::complete_batches(&bytes) {
        if view.max_timestamp() < slot.target || !view.crc_ok() {
            continue;
        }
        let found = view
            .records()
            .filter(|_| !view.is_log_append_time())
            .and_then(|mut records| records.find(|r| r.timestamp >= slot.target))
            .map(|r| (r.timestamp, r.offset));
        let (timestamp, offset) = found.unwrap_or((view.max_timestamp(), view.base_offset()));
        out.timestamp = timestamp;
        out.offset = offset;
        return;
    }
}
