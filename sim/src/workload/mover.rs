//! A mover: now and then asks the cluster to move a replicated partition to other brokers
//! (AlterPartitionReassignments), as an operator rebalancing a cluster would, while faults
//! strike. The checkers of the other workloads judge the result: nothing acknowledged may
//! be lost, the replicas must agree, and every partition must take writes after the heal.

use kafka_protocol::messages::alter_partition_reassignments_request::{
    AlterPartitionReassignmentsRequest, ReassignablePartition, ReassignableTopic,
};

use super::*;

/// Moves a random replicated partition to a random set of brokers every few seconds.
pub async fn mover(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 4000 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(3));
    let brokers = ctx.plan.scenario.brokers as i32;
    let replicated: Vec<(Partition, u32)> = ctx
        .partitions()
        .into_iter()
        .map(|p| {
            let replication = ctx.plan.scenario.topics[&p.0].replication;
            (p, replication)
        })
        .filter(|(_, r)| *r >= 2 && (*r as i32) <= brokers)
        .collect();
    if replicated.is_empty() {
        return;
    }
    while !ctx.stopped() {
        sleep_ms(dice.between(2000, 6000)).await;
        let (partition, replication) =
            &replicated[dice.between(0, replicated.len() as u64 - 1) as usize];
        let mut pool: Vec<i32> = (1..=brokers).collect();
        let mut target = Vec::new();
        while target.len() < *replication as usize {
            let pick = dice.between(0, pool.len() as u64 - 1) as usize;
            target.push(pool.remove(pick));
        }
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(2000)
            .with_topics(vec![ReassignableTopic::default()
                .with_name(name(&partition.0))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(partition.1)
                    .with_replicas(Some(
                        target.iter().map(|&b| BrokerId(b)).collect(),
                    ))])]);
        let request = RequestKind::AlterPartitionReassignments(request);
        let answer = match client
            .call_any(ApiKey::AlterPartitionReassignments, 0, request)
            .await
        {
            Ok(ResponseKind::AlterPartitionReassignments(r)) => r
                .responses
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(-1, |p| p.error_code),
            _ => -1,
        };
        ctx.history()
            .trace(ctx.now_ms(), ("reassign", partition, &target, answer));
    }
}
