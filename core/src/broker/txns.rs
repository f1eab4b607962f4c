//! The broker's side of transactions: the transaction APIs handed to the
//! [`TxnCoordinator`], its writes carried out as acks=all produces to
//! `__transaction_state`, and its markers delivered to the leader of each partition of a
//! transaction (this broker, or another over the peer link) and written there through the
//! partition's own Raft group, as Kafka's WriteTxnMarkers does.

use crate::time::Now;
use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{RequestKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, warn};

use super::{Broker, Output, ProduceFor, ReplyTo};
use crate::batch;
use crate::cluster::records::{MarkerRequest, MarkerResult, PeerFrame};
use crate::group::membership::Parked;
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::producer::MarkerState;
use crate::txn::{MarkerJob, Producer, TxnOutput, TXN_TOPIC};

/// How long a coordinator write or a marker write may wait for its commit.
const WRITE_TIMEOUT_MS: i32 = 5_000;
/// How long a marker may go unanswered before it is sent again (to whoever leads then).
const MARKER_RETRY_MS: i64 = 1_000;
/// How soon a refused marker is sent again (the partition's leader is moving).
const MARKER_REFUSED_RETRY_MS: i64 = 100;

/// Marker jobs being delivered, and the marker writes this broker makes as a leader.
#[derive(Debug, Default)]
pub(super) struct Markers {
    /// Jobs of this broker's coordinator, by job id.
    jobs: BTreeMap<u64, Delivery>,
    /// Marker writes in flight here, by write id.
    writes: BTreeMap<u64, MarkerWrite>,
    next_write: u64,
}

/// One job's partitions still without their marker, and when each is due to be sent.
#[derive(Debug)]
struct Delivery {
    job: MarkerJob,
    waiting: BTreeMap<(String, i32), i64>,
}

/// A marker this broker writes, and whom it answers.
#[derive(Debug)]
struct MarkerWrite {
    request: MarkerRequest,
    /// The coordinator that asked: this broker, or another.
    from: i32,
}

impl Broker {
    /// A transaction API request: handed to the coordinator, answered through its outputs.
    pub(super) fn txn_request(&mut self, now: Now, reply_to: ReplyTo, request: RequestKind) {
        let waiter = self.token();
        self.txn_waiters.insert(waiter, reply_to);
        let parked = Parked {
            waiter,
            version: reply_to.version,
        };
        match request {
            RequestKind::AddPartitionsToTxn(r) => {
                let exists = super::groups::partition_exists(&self.topics);
                self.txn_coordinator.add_partitions(now, parked, &r, exists);
            }
            RequestKind::AddOffsetsToTxn(r) => {
                let producer = Producer {
                    transactional_id: &r.transactional_id.0,
                    producer_id: r.producer_id.0,
                    epoch: r.producer_epoch,
                };
                let offsets = self.offsets_partition(&r.group_id.0);
                self.txn_coordinator
                    .add_offsets(now, parked, producer, offsets);
            }
            RequestKind::EndTxn(r) => {
                let producer = Producer {
                    transactional_id: &r.transactional_id.0,
                    producer_id: r.producer_id.0,
                    epoch: r.producer_epoch,
                };
                self.txn_coordinator
                    .end_txn(now, parked, producer, r.committed);
            }
            other => {
                warn!(api = ?reply_to.api_key, "not a transaction request: {other:?}");
                self.txn_waiters.remove(&waiter);
                return self.close(reply_to.conn);
            }
        }
        self.drain_txn_coordinator(now);
    }

    /// The `__consumer_offsets` partition that holds `group` (as it will be numbered once
    /// created, if it does not exist yet).
    fn offsets_partition(&self, group: &str) -> (String, i32) {
        let count = self
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(self.config.groups.offsets_partitions, |t| {
                t.partition_count()
            });
        (OFFSETS_TOPIC.to_string(), partition_for(group, count))
    }

    /// InitProducerId with a transactional id, once a fresh producer id is at hand.
    pub(super) fn init_transactional(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: &InitProducerIdRequest,
        fresh_id: i64,
    ) {
        let Some(transactional_id) = request.transactional_id.as_ref() else {
            return;
        };
        let waiter = self.token();
        self.txn_waiters.insert(waiter, reply_to);
        let parked = Parked {
            waiter,
            version: reply_to.version,
        };
        let expected =
            (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
        self.txn_coordinator.init_producer_id(
            now,
            parked,
            &transactional_id.0,
            request.transaction_timeout_ms,
            expected,
            fresh_id,
        );
        self.drain_txn_coordinator(now);
    }

    /// Carries out what the transaction coordinator asked for.
    pub(super) fn drain_txn_coordinator(&mut self, now: Now) {
        while let Some(output) = self.txn_coordinator.poll_output() {
            match output {
                TxnOutput::Reply { waiter, response } => {
                    if let Some(reply_to) = self.txn_waiters.remove(&waiter) {
                        self.respond(reply_to, Some(response));
                    }
                }
                TxnOutput::Write {
                    id,
                    partition,
                    batch,
                } => {
                    let request = internal_produce(TXN_TOPIC, partition, batch);
                    self.produce(now, ProduceFor::Transactions(id), request);
                }
                TxnOutput::Markers(job) => {
                    let waiting = job
                        .partitions
                        .iter()
                        .map(|tp| (tp.clone(), now.mono))
                        .collect();
                    self.markers.jobs.insert(job.id, Delivery { job, waiting });
                    self.push_markers(now);
                }
            }
        }
    }

    /// A coordinator write's produce is answered.
    pub(super) fn txn_write_done(&mut self, id: u64, response: Option<ProduceResponse>) {
        let result = match produce_error(response.as_ref()) {
            None => Ok(()),
            Some(e) => Err(e),
        };
        self.txn_coordinator.write_done(id, result);
    }

    /// Sends every marker that is due: not sent yet, or unanswered for too long.
    pub(super) fn push_markers(&mut self, now: Now) {
        let me = self.config.broker_id;
        let mut due = Vec::new();
        for delivery in self.markers.jobs.values_mut() {
            for ((topic, partition), at) in &mut delivery.waiting {
                if *at > now.mono {
                    continue;
                }
                *at = now.mono + MARKER_RETRY_MS;
                let request = MarkerRequest {
                    job: delivery.job.id,
                    topic: topic.clone(),
                    partition: *partition,
                    producer_id: delivery.job.producer_id,
                    epoch: i32::from(delivery.job.epoch),
                    commit: delivery.job.commit,
                    coordinator_epoch: delivery.job.coordinator_epoch,
                    txn_number: delivery.job.txn_number,
                };
                due.push(request);
            }
        }
        let mut local = Vec::new();
        let mut remote: BTreeMap<i32, Vec<MarkerRequest>> = BTreeMap::new();
        for request in due {
            let leader = self
                .topics
                .get(request.topic.as_str())
                .map(|t| self.partition_leader(t, request.partition).0);
            match leader {
                // The topic is gone: so is what the transaction wrote to it.
                None => local.push(request),
                Some(Some(l)) if l == me => local.push(request),
                Some(Some(l)) => remote.entry(l).or_default().push(request),
                Some(None) => {
                    debug!(topic = %request.topic, partition = request.partition, "no leader for a marker yet; retried")
                }
            }
        }
        for request in local {
            self.write_marker(now, me, request);
        }
        for (to, markers) in remote {
            self.send_peer_markers(to, markers, Vec::new());
        }
    }

    fn send_peer_markers(
        &mut self,
        to: i32,
        markers: Vec<MarkerRequest>,
        results: Vec<MarkerResult>,
    ) {
        let frame = PeerFrame {
            from: self.config.broker_id,
            markers,
            marker_results: results,
            ..PeerFrame::default()
        };
        self.outputs.push_back(Output::Peer {
            to,
            frame: frame.encode_shared(),
        });
    }

    /// Writes a marker as the partition's leader, for the coordinator on broker `from`.
    pub(super) fn write_marker(&mut self, now: Now, from: i32, request: MarkerRequest) {
        if !self.topics.contains_key(request.topic.as_str()) {
            let code = ResponseError::UnknownTopicOrPartition.code();
            return self.marker_answered(now, from, &request, code);
        }
        let Ok(epoch) = i16::try_from(request.epoch) else {
            let code = ResponseError::InvalidProducerEpoch.code();
            return self.marker_answered(now, from, &request, code);
        };
        let state = self.log(&request.topic, request.partition).map(|log| {
            log.txns()
                .marker_state(request.producer_id, request.txn_number)
        });
        match state {
            // A late copy (a resend, or one the network held up): written again, it could
            // end the producer's next transaction.
            Some(MarkerState::Committed) => {
                debug!(topic = %request.topic, partition = request.partition, producer = request.producer_id, "marker written before; not again");
                return self.marker_answered(now, from, &request, 0);
            }
            // Its first copy's write answers for it; until then it may still be replaced.
            Some(MarkerState::Uncommitted) => {
                let code = ResponseError::RequestTimedOut.code();
                return self.marker_answered(now, from, &request, code);
            }
            Some(MarkerState::New) | None => {}
        }
        let marker = batch::txn_marker_batch(
            request.producer_id,
            epoch,
            request.commit,
            request.coordinator_epoch,
            request.txn_number,
            now.wall,
        );
        let produce = internal_produce(&request.topic, request.partition, marker.freeze());
        self.markers.next_write += 1;
        let id = self.markers.next_write;
        self.markers
            .writes
            .insert(id, MarkerWrite { request, from });
        self.produce(now, ProduceFor::Marker(id), produce);
    }

    /// A marker write's produce is answered.
    pub(super) fn marker_written(&mut self, id: u64, response: Option<ProduceResponse>) {
        let Some(write) = self.markers.writes.remove(&id) else {
            return;
        };
        let code = produce_error(response.as_ref()).map_or(0, |e| e.code());
        let request = &write.request;
        if code == 0 && request.topic == OFFSETS_TOPIC {
            // The offsets the transaction committed in this group partition take effect.
            let producer = (request.producer_id, request.epoch as i16);
            self.coordinator
                .complete_txn(self.now, request.partition, producer, request.commit);
        }
        self.marker_answered(self.now, write.from, &write.request, code);
    }

    /// A marker was written (`code` 0) or refused: tells the coordinator that asked.
    fn marker_answered(&mut self, now: Now, from: i32, request: &MarkerRequest, code: i16) {
        if from != self.config.broker_id {
            let result = MarkerResult {
                job: request.job,
                topic: request.topic.clone(),
                partition: request.partition,
                error_code: i32::from(code),
            };
            return self.send_peer_markers(from, Vec::new(), vec![result]);
        }
        self.marker_result(
            now,
            request.job,
            (request.topic.clone(), request.partition),
            code,
        );
    }

    /// The outcome of one marker of one of this coordinator's jobs.
    pub(super) fn marker_result(&mut self, now: Now, job: u64, tp: (String, i32), code: i16) {
        let Some(delivery) = self.markers.jobs.get_mut(&job) else {
            return;
        };
        let done = code == 0 || code == ResponseError::UnknownTopicOrPartition.code();
        if !done {
            debug!(job, topic = %tp.0, partition = tp.1, code, "marker refused; retried");
            if let Some(due) = delivery.waiting.get_mut(&tp) {
                // Soon: the refusal means the leader is moving. Never at once: a refusal
                // can come back within this call.
                *due = now.mono + MARKER_REFUSED_RETRY_MS;
            }
            return;
        }
        delivery.waiting.remove(&tp);
        if delivery.waiting.is_empty() {
            self.markers.jobs.remove(&job);
            self.txn_coordinator.markers_done(now, job);
        }
    }

    /// The markers and marker results of a peer frame from broker `from`.
    pub(super) fn handle_peer_markers(
        &mut self,
        now: Now,
        from: i32,
        markers: Vec<MarkerRequest>,
        results: Vec<MarkerResult>,
    ) {
        for request in markers {
            self.write_marker(now, from, request);
        }
        for r in results {
            let code = i16::try_from(r.error_code).unwrap_or(-1);
            self.marker_result(now, r.job, (r.topic, r.partition), code);
        }
    }

    /// When a marker next needs sending again.
    pub(super) fn marker_deadline(&self) -> Option<i64> {
        self.markers
            .jobs
            .values()
            .flat_map(|d| d.waiting.values())
            .copied()
            .min()
    }
}

/// An acks=all produce of one broker-written batch.
pub(super) fn internal_produce(topic: &str, partition: i32, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(WRITE_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])])
}

/// The error of a one-partition produce's answer, if any.
pub(super) fn produce_error(response: Option<&ProduceResponse>) -> Option<ResponseError> {
    let code = response
        .and_then(|r| r.responses.first())
        .and_then(|t| t.partition_responses.first())
        .map_or(ResponseError::UnknownServerError.code(), |p| p.error_code);
    ResponseError::try_from_code(code)
}
