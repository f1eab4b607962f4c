//! `seedlog groups`: list consumer groups, describe one (members, assignments, committed
//! offsets and lag), and reset a group's offsets. Works against any Kafka-compatible broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerProtocolAssignment, GroupId, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use seedlog_core::wire::topic_name;

use crate::client::ClusterClient;

/// `seedlog groups ...`
#[derive(Subcommand, Debug)]
pub enum GroupsCommand {
    /// List the consumer groups of the cluster, with their states.
    List(Target),
    /// A group's state, members and, per partition, committed offset, log end and lag.
    Describe {
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
    },
    /// Move a group's committed offsets (the group must have no active members). Prints the
    /// plan; commits it only with --execute.
    ResetOffsets {
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
        /// The topic whose partitions to reset.
        #[arg(long)]
        topic: String,
        /// Where to: `earliest`, `latest`, or an offset.
        #[arg(long, value_name = "earliest|latest|OFFSET")]
        to: String,
        /// Commit the new offsets (without it, only show them).
        #[arg(long)]
        execute: bool,
    },
}

/// Which cluster.
#[derive(Args, Debug)]
pub struct Target {
    /// A broker to start from.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
}

impl Target {
    /// A client that knows the cluster's brokers.
    pub async fn client(&self) -> anyhow::Result<ClusterClient> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.bootstrap_server)
            .await
            .with_context(|| format!("cannot resolve {}", self.bootstrap_server))?
            .collect();
        let mut client = ClusterClient::new(addrs, Duration::from_secs(10));
        client
            .refresh()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {e:?}", self.bootstrap_server))?;
        Ok(client)
    }
}

/// Runs one `seedlog groups` command, printing to stdout.
pub async fn run(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List(target) => list(&mut target.client().await?).await,
        GroupsCommand::Describe { target, group } => {
            describe(&mut target.client().await?, &group).await
        }
        GroupsCommand::ResetOffsets {
            target,
            group,
            topic,
            to,
            execute,
        } => reset(&mut target.client().await?, &group, &topic, &to, execute).await,
    }
}

async fn list(client: &mut ClusterClient) -> anyhow::Result<()> {
    let mut groups = BTreeMap::new();
    for id in client.broker_ids() {
        let request = RequestKind::ListGroups(Default::default());
        let response = client
            .call_broker(id, ApiKey::ListGroups, 4, request)
            .await
            .map_err(|e| anyhow!("broker {id}: {e:?}"))?;
        let ResponseKind::ListGroups(r) = response else {
            bail!("broker {id}: not a ListGroups answer");
        };
        if let Some(e) = ResponseError::try_from_code(r.error_code) {
            eprintln!("broker {id}: {e} (its list may be incomplete)");
        }
        for g in r.groups {
            groups.insert(
                g.group_id.to_string(),
                (g.group_state.to_string(), g.protocol_type.to_string()),
            );
        }
    }
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    for (group, (state, protocol_type)) in groups {
        println!("{group:<40} {state:<20} {protocol_type}");
    }
    Ok(())
}

async fn describe(client: &mut ClusterClient, group: &str) -> anyhow::Result<()> {
    let request = RequestKind::DescribeGroups(
        DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_string(group.into()))]),
    );
    let ResponseKind::DescribeGroups(described) =
        call_coordinator(client, group, ApiKey::DescribeGroups, 5, request).await?
    else {
        bail!("not a DescribeGroups answer");
    };
    let g = described
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("empty DescribeGroups answer"))?;
    if let Some(e) = ResponseError::try_from_code(g.error_code) {
        bail!("{group}: {e}");
    }
    println!(
        "group {group}: {} ({}), {} member(s)",
        g.group_state,
        [g.protocol_type.as_str(), g.protocol_data.as_str()]
            .join(" ")
            .trim(),
        g.members.len()
    );
    let owners = owners(&g);
    for m in &g.members {
        let instance = m
            .group_instance_id
            .as_deref()
            .map(|i| format!(" instance {i}"))
            .unwrap_or_default();
        println!(
            "  member {} (client {} at {}{instance})",
            m.member_id, m.client_id, m.client_host
        );
    }
    let committed = committed(client, group).await?;
    let mut partitions: Vec<(String, i32)> = committed.keys().cloned().collect();
    partitions.extend(owners.keys().cloned());
    partitions.sort();
    partitions.dedup();
    let ends = log_offsets(client, &partitions, -1).await;
    println!(
        "{:<30} {:>9} {:>12} {:>12} {:>10}  MEMBER",
        "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    for tp in &partitions {
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        let c = committed.get(tp).copied().filter(|o| *o >= 0);
        let end = ends.get(tp).copied();
        let lag = end.map(|e| e - c.unwrap_or(0).min(e));
        let owner = owners.get(tp).map_or("-", String::as_str);
        println!(
            "{:<30} {:>9} {:>12} {:>12} {:>10}  {owner}",
            tp.0,
            tp.1,
            show(c),
            show(end),
            show(lag)
        );
    }
    Ok(())
}

/// Who owns each partition, from the members' consumer-protocol assignments.
fn owners(g: &DescribedGroup) -> BTreeMap<(String, i32), String> {
    let mut owners = BTreeMap::new();
    if g.protocol_type.as_str() != "consumer" {
        return owners;
    }
    for m in &g.members {
        let mut bytes = m.member_assignment.clone();
        if bytes.len() < 2 {
            continue;
        }
        let version = bytes.get_i16();
        let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3))
        else {
            continue;
        };
        for t in assignment.assigned_partitions {
            for p in t.partitions {
                owners.insert((t.topic.to_string(), p), m.member_id.to_string());
            }
        }
    }
    owners
}

/// The group's committed offsets, by partition.
async fn committed(
    client: &mut ClusterClient,
    group: &str,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let request = RequestKind::OffsetFetch(
        OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_topics(None),
    );
    let ResponseKind::OffsetFetch(r) =
        call_coordinator(client, group, ApiKey::OffsetFetch, 7, request).await?
    else {
        bail!("not an OffsetFetch answer");
    };
    if let Some(e) = ResponseError::try_from_code(r.error_code) {
        bail!("{group}: {e}");
    }
    Ok(r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.name.to_string(), p.partition_index), p.committed_offset))
        })
        .collect())
}

/// Each partition's earliest (-2) or latest (-1) offset, from its leader; partitions that
/// cannot be asked are left out.
async fn log_offsets(
    client: &mut ClusterClient,
    partitions: &[(String, i32)],
    timestamp: i64,
) -> BTreeMap<(String, i32), i64> {
    let mut found = BTreeMap::new();
    for (topic, p) in partitions {
        let request = RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(*p)
                        .with_timestamp(timestamp)])]),
        );
        if let Ok(ResponseKind::ListOffsets(r)) = client
            .call_leader(topic, *p, ApiKey::ListOffsets, 6, request)
            .await
        {
            if let Some(answer) = r.topics.first().and_then(|t| t.partitions.first()) {
                if answer.error_code == 0 {
                    found.insert((topic.clone(), *p), answer.offset);
                }
            }
        }
    }
    found
}

async fn reset(
    client: &mut ClusterClient,
    group: &str,
    topic: &str,
    to: &str,
    execute: bool,
) -> anyhow::Result<()> {
    let count = client
        .partition_count(topic)
        .ok_or_else(|| anyhow!("unknown topic {topic}"))?;
    let partitions: Vec<(String, i32)> = (0..count).map(|p| (topic.to_string(), p)).collect();
    let targets: BTreeMap<(String, i32), i64> = match to {
        "earliest" => log_offsets(client, &partitions, -2).await,
        "latest" => log_offsets(client, &partitions, -1).await,
        n => {
            let offset: i64 = n
                .parse()
                .with_context(|| format!("--to {n}: not earliest, latest or an offset"))?;
            partitions.iter().map(|tp| (tp.clone(), offset)).collect()
        }
    };
    if targets.len() != partitions.len() {
        bail!("could not learn the offsets of every partition of {topic}; retry");
    }
    let before = committed(client, group).await?;
    println!(
        "{:<30} {:>9} {:>12} {:>12}",
        "TOPIC", "PARTITION", "COMMITTED", "NEW"
    );
    for (tp, new) in &targets {
        let old = before
            .get(tp)
            .copied()
            .filter(|o| *o >= 0)
            .map_or("-".to_string(), |o| o.to_string());
        println!("{:<30} {:>9} {:>12} {:>12}", tp.0, tp.1, old, new);
    }
    if !execute {
        println!("(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let request = RequestKind::OffsetCommit(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    targets
                        .iter()
                        .map(|((_, p), offset)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*offset)
                        })
                        .collect(),
                )]),
    );
    let ResponseKind::OffsetCommit(r) =
        call_coordinator(client, group, ApiKey::OffsetCommit, 8, request).await?
    else {
        bail!("not an OffsetCommit answer");
    };
    for p in r.topics.iter().flat_map(|t| &t.partitions) {
        match ResponseError::try_from_code(p.error_code) {
            None => {}
            Some(ResponseError::UnknownMemberId) => {
                bail!("{group} has active members: stop its consumers first")
            }
            Some(e) => bail!("partition {}: {e}", p.partition_index),
        }
    }
    println!("committed");
    Ok(())
}

/// Sends a request to `group`'s coordinator, finding it first and retrying while the
/// coordinator moves or loads.
async fn call_coordinator(
    client: &mut ClusterClient,
    group: &str,
    api: ApiKey,
    version: i16,
    request: RequestKind,
) -> anyhow::Result<ResponseKind> {
    let mut last = String::new();
    for _ in 0..20 {
        match client.coordinator(group).await {
            Ok(id) => match client.call_broker(id, api, version, request.clone()).await {
                Ok(response) if !retriable(&response) => return Ok(response),
                Ok(_) => last = "the coordinator is moving or loading".into(),
                Err(e) => last = format!("{e:?}"),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("no answer from the coordinator of {group}: {last}")
}

/// True if a group answer says to ask again (the coordinator moved or is loading).
fn retriable(response: &ResponseKind) -> bool {
    let code = match response {
        ResponseKind::DescribeGroups(r) => r.groups.first().map_or(0, |g| g.error_code),
        ResponseKind::OffsetFetch(r) => r.error_code,
        ResponseKind::OffsetCommit(r) => r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(0, |p| p.error_code),
        _ => 0,
    };
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::CoordinatorNotAvailable
        )
    )
}
