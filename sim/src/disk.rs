//! The simulated disk of one broker: an in-memory disk that outlives the broker's process,
//! and the faults it can suffer, written down as data.
//!
//! Every fault stays recoverable by design: a crash only touches bytes that were never
//! synced (so never acknowledged with acks=all), EIO or a full disk stop the broker, which
//! the simulator then restarts on a disk with room again, and a bit flip (the one fault
//! that damages what a replica promised) strikes only where the fault atlas in
//! `faults.rs` allows it: never a majority of one partition's copies at once.

use std::collections::BTreeSet;

use seedlog_core::batch::{frame_size, BatchView};
use seedlog_core::memdisk::MemDisk;
use seedlog_core::sealed;
use seedlog_core::storage::{SegmentId, TopicPartition};

use crate::history::Partition;
use crate::scenario::{Dice, Range};

/// Disk faults in force right now.
#[derive(Debug, Default, Clone)]
pub struct DiskFaults {
    /// The next fsync reports EIO.
    pub fail_next_sync: bool,
    /// Appends fail with ENOSPC.
    pub full: bool,
    /// Each fsync takes this long, in milliseconds (a range drawn from per sync).
    pub sync_latency_ms: Option<Range>,
}

/// One broker's disk.
pub struct SimDisk {
    /// The files.
    pub disk: MemDisk,
    /// Faults in force.
    pub faults: DiskFaults,
    dice: Dice,
    /// Header bytes flipped (segment, position, byte before): Kafka's CRC does not cover
    /// them, so the atlas learns of the damage here; it lasts while the byte differs.
    header_flips: Vec<(SegmentId, usize, u8)>,
}

impl SimDisk {
    /// A blank disk whose fault draws come from `dice`.
    pub fn new(dice: Dice) -> SimDisk {
        SimDisk {
            disk: MemDisk::new(),
            faults: DiskFaults::default(),
            dice,
            header_flips: Vec::new(),
        }
    }

    /// Latency of the next fsync, in milliseconds.
    pub fn sync_latency_ms(&mut self) -> u64 {
        let range = self.faults.sync_latency_ms;
        range.map_or(0, |r| self.dice.pick(r) as u64)
    }

    /// Power loss: each file loses its unsynced tail, or with `torn_chance` keeps a random
    /// prefix of it, half the time with a few zeroed bytes inside (a write that reached the
    /// file's length but not all of its data). Returns (bytes lost, files torn).
    pub fn power_loss(&mut self, torn_chance: f64) -> (u64, u64) {
        let (mut lost, mut torn) = (0u64, 0u64);
        let dice = &mut self.dice;
        self.disk.crash_with(|_, tail| {
            let unsynced = tail.len();
            if unsynced == 0 || !dice.chance(torn_chance) {
                lost += unsynced as u64;
                return 0;
            }
            torn += 1;
            let keep = dice.between(1, unsynced as u64) as usize;
            if dice.chance(0.5) {
                // A few bytes that never reached the platter, inside what did.
                let start = dice.between(0, keep as u64 - 1) as usize;
                let end = (start + dice.between(1, 8) as usize).min(keep);
                tail[start..end].fill(0);
            }
            lost += (unsynced - keep) as u64;
            keep
        });
        self.faults = DiskFaults {
            sync_latency_ms: self.faults.sync_latency_ms,
            ..DiskFaults::default()
        };
        (lost, torn)
    }

    /// A failed fsync: like Linux after EIO, the dirty pages of the synced files may be gone
    /// while the files keep their length; here they read back as zeros.
    pub fn lose_unsynced(&mut self, segments: &[seedlog_core::storage::SegmentId]) {
        for id in segments {
            if let Some(tail) = self.disk.unsynced_tail_mut(id) {
                tail.fill(0);
            }
        }
    }

    /// Flips one bit in a synced batch of a partition `allowed` admits; returns the
    /// partition and the base offset of the batch it damaged, if there was one to damage.
    ///
    /// A quarter of the bits land in the header fields Kafka's CRC leaves out: base offset,
    /// length, leader epoch and magic (a replica checks them against its log: offsets follow
    /// on, epochs are the term of the leader change before them, a length one bit off is
    /// found by the CRC at the length one bit away); the rest in the CRC or the bytes it
    /// covers.
    pub fn flip_bit(&mut self, allowed: impl Fn(&Partition) -> bool) -> Option<(Partition, i64)> {
        let candidates: Vec<_> = self
            .disk
            .segment_lengths()
            .into_iter()
            .filter(|(id, _, synced)| *synced > 0 && allowed(&partition_of(id)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (id, _, synced) =
            candidates[self.dice.between(0, candidates.len() as u64 - 1) as usize].clone();
        let bytes = self.disk.segment(&id)?;
        let batches = batches_in(&bytes[..synced]);
        if batches.is_empty() {
            return None;
        }
        let (start, size) = batches[self.dice.between(0, batches.len() as u64 - 1) as usize];
        let header = self.dice.chance(0.25);
        let position = if header {
            start + self.dice.between(0, CRC_AT as u64 - 1) as usize
        } else {
            start + self.dice.between(CRC_AT as u64, size as u64 - 1) as usize
        };
        let bit = self.dice.between(0, 7) as u8;
        let base_offset = i64::from_be_bytes(bytes[start..start + 8].try_into().ok()?);
        let byte = &mut self.disk.segment_bytes_mut(&id)?[position];
        if header {
            self.header_flips.push((id.clone(), position, *byte));
        }
        *byte ^= 1 << bit;
        Some((partition_of(&id), base_offset))
    }

    /// Flips one bit in one copy of a small-state value (Raft hard state, snapshot,
    /// membership) whose other copy is intact, as the fault atlas allows; returns its key.
    /// Anywhere in the stored bytes: the CRC covers all of them.
    pub fn flip_state_bit(&mut self) -> Option<String> {
        let keys: Vec<String> = self
            .disk
            .state_keys()
            .into_iter()
            .filter(|key| !self.disk.state_damaged(&sealed::twin_key(key)))
            .collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys[self.dice.between(0, keys.len() as u64 - 1) as usize].clone();
        let at = self.dice.between(0, u64::MAX - 1);
        let bit = self.dice.between(0, 7) as u8;
        let bytes = self.disk.state_bytes_mut(&key)?;
        let position = (at % bytes.len().max(1) as u64) as usize;
        *bytes.get_mut(position)? ^= 1 << bit;
        Some(key)
    }

    /// The partitions of which this disk holds a damaged copy: a synced batch that fails its
    /// CRC, or a repair written in place and not synced yet (a power loss would undo it).
    pub fn damaged_partitions(&mut self) -> BTreeSet<Partition> {
        let mut damaged = BTreeSet::new();
        let disk = &self.disk;
        self.header_flips.retain(|(id, position, before)| {
            let flipped = disk
                .segment(id)
                .and_then(|bytes| bytes.get(*position))
                .is_some_and(|now| now != before);
            if flipped {
                damaged.insert(partition_of(id));
            }
            flipped
        });
        for (id, _, synced) in self.disk.segment_lengths() {
            let Some(bytes) = self.disk.segment(&id) else {
                continue;
            };
            let bad_batch = batches_in(&bytes[..synced])
                .into_iter()
                .any(|(start, size)| {
                    BatchView::split_first(&bytes[start..start + size])
                        .is_ok_and(|(view, _)| !view.crc_ok())
                });
            if bad_batch || self.disk.has_unsynced_rewrites(&id) {
                damaged.insert(partition_of(&id));
            }
        }
        // A replica that lost batches at start-up counts as a damaged copy until a leader
        // has brought it up to date.
        for tp in self.disk.catching_up_partitions() {
            damaged.insert((tp.topic.to_string(), tp.partition));
        }
        damaged
    }

    /// The batch whose base offset is `base_offset` in partition `tp` on this disk: whether
    /// its CRC holds, and the CRC it stores. `None` if no batch there starts there. Header
    /// bytes flipped at rest are read as they were, so that the walk from batch to batch
    /// finds its way past them.
    pub fn batch_at(&self, tp: &TopicPartition, base_offset: i64) -> Option<(bool, u32)> {
        let id = self
            .disk
            .segment_ids(tp)
            .into_iter()
            .filter(|id| id.base_offset <= base_offset)
            .max_by_key(|id| id.base_offset)?;
        let mut bytes = std::borrow::Cow::Borrowed(self.disk.segment(&id)?);
        for (_, position, before) in self.header_flips.iter().filter(|(s, ..)| *s == id) {
            if let Some(byte) = bytes.to_mut().get_mut(*position) {
                *byte = *before;
            }
        }
        let mut start = 0usize;
        while let Some(size) = bytes.get(start..).and_then(frame_size) {
            let (view, _) = BatchView::split_first(bytes.get(start..start + size)?).ok()?;
            match view.base_offset().cmp(&base_offset) {
                std::cmp::Ordering::Less => start += size,
                std::cmp::Ordering::Equal => return Some((view.crc_ok(), view.stored_crc())),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    /// The partitions this disk holds a copy of: some of their data (every broker keeps an
    /// empty log of partitions it does not replicate).
    pub fn held_partitions(&self) -> BTreeSet<Partition> {
        self.disk
            .segment_lengths()
            .iter()
            .filter(|(_, len, _)| *len > 0)
            .map(|(id, _, _)| partition_of(id))
            .collect()
    }
}

/// Where a batch's CRC starts: after base offset, length, leader epoch and magic.
const CRC_AT: usize = 17;

fn partition_of(id: &SegmentId) -> Partition {
    (id.partition.topic.to_string(), id.partition.partition)
}

/// (start, size) of each whole frame in a segment's bytes.
fn batches_in(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    while let Some(size) = segment.get(start..).and_then(frame_size) {
        if size <= CRC_AT || start + size > segment.len() {
            break;
        }
        out.push((start, size));
        start += size;
    }
    out
}

#[cfg(madsim)]
pub use storage::SimStorage;

#[cfg(madsim)]
mod storage {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use anyhow::bail;
    use seedlog_core::storage::{StorageCompletion, StorageOp};
    use seedlog_core::Recovered;
    use seedlog_node::storage::{Storage, SyncFailure, SyncReport};

    use super::SimDisk;

    /// A broker's [`Storage`] over its [`SimDisk`].
    pub struct SimStorage {
        disk: Arc<Mutex<SimDisk>>,
        report: Arc<SyncReport>,
    }

    impl SimStorage {
        /// Storage over `disk`, reporting syncs through `report`.
        pub fn new(disk: Arc<Mutex<SimDisk>>, report: SyncReport) -> SimStorage {
            SimStorage {
                disk,
                report: Arc::new(report),
            }
        }
    }

    impl Storage for SimStorage {
        fn recover(&mut self, index_interval: u32) -> anyhow::Result<Recovered> {
            let mut disk = self.disk.lock().expect("disk lock");
            disk.disk
                .recover(index_interval, 64 << 20)
                .map_err(|e| anyhow::anyhow!("loading the small state: {e}"))
        }

        fn execute(&mut self, op: StorageOp) -> anyhow::Result<Option<StorageCompletion>> {
            let mut disk = self.disk.lock().expect("disk lock");
            match op {
                StorageOp::Append { .. } if disk.faults.full => {
                    bail!("append failed: no space left on device (ENOSPC)")
                }
                StorageOp::Sync { token, segments } => {
                    let fail = std::mem::take(&mut disk.faults.fail_next_sync);
                    let latency = disk.sync_latency_ms();
                    disk.disk.sync_started(token, &segments);
                    let (shared, report) = (self.disk.clone(), self.report.clone());
                    // The sync completes later; if the broker dies first, this task dies with
                    // it and nothing becomes durable, as on a real disk.
                    tokio::spawn(async move {
                        if latency > 0 {
                            tokio::time::sleep(Duration::from_millis(latency)).await;
                        }
                        if fail {
                            let mut disk = shared.lock().expect("disk lock");
                            disk.disk.sync_abandoned(token);
                            disk.lose_unsynced(&segments);
                            drop(disk);
                            report(Err(SyncFailure {
                                token,
                                error: "fsync failed: EIO".into(),
                            }));
                        } else {
                            let _ = segments;
                            shared.lock().expect("disk lock").disk.sync_completed(token);
                            report(Ok(StorageCompletion::Synced { token }));
                        }
                    });
                    Ok(None)
                }
                op => Ok(disk.disk.execute(op)),
            }
        }

        fn close(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }
}
