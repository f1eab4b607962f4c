//! One partition's producer table: what each idempotent producer last wrote there.
//!
//! A producer (KIP-98) numbers the batches it sends to a partition; the table keeps, per
//! producer id, its epoch and its last [`CACHED_BATCHES`] batches (sequence range, where in
//! the log, which offset), so that a retried batch is answered with the offset it was first
//! written at instead of being written twice, and a gap or a stale epoch is refused.
//!
//! The table is derived from the log alone. Every replica applies each batch as it writes
//! it, the leader and followers alike, so a new leader has the table the moment it is
//! elected. A batch is placed by `at` (its Raft index; the base offset for a partition of
//! one replica) and the term that wrote it. Batches above the commit point may still be
//! replaced by another leader's log: they are kept as uncommitted deltas over a committed
//! base, so a truncation is undone exactly, and they fold into the base as they commit.

use std::collections::{BTreeMap, VecDeque};

use kafka_protocol::ResponseError;

use super::txns::{LastMarker, TxnIndex, TxnRange};
use crate::batch::BatchView;

/// Batches remembered per producer and partition: the most a client has in flight
/// (`max.in.flight.requests.per.connection` may be at most 5 with idempotence on).
pub const CACHED_BATCHES: usize = 5;

/// Uncommitted deltas kept before the oldest folds into the base regardless. Only a
/// restarted replica, which knows no commit point until its leader speaks, reaches it:
/// a leader's own deltas commit (or are truncated) in a few round trips, and retries of
/// an idempotent producer are deduplicated rather than appended.
const MAX_DELTAS: usize = 4096;

/// The idempotence fields of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the batch's first record.
    pub first_seq: i32,
    /// Sequence of its last record (wrapping past `i32::MAX` to 0, as Kafka's do).
    pub last_seq: i32,
    /// A transaction marker: it carries the producer's epoch (fencing older ones) but no
    /// sequence, so it is not one of the producer's batches.
    pub control: bool,
}

impl ProducerBatch {
    /// The batch's idempotence fields; `None` if it has no producer id, or (not being a
    /// marker) no sequence: the group coordinator's transactional offsets have none.
    pub fn of(view: &BatchView<'_>) -> Option<Self> {
        let producer_id = view.producer_id();
        let first_seq = view.base_sequence();
        let control = view.is_control();
        (producer_id >= 0 && (first_seq >= 0 || control)).then(|| ProducerBatch {
            producer_id,
            epoch: view.producer_epoch(),
            first_seq,
            last_seq: add_seq(first_seq.max(0), view.last_offset_delta().max(0)),
            control,
        })
    }
}

/// `seq + n` on Kafka's sequence ring (0..=i32::MAX).
fn add_seq(seq: i32, n: i32) -> i32 {
    if seq > i32::MAX - n {
        n - (i32::MAX - seq) - 1
    } else {
        seq + n
    }
}

/// One batch as the table remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Its place in the log (Raft index, or base offset for a partition of one replica).
    pub at: u64,
    /// The term that wrote it (0 for a partition of one replica).
    pub term: u64,
    /// Offset of its first record, once written (a leader's proposal has none yet).
    pub base_offset: Option<i64>,
    /// Sequence range.
    pub first_seq: i32,
    /// Last sequence.
    pub last_seq: i32,
    /// The producer epoch it was written in.
    pub epoch: i16,
}

impl Written {
    /// `batch` as written at `at` in `term`, starting at `base_offset` once known.
    pub fn of(batch: &ProducerBatch, at: u64, term: u64, base_offset: Option<i64>) -> Self {
        Written {
            at,
            term,
            base_offset,
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            epoch: batch.epoch,
        }
    }
}

/// What to do with a batch a producer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New and in sequence: append it.
    Append,
    /// Already written (or proposed): answer with this batch's offset, append nothing.
    Duplicate(Written),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// The last batches, oldest first.
    batches: VecDeque<Written>,
    /// When the producer last wrote here, by the wall clock (for
    /// `producer.id.expiration.ms`). Wall time, as in Kafka: it is kept in snapshots and
    /// rebuilt from record timestamps, so it must mean the same after a restart.
    last_write: i64,
}

impl ProducerEntry {
    /// Puts a batch the entry missed back among its batches, in log order.
    fn restore(&mut self, written: Written, wall: i64) {
        if !self.batches.is_empty() && written.epoch < self.epoch {
            return; // A later epoch's batches supersede it.
        }
        if self.batches.is_empty() || written.epoch > self.epoch {
            self.batches.retain(|w| w.epoch >= written.epoch);
            self.epoch = written.epoch;
        }
        let at = self.batches.partition_point(|w| w.at < written.at);
        if self.batches.get(at).is_some_and(|w| w.at == written.at) {
            return; // Known already.
        }
        self.batches.insert(at, written);
        while self.batches.len() > CACHED_BATCHES {
            self.batches.pop_front();
        }
        self.last_write = self.last_write.max(wall);
    }

    fn record(&mut self, batch: &ProducerBatch, written: Written, wall: i64) {
        if batch.control {
            // A marker written with a newer epoch (a fenced producer's transaction aborted
            // by its successor) fences the older one here too.
            if batch.epoch > self.epoch || self.batches.is_empty() {
                self.batches.clear();
                self.epoch = self.epoch.max(batch.epoch);
            }
            self.last_write = self.last_write.max(wall);
            return;
        }
        if batch.epoch != self.epoch {
            self.batches.clear();
            self.epoch = batch.epoch;
        }
        self.batches.push_back(written);
        if self.batches.len() > CACHED_BATCHES {
            self.batches.pop_front();
        }
        self.last_write = self.last_write.max(wall);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Delta {
    batch: ProducerBatch,
    written: Written,
    wall: i64,
}

/// The producer table of one partition; see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerTable {
    /// Every batch at or below `folded`.
    base: BTreeMap<i64, ProducerEntry>,
    /// `base` with the deltas applied: what a new batch is checked against.
    current: BTreeMap<i64, ProducerEntry>,
    /// Batches above `folded`, in log order.
    deltas: VecDeque<Delta>,
    /// The last place folded into `base`.
    folded: u64,
    /// Batches recorded so far: tells whether a snapshot is out of date.
    changes: u64,
}

impl ProducerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of producers known.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True if no producer is known.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Checks a batch a producer sent against what it wrote before.
    ///
    /// An unknown producer may start at any sequence, as in Kafka: its earlier batches
    /// may have expired or been deleted by retention.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, ResponseError> {
        if batch.control {
            return Ok(Verdict::Append); // A marker has no sequence: the broker writes it.
        }
        if batch.first_seq < 0 {
            return Err(ResponseError::InvalidRecord);
        }
        let Some(entry) = self.current.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if batch.epoch > entry.epoch {
            // A new epoch (KIP-360: the producer bumped it) starts its sequences again.
            return match batch.first_seq {
                0 => Ok(Verdict::Append),
                _ => Err(ResponseError::OutOfOrderSequenceNumber),
            };
        }
        let cached = entry
            .batches
            .iter()
            .find(|w| w.first_seq == batch.first_seq && w.last_seq == batch.last_seq);
        if let Some(original) = cached {
            return Ok(Verdict::Duplicate(*original));
        }
        let Some(last) = entry.batches.back() else {
            return Ok(Verdict::Append);
        };
        if batch.first_seq == add_seq(last.last_seq, 1) {
            return Ok(Verdict::Append);
        }
        let oldest = entry.batches.front().expect("not empty").first_seq;
        if seq_before(batch.first_seq, oldest, last.last_seq) {
            // Written before the batches still cached: not twice, but its offset is gone.
            return Err(ResponseError::DuplicateSequenceNumber);
        }
        Err(ResponseError::OutOfOrderSequenceNumber)
    }

    /// Records a batch at `written.at`, after every batch recorded so far. A leader records
    /// its proposals (no offset yet) and records them again once written, with the offset.
    pub fn record(&mut self, batch: ProducerBatch, written: Written, wall: i64) {
        assert!(
            written.at > self.folded || self.folded == 0 && self.deltas.is_empty(),
            "producer table: batch at {} recorded below the folded point {}",
            written.at,
            self.folded
        );
        if let Some(i) = self.deltas.iter().position(|d| d.written.at >= written.at) {
            let same = &self.deltas[i];
            let proposed = same.written.at == written.at
                && same.written.term == written.term
                && same.batch == batch;
            if proposed {
                // The leader's own proposal, now written: fill in its offset.
                let at = written.at;
                self.deltas[i].written = written;
                if let Some(w) = self
                    .current
                    .get_mut(&batch.producer_id)
                    .and_then(|e| e.batches.iter_mut().rev().find(|w| w.at == at))
                {
                    *w = written;
                }
                return;
            }
            self.truncate_from(written.at);
        }
        self.changes += 1;
        self.current
            .entry(batch.producer_id)
            .or_default()
            .record(&batch, written, wall);
        self.deltas.push_back(Delta {
            batch,
            written,
            wall,
        });
        if self.deltas.len() > MAX_DELTAS {
            let oldest = self.deltas.front().expect("not empty").written.at;
            self.commit(oldest);
        }
    }

    /// A batch written long ago at `written.at` that the table never saw: its copy was
    /// damaged when the table was built from the log, and has been repaired since.
    pub fn restore(&mut self, batch: ProducerBatch, written: Written, wall: i64) {
        if batch.control {
            return; // No sequence to put back; later batches carry its epoch.
        }
        self.changes += 1;
        self.current
            .entry(batch.producer_id)
            .or_default()
            .restore(written, wall);
        if written.at <= self.folded {
            self.base
                .entry(batch.producer_id)
                .or_default()
                .restore(written, wall);
        } else {
            let at = self.deltas.partition_point(|d| d.written.at < written.at);
            if self
                .deltas
                .get(at)
                .is_none_or(|d| d.written.at != written.at)
            {
                self.deltas.insert(
                    at,
                    Delta {
                        batch,
                        written,
                        wall,
                    },
                );
            }
        }
    }

    /// Everything at or below `at` is committed: it will never be replaced.
    pub fn commit(&mut self, at: u64) {
        while self.deltas.front().is_some_and(|d| d.written.at <= at) {
            let d = self.deltas.pop_front().expect("front exists");
            self.base
                .entry(d.batch.producer_id)
                .or_default()
                .record(&d.batch, d.written, d.wall);
            self.folded = d.written.at;
        }
    }

    /// The log from `at` on is replaced: forget what it held.
    pub fn truncate_from(&mut self, at: u64) {
        if self.deltas.back().is_none_or(|d| d.written.at < at) {
            return;
        }
        if at <= self.folded {
            // Only a restarted replica that folded more than MAX_DELTAS unknown-commit
            // batches gets here. The base cannot be unwound: forget every producer, so
            // they are unknown (any sequence accepted) rather than wrongly known.
            tracing::warn!(
                at,
                folded = self.folded,
                "producer table truncated below its committed base; forgetting its producers"
            );
            *self = ProducerTable::default();
            return;
        }
        while self.deltas.back().is_some_and(|d| d.written.at >= at) {
            self.deltas.pop_back();
        }
        self.current = self.base.clone();
        for d in &self.deltas {
            self.current
                .entry(d.batch.producer_id)
                .or_default()
                .record(&d.batch, d.written, d.wall);
        }
    }

    /// Forgets producers that wrote nothing here for `expiration_ms` and have no batch
    /// above the commit point.
    pub fn expire(&mut self, wall: i64, expiration_ms: i64) {
        let live: std::collections::BTreeSet<i64> =
            self.deltas.iter().map(|d| d.batch.producer_id).collect();
        let stale = |id: &i64, e: &ProducerEntry| {
            !live.contains(id) && wall.saturating_sub(e.last_write) >= expiration_ms
        };
        self.base.retain(|id, e| !stale(id, e));
        self.current.retain(|id, e| !stale(id, e));
    }

    /// How many batches were recorded (a counter that moves with every change).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Epoch and last sequence of every producer known, by id (for inspection and tests).
    pub fn producers(&self) -> impl Iterator<Item = (i64, i16, Option<i32>)> + '_ {
        self.current
            .iter()
            .map(|(id, e)| (*id, e.epoch, e.batches.back().map(|w| w.last_seq)))
    }
}

/// A snapshot of a partition's table as of an offset (for a partition of one copy, whose
/// batches are placed by base offset): what a restart reads instead of the whole log.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRecord {
    /// Every batch below this offset is in the snapshot; the log from here on is read back.
    #[prost(int64, tag = "1")]
    upto: i64,
    #[prost(message, repeated, tag = "2")]
    producers: Vec<SnapshotProducer>,
    /// Transactions open as of `upto`.
    #[prost(message, repeated, tag = "3")]
    open_txns: Vec<SnapshotTxn>,
    /// Aborted transactions whose marker lies below `upto`.
    #[prost(message, repeated, tag = "4")]
    aborted_txns: Vec<SnapshotTxn>,
    /// Each producer's last marker below `upto`: (producer id in `producer_id`, offset in
    /// `last_offset`, transaction number in `first_offset`).
    #[prost(message, repeated, tag = "5")]
    last_markers: Vec<SnapshotTxn>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotTxn {
    #[prost(int64, tag = "1")]
    producer_id: i64,
    #[prost(int64, tag = "2")]
    first_offset: i64,
    /// The marker's offset (aborted transactions only).
    #[prost(int64, tag = "3")]
    last_offset: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotProducer {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    last_write: i64,
    /// (epoch, first sequence, last sequence, base offset) of each batch, oldest first.
    #[prost(message, repeated, tag = "3")]
    batches: Vec<SnapshotBatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotBatch {
    #[prost(int32, tag = "1")]
    epoch: i32,
    #[prost(int32, tag = "2")]
    first_seq: i32,
    #[prost(int32, tag = "3")]
    last_seq: i32,
    #[prost(int64, tag = "4")]
    base_offset: i64,
}

impl ProducerTable {
    /// The table as it stood at offset `upto` (the partition's durable end), for a partition
    /// of one copy: batches at or past it are left out, since a crash may still take them
    /// and the log is read back from `upto` anyway. A producer whose cached batches all lie
    /// past `upto` is left out too: the batches before them were answered (a producer has
    /// at most five in flight), so none of them is retried.
    pub fn snapshot(&self, upto: i64, txns: &TxnIndex) -> Vec<u8> {
        use prost::Message as _;
        let producers = self
            .current
            .iter()
            .filter_map(|(&id, entry)| {
                let batches: Vec<SnapshotBatch> = entry
                    .batches
                    .iter()
                    .filter_map(|w| {
                        let base_offset = w.base_offset.filter(|b| *b < upto)?;
                        Some(SnapshotBatch {
                            epoch: i32::from(w.epoch),
                            first_seq: w.first_seq,
                            last_seq: w.last_seq,
                            base_offset,
                        })
                    })
                    .collect();
                (!batches.is_empty()).then_some(SnapshotProducer {
                    id,
                    last_write: entry.last_write,
                    batches,
                })
            })
            .collect();
        let open_txns = txns
            .open_as_of(upto)
            .into_iter()
            .map(|(producer_id, first_offset)| SnapshotTxn {
                producer_id,
                first_offset,
                last_offset: -1,
            })
            .collect();
        let aborted_txns = txns
            .aborted_before(upto)
            .map(|a| SnapshotTxn {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
                last_offset: a.last_offset,
            })
            .collect();
        // A marker at or past `upto` is read back with the log; the one before it is not
        // known then, and a transaction number is only ever compared with a newer one's.
        let last_markers = txns
            .last_markers()
            .filter(|(_, m)| m.offset < upto)
            .map(|(producer_id, m)| SnapshotTxn {
                producer_id,
                first_offset: i64::from(m.number),
                last_offset: m.offset,
            })
            .collect();
        let record = SnapshotRecord {
            upto,
            producers,
            open_txns,
            aborted_txns,
            last_markers,
        };
        record.encode_to_vec()
    }

    /// A table and transaction index from a [`Self::snapshot`], and the offset the log must
    /// be read back from.
    pub fn from_snapshot(bytes: &[u8]) -> Option<(ProducerTable, TxnIndex, i64)> {
        use prost::Message as _;
        let record = SnapshotRecord::decode(bytes).ok()?;
        let open: Vec<(i64, i64)> = record
            .open_txns
            .iter()
            .map(|t| (t.producer_id, t.first_offset))
            .collect();
        let aborted: Vec<TxnRange> = record
            .aborted_txns
            .iter()
            .map(|t| TxnRange {
                producer_id: t.producer_id,
                first_offset: t.first_offset,
                last_offset: t.last_offset,
            })
            .collect();
        let markers: Vec<(i64, LastMarker)> = record
            .last_markers
            .iter()
            .filter_map(|t| {
                let number = i32::try_from(t.first_offset).ok()?;
                Some((
                    t.producer_id,
                    LastMarker {
                        number,
                        offset: t.last_offset,
                    },
                ))
            })
            .collect();
        let txns = TxnIndex::restored(record.upto, &open, &aborted, &markers);
        let mut table = ProducerTable::new();
        let mut batches: Vec<(i64, ProducerBatch, i64)> = Vec::new();
        for p in &record.producers {
            for b in &p.batches {
                let batch = ProducerBatch {
                    producer_id: p.id,
                    epoch: i16::try_from(b.epoch).ok()?,
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                    control: false,
                };
                batches.push((b.base_offset, batch, p.last_write));
            }
        }
        // In log order, as they were first recorded.
        batches.sort_by_key(|(offset, _, _)| *offset);
        for (offset, batch, last_write) in batches {
            let at = u64::try_from(offset).ok()?;
            if at < table.folded || offset >= record.upto {
                return None; // Not a snapshot this code wrote.
            }
            table.record(batch, Written::of(&batch, at, 0, Some(offset)), last_write);
            table.commit(at);
        }
        Some((table, txns, record.upto))
    }
}

/// True if `seq` lies in the window of sequences that ends just before `oldest`, i.e. was
/// used before it, given that the producer's sequences run up to `last`.
fn seq_before(seq: i32, oldest: i32, last: i32) -> bool {
    // Distances on the ring, measured back from the oldest cached sequence.
    let ring = i64::from(i32::MAX) + 1;
    let back = (i64::from(oldest) - i64::from(seq)).rem_euclid(ring);
    let span = (i64::from(last) - i64::from(oldest)).rem_euclid(ring);
    back > 0 && back <= ring / 2 - span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: i64, epoch: i16, first: i32, count: i32) -> ProducerBatch {
        ProducerBatch {
            control: false,
            producer_id: id,
            epoch,
            first_seq: first,
            last_seq: add_seq(first, count - 1),
        }
    }

    fn written(at: u64, b: &ProducerBatch, offset: Option<i64>) -> Written {
        Written::of(b, at, 1, offset)
    }

    /// Records `b` at `at` as written at offset `10 * at`.
    fn write(t: &mut ProducerTable, at: u64, b: ProducerBatch) {
        t.record(b, written(at, &b, Some(10 * at as i64)), 0);
    }

    #[test]
    fn in_sequence_batches_append_and_a_retry_is_the_original() {
        let mut t = ProducerTable::new();
        let (a, b) = (batch(7, 0, 0, 3), batch(7, 0, 3, 2));
        assert_eq!(t.check(&a), Ok(Verdict::Append));
        write(&mut t, 1, a);
        assert_eq!(t.check(&b), Ok(Verdict::Append));
        write(&mut t, 2, b);
        let Ok(Verdict::Duplicate(original)) = t.check(&a) else {
            panic!("a retry of the first batch is a duplicate");
        };
        assert_eq!(original.base_offset, Some(10));
    }

    #[test]
    fn gaps_old_epochs_and_forgotten_retries_are_refused() {
        let mut t = ProducerTable::new();
        for i in 0..7 {
            write(&mut t, i + 1, batch(7, 1, i as i32, 1));
        }
        assert_eq!(
            t.check(&batch(7, 1, 9, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(
            t.check(&batch(7, 0, 7, 1)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        // Sequence 0 was written but is no longer among the last five.
        assert_eq!(
            t.check(&batch(7, 1, 0, 1)),
            Err(ResponseError::DuplicateSequenceNumber)
        );
        // A bumped epoch starts again at 0, and only there.
        assert_eq!(t.check(&batch(7, 2, 0, 1)), Ok(Verdict::Append));
        assert_eq!(
            t.check(&batch(7, 2, 7, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        // A producer not seen here may start anywhere.
        assert_eq!(t.check(&batch(8, 0, 40, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut t = ProducerTable::new();
        let a = batch(7, 0, i32::MAX - 1, 4);
        assert_eq!(a.last_seq, 1);
        write(&mut t, 1, a);
        assert_eq!(t.check(&batch(7, 0, 2, 1)), Ok(Verdict::Append));
        assert_eq!(
            t.check(&batch(7, 0, 3, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
    }

    #[test]
    fn a_truncation_undoes_exactly_the_uncommitted_batches() {
        let mut t = ProducerTable::new();
        write(&mut t, 1, batch(7, 0, 0, 1));
        write(&mut t, 2, batch(7, 0, 1, 1));
        t.commit(1);
        let before = t.clone();
        write(&mut t, 3, batch(7, 0, 2, 1));
        write(&mut t, 4, batch(9, 0, 0, 1));
        t.truncate_from(3);
        assert_eq!(t.current, before.current);
        // Another leader's batch at the same place replaces what was there.
        write(&mut t, 2, batch(7, 0, 1, 5));
        assert_eq!(t.producers().collect::<Vec<_>>(), vec![(7, 0, Some(5))]);
        // A proposal written at its place only gains its offset.
        let b = batch(7, 0, 6, 1);
        t.record(b, written(3, &b, None), 0);
        write(&mut t, 3, b);
        let Ok(Verdict::Duplicate(w)) = t.check(&b) else {
            panic!("written proposal is a duplicate");
        };
        assert_eq!(w.base_offset, Some(30));
    }

    #[test]
    fn a_snapshot_restores_the_table_as_of_its_offset() {
        let mut t = ProducerTable::new();
        for (offset, b) in [
            (0, batch(7, 0, 0, 2)),
            (2, batch(8, 3, 0, 1)),
            (3, batch(7, 0, 2, 2)),
        ] {
            t.record(b, Written::of(&b, offset, 0, Some(offset as i64)), 50);
            t.commit(offset);
        }
        let mut txns = TxnIndex::new();
        txns.apply(super::super::TxnEvent::Data {
            producer_id: 8,
            offset: 2,
        });
        let (restored, restored_txns, upto) =
            ProducerTable::from_snapshot(&t.snapshot(5, &txns)).expect("decodes");
        assert_eq!(upto, 5);
        assert_eq!(restored_txns.last_stable_offset(5), 2);
        assert_eq!(
            restored.producers().collect::<Vec<_>>(),
            t.producers().collect::<Vec<_>>()
        );
        let retry = batch(7, 0, 2, 2);
        assert_eq!(restored.check(&retry), t.check(&retry));
        // As of offset 3, the last batch of producer 7 is not in it yet.
        let (early, _, _) = ProducerTable::from_snapshot(&t.snapshot(3, &txns)).unwrap();
        assert_eq!(early.check(&retry), Ok(Verdict::Append));
        assert_eq!(ProducerTable::from_snapshot(b"\xff\xff"), None);
    }

    #[test]
    fn a_repaired_batch_takes_its_place_among_the_producers_batches() {
        let mut t = ProducerTable::new();
        let (a, b, c) = (batch(7, 0, 0, 1), batch(7, 0, 1, 1), batch(7, 0, 2, 1));
        write(&mut t, 1, a);
        write(&mut t, 3, c); // b's copy at 2 was damaged when the table was built
        t.commit(1);
        t.restore(b, Written::of(&b, 2, 1, Some(20)), 0);
        let Ok(Verdict::Duplicate(w)) = t.check(&b) else {
            panic!("the repaired batch is known")
        };
        assert_eq!(w.base_offset, Some(20));
        assert_eq!(t.producers().collect::<Vec<_>>(), vec![(7, 0, Some(2))]);
        // Folded into the base later, it stays.
        t.commit(3);
        t.truncate_from(4);
        assert!(matches!(t.check(&b), Ok(Verdict::Duplicate(_))));
    }

    #[test]
    fn producers_expire_once_idle_and_committed() {
        let mut t = ProducerTable::new();
        let b = batch(7, 0, 0, 1);
        t.record(b, written(1, &b, Some(0)), 100);
        t.expire(10_000, 1_000);
        assert_eq!(t.len(), 1, "an uncommitted producer stays");
        t.commit(1);
        t.expire(1_050, 1_000);
        assert_eq!(t.len(), 1, "not idle long enough");
        t.expire(1_100, 1_000);
        assert!(t.is_empty());
    }
}
