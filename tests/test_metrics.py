"""The admin listener (`--admin-listen`): Prometheus metrics that move under a real client's
load, a consumer group's lag as the group committed it, `/health`, and `/ready`, which holds
back until the broker knows its controller."""

import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer

from conftest import Broker, create, free_port, wait_for
from confluent_kafka.admin import AdminClient


def get(port, path):
    """(status, body) of GET `path` on the admin listener."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    """Every sample of /metrics: {'name{labels}': value}."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    assert text.rstrip().endswith("# EOF"), "OpenMetrics text ends with # EOF"
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_move_under_load_and_a_groups_lag_is_what_it_committed(workdir):
    admin_port = free_port()
    broker = Broker(workdir / "data", ["--admin-listen", f"127.0.0.1:{admin_port}"]).start()
    try:
        assert get(admin_port, "/health") == (200, "live\n")
        wait_for("ready", lambda: get(admin_port, "/ready")[0] == 200)
        before = scrape(admin_port)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        create(admin, "m", 2)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for i in range(20_000):
            producer.produce("m", value=b"x" * 100, partition=i % 2)
            if i % 5000 == 0:
                producer.poll(0)
        assert producer.flush(30) == 0
        consumer = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        consumer.subscribe(["m"])
        consumed = 0
        for _ in range(200):
            for message in consumer.consume(num_messages=500, timeout=1.0):
                if message.error() is None:
                    consumed += 1
            if consumed >= 5_000:
                break
        consumer.commit(asynchronous=False)
        consumer.close()
        assert consumed >= 5_000

        after = scrape(admin_port)
        produces = 'seedlog_requests_total{api="Produce"}'
        assert after[produces] > before.get(produces, 0)
        assert after['seedlog_request_duration_seconds_count{api="Produce"}'] > 0
        assert after['seedlog_request_duration_seconds_count{api="Fetch"}'] > 0
        assert after["seedlog_received_bytes_total"] - before["seedlog_received_bytes_total"] > 2_000_000
        assert after["seedlog_sent_bytes_total"] > 500_000
        assert after["seedlog_sync_duration_seconds_count"] > 0
        # Each append's way to consumers: on one replica every append waits for a sync,
        # so each stage saw every append, and the whole outlasts its sync.
        stage = lambda name, kind: after[f'seedlog_record_stage_seconds_{kind}{{stage="{name}"}}']
        appends = stage("appended_to_visible", "count")
        assert appends > 0
        assert stage("sync_wait", "count") == stage("sync", "count") == appends
        assert stage("appended_to_visible", "sum") >= stage("sync", "sum") > 0
        assert stage("queued", "count") >= after[produces]
        for p in (0, 1):
            labels = f'{{topic="m",partition="{p}"}}'
            assert after[f"seedlog_partition_log_end_offset{labels}"] == 10_000
            assert after[f"seedlog_partition_high_watermark{labels}"] == 10_000
            assert after[f"seedlog_partition_size_bytes{labels}"] > 1_000_000
            assert after[f"seedlog_partition_leader{labels}"] == 1
        # Lag is shown for each partition the group committed an offset of (as Kafka's
        # tools show it): the high watermark minus that offset.
        committed = {
            p: after.get(f'seedlog_consumer_group_committed_offset{{group="g",topic="m",partition="{p}"}}')
            for p in (0, 1)
        }
        assert sum(c for c in committed.values() if c is not None) == consumed, committed
        for p, offset in committed.items():
            lag = after.get(f'seedlog_consumer_group_lag{{group="g",topic="m",partition="{p}"}}')
            assert lag == (None if offset is None else 10_000 - offset), (p, lag, offset)
        assert after["seedlog_ready"] == 1 and after["seedlog_active_controller"] == 1
        assert after["seedlog_under_replicated_partitions"] == 0
        assert after["seedlog_process_resident_memory_bytes"] > 1_000_000
        assert get(admin_port, "/nowhere")[0] == 404
    finally:
        broker.kill()


def test_ready_waits_for_the_controller(workdir):
    """A voter alone knows no controller: live, not ready. Once the other voters come up
    and a controller is elected, ready."""
    peer_ports = {i: free_port() for i in (1, 2, 3)}
    voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in peer_ports.items())
    admin_port = free_port()
    brokers = [
        Broker(workdir / f"node{i}", ["--broker-id", str(i), "--controller-quorum-voters", voters]
               + (["--admin-listen", f"127.0.0.1:{admin_port}"] if i == 1 else []))
        for i in (1, 2, 3)
    ]
    try:
        brokers[0].start()
        assert get(admin_port, "/health")[0] == 200
        for _ in range(10):
            status, body = get(admin_port, "/ready")
            assert status == 503, body
        assert scrape(admin_port)["seedlog_ready"] == 0
        for b in brokers[1:]:
            b.start()
        wait_for("ready once a controller is elected", lambda: get(admin_port, "/ready")[0] == 200, 30)
        assert scrape(admin_port)["seedlog_ready"] == 1
    finally:
        for b in brokers:
            if b.alive():
                b.kill()


def test_the_grafana_dashboard_asks_for_metrics_the_broker_serves(workdir):
    """Every seedlog_* series deploy/grafana-dashboard.json queries is one a broker serves."""
    import json
    import re
    from pathlib import Path

    dashboard = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    wanted = {name for e in exprs for name in re.findall(r"\bseedlog_[a-z_]+", e)}
    assert len(wanted) >= 10, wanted
    admin_port = free_port()
    broker = Broker(workdir / "data", ["--admin-listen", f"127.0.0.1:{admin_port}"]).start()
    try:
        create(AdminClient({"bootstrap.servers": broker.bootstrap}), "d", 1)
        # A group's committed offset, so the lag families have a series.
        from confluent_kafka import TopicPartition
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "dash"})
        consumer.commit(offsets=[TopicPartition("d", 0, 0)], asynchronous=False)
        consumer.close()
        wait_for("ready", lambda: get(admin_port, "/ready")[0] == 200)
        status, text = get(admin_port, "/metrics")
        assert status == 200
        families = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
        served = set()
        for name, kind in families:
            served.add(name)
            if kind == "counter":
                served.add(name + "_total")
            if kind == "histogram":
                served.update(name + s for s in ("_bucket", "_sum", "_count"))
        missing = {w for w in wanted if w not in served}
        assert not missing, (missing, sorted(served))
    finally:
        broker.kill()
