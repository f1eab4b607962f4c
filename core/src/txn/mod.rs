//! Transactions (KIP-98): the transaction coordinator.
//!
//! A transactional id's coordinator is the leader of its partition of
//! `__transaction_state` ([`crate::group::partition_for`] of the id), as in Kafka. Every
//! decision about a transaction is written there (see [`records`]) before it takes
//! effect, so a new leader reads the partition back and finishes what the old one began:
//! a transaction whose commit or abort was decided has its markers written again.
//!
//! [`TxnCoordinator`] turns InitProducerId (with a transactional id), AddPartitionsToTxn,
//! AddOffsetsToTxn and EndTxn into answers, writes to `__transaction_state`, and marker
//! deliveries: the COMMIT or ABORT control batch each partition of the transaction gets
//! through its own Raft group. It is sans-IO, like the group coordinator: the broker
//! carries its writes, reads and markers.

mod coordinator;
pub mod records;

pub use coordinator::{MarkerJob, Producer, TxnCoordinator, TxnOutput};

/// The internal topic that holds the transactional ids' states.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Transaction coordination settings, under Kafka's broker config names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions` (Kafka: 50; smaller here for the same
    /// reason as `offsets.topic.num.partitions`).
    pub partitions: i32,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may
    /// ask for.
    pub max_timeout_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub abort_check_interval_ms: i64,
    /// `transactional.id.expiration.ms`: a transactional id with no transaction open that
    /// has not been used for this long is forgotten (a tombstone in its partition); its
    /// next InitProducerId starts afresh with a new producer id.
    pub id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            partitions: 8,
            max_timeout_ms: 900_000,
            abort_check_interval_ms: 10_000,
            id_expiration_ms: 7 * 24 * 3600 * 1000,
        }
    }
}
