"""One consumer-group member as its own process, so a test can SIGKILL it.

Usage: group_member.py BOOTSTRAP GROUP TOPIC OUT [STRATEGY]

Appends to OUT one line per record it has processed, `record <partition> <offset>`, and one
per assignment it is given, `assigned <p,p,...>`, flushed at once. An offset is stored for
the next commit only after its line is written: commits never run ahead of the processing,
so a killed member leaves no gap, only records to read again.
"""

import signal
import sys

from confluent_kafka import Consumer


def main(bootstrap, group, topic, out, strategy="range,roundrobin"):
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    log = open(out, "a", buffering=1)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 200,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": strategy,
    })

    def on_assign(_consumer, partitions):
        # The client applies the assignment itself after this callback.
        log.write("assigned " + ",".join(str(p.partition) for p in partitions) + "\n")

    consumer.subscribe([topic], on_assign=on_assign)
    while running:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            log.write(f"error {msg.error()}\n")  # for the test's kept logs when it fails
            continue
        log.write(f"record {msg.partition()} {msg.offset()}\n")
        consumer.store_offsets(msg)
    consumer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
