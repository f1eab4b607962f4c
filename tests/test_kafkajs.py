"""kafkajs, the Node.js client, as an idempotent producer: it asks InitProducerId, numbers
its batches, and reads back each record once."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_idempotence import numbered, read_values

KAFKAJS = Path(__file__).resolve().parent / "kafkajs"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (KAFKAJS / "node_modules" / "kafkajs").exists(),
    reason="node or kafkajs not installed (scripts/test-deps installs kafkajs where node is)",
)


def test_kafkajs_idempotent_producer_writes_each_record_once(broker):
    out = subprocess.run(
        ["node", str(KAFKAJS / "produce.js"), broker.bootstrap, "js", "1000", "50"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    offsets = json.loads(out.stdout.strip().splitlines()[-1])
    assert offsets == list(range(0, 1000, 50)), "each batch at its place"
    assert read_values(broker.bootstrap, "js", 1000) == numbered(1000)


def test_kafkajs_transactions_commit_and_abort(broker):
    from confluent_kafka.admin import AdminClient

    from conftest import create
    from test_transactions import consume_all

    create(AdminClient({"bootstrap.servers": broker.bootstrap}), "jstx", 2)
    out = subprocess.run(
        ["node", str(KAFKAJS / "transact.js"), broker.bootstrap, "jstx", "6", "10"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    committed = sorted(v.encode() for v in json.loads(out.stdout.strip().splitlines()[-1]))
    assert len(committed) == 30
    assert consume_all(broker.bootstrap, "jstx", 2, "read_committed", 30) == committed
    assert len(consume_all(broker.bootstrap, "jstx", 2, "read_uncommitted", 60)) == 60
