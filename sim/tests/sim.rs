//! The simulator proving itself: every seed replays bit for bit, every canary bug is caught
//! within a few seeds, and a pinned seed per scenario keeps its summary (so a change in
//! behaviour is seen, not silent). Runs the real `seedlog-sim` binary; simulation builds
//! only (`RUSTFLAGS="--cfg madsim"`).
#![cfg(madsim)]

use std::path::{Path, PathBuf};
use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_seedlog-sim");

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn scenario(name: &str) -> PathBuf {
    scenarios_dir().join(format!("{name}.toml"))
}

/// Runs one seed; returns the exit code and stdout.
fn run(scenario_name: &str, seed: u64, extra: &[&str]) -> (i32, String) {
    let out = Command::new(SIM)
        .arg("run")
        .arg(scenario(scenario_name))
        .args(["--seed", &seed.to_string(), "--quiet"])
        .args(extra)
        .output()
        .expect("seedlog-sim runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn all_scenarios() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .expect("scenarios/")
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_scenario_replays_bit_for_bit() {
    for name in all_scenarios() {
        for seed in [3, 11] {
            let (code, out) = run(&name, seed, &["--check-determinism"]);
            assert!(
                out.contains("determinism       ok"),
                "{name} seed {seed}:\n{out}"
            );
            assert_eq!(code, 0, "{name} seed {seed} failed:\n{out}");
        }
    }
}

/// Each canary bug, the scenario that should expose it, and how many seeds it may take.
/// Only a checker's verdict counts as caught (exit 1, a safety violation, or 2, a liveness
/// failure), never a crash.
const CANARY_HUNTS: &[(&str, &str, u64)] = &[
    ("ack-before-fsync", "crash-restart", 5),
    ("read-above-hw", "slow-disk", 5),
    ("skip-recovery-crc", "torn-write", 5),
    ("ignore-fsync-error", "disk-full", 5),
    ("volatile-topics", "crash-restart", 5),
    ("vote-twice", "cluster3-elections", 5),
    ("ack-all-on-local-append", "cluster3-partition", 5),
    ("keep-conflicting-suffix", "cluster5-replicated", 5),
    ("ack-commit-before-durable", "cluster3-groups", 12),
    ("accept-stale-commit", "groups", 5),
    ("reuse-generation", "groups", 5),
    ("keep-dead-members", "groups", 5),
    ("trust-recovered-batches", "cluster3-bit-flip", 20),
    ("skip-follower-repair", "cluster3-bit-flip", 20),
    (
        "forget-producers-on-leader-change",
        "cluster3-idempotent",
        10,
    ),
    ("forget-producer-ids-in-snapshot", "cluster5-idempotent", 10),
    ("read-past-lso", "transactions", 5),
    ("marker-to-some-partitions", "cluster3-transactions", 5),
    ("serve-unstable-offsets", "transform", 5),
    ("accept-fenced-txn-offsets", "transform", 5),
    ("timers-on-wall-clock", "cluster3-clocks", 10),
    ("produce-ignores-acls", "cluster3-acls", 5),
    ("cache-credentials", "cluster3-acls", 5),
    ("trust-state-copies", "cluster3-bit-flip", 10),
    ("ack-damaged-arrivals", "cluster3-bit-flip", 20),
    ("strict-peer-version", "cluster3-rolling-upgrade", 3),
];

#[test]
fn every_canary_is_caught_within_a_few_seeds() {
    let listed = Command::new(SIM)
        .arg("canaries")
        .output()
        .expect("seedlog-sim runs");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for line in listed.lines() {
        let canary = line.split_whitespace().next().unwrap_or_default();
        assert!(
            CANARY_HUNTS.iter().any(|(c, _, _)| *c == canary),
            "canary {canary} has no hunt here"
        );
    }
    for (canary, scenario_name, seeds) in CANARY_HUNTS {
        let caught = (1..=*seeds)
            .find(|seed| matches!(run(scenario_name, *seed, &["--canary", canary]).0, 1 | 2));
        assert!(
            caught.is_some(),
            "canary {canary} survived {seeds} seeds of {scenario_name}"
        );
    }
}

#[test]
fn pinned_seed_summaries() {
    for name in all_scenarios() {
        let (code, out) = run(&name, 42, &[]);
        assert_eq!(code, 0, "{name} seed 42 failed:\n{out}");
        // Everything but the wall-clock line is a pure function of the seed.
        let summary: String = out
            .lines()
            .filter(|l| !l.starts_with("wall time"))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(format!("{name}-seed-42"), summary);
    }
}

/// Seeds that once found bugs, kept as regressions.
const REGRESSIONS: &[(&str, u64)] = &[
    // A follower's batch took a flipped bit in its body, the next batch one in its base
    // offset; at start-up the damaged batch's end was read off that next base offset, so
    // the rest of the log was numbered 2^26 too high and the high watermark assertion fired
    // (now the next batch must vouch for that end, or the log is cut there).
    ("cluster3-bit-flip", 72),
    // The guarded producer stamped its records 1970, so retention took them and the final
    // read missed acknowledged records (now real timestamps).
    ("cluster3-acls", 11),
    // A DENY left in place when the workload stopped refused the liveness probe's write to
    // the guarded topic (the flipper now removes it after the heal).
    ("cluster3-acls", 37),
    // A broker restarted with no ACLs reported none, so the checker kept its pre-crash
    // DENY and flagged its writes (brokers now report their ACLs at start).
    ("cluster3-acls", 53),
    // A zombie transform member's TxnOffsetCommit was written after its transaction had
    // timed out and been aborted; its offsets waited for the next marker of its producer id
    // and committed with its successor's transaction, without their output (the group
    // coordinator now drops transactional offsets older than their producer's marker).
    ("transform", 1),
    // A new group coordinator took a marker written as it became leader before loading its
    // partition; the marker's newer epoch then fenced the offsets the load read before it.
    ("cluster3-transform", 46),
    // A TxnOffsetCommit resent on a new connection was overtaken by the first copy, which
    // arrived late and joined the producer's next transaction (EndTxn v5 bumps the epoch).
    ("cluster3-transform", 84),
    // A follower asked for a damaged entry again with a rejection that raft-rs read as "the
    // entry before it does not match": a leader sending one entry per append resent that
    // earlier entry forever and the damaged copy stayed (rejections now name the entry).
    ("cluster3-elections", 254),
    ("cluster3-groups", 225),
    // The same rejection, from a follower whose damaged entry is the one just past what it
    // acknowledged (its acknowledgements stop before a damaged copy), looked stale to a
    // probing leader: nothing was resent and the copy stayed damaged to the end.
    ("cluster3-bit-flip", 19),
    ("cluster3-bit-flip", 49),
    // A marker refused at once (its partition's leader moving) was sent again at once,
    // and refused again, until the stack overflowed (refused markers now wait a moment).
    ("cluster3-transactions", 3),
    ("cluster3-transactions", 8),
    // A coordinator skipped a damaged batch of __transaction_state as it loaded it, and
    // served an older state: an open transaction looked finished and was never aborted.
    ("cluster3-transactions", 50),
    ("cluster5-transactions", 76),
    // Start-up recovery cut a replica's whole last batch that failed its CRC (a flipped
    // bit, not a torn write) before the replica's load could see it, so the replica did
    // not know it had lost an entry it acknowledged, and voted a leader without it.
    ("cluster3-idempotent", 29),
    // A restarted replica that became leader served a high watermark below one a consumer
    // had seen, until its first commit (leaders now serve only after committing in their
    // own term).
    ("cluster3-replicated", 63),
    ("cluster3-replicated", 101),
    // A leader whose copy of a batch was damaged re-read it for a follower forever, and a
    // flipped length sent start-up reading one range forever.
    ("cluster5-swarm", 54),
    // A deposed leader that had not heard of its successor served an older high watermark
    // (fetches now carry the newest leader epoch the client has seen, KIP-320); a final read
    // kept asking a broker that had just handed its leadership over.
    ("cluster5-learners", 280),
    ("cluster5-swarm", 279),
    ("cluster5-learners", 238),
    ("cluster5-swarm", 167),
    ("cluster5-replicated", 269),
    // The replicas-agree checker blamed a copy whose base offset a bit flip had lowered.
    ("cluster5-swarm", 363),
    // Moves: a broker dropped its copy while still a member of the group (the target had
    // changed under a move), stalling commits; fresh replicas added by moves formed a
    // majority of the group's first membership and started a second history.
    ("cluster5-moves", 237),
    ("cluster5-moves", 389),
    ("cluster5-moves", 216),
    // A flipped batch length made a fetch re-read one range forever.
    ("bit-flip", 22),
    ("bit-flip", 27),
    // A broker stopped by ENOSPC left its sockets bound and could not restart.
    ("disk-full", 1),
    // A sealed segment's index was written before its bytes were synced.
    ("torn-write", 210),
    // A broker that stopped itself around the heal was never revived.
    ("disk-full", 30),
    ("disk-full", 152),
    // The liveness probe wrote next to a corrupt batch on a single copy.
    ("bit-flip", 894),
    // A cut link left peer connections half-open: writes accepted, nothing delivered, and
    // an isolated broker never rejoined the quorum (now: per-frame acks, redial on silence).
    ("cluster3-partition", 63),
    // A broker back at the heal was fenced a moment later; the final read gave up at once.
    ("cluster5-swarm", 318),
    // A new group coordinator read its partition back only up to a high watermark that had
    // not yet caught up with the Raft commit point: an acknowledged offset commit was lost.
    ("cluster3-groups", 3),
    // The group-settles check once required a new generation after the heal and failed a
    // group that had settled before it and stayed settled.
    ("groups", 1),
    // Found while building protocol-aware repair. A follower's request to resend from its
    // damaged entry was dropped as stale by a leader that had never seen it acknowledge
    // more; a damaged batch's flipped record count shifted every later offset of the
    // replica; a leader whose handover did not take kept leading with a damaged entry; the
    // final read gave up when a damaged leader stepped aside and no leader was known yet.
    ("cluster5-swarm", 500018),
    ("cluster5-swarm", 500047),
    ("cluster5-swarm", 500050),
    ("cluster3-bit-flip", 26),
    // A controller's snapshot to a deposed controller was lost with a redialled link; the
    // leader waited for its answer for good and sent only heartbeats (lost snapshots are
    // now retried after two election timeouts).
    ("cluster5-swarm", 85),
    // Bit flips in the leader epoch, which Kafka's CRC leaves out, got past a replica's
    // load: before the first leader change of its log only bounds were checked (17), and a
    // damaged batch left the next epochs unchecked (29); the replica committed entries at
    // terms its peers never had.
    ("cluster3-bit-flip", 17),
    ("cluster3-bit-flip", 29),
    // A base offset flipped in `__transaction_state`: the coordinator's load skipped every
    // later batch, took an older state, and an aborted transaction became visible.
    ("cluster3-transactions", 12),
    // Flipped lengths and magic bytes read by a running broker: a consumer's fetch answered
    // KAFKA_STORAGE_ERROR for good without reporting the damage (64), and a coordinator's
    // load stopped at the batch and served an older state (groups 94, transactions 62).
    ("cluster3-bit-flip", 64),
    ("cluster3-groups", 94),
    ("cluster3-transactions", 62),
];

#[test]
fn regression_seeds_pass() {
    for (name, seed) in REGRESSIONS {
        let (code, out) = run(name, *seed, &[]);
        assert_eq!(code, 0, "{name} seed {seed} failed again:\n{out}");
    }
}
