//! The client side of the Kafka framing, for seedlog's own clients: tests, the simulator's
//! workloads and `seedlog bench`. The broker side lives in [`crate::broker`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Encodes a request frame, size prefix included.
pub fn encode_request(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &RequestKind,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(128);
    buf.put_i32(0);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("seedlog")));
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut buf, version)
        .map_err(|e| e.to_string())?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes a response frame (size prefix included); returns its correlation id and body.
pub fn decode_response(
    api_key: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, ResponseKind), String> {
    if frame.len() < 8 {
        return Err("short response frame".into());
    }
    frame.advance(4);
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    let body = ResponseKind::decode(api_key, &mut frame, version).map_err(|e| e.to_string())?;
    Ok((header.correlation_id, body))
}

/// One uncompressed record batch with `CreateTime` timestamps, as a producer would send it.
pub fn record_batch<'a>(
    records: impl IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], i64)>,
) -> Bytes {
    idempotent_batch(None, records)
}

/// A record batch of an idempotent producer: `(producer id, epoch, first sequence)`;
/// `None` makes a plain producer's batch.
pub fn idempotent_batch<'a>(
    producer: Option<(i64, i16, i32)>,
    records: impl IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], i64)>,
) -> Bytes {
    encode_batch(producer, false, owned(records))
}

/// A record batch inside a transaction of the producer `(producer id, epoch, first
/// sequence)`.
pub fn transactional_batch<'a>(
    producer: (i64, i16, i32),
    records: impl IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], i64)>,
) -> Bytes {
    encode_batch(Some(producer), true, owned(records))
}

/// Borrowed `(key, value, timestamp)` records as the encoder takes them.
fn owned<'a, I>(
    records: I,
) -> impl Iterator<Item = (Option<Bytes>, Option<Bytes>, i64)> + use<'a, I>
where
    I: IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], i64)>,
{
    records.into_iter().map(|(key, value, timestamp)| {
        (
            key.map(Bytes::copy_from_slice),
            Some(Bytes::copy_from_slice(value)),
            timestamp,
        )
    })
}

/// One uncompressed v2 batch of `(key, value, timestamp)` records, either of which may be
/// null (a null value is a tombstone).
pub fn batch_of(records: impl Iterator<Item = (Option<Bytes>, Option<Bytes>, i64)>) -> Bytes {
    encode_batch(None, false, records)
}

fn encode_batch(
    producer: Option<(i64, i16, i32)>,
    transactional: bool,
    records: impl Iterator<Item = (Option<Bytes>, Option<Bytes>, i64)>,
) -> Bytes {
    let (producer_id, producer_epoch, first_seq) = producer.unwrap_or((-1, -1, 0));
    let records: Vec<Record> = records
        .enumerate()
        .map(|(i, (key, value, timestamp))| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch unless offset - sequence stays constant.
            sequence: first_seq.wrapping_add(i as i32),
            timestamp,
            key,
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encoding an in-memory batch");
    buf.freeze()
}

/// A topic name as the protocol types want it.
pub fn topic_name(topic: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(StrBytes::from_string(topic.to_string()))
}

/// A Produce request carrying one batch for one partition.
pub fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    timeout_ms: i32,
    records: Bytes,
) -> RequestKind {
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    let data = PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    let topic = TopicProduceData::default()
        .with_name(topic_name(topic))
        .with_partition_data(vec![data]);
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![topic]),
    )
}

/// A consumer's Fetch request for `(topic, partition, offset)` positions, each allowed
/// `partition_max_bytes`, the whole response `max_bytes`.
pub fn fetch_request<'a>(
    positions: impl IntoIterator<Item = (&'a str, i32, i64)>,
    max_wait_ms: i32,
    max_bytes: i32,
    partition_max_bytes: i32,
) -> RequestKind {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    let mut topics: std::collections::BTreeMap<&str, Vec<FetchPartition>> = Default::default();
    for (topic, partition, offset) in positions {
        topics.entry(topic).or_default().push(
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max_bytes),
        );
    }
    let topics = topics
        .into_iter()
        .map(|(topic, partitions)| {
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(partitions)
        })
        .collect();
    RequestKind::Fetch(
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_topics(topics),
    )
}
