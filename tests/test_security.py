"""Security with real clients: SASL PLAIN and SCRAM on a SASL listener, credentials and ACLs
made with confluent-kafka's admin client, and what each user may then do."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from conftest import Broker, create, free_port, wait_for


class Secured:
    """A broker with the authorizer on: PLAINTEXT on one port for the administrator
    (anonymous, a super user here, as a local admin listener is in many Kafka setups) and
    SASL_PLAINTEXT on another for everyone else."""

    def __init__(self, workdir):
        self.broker = Broker(workdir / "data")
        self.sasl_port = free_port()
        self.broker.extra_args = [
            "--listeners",
            f"PLAINTEXT://127.0.0.1:{self.broker.port},SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
            "--authorizer-class-name",
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "--super-users",
            "User:ANONYMOUS",
        ]
        self.broker.start()
        self.admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})

    @property
    def sasl_bootstrap(self):
        return f"127.0.0.1:{self.sasl_port}"

    def client_config(self, user, password, mechanism="SCRAM-SHA-512"):
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": password,
        }

    def add_user(self, user, password, mechanism=ScramMechanism.SCRAM_SHA_512):
        info = ScramCredentialInfo(mechanism, 4096)
        upsert = UserScramCredentialUpsertion(user, info, password.encode())
        for future in self.admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=20)

    def allow(self, user, kind, name, operation):
        acl = AclBinding(
            kind, name, ResourcePatternType.LITERAL, f"User:{user}", "*", operation,
            AclPermissionType.ALLOW,
        )
        for future in self.admin.create_acls([acl]).values():
            future.result(timeout=20)


@pytest.fixture
def secured(workdir):
    s = Secured(workdir)
    yield s
    if s.broker.alive():
        s.broker.kill()


def produce(config, topic, values):
    """Produces `values`; returns the delivery error of each (None when delivered)."""
    errors = []
    producer = Producer({**config, "message.timeout.ms": 10000})
    for v in values:
        producer.produce(topic, v, on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(20)
    return errors


def consume(config, topic, group, want, timeout=30):
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, errors = [], []
    deadline = time.time() + timeout
    while len(seen) < want and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            errors.append(msg.error())
            if not msg.error().retriable() and msg.error().code() != KafkaError._PARTITION_EOF:
                break
            continue
        seen.append(msg.value())
    consumer.close()
    return seen, errors


def test_a_scram_reader_of_one_topic_reads_it_and_may_not_write(secured):
    create(secured.admin, "orders", 1)
    create(secured.admin, "secret", 1)
    assert produce({"bootstrap.servers": secured.broker.bootstrap}, "orders", [b"a", b"b", b"c"]) == [None] * 3
    secured.add_user("alice", "alice-secret")
    secured.allow("alice", ResourceType.TOPIC, "orders", AclOperation.READ)
    secured.allow("alice", ResourceType.GROUP, "readers", AclOperation.READ)

    alice = secured.client_config("alice", "alice-secret")
    seen, errors = consume(alice, "orders", "readers", 3)
    assert seen == [b"a", b"b", b"c"], errors

    # Reading is all she may do.
    for topic in ("orders", "secret"):
        errors = produce(alice, topic, [b"x"])
        assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED], errors
    seen, errors = consume(alice, "secret", "readers", 1, timeout=10)
    assert not seen
    assert KafkaError.TOPIC_AUTHORIZATION_FAILED in [e.code() for e in errors], errors
    # ... and with another group, her read ACL on the topic does not let her in.
    seen, errors = consume(alice, "orders", "others", 1, timeout=10)
    assert not seen
    assert KafkaError.GROUP_AUTHORIZATION_FAILED in [e.code() for e in errors], errors

    # She sees only her topic, and cannot list or change the ACLs.
    alice_admin = AdminClient(alice)
    metadata = alice_admin.list_topics(timeout=10)
    assert set(metadata.topics) == {"orders"}
    grant = AclBinding(ResourceType.TOPIC, "secret", ResourcePatternType.LITERAL, "User:alice",
                       "*", AclOperation.ALL, AclPermissionType.ALLOW)
    with pytest.raises(Exception, match="CLUSTER_AUTHORIZATION_FAILED|[Aa]uthoriz"):
        for future in alice_admin.create_acls([grant]).values():
            future.result(timeout=10)


def test_plain_and_scram_sha_256_and_a_wrong_password(secured):
    create(secured.admin, "events", 1)
    secured.add_user("bob", "bob-secret", ScramMechanism.SCRAM_SHA_256)
    secured.allow("bob", ResourceType.TOPIC, "events", AclOperation.WRITE)
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        assert produce(secured.client_config("bob", "bob-secret", mechanism), "events", [b"v"]) == [None]

    failures = []
    config = {
        **secured.client_config("bob", "wrong", "SCRAM-SHA-256"),
        "error_cb": lambda err: failures.append(err),
    }
    producer = Producer(config)
    producer.produce("events", b"never")
    wait_for("the authentication failure", lambda: producer.poll(0.2) is None or failures, timeout=15)
    assert failures[0].code() == KafkaError._AUTHENTICATION, failures
    assert "Authentication failed" in failures[0].str() or "authentication" in failures[0].str().lower()
    assert producer.flush(1) == 1, "nothing was delivered"


def test_credentials_and_acls_are_listed_and_removed(secured):
    secured.add_user("carol", "c", ScramMechanism.SCRAM_SHA_512)
    described = secured.admin.describe_user_scram_credentials(["carol"])
    infos = described["carol"].result(timeout=10).scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_512, 4096)]

    secured.allow("carol", ResourceType.TOPIC, "t", AclOperation.READ)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    acls = secured.admin.describe_acls(everything).result(timeout=10)
    assert [(a.name, a.principal, a.operation) for a in acls] == [("t", "User:carol", AclOperation.READ)]
    deleted = secured.admin.delete_acls([everything])
    assert len(list(deleted.values())[0].result(timeout=10)) == 1
    assert secured.admin.describe_acls(everything).result(timeout=10) == []

    removal = UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)
    for future in secured.admin.alter_user_scram_credentials([removal]).values():
        future.result(timeout=10)
    failures = []
    producer = Producer({**secured.client_config("carol", "c"), "error_cb": failures.append})
    wait_for("carol to be refused", lambda: producer.poll(0.2) is None or failures, timeout=15)
    assert failures[0].code() == KafkaError._AUTHENTICATION
