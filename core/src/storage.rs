//! The disk operations core asks for, and the completions the driver reports back.
//!
//! core never touches a file: it emits [`StorageOp`]s in the order they must take effect and
//! learns of fsyncs and reads through [`StorageCompletion`]s. The node runs them on real files,
//! the simulator on a disk model that can lose, tear and corrupt what was not synced.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::consensus::RaftPersist;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name (validated: `[A-Za-z0-9._-]{1,249}`, so safe as a directory name).
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds a partition id.
    pub fn new(topic: &Arc<str>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.clone(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// One segment file: `<partition dir>/<base_offset>.log`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    /// The partition the segment belongs to.
    pub partition: TopicPartition,
    /// Offset of the segment's first record; also its file name.
    pub base_offset: i64,
}

/// What the broker keeps about a topic in small durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// Topic id (KIP-516), fixed at creation.
    pub id: [u8; 16],
    /// Number of partitions.
    pub partitions: i32,
    /// Kafka-named config overrides.
    pub configs: BTreeMap<String, String>,
}

/// A disk operation, to be carried out in the order emitted.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageOp {
    /// Create an empty segment file (and its partition directory if needed).
    CreateSegment(SegmentId),
    /// Append a batch at the end of a segment file.
    Append {
        /// Target segment.
        segment: SegmentId,
        /// One whole record batch, stamped.
        data: crate::batch::StampedBatch,
    },
    /// Write the index file of a segment that will not grow any more.
    SealSegment {
        /// The sealed segment.
        segment: SegmentId,
        /// Encoded by [`crate::log::encode_segment_index`].
        index: Bytes,
    },
    /// Make every listed file durable (data and, for new files, their directory entry).
    /// Completes with [`StorageCompletion::Synced`]; a failure must stop the node.
    Sync {
        /// Echoed in the completion.
        token: u64,
        /// Files written since the previous sync.
        segments: Vec<SegmentId>,
    },
    /// Read `len` bytes (or up to end of file) at `position`; completes with
    /// [`StorageCompletion::Read`].
    Read {
        /// Echoed in the completion.
        token: u64,
        /// Source segment.
        segment: SegmentId,
        /// Byte position in the segment file.
        position: u64,
        /// Bytes wanted.
        len: usize,
    },
    /// Delete a segment file and its index.
    DeleteSegment(SegmentId),
    /// Cut a segment file to `len` bytes and delete its index file; it is the active segment
    /// again. Durable with the next [`StorageOp::Sync`] that lists the segment.
    TruncateSegment {
        /// The segment.
        segment: SegmentId,
        /// Bytes kept.
        len: u64,
    },
    /// Overwrite bytes inside a segment file with the intact copy of a batch that the file
    /// holds damaged: same place, same length (every replica holds the same bytes at the same
    /// position of the same offsets). Durable with the next [`StorageOp::Sync`] that lists
    /// the segment; until then a power loss may bring the damaged bytes back.
    Rewrite {
        /// The segment.
        segment: SegmentId,
        /// Byte position of the batch.
        position: u64,
        /// The batch, as intact.
        data: Bytes,
    },
    /// Delete a partition directory and all it holds.
    DeletePartition(TopicPartition),
    /// Durably record a topic's definition.
    SaveTopic {
        /// Topic name.
        name: Arc<str>,
        /// Its definition.
        record: TopicRecord,
    },
    /// Durably forget a topic.
    RemoveTopic(Arc<str>),
    /// Write a change to the metadata quorum's Raft state (see [`RaftPersist`]). It must be
    /// durable when the driver moves on to the next output: later outputs (votes, answers to
    /// clients) promise it.
    SaveQuorum(Box<RaftPersist>),
    /// Write a change to a partition replica's Raft state: hard state (term and vote), and
    /// the log start and membership as a snapshot (its data is the start offset and the
    /// membership's index); never entries, which are the segments. Durable when the driver moves on, like [`StorageOp::SaveQuorum`].
    /// [`StorageOp::DeletePartition`] forgets it.
    SaveReplica {
        /// The partition.
        partition: TopicPartition,
        /// The change.
        state: Box<RaftPersist>,
    },
    /// Replace the producer-table snapshot of a partition of one copy (see
    /// [`crate::producer::ProducerTable::snapshot`]); it covers only durable batches, so
    /// it needs no fsync before anything else. [`StorageOp::DeletePartition`] forgets it.
    SaveProducers {
        /// The partition.
        partition: TopicPartition,
        /// The encoded snapshot.
        snapshot: Bytes,
    },
}

/// The answer to a [`StorageOp`] that has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageCompletion {
    /// The sync with this token is durable.
    Synced {
        /// Token of the [`StorageOp::Sync`].
        token: u64,
    },
    /// The read with this token finished.
    Read {
        /// Token of the [`StorageOp::Read`].
        token: u64,
        /// The bytes, or what went wrong.
        result: Result<Bytes, String>,
    },
}
