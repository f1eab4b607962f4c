"""The configuration file as a Kafka operator writes it: Kafka's dotted names are read, the
settings given and every setting in force are logged at start with secrets masked, and an unknown key or a bad value
stops the broker before it starts, naming the key and its line."""

import subprocess

from confluent_kafka.admin import AdminClient

from conftest import Broker, free_port, seedlog_binary, wait_for


def test_kafka_names_start_a_broker_and_its_settings_are_logged_masked(workdir):
    config = workdir / "server.toml"
    config.write_text('# Kafka names\nnode.id = 3\nnum.partitions = 4\n'
                      'log.retention.ms = 3600000\npeer_secret = "hush-hush"\n')
    broker = Broker(workdir / "data", ["--config", str(config)]).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        brokers = admin.list_topics(timeout=10).brokers
        assert list(brokers) == [3], brokers  # node.id
        # num.partitions: an auto-created topic gets four.
        wait_for("auto-created topic", lambda: len(
            admin.list_topics("auto", timeout=10).topics["auto"].partitions) == 4)
    finally:
        broker.stop()
    log = broker.log_path.read_text()
    assert "log_retention_ms = 3600000" in log and "num_partitions = 4" in log
    assert 'peer_secret = "********"' in log and "hush-hush" not in log
    # And every setting in force, defaults included, with what was given.
    effective = log.split("effective=", 1)[1].splitlines()[0]
    for setting in ("broker_id = 3", "log_retention_ms = 3600000", "offsets_topic_num_partitions = 8",
                    "log_segment_bytes = 1073741824", 'peer_secret = "********"'):
        assert setting in effective, effective


def test_an_unknown_key_or_a_bad_value_stops_start_naming_key_and_line(workdir):
    for text, key, line in [
        ("num.partitions = 2\nlog.retention.mss = 5\n", "log_retention_mss", 2),
        ("\nnode.id = \"three\"\n", "node_id", 2),
    ]:
        config = workdir / "bad.toml"
        config.write_text(text)
        run = subprocess.run(
            [seedlog_binary(), "--config", str(config), "--data-dir", str(workdir / "d"),
             "--listen", f"127.0.0.1:{free_port()}"],
            capture_output=True, text=True, timeout=30)
        assert run.returncode != 0
        assert f"line {line}" in run.stderr and key in run.stderr, run.stderr
