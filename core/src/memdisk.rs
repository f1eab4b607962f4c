//! An in-memory disk that carries out [`StorageOp`]s: for tests, for the simulator's disk
//! model to build on, and for the broker's no-durability benchmark mode.
//!
//! It models what a crash keeps: bytes written since a file's last sync can be dropped with
//! [`MemDisk::crash`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::consensus::{MemLog, RaftPersist};
use crate::sealed;
use crate::storage::{SegmentId, StorageCompletion, StorageOp, TopicPartition, TopicRecord};

#[derive(Debug, Default, Clone)]
struct File {
    data: BytesMut,
    synced_len: usize,
    /// Bytes overwritten inside the synced part since the last sync, as (number, position,
    /// what was there): a power loss puts them back.
    unsynced_rewrites: Vec<(u64, usize, Vec<u8>)>,
    /// The number of the next rewrite.
    rewrites: u64,
}

/// Segment files, index files and topic records, all in memory.
#[derive(Debug, Default, Clone)]
pub struct MemDisk {
    segments: BTreeMap<SegmentId, File>,
    indexes: BTreeMap<SegmentId, Bytes>,
    topics: BTreeMap<Arc<str>, TopicRecord>,
    /// The metadata quorum's entries; written synchronously, so never lost.
    quorum: Option<MemLog>,
    /// The Raft groups' hard states, snapshots and memberships, sealed and kept twice
    /// ([`crate::sealed`]) under the keys [`QUORUM_PREFIX`] and [`replica_prefix`] give;
    /// written synchronously too, but a simulated disk may flip their bits.
    state: BTreeMap<String, Vec<u8>>,
    /// Producer-table snapshots; written synchronously too.
    producers: BTreeMap<TopicPartition, Bytes>,
    /// Syncs started and not yet completed, by token: what each makes durable of each of
    /// its files when it completes (length, rewrites before number).
    syncs: BTreeMap<u64, Vec<(SegmentId, usize, u64)>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Carries out one operation; returns its completion, if it has one.
    pub fn execute(&mut self, op: StorageOp) -> Option<StorageCompletion> {
        match op {
            StorageOp::CreateSegment(id) => {
                self.segments.entry(id).or_default();
            }
            StorageOp::Append { segment, data } => {
                let file = &mut self.segments.entry(segment).or_default().data;
                data.parts()
                    .iter()
                    .for_each(|part| file.extend_from_slice(part));
            }
            StorageOp::SealSegment { segment, index } => {
                self.indexes.insert(segment, index);
            }
            StorageOp::Sync { token, segments } => {
                self.sync_started(token, &segments);
                self.sync_completed(token);
                return Some(StorageCompletion::Synced { token });
            }
            StorageOp::Read {
                token,
                segment,
                position,
                len,
            } => {
                let result = match self.segments.get(&segment) {
                    None => Err(format!("no segment {segment:?}")),
                    Some(file) => {
                        let start = (position as usize).min(file.data.len());
                        let end = start.saturating_add(len).min(file.data.len());
                        Ok(Bytes::copy_from_slice(&file.data[start..end]))
                    }
                };
                return Some(StorageCompletion::Read { token, result });
            }
            StorageOp::DeleteSegment(id) => {
                self.segments.remove(&id);
                self.indexes.remove(&id);
            }
            StorageOp::TruncateSegment { segment, len } => {
                self.indexes.remove(&segment);
                if let Some(file) = self.segments.get_mut(&segment) {
                    file.data.truncate(len as usize);
                    file.synced_len = file.synced_len.min(file.data.len());
                }
                // A sync under way makes durable only what is left of what it found.
                for (id, synced, _) in self.syncs.values_mut().flatten() {
                    if *id == segment {
                        *synced = (*synced).min(len as usize);
                    }
                }
            }
            StorageOp::Rewrite {
                segment,
                position,
                data,
            } => {
                if let Some(file) = self.segments.get_mut(&segment) {
                    let start = (position as usize).min(file.data.len());
                    let end = (start + data.len()).min(file.data.len());
                    if start < file.synced_len {
                        let old = file.data[start..end.min(file.synced_len)].to_vec();
                        file.unsynced_rewrites.push((file.rewrites, start, old));
                        file.rewrites += 1;
                    }
                    file.data[start..end].copy_from_slice(&data[..end - start]);
                }
            }
            StorageOp::DeletePartition(tp) => {
                self.segments.retain(|id, _| id.partition != tp);
                self.indexes.retain(|id, _| id.partition != tp);
                let prefix = replica_prefix(&tp);
                self.state.retain(|key, _| !key.starts_with(&prefix));
                self.producers.remove(&tp);
            }
            StorageOp::SaveTopic { name, record } => {
                self.topics.insert(name, record);
            }
            StorageOp::RemoveTopic(name) => {
                self.topics.remove(&name);
            }
            StorageOp::SaveReplica { partition, state } => {
                let writes = sealed::raft_state_writes(&replica_prefix(&partition), &state);
                self.state.extend(writes);
            }
            StorageOp::SaveProducers {
                partition,
                snapshot,
            } => {
                self.producers.insert(partition, snapshot);
            }
            StorageOp::SaveQuorum(change) => {
                self.state
                    .extend(sealed::raft_state_writes(QUORUM_PREFIX, &change));
                self.quorum
                    .get_or_insert_with(MemLog::default)
                    .apply(&change);
            }
        }
        None
    }

    /// A sync of `segments` starts (as `StorageOp::Sync` with `token`, carried out later
    /// by [`Self::sync_completed`]): it will make durable what they hold now, and nothing
    /// written after (a real fdatasync may take some of that too; a model that counted it
    /// would hide a broker that trusted it).
    pub fn sync_started(&mut self, token: u64, segments: &[SegmentId]) {
        let points = segments
            .iter()
            .filter_map(|id| {
                let file = self.segments.get(id)?;
                Some((id.clone(), file.data.len(), file.rewrites))
            })
            .collect();
        self.syncs.insert(token, points);
    }

    /// The sync `token` completes: what its files held when it started is durable.
    pub fn sync_completed(&mut self, token: u64) {
        for (id, len, rewrites) in self.syncs.remove(&token).unwrap_or_default() {
            if let Some(file) = self.segments.get_mut(&id) {
                file.synced_len = file.synced_len.max(len.min(file.data.len()));
                file.unsynced_rewrites.retain(|(n, _, _)| *n >= rewrites);
            }
        }
    }

    /// The sync `token` failed, or died with its broker: it makes nothing durable.
    pub fn sync_abandoned(&mut self, token: u64) {
        self.syncs.remove(&token);
    }

    /// Drops every byte not yet synced, as a power failure would.
    pub fn crash(&mut self) {
        self.crash_with(|_, _| 0);
    }

    /// A power failure that keeps part of each file's unsynced tail: `keep(segment, tail)`
    /// sees the unsynced bytes (and may scribble on them, as a torn write does) and says how
    /// many of them survive.
    pub fn crash_with(&mut self, mut keep: impl FnMut(&SegmentId, &mut [u8]) -> usize) {
        self.syncs.clear(); // They die with the broker.
        for (id, file) in self.segments.iter_mut() {
            for (_, at, old) in file.unsynced_rewrites.drain(..).rev() {
                file.data[at..at + old.len()].copy_from_slice(&old);
            }
            let synced = file.synced_len;
            let unsynced = file.data.len() - synced;
            let kept = keep(id, &mut file.data[synced..]).min(unsynced);
            file.data.truncate(synced + kept);
            file.synced_len = file.data.len();
        }
    }

    /// The bytes of a segment written since its last sync (an fsync that failed may have
    /// lost them while the file keeps its length).
    pub fn unsynced_tail_mut(&mut self, id: &SegmentId) -> Option<&mut [u8]> {
        let file = self.segments.get_mut(id)?;
        let synced = file.synced_len;
        Some(&mut file.data[synced..])
    }

    /// Every segment with its length and how much of it is synced.
    pub fn segment_lengths(&self) -> Vec<(SegmentId, usize, usize)> {
        self.segments
            .iter()
            .map(|(id, f)| (id.clone(), f.data.len(), f.synced_len))
            .collect()
    }

    /// True if `id` has bytes rewritten in place that are not synced yet (a power loss would
    /// bring back what they replaced).
    pub fn has_unsynced_rewrites(&self, id: &SegmentId) -> bool {
        self.segments
            .get(id)
            .is_some_and(|f| !f.unsynced_rewrites.is_empty())
    }

    /// Mutable bytes of a segment file, to plant corruption in tests.
    pub fn segment_bytes_mut(&mut self, id: &SegmentId) -> Option<&mut BytesMut> {
        self.segments.get_mut(id).map(|f| &mut f.data)
    }

    /// The stored topic records.
    pub fn topics(&self) -> &BTreeMap<Arc<str>, TopicRecord> {
        &self.topics
    }

    /// [`Self::segment_ids`] by topic name and partition index.
    pub fn segment_ids_of(&self, topic: &str, partition: i32) -> Vec<SegmentId> {
        self.segment_ids(&TopicPartition::new(&Arc::from(topic), partition))
    }

    /// Segment ids of one partition, oldest first.
    pub fn segment_ids(&self, tp: &TopicPartition) -> Vec<SegmentId> {
        self.segments
            .keys()
            .filter(|id| id.partition == *tp)
            .cloned()
            .collect()
    }

    /// The bytes of one segment file.
    pub fn segment(&self, id: &SegmentId) -> Option<&[u8]> {
        self.segments.get(id).map(|f| &f.data[..])
    }

    /// The index file of a sealed segment.
    pub fn index(&self, id: &SegmentId) -> Option<&Bytes> {
        self.indexes.get(id)
    }
}

impl MemDisk {
    /// Recovers every stored topic as a restarting broker would: loads the small state (a
    /// damaged copy is written over with its intact twin), scans and truncates segments per
    /// [`crate::recovery::recover_partition`] and returns what to load. Fails, naming the
    /// key, if a value of the small state has no intact copy.
    pub fn recover(
        &mut self,
        index_interval: u32,
        max_batch_bytes: usize,
    ) -> Result<crate::broker::Recovered, String> {
        use crate::recovery::{recover_partition, scan_segment, FoundSegment};
        let (quorum, mut replicas) = self.load_small_state()?;
        let topics: Vec<_> = self
            .topics
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let mut recovered = Vec::new();
        for (name, record) in topics {
            let mut partitions = Vec::new();
            for index in 0..record.partitions {
                let tp = TopicPartition::new(&name, index);
                let found: Vec<FoundSegment> = self
                    .segment_ids(&tp)
                    .into_iter()
                    .map(|id| FoundSegment {
                        base_offset: id.base_offset,
                        len: self.segments[&id].data.len() as u64,
                        next_base: None,
                        index: self.indexes.get(&id).cloned(),
                    })
                    .collect();
                let plan = recover_partition(found, |f| {
                    let id = SegmentId {
                        partition: tp.clone(),
                        base_offset: f.base_offset,
                    };
                    scan_segment(
                        f.base_offset,
                        self.segment(&id).unwrap_or(&[]),
                        index_interval,
                        max_batch_bytes,
                        replicas.contains_key(&tp),
                        f.next_base,
                    )
                });
                if plan.lost {
                    if let Some(state) = replicas.get_mut(&tp) {
                        crate::replica::mark_catching_up(state);
                        self.execute(StorageOp::SaveReplica {
                            partition: tp.clone(),
                            state: Box::new(RaftPersist {
                                snapshot: state.snapshot.clone(),
                                ..Default::default()
                            }),
                        });
                    }
                }
                for (base_offset, len) in plan.truncate {
                    let id = SegmentId {
                        partition: tp.clone(),
                        base_offset,
                    };
                    if let Some(file) = self.segments.get_mut(&id) {
                        file.data.truncate(len as usize);
                        file.synced_len = file.synced_len.min(len as usize);
                    }
                }
                for base_offset in plan.delete {
                    self.execute(StorageOp::DeleteSegment(SegmentId {
                        partition: tp.clone(),
                        base_offset,
                    }));
                }
                let active = plan.segments.last().expect("never empty").base_offset;
                self.segments
                    .entry(SegmentId {
                        partition: tp.clone(),
                        base_offset: active,
                    })
                    .or_default();
                partitions.push(plan.segments);
            }
            recovered.push(crate::RecoveredTopic {
                name: name.to_string(),
                record,
                partitions,
            });
        }
        Ok(crate::broker::Recovered {
            topics: recovered,
            quorum,
            replicas,
            producers: self.producers.clone(),
        })
    }

    /// The quorum's state and every replica's, from the sealed small state; damaged copies
    /// beside intact ones are repaired on the way.
    #[allow(clippy::type_complexity)]
    fn load_small_state(
        &mut self,
    ) -> Result<(Option<RaftPersist>, BTreeMap<TopicPartition, RaftPersist>), String> {
        let mut repairs = Vec::new();
        let mut load = |prefix: &str| {
            let loaded = sealed::load_raft_state(prefix, |key| Ok(self.state.get(key).cloned()))?;
            repairs.extend(loaded.repairs);
            Ok::<_, String>(loaded.state)
        };
        let quorum = match &self.quorum {
            Some(log) => {
                let sealed = load(QUORUM_PREFIX)?;
                Some(RaftPersist {
                    entries: log.as_persist().entries,
                    ..sealed
                })
            }
            None => None,
        };
        let partitions: BTreeSet<TopicPartition> =
            self.state.keys().filter_map(|k| replica_of(k)).collect();
        let mut replicas = BTreeMap::new();
        for tp in partitions {
            replicas.insert(tp.clone(), load(&replica_prefix(&tp))?);
        }
        for (key, damage, intact) in repairs {
            tracing::warn!(%key, %damage, "small state: a damaged copy is written over with its intact twin");
            self.state.insert(key, intact);
        }
        Ok((quorum, replicas))
    }

    /// The keys of the small state (hard states, snapshots, memberships; two copies each).
    pub fn state_keys(&self) -> Vec<String> {
        self.state.keys().cloned().collect()
    }

    /// The stored bytes of a small-state key, to plant damage in tests and the simulator.
    pub fn state_bytes_mut(&mut self, key: &str) -> Option<&mut Vec<u8>> {
        self.state.get_mut(key)
    }

    /// Partitions whose replica's recorded state says it is catching up: start-up cut
    /// batches it may have acknowledged (see [`crate::replica::mark_catching_up`]).
    pub fn catching_up_partitions(&self) -> BTreeSet<TopicPartition> {
        let partitions: BTreeSet<TopicPartition> =
            self.state.keys().filter_map(|k| replica_of(k)).collect();
        partitions
            .into_iter()
            .filter(|tp| {
                sealed::load_raft_state(&replica_prefix(tp), |key| Ok(self.state.get(key).cloned()))
                    .is_ok_and(|loaded| crate::replica::is_catching_up(&loaded.state))
            })
            .collect()
    }

    /// True if the small-state value under `key` fails its check.
    pub fn state_damaged(&self, key: &str) -> bool {
        self.state
            .get(key)
            .is_some_and(|v| sealed::unseal(v).is_err())
    }
}

/// Where the metadata quorum's small state is kept.
const QUORUM_PREFIX: &str = "quorum/";

/// Where a partition replica's small state is kept.
fn replica_prefix(tp: &TopicPartition) -> String {
    format!("replica/{}/{}/", tp.topic, tp.partition)
}

/// The partition a small-state key of a replica belongs to.
fn replica_of(key: &str) -> Option<TopicPartition> {
    let rest = key.strip_prefix("replica/")?;
    let (topic, rest) = rest.split_once('/')?;
    let (partition, _) = rest.split_once('/')?;
    Some(TopicPartition::new(
        &Arc::from(topic),
        partition.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::HardState;

    fn saved_replica() -> (MemDisk, TopicPartition, HardState) {
        let mut disk = MemDisk::new();
        let tp = TopicPartition::new(&Arc::from("t"), 2);
        let hard_state = HardState {
            term: 3,
            vote: 1,
            commit: 0,
        };
        disk.execute(StorageOp::SaveReplica {
            partition: tp.clone(),
            state: Box::new(RaftPersist {
                hard_state: Some(hard_state.clone()),
                ..RaftPersist::default()
            }),
        });
        (disk, tp, hard_state)
    }

    #[test]
    fn a_replica_marked_catching_up_is_listed_until_its_mark_is_cleared() {
        let (mut disk, tp, hard_state) = saved_replica();
        assert!(disk.catching_up_partitions().is_empty());
        let mut state = RaftPersist::default();
        crate::replica::mark_catching_up(&mut state);
        disk.execute(StorageOp::SaveReplica {
            partition: tp.clone(),
            state: Box::new(state),
        });
        assert_eq!(disk.catching_up_partitions(), BTreeSet::from([tp.clone()]));
        let recovered = disk.recover(4096, 1 << 20).expect("intact");
        assert!(crate::replica::is_catching_up(&recovered.replicas[&tp]));
        assert_eq!(recovered.replicas[&tp].hard_state, Some(hard_state));
        // Caught up: the start is recorded again without the mark.
        let mut cleared = recovered.replicas[&tp].clone();
        if let Some(snapshot) = cleared.snapshot.as_mut() {
            snapshot.data.truncate(crate::replica::LogStart::RECORD_LEN);
        }
        disk.execute(StorageOp::SaveReplica {
            partition: tp,
            state: Box::new(RaftPersist {
                snapshot: cleared.snapshot,
                ..RaftPersist::default()
            }),
        });
        assert!(disk.catching_up_partitions().is_empty());
    }

    #[test]
    fn a_flipped_copy_of_the_small_state_is_repaired_from_its_twin() {
        let (mut disk, tp, hard_state) = saved_replica();
        let key = "replica/t/2/hard_state#2";
        disk.state_bytes_mut(key).expect("second copy")[7] ^= 0x01;
        assert!(disk.state_damaged(key));
        let recovered = disk.recover(4096, 1 << 20).expect("one copy is intact");
        assert_eq!(recovered.replicas[&tp].hard_state, Some(hard_state));
        assert!(!disk.state_damaged(key), "written over with its twin");
    }

    #[test]
    fn both_copies_damaged_stop_the_load_naming_the_key() {
        let (mut disk, _, _) = saved_replica();
        for key in ["replica/t/2/hard_state", "replica/t/2/hard_state#2"] {
            disk.state_bytes_mut(key).expect("copy")[5] ^= 0x80;
        }
        let err = disk.recover(4096, 1 << 20).unwrap_err();
        assert!(err.contains("replica/t/2/hard_state"), "{err}");
    }
}
