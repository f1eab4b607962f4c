//! Consume-transform-produce, exactly once (KIP-98, KIP-447): members of one consumer group
//! read their input partitions with read_committed and, in one transaction each round,
//! write every record they read, transformed, to the output topic [`TRANSFORMED`] and
//! commit the input offsets they reached (AddOffsetsToTxn, TxnOffsetCommit with their
//! generation). Each member has a transactional id of its own; a member that crashes comes
//! back as a new incarnation (fencing the old one and aborting what it left open) and a new
//! group member; one that pauses past its session finds its generation gone and its offset
//! commit refused, and aborts. A taken-over partition resumes from an offset fetched with
//! `require_stable`, so it never starts below a transaction still open.
//!
//! After the heal the group catches up with its input, and `transform-exactly-once` reads
//! the output with read_committed: each input record below the group's committed offset is
//! there exactly once, with its value, and none above it.

use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequest, TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{GroupId, ProducerId};
use seedlog_core::wire::transactional_batch;

use super::group::{rejoin_after, Member, Rejoin};
use super::txn::{fetch_committed, read_committed_whole, Answer, TxnProducer};
use super::*;
use crate::history::{transformed, TxnFate};

/// The group the transform's members form.
pub const TRANSFORM_GROUP: &str = "sim-transform";
pub use crate::scenario::TRANSFORMED;
/// Per round, the chance that a member crashes with its transaction open, and that it
/// pauses past its session (a zombie) before committing its offsets.
const CRASH_CHANCE: f64 = 0.02;
const PAUSE_CHANCE: f64 = 0.02;
/// Per round, the chance that the network delivers the previous round's TxnOffsetCommit
/// again, late (a resend on a new connection overtook it), inside this round's transaction.
const LATE_RESEND_CHANCE: f64 = 0.05;
/// Per round, the chance a member aborts its transaction and reads the input again.
const ABORT_CHANCE: f64 = 0.1;
const HEARTBEAT_MS: u64 = 500;
/// Longer than a pause: a paused member's transaction usually outlives it and commits.
const TXN_TIMEOUT_MS: i32 = 10_000;
const SESSION_MS: u64 = 3_000;

/// The output partition input record `offset` of input partition `index` goes to: spread,
/// so most rounds write to several output partitions in one transaction.
fn output_for(outputs: &[Partition], index: usize, offset: i64) -> &Partition {
    &outputs[(index + offset as usize) % outputs.len()]
}

/// How a round ended, when it did not simply go on.
enum Next {
    /// The generation is over: join again.
    Rejoin(Rejoin),
    /// The incarnation is over (fenced, or a crash): a new InitProducerId, a new member.
    Restart,
    /// The group phase of the run is over.
    Stop,
}

struct Transformer {
    ctx: Ctx,
    id: u32,
    member: Member,
    producer: TxnProducer,
    dice: Dice,
    inputs: Vec<Partition>,
    outputs: Vec<Partition>,
    /// The last TxnOffsetCommit answered, for a late copy of it.
    last_commit: Option<RequestKind>,
}

/// One transform member, until the group phase of the run ends.
pub async fn transform_member(ctx: Ctx, id: u32) {
    let txn_id = format!("sim-transform-{id}");
    let mut t = Transformer {
        member: Member::new(ctx.clone(), 100 + id, TRANSFORM_GROUP, 7000),
        producer: TxnProducer::new(
            ctx.clone(),
            txn_id,
            7500 + u64::from(id),
            true,
            TXN_TIMEOUT_MS,
        ),
        dice: Dice::new(ctx.plan.seed, 8000 + u64::from(id)),
        inputs: ctx.source_partitions(),
        outputs: ctx.output_partitions(),
        last_commit: None,
        ctx,
        id,
    };
    'incarnation: while let Some(mut me) = t.producer.init().await {
        let mut sequences: BTreeMap<Partition, i32> = BTreeMap::new();
        loop {
            if t.ctx.groups_stopped() {
                return;
            }
            let Ok(coordinator) = t.member.client.coordinator(TRANSFORM_GROUP).await else {
                sleep_ms(200).await;
                continue;
            };
            let Some((generation, assigned)) = t.member.join_and_sync(coordinator).await else {
                sleep_ms(t.dice.between(50, 250)).await;
                continue;
            };
            let next = t
                .generation(&mut me, &mut sequences, coordinator, generation, &assigned)
                .await;
            match next {
                Next::Rejoin(Rejoin::Same) => {}
                Next::Rejoin(Rejoin::Fresh) => t.member.member_id.clear(),
                Next::Restart => {
                    t.member.member_id.clear();
                    continue 'incarnation;
                }
                Next::Stop => return,
            }
        }
    }
}

impl Transformer {
    fn now(&self) -> u64 {
        self.ctx.now_ms()
    }

    /// Rounds over `assigned` until the generation or the incarnation ends.
    async fn generation(
        &mut self,
        me: &mut (i64, i16),
        sequences: &mut BTreeMap<Partition, i32>,
        coordinator: i32,
        generation: i32,
        assigned: &[Partition],
    ) -> Next {
        // Where each partition resumes: its committed offset, once stable.
        let mut committed = BTreeMap::new();
        for partition in assigned {
            match self.member.committed(coordinator, partition).await {
                Some(offset) => {
                    committed.insert(partition.clone(), offset);
                }
                None => return Next::Rejoin(Rejoin::Same),
            }
        }
        let now = self.now();
        self.ctx
            .history()
            .trace(now, ("transform-resume", self.id, generation, &committed));
        let mut last_heartbeat = self.now();
        loop {
            if self.ctx.groups_stopped() {
                return Next::Stop;
            }
            if self.now() >= last_heartbeat + HEARTBEAT_MS {
                last_heartbeat = self.now();
                if let Some(rejoin) = self.member.heartbeat(coordinator, generation).await {
                    return Next::Rejoin(rejoin);
                }
            }
            let (read, reached) = self.read(&committed).await;
            // Only markers read (a new leader's, say): their offsets are committed all the
            // same, in a transaction that writes no output.
            let moved = reached.iter().any(|(p, o)| committed.get(p) != Some(o));
            if !moved {
                sleep_ms(self.dice.between(20, 100)).await;
                continue;
            }
            let round = self
                .round(me, sequences, coordinator, generation, &read, &reached)
                .await;
            match round {
                Ok(true) => committed.extend(reached),
                // Aborted: the same input again, from the same offsets.
                Ok(false) => {}
                Err(next) => return next,
            }
            sleep_ms(self.dice.between(5, 50)).await;
        }
    }

    /// One read of every assigned partition from `from`: the data records (input
    /// partition, offset, value) and the offset each partition reached.
    async fn read(
        &mut self,
        from: &BTreeMap<Partition, i64>,
    ) -> (Vec<(Partition, i64, String)>, BTreeMap<Partition, i64>) {
        let mut records = Vec::new();
        let mut reached = BTreeMap::new();
        for (partition, &position) in from {
            let client = &mut self.producer.client;
            let Ok(fetched) = fetch_committed(client, partition, position, 0).await else {
                continue;
            };
            let Some(last) = fetched.records.last() else {
                continue;
            };
            reached.insert(partition.clone(), last.offset + 1);
            records.extend(
                fetched
                    .records
                    .into_iter()
                    .filter(|r| !r.control)
                    .map(|r| (partition.clone(), r.offset, r.value)),
            );
        }
        (records, reached)
    }

    /// One transaction: the transformed records, the offsets reached; committed (`true`)
    /// or, now and then, aborted (`false`).
    async fn round(
        &mut self,
        me: &mut (i64, i16),
        sequences: &mut BTreeMap<Partition, i32>,
        coordinator: i32,
        generation: i32,
        read: &[(Partition, i64, String)],
        reached: &BTreeMap<Partition, i64>,
    ) -> Result<bool, Next> {
        let mut out: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
        for (partition, offset, value) in read {
            let index = self.inputs.iter().position(|p| p == partition).unwrap_or(0);
            let target = output_for(&self.outputs, index, *offset).clone();
            out.entry(target)
                .or_default()
                .push(transformed(partition, *offset, value));
        }
        let targets: Vec<Partition> = out.keys().cloned().collect();
        let producer = *me;
        let now = self.now();
        self.ctx.history().trace(
            now,
            (
                "transform-round",
                self.id,
                producer,
                generation,
                read.len(),
                reached,
            ),
        );
        if !targets.is_empty() {
            fenced_or(self.producer.add_partitions(producer, &targets).await)?;
        }
        for (partition, values) in &out {
            let sequence = sequences.entry(partition.clone()).or_insert(0);
            let timestamp = seedlog_node::server::now_ms();
            let batch = transactional_batch(
                (producer.0, producer.1, *sequence),
                values.iter().map(|v| (None, v.as_bytes(), timestamp)),
            );
            *sequence = sequence.wrapping_add(values.len() as i32);
            match self.producer.produce(partition, batch, values).await {
                Ok(()) => {}
                Err(true) => return Err(Next::Restart),
                Err(false) => return Err(Next::Stop),
            }
        }
        if self.dice.chance(CRASH_CHANCE) {
            // Gone with the transaction open: the next incarnation's InitProducerId aborts it.
            let now = self.now();
            self.ctx.history().trace(now, ("transform-crash", self.id));
            sleep_ms(self.dice.between(500, 6_000)).await;
            return Err(Next::Restart);
        }
        if self.dice.chance(PAUSE_CHANCE) {
            // Past the session: the generation moves on and the commit below is refused.
            self.pause("before-offsets").await;
        }
        let previous = self.last_commit.take();
        fenced_or(self.add_offsets(producer).await)?;
        if let Some(rejoin) = self
            .commit_offsets(producer, coordinator, generation, reached)
            .await?
        {
            self.end(me, sequences, false).await;
            self.ended(TxnFate::Aborted);
            return Err(Next::Rejoin(rejoin));
        }
        if let Some(late) = previous.filter(|_| self.dice.chance(LATE_RESEND_CHANCE)) {
            // From an ended transaction: its producer epoch is older than that
            // transaction's marker, and it must not join this one.
            let now = self.now();
            self.ctx
                .history()
                .trace(now, ("transform-late-resend", self.id));
            let _ = self
                .member
                .client
                .call_broker(coordinator, ApiKey::TxnOffsetCommit, 3, late)
                .await;
        }
        if self.dice.chance(PAUSE_CHANCE) {
            // Past the session with the offsets committed in the transaction: the
            // partitions' next owners must wait for it to end before they resume.
            self.pause("before-end").await;
        }
        let commit = !self.dice.chance(ABORT_CHANCE);
        match self.end(me, sequences, commit).await {
            Answer::Ok(_) => {
                self.ended(if commit {
                    TxnFate::Committed
                } else {
                    TxnFate::Aborted
                });
                Ok(commit)
            }
            Answer::Stopped => {
                self.ended(TxnFate::Unknown);
                Err(Next::Stop)
            }
            Answer::Fenced | Answer::Failed => {
                self.ended(TxnFate::Aborted);
                Err(Next::Restart)
            }
        }
    }

    /// EndTxn v5, as a client of transactions V2 ends them: answered, the next
    /// transaction runs on the bumped epoch, its sequences from 0 again.
    async fn end(
        &mut self,
        me: &mut (i64, i16),
        sequences: &mut BTreeMap<Partition, i32>,
        commit: bool,
    ) -> Answer {
        let answer = self.producer.end(*me, commit, 5).await;
        if let Answer::Ok(response) = &answer {
            if let ResponseKind::EndTxn(r) = &**response {
                *me = (r.producer_id.0, r.producer_epoch);
                sequences.clear();
            }
        }
        answer
    }

    /// A pause past the member's session (a long GC, a stopped VM).
    async fn pause(&mut self, at: &'static str) {
        let now = self.now();
        self.ctx
            .history()
            .trace(now, ("transform-pause", self.id, at));
        sleep_ms(SESSION_MS + self.dice.between(500, 3_000)).await;
    }

    fn ended(&self, fate: TxnFate) {
        let now = self.now();
        self.ctx
            .history()
            .trace(now, ("transform-txn", self.id, fate));
        let index = match fate {
            TxnFate::Committed => 0,
            TxnFate::Aborted => 1,
            TxnFate::Unknown => 2,
        };
        self.ctx.history().counts.txns[index] += 1;
    }

    /// AddOffsetsToTxn: the group's offsets partition joins the transaction.
    async fn add_offsets(&mut self, me: (i64, i16)) -> Answer {
        let request = RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(self.producer.txn_id())
                .with_producer_id(ProducerId(me.0))
                .with_producer_epoch(me.1)
                .with_group_id(GroupId(StrBytes::from_static_str(TRANSFORM_GROUP))),
        );
        let code = |r: &ResponseKind| match r {
            ResponseKind::AddOffsetsToTxn(r) => r.error_code,
            _ => -1,
        };
        self.producer
            .ask(ApiKey::AddOffsetsToTxn, 3, request, code)
            .await
    }

    /// TxnOffsetCommit of `reached` as this generation's member: `Some` if the group
    /// coordinator refused it (the generation is over), `Err` if this incarnation is.
    async fn commit_offsets(
        &mut self,
        me: (i64, i16),
        mut coordinator: i32,
        generation: i32,
        reached: &BTreeMap<Partition, i64>,
    ) -> Result<Option<Rejoin>, Next> {
        let mut topics: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, p), offset) in reached {
            topics.entry(topic).or_default().push(
                TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1),
            );
        }
        let request = RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(self.producer.txn_id())
                .with_group_id(GroupId(StrBytes::from_static_str(TRANSFORM_GROUP)))
                .with_producer_id(ProducerId(me.0))
                .with_producer_epoch(me.1)
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(self.member.member_id.clone()))
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            TxnOffsetCommitRequestTopic::default()
                                .with_name(name(t))
                                .with_partitions(ps)
                        })
                        .collect(),
                ),
        );
        loop {
            if self.ctx.groups_stopped() {
                return Err(Next::Stop);
            }
            let response = self
                .member
                .client
                .call_broker(coordinator, ApiKey::TxnOffsetCommit, 3, request.clone())
                .await;
            let code = match response {
                Ok(ResponseKind::TxnOffsetCommit(r)) => r
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0),
                _ => ResponseError::CoordinatorNotAvailable.code(),
            };
            let retry = [
                ResponseError::NotCoordinator,
                ResponseError::CoordinatorNotAvailable,
                ResponseError::CoordinatorLoadInProgress,
                ResponseError::RequestTimedOut,
            ];
            match code {
                0 => {
                    self.last_commit = Some(request);
                    return Ok(None);
                }
                c if retry.iter().any(|e| e.code() == c) => {
                    sleep_ms(self.dice.between(50, 300)).await;
                    if let Ok(c) = self.member.client.coordinator(TRANSFORM_GROUP).await {
                        coordinator = c;
                    }
                }
                c if [
                    ResponseError::ProducerFenced,
                    ResponseError::InvalidProducerEpoch,
                ]
                .iter()
                .any(|e| e.code() == c) =>
                {
                    return Err(Next::Restart)
                }
                c => {
                    let now = self.now();
                    self.ctx
                        .history()
                        .trace(now, ("txn-offsets-refused", self.id, c));
                    return Ok(Some(rejoin_after(c).unwrap_or(Rejoin::Same)));
                }
            }
        }
    }
}

/// `Ok` if the coordinator took the request; else how the round ends.
fn fenced_or(answer: Answer) -> Result<(), Next> {
    match answer {
        Answer::Ok(_) => Ok(()),
        Answer::Stopped => Err(Next::Stop),
        Answer::Fenced | Answer::Failed => Err(Next::Restart),
    }
}

/// The transform group's committed offsets, once stable, of every input partition.
async fn group_offsets(
    client: &mut ClusterClient,
    inputs: &[Partition],
) -> Option<BTreeMap<Partition, i64>> {
    let coordinator = client.coordinator(TRANSFORM_GROUP).await.ok()?;
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in inputs {
        topics.entry(t).or_default().push(*p);
    }
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(TRANSFORM_GROUP)))
        .with_require_stable(true)
        .with_topics(Some(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(name(t))
                        .with_partition_indexes(ps)
                })
                .collect(),
        ));
    let response = client
        .call_broker(
            coordinator,
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(request),
        )
        .await;
    let Ok(ResponseKind::OffsetFetch(r)) = response else {
        return None;
    };
    if r.error_code != 0 {
        return None;
    }
    let mut offsets = BTreeMap::new();
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return None;
            }
            offsets.insert((t.name.to_string(), p.partition_index), p.committed_offset);
        }
    }
    Some(offsets)
}

/// After the heal, the transform catches up with its input within the deadline: the
/// group's committed offset of every input partition reaches that partition's end.
pub async fn transform_caught_up(ctx: &Ctx, deadline: Instant) -> Result<(), String> {
    let mut client = ctx.client(Duration::from_secs(2));
    let inputs = ctx.source_partitions();
    let mut behind = String::new();
    while Instant::now() < deadline {
        if let Some(offsets) = group_offsets(&mut client, &inputs).await {
            behind.clear();
            for partition in &inputs {
                let end = list_offset(&mut client, partition, -1).await.unwrap_or(-1);
                let at = offsets.get(partition).copied().unwrap_or(-1);
                if end < 0 || at < end {
                    behind = format!("{partition:?} committed {at} of {end}");
                    break;
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
        }
        sleep_ms(200).await;
    }
    Err(format!(
        "group {TRANSFORM_GROUP} did not catch up with its input: {behind}"
    ))
}

/// After the group phase: the group's committed offsets and the output read whole with
/// read_committed, for `transform-exactly-once`.
pub async fn final_transform_check(ctx: &Ctx, deadline: Instant) {
    let mut client = ctx.client(Duration::from_secs(2));
    let inputs = ctx.source_partitions();
    let offsets = loop {
        if let Some(offsets) = group_offsets(&mut client, &inputs).await {
            break offsets;
        }
        if Instant::now() >= deadline {
            let detail = format!("group {TRANSFORM_GROUP}: no stable committed offsets");
            ctx.history().txn_stuck(detail);
            return;
        }
        sleep_ms(100).await;
    };
    let mut output = BTreeMap::new();
    for partition in ctx.output_partitions() {
        let seen = read_committed_whole(ctx, &mut client, &partition, deadline).await;
        output.insert(partition, seen);
    }
    ctx.history().check_transform(&offsets, &output);
}
