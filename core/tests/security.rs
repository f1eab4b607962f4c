//! SASL and ACLs through one broker's Kafka API: credentials and ACLs made with the admin
//! APIs, clients authenticating with SCRAM and PLAIN, and what each principal may do.

mod support;

use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::*;
use seedlog_core::config::BrokerConfig;
use seedlog_core::security::acl::AuthorizerConfig;
use seedlog_core::security::scram::{client, Mechanism};
use seedlog_core::security::{Listener, SecurityProtocol};
use support::{batch, s, topic_name, Harness};

/// The admin connection: anonymous on a PLAINTEXT listener, a super user here.
const ADMIN: u64 = 1;

fn secured() -> Harness {
    let mut config = BrokerConfig::default();
    config.security.authorizer = AuthorizerConfig {
        enabled: true,
        super_users: vec!["User:ANONYMOUS".into()],
        allow_if_no_acl: false,
    };
    let mut h = Harness::new(config);
    h.create_topic("orders", 1, &[]);
    h.create_topic("other", 1, &[]);
    add_user(&mut h, "alice", "alice-secret", Mechanism::Sha512);
    h
}

fn add_user(h: &mut Harness, user: &str, password: &str, mechanism: Mechanism) {
    let salt = format!("salt-of-{user}").into_bytes();
    let salted = mechanism.salted_password(password.as_bytes(), &salt, 4096);
    let upsert = ScramCredentialUpsertion::default()
        .with_name(s(user))
        .with_mechanism(mechanism as i8)
        .with_iterations(4096)
        .with_salt(salt.into())
        .with_salted_password(salted.into());
    let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert]);
    let ResponseKind::AlterUserScramCredentials(r) = h.call(
        ApiKey::AlterUserScramCredentials,
        0,
        RequestKind::AlterUserScramCredentials(request),
    ) else {
        panic!()
    };
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
}

fn acl(kind: i8, name: &str, principal: &str, operation: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(kind)
        .with_resource_name(s(name))
        .with_resource_pattern_type(3)
        .with_principal(s(principal))
        .with_host(s("*"))
        .with_operation(operation)
        .with_permission_type(3)
}

fn create_acls(h: &mut Harness, conn: u64, acls: Vec<AclCreation>) -> Vec<i16> {
    let request = CreateAclsRequest::default().with_creations(acls);
    h.send(
        conn,
        ApiKey::CreateAcls,
        3,
        RequestKind::CreateAcls(request),
    );
    let Some(ResponseKind::CreateAcls(r)) = h.reply(conn) else {
        panic!()
    };
    r.results.iter().map(|r| r.error_code).collect()
}

fn sasl_listener() -> Listener {
    Listener {
        name: "SASL_PLAINTEXT".into(),
        protocol: SecurityProtocol::SaslPlaintext,
        tls_principal: None,
    }
}

fn handshake(h: &mut Harness, conn: u64, mechanism: &str) -> i16 {
    // A connection's first handshake announces it; a later one authenticates it again.
    if !h.asked.contains_key(&conn) {
        h.broker
            .handle_connect(conn, "10.0.0.5:40000", &sasl_listener());
    }
    let request = SaslHandshakeRequest::default().with_mechanism(s(mechanism));
    h.send(
        conn,
        ApiKey::SaslHandshake,
        1,
        RequestKind::SaslHandshake(request),
    );
    let Some(ResponseKind::SaslHandshake(r)) = h.reply(conn) else {
        panic!()
    };
    r.error_code
}

fn authenticate(h: &mut Harness, conn: u64, token: &[u8]) -> SaslAuthenticateResponse {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(token.to_vec().into());
    h.send(
        conn,
        ApiKey::SaslAuthenticate,
        2,
        RequestKind::SaslAuthenticate(request),
    );
    let Some(ResponseKind::SaslAuthenticate(r)) = h.reply(conn) else {
        panic!("no SaslAuthenticate answer")
    };
    r
}

/// A SCRAM-SHA-512 login as `user`; returns the last answer's error code.
fn scram_login(h: &mut Harness, conn: u64, user: &str, password: &str) -> i16 {
    assert_eq!(handshake(h, conn, "SCRAM-SHA-512"), 0);
    let first = client::first(user, "fyko+d2lbbFgONRv9qkxdawL");
    let answer = authenticate(h, conn, first.as_bytes());
    if answer.error_code != 0 {
        return answer.error_code;
    }
    let server_first = String::from_utf8(answer.auth_bytes.to_vec()).unwrap();
    let (last, expected) =
        client::last(Mechanism::Sha512, password, &first, &server_first).unwrap();
    let answer = authenticate(h, conn, last.as_bytes());
    if answer.error_code == 0 {
        assert_eq!(
            answer.auth_bytes.to_vec(),
            expected.into_bytes(),
            "the server proves itself"
        );
    }
    answer.error_code
}

fn produce_error(h: &mut Harness, conn: u64, topic: &str) -> i16 {
    h.produce_request(conn, -1, topic, 0, batch(1, 1_700_000_000_000));
    let Some(ResponseKind::Produce(r)) = h.reply(conn) else {
        panic!()
    };
    r.responses[0].partition_responses[0].error_code
}

fn fetch_error(h: &mut Harness, conn: u64, topic: &str) -> i16 {
    h.fetch_request(conn, topic, 0, 0, 0, 1 << 20);
    let Some(ResponseKind::Fetch(r)) = h.reply(conn) else {
        panic!()
    };
    r.responses[0].partitions[0].error_code
}

fn listed_topics(h: &mut Harness, conn: u64) -> Vec<String> {
    let request = MetadataRequest::default().with_topics(None);
    h.send(conn, ApiKey::Metadata, 12, RequestKind::Metadata(request));
    let Some(ResponseKind::Metadata(r)) = h.reply(conn) else {
        panic!()
    };
    r.topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect()
}

const TOPIC_DENIED: i16 = 29;
const CLUSTER_DENIED: i16 = 31;
const SASL_FAILED: i16 = 58;

#[test]
fn a_reader_of_one_topic_reads_it_and_nothing_else() {
    let mut h = secured();
    assert_eq!(
        produce_error(&mut h, ADMIN, "orders"),
        0,
        "the super user writes"
    );
    assert_eq!(
        create_acls(&mut h, ADMIN, vec![acl(2, "orders", "User:alice", 3)]),
        [0]
    );

    let alice = 2;
    assert_eq!(scram_login(&mut h, alice, "alice", "alice-secret"), 0);
    assert_eq!(fetch_error(&mut h, alice, "orders"), 0);
    assert_eq!(produce_error(&mut h, alice, "orders"), TOPIC_DENIED);
    assert_eq!(fetch_error(&mut h, alice, "other"), TOPIC_DENIED);
    assert_eq!(produce_error(&mut h, alice, "other"), TOPIC_DENIED);
    assert_eq!(
        listed_topics(&mut h, alice),
        ["orders"],
        "Metadata lists what she may describe"
    );
    assert_eq!(
        create_acls(&mut h, alice, vec![acl(2, "other", "User:alice", 2)]),
        [CLUSTER_DENIED],
        "she cannot grant herself more"
    );

    // Her ACL removed, she reads nothing.
    let filter = DeleteAclsFilter::default()
        .with_resource_type_filter(2)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(1)
        .with_principal_filter(Some(s("User:alice")))
        .with_host_filter(None)
        .with_operation(1)
        .with_permission_type(1);
    let request = DeleteAclsRequest::default().with_filters(vec![filter]);
    let ResponseKind::DeleteAcls(r) =
        h.call(ApiKey::DeleteAcls, 3, RequestKind::DeleteAcls(request))
    else {
        panic!()
    };
    assert_eq!(r.filter_results[0].matching_acls.len(), 1);
    assert_eq!(fetch_error(&mut h, alice, "orders"), TOPIC_DENIED);
    assert!(listed_topics(&mut h, alice).is_empty());
}

#[test]
fn wrong_passwords_and_unknown_users_are_refused_and_disconnected() {
    let mut h = secured();
    assert_eq!(scram_login(&mut h, 2, "alice", "guess"), SASL_FAILED);
    assert!(h.closed.contains(&2));
    assert_eq!(scram_login(&mut h, 3, "mallory", "x"), SASL_FAILED);
    assert!(h.closed.contains(&3));
    // PLAIN checks the same credential.
    assert_eq!(handshake(&mut h, 4, "PLAIN"), 0);
    assert_eq!(
        authenticate(&mut h, 4, b"\0alice\0guess").error_code,
        SASL_FAILED
    );
    assert_eq!(handshake(&mut h, 5, "PLAIN"), 0);
    assert_eq!(
        authenticate(&mut h, 5, b"\0alice\0alice-secret").error_code,
        0
    );
    assert_eq!(
        fetch_error(&mut h, 5, "orders"),
        TOPIC_DENIED,
        "authenticated, not authorized"
    );
    assert!(!h.closed.contains(&5));
}

#[test]
fn nothing_but_sasl_before_authentication() {
    let mut h = secured();
    h.broker
        .handle_connect(2, "10.0.0.5:40000", &sasl_listener());
    h.send(
        2,
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default()),
    );
    assert!(
        h.closed.contains(&2),
        "a request before SASL closes the connection"
    );
    assert_eq!(
        handshake(&mut h, 3, "GSSAPI"),
        33,
        "UNSUPPORTED_SASL_MECHANISM"
    );
}

#[test]
fn credentials_are_described_without_secrets_and_can_be_removed() {
    let mut h = secured();
    add_user(&mut h, "bob", "b", Mechanism::Sha256);
    let request = DescribeUserScramCredentialsRequest::default().with_users(None);
    let ResponseKind::DescribeUserScramCredentials(r) = h.call(
        ApiKey::DescribeUserScramCredentials,
        0,
        RequestKind::DescribeUserScramCredentials(request),
    ) else {
        panic!()
    };
    let users: Vec<(String, i8, i32)> = r
        .results
        .iter()
        .flat_map(|u| {
            u.credential_infos
                .iter()
                .map(|c| (u.user.to_string(), c.mechanism, c.iterations))
        })
        .collect();
    assert_eq!(users, [("alice".into(), 2, 4096), ("bob".into(), 1, 4096)]);

    let deletion = alter_user_scram_credentials_request::ScramCredentialDeletion::default()
        .with_name(s("alice"))
        .with_mechanism(2);
    let too_few = ScramCredentialUpsertion::default()
        .with_name(s("carol"))
        .with_mechanism(1)
        .with_iterations(10)
        .with_salt(vec![1].into())
        .with_salted_password(vec![2].into());
    let request = AlterUserScramCredentialsRequest::default()
        .with_deletions(vec![deletion])
        .with_upsertions(vec![too_few]);
    let ResponseKind::AlterUserScramCredentials(r) = h.call(
        ApiKey::AlterUserScramCredentials,
        0,
        RequestKind::AlterUserScramCredentials(request),
    ) else {
        panic!()
    };
    let codes: Vec<(String, i16)> = r
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [("alice".into(), 0), ("carol".into(), 93)],
        "UNACCEPTABLE_CREDENTIAL"
    );
    assert_eq!(
        scram_login(&mut h, 2, "alice", "alice-secret"),
        SASL_FAILED,
        "her credential is gone"
    );
}

#[test]
fn groups_need_their_acl_and_commits_their_topics() {
    let mut h = secured();
    let find = find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g"));
    let ResponseKind::FindCoordinator(found) = h.call(
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(find),
    ) else {
        panic!()
    };
    assert_eq!(found.error_code, 0, "{:?}", found.error_message);
    assert_eq!(
        create_acls(&mut h, ADMIN, vec![acl(2, "orders", "User:alice", 3)]),
        [0]
    );
    let alice = 2;
    assert_eq!(scram_login(&mut h, alice, "alice", "alice-secret"), 0);
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(s("consumer"));
    h.send(
        alice,
        ApiKey::JoinGroup,
        9,
        RequestKind::JoinGroup(join.clone()),
    );
    let Some(ResponseKind::JoinGroup(r)) = h.reply(alice) else {
        panic!()
    };
    assert_eq!(r.error_code, 30, "GROUP_AUTHORIZATION_FAILED");

    assert_eq!(
        create_acls(&mut h, ADMIN, vec![acl(3, "g", "User:alice", 3)]),
        [0]
    );
    let commit = |topic: &str| {
        offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(0),
            ])
    };
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![commit("orders"), commit("other")]);
    h.send(
        alice,
        ApiKey::OffsetCommit,
        8,
        RequestKind::OffsetCommit(request),
    );
    h.advance(100);
    let Some(ResponseKind::OffsetCommit(r)) = h.reply(alice) else {
        panic!("no OffsetCommit answer")
    };
    let codes: Vec<(String, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.partitions[0].error_code))
        .collect();
    assert_eq!(
        codes,
        [("orders".into(), 0), ("other".into(), TOPIC_DENIED)]
    );

    // Committed offsets of a topic she may not describe are not shown to her.
    let topic = |name: &str| {
        offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(topic_name(name))
            .with_partition_indexes(vec![0])
    };
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![topic("orders"), topic("other")]));
    h.send(
        alice,
        ApiKey::OffsetFetch,
        7,
        RequestKind::OffsetFetch(request),
    );
    h.advance(100);
    let Some(ResponseKind::OffsetFetch(r)) = h.reply(alice) else {
        panic!("no OffsetFetch answer")
    };
    let fetched: Vec<(String, i16, i64)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions[0].error_code,
                t.partitions[0].committed_offset,
            )
        })
        .collect();
    assert_eq!(
        fetched,
        [("orders".into(), 0, 0), ("other".into(), TOPIC_DENIED, -1)]
    );
}

/// Clients from before KIP-152 send bare SASL tokens after a SaslHandshake v0.
#[test]
fn bare_tokens_after_a_v0_handshake() {
    let mut h = secured();
    let conn = 2;
    h.broker
        .handle_connect(conn, "10.0.0.5:40000", &sasl_listener());
    let request = SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-512"));
    h.send(
        conn,
        ApiKey::SaslHandshake,
        0,
        RequestKind::SaslHandshake(request),
    );
    let Some(ResponseKind::SaslHandshake(r)) = h.reply(conn) else {
        panic!()
    };
    assert_eq!(r.error_code, 0);
    let bare = |h: &mut Harness, token: &[u8]| -> Vec<u8> {
        h.broker
            .handle_request(h.time(), conn, bytes::Bytes::copy_from_slice(token));
        h.drive();
        let frame = h
            .inbox
            .get_mut(&conn)
            .unwrap()
            .pop_front()
            .expect("a bare answer");
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        frame[4..].to_vec()
    };
    let first = client::first("alice", "nonce");
    let server_first = String::from_utf8(bare(&mut h, first.as_bytes())).unwrap();
    let (last, expected) =
        client::last(Mechanism::Sha512, "alice-secret", &first, &server_first).unwrap();
    assert_eq!(bare(&mut h, last.as_bytes()), expected.into_bytes());
    // Authenticated: requests are Kafka frames again.
    assert_eq!(fetch_error(&mut h, conn, "orders"), TOPIC_DENIED);
    assert!(!h.closed.contains(&conn));
}

/// KIP-368: with a session lifetime, a client authenticates again on its connection, as
/// the same principal, or is disconnected once the lifetime has passed.
#[test]
fn sessions_expire_unless_the_client_authenticates_again() {
    let mut config = BrokerConfig::default();
    config.security.reauthentication_ms = 1000;
    config.security.authorizer = AuthorizerConfig {
        enabled: true,
        super_users: vec![
            "User:ANONYMOUS".into(),
            "User:alice".into(),
            "User:bob".into(),
        ],
        allow_if_no_acl: false,
    };
    let mut h = Harness::new(config);
    h.create_topic("orders", 1, &[]);
    add_user(&mut h, "alice", "alice-secret", Mechanism::Sha512);
    add_user(&mut h, "bob", "bob-secret", Mechanism::Sha512);

    // The first login says how long the session lasts.
    assert_eq!(handshake(&mut h, 2, "SCRAM-SHA-512"), 0);
    let first = client::first("alice", "n1");
    let answer = authenticate(&mut h, 2, first.as_bytes());
    let server_first = String::from_utf8(answer.auth_bytes.to_vec()).unwrap();
    let (last, _) = client::last(Mechanism::Sha512, "alice-secret", &first, &server_first).unwrap();
    assert_eq!(
        authenticate(&mut h, 2, last.as_bytes()).session_lifetime_ms,
        1000
    );

    // One that authenticates again in time carries on past the first lifetime.
    assert_eq!(scram_login(&mut h, 3, "alice", "alice-secret"), 0);
    h.advance(600);
    assert_eq!(
        scram_login(&mut h, 3, "alice", "alice-secret"),
        0,
        "again, in place"
    );
    h.advance(600);
    assert_eq!(fetch_error(&mut h, 3, "orders"), 0);
    assert!(!h.closed.contains(&3));
    // The one that did not is disconnected at its next request.
    h.fetch_request(2, "orders", 0, 0, 0, 1 << 20);
    assert!(h.closed.contains(&2));
    // Authenticating again as someone else is refused.
    assert_eq!(scram_login(&mut h, 3, "bob", "bob-secret"), SASL_FAILED);
    assert!(h.closed.contains(&3));
}
