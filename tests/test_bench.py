"""`seedlog bench` against a real broker: its figures come from real traffic."""

import json
import subprocess

from conftest import seedlog_binary


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


def test_e2e_linger_gathers_records_into_fewer_batches(broker):
    # 50 ms of offered records per batch: about 40 batches in 2 s, where the default
    # 1 ms linger sends one per millisecond.
    report = bench(broker, "e2e", "--rate", "2000", "--seconds", "2", "--linger-ms", "50",
                   "--topic", "linger")
    assert report["records"] == 4000 and report["errors"] == 0
    assert 30 <= report["requests"] <= 45, report["requests"]
