"""A real-process nemesis, in the spirit of Jepsen: three `seedlog` brokers, each in a network
namespace of its own joined by a bridge, while idempotent acks=all producers and a consumer
run, and faults strike one at a time: kill -9 of a partition leader or of the controller,
SIGSTOP of a broker, and cuts of the links between brokers (both ways, one way, or a broker
isolated from both others) by `tc` dropping the packets to a peer's address. Clients in the
root namespace reach every broker throughout, as in the simulator's "split" partitions.

Every operation is written to a history (JSON lines in the run's directory); `check` reads
those files afterwards, knowing nothing of the run, and reports acknowledged records lost or
moved, duplicates, reordering within a producer's partition, phantom records nobody wrote,
and records a consumer saw that the final read does not hold.

    sudo python3 tests/nemesis.py --events 50 [--seed N] [--dir D]

runs the long version (needs root, `ip` and `tc`); `tests/test_nemesis.py` runs a short one
in the test command.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from conftest import read_to_end, wait_for  # tests/ is on the path, run either way

TOPIC = "nemesis"
PARTITIONS = 3
KAFKA_PORT = 9092
PEER_PORT = 9093


def sh(*args, check=True):
    done = subprocess.run(args, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def can_run():
    """Why this machine cannot run the nemesis, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (iproute2)"
    return None


class Network:
    """Three namespaces on one bridge; the root namespace is the clients' host."""

    def __init__(self, brokers=(1, 2, 3)):
        tag = os.getpid() % 100000
        self.prefix = f"sl{tag}"
        self.subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.bridge = f"{self.prefix}br"
        self.brokers = list(brokers)
        self.cuts = set()  # (from, to): packets from broker `from` to broker `to` are dropped

    def ns(self, i):
        return f"{self.prefix}n{i}"

    def ip(self, i):
        return f"{self.subnet}.{i}"

    def up(self):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i in self.brokers:
            ns, host, inner = self.ns(i), f"{self.prefix}h{i}", f"{self.prefix}p{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "set", host, "master", self.bridge, "up")
        self.apply()

    def down(self):
        for i in self.brokers:
            sh("ip", "netns", "del", self.ns(i), check=False)  # takes its veth pair with it
        sh("ip", "link", "del", self.bridge, check=False)

    def apply(self):
        """Rebuilds each namespace's egress queue: packets to a cut peer are classified into
        an HTB class of 8 bit/s with a one-packet queue, so all but the first packet of a cut
        are dropped (this kernel has no netem and no tc drop action; HTB and u32 it has)."""
        for i in self.brokers:
            tc = ["tc", "-n", self.ns(i)]
            sh(*tc, "qdisc", "del", "dev", "eth0", "root", check=False)
            sh(*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1",
               "r2q", "1000000")
            sh(*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb",
               "rate", "10gbit")
            sh(*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:2", "htb",
               "rate", "8bit", "ceil", "8bit", "burst", "1", "cburst", "1")
            sh(*tc, "qdisc", "add", "dev", "eth0", "parent", "1:2", "handle", "20:", "pfifo",
               "limit", "1")
            for (src, dst) in sorted(self.cuts):
                if src == i:
                    sh(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                       "prio", "1", "u32", "match", "ip", "dst", f"{self.ip(dst)}/32",
                       "flowid", "1:2")

    def cut(self, pairs):
        self.cuts |= set(pairs)
        self.apply()

    def heal(self):
        self.cuts.clear()
        self.apply()


class Broker:
    def __init__(self, net, i, root):
        self.net, self.id = net, i
        self.data = root / f"node{i}"
        self.log_path = root / f"seedlog-n{i}.log"
        self.proc = None

    @property
    def address(self):
        return f"{self.net.ip(self.id)}:{KAFKA_PORT}"

    def start(self, binary):
        voters = ",".join(f"{j}@{self.net.ip(j)}:{PEER_PORT}" for j in self.net.brokers)
        log = open(self.log_path, "ab")
        # `ip netns exec` execs the command, so the pid is the broker's own.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns(self.id), binary, "--listen", self.address,
             "--data-dir", str(self.data), "--broker-id", str(self.id),
             "--controller-quorum-voters", voters],
            stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker {self.id} exited with {self.proc.returncode}")
            try:
                socket.create_connection((self.net.ip(self.id), KAFKA_PORT), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker {self.id} did not start listening")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        self.proc.send_signal(signal.SIGCONT)  # a paused broker dies too
        self.proc.kill()
        self.proc.wait(timeout=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class History:
    """Append-only JSON lines, one file per kind of operation; thread-safe."""

    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()
        self.files = {}

    def write(self, what, /, **fields):
        with self.lock:
            f = self.files.get(what)
            if f is None:
                f = self.files[what] = open(self.root / f"{what}.jsonl", "a", buffering=1)
            f.write(json.dumps(fields) + "\n")

    def close(self):
        with self.lock:
            for f in self.files.values():
                f.close()


def producer_loop(name, bootstrap, history, stop):
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # acks=all and ordered retries come with it
        "linger.ms": 2,
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 1000,
        "log_level": 2,  # the faults make librdkafka report every lost connection
    })

    def on_delivery(err, msg):
        value = msg.value().decode()
        if err is None:
            history.write("acked", value=value, partition=msg.partition(), offset=msg.offset())
        else:
            history.write("failed", value=value, error=str(err))

    seq = 0
    while not stop.is_set():
        value = f"{name}-{seq}"
        try:
            producer.produce(TOPIC, value=value.encode(), partition=seq % PARTITIONS,
                             on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.05)
            continue
        history.write("sent", value=value, partition=seq % PARTITIONS)
        seq += 1
        producer.poll(0)
        time.sleep(0.001)
    left = producer.flush(150)
    history.write("flushed", producer=name, unanswered=left)


def consumer_loop(bootstrap, history, stop):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "nemesis-live",
                         "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000,
                         "log_level": 2})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    while not stop.is_set():
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            history.write("read", value=msg.value().decode(), partition=msg.partition(),
                          offset=msg.offset())
    consumer.close()


def final_read(bootstrap, history, timeout=120):
    """Everything in the topic, from offset 0 to each partition's end."""
    for partition, offset, value in read_to_end(bootstrap, TOPIC, PARTITIONS, "nemesis-final",
                                                timeout, strict=False):
        history.write("final", value=value.decode(), partition=partition, offset=offset)


def metadata(bootstrap):
    from confluent_kafka.admin import AdminClient

    try:
        return AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except Exception:
        return None


def create_topic(bootstrap):
    from confluent_kafka.admin import AdminClient, NewTopic

    def attempt():
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(10)
            return True
        except Exception as e:
            return "already exists" in str(e).lower()

    wait_for("the topic", attempt, timeout=60)

    def led():
        md = metadata(bootstrap)
        t = md and md.topics.get(TOPIC)
        return t and len(t.partitions) == PARTITIONS and all(p.leader > 0 for p in t.partitions.values())

    wait_for("a leader for every partition", led, timeout=60)


class Nemesis:
    """Strikes one fault at a time and heals it before the next."""

    def __init__(self, net, brokers, binary, bootstrap, history, rng):
        self.net, self.brokers, self.binary = net, brokers, binary
        self.bootstrap, self.history, self.rng = bootstrap, history, rng

    def leader(self):
        md = metadata(self.bootstrap)
        if md is None:
            return None
        if self.rng.random() < 0.3 and md.controller_id > 0:
            return md.controller_id
        t = md.topics.get(TOPIC)
        leaders = [p.leader for p in t.partitions.values() if p.leader > 0] if t else []
        return self.rng.choice(leaders) if leaders else None

    def strike(self, n):
        ids = self.net.brokers
        kind = self.rng.choice(["kill-leader", "pause", "cut-both", "cut-one-way", "isolate"])
        hold = self.rng.uniform(1.0, 4.0)
        if kind == "kill-leader":
            victim = self.leader() or self.rng.choice(ids)
            self.history.write("event", n=n, kind=kind, broker=victim, hold=hold)
            self.brokers[victim].kill()
            time.sleep(hold)
            self.brokers[victim].start(self.binary)
        elif kind == "pause":
            victim = self.rng.choice(ids)
            self.history.write("event", n=n, kind=kind, broker=victim, hold=hold)
            self.brokers[victim].signal(signal.SIGSTOP)
            time.sleep(hold)
            self.brokers[victim].signal(signal.SIGCONT)
        else:
            a, b = self.rng.sample(ids, 2)
            if kind == "cut-both":
                pairs = [(a, b), (b, a)]
            elif kind == "cut-one-way":
                pairs = [(a, b)]
            else:
                pairs = [(a, c) for c in ids if c != a] + [(c, a) for c in ids if c != a]
            self.history.write("event", n=n, kind=kind, pairs=pairs, hold=hold)
            self.net.cut(pairs)
            time.sleep(hold)
            self.net.heal()
        time.sleep(self.rng.uniform(0.5, 2.0))


def run(events, seed, root, binary):
    """Runs the workload under `events` faults; returns the checker's report."""
    rng = random.Random(seed)
    net = Network()
    brokers = {i: Broker(net, i, root) for i in net.brokers}
    history = History(root)
    stop = threading.Event()
    threads = []
    try:
        net.up()
        for b in brokers.values():
            b.start(binary)
        bootstrap = ",".join(b.address for b in brokers.values())
        create_topic(bootstrap)
        threads = [threading.Thread(target=producer_loop, args=(f"p{k}", bootstrap, history, stop))
                   for k in range(2)]
        threads.append(threading.Thread(target=consumer_loop, args=(bootstrap, history, stop)))
        for t in threads:
            t.start()
        time.sleep(1)
        nemesis = Nemesis(net, brokers, binary, bootstrap, history, rng)
        started = time.time()
        for n in range(events):
            nemesis.strike(n)
        history.write("summary", events=events, seconds=round(time.time() - started, 1))
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        final_read(bootstrap, history)
        for b in brokers.values():  # every broker must have lived through it
            if not b.alive():
                raise RuntimeError(f"broker {b.id} died: see {b.log_path}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=180)
        history.close()
        for b in brokers.values():
            if b.alive():
                b.kill()
        net.down()
    return check(root)


def load(root, kind):
    path = Path(root) / f"{kind}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


ANOMALIES = ("lost", "duplicated", "reordered", "phantom", "misplaced", "vanished")


def check(root):
    """Reads a run's histories and judges them. A record is written once by an idempotent
    producer, so the final read must hold every acknowledged record at its acknowledged
    offset, no value twice, each producer's records of a partition in the order it sent
    them, nothing nobody sent, and everything the live consumer read, where it read it."""
    sent = {r["value"]: r["partition"] for r in load(root, "sent")}
    acked, final, reads = load(root, "acked"), load(root, "final"), load(root, "read")
    at = {(r["partition"], r["offset"]): r["value"] for r in final}
    held = {(r["partition"], r["value"]) for r in final}

    def lost(a):
        # librdkafka reports a batch the broker calls a duplicate (DUPLICATE_SEQUENCE_NUMBER:
        # written before, older than the five it remembers) as delivered at no offset: it
        # must then be in its partition, wherever it was first written.
        if a["offset"] is None:
            return (a["partition"], a["value"]) not in held
        return at.get((a["partition"], a["offset"])) != a["value"]

    seen, duplicated = set(), []
    for r in final:
        if r["value"] in seen:
            duplicated.append(r["value"])
        seen.add(r["value"])
    reordered, last = [], {}
    for r in sorted(final, key=lambda r: (r["partition"], r["offset"])):
        name, seq = r["value"].rsplit("-", 1)
        key = (name, r["partition"])
        if key in last and int(seq) <= last[key]:
            reordered.append(r["value"])
        last[key] = int(seq)
    found = {
        "lost": [a for a in acked if lost(a)],
        "duplicated": duplicated,
        "reordered": reordered,
        "phantom": [r for r in final if r["value"] not in sent],
        "misplaced": [r for r in final if r["value"] in sent and sent[r["value"]] != r["partition"]],
        "vanished": [r for r in reads if at.get((r["partition"], r["offset"])) != r["value"]],
    }
    report = {
        "events": len(load(root, "event")),
        "sent": len(sent),
        "acked": len(acked),
        "failed": len(load(root, "failed")),
        "unanswered": sum(f["unanswered"] for f in load(root, "flushed")),
        "final": len(final),
        "live_reads": len(reads),
    }
    for kind in ANOMALIES:
        report[kind], report[f"{kind}_count"] = found[kind][:10], len(found[kind])
    return report


def failures(report):
    """The checker's verdict: the anomalies found, empty when the run is clean."""
    return {k: report[k] for k in ANOMALIES if report[f"{k}_count"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", type=Path, help="where data and histories go (kept)")
    parser.add_argument("--check-only", action="store_true",
                        help="judge the histories already in --dir")
    parser.add_argument("--bin", default=os.environ.get("SEEDLOG_BIN", "target/release/seedlog"))
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="seedlog-nemesis-"))
    if args.check_only:
        report = check(root)
    else:
        reason = can_run()
        if reason:
            sys.exit(f"nemesis: {reason}")
        root.mkdir(parents=True, exist_ok=True)
        print(f"nemesis: seed {args.seed}, {args.events} events, histories in {root}", flush=True)
        started = time.time()
        report = run(args.events, args.seed, root, str(Path(args.bin).resolve()))
        report["wall_seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=1))
    sys.exit(1 if failures(report) else 0)


if __name__ == "__main__":
    main()
