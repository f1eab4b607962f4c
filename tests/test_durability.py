"""Crash safety and graceful shutdown of a real broker process."""

import random
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import read_to_end


def consume_everything(bootstrap, topic, partitions):
    return {(p, o): v for p, o, v in read_to_end(bootstrap, topic, partitions)}


def test_sigkill_loses_no_acknowledged_record(broker):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic("durable", 2, 1, config={"segment.bytes": "65536"})])["durable"].result(10)
    acked = {}
    rng = random.Random(7)
    for round_ in range(4):
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                             "linger.ms": 1, "message.timeout.ms": 2000, "retries": 0})

        def on_delivery(err, msg):
            if err is None:
                acked[(msg.partition(), msg.offset())] = msg.value()

        stop = threading.Event()

        def pump():
            i = 0
            while not stop.is_set():
                try:
                    producer.produce("durable", value=f"r{round_}-{i}".encode(), partition=i % 2,
                                     on_delivery=on_delivery)
                except BufferError:
                    pass
                producer.poll(0)
                i += 1

        t = threading.Thread(target=pump)
        t.start()
        time.sleep(0.3 + rng.random() * 0.5)
        broker.kill()  # mid-stream, with writes in flight
        stop.set()
        t.join()
        producer.flush(3)
        broker.start()
    assert len(acked) > 1000, f"only {len(acked)} records acknowledged"
    seen = consume_everything(broker.bootstrap, "durable", 2)
    missing = {k: v for k, v in acked.items() if seen.get(k) != v}
    assert not missing, f"{len(missing)} acknowledged records lost or moved, e.g. {list(missing.items())[:3]}"
    for p in range(2):
        offsets = sorted(o for (q, o) in seen if q == p)
        assert offsets == list(range(len(offsets))), "offsets contiguous after recovery"


def test_sigterm_flushes_and_exits_zero(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "1"})
    for i in range(500):
        producer.produce("graceful", value=b"g%d" % i)
    producer.flush(10)
    assert broker.stop() == 0, broker.log()
    broker.start()
    seen = consume_everything(broker.bootstrap, "graceful", 1)
    assert len(seen) == 500
