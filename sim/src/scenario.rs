//! Scenario files: what cluster, which topics, what workload, which faults, how long.
//!
//! A scenario gives ranges; the seed picks the values inside them ([`Plan::derive`]), so one
//! scenario covers many configurations and one seed pins exactly one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Deserialize;

/// An inclusive range a seed picks from.
pub type Range = [f64; 2];

/// A scenario as written in `scenarios/*.toml`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Number of brokers.
    #[serde(default = "one")]
    pub brokers: u32,
    /// Brokers that vote in the metadata quorum (the first ones); the others join it as
    /// learners. Default: all.
    #[serde(default)]
    pub voters: Option<u32>,
    /// Simulated seconds of workload under faults.
    pub duration_s: f64,
    /// Simulated seconds allowed for recovery after the faults heal.
    #[serde(default = "liveness_default")]
    pub liveness_s: f64,
    /// Topics to create, by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Clients.
    pub workload: Workload,
    /// Faults and their rates.
    #[serde(default)]
    pub faults: Faults,
    /// Let the seed switch each fault on or off (swarm testing).
    #[serde(default)]
    pub swarm: bool,
}

fn one() -> u32 {
    1
}
fn liveness_default() -> f64 {
    30.0
}

/// One topic.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Partition count.
    pub partitions: i32,
    /// Replicas per partition (Raft groups when more than one).
    #[serde(default = "one")]
    pub replication: u32,
    /// Kafka-named topic configs.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// The clients of a run.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Producers using acks=all.
    #[serde(default)]
    pub producers_acks_all: u32,
    /// Producers using acks=1.
    #[serde(default)]
    pub producers_acks_one: u32,
    /// Idempotent producers (acks=all): each batch retried until answered, checked to be
    /// in the log once.
    #[serde(default)]
    pub idempotent_producers: u32,
    /// Transactional producers: transactions over a few partitions, committed or aborted
    /// at random; with any, a read_committed reader runs beside them.
    #[serde(default)]
    pub transactional_producers: u32,
    /// Records per produced batch.
    #[serde(default = "batch_default")]
    pub batch_records: Range,
    /// Milliseconds a producer waits between requests.
    #[serde(default = "think_default")]
    pub think_ms: Range,
    /// Consumers reading every partition by offset.
    #[serde(default)]
    pub consumers: u32,
    /// Admin clients creating, checking and deleting scratch topics.
    #[serde(default)]
    pub admins: u32,
    /// Admin clients moving replicated partitions to other brokers now and then.
    #[serde(default)]
    pub movers: u32,
    /// Members of one consumer group over every partition of the scenario's topics; they
    /// crash, pause past their session and leave now and then.
    #[serde(default)]
    pub group_members: u32,
    /// Consume-transform-produce members of their own group: they read the scenario's
    /// topics and write each record, exactly once, to the topic `transformed` (which the
    /// scenario declares), in transactions that also commit their input offsets.
    #[serde(default)]
    pub transform_members: u32,
    /// Clients that deny and allow writes to the topic `guarded` through ACLs, over and
    /// over (the scenario declares the topic).
    #[serde(default)]
    pub acl_flippers: u32,
    /// Producers that write to `guarded` all along; each acknowledged write is judged by
    /// the ACLs its broker enforced while it was in flight.
    #[serde(default)]
    pub guarded_producers: u32,
    /// Clients that set the password of the SASL user anew, or delete the user, through
    /// the metadata quorum (AlterUserScramCredentials), over and over.
    #[serde(default)]
    pub credential_flippers: u32,
    /// Clients that log in on the brokers' SASL_PLAINTEXT listeners (PLAIN and SCRAM) with
    /// the newest password or an older one; each accepted login is judged by the
    /// credentials its broker held while it was under way.
    #[serde(default)]
    pub sasl_clients: u32,
}

fn batch_default() -> Range {
    [1.0, 5.0]
}
fn think_default() -> Range {
    [1.0, 20.0]
}

/// The transform's output topic: a scenario with transform members declares it; no other
/// workload writes to it.
pub const TRANSFORMED: &str = "transformed";

/// A fault that strikes now and then: gaps between strikes and how long each lasts.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Recurring {
    /// Seconds between strikes.
    pub every_s: Range,
    /// Seconds each strike lasts (downtime, partition length, pause length).
    #[serde(default = "instant")]
    pub for_s: Range,
    /// Which broker it strikes.
    #[serde(default)]
    pub target: Target,
}

/// The broker a fault strikes.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Any running broker, at random.
    #[default]
    Any,
    /// The active controller (the metadata quorum's leader), when one is known and up;
    /// otherwise any running broker.
    Controller,
    /// The leader of a scenario partition (chosen by the seed), when one is known and up;
    /// otherwise any running broker.
    PartitionLeader,
}

fn instant() -> Range {
    [0.0, 0.0]
}

/// The fault model of a scenario, written down as data.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Kill a broker; its disk loses what was not synced.
    pub crash: Option<Recurring>,
    /// On a crash, chance that an unsynced tail is torn (a prefix kept) rather than lost whole.
    #[serde(default)]
    pub torn_write_chance: f64,
    /// Flip one bit in synced data.
    pub bit_flip: Option<Recurring>,
    /// Flip one bit in one copy of a Raft hard state, snapshot or membership of the small
    /// state store (never both copies of one value: the atlas keeps its twin intact).
    pub state_flip: Option<Recurring>,
    /// Flip one bit of a batch in the next append frame a broker receives: damage on the
    /// way, after the sender's checks and before the receiver's.
    pub wire_flip: Option<Recurring>,
    /// The next fsync fails with EIO: the broker must stop.
    pub fsync_error: Option<Recurring>,
    /// The disk is full: appends fail with ENOSPC and the broker stops.
    pub disk_full: Option<Recurring>,
    /// fsync latency in milliseconds, all run long.
    pub slow_disk_ms: Option<Range>,
    /// Cut the network: one broker off (both ways or one way), the brokers split into a
    /// minority and a majority, or one broker cut and healed again and again.
    pub partition: Option<Recurring>,
    /// Freeze a broker (a GC pause, a stalled VM).
    pub pause: Option<Recurring>,
    /// Stop a broker cleanly (as SIGTERM does: it hands its roles over first) and start it
    /// again after `for_s`; not switched by swarm testing.
    pub restart: Option<Recurring>,
    /// A rolling upgrade: every broker starts on the binary before this one (the previous
    /// peer protocol version) and, one at a time, is stopped cleanly and started on this
    /// one after `for_s`; not switched by swarm testing.
    pub upgrade: Option<Recurring>,
    /// Chance that a network packet is lost.
    pub packet_loss: Option<Range>,
    /// One-way network latency in milliseconds.
    pub latency_ms: Option<Range>,
    /// Step a broker's wall clock by `clock_step_s`, forward or back (NTP stepping it, a VM
    /// restored from a snapshot), and back again after `for_s`.
    pub clock_jump: Option<Recurring>,
    /// How far a clock jump steps the wall clock, in seconds.
    #[serde(default = "clock_step_default")]
    pub clock_step_s: Range,
    /// Each broker's wall clock is off by up to this many seconds, either way, from its
    /// start: skew between brokers.
    pub clock_skew_s: Option<Range>,
}

fn clock_step_default() -> Range {
    [1.0, 600.0]
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text)
            .with_context(|| format!("parsing scenario {}", path.display()))?;
        let output = TRANSFORMED;
        if scenario.workload.transform_members > 0 && !scenario.topics.contains_key(output) {
            anyhow::bail!(
                "scenario {}: transform_members needs the output topic `{output}`",
                path.display()
            );
        }
        Ok(scenario)
    }
}

/// A deterministic random source for one run, derived from the seed.
pub struct Dice(ChaCha8Rng);

impl Dice {
    /// Dice for `seed`, on an independent `stream` (so workload and faults never share draws).
    pub fn new(seed: u64, stream: u64) -> Dice {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Dice(rng)
    }
    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A float in the inclusive range.
    pub fn pick(&mut self, range: Range) -> f64 {
        range[0] + (range[1] - range[0]) * self.unit()
    }
    /// An integer in `[low, high]`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.0.next_u64() % (high - low + 1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Everything a seed decides about a run, fixed before it starts and printed first.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario it came from.
    pub scenario: Scenario,
    /// The seed.
    pub seed: u64,
    /// Faults in force for this seed (swarm drops some).
    pub faults: Faults,
    /// Packet loss rate for this run.
    pub packet_loss: f64,
    /// Latency range for this run, milliseconds.
    pub latency_ms: Option<Range>,
    /// How far each broker's wall clock is off at its start, milliseconds.
    pub clock_skews_ms: Vec<i64>,
}

impl Plan {
    /// Draws this seed's configuration from the scenario.
    pub fn derive(scenario: &Scenario, seed: u64) -> Plan {
        let mut dice = Dice::new(seed, 0);
        let mut faults = scenario.faults.clone();
        if scenario.swarm {
            // Swarm testing: each fault family is on or off by coin flip, so that some seeds
            // explore one fault deeply and others their interactions.
            let mut keep = |on: bool| on && dice.chance(0.5);
            if !keep(faults.crash.is_some()) {
                faults.crash = None
            }
            if !keep(faults.bit_flip.is_some()) {
                faults.bit_flip = None
            }
            if !keep(faults.fsync_error.is_some()) {
                faults.fsync_error = None
            }
            if !keep(faults.disk_full.is_some()) {
                faults.disk_full = None
            }
            if !keep(faults.slow_disk_ms.is_some()) {
                faults.slow_disk_ms = None
            }
            if !keep(faults.partition.is_some()) {
                faults.partition = None
            }
            if !keep(faults.pause.is_some()) {
                faults.pause = None
            }
            if !keep(faults.packet_loss.is_some()) {
                faults.packet_loss = None
            }
            if !keep(faults.latency_ms.is_some()) {
                faults.latency_ms = None
            }
            if !keep(faults.clock_jump.is_some()) {
                faults.clock_jump = None
            }
            if !keep(faults.clock_skew_s.is_some()) {
                faults.clock_skew_s = None
            }
            if !keep(faults.state_flip.is_some()) {
                faults.state_flip = None
            }
        }
        let packet_loss = faults.packet_loss.map_or(0.0, |r| dice.pick(r));
        let latency_ms = faults.latency_ms.map(|r| {
            let a = dice.pick(r);
            let b = dice.pick(r);
            [a.min(b), a.max(b)]
        });
        // On a stream of their own, so that adding skew to a scenario changes no other draw.
        let mut skew_dice = Dice::new(seed, 3000);
        let clock_skews_ms = (0..scenario.brokers)
            .map(|_| {
                faults.clock_skew_s.map_or(0, |range| {
                    let sign = if skew_dice.chance(0.5) { 1.0 } else { -1.0 };
                    (sign * skew_dice.pick(range) * 1000.0) as i64
                })
            })
            .collect();
        Plan {
            scenario: scenario.clone(),
            seed,
            faults,
            packet_loss,
            latency_ms,
            clock_skews_ms,
        }
    }

    /// One line per derived parameter, for the start of a run's output.
    pub fn describe(&self) -> Vec<String> {
        let s = &self.scenario;
        let f = &self.faults;
        let topics: Vec<String> = s
            .topics
            .iter()
            .map(|(n, t)| format!("{n}:{}", t.partitions))
            .collect();
        let recurring = |name: &str, r: &Option<Recurring>| {
            r.map(|r| {
                format!(
                    "{name} every {:.1}-{:.1}s for {:.1}-{:.1}s",
                    r.every_s[0], r.every_s[1], r.for_s[0], r.for_s[1]
                )
            })
        };
        let mut faults: Vec<String> = [
            recurring("crash", &f.crash),
            recurring("bit-flip", &f.bit_flip),
            recurring("state-flip", &f.state_flip),
            recurring("wire-flip", &f.wire_flip),
            recurring("fsync-eio", &f.fsync_error),
            recurring("disk-full", &f.disk_full),
            recurring("partition", &f.partition),
            recurring("pause", &f.pause),
            recurring("restart", &f.restart),
            recurring("upgrade", &f.upgrade),
            recurring("clock-jump", &f.clock_jump).map(|r| {
                let [low, high] = f.clock_step_s;
                format!("{r} by {low:.0}-{high:.0}s")
            }),
            f.clock_skew_s.map(|_| {
                let skews: Vec<String> = self
                    .clock_skews_ms
                    .iter()
                    .map(|ms| format!("{:+.1}s", *ms as f64 / 1000.0))
                    .collect();
                format!("clock-skew {}", skews.join("/"))
            }),
            f.slow_disk_ms
                .map(|r| format!("slow-disk {:.0}-{:.0}ms", r[0], r[1])),
            (self.packet_loss > 0.0).then(|| format!("packet-loss {:.3}", self.packet_loss)),
            self.latency_ms
                .map(|r| format!("latency {:.1}-{:.1}ms", r[0], r[1])),
        ]
        .into_iter()
        .flatten()
        .collect();
        if f.crash.is_some() && f.torn_write_chance > 0.0 {
            faults.push(format!("torn-write chance {:.2}", f.torn_write_chance));
        }
        if faults.is_empty() {
            faults.push("none".into());
        }
        vec![
            format!("brokers={} topics={} duration={}s liveness<={}s", s.brokers, topics.join(","), s.duration_s, s.liveness_s),
            format!(
                "producers acks=all:{} acks=1:{} batch={:.0}-{:.0} think={:.0}-{:.0}ms consumers={} admins={}{}",
                s.workload.producers_acks_all,
                s.workload.producers_acks_one,
                s.workload.batch_records[0],
                s.workload.batch_records[1],
                s.workload.think_ms[0],
                s.workload.think_ms[1],
                s.workload.consumers,
                s.workload.admins,
                [
                    ("movers", s.workload.movers),
                    ("idempotent", s.workload.idempotent_producers),
                    ("transactional", s.workload.transactional_producers),
                    ("group-members", s.workload.group_members),
                    ("transform-members", s.workload.transform_members),
                ]
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(what, n)| format!(" {what}={n}"))
                    .collect::<String>()
            ),
            format!("faults: {}", faults.join(", ")),
        ]
    }
}
