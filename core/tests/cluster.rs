//! Several brokers stepped in-process over in-memory disks, their peer frames delivered by
//! the harness (or dropped across a cut): the metadata quorum as a story.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use seedlog_core::wire::{
    encode_request, fetch_request, produce_request, record_batch, topic_name,
};
use seedlog_core::{Now, Output};

mod support;
use support::cluster::*;

/// Three brokers with a one-partition topic `r` replicated on all of them and its leader
/// elected: (cluster, leader, leader epoch).
fn replicated_trio() -> (Cluster, i32, i32) {
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(3_000);
    assert_eq!(cluster.create_replicated(1, "r", 1, 3), 0);
    cluster.advance(2_000);
    let (leader, epoch) = cluster.leader(1, "r");
    (cluster, leader, epoch)
}

#[test]
fn three_brokers_elect_one_controller_and_every_broker_applies_every_topic() {
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(5_000);
    let controller = cluster.controller();
    assert!((1..=3).contains(&controller), "controller {controller}");
    let terms: BTreeSet<u64> = cluster.elections.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        terms.len(),
        cluster.elections.len(),
        "two leaders in one term: {:?}",
        cluster.elections
    );

    // Created through a follower: forwarded to the controller, answered once applied.
    let follower = (1..=3).find(|&id| id != controller).unwrap();
    assert_eq!(cluster.create_topic(follower, "orders", 6), 0);
    assert_eq!(
        cluster.create_topic(follower, "orders", 6),
        36,
        "TOPIC_ALREADY_EXISTS"
    );
    cluster.advance(500);
    for id in 1..=3 {
        let (topics, brokers, _) = cluster.metadata(id);
        assert_eq!(topics, ["orders"], "broker {id}");
        assert_eq!(brokers, [1, 2, 3], "broker {id}");
    }
}

#[test]
fn metadata_names_only_a_controller_it_lists() {
    // From the first step: a client sends admin requests to the named controller, so one
    // it cannot find among the brokers stalls it (librdkafka waited out a CreateTopics).
    let mut cluster = Cluster::new(3, 1000);
    let mut named = BTreeSet::new();
    for _ in 0..60 {
        cluster.advance(50);
        for id in 1..=3 {
            let (_, brokers, controller) = cluster.metadata(id);
            assert!(
                controller == -1 || brokers.contains(&controller),
                "broker {id} names controller {controller} but lists {brokers:?}"
            );
            named.insert(controller);
        }
    }
    assert!(named.len() > 1, "no controller named: {named:?}");
    let controller = cluster.controller();
    for id in 1..=3 {
        assert_eq!(
            cluster.metadata(id).2,
            controller,
            "settled: every broker names the leader"
        );
    }
}

#[test]
fn a_cut_off_controller_is_replaced_and_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::new(3, 5);
    cluster.advance(5_000);
    let first = cluster.controller();
    cluster.cut.insert(first);
    cluster.advance(5_000);
    let via = (1..=3).find(|&id| id != first).unwrap();
    let second = cluster.metadata(via).2;
    assert_ne!(
        second, first,
        "a new controller among the connected brokers"
    );
    // Enough records for several snapshots while the old controller cannot hear them.
    for i in 0..20 {
        assert_eq!(cluster.create_topic(via, &format!("t{i}"), 1), 0);
    }
    for i in 0..10 {
        assert_eq!(cluster.delete_topic(via, &format!("t{i}")), 0);
    }
    cluster.cut.clear();
    cluster.advance(5_000);
    let want: Vec<String> = {
        let mut v: Vec<String> = (10..20).map(|i| format!("t{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(
        cluster.metadata(first).0,
        want,
        "the old controller caught up"
    );

    // And a restart rebuilds the same image from the snapshot and log on its disk.
    cluster.restart(first);
    assert_eq!(cluster.metadata(first).0, want);
    let mut terms = BTreeMap::new();
    for (broker, term) in &cluster.elections {
        assert_eq!(
            *terms.entry(*term).or_insert(*broker),
            *broker,
            "two leaders in term {term}"
        );
    }
}

#[test]
fn a_stopping_controller_hands_over_before_any_election_timeout() {
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(5_000);
    let first = cluster.controller();
    let elections = cluster.elections.len();
    cluster
        .nodes
        .get_mut(&first)
        .unwrap()
        .broker
        .begin_shutdown();
    cluster.settle();
    // Well under the 1 s minimum election timeout: a handover, not an election after silence.
    cluster.advance(300);
    assert!(cluster.nodes[&first].broker.has_handed_over());
    let (next, term) = *cluster.elections.last().unwrap();
    assert_eq!(cluster.elections.len(), elections + 1);
    assert_ne!(next, first);
    assert_eq!(cluster.metadata(next).2, next, "{next} leads term {term}");
}

#[test]
fn a_silent_broker_is_fenced_and_comes_back_when_it_answers_again() {
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(5_000);
    let controller = cluster.controller();
    let silent = (1..=3).find(|&id| id != controller).unwrap();
    let witness = (1..=3)
        .find(|&id| id != controller && id != silent)
        .unwrap();
    cluster.cut.insert(silent);
    cluster.advance(8_000);
    let (_, brokers, _) = cluster.metadata(witness);
    assert!(
        !brokers.contains(&silent),
        "fenced broker {silent} still listed: {brokers:?}"
    );
    // Nothing new lands on a fenced broker.
    assert_eq!(cluster.create_topic(witness, "after-fence", 8), 0);
    let placed = cluster.replicas(witness, "after-fence");
    assert!(
        placed.iter().all(|r| !r.contains(&silent)),
        "placed on {silent}: {placed:?}"
    );
    cluster.cut.clear();
    cluster.advance(3_000);
    let (_, brokers, _) = cluster.metadata(witness);
    assert_eq!(brokers, [1, 2, 3], "the broker re-registered once it could");
}

#[test]
fn a_new_broker_joins_a_running_cluster_and_takes_new_partitions() {
    let mut cluster = Cluster::new(3, 5);
    cluster.advance(5_000);
    for i in 0..12 {
        assert_eq!(cluster.create_topic(1, &format!("early{i}"), 1), 0);
    }
    cluster.add_broker(4);
    cluster.advance(5_000);
    let (topics, brokers, _) = cluster.metadata(4);
    assert_eq!(brokers, [1, 2, 3, 4]);
    assert_eq!(
        topics.len(),
        12,
        "the newcomer learned the existing topics: {topics:?}"
    );
    assert_eq!(cluster.create_topic(4, "spread", 12), 0);
    let placed = cluster.replicas(1, "spread");
    assert!(
        placed.iter().any(|r| r.contains(&4)),
        "nothing placed on the newcomer: {placed:?}"
    );

    // A learner does not vote: the three voters still elect without it, and it stays a
    // member across a restart.
    cluster.restart(4);
    cluster.advance(3_000);
    assert_eq!(cluster.metadata(4).0.len(), 13);
    assert!(cluster.elections.iter().all(|(broker, _)| *broker != 4));
}

#[test]
fn a_replicated_partition_commits_on_a_majority_and_outlives_its_leader() {
    let (mut cluster, leader, epoch) = replicated_trio();
    assert!((1..=3).contains(&leader), "leader {leader}");
    for id in 1..=3 {
        assert_eq!(cluster.leader(id, "r"), (leader, epoch), "broker {id}");
    }
    assert_eq!(cluster.replicas(1, "r"), [vec![1, 2, 3]]);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    assert_eq!(
        cluster.produce(follower, "r", -1, 1).0,
        6,
        "NOT_LEADER_OR_FOLLOWER"
    );

    let mut acked = Vec::new();
    for _ in 0..5 {
        let (error, base) = cluster.produce(leader, "r", -1, 3);
        assert_eq!(error, 0);
        acked.extend(base..base + 3);
    }
    assert!(acked.windows(2).all(|w| w[1] == w[0] + 1), "{acked:?}");
    cluster.advance(500);
    let end = cluster.nodes[&leader]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    for id in 1..=3 {
        let log = cluster.nodes[&id].broker.log("r", 0).unwrap();
        assert_eq!(log.log_end_offset(), end, "broker {id} holds every batch");
        assert_eq!(
            log.high_watermark(),
            end,
            "broker {id} knows they committed"
        );
    }

    // The leader is cut off: a write to it cannot commit; the others elect a successor
    // that has every acknowledged record.
    cluster.cut.insert(leader);
    let (error, _) = cluster.produce(leader, "r", -1, 1);
    assert_ne!(error, 0, "a leader without a majority must not acknowledge");
    cluster.advance(3_000);
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let (successor, new_epoch) = cluster.leader(survivor, "r");
    assert!(
        successor != leader && successor > 0,
        "successor {successor}"
    );
    assert!(new_epoch > epoch);
    let (error, base) = cluster.produce(successor, "r", -1, 2);
    assert_eq!(error, 0);
    acked.extend(base..base + 2);
    let (error, offsets) = cluster.fetch(successor, "r", acked[0]);
    assert_eq!(error, 0);
    assert_eq!(offsets, acked, "every acknowledged record, at its offset");

    // KIP-320: the old epoch ended where the successor's began (its leader-change marker
    // sits just before its first batch); a client still on the old epoch is fenced.
    let old_end = acked[14] + 1;
    assert_eq!(
        cluster.epoch_end(successor, "r", epoch, new_epoch),
        (0, epoch, old_end)
    );
    let (error, held, end) = cluster.epoch_end(successor, "r", new_epoch, new_epoch);
    assert_eq!((error, held), (0, new_epoch));
    assert_eq!(end, acked[16] + 1, "the latest epoch ends at the log end");
    assert_eq!(
        cluster.epoch_end(successor, "r", epoch, epoch).0,
        74,
        "FENCED_LEADER_EPOCH"
    );

    // Healed, the old leader drops its unacknowledged suffix and follows.
    cluster.cut.clear();
    cluster.advance(3_000);
    let end = cluster.nodes[&successor]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    for id in 1..=3 {
        let log = cluster.nodes[&id].broker.log("r", 0).unwrap();
        assert_eq!(log.log_end_offset(), end, "broker {id}");
    }
    // Preferred-leader balancing: leadership goes back to the first replica.
    for id in 1..=3 {
        assert_eq!(cluster.leader(id, "r").0, 1, "broker {id}");
    }

    // What each broker reported committed: the same entries, in index order, at
    // contiguous offsets, with every acknowledged batch; the cut-off leader's unacknowledged
    // write is not among them.
    let reported = |id: i32| cluster.commits[&(id, "r-0".to_string())].clone();
    let first = reported(1);
    assert!(first
        .windows(2)
        .all(|w| w[1].index == w[0].index + 1 && w[1].base_offset == w[0].next_offset));
    assert!(first.iter().all(|e| e.crc.is_some()));
    for base in &acked {
        assert!(
            first
                .iter()
                .any(|e| (e.base_offset..e.next_offset).contains(base)),
            "acknowledged offset {base} reported committed"
        );
    }
    for id in 2..=3 {
        assert_eq!(
            reported(id),
            first,
            "broker {id} committed what broker 1 did"
        );
    }
}

#[test]
fn a_replica_back_from_a_long_absence_reloads_its_log_and_catches_up_from_disk() {
    let (mut cluster, leader, _) = replicated_trio();
    let absent = (1..=3).find(|&id| id != leader).unwrap();
    cluster.produce(leader, "r", -1, 1);
    cluster.advance(500);
    cluster.cut.insert(absent);
    // Well past the leader's 1 MiB cache of recent batches: the catch-up reads the disk.
    let mut acked = 0;
    for _ in 0..40 {
        let (error, _) = cluster.produce_sized(leader, "r", -1, 8, 8 << 10);
        assert_eq!(error, 0);
        acked += 8;
    }
    cluster.restart(absent);
    cluster.cut.clear();
    cluster.advance(3_000);
    let end = cluster.nodes[&leader]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    assert!(end > acked, "end {end}");
    for id in 1..=3 {
        let log = cluster.nodes[&id].broker.log("r", 0).unwrap();
        assert_eq!(log.log_end_offset(), end, "broker {id}");
        assert_eq!(log.high_watermark(), end, "broker {id}");
    }
    let segments = |c: &Cluster, id: i32| {
        let disk = &c.nodes[&id].disk;
        let tp = disk.segment_ids_of("r", 0);
        tp.iter()
            .map(|s| disk.segment(s).unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        segments(&cluster, absent),
        segments(&cluster, leader),
        "same bytes"
    );

    // The leader restarts: it reads its log back, and a new leader has everything.
    cluster.restart(leader);
    cluster.advance(3_000);
    let (now_leading, _) = cluster.leader(absent, "r");
    assert!(now_leading > 0);
    let (error, offsets) = cluster.fetch(now_leading, "r", 0);
    assert_eq!(error, 0);
    assert!(offsets.len() >= 20, "a fetch returns data from the start");
    let (error, base) = cluster.produce(now_leading, "r", -1, 1);
    assert_eq!(error, 0);
    assert!(base >= end, "new writes follow everything committed");
}

#[test]
fn a_follower_that_lost_acknowledged_batches_to_corruption_is_repaired_not_crashed() {
    let (mut cluster, leader, _) = replicated_trio();
    let end = produce_ten_batches(&mut cluster, leader);
    // A follower's disk mangles the length of its third batch (two bits: one would be
    // mended): start-up must cut the log there, losing batches it had acknowledged.
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    mangle_third_length(&mut cluster, victim);
    cluster.restart(victim);
    let cut = cluster.nodes[&victim]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    assert!(cut < end, "the log was cut ({cut} of {end})");
    cluster.advance(3_000);
    for id in 1..=3 {
        let log = cluster.nodes[&id].broker.log("r", 0).unwrap();
        assert_eq!(
            log.log_end_offset(),
            end,
            "broker {id} holds every batch again"
        );
    }
    // Repaired, it serves as leader with everything: the old leader steps away.
    cluster.cut.insert(leader);
    cluster.advance(3_000);
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    let (now_leading, _) = cluster.leader(survivor, "r");
    assert_ne!(now_leading, leader);
    let (error, offsets) = cluster.fetch(now_leading, "r", 0);
    assert_eq!(error, 0);
    assert_eq!(offsets.len(), 40, "every acknowledged record: {offsets:?}");
}

#[test]
fn a_replica_that_lost_acknowledged_batches_does_not_vote_even_after_another_restart() {
    let (mut cluster, leader, _) = replicated_trio();
    let mut others = (1..=3).filter(|&id| id != leader);
    let (victim, behind) = (others.next().unwrap(), others.next().unwrap());
    // Ten batches committed by the leader and the victim alone.
    cluster.cut.insert(behind);
    let end = produce_ten_batches(&mut cluster, leader);
    // The victim's disk mangles the length of its third batch, so start-up cuts its log
    // there; it restarts twice while cut off, so the second start finds a short, clean log.
    mangle_third_length(&mut cluster, victim);
    cluster.cut.insert(victim);
    cluster.restart(victim);
    cluster.advance(200);
    cluster.restart(victim);
    let held = cluster.nodes[&victim]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    assert!(held < end, "the log was cut ({held} of {end})");
    // Only the two that lack the batches can talk: the victim must not vote (it may have
    // lost what a majority needs), so neither of them leads with a history missing them.
    cluster.cut = BTreeSet::from([leader]);
    cluster.advance(5_000);
    for id in [victim, behind] {
        let (leading, _) = cluster.leader(id, "r");
        assert!(
            leading != victim && leading != behind,
            "broker {leading} leads without the committed batches"
        );
    }
    cluster.cut.clear();
    cluster.advance(5_000);
    let (now_leading, _) = cluster.leader(behind, "r");
    let (error, offsets) = cluster.fetch(now_leading, "r", 0);
    assert_eq!(error, 0);
    assert_eq!(offsets.len(), 40, "every acknowledged record: {offsets:?}");
}

/// Ten acknowledged batches of four records into partition `r` through `leader`; returns
/// its log end afterwards.
fn produce_ten_batches(cluster: &mut Cluster, leader: i32) -> i64 {
    for _ in 0..10 {
        assert_eq!(cluster.produce(leader, "r", -1, 4).0, 0);
    }
    cluster.advance(500);
    cluster.nodes[&leader]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset()
}

/// Flips two bits of the length of the third batch of partition `r`-0 on `broker`'s disk:
/// past mending (one bit would be), so start-up cuts the log there.
fn mangle_third_length(cluster: &mut Cluster, broker: i32) {
    let disk = &mut cluster.nodes.get_mut(&broker).unwrap().disk;
    let id = disk.segment_ids_of("r", 0)[0].clone();
    let bytes = disk.segment_bytes_mut(&id).unwrap();
    let mut at = 0;
    for _ in 0..2 {
        let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        at += 12 + len as usize;
    }
    bytes[at + 8] ^= 0x40;
    bytes[at + 11] ^= 0x01;
}

/// Flips one bit inside the CRC-covered body of the `nth` batch of partition `r`-0 on
/// `broker`'s disk; returns that batch's base offset.
fn damage_batch(cluster: &mut Cluster, broker: i32, nth: usize) -> i64 {
    let disk = &mut cluster.nodes.get_mut(&broker).unwrap().disk;
    let id = disk.segment_ids_of("r", 0)[0].clone();
    let bytes = disk.segment_bytes_mut(&id).unwrap();
    let mut at = 0;
    for _ in 0..nth {
        let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        at += 12 + len as usize;
    }
    let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
    bytes[at + 12 + len - 1] ^= 0x10; // the last byte of its last record
    i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// The bytes of partition `r`-0 on `broker`'s disk.
fn log_bytes(cluster: &Cluster, broker: i32) -> Vec<u8> {
    let disk = &cluster.nodes[&broker].disk;
    let id = disk.segment_ids_of("r", 0)[0].clone();
    disk.segment(&id).unwrap().to_vec()
}

/// A trio whose partition `r` holds ten acknowledged batches of four records.
fn trio_with_ten_batches() -> (Cluster, i32) {
    let (mut cluster, leader, _) = replicated_trio();
    for _ in 0..10 {
        assert_eq!(cluster.produce(leader, "r", -1, 4).0, 0);
    }
    cluster.advance(500);
    (cluster, leader)
}

#[test]
fn header_fields_outside_the_crc_are_checked_and_repaired_in_place() {
    let (mut cluster, leader) = trio_with_ten_batches();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let intact = log_bytes(&cluster, leader);
    // Bits of the base offset, leader epoch, length and magic of five batches: all outside
    // Kafka's CRC.
    {
        let disk = &mut cluster.nodes.get_mut(&victim).unwrap().disk;
        let id = disk.segment_ids_of("r", 0)[0].clone();
        let bytes = disk.segment_bytes_mut(&id).unwrap();
        let mut starts = vec![0usize];
        while let Some(&at) = starts.last() {
            let Some(len) = bytes.get(at + 8..at + 12) else {
                break;
            };
            let next = at + 12 + u32::from_be_bytes(len.try_into().unwrap()) as usize;
            if next >= bytes.len() {
                break;
            }
            starts.push(next);
        }
        bytes[starts[4] + 7] ^= 0x02; // base offset, low byte
        bytes[starts[7] + 15] ^= 0x04; // partition leader epoch, low byte
        bytes[starts[2] + 11] ^= 0x01; // length, one bit: the CRC fails at the stated end
        bytes[starts[5] + 9] ^= 0x10; // length, one bit: claims past the log's end
        bytes[starts[9] + 16] ^= 0x01; // magic
    }
    let offsets = restart_and_repair(&mut cluster, leader, victim, &intact);
    assert!(
        offsets
            .windows(2)
            .all(|w| w[1] == w[0] + 1 || w[1] == w[0] + 2),
        "{offsets:?}"
    );
}

#[test]
fn a_follower_repairs_a_damaged_batch_in_place_from_its_leader() {
    let (mut cluster, leader) = trio_with_ten_batches();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let intact = log_bytes(&cluster, leader);
    damage_batch(&mut cluster, victim, 3);
    // Start-up finds the bad CRC: the batch stays in place (the log is not cut) and the
    // leader's copy is written over it.
    restart_and_repair(&mut cluster, leader, victim, &intact);
}

/// A batch damaged on its way to the only follower that can complete a quorum is neither
/// written nor acknowledged: the follower takes the entries before it, the leader sends it
/// again, and the write commits on two intact copies.
#[test]
fn an_entry_damaged_on_the_way_is_refused_and_sent_again() {
    let (mut cluster, leader) = trio_with_ten_batches();
    let mut followers = (1..=3).filter(|&id| id != leader);
    let (victim, other) = (followers.next().unwrap(), followers.next().unwrap());
    let end = |cluster: &Cluster, id: i32| {
        let log = cluster.nodes[&id].broker.log("r", 0).unwrap();
        (log.log_end_offset(), log.high_watermark())
    };
    let (before, _) = end(&cluster, leader);
    cluster.cut.insert(other);
    cluster.damage_appends_to.insert(victim, 2);
    for _ in 0..3 {
        assert_eq!(cluster.produce(leader, "r", -1, 4).0, 0);
        // Acknowledged on the victim's copy alone: that copy is intact (before any
        // scrubber could have mended it).
        let same = log_bytes(&cluster, victim) == log_bytes(&cluster, leader);
        assert!(
            same,
            "the victim acknowledged a copy that differs from its leader's"
        );
    }
    cluster.advance(500);
    assert_eq!(
        cluster.damaged_in_flight.len(),
        2,
        "two appends were damaged on the way"
    );
    assert!(cluster
        .damaged_in_flight
        .iter()
        .all(|(to, _)| *to == victim));
    let ours = &cluster.commits[&(victim, "r-0".to_string())];
    assert!(ours.iter().all(|e| e.crc.is_some()), "{ours:?}");
    assert_eq!(
        end(&cluster, victim),
        (before + 12, before + 12),
        "three batches of four"
    );
}

/// Restarts `victim`, whose copy of partition `r` differs from `intact`: nothing may be cut,
/// its leader's copy must be written over the damage byte for byte, and it must then lead
/// with all 40 records once `leader` is cut off. Returns the offsets it serves.
fn restart_and_repair(cluster: &mut Cluster, leader: i32, victim: i32, intact: &[u8]) -> Vec<i64> {
    assert_ne!(log_bytes(cluster, victim), intact);
    cluster.restart(victim);
    let end = cluster.nodes[&victim]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    assert_eq!(
        end,
        40 + 1,
        "nothing cut: 10 batches and the leader's marker"
    );
    cluster.advance(2_000);
    assert_eq!(
        &log_bytes(cluster, victim)[..intact.len()],
        intact,
        "repaired byte for byte"
    );
    cluster.cut.insert(leader);
    cluster.advance(3_000);
    let (now_leading, _) = cluster.leader(victim, "r");
    assert_ne!(now_leading, leader);
    let (error, offsets) = cluster.fetch(now_leading, "r", 0);
    assert_eq!((error, offsets.len()), (0, 40), "{offsets:?}");
    offsets
}

#[test]
fn a_leader_that_finds_a_damaged_batch_steps_aside_and_is_repaired() {
    let (mut cluster, leader) = trio_with_ten_batches();
    let intact = log_bytes(&cluster, leader);
    let offset = damage_batch(&mut cluster, leader, 5);
    let elections_before = cluster.elections.len();
    // A consumer's fetch finds the damage: the client is sent elsewhere, not given it.
    let (error, offsets) = cluster.fetch(leader, "r", offset);
    assert_eq!(error, 6, "NOT_LEADER_OR_FOLLOWER, got {offsets:?}");
    cluster.advance(1_000);
    let successors: Vec<i32> = cluster.elections[elections_before..]
        .iter()
        .map(|(broker, _)| *broker)
        .collect();
    assert!(
        successors.iter().any(|&b| b != leader),
        "another replica took over: {successors:?}"
    );
    // Once repaired it may lead again (it is the preferred replica): either way, every
    // record is served.
    cluster.advance(5_000);
    let (now_leading, _) = cluster.leader(leader, "r");
    let (error, offsets) = cluster.fetch(now_leading, "r", 0);
    assert_eq!((error, offsets.len()), (0, 40), "{offsets:?}");
    // Its log grew by the new terms' leader markers; what it held is whole again.
    let repaired = log_bytes(&cluster, leader);
    assert_eq!(
        &repaired[..intact.len()],
        &intact[..],
        "the old leader repaired its copy"
    );
}

#[test]
fn the_scrubber_finds_damage_nobody_reads_and_it_is_repaired() {
    let (mut cluster, leader) = trio_with_ten_batches();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let intact = log_bytes(&cluster, leader);
    damage_batch(&mut cluster, victim, 7);
    cluster.advance(3_000);
    assert_eq!(
        log_bytes(&cluster, victim),
        intact,
        "repaired without a restart or a read"
    );
}

#[test]
fn a_partition_moves_to_a_new_broker_without_losing_a_record() {
    let (mut cluster, leader, _) = replicated_trio();
    let mut acked = Vec::new();
    for _ in 0..5 {
        let (error, base) = cluster.produce(leader, "r", -1, 3);
        assert_eq!(error, 0);
        acked.extend(base..base + 3);
    }
    cluster.add_broker(4);
    cluster.advance(3_000);
    assert_eq!(
        cluster.reassign(2, "r", Some(vec![2, 2, 4])),
        39,
        "INVALID_REPLICA_ASSIGNMENT"
    );
    assert_eq!(
        cluster.reassign(2, "r", None),
        85,
        "NO_REASSIGNMENT_IN_PROGRESS"
    );
    // Broker 1, the leader and preferred replica, leaves; broker 4 joins.
    assert_eq!(cluster.reassign(2, "r", Some(vec![2, 3, 4])), 0);
    assert_eq!(cluster.moving(3), [("r".to_string(), 0, vec![4])]);
    cluster.advance(15_000);
    assert!(cluster.moving(3).is_empty(), "the move finished");
    for id in 1..=4 {
        assert_eq!(cluster.replicas(id, "r"), [vec![2, 3, 4]], "broker {id}");
    }
    assert!(
        cluster.nodes[&1].broker.log("r", 0).is_none(),
        "broker 1 dropped its copy"
    );
    let end = cluster.nodes[&2]
        .broker
        .log("r", 0)
        .unwrap()
        .log_end_offset();
    assert_eq!(
        cluster.nodes[&4]
            .broker
            .log("r", 0)
            .unwrap()
            .log_end_offset(),
        end,
        "broker 4 holds the whole log"
    );
    let (leader, _) = cluster.leader(4, "r");
    assert!([2, 3, 4].contains(&leader), "leader {leader}");
    let (error, base) = cluster.produce(leader, "r", -1, 2);
    assert_eq!(error, 0);
    acked.extend(base..base + 2);
    let (error, offsets) = cluster.fetch(leader, "r", acked[0]);
    assert_eq!(error, 0);
    assert_eq!(offsets, acked, "every acknowledged record, at its offset");
    // The group now is 2, 3 and 4: losing broker 1 changes nothing, losing two of them
    // stops commits.
    cluster.cut.insert(1);
    assert_eq!(cluster.produce(leader, "r", -1, 1).0, 0);
    // The new membership is durable: every member restarted, the group still commits.
    for id in [2, 3, 4] {
        cluster.restart(id);
    }
    cluster.advance(5_000);
    let (leader, _) = cluster.leader(4, "r");
    assert!([2, 3, 4].contains(&leader), "leader {leader}");
    let (error, base) = cluster.produce(leader, "r", -1, 1);
    assert_eq!(error, 0);
    acked.push(base);
    let (error, offsets) = cluster.fetch(leader, "r", acked[0]);
    assert_eq!(error, 0);
    assert!(acked.iter().all(|o| offsets.contains(o)), "{offsets:?}");
}

#[test]
fn heartbeats_of_many_partitions_travel_in_one_frame_per_peer() {
    use prost::Message as _;
    use seedlog_core::cluster::records::PeerFrame;
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(3_000);
    assert_eq!(cluster.create_replicated(1, "many", 30, 3), 0);
    cluster.advance(3_000);
    // Two ticks of broker 1's clock: every group it leads heartbeats its followers.
    let node = cluster.nodes.get_mut(&1).unwrap();
    let mut frames: BTreeMap<i32, Vec<PeerFrame>> = BTreeMap::new();
    for _ in 0..2 {
        cluster.now += 100;
        node.broker.handle_timeout(Now::at(cluster.now));
        while let Some(output) = node.broker.poll_output() {
            if let Output::Peer { to, frame } = output {
                frames
                    .entry(to)
                    .or_default()
                    .push(PeerFrame::decode(frame.to_bytes()).unwrap());
            }
        }
    }
    let held = (0..30)
        .filter(|&p| node.broker.log("many", p).is_some())
        .count();
    assert_eq!(held, 30, "every broker holds every partition");
    for (to, frames) in &frames {
        assert!(
            frames.len() <= 2,
            "one frame per peer per tick, got {} to {to}",
            frames.len()
        );
        let groups: usize = frames.iter().map(|f| f.messages.len()).sum();
        assert!(
            groups >= 5,
            "heartbeats of many groups share the frames to {to}: {groups}"
        );
    }
    assert_eq!(frames.len(), 2, "frames went to both peers");
}

#[test]
fn a_stopping_broker_hands_its_partitions_over_before_any_election_timeout() {
    let (mut cluster, leader, epoch) = replicated_trio();
    assert_eq!(cluster.produce(leader, "r", -1, 3).0, 0);
    cluster
        .nodes
        .get_mut(&leader)
        .unwrap()
        .broker
        .begin_shutdown();
    cluster.settle();
    // Well under the 1 s minimum election timeout: a handover, not an election after silence.
    cluster.advance(300);
    assert!(
        !cluster.nodes[&leader].broker.leads_any_partition(),
        "the stopping broker leads nothing"
    );
    let other = (1..=3).find(|&id| id != leader).unwrap();
    let (next, next_epoch) = cluster.leader(other, "r");
    assert_ne!(next, leader);
    assert!(next_epoch > epoch);
    assert_eq!(cluster.produce(next, "r", -1, 2).0, 0);
}

#[test]
fn a_groups_coordinator_moves_with_its_offsets_partition_and_keeps_every_commit() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let (mut cluster, _, _) = replicated_trio();
    let find = |cluster: &mut Cluster, via: i32| -> Option<i32> {
        let request = find_coordinator_request::FindCoordinatorRequest::default().with_key(s("g"));
        match cluster.call(
            via,
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(request),
        ) {
            ResponseKind::FindCoordinator(r) if r.error_code == 0 => Some(r.node_id.0),
            ResponseKind::FindCoordinator(_) => None,
            other => panic!("{other:?}"),
        }
    };
    let mut coordinator = None;
    for _ in 0..20 {
        coordinator = find(&mut cluster, 1);
        if coordinator.is_some() {
            break;
        }
        cluster.advance(500);
    }
    let coordinator = coordinator.expect("__consumer_offsets is created and led");
    assert_eq!(
        cluster.replicas(1, "__consumer_offsets")[0].len(),
        3,
        "replicated three ways"
    );
    // Wait out the load: the coordinator answers COORDINATOR_LOAD_IN_PROGRESS until done.
    let join = join_group_request::JoinGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(s("range"))]);
    let joined = loop {
        match cluster.call(
            coordinator,
            ApiKey::JoinGroup,
            7,
            RequestKind::JoinGroup(join.clone()),
        ) {
            ResponseKind::JoinGroup(r) if r.error_code == 0 => break r,
            ResponseKind::JoinGroup(r) => {
                assert_eq!(
                    r.error_code, 14,
                    "only a load in progress may delay the join"
                );
                cluster.advance(100);
            }
            other => panic!("{other:?}"),
        }
    };
    let member = joined.member_id.clone();
    let generation = joined.generation_id;
    let sync = sync_group_request::SyncGroupRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(member.clone())
        .with_generation_id(generation)
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(member.clone())
                .with_assignment(Bytes::from_static(b"r-0")),
        ]);
    let ResponseKind::SyncGroup(synced) = cluster.call(
        coordinator,
        ApiKey::SyncGroup,
        5,
        RequestKind::SyncGroup(sync),
    ) else {
        panic!()
    };
    assert_eq!(synced.error_code, 0);
    let commit = offset_commit_request::OffsetCommitRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(member.clone())
        .with_generation_id_or_member_epoch(generation)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(topic_name("r"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(1234),
                ]),
        ]);
    let ResponseKind::OffsetCommit(committed) = cluster.call(
        coordinator,
        ApiKey::OffsetCommit,
        8,
        RequestKind::OffsetCommit(commit),
    ) else {
        panic!()
    };
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);

    // The coordinator is cut off: another broker takes over its offsets partition, reads it
    // back, and serves the group with the committed offset and the same generation.
    cluster.cut.insert(coordinator);
    cluster.advance(3_000);
    let other = (1..=3).find(|&id| id != coordinator).unwrap();
    let successor = find(&mut cluster, other).expect("a new coordinator");
    assert_ne!(successor, coordinator);
    cluster.advance(500);
    let fetch = offset_fetch_request::OffsetFetchRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(topic_name("r"))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(fetched) = cluster.call(
        successor,
        ApiKey::OffsetFetch,
        7,
        RequestKind::OffsetFetch(fetch),
    ) else {
        panic!()
    };
    assert_eq!(fetched.error_code, 0);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, 1234);
    let heartbeat = heartbeat_request::HeartbeatRequest::default()
        .with_group_id(GroupId(s("g")))
        .with_member_id(member)
        .with_generation_id(generation);
    let ResponseKind::Heartbeat(beat) = cluster.call(
        successor,
        ApiKey::Heartbeat,
        4,
        RequestKind::Heartbeat(heartbeat),
    ) else {
        panic!()
    };
    assert_eq!(beat.error_code, 0, "the generation carried over");
}

#[test]
fn produces_that_arrive_together_share_one_frame_per_follower() {
    use prost::Message as _;
    use seedlog_core::cluster::records::PeerFrame;
    let (mut cluster, leader, _) = replicated_trio();
    // Four produces to the leader, each its own input or all in one batch of inputs: the
    // number of frames (and Raft messages) each follower is sent for them.
    let send_four = |cluster: &mut Cluster, batched: bool| -> BTreeMap<i32, (usize, usize)> {
        let now = cluster.now;
        let node = cluster.nodes.get_mut(&leader).unwrap();
        if batched {
            node.broker.begin_batch();
        }
        for i in 0..4u8 {
            let batch = record_batch([(None, &[b'a' + i][..], now)]);
            let frame = encode_request(
                ApiKey::Produce,
                9,
                1,
                &produce_request("r", 0, 1, 2000, batch),
            )
            .unwrap()
            .slice(4..);
            node.broker.handle_request(Now::at(now), 7, frame);
        }
        if batched {
            node.broker.end_batch();
        }
        let mut sent: BTreeMap<i32, (usize, usize)> = BTreeMap::new();
        while let Some(output) = node.broker.poll_output() {
            match output {
                Output::Peer { to, frame } => {
                    let frame = PeerFrame::decode(frame.to_bytes()).unwrap();
                    let entry = sent.entry(to).or_default();
                    entry.0 += 1;
                    entry.1 += frame.messages.len();
                }
                Output::Storage(op) => {
                    if let Some(c) = node.disk.execute(op) {
                        node.broker.handle_storage(Now::at(now), c);
                    }
                }
                _ => {}
            }
        }
        cluster.advance(500);
        sent
    };
    let alone = send_four(&mut cluster, false);
    let together = send_four(&mut cluster, true);
    for follower in (1..=3).filter(|&id| id != leader) {
        let (frames_alone, _) = alone[&follower];
        let (frames_together, _) = together[&follower];
        assert!(frames_alone >= 4, "a frame per request: {alone:?}");
        assert_eq!(frames_together, 1, "one frame for the four: {together:?}");
    }
}

#[test]
fn an_idempotent_retry_to_a_new_leader_is_answered_not_written_again() {
    use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
    use kafka_protocol::messages::ProducerId;
    let (mut cluster, leader, _) = replicated_trio();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    // Any broker hands out producer ids (from blocks the quorum gave it).
    let request = InitProducerIdRequest::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let ResponseKind::InitProducerId(r) = cluster.call(
        follower,
        ApiKey::InitProducerId,
        4,
        RequestKind::InitProducerId(request),
    ) else {
        panic!("not InitProducerId")
    };
    assert_eq!(r.error_code, 0);
    let id = r.producer_id.0;
    let batch = |seq: i32| {
        seedlog_core::wire::idempotent_batch(
            Some((id, 0, seq)),
            [(None, &b"x"[..], START), (None, &b"y"[..], START)],
        )
    };
    let produce = |cluster: &mut Cluster, to: i32, seq: i32| {
        let request = produce_request("r", 0, -1, 2000, batch(seq));
        let ResponseKind::Produce(r) = cluster.call(to, ApiKey::Produce, 9, request) else {
            panic!("not produce");
        };
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    let (error, first) = produce(&mut cluster, leader, 0);
    assert_eq!(error, 0);
    let (error, second) = produce(&mut cluster, leader, 2);
    assert_eq!(error, 0);

    // The leader goes; the producer, unsure of its last batch, sends it to the successor.
    cluster.cut.insert(leader);
    cluster.advance(3_000);
    let (successor, _) = cluster.leader(follower, "r");
    assert!(successor != leader && successor > 0);
    assert_eq!(
        produce(&mut cluster, successor, 2),
        (0, second),
        "the first write's offset"
    );
    assert_eq!(produce(&mut cluster, successor, 0), (0, first));
    let (error, third) = produce(&mut cluster, successor, 4);
    assert_eq!(error, 0);
    let (_, offsets) = cluster.fetch(successor, "r", 0);
    assert_eq!(
        offsets,
        [first, first + 1, second, second + 1, third, third + 1]
    );

    // A replica rebuilds the table from its log when it restarts.
    cluster.cut.clear();
    cluster.advance(3_000);
    let other = (1..=3).find(|&b| b != successor).unwrap();
    cluster.restart(other);
    cluster.advance(3_000);
    let table = |cluster: &Cluster, b: i32| {
        let log = cluster.nodes[&b].broker.log("r", 0).unwrap();
        log.producers().producers().collect::<Vec<_>>()
    };
    assert_eq!(table(&cluster, other), vec![(id, 0, Some(5))]);
    assert_eq!(table(&cluster, other), table(&cluster, successor));
}

#[test]
fn a_repaired_batch_of_an_idempotent_producer_goes_back_in_the_producer_table() {
    let (mut cluster, leader, _) = replicated_trio();
    let id = 42;
    for seq in [0, 2, 4] {
        let batch = seedlog_core::wire::idempotent_batch(
            Some((id, 0, seq)),
            [(None, &b"x"[..], START), (None, &b"y"[..], START)],
        );
        let request = produce_request("r", 0, -1, 2000, batch);
        let ResponseKind::Produce(r) = cluster.call(leader, ApiKey::Produce, 9, request) else {
            panic!("not produce");
        };
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    cluster.advance(500);
    let victim = (1..=3).find(|&b| b != leader).unwrap();
    damage_batch(&mut cluster, victim, 3); // the producer's last batch
    cluster.restart(victim);
    let table = |cluster: &Cluster, b: i32| {
        let log = cluster.nodes[&b].broker.log("r", 0).unwrap();
        log.producers().producers().collect::<Vec<_>>()
    };
    assert_eq!(
        table(&cluster, victim),
        vec![(id, 0, Some(3))],
        "built without it"
    );
    cluster.advance(2_000);
    assert_eq!(
        table(&cluster, victim),
        vec![(id, 0, Some(5))],
        "repaired, it is back"
    );
}

/// A transaction over partitions led by different brokers: the markers reach every leader
/// over the peer link, and when the coordinator is cut off mid-transaction, its successor
/// reads `__transaction_state` back and aborts what was left open.
#[test]
fn a_transaction_across_leaders_commits_everywhere_and_outlives_its_coordinator() {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnRequest, AddPartitionsToTxnTopic,
    };
    use kafka_protocol::messages::end_txn_request::EndTxnRequest;
    use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
    use kafka_protocol::messages::{ProducerId, TransactionalId};
    let s = |v: &str| kafka_protocol::protocol::StrBytes::from_string(v.to_string());
    let (mut cluster, _, _) = replicated_trio();
    assert_eq!(cluster.create_replicated(1, "x", 3, 3), 0);
    cluster.advance(3_000);
    let find = |cluster: &mut Cluster, via: i32| -> Option<i32> {
        let request = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_key(s("tx"));
        match cluster.call(
            via,
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(request),
        ) {
            ResponseKind::FindCoordinator(r) if r.error_code == 0 => Some(r.node_id.0),
            _ => None,
        }
    };
    let locate = |cluster: &mut Cluster, via: i32, not: i32| -> i32 {
        for _ in 0..40 {
            match find(cluster, via) {
                Some(c) if c != not => return c,
                _ => cluster.advance(500),
            }
        }
        panic!("no transaction coordinator");
    };
    let coordinator = locate(&mut cluster, 1, -1);
    let init = |cluster: &mut Cluster, at: i32| -> (i64, i16) {
        for _ in 0..40 {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s("tx"))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let ResponseKind::InitProducerId(r) = cluster.call(
                at,
                ApiKey::InitProducerId,
                4,
                RequestKind::InitProducerId(request),
            ) else {
                panic!()
            };
            if r.error_code == 0 {
                return (r.producer_id.0, r.producer_epoch);
            }
            cluster.advance(200);
        }
        panic!("InitProducerId never succeeded");
    };
    let (pid, epoch) = init(&mut cluster, coordinator);
    // Leadership may move (to preferred leaders): ask a broker that is not cut off.
    let leader = |cluster: &mut Cluster, p: i32| -> i32 {
        let via = (1..=3).find(|id| !cluster.cut.contains(id)).unwrap();
        cluster.topic_metadata(via, "x").partitions[p as usize]
            .leader_id
            .0
    };
    let add = |cluster: &mut Cluster, at: i32, epoch: i16| {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(s("tx")))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(topic_name("x"))
                .with_partitions(vec![0, 1, 2])]);
        let ResponseKind::AddPartitionsToTxn(r) = cluster.call(
            at,
            ApiKey::AddPartitionsToTxn,
            3,
            RequestKind::AddPartitionsToTxn(request),
        ) else {
            panic!()
        };
        let codes: Vec<i16> = r.results_by_topic_v3_and_below[0]
            .results_by_partition
            .iter()
            .map(|p| p.partition_error_code)
            .collect();
        assert_eq!(codes, vec![0, 0, 0]);
    };
    let produce = |cluster: &mut Cluster, p: i32, seq: i32| -> i64 {
        let values = [b"a".to_vec(), b"b".to_vec()];
        let records: Vec<seedlog_core::batch::KeyAndValue<'_>> =
            values.iter().map(|v| (None, Some(&v[..]))).collect();
        let mut batch = seedlog_core::batch::txn_data_batch(START, pid, epoch, &records);
        seedlog_core::batch::stamp_producer(&mut batch, pid, epoch, seq);
        let request = produce_request("x", p, -1, 2000, batch.freeze());
        let to = leader(cluster, p);
        let ResponseKind::Produce(r) = cluster.call(to, ApiKey::Produce, 9, request) else {
            panic!()
        };
        let answer = &r.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, 0);
        answer.base_offset
    };
    // (high watermark, last stable offset, aborted first offsets) of a read_committed fetch.
    let stable = |cluster: &mut Cluster, p: i32| -> (i64, i64, Vec<i64>) {
        let RequestKind::Fetch(request) = fetch_request([("x", p, 0)], 0, 1 << 20, 1 << 20) else {
            panic!()
        };
        let request = RequestKind::Fetch(request.with_isolation_level(1));
        let to = leader(cluster, p);
        let ResponseKind::Fetch(r) = cluster.call(to, ApiKey::Fetch, 12, request) else {
            panic!()
        };
        let data = &r.responses[0].partitions[0];
        assert_eq!(data.error_code, 0, "fetch of partition {p}");
        let aborted = data.aborted_transactions.iter().flatten();
        let aborted = aborted.map(|a| a.first_offset).collect();
        (data.high_watermark, data.last_stable_offset, aborted)
    };

    add(&mut cluster, coordinator, epoch);
    let firsts: Vec<i64> = (0..3).map(|p| produce(&mut cluster, p, 0)).collect();
    for p in 0..3 {
        let (hw, lso, _) = stable(&mut cluster, p);
        assert_eq!(
            lso, firsts[p as usize],
            "open: partition {p} stops at the transaction"
        );
        assert!(hw > lso);
    }
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s("tx")))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(true);
    let ResponseKind::EndTxn(r) =
        cluster.call(coordinator, ApiKey::EndTxn, 3, RequestKind::EndTxn(request))
    else {
        panic!()
    };
    assert_eq!(r.error_code, 0);
    cluster.advance(1_000);
    for p in 0..3 {
        let (hw, lso, aborted) = stable(&mut cluster, p);
        assert_eq!((lso, aborted), (hw, vec![]), "committed in partition {p}");
    }

    // The next transaction is left open, and its coordinator is cut off.
    add(&mut cluster, coordinator, epoch);
    let seconds: Vec<i64> = (0..3).map(|p| produce(&mut cluster, p, 2)).collect();
    cluster.cut.insert(coordinator);
    cluster.advance(3_000);
    let via = (1..=3).find(|&id| id != coordinator).unwrap();
    let successor = locate(&mut cluster, via, coordinator);
    let (pid2, epoch2) = init(&mut cluster, successor);
    assert_eq!(
        (pid2, epoch2),
        (pid, epoch + 2),
        "bumped to abort, and for the restart"
    );
    cluster.advance(1_000);
    for p in 0..3 {
        let (hw, lso, aborted) = stable(&mut cluster, p);
        assert_eq!(lso, hw, "partition {p} is stable again");
        assert_eq!(
            aborted,
            vec![seconds[p as usize]],
            "partition {p} lists the abort"
        );
    }
}

/// A frame from `from` to `to` holding one metadata-quorum raft message.
fn quorum_frame(from: i32, to: i32, mut message: raft::eraftpb::Message) -> Bytes {
    use prost::Message as _;
    use seedlog_core::cluster::records::{GroupMessage, PeerFrame};
    message.from = from as u64 + 1;
    message.to = to as u64 + 1;
    let frame = PeerFrame {
        from,
        messages: vec![GroupMessage {
            partition: None,
            index: 0,
            message: Some(message),
        }],
        ..PeerFrame::default()
    };
    Bytes::from(frame.encode_to_vec())
}

/// Each of these made raft-rs assert (found by `fuzz_peer_frames`): a read index without its
/// context, an unknown message type, an acknowledgement past the log (the commit index then
/// passed the log's end), a forwarded leadership transfer that carries a term, a vote
/// without a term, a term at the top of the range (the next campaign overflowed), and a
/// proposal in this broker's own name. Each is dropped, and the quorum goes on.
#[test]
fn a_broker_drops_raft_messages_raft_rs_would_assert_on() {
    use raft::eraftpb::{Entry, Message, MessageType};
    let mut cluster = Cluster::new(3, 1000);
    cluster.advance(3_000);
    let controller = cluster.controller();
    let follower = (1..=3).find(|&id| id != controller).unwrap();
    let term = cluster.elections.iter().map(|(_, t)| *t).max().unwrap();
    let message = |kind: MessageType, term: u64| Message {
        msg_type: kind as i32,
        term,
        ..Message::default()
    };
    let acknowledgement = Message {
        index: 1_000_000,
        ..message(MessageType::MsgAppendResponse, term)
    };
    let own_proposal = Message {
        entries: vec![Entry::default()],
        ..message(MessageType::MsgPropose, 0)
    };
    let bad = [
        (follower, controller, message(MessageType::MsgReadIndex, 0)),
        (
            follower,
            controller,
            Message {
                msg_type: 99,
                ..Message::default()
            },
        ),
        (follower, controller, acknowledgement),
        (
            controller,
            follower,
            message(MessageType::MsgTransferLeader, term),
        ),
        (
            controller,
            follower,
            message(MessageType::MsgRequestVote, 0),
        ),
        (
            controller,
            follower,
            message(MessageType::MsgHeartbeat, u64::MAX),
        ),
        (controller, controller, own_proposal),
    ];
    for (from, to, m) in bad {
        let frame = quorum_frame(from, to, m);
        let now = Now::at(cluster.now);
        let node = cluster.nodes.get_mut(&to).unwrap();
        node.broker.handle_peer(now, from, frame);
        cluster.settle();
    }
    // The quorum still commits: a topic created now is known to every broker.
    cluster.advance(3_000);
    assert_eq!(cluster.create_topic(follower, "after", 1), 0);
    cluster.advance(1_000);
    for id in 1..=3 {
        assert!(
            cluster.metadata(id).0.contains(&"after".to_string()),
            "broker {id}"
        );
    }
}
