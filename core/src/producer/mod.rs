//! Idempotent producers: producer ids handed out in blocks from the metadata quorum, and
//! each partition's [`ProducerTable`] of what those producers wrote.

mod table;
mod txns;

use std::collections::VecDeque;
use std::ops::Range;

pub use table::{ProducerBatch, ProducerTable, Verdict, Written, CACHED_BATCHES};
pub use txns::{LastMarker, MarkerState, TxnEvent, TxnIndex, TxnRange};

/// Producer ids a broker takes from the metadata quorum at a time (Kafka takes 1000).
pub const ID_BLOCK: i64 = 1000;

/// The producer ids this broker may hand out: what is left of the blocks the metadata
/// quorum gave it. No id is handed out twice, across restarts and controller failovers
/// too: a block is taken by a committed metadata record, and the pool lives in memory
/// only, so a restarted broker takes a fresh block rather than reusing the rest of one.
#[derive(Debug, Default)]
pub struct IdPool {
    blocks: VecDeque<Range<i64>>,
    /// A block was asked for and has not come yet.
    asked: bool,
}

impl IdPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id, if the pool has one.
    pub fn take(&mut self) -> Option<i64> {
        while let Some(block) = self.blocks.front_mut() {
            if let Some(id) = block.next() {
                return Some(id);
            }
            self.blocks.pop_front();
        }
        None
    }

    /// True if a block should be asked for now (the pool is nearly spent and no request
    /// is out); the request then counts as out.
    pub fn should_ask(&mut self) -> bool {
        let left: i64 = self.blocks.iter().map(|b| b.end - b.start).sum();
        let ask = left < ID_BLOCK / 10 && !self.asked;
        self.asked |= ask;
        ask
    }

    /// The request for a block is lost (not proposed, or not applied in time): it may be
    /// asked for again.
    pub fn ask_failed(&mut self) {
        self.asked = false;
    }

    /// The quorum gave this broker `first..first + count`.
    pub fn granted(&mut self, first: i64, count: i64) {
        self.asked = false;
        self.blocks.push_back(first..first.saturating_add(count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_hands_out_each_granted_id_once_and_asks_ahead() {
        let mut pool = IdPool::new();
        assert_eq!(pool.take(), None);
        assert!(pool.should_ask());
        assert!(!pool.should_ask(), "one request at a time");
        pool.granted(5, 100);
        let ids: Vec<i64> = std::iter::from_fn(|| pool.take()).take(95).collect();
        assert_eq!(ids, (5..100).collect::<Vec<_>>());
        assert!(pool.should_ask(), "nearly spent");
        pool.granted(2000, 100);
        let rest: Vec<i64> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(rest.len(), 105);
        assert_eq!(rest[..5], [100, 101, 102, 103, 104]);
        assert_eq!(rest[5], 2000);
    }
}
