//! Consumers: read every partition in offset order and check each record.

use super::*;

/// Reads every partition in offset order, checking each record against the history.
pub async fn consumer(ctx: Ctx, id: u32) {
    let mut client = ctx.client(Duration::from_secs(3));
    let all = ctx.partitions();
    let mut positions: BTreeMap<Partition, i64> = all.iter().map(|p| (p.clone(), 0)).collect();
    while !ctx.stopped() {
        let by_leader = by_leader(&mut client, &positions).await;
        if by_leader.is_empty() {
            sleep_ms(100).await;
            continue;
        }
        // Long polls run one after another: share one poll's wait among them.
        let max_wait_ms = 100 / by_leader.len() as i32;
        let mut fetched_all = BTreeMap::new();
        for (leader, wanted) in by_leader {
            let request = fetch_request(&client, &wanted, max_wait_ms);
            match client.call_broker(leader, ApiKey::Fetch, 12, request).await {
                Ok(response) => fetched_all.extend(parse_fetch(response)),
                Err(_) => sleep_ms(100).await,
            }
        }
        for (partition, fetched) in fetched_all {
            let now = ctx.now_ms();
            let position = positions.get_mut(&partition).expect("asked for it");
            match fetched {
                Fetched::Records(records, hw) => {
                    let mut history = ctx.history();
                    history.high_watermark(now, id, &partition, hw);
                    let from = *position;
                    for (offset, value) in records.into_iter().filter(|(o, _)| *o >= from) {
                        history.read(now, id, &partition, *position, offset, &value);
                        *position = offset + 1;
                    }
                }
                Fetched::Corrupt(e) => {
                    ctx.history()
                        .corrupt_read(now, id, &partition, *position, &e);
                    *position += 1;
                }
                Fetched::Error(code) => {
                    if is_stale_leader(code) {
                        client.forget_leader(&partition.0, partition.1);
                    }
                    handle_fetch_error(&ctx, &mut client, id, &partition, position, code).await
                }
            }
        }
    }
}

async fn handle_fetch_error(
    ctx: &Ctx,
    client: &mut ClusterClient,
    id: u32,
    partition: &Partition,
    position: &mut i64,
    code: i16,
) {
    if code == ResponseError::KafkaStorageError.code() {
        // A damaged batch is refused, not served; step over it only where the disk was hurt.
        if ctx
            .history()
            .damaged_from(partition)
            .is_some_and(|d| d <= *position)
        {
            *position += 1;
        }
    } else if code == ResponseError::OffsetOutOfRange.code() {
        let earliest = list_offset(client, partition, -2).await;
        let latest = list_offset(client, partition, -1).await;
        if let (Some(earliest), Some(latest)) = (earliest, latest) {
            let now = ctx.now_ms();
            if *position < earliest {
                *position = earliest;
            } else if *position > latest {
                // We read up to here before: the committed log end moved back.
                ctx.history().high_watermark(now, id, partition, latest);
                *position = latest;
            }
        }
    }
}
