"""The web console on the admin listener, in a real headless browser (Debian's Chromium,
which scripts/test-deps installs): the page loads, shows a topic and a consumer group a
client just made, and its charts move while a producer writes."""

import re
import shutil
import subprocess
import threading

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from conftest import Broker, create, free_port, wait_for
from test_metrics import get

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(port, workdir, budget_ms):
    """The console's DOM after `budget_ms` of the page's own (virtual) time, polling every
    300 ms. The flags keep Chromium off the network it would otherwise call home on."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={workdir / 'chromium'}",
        f"--virtual-time-budget={budget_ms}", "--dump-dom",
        f"http://127.0.0.1:{port}/?every=300",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def chart(dom, name):
    """(latest rate, the polyline's y values) of one chart."""
    svg = re.search(rf'<svg id="chart-{name}" data-last="([0-9.]+)".*?points="([^"]*)"', dom, re.S)
    assert svg, f"chart {name} not in the page"
    ys = [float(point.split(",")[1]) for point in svg.group(2).split()]
    return float(svg.group(1)), ys


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/test-deps installs it)")
def test_the_console_shows_a_new_topic_and_group_and_its_charts_move_under_load(workdir):
    admin_port = free_port()
    broker = Broker(workdir / "data", ["--admin-listen", f"127.0.0.1:{admin_port}"]).start()
    stop = threading.Event()
    try:
        wait_for("ready", lambda: get(admin_port, "/ready")[0] == 200)
        status, page = get(admin_port, "/")
        assert status == 200 and "<title>seedlog console</title>" in page

        # Idle, before any topic: the page draws, and nothing is there to show.
        idle = render(admin_port, workdir, 2000)
        assert re.search(r'id="status"[^>]*>broker 1 · controller 1 · ready', idle), idle[:3000]
        assert "console-orders" not in idle
        assert chart(idle, "bytes_in")[0] == 0, "no client yet, so nothing comes in"

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        create(admin, "console-orders", 3)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for i in range(300):
            producer.produce("console-orders", value=b"x" * 100, partition=i % 3)
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "console-readers",
                             "client.id": "console-reader", "auto.offset.reset": "earliest"})
        consumer.subscribe(["console-orders"])
        read = 0
        for _ in range(60):
            read += len([m for m in consumer.consume(100, timeout=0.5) if not m.error()])
            if read >= 300:
                break
        assert read >= 300
        consumer.commit(asynchronous=False)

        def write():
            while not stop.is_set():
                for i in range(500):
                    producer.produce("console-orders", value=b"y" * 200, partition=i % 3)
                producer.flush(10)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        busy = render(admin_port, workdir, 4000)
        # The topic the client just made, each of its partitions led by this broker.
        for p in range(3):
            assert re.search(rf"<td>console-orders</td><td class=\"num\">{p}</td>"
                             r"<td class=\"num\">1</td>", busy), busy[-4000:]
        # The group, its member by client id with its partitions, and its lag.
        assert "<td>console-readers</td><td>Stable</td>" in busy, busy[-4000:]
        assert "console-reader @ " in busy and "console-orders [0, 1, 2]" in busy
        # The charts move: requests and bytes in are above zero, and not flat.
        for name in ("requests", "bytes_in"):
            rate, ys = chart(busy, name)
            assert rate > 0, f"{name} rate {rate}"
            assert min(ys) < 58, f"{name} never left the baseline: {ys}"
        consumer.close()
    finally:
        stop.set()
        broker.stop()
