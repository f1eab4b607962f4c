//! Transactions on one broker, driven in-process with real Kafka request encodings: the
//! coordinator's state machine, markers, the last stable offset and read_committed.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use seedlog_core::batch;
use seedlog_core::config::BrokerConfig;
use seedlog_core::group::GroupConfig;

mod support;
use support::*;

const TXN: &str = "tx-1";

fn harness() -> Harness {
    let mut h = Harness::new(BrokerConfig {
        groups: GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        },
        ..BrokerConfig::default()
    });
    h.create_topic("t", 2, &[]);
    h
}

/// FindCoordinator for a transactional id: (error, node).
fn find(h: &mut Harness, id: &str) -> (i16, i32) {
    let request = find_coordinator_request::FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_coordinator_keys(vec![s(id)]);
    let ResponseKind::FindCoordinator(r) = h.call(
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(request),
    ) else {
        panic!()
    };
    (r.coordinators[0].error_code, r.coordinators[0].node_id.0)
}

/// Sends a request and drives the broker until it is answered.
fn ask(h: &mut Harness, api: ApiKey, version: i16, request: RequestKind) -> ResponseKind {
    h.send(1, api, version, request);
    for _ in 0..50 {
        if let Some(r) = h.reply(1) {
            return r;
        }
        h.advance(10);
    }
    panic!("{api:?} got no answer")
}

/// InitProducerId for `id`, retried while the coordinator says to: (error, pid, epoch).
fn init(h: &mut Harness, id: &str, timeout_ms: i32) -> (i16, i64, i16) {
    for _ in 0..20 {
        let request = init_producer_id_request::InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s(id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let ResponseKind::InitProducerId(r) = ask(
            h,
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(request),
        ) else {
            panic!()
        };
        if r.error_code != ResponseError::ConcurrentTransactions.code() {
            return (r.error_code, r.producer_id.0, r.producer_epoch);
        }
        h.advance(100);
    }
    panic!("InitProducerId never settled")
}

fn add_partitions(h: &mut Harness, pid: i64, epoch: i16, partitions: &[i32]) -> Vec<i16> {
    let request = add_partitions_to_txn_request::AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(TXN)))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(topic_name("t"))
                .with_partitions(partitions.to_vec()),
        ]);
    let ResponseKind::AddPartitionsToTxn(r) = ask(
        h,
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(request),
    ) else {
        panic!()
    };
    r.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect()
}

fn end(h: &mut Harness, pid: i64, epoch: i16, commit: bool) -> i16 {
    let request = end_txn_request::EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(TXN)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let ResponseKind::EndTxn(r) = ask(h, ApiKey::EndTxn, 3, RequestKind::EndTxn(request)) else {
        panic!()
    };
    r.error_code
}

/// EndTxn v5 (KIP-890): (error, the producer id and epoch of the next transaction).
fn end_v5(h: &mut Harness, pid: i64, epoch: i16, commit: bool) -> (i16, i64, i16) {
    let request = end_txn_request::EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(TXN)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let ResponseKind::EndTxn(r) = ask(h, ApiKey::EndTxn, 5, RequestKind::EndTxn(request)) else {
        panic!()
    };
    (r.error_code, r.producer_id.0, r.producer_epoch)
}

/// `n` records in a transactional batch of the producer, starting at `seq`.
fn txn_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("txn-{seq}-{i}").into_bytes())
        .collect();
    let records: Vec<batch::KeyAndValue<'_>> =
        values.iter().map(|v| (None, Some(&v[..]))).collect();
    let mut b: BytesMut = batch::txn_data_batch(1000, pid, epoch, &records);
    batch::stamp_producer(&mut b, pid, epoch, seq);
    b.freeze()
}

/// A read_committed fetch from `offset`: (last stable offset, record offsets, aborted).
fn fetch_committed(
    h: &mut Harness,
    partition: i32,
    offset: i64,
) -> (i64, Vec<i64>, Vec<(i64, i64)>) {
    let request =
        seedlog_core::wire::fetch_request([("t", partition, offset)], 0, 1 << 20, 1 << 20);
    let RequestKind::Fetch(request) = request else {
        panic!()
    };
    let request = RequestKind::Fetch(request.with_isolation_level(1));
    let ResponseKind::Fetch(r) = ask(h, ApiKey::Fetch, 12, request) else {
        panic!()
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    let records = offsets_in(p.records.clone().unwrap_or_default());
    (p.last_stable_offset, records, aborted)
}

fn list_offset_committed(h: &mut Harness, partition: i32) -> i64 {
    use kafka_protocol::messages::list_offsets_request::*;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(1)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name("t"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let ResponseKind::ListOffsets(r) =
        ask(h, ApiKey::ListOffsets, 6, RequestKind::ListOffsets(request))
    else {
        panic!()
    };
    r.topics[0].partitions[0].offset
}

#[test]
fn a_committed_transaction_becomes_visible_whole_and_an_aborted_one_is_listed() {
    let mut h = harness();
    assert_eq!(find(&mut h, TXN), (0, 1), "creates __transaction_state");
    let (err, pid, epoch) = init(&mut h, TXN, 60_000);
    assert_eq!((err, epoch), (0, 0));
    assert!(pid >= 0);

    // A plain record before, then the transaction's records in both partitions.
    assert_eq!(h.produce("t", 0, batch(1, 1000)), (0, 0));
    assert_eq!(add_partitions(&mut h, pid, epoch, &[0, 1]), vec![0, 0]);
    assert_eq!(h.produce("t", 0, txn_batch(pid, epoch, 0, 2)), (0, 1));
    assert_eq!(h.produce("t", 1, txn_batch(pid, epoch, 0, 3)), (0, 0));
    assert_eq!(h.produce("t", 0, batch(1, 1000)), (0, 3));

    // Open: read_committed stops at the transaction's first record.
    let (lso, records, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!((lso, records, aborted), (1, vec![0], vec![]));
    assert_eq!(list_offset_committed(&mut h, 0), 1);
    assert_eq!(
        h.fetch("t", 0, 0, 1 << 20).2,
        vec![0, 1, 2, 3],
        "read_uncommitted sees all"
    );

    assert_eq!(end(&mut h, pid, epoch, true), 0);
    h.advance(10);
    // The commit marker took offset 4 of partition 0 and 3 of partition 1 (clients skip
    // control records; this decoder lists them).
    let (lso, records, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!((lso, records, aborted), (5, vec![0, 1, 2, 3, 4], vec![]));
    assert_eq!(fetch_committed(&mut h, 1, 0).0, 4);
    assert_eq!(
        end(&mut h, pid, epoch, true),
        0,
        "a retried commit is answered again"
    );

    // The next transaction aborts: read_committed gets it listed as aborted.
    assert_eq!(add_partitions(&mut h, pid, epoch, &[0]), vec![0]);
    assert_eq!(h.produce("t", 0, txn_batch(pid, epoch, 2, 2)), (0, 5));
    assert_eq!(end(&mut h, pid, epoch, false), 0);
    h.advance(10);
    let (lso, _, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!((lso, aborted), (8, vec![(pid, 5)]));
    assert_eq!(
        fetch_committed(&mut h, 0, 8).2,
        vec![],
        "only aborts in the range"
    );
    assert_eq!(
        end(&mut h, pid, epoch, true),
        ResponseError::InvalidTxnState.code()
    );
}

#[test]
fn a_new_incarnation_fences_the_old_and_aborts_what_it_left_open() {
    let mut h = harness();
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, 60_000);
    assert_eq!(add_partitions(&mut h, pid, epoch, &[0]), vec![0]);
    assert_eq!(h.produce("t", 0, txn_batch(pid, epoch, 0, 2)), (0, 0));

    // The producer restarts with the same transactional id.
    let (err, pid2, epoch2) = init(&mut h, TXN, 60_000);
    assert_eq!(err, 0);
    assert_eq!(pid2, pid, "a transactional id keeps its producer id");
    assert!(epoch2 > epoch);
    let (lso, _, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!(
        (lso, aborted),
        (3, vec![(pid, 0)]),
        "the open transaction was aborted"
    );

    // The old incarnation is fenced, at the coordinator and in the partition.
    assert_eq!(
        add_partitions(&mut h, pid, epoch, &[0]),
        vec![ResponseError::ProducerFenced.code()]
    );
    assert_eq!(
        end(&mut h, pid, epoch, true),
        ResponseError::ProducerFenced.code()
    );
    let (err, _) = h.produce("t", 0, txn_batch(pid, epoch, 2, 1));
    assert_eq!(err, ResponseError::InvalidProducerEpoch.code());
}

#[test]
fn a_transaction_left_open_past_its_timeout_is_aborted() {
    let (mut h, pid, epoch) = open_transaction(
        seedlog_core::txn::TxnConfig {
            abort_check_interval_ms: 100,
            ..Default::default()
        },
        1_000,
    );
    h.produce("t", 0, txn_batch(pid, epoch, 0, 1));
    assert_eq!(fetch_committed(&mut h, 0, 0).0, 0);
    for _ in 0..20 {
        h.advance(100);
    }
    let (lso, _, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!((lso, aborted), (2, vec![(pid, 0)]));
    assert_eq!(
        end(&mut h, pid, epoch, true),
        ResponseError::ProducerFenced.code()
    );
}

#[test]
fn a_transaction_times_out_by_the_monotonic_clock_whatever_the_wall_clock_does() {
    let txns = seedlog_core::txn::TxnConfig {
        abort_check_interval_ms: 100,
        ..Default::default()
    };
    let (mut h, pid, epoch) = open_transaction(txns, 10_000);
    h.produce("t", 0, txn_batch(pid, epoch, 0, 1));
    // A wall clock stepped a day forward fires no timeout early...
    h.wall_offset = 86_400_000;
    h.advance(1_000);
    assert_eq!(fetch_committed(&mut h, 0, 0).0, 0, "still open");
    // ... and one stepped a day back holds none back.
    h.wall_offset = -86_400_000;
    for _ in 0..100 {
        h.advance(100);
    }
    let (lso, _, aborted) = fetch_committed(&mut h, 0, 0);
    assert_eq!(
        (lso, aborted),
        (2, vec![(pid, 0)]),
        "aborted once 10 s passed"
    );
}

#[test]
fn unknown_partitions_and_ids_get_kafkas_errors() {
    let mut h = harness();
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, 60_000);
    assert_eq!(
        add_partitions(&mut h, pid, epoch, &[0, 7]),
        vec![
            ResponseError::OperationNotAttempted.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
    assert_eq!(
        add_partitions(&mut h, pid + 1, epoch, &[0]),
        vec![ResponseError::InvalidProducerIdMapping.code()]
    );
    assert_eq!(
        end(&mut h, pid, epoch, true),
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(
        init(&mut h, TXN, 0).0,
        ResponseError::InvalidTransactionTimeout.code()
    );
    // A client may not write markers of its own.
    let marker = batch::txn_marker_batch(pid, epoch, true, 0, 1, 1000).freeze();
    assert_eq!(
        h.produce("t", 0, marker).0,
        ResponseError::InvalidRecord.code()
    );
}

#[test]
fn offsets_sent_in_a_transaction_count_only_once_it_commits() {
    let mut h = harness();
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, 60_000);
    let group = "g";
    let request = add_offsets_to_txn_request::AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(s(TXN)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(s(group)));
    let ResponseKind::AddOffsetsToTxn(r) = ask(
        &mut h,
        ApiKey::AddOffsetsToTxn,
        3,
        RequestKind::AddOffsetsToTxn(request),
    ) else {
        panic!()
    };
    assert_eq!(r.error_code, 0);
    let gc = find_coordinator_request::FindCoordinatorRequest::default()
        .with_coordinator_keys(vec![s(group)]);
    ask(
        &mut h,
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(gc),
    );
    let commit = |offset: i64| {
        RequestKind::TxnOffsetCommit(
            txn_offset_commit_request::TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(s(TXN)))
                .with_group_id(GroupId(s(group)))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_generation_id(-1)
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic_name("t"))
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1),
                        ]),
                ]),
        )
    };
    let ResponseKind::TxnOffsetCommit(r) = ask(&mut h, ApiKey::TxnOffsetCommit, 3, commit(42))
    else {
        panic!()
    };
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let fetch_as = |h: &mut Harness, require_stable: bool| {
        let request = offset_fetch_request::OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_require_stable(require_stable)
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic_name("t"))
                    .with_partition_indexes(vec![0]),
            ]));
        let ResponseKind::OffsetFetch(r) =
            ask(h, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request))
        else {
            panic!()
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.committed_offset)
    };
    let fetched = |h: &mut Harness| fetch_as(h, false).1;
    assert_eq!(
        fetched(&mut h),
        -1,
        "not visible while the transaction is open"
    );
    assert_eq!(
        fetch_as(&mut h, true),
        (ResponseError::UnstableOffsetCommit.code(), -1),
        "require_stable waits for the open transaction (KIP-447)"
    );
    assert_eq!(end(&mut h, pid, epoch, true), 0);
    h.advance(10);
    assert_eq!(fetched(&mut h), 42);
    assert_eq!(fetch_as(&mut h, true), (0, 42), "stable once committed");

    // Restarted, the coordinator reads the committed transaction's offsets back.
    h.restart(false);
    find(&mut h, TXN);
    ask(
        &mut h,
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(
            find_coordinator_request::FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![s(group)]),
        ),
    );
    h.advance(10);
    assert_eq!(fetched(&mut h), 42);
    let (err, pid2, epoch2) = init(&mut h, TXN, 60_000);
    assert_eq!(
        (err, pid2, epoch2),
        (0, pid, epoch + 1),
        "the id's state survived"
    );
}

#[test]
fn end_txn_v5_bumps_the_epoch_so_a_late_request_of_the_ended_transaction_is_fenced() {
    let mut h = harness();
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, 60_000);
    assert_eq!(add_partitions(&mut h, pid, epoch, &[0]), vec![0]);
    assert_eq!(h.produce("t", 0, txn_batch(pid, epoch, 0, 2)), (0, 0));
    assert_eq!(end_v5(&mut h, pid, epoch, true), (0, pid, epoch + 1));
    h.advance(10);
    assert_eq!(
        end_v5(&mut h, pid, epoch, true),
        (0, pid, epoch + 1),
        "a retry with the epoch before the bump is answered again"
    );
    assert_eq!(
        end_v5(&mut h, pid, epoch, false).0,
        ResponseError::ProducerFenced.code(),
        "an abort of a committed transaction is not"
    );

    // A produce of the ended transaction, arriving late, is fenced by the marker's epoch.
    assert_eq!(
        h.produce("t", 0, txn_batch(pid, epoch, 2, 1)).0,
        ResponseError::InvalidProducerEpoch.code()
    );
    // The next transaction runs on the new epoch, its sequences from 0.
    let next = epoch + 1;
    assert_eq!(add_partitions(&mut h, pid, next, &[0]), vec![0]);
    assert_eq!(h.produce("t", 0, txn_batch(pid, next, 0, 1)), (0, 3));
    assert_eq!(end_v5(&mut h, pid, next, true), (0, pid, next + 1));
    h.advance(10);
    let (lso, records, _) = fetch_committed(&mut h, 0, 0);
    assert_eq!((lso, records), (5, vec![0, 1, 2, 3, 4]));
}

/// AddOffsetsToTxn for group "g", after finding its coordinator: the error.
fn add_offsets(h: &mut Harness, pid: i64, epoch: i16) -> i16 {
    let gc = find_coordinator_request::FindCoordinatorRequest::default()
        .with_coordinator_keys(vec![s("g")]);
    ask(
        h,
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(gc),
    );
    let request = add_offsets_to_txn_request::AddOffsetsToTxnRequest::default()
        .with_transactional_id(TransactionalId(s(TXN)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(s("g")));
    let ResponseKind::AddOffsetsToTxn(r) = ask(
        h,
        ApiKey::AddOffsetsToTxn,
        3,
        RequestKind::AddOffsetsToTxn(request),
    ) else {
        panic!()
    };
    r.error_code
}

/// TxnOffsetCommit of `offset` for partition t-0 in group "g": the error.
fn txn_offset_commit(h: &mut Harness, pid: i64, epoch: i16, offset: i64) -> i16 {
    use txn_offset_commit_request::*;
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s(TXN)))
        .with_group_id(GroupId(s("g")))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
            .with_name(topic_name("t"))
            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)])]);
    let ResponseKind::TxnOffsetCommit(r) = ask(
        h,
        ApiKey::TxnOffsetCommit,
        3,
        RequestKind::TxnOffsetCommit(request),
    ) else {
        panic!()
    };
    r.topics[0].partitions[0].error_code
}

/// Group "g"'s stable committed offset of t-0: (error, offset).
fn stable_offset(h: &mut Harness) -> (i16, i64) {
    let request = offset_fetch_request::OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_require_stable(true)
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(topic_name("t"))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(r) =
        ask(h, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(request))
    else {
        panic!()
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

#[test]
fn offsets_of_an_ended_transaction_arriving_late_are_fenced_not_committed_later() {
    let mut h = harness();
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, 60_000);
    assert_eq!(add_offsets(&mut h, pid, epoch), 0);
    assert_eq!(txn_offset_commit(&mut h, pid, epoch, 10), 0);
    assert_eq!(end_v5(&mut h, pid, epoch, true), (0, pid, epoch + 1));
    h.advance(10);
    assert_eq!(stable_offset(&mut h), (0, 10));

    // A resend of the first transaction's commit, delivered after it ended: its epoch is
    // older than the marker's, so it cannot ride on the next transaction.
    assert_eq!(
        txn_offset_commit(&mut h, pid, epoch, 5),
        ResponseError::InvalidProducerEpoch.code()
    );
    let next = epoch + 1;
    assert_eq!(add_offsets(&mut h, pid, next), 0);
    assert_eq!(txn_offset_commit(&mut h, pid, next, 20), 0);
    assert_eq!(end_v5(&mut h, pid, next, true).0, 0);
    h.advance(10);
    assert_eq!(stable_offset(&mut h), (0, 20));

    // Read back after a restart, the same.
    h.restart(false);
    find(&mut h, TXN);
    let gc = find_coordinator_request::FindCoordinatorRequest::default()
        .with_coordinator_keys(vec![s("g")]);
    ask(
        &mut h,
        ApiKey::FindCoordinator,
        4,
        RequestKind::FindCoordinator(gc),
    );
    h.advance(10);
    assert_eq!(stable_offset(&mut h), (0, 20));
}

/// DescribeTransactions for one id: its error code.
fn describe_error(h: &mut Harness, id: &str) -> i16 {
    let request = describe_transactions_request::DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(s(id))]);
    let ResponseKind::DescribeTransactions(r) = ask(
        h,
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(request),
    ) else {
        panic!()
    };
    r.transaction_states[0].error_code
}

/// A one-partition topic `t` on a broker with these transaction settings, and a
/// transaction of `TXN` (timeout `timeout_ms`) open on `t-0`: (harness, producer id, epoch).
fn open_transaction(txns: seedlog_core::txn::TxnConfig, timeout_ms: i32) -> (Harness, i64, i16) {
    let mut h = Harness::new(BrokerConfig {
        txns,
        ..BrokerConfig::default()
    });
    h.create_topic("t", 1, &[]);
    find(&mut h, TXN);
    let (_, pid, epoch) = init(&mut h, TXN, timeout_ms);
    assert_eq!(add_partitions(&mut h, pid, epoch, &[0]), vec![0]);
    (h, pid, epoch)
}

/// [`open_transaction`] on a broker whose idle transactional ids expire after
/// `expiration_ms`.
fn expiring_harness(expiration_ms: i64) -> (Harness, i64, i16) {
    let txns = seedlog_core::txn::TxnConfig {
        abort_check_interval_ms: 100,
        id_expiration_ms: expiration_ms,
        ..Default::default()
    };
    open_transaction(txns, 60_000)
}

#[test]
fn an_idle_transactional_id_expires_and_starts_afresh() {
    let (mut h, pid, epoch) = expiring_harness(5_000);
    h.produce("t", 0, txn_batch(pid, epoch, 0, 1));
    assert_eq!(end(&mut h, pid, epoch, true), 0);
    // Used recently: remembered.
    for _ in 0..30 {
        h.advance(100);
    }
    assert_eq!(describe_error(&mut h, TXN), 0);
    for _ in 0..30 {
        h.advance(100);
    }
    assert_eq!(
        describe_error(&mut h, TXN),
        ResponseError::TransactionalIdNotFound.code()
    );
    // Forgotten: the next incarnation gets a new producer id, at epoch 0.
    let (err, new_pid, new_epoch) = init(&mut h, TXN, 60_000);
    assert_eq!(err, 0);
    assert_ne!(new_pid, pid);
    assert_eq!(new_epoch, 0);
}

#[test]
fn an_id_with_a_transaction_open_does_not_expire() {
    let (mut h, pid, epoch) = expiring_harness(1_000);
    for _ in 0..30 {
        h.advance(100);
    }
    assert_eq!(describe_error(&mut h, TXN), 0);
    assert_eq!(end(&mut h, pid, epoch, true), 0);
}
