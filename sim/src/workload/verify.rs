//! The checks that close a run: recovery after the heal, and a full read of every log.

use super::*;

/// The topic the liveness probe creates and writes to.
const PROBE_TOPIC: &str = "liveness-probe";

/// After the faults heal: a topic can be created, a produce to it succeeds and reads back,
/// and every partition of the scenario's topics takes a write, within the deadline.
/// Returns the simulated milliseconds it took, or why it failed.
pub async fn liveness_probe(ctx: &Ctx, deadline: Instant) -> Result<u64, String> {
    let began = Instant::now();
    // A fresh topic: creating it is part of the proof, and no flipped bit can sit near it
    // (on a single copy, records near a corrupt batch may be unreadable for good).
    let partition = (PROBE_TOPIC.to_string(), 0);
    let mut client = ctx.client(Duration::from_secs(2));
    let create = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(
        vec![CreatableTopic::default()
            .with_name(name(PROBE_TOPIC))
            .with_num_partitions(1)
            .with_replication_factor(1)],
    ));
    loop {
        if Instant::now() >= deadline {
            return Err("the probe topic could not be created after the faults healed".into());
        }
        if let Ok(ResponseKind::CreateTopics(r)) = client
            .call_any(ApiKey::CreateTopics, 7, create.clone())
            .await
        {
            let created = r.topics.first().map(|t| t.error_code);
            if created == Some(0) || created == Some(ResponseError::TopicAlreadyExists.code()) {
                break;
            }
        }
        sleep_ms(100).await;
    }
    let mut attempt = 0;
    let (offset, value) = loop {
        if Instant::now() >= deadline {
            return Err("no produce succeeded after the faults healed".into());
        }
        attempt += 1;
        let value = format!("liveness-{attempt}");
        let batch = record_batch([(None, value.as_bytes(), seedlog_node::server::now_ms())]);
        let request = produce_request(&partition, -1, batch);
        if let Ok(ResponseKind::Produce(r)) =
            call_partition(&mut client, &partition, ApiKey::Produce, 9, request).await
        {
            let p = &r.responses[0].partition_responses[0];
            if is_stale_leader(p.error_code) {
                client.forget_leader(&partition.0, partition.1);
            }
            if p.error_code == 0 {
                ctx.history().acked(
                    ctx.now_ms(),
                    &partition,
                    p.base_offset,
                    std::slice::from_ref(&value),
                    true,
                );
                break (p.base_offset, value);
            }
        }
        sleep_ms(100).await;
    };
    // Every partition of the scenario's topics takes a write again, not only a fresh one.
    for partition in ctx.partitions() {
        let value = format!("liveness-{}-{}", partition.0, partition.1);
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{partition:?} took no write after the faults healed"
                ));
            }
            let batch = record_batch([(None, value.as_bytes(), seedlog_node::server::now_ms())]);
            let request = produce_request(&partition, -1, batch);
            if let Ok(ResponseKind::Produce(r)) =
                call_partition(&mut client, &partition, ApiKey::Produce, 9, request).await
            {
                let p = &r.responses[0].partition_responses[0];
                if p.error_code == 0 {
                    let values = std::slice::from_ref(&value);
                    ctx.history()
                        .acked(ctx.now_ms(), &partition, p.base_offset, values, true);
                    break;
                }
                if is_stale_leader(p.error_code) {
                    client.forget_leader(&partition.0, partition.1);
                }
            }
            sleep_ms(100).await;
        }
    }
    let positions = BTreeMap::from([(partition.clone(), offset)]);
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "the record acknowledged at offset {offset} could not be read back"
            ));
        }
        let request = fetch_request(&client, &positions, 100);
        if let Ok(response) =
            call_partition(&mut client, &partition, ApiKey::Fetch, 12, request).await
        {
            if let Some(Fetched::Records(records, _)) = parse_fetch(response).remove(&partition) {
                if records.iter().any(|(o, v)| *o == offset && *v == value) {
                    return Ok(began.elapsed().as_millis() as u64);
                }
            }
        }
        client.forget_leader(&partition.0, partition.1);
        sleep_ms(50).await;
    }
}

/// Reads every partition from its start to its high watermark and hands the result to the
/// final checks.
pub async fn final_read(ctx: &Ctx) -> Result<(), String> {
    let mut client = ctx.client(Duration::from_secs(2));
    for partition in ctx.partitions() {
        // A broker that came back at the heal may still be fenced for a moment: retry.
        let earliest = list_offset_retrying(&mut client, &partition, -2)
            .await
            .ok_or("ListOffsets(earliest) failed")?;
        let latest = list_offset_retrying(&mut client, &partition, -1)
            .await
            .ok_or("ListOffsets(latest) failed")?;
        let mut log = BTreeMap::new();
        let mut position = earliest;
        let mut stalls = 0;
        while position < latest {
            let positions = BTreeMap::from([(partition.clone(), position)]);
            let request = fetch_request(&client, &positions, 0);
            // No leader known for a moment (a damaged leader stepped aside, a broker just
            // back is still fenced) is a stall like any other, not the end of the read.
            let fetched = call_partition(&mut client, &partition, ApiKey::Fetch, 12, request)
                .await
                .ok()
                .and_then(|response| parse_fetch(response).remove(&partition));
            match fetched {
                Some(Fetched::Records(records, _)) if !records.is_empty() => {
                    let from = position;
                    for (offset, value) in records.into_iter().filter(|(o, _)| *o >= from) {
                        log.insert(offset, value);
                        position = offset + 1;
                    }
                }
                Some(Fetched::Error(code)) if code == ResponseError::KafkaStorageError.code() => {
                    if ctx
                        .history()
                        .damaged_from(&partition)
                        .is_some_and(|d| d <= position)
                    {
                        position += 1;
                    } else {
                        return Err(format!(
                            "{partition:?}: storage error at undamaged offset {position}"
                        ));
                    }
                }
                Some(Fetched::Corrupt(e)) => {
                    ctx.history()
                        .corrupt_read(ctx.now_ms(), u32::MAX, &partition, position, &e);
                    position += 1;
                }
                other => {
                    // A leader may be changing hands (a preferred-leader transfer, say):
                    // learn the leader afresh and allow it a few seconds.
                    client.forget_leader(&partition.0, partition.1);
                    stalls += 1;
                    if stalls > 250 {
                        let what = match other {
                            Some(Fetched::Error(code)) => format!("error {code}"),
                            _ => "nothing".to_string(),
                        };
                        return Err(format!(
                            "{partition:?}: final read stuck at {position} of {latest}: {what}"
                        ));
                    }
                    sleep_ms(20).await;
                }
            }
        }
        ctx.history().check_final(&partition, &log);
    }
    Ok(())
}

/// [`list_offset`], retried for up to ten simulated seconds.
async fn list_offset_retrying(
    client: &mut ClusterClient,
    partition: &Partition,
    timestamp: i64,
) -> Option<i64> {
    for _ in 0..100 {
        if let Some(offset) = list_offset(client, partition, timestamp).await {
            return Some(offset);
        }
        sleep_ms(100).await;
    }
    None
}
