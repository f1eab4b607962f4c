//! The broker state machine driven in-process over an in-memory disk, with real Kafka
//! request and response encodings.

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use seedlog_core::config::BrokerConfig;
use seedlog_core::group::GroupConfig;
use seedlog_core::wire::{decode_response, encode_request, record_batch};

mod support;
use support::*;

#[test]
fn acks_all_answers_only_after_the_sync() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.hold_syncs = true;
    h.produce_request(1, -1, "t", 0, batch(3, 1000));
    assert!(h.reply(1).is_none(), "acks=all must wait for the fsync");
    let (_, hw, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!((hw, offsets.len()), (0, 0), "uncommitted data is invisible");
    h.release_syncs();
    let Some(ResponseKind::Produce(r)) = h.reply(1) else {
        panic!()
    };
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 0);
    assert_eq!(h.fetch("t", 0, 0, 1 << 20), (0, 3, vec![0, 1, 2]));
}

#[test]
fn appends_nobody_waits_for_share_a_later_sync() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.hold_syncs = true;
    let syncs = |h: &Harness| h.held.len();
    // acks=1 is answered at once, and its sync waits a few milliseconds for company.
    h.produce_request(1, 1, "t", 0, batch(3, 1000));
    assert!(matches!(h.reply(1), Some(ResponseKind::Produce(_))));
    h.advance(2);
    h.produce_request(1, 1, "t", 0, batch(2, 1000));
    assert!(matches!(h.reply(1), Some(ResponseKind::Produce(_))));
    assert_eq!(syncs(&h), 0, "nobody waits: no sync yet");
    h.advance(3);
    assert_eq!(syncs(&h), 1, "5 ms on, one sync takes both");
    h.release_syncs();
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).1, 5);

    // A consumer parked at the end wants the next append now.
    h.hold_syncs = true;
    h.fetch_request(2, "t", 0, 5, 500, 1 << 20);
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 1, "a parked fetch starts the sync at once");
    h.release_syncs();
    let Some(ResponseKind::Fetch(r)) = h.reply(2) else {
        panic!("the parked fetch is answered")
    };
    assert_eq!(r.responses[0].partitions[0].high_watermark, 6);

    // Appends made while that consumer waited stay awaited after the sync in flight has
    // answered it: the next sync starts as that one ends, not when the consumer is back.
    h.hold_syncs = true;
    h.fetch_request(2, "t", 0, 6, 500, 1 << 20);
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 1, "one sync in flight");
    h.complete_a_held_sync();
    assert!(matches!(h.reply(2), Some(ResponseKind::Fetch(_))));
    assert_eq!(syncs(&h), 1, "the second append's sync starts at once");
    h.release_syncs();

    // The consumer is not parked now (its answer is on the way), but it waited at the end
    // a moment ago and will be back: appends still start their sync at once...
    h.hold_syncs = true;
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 1, "a consumer waited at the end just now");
    h.release_syncs();
    // ...until nobody has waited there for a second.
    h.advance(1000);

    // So does an acks=all produce, for what acks=1 appended before it.
    h.hold_syncs = true;
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 0);
    h.produce_request(3, -1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 1, "acks=all starts the sync at once");
    h.release_syncs();
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).1, 11);

    // And a broker that is stopping does not leave appends out of a sync.
    h.hold_syncs = true;
    h.produce_request(1, 1, "t", 0, batch(1, 1000));
    assert_eq!(syncs(&h), 0);
    h.broker.begin_shutdown();
    h.drive();
    assert_eq!(syncs(&h), 1, "shutdown syncs at once");
}

#[test]
fn responses_keep_request_order_on_a_connection() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.hold_syncs = true;
    h.produce_request(1, -1, "t", 0, batch(1, 1000));
    h.send(
        1,
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default()),
    );
    assert!(
        h.inbox.get(&1).is_none_or(|q| q.is_empty()),
        "metadata must not overtake the produce"
    );
    h.release_syncs();
    assert!(matches!(h.reply(1), Some(ResponseKind::Produce(_))));
    assert!(matches!(h.reply(1), Some(ResponseKind::Metadata(_))));
}

#[test]
fn offsets_are_contiguous_and_mid_batch_fetch_returns_the_whole_batch() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 2, &[]);
    assert_eq!(h.produce("t", 1, batch(5, 1000)), (0, 0));
    assert_eq!(h.produce("t", 1, batch(5, 1000)), (0, 5));
    assert_eq!(h.produce("t", 0, batch(1, 1000)), (0, 0));
    let (err, hw, offsets) = h.fetch("t", 1, 7, 1 << 20);
    assert_eq!((err, hw), (0, 10));
    assert_eq!(
        offsets,
        vec![5, 6, 7, 8, 9],
        "the batch holding offset 7, whole"
    );
    assert_eq!(
        h.fetch("t", 1, 11, 1 << 20).0,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(h.fetch("t", 1, 10, 1 << 20), (0, 10, vec![]));
}

#[test]
fn a_batch_larger_than_max_bytes_is_still_returned_whole() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, batch(100, 1000));
    let (_, _, offsets) = h.fetch("t", 0, 0, 10);
    assert_eq!(offsets.len(), 100);
}

#[test]
fn long_poll_fetch_wakes_on_produce_and_times_out_empty() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.fetch_request(2, "t", 0, 0, 500, 1 << 20);
    assert!(h.reply(2).is_none(), "no data: the fetch waits");
    h.produce("t", 0, batch(2, 1000));
    let Some(ResponseKind::Fetch(r)) = h.reply(2) else {
        panic!("fetch woke")
    };
    assert_eq!(
        offsets_in(r.responses[0].partitions[0].records.clone().unwrap()),
        vec![0, 1]
    );

    h.fetch_request(2, "t", 0, 2, 500, 1 << 20);
    h.advance(499);
    assert!(h.reply(2).is_none());
    h.advance(1);
    let Some(ResponseKind::Fetch(r)) = h.reply(2) else {
        panic!("fetch timed out")
    };
    assert_eq!(
        r.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|b| b.len()),
        Some(0)
    );
}

#[test]
fn bad_batches_get_kafka_error_codes() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("max.message.bytes", "200")]);
    let mut corrupt = batch(2, 1000).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert_eq!(
        h.produce("t", 0, Bytes::from(corrupt)).0,
        ResponseError::CorruptMessage.code()
    );
    assert_eq!(
        h.produce("t", 0, batch(50, 1000)).0,
        ResponseError::MessageTooLarge.code()
    );
    let mut v1 = batch(1, 1000).to_vec();
    v1[16] = 1;
    assert_eq!(
        h.produce("t", 0, Bytes::from(v1)).0,
        ResponseError::UnsupportedForMessageFormat.code()
    );
    assert_eq!(
        h.produce("t", 0, Bytes::from_static(b"short")).0,
        ResponseError::CorruptMessage.code()
    );
    assert_eq!(
        h.produce("t", 3, batch(1, 1000)).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        h.produce("nope", 0, batch(1, 1000)).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
    assert_eq!(
        h.produce("t", 0, batch(1, 1000)),
        (0, 0),
        "nothing refused took an offset"
    );
}

#[test]
fn malformed_frames_close_the_connection_only() {
    let mut h = Harness::new(BrokerConfig::default());
    h.broker
        .handle_request(h.time(), 5, Bytes::from_static(&[0, 3, 0]));
    h.drive();
    h.broker.handle_request(
        h.time(),
        6,
        Bytes::from_static(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1]),
    );
    h.drive();
    // A Metadata v12 header followed by garbage.
    h.broker.handle_request(
        h.time(),
        7,
        Bytes::from_static(&[0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0xff]),
    );
    h.drive();
    // Produce v3 whose topic array claims 2^31-1 entries in a few bytes: must be a decode
    // error, not an allocation that aborts the process (see vendor/README.md).
    let mut huge = vec![0, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff];
    huge.extend_from_slice(&[
        0xff, 0xff, 0xff, 0xff, 0, 0, 3, 0xe8, 0x7f, 0xff, 0xff, 0xff,
    ]);
    h.broker.handle_request(h.time(), 8, Bytes::from(huge));
    h.drive();
    assert_eq!(h.closed, vec![5, 6, 7, 8]);
    h.create_topic("still-serving", 1, &[]);
}

#[test]
fn api_versions_too_new_gets_unsupported_version_in_v0() {
    let mut h = Harness::new(BrokerConfig::default());
    let request = RequestKind::ApiVersions(Default::default());
    let frame = encode_request(ApiKey::ApiVersions, 3, 1, &request).unwrap();
    let mut raw = frame.slice(4..).to_vec();
    raw[3] = 9; // claim v9
    h.broker.handle_request(h.time(), 1, Bytes::from(raw));
    h.drive();
    let frame = h.inbox.get_mut(&1).unwrap().pop_front().unwrap();
    let (_, body) = decode_response(ApiKey::ApiVersions, 0, frame).unwrap();
    let ResponseKind::ApiVersions(r) = body else {
        panic!()
    };
    assert_eq!(r.error_code, ResponseError::UnsupportedVersion.code());
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn metadata_auto_creates_topics_unless_disabled() {
    let mut h = Harness::new(BrokerConfig {
        default_partitions: 3,
        ..BrokerConfig::default()
    });
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("auto")))
        ]));
    let ResponseKind::Metadata(r) =
        h.call(ApiKey::Metadata, 12, RequestKind::Metadata(request.clone()))
    else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 3);
    assert_eq!(h.disk.topics().len(), 1, "the topic is durable");

    let mut h = Harness::new(BrokerConfig {
        auto_create_topics: false,
        ..BrokerConfig::default()
    });
    let ResponseKind::Metadata(r) = h.call(ApiKey::Metadata, 12, RequestKind::Metadata(request))
    else {
        panic!()
    };
    assert_eq!(
        r.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let mut h = Harness::new(BrokerConfig {
        index_interval_bytes: 100,
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[]);
    for (i, ts) in [1000, 2000, 3000, 4000].into_iter().enumerate() {
        let values: Vec<Vec<u8>> = (0..3).map(|j| format!("v{i}{j}").into_bytes()).collect();
        let b = record_batch(
            values
                .iter()
                .enumerate()
                .map(|(j, v)| (None, &v[..], ts + j as i64 * 10)),
        );
        h.produce("t", 0, b);
    }
    assert_eq!(h.list_offset("t", 0, -2), (0, 0));
    assert_eq!(
        h.list_offset("t", 0, -1),
        (0, 12),
        "latest is the log end, not the last batch base + 1"
    );
    assert_eq!(
        h.list_offset("t", 0, 2015),
        (0, 5),
        "first record at or after the time"
    );
    assert_eq!(h.list_offset("t", 0, 0), (0, 0));
    assert_eq!(h.list_offset("t", 0, 9999), (0, -1));
}

#[test]
fn retention_deletes_old_segments_and_moves_earliest() {
    let config = BrokerConfig {
        retention_check_interval_ms: 1000,
        ..BrokerConfig::default()
    };
    let mut h = Harness::new(config);
    h.create_topic(
        "t",
        1,
        &[("segment.bytes", "200"), ("retention.bytes", "400")],
    );
    for _ in 0..10 {
        let now = h.now;
        h.produce("t", 0, batch(2, now));
    }
    let before = h.list_offset("t", 0, -2);
    h.advance(1000);
    let (_, earliest) = h.list_offset("t", 0, -2);
    assert_eq!(before, (0, 0));
    assert!(earliest > 0, "log start moved");
    let log = h.broker.log("t", 0).unwrap();
    assert!(
        log.size_bytes() >= 400 && log.size_bytes() < 400 + 200,
        "{}",
        log.size_bytes()
    );
    assert_eq!(
        h.fetch("t", 0, 0, 1 << 20).0,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(
        h.fetch("t", 0, earliest, 1 << 20).2.first(),
        Some(&earliest)
    );
}

#[test]
fn time_retention_uses_record_timestamps() {
    let mut h = retention_harness();
    produce_old_old_new(&mut h);
    h.advance(1000);
    assert_eq!(h.list_offset("t", 0, -2), (0, 2));
}

#[test]
fn log_append_time_topics_stamp_the_broker_wall_clock() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("message.timestamp.type", "LogAppendTime")]);
    h.wall_offset = 3_600_000; // The calendar, not the timers' clock.
    h.produce("t", 0, batch(2, 5));
    h.fetch_request(1, "t", 0, 0, 0, 1 << 20);
    let Some(ResponseKind::Fetch(r)) = h.reply(1) else {
        panic!()
    };
    let bytes = r.responses[0].partitions[0].records.clone().unwrap();
    let (view, _) = seedlog_core::batch::BatchView::split_first(&bytes).unwrap();
    assert!(view.crc_ok(), "CRC re-sealed after stamping");
    assert!(view.is_log_append_time());
    assert_eq!(view.max_timestamp(), h.time().wall);
}

#[test]
fn a_parked_fetch_waits_by_the_monotonic_clock_whatever_the_wall_clock_does() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.fetch_request(1, "t", 0, 0, 500, 1 << 20);
    h.wall_offset = 3_600_000;
    h.advance(100);
    assert!(
        h.reply(1).is_none(),
        "a wall clock stepped forward expires no wait"
    );
    h.wall_offset = -3_600_000;
    h.advance(450);
    assert!(
        h.reply(1).is_some(),
        "one stepped back holds no wait past its 500 ms"
    );
}

#[test]
fn crash_keeps_every_acknowledged_record_and_drops_the_torn_tail() {
    let mut h = Harness::new(BrokerConfig {
        index_interval_bytes: 64,
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[("segment.bytes", "300")]);
    for _ in 0..10 {
        assert_eq!(h.produce("t", 0, batch(3, 1000)).0, 0);
    }
    // Unacknowledged: appended but never synced.
    h.hold_syncs = true;
    h.produce_request(1, -1, "t", 0, batch(3, 1000));
    h.restart(true);
    assert_eq!(h.list_offset("t", 0, -1), (0, 30));
    let mut seen = Vec::new();
    let mut offset = 0;
    while offset < 30 {
        let (err, _, offsets) = h.fetch("t", 0, offset, 1 << 20);
        assert_eq!(err, 0);
        seen.extend(offsets.iter().copied().filter(|o| *o >= offset));
        offset = *offsets.last().unwrap() + 1;
    }
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
    assert_eq!(
        h.produce("t", 0, batch(1, 1000)),
        (0, 30),
        "appends carry on after the cut"
    );
}

#[test]
fn recovery_truncates_a_corrupt_tail_and_serves_no_corrupt_record() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    for _ in 0..4 {
        h.produce("t", 0, batch(2, 1000));
    }
    let tp = seedlog_core::storage::TopicPartition::new(&std::sync::Arc::from("t"), 0);
    let id = h.disk.segment_ids(&tp)[0].clone();
    let len = h.disk.segment(&id).unwrap().len();
    h.disk.segment_bytes_mut(&id).unwrap()[len - 5] ^= 0x40; // flip a bit in the last batch
    h.restart(false);
    assert_eq!(h.list_offset("t", 0, -1), (0, 6));
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).2, vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_bit_flip_in_a_sealed_segment_is_refused_at_read_time() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("segment.bytes", "200")]);
    for _ in 0..6 {
        h.produce("t", 0, batch(2, 1000));
    }
    h.flip(0, 70, 1);
    h.restart(false);
    let (err, _, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!(err, ResponseError::KafkaStorageError.code());
    assert!(offsets.is_empty());
}

#[test]
fn topic_config_survives_restart_and_invalid_config_is_refused() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 2, &[("retention.ms", "1234")]);
    h.restart(false);
    assert_eq!(h.broker.topic_names().collect::<Vec<_>>(), vec!["t"]);
    let topic = CreatableTopic::default()
        .with_name(topic_name("u"))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(s("retention.ms"))
            .with_value(Some(s("soon")))]);
    let ResponseKind::CreateTopics(r) = h.call(
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![topic])),
    ) else {
        panic!()
    };
    assert_eq!(r.topics[0].error_code, ResponseError::InvalidConfig.code());
    let topic = CreatableTopic::default()
        .with_name(topic_name("t"))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let ResponseKind::CreateTopics(r) = h.call(
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![topic])),
    ) else {
        panic!()
    };
    assert_eq!(
        r.topics[0].error_code,
        ResponseError::TopicAlreadyExists.code()
    );
}

/// Every advertised version of every API gets a decodable answer, not a closed connection:
/// response fields that an old version lacks must not be set.
#[test]
fn every_advertised_version_answers() {
    let mut h = Harness::new(BrokerConfig {
        groups: GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        },
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, batch(2, 1000));
    let ResponseKind::ApiVersions(versions) = h.call(
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(Default::default()),
    ) else {
        panic!()
    };
    for api in &versions.api_keys {
        let key = ApiKey::try_from(api.api_key).unwrap();
        // Versions below kafka-protocol's floors are encoded by hand in tests/legacy.rs.
        let versions = (api.min_version..=api.max_version)
            .filter(|v| !seedlog_core::legacy::is_legacy(key, *v));
        for version in versions {
            let request = match key {
                ApiKey::Produce => RequestKind::Produce(
                    ProduceRequest::default().with_acks(1).with_topic_data(vec![
                        TopicProduceData::default()
                            .with_name(topic_name("t"))
                            .with_partition_data(vec![PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch(1, 1000)))]),
                    ]),
                ),
                ApiKey::Fetch => RequestKind::Fetch(
                    FetchRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_max_bytes(1 << 20)
                        .with_topics(vec![FetchTopic::default()
                            .with_topic(topic_name("t"))
                            .with_partitions(vec![
                                FetchPartition::default().with_partition_max_bytes(1 << 20)
                            ])]),
                ),
                ApiKey::ListOffsets => RequestKind::ListOffsets(
                    ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![ListOffsetsTopic::default()
                            .with_name(topic_name("t"))
                            .with_partitions(vec![
                                ListOffsetsPartition::default().with_timestamp(-1)
                            ])]),
                ),
                ApiKey::Metadata => {
                    RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic_name("t"))),
                    ])))
                }
                ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
                ApiKey::CreateTopics => RequestKind::CreateTopics(
                    CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                        .with_name(topic_name(&format!("c{version}")))
                        .with_num_partitions(1)
                        .with_replication_factor(1)]),
                ),
                ApiKey::DeleteTopics if version < 6 => RequestKind::DeleteTopics(
                    delete_topics_request::DeleteTopicsRequest::default()
                        .with_topic_names(vec![topic_name(&format!("c{}", 7 - version))]),
                ),
                ApiKey::DeleteTopics => RequestKind::DeleteTopics(
                    delete_topics_request::DeleteTopicsRequest::default()
                        .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                            .with_name(Some(topic_name("nope")))]),
                ),
                ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(
                    describe_configs_request::DescribeConfigsRequest::default().with_resources(
                        vec![describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(s("t"))],
                    ),
                ),
                ApiKey::CreatePartitions => RequestKind::CreatePartitions(
                    create_partitions_request::CreatePartitionsRequest::default().with_topics(
                        vec![create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic_name("t"))
                            .with_count(2 + version as i32)],
                    ),
                ),
                ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
                    offset_for_leader_epoch_request::OffsetForLeaderEpochRequest::default()
                        .with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(topic_name("t"))
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                )
                                .with_leader_epoch(0),
                            ]),
                    ]),
                ),
                ApiKey::AlterPartitionReassignments => RequestKind::AlterPartitionReassignments(
                    alter_partition_reassignments_request::AlterPartitionReassignmentsRequest::default()
                        .with_topics(vec![
                            alter_partition_reassignments_request::ReassignableTopic::default()
                                .with_name(topic_name("t"))
                                .with_partitions(vec![
                                    alter_partition_reassignments_request::ReassignablePartition::default(),
                                ]),
                        ]),
                ),
                ApiKey::ListPartitionReassignments => RequestKind::ListPartitionReassignments(
                    Default::default(),
                ),
                ApiKey::FindCoordinator if version < 4 => RequestKind::FindCoordinator(
                    find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g")),
                ),
                ApiKey::FindCoordinator => RequestKind::FindCoordinator(
                    find_coordinator_request::FindCoordinatorRequest::default()
                        .with_coordinator_keys(vec![s("g"), s("h")]),
                ),
                ApiKey::JoinGroup => RequestKind::JoinGroup(
                    join_group_request::JoinGroupRequest::default()
                        .with_group_id(GroupId(s(&format!("g{version}"))))
                        .with_session_timeout_ms(10_000)
                        .with_rebalance_timeout_ms(10_000)
                        .with_protocol_type(s("consumer"))
                        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                            .with_name(s("range"))]),
                ),
                ApiKey::SyncGroup => RequestKind::SyncGroup(
                    sync_group_request::SyncGroupRequest::default()
                        .with_group_id(GroupId(s("g1")))
                        .with_member_id(s("nobody")),
                ),
                ApiKey::Heartbeat => RequestKind::Heartbeat(
                    heartbeat_request::HeartbeatRequest::default()
                        .with_group_id(GroupId(s("g1")))
                        .with_member_id(s("nobody")),
                ),
                ApiKey::LeaveGroup if version < 3 => RequestKind::LeaveGroup(
                    leave_group_request::LeaveGroupRequest::default()
                        .with_group_id(GroupId(s("g1")))
                        .with_member_id(s("nobody")),
                ),
                ApiKey::LeaveGroup => RequestKind::LeaveGroup(
                    leave_group_request::LeaveGroupRequest::default()
                        .with_group_id(GroupId(s("g1")))
                        .with_members(vec![leave_group_request::MemberIdentity::default()
                            .with_member_id(s("nobody"))]),
                ),
                ApiKey::OffsetCommit => RequestKind::OffsetCommit(
                    offset_commit_request::OffsetCommitRequest::default()
                        .with_group_id(GroupId(s("c")))
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(topic_name("t"))
                            .with_partitions(vec![
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_committed_offset(i64::from(version)),
                            ])]),
                ),
                ApiKey::OffsetFetch if version < 8 => RequestKind::OffsetFetch(
                    offset_fetch_request::OffsetFetchRequest::default()
                        .with_group_id(GroupId(s("c")))
                        .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(topic_name("t"))
                            .with_partition_indexes(vec![0])])),
                ),
                ApiKey::OffsetFetch => RequestKind::OffsetFetch(
                    offset_fetch_request::OffsetFetchRequest::default().with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(GroupId(s("c")))
                            .with_topics(None),
                    ]),
                ),
                ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
                ApiKey::DescribeGroups => RequestKind::DescribeGroups(
                    describe_groups_request::DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(s("g1")), GroupId(s("nope"))]),
                ),
                ApiKey::DeleteGroups => RequestKind::DeleteGroups(
                    delete_groups_request::DeleteGroupsRequest::default()
                        .with_groups_names(vec![GroupId(s("nope"))]),
                ),
                ApiKey::OffsetDelete => RequestKind::OffsetDelete(
                    offset_delete_request::OffsetDeleteRequest::default()
                        .with_group_id(GroupId(s("c"))),
                ),
                ApiKey::InitProducerId => RequestKind::InitProducerId(
                    init_producer_id_request::InitProducerIdRequest::default()
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ),
                ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(
                    add_partitions_to_txn_request::AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(TransactionalId(s("tx"))),
                ),
                ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(
                    add_offsets_to_txn_request::AddOffsetsToTxnRequest::default()
                        .with_transactional_id(TransactionalId(s("tx"))),
                ),
                ApiKey::EndTxn => RequestKind::EndTxn(
                    end_txn_request::EndTxnRequest::default()
                        .with_transactional_id(TransactionalId(s("tx"))),
                ),
                ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(
                    txn_offset_commit_request::TxnOffsetCommitRequest::default()
                        .with_transactional_id(TransactionalId(s("tx")))
                        .with_group_id(GroupId(s("g"))),
                ),
                ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
                    describe_transactions_request::DescribeTransactionsRequest::default()
                        .with_transactional_ids(vec![TransactionalId(s("tx"))]),
                ),
                ApiKey::ListTransactions => RequestKind::ListTransactions(Default::default()),
                ApiKey::AlterConfigs => RequestKind::AlterConfigs(
                    alter_configs_request::AlterConfigsRequest::default().with_resources(vec![
                        alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(s("t")),
                    ]),
                ),
                ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
                    incremental_alter_configs_request::IncrementalAlterConfigsRequest::default()
                        .with_resources(vec![
                            incremental_alter_configs_request::AlterConfigsResource::default()
                                .with_resource_type(2)
                                .with_resource_name(s("t")),
                        ]),
                ),
                ApiKey::SaslHandshake => RequestKind::SaslHandshake(
                    sasl_handshake_request::SaslHandshakeRequest::default().with_mechanism(s("PLAIN")),
                ),
                ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(Default::default()),
                ApiKey::DescribeAcls => RequestKind::DescribeAcls(Default::default()),
                ApiKey::CreateAcls => RequestKind::CreateAcls(Default::default()),
                ApiKey::DeleteAcls => RequestKind::DeleteAcls(Default::default()),
                ApiKey::DescribeUserScramCredentials => {
                    RequestKind::DescribeUserScramCredentials(Default::default())
                }
                ApiKey::AlterUserScramCredentials => {
                    RequestKind::AlterUserScramCredentials(Default::default())
                }
                other => panic!("advertised {other:?} without a case here"),
            };
            h.send(1, key, version, request);
            assert!(
                h.closed.is_empty(),
                "{key:?} v{version} closed the connection"
            );
            let reply = h.reply(1);
            assert!(reply.is_some(), "{key:?} v{version} got no reply");
        }
    }
}

#[test]
fn a_damaged_base_offset_outside_the_crc_is_caught_at_read_time() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("segment.bytes", "200")]);
    for _ in 0..6 {
        h.produce("t", 0, batch(2, 1000));
    }
    h.flip(0, 7, 4); // base offset of the first batch
    let (err, _, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!(err, ResponseError::KafkaStorageError.code());
    assert!(offsets.is_empty());
}

/// Found by the simulator (bit-flip, seeds 22 and 27): a flipped bit in a stored batch
/// length made the batch claim more bytes than the log held, and the fetch re-read the same
/// range forever inside one driver step.
#[test]
fn a_batch_length_past_the_log_end_is_refused_not_reread_forever() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    for _ in 0..3 {
        h.produce("t", 0, batch(2, 1000));
    }
    h.flip(0, 9, 0x40); // batch length of the first batch
    let (err, _, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!(err, ResponseError::KafkaStorageError.code());
    assert!(offsets.is_empty());
}

#[test]
fn a_torn_tail_with_zeroed_bytes_is_cut_and_appends_follow_on_cleanly() {
    let mut h = Harness::new(BrokerConfig {
        index_interval_bytes: 256,
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[]);
    for _ in 0..5 {
        h.produce("t", 0, batch(3, 1000));
    }
    h.hold_syncs = true;
    for _ in 0..5 {
        h.produce_request(1, -1, "t", 0, batch(3, 1000));
    }
    // Power loss: the unsynced tail survives whole but for a few zeroed bytes in its middle.
    let mut zeroed = false;
    h.disk.crash_with(|_, tail| {
        if tail.len() > 100 {
            // Inside the last record of the last batch: covered by its CRC.
            let end = tail.len();
            tail[end - 6..end - 2].fill(0);
            zeroed = true;
        }
        tail.len()
    });
    assert!(zeroed);
    h.restart(false);
    let (_, end) = h.list_offset("t", 0, -1);
    assert_eq!(end, 27, "the damaged last batch is cut");
    for _ in 0..20 {
        assert_eq!(h.produce("t", 0, batch(3, 1000)).0, 0);
    }
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < end + 60 {
        let (err, _, offsets) = h.fetch("t", 0, offset, 1 << 20);
        assert_eq!(err, 0, "fetch at {offset}");
        seen.extend(offsets.iter().copied().filter(|o| *o >= offset));
        offset = *seen.last().unwrap() + 1;
    }
    assert_eq!(seen, (0..end + 60).collect::<Vec<_>>());
}

/// Found by the simulator (torn-write seed 210): a segment sealed by a roll got its index
/// file before its last bytes were synced; a torn write then damaged those bytes without
/// changing the file's length, recovery trusted the index, and the damaged batch stayed in
/// the log for good. The index now waits for the sync.
#[test]
fn a_sealed_segment_is_indexed_only_once_its_bytes_are_durable() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("segment.bytes", "400")]);
    h.produce("t", 0, batch(3, 1000));
    h.hold_syncs = true;
    for _ in 0..6 {
        h.produce_request(1, -1, "t", 0, batch(3, 1000)); // rolls while unsynced
    }
    let tp = seedlog_core::storage::TopicPartition::new(&std::sync::Arc::from("t"), 0);
    let first = h.disk.segment_ids(&tp)[0].clone();
    assert!(h.disk.index(&first).is_none(), "no index before the sync");
    h.disk.crash_with(|id, tail| {
        let end = tail.len();
        if id.base_offset == 0 && end > 8 {
            tail[end - 6..end - 2].fill(0); // torn, same length
        }
        end
    });
    h.restart(false);
    let (_, end) = h.list_offset("t", 0, -1);
    let mut offset = 0;
    while offset < end {
        let (err, _, offsets) = h.fetch("t", 0, offset, 1 << 20);
        assert_eq!(err, 0, "fetch at {offset} of {end}");
        offset = offsets.last().map_or(end, |o| o + 1);
    }
    h.release_syncs();
}

/// InitProducerId on connection 1: (error, producer id, epoch).
fn init_producer_id(h: &mut Harness) -> (i16, i64, i16) {
    let ResponseKind::InitProducerId(r) = h.call(
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(
            init_producer_id_request::InitProducerIdRequest::default()
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_timeout_ms(60_000),
        ),
    ) else {
        panic!("not InitProducerId")
    };
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

fn idempotent(id: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("v{}", seq + i as i32).into_bytes())
        .collect();
    seedlog_core::wire::idempotent_batch(
        Some((id, epoch, seq)),
        values.iter().map(|v| (None, &v[..], 1000)),
    )
}

#[test]
fn an_idempotent_producer_writes_each_batch_once_and_is_told_of_gaps() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    let (error, id, epoch) = init_producer_id(&mut h);
    assert_eq!((error, epoch), (0, 0));
    let (error, other, _) = init_producer_id(&mut h);
    assert_eq!(error, 0);
    assert_ne!(id, other, "every producer gets its own id");

    assert_eq!(h.produce("t", 0, idempotent(id, 0, 0, 3)), (0, 0));
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 3, 2)), (0, 3));
    // A retry (the answer was lost) is answered with the first write's offset.
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 0, 3)), (0, 0));
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 3, 2)), (0, 3));
    assert_eq!(
        h.fetch("t", 0, 0, 1 << 20).2,
        vec![0, 1, 2, 3, 4],
        "written once"
    );
    let out_of_order = ResponseError::OutOfOrderSequenceNumber.code();
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 9, 1)).0, out_of_order);
    // A bumped epoch starts again at 0; the old epoch is fenced from then on.
    assert_eq!(h.produce("t", 0, idempotent(id, 1, 0, 1)), (0, 5));
    let fenced = ResponseError::InvalidProducerEpoch.code();
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 5, 1)).0, fenced);
    // Plain producers are not checked at all.
    assert_eq!(h.produce("t", 0, batch(1, 1000)), (0, 6));
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).1, 7);
}

#[test]
fn a_retry_of_an_unsynced_batch_waits_for_the_sync_like_the_first_try() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    let (_, id, _) = init_producer_id(&mut h);
    h.hold_syncs = true;
    h.produce_request(1, -1, "t", 0, idempotent(id, 0, 0, 2));
    h.produce_request(2, -1, "t", 0, idempotent(id, 0, 0, 2));
    assert!(
        h.reply(1).is_none() && h.reply(2).is_none(),
        "both wait for the sync"
    );
    h.release_syncs();
    for conn in [1, 2] {
        let Some(ResponseKind::Produce(r)) = h.reply(conn) else {
            panic!("no answer on {conn}")
        };
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 0));
    }
    assert_eq!(h.fetch("t", 0, 0, 1 << 20).2, vec![0, 1]);
}

#[test]
fn a_retry_waits_for_the_sync_of_its_first_write_not_the_one_in_flight() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    let (_, id, _) = init_producer_id(&mut h);
    h.hold_syncs = true;
    // A sync is under way for the first append; the idempotent batch comes after it.
    h.produce_request(1, -1, "t", 0, batch(1, 1000));
    assert_eq!(h.held.len(), 1);
    h.produce_request(2, 1, "t", 0, idempotent(id, 0, 0, 2));
    assert!(
        matches!(h.reply(2), Some(ResponseKind::Produce(_))),
        "acks=1 at once"
    );
    // Its retry, with acks=all, must wait for the sync that carries the batch.
    h.produce_request(3, -1, "t", 0, idempotent(id, 0, 0, 2));
    h.complete_a_held_sync();
    assert!(h.reply(1).is_some(), "the first write is durable");
    assert!(h.reply(3).is_none(), "the retry's batch is not durable yet");
    h.release_syncs();
    let Some(ResponseKind::Produce(r)) = h.reply(3) else {
        panic!("the retry is answered once its batch is durable")
    };
    let p = &r.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 1));
}

#[test]
fn producer_ids_are_never_handed_out_twice_across_restarts() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3 {
        for _ in 0..5 {
            let (error, id, _) = init_producer_id(&mut h);
            assert_eq!(error, 0);
            assert!(seen.insert(id), "id {id} handed out twice (round {round})");
        }
        h.restart(round % 2 == 0);
    }
}

#[test]
fn a_retry_after_a_restart_is_recognised_from_the_log() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    let (_, id, _) = init_producer_id(&mut h);
    for seq in 0..8 {
        assert_eq!(h.produce("t", 0, idempotent(id, 0, seq * 2, 2)).0, 0);
    }
    h.produce("t", 0, batch(3, 1000));
    h.restart(true);
    // The broker went down before its answer left: the producer sends the batch again.
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 14, 2)), (0, 14));
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 16, 2)), (0, 19));
    assert_eq!(
        h.produce("t", 0, idempotent(id, 0, 30, 1)).0,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
}

#[test]
fn a_restart_reads_back_only_the_log_after_the_producer_snapshot() {
    let config = BrokerConfig::default();
    let interval = config.retention_check_interval_ms;
    let mut h = Harness::new(config);
    // The records' timestamps are ancient: keep them through the retention check.
    h.create_topic("t", 1, &[("retention.ms", "-1")]);
    let (_, id, _) = init_producer_id(&mut h);
    // Enough batches that the sparse index (an entry per 4 KiB) can place a read.
    for seq in 0..40 {
        assert_eq!(h.produce("t", 0, idempotent(id, 0, seq * 50, 50)).0, 0);
    }
    h.advance(interval); // the retention check snapshots the producer table
    for seq in 40..42 {
        assert_eq!(h.produce("t", 0, idempotent(id, 0, seq * 50, 50)).0, 0);
    }
    let size = h.broker.log("t", 0).unwrap().size_bytes();
    h.reads.clear();
    h.restart(true);
    let read: usize = h.reads.iter().map(|r| r.1).sum();
    assert!(
        read > 0 && (read as u64) < size / 2,
        "only the log after the snapshot is read back: {read} of {size} bytes"
    );
    // Retries from before and after the snapshot are both recognised.
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 1950, 50)), (0, 1950));
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 2050, 50)), (0, 2050));
    assert_eq!(h.produce("t", 0, idempotent(id, 0, 2100, 50)), (0, 2100));
}

#[test]
fn a_request_for_too_many_partitions_is_refused_before_any_is_placed() {
    // Found by the fuzzer: CreateTopics with 32770 partitions tied the broker up, and
    // 2^31 - 1 would have exhausted its memory.
    let mut h = Harness::new(BrokerConfig::default());
    let topic = |name: &str, n: i32| {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(n)
            .with_replication_factor(1)
    };
    for topics in [
        vec![topic("huge", i32::MAX)],
        vec![topic("a", 6_000), topic("b", 6_000)],
    ] {
        let request = CreateTopicsRequest::default().with_topics(topics);
        let ResponseKind::CreateTopics(r) =
            h.call(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(request))
        else {
            panic!()
        };
        for t in &r.topics {
            assert_eq!(t.error_code, ResponseError::PolicyViolation.code(), "{t:?}");
        }
    }
    h.create_topic("t", 1, &[]);
    let request = CreatePartitionsRequest::default().with_topics(vec![
        create_partitions_request::CreatePartitionsTopic::default()
            .with_name(topic_name("t"))
            .with_count(i32::MAX),
    ]);
    let ResponseKind::CreatePartitions(r) = h.call(
        ApiKey::CreatePartitions,
        3,
        RequestKind::CreatePartitions(request),
    ) else {
        panic!()
    };
    assert_eq!(
        r.results[0].error_code,
        ResponseError::PolicyViolation.code()
    );
    assert_eq!(h.broker.topic_names().count(), 1, "nothing was created");
}
