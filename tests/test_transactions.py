"""Transactions with real clients: confluent-kafka (librdkafka) transactional producers
that commit and abort across partitions and send consumer offsets in the transaction,
read back by read_committed and read_uncommitted consumers."""

import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import create, wait_for


def consume_all(brokers, topic, partitions, isolation, expect, timeout=30):
    """Values of `topic`'s partitions from the start, read with `isolation`, until `expect`
    are read (and a little longer, so a record that should not be there shows up)."""
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "check-" + isolation,
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values = []
    deadline = time.time() + timeout
    settle = None
    while time.time() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            values.append(msg.value())
        if len(values) >= expect and settle is None:
            settle = time.time() + 1.5
        if settle is not None and time.time() > settle:
            break
    consumer.close()
    return sorted(values)


def transactional_producer(brokers, txn_id):
    producer = Producer({
        "bootstrap.servers": brokers,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 30000,
    })
    producer.init_transactions(30)
    return producer


def test_committed_and_aborted_transactions_with_read_committed(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create(admin, "txn", 3)
    producer = transactional_producer(broker.bootstrap, "app-1")

    producer.begin_transaction()
    for i in range(30):
        producer.produce("txn", value=b"committed-%02d" % i, partition=i % 3)
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(30):
        producer.produce("txn", value=b"aborted-%02d" % i, partition=i % 3)
    producer.flush(30)
    producer.abort_transaction(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce("txn", value=b"after-%d" % i, partition=i)
    producer.commit_transaction(30)

    committed = sorted([b"committed-%02d" % i for i in range(30)] + [b"after-%d" % i for i in range(3)])
    assert consume_all(broker.bootstrap, "txn", 3, "read_committed", len(committed)) == committed
    everything = consume_all(broker.bootstrap, "txn", 3, "read_uncommitted", 63)
    assert len(everything) == 63, "read_uncommitted sees the aborted records too"
    assert everything == sorted(committed + [b"aborted-%02d" % i for i in range(30)])


def test_an_open_transaction_holds_read_committed_back(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create(admin, "held", 1)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce("held", value=b"before", partition=0)
    plain.flush(10)
    producer = transactional_producer(broker.bootstrap, "app-open")
    producer.begin_transaction()
    producer.produce("held", value=b"inside", partition=0)
    producer.flush(10)
    plain.produce("held", value=b"beside", partition=0)
    plain.flush(10)
    # Stuck behind the open transaction: only what precedes it is readable.
    assert consume_all(broker.bootstrap, "held", 1, "read_committed", 1, timeout=5) == [b"before"]
    producer.commit_transaction(30)
    assert consume_all(broker.bootstrap, "held", 1, "read_committed", 3) == [b"before", b"beside", b"inside"]


def test_consume_transform_produce_with_offsets_in_the_transaction(broker):
    """The exactly-once loop: read from `src`, write to `dst` and commit the group's
    offsets in one transaction; an aborted round leaves neither output nor offsets."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create(admin, "src", 1)
    create(admin, "dst", 1)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(20):
        plain.produce("src", value=b"in-%02d" % i, partition=0)
    plain.flush(10)

    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": "eos",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.assign([TopicPartition("src", 0, 0)])
    producer = transactional_producer(broker.bootstrap, "eos-1")

    def round_trip(count, commit):
        producer.begin_transaction()
        got = 0
        deadline = time.time() + 20
        while got < count and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            producer.produce("dst", value=msg.value().replace(b"in", b"out"), partition=0)
            got += 1
        assert got == count
        position = consumer.position([TopicPartition("src", 0)])
        producer.send_offsets_to_transaction(position, consumer.consumer_group_metadata(), 30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        return position[0].offset

    assert round_trip(10, commit=True) == 10
    round_trip(5, commit=False)
    committed = consumer.committed([TopicPartition("src", 0)], timeout=10)[0].offset
    assert committed == 10, "the aborted round's offsets were dropped"
    consumer.close()

    out = consume_all(broker.bootstrap, "dst", 1, "read_committed", 10)
    assert out == [b"out-%02d" % i for i in range(10)]


def test_a_second_producer_with_the_same_id_fences_the_first(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create(admin, "fence", 1)
    first = transactional_producer(broker.bootstrap, "fenced-id")
    first.begin_transaction()
    first.produce("fence", value=b"zombie", partition=0)
    first.flush(10)
    second = transactional_producer(broker.bootstrap, "fenced-id")
    second.begin_transaction()
    second.produce("fence", value=b"successor", partition=0)
    second.commit_transaction(30)
    try:
        first.commit_transaction(10)
        fenced = False
    except KafkaException as e:
        fenced = e.args[0].fatal() or not e.args[0].retriable()
    assert fenced, "the zombie cannot commit"
    assert consume_all(broker.bootstrap, "fence", 1, "read_committed", 1) == [b"successor"]


def test_seedlog_transactions_lists_and_describes(broker):
    import subprocess

    from conftest import seedlog_binary

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create(admin, "cli", 2)
    producer = transactional_producer(broker.bootstrap, "cli-app")
    producer.begin_transaction()
    producer.produce("cli", value=b"x", partition=1)
    producer.flush(10)

    def seedlog(*args):
        out = subprocess.run([seedlog_binary(), "transactions", *args,
                              "--bootstrap-server", broker.bootstrap],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = seedlog("list")
    assert "cli-app" in listed and "Ongoing" in listed, listed
    described = seedlog("describe", "cli-app")
    assert "Ongoing" in described and "cli partitions 1" in described, described
    producer.commit_transaction(30)
    # EndTxn is answered once PrepareCommit is durable; the markers are written after it
    # (as in Kafka), so CompleteCommit follows a moment later.
    wait_for("the commit completed", lambda: "CompleteCommit" in seedlog("describe", "cli-app"))
