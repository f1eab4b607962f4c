//! The fault injector: one task per fault family, each striking at random gaps drawn from
//! the plan, until the workload phase ends. [`heal`] then undoes whatever is still in force.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;

use seedlog_core::cluster::records::PeerFrame;

use crate::cluster::Broker;
use crate::history::Partition;
use crate::scenario::{Dice, Recurring, Target};
use crate::workload::Ctx;

/// The brokers, shared by the injectors and the supervisor.
pub type Brokers = Arc<Mutex<Vec<Broker>>>;

async fn sleep_s(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
}

/// Starts an injector task per fault family in the plan. Abort the returned tasks before
/// [`heal`].
pub fn start(ctx: &Ctx, brokers: &Brokers) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let f = ctx.plan.faults.clone();
    let recurring = [
        ("crash", f.crash),
        ("bit-flip", f.bit_flip),
        ("fsync-eio", f.fsync_error),
        ("disk-full", f.disk_full),
        ("partition", f.partition),
        ("pause", f.pause),
        ("restart", f.restart),
        ("clock-jump", f.clock_jump),
        ("state-flip", f.state_flip),
        ("wire-flip", f.wire_flip),
    ];
    if let Some(schedule) = f.upgrade {
        let dice = Dice::new(ctx.plan.seed, 2100);
        tasks.push(tokio::spawn(upgrade(
            ctx.clone(),
            brokers.clone(),
            schedule,
            dice,
        )));
    }
    for (stream, (kind, schedule)) in recurring.into_iter().enumerate() {
        if let Some(schedule) = schedule {
            let dice = Dice::new(ctx.plan.seed, 2000 + stream as u64);
            tasks.push(tokio::spawn(injector(
                ctx.clone(),
                brokers.clone(),
                kind,
                schedule,
                dice,
            )));
        }
    }
    tasks
}

async fn injector(
    ctx: Ctx,
    brokers: Brokers,
    kind: &'static str,
    schedule: Recurring,
    mut dice: Dice,
) {
    loop {
        sleep_s(dice.pick(schedule.every_s)).await;
        if ctx.stop.load(Ordering::Relaxed) {
            return;
        }
        let index = {
            let brokers = brokers.lock().expect("brokers lock");
            let up: Vec<usize> = (0..brokers.len()).filter(|i| !brokers[*i].down).collect();
            if up.is_empty() {
                continue;
            }
            let controller = match schedule.target {
                Target::Controller => ctx.history().current_leader("metadata"),
                Target::PartitionLeader => {
                    let partitions = ctx.partitions();
                    let pick = dice.between(0, partitions.len().max(1) as u64 - 1) as usize;
                    partitions.get(pick).and_then(|(topic, index)| {
                        ctx.history().current_leader(&format!("{topic}-{index}"))
                    })
                }
                Target::Any => None,
            };
            aim(&up, controller, &mut dice)
        };
        let duration = dice.pick(schedule.for_s);
        strike(&ctx, &brokers, kind, index, duration, &mut dice).await;
    }
}

/// The broker a strike aims at: broker `preferred` (an id) if it is among `candidates`
/// (indexes, not empty), else one of them at random.
fn aim(candidates: &[usize], preferred: Option<i32>, dice: &mut Dice) -> usize {
    match preferred.map(|id| (id - 1) as usize) {
        Some(index) if candidates.contains(&index) => index,
        _ => candidates[dice.between(0, candidates.len() as u64 - 1) as usize],
    }
}

async fn strike(
    ctx: &Ctx,
    brokers: &Brokers,
    kind: &'static str,
    index: usize,
    duration: f64,
    dice: &mut Dice,
) {
    let now = ctx.now_ms();
    let node = brokers.lock().expect("brokers lock")[index].node.id();
    match kind {
        "crash" => {
            let (lost, torn) = brokers.lock().expect("brokers lock")[index]
                .crash(ctx.plan.faults.torn_write_chance);
            ctx.history().fault(now, kind, (index, lost, torn));
            sleep_s(duration).await;
            brokers.lock().expect("brokers lock")[index].restart();
        }
        "bit-flip" => {
            let atlas = Atlas::read(&brokers.lock().expect("brokers lock"));
            let flipped = brokers.lock().expect("brokers lock")[index]
                .disk
                .lock()
                .expect("disk lock")
                .flip_bit(|p| atlas.may_damage(index, p));
            if let Some((partition, offset)) = flipped {
                let copies = atlas.copies(&partition);
                let mut history = ctx.history();
                history.flip_at_rest(index, &partition, offset);
                if copies == 1 {
                    // The only copy: nothing can bring these records back.
                    history.damaged(&partition, offset);
                }
                history.fault(now, kind, (index, partition, offset, copies));
            }
        }
        "wire-flip" => {
            // The next append that reaches this broker carrying a batch has a bit flipped on
            // the way (see `wire_tap`); the history records it when it strikes.
            let id = index as i32 + 1;
            *ctx.wire.lock().expect("wire lock").entry(id).or_default() += 1;
        }
        "state-flip" => {
            let flipped = brokers.lock().expect("brokers lock")[index]
                .disk
                .lock()
                .expect("disk lock")
                .flip_state_bit();
            if let Some(key) = flipped {
                ctx.history().fault(now, kind, (index, key));
            }
        }
        "fsync-eio" => {
            brokers.lock().expect("brokers lock")[index]
                .disk
                .lock()
                .expect("disk lock")
                .faults
                .fail_next_sync = true;
            ctx.history().fault(now, kind, index);
        }
        "disk-full" => {
            let disk = brokers.lock().expect("brokers lock")[index].disk.clone();
            disk.lock().expect("disk lock").faults.full = true;
            ctx.history().fault(now, kind, index);
            sleep_s(duration).await;
            disk.lock().expect("disk lock").faults.full = false;
        }
        "partition" => {
            let net = NetSim::current();
            let nodes: Vec<_> = (brokers.lock().expect("brokers lock").iter())
                .map(|b| b.node.id())
                .collect();
            let mut mode = PartitionMode::ALL[dice.between(0, 4) as usize];
            if mode == PartitionMode::Split && nodes.len() < 3 {
                mode = PartitionMode::BothWays; // No majority to split from.
            }
            match mode {
                PartitionMode::BothWays => net.clog_node(node),
                PartitionMode::InboundOnly => net.clog_node_in(node),
                PartitionMode::OutboundOnly => net.clog_node_out(node),
                PartitionMode::Split | PartitionMode::Flapping => {}
            }
            // A split: the struck broker and others with it, fewer than half of all, on one
            // side, the rest on the other; clients still reach both sides.
            let mut minority = vec![index];
            if mode == PartitionMode::Split {
                let mut others: Vec<usize> = (0..nodes.len()).filter(|i| *i != index).collect();
                let most = (nodes.len() - 1) / 2 - 1;
                for _ in 0..dice.between(0, most as u64) {
                    let pick = dice.between(0, others.len() as u64 - 1) as usize;
                    minority.push(others.remove(pick));
                }
                for_links(&nodes, &minority, |a, b| net.clog_link(a, b));
            }
            ctx.history()
                .fault(now, kind, (index, mode.name(), &minority));
            if mode == PartitionMode::Flapping {
                // Cut and healed again and again: every election and repair restarts.
                let until = ctx.now_ms() + (duration * 1000.0) as u64;
                let mut cut = false;
                while ctx.now_ms() < until {
                    cut = !cut;
                    if cut {
                        net.clog_node(node)
                    } else {
                        net.unclog_node(node)
                    }
                    sleep_s(dice.pick([0.05, 0.5])).await;
                }
            } else {
                sleep_s(duration).await;
            }
            net.unclog_node(node);
            if mode == PartitionMode::Split {
                for_links(&nodes, &minority, |a, b| net.unclog_link(a, b));
            }
        }
        "restart" => clean_restart(ctx, brokers, index, duration, |_| {}).await,
        "clock-jump" => {
            // The wall clock steps, then steps back (NTP corrects it). Only timestamps may
            // move with it: every timer runs on the monotonic clock.
            let magnitude = dice.pick(ctx.plan.faults.clock_step_s);
            let sign = if dice.chance(0.5) { 1.0 } else { -1.0 };
            let step_ms = (sign * magnitude * 1000.0) as i64;
            let offset = brokers.lock().expect("brokers lock")[index]
                .wall_offset
                .clone();
            offset.fetch_add(step_ms, Ordering::SeqCst);
            ctx.history().fault(now, kind, (index, step_ms));
            sleep_s(duration).await;
            offset.fetch_sub(step_ms, Ordering::SeqCst);
        }
        "pause" => {
            Handle::current().pause(node);
            ctx.history().fault(now, kind, index);
            sleep_s(duration).await;
            Handle::current().resume(node);
        }
        other => unreachable!("unknown fault kind {other}"),
    }
}

/// How a `partition` fault cuts the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartitionMode {
    /// The struck broker is cut off from everyone, both ways.
    BothWays,
    /// Requests reach it, nothing it sends leaves.
    InboundOnly,
    /// What it sends leaves, nothing reaches it.
    OutboundOnly,
    /// The brokers split at random into a minority (with the struck broker) and a majority
    /// that cannot reach each other; clients reach both (one way cut off, with fewer than
    /// three brokers).
    Split,
    /// The struck broker is cut off and healed again and again, every 50-500 ms.
    Flapping,
}

impl PartitionMode {
    const ALL: [PartitionMode; 5] = [
        PartitionMode::BothWays,
        PartitionMode::InboundOnly,
        PartitionMode::OutboundOnly,
        PartitionMode::Split,
        PartitionMode::Flapping,
    ];

    fn name(self) -> &'static str {
        match self {
            PartitionMode::BothWays => "both-ways",
            PartitionMode::InboundOnly => "inbound-only",
            PartitionMode::OutboundOnly => "outbound-only",
            PartitionMode::Split => "split",
            PartitionMode::Flapping => "flapping",
        }
    }
}

/// Calls `f` on every link, each way, between a broker in `side` and one outside it.
fn for_links(nodes: &[NodeId], side: &[usize], mut f: impl FnMut(NodeId, NodeId)) {
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            if side.contains(&i) != side.contains(&j) {
                f(*a, *b);
            }
        }
    }
}

/// The fault atlas (after TigerBeetle's): which copies of each partition are damaged right
/// now, so that a storage fault that damages promised data (a bit flip in synced bytes)
/// never leaves a majority of one partition's copies damaged at once. Then one intact copy
/// of every committed entry always remains, and the checkers excuse nothing for a partition
/// with more than one copy. (Crashes, torn writes and EIO lose only bytes that were never
/// synced, so never promised: they may strike every replica at once.)
struct Atlas {
    /// Per broker index, the partitions it holds, and those it holds damaged.
    held: Vec<BTreeSet<Partition>>,
    damaged: Vec<BTreeSet<Partition>>,
}

impl Atlas {
    fn read(brokers: &[Broker]) -> Atlas {
        let mut atlas = Atlas {
            held: Vec::new(),
            damaged: Vec::new(),
        };
        for broker in brokers {
            let mut disk = broker.disk.lock().expect("disk lock");
            atlas.damaged.push(disk.damaged_partitions());
            atlas.held.push(disk.held_partitions());
        }
        atlas
    }

    /// Brokers holding a copy of `partition`.
    fn copies(&self, partition: &Partition) -> usize {
        self.held.iter().filter(|h| h.contains(partition)).count()
    }

    /// True if damaging broker `index`'s copy of `partition` keeps the damaged copies fewer
    /// than half. A partition with a single copy may always be hit (its losses are excused).
    fn may_damage(&self, index: usize, partition: &Partition) -> bool {
        let copies = self.copies(partition);
        let damaged_after = self
            .damaged
            .iter()
            .enumerate()
            .filter(|(i, d)| *i == index || d.contains(partition))
            .count();
        copies == 1 || damaged_after * 2 < copies
    }
}

/// Stops broker `index` cleanly (it hands its roles over, then exits), waits `duration`,
/// calls `between` on it, and starts it again. A stuck stop is a liveness bug the heal's
/// restart would hide, so the wait for the exit is bounded and then recorded.
async fn clean_restart(
    ctx: &Ctx,
    brokers: &Brokers,
    index: usize,
    duration: f64,
    between: impl FnOnce(&mut Broker),
) {
    let now = ctx.now_ms();
    let stopped = brokers.lock().expect("brokers lock")[index].begin_clean_stop();
    let mut exited = false;
    for _ in 0..100 {
        if !stopped.load(Ordering::SeqCst) {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.history().fault(now, "restart", (index, exited));
    if !exited {
        ctx.history()
            .stop_hung(now, index, "a clean stop did not finish in 10 s");
    }
    sleep_s(duration).await;
    let mut brokers = brokers.lock().expect("brokers lock");
    between(&mut brokers[index]);
    brokers[index].restart();
}

/// A rolling upgrade: one broker at a time, at gaps drawn from `schedule`, each still on
/// the old binary (the controller first where `schedule` targets it) is stopped cleanly
/// and started on the new one, until every broker runs it.
async fn upgrade(ctx: Ctx, brokers: Brokers, schedule: Recurring, mut dice: Dice) {
    use seedlog_node::peer::PROTOCOL_NEWEST;
    loop {
        sleep_s(dice.pick(schedule.every_s)).await;
        if ctx.stop.load(Ordering::Relaxed) {
            return;
        }
        let old: Vec<usize> = {
            let brokers = brokers.lock().expect("brokers lock");
            (0..brokers.len())
                .filter(|i| brokers[*i].protocol.load(Ordering::SeqCst) < PROTOCOL_NEWEST)
                .collect()
        };
        if old.is_empty() {
            return;
        }
        let controller = match schedule.target {
            Target::Controller => ctx.history().current_leader("metadata"),
            _ => None,
        };
        let index = aim(&old, controller, &mut dice);
        let duration = dice.pick(schedule.for_s);
        ctx.history()
            .fault(ctx.now_ms(), "upgrade", (index, PROTOCOL_NEWEST));
        clean_restart(&ctx, &brokers, index, duration, |broker| {
            broker.protocol.store(PROTOCOL_NEWEST, Ordering::SeqCst)
        })
        .await;
    }
}

/// The simulator's hand on the peer wire: an append frame to a broker with a damage armed
/// (by a `wire-flip` strike) has a bit flipped in one of its batches, where the batch's CRC
/// catches it and nothing before the receiver's own check would. Nothing here checks the
/// broker: a quorum that counted the damaged copy is found by `commits-intact`.
pub fn wire_tap(ctx: Ctx) -> seedlog_node::peer::wire::Tap {
    let mut dice = Dice::new(ctx.plan.seed, 3000);
    Box::new(move |from, to, frame| {
        let mut armed = ctx.wire.lock().expect("wire lock");
        let Some(left) = armed.get_mut(&to).filter(|n| **n > 0) else {
            return frame;
        };
        let pick = |n: u64| dice.between(0, n.max(1) - 1);
        let Some((damaged, entry)) = PeerFrame::damage_an_entry(&frame, pick) else {
            return frame;
        };
        *left -= 1;
        let at = (entry.topic, entry.partition, entry.index);
        ctx.history()
            .fault(ctx.now_ms(), "wire-flip", (from, to, at));
        Bytes::from(damaged)
    })
}

/// Restarts brokers that stopped by themselves, as a process supervisor would: their disk
/// is in whatever state the failed write or fsync left, which is a power loss at worst.
///
/// It is part of the environment, not a fault: it keeps running after the faults heal.
pub async fn supervisor(ctx: Ctx, brokers: Brokers) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut brokers = brokers.lock().expect("brokers lock");
        for (index, broker) in brokers.iter_mut().enumerate() {
            if let Some(lost) = broker.revive_if_stopped(ctx.plan.faults.torn_write_chance) {
                ctx.history()
                    .fault(ctx.now_ms(), "self-stop-restart", (index, lost));
            }
        }
    }
}

/// Ends every fault still in force: links unclogged, nodes resumed, brokers running, disks
/// healthy, the network clean.
pub fn heal(ctx: &Ctx, brokers: &Brokers) {
    ctx.wire.lock().expect("wire lock").clear();
    let net = NetSim::current();
    net.update_config(|c| {
        c.packet_loss_rate = 0.0;
        c.send_latency = Duration::from_millis(1)..Duration::from_millis(2);
    });
    let nodes: Vec<NodeId> = (brokers.lock().expect("brokers lock").iter())
        .map(|b| b.node.id())
        .collect();
    for a in &nodes {
        for b in &nodes {
            net.unclog_link(*a, *b);
        }
    }
    for broker in brokers.lock().expect("brokers lock").iter_mut() {
        net.unclog_node(broker.node.id());
        Handle::current().resume(broker.node.id());
        {
            let mut disk = broker.disk.lock().expect("disk lock");
            disk.faults.full = false;
            disk.faults.fail_next_sync = false;
            disk.faults.sync_latency_ms = None;
        }
        if broker.down {
            broker.restart();
        } else if let Some(lost) = broker.revive_if_stopped(ctx.plan.faults.torn_write_chance) {
            ctx.history().fault(ctx.now_ms(), "self-stop-restart", lost);
        }
    }
}
