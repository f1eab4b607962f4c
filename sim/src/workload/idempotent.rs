//! Idempotent producers, as librdkafka and the Java client run them: a producer id from
//! InitProducerId, a sequence per partition, one batch in flight, and every batch retried
//! (the same bytes, the same sequence) until the cluster answers it, through leader kills,
//! partitions and lost packets. The `idempotent-once` checker then finds each record in the
//! log once, in order.

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::ProducerId;
use seedlog_core::wire::idempotent_batch;

use super::*;
use crate::history::IDEMPOTENT_PREFIX;

/// Errors after which the producer sends the same batch again: the cluster is moving, or
/// did not answer in time.
fn is_retriable(code: i16) -> bool {
    is_stale_leader(code)
        || [
            ResponseError::NotEnoughReplicas,
            ResponseError::NotEnoughReplicasAfterAppend,
            ResponseError::RequestTimedOut,
            ResponseError::CorruptMessage,
            ResponseError::KafkaStorageError,
        ]
        .iter()
        .any(|e| e.code() == code)
}

/// A producer id from any broker, retried until one answers or the workload stops.
async fn init_producer_id(ctx: &Ctx, client: &mut ClusterClient, dice: &mut Dice) -> Option<i64> {
    let request = RequestKind::InitProducerId(
        InitProducerIdRequest::default()
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_timeout_ms(60_000),
    );
    while !ctx.stopped() {
        if let Ok(ResponseKind::InitProducerId(r)) = client
            .call_any(ApiKey::InitProducerId, 4, request.clone())
            .await
        {
            if r.error_code == 0 {
                ctx.history().producer_id(ctx.now_ms(), r.producer_id.0);
                return Some(r.producer_id.0);
            }
        }
        sleep_ms(dice.between(50, 300)).await;
    }
    None
}

/// Produces numbered records with idempotence until the workload stops.
pub async fn idempotent_producer(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 3000 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(5));
    let partitions = ctx.source_partitions();
    let workload = &ctx.plan.scenario.workload;
    let mut n = 0u64;
    'producer: while let Some(producer_id) = init_producer_id(&ctx, &mut client, &mut dice).await {
        let mut sequences: BTreeMap<Partition, i32> = BTreeMap::new();
        // Now and then the producer starts over with a fresh id, as a restarted client does.
        let mut batches_left = dice.between(20, 100);
        while !ctx.stopped() && batches_left > 0 {
            batches_left -= 1;
            let partition = &partitions[dice.between(0, partitions.len() as u64 - 1) as usize];
            let count = dice.pick(workload.batch_records).round().max(1.0) as usize;
            let values: Vec<String> = (0..count)
                .map(|_| {
                    n += 1;
                    format!("{IDEMPOTENT_PREFIX}{id}-{n}")
                })
                .collect();
            let sequence = sequences.entry(partition.clone()).or_insert(0);
            let timestamp = seedlog_node::server::now_ms();
            let batch = idempotent_batch(
                Some((producer_id, 0, *sequence)),
                values.iter().map(|v| (None, v.as_bytes(), timestamp)),
            );
            // Send until answered, as clients do: a retry carries the same sequence, so
            // the cluster must recognise it if an earlier try was written.
            loop {
                if ctx.stopped() {
                    ctx.history().indeterminate(ctx.now_ms(), partition, count);
                    break 'producer;
                }
                ctx.history().counts.produce_requests += 1;
                let request = produce_request(partition, -1, batch.clone());
                let outcome =
                    call_partition(&mut client, partition, ApiKey::Produce, 9, request).await;
                let now = ctx.now_ms();
                // No answer (lost, refused connection, timeout): maybe written; retry.
                if let Ok(ResponseKind::Produce(r)) = outcome {
                    let p = &r.responses[0].partition_responses[0];
                    let code = p.error_code;
                    if code == 0 {
                        ctx.history()
                            .acked(now, partition, p.base_offset, &values, true);
                        break;
                    }
                    if code == ResponseError::DuplicateSequenceNumber.code() {
                        // Written before, its offset no longer known: done, unplaced.
                        ctx.history().indeterminate(now, partition, count);
                        break;
                    }
                    if !is_retriable(code) {
                        // The broker lost track of this producer: report, and start over
                        // with a fresh producer id as a client would.
                        ctx.history().sequence_refused(now, partition, code);
                        ctx.history().indeterminate(now, partition, count);
                        continue 'producer;
                    }
                    if is_stale_leader(code) {
                        client.forget_leader(&partition.0, partition.1);
                    }
                }
                ctx.history().trace(now, ("retry", partition, *sequence));
                sleep_ms(dice.between(20, 200)).await;
            }
            *sequence = sequence.wrapping_add(count as i32);
            sleep_ms(dice.pick(workload.think_ms) as u64).await;
        }
    }
}
