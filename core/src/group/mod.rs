//! Consumer groups: the classic group protocol's coordinator.
//!
//! A group's coordinator is the leader of the group's partition of `__consumer_offsets`
//! ([`partition_for`]), as in Kafka. Everything a coordinator must not forget (committed
//! offsets, and each generation's members and assignment) is written to that partition as
//! records (see [`records`]) with acks=all semantics, so when the partition's leadership
//! moves, the new leader reads the partition back and carries on where the old one stopped.
//!
//! [`Coordinator`] holds the groups of every partition this broker leads and turns Kafka's
//! group requests into answers and writes; [`membership::Group`] is one group's rebalance
//! state machine. Both are sans-IO: the broker carries their writes and reads.

mod coordinator;
pub mod membership;
pub mod records;

pub use coordinator::{Coordinator, CoordinatorOutput};

/// The internal topic that holds committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Group coordination settings, under Kafka's broker config names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`: how many partitions `__consumer_offsets` gets.
    /// Kafka's default is 50, to spread coordinators over big clusters; every seedlog
    /// partition of a replicated topic is a Raft group that heartbeats even when idle, so the
    /// default is smaller.
    pub offsets_partitions: i32,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i64,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i64,
    /// `group.initial.rebalance.delay.ms`: how long the first join phase of an empty group
    /// waits for more members.
    pub initial_rebalance_delay_ms: i64,
    /// `offsets.retention.minutes` (in ms): how long the offsets of an empty group are kept.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: i64,
    /// `offset.metadata.max.bytes`: the longest metadata string a commit may carry.
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_partitions: 8,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// The partition of `__consumer_offsets` that holds `group`: Java's `String.hashCode`,
/// made non-negative, modulo the partition count, as Kafka computes it (so a group lives on
/// the partition Kafka would choose).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_land_on_the_partition_kafka_would_choose() {
        // Java: "test-group".hashCode() == 627841412, "my-group".hashCode() == -1906497762;
        // with Kafka's default of 50 partitions they live on 12 and 36. A change to the hash
        // would move every existing group's offsets.
        assert_eq!(partition_for("test-group", 50), 627_841_412 % 50);
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("my-group", 50), 36);
        assert_eq!(partition_for("", 8), 0);
    }
}
