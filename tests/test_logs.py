"""The broker's log lines: human-readable with no colour codes when stderr is a file, or one
JSON object per line with --log-format json, each line about a partition naming it."""

import json

from confluent_kafka import Producer


def produce(bootstrap):
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce("logged", value=b"x")
    assert p.flush(10) == 0


def test_log_lines_to_a_file_have_no_colour_codes(broker):
    produce(broker.bootstrap)
    assert broker.stop() == 0
    text = broker.log_path.read_text()
    assert "INFO" in text and "topic created" in text
    assert "\x1b[" not in text, "no ANSI escapes when not a terminal"


def test_json_log_lines_are_objects_that_name_their_partition(broker_factory):
    b = broker_factory("--log-format", "json")
    produce(b.bootstrap)
    assert b.stop() == 0
    lines = [json.loads(line) for line in b.log_path.read_text().splitlines() if line.strip()]
    assert lines and all({"timestamp", "level", "fields"} <= set(line) for line in lines)
    created = [line for line in lines if line["fields"].get("message") == "topic created"]
    assert created and created[0]["fields"]["topic"] == "logged"
