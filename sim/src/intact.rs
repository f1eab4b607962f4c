//! The commits-intact check, on the brokers' disks as entries commit: when an entry of a
//! replicated partition is first reported committed, a majority of the partition's replicas
//! hold an intact copy of it (its CRC holds and is the committed entry's). A copy that a
//! fault damaged at rest after it was written still counts: it was intact when the quorum
//! counted it. What is left is a quorum that counted a copy never intact, such as one
//! damaged on the way and written as it came.
//!
//! Nothing here waits: it runs inside the observer, at the moment of the report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use seedlog_core::storage::TopicPartition;
use seedlog_core::CommittedEntry;

use crate::disk::SimDisk;
use crate::history::{Check, History};

/// The disks and the replication of each scenario topic.
pub struct IntactCheck {
    /// Every broker's disk, by broker index.
    pub disks: Vec<Arc<Mutex<SimDisk>>>,
    /// Replication factor of each scenario topic; other topics are not checked.
    pub replication: BTreeMap<String, u32>,
}

impl IntactCheck {
    /// Checks `fresh`, entries of partition `group` (`topic-index`) reported committed for
    /// the first time.
    pub fn check(&self, group: &str, fresh: &[CommittedEntry], history: &mut History) {
        let Some((topic, index)) = group.rsplit_once('-') else {
            return;
        };
        let (Some(&rf), Ok(index)) = (self.replication.get(topic), index.parse::<i32>()) else {
            return;
        };
        if rf < 2 {
            return;
        }
        let tp = TopicPartition::new(&topic.into(), index);
        let partition = (topic.to_string(), index);
        for entry in fresh {
            // A report without a CRC comes from a damaged copy; an intact one reports it.
            let Some(crc) = entry.crc else {
                continue;
            };
            let mut intact = 0;
            for (broker, disk) in self.disks.iter().enumerate() {
                // Taken only if free: the observer may run under a disk's lock (a start).
                let Ok(disk) = disk.try_lock() else {
                    intact += 1;
                    continue;
                };
                let whole = disk.batch_at(&tp, entry.base_offset) == Some((true, crc));
                if whole || history.flipped_at_rest(broker, &partition, entry.base_offset) {
                    intact += 1;
                }
            }
            if intact * 2 <= rf as usize {
                let detail = format!(
                    "{group} index {} (offset {}, term {}) committed with {intact} intact copies of {rf}",
                    entry.index, entry.base_offset, entry.term
                );
                history.violate(Check::CommitsIntact, detail);
            }
        }
    }
}
