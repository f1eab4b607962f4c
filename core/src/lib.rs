//! seedlog-core: the sans-IO heart of seedlog.
//!
//! Every decision of the broker lives here: record batch validation, partition logs and
//! their offsets, high watermarks, segment rolls, retention, recovery, and the Kafka request
//! handling that ties them together. This crate performs no I/O and reads no clock: requests,
//! storage completions and the current time come in as arguments, and responses and disk
//! operations go out as values (see [`broker::Broker`]). The same code runs in the `seedlog`
//! server and in the deterministic simulator.

#![warn(missing_docs)]

pub mod batch;
pub mod broker;
pub mod canary;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod group;
pub mod legacy;
pub mod log;
pub mod memdisk;
pub mod producer;
pub mod recovery;
pub mod replica;
pub mod sealed;
pub mod security;
pub mod storage;
pub mod time;
pub mod topic;
pub mod txn;
pub mod wire;

pub use broker::{
    Broker, BrokerStats, CommittedEntry, ConnectionId, GroupLag, Observation, Output,
    PartitionStats, Recovered, RecoveredTopic,
};
pub use time::Now;
