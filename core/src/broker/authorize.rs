//! What each group and transaction API asks of the authorizer, as Kafka's broker asks it,
//! and the refusals it answers with. The produce, fetch and admin paths ask at the point
//! where they already answer per topic.

use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::alter_partition_reassignments_response::AlterPartitionReassignmentsResponse;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::describe_transactions_response::TransactionState as DescribedTxn;
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::join_group_response::JoinGroupResponse;
use kafka_protocol::messages::leave_group_response::LeaveGroupResponse;
use kafka_protocol::messages::list_partition_reassignments_response::ListPartitionReassignmentsResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::OffsetDeleteResponse;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ProducerId, RequestKind, ResponseKind};
use kafka_protocol::ResponseError;

use super::{Broker, ConnectionId};
use crate::security::acl::{Operation, ResourceType};

const GROUP_DENIED: ResponseError = ResponseError::GroupAuthorizationFailed;

/// Refusals taken out of a group request before the coordinator sees it, merged into its
/// answer.
#[derive(Debug)]
pub(super) enum Narrowed {
    /// OffsetCommit: topics the client may not read.
    Commit(Vec<OffsetCommitResponseTopic>),
    /// DeleteGroups: groups the client may not delete.
    Delete(Vec<DeletableGroupResult>),
}

impl Narrowed {
    /// Adds the refusals to the coordinator's answer.
    pub(super) fn merge(self, response: &mut ResponseKind) {
        match (self, response) {
            (Narrowed::Commit(topics), ResponseKind::OffsetCommit(r)) => r.topics.extend(topics),
            (Narrowed::Delete(groups), ResponseKind::DeleteGroups(r)) => r.results.extend(groups),
            _ => {}
        }
    }
}

impl Broker {
    /// The answer to a group request the client on `conn` may not make, if it may not.
    /// OffsetCommit and DeleteGroups are narrowed instead: the topics it may not read and
    /// the groups it may not delete are taken out of the request, and their refusals come
    /// back to merge into the coordinator's answer, as Kafka carries out the rest.
    // The refusal is answered at once, never carried up through `?`: no need to box it.
    #[allow(clippy::result_large_err)]
    pub(super) fn group_refusal(
        &self,
        conn: ConnectionId,
        request: &mut RequestKind,
    ) -> Result<Option<Narrowed>, ResponseKind> {
        use Operation::{Delete, Describe, Read, Write};
        use ResourceType::{Group, Topic, TransactionalId};
        let code = GROUP_DENIED.code();
        let denied = |op, group: &str| !self.allowed(conn, op, Group, group);
        match request {
            RequestKind::JoinGroup(r) if denied(Read, &r.group_id) => Err(ResponseKind::JoinGroup(
                JoinGroupResponse::default()
                    .with_error_code(code)
                    .with_generation_id(-1),
            )),
            RequestKind::SyncGroup(r) if denied(Read, &r.group_id) => Err(ResponseKind::SyncGroup(
                SyncGroupResponse::default().with_error_code(code),
            )),
            RequestKind::Heartbeat(r) if denied(Read, &r.group_id) => Err(ResponseKind::Heartbeat(
                HeartbeatResponse::default().with_error_code(code),
            )),
            RequestKind::LeaveGroup(r) if denied(Read, &r.group_id) => Err(
                ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code)),
            ),
            RequestKind::OffsetDelete(r) if denied(Delete, &r.group_id) => Err(
                ResponseKind::OffsetDelete(OffsetDeleteResponse::default().with_error_code(code)),
            ),
            RequestKind::OffsetFetch(r) => {
                let groups: Vec<&str> = match r.groups.is_empty() {
                    true => vec![&r.group_id],
                    false => r.groups.iter().map(|g| &*g.group_id.0).collect(),
                };
                match groups.iter().any(|g| denied(Describe, g)) {
                    // One answer for the request: a v8 request naming several groups is
                    // refused whole when any of them is refused.
                    true => Err(ResponseKind::OffsetFetch(
                        OffsetFetchResponse::default()
                            .with_error_code(code)
                            .with_groups(
                                groups
                                    .iter()
                                    .map(|g| {
                                        OffsetFetchResponseGroup::default()
                                            .with_group_id(kafka_protocol::messages::GroupId(
                                                g.to_string().into(),
                                            ))
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            ),
                    )),
                    false => Ok(None),
                }
            }
            RequestKind::DeleteGroups(r) => {
                let (refused, allowed): (Vec<_>, Vec<_>) = std::mem::take(&mut r.groups_names)
                    .into_iter()
                    .partition(|g| denied(Delete, g));
                r.groups_names = allowed;
                let results = refused.into_iter().map(|g| {
                    DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(code)
                });
                Ok(Some(Narrowed::Delete(results.collect())))
            }
            RequestKind::TxnOffsetCommit(r) => {
                let error = if !self.allowed(conn, Write, TransactionalId, &r.transactional_id) {
                    Some(ResponseError::TransactionalIdAuthorizationFailed)
                } else if denied(Read, &r.group_id) {
                    Some(GROUP_DENIED)
                } else if r
                    .topics
                    .iter()
                    .any(|t| !self.allowed(conn, Read, Topic, &t.name))
                {
                    Some(ResponseError::TopicAuthorizationFailed)
                } else {
                    None
                };
                match error {
                    None => Ok(None),
                    Some(e) => Err(ResponseKind::TxnOffsetCommit(
                        TxnOffsetCommitResponse::default().with_topics(
                            r.topics
                                .iter()
                                .map(|t| {
                                    TxnOffsetCommitResponseTopic::default()
                                        .with_name(t.name.clone())
                                        .with_partitions(
                                            t.partitions
                                                .iter()
                                                .map(|p| {
                                                    TxnOffsetCommitResponsePartition::default()
                                                        .with_partition_index(p.partition_index)
                                                        .with_error_code(e.code())
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ),
                    )),
                }
            }
            RequestKind::OffsetCommit(r) => {
                let group_denied = denied(Read, &r.group_id);
                let answer = |t: &kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic, e: ResponseError| {
                    OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(e.code())
                            })
                            .collect(),
                    )
                };
                if group_denied {
                    let topics = r.topics.iter().map(|t| answer(t, GROUP_DENIED)).collect();
                    return Err(ResponseKind::OffsetCommit(
                        OffsetCommitResponse::default().with_topics(topics),
                    ));
                }
                let (readable, refused): (Vec<_>, Vec<_>) = std::mem::take(&mut r.topics)
                    .into_iter()
                    .partition(|t| self.allowed(conn, Read, Topic, &t.name));
                r.topics = readable;
                let refused = refused
                    .iter()
                    .map(|t| answer(t, ResponseError::TopicAuthorizationFailed));
                Ok(Some(Narrowed::Commit(refused.collect())))
            }
            _ => Ok(None),
        }
    }
}

impl Broker {
    /// The answer to a transaction or cluster request the client on `conn` may not make at
    /// all, if it may not.
    pub(super) fn request_refusal(
        &self,
        conn: ConnectionId,
        request: &RequestKind,
    ) -> Option<ResponseKind> {
        use Operation::{Alter, Describe, IdempotentWrite, Read, Write};
        use ResourceType::{Group, Topic, TransactionalId};
        let txn = |id: &str| self.allowed(conn, Write, TransactionalId, id);
        let txn_denied = ResponseError::TransactionalIdAuthorizationFailed.code();
        match request {
            RequestKind::InitProducerId(r) => {
                let allowed = match &r.transactional_id {
                    Some(id) => txn(id),
                    // KIP-679: Write on any topic implies IdempotentWrite.
                    None => {
                        self.allowed_on_cluster(conn, IdempotentWrite)
                            || self
                                .topics
                                .keys()
                                .any(|t| self.allowed(conn, Write, Topic, t))
                    }
                };
                let code = match &r.transactional_id {
                    Some(_) => txn_denied,
                    None => ResponseError::ClusterAuthorizationFailed.code(),
                };
                (!allowed).then(|| {
                    ResponseKind::InitProducerId(
                        InitProducerIdResponse::default()
                            .with_error_code(code)
                            .with_producer_id(ProducerId(-1))
                            .with_producer_epoch(-1),
                    )
                })
            }
            RequestKind::AddPartitionsToTxn(r) => {
                let id = &r.v3_and_below_transactional_id;
                let topic_denied =
                    |t: &AddPartitionsToTxnTopic| !self.allowed(conn, Write, Topic, &t.name);
                let txn_ok = txn(id);
                if txn_ok && !r.v3_and_below_topics.iter().any(topic_denied) {
                    return None;
                }
                // As Kafka: the refused topics get their error, the others are not tried.
                let results = r.v3_and_below_topics.iter().map(|t| {
                    let code = match (txn_ok, topic_denied(t)) {
                        (false, _) => txn_denied,
                        (true, true) => ResponseError::TopicAuthorizationFailed.code(),
                        (true, false) => ResponseError::OperationNotAttempted.code(),
                    };
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(t.name.clone())
                        .with_results_by_partition(
                            t.partitions
                                .iter()
                                .map(|&p| {
                                    AddPartitionsToTxnPartitionResult::default()
                                        .with_partition_index(p)
                                        .with_partition_error_code(code)
                                })
                                .collect(),
                        )
                });
                Some(ResponseKind::AddPartitionsToTxn(
                    AddPartitionsToTxnResponse::default()
                        .with_results_by_topic_v3_and_below(results.collect()),
                ))
            }
            RequestKind::AddOffsetsToTxn(r) => {
                let code = if !txn(&r.transactional_id) {
                    txn_denied
                } else if !self.allowed(conn, Read, Group, &r.group_id) {
                    GROUP_DENIED.code()
                } else {
                    return None;
                };
                Some(ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(code),
                ))
            }
            RequestKind::EndTxn(r) if !txn(&r.transactional_id) => Some(ResponseKind::EndTxn(
                EndTxnResponse::default()
                    .with_error_code(txn_denied)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )),
            RequestKind::AlterPartitionReassignments(_)
                if !self.allowed_on_cluster(conn, Alter) =>
            {
                Some(ResponseKind::AlterPartitionReassignments(
                    AlterPartitionReassignmentsResponse::default()
                        .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
                ))
            }
            RequestKind::ListPartitionReassignments(_)
                if !self.allowed_on_cluster(conn, Describe) =>
            {
                Some(ResponseKind::ListPartitionReassignments(
                    ListPartitionReassignmentsResponse::default()
                        .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
                ))
            }
            _ => None,
        }
    }

    /// Takes out of a describing answer what the client on `conn` may not see: groups and
    /// transactional ids it may not describe, configs of resources it may not describe,
    /// epochs of topics it may not describe.
    pub(super) fn filter_response(&self, conn: ConnectionId, response: &mut ResponseKind) {
        use Operation::{Describe, DescribeConfigs};
        use ResourceType::{Group, Topic, TransactionalId};
        let may = |op, kind, name: &str| self.allowed(conn, op, kind, name);
        match response {
            ResponseKind::DescribeGroups(r) => {
                for g in r
                    .groups
                    .iter_mut()
                    .filter(|g| !may(Describe, Group, &g.group_id))
                {
                    *g = DescribedGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(GROUP_DENIED.code());
                }
            }
            ResponseKind::ListGroups(r) if !self.allowed_on_cluster(conn, Describe) => {
                r.groups.retain(|g| may(Describe, Group, &g.group_id));
            }
            ResponseKind::DescribeTransactions(r) => {
                let code = ResponseError::TransactionalIdAuthorizationFailed.code();
                for t in r
                    .transaction_states
                    .iter_mut()
                    .filter(|t| !may(Describe, TransactionalId, &t.transactional_id))
                {
                    *t = DescribedTxn::default()
                        .with_transactional_id(t.transactional_id.clone())
                        .with_error_code(code);
                }
            }
            ResponseKind::ListTransactions(r) => {
                r.transaction_states
                    .retain(|t| may(Describe, TransactionalId, &t.transactional_id));
            }
            ResponseKind::DescribeConfigs(r) => {
                for result in &mut r.results {
                    let allowed = match result.resource_type {
                        2 => may(DescribeConfigs, Topic, &result.resource_name),
                        _ => self.allowed_on_cluster(conn, DescribeConfigs),
                    };
                    if !allowed {
                        result.configs.clear();
                        result.error_message = None;
                        result.error_code = match result.resource_type {
                            2 => ResponseError::TopicAuthorizationFailed.code(),
                            _ => ResponseError::ClusterAuthorizationFailed.code(),
                        };
                    }
                }
            }
            // Committed offsets of topics it may not describe are not shown (Kafka answers
            // TOPIC_AUTHORIZATION_FAILED for them).
            ResponseKind::OffsetFetch(r) => {
                let code = ResponseError::TopicAuthorizationFailed.code();
                for t in r
                    .topics
                    .iter_mut()
                    .filter(|t| !may(Describe, Topic, &t.name))
                {
                    for p in &mut t.partitions {
                        (p.committed_offset, p.committed_leader_epoch) = (-1, -1);
                        (p.metadata, p.error_code) = (None, code);
                    }
                }
                let groups = r.groups.iter_mut().flat_map(|g| g.topics.iter_mut());
                for t in groups.filter(|t| !may(Describe, Topic, &t.name)) {
                    for p in &mut t.partitions {
                        (p.committed_offset, p.committed_leader_epoch) = (-1, -1);
                        (p.metadata, p.error_code) = (None, code);
                    }
                }
            }
            ResponseKind::OffsetForLeaderEpoch(r) => {
                for t in r
                    .topics
                    .iter_mut()
                    .filter(|t| !may(Describe, Topic, &t.topic))
                {
                    for p in &mut t.partitions {
                        *p = EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    }
                }
            }
            _ => {}
        }
    }
}
