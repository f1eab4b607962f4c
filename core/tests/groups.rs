//! Consumer groups on one broker: the classic protocol as clients drive it, with real Kafka
//! encodings, and committed offsets and memberships read back after a crash.

mod support;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use seedlog_core::config::BrokerConfig;
use seedlog_core::group::GroupConfig;
use support::*;

const SESSION_MS: i32 = 10_000;

fn harness(initial_delay_ms: i64) -> Harness {
    let mut h = Harness::new(BrokerConfig {
        groups: GroupConfig {
            initial_rebalance_delay_ms: initial_delay_ms,
            ..GroupConfig::default()
        },
        ..BrokerConfig::default()
    });
    h.create_topic("t", 4, &[]);
    let ResponseKind::FindCoordinator(found) = h.call(
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(
            find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g")),
        ),
    ) else {
        panic!()
    };
    assert_eq!(found.error_code, 0, "{:?}", found.error_message);
    assert_eq!(found.node_id, BrokerId(1));
    h
}

fn join_request(
    group: &str,
    member: &str,
    instance: Option<&str>,
    protocols: &[&str],
) -> RequestKind {
    RequestKind::JoinGroup(
        join_group_request::JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_member_id(s(member))
            .with_group_instance_id(instance.map(s))
            .with_session_timeout_ms(SESSION_MS)
            .with_rebalance_timeout_ms(30_000)
            .with_protocol_type(s("consumer"))
            .with_protocols(
                protocols
                    .iter()
                    .map(|p| {
                        join_group_request::JoinGroupRequestProtocol::default()
                            .with_name(s(p))
                            .with_metadata(Bytes::from(format!("{member}:{p}")))
                    })
                    .collect(),
            ),
    )
}

/// Sends a JoinGroup on `conn` (answered now or later: see [`joined`]).
fn join(h: &mut Harness, conn: u64, member: &str) {
    h.send(
        conn,
        ApiKey::JoinGroup,
        7,
        join_request("g", member, None, &["range"]),
    );
}

fn joined(h: &mut Harness, conn: u64) -> join_group_response::JoinGroupResponse {
    match h.reply(conn) {
        Some(ResponseKind::JoinGroup(r)) => r,
        other => panic!("expected a JoinGroup answer on {conn}, got {other:?}"),
    }
}

fn sync(h: &mut Harness, conn: u64, member: &str, generation: i32, assignments: &[(&str, &str)]) {
    let request = sync_group_request::SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(member))
        .with_generation_id(generation)
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::from(a.to_string()))
                })
                .collect(),
        );
    h.send(conn, ApiKey::SyncGroup, 5, RequestKind::SyncGroup(request));
}

fn synced(h: &mut Harness, conn: u64) -> sync_group_response::SyncGroupResponse {
    match h.reply(conn) {
        Some(ResponseKind::SyncGroup(r)) => r,
        other => panic!("expected a SyncGroup answer on {conn}, got {other:?}"),
    }
}

fn heartbeat(h: &mut Harness, member: &str, generation: i32) -> i16 {
    let request = heartbeat_request::HeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(member))
        .with_generation_id(generation);
    match h.call(ApiKey::Heartbeat, 4, RequestKind::Heartbeat(request)) {
        ResponseKind::Heartbeat(r) => r.error_code,
        other => panic!("{other:?}"),
    }
}

/// Commits `offset` for t-`partition`; the partition's error code.
fn commit(
    h: &mut Harness,
    member: &str,
    generation: i32,
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> i16 {
    let request = offset_commit_request::OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(member))
        .with_generation_id_or_member_epoch(generation)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(offset)
                        .with_committed_metadata(Some(s(metadata))),
                ]),
        ]);
    match h.call(ApiKey::OffsetCommit, 8, RequestKind::OffsetCommit(request)) {
        ResponseKind::OffsetCommit(r) => r.topics[0].partitions[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// The committed (offset, metadata) of every partition of t.
fn committed(h: &mut Harness) -> Vec<(i64, String)> {
    let request = offset_fetch_request::OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(topic_name("t"))
                .with_partition_indexes(vec![0, 1, 2, 3]),
        ]));
    let ResponseKind::OffsetFetch(r) =
        h.call(ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request))
    else {
        panic!()
    };
    assert_eq!(r.error_code, 0);
    r.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.committed_offset,
                p.metadata.as_deref().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Two members form generation 1 with `a` as leader and their assignments handed out.
fn stable_pair(h: &mut Harness) -> (String, String, i32) {
    // Needs a harness with an initial delay: both join one phase.
    join(h, 1, "");
    join(h, 2, "");
    h.advance(3_000);
    let (a, b) = (joined(h, 1), joined(h, 2));
    let generation = a.generation_id;
    sync(h, 2, &b.member_id, generation, &[]);
    sync(
        h,
        1,
        &a.member_id,
        generation,
        &[(&a.member_id, "a-parts"), (&b.member_id, "b-parts")],
    );
    assert_eq!(synced(h, 1).assignment, Bytes::from("a-parts"));
    assert_eq!(synced(h, 2).assignment, Bytes::from("b-parts"));
    (a.member_id.to_string(), b.member_id.to_string(), generation)
}

#[test]
fn a_group_forms_after_the_initial_delay_and_rebalances_when_a_member_joins() {
    let mut h = harness(3_000);
    join(&mut h, 1, "");
    join(&mut h, 2, "");
    assert!(
        h.reply(1).is_none() && h.reply(2).is_none(),
        "the first join phase waits"
    );
    h.advance(2_000);
    assert!(h.reply(1).is_none(), "a newcomer extends the delay");
    h.advance(1_000);
    let (a, b) = (joined(&mut h, 1), joined(&mut h, 2));
    assert_eq!((a.error_code, b.error_code), (0, 0));
    assert_eq!(a.generation_id, 1);
    assert_eq!(b.generation_id, 1);
    assert_eq!(a.leader, a.member_id, "the first to arrive leads");
    assert_eq!(b.leader, a.member_id);
    assert_eq!(a.protocol_name.as_deref(), Some("range"));
    let mut listed: Vec<_> = a.members.iter().map(|m| m.member_id.to_string()).collect();
    listed.sort();
    let mut expected = vec![a.member_id.to_string(), b.member_id.to_string()];
    expected.sort();
    assert_eq!(listed, expected, "the leader sees every member");
    assert!(b.members.is_empty(), "followers see none");
    // A follower's SyncGroup waits for the leader's assignment to be durable.
    sync(&mut h, 2, &b.member_id, 1, &[]);
    assert!(h.reply(2).is_none());
    sync(
        &mut h,
        1,
        &a.member_id,
        1,
        &[(&a.member_id, "p0,p1"), (&b.member_id, "p2,p3")],
    );
    assert_eq!(synced(&mut h, 1).assignment, Bytes::from("p0,p1"));
    assert_eq!(synced(&mut h, 2).assignment, Bytes::from("p2,p3"));
    assert_eq!(heartbeat(&mut h, &a.member_id, 1), 0);
    // A third member: everyone must rejoin, and generation 2 has all three.
    join(&mut h, 3, "");
    assert!(h.reply(3).is_none());
    let rebalancing = ResponseError::RebalanceInProgress.code();
    assert_eq!(heartbeat(&mut h, &a.member_id, 1), rebalancing);
    assert_eq!(heartbeat(&mut h, &b.member_id, 1), rebalancing);
    join(&mut h, 1, &a.member_id);
    assert!(h.reply(1).is_none(), "b has not rejoined yet");
    join(&mut h, 2, &b.member_id);
    let (a2, b2, c2) = (joined(&mut h, 1), joined(&mut h, 2), joined(&mut h, 3));
    assert_eq!(
        (a2.generation_id, b2.generation_id, c2.generation_id),
        (2, 2, 2)
    );
    assert_eq!(a2.leader, a.member_id, "the leader keeps leading");
    assert_eq!(a2.members.len(), 3);
}

#[test]
fn a_silent_member_is_removed_after_its_session_and_the_rest_rebalance() {
    let mut h = harness(3_000);
    let (a, b, generation) = stable_pair(&mut h);
    for _ in 0..3 {
        h.advance(3_000);
        assert_eq!(heartbeat(&mut h, &a, generation), 0, "a keeps its session");
    }
    h.advance(3_000);
    // b said nothing for 12 s > its 10 s session: gone, and a is told to rejoin.
    assert_eq!(
        heartbeat(&mut h, &a, generation),
        ResponseError::RebalanceInProgress.code()
    );
    assert_eq!(
        heartbeat(&mut h, &b, generation),
        ResponseError::UnknownMemberId.code()
    );
    join(&mut h, 1, &a);
    let rejoined = joined(&mut h, 1);
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(rejoined.members.len(), 1);
}

#[test]
fn committed_offsets_and_the_membership_survive_a_crash() {
    let mut h = harness(3_000);
    let (a, b, generation) = stable_pair(&mut h);
    assert_eq!(commit(&mut h, &a, generation, "t", 0, 42, "from a"), 0);
    assert_eq!(commit(&mut h, &b, generation, "t", 2, 7, ""), 0);
    assert_eq!(commit(&mut h, &a, generation, "t", 0, 43, "again"), 0);
    let before = committed(&mut h);
    assert_eq!(before[0], (43, "again".to_string()));
    assert_eq!(before[1], (-1, String::new()), "never committed");
    assert_eq!(before[2], (7, String::new()));
    h.restart(true);
    assert_eq!(
        committed(&mut h),
        before,
        "every acknowledged commit is back"
    );
    // The generation and its members came back too: heartbeats carry on.
    assert_eq!(heartbeat(&mut h, &a, generation), 0);
    assert_eq!(heartbeat(&mut h, &b, generation), 0);
    sync(&mut h, 2, &b, generation, &[]);
    assert_eq!(synced(&mut h, 2).assignment, Bytes::from("b-parts"));
}

#[test]
fn stale_and_wrong_requests_get_the_errors_clients_expect() {
    let mut h = harness(3_000);
    let (a, _b, generation) = stable_pair(&mut h);
    let code = |e: ResponseError| e.code();
    assert_eq!(
        heartbeat(&mut h, &a, generation - 1),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        heartbeat(&mut h, "nobody", generation),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        commit(&mut h, &a, generation + 1, "t", 0, 1, ""),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        commit(&mut h, "nobody", generation, "t", 0, 1, ""),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        commit(&mut h, &a, generation, "nope", 0, 1, ""),
        code(ResponseError::UnknownTopicOrPartition)
    );
    assert_eq!(
        commit(&mut h, &a, generation, "t", 9, 1, ""),
        code(ResponseError::UnknownTopicOrPartition)
    );
    let long = "m".repeat(5000);
    assert_eq!(
        commit(&mut h, &a, generation, "t", 0, 1, &long),
        code(ResponseError::OffsetMetadataTooLarge)
    );
    // A commit from outside the protocol is refused while the group has members.
    assert_eq!(
        commit(&mut h, "", -1, "t", 0, 1, ""),
        code(ResponseError::UnknownMemberId)
    );
    let mut short_session = join_request("g", "", None, &["range"]);
    if let RequestKind::JoinGroup(r) = &mut short_session {
        r.session_timeout_ms = 100;
    }
    h.send(3, ApiKey::JoinGroup, 7, short_session);
    assert_eq!(
        joined(&mut h, 3).error_code,
        code(ResponseError::InvalidSessionTimeout)
    );
    h.send(
        3,
        ApiKey::JoinGroup,
        7,
        join_request("g", "", None, &["roundrobin"]),
    );
    assert_eq!(
        joined(&mut h, 3).error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let delete = |h: &mut Harness| {
        let request = delete_groups_request::DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(s("g")), GroupId(s("never"))]);
        match h.call(ApiKey::DeleteGroups, 2, RequestKind::DeleteGroups(request)) {
            ResponseKind::DeleteGroups(r) => {
                r.results.iter().map(|r| r.error_code).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        delete(&mut h),
        vec![
            code(ResponseError::NonEmptyGroup),
            code(ResponseError::GroupIdNotFound)
        ]
    );
    // Both leave; the group is empty and can go, offsets and all.
    let leave = leave_group_request::LeaveGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(s(&a)),
            leave_group_request::MemberIdentity::default().with_member_id(s(&_b)),
        ]);
    let ResponseKind::LeaveGroup(left) =
        h.call(ApiKey::LeaveGroup, 5, RequestKind::LeaveGroup(leave))
    else {
        panic!()
    };
    assert!(left.members.iter().all(|m| m.error_code == 0), "{left:?}");
    assert_eq!(
        commit(&mut h, "", -1, "t", 0, 5, "admin"),
        0,
        "now outside commits are fine"
    );
    assert_eq!(committed(&mut h)[0], (5, "admin".to_string()));
    assert_eq!(
        delete(&mut h),
        vec![0, code(ResponseError::GroupIdNotFound)]
    );
    assert_eq!(committed(&mut h)[0], (-1, String::new()));
    h.restart(true);
    assert_eq!(
        committed(&mut h)[0],
        (-1, String::new()),
        "the deletion is durable"
    );
}

#[test]
fn a_static_member_back_under_a_new_id_takes_its_place_without_a_rebalance() {
    let mut h = harness(0);
    h.send(
        1,
        ApiKey::JoinGroup,
        7,
        join_request("g", "", Some("host-1"), &["range"]),
    );
    let first = joined(&mut h, 1);
    sync(
        &mut h,
        1,
        &first.member_id,
        first.generation_id,
        &[(&first.member_id, "all")],
    );
    assert_eq!(synced(&mut h, 1).assignment, Bytes::from("all"));
    // The process restarts and joins again with its instance id but no member id.
    h.send(
        2,
        ApiKey::JoinGroup,
        7,
        join_request("g", "", Some("host-1"), &["range"]),
    );
    let again = joined(&mut h, 2);
    assert_eq!(again.error_code, 0);
    assert_ne!(again.member_id, first.member_id);
    assert_eq!(again.generation_id, first.generation_id, "no rebalance");
    sync(&mut h, 2, &again.member_id, again.generation_id, &[]);
    assert_eq!(
        synced(&mut h, 2).assignment,
        Bytes::from("all"),
        "its assignment is kept"
    );
    let old = heartbeat_request::HeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(first.member_id.clone())
        .with_group_instance_id(Some(s("host-1")))
        .with_generation_id(first.generation_id);
    let ResponseKind::Heartbeat(fenced) = h.call(ApiKey::Heartbeat, 4, RequestKind::Heartbeat(old))
    else {
        panic!()
    };
    assert_eq!(fenced.error_code, ResponseError::FencedInstanceId.code());
}

#[test]
fn clients_cannot_write_to_the_offsets_topic_and_groups_are_listed_and_described() {
    let mut h = harness(3_000);
    let (a, b, _) = stable_pair(&mut h);
    let (error, _) = h.produce("__consumer_offsets", 0, batch(1, 1000));
    assert_eq!(error, ResponseError::InvalidTopicException.code());
    let ResponseKind::ListGroups(listed) = h.call(
        ApiKey::ListGroups,
        4,
        RequestKind::ListGroups(Default::default()),
    ) else {
        panic!()
    };
    let groups: Vec<(String, String)> = listed
        .groups
        .iter()
        .map(|g| (g.group_id.to_string(), g.group_state.to_string()))
        .collect();
    assert_eq!(groups, vec![("g".to_string(), "Stable".to_string())]);
    let request = describe_groups_request::DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(s("g")), GroupId(s("unknown"))]);
    let ResponseKind::DescribeGroups(described) = h.call(
        ApiKey::DescribeGroups,
        5,
        RequestKind::DescribeGroups(request),
    ) else {
        panic!()
    };
    let g = &described.groups[0];
    assert_eq!(
        (g.group_state.as_str(), g.protocol_data.as_str()),
        ("Stable", "range")
    );
    let mut members: Vec<(String, Bytes)> = g
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), m.member_assignment.clone()))
        .collect();
    members.sort();
    let mut expected = vec![(a, Bytes::from("a-parts")), (b, Bytes::from("b-parts"))];
    expected.sort();
    assert_eq!(members, expected);
    assert_eq!(described.groups[1].group_state.as_str(), "Dead");
}

#[test]
fn a_commit_still_being_written_makes_a_stable_offset_fetch_wait() {
    let mut h = harness(3_000);
    let (a, _b, generation) = stable_pair(&mut h);
    assert_eq!(commit(&mut h, &a, generation, "t", 0, 10, ""), 0);
    h.hold_syncs = true;
    let request = offset_commit_request::OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(s(&a))
        .with_generation_id_or_member_epoch(generation)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic_name("t"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(20),
                ]),
        ]);
    h.send(
        1,
        ApiKey::OffsetCommit,
        8,
        RequestKind::OffsetCommit(request),
    );
    assert!(
        h.reply(1).is_none(),
        "not acknowledged before it is durable"
    );
    let fetch = |h: &mut Harness, stable: bool| {
        let request = offset_fetch_request::OffsetFetchRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_require_stable(stable)
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic_name("t"))
                    .with_partition_indexes(vec![0]),
            ]));
        h.send(5, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request));
        let Some(ResponseKind::OffsetFetch(r)) = h.reply(5) else {
            panic!()
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.committed_offset)
    };
    assert_eq!(
        fetch(&mut h, false),
        (0, 10),
        "only durable commits are shown"
    );
    assert_eq!(
        fetch(&mut h, true),
        (ResponseError::UnstableOffsetCommit.code(), -1),
        "a member taking the partition over is told to wait"
    );
    h.release_syncs();
    let Some(ResponseKind::OffsetCommit(done)) = h.reply(1) else {
        panic!()
    };
    assert_eq!(done.topics[0].partitions[0].error_code, 0);
    assert_eq!(fetch(&mut h, true), (0, 20));
}

#[test]
fn an_empty_groups_offsets_expire_after_the_retention_and_stay_gone() {
    let mut h = Harness::new(BrokerConfig {
        groups: GroupConfig {
            offsets_retention_ms: 60_000,
            offsets_retention_check_interval_ms: 10_000,
            ..GroupConfig::default()
        },
        ..BrokerConfig::default()
    });
    h.create_topic("t", 4, &[]);
    let find = find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g"));
    h.call(
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(find),
    );
    assert_eq!(commit(&mut h, "", -1, "t", 1, 77, ""), 0);
    for _ in 0..5 {
        h.advance(10_000);
    }
    assert_eq!(
        committed(&mut h)[1],
        (77, String::new()),
        "kept within the retention"
    );
    for _ in 0..3 {
        h.advance(10_000);
    }
    assert_eq!(committed(&mut h)[1], (-1, String::new()), "expired");
    h.restart(true);
    assert_eq!(
        committed(&mut h)[1],
        (-1, String::new()),
        "the expiry is durable"
    );
}
