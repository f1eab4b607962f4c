//! Moving partitions between brokers: AlterPartitionReassignments records a target in the
//! metadata log; each partition's leader then changes its Raft group one member at a time
//! (`Replica::reassign_step`) and records the move when the group is the target.

use crate::time::Now;
use std::collections::BTreeSet;

use kafka_protocol::messages::alter_partition_reassignments_request::AlterPartitionReassignmentsRequest;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    AlterPartitionReassignmentsResponse, ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
use kafka_protocol::messages::list_partition_reassignments_response::{
    ListPartitionReassignmentsResponse, OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{BrokerId, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::info;

use super::quorum::Waiting;
use super::{Broker, ReplyTo};
use crate::cluster::records::{Change, PartitionReplicaSet, Reassignments, TopicRef};

/// Longest an AlterPartitionReassignments waits for its record.
const REASSIGN_WAIT_MS: i64 = 30_000;

impl Broker {
    pub(super) fn alter_partition_reassignments(
        &mut self,
        now: Now,
        reply_to: ReplyTo,
        request: AlterPartitionReassignmentsRequest,
    ) {
        let mut response = AlterPartitionReassignmentsResponse::default();
        let mut moves = Vec::new();
        for t in &request.topics {
            let mut topic_response = ReassignableTopicResponse::default().with_name(t.name.clone());
            for p in &t.partitions {
                let mut answer = ReassignablePartitionResponse::default()
                    .with_partition_index(p.partition_index);
                let wanted = p
                    .replicas
                    .as_ref()
                    .map(|r| r.iter().map(|b| b.0).collect::<Vec<i32>>());
                match self.check_reassignment(&t.name.0, p.partition_index, wanted) {
                    Ok(set) => {
                        info!(topic = %t.name.0, partition = p.partition_index, target = ?set.replicas, "reassigning partition");
                        moves.push(set);
                    }
                    Err((error, message)) => {
                        answer.error_code = error.code();
                        answer.error_message = Some(StrBytes::from_string(message));
                    }
                }
                topic_response.partitions.push(answer);
            }
            response.responses.push(topic_response);
        }
        let change =
            (!moves.is_empty()).then_some(Change::Reassign(Reassignments { partitions: moves }));
        let timeout = i64::from(request.timeout_ms).clamp(1, REASSIGN_WAIT_MS);
        self.propose_for(now, reply_to, change, Waiting::Reassign(response), timeout);
    }

    /// The record for moving one partition to `wanted` (`None` cancels a move under way),
    /// or why it cannot move there.
    fn check_reassignment(
        &self,
        topic: &str,
        partition: i32,
        wanted: Option<Vec<i32>>,
    ) -> Result<PartitionReplicaSet, (ResponseError, String)> {
        let image = self.controller.image();
        let t = image.topics.get(topic).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("no topic {topic}"),
        ))?;
        let current = usize::try_from(partition)
            .ok()
            .and_then(|i| t.replicas.get(i))
            .ok_or((
                ResponseError::UnknownTopicOrPartition,
                format!("{topic} has no partition {partition}"),
            ))?;
        let target = match wanted {
            // Cancelling moves back to the replicas the partition has now.
            None if t.targets.contains_key(&partition) => current.clone(),
            None => {
                return Err((
                    ResponseError::NoReassignmentInProgress,
                    format!("{topic}-{partition} is not being moved"),
                ))
            }
            Some(target) => target,
        };
        let distinct: BTreeSet<i32> = target.iter().copied().collect();
        if distinct.len() != target.len() {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!("replicas {target:?} repeat a broker"),
            ));
        }
        // A partition with one replica has no Raft group to grow, and a group cannot shrink
        // to one member and stay a group: both need a copy outside Raft, not built yet.
        if current.len() < 2 || target.len() < 2 {
            return Err((
                ResponseError::InvalidReplicationFactor,
                "only partitions with two or more replicas can move, to two or more".into(),
            ));
        }
        let live: BTreeSet<i32> = image.live_brokers().map(|b| b.id).collect();
        if let Some(b) = target.iter().find(|b| !live.contains(b)) {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!("broker {b} is not a live registered broker"),
            ));
        }
        Ok(PartitionReplicaSet {
            topic: Some(TopicRef {
                name: topic.to_string(),
                id: t.id.to_vec(),
            }),
            partition,
            replicas: target,
        })
    }

    pub(super) fn list_partition_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> ResponseKind {
        let image = self.controller.image();
        let wanted = |topic: &str, partition: i32| match &request.topics {
            None => true,
            Some(topics) => topics
                .iter()
                .any(|t| *t.name.0 == *topic && t.partition_indexes.contains(&partition)),
        };
        let mut response = ListPartitionReassignmentsResponse::default();
        for (name, t) in &image.topics {
            let partitions: Vec<OngoingPartitionReassignment> = t
                .targets
                .iter()
                .filter(|(p, _)| wanted(name, **p))
                .map(|(&p, target)| {
                    let current = t.replicas.get(p as usize).cloned().unwrap_or_default();
                    let ids = |v: Vec<i32>| v.into_iter().map(BrokerId).collect::<Vec<_>>();
                    let mut all = target.clone();
                    all.extend(current.iter().filter(|b| !target.contains(b)));
                    OngoingPartitionReassignment::default()
                        .with_partition_index(p)
                        .with_replicas(ids(all))
                        .with_adding_replicas(ids(target
                            .iter()
                            .copied()
                            .filter(|b| !current.contains(b))
                            .collect()))
                        .with_removing_replicas(ids(current
                            .iter()
                            .copied()
                            .filter(|b| !target.contains(b))
                            .collect()))
                })
                .collect();
            if !partitions.is_empty() {
                response.topics.push(
                    OngoingTopicReassignment::default()
                        .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                            name.clone(),
                        )))
                        .with_partitions(partitions),
                );
            }
        }
        ResponseKind::ListPartitionReassignments(response)
    }
}
