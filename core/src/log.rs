//! One partition's log: segments, offsets, the high watermark and retention.
//!
//! The log holds only metadata (segment sizes, a sparse offset/time index); the bytes live
//! in segment files that the driver writes and reads on the log's behalf.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::batch::BatchView;
use crate::canary::{is_planted, Canary};
use crate::config::TopicConfig;
use crate::producer::{ProducerTable, TxnEvent, TxnIndex};
use crate::storage::{SegmentId, StorageOp, TopicPartition};

/// A sparse index entry: the batch at `position` starts at `offset`; `max_timestamp` is the
/// largest timestamp among the batches from here to the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch at `position`.
    pub offset: i64,
    /// Byte position of that batch in the segment file.
    pub position: u32,
    /// Largest timestamp from this entry up to the next.
    pub max_timestamp: i64,
}

/// What the log knows about one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the first record, and the file name.
    pub base_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// Bytes in the file.
    pub size: u64,
    /// Largest record timestamp, -1 if empty.
    pub max_timestamp: i64,
    /// Broker time of the first append (for `segment.ms`), -1 if empty.
    pub created_at: i64,
    /// Sparse offset and time index.
    pub index: Vec<IndexEntry>,
    /// Bytes appended since the last index entry.
    pub bytes_since_index: u32,
}

impl Segment {
    /// An empty segment starting at `base_offset`.
    pub fn empty(base_offset: i64) -> Self {
        Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp: -1,
            created_at: -1,
            index: Vec::new(),
            bytes_since_index: 0,
        }
    }

    /// Records one batch appended at the end; adds an index entry every `interval` bytes.
    pub fn note_batch(
        &mut self,
        base_offset: i64,
        next_offset: i64,
        size: u32,
        max_ts: i64,
        interval: u32,
    ) {
        if self.index.is_empty() || self.bytes_since_index >= interval {
            self.index.push(IndexEntry {
                offset: base_offset,
                position: self.size as u32,
                max_timestamp: max_ts,
            });
            self.bytes_since_index = 0;
        } else if let Some(last) = self.index.last_mut() {
            last.max_timestamp = last.max_timestamp.max(max_ts);
        }
        self.bytes_since_index += size;
        self.size += u64::from(size);
        self.next_offset = next_offset;
        self.max_timestamp = self.max_timestamp.max(max_ts);
    }

    /// The last index entry at or before `offset`, as (offset, position).
    fn entry_for(&self, offset: i64) -> (i64, u32) {
        let i = self.index.partition_point(|e| e.offset <= offset);
        if i == 0 {
            (self.base_offset, 0)
        } else {
            (self.index[i - 1].offset, self.index[i - 1].position)
        }
    }
}

const INDEX_MAGIC: &[u8; 4] = b"SLX1";
const INDEX_ENTRY_BYTES: usize = 20;
const INDEX_FOOTER_BYTES: usize = 8 + 8 + 8 + 8 + 4;

/// Encodes a sealed segment's index file: magic, entries, then a footer with the segment's
/// summary and a CRC32C over everything before it.
pub fn encode_segment_index(segment: &Segment) -> Bytes {
    let mut buf =
        BytesMut::with_capacity(4 + segment.index.len() * INDEX_ENTRY_BYTES + INDEX_FOOTER_BYTES);
    buf.put_slice(INDEX_MAGIC);
    for e in &segment.index {
        buf.put_u32((e.offset - segment.base_offset) as u32);
        buf.put_u32(e.position);
        buf.put_i64(e.max_timestamp);
        buf.put_u32(0);
    }
    buf.put_i64(segment.next_offset);
    buf.put_u64(segment.size);
    buf.put_i64(segment.max_timestamp);
    buf.put_i64(segment.created_at);
    let crc = crc32c::crc32c(&buf);
    buf.put_u32(crc);
    buf.freeze()
}

/// Decodes an index file written by [`encode_segment_index`]; `None` if it is damaged or does
/// not describe a segment file of `file_size` bytes (the caller then rescans the segment).
pub fn decode_segment_index(base_offset: i64, bytes: &[u8], file_size: u64) -> Option<Segment> {
    if bytes.len() < 4 + INDEX_FOOTER_BYTES || &bytes[..4] != INDEX_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let entries_bytes = body.len() - 4 - (INDEX_FOOTER_BYTES - 4);
    if !entries_bytes.is_multiple_of(INDEX_ENTRY_BYTES) {
        return None;
    }
    let mut cursor = &body[4..];
    let mut index = Vec::with_capacity(entries_bytes / INDEX_ENTRY_BYTES);
    for _ in 0..entries_bytes / INDEX_ENTRY_BYTES {
        let relative = cursor.get_u32();
        let position = cursor.get_u32();
        let max_timestamp = cursor.get_i64();
        let _reserved = cursor.get_u32();
        index.push(IndexEntry {
            offset: base_offset + i64::from(relative),
            position,
            max_timestamp,
        });
    }
    let segment = Segment {
        base_offset,
        next_offset: cursor.get_i64(),
        size: cursor.get_u64(),
        max_timestamp: cursor.get_i64(),
        created_at: cursor.get_i64(),
        index,
        bytes_since_index: 0,
    };
    (segment.size == file_size && segment.next_offset >= base_offset).then_some(segment)
}

/// Where to read for a fetch: a byte range of one segment, ending at a committed batch edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// Segment to read.
    pub segment: SegmentId,
    /// Start position (a batch boundary at or before the fetch offset).
    pub position: u64,
    /// Base offset of the batch at `position`: lets a reader check that what it read is the
    /// batch it expected (the base offset is outside the CRC).
    pub first_offset: i64,
    /// Bytes to read.
    pub len: usize,
    /// Committed bytes available from `position` to the end of that segment's readable part.
    pub available: u64,
}

impl ReadPlan {
    /// When `read`, what this plan returned, holds no whole batch: the plan again, long
    /// enough for the batch it starts with, if that batch fits what is available (else the
    /// bytes there are not a batch this log can serve).
    pub fn widened_for(&self, read: &[u8]) -> Option<ReadPlan> {
        let needed = crate::batch::frame_size(read)?;
        (needed > self.len && needed as u64 <= self.available).then(|| ReadPlan {
            len: needed,
            ..self.clone()
        })
    }
}

/// Where a log ended at some moment: what a completed sync makes committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    /// Offset after the last record.
    pub offset: i64,
    /// Base offset of the segment that held the end.
    pub segment_base: i64,
    /// Byte length of that segment at the time.
    pub position: u64,
}

/// A fetch or list-offsets position that the log does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetOutOfRange;

/// A partition's log.
#[derive(Clone, Debug)]
pub struct PartitionLog {
    partition: TopicPartition,
    /// Segments by base offset; the last one is active.
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    /// End of the committed (durable) prefix; readers see nothing at or beyond it.
    high_watermark: i64,
    /// Segment base and byte position where the committed prefix ends.
    committed_end: (i64, u64),
    /// What idempotent producers wrote here, derived from the batches as they are written.
    producers: ProducerTable,
    /// The transactions written here, derived the same way.
    txns: TxnIndex,
}

impl PartitionLog {
    /// A new, empty log.
    pub fn new(partition: TopicPartition) -> (Self, StorageOp) {
        let log = Self::recovered(partition, vec![Segment::empty(0)]);
        let op = StorageOp::CreateSegment(log.segment_id(0));
        (log, op)
    }

    /// A log rebuilt from recovered segments (ordered, contiguous, at least one).
    /// Everything recovered was on disk, so it is all committed.
    pub fn recovered(partition: TopicPartition, segments: Vec<Segment>) -> Self {
        assert!(!segments.is_empty(), "a log has at least one segment");
        let first = segments[0].base_offset;
        let last = segments.last().expect("non-empty");
        let committed_end = (last.base_offset, last.size);
        let high_watermark = last.next_offset;
        let segments = segments.into_iter().map(|s| (s.base_offset, s)).collect();
        PartitionLog {
            partition,
            segments,
            log_start_offset: first,
            high_watermark,
            committed_end,
            producers: ProducerTable::new(),
            txns: TxnIndex::new(),
        }
    }

    /// What idempotent producers wrote to this log.
    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    /// The producer table, for whoever writes batches to this log.
    pub fn producers_mut(&mut self) -> &mut ProducerTable {
        &mut self.producers
    }

    /// The transactions written to this log.
    pub fn txns(&self) -> &TxnIndex {
        &self.txns
    }

    /// The transaction index, for whoever writes batches to this log.
    pub fn txns_mut(&mut self) -> &mut TxnIndex {
        &mut self.txns
    }

    /// Replaces the transaction index (one restored from a snapshot).
    pub fn set_txns(&mut self, txns: TxnIndex) {
        self.txns = txns;
    }

    /// Notes a batch just written at `offset` in the transaction index.
    pub fn note_txn(&mut self, view: &BatchView<'_>, offset: i64) {
        if let Some(event) = TxnEvent::of(view, offset) {
            self.txns.apply(event);
        }
    }

    /// The last stable offset: a `read_committed` consumer reads nothing at or past it.
    pub fn last_stable_offset(&self) -> i64 {
        if is_planted(Canary::ReadPastStableOffset) {
            return self.high_watermark;
        }
        self.txns.last_stable_offset(self.high_watermark)
    }

    /// The partition this log holds.
    pub fn partition(&self) -> &TopicPartition {
        &self.partition
    }
    /// First offset still held.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }
    /// End of the committed prefix.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    /// Total bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
    /// The segments, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values()
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log has at least one segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log has at least one segment")
    }
    fn segment_id(&self, base_offset: i64) -> SegmentId {
        SegmentId {
            partition: self.partition.clone(),
            base_offset,
        }
    }
    /// The active segment's id: where the next append goes.
    pub fn active_segment_id(&self) -> SegmentId {
        self.segment_id(self.active().base_offset)
    }

    /// Where the log ends now.
    pub fn end_point(&self) -> CommitPoint {
        let active = self.active();
        CommitPoint {
            offset: active.next_offset,
            segment_base: active.base_offset,
            position: active.size,
        }
    }

    /// Marks everything up to `point` (from [`Self::end_point`]) as committed.
    /// Returns true if the high watermark moved.
    pub fn commit(&mut self, point: CommitPoint) -> bool {
        assert!(
            point.offset <= self.log_end_offset(),
            "{}: high watermark {} above the log end {}",
            self.partition,
            point.offset,
            self.log_end_offset()
        );
        if point.offset <= self.high_watermark {
            return false;
        }
        self.high_watermark = point.offset;
        self.committed_end = (point.segment_base, point.position);
        self.txns.advance(point.offset);
        true
    }

    /// Sets the high watermark to `point`, up or down: a replica starting up knows nothing
    /// is committed beyond its log start until its leader says so.
    pub fn reset_high_watermark(&mut self, point: CommitPoint) {
        self.high_watermark = point.offset;
        self.committed_end = (point.segment_base, point.position);
        self.txns.advance(point.offset);
    }

    /// Deletes every segment and starts an empty log at `offset` (a replica that installs
    /// its leader's log start, or one whose log cannot be trusted).
    pub fn reset(&mut self, offset: i64, out: &mut Vec<StorageOp>) {
        for base in std::mem::take(&mut self.segments).into_keys() {
            out.push(StorageOp::DeleteSegment(self.segment_id(base)));
        }
        self.segments.insert(offset, Segment::empty(offset));
        out.push(StorageOp::CreateSegment(self.segment_id(offset)));
        self.log_start_offset = offset;
        self.high_watermark = offset;
        self.committed_end = (offset, 0);
        self.producers = ProducerTable::new();
        self.txns = TxnIndex::new();
        self.txns.advance(offset);
    }

    /// Deletes the segments that end at or before `offset` (never the active one).
    pub fn drop_before(&mut self, offset: i64, out: &mut Vec<StorageOp>) {
        self.drop_oldest_while(|oldest| oldest.next_offset <= offset, out);
    }

    /// Deletes segments from the front while `expired` says so, never the active one, and
    /// moves the log start past them. Returns true if any went.
    fn drop_oldest_while(
        &mut self,
        mut expired: impl FnMut(&Segment) -> bool,
        out: &mut Vec<StorageOp>,
    ) -> bool {
        let mut moved = false;
        while self.segments.len() > 1 {
            let oldest = self
                .segments
                .values()
                .next()
                .expect("more than one segment");
            if !expired(oldest) {
                break;
            }
            let base = oldest.base_offset;
            self.segments.remove(&base);
            out.push(StorageOp::DeleteSegment(self.segment_id(base)));
            moved = true;
        }
        if moved {
            self.log_start_offset = *self.segments.keys().next().expect("active remains");
            self.txns.drop_before(self.log_start_offset);
        }
        moved
    }

    /// Rolls the active segment if the next `batch_bytes` would overflow it or it is too old.
    /// Emits the seal of the old segment and the creation of the new one.
    /// Age is by the wall clock `wall`, as the segment's creation time on disk is.
    pub fn maybe_roll(
        &mut self,
        batch_bytes: u64,
        wall: i64,
        config: &TopicConfig,
        out: &mut Vec<StorageOp>,
    ) {
        let active = self.active();
        let full = active.size + batch_bytes > config.segment_bytes;
        let old =
            active.created_at >= 0 && wall.saturating_sub(active.created_at) >= config.segment_ms;
        if active.size > 0 && (full || old) {
            self.roll(out);
        }
    }

    fn roll(&mut self, out: &mut Vec<StorageOp>) {
        let active = self.active();
        let (base, next) = (active.base_offset, active.next_offset);
        out.push(StorageOp::SealSegment {
            segment: self.segment_id(base),
            index: encode_segment_index(active),
        });
        self.segments.insert(next, Segment::empty(next));
        out.push(StorageOp::CreateSegment(self.segment_id(next)));
    }

    /// Appends one batch already stamped with `base_offset == self.log_end_offset()`.
    pub fn append(
        &mut self,
        record_count: i32,
        size: u32,
        max_timestamp: i64,
        wall: i64,
        index_interval: u32,
    ) {
        let active = self.active_mut();
        let base = active.next_offset;
        if active.created_at < 0 {
            active.created_at = wall;
        }
        active.note_batch(
            base,
            base + i64::from(record_count),
            size,
            max_timestamp,
            index_interval,
        );
    }

    /// Plans the read for a fetch at `offset` of at most `max_bytes` committed bytes.
    /// `Ok(None)` means the offset is the high watermark: nothing to read yet.
    pub fn plan_read(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Option<ReadPlan>, OffsetOutOfRange> {
        let visible_end = if is_planted(Canary::ReadAboveHighWatermark) {
            self.log_end_offset()
        } else {
            self.high_watermark
        };
        // Offsets between the high watermark and the log end exist but are not readable
        // yet (a new leader's high watermark catches up after its first commit).
        if offset < self.log_start_offset || offset > visible_end.max(self.log_end_offset()) {
            return Err(OffsetOutOfRange);
        }
        if offset >= visible_end {
            return Ok(None);
        }
        // The segment holding `offset`: the last one that starts at or before it. An empty
        // segment can start exactly at the offset; skip forward over segments that end there.
        let segment = self
            .segments
            .range(..=offset)
            .next_back()
            .map(|(_, s)| s)
            .filter(|s| offset < s.next_offset)
            .or_else(|| {
                self.segments
                    .range(offset..)
                    .map(|(_, s)| s)
                    .find(|s| s.size > 0)
            })
            .ok_or(OffsetOutOfRange)?;
        let (first_offset, position) = segment.entry_for(offset);
        let position = u64::from(position);
        let readable_end = if segment.base_offset == self.committed_end.0
            && !is_planted(Canary::ReadAboveHighWatermark)
        {
            self.committed_end.1
        } else {
            segment.size
        };
        let available = readable_end.saturating_sub(position);
        let len = available.min(max_bytes as u64) as usize;
        Ok(Some(ReadPlan {
            segment: self.segment_id(segment.base_offset),
            position,
            first_offset,
            len,
            available,
        }))
    }

    /// Committed bytes from `offset` to the high watermark (approximate at index granularity);
    /// used to decide whether a long-polling fetch has enough data.
    pub fn committed_bytes_after(&self, offset: i64) -> u64 {
        let mut total = 0u64;
        for segment in self.segments.values().filter(|s| s.next_offset > offset) {
            let start = if segment.base_offset <= offset {
                u64::from(segment.entry_for(offset).1)
            } else {
                0
            };
            let end = if segment.base_offset == self.committed_end.0 {
                self.committed_end.1
            } else {
                segment.size
            };
            total += end.saturating_sub(start);
            if segment.base_offset == self.committed_end.0 {
                break;
            }
        }
        total
    }

    /// The first index interval that may hold a record with timestamp >= `timestamp`:
    /// a read that covers it, or `None` if no committed record is that recent.
    pub fn plan_timestamp_read(&self, timestamp: i64) -> Option<ReadPlan> {
        for segment in self.segments.values() {
            if segment.max_timestamp < timestamp {
                continue;
            }
            let i = segment
                .index
                .iter()
                .position(|e| e.max_timestamp >= timestamp)?;
            let position = u64::from(segment.index[i].position);
            let readable_end = if segment.base_offset == self.committed_end.0 {
                self.committed_end.1
            } else {
                segment.size
            };
            let end = segment
                .index
                .get(i + 1)
                .map_or(readable_end, |e| u64::from(e.position).min(readable_end));
            if end <= position {
                return None;
            }
            let len = (end - position) as usize;
            return Some(ReadPlan {
                segment: self.segment_id(segment.base_offset),
                position,
                first_offset: segment.index[i].offset,
                len,
                available: len as u64,
            });
        }
        None
    }

    /// Applies `retention.ms` / `retention.bytes`: drops whole committed segments from the
    /// front, never the active one (an expired active segment is rolled first so it can go
    /// next time). Returns true if the log start moved. Age is by the wall clock `wall`
    /// against record timestamps.
    pub fn enforce_retention(
        &mut self,
        wall: i64,
        config: &TopicConfig,
        out: &mut Vec<StorageOp>,
    ) -> bool {
        // A compacted topic keeps everything until compaction is built (more than Kafka
        // would keep, never less).
        let deletes = config.cleanup_policy.deletes();
        let active = self.active();
        if deletes
            && config.retention_ms >= 0
            && active.size > 0
            && active.next_offset == self.high_watermark
            && wall.saturating_sub(active.max_timestamp) > config.retention_ms
        {
            self.roll(out);
        }
        let mut size = self.size_bytes();
        let high_watermark = self.high_watermark;
        self.drop_oldest_while(
            |oldest| {
                let expired_by_time = deletes
                    && config.retention_ms >= 0
                    && oldest.max_timestamp >= 0
                    && wall.saturating_sub(oldest.max_timestamp) > config.retention_ms;
                let over_size = deletes
                    && config.retention_bytes >= 0
                    && size.saturating_sub(oldest.size) >= config.retention_bytes as u64;
                let committed = oldest.next_offset <= high_watermark;
                let drop = committed && (expired_by_time || over_size || oldest.size == 0);
                if drop {
                    size -= oldest.size;
                }
                drop
            },
            out,
        )
    }

    /// Cuts the log back so that `offset` is the next offset appended: every batch from
    /// there on is dropped (a Raft follower replacing an uncommitted suffix with its
    /// leader's). The caller knows where that batch starts: `position` in the segment whose
    /// base offset is `segment_base`. Later segments are deleted, the cut one becomes the
    /// active one (its index file goes: it describes bytes that are gone), and the high
    /// watermark never stays above the new end.
    pub fn truncate_to(
        &mut self,
        offset: i64,
        segment_base: i64,
        position: u64,
        out: &mut Vec<StorageOp>,
    ) -> Result<(), OffsetOutOfRange> {
        let fits = self.segments.get(&segment_base).is_some_and(|s| {
            s.base_offset <= offset && offset <= s.next_offset && position <= s.size
        });
        if !fits || offset < self.log_start_offset {
            return Err(OffsetOutOfRange);
        }
        let later: Vec<i64> = self
            .segments
            .range(segment_base + 1..)
            .map(|(b, _)| *b)
            .collect();
        for base in later {
            self.segments.remove(&base);
            out.push(StorageOp::DeleteSegment(self.segment_id(base)));
        }
        let segment = self.segments.get_mut(&segment_base).expect("checked above");
        segment.index.retain(|e| u64::from(e.position) < position);
        segment.max_timestamp = segment
            .index
            .iter()
            .map(|e| e.max_timestamp)
            .max()
            .unwrap_or(-1);
        segment.size = position;
        segment.next_offset = offset;
        segment.bytes_since_index = segment.index.last().map_or(position as u32, |e| {
            (position as u32).saturating_sub(e.position)
        });
        out.push(StorageOp::TruncateSegment {
            segment: self.segment_id(segment_base),
            len: position,
        });
        if self.high_watermark > offset {
            self.high_watermark = offset;
            self.committed_end = (segment_base, position);
            self.txns.advance(offset);
        }
        self.txns.truncate(offset);
        Ok(())
    }

    /// The earliest broker time at which this log may need a roll for `segment.ms`.
    pub fn roll_deadline(&self, config: &TopicConfig) -> Option<i64> {
        let active = self.active();
        (active.created_at >= 0).then(|| active.created_at.saturating_add(config.segment_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tp() -> TopicPartition {
        TopicPartition::new(&Arc::from("t"), 0)
    }

    #[test]
    fn index_file_round_trips_and_rejects_damage() {
        let mut segment = Segment::empty(100);
        for i in 0..50 {
            segment.note_batch(100 + i * 2, 102 + i * 2, 1000, 5000 + i, 4096);
        }
        let bytes = encode_segment_index(&segment);
        let back = decode_segment_index(100, &bytes, segment.size).expect("decodes");
        assert_eq!(back.index, segment.index);
        assert_eq!(back.next_offset, 200);
        assert!(
            decode_segment_index(100, &bytes, segment.size + 1).is_none(),
            "size mismatch"
        );
        let mut flipped = bytes.to_vec();
        flipped[9] ^= 0x10;
        assert!(
            decode_segment_index(100, &flipped, segment.size).is_none(),
            "bit flip"
        );
    }

    #[test]
    fn reads_stop_at_the_high_watermark() {
        let (mut log, _) = PartitionLog::new(tp());
        log.append(3, 100, 10, 0, 4096);
        log.commit(log.end_point());
        log.append(2, 80, 11, 0, 4096);
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.high_watermark(), 3);
        let plan = log.plan_read(1, 1 << 20).unwrap().unwrap();
        assert_eq!((plan.position, plan.len), (0, 100));
        assert_eq!(log.plan_read(3, 1 << 20), Ok(None));
        // Written but not committed: nothing to read yet, not out of range (a new leader's
        // high watermark lags its log end until its first commit).
        assert_eq!(log.plan_read(4, 1 << 20), Ok(None));
        assert_eq!(log.plan_read(5, 1 << 20), Ok(None));
        assert_eq!(log.plan_read(6, 1 << 20), Err(OffsetOutOfRange));
    }

    #[test]
    fn size_roll_and_retention_move_the_log_start() {
        let (mut log, _) = PartitionLog::new(tp());
        let config = TopicConfig {
            segment_bytes: 250,
            retention_bytes: 300,
            ..TopicConfig::default()
        };
        let mut out = Vec::new();
        for _ in 0..10 {
            log.maybe_roll(100, 0, &config, &mut out);
            log.append(1, 100, 0, 0, 4096);
        }
        log.commit(log.end_point());
        assert_eq!(
            log.segments().count(),
            5,
            "two batches per 250-byte segment"
        );
        assert!(log.enforce_retention(0, &config, &mut out));
        assert_eq!(log.log_start_offset(), 6);
        assert_eq!(
            log.size_bytes(),
            400,
            "deleting one more would go under 300"
        );
        assert!(matches!(out.last(), Some(StorageOp::DeleteSegment(s)) if s.base_offset == 4));
        assert_eq!(log.plan_read(2, 100), Err(OffsetOutOfRange));
    }

    #[test]
    fn time_retention_keeps_recent_segments() {
        let (mut log, _) = PartitionLog::new(tp());
        let config = TopicConfig {
            segment_bytes: 100,
            retention_ms: 1000,
            ..TopicConfig::default()
        };
        let mut out = Vec::new();
        for ts in [0, 10, 5000] {
            log.maybe_roll(100, ts, &config, &mut out);
            log.append(1, 100, ts, ts, 4096);
        }
        log.commit(log.end_point());
        log.enforce_retention(5500, &config, &mut out);
        assert_eq!(log.log_start_offset(), 2);
        log.enforce_retention(7000, &config, &mut out);
        assert_eq!(
            log.log_start_offset(),
            3,
            "expired active segment rolled and deleted"
        );
        assert_eq!(log.log_end_offset(), 3);
    }

    #[test]
    fn truncation_drops_later_segments_and_reopens_the_cut_one() {
        let (mut log, _) = PartitionLog::new(tp());
        let config = TopicConfig {
            segment_bytes: 250,
            ..TopicConfig::default()
        };
        let mut out = Vec::new();
        // Ten one-record batches of 100 bytes: segments at 0, 2, 4, 6, 8.
        for ts in 0..10 {
            log.maybe_roll(100, ts, &config, &mut out);
            log.append(1, 100, ts, ts, 50);
        }
        log.commit(log.end_point());
        out.clear();
        // Cut before offset 5: the second batch of the segment at 4.
        assert_eq!(log.truncate_to(5, 4, 100, &mut out), Ok(()));
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(
            log.high_watermark(),
            5,
            "the watermark never stays past the end"
        );
        assert_eq!(log.segments().count(), 3);
        let deleted: Vec<i64> = out
            .iter()
            .filter_map(|op| match op {
                StorageOp::DeleteSegment(s) => Some(s.base_offset),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, [6, 8]);
        assert!(
            matches!(out.last(), Some(StorageOp::TruncateSegment { segment, len: 100 })
            if segment.base_offset == 4)
        );
        assert_eq!(log.active_segment_id().base_offset, 4);
        assert_eq!(log.segments().last().map(|s| s.max_timestamp), Some(4));
        // Appends carry on from the cut, and reads stop there.
        log.append(1, 100, 20, 20, 50);
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(
            log.plan_read(5, 1 << 20),
            Ok(None),
            "the new batch is not committed"
        );
        let plan = log.plan_read(4, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (plan.segment.base_offset, plan.position, plan.len),
            (4, 0, 100)
        );
        // A cut that does not name a batch edge of a held segment is refused.
        assert_eq!(log.truncate_to(3, 4, 0, &mut out), Err(OffsetOutOfRange));
        assert_eq!(log.truncate_to(9, 4, 100, &mut out), Err(OffsetOutOfRange));
    }
}
