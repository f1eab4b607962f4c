//! Consumers: read every partition in offset order and check each record.

use super::*;

/// Reads every partition in offset order, checking each record against the history.
pub async fn consumer(ctx: Ctx, id: u32) {
    let mut client = Client::new(ctx.broker, Duration::from_secs(3));
    let mut positions: BTreeMap<Partition, i64> =
        ctx.partitions().into_iter().map(|p| (p, 0)).collect();
    while !ctx.stopped() {
        let response = match client
            .call(ApiKey::Fetch, 12, fetch_request(&positions, 100))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                sleep_ms(100).await;
                continue;
            }
        };
        for (partition, fetched) in parse_fetch(response) {
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
                    handle_fetch_error(&ctx, &mut client, id, &partition, position, code).await
                }
            }
        }
    }
}

async fn handle_fetch_error(
    ctx: &Ctx,
    client: &mut Client,
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
