"""A cluster of three real `seedlog` processes on loopback: the metadata quorum elects a
controller, topics spread over the brokers, clients follow partition leaders, and the
cluster keeps creating topics when the controller is killed."""

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, bootstrap, cluster_metadata, create, free_port, wait_for


def test_three_brokers_share_topics_and_clients_follow_leaders(cluster):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster, 1)})
    md = wait_for("three registered brokers and a controller", lambda: cluster_metadata(admin))
    assert sorted(md.brokers) == [1, 2, 3]
    create(admin, "spread", 6)
    leaders = {p.id: p.leader for p in admin.list_topics("spread", timeout=5).topics["spread"].partitions.values()}
    assert sorted(leaders) == list(range(6))
    assert set(leaders.values()) == {1, 2, 3}, f"partitions all on a few brokers: {leaders}"

    producer = Producer({"bootstrap.servers": bootstrap(cluster, 2), "acks": "all", "linger.ms": 5})
    acked = {}

    def on_delivery(err, msg):
        assert err is None, err
        acked[msg.value()] = (msg.partition(), msg.offset())

    for i in range(3000):
        producer.produce("spread", value=b"v%d" % i, partition=i % 6, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert len(acked) == 3000

    consumer = Consumer({"bootstrap.servers": bootstrap(cluster, 3), "group.id": "e2e", "enable.auto.commit": False})
    consumer.assign([TopicPartition("spread", p, 0) for p in range(6)])
    seen = {}
    deadline = time.time() + 30
    while len(seen) < 3000 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen[msg.value()] = (msg.partition(), msg.offset())
    consumer.close()
    assert seen == acked


def test_killing_the_controller_elects_another_and_loses_no_topic(cluster):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    md = wait_for("a controller", lambda: cluster_metadata(admin))
    create(admin, "before", 3)
    first = md.controller_id
    cluster[first].kill()
    survivors = [i for i in cluster if i != first]
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster, *survivors)})

    def new_controller():
        md = cluster_metadata(admin)
        return md.controller_id if md and md.controller_id in survivors else None

    second = wait_for("a new controller", new_controller)
    assert second != first
    create(admin, "after", 2)

    # The killed broker comes back, catches up on what it missed, and knows both topics.
    cluster[first].start()
    rejoined = AdminClient({"bootstrap.servers": cluster[first].bootstrap})

    def knows_both():
        md = cluster_metadata(rejoined)
        if md is None:
            return False
        topics = md.topics
        return "before" in topics and "after" in topics and len(topics["after"].partitions) == 2

    wait_for("the restarted broker to learn the new topic", knows_both)


def test_sigterm_hands_the_controller_role_over_and_exits_cleanly(cluster):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    first = wait_for("a controller", lambda: cluster_metadata(admin)).controller_id
    started = time.time()
    assert cluster[first].stop() == 0
    assert time.time() - started < 6, "the handover took longer than its deadline"
    survivors = [i for i in cluster if i != first]
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster, *survivors)})

    def new_controller():
        md = cluster_metadata(admin)
        return md.controller_id if md and md.controller_id in survivors else None

    wait_for("the successor controller", new_controller, timeout=10)
    create(admin, "after-handover", 1)


def test_a_fourth_broker_joins_the_running_cluster(cluster, workdir):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    wait_for("a controller", lambda: cluster_metadata(admin))
    create(admin, "old", 2)
    newcomer = Broker(
        workdir / "node4",
        ["--broker-id", "4", "--controller-quorum-voters", cluster.voters,
         "--peer-listen", f"127.0.0.1:{free_port()}"],
    )
    cluster[4] = newcomer.start()
    joined = AdminClient({"bootstrap.servers": newcomer.bootstrap})
    md = wait_for("four brokers, seen from the newcomer", lambda: cluster_metadata(joined, brokers=4))
    assert "old" in md.topics
    create(joined, "new", 12)
    leaders = {p.leader for p in joined.list_topics("new", timeout=5).topics["new"].partitions.values()}
    assert 4 in leaders, f"no partition placed on the newcomer: {leaders}"

    producer = Producer({"bootstrap.servers": newcomer.bootstrap, "acks": "all"})
    for p in range(12):
        producer.produce("new", value=b"hello-%d" % p, partition=p)
    assert producer.flush(30) == 0


def test_a_dead_broker_is_fenced_and_returns_when_restarted(cluster):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    controller = wait_for("a controller", lambda: cluster_metadata(admin)).controller_id
    victim = next(i for i in cluster if i != controller)
    create(admin, "fencing", 6)
    cluster[victim].kill()
    survivors = [i for i in cluster if i != victim]
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster, *survivors)})

    def fenced():
        md = cluster_metadata(admin, brokers=2)
        if md is None or victim in md.brokers:
            return None
        return md

    md = wait_for(f"broker {victim} to be fenced", fenced, timeout=20)
    orphans = [p for p in md.topics["fencing"].partitions.values() if p.replicas == [victim]]
    assert orphans, "the victim held no partition of the topic"
    assert all(p.leader == -1 for p in orphans), "a fenced broker's partitions have no leader"

    cluster[victim].start()
    wait_for(f"broker {victim} to register again", lambda: cluster_metadata(admin), timeout=20)


def partition_leader(admin, topic, partition=0):
    try:
        md = admin.list_topics(topic, timeout=5)
    except Exception as e:
        print("metadata:", e)
        return None
    p = md.topics[topic].partitions.get(partition)
    return p.leader if p is not None and p.leader > 0 and not p.error else None


class AckedProducer:
    """An acks=all producer of numbered records to partition 0 of `topic` that keeps the
    offset each acknowledged record got, and the delivery errors."""

    def __init__(self, brokers, topic, config=None):
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 2, **(config or {})})
        self.acked, self.failed, self.sent = {}, [], 0

    def _on_delivery(self, err, msg):
        if err is not None:
            self.failed.append(err)
        else:
            self.acked[msg.value()] = msg.offset()

    def send(self, n, pause=0.0, flush=False):
        for _ in range(n):
            self.producer.produce(self.topic, value=b"m%06d" % self.sent, partition=0, on_delivery=self._on_delivery)
            self.sent += 1
            self.producer.poll(0)
            if pause:
                time.sleep(pause)
        if flush:
            self.producer.flush(60)

    def flush(self, timeout):
        return self.producer.flush(timeout)


def assert_at_their_offsets(cluster, topic, acked):
    """Every acknowledged record is in partition 0 of `topic`, exactly at its offset."""
    consumer = Consumer({"bootstrap.servers": bootstrap(cluster), "group.id": "check", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    at = {}
    deadline = time.time() + 60
    last = max(acked.values())
    while time.time() < deadline and (not at or max(at) < last):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            at[msg.offset()] = msg.value()
    consumer.close()
    missing = [(v, o) for v, o in acked.items() if at.get(o) != v]
    assert not missing, f"{len(missing)} acknowledged records not at their offsets: {missing[:5]}"


def test_acks_all_survives_killing_the_partition_leader_again_and_again(cluster):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    wait_for("a controller", lambda: cluster_metadata(admin))
    create(admin, "replicated", 1, replication=3)
    md = admin.list_topics("replicated", timeout=5).topics["replicated"].partitions[0]
    assert sorted(md.replicas) == [1, 2, 3]
    producer = AckedProducer(bootstrap(cluster), "replicated", {
        "message.timeout.ms": 60000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    send = lambda n: producer.send(n, pause=0.0005)

    victims = []
    for _ in range(3):
        send(500)
        leader = wait_for("a partition leader", lambda: partition_leader(admin, "replicated"), timeout=30)
        victims.append(leader)
        cluster[leader].kill()
        successor = lambda: (lambda l: l if l not in (None, leader) else None)(partition_leader(admin, "replicated"))
        wait_for("a new partition leader", successor, timeout=30)
        send(500)  # while the old leader is dead
        cluster[leader].start()
        time.sleep(1)
    assert producer.flush(90) == 0
    assert not producer.failed, producer.failed[:5]
    assert len(producer.acked) == producer.sent, f"{len(producer.acked)} of {producer.sent} acknowledged"
    print("killed leaders", victims)
    assert_at_their_offsets(cluster, "replicated", producer.acked)


def test_a_partition_moves_to_a_fourth_broker_while_producers_write(cluster, workdir):
    """kafka-python's AlterPartitionReassignments moves a replication-factor-3 partition off
    its leader and onto a broker that joined later; no acknowledged record is lost."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KafkaPartition

    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    wait_for("a controller", lambda: cluster_metadata(admin))
    create(admin, "moving", 1, replication=3)
    leader = wait_for("a partition leader", lambda: partition_leader(admin, "moving"), timeout=30)
    producer = AckedProducer(bootstrap(cluster), "moving")
    send = lambda n: producer.send(n, flush=True)

    send(500)
    newcomer = Broker(
        workdir / "node4",
        ["--broker-id", "4", "--controller-quorum-voters", cluster.voters,
         "--peer-listen", f"127.0.0.1:{free_port()}"],
    )
    cluster[4] = newcomer.start()
    wait_for("four brokers", lambda: cluster_metadata(admin, brokers=4))

    kafka_admin = KafkaAdminClient(bootstrap_servers=bootstrap(cluster))
    partition = KafkaPartition("moving", 0)
    target = [b for b in (1, 2, 3) if b != leader] + [4]
    assert kafka_admin.alter_partition_reassignments({partition: target}) == {partition: None}
    send(500)  # while the partition moves

    def moved():
        if kafka_admin.list_partition_reassignments():
            return None
        replicas = admin.list_topics("moving", timeout=5).topics["moving"].partitions[0].replicas
        return sorted(replicas) == sorted(target)

    wait_for("the move to finish", moved, timeout=60)
    kafka_admin.close()
    assert (workdir / "node4" / "moving-0").is_dir(), "the newcomer holds a copy"
    wait_for("the old leader to drop its copy",
             lambda: not (workdir / f"node{leader}" / "moving-0").exists(), timeout=30)
    send(500)
    assert not producer.failed, producer.failed[:5]
    assert len(producer.acked) == producer.sent
    assert_at_their_offsets(cluster, "moving", producer.acked)
