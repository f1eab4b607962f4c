//! Storage that keeps everything in memory and forgets it on exit.

use seedlog_core::memdisk::MemDisk;
use seedlog_core::storage::{StorageCompletion, StorageOp};
use seedlog_core::Recovered;

use super::Storage;

/// Partition data in memory; syncs complete at once. Not durable.
#[derive(Default)]
pub struct MemoryStorage {
    disk: MemDisk,
}

impl Storage for MemoryStorage {
    fn recover(&mut self, _index_interval: u32) -> anyhow::Result<Recovered> {
        Ok(Recovered::default())
    }

    fn execute(&mut self, op: StorageOp) -> anyhow::Result<Option<StorageCompletion>> {
        Ok(self.disk.execute(op))
    }

    fn close(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
