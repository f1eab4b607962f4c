//! A single broker driven in-process over an in-memory disk, with real Kafka request and
//! response encodings: shared by the integration tests of one broker.
#![allow(dead_code)] // Each test crate uses its own part of it.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use seedlog_core::config::BrokerConfig;
use seedlog_core::memdisk::MemDisk;
use seedlog_core::storage::{StorageCompletion, StorageOp};
use seedlog_core::wire::{decode_response, encode_request, record_batch};
use seedlog_core::{Broker, Now, Output, Recovered};

/// Steps a broker until idle, carrying out its storage operations on a `MemDisk`.
pub struct Harness {
    pub broker: Broker,
    pub disk: MemDisk,
    pub config: BrokerConfig,
    /// The monotonic time.
    pub now: i64,
    /// How far the wall clock is ahead of the monotonic time (a test steps it).
    pub wall_offset: i64,
    /// Frames sent to each connection, oldest first.
    pub inbox: BTreeMap<u64, VecDeque<Bytes>>,
    pub closed: Vec<u64>,
    /// While true, syncs are held back (as a slow disk would) until `release_syncs`.
    pub hold_syncs: bool,
    pub held: Vec<StorageOp>,
    /// (api, version) of the requests each connection sent, for decoding replies.
    pub asked: BTreeMap<u64, VecDeque<(ApiKey, i16)>>,
    pub next_correlation: i32,
    /// (position, length) of every read the broker issued.
    pub reads: Vec<(u64, usize)>,
}

impl Harness {
    pub fn new(config: BrokerConfig) -> Self {
        let now = 1_700_000_000_000;
        Harness {
            broker: Broker::new(config.clone(), Recovered::default(), 7, Now::at(now))
                .expect("starts"),
            disk: MemDisk::new(),
            config,
            now,
            wall_offset: 0,
            inbox: BTreeMap::new(),
            closed: Vec::new(),
            hold_syncs: false,
            held: Vec::new(),
            asked: BTreeMap::new(),
            next_correlation: 1,
            reads: Vec::new(),
        }
    }

    /// The time of the next input, on both clocks.
    pub fn time(&self) -> Now {
        Now {
            mono: self.now,
            wall: self.now + self.wall_offset,
        }
    }

    pub fn drive(&mut self) {
        for _ in 0..1_000_000 {
            let Some(output) = self.broker.poll_output() else {
                return;
            };
            match output {
                Output::Send { conn, frame } => {
                    self.inbox.entry(conn).or_default().push_back(frame)
                }
                Output::Close(conn) => self.closed.push(conn),
                Output::Peer { to, .. } => panic!("a single broker sent a peer frame to {to}"),
                Output::Observed(_) | Output::PeerAddress { .. } | Output::Authenticated { .. } => {
                }
                Output::Storage(op @ StorageOp::Sync { .. }) if self.hold_syncs => {
                    self.held.push(op)
                }
                Output::Storage(op) => {
                    if let StorageOp::Read { position, len, .. } = &op {
                        self.reads.push((*position, *len));
                    }
                    if let Some(c) = self.disk.execute(op) {
                        self.broker.handle_storage(self.time(), c);
                    }
                }
            }
        }
        panic!("broker did not go idle");
    }

    pub fn release_syncs(&mut self) {
        self.hold_syncs = false;
        while !self.held.is_empty() {
            self.complete_a_held_sync();
        }
    }

    /// Carries out the oldest held sync and hands its completion to the broker; later
    /// syncs stay held.
    pub fn complete_a_held_sync(&mut self) {
        let op = self.held.remove(0);
        let c = self.disk.execute(op).expect("sync completes");
        assert!(matches!(c, StorageCompletion::Synced { .. }));
        self.broker.handle_storage(self.time(), c);
        self.drive();
    }

    pub fn send(&mut self, conn: u64, api: ApiKey, version: i16, request: RequestKind) {
        let frame = encode_request(api, version, self.next_correlation, &request).unwrap();
        self.next_correlation += 1;
        self.asked
            .entry(conn)
            .or_default()
            .push_back((api, version));
        self.broker
            .handle_request(self.time(), conn, frame.slice(4..));
        self.drive();
    }

    /// Sends a request whose body the test encoded itself (versions kafka-protocol does
    /// not encode), with a v1 request header.
    pub fn send_raw(&mut self, conn: u64, api: ApiKey, version: i16, body: &[u8]) {
        let mut frame = Vec::new();
        frame.extend_from_slice(&(api as i16).to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&self.next_correlation.to_be_bytes());
        frame.extend_from_slice(&7i16.to_be_bytes());
        frame.extend_from_slice(b"seedlog");
        frame.extend_from_slice(body);
        self.next_correlation += 1;
        self.broker
            .handle_request(self.time(), conn, Bytes::from(frame));
        self.drive();
    }

    /// The body of the next response on `conn` (after its v0 header), undecoded.
    pub fn reply_raw(&mut self, conn: u64) -> Option<Bytes> {
        let frame = self.inbox.get_mut(&conn)?.pop_front()?;
        Some(frame.slice(8..))
    }

    pub fn reply(&mut self, conn: u64) -> Option<ResponseKind> {
        let frame = self.inbox.get_mut(&conn)?.pop_front()?;
        let (api, version) = self.asked.get_mut(&conn).unwrap().pop_front().unwrap();
        Some(decode_response(api, version, frame).unwrap().1)
    }

    pub fn call(&mut self, api: ApiKey, version: i16, request: RequestKind) -> ResponseKind {
        self.send(1, api, version, request);
        self.reply(1).expect("an immediate reply")
    }

    pub fn advance(&mut self, ms: i64) {
        self.now += ms;
        if self.broker.poll_timeout().is_some_and(|t| t <= self.now) {
            self.broker.handle_timeout(self.time());
            self.drive();
        }
    }

    /// Restarts the broker from its disk, optionally losing unsynced bytes first.
    pub fn restart(&mut self, crash: bool) {
        if crash {
            self.disk.crash();
        }
        self.held.clear();
        self.hold_syncs = false;
        self.inbox.clear();
        self.asked.clear();
        let recovered = self
            .disk
            .recover(self.config.index_interval_bytes, 2 << 20)
            .expect("small state intact");
        self.broker =
            Broker::new(self.config.clone(), recovered, 7, self.time()).expect("restarts");
        self.drive();
    }

    /// Flips the bits of `mask` in byte `position` of the `nth` segment file of `t-0`.
    pub fn flip(&mut self, nth: usize, position: usize, mask: u8) {
        let tp = seedlog_core::storage::TopicPartition::new(&std::sync::Arc::from("t"), 0);
        let id = self.disk.segment_ids(&tp)[nth].clone();
        self.disk.segment_bytes_mut(&id).unwrap()[position] ^= mask;
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            );
        let r = self.call(
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![topic])),
        );
        let ResponseKind::CreateTopics(r) = r else {
            panic!()
        };
        assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
    }

    pub fn produce_request(
        &mut self,
        conn: u64,
        acks: i16,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) {
        let request = seedlog_core::wire::produce_request(topic, partition, acks, 5000, records);
        self.send(conn, ApiKey::Produce, 9, request);
    }

    /// Produces and returns (error code, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
        self.produce_request(1, -1, topic, partition, records);
        let Some(ResponseKind::Produce(r)) = self.reply(1) else {
            panic!("no produce reply")
        };
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    pub fn fetch_request(
        &mut self,
        conn: u64,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) {
        let positions = [(topic, partition, offset)];
        let request =
            seedlog_core::wire::fetch_request(positions, max_wait_ms, max_bytes, max_bytes);
        self.send(conn, ApiKey::Fetch, 12, request);
    }

    /// Fetches without waiting; returns (error, high watermark, record offsets seen).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> (i16, i64, Vec<i64>) {
        // Its own connection, so that it does not queue behind a held produce.
        self.fetch_request(9, topic, partition, offset, 0, max_bytes);
        let Some(ResponseKind::Fetch(r)) = self.reply(9) else {
            panic!("no fetch reply")
        };
        let p = &r.responses[0].partitions[0];
        (
            p.error_code,
            p.high_watermark,
            offsets_in(p.records.clone().unwrap_or_default()),
        )
    }

    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        let ResponseKind::ListOffsets(r) =
            self.call(ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request))
        else {
            panic!()
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.offset)
    }
}

/// A broker checking retention every second, with a topic `t` whose records expire after
/// a minute, in segments of about one batch.
pub fn retention_harness() -> Harness {
    let mut h = Harness::new(BrokerConfig {
        retention_check_interval_ms: 1000,
        ..BrokerConfig::default()
    });
    h.create_topic(
        "t",
        1,
        &[("retention.ms", "60000"), ("segment.bytes", "100")],
    );
    h
}

/// Two records two minutes old, then one of now, in batches of their own.
pub fn produce_old_old_new(h: &mut Harness) {
    let old = h.now - 120_000;
    h.produce("t", 0, batch(1, old));
    h.produce("t", 0, batch(1, old));
    h.produce("t", 0, batch(1, h.now));
}

/// CRC-32 (IEEE), as magic 0 and 1 messages carry it, bit by bit: the tests' own,
/// independent of the broker's.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}
pub fn topic_name(v: &str) -> TopicName {
    TopicName(s(v))
}

/// Offsets of every record in fetched bytes, decoded with kafka-protocol (CRC checked).
pub fn offsets_in(mut bytes: Bytes) -> Vec<i64> {
    let sets =
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes).expect("valid batches");
    sets.iter()
        .flat_map(|s| s.records.iter().map(|r| r.offset))
        .collect()
}

pub fn batch(n: usize, timestamp: i64) -> Bytes {
    let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
    record_batch(values.iter().map(|v| (Some(&b"k"[..]), &v[..], timestamp)))
}
pub mod cluster;
