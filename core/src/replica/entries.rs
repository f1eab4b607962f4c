//! The Raft log of a partition replica, as raft-rs sees it: one entry per stored batch.
//!
//! The bytes live in the partition's segment files; this table holds, per retained batch,
//! where it is and which term wrote it, so `term(i)` and the end offset of entry `i` need no
//! disk. Entry data comes from a small cache of recent batches (what followers that keep up
//! need) or, for a lagging follower, from an asynchronous read: raft-rs gets
//! `LogTemporarilyUnavailable`, the replica reads the range and calls `on_entries_fetched`.

use crate::producer::{TxnEvent, TxnIndex};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Bytes of recent entry data a replica keeps for resending (per partition).
const CACHE_BYTES: usize = 1 << 20;

/// One stored batch: a Raft entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Raft term that wrote the entry (the batch's partition leader epoch).
    pub term: u64,
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset after its last record.
    pub next_offset: i64,
    /// Segment holding it.
    pub segment_base: i64,
    /// Byte position in that segment.
    pub position: u64,
    /// Bytes on disk.
    pub size: u32,
    /// The CRC its batch carries, if its copy here is intact (a damaged copy's may be the
    /// damaged bytes).
    pub crc: Option<u32>,
    /// What the batch holds.
    pub kind: EntryKind,
    /// What the batch means to a transaction, if anything (`None` too for a damaged batch
    /// until it is repaired): the partition's transaction index is rebuilt from these.
    pub txn: Option<TxnEvent>,
}

/// The kinds of entry, each stored as a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Records a producer sent.
    Data,
    /// A leader-change control batch: raft-rs's empty entry at the start of a term.
    LeaderChange,
    /// A membership change (control batch whose value is a raft-rs `ConfChangeV2`).
    Membership,
}

/// Where the retained log starts: the Raft snapshot point (everything up to `index` is
/// committed and gone or never held) and the offset the first retained entry starts at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStart {
    /// Index of the last entry before the retained log.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Offset of the first retained entry.
    pub offset: i64,
    /// Index of the last membership change reflected in the recorded membership: a
    /// committed change at or below it is not applied again (after a restart, or after
    /// installing a leader's start, which carries the leader's current membership).
    pub conf_index: u64,
}

impl LogStart {
    /// Bytes of a start in a snapshot's data (offset, membership index); a replica may
    /// record more after them (see `replica::CATCHING_UP`).
    pub const RECORD_LEN: usize = 16;

    /// The snapshot that describes this start to raft-rs and to persistence, with the
    /// current membership: its data is the start offset and the membership's index.
    pub fn to_snapshot(self, conf_state: &ConfState) -> Snapshot {
        let mut data = self.offset.to_be_bytes().to_vec();
        data.extend_from_slice(&self.conf_index.to_be_bytes());
        let mut snapshot = Snapshot {
            data,
            ..Default::default()
        };
        snapshot.mut_metadata().index = self.index;
        snapshot.mut_metadata().term = self.term;
        *snapshot.mut_metadata().mut_conf_state() = conf_state.clone();
        snapshot
    }

    /// Reads a start back from a snapshot; `None` if its data is not an offset.
    pub fn from_snapshot(snapshot: &Snapshot) -> Option<LogStart> {
        let offset = i64::from_be_bytes(snapshot.data.get(..8)?.try_into().ok()?);
        let conf_index = snapshot
            .data
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        Some(LogStart {
            index: snapshot.get_metadata().index,
            term: snapshot.get_metadata().term,
            offset,
            conf_index,
        })
    }
}

/// A range raft-rs asked for and that must be read from disk first.
#[derive(Debug)]
pub struct Miss {
    /// First index wanted.
    pub low: u64,
    /// raft-rs's context, handed back once the entries are cached.
    pub context: GetEntriesContext,
}

/// The entry table, with raft-rs's durable state: `raft::Storage` for one replica.
#[derive(Debug, Default)]
pub struct EntryLog {
    hard_state: HardState,
    conf_state: ConfState,
    start: LogStart,
    /// `table[i]` is entry `start.index + 1 + i`.
    table: VecDeque<EntryMeta>,
    /// Data of recent entries by index, bounded by `CACHE_BYTES`.
    cache: BTreeMap<u64, Bytes>,
    cache_bytes: usize,
    /// Data read from disk for a lagging follower; dropped once handed to raft-rs.
    fetched: BTreeMap<u64, Bytes>,
    /// The encoded changes of membership entries, always in memory (they are few, and
    /// raft-rs needs them to apply and to resend).
    memberships: BTreeMap<u64, Vec<u8>>,
    /// Ranges raft-rs asked for that were not in memory (filled from `&self` calls).
    misses: RefCell<Vec<Miss>>,
}

impl EntryLog {
    /// A log holding `table` after `start` (with the changes of its membership entries, by
    /// index), with the durable Raft state.
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        start: LogStart,
        table: VecDeque<EntryMeta>,
        memberships: BTreeMap<u64, Vec<u8>>,
    ) -> Self {
        let mut log = EntryLog {
            hard_state,
            conf_state,
            start,
            table,
            memberships,
            ..Default::default()
        };
        // The commit index is not persisted for partitions (the leader re-advances it), and
        // raft-rs requires it inside the log on start.
        log.hard_state.commit = start.index;
        log
    }

    /// Where the retained log starts.
    pub fn start(&self) -> LogStart {
        self.start
    }

    /// The current membership.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The last entry's index.
    pub fn last(&self) -> u64 {
        self.start.index + self.table.len() as u64
    }

    /// The entry at `index`, if held.
    pub fn meta(&self, index: u64) -> Option<&EntryMeta> {
        let i = index.checked_sub(self.start.index + 1)?;
        self.table.get(usize::try_from(i).ok()?)
    }

    /// Records what a repaired entry means to a transaction.
    pub fn set_txn(&mut self, index: u64, txn: Option<TxnEvent>) {
        let Some(i) = index.checked_sub(self.start.index + 1) else {
            return;
        };
        if let Some(meta) = usize::try_from(i).ok().and_then(|i| self.table.get_mut(i)) {
            meta.txn = txn;
        }
    }

    /// The transaction index of the entries held, in log order.
    pub fn txn_index(&self) -> TxnIndex {
        let mut index = TxnIndex::new();
        for event in self.table.iter().filter_map(|m| m.txn) {
            index.apply(event);
        }
        index
    }

    /// The offset the next entry starts at.
    pub fn end_offset(&self) -> i64 {
        self.table
            .back()
            .map_or(self.start.offset, |m| m.next_offset)
    }

    /// The index of the entry that holds `offset`, if held.
    pub fn index_of_offset(&self, offset: i64) -> Option<u64> {
        let i = self.table.partition_point(|m| m.next_offset <= offset);
        let meta = self.table.get(i)?;
        (meta.base_offset <= offset).then(|| self.start.index + 1 + i as u64)
    }

    /// Entries with their index, from `low` on (for the leader-epoch history and tests).
    pub fn iter_from(&self, low: u64) -> impl Iterator<Item = (u64, &EntryMeta)> {
        let first = self.start.index + 1;
        let skip = low.saturating_sub(first) as usize;
        self.table
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, m)| (first + i as u64, m))
    }

    /// KIP-320's answer for `epoch`: the largest epoch held that is at most `epoch`, and the
    /// offset where the next epoch starts (the log end for the latest); `None` if the log
    /// holds nothing that old.
    pub fn epoch_end(&self, epoch: u64) -> Option<(u64, i64)> {
        let mut held = None;
        for meta in &self.table {
            if meta.term > epoch {
                return held.map(|term| (term, meta.base_offset));
            }
            held = Some(meta.term);
        }
        Some((held.unwrap_or(self.start.term), self.end_offset()))
    }

    /// Forgets entries from `index` on (a follower replacing an uncommitted suffix).
    pub fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.start.index + 1) as usize;
        self.table.truncate(keep);
        for (_, data) in self.cache.split_off(&index) {
            self.cache_bytes -= data.len();
        }
        self.memberships.split_off(&index);
    }

    /// Appends an entry written to the log; `data` is cached for resending (and kept, for
    /// a membership change). The cache keeps a copy of its own: `data` is a slice of a
    /// client's request or a peer's frame, and holding it would hold all of that too.
    pub fn push(&mut self, meta: EntryMeta, data: Bytes) {
        self.table.push_back(meta);
        let index = self.last();
        match meta.kind {
            EntryKind::Membership => {
                self.memberships.insert(index, data.to_vec());
                return;
            }
            EntryKind::LeaderChange => return,
            EntryKind::Data => {}
        }
        if !data.is_empty() {
            self.cache_bytes += data.len();
            self.cache.insert(index, Bytes::copy_from_slice(&data));
        }
        while self.cache_bytes > CACHE_BYTES {
            let Some((_, old)) = self.cache.pop_first() else {
                break;
            };
            self.cache_bytes -= old.len();
        }
    }

    /// Replaces everything with an empty log after `start` (a snapshot installed).
    pub fn reset(&mut self, start: LogStart, conf_state: ConfState) {
        self.start = start;
        self.conf_state = conf_state;
        self.table.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.memberships.clear();
        self.hard_state.commit = self.hard_state.commit.max(start.index);
    }

    /// Records the membership after applying the change at `index`.
    pub fn set_membership(&mut self, conf_state: ConfState, index: u64) {
        self.conf_state = conf_state;
        self.start.conf_index = index;
    }

    /// Drops entries up to and including `index` (retention deleted their segments).
    pub fn compact_to(&mut self, index: u64) {
        while self.start.index < index {
            let Some(meta) = self.table.pop_front() else {
                break;
            };
            self.start = LogStart {
                index: self.start.index + 1,
                term: meta.term,
                offset: meta.next_offset,
                conf_index: self.start.conf_index,
            };
            if let Some(data) = self.cache.remove(&self.start.index) {
                self.cache_bytes -= data.len();
            }
            self.memberships.remove(&self.start.index);
        }
    }

    /// Records a new hard state (as raft-rs reported it).
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Data read from disk for entry `index`, until [`Self::clear_fetched`].
    pub fn add_fetched(&mut self, index: u64, data: Bytes) {
        self.fetched.insert(index, data);
    }

    /// Forgets data read for lagging followers (it has been put into messages).
    pub fn clear_fetched(&mut self) {
        self.fetched.clear();
    }

    /// Ranges raft-rs wanted and did not find in memory since the last call.
    pub fn take_misses(&mut self) -> Vec<Miss> {
        std::mem::take(self.misses.get_mut())
    }

    fn data(&self, index: u64) -> Option<&Bytes> {
        self.cache.get(&index).or_else(|| self.fetched.get(&index))
    }
}

impl Storage for EntryLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.start.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low).min(64) as usize);
        let mut size = 0u64;
        for index in low..high {
            let meta = self.meta(index).expect("bounds checked above");
            let mut entry_type = EntryType::EntryNormal;
            let data = if meta.kind == EntryKind::LeaderChange {
                Bytes::new()
            } else if meta.kind == EntryKind::Membership {
                entry_type = EntryType::EntryConfChangeV2;
                let change = self.memberships.get(&index);
                change
                    .map(|c| Bytes::copy_from_slice(c))
                    .unwrap_or_default()
            } else if let Some(data) = self.data(index) {
                data.clone()
            } else if !context.can_async() {
                // Committed entries for applying, or raft-rs checking entry types: the log
                // is the state machine, so the data is not needed.
                Bytes::new()
            } else if !out.is_empty() {
                break; // Send what is in memory; the rest is asked for next time.
            } else {
                self.misses.borrow_mut().push(Miss { low, context });
                return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
            };
            size += data.len() as u64 + 16;
            if !out.is_empty() && size > max_size {
                break;
            }
            let mut entry = Entry {
                index,
                term: meta.term,
                data,
                ..Default::default()
            };
            entry.set_entry_type(entry_type);
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.start.index {
            return Ok(self.start.term);
        }
        if index < self.start.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.meta(index)
            .map(|m| m.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.start.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.start.index == 0 {
            // Nothing was ever compacted: a follower can always be sent entries instead.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.start.to_snapshot(&self.conf_state))
    }
}
