//! Producers: batches of unique values to random partitions, with acks=all or acks=1.

use super::*;

/// Produces batches of unique values to random partitions until the workload stops.
pub async fn producer(ctx: Ctx, id: u32, acks: i16) {
    let mut dice = Dice::new(ctx.plan.seed, 1000 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(5));
    let partitions = ctx.source_partitions();
    let workload = &ctx.plan.scenario.workload;
    let mut seq = 0u64;
    while !ctx.stopped() {
        let partition = &partitions[dice.between(0, partitions.len() as u64 - 1) as usize];
        let count = dice.pick(workload.batch_records).round().max(1.0) as usize;
        let values: Vec<String> = (0..count)
            .map(|_| {
                seq += 1;
                format!("p{id}-{seq}")
            })
            .collect();
        let timestamp = seedlog_node::server::now_ms();
        let batch = record_batch(values.iter().map(|v| (None, v.as_bytes(), timestamp)));
        ctx.history().counts.produce_requests += 1;
        let request = produce_request(partition, acks, batch);
        let outcome = call_partition(&mut client, partition, ApiKey::Produce, 9, request).await;
        let now = ctx.now_ms();
        match outcome {
            Ok(ResponseKind::Produce(r)) => {
                let p = &r.responses[0].partition_responses[0];
                if p.error_code == 0 {
                    ctx.history()
                        .acked(now, partition, p.base_offset, &values, acks == -1);
                } else {
                    if is_stale_leader(p.error_code) {
                        client.forget_leader(&partition.0, partition.1);
                    }
                    ctx.history().refused(now, partition, count, p.error_code);
                }
            }
            Ok(_) => ctx.history().indeterminate(now, partition, count),
            Err(CallError::Connect(_)) => {
                ctx.history().refused(now, partition, count, -1);
                sleep_ms(dice.between(50, 300)).await;
            }
            Err(CallError::Lost(_)) => ctx.history().indeterminate(now, partition, count),
        }
        sleep_ms(dice.pick(workload.think_ms) as u64).await;
    }
}
