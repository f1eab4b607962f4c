//! Mutation fuzzing of everything that decodes bytes from outside: Kafka request frames
//! (through the whole broker), record batches, segment files at recovery, segment index
//! files and peer frames. Each target starts from valid encodings, mutates them (bit flips,
//! bytes set to edge values, lengths bent, ranges cut, copied or inserted) and feeds the
//! result in: nothing may panic, and the broker must keep serving.
//!
//! No coverage guidance (a fresh machine has no afl++ or nightly toolchain): the seeds and
//! the mutators are aimed at the fields that carry lengths and counts instead. Every input
//! that ever crashed a target is kept under `tests/fuzz/<target>/` and replayed first.
//!
//! `cargo test -p seedlog-core --test fuzz` runs 20,000 inputs per target;
//! `SEEDLOG_FUZZ_ITERS=2000000 SEEDLOG_FUZZ_SEED=7 cargo test --release -p seedlog-core
//! --test fuzz -- --nocapture` runs longer and prints each target's count and time;
//! `SEEDLOG_FUZZ_SECONDS=1200` runs each target for that many seconds instead.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use prost::Message as _;
use seedlog_core::batch::{self, BatchView};
use seedlog_core::cluster::records::PeerFrame;
use seedlog_core::config::BrokerConfig;
use seedlog_core::log::{decode_segment_index, encode_segment_index};
use seedlog_core::recovery::scan_segment;
use seedlog_core::wire::{encode_request, fetch_request, produce_request, record_batch};
use seedlog_core::Now;

mod support;
use support::cluster::Cluster;
use support::*;

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGES: [u8; 6] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe];
const EDGE_INTS: [i32; 7] = [0, -1, 1, i32::MAX, i32::MIN, 0x7fff, 0x1_0000];

/// One to four mutations of `input`.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = EDGES[rng.below(EDGES.len())];
            }
            // A length or count bent: four bytes anywhere set to an edge value.
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = EDGE_INTS[rng.below(EDGE_INTS.len())].to_be_bytes();
                out[i..i + 4].copy_from_slice(&v);
            }
            3 if len > 0 => out.truncate(rng.below(len)),
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                out.drain(from..to);
            }
            5 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let copy = out[from..to].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            6 => {
                let at = rng.below(len + 1);
                let junk: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                out[i] = out[i].wrapping_add(1 + rng.below(3) as u8);
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

fn iterations() -> usize {
    std::env::var("SEEDLOG_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// With `SEEDLOG_FUZZ_SECONDS`, a target runs for that long instead of a count of inputs.
fn time_bound() -> Option<std::time::Duration> {
    std::env::var("SEEDLOG_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs)
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target)
}

/// Replays the target's kept crashers, then mutates `seeds` for the configured number of
/// iterations. A panicking input is written to the corpus before the test fails with it.
fn fuzz(target: &str, seeds: &[Vec<u8>], run: impl FnMut(&[u8])) {
    fuzz_with(target, seeds, mutate, run)
}

/// [`fuzz`] with a mutator of the target's own.
fn fuzz_with(
    target: &str,
    seeds: &[Vec<u8>],
    mut mutate: impl FnMut(&mut Rng, &[u8]) -> Vec<u8>,
    mut run: impl FnMut(&[u8]),
) {
    let dir = corpus_dir(target);
    let mut kept: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .map(|e| {
            (
                e.path(),
                std::fs::read(e.path()).expect("corpus file reads"),
            )
        })
        .collect();
    kept.sort();
    for (path, input) in &kept {
        let outcome = catch_unwind(AssertUnwindSafe(|| run(input)));
        assert!(
            outcome.is_ok(),
            "{target}: kept input {} panics again",
            path.display()
        );
    }
    let seed = std::env::var("SEEDLOG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1u64);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let started = Instant::now();
    let (limit, deadline) = match time_bound() {
        Some(bound) => (usize::MAX, Some(started + bound)),
        None => (iterations(), None),
    };
    let mut n = 0;
    for i in 0..limit {
        // The clock is read once per 1024 inputs so that it costs nothing.
        if i % 1024 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        n = i + 1;
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base);
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            std::fs::create_dir_all(&dir).expect("corpus dir");
            let path = dir.join(format!("crash-{seed}-{i}.bin"));
            std::fs::write(&path, &input).expect("corpus file writes");
            panic!(
                "{target}: input {i} (seed {seed}) panics; kept as {}",
                path.display()
            );
        }
    }
    println!(
        "fuzz {target}: {n} inputs in {:.1} s, {} kept inputs replayed",
        started.elapsed().as_secs_f64(),
        kept.len()
    );
}

fn a_batch(n: usize) -> Bytes {
    let values: Vec<String> = (0..n).map(|i| format!("value-{i}")).collect();
    record_batch(
        values
            .iter()
            .map(|v| (Some(&b"key"[..]), v.as_bytes(), 1_000)),
    )
}

fn request_seeds() -> Vec<Vec<u8>> {
    use create_topics_request::CreatableTopic;
    let requests = [
        (
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(Default::default()),
        ),
        (
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
        ),
        (
            ApiKey::Produce,
            9,
            produce_request("t", 0, -1, 1000, a_batch(3)),
        ),
        (
            ApiKey::Produce,
            3,
            produce_request("t", 0, 1, 1000, a_batch(2)),
        ),
        (
            ApiKey::Fetch,
            12,
            fetch_request([("t", 0, 0)], 0, 1 << 20, 1 << 20),
        ),
        (
            ApiKey::Fetch,
            4,
            fetch_request([("t", 0, 0)], 0, 1 << 20, 1 << 20),
        ),
        (
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name("u"))
                    .with_num_partitions(2)
                    .with_replication_factor(1),
            ])),
        ),
        (
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")]),
            ),
        ),
        (
            ApiKey::JoinGroup,
            9,
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_session_timeout_ms(10_000)
                    .with_protocol_type(s("consumer")),
            ),
        ),
        (
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            ),
        ),
        (
            ApiKey::ListOffsets,
            6,
            RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .map(|(api, version, request)| {
            let frame = encode_request(*api, *version, 7, request).expect("encodes");
            frame[4..].to_vec() // The broker takes frames without their size prefix.
        })
        .collect();
    seeds.extend(legacy_seeds());
    seeds
}

/// Frames of versions below kafka-protocol's floors, written by hand: Produce v0 with a
/// magic-0 message set, Fetch v0, ListOffsets v0, OffsetCommit v1.
fn legacy_seeds() -> Vec<Vec<u8>> {
    fn header(api: i16, version: i16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&api.to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&7i32.to_be_bytes());
        out.extend_from_slice(&[0, 2, b'f', b'z']);
        out
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    // One magic-0 message (offset, size, crc, magic, attributes, key -1, value).
    let mut message = vec![0, 0, 0xff, 0xff, 0xff, 0xff];
    int(&mut message, 2);
    message.extend_from_slice(b"hi");
    let mut set = vec![0; 8];
    int(&mut set, message.len() as i32 + 4);
    set.extend_from_slice(&crc32(&message).to_be_bytes());
    set.extend_from_slice(&message);

    let mut produce = header(0, 0);
    produce.extend_from_slice(&(-1i16).to_be_bytes());
    int(&mut produce, 1000);
    int(&mut produce, 1);
    string(&mut produce, "t");
    int(&mut produce, 1);
    int(&mut produce, 0);
    int(&mut produce, set.len() as i32);
    produce.extend_from_slice(&set);

    let mut fetch = header(1, 0);
    for v in [-1, 0, 1, 1] {
        int(&mut fetch, v); // replica, max wait, min bytes, topic count
    }
    string(&mut fetch, "t");
    int(&mut fetch, 1);
    int(&mut fetch, 0);
    fetch.extend_from_slice(&0i64.to_be_bytes());
    int(&mut fetch, 1 << 20);

    let mut list = header(2, 0);
    int(&mut list, -1);
    int(&mut list, 1);
    string(&mut list, "t");
    int(&mut list, 1);
    int(&mut list, 0);
    list.extend_from_slice(&(-1i64).to_be_bytes());
    int(&mut list, 1);

    let mut commit = header(8, 1);
    string(&mut commit, "g");
    int(&mut commit, -1);
    string(&mut commit, "m");
    int(&mut commit, 1);
    string(&mut commit, "t");
    int(&mut commit, 1);
    int(&mut commit, 0);
    commit.extend_from_slice(&3i64.to_be_bytes());
    commit.extend_from_slice(&(-1i64).to_be_bytes());
    string(&mut commit, "");
    vec![produce, fetch, list, commit]
}

#[test]
fn fuzz_request_frames() {
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, a_batch(5));
    // The seeds are good requests: each is answered, none closes its connection.
    let seeds = request_seeds();
    for (i, seed) in seeds.iter().enumerate() {
        let conn = 50 + i as u64;
        h.broker
            .handle_request(h.time(), conn, Bytes::copy_from_slice(seed));
        h.drive();
        assert!(h.closed.is_empty(), "seed {i} closed its connection");
        assert!(h.reply_raw(conn).is_some(), "seed {i} answered");
    }
    let mut conn = 100;
    fuzz("request-frames", &seeds, |input| {
        conn += 1;
        // A fresh broker now and then: what the inputs create (topics, groups, producers)
        // would otherwise pile up and slow every later input down.
        if conn % 20_000 == 0 {
            h = Harness::new(BrokerConfig::default());
            h.create_topic("t", 1, &[]);
            h.produce("t", 0, a_batch(5));
        }
        h.broker
            .handle_request(h.time(), conn, Bytes::copy_from_slice(input));
        h.drive();
        h.advance(1);
        h.inbox.clear();
        h.closed.clear();
    });
    // Still serving: a fetch from the start reads back what was written.
    let (error, _, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!(error, 0);
    assert!(offsets.starts_with(&[0, 1, 2, 3, 4]), "{offsets:?}");
}

fn batch_seeds() -> Vec<Vec<u8>> {
    let mut marker = batch::txn_marker_batch(7, 0, true, 0, 1, 1_000);
    batch::stamp_base_offset(&mut marker, 9);
    vec![
        a_batch(1).to_vec(),
        a_batch(4).to_vec(),
        marker.to_vec(),
        batch::leader_change_batch(1).to_vec(),
    ]
}

#[test]
fn fuzz_record_batches() {
    fuzz("record-batches", &batch_seeds(), |input| {
        let mut rest = input;
        while let Ok((view, next)) = BatchView::split_first(rest) {
            let _ = view.crc_ok();
            if let Some(records) = view.records() {
                for r in records {
                    let _ = r;
                }
            }
            if let Some(kvs) = view.key_values() {
                for kv in kvs {
                    let _ = kv;
                }
            }
            rest = next;
        }
    });
}

fn segment_seeds() -> Vec<Vec<u8>> {
    let mut segment = BytesMut::new();
    let mut next = 0;
    for n in [1, 3, 2] {
        let mut b = BytesMut::from(&a_batch(n)[..]);
        batch::stamp_base_offset(&mut b, next);
        next += n as i64;
        segment.extend_from_slice(&b);
    }
    vec![segment.to_vec()]
}

#[test]
fn fuzz_segment_recovery() {
    fuzz("segments", &segment_seeds(), |input| {
        for replicated in [false, true] {
            let scan = scan_segment(0, input, 64, 1 << 20, replicated, None);
            assert!(
                scan.segment.size <= input.len() as u64,
                "a scan keeps no more than the file"
            );
        }
    });
}

#[test]
fn fuzz_segment_indexes() {
    let segment = segment_seeds().remove(0);
    let scan = scan_segment(0, &segment, 16, 1 << 20, false, None);
    let index = encode_segment_index(&scan.segment).to_vec();
    assert!(decode_segment_index(0, &index, segment.len() as u64).is_some());
    fuzz("indexes", &[index], |input| {
        let _ = decode_segment_index(0, input, segment.len() as u64);
    });
}

/// The broker peer frames are fed to.
const TARGET: i32 = 2;

/// Three brokers with a replicated topic, and every peer frame broker [`TARGET`] was sent
/// while they elected, replicated, lost it for a while (votes, snapshots) and took it back.
fn peer_story() -> (Cluster, Vec<Vec<u8>>) {
    let mut cluster = Cluster::new(3, 5);
    cluster.tap = Some(Vec::new());
    cluster.advance(3_000);
    assert_eq!(cluster.create_replicated(1, "r", 2, 3), 0);
    cluster.advance(2_000);
    let (leader, _) = cluster.leader(1, "r");
    cluster.produce(leader, "r", -1, 5);
    cluster.cut.insert(TARGET);
    cluster.advance(4_000);
    let via = (1..=3).find(|&id| id != TARGET).unwrap();
    for i in 0..8 {
        cluster.create_topic(via, &format!("t{i}"), 1);
    }
    cluster.cut.clear();
    cluster.advance(4_000);
    let (leader, _) = cluster.leader(1, "r");
    cluster.produce(leader, "r", -1, 3);
    let frames = cluster.tap.take().unwrap_or_default();
    let to_target = frames
        .into_iter()
        .filter(|(_, to, _)| *to == TARGET)
        .map(|(_, _, frame)| frame.to_vec())
        .collect();
    (cluster, to_target)
}

/// A value near `v`, or at an edge.
fn bend(rng: &mut Rng, v: u64) -> u64 {
    match rng.below(7) {
        0 => 0,
        1 => v.wrapping_add(1),
        2 => v.wrapping_sub(1),
        3 => v.wrapping_add(1 + rng.below(1000) as u64),
        4 => v / 2,
        5 => u64::MAX - rng.below(2) as u64,
        _ => rng.next() % 64,
    }
}

/// A raft message of a peer frame changed in one field: type, terms, indexes, commit,
/// rejection, entries, snapshot metadata or membership.
fn bend_message(rng: &mut Rng, m: &mut raft::eraftpb::Message) {
    match rng.below(12) {
        0 => m.msg_type = rng.below(20) as i32,
        1 => m.term = bend(rng, m.term),
        2 => m.log_term = bend(rng, m.log_term),
        3 => m.index = bend(rng, m.index),
        4 => m.commit = bend(rng, m.commit),
        5 => {
            m.reject = !m.reject;
            m.reject_hint = bend(rng, m.reject_hint);
        }
        6 => m.commit_term = bend(rng, m.commit_term),
        7 if !m.entries.is_empty() => {
            let i = rng.below(m.entries.len());
            match rng.below(4) {
                0 => m.entries[i].index = bend(rng, m.entries[i].index),
                1 => m.entries[i].term = bend(rng, m.entries[i].term),
                2 => {
                    let copy = m.entries[i].clone();
                    m.entries.insert(rng.below(m.entries.len() + 1), copy);
                }
                _ => {
                    m.entries.remove(i);
                }
            }
        }
        8 => {
            let snapshot = m.snapshot.get_or_insert_with(Default::default);
            let meta = snapshot.metadata.get_or_insert_with(Default::default);
            match rng.below(3) {
                0 => meta.index = bend(rng, meta.index),
                1 => meta.term = bend(rng, meta.term),
                _ => {
                    let conf = meta.conf_state.get_or_insert_with(Default::default);
                    match rng.below(3) {
                        0 => conf.voters.clear(),
                        1 => conf.voters.push(bend(rng, 3)),
                        _ => conf.learners.push(bend(rng, 2)),
                    }
                }
            }
        }
        9 => m.from = bend(rng, m.from),
        10 => m.to = bend(rng, m.to),
        _ => m.request_snapshot = bend(rng, m.request_snapshot),
    }
}

/// Half the time the frame's bytes mutated; else a field of one of its raft messages, its
/// group or its sender bent, and the frame encoded again.
fn mutate_peer_frame(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let Ok(mut frame) = PeerFrame::decode(input) else {
        return mutate(rng, input);
    };
    if rng.below(2) == 0 || frame.messages.is_empty() {
        return mutate(rng, input);
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(frame.messages.len());
        let group = &mut frame.messages[i];
        match rng.below(10) {
            0 => group.index = bend(rng, group.index as u64) as i32,
            1 => frame.from = bend(rng, frame.from as u64) as i32,
            _ => {
                if let Some(m) = group.message.as_mut() {
                    bend_message(rng, m);
                }
            }
        }
    }
    frame.encode_to_vec()
}

/// Peer frames from a proven peer, bent, through a broker of a running cluster: nothing may
/// panic (raft-rs asserts on what a broken peer could send: a commit past the log, a
/// conflict below the commit, a vote without a term), and the cluster keeps committing.
#[test]
fn fuzz_peer_frames() {
    let (mut cluster, seeds) = peer_story();
    assert!(seeds.len() > 20, "the story sends broker {TARGET} frames");
    let mut fed = 0u64;
    fuzz_with("peer-frames", &seeds, mutate_peer_frame, |input| {
        // A proven peer: any broker but the target (frames from itself are refused first).
        let sender = PeerFrame::decode(input).map_or(1, |f| if f.from == 3 { 3 } else { 1 });
        let now = Now::at(cluster.now);
        let node = cluster.nodes.get_mut(&TARGET).expect("target broker");
        node.broker
            .handle_peer(now, sender, Bytes::copy_from_slice(input));
        cluster.settle();
        fed += 1;
        if fed.is_multiple_of(64) {
            cluster.advance(50);
        }
    });
    // Whatever it was fed, every broker still serves. (That the cluster also still commits
    // is not promised: a well-formed lie from a proven peer, say entries of a leader that
    // never was, misleads Raft, whose model has no lying members. Peers are authenticated
    // for that reason; malformed frames are what the broker must survive.)
    // A mutated frame can also be a well-formed registration forwarded by a proven peer
    // (seed 20261209 registered a fourth broker that way): the three must still be listed.
    cluster.advance(2_000);
    for id in 1..=3 {
        let (_, brokers, _) = cluster.metadata(id);
        for real in 1..=3 {
            assert!(
                brokers.contains(&real),
                "broker {id} answers Metadata after the fuzzing, listing broker {real}: {brokers:?}"
            );
        }
    }
}

/// Tokens a client sends in SaslAuthenticate: SCRAM's client-first and client-final, PLAIN's
/// single token.
fn sasl_seeds() -> Vec<Vec<u8>> {
    use seedlog_core::security::scram::{client, Mechanism};
    let first = client::first("alice", "fyko+d2lbbFgONRv9qkxdawL");
    let server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=c2FsdA==,i=4096";
    let (last, _) = client::last(Mechanism::Sha256, "pw", &first, server_first).unwrap();
    vec![
        first.into_bytes(),
        last.into_bytes(),
        b"\0alice\0pw".to_vec(),
        b"n,a=alice,n=alice,r=x".to_vec(),
    ]
}

/// SASL tokens from a stranger, through a SASL connection of the broker: a SCRAM exchange
/// and a PLAIN login, each token mutated. Nothing may panic, and the broker keeps serving.
#[test]
fn fuzz_sasl_tokens() {
    use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
    use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
    use seedlog_core::security::scram::Mechanism;
    use seedlog_core::security::{Listener, SecurityProtocol};
    let mut h = Harness::new(BrokerConfig::default());
    h.create_topic("t", 1, &[]);
    h.produce("t", 0, a_batch(5));
    // alice exists for both mechanisms, so SCRAM's client-final is parsed too.
    for m in Mechanism::ALL {
        let upsert = ScramCredentialUpsertion::default()
            .with_name(s("alice"))
            .with_mechanism(m as i8)
            .with_iterations(4096)
            .with_salt(Bytes::from_static(b"salt"))
            .with_salted_password(m.salted_password(b"pw", b"salt", 4096).into());
        let request = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert]);
        h.call(
            ApiKey::AlterUserScramCredentials,
            0,
            RequestKind::AlterUserScramCredentials(request),
        );
    }
    let listener = Listener {
        name: "SASL_PLAINTEXT".into(),
        protocol: SecurityProtocol::SaslPlaintext,
        tls_principal: None,
    };
    let frame = |api: ApiKey, version: i16, request: RequestKind| {
        encode_request(api, version, 1, &request)
            .unwrap()
            .slice(4..)
    };
    let mut conn = 1_000;
    fuzz("sasl-tokens", &sasl_seeds(), |input| {
        conn += 1;
        h.broker.handle_connect(conn, "10.0.0.9:1", &listener);
        let mechanism = ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"][conn as usize % 3];
        let handshake = SaslHandshakeRequest::default().with_mechanism(s(mechanism));
        h.broker.handle_request(
            h.time(),
            conn,
            frame(
                ApiKey::SaslHandshake,
                1,
                RequestKind::SaslHandshake(handshake),
            ),
        );
        for _ in 0..2 {
            let token =
                SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(input));
            h.broker.handle_request(
                h.time(),
                conn,
                frame(
                    ApiKey::SaslAuthenticate,
                    2,
                    RequestKind::SaslAuthenticate(token),
                ),
            );
        }
        // A v0 handshake then the bare token.
        let handshake = SaslHandshakeRequest::default().with_mechanism(s(mechanism));
        h.broker
            .handle_connect(conn + 500_000, "10.0.0.9:2", &listener);
        h.broker.handle_request(
            h.time(),
            conn + 500_000,
            frame(
                ApiKey::SaslHandshake,
                0,
                RequestKind::SaslHandshake(handshake),
            ),
        );
        h.broker
            .handle_request(h.time(), conn + 500_000, Bytes::copy_from_slice(input));
        h.drive();
        h.broker.handle_disconnect(conn);
        h.broker.handle_disconnect(conn + 500_000);
        h.inbox.clear();
        h.closed.clear();
    });
    let (error, _, offsets) = h.fetch("t", 0, 0, 1 << 20);
    assert_eq!(error, 0);
    assert!(offsets.starts_with(&[0, 1, 2, 3, 4]), "{offsets:?}");
}

/// Prints a kept peer-frame input, decoded: `DUMP=path cargo test --test fuzz
/// dump_peer_frame -- --ignored --nocapture`.
#[test]
#[ignore]
fn dump_peer_frame() {
    let path = std::env::var("DUMP").expect("DUMP names a kept input");
    let bytes = std::fs::read(path).expect("the kept input reads");
    println!("{:#?}", PeerFrame::decode(&bytes[..]));
}
