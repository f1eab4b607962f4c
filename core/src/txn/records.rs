//! What the transaction coordinator writes to `__transaction_state`, in Kafka's record
//! format so the log reads the same to Kafka's tools: key `TransactionLogKey` v0 (the
//! transactional id), value `TransactionLogValue` v0. A null value deletes the id.

use std::collections::BTreeSet;

use bytes::BufMut;

use crate::group::records::{put_str, Reader};

/// Where a transactional id's transaction stands (Kafka's `TransactionState`, with its
/// numbering in the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnState {
    /// No transaction open.
    Empty,
    /// Partitions were added; records may be in flight.
    Ongoing,
    /// Commit decided: markers are being written.
    PrepareCommit,
    /// Abort decided: markers are being written.
    PrepareAbort,
    /// The last transaction committed everywhere.
    CompleteCommit,
    /// The last transaction aborted everywhere.
    CompleteAbort,
}

impl TxnState {
    fn code(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// The name Kafka's admin APIs show (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written: the transaction's outcome is decided but not complete.
    pub fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A transactional id's state as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// Its producer id.
    pub producer_id: i64,
    /// The current epoch: older ones are fenced.
    pub epoch: i16,
    /// `transaction.timeout.ms` the producer asked for.
    pub timeout_ms: i32,
    /// Where its transaction stands.
    pub state: TxnState,
    /// Partitions in the transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// When this state was written (ms, wall clock).
    pub last_update_ms: i64,
    /// When the open transaction began (ms), -1 if none.
    pub start_ms: i64,
    /// How many transactions the id has begun (wrapping): its markers carry the number of
    /// the transaction they end, so a partition can tell a late copy of an earlier
    /// transaction's marker from the marker of the one open now. seedlog's own field,
    /// after Kafka's (whose readers stop before it).
    pub txn_number: i32,
}

const KEY_VERSION: i16 = 0;
const VALUE_VERSION: i16 = 0;

/// The key of `transactional_id`'s records.
pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_i16(KEY_VERSION);
    put_str(&mut out, transactional_id);
    out
}

impl TxnRecord {
    /// The value's bytes (`TransactionLogValue` v0).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i16(VALUE_VERSION);
        out.put_i64(self.producer_id);
        out.put_i16(self.epoch);
        out.put_i32(self.timeout_ms);
        out.put_i8(self.state.code());
        // Partitions grouped by topic, as Kafka writes them.
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, p) in &self.partitions {
            match topics.last_mut() {
                Some((t, ps)) if t == topic => ps.push(*p),
                _ => topics.push((topic, vec![*p])),
            }
        }
        out.put_i32(topics.len() as i32);
        for (topic, ps) in topics {
            put_str(&mut out, topic);
            out.put_i32(ps.len() as i32);
            for p in ps {
                out.put_i32(p);
            }
        }
        out.put_i64(self.last_update_ms);
        out.put_i64(self.start_ms);
        out.put_i32(self.txn_number);
        out
    }
}

/// Decodes one record: the transactional id and its state (`None` for a tombstone).
/// `None` overall if the bytes are not a record this code understands.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<TxnRecord>)> {
    let mut k = Reader(key);
    if k.i16()? != KEY_VERSION {
        return None;
    }
    let id = k.string()?;
    let Some(value) = value else {
        return Some((id, None));
    };
    let mut v = Reader(value);
    if v.i16()? != VALUE_VERSION {
        return None;
    }
    let producer_id = v.i64()?;
    let epoch = v.i16()?;
    let timeout_ms = v.i32()?;
    let state = TxnState::from_code(v.take(1)?[0] as i8)?;
    let mut partitions = BTreeSet::new();
    for _ in 0..v.i32()?.max(0) {
        let topic = v.string()?;
        for _ in 0..v.i32()?.max(0) {
            partitions.insert((topic.clone(), v.i32()?));
        }
    }
    let last_update_ms = v.i64()?;
    let start_ms = v.i64()?;
    let txn_number = v.i32()?;
    let record = TxnRecord {
        producer_id,
        epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms,
        start_ms,
        txn_number,
    };
    Some((id, Some(record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_through_its_bytes() {
        let record = TxnRecord {
            producer_id: 4001,
            epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 2),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 1_700_000_000_123,
            start_ms: 1_700_000_000_000,
            txn_number: 17,
        };
        let key = encode_key("tx-1");
        assert_eq!(
            decode(&key, Some(&record.encode())),
            Some(("tx-1".to_string(), Some(record.clone())))
        );
        assert_eq!(decode(&key, None), Some(("tx-1".to_string(), None)));
        let bytes = record.encode();
        assert_eq!(decode(&key, Some(&bytes[..bytes.len() - 1])), None);
        let mut bad_state = bytes.clone();
        bad_state[16] = 9;
        assert_eq!(decode(&key, Some(&bad_state)), None);
    }
}
