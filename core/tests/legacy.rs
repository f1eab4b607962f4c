//! The request versions below kafka-protocol's floors (Kafka 3.9 serves them, 4.0 does
//! not), encoded here by hand from Kafka's protocol guide, as old clients send them.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use seedlog_core::config::BrokerConfig;
use seedlog_core::group::GroupConfig;

mod support;
use support::*;

/// A request body, written field by field.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn i8(mut self, v: i8) -> Self {
        self.0.push(v as u8);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(self, v: &str) -> Self {
        let mut w = self.i16(v.len() as i16);
        w.0.extend_from_slice(v.as_bytes());
        w
    }
    fn bytes(self, v: &[u8]) -> Self {
        let mut w = self.i32(v.len() as i32);
        w.0.extend_from_slice(v);
        w
    }
}

/// A response body, read field by field.
struct R(Bytes);

impl R {
    fn i8(&mut self) -> i8 {
        self.0.get_i8()
    }
    fn i16(&mut self) -> i16 {
        self.0.get_i16()
    }
    fn i32(&mut self) -> i32 {
        self.0.get_i32()
    }
    fn i64(&mut self) -> i64 {
        self.0.get_i64()
    }
    fn s(&mut self) -> String {
        let n = self.i16();
        if n < 0 {
            return String::new();
        }
        String::from_utf8(self.0.split_to(n as usize).to_vec()).unwrap()
    }
    fn bytes(&mut self) -> Bytes {
        let n = self.i32();
        self.0.split_to(n.max(0) as usize)
    }
    fn done(&self) {
        assert!(self.0.is_empty(), "{} bytes left over", self.0.len());
    }
}

/// A message set of `magic` 0 or 1, as a pre-0.11 producer writes it (CRC-32, IEEE).
fn message_set(magic: i8, values: &[&str], timestamp: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        let mut m = W::default().i8(magic).i8(0);
        if magic == 1 {
            m = m.i64(timestamp);
        }
        let m = m.i32(-1).bytes(value.as_bytes()).0;
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&(m.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&crc32(&m).to_be_bytes());
        out.extend_from_slice(&m);
    }
    out
}

/// One message read back: (offset, magic, timestamp, value).
type Message = (i64, i8, i64, String);

/// Reads a message set back.
fn messages(mut set: Bytes) -> Vec<Message> {
    let mut out = Vec::new();
    while set.remaining() >= 12 {
        let offset = set.get_i64();
        let size = set.get_i32() as usize;
        let mut m = R(set.split_to(size));
        let crc = m.i32() as u32;
        assert_eq!(crc, crc32(&m.0), "message CRC");
        let magic = m.i8();
        let _attributes = m.i8();
        let timestamp = if magic == 1 { m.i64() } else { -1 };
        let _key = m.bytes();
        let value = String::from_utf8(m.bytes().to_vec()).unwrap();
        m.done();
        out.push((offset, magic, timestamp, value));
    }
    out
}

/// Produce of one message set to t-0 at `version`: (error, base offset).
fn produce(h: &mut Harness, version: i16, set: &[u8]) -> (i16, i64) {
    let body = W::default()
        .i16(-1)
        .i32(5000)
        .i32(1)
        .s("t")
        .i32(1)
        .i32(0)
        .bytes(set);
    h.send_raw(1, ApiKey::Produce, version, &body.0);
    let mut r = R(h.reply_raw(1).expect("produce answered"));
    assert_eq!((r.i32(), r.s(), r.i32(), r.i32()), (1, "t".into(), 1, 0));
    let (error, base) = (r.i16(), r.i64());
    if version >= 2 {
        assert_eq!(r.i64(), -1, "log append time: none for CreateTime topics");
    }
    if version >= 1 {
        assert_eq!(r.i32(), 0, "throttle time");
    }
    r.done();
    (error, base)
}

/// Fetch of t-0 from `offset` at `version`: (error, high watermark, messages).
fn fetch(h: &mut Harness, version: i16, offset: i64) -> (i16, i64, Vec<Message>) {
    let mut body = W::default().i32(-1).i32(0).i32(1);
    if version >= 3 {
        body = body.i32(1 << 20);
    }
    let body = body.i32(1).s("t").i32(1).i32(0).i64(offset).i32(1 << 20);
    h.send_raw(2, ApiKey::Fetch, version, &body.0);
    let mut r = R(h.reply_raw(2).expect("fetch answered"));
    if version >= 1 {
        assert_eq!(r.i32(), 0, "throttle time");
    }
    assert_eq!((r.i32(), r.s(), r.i32(), r.i32()), (1, "t".into(), 1, 0));
    let (error, hw, set) = (r.i16(), r.i64(), r.bytes());
    r.done();
    (error, hw, messages(set))
}

#[test]
fn old_producers_write_message_sets_that_every_fetch_version_reads() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    assert_eq!(produce(&mut h, 0, &message_set(0, &["a", "b"], 0)), (0, 0));
    assert_eq!(produce(&mut h, 1, &message_set(0, &["c"], 0)), (0, 2));
    assert_eq!(
        produce(&mut h, 2, &message_set(1, &["d", "e"], 1234)),
        (0, 3)
    );
    // A v2 batch in an old request is taken as it is, and a modern producer's too.
    assert_eq!(produce(&mut h, 2, &batch(1, 99)), (0, 5));
    let corrupt = {
        let mut set = message_set(1, &["x"], 1);
        *set.last_mut().unwrap() ^= 1;
        set
    };
    assert_eq!(
        produce(&mut h, 2, &corrupt).0,
        ResponseError::InvalidRecord.code()
    );

    for version in 0..=3 {
        let magic = if version >= 2 { 1 } else { 0 };
        let (error, hw, read) = fetch(&mut h, version, 0);
        assert_eq!((error, hw), (0, 6), "fetch v{version}");
        let values: Vec<(i64, String)> = read.iter().map(|m| (m.0, m.3.clone())).collect();
        let expected: Vec<(i64, String)> = ["a", "b", "c", "d", "e", "value-0"]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, v.to_string()))
            .collect();
        assert_eq!(values, expected, "fetch v{version}");
        assert!(
            read.iter().all(|m| m.1 == magic),
            "fetch v{version} is magic {magic}"
        );
        if magic == 1 {
            assert_eq!(read[3].2, 1234, "a v1 message keeps its timestamp");
            assert_eq!(read[0].2, h.now, "a v0 message takes the broker's time");
        }
        // From the middle of a batch: the whole batch, as Kafka sends old consumers a
        // compressed wrapper whole; they step over what precedes their offset.
        let offsets: Vec<i64> = fetch(&mut h, version, 4).2.iter().map(|m| m.0).collect();
        assert_eq!(offsets, [3, 4, 5], "fetch v{version} from offset 4");
    }
    // Modern consumers read the same records from the stored v2 batches.
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).2, vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn list_offsets_v0_answers_with_a_list_of_one_offset() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, batch(4, 1000));
    for (timestamp, expected) in [(-1, 4), (-2, 0)] {
        let body = W::default()
            .i32(-1)
            .i32(1)
            .s("t")
            .i32(1)
            .i32(0)
            .i64(timestamp)
            .i32(10);
        h.send_raw(1, ApiKey::ListOffsets, 0, &body.0);
        let mut r = R(h.reply_raw(1).unwrap());
        assert_eq!((r.i32(), r.s(), r.i32(), r.i32()), (1, "t".into(), 1, 0));
        assert_eq!(r.i16(), 0);
        assert_eq!((r.i32(), r.i64()), (1, expected), "timestamp {timestamp}");
        r.done();
    }
}

/// OffsetCommit of `offset` for t-0 in group `g` at v0 or v1; the error code.
fn commit(h: &mut Harness, version: i16, offset: i64) -> i16 {
    let mut body = W::default().s("g");
    if version == 1 {
        body = body.i32(-1).s("");
    }
    body = body.i32(1).s("t").i32(1).i32(0).i64(offset);
    if version == 1 {
        body = body.i64(-1);
    }
    let body = body.s("meta");
    h.send_raw(1, ApiKey::OffsetCommit, version, &body.0);
    let mut r = R(h.reply_raw(1).unwrap());
    assert_eq!((r.i32(), r.s(), r.i32(), r.i32()), (1, "t".into(), 1, 0));
    let error = r.i16();
    r.done();
    error
}

/// OffsetFetch v0 of t-0 in group `g`: (offset, metadata, error).
fn committed(h: &mut Harness) -> (i64, String, i16) {
    let body = W::default().s("g").i32(1).s("t").i32(1).i32(0);
    h.send_raw(1, ApiKey::OffsetFetch, 0, &body.0);
    let mut r = R(h.reply_raw(1).unwrap());
    assert_eq!((r.i32(), r.s(), r.i32(), r.i32()), (1, "t".into(), 1, 0));
    let out = (r.i64(), r.s(), r.i16());
    r.done();
    out
}

#[test]
fn offsets_committed_with_v0_and_v1_read_back_with_offset_fetch_v0() {
    let mut h = Harness::new(BrokerConfig {
        groups: GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        },
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, batch(9, 1000));
    // The coordinator must exist first, as a client's FindCoordinator makes it.
    let ResponseKind::FindCoordinator(_) = h.call(
        ApiKey::FindCoordinator,
        0,
        RequestKind::FindCoordinator(
            find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g")),
        ),
    ) else {
        panic!()
    };
    h.advance(100);
    assert_eq!(commit(&mut h, 0, 3), 0);
    assert_eq!(committed(&mut h), (3, "meta".into(), 0));
    assert_eq!(commit(&mut h, 1, 7), 0);
    assert_eq!(committed(&mut h), (7, "meta".into(), 0));
}

#[test]
fn topics_are_created_described_and_deleted_with_the_oldest_versions() {
    let mut h = Harness::new(BrokerConfig::default());
    for version in [0, 1] {
        let name = format!("c{version}");
        let mut body = W::default()
            .i32(1)
            .s(&name)
            .i32(2)
            .i16(1)
            .i32(0)
            .i32(1)
            .s("retention.ms")
            .s("60000")
            .i32(5000);
        if version == 1 {
            body = body.i8(0); // validate_only
        }
        h.send_raw(1, ApiKey::CreateTopics, version, &body.0);
        let mut r = R(h.reply_raw(1).unwrap());
        assert_eq!(
            (r.i32(), r.s(), r.i16()),
            (1, name.clone(), 0),
            "v{version}"
        );
        if version == 1 {
            assert_eq!(r.i16(), -1, "no error message");
        }
        r.done();
    }
    let body = W::default().i32(1).i8(2).s("c0").i32(-1);
    h.send_raw(1, ApiKey::DescribeConfigs, 0, &body.0);
    let mut r = R(h.reply_raw(1).unwrap());
    assert_eq!(r.i32(), 0, "throttle time");
    assert_eq!(
        (r.i32(), r.i16(), r.s(), r.i8(), r.s()),
        (1, 0, String::new(), 2, "c0".into())
    );
    let mut configs = Vec::new();
    for _ in 0..r.i32() {
        let (name, value) = (r.s(), r.s());
        let (_read_only, is_default, _sensitive) = (r.i8(), r.i8(), r.i8());
        configs.push((name, value, is_default));
    }
    r.done();
    assert!(
        configs.contains(&("retention.ms".into(), "60000".into(), 0)),
        "{configs:?}"
    );
    assert!(configs
        .iter()
        .any(|(n, _, d)| n == "segment.bytes" && *d == 1));

    let body = W::default().i32(1).s("c0").i32(5000);
    h.send_raw(1, ApiKey::DeleteTopics, 0, &body.0);
    let mut r = R(h.reply_raw(1).unwrap());
    assert_eq!((r.i32(), r.s(), r.i16()), (1, "c0".into(), 0));
    r.done();
}

/// Every version served below kafka-protocol's floors has a test above.
#[test]
fn every_old_version_advertised_is_tested_here() {
    const TESTED: &[(ApiKey, i16)] = &[
        (ApiKey::Produce, 0),
        (ApiKey::Produce, 1),
        (ApiKey::Produce, 2),
        (ApiKey::Fetch, 0),
        (ApiKey::Fetch, 1),
        (ApiKey::Fetch, 2),
        (ApiKey::Fetch, 3),
        (ApiKey::ListOffsets, 0),
        (ApiKey::OffsetCommit, 0),
        (ApiKey::OffsetCommit, 1),
        (ApiKey::OffsetFetch, 0),
        (ApiKey::CreateTopics, 0),
        (ApiKey::CreateTopics, 1),
        (ApiKey::DeleteTopics, 0),
        (ApiKey::DescribeConfigs, 0),
    ];
    let mut h = Harness::new(BrokerConfig::default());
    let ResponseKind::ApiVersions(versions) = h.call(
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(Default::default()),
    ) else {
        panic!()
    };
    for api in &versions.api_keys {
        let key = ApiKey::try_from(api.api_key).unwrap();
        for version in api.min_version..=api.max_version {
            if seedlog_core::legacy::is_legacy(key, version) {
                assert!(
                    TESTED.contains(&(key, version)),
                    "{key:?} v{version} untested"
                );
            }
        }
    }
}
