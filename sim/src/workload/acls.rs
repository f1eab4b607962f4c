//! ACLs that change while clients write: one client flips a DENY of Write on the topic
//! `guarded` for everyone through the metadata quorum (CreateAcls, DeleteAcls), another
//! writes to `guarded` all along. Each broker reports the ACLs it enforces as it applies
//! them, and the history judges every acknowledged write by them (`acls-enforced`).

use super::*;
use kafka_protocol::messages::create_acls_request::{AclCreation, CreateAclsRequest};
use kafka_protocol::messages::delete_acls_request::{DeleteAclsFilter, DeleteAclsRequest};

use crate::history::GUARDED;

/// The principal every simulated client is (the brokers listen PLAINTEXT).
const EVERYONE: &str = "User:*";

fn deny_writes() -> AclCreation {
    AclCreation::default()
        .with_resource_type(2)
        .with_resource_name(StrBytes::from_static_str(GUARDED))
        .with_resource_pattern_type(3)
        .with_principal(StrBytes::from_static_str(EVERYONE))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(4)
        .with_permission_type(2)
}

/// Creates and deletes the DENY until the workload stops, then deletes it for good.
pub async fn acl_flipper(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 7000 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(3));
    while !ctx.stopped() {
        let create = CreateAclsRequest::default().with_creations(vec![deny_writes()]);
        let created = client
            .call_any(ApiKey::CreateAcls, 3, RequestKind::CreateAcls(create))
            .await;
        let ok = matches!(&created, Ok(ResponseKind::CreateAcls(r))
            if r.results.iter().all(|r| r.error_code == 0));
        ctx.history()
            .trace(ctx.now_ms(), ("deny-writes", GUARDED, ok));
        sleep_ms(dice.between(200, 1500)).await;
        allow_writes(&ctx, &mut client).await;
        sleep_ms(dice.between(200, 1500)).await;
    }
    // The faults have healed: writes are allowed again for good, so the liveness phase
    // can expect every partition to take one.
    for _ in 0..50 {
        if allow_writes(&ctx, &mut client).await {
            return;
        }
        sleep_ms(200).await;
    }
}

/// Deletes the DENY; true once the quorum has taken the deletion.
async fn allow_writes(ctx: &Ctx, client: &mut ClusterClient) -> bool {
    let filter = DeleteAclsFilter::default()
        .with_resource_type_filter(2)
        .with_resource_name_filter(Some(StrBytes::from_static_str(GUARDED)))
        .with_pattern_type_filter(3)
        .with_principal_filter(Some(StrBytes::from_static_str(EVERYONE)))
        .with_host_filter(Some(StrBytes::from_static_str("*")))
        .with_operation(4)
        .with_permission_type(2);
    let delete = DeleteAclsRequest::default().with_filters(vec![filter]);
    let deleted = client
        .call_any(ApiKey::DeleteAcls, 3, RequestKind::DeleteAcls(delete))
        .await;
    let ok = matches!(&deleted, Ok(ResponseKind::DeleteAcls(r))
        if r.filter_results.iter().all(|r| r.error_code == 0));
    ctx.history()
        .trace(ctx.now_ms(), ("allow-writes", GUARDED, ok));
    ok
}

/// Writes to `guarded` (acks=all) until the workload stops, to whichever broker leads it,
/// and reports each answer with the broker and the time it was in flight.
pub async fn guarded_producer(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 7100 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(5));
    let partition: Partition = (GUARDED.to_string(), 0);
    let mut seq = 0u64;
    while !ctx.stopped() {
        let leader = client.leaders(std::slice::from_ref(&partition)).await;
        let Some(&broker) = leader.get(&partition) else {
            sleep_ms(100).await;
            continue;
        };
        seq += 1;
        let values = vec![format!("g{id}-{seq}")];
        // A real timestamp: records stamped 1970 are past retention at once.
        let timestamp = seedlog_node::server::now_ms();
        let batch = record_batch(values.iter().map(|v| (None, v.as_bytes(), timestamp)));
        let request = produce_request(&partition, -1, batch);
        let sent = ctx.now_ms();
        let outcome = client
            .call_broker(broker, ApiKey::Produce, 9, request)
            .await;
        let now = ctx.now_ms();
        match outcome {
            Ok(ResponseKind::Produce(r)) => {
                let p = &r.responses[0].partition_responses[0];
                ctx.history().guarded_write(sent, now, broker, p.error_code);
                if p.error_code == 0 {
                    ctx.history()
                        .acked(now, &partition, p.base_offset, &values, true);
                } else if is_stale_leader(p.error_code) {
                    client.forget_leader(&partition.0, partition.1);
                }
            }
            Ok(_) | Err(CallError::Lost(_)) => ctx.history().indeterminate(now, &partition, 1),
            Err(CallError::Connect(_)) => sleep_ms(dice.between(50, 300)).await,
        }
        sleep_ms(dice.between(5, 50)).await;
    }
}
