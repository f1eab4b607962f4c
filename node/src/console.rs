//! The web console on the admin listener: one page (`/`, plain HTML and JavaScript, no build
//! step) that polls `/api/cluster`, the cluster as this broker sees it, and draws it.
//!
//! What one broker knows: the metadata (brokers, the active controller, every topic's
//! partitions with their leaders and replicas), the offsets of the partitions it holds, and
//! the groups it coordinates with their members and lag. On a cluster, each broker's console
//! shows its own partitions' offsets and its own groups; the metadata is the same on all.

use seedlog_core::BrokerStats;
use serde_json::{json, Value};

use crate::metrics::Totals;

/// The console page.
pub const PAGE: &str = include_str!("console.html");

/// The cluster as this broker sees it, with the running totals the page turns into rates.
pub fn cluster_json(stats: &BrokerStats, totals: Totals) -> String {
    let held = |topic: &str, partition: i32| {
        let p =
            (stats.partitions.iter()).find(|p| &*p.topic == topic && p.partition == partition)?;
        Some(json!({
            "log_start_offset": p.log_start_offset,
            "log_end_offset": p.log_end_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "in_sync": p.in_sync,
        }))
    };
    let topics: Vec<Value> = (stats.topics.iter())
        .map(|t| {
            let partitions: Vec<Value> = (t.partitions.iter())
                .map(|p| {
                    json!({
                        "partition": p.partition,
                        "leader": p.leader,
                        "replicas": p.replicas,
                        "here": held(&t.name, p.partition),
                    })
                })
                .collect();
            json!({ "name": t.name, "partitions": partitions })
        })
        .collect();
    let groups: Vec<Value> = (stats.groups.iter())
        .map(|g| {
            let members: Vec<Value> = (g.members.iter())
                .map(|m| {
                    let assigned: Vec<Value> = (m.assigned.iter())
                        .map(|(topic, partitions)| json!({ "topic": topic, "partitions": partitions }))
                        .collect();
                    json!({
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "client_host": m.client_host,
                        "assigned": assigned,
                    })
                })
                .collect();
            let lag: Vec<Value> = (stats.group_lag.iter())
                .filter(|l| l.group == g.group)
                .map(|l| {
                    json!({
                        "topic": l.topic,
                        "partition": l.partition,
                        "committed": l.committed,
                        "lag": l.lag,
                    })
                })
                .collect();
            json!({
                "group": g.group,
                "state": g.state,
                "protocol": g.protocol,
                "generation": g.generation,
                "members": members,
                "lag": lag,
            })
        })
        .collect();
    let brokers: Vec<Value> = (stats.brokers.iter())
        .map(|b| {
            json!({
                "id": b.id,
                "host": b.host,
                "port": b.port,
                "rack": b.rack,
                "fenced": b.fenced,
            })
        })
        .collect();
    json!({
        "broker_id": stats.broker_id,
        "controller": stats.controller,
        "ready": stats.ready,
        "offline_partitions": stats.offline_partitions,
        "brokers": brokers,
        "topics": topics,
        "groups": groups,
        "totals": {
            "requests": totals.requests,
            "bytes_in": totals.bytes_in,
            "bytes_out": totals.bytes_out,
            "connections": totals.connections,
        },
    })
    .to_string()
}
