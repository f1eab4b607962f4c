"""Security with real clients: SASL PLAIN and SCRAM on a SASL listener, credentials and ACLs
made with confluent-kafka's admin client, and what each user may then do."""

import shutil
import subprocess
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

from conftest import ROOT, Broker, cluster_metadata, create, free_port, seedlog_binary, wait_for


def kcat_with_new_librdkafka(workdir):
    """kcat and the environment that runs it on the confluent-kafka wheel's librdkafka."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.kcat(workdir)


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


def make_certs(workdir, name, *extra):
    """Runs `seedlog certs` into workdir/name and returns that directory."""
    out = workdir / name
    subprocess.run([seedlog_binary(), "certs", "--dir", str(out), *extra], check=True,
                   capture_output=True)
    return out


class Tls:
    """A broker with PLAINTEXT for the administrator, SSL requiring client certificates
    from the development CA, and SASL_SSL, all with the authorizer on."""

    def __init__(self, workdir):
        self.certs = make_certs(workdir, "certs", "--clients", "alice")
        make_certs(workdir, "certs", "--clients", "old", "--expired-clients")  # same CA
        self.other_ca = make_certs(workdir, "other-ca", "--clients", "eve")
        self.broker = Broker(workdir / "data")
        self.ssl_port, self.sasl_ssl_port = free_port(), free_port()
        self.broker.extra_args = [
            "--listeners",
            f"PLAINTEXT://127.0.0.1:{self.broker.port},SSL://127.0.0.1:{self.ssl_port},"
            f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}",
            "--ssl-keystore-location", str(self.certs / "broker.pem"),
            "--ssl-truststore-location", str(self.certs / "ca.pem"),
            "--ssl-client-auth", "required",
            "--authorizer-class-name", "StandardAuthorizer",
            "--super-users", "User:ANONYMOUS",
        ]
        self.broker.start()
        self.admin = Secured.__new__(Secured)
        self.admin.broker = self.broker
        self.admin.admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})

    def ssl_config(self, client, ca_dir=None):
        ca_dir = ca_dir or self.certs
        return {
            "bootstrap.servers": f"127.0.0.1:{self.ssl_port}",
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.certs / "ca.pem"),
            "ssl.certificate.location": str(ca_dir / f"client-{client}.pem"),
            "ssl.key.location": str(ca_dir / f"client-{client}-key.pem"),
        }

    def sasl_ssl_config(self, user, password):
        return {
            "bootstrap.servers": f"127.0.0.1:{self.sasl_ssl_port}",
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(self.certs / "ca.pem"),
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
        }


@pytest.fixture
def tls(workdir):
    t = Tls(workdir)
    yield t
    if t.broker.alive():
        t.broker.kill()


def test_ssl_client_certificates_and_sasl_ssl_with_real_clients(tls):
    create(tls.admin.admin, "tls", 1)
    tls.admin.allow("CN=alice", ResourceType.TOPIC, "tls", AclOperation.WRITE)
    tls.admin.add_user("bob", "bob-secret")
    tls.admin.allow("bob", ResourceType.TOPIC, "tls", AclOperation.READ)
    for group in ("bobs", "bobs-python"):
        tls.admin.allow("bob", ResourceType.GROUP, group, AclOperation.READ)

    # Alice is who her certificate says: User:CN=alice may write.
    assert produce(tls.ssl_config("alice"), "tls", [b"one", b"two"]) == [None, None]
    # kcat over SSL with the same certificate.
    c = tls.ssl_config("alice")
    kcat = ["kcat", "-b", c["bootstrap.servers"], "-X", "security.protocol=SSL",
            "-X", f"ssl.ca.location={c['ssl.ca.location']}",
            "-X", f"ssl.certificate.location={c['ssl.certificate.location']}",
            "-X", f"ssl.key.location={c['ssl.key.location']}"]
    subprocess.run(kcat + ["-P", "-t", "tls"], input=b"three\n", check=True, timeout=30)
    # Bob reads them over SASL_SSL, with confluent-kafka and with kafka-python.
    seen, errors = consume(tls.sasl_ssl_config("bob", "bob-secret"), "tls", "bobs", 3)
    assert seen == [b"one", b"two", b"three"], errors
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(
        "tls", bootstrap_servers=f"127.0.0.1:{tls.sasl_ssl_port}", security_protocol="SASL_SSL",
        ssl_cafile=str(tls.certs / "ca.pem"), sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="bob", sasl_plain_password="bob-secret", group_id="bobs-python",
        auto_offset_reset="earliest", consumer_timeout_ms=10000,
    )
    assert [m.value for m in consumer] == [b"one", b"two", b"three"]
    consumer.close()
    # kcat reads over SASL_SSL too, on the librdkafka 2.x the confluent-kafka wheel ships:
    # Debian's kcat links librdkafka 2.0.2 with Cyrus SASL, whose SCRAM client-final repeats
    # the client nonce (r=<client nonce><client nonce><server nonce>), which a server that
    # checks the nonce as RFC 5802 asks (Kafka's does too) must refuse.
    s = tls.sasl_ssl_config("bob", "bob-secret")
    _, env = kcat_with_new_librdkafka(tls.certs)
    out = subprocess.run(
        ["kcat", "-b", s["bootstrap.servers"], "-X", "security.protocol=SASL_SSL",
         "-X", f"ssl.ca.location={s['ssl.ca.location']}", "-X", "sasl.mechanisms=SCRAM-SHA-512",
         "-X", "sasl.username=bob", "-X", "sasl.password=bob-secret",
         "-C", "-t", "tls", "-o", "beginning", "-e", "-q"],
        capture_output=True, timeout=30, env=env,
    )
    assert out.stdout.split() == [b"one", b"two", b"three"], out.stderr


@pytest.mark.parametrize("which", ["expired", "other CA"])
def test_bad_client_certificates_are_refused(tls, which):
    config = tls.ssl_config("old") if which == "expired" else tls.ssl_config("eve", tls.other_ca)
    failures, delivered = [], []
    producer = Producer({**config, "error_cb": failures.append, "message.timeout.ms": 5000})
    producer.produce("tls", b"never", on_delivery=lambda err, _msg: delivered.append(err))
    wait_for("the TLS failure", lambda: producer.poll(0.2) is None or failures, timeout=15)
    assert failures[0].code() in (KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN), failures
    producer.flush(10)
    assert len(delivered) == 1 and delivered[0] is not None, "the record was not delivered"
    assert "TLS handshake failed" in tls.broker.log()


def peer_hello(port, secret, broker_id):
    """Dials a broker's peer listener and answers its challenge as `broker_id` would with
    `secret`; returns the open socket."""
    import hashlib
    import hmac
    import socket
    import struct
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    hello = b""
    while len(hello) < 21:
        hello += s.recv(21 - len(hello))
    assert hello[:5] == b"SLPR\x01", hello
    mac = hmac.new(secret, b"SLPR" + hello[5:] + struct.pack(">i", broker_id), hashlib.sha256).digest()
    s.sendall(b"SLPR\x01" + struct.pack(">i", broker_id) + mac)
    return s


def three_brokers(workdir, *extra):
    """Three voters with `extra` flags, started, and the quorum's metadata seen; returns their
    peer ports and the brokers by id (the caller kills them)."""
    ports = {i: free_port() for i in (1, 2, 3)}
    voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in ports.items())
    brokers = {
        i: Broker(workdir / f"node{i}",
                  ["--broker-id", str(i), "--controller-quorum-voters", voters, *extra])
        for i in ports
    }
    for b in brokers.values():
        b.start()
    admin = AdminClient({"bootstrap.servers": brokers[1].bootstrap})
    wait_for("three brokers", lambda: cluster_metadata(admin), timeout=30)
    return ports, brokers


def test_peers_prove_the_shared_secret_and_cannot_speak_for_another(workdir):
    import struct
    ports, brokers = three_brokers(workdir, "--peer-secret", "s3cret")
    try:
        admin = AdminClient({"bootstrap.servers": brokers[1].bootstrap})
        create(admin, "replicated", 1, replication=3)

        # A stranger without the secret is refused at the handshake.
        peer_hello(ports[1], b"guess", 2).close()
        wait_for("the refusal", lambda: "did not prove the shared secret" in brokers[1].log())
        # A broker that proves itself cannot send frames in another broker's name: a
        # PeerFrame (protobuf field 1, `from`) claiming broker 3 on broker 2's connection.
        s = peer_hello(ports[1], b"s3cret", 2)
        body = b"\x08\x03"
        s.sendall(struct.pack(">I", len(body)) + body)
        wait_for("the forged frame refused", lambda: "in another broker's name" in brokers[1].log())
        s.close()
        # The cluster still replicates.
        assert produce({"bootstrap.servers": brokers[1].bootstrap, "acks": "all"}, "replicated", [b"x"]) == [None]
    finally:
        for b in brokers.values():
            if b.alive():
                b.kill()


def seedlog(*args):
    out = subprocess.run([seedlog_binary(), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_cli_manages_users_and_acls(secured):
    target = ["--bootstrap-server", secured.broker.bootstrap]
    create(secured.admin, "cli", 1)
    assert produce({"bootstrap.servers": secured.broker.bootstrap}, "cli", [b"hello"]) == [None]
    seedlog("users", "create", *target, "--user", "dave", "--password", "d-secret")
    assert "dave\tSCRAM-SHA-512 (iterations 8192)" in seedlog("users", "list", *target)
    for args in (["--topic", "cli", "--operation", "Read"], ["--group", "daves", "--operation", "read"]):
        seedlog("acls", "create", *target, "--principal", "User:dave", *args)
    listing = seedlog("acls", "list", *target, "--principal", "User:dave")
    assert "topic cli\tallow User:dave Read from *" in listing, listing
    assert "group daves\tallow User:dave Read from *" in listing, listing

    dave = secured.client_config("dave", "d-secret")
    seen, errors = consume(dave, "cli", "daves", 1)
    assert seen == [b"hello"], errors

    assert "1 ACL(s) deleted" in seedlog("acls", "delete", *target, "--topic", "cli")
    seedlog("users", "delete", *target, "--user", "dave")
    assert "dave" not in seedlog("users", "list", *target)
    bad = subprocess.run([seedlog_binary(), "acls", "create", *target, "--topic", "x",
                          "--principal", "User:dave", "--operation", "Fly"], capture_output=True, text=True)
    assert bad.returncode != 0 and "operation must be one of" in bad.stderr


KAFKAJS = ROOT / "tests" / "kafkajs"


@pytest.mark.skipif(
    shutil.which("node") is None or not (KAFKAJS / "node_modules" / "kafkajs").exists(),
    reason="node or kafkajs not installed (scripts/test-deps installs kafkajs where node is)",
)
def test_kafkajs_over_sasl_ssl(tls):
    import json
    create(tls.admin.admin, "js", 1)
    tls.admin.add_user("erin", "erin-secret")
    for kind, name, op in ((ResourceType.TOPIC, "js", AclOperation.ALL),
                           (ResourceType.GROUP, "js-readers", AclOperation.READ)):
        tls.admin.allow("erin", kind, name, op)
    out = subprocess.run(
        ["node", str(KAFKAJS / "secure.js"), f"localhost:{tls.sasl_ssl_port}",
         str(tls.certs / "ca.pem"), "erin", "erin-secret", "js", "js-readers", "20"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [f"js-{i}" for i in range(20)]


def test_clients_authenticate_again_when_sessions_have_a_lifetime(workdir):
    s = Secured.__new__(Secured)
    s.broker = Broker(workdir / "data")
    s.sasl_port = free_port()
    s.broker.extra_args = [
        "--listeners", f"PLAINTEXT://127.0.0.1:{s.broker.port},SASL_PLAINTEXT://127.0.0.1:{s.sasl_port}",
        "--connections-max-reauth-ms", "1500",
    ]
    s.broker.start()
    try:
        s.admin = AdminClient({"bootstrap.servers": s.broker.bootstrap})
        create(s.admin, "long", 1)
        s.add_user("frank", "f-secret")
        producer = Producer({**s.client_config("frank", "f-secret"), "acks": "all"})
        errors = []
        deadline = time.time() + 5
        sent = 0
        while time.time() < deadline:
            producer.produce("long", b"v", on_delivery=lambda err, _m: errors.append(err))
            sent += 1
            producer.poll(0.1)
        producer.flush(20)
        assert errors == [None] * sent
        # librdkafka authenticated again on its connection before each lifetime ran out.
        assert "again=true" in s.broker.log(), s.broker.log()
        assert "session expired" not in s.broker.log()
    finally:
        s.broker.kill()


def test_a_large_first_request_after_authentication_is_taken(secured):
    """Found by the TLS benchmark: the reader had read the pre-authentication limit
    (512 KiB) before the client authenticated, so a connection whose first request was a
    large produce was closed as oversized."""
    create(secured.admin, "big", 1)
    secured.add_user("gail", "g-secret")
    secured.allow("gail", ResourceType.TOPIC, "big", AclOperation.WRITE)
    errors = produce(secured.client_config("gail", "g-secret"), "big", [b"x" * 900_000])
    assert errors == [None], errors
    assert "frame size out of bounds" not in secured.broker.log()


def test_a_renewed_keystore_is_served_without_a_restart(tls, workdir):
    import shutil as sh
    create(tls.admin.admin, "renew", 1)
    tls.admin.allow("CN=alice", ResourceType.TOPIC, "renew", AclOperation.WRITE)
    assert produce(tls.ssl_config("alice"), "renew", [b"old"]) == [None]
    # A keystore from another CA replaces the file: new connections get the new certificate
    # (clients that trust only the old CA are refused), and the broker never stopped.
    renewed = make_certs(workdir, "renewed", "--clients", "alice")
    sh.copy(renewed / "broker.pem", tls.certs / "broker.pem")
    # Alice keeps her certificate (the broker's truststore is unchanged); she now checks the
    # broker against the new CA.
    new_ca = {**tls.ssl_config("alice"), "ssl.ca.location": str(renewed / "ca.pem"),
              "message.timeout.ms": 3000}
    wait_for("the renewed certificate", lambda: produce(new_ca, "renew", [b"new"]) == [None], 30)
    assert "TLS keystore reloaded" in tls.broker.log()
    old_ca = {**tls.ssl_config("alice"), "message.timeout.ms": 3000}
    assert produce(old_ca, "renew", [b"refused"])[0] is not None
    assert tls.broker.alive()


def test_brokers_talk_over_mutual_tls(workdir):
    import socket
    certs = make_certs(workdir, "peer-certs")
    ports, brokers = three_brokers(
        workdir, "--peer-secret", "s3cret", "--inter-broker-security-protocol", "SSL",
        "--ssl-keystore-location", str(certs / "broker.pem"),
        "--ssl-truststore-location", str(certs / "ca.pem"))
    try:
        admin = AdminClient({"bootstrap.servers": brokers[1].bootstrap})
        create(admin, "over-tls", 1, replication=3)
        config = {"bootstrap.servers": brokers[2].bootstrap, "acks": "all"}
        assert produce(config, "over-tls", [b"a", b"b"]) == [None, None]
        # Plaintext on the peer port is no peer: the TLS handshake refuses it.
        s = socket.create_connection(("127.0.0.1", ports[1]), timeout=5)
        s.sendall(b"SLPR\x01" + b"\x00" * 40)
        s.close()
        wait_for("the refusal", lambda: "refusing a peer connection" in brokers[1].log())
    finally:
        for b in brokers.values():
            if b.alive():
                b.kill()
