//! The simulated disk of one broker: an in-memory disk that outlives the broker's process,
//! and the faults it can suffer, written down as data.
//!
//! Every fault stays recoverable by design: a crash only touches bytes that were never
//! synced (so never acknowledged with acks=all), a bit flip is recorded so the checkers can
//! excuse the records a single copy cannot save, and EIO or a full disk stop the broker,
//! which the simulator then restarts on a disk with room again.

use seedlog_core::batch::frame_size;
use seedlog_core::memdisk::MemDisk;

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
}

impl SimDisk {
    /// A blank disk whose fault draws come from `dice`.
    pub fn new(dice: Dice) -> SimDisk {
        SimDisk {
            disk: MemDisk::new(),
            faults: DiskFaults::default(),
            dice,
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

    /// Flips one bit in synced data; returns the partition and the base offset of the batch
    /// it damaged, if there was any synced data to damage.
    pub fn flip_bit(&mut self) -> Option<(Partition, i64)> {
        let candidates: Vec<_> = self
            .disk
            .segment_lengths()
            .into_iter()
            .filter(|(_, _, synced)| *synced > 0)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (id, _, synced) =
            candidates[self.dice.between(0, candidates.len() as u64 - 1) as usize].clone();
        let position = self.dice.between(0, synced as u64 - 1) as usize;
        let bit = self.dice.between(0, 7) as u8;
        let bytes = self.disk.segment_bytes_mut(&id)?;
        let damaged_offset = batch_base_at(&bytes[..synced], position)?;
        bytes[position] ^= 1 << bit;
        Some((
            (id.partition.topic.to_string(), id.partition.partition),
            damaged_offset,
        ))
    }
}

/// Base offset of the batch that holds byte `position` of a segment.
fn batch_base_at(segment: &[u8], position: usize) -> Option<i64> {
    let mut start = 0usize;
    while start < segment.len() {
        let size = frame_size(&segment[start..])?;
        if position < start + size {
            return Some(i64::from_be_bytes(
                segment[start..start + 8].try_into().ok()?,
            ));
        }
        start += size;
    }
    None
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
            Ok(self
                .disk
                .lock()
                .expect("disk lock")
                .disk
                .recover(index_interval, 64 << 20))
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
                    let (shared, report) = (self.disk.clone(), self.report.clone());
                    // The sync completes later; if the broker dies first, this task dies with
                    // it and nothing becomes durable, as on a real disk.
                    tokio::spawn(async move {
                        if latency > 0 {
                            tokio::time::sleep(Duration::from_millis(latency)).await;
                        }
                        if fail {
                            shared.lock().expect("disk lock").lose_unsynced(&segments);
                            report(Err(SyncFailure {
                                token,
                                error: "fsync failed: EIO".into(),
                            }));
                        } else {
                            shared
                                .lock()
                                .expect("disk lock")
                                .disk
                                .execute(StorageOp::Sync { token, segments });
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
