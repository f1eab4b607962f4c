//! Deciding what survives a restart: a scan of a segment's batches that stops at the first
//! torn, corrupt or out-of-sequence batch. The driver truncates the file to the returned
//! length; nothing after that point is ever served.

use crate::batch::{frame_size, BatchView};
use crate::canary::{is_planted, Canary};
use crate::log::Segment;

/// Why a scan stopped before the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// The file ended inside a batch (a torn write).
    TornTail,
    /// A batch's CRC or framing is wrong.
    Corrupt,
    /// A batch does not start at the offset the previous one ended at.
    OffsetGap,
}

/// Scans one segment file, fed in chunks.
#[derive(Debug)]
pub struct SegmentScanner {
    segment: Segment,
    index_interval: u32,
    max_batch_bytes: usize,
    stopped: Option<ScanStop>,
    /// Keep whole, well-framed batches whose CRC fails (see [`Self::keeping_damaged`]).
    keep_damaged: bool,
    /// The file's length and the base offset of the segment after it, if any: where a
    /// damaged last batch of the file ends.
    successor: (u64, Option<i64>),
    /// How many such batches were kept.
    damaged: u32,
}

/// What [`SegmentScanner::mend`] makes of a frame.
enum Mend {
    /// An intact batch under a damaged header, taken as a damaged batch: its size.
    Took(usize),
    /// Cannot tell until more of the file is in the chunk.
    NeedMore,
    /// A whole frame whose CRC checks out.
    Sound,
    /// Nothing to mend, or nothing that can be: the usual rules apply.
    Nothing,
}

/// The outcome of a scan: the valid prefix of the segment and why the rest (if any) was cut.
#[derive(Debug)]
pub struct ScanResult {
    /// Metadata of the valid prefix; `segment.size` is the length to truncate the file to.
    pub segment: Segment,
    /// Why bytes were cut, if they were.
    pub stopped: Option<ScanStop>,
}

impl SegmentScanner {
    /// Starts a scan of the segment whose first record is `base_offset`.
    pub fn new(base_offset: i64, index_interval: u32, max_batch_bytes: usize) -> Self {
        SegmentScanner {
            segment: Segment::empty(base_offset),
            index_interval,
            max_batch_bytes,
            stopped: None,
            keep_damaged: false,
            successor: (u64::MAX, None),
            damaged: 0,
        }
    }

    /// The file is `len` bytes long and the next segment starts at `next_base` (`None`:
    /// this is the last segment).
    pub fn with_successor(mut self, len: u64, next_base: Option<i64>) -> Self {
        self.successor = (len, next_base);
        self
    }

    /// For a replicated partition: a whole batch whose CRC fails but whose frame fits (right
    /// offset, sane size) is kept instead of ending the log. The replica finds it again as
    /// it reads its log back and repairs it from a peer (protocol-aware recovery); cutting
    /// there would silently drop entries this replica may have acknowledged.
    pub fn keeping_damaged(mut self, keep: bool) -> Self {
        self.keep_damaged = keep;
        self
    }

    /// Byte position the next chunk must start at.
    pub fn position(&self) -> u64 {
        self.segment.size
    }

    /// True once the scan found the end of the valid prefix.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Consumes whole valid batches from the front of `chunk` (which starts at
    /// [`Self::position`]) and returns the bytes consumed. The caller keeps the rest and feeds
    /// it again with more data after it, or calls [`Self::finish`] at end of file.
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut consumed = 0;
        while self.stopped.is_none() {
            let rest = &chunk[consumed..];
            let header = &rest[..rest.len().min(crate::batch::LOG_OVERHEAD)];
            if header.len() == crate::batch::LOG_OVERHEAD && header.iter().all(|&b| b == 0) {
                // Zeros where a frame should start: pages never written, or lost with a
                // failed fsync. An end, like a torn write, not a damaged batch.
                self.stopped = Some(ScanStop::TornTail);
                break;
            }
            let mut sound = false;
            if self.keep_damaged {
                match self.mend(rest) {
                    Mend::Took(size) => {
                        consumed += size;
                        continue;
                    }
                    Mend::NeedMore => break,
                    Mend::Sound => sound = true,
                    Mend::Nothing => {}
                }
            }
            let Some(size) = frame_size(rest) else {
                if rest.len() >= crate::batch::LOG_OVERHEAD {
                    self.stopped = Some(ScanStop::Corrupt);
                }
                break;
            };
            if size > self.max_batch_bytes {
                self.stopped = Some(ScanStop::Corrupt);
                break;
            }
            if rest.len() < size {
                break;
            }
            let view = match BatchView::split_first(rest) {
                Ok((view, _))
                    if (sound || view.crc_ok() || is_planted(Canary::SkipRecoveryCrc))
                        && view.last_offset_delta() >= 0 =>
                {
                    view
                }
                Ok((view, _))
                    if self.keep_damaged && view.base_offset() == self.segment.next_offset =>
                {
                    // Its record count is inside what the CRC failed on: the next frame's
                    // base offset says where it ends. Without one (yet) it is the tail, and
                    // waits for more data or is cut as torn.
                    // The segment's size already counts the batches consumed before it.
                    let ends_file = self.segment.size + size as u64 == self.successor.0;
                    let next = match (rest.get(size..size + 8), ends_file) {
                        (_, true) => match self.successor.1 {
                            Some(next) => next,
                            // The log's last batch, whole but failing its CRC: a flipped
                            // bit in a batch this replica may have acknowledged, not a torn
                            // write (those end short of a whole frame). Cutting it here
                            // would hide the loss from the replica, which then votes as if
                            // it never had it; kept (its end a placeholder), the replica's
                            // own load cuts it and waits to catch up from a leader first.
                            None => view.base_offset() + 1,
                        },
                        (Some(next), false) => {
                            i64::from_be_bytes(next.try_into().expect("8 bytes"))
                        }
                        (None, false) => break,
                    };
                    if next <= view.base_offset() {
                        self.stopped = Some(ScanStop::Corrupt);
                        break;
                    }
                    self.damaged += 1;
                    let last_timestamp = self.segment.max_timestamp;
                    self.segment.note_batch(
                        view.base_offset(),
                        next,
                        size as u32,
                        last_timestamp,
                        self.index_interval,
                    );
                    consumed += size;
                    continue;
                }
                _ => {
                    self.stopped = Some(ScanStop::Corrupt);
                    break;
                }
            };
            let base_offset = self.segment.next_offset;
            if view.base_offset() != base_offset {
                if !self.keep_damaged {
                    self.stopped = Some(ScanStop::OffsetGap);
                    break;
                }
                // An intact body where the previous batch ended (or at the file's base):
                // the base offset, outside the CRC, is what is damaged. Kept at the offset
                // the log says; the replica finds it as it reads its log back and repairs it.
                self.damaged += 1;
            }
            self.segment.note_batch(
                base_offset,
                base_offset + i64::from(view.last_offset_delta()) + 1,
                size as u32,
                view.max_timestamp(),
                self.index_interval,
            );
            if self.segment.created_at < 0 {
                self.segment.created_at = view.max_timestamp();
            }
            consumed += size;
        }
        consumed
    }

    /// Whether the frame at the front of `rest` is sound, or an intact batch under a
    /// damaged length or magic byte (see [`crate::batch::mend_frame`]), taken as a damaged
    /// batch. A length stated short of the truth makes the CRC fail at the stated end, so a
    /// whole frame's CRC is checked here (and only here, for a sound one).
    fn mend(&mut self, rest: &[u8]) -> Mend {
        let suspect = match frame_size(rest) {
            None => rest.len() >= crate::batch::LOG_OVERHEAD,
            Some(size) if size > self.max_batch_bytes => true,
            Some(size) if self.segment.size + size as u64 > self.successor.0 => true,
            Some(size) if size <= rest.len() => match BatchView::split_first(rest) {
                Ok((view, _)) if view.crc_ok() => return Mend::Sound,
                _ => true,
            },
            Some(_) => false, // The rest of the frame is still to come.
        };
        if !suspect {
            return Mend::Nothing;
        }
        if let Some(frame) = crate::batch::mend_frame(rest) {
            self.note_mended(&frame);
            return Mend::Took(frame.len());
        }
        let whole = rest.len() >= self.max_batch_bytes + crate::batch::LOG_OVERHEAD
            || self.segment.size + rest.len() as u64 >= self.successor.0;
        if whole {
            Mend::Nothing
        } else {
            Mend::NeedMore
        }
    }

    /// Takes a mended frame as a damaged batch at the offset the log says: the replica
    /// finds its header out of line as it reads its log back, and repairs it.
    fn note_mended(&mut self, frame: &[u8]) {
        let delta = BatchView::split_first(frame).map_or(0, |(v, _)| v.last_offset_delta().max(0));
        let base = self.segment.next_offset;
        let last_timestamp = self.segment.max_timestamp;
        self.damaged += 1;
        self.segment.note_batch(
            base,
            base + i64::from(delta) + 1,
            frame.len() as u32,
            last_timestamp,
            self.index_interval,
        );
    }

    /// Ends the scan; `leftover` is how many bytes the file held past the last consumed batch.
    pub fn finish(mut self, leftover: u64) -> ScanResult {
        if self.stopped.is_none() && leftover > 0 {
            self.stopped = Some(ScanStop::TornTail);
        }
        if self.damaged > 0 {
            tracing::warn!(
                base_offset = self.segment.base_offset,
                damaged = self.damaged,
                "kept batches with a bad CRC in a replicated partition; its replica repairs them"
            );
        }
        ScanResult {
            segment: self.segment,
            stopped: self.stopped,
        }
    }
}

/// Scans a whole segment held in memory (tests and small files); `replicated` as in
/// [`SegmentScanner::keeping_damaged`].
pub fn scan_segment(
    base_offset: i64,
    bytes: &[u8],
    index_interval: u32,
    max_batch_bytes: usize,
    replicated: bool,
    next_base: Option<i64>,
) -> ScanResult {
    let mut scanner = SegmentScanner::new(base_offset, index_interval, max_batch_bytes)
        .keeping_damaged(replicated)
        .with_successor(bytes.len() as u64, next_base);
    let consumed = scanner.feed(bytes);
    scanner.finish((bytes.len() - consumed) as u64)
}

/// One segment file as found on disk at startup.
#[derive(Debug, Clone)]
pub struct FoundSegment {
    /// Base offset (from the file name).
    pub base_offset: i64,
    /// Base offset of the next segment file, if any (set by [`recover_partition`]).
    pub next_base: Option<i64>,
    /// File length in bytes.
    pub len: u64,
    /// Contents of its index file, if there is one.
    pub index: Option<bytes::Bytes>,
}

/// What to do to a partition's files so that they hold exactly the valid log.
#[derive(Debug, Default)]
pub struct PartitionRecovery {
    /// The segments to load, oldest first (never empty).
    pub segments: Vec<Segment>,
    /// Files to truncate: (base offset, new length).
    pub truncate: Vec<(i64, u64)>,
    /// Files to delete: they follow a cut, so their offsets would leave a gap.
    pub delete: Vec<i64>,
    /// Whole batches are cut (a corrupt frame, an offset out of line, or segments that no
    /// longer follow on), not just a torn tail. In a replicated partition they may have
    /// been acknowledged: its replica must be marked as catching up (durably, before the
    /// cut) so that it does not vote as if it still held them.
    pub lost: bool,
}

/// Decides how a partition recovers. Sealed segments whose index file matches are trusted;
/// the last segment, and any sealed one without a good index, is scanned with `scan`.
/// The first cut ends the log: every later segment is deleted.
pub fn recover_partition(
    mut found: Vec<FoundSegment>,
    mut scan: impl FnMut(&FoundSegment) -> ScanResult,
) -> PartitionRecovery {
    found.sort_by_key(|s| s.base_offset);
    for i in 1..found.len() {
        found[i - 1].next_base = Some(found[i].base_offset);
    }
    let mut plan = PartitionRecovery::default();
    let last = found.len().saturating_sub(1);
    let mut expected_base: Option<i64> = None;
    let mut cut = false;
    for (i, file) in found.iter().enumerate() {
        if cut || expected_base.is_some_and(|b| b != file.base_offset) {
            cut = true;
            plan.lost |= file.len > 0;
            plan.delete.push(file.base_offset);
            continue;
        }
        let trusted = (i < last)
            .then_some(file.index.as_ref())
            .flatten()
            .and_then(|index| crate::log::decode_segment_index(file.base_offset, index, file.len));
        let segment = match trusted {
            Some(segment) => segment,
            None => {
                let result = scan(file);
                if result.stopped.is_some() {
                    tracing::warn!(base_offset = file.base_offset, stop = ?result.stopped, kept = result.segment.size, len = file.len, "truncating segment");
                    plan.truncate.push((file.base_offset, result.segment.size));
                    plan.lost |= result.stopped != Some(ScanStop::TornTail);
                    // Later segments can no longer follow on; they go.
                    cut = true;
                }
                result.segment
            }
        };
        expected_base = Some(segment.next_offset);
        plan.segments.push(segment);
    }
    // Drop empty segments that are not last, so the log never holds two bases for one offset.
    let n = plan.segments.len();
    let mut kept = Vec::with_capacity(n);
    for (i, s) in plan.segments.into_iter().enumerate() {
        if s.size == 0 && i + 1 < n {
            plan.delete.push(s.base_offset);
        } else {
            kept.push(s);
        }
    }
    plan.segments = kept;
    if plan.segments.is_empty() {
        plan.segments
            .push(Segment::empty(found.first().map_or(0, |s| s.base_offset)));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_batches() -> Vec<u8> {
        let mut bytes = Vec::new();
        for (base, value) in [(0i64, &b"first"[..]), (1, &b"second"[..])] {
            let mut one = crate::batch::data_batch(1000, &[(None, Some(value))]);
            crate::batch::stamp_base_offset(&mut one, base);
            bytes.extend_from_slice(&one);
        }
        bytes
    }

    /// Feeds `bytes` in chunks of `chunk` as file storage does.
    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> ScanResult {
        let mut scanner = SegmentScanner::new(0, 4096, 1 << 20)
            .keeping_damaged(true)
            .with_successor(bytes.len() as u64, None);
        let mut pending = Vec::new();
        for piece in bytes.chunks(chunk) {
            pending.extend_from_slice(piece);
            let used = scanner.feed(&pending);
            pending.drain(..used);
        }
        let leftover = bytes.len() as u64 - scanner.position();
        scanner.finish(leftover)
    }

    #[test]
    fn a_replicas_batch_under_a_flipped_length_or_magic_is_kept_not_cut() {
        let intact = two_batches();
        let first = frame_size(&intact).unwrap();
        for (at, bit) in [
            (first + 11, 0x01),
            (first + 9, 0x10),
            (16, 0x01),
            (11, 0x04),
        ] {
            let mut bytes = intact.clone();
            bytes[at] ^= bit;
            for chunk in [7, 40, bytes.len()] {
                let result = scan_in_chunks(&bytes, chunk);
                assert_eq!(
                    result.stopped, None,
                    "byte {at} bit {bit:#x}, chunks of {chunk}"
                );
                assert_eq!(result.segment.size, bytes.len() as u64);
                assert_eq!(result.segment.next_offset, 2);
            }
            // One copy: nothing to repair it from, so the scan stops there, as before.
            let single = scan_segment(0, &bytes, 4096, 1 << 20, false, None);
            assert!(single.stopped.is_some(), "byte {at}");
        }
    }

    #[test]
    fn a_replicas_whole_damaged_last_batch_is_kept_for_its_load_to_judge() {
        let mut bytes = two_batches();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10; // inside the last batch's CRC
        let replicated = scan_segment(0, &bytes, 4096, 1 << 20, true, None);
        assert_eq!(
            replicated.stopped, None,
            "kept: a flipped bit, not a torn write"
        );
        assert_eq!(replicated.segment.size, bytes.len() as u64);
        let single = scan_segment(0, &bytes, 4096, 1 << 20, false, None);
        assert_eq!(single.stopped, Some(ScanStop::Corrupt));
        // A write torn short of a whole frame is still cut.
        let torn = scan_segment(0, &bytes[..last], 4096, 1 << 20, true, None);
        assert_eq!(torn.stopped, Some(ScanStop::TornTail));
    }
}
