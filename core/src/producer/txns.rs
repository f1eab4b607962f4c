//! One partition's transactions (KIP-98): which are open, which ended above the high
//! watermark, and which were aborted. From them follow the last stable offset (the first
//! offset a `read_committed` consumer may not read yet) and the aborted transactions a
//! fetch hands such a consumer so it can drop their records.
//!
//! Like the producer table, the index is derived from the log alone: each replica notes
//! every transactional batch and marker as it writes it, so a new leader knows the open
//! transactions at once, and a truncation of the uncommitted suffix is undone exactly
//! (the truncation point is never below the high watermark, and transactions whose marker
//! is not below it yet are kept apart until it is).

use std::collections::{BTreeMap, VecDeque};

use crate::batch::{self, BatchView};

/// What a batch means to its producer's transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnEvent {
    /// Records of an open transaction, in a batch at `offset`.
    Data {
        /// The producer.
        producer_id: i64,
        /// The batch's base offset.
        offset: i64,
    },
    /// The marker at `offset` that ends the producer's transaction here.
    End {
        /// The producer.
        producer_id: i64,
        /// The marker's offset.
        offset: i64,
        /// Commit (true) or abort.
        commit: bool,
        /// The number of the transaction it ends (the marker's base sequence).
        number: i32,
    },
}

impl TxnEvent {
    /// The event of a batch written at `offset`; `None` for a batch outside transactions.
    pub fn of(view: &BatchView<'_>, offset: i64) -> Option<Self> {
        let producer_id = view.producer_id();
        if !view.is_transactional() || producer_id < 0 {
            return None;
        }
        if view.is_control() {
            let commit = batch::txn_marker(view)?;
            return Some(TxnEvent::End {
                producer_id,
                offset,
                commit,
                number: view.base_sequence(),
            });
        }
        Some(TxnEvent::Data {
            producer_id,
            offset,
        })
    }

    /// The same event for the batch written at `offset`.
    pub fn at(self, at: i64) -> Self {
        match self {
            TxnEvent::Data { producer_id, .. } => TxnEvent::Data {
                producer_id,
                offset: at,
            },
            TxnEvent::End {
                producer_id,
                commit,
                number,
                ..
            } => TxnEvent::End {
                producer_id,
                offset: at,
                commit,
                number,
            },
        }
    }
}

/// A transaction of one producer in one partition, from its first batch to its marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnRange {
    /// The producer.
    pub producer_id: i64,
    /// Offset of its first batch here.
    pub first_offset: i64,
    /// Offset of its marker.
    pub last_offset: i64,
}

/// A marker at or above the high watermark, and what it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ended {
    producer_id: i64,
    marker: i64,
    /// The transaction it ended here (none if nothing was open).
    first_offset: Option<i64>,
    /// The producer's last marker before this one.
    previous: Option<LastMarker>,
}

/// A producer's last marker in the partition: its transaction number and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastMarker {
    /// The number of the transaction it ended.
    pub number: i32,
    /// Its offset.
    pub offset: i64,
}

/// Whether a transaction's marker is in the partition already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerState {
    /// Not written: write it.
    New,
    /// Written, and committed: a copy must not be written.
    Committed,
    /// Written, not committed yet: ask again later.
    Uncommitted,
}

/// The transactions of one partition; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnIndex {
    /// Open transactions: producer id -> offset of its first batch.
    open: BTreeMap<i64, i64>,
    /// Transactions whose marker is at or above the high watermark, in log order.
    ending: VecDeque<Ended>,
    /// Aborted transactions, in the order of their markers.
    aborted: VecDeque<TxnRange>,
    /// Each producer's last marker.
    last_marker: BTreeMap<i64, LastMarker>,
    /// The high watermark last seen.
    high_watermark: i64,
}

impl TxnIndex {
    /// An index of no transactions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a batch as it is written, after every batch noted so far.
    pub fn apply(&mut self, event: TxnEvent) {
        match event {
            TxnEvent::Data {
                producer_id,
                offset,
            } => {
                self.open.entry(producer_id).or_insert(offset);
            }
            TxnEvent::End {
                producer_id,
                offset,
                commit,
                number,
            } => {
                let last = LastMarker { number, offset };
                let previous = self.last_marker.insert(producer_id, last);
                // A marker with nothing open here (a transaction that wrote nothing to this
                // partition) ends nothing.
                let first_offset = self.open.remove(&producer_id);
                if let Some(first_offset) = first_offset.filter(|_| !commit) {
                    self.aborted.push_back(TxnRange {
                        producer_id,
                        first_offset,
                        last_offset: offset,
                    });
                }
                if offset >= self.high_watermark {
                    self.ending.push_back(Ended {
                        producer_id,
                        marker: offset,
                        first_offset,
                        previous,
                    });
                }
            }
        }
    }

    /// The high watermark moved to `offset`: markers below it are final.
    pub fn advance(&mut self, offset: i64) {
        self.high_watermark = offset;
        while self.ending.front().is_some_and(|e| e.marker < offset) {
            self.ending.pop_front();
        }
    }

    /// The log from `offset` on is gone (never below the high watermark): what it held is
    /// forgotten, and transactions its markers ended are open again.
    pub fn truncate(&mut self, offset: i64) {
        self.open.retain(|_, first| *first < offset);
        while self.aborted.back().is_some_and(|a| a.last_offset >= offset) {
            self.aborted.pop_back();
        }
        while self.ending.back().is_some_and(|e| e.marker >= offset) {
            let e = self.ending.pop_back().expect("checked");
            match e.previous {
                Some(previous) => self.last_marker.insert(e.producer_id, previous),
                None => self.last_marker.remove(&e.producer_id),
            };
            if let Some(first) = e.first_offset.filter(|f| *f < offset) {
                self.open.insert(e.producer_id, first);
            }
        }
    }

    /// Whether the marker of `producer_id`'s transaction `number` is here already. Numbers
    /// grow with each transaction of a transactional id (wrapping), so a later one's
    /// marker means this one's was written long ago.
    pub fn marker_state(&self, producer_id: i64, number: i32) -> MarkerState {
        match self.last_marker.get(&producer_id) {
            Some(last) if last.number.wrapping_sub(number) > 0 => MarkerState::Committed,
            Some(last) if last.number == number && last.offset < self.high_watermark => {
                MarkerState::Committed
            }
            Some(last) if last.number == number => MarkerState::Uncommitted,
            _ => MarkerState::New,
        }
    }

    /// Every producer's last marker (for a snapshot).
    pub fn last_markers(&self) -> impl Iterator<Item = (i64, LastMarker)> + '_ {
        self.last_marker.iter().map(|(p, m)| (*p, *m))
    }

    /// Forgets aborted transactions that end before the log start.
    pub fn drop_before(&mut self, log_start: i64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
    }

    /// The last stable offset for a high watermark of `high_watermark`: the first offset of
    /// a transaction still open as of it, else the high watermark itself.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let open = self.open.values().copied();
        let ending = self
            .ending
            .iter()
            .filter(|e| e.marker >= high_watermark)
            .filter_map(|e| e.first_offset);
        open.chain(ending).fold(high_watermark, i64::min)
    }

    /// Aborted transactions that have records in `[from, to)`, oldest marker first.
    pub fn aborted_between(&self, from: i64, to: i64) -> impl Iterator<Item = &TxnRange> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(move |a| a.first_offset < to)
    }

    /// Open transactions as of `upto`: producer id and first offset. Those whose marker
    /// lies at or past `upto` count as open (for a snapshot as of `upto`).
    pub fn open_as_of(&self, upto: i64) -> Vec<(i64, i64)> {
        let ending = self
            .ending
            .iter()
            .filter(|e| e.marker >= upto)
            .filter_map(|e| Some((e.producer_id, e.first_offset?)));
        let mut out: Vec<(i64, i64)> = self
            .open
            .iter()
            .map(|(p, f)| (*p, *f))
            .chain(ending)
            .filter(|(_, first)| *first < upto)
            .collect();
        out.sort_unstable();
        out
    }

    /// Aborted transactions whose marker lies below `upto`.
    pub fn aborted_before(&self, upto: i64) -> impl Iterator<Item = &TxnRange> {
        self.aborted
            .iter()
            .take_while(move |a| a.last_offset < upto)
    }

    /// An index restored from a snapshot as of `upto`: these open and aborted
    /// transactions, and producers' last markers.
    pub fn restored(
        upto: i64,
        open: &[(i64, i64)],
        aborted: &[TxnRange],
        markers: &[(i64, LastMarker)],
    ) -> Self {
        TxnIndex {
            open: open.iter().copied().collect(),
            ending: VecDeque::new(),
            aborted: aborted.iter().copied().collect(),
            last_marker: markers.iter().copied().collect(),
            high_watermark: upto,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(p: i64, offset: i64) -> TxnEvent {
        TxnEvent::Data {
            producer_id: p,
            offset,
        }
    }
    fn end(p: i64, offset: i64, commit: bool) -> TxnEvent {
        TxnEvent::End {
            producer_id: p,
            offset,
            commit,
            number: offset as i32,
        }
    }

    #[test]
    fn the_stable_offset_waits_for_the_oldest_open_transaction() {
        let mut t = TxnIndex::new();
        t.apply(data(1, 10));
        t.apply(data(2, 12));
        t.apply(data(1, 14));
        t.advance(20);
        assert_eq!(t.last_stable_offset(20), 10);
        t.apply(end(1, 20, true));
        // The marker is not committed yet: producer 1's records stay unstable.
        assert_eq!(t.last_stable_offset(20), 10);
        t.advance(21);
        assert_eq!(t.last_stable_offset(21), 12);
        t.apply(end(2, 21, false));
        t.advance(22);
        assert_eq!(t.last_stable_offset(22), 22);
        let aborted: Vec<_> = t.aborted_between(0, 22).copied().collect();
        assert_eq!(
            aborted,
            vec![TxnRange {
                producer_id: 2,
                first_offset: 12,
                last_offset: 21
            }]
        );
        assert_eq!(t.aborted_between(22, 30).count(), 0);
        assert_eq!(t.aborted_between(0, 12).count(), 0);
    }

    #[test]
    fn a_truncated_marker_reopens_its_transaction() {
        let mut t = TxnIndex::new();
        t.apply(data(1, 5));
        t.advance(6);
        t.apply(end(1, 6, false));
        t.apply(data(1, 7));
        t.apply(data(3, 8));
        assert_eq!(t.aborted_between(0, 10).count(), 1);
        t.truncate(6);
        assert_eq!(t, {
            let mut expected = TxnIndex::new();
            expected.apply(data(1, 5));
            expected.advance(6);
            expected
        });
        assert_eq!(t.last_stable_offset(6), 5);
    }

    #[test]
    fn a_late_copy_of_a_marker_is_known_and_a_truncated_one_is_not() {
        let mut t = TxnIndex::new();
        t.apply(data(1, 0));
        t.apply(end(1, 1, true)); // transaction number 1
        assert_eq!(t.marker_state(1, 1), MarkerState::Uncommitted);
        t.advance(2);
        assert_eq!(t.marker_state(1, 1), MarkerState::Committed);
        assert_eq!(t.marker_state(1, 0), MarkerState::Committed, "an older one");
        assert_eq!(t.marker_state(1, 5), MarkerState::New);
        assert_eq!(t.marker_state(2, 1), MarkerState::New, "another producer");
        t.apply(data(1, 2));
        t.apply(end(1, 3, false)); // number 3
        t.truncate(3);
        assert_eq!(
            t.marker_state(1, 3),
            MarkerState::New,
            "gone with its truncation"
        );
        assert_eq!(t.marker_state(1, 1), MarkerState::Committed);
        assert_eq!(t.last_stable_offset(3), 2, "its transaction is open again");
    }

    #[test]
    fn a_snapshot_keeps_what_was_open_and_aborted_as_of_its_offset() {
        let mut t = TxnIndex::new();
        t.apply(data(1, 0));
        t.apply(end(1, 3, false));
        t.apply(data(2, 4));
        t.apply(end(2, 9, true));
        t.apply(data(4, 10));
        // As of 8, producer 2 was open, 4 had not begun, 1 was aborted.
        assert_eq!(t.open_as_of(8), vec![(2, 4)]);
        let aborted: Vec<_> = t.aborted_before(8).copied().collect();
        let restored = TxnIndex::restored(8, &t.open_as_of(8), &aborted, &[]);
        assert_eq!(restored.last_stable_offset(8), 4);
        assert_eq!(restored.aborted_between(0, 8).count(), 1);
        t.drop_before(4);
        assert_eq!(t.aborted_between(0, 20).count(), 0);
    }
}
