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


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="seedlog-e2e-"))
    yield path
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
