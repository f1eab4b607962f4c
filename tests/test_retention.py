"""Retention by size and time on a real broker, seen through ListOffsets(earliest)."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def watermarks(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()


def fill(bootstrap, topic, n, acks="all"):
    p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0, "batch.num.messages": 1})
    for i in range(n):
        p.produce(topic, value=b"x" * 900 + b"%05d" % i)
        p.poll(0)
    assert p.flush(30) == 0


def test_size_retention_deletes_whole_old_segments(broker_factory):
    broker = broker_factory("--retention-check-interval-ms", "200")
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic("sized", 1, 1, config={
        "segment.bytes": "20000", "retention.bytes": "50000"})])["sized"].result(10)
    fill(broker.bootstrap, "sized", 300)
    deadline = time.time() + 10
    while time.time() < deadline and watermarks(broker.bootstrap, "sized")[0] == 0:
        time.sleep(0.2)
    low, high = watermarks(broker.bootstrap, "sized")
    assert high == 300
    assert low > 0, "log start moved"
    # Whole segments go: at least retention.bytes stay, at most one segment more.
    kept_bytes = (high - low) * 1000
    assert 50_000 <= kept_bytes <= 50_000 + 2 * 20_000, (low, high)
    # Reading from the new start works; below it is out of range (auto.offset.reset=error).
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "r", "auto.offset.reset": "error",
                  "enable.auto.commit": False})
    c.assign([TopicPartition("sized", 0, low)])
    msg = c.poll(10)
    assert msg is not None and msg.error() is None and msg.offset() == low
    c.close()


def test_time_retention_and_broker_defaults_from_the_environment(workdir, monkeypatch):
    from conftest import Broker

    monkeypatch.setenv("SEEDLOG_LOG_RETENTION_MS", "1000")
    monkeypatch.setenv("SEEDLOG_LOG_SEGMENT_BYTES", "4096")
    monkeypatch.setenv("SEEDLOG_RETENTION_CHECK_INTERVAL_MS", "200")
    broker = Broker(workdir / "env").start()
    try:
        fill(broker.bootstrap, "aging", 20, acks="1")
        # acks=1 answers before the fsync; the high watermark follows when it completes.
        deadline = time.time() + 5
        while time.time() < deadline and watermarks(broker.bootstrap, "aging")[1] < 20:
            time.sleep(0.05)
        low, high = watermarks(broker.bootstrap, "aging")
        assert high == 20 and low < 20
        deadline = time.time() + 15
        while time.time() < deadline and watermarks(broker.bootstrap, "aging")[0] < 20:
            time.sleep(0.3)
        assert watermarks(broker.bootstrap, "aging") == (20, 20), "everything older than 1 s is gone"
        fill(broker.bootstrap, "aging", 1, acks="0")
        deadline = time.time() + 5
        while time.time() < deadline and watermarks(broker.bootstrap, "aging")[1] < 21:
            time.sleep(0.1)
        assert watermarks(broker.bootstrap, "aging")[1] == 21, "acks=0 still lands"
    finally:
        broker.kill()
