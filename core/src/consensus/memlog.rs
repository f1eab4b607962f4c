//! A Raft log held in memory, persisted through [`RaftPersist`] operations.
//!
//! The metadata quorum's log is small (topics, brokers, assignments), so the whole retained
//! log lives in memory and the node writes each change to its small durable state. A
//! snapshot of the applied state replaces the prefix it covers, which bounds the log.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The durable state of one Raft group, as persisted and as recovered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftPersist {
    /// The new hard state (term, vote, commit), if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot that replaces every entry it covers, written before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Entries to append; any stored entry at or after the first one's index is replaced.
    pub entries: Vec<Entry>,
    /// The membership after an applied configuration change.
    pub conf_state: Option<ConfState>,
}

impl RaftPersist {
    /// Folds a later change into this state (for state without entries: a replica's).
    pub fn merge(&mut self, change: RaftPersist) {
        if change.hard_state.is_some() {
            self.hard_state = change.hard_state;
        }
        if let Some(snapshot) = change.snapshot {
            self.conf_state = Some(snapshot.get_metadata().get_conf_state().clone());
            self.snapshot = Some(snapshot);
        }
        if change.conf_state.is_some() {
            self.conf_state = change.conf_state;
        }
    }

    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.conf_state.is_none()
    }
}

/// The in-memory log of one Raft group: snapshot, then entries after it.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    hard_state: HardState,
    /// The latest snapshot; its metadata carries the conf state and the index/term it covers.
    snapshot: Snapshot,
    /// Entries after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    /// Current membership: the snapshot's, or a later applied configuration change.
    conf_state: ConfState,
}

impl MemLog {
    /// A fresh log for a new group whose voters are `voters`.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let mut log = MemLog::default();
        log.snapshot.mut_metadata().mut_conf_state().voters = voters.to_vec();
        log.conf_state = log.snapshot.get_metadata().get_conf_state().clone();
        log
    }

    /// Rebuilds a log from what was persisted (all [`RaftPersist`]s, folded in order).
    pub fn recovered(state: RaftPersist) -> Self {
        let mut log = MemLog::default();
        log.apply(&state);
        log
    }

    /// Applies a persisted change (the same one the node writes).
    pub fn apply(&mut self, change: &RaftPersist) {
        if let Some(snapshot) = &change.snapshot {
            self.install_snapshot(snapshot.clone());
        }
        if let Some(first) = change.entries.first() {
            let keep = first.index.saturating_sub(self.first()) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(&change.entries);
        }
        if let Some(hard_state) = &change.hard_state {
            self.hard_state = hard_state.clone();
        }
        if let Some(conf_state) = &change.conf_state {
            self.conf_state = conf_state.clone();
        }
    }

    /// The hard state last set.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The snapshot the log starts from.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Entries in `[low, high)` that are held (for replay at start).
    pub fn held_entries(&self, low: u64, high: u64) -> &[Entry] {
        let first = self.first();
        let from = low.saturating_sub(first).min(self.entries.len() as u64) as usize;
        let to = high.saturating_sub(first).min(self.entries.len() as u64) as usize;
        &self.entries[from..to.max(from)]
    }

    /// Everything durable, as one change that rebuilds this log.
    pub fn as_persist(&self) -> RaftPersist {
        RaftPersist {
            hard_state: Some(self.hard_state.clone()),
            snapshot: Some(self.snapshot.clone()),
            entries: self.entries.clone(),
            conf_state: Some(self.conf_state.clone()),
        }
    }

    /// The current membership.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }

    /// Replaces the prefix up to the snapshot's index with the snapshot.
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if index < self.snapshot.get_metadata().index {
            return;
        }
        let drop = index.saturating_sub(self.snapshot.get_metadata().index) as usize;
        if drop <= self.entries.len()
            && self
                .entries
                .get(drop.wrapping_sub(1))
                .is_none_or(|e| e.term == snapshot.get_metadata().term)
        {
            // The snapshot is a prefix of what we hold: keep the entries after it.
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        self.conf_state = snapshot.get_metadata().get_conf_state().clone();
        self.snapshot = snapshot;
    }
}

impl Storage for MemLog {
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
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = self.held_entries(low, high).to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn appends_replace_a_conflicting_suffix() {
        let mut log = MemLog::bootstrap(&[1]);
        log.apply(&RaftPersist {
            entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            ..Default::default()
        });
        log.apply(&RaftPersist {
            entries: vec![entry(2, 2)],
            ..Default::default()
        });
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(log.term(1).unwrap(), 1);
    }

    #[test]
    fn a_snapshot_compacts_the_prefix_and_keeps_the_rest() {
        let mut log = MemLog::bootstrap(&[1]);
        log.apply(&RaftPersist {
            entries: (1..=5).map(|i| entry(i, 1)).collect(),
            ..Default::default()
        });
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 3;
        snapshot.mut_metadata().term = 1;
        log.apply(&RaftPersist {
            snapshot: Some(snapshot),
            ..Default::default()
        });
        assert_eq!(log.first_index().unwrap(), 4);
        assert_eq!(log.last_index().unwrap(), 5);
        assert_eq!(log.term(3).unwrap(), 1);
        assert!(log.term(2).is_err());
        let recovered = MemLog::recovered(log.as_persist());
        assert_eq!(recovered.last_index().unwrap(), 5);
        assert_eq!(recovered.first_index().unwrap(), 4);
    }
}
