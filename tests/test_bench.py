"""`seedlog bench` against a real broker: its figures come from real traffic."""

import json
import subprocess

from conftest import free_port, seedlog_binary


def bench(broker, *args):
    out = subprocess.run([seedlog_binary(), "bench", *args, "--bootstrap", broker.bootstrap, "--json"],
                         capture_output=True, check=True, timeout=120).stdout
    return json.loads(out)


def test_produce_then_consume_counts_every_record(broker):
    produced = bench(broker, "produce", "--records", "20000", "--batch-records", "100",
                     "--acks", "all", "--partitions", "3", "--topic", "b")
    assert produced["records"] == 20000 and produced["errors"] == 0
    assert produced["requests"] == 200  # one batch of --batch-records per request
    assert produced["records_per_sec"] > 0 and len(produced["latency_ms"]) == 4
    consumed = bench(broker, "consume", "--records", "20000", "--partitions", "3", "--topic", "b")
    assert consumed["records"] == 20000 and consumed["errors"] == 0


def test_e2e_reads_back_what_it_offers(broker):
    report = bench(broker, "e2e", "--rate", "2000", "--seconds", "2", "--topic", "e")
    assert report["records"] == 4000 and report["errors"] == 0
    assert report["requests"] >= 1000  # about one batch per millisecond
    p50, p99, p999, worst = report["latency_ms"]
    assert 0 < p50 <= p99 <= p999 <= worst


def test_e2e_breaks_a_records_time_into_the_brokers_stages(broker_factory):
    admin = f"127.0.0.1:{free_port()}"
    broker = broker_factory("--admin-listen", admin)
    report = bench(broker, "e2e", "--rate", "5000", "--seconds", "2", "--topic", "s",
                   "--admin", admin)
    assert report["records"] == 10000 and report["errors"] == 0
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["sent -> fetched"]["ms"] == report["latency_ms"]
    broker_side = [s for s in report["stages"] if s["by"] == "broker"]
    assert [s["name"] for s in broker_side] == [
        "read -> taken (requests)", "appended -> sync started", "sync started -> synced",
        "synced -> visible", "appended -> visible"]
    for s in report["stages"]:
        p50, p99, p999, worst = s["ms"]
        assert 0 < p50 <= p99 <= p999 <= worst, s
    # A record is visible no sooner than its sync has run, and the client saw it later
    # than the broker made it visible (bucket bounds overstate by up to 41%).
    whole, sync = stages["appended -> visible"]["ms"], stages["sync started -> synced"]["ms"]
    assert whole[0] >= sync[0] / 1.42
    assert report["latency_ms"][0] >= whole[0] / 1.42


def test_e2e_linger_gathers_records_into_fewer_batches(broker):
    # 50 ms of offered records per batch: about 40 batches in 2 s, where the default
    # 1 ms linger sends one per millisecond.
    report = bench(broker, "e2e", "--rate", "2000", "--seconds", "2", "--linger-ms", "50",
                   "--topic", "linger")
    assert report["records"] == 4000 and report["errors"] == 0
    assert 30 <= report["requests"] <= 45, report["requests"]
