//! Request versions Kafka 3.9 still serves and kafka-protocol 0.18 no longer encodes (it
//! follows Kafka 4.0's floors): Produce v0-2, Fetch v0-3, ListOffsets v0, OffsetCommit
//! v0-1, OffsetFetch v0, CreateTopics v0-1, DeleteTopics v0 and DescribeConfigs v0.
//! Older clients and the tools built on them send these (sarama's defaults commit with
//! OffsetCommit v1, Burrow asks ListOffsets v0, segmentio's kafka-go sends CreateTopics v0,
//! Produce v2 and Fetch v2).
//!
//! Each old request is decoded here into the modern request the handlers already serve,
//! and each answer encoded back in the old shape, so no handler knows about versions.
//! Records cross the edge converted: an old producer's message set becomes one v2 batch
//! before it is validated, and a fetch of v0-3 gets the v2 batches as a v0 or v1 message
//! set (see [`message_set`]). Where an old format equals a newer one that kafka-protocol
//! still encodes, that version's codec is used.

pub mod message_set;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, GroupId, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The oldest version of each API that kafka-protocol still decodes: below it, this
/// module serves it.
fn codec_floor(api: ApiKey) -> i16 {
    match api {
        ApiKey::Produce => 3,
        ApiKey::Fetch => 4,
        ApiKey::ListOffsets => 1,
        ApiKey::OffsetCommit => 2,
        ApiKey::OffsetFetch => 1,
        ApiKey::CreateTopics => 2,
        ApiKey::DeleteTopics => 1,
        ApiKey::DescribeConfigs => 1,
        _ => 0,
    }
}

/// True if `version` of `api` is served by this module rather than by kafka-protocol.
pub fn is_legacy(api: ApiKey, version: i16) -> bool {
    version < codec_floor(api)
}

/// A cursor over an old request body; every read checks what is left (the bytes come
/// from a client).
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.0.remaining() < n {
            return Err("request body ends early".into());
        }
        Ok(())
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.need(2)?;
        Ok(self.0.get_i16())
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.need(4)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    /// An array's length: never more elements than bytes left (each takes one at least).
    fn len(&mut self) -> Result<usize, String> {
        let n = self.i32()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.0.remaining() => Ok(n),
            Ok(_) => Err(format!("array of {n} elements in a shorter body")),
            Err(_) => Ok(0), // null array
        }
    }
    fn nullable_string(&mut self) -> Result<Option<StrBytes>, String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        self.need(n as usize)?;
        let bytes = self.0.split_to(n as usize);
        let s = String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8")?;
        Ok(Some(StrBytes::from_string(s)))
    }
    fn string(&mut self) -> Result<StrBytes, String> {
        Ok(self.nullable_string()?.unwrap_or_default())
    }
    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, String> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        self.need(n as usize)?;
        Ok(Some(self.0.split_to(n as usize)))
    }
}

/// Reads `[name, [partition]]`, the shape every old request gives its topics in.
fn topics<P>(
    r: &mut Reader,
    mut partition: impl FnMut(&mut Reader) -> Result<P, String>,
) -> Result<Vec<(TopicName, Vec<P>)>, String> {
    let mut topics = Vec::new();
    for _ in 0..r.len()? {
        let name = TopicName(r.string()?);
        let mut partitions = Vec::new();
        for _ in 0..r.len()? {
            partitions.push(partition(r)?);
        }
        topics.push((name, partitions));
    }
    Ok(topics)
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn put_nullable_string(out: &mut BytesMut, s: Option<&StrBytes>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.put_i16(-1),
    }
}

/// Decodes an old request into the modern request that serves it. `wall` (the wall clock) stamps old
/// producers' messages that carry no timestamp.
pub fn decode(api: ApiKey, version: i16, body: Bytes, wall: i64) -> Result<RequestKind, String> {
    let mut r = Reader(body.clone());
    Ok(match api {
        ApiKey::Produce => RequestKind::Produce(produce(&mut r, wall)?),
        ApiKey::Fetch => RequestKind::Fetch(fetch(&mut r, version)?),
        ApiKey::ListOffsets => RequestKind::ListOffsets(list_offsets(&mut r)?),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(offset_commit(&mut r, version)?),
        // v0 read offsets from ZooKeeper in Kafka; its format is v1's.
        ApiKey::OffsetFetch => {
            RequestKind::OffsetFetch(OffsetFetchRequest::decode(&mut r.0, 1).map_err(err)?)
        }
        // v1 is v2 (v2 changed only the response); v0 lacks the trailing validate_only.
        ApiKey::CreateTopics => RequestKind::CreateTopics(
            CreateTopicsRequest::decode(&mut with_false_tail(body, version == 0), 2)
                .map_err(err)?,
        ),
        // v0 is v1 (v1 changed only the response).
        ApiKey::DeleteTopics => {
            RequestKind::DeleteTopics(DeleteTopicsRequest::decode(&mut r.0, 1).map_err(err)?)
        }
        // v0 lacks v1's trailing include_synonyms.
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(
            DescribeConfigsRequest::decode(&mut with_false_tail(body, true), 1).map_err(err)?,
        ),
        other => return Err(format!("{other:?} v{version} is not served")),
    })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The body with a `false` boolean appended: an old version that lacks only a trailing
/// boolean reads as the next version with it off.
fn with_false_tail(body: Bytes, append: bool) -> Bytes {
    if !append {
        return body;
    }
    let mut b = BytesMut::from(&body[..]);
    b.put_u8(0);
    b.freeze()
}

fn produce(r: &mut Reader, wall: i64) -> Result<ProduceRequest, String> {
    let acks = r.i16()?;
    let timeout_ms = r.i32()?;
    let topic_data = topics(r, |r| {
        let index = r.i32()?;
        let records = r.nullable_bytes()?.map(|set| up_convert(set, wall));
        Ok(PartitionProduceData::default()
            .with_index(index)
            .with_records(records))
    })?;
    let topic_data = topic_data
        .into_iter()
        .map(|(name, partitions)| {
            TopicProduceData::default()
                .with_name(name)
                .with_partition_data(partitions)
        })
        .collect();
    Ok(ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topic_data))
}

/// An old producer's records as a v2 batch. What cannot be converted is passed on empty,
/// which validation refuses with INVALID_RECORD; a compressed set stays as sent, refused
/// as a format this broker does not take (UNSUPPORTED_FOR_MESSAGE_FORMAT).
fn up_convert(set: Bytes, wall: i64) -> Bytes {
    if !message_set::is_legacy(&set) {
        return set; // v2 batches in an old request: taken as they are.
    }
    match message_set::up_convert(set.clone(), wall) {
        Ok(batch) => batch,
        Err(message_set::UpConvertError::Compressed) => set,
        Err(message_set::UpConvertError::Corrupt) => Bytes::new(),
    }
}

fn fetch(r: &mut Reader, version: i16) -> Result<FetchRequest, String> {
    let replica_id = r.i32()?;
    let max_wait_ms = r.i32()?;
    let min_bytes = r.i32()?;
    let max_bytes = if version >= 3 { r.i32()? } else { i32::MAX };
    let topics = topics(r, |r| {
        Ok(FetchPartition::default()
            .with_partition(r.i32()?)
            .with_fetch_offset(r.i64()?)
            .with_partition_max_bytes(r.i32()?)
            .with_current_leader_epoch(-1)
            .with_log_start_offset(-1))
    })?
    .into_iter()
    .map(|(topic, partitions)| {
        FetchTopic::default()
            .with_topic(topic)
            .with_partitions(partitions)
    })
    .collect();
    Ok(FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_topics(topics))
}

fn list_offsets(r: &mut Reader) -> Result<ListOffsetsRequest, String> {
    let replica_id = r.i32()?;
    let topics = topics(r, |r| {
        let partition_index = r.i32()?;
        let timestamp = r.i64()?;
        let _max_num_offsets = r.i32()?; // One offset is all this broker answers with.
        Ok(ListOffsetsPartition::default()
            .with_partition_index(partition_index)
            .with_timestamp(timestamp)
            .with_current_leader_epoch(-1))
    })?
    .into_iter()
    .map(|(name, partitions)| {
        ListOffsetsTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    })
    .collect();
    Ok(ListOffsetsRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_topics(topics))
}

fn offset_commit(r: &mut Reader, version: i16) -> Result<OffsetCommitRequest, String> {
    let group_id = GroupId(r.string()?);
    // v0 committed outside any generation (a simple consumer); v1 names the member.
    let (generation, member_id) = match version {
        0 => (-1, StrBytes::default()),
        _ => (r.i32()?, r.string()?),
    };
    let topics = topics(r, |r| {
        let partition_index = r.i32()?;
        let committed_offset = r.i64()?;
        if version == 1 {
            let _commit_timestamp = r.i64()?; // Kafka ignores it since 0.10.1, too.
        }
        Ok(OffsetCommitRequestPartition::default()
            .with_partition_index(partition_index)
            .with_committed_offset(committed_offset)
            .with_committed_leader_epoch(-1)
            .with_committed_metadata(r.nullable_string()?))
    })?
    .into_iter()
    .map(|(name, partitions)| {
        OffsetCommitRequestTopic::default()
            .with_name(name)
            .with_partitions(partitions)
    })
    .collect();
    Ok(OffsetCommitRequest::default()
        .with_group_id(group_id)
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member_id)
        .with_retention_time_ms(-1)
        .with_topics(topics))
}

/// Encodes the answer to an old request in its old shape.
pub fn encode(version: i16, response: &ResponseKind, out: &mut BytesMut) -> Result<(), String> {
    match response {
        ResponseKind::Produce(r) => {
            out.put_i32(r.responses.len() as i32);
            for t in &r.responses {
                put_string(out, &t.name.0);
                out.put_i32(t.partition_responses.len() as i32);
                for p in &t.partition_responses {
                    out.put_i32(p.index);
                    out.put_i16(p.error_code);
                    out.put_i64(p.base_offset);
                    if version >= 2 {
                        out.put_i64(p.log_append_time_ms);
                    }
                }
            }
            if version >= 1 {
                out.put_i32(r.throttle_time_ms);
            }
        }
        ResponseKind::Fetch(r) => {
            if version >= 1 {
                out.put_i32(r.throttle_time_ms);
            }
            // Fetch v0-1 consumers read magic 0 only; v2-3 (Kafka 0.10) read magic 1.
            let magic = if version >= 2 { 1 } else { 0 };
            out.put_i32(r.responses.len() as i32);
            for t in &r.responses {
                put_string(out, &t.topic.0);
                out.put_i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    out.put_i32(p.partition_index);
                    out.put_i16(p.error_code);
                    out.put_i64(p.high_watermark);
                    let set = p
                        .records
                        .as_ref()
                        .map(|b| message_set::down_convert(b, magic))
                        .unwrap_or_default();
                    out.put_i32(set.len() as i32);
                    out.put_slice(&set);
                }
            }
        }
        ResponseKind::ListOffsets(r) => {
            out.put_i32(r.topics.len() as i32);
            for t in &r.topics {
                put_string(out, &t.name.0);
                out.put_i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    out.put_i32(p.partition_index);
                    out.put_i16(p.error_code);
                    // v0's answer is a list of offsets: the one found, if any.
                    let found = p.error_code == 0 && p.offset >= 0;
                    out.put_i32(i32::from(found));
                    if found {
                        out.put_i64(p.offset);
                    }
                }
            }
        }
        // v0 and v1 answer as v2 does.
        ResponseKind::OffsetCommit(r) => r.encode(out, 2).map_err(err)?,
        ResponseKind::OffsetFetch(r) => r.encode(out, 1).map_err(err)?,
        ResponseKind::CreateTopics(r) => {
            out.put_i32(r.topics.len() as i32);
            for t in &r.topics {
                put_string(out, &t.name.0);
                out.put_i16(t.error_code);
                if version >= 1 {
                    put_nullable_string(out, t.error_message.as_ref());
                }
            }
        }
        ResponseKind::DeleteTopics(r) => {
            out.put_i32(r.responses.len() as i32);
            for t in &r.responses {
                put_string(out, t.name.as_ref().map_or("", |n| &n.0));
                out.put_i16(t.error_code);
            }
        }
        ResponseKind::DescribeConfigs(r) => {
            out.put_i32(r.throttle_time_ms);
            out.put_i32(r.results.len() as i32);
            for res in &r.results {
                out.put_i16(res.error_code);
                put_nullable_string(out, res.error_message.as_ref());
                out.put_i8(res.resource_type);
                put_string(out, &res.resource_name);
                out.put_i32(res.configs.len() as i32);
                for c in &res.configs {
                    put_string(out, &c.name);
                    put_nullable_string(out, c.value.as_ref());
                    out.put_u8(u8::from(c.read_only));
                    // v0 says "default" where v1 names the source (5: DEFAULT_CONFIG).
                    out.put_u8(u8::from(c.config_source == 5));
                    out.put_u8(u8::from(c.is_sensitive));
                }
            }
        }
        other => return Err(format!("no old encoding for {other:?}")),
    }
    Ok(())
}
