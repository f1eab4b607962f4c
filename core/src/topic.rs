//! A topic: its id, its config and its partitions' logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::TopicConfig;
use crate::log::PartitionLog;
use crate::replica::Replica;
use kafka_protocol::ResponseError;

use crate::storage::TopicRecord;

/// The longest topic name Kafka accepts.
pub const TOPIC_NAME_MAX: usize = 249;

/// True if `name` is a legal Kafka topic name (and so a safe directory name).
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A topic as this broker knows it: its definition from the cluster metadata and the logs
/// of the partitions this broker holds.
#[derive(Debug)]
pub struct Topic {
    /// Name, shared with every partition id.
    pub name: Arc<str>,
    /// KIP-516 topic id.
    pub id: [u8; 16],
    /// Kafka-named overrides as the user set them.
    pub overrides: BTreeMap<String, String>,
    /// Broker defaults with the overrides applied.
    pub config: TopicConfig,
    /// Replicas of each partition, by index; the first is the preferred leader.
    pub replicas: Vec<Vec<i32>>,
    /// Reassignments under way: partition -> the replicas it moves to.
    pub targets: BTreeMap<i32, Vec<i32>>,
    /// Logs of the partitions held here, by index.
    pub logs: BTreeMap<i32, PartitionLog>,
    /// Raft replicas of the replicated partitions held here (replication factor > 1).
    pub raft: BTreeMap<i32, Replica>,
}

impl Topic {
    /// The durable local record of this topic.
    pub fn record(&self) -> TopicRecord {
        TopicRecord {
            id: self.id,
            partitions: self.partition_count(),
            configs: self.overrides.clone(),
        }
    }

    /// Number of partitions in the cluster (held here or not).
    pub fn partition_count(&self) -> i32 {
        self.replicas.len() as i32
    }

    /// The log of partition `index`, if this broker holds it.
    pub fn partition(&self, index: i32) -> Option<&PartitionLog> {
        self.logs.get(&index)
    }

    /// The log of partition `index`, mutably.
    pub fn partition_mut(&mut self, index: i32) -> Option<&mut PartitionLog> {
        self.logs.get_mut(&index)
    }

    /// The log of partition `index`, or the error a client gets for it: the partition does
    /// not exist, or another broker serves it.
    /// A replicated partition is served by its leader only, once its high watermark is
    /// current (see [`Replica::is_serving`]).
    pub fn log_for_client(&self, index: i32) -> Result<&PartitionLog, ResponseError> {
        match self.raft.get(&index) {
            Some(replica) if !replica.is_serving() => Err(ResponseError::NotLeaderOrFollower),
            _ => self.partition(index).ok_or_else(|| self.missing(index)),
        }
    }

    /// [`Self::log_for_client`], mutably.
    pub fn log_for_client_mut(&mut self, index: i32) -> Result<&mut PartitionLog, ResponseError> {
        let missing = self.missing(index);
        if self.raft.get(&index).is_some_and(|r| !r.is_leader()) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        self.partition_mut(index).ok_or(missing)
    }

    fn missing(&self, index: i32) -> ResponseError {
        if index >= 0 && index < self.partition_count() {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic_name("orders.v1_eu-west"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name(".."));
        assert!(!is_valid_topic_name("a/b"));
        assert!(!is_valid_topic_name(&"x".repeat(250)));
    }
}
