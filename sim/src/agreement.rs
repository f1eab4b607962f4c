//! Replicas agree on what they hold: at the end of a run, each replica's log of a replicated
//! partition must be a prefix of the longest replica's log, batch by batch (offset, leader
//! epoch, CRC). A committed batch is on a majority and no replica may hold another one at
//! its offset, so a disagreement inside anyone's log is a replication bug.

use seedlog_core::batch::complete_batches;
use seedlog_core::storage::TopicPartition;

use crate::faults::Brokers;
use crate::workload::Ctx;

/// One batch as the check compares it.
type BatchKey = (i64, i32, u32);

/// Waits (up to ten simulated seconds) for the replicas of every replicated partition to
/// agree, then records the disagreements left. A replica that was down or cut off may hold
/// a stale uncommitted suffix until its leader reaches it; one that still disagrees after
/// that long, with every fault healed, shows a replication bug.
pub async fn check(ctx: &Ctx, brokers: &Brokers) {
    let mut disagreements = Vec::new();
    for _ in 0..20 {
        disagreements = compare(ctx, brokers);
        if disagreements.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for detail in disagreements {
        ctx.history().replicas_disagree(detail);
    }
}

/// Compares the replicas of every replicated scenario partition.
fn compare(ctx: &Ctx, brokers: &Brokers) -> Vec<String> {
    let mut out = Vec::new();
    let brokers = brokers.lock().expect("brokers lock");
    for (topic, index) in ctx.partitions() {
        if ctx.plan.scenario.topics[&topic].replication <= 1 {
            continue;
        }
        let tp = TopicPartition::new(&topic.as_str().into(), index);
        // A flipped bit on one copy is that copy's damage, not a disagreement of Raft's; a
        // flip in a base offset can make it look smaller, hence the larger of the two below.
        let damaged = ctx
            .history()
            .damaged_from(&(topic.clone(), index))
            .unwrap_or(i64::MAX);
        let logs: Vec<(usize, Vec<BatchKey>)> = brokers
            .iter()
            .enumerate()
            .filter_map(|(i, broker)| {
                let sim_disk = broker.disk.lock().expect("disk lock");
                let segments = sim_disk.disk.segment_ids(&tp);
                if segments.is_empty() {
                    return None;
                }
                let batches = segments
                    .iter()
                    .filter_map(|id| sim_disk.disk.segment(id))
                    .flat_map(|bytes| {
                        complete_batches(bytes)
                            .map(|b| (b.base_offset(), b.leader_epoch(), b.stored_crc()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                Some((i + 1, batches))
            })
            .collect();
        let Some((longest_id, longest)) = logs.iter().max_by_key(|(_, l)| l.len()) else {
            continue;
        };
        for (id, log) in &logs {
            // Compare from the longest log's position of this replica's first batch: the
            // start of a log can differ by retention.
            let Some(first) = log.first() else {
                continue;
            };
            let Some(from) = longest.iter().position(|b| b.0 == first.0) else {
                continue;
            };
            let diverged = log
                .iter()
                .zip(&longest[from..])
                .position(|(a, b)| a != b && a.0.max(b.0) < damaged);
            if let Some(at) = diverged {
                let (mine, theirs) = (log[at], longest[from + at]);
                out.push(format!(
                    "{topic}-{index}: broker {id} holds batch {mine:?} where broker {longest_id} holds {theirs:?}"
                ));
            }
        }
    }
    out
}
