"""Clients pinned to old protocol versions, as older libraries and the tools built on them
still speak: kafka-python told it talks to a Kafka 0.8.2, 0.9 or 0.10 broker sends Produce v0-v2
with message sets of magic 0/1, fetches with Fetch v0-v3 (and so reads message sets back),
asks ListOffsets v0, and commits with OffsetCommit v1/v2 (sarama 1.22's defaults commit
with v1). Nothing here sends ApiVersions: a pinned client never asks."""

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from conftest import create
from confluent_kafka.admin import AdminClient


@pytest.mark.parametrize("api_version", [(0, 8, 2), (0, 9), (0, 10, 0), (0, 10, 1)])
def test_kafka_python_pinned_to_an_old_broker_produces_consumes_and_commits(broker, api_version):
    create(AdminClient({"bootstrap.servers": broker.bootstrap}), "old", 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, api_version=api_version, acks=1)
    values = [b"v%04d" % i for i in range(200)]
    futures = [producer.send("old", value=v, key=b"k", partition=0) for v in values]
    producer.flush(20)
    assert [f.get(timeout=20).offset for f in futures] == list(range(200))
    producer.close()

    partition = TopicPartition("old", 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, api_version=api_version,
                             group_id=None, enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)  # ListOffsets (v0 before 0.10.1)
    read = [(m.offset, m.value, m.key) for m in consumer]
    assert read == [(i, v, b"k") for i, v in enumerate(values)]
    assert consumer.end_offsets([partition])[partition] == 200
    consumer.close()

    committer = KafkaConsumer(bootstrap_servers=broker.bootstrap, api_version=api_version,
                              group_id=f"old-{len(api_version)}-{api_version[1]}",
                              enable_auto_commit=False)
    committer.assign([partition])
    committer.commit({partition: OffsetAndMetadata(150, "", -1)})
    assert committer.committed(partition) == 150
    committer.close()
