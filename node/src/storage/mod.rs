//! Where the node carries out core's [`StorageOp`]s: real files, or memory for benchmarks.
//! The simulator brings its own implementation of [`Storage`] with a faulty disk model.

mod file;
mod memory;

pub use file::FileStorage;
pub use memory::MemoryStorage;

use seedlog_core::storage::{StorageCompletion, StorageOp};
use seedlog_core::Recovered;

/// How a finished sync is reported back to the driver; `Err` means the node must stop.
pub type SyncReport = Box<dyn Fn(Result<StorageCompletion, SyncFailure>) + Send + Sync>;

/// A sync that did not make its data durable.
#[derive(Debug, Clone)]
pub struct SyncFailure {
    /// Token of the failed [`StorageOp::Sync`].
    pub token: u64,
    /// What the disk said.
    pub error: String,
}

/// A place to keep partition data and the broker's small state.
pub trait Storage: Send {
    /// Loads everything on disk, repairing what a crash left (torn or corrupt tails).
    fn recover(&mut self, index_interval: u32) -> anyhow::Result<Recovered>;

    /// Carries out one operation. Completions that are ready at once are returned; syncs
    /// may instead complete later through the [`SyncReport`] given at construction.
    /// An error means the disk can no longer be trusted: the node stops.
    fn execute(&mut self, op: StorageOp) -> anyhow::Result<Option<StorageCompletion>>;

    /// Makes everything durable, before a clean exit.
    fn close(&mut self) -> anyhow::Result<()>;
}
