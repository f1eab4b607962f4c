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
