"""confluent-kafka (librdkafka, bundled in the wheel) against seedlog."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def topic_configs(a, name):
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    return a.describe_configs([res])[res].result(timeout=10)


def create(broker, name, partitions=1, config=None):
    client = admin(broker)  # must outlive the future
    client.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result(timeout=10)


def produce_all(broker, topic, records, **conf):
    """Produces (partition, key, value) records; returns {value: (partition, offset)}."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5, **conf})
    acked, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[msg.value()] = (msg.partition(), msg.offset())

    for partition, key, value in records:
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return acked


def read_partition(broker, topic, partition, start, count):
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, start)])
    out, deadline = [], time.time() + 30
    while len(out) < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        out.append(msg)
    consumer.close()
    return out


def test_acks_all_records_read_back_by_partition_and_offset(broker):
    create(broker, "orders", partitions=3)
    records = [(i % 3, f"k{i}".encode(), f"order-{i}".encode()) for i in range(3000)]
    acked = produce_all(broker, "orders", records)
    assert len(acked) == 3000
    for partition in range(3):
        msgs = read_partition(broker, "orders", partition, 0, 1000)
        assert [m.offset() for m in msgs] == list(range(1000))
        for m in msgs:
            assert acked[m.value()] == (partition, m.offset())
    # From the middle of the log, by offset.
    msgs = read_partition(broker, "orders", 1, 500, 3)
    assert [m.offset() for m in msgs] == [500, 501, 502]


def test_watermarks_and_offsets_for_times(broker):
    create(broker, "times")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    base = 1_700_000_000_000
    for i in range(10):
        producer.produce("times", value=b"v%d" % i, timestamp=base + i * 1000)
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t"})
    assert consumer.get_watermark_offsets(TopicPartition("times", 0), timeout=10) == (0, 10)
    found = consumer.offsets_for_times([TopicPartition("times", 0, base + 4500)], timeout=10)
    assert found[0].offset == 5
    consumer.close()


def test_admin_create_describe_grow_and_delete(broker):
    create(broker, "cfg", partitions=2, config={"retention.ms": "3600000", "segment.bytes": "1048576"})
    a = admin(broker)
    configs = topic_configs(a, "cfg")
    assert configs["retention.ms"].value == "3600000"
    assert configs["segment.bytes"].value == "1048576"
    assert configs["retention.bytes"].value == "-1"

    a.create_partitions([NewPartitions("cfg", 4)])["cfg"].result(timeout=10)
    md = a.list_topics(timeout=10)
    assert len(md.topics["cfg"].partitions) == 4

    with pytest.raises(KafkaException) as err:
        a.create_topics([NewTopic("cfg", 1, 1)])["cfg"].result(timeout=10)
    assert "TOPIC_ALREADY_EXISTS" in str(err.value)

    a.delete_topics(["cfg"])["cfg"].result(timeout=10)
    assert "cfg" not in a.list_topics(timeout=10).topics


def test_replication_factor_beyond_one_broker_is_refused(broker):
    client = admin(broker)
    with pytest.raises(KafkaException) as err:
        client.create_topics([NewTopic("rf3", 1, 3)])["rf3"].result(timeout=10)
    assert "INVALID_REPLICATION_FACTOR" in str(err.value)


def test_oversize_batch_gets_message_too_large(broker):
    create(broker, "small", config={"max.message.bytes": "10000"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "message.max.bytes": 1_000_000})
    errors = []
    producer.produce("small", value=b"x" * 50_000, on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None and errors[0].name() == "MSG_SIZE_TOO_LARGE", errors


def test_log_append_time_topic(broker):
    create(broker, "lat", config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    producer.produce("lat", value=b"v", timestamp=1000)
    producer.flush(10)
    (msg,) = read_partition(broker, "lat", 0, 0, 1)
    kind, ts = msg.timestamp()
    assert kind == 2  # TIMESTAMP_LOG_APPEND_TIME
    assert ts >= before - 1000


def test_topic_configs_of_kafka_accepted_and_changed_at_run_time(broker):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    create(broker, "live", partitions=1, config={"compression.type": "lz4", "delete.retention.ms": "900"})
    a = admin(broker)
    configs = topic_configs(a, "live")
    assert configs["compression.type"].value == "lz4"
    assert configs["delete.retention.ms"].value == "900"

    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        "live",
        incremental_configs=[
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    a.incremental_alter_configs([change])[change].result(timeout=10)
    configs = topic_configs(a, "live")
    assert configs["cleanup.policy"].value == "compact"
    assert configs["retention.ms"].value == "60000"
    assert configs["compression.type"].value == "lz4", "other overrides stay"

    bad = ConfigResource(
        ConfigResource.Type.TOPIC,
        "live",
        incremental_configs=[
            ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as err:
        a.incremental_alter_configs([bad])[bad].result(timeout=10)
    assert "INVALID_CONFIG" in str(err.value) or "soon" in str(err.value)


def test_broker_configs_are_described_with_the_rack(broker_factory):
    b = broker_factory("--rack", "rack-7", "--num-partitions", "3")
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    client = admin(b)  # must outlive the future
    configs = client.describe_configs([res])[res].result(timeout=10)
    assert configs["broker.rack"].value == "rack-7"
    assert configs["node.id"].value == "1" and configs["num.partitions"].value == "3"
    assert configs["offsets.topic.num.partitions"].value == "8"
    # Read-only but for the topic defaults Kafka changes at run time.
    changeable = {n for n, c in configs.items() if not c.is_read_only}
    assert changeable == {"log.cleanup.policy", "log.message.timestamp.type", "log.retention.bytes",
                          "log.retention.ms", "log.roll.ms", "log.segment.bytes",
                          "message.max.bytes", "min.insync.replicas"}, changeable
    # No rack set: none reported, as Kafka reports none.
    plain = admin(broker_factory())
    assert "broker.rack" not in plain.describe_configs([res])[res].result(timeout=10)


def test_broker_configs_change_topic_defaults_at_run_time_and_outlive_a_restart(broker_factory):
    """confluent-kafka (librdkafka) names a broker; the cluster-wide scope (an empty name,
    which librdkafka and kafka-python refuse to send) is tested in core/tests/configs.rs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigSource

    SET, APPEND = AlterConfigOpType.SET, AlterConfigOpType.APPEND
    b = broker_factory()
    create(b, "plain")
    create(b, "own", config={"retention.ms": "5000"})
    a = admin(b)
    change = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[
        ConfigEntry("log.retention.ms", "120000", incremental_operation=SET),
        ConfigEntry("log.cleanup.policy", "compact", incremental_operation=APPEND),
    ])
    a.incremental_alter_configs([change])[change].result(timeout=10)
    plain = topic_configs(a, "plain")
    assert plain["retention.ms"].value == "120000"
    assert plain["retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert set(plain["cleanup.policy"].value.split(",")) == {"delete", "compact"}
    assert plain["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert topic_configs(a, "own")["retention.ms"].value == "5000", "a topic's override wins"
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    described = a.describe_configs([res])[res].result(timeout=10)
    assert described["log.retention.ms"].value == "120000"
    assert described["log.retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert not described["log.retention.ms"].is_read_only
    assert described["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value

    # A config Kafka does not change at run time, or a bad value: refused, naming the key.
    for entry in (ConfigEntry("num.partitions", "7", incremental_operation=SET),
                  ConfigEntry("log.retention.ms", "soon", incremental_operation=SET)):
        bad = ConfigResource(ConfigResource.Type.BROKER, "1", incremental_configs=[entry])
        with pytest.raises(KafkaException) as err:
            a.incremental_alter_configs([bad])[bad].result(timeout=10)
        assert entry.name in str(err.value), err.value

    # They live in the metadata log: a restart keeps them, and new topics take them.
    assert b.stop() == 0
    b.start()
    a = admin(b)
    assert topic_configs(a, "plain")["retention.ms"].value == "120000"
    create(b, "later")
    assert set(topic_configs(a, "later")["cleanup.policy"].value.split(",")) == {"delete", "compact"}


def test_kafka_python_creates_with_configs_and_alters_them(broker):
    from kafka.admin import ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient, NewTopic as KpTopic

    kp = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        kp.create_topics([KpTopic("kp", 1, 1, topic_configs={"compression.type": "lz4"})])
        kp.alter_configs([KpResource(ConfigResourceType.TOPIC, "kp", configs={"segment.ms": "5000"})])
        configs = topic_configs(admin(broker), "kp")
        assert configs["segment.ms"].value == "5000"
        # AlterConfigs replaces a topic's overrides whole; kafka-python sends the ones set
        # already (read back with DescribeConfigs) along with the change, so they stay.
        assert configs["compression.type"].value == "lz4"
    finally:
        kp.close()


def seedlog(*args):
    import subprocess
    from conftest import seedlog_binary
    return subprocess.run([seedlog_binary(), *args], capture_output=True, text=True, timeout=60)


def test_the_configs_cli_sets_every_brokers_defaults_and_a_topics_own(broker):
    """`seedlog configs` reaches the cluster-wide scope librdkafka cannot name; confluent-kafka
    sees what it set."""
    from confluent_kafka.admin import ConfigSource

    target = ["--bootstrap-server", broker.bootstrap]
    create(broker, "plain")
    a = admin(broker)
    done = seedlog("configs", "alter", "--broker-defaults", "--set", "log.retention.ms=90000", *target)
    assert done.returncode == 0, done.stderr
    assert "every broker: set log.retention.ms=90000" in done.stdout
    plain = topic_configs(a, "plain")["retention.ms"]
    assert (plain.value, plain.source) == ("90000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value)

    def row(described, key):
        return next((l.split() for l in described.stdout.splitlines() if l.split()[:1] == [key]), None)

    defaults = seedlog("configs", "describe", "--broker-defaults", *target)
    assert defaults.returncode == 0, defaults.stderr
    assert row(defaults, "log.retention.ms") == ["log.retention.ms", "90000", "DYNAMIC_DEFAULT_BROKER_CONFIG"]
    own = seedlog("configs", "describe", "--broker", "1", *target)
    assert own.returncode == 0, own.stderr
    assert row(own, "log.retention.ms")[1:] == ["90000", "DYNAMIC_DEFAULT_BROKER_CONFIG"], own.stdout
    assert row(own, "num.partitions")[2] == "STATIC_BROKER_CONFIG", own.stdout

    done = seedlog("configs", "alter", "--topic", "plain", "--set", "retention.ms=5000", *target)
    assert done.returncode == 0, done.stderr
    plain = topic_configs(a, "plain")["retention.ms"]
    assert (plain.value, plain.source) == ("5000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    described = seedlog("configs", "describe", "--topic", "plain", *target)
    assert row(described, "retention.ms")[1:] == ["5000", "DYNAMIC_TOPIC_CONFIG"], described.stdout

    # What Kafka does not change at run time is refused, naming the key; nothing changes.
    refused = seedlog("configs", "alter", "--broker-defaults", "--set", "num.partitions=7", *target)
    assert refused.returncode != 0 and "num.partitions" in refused.stderr, refused.stderr
    unknown = seedlog("configs", "describe", "--topic", "nope", *target)
    assert unknown.returncode != 0 and "topic nope" in unknown.stderr, unknown.stderr

    # Deleted, every broker's default falls back to the static one.
    done = seedlog("configs", "alter", "--broker-defaults", "--delete", "log.retention.ms", *target)
    assert done.returncode == 0, done.stderr
    create(broker, "fresh")
    fresh = topic_configs(a, "fresh")["retention.ms"]
    assert (fresh.value, fresh.source) == ("604800000", ConfigSource.DEFAULT_CONFIG.value)
