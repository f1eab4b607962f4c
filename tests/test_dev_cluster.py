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
