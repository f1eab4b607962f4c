//! Deciding what survives a restart: a scan of a segment's batches that stops at the first
//! torn, corrupt or out-of-sequence batch. The driver truncates the file to the returned
//! length; nothing after that point is ever served.

use crate::batch::{frame_size, BatchView};
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
        }
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
                Ok((view, _)) if view.crc_ok() && view.last_offset_delta() >= 0 => view,
                _ => {
                    self.stopped = Some(ScanStop::Corrupt);
                    break;
                }
            };
            if view.base_offset() != self.segment.next_offset {
                self.stopped = Some(ScanStop::OffsetGap);
                break;
            }
            self.segment.note_batch(
                view.base_offset(),
                view.next_offset(),
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

    /// Ends the scan; `leftover` is how many bytes the file held past the last consumed batch.
    pub fn finish(mut self, leftover: u64) -> ScanResult {
        if self.stopped.is_none() && leftover > 0 {
            self.stopped = Some(ScanStop::TornTail);
        }
        ScanResult { segment: self.segment, stopped: self.stopped }
    }
}

/// Scans a whole segment held in memory (tests and small files).
pub fn scan_segment(base_offset: i64, bytes: &[u8], index_interval: u32, max_batch_bytes: usize) -> ScanResult {
    let mut scanner = SegmentScanner::new(base_offset, index_interval, max_batch_bytes);
    let consumed = scanner.feed(bytes);
    scanner.finish((bytes.len() - consumed) as u64)
}
