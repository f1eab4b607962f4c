"""`seedlog dev-cluster`: its brokers never outlive it."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import seedlog_binary, wait_for


def ports_free(base):
    for port in [base + i for i in range(3)] + [base + 100 + i for i in range(3)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def serving(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def dead(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # Gone, or a zombie nobody reaped yet.


def test_brokers_stop_when_dev_cluster_is_killed(workdir):
    base = next(p for p in range(21000, 29000, 211) if ports_free(p))
    log = open(workdir / "seedlog-dev-cluster.log", "ab")
    proc = subprocess.Popen(
        [seedlog_binary(), "dev-cluster", "--dir", str(workdir / "dev"), "--base-port", str(base)],
        stdout=log,
        stderr=log,
    )
    brokers = []
    try:
        wait_for("three brokers serving", lambda: all(serving(base + i) for i in range(3)), 30)
        brokers = children(proc.pid)
        assert len(brokers) == 3, brokers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for("every broker to stop", lambda: all(dead(b) for b in brokers), 30)
        assert not any(serving(base + i) for i in range(3))
    finally:
        if proc.poll() is None:
            proc.kill()
        for b in brokers:
            if not dead(b):
                os.kill(b, signal.SIGKILL)


def test_a_secure_dev_cluster_serves_sasl_ssl_with_its_admin_user(workdir):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    base = next(p for p in range(21000, 29000, 211)
                if ports_free(p) and ports_free(p + 200))
    log = open(workdir / "seedlog-dev-cluster.log", "ab")
    dev = workdir / "dev"
    proc = subprocess.Popen(
        [seedlog_binary(), "dev-cluster", "--secure", "--dir", str(dev), "--base-port", str(base)],
        stdout=log, stderr=log,
    )
    try:
        properties = dev / "client.properties"
        wait_for("client.properties", properties.exists, 60)
        config = dict(line.split("=", 1) for line in properties.read_text().splitlines() if line)
        assert config["security.protocol"] == "SASL_SSL"
        admin = AdminClient(config)
        admin.create_topics([NewTopic("secured", 1, 3)])["secured"].result(30)
        producer = Producer({**config, "acks": "all"})
        producer.produce("secured", b"over TLS")
        assert producer.flush(30) == 0
        consumer = Consumer({**config, "group.id": "g", "auto.offset.reset": "earliest"})
        consumer.subscribe(["secured"])
        msg = wait_for("the record", lambda: (lambda m: m if m and not m.error() else None)(consumer.poll(1)), 30)
        assert msg.value() == b"over TLS"
        consumer.close()
        # The same user with a wrong password gets nothing.
        failures = []
        bad = Producer({**config, "sasl.password": "wrong", "error_cb": failures.append})
        wait_for("refusal", lambda: bad.poll(0.2) is None or failures, 15)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
