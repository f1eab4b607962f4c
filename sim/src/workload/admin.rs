//! An admin client: creates topics, checks they survive whatever the broker goes through,
//! and deletes them again. A topic whose creation was acknowledged must be there, with its
//! partitions, until it is deleted.

use super::*;

/// Creates, checks and deletes scratch topics until the workload stops.
pub async fn admin(ctx: Ctx, id: u32) {
    let mut dice = Dice::new(ctx.plan.seed, 3000 + u64::from(id));
    let mut client = ctx.client(Duration::from_secs(3));
    let mut serial = 0u32;
    while !ctx.stopped() {
        serial += 1;
        let topic = format!("scratch-{id}-{serial}");
        let partitions = dice.between(1, 4) as i32;
        let create = RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(name(&topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]));
        let created = match client.call_any(ApiKey::CreateTopics, 7, create).await {
            Ok(ResponseKind::CreateTopics(r)) => {
                r.topics.first().is_some_and(|t| t.error_code == 0)
            }
            _ => false,
        };
        ctx.history()
            .trace(ctx.now_ms(), ("create-topic", &topic, partitions, created));
        sleep_ms(dice.between(200, 2000)).await;
        // Brokers learn metadata at their own pace; the one that acknowledged the creation
        // had applied it, and must never forget it.
        if let (true, Some(acknowledged_by)) = (created, client.last_any()) {
            check_topic(&ctx, &mut client, acknowledged_by, &topic, partitions).await;
        }
        let delete = RequestKind::DeleteTopics(
            kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest::default()
                .with_topic_names(vec![name(&topic)]),
        );
        let _ = client.call_any(ApiKey::DeleteTopics, 5, delete).await;
        sleep_ms(dice.between(100, 1000)).await;
    }
}

/// Asks for the topic's metadata (without auto-creation) until an answer comes; an
/// acknowledged topic that is missing, or has the wrong partition count, is a violation.
async fn check_topic(
    ctx: &Ctx,
    client: &mut ClusterClient,
    broker: SocketAddr,
    topic: &str,
    partitions: i32,
) {
    use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
    let request = RequestKind::Metadata(
        MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name(topic)))
            ])),
    );
    for _ in 0..20 {
        if ctx.stopped() {
            return;
        }
        if let Ok(ResponseKind::Metadata(r)) = client
            .call_addr(broker, ApiKey::Metadata, 12, request.clone())
            .await
        {
            let found = r
                .topics
                .first()
                .filter(|t| t.error_code == 0)
                .map(|t| t.partitions.len() as i32);
            ctx.history()
                .topic_checked(ctx.now_ms(), topic, partitions, found);
            return;
        }
        sleep_ms(200).await;
    }
}
