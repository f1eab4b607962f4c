//! A topic: its id, its config and its partitions' logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::TopicConfig;
use crate::log::PartitionLog;
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

/// A topic held by this broker.
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
    /// One log per partition, by index.
    pub partitions: Vec<PartitionLog>,
}

impl Topic {
    /// The durable definition of this topic.
    pub fn record(&self) -> TopicRecord {
        TopicRecord {
            id: self.id,
            partitions: self.partitions.len() as i32,
            configs: self.overrides.clone(),
        }
    }

    /// The log of partition `index`, if it exists.
    pub fn partition(&self, index: i32) -> Option<&PartitionLog> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    /// The log of partition `index`, mutably.
    pub fn partition_mut(&mut self, index: i32) -> Option<&mut PartitionLog> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get_mut(i))
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
