"""Debian's kcat (librdkafka 2.0.x) against seedlog."""

import subprocess

KCAT = "kcat"


def run(*args, input=None, timeout=120):
    result = subprocess.run(
        [KCAT, *args], input=input, capture_output=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_ten_thousand_keyed_records_with_headers_round_trip(broker):
    n = 10_000
    lines = "".join(f"key-{i}\tvalue-{i}-{'x' * (i % 50)}\n" for i in range(n))
    run("-b", broker.bootstrap, "-P", "-t", "kc", "-K", "\t", "-H", "origin=kcat",
        "-H", "run=e2e", "-X", "acks=all", input=lines.encode())

    out = run("-b", broker.bootstrap, "-C", "-t", "kc", "-e", "-q",
              "-f", "%p|%o|%k|%s|%h\n").decode().splitlines()
    assert len(out) == n
    seen = {}
    for line in out:
        partition, offset, key, value, headers = line.split("|")
        assert headers == "origin=kcat,run=e2e"
        seen[key] = (int(partition), int(offset), value)
    for i in range(n):
        partition, offset, value = seen[f"key-{i}"]
        assert value == f"value-{i}-{'x' * (i % 50)}"
    offsets = sorted(o for p, o, _ in seen.values() if p == 0)
    assert offsets == list(range(len(offsets))), "offsets are contiguous from 0"


def test_metadata_lists_the_broker_and_auto_created_topic(broker):
    run("-b", broker.bootstrap, "-P", "-t", "auto", input=b"one\n")
    meta = run("-b", broker.bootstrap, "-L", "-t", "auto").decode()
    assert f"broker 1 at {broker.bootstrap}" in meta
    assert 'topic "auto" with 1 partitions' in meta


def test_query_offsets_and_consume_from_the_middle(broker):
    run("-b", broker.bootstrap, "-P", "-t", "mid", input="".join(f"m{i}\n" for i in range(100)).encode())
    out = run("-b", broker.bootstrap, "-C", "-t", "mid", "-o", "42", "-c", "3", "-f", "%o:%s\n").decode()
    assert out.splitlines() == ["42:m42", "43:m43", "44:m44"]
    q = run("-b", broker.bootstrap, "-Q", "-t", "mid:0:-1").decode()
    assert "offset 100" in q, q
