"""The real-process nemesis (tests/nemesis.py): a short run in the test command, and its
offline checker on histories with known anomalies. The long run is
`python3 tests/nemesis.py --events 50` (README, "Testing")."""

import json
import os

import pytest

import nemesis
from conftest import seedlog_binary

EVENTS = int(os.environ.get("SEEDLOG_NEMESIS_EVENTS", "12"))


@pytest.mark.skipif(nemesis.can_run() is not None, reason=nemesis.can_run() or "")
def test_faults_on_three_real_brokers_lose_nothing_acknowledged(workdir):
    report = nemesis.run(EVENTS, seed=int(os.environ.get("SEEDLOG_NEMESIS_SEED", "7")),
                         root=workdir, binary=seedlog_binary())
    print(json.dumps(report, indent=1))
    assert report["events"] == EVENTS
    assert report["acked"] > 1000, "the workload barely ran"
    assert report["final"] >= report["acked"]
    assert not nemesis.failures(report), nemesis.failures(report)


def write(root, what, rows):
    with open(root / f"{what}.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def record(value, partition, offset):
    return {"value": value, "partition": partition, "offset": offset}


def test_the_checker_finds_each_kind_of_anomaly(tmp_path):
    sent = [{"value": f"p0-{i}", "partition": 0} for i in range(5)]
    write(tmp_path, "sent", sent)
    write(tmp_path, "acked", [record("p0-0", 0, 0), record("p0-1", 0, 1), record("p0-2", 0, 2),
                              record("p0-4", 0, None), record("p0-9", 0, None)])
    write(tmp_path, "read", [record("p0-3", 0, 7)])
    write(tmp_path, "flushed", [{"producer": "p0", "unanswered": 0}])
    # p0-1 is lost (acknowledged at 1, not there), and p0-9 (acknowledged as a duplicate, at
    # no offset, and nowhere in its partition) while p0-4, a duplicate too, is there;
    # p0-0 is there twice, p0-4 comes before
    # p0-2 in the partition, "x-1" was never sent, p0-3 in partition 1 was sent to 0, and the
    # consumer's read of offset 7 of partition 0 is not in the final read.
    write(tmp_path, "final", [record("p0-0", 0, 0), record("p0-4", 0, 1), record("p0-2", 0, 2),
                              record("p0-0", 0, 3), record("x-1", 0, 4), record("p0-3", 1, 0)])
    found = nemesis.failures(nemesis.check(tmp_path))
    assert found["lost"] == [record("p0-1", 0, 1), record("p0-9", 0, None)]
    assert found["duplicated"] == ["p0-0"]
    assert "p0-2" in found["reordered"]
    assert found["phantom"] == [record("x-1", 0, 4)]
    assert found["misplaced"] == [record("p0-3", 1, 0)]
    assert found["vanished"] == [record("p0-3", 0, 7)]


def test_the_checker_passes_a_clean_history(tmp_path):
    write(tmp_path, "sent", [{"value": f"p0-{i}", "partition": i % 2} for i in range(4)])
    acked = [record("p0-0", 0, 0), record("p0-2", 0, 1), record("p0-1", 1, 0), record("p0-3", 1, 1)]
    write(tmp_path, "acked", acked)
    write(tmp_path, "final", acked)
    write(tmp_path, "read", acked[:2])
    assert nemesis.failures(nemesis.check(tmp_path)) == {}
