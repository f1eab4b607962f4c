"""End-to-end fixtures: a real `seedlog` process on a free loopback port."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent


def seedlog_binary() -> str:
    explicit = os.environ.get("SEEDLOG_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "seedlog"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no seedlog binary: run `cargo build --release` or set SEEDLOG_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One seedlog process; can be killed, stopped and restarted on the same data."""

    def __init__(self, data_dir: Path, extra_args=()):
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = data_dir.parent / f"seedlog-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        args = [seedlog_binary(), "--listen", self.bootstrap, "--data-dir", str(self.data_dir)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args + self.extra_args, stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"seedlog exited with {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("seedlog did not start listening")

    def kill(self):
        """SIGKILL: no flush, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, for `workdir` to see a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def workdir(request):
    """A scratch directory for the brokers of one test. When the test fails, the brokers'
    logs are kept under $SEEDLOG_FAILED_LOGS (default /tmp/seedlog-failed-logs) and the
    tail of each is printed, so a failure in CI can be read without rerunning it."""
    path = Path(tempfile.mkdtemp(prefix="seedlog-e2e-"))
    yield path
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        keep = Path(os.environ.get("SEEDLOG_FAILED_LOGS", "/tmp/seedlog-failed-logs"))
        keep = keep / request.node.name
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True, exist_ok=True)
        # Every log the test wrote: brokers', a dev cluster's (dev/node-N/), clients'.
        for log in sorted(path.glob("**/*.log")):
            name = str(log.relative_to(path)).replace("/", "_")
            shutil.copy(log, keep / name)
            tail = log.read_text(errors="replace").splitlines()[-25:]
            print(f"\n== last lines of {name} (whole log kept in {keep})")
            print("\n".join(tail))
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(workdir):
    b = Broker(workdir / "data").start()
    yield b
    if b.alive():
        b.kill()


@pytest.fixture
def broker_factory(workdir):
    started = []

    def make(*extra_args):
        b = Broker(workdir / f"data{len(started)}", extra_args)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        if b.alive():
            b.kill()


# Consumer groups form within a moment in the tests (the default first-join delay is 3 s).
GROUP_ARGS = ["--group-initial-rebalance-delay-ms", "300"]


class Brokers(dict):
    """Brokers by id, and the voter list they were started with."""

    voters = ""


@pytest.fixture
def cluster(workdir):
    peer_ports = {i: free_port() for i in (1, 2, 3)}
    voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in peer_ports.items())
    brokers = Brokers(
        (i, Broker(workdir / f"node{i}", ["--broker-id", str(i), "--controller-quorum-voters", voters, *GROUP_ARGS]))
        for i in (1, 2, 3)
    )
    brokers.voters = voters
    for b in brokers.values():
        b.start()
    yield brokers
    for b in brokers.values():
        if b.alive():
            b.kill()


def bootstrap(brokers, *ids):
    return ",".join(brokers[i].bootstrap for i in ids or brokers)


def wait_for(what, check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read_to_end(bootstrap, topic, partitions, group="verify", timeout=60, strict=True):
    """Every record of `topic` from offset 0 to the end of each of its `partitions`, as
    (partition, offset, value) in the order read. `strict` fails on any error but the end of
    a partition; otherwise errors (a leader that just moved) are read past."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records, eof, deadline = [], set(), time.time() + timeout
    while len(eof) < partitions and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == -191:  # _PARTITION_EOF
                eof.add(msg.partition())
            elif strict:
                raise AssertionError(msg.error())
            continue
        records.append((msg.partition(), msg.offset(), msg.value()))
    consumer.close()
    assert len(eof) == partitions, f"reached the end of only partitions {sorted(eof)}"
    return records


def cluster_metadata(admin, brokers=3):
    try:
        md = admin.list_topics(timeout=5)
    except Exception as e:  # a broker that has not registered yet answers with no brokers
        print("metadata:", e)
        return None
    return md if len(md.brokers) == brokers and md.controller_id > 0 else None


def create(admin, name, partitions, replication=1):
    def attempt():
        try:
            admin.create_topics([NewTopic(name, partitions, replication)])[name].result(10)
            return True
        except Exception as e:  # retried: no controller yet, or one just died
            print("create", name, "failed:", e)
            return False

    wait_for(f"topic {name}", attempt, timeout=30)
