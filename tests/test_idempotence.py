"""Idempotent producers with real clients: kafka-python 3.x and confluent-kafka at the
settings users run them with (idempotence on), alone and through a partition leader's
kill -9 on a three-broker cluster. What a consumer reads afterwards holds every record
exactly once, in the order it was produced."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import bootstrap, cluster_metadata, create, wait_for
from test_cluster import partition_leader


def read_values(brokers, topic, count, partition=0, timeout=60):
    """The values of partition `partition` of `topic` from offset 0, until `count` are read."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "check", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    values = []
    deadline = time.time() + timeout
    while time.time() < deadline and len(values) < count:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value())
    # A little longer: a duplicate would come after the records counted.
    end = time.time() + 1
    while time.time() < end:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            values.append(msg.value())
    consumer.close()
    return values


def numbered(n):
    return [b"m%06d" % i for i in range(n)]


def test_kafka_python_default_producer_is_idempotent_and_writes_once(broker):
    """kafka-python 3.x turns idempotence on for acks=all by default and refuses a broker
    without InitProducerId; against seedlog it produces, and nothing is doubled."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    assert producer.config["enable_idempotence"], "the default producer is idempotent"
    futures = [producer.send("kp", value=v, partition=0) for v in numbered(300)]
    producer.flush(30)
    offsets = [f.get(timeout=30).offset for f in futures]
    assert offsets == list(range(300))
    producer.close()
    assert read_values(broker.bootstrap, "kp", 300) == numbered(300)


def test_confluent_idempotent_producer_defaults(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    failed = []
    for v in numbered(2000):
        producer.produce("cp", value=v, partition=0,
                         on_delivery=lambda err, msg: err is not None and failed.append(err))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failed, failed[:5]
    assert read_values(broker.bootstrap, "cp", 2000) == numbered(2000)


def test_idempotent_producer_through_leader_kills_has_no_duplicate_and_no_gap(cluster):
    """librdkafka retries what the killed leader never answered; the successor knows those
    batches from the replicated log and answers them instead of writing them twice."""
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    wait_for("a controller", lambda: cluster_metadata(admin))
    create(admin, "exactly", 1, replication=3)
    producer = Producer({
        "bootstrap.servers": bootstrap(cluster),
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": 60000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    failed, sent = [], 0

    def send(n):
        nonlocal sent
        for _ in range(n):
            producer.produce("exactly", value=b"m%06d" % sent, partition=0,
                             on_delivery=lambda err, msg: err is not None and failed.append(err))
            sent += 1
            producer.poll(0)
            time.sleep(0.0005)

    for _ in range(3):
        send(1000)
        leader = wait_for("a partition leader", lambda: partition_leader(admin, "exactly"), timeout=30)
        cluster[leader].kill()
        successor = lambda: (lambda l: l if l not in (None, leader) else None)(partition_leader(admin, "exactly"))
        wait_for("a new partition leader", successor, timeout=30)
        send(1000)
        cluster[leader].start()
        time.sleep(1)
    assert producer.flush(90) == 0
    assert not failed, failed[:5]
    values = read_values(bootstrap(cluster), "exactly", sent)
    dupes = len(values) - len(set(values))
    assert dupes == 0, f"{dupes} duplicates"
    assert values == numbered(sent), "every record once, in order"
