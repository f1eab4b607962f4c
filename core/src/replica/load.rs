//! Start-up of a replica: read its segments back to rebuild the entry table.
//!
//! Every batch is one entry; its term is the leader epoch stamped when it was written. The
//! first retained entry is the batch at the recorded start offset. What does not fit that
//! picture is repaired, never served: a corrupt batch cuts the log there (the leader sends
//! the rest again), and a log that does not reach back to the recorded start is emptied.
//!
//! Kafka's CRC leaves a batch's base offset and leader epoch out, so both are checked
//! against what the log itself says: the base offset must be where the previous batch
//! ended, and the epoch must be the term that the last leader change before it carries in
//! its value (inside its CRC; every entry of a term follows its leader's change in any Raft
//! log). A batch whose body is intact but whose header disagrees is kept as a damaged entry
//! with the offset and term the log says, and repaired from a peer like a bad CRC.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{ConfState, HardState};
use tracing::warn;

use super::entries::{EntryKind, EntryLog, EntryMeta, LogStart};
use super::{ReadRequest, READ_CHUNK};
use crate::batch::{self, frame_size, BatchView, LOG_OVERHEAD};
use crate::log::{CommitPoint, PartitionLog};
use crate::producer::{ProducerBatch, TxnEvent, Written};
use crate::storage::{SegmentId, StorageOp, TopicPartition};

/// Whether a replica may lack entries it acknowledged, and so must catch up with a leader
/// before it votes; ordered by how much that says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum CatchUp {
    /// It holds everything it acknowledged.
    No,
    /// Reading its log back cut its last batch (whole, failing its CRC: a flipped bit or a
    /// torn unsynced write), or found a log that did not line up with its recorded start (a
    /// crash while a leader's start was being installed). Not recorded across a restart:
    /// after a power loss every replica may have a torn tail, and marks kept by a majority
    /// would leave the partition without anyone to vote.
    UntilRestart,
    /// Whole batches before the tail were cut, or it joined a group with a history: recorded
    /// with its log start (before the cut) until a leader has brought it up to date.
    Recorded,
}

/// What a loader wants next.
pub(super) enum Step {
    /// Issue this read.
    Read(ReadRequest),
    /// A read is in flight.
    Wait,
    /// Everything is read.
    Done,
}

pub(super) struct Loader {
    start: LogStart,
    hard_state: HardState,
    conf_state: ConfState,
    /// (base offset, size) of each segment, oldest first.
    segments: Vec<(i64, u64)>,
    segment: usize,
    position: u64,
    read_len: usize,
    in_flight: Option<u64>,
    table: VecDeque<EntryMeta>,
    /// Changes of the membership entries read, by index.
    memberships: BTreeMap<u64, Vec<u8>>,
    /// The offset the next entry must start at.
    expected: i64,
    /// The term every entry up to the next leader change must carry: the last intact
    /// leader change's, or at first the term of the entry before the retained log; `None`
    /// after a leader change written before they carried their term, or before the first
    /// entry of a log that starts at its beginning.
    governing: Option<u64>,
    /// The term of the last entry taken: terms never go down along a log.
    last_term: u64,
    /// The log does not line up with the recorded start: empty it.
    misaligned: bool,
    /// What the cut (if any) means for the replica.
    cut: CatchUp,
    /// Indexes of entries whose bytes fail their CRC: kept in the table (their frame says
    /// where they are and which entry they are), repaired from a peer, never served.
    damaged: Vec<u64>,
    /// Idempotent producers' batches among the entries, in log order: the producer
    /// table is rebuilt from them.
    producers: Vec<(ProducerBatch, Written, i64)>,
    /// Transactional batches and markers among the entries, in log order.
    txns: Vec<TxnEvent>,
    done: bool,
}

impl Loader {
    pub(super) fn new(
        start: LogStart,
        hard_state: HardState,
        conf_state: ConfState,
        log: &PartitionLog,
    ) -> Self {
        let segments: Vec<(i64, u64)> = log.segments().map(|s| (s.base_offset, s.size)).collect();
        let misaligned = segments
            .first()
            .is_some_and(|(base, _)| *base > start.offset);
        Loader {
            start,
            hard_state,
            conf_state,
            segments,
            segment: 0,
            position: 0,
            read_len: READ_CHUNK,
            in_flight: None,
            table: VecDeque::new(),
            memberships: BTreeMap::new(),
            expected: start.offset,
            // The entry just before the retained log is in the term of the last leader
            // change before it, and so is every entry up to the next one.
            governing: (start.index > 0).then_some(start.term),
            last_term: start.term,
            misaligned,
            cut: CatchUp::No,
            damaged: Vec::new(),
            producers: Vec::new(),
            txns: Vec::new(),
            done: misaligned,
        }
    }

    pub(super) fn next(&mut self, tp: &TopicPartition, tag: u64) -> Step {
        if self.in_flight.is_some() {
            return Step::Wait;
        }
        while !self.done {
            let Some(&(base, size)) = self.segments.get(self.segment) else {
                break;
            };
            if self.position >= size {
                self.segment += 1;
                self.position = 0;
                continue;
            }
            self.in_flight = Some(tag);
            return Step::Read(ReadRequest {
                tag,
                segment: SegmentId {
                    partition: tp.clone(),
                    base_offset: base,
                },
                position: self.position,
                len: self.read_len.min((size - self.position) as usize),
            });
        }
        self.done = true;
        Step::Done
    }

    pub(super) fn on_read(
        &mut self,
        tag: u64,
        log: &mut PartitionLog,
        result: Result<Bytes, String>,
        ops: &mut Vec<StorageOp>,
    ) {
        if self.in_flight != Some(tag) {
            return;
        }
        self.in_flight = None;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(partition = %log.partition(), error = %e, "reading the log back failed; cutting it there");
                return self.cut(log, ops);
            }
        };
        let (segment_base, segment_size) = self.segments[self.segment];
        let mut consumed = 0;
        self.read_len = READ_CHUNK;
        loop {
            let rest = &bytes[consumed..];
            if rest.is_empty() {
                break;
            }
            // An intact batch under a damaged length or magic byte is mended (see
            // `batch::mend_frame`) and taken as a damaged entry, repaired from a peer.
            let mut mended = None;
            let size = match frame_size(rest) {
                Some(size) if size <= rest.len() => size,
                Some(size)
                    if consumed == 0
                        && size > LOG_OVERHEAD
                        && self.position + size as u64 <= segment_size =>
                {
                    self.read_len = size; // A batch larger than one chunk: read it whole.
                    break;
                }
                Some(_) if consumed > 0 => break,
                _ => match batch::mend_frame(rest) {
                    Some(frame) => mended.insert(frame).len(),
                    None if consumed > 0 => break, // Again from here, with a whole chunk.
                    None => return self.cut(log, ops),
                },
            };
            let mut intact = mended.is_some()
                || BatchView::split_first(&rest[..size]).is_ok_and(|(v, _)| v.crc_ok());
            if !intact {
                // A length stated short of the truth fails the CRC too.
                mended = batch::mend_frame(rest);
                intact = mended.is_some();
                let reaches_end = self.position + rest.len() as u64 >= segment_size;
                if !intact && consumed > 0 && !reaches_end {
                    break; // The true frame may run past this read: again from here.
                }
            }
            let frame = mended.as_deref().unwrap_or(&rest[..size]);
            let size = frame.len();
            let view = match BatchView::split_first(frame) {
                Ok((view, _))
                    if view.magic() == 2 && (view.last_offset_delta() >= 0 || !intact) =>
                {
                    view
                }
                _ => {
                    warn!(partition = %log.partition(), offset = self.expected, "unreadable batch in a replica's log; cutting it there");
                    return self.cut(log, ops);
                }
            };
            let control = batch::control_record(&view);
            // Base offset: outside the CRC, but the previous entry says where this one
            // starts. An intact body in the right place with a wrong base offset is header
            // damage; offsets come from the log, and the entry is repaired.
            let header_offset_bad =
                intact && !self.table.is_empty() && view.base_offset() != self.expected;
            let base_offset = if header_offset_bad {
                self.expected
            } else {
                view.base_offset()
            };
            if !intact && matches!(control, Some((batch::MEMBERSHIP_CONTROL_TYPE, _))) {
                // Its membership change cannot be trusted, and raft-rs needs it whole.
                warn!(partition = %log.partition(), offset = view.base_offset(), "membership entry with a bad CRC; cutting the log there");
                return self.cut(log, ops);
            }
            // A damaged batch's record count is inside what its CRC failed on: where it ends
            // is where the next frame starts (in this read, or the next segment's base).
            let next_offset = if intact {
                base_offset + i64::from(view.last_offset_delta()) + 1
            } else {
                match rest.get(size..size + 8) {
                    Some(next) => i64::from_be_bytes(next.try_into().expect("8 bytes")),
                    None if self.position + size as u64 == segment_size => {
                        match self.segments.get(self.segment + 1) {
                            Some(&(next_base, _)) => next_base,
                            None => {
                                warn!(partition = %log.partition(), offset = view.base_offset(), "the log's last batch has a bad CRC; cutting it");
                                return self.cut_as(CatchUp::UntilRestart, log, ops);
                            }
                        }
                    }
                    None if consumed > 0 => break,
                    None => {
                        self.read_len = size + 8;
                        break;
                    }
                }
            };
            if next_offset <= base_offset {
                warn!(partition = %log.partition(), offset = view.base_offset(), "damaged batch followed by a lower offset; cutting the log there");
                return self.cut(log, ops);
            }
            if !intact && !next_stamp_holds(rest, size, base_offset, next_offset) {
                // Where the damaged batch ends came from the next frame's base offset, which
                // no CRC covers: it could be damaged too (seed 72 of cluster3-bit-flip: a
                // flipped high bit there numbered the rest of the log 2^26 too high).
                warn!(partition = %log.partition(), offset = view.base_offset(), next_offset, "damaged batch whose end the next batch does not vouch for; cutting the log there");
                return self.cut(log, ops);
            }
            let term = self.term_of(&view, intact, control);
            if base_offset >= self.start.offset {
                if base_offset != self.expected {
                    if self.table.is_empty() {
                        self.misaligned = true;
                        self.done = true;
                        return;
                    }
                    return self.cut(log, ops);
                }
                let Some((term, header_epoch_bad)) = term else {
                    warn!(partition = %log.partition(), offset = base_offset, epoch = view.leader_epoch(), "leader epoch out of line and no leader change to say the right one; cutting the log there");
                    return self.cut(log, ops);
                };
                let header_bad = header_offset_bad || header_epoch_bad || mended.is_some();
                if header_bad && matches!(control, Some((batch::MEMBERSHIP_CONTROL_TYPE, _))) {
                    warn!(partition = %log.partition(), offset = base_offset, "membership entry with a damaged header; cutting the log there");
                    return self.cut(log, ops);
                }
                if header_bad {
                    warn!(partition = %log.partition(), offset = base_offset, stamped_offset = view.base_offset(), term, stamped_epoch = view.leader_epoch(), "batch header out of line with the log; it will be repaired from a peer");
                }
                let intact = intact && !header_bad;
                self.table.push_back(EntryMeta {
                    term,
                    base_offset,
                    next_offset,
                    segment_base,
                    position: self.position,
                    size: size as u32,
                    crc: intact.then(|| view.stored_crc()),
                    kind: match control.filter(|_| intact) {
                        Some((batch::LEADER_CHANGE_CONTROL_TYPE, _)) => EntryKind::LeaderChange,
                        Some((batch::MEMBERSHIP_CONTROL_TYPE, value)) => {
                            let index = self.start.index + self.table.len() as u64 + 1;
                            self.memberships
                                .insert(index, value.unwrap_or_default().to_vec());
                            EntryKind::Membership
                        }
                        _ => EntryKind::Data,
                    },
                    txn: TxnEvent::of(&view, base_offset).filter(|_| intact),
                });
                self.last_term = term;
                self.expected = next_offset;
                let index = self.start.index + self.table.len() as u64;
                let marker = batch::txn_marker(&view).is_some();
                let producer =
                    ProducerBatch::of(&view).filter(|_| intact && (control.is_none() || marker));
                if let Some(event) = TxnEvent::of(&view, base_offset).filter(|_| intact) {
                    self.txns.push(event);
                }
                if let Some(batch) = producer {
                    let written = Written::of(&batch, index, term, Some(base_offset));
                    self.producers.push((batch, written, view.max_timestamp()));
                }
                if !intact {
                    // Its frame still says where it is and which entry it is: the entry
                    // stays (Raft's view of this log stays whole) and its bytes are
                    // fetched again from a peer.
                    let index = self.start.index + self.table.len() as u64;
                    warn!(partition = %log.partition(), offset = base_offset, index, "damaged batch in a replica's log; it will be repaired from a peer");
                    self.damaged.push(index);
                }
            }
            self.position += size as u64;
            consumed += size;
        }
    }

    /// The term of the entry `view` is, and whether its stamped leader epoch is wrong;
    /// `None` if the epoch is out of line and nothing says what it should be.
    fn term_of(
        &mut self,
        view: &BatchView<'_>,
        intact: bool,
        control: Option<(i16, Option<&[u8]>)>,
    ) -> Option<(u64, bool)> {
        let stamped = u64::try_from(view.leader_epoch()).unwrap_or(u64::MAX);
        if !intact {
            // Its body cannot be read, so it may be the leader change of a later term: a
            // higher epoch that this replica has seen is taken as that (only a data batch
            // damaged in its body and its header at once would fool this).
            if let Some(term) = self.governing {
                if stamped > term && stamped <= self.hard_state.term {
                    self.governing = Some(stamped);
                }
            }
        } else if matches!(control, Some((batch::LEADER_CHANGE_CONTROL_TYPE, _))) {
            self.governing = batch::leader_change_term(view);
        }
        match self.governing {
            Some(term) => Some((term, stamped != term)),
            // Before the first leader change only bounds are known: terms never go down
            // along a log, and none is past the term this replica recorded (it records a
            // term before it takes entries of it).
            None if stamped >= self.last_term && stamped <= self.hard_state.term => {
                Some((stamped, false))
            }
            None => None,
        }
    }

    /// Drops everything from the current read position on: whole batches the replica may
    /// have acknowledged.
    fn cut(&mut self, log: &mut PartitionLog, ops: &mut Vec<StorageOp>) {
        self.cut_as(CatchUp::Recorded, log, ops);
    }

    /// Drops everything from the current read position on; `catch_up` says what that
    /// means for the replica.
    fn cut_as(&mut self, catch_up: CatchUp, log: &mut PartitionLog, ops: &mut Vec<StorageOp>) {
        self.done = true;
        self.cut = catch_up;
        let segment_base = self.segments[self.segment].0;
        if self.expected < self.start.offset
            || log
                .truncate_to(self.expected, segment_base, self.position, ops)
                .is_err()
        {
            self.misaligned = true;
        }
    }

    /// The entry table, the operations that bring the log in line with it, whether entries
    /// were lost on the way, and the indexes of damaged entries.
    pub(super) fn finish(
        self,
        log: &mut PartitionLog,
    ) -> (EntryLog, Vec<StorageOp>, CatchUp, Vec<u64>) {
        let mut ops = Vec::new();
        let mut table = self.table;
        let mut memberships = self.memberships;
        if self.misaligned {
            warn!(partition = %log.partition(), start = self.start.offset, "replica log does not line up with its recorded start; emptying it");
            log.reset(self.start.offset, &mut ops);
            table.clear();
            memberships.clear();
        } else {
            log.drop_before(self.start.offset, &mut ops);
            for (batch, written, time) in self.producers {
                log.producers_mut().record(batch, written, time);
            }
            let mut txns = crate::producer::TxnIndex::new();
            for event in self.txns {
                txns.apply(event);
            }
            log.set_txns(txns);
        }
        let point = match table.front() {
            Some(first) => CommitPoint {
                offset: first.base_offset,
                segment_base: first.segment_base,
                position: first.position,
            },
            None => log.end_point(),
        };
        log.reset_high_watermark(point);
        let entry_log = EntryLog::new(
            self.hard_state,
            self.conf_state,
            self.start,
            table,
            memberships,
        );
        let catch_up = if self.misaligned {
            self.cut.max(CatchUp::UntilRestart)
        } else {
            self.cut
        };
        let damaged = if self.misaligned {
            Vec::new()
        } else {
            self.damaged
        };
        (entry_log, ops, catch_up, damaged)
    }
}

/// True if the base offset stamped on the frame after a damaged batch (at `size` in `rest`),
/// `next_offset`, can be where that batch ends: no more records than the damaged frame has
/// bytes for (a record takes at least 7), and, where the frame after that is in `rest` too,
/// the next batch's own records end where that one is stamped to begin.
fn next_stamp_holds(rest: &[u8], size: usize, base_offset: i64, next_offset: i64) -> bool {
    /// The smallest record: length, attributes, timestamp and offset deltas, key and value
    /// lengths, header count, one byte each.
    const MIN_RECORD_BYTES: i64 = 7;
    if next_offset - base_offset > (size as i64 / MIN_RECORD_BYTES).max(1) {
        return false;
    }
    let Some(next) = rest.get(size..) else {
        return true;
    };
    let Some(next_size) = frame_size(next).filter(|&n| n <= next.len()) else {
        return true;
    };
    let Ok((view, _)) = BatchView::split_first(&next[..next_size]) else {
        return true;
    };
    match next.get(next_size..next_size + 8) {
        Some(after) if view.crc_ok() => {
            let after = i64::from_be_bytes(after.try_into().expect("8 bytes"));
            next_offset + i64::from(view.last_offset_delta()) + 1 == after
        }
        _ => true,
    }
}
