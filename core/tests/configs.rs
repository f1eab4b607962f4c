//! Topic configs: every key Kafka defines is accepted at creation and changed at run time
//! with IncrementalAlterConfigs and AlterConfigs; malformed values and unknown keys get
//! INVALID_CONFIG.

use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use seedlog_core::config::{BrokerConfig, TOPIC_CONFIGS};

mod support;
use support::*;

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// IncrementalAlterConfigs on topic `name`: (error code, message).
fn alter(h: &mut Harness, name: &str, ops: &[(&str, i8, &str)]) -> (i16, Option<String>) {
    alter_resource(h, TOPIC, name, ops)
}

/// IncrementalAlterConfigs on one resource of type `kind`: (error code, message).
fn alter_resource(
    h: &mut Harness,
    kind: i8,
    name: &str,
    ops: &[(&str, i8, &str)],
) -> (i16, Option<String>) {
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let configs = ops
        .iter()
        .map(|(key, op, value)| {
            AlterableConfig::default()
                .with_name(s(key))
                .with_config_operation(*op)
                .with_value(Some(s(value)))
        })
        .collect();
    let resource = AlterConfigsResource::default()
        .with_resource_type(kind)
        .with_resource_name(s(name))
        .with_configs(configs);
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
    let r = h.call(
        ApiKey::IncrementalAlterConfigs,
        1,
        RequestKind::IncrementalAlterConfigs(request),
    );
    let ResponseKind::IncrementalAlterConfigs(r) = r else {
        panic!("{r:?}")
    };
    let r = &r.responses[0];
    (
        r.error_code,
        r.error_message.as_ref().map(|m| m.to_string()),
    )
}

/// DescribeConfigs of topic `name`: every key, or only `key`.
fn describe_configs(
    h: &mut Harness,
    name: &str,
    key: Option<&str>,
) -> Vec<describe_configs_response::DescribeConfigsResourceResult> {
    describe_resource(h, TOPIC, name, key)
}

/// DescribeConfigs of one resource of type `kind`: every key, or only `key`.
fn describe_resource(
    h: &mut Harness,
    kind: i8,
    name: &str,
    key: Option<&str>,
) -> Vec<describe_configs_response::DescribeConfigsResourceResult> {
    describe_result(h, kind, name, key).configs
}

/// The whole answer of DescribeConfigs for one resource, its error code included.
fn describe_result(
    h: &mut Harness,
    kind: i8,
    name: &str,
    key: Option<&str>,
) -> describe_configs_response::DescribeConfigsResult {
    use describe_configs_request::DescribeConfigsResource;
    let resource = DescribeConfigsResource::default()
        .with_resource_type(kind)
        .with_resource_name(s(name))
        .with_configuration_keys(key.map(|k| vec![s(k)]));
    let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
    let r = h.call(
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(request),
    );
    let ResponseKind::DescribeConfigs(mut r) = r else {
        panic!("{r:?}")
    };
    r.results.remove(0)
}

/// The value DescribeConfigs reports for `key` of topic `name`, and whether it is set
/// on the topic (source 1) rather than a default.
fn describe(h: &mut Harness, name: &str, key: &str) -> (String, bool) {
    let entry = describe_configs(h, name, Some(key)).remove(0);
    let value = entry.value.map(|v| v.to_string()).unwrap_or_default();
    (value, entry.config_source == 1)
}

#[test]
fn every_kafka_topic_config_is_accepted_at_creation_and_reported() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic(
        "t",
        1,
        &[("compression.type", "lz4"), ("delete.retention.ms", "900")],
    );
    assert_eq!(
        describe(&mut h, "t", "compression.type"),
        ("lz4".into(), true)
    );
    assert_eq!(
        describe(&mut h, "t", "delete.retention.ms"),
        ("900".into(), true)
    );
    assert_eq!(
        describe(&mut h, "t", "unclean.leader.election.enable"),
        ("false".into(), false)
    );
    // DescribeConfigs lists every key, none of them read-only.
    let all = describe_configs(&mut h, "t", None);
    assert_eq!(all.len(), TOPIC_CONFIGS.len());
    assert!(all.iter().all(|c| !c.read_only));
}

#[test]
fn incremental_alter_configs_sets_deletes_appends_and_subtracts() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    assert_eq!(
        alter(
            &mut h,
            "t",
            &[
                ("retention.ms", SET, "60000"),
                ("compression.type", SET, "zstd")
            ]
        ),
        (0, None)
    );
    assert_eq!(
        describe(&mut h, "t", "retention.ms"),
        ("60000".into(), true)
    );
    assert_eq!(
        describe(&mut h, "t", "compression.type"),
        ("zstd".into(), true)
    );
    assert_eq!(
        alter(&mut h, "t", &[("cleanup.policy", APPEND, "compact")]).0,
        0
    );
    assert_eq!(describe(&mut h, "t", "cleanup.policy").0, "compact,delete");
    assert_eq!(
        alter(&mut h, "t", &[("cleanup.policy", SUBTRACT, "delete")]).0,
        0
    );
    assert_eq!(describe(&mut h, "t", "cleanup.policy").0, "compact");
    // The other overrides stay as they were; DELETE returns a key to its default.
    assert_eq!(
        describe(&mut h, "t", "retention.ms"),
        ("60000".into(), true)
    );
    assert_eq!(alter(&mut h, "t", &[("retention.ms", DELETE, "")]).0, 0);
    assert_eq!(
        describe(&mut h, "t", "retention.ms"),
        ("604800000".into(), false)
    );
}

#[test]
fn bad_changes_get_invalid_config_and_change_nothing() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("retention.ms", "1000")]);
    let invalid = ResponseError::InvalidConfig.code();
    for ops in [
        &[("retention.ms", SET, "soon")][..],
        &[("no.such.config", SET, "1")],
        &[("compression.type", SET, "brotli")],
        &[("min.cleanable.dirty.ratio", SET, "1.5")],
        &[("retention.ms", APPEND, "5")],
        &[("retention.ms", SET, "5"), ("segment.bytes", SET, "1")],
    ] {
        assert_eq!(alter(&mut h, "t", ops).0, invalid, "{ops:?}");
    }
    assert_eq!(describe(&mut h, "t", "retention.ms"), ("1000".into(), true));
    assert_eq!(
        alter(&mut h, "nope", &[("retention.ms", SET, "5")]).0,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[test]
fn a_compacted_topic_keeps_what_retention_would_delete() {
    let mut h = retention_harness();
    assert_eq!(
        alter(&mut h, "t", &[("cleanup.policy", SET, "compact")]).0,
        0
    );
    produce_old_old_new(&mut h);
    h.advance(1000);
    assert_eq!(
        h.list_offset("t", 0, -2),
        (0, 0),
        "compaction is not built: all kept"
    );
    // Back to delete: retention applies again.
    assert_eq!(
        alter(&mut h, "t", &[("cleanup.policy", SET, "delete")]).0,
        0
    );
    h.advance(1000);
    assert_eq!(h.list_offset("t", 0, -2), (0, 2));
}

#[test]
fn alter_configs_replaces_a_topics_overrides_whole() {
    use alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[("retention.ms", "1000")]);
    let resource = AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(s("t"))
        .with_configs(vec![AlterableConfig::default()
            .with_name(s("segment.ms"))
            .with_value(Some(s("5000")))]);
    let request = AlterConfigsRequest::default().with_resources(vec![resource]);
    let ResponseKind::AlterConfigs(r) =
        h.call(ApiKey::AlterConfigs, 2, RequestKind::AlterConfigs(request))
    else {
        panic!()
    };
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(describe(&mut h, "t", "segment.ms"), ("5000".into(), true));
    assert_eq!(
        describe(&mut h, "t", "retention.ms"),
        ("604800000".into(), false)
    );
}

/// (value, source) of `key` of a resource.
fn value_and_source(h: &mut Harness, kind: i8, name: &str, key: &str) -> (String, i8) {
    let entry = describe_resource(h, kind, name, Some(key)).remove(0);
    let value = entry.value.map(|v| v.to_string()).unwrap_or_default();
    (value, entry.config_source)
}

/// Dynamic broker configs, as Kafka's: every broker's (a BROKER resource with an empty name)
/// under one broker's own, a topic's own override over both; metadata records, so a restart
/// keeps them; the broker configs Kafka does not change at run time are refused.
#[test]
fn broker_configs_change_topic_defaults_for_every_broker_or_one() {
    const DYNAMIC_BROKER: i8 = 2;
    const DYNAMIC_DEFAULT_BROKER: i8 = 3;
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("plain", 1, &[]);
    h.create_topic("own", 1, &[("retention.ms", "5000")]);
    let every = [
        ("log.retention.ms", SET, "120000"),
        ("log.cleanup.policy", APPEND, "compact"),
    ];
    assert_eq!(alter_resource(&mut h, BROKER, "", &every), (0, None));
    assert_eq!(
        value_and_source(&mut h, TOPIC, "plain", "retention.ms"),
        ("120000".into(), DYNAMIC_DEFAULT_BROKER)
    );
    let (policy, _) = value_and_source(&mut h, TOPIC, "plain", "cleanup.policy");
    assert!(
        policy.contains("compact") && policy.contains("delete"),
        "{policy}"
    );
    assert_eq!(
        describe(&mut h, "own", "retention.ms"),
        ("5000".into(), true)
    );

    let one = [("log.retention.ms", SET, "90000")];
    assert_eq!(alter_resource(&mut h, BROKER, "1", &one), (0, None));
    assert_eq!(
        value_and_source(&mut h, TOPIC, "plain", "retention.ms"),
        ("90000".into(), DYNAMIC_BROKER)
    );
    assert_eq!(
        value_and_source(&mut h, BROKER, "1", "log.retention.ms"),
        ("90000".into(), DYNAMIC_BROKER)
    );
    assert_eq!(
        value_and_source(&mut h, BROKER, "", "log.retention.ms"),
        ("120000".into(), DYNAMIC_DEFAULT_BROKER)
    );

    let (code, message) = alter_resource(&mut h, BROKER, "", &[("num.partitions", SET, "7")]);
    assert_eq!(code, ResponseError::InvalidRequest.code());
    assert!(message.unwrap_or_default().contains("num.partitions"));
    let (code, _) = alter_resource(&mut h, BROKER, "7", &one);
    assert_eq!(code, ResponseError::InvalidRequest.code(), "no broker 7");
    let (code, message) = alter_resource(&mut h, BROKER, "", &[("log.roll.ms", SET, "soon")]);
    assert_eq!(code, ResponseError::InvalidConfig.code());
    assert!(message.unwrap_or_default().contains("log.roll.ms"));

    h.restart(false);
    assert_eq!(
        value_and_source(&mut h, TOPIC, "plain", "retention.ms"),
        ("90000".into(), DYNAMIC_BROKER)
    );
    let gone = [("log.retention.ms", DELETE, "")];
    assert_eq!(alter_resource(&mut h, BROKER, "1", &gone), (0, None));
    assert_eq!(
        value_and_source(&mut h, TOPIC, "plain", "retention.ms"),
        ("120000".into(), DYNAMIC_DEFAULT_BROKER),
        "back to every broker's"
    );
}

#[test]
fn a_broker_describes_its_own_configs_and_no_other_brokers() {
    let mut h = Harness::new(BrokerConfig::default());
    let own = BrokerConfig::default().broker_id;
    for (name, refused) in [
        (own.to_string(), false),
        ((own + 1).to_string(), true),
        ("x".into(), true),
    ] {
        let result = &describe_result(&mut h, BROKER, &name, None);
        let expected = if refused {
            ResponseError::InvalidRequest.code()
        } else {
            0
        };
        assert_eq!(result.error_code, expected, "broker {name}: {result:?}");
        assert_eq!(result.configs.is_empty(), refused, "broker {name}");
    }
}
