//! Where a record's time goes inside the broker: the stages between its append and the
//! moment consumers can read it.
//!
//! The driver tells a [`StageClock`] what it carries out (appends, syncs starting and
//! finishing) and what core reports (`Observation::Visible`: a high watermark rose), each
//! with the time it happened; the clock pairs them up per append and hands back each
//! append's [`Stages`] once it is visible. Only with an admin listener: without one nobody
//! reads the figures and nothing is tracked.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use seedlog_core::storage::TopicPartition;

/// Appends a partition may have waiting for its high watermark before the oldest are
/// forgotten (a partition deleted while they waited would otherwise keep them for ever).
const WAITING_MAX: usize = 4096;

/// The times of one append's way to consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stages {
    /// Appended until the sync that makes it durable started (group commit's wait).
    pub sync_wait: Option<Duration>,
    /// That sync's own time.
    pub sync: Option<Duration>,
    /// Synced until the high watermark passed it (a replicated partition's followers; a
    /// single replica's turn of the driver).
    pub commit: Option<Duration>,
    /// Appended until visible: the sum of the above, or less where a majority of
    /// followers committed it before the leader's own sync ended.
    pub visible: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Append {
    /// The offset after its last record.
    end: i64,
    appended: Instant,
    sync_started: Option<Instant>,
    synced: Option<Instant>,
}

/// Pairs appends with the syncs and high watermarks that follow them.
#[derive(Debug, Default)]
pub struct StageClock {
    /// Appends in the order made, per partition; each moves through its sync to visible.
    waiting: BTreeMap<TopicPartition, VecDeque<Append>>,
    /// Appends made since the last sync started (a sync covers every append before it),
    /// by partition and end offset. Bounded: with `flush = never` no sync ever starts.
    unsynced: VecDeque<(TopicPartition, i64)>,
    /// Syncs in flight, and the appends each covers.
    syncing: BTreeMap<u64, VecDeque<(TopicPartition, i64)>>,
}

impl StageClock {
    /// Records of `partition` up to `end` (exclusive) were appended at `now`.
    pub fn appended(&mut self, partition: &TopicPartition, end: i64, now: Instant) {
        let queue = self.waiting.entry(partition.clone()).or_default();
        if queue.len() >= WAITING_MAX {
            queue.pop_front();
        }
        queue.push_back(Append {
            end,
            appended: now,
            sync_started: None,
            synced: None,
        });
        if self.unsynced.len() >= WAITING_MAX {
            self.unsynced.pop_front();
        }
        self.unsynced.push_back((partition.clone(), end));
    }

    /// Sync `token` started at `now`: it covers every append made before.
    pub fn sync_started(&mut self, token: u64, now: Instant) {
        let covered = std::mem::take(&mut self.unsynced);
        for (partition, end) in &covered {
            if let Some(append) = self.find(partition, *end) {
                append.sync_started.get_or_insert(now);
            }
        }
        self.syncing.insert(token, covered);
    }

    /// Sync `token` finished at `now`.
    pub fn synced(&mut self, token: u64, now: Instant) {
        for (partition, end) in self.syncing.remove(&token).unwrap_or_default() {
            if let Some(append) = self.find(&partition, end) {
                append.synced.get_or_insert(now);
            }
        }
    }

    /// `partition`'s high watermark rose to `high_watermark` at `now`: the stages of every
    /// append it passed, if this broker leads the partition (a follower hears of commits
    /// after its leader's consumers could read them, so its figures would say nothing).
    pub fn visible(
        &mut self,
        partition: &TopicPartition,
        high_watermark: i64,
        leader: bool,
        now: Instant,
    ) -> Vec<Stages> {
        let Some(queue) = self.waiting.get_mut(partition) else {
            return Vec::new();
        };
        let passed = queue.iter().take_while(|a| a.end <= high_watermark).count();
        let stages = queue
            .drain(..passed)
            .filter(|_| leader)
            .map(|a| Stages {
                sync_wait: a
                    .sync_started
                    .map(|s| s.saturating_duration_since(a.appended)),
                sync: a.sync_started.zip(a.synced).map(|(s, d)| d - s),
                commit: a.synced.map(|d| now.saturating_duration_since(d)),
                visible: now.saturating_duration_since(a.appended),
            })
            .collect();
        if queue.is_empty() {
            self.waiting.remove(partition);
        }
        stages
    }

    fn find(&mut self, partition: &TopicPartition, end: i64) -> Option<&mut Append> {
        let queue = self.waiting.get_mut(partition)?;
        let at = queue.partition_point(|a| a.end < end);
        queue.get_mut(at).filter(|a| a.end == end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new(&"t".into(), partition)
    }

    #[test]
    fn an_append_is_timed_through_its_sync_to_its_high_watermark() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut clock = StageClock::default();
        clock.appended(&tp(0), 10, ms(0));
        clock.sync_started(1, ms(1));
        clock.appended(&tp(0), 20, ms(2)); // waits for the next sync
        clock.synced(1, ms(4));
        let first = clock.visible(&tp(0), 10, true, ms(5));
        assert_eq!(
            first,
            vec![Stages {
                sync_wait: Some(Duration::from_millis(1)),
                sync: Some(Duration::from_millis(3)),
                commit: Some(Duration::from_millis(1)),
                visible: Duration::from_millis(5),
            }]
        );
        clock.sync_started(2, ms(6));
        clock.synced(2, ms(7));
        let second = clock.visible(&tp(0), 20, true, ms(7));
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].sync_wait, Some(Duration::from_millis(4)));
        assert_eq!(second[0].visible, Duration::from_millis(5));
        assert!(clock.waiting.is_empty());
    }

    #[test]
    fn commits_before_the_local_sync_and_follower_appends_are_handled() {
        let t0 = Instant::now();
        let mut clock = StageClock::default();
        // Followers committed it before the leader's sync even started.
        clock.appended(&tp(1), 5, t0);
        let early = clock.visible(&tp(1), 5, true, t0 + Duration::from_millis(2));
        assert_eq!(early[0].sync_wait, None);
        assert_eq!(early[0].visible, Duration::from_millis(2));
        clock.sync_started(1, t0 + Duration::from_millis(3));
        clock.synced(1, t0 + Duration::from_millis(4));
        // A follower's appends leave the clock without a figure.
        clock.appended(&tp(2), 7, t0);
        assert!(clock.visible(&tp(2), 9, false, t0).is_empty());
        assert!(clock.waiting.is_empty());
    }
}
