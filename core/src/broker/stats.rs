//! What the broker tells its operators: a snapshot of its partitions, its place in the
//! metadata quorum and its groups' committed offsets, read when metrics are scraped (as
//! quinn exposes `ConnectionStats`). The node turns it into Prometheus families; nothing
//! here knows about Prometheus.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;

use super::Broker;
use crate::group::membership::Group;

/// One partition held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
    /// First offset held.
    pub log_start_offset: i64,
    /// Offset after the last record held.
    pub log_end_offset: i64,
    /// Offset after the last committed record.
    pub high_watermark: i64,
    /// Bytes of its segments.
    pub size_bytes: u64,
    /// Its replicas, by the metadata.
    pub replicas: usize,
    /// True if this broker leads it (a partition of one copy is led by its broker).
    pub leader: bool,
    /// Replicas in sync with this leader, itself included (leaders only).
    pub in_sync: Option<usize>,
}

/// A group's committed offset of one partition held here, and how far it is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// The consumer group.
    pub group: String,
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The committed offset.
    pub committed: i64,
    /// High watermark minus the committed offset (never below zero).
    pub lag: i64,
}

/// A broker as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerView {
    /// Broker id.
    pub id: i32,
    /// Where clients reach it.
    pub host: String,
    /// Its client port.
    pub port: i32,
    /// `broker.rack`, empty if none.
    pub rack: String,
    /// True while the controller has fenced it (it stopped heartbeating).
    pub fenced: bool,
}

/// One partition of a topic as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// Partition index.
    pub partition: i32,
    /// Its leader, if one is elected (a partition of one copy is led by its broker).
    pub leader: Option<i32>,
    /// Its replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
}

/// A topic as the metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    /// Topic name.
    pub name: String,
    /// Its partitions, by index.
    pub partitions: Vec<PartitionView>,
}

/// A member of a group coordinated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Member id.
    pub member_id: String,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Partitions the member's assignment gives it, by topic (consumer groups; empty if the
    /// assignment is another protocol's).
    pub assigned: Vec<(String, Vec<i32>)>,
}

/// A group coordinated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// The group id.
    pub group: String,
    /// Kafka's name of its state.
    pub state: &'static str,
    /// The protocol of this generation (the assignor), empty if none.
    pub protocol: String,
    /// The generation.
    pub generation: i32,
    /// Its members.
    pub members: Vec<MemberView>,
}

/// The snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Every partition held here, by topic and index.
    pub partitions: Vec<PartitionStats>,
    /// The active controller, if known.
    pub controller: Option<i32>,
    /// True if this broker is the active controller.
    pub is_controller: bool,
    /// Partitions with no elected leader, counted by the active controller only (0
    /// elsewhere, as Kafka's `OfflinePartitionsCount`).
    pub offline_partitions: usize,
    /// True once this broker knows the controller and has applied every metadata record it
    /// knows to be committed.
    pub ready: bool,
    /// Committed offsets of the groups this broker coordinates, for partitions it holds.
    pub group_lag: Vec<GroupLag>,
    /// This broker's id.
    pub broker_id: i32,
    /// Every registered broker, by id.
    pub brokers: Vec<BrokerView>,
    /// Every topic, by name.
    pub topics: Vec<TopicView>,
    /// The groups this broker coordinates, by id.
    pub groups: Vec<GroupView>,
}

impl Broker {
    /// What the operator's metrics show now; with `console`, also the cluster as the web
    /// console draws it (brokers, every topic, groups), which a scrape, a probe, does not
    /// need built.
    pub fn stats(&self, console: bool) -> BrokerStats {
        let mut partitions = Vec::new();
        for topic in self.topics.values() {
            for (&index, log) in &topic.logs {
                let replica = topic.raft.get(&index);
                let leader = replica.is_none_or(|r| r.is_leader());
                let replicas = topic.replicas.get(index as usize).map_or(1, Vec::len);
                let in_sync = match replica {
                    Some(r) if leader => Some(r.in_sync_replicas()),
                    Some(_) => None,
                    None => Some(1),
                };
                partitions.push(PartitionStats {
                    topic: topic.name.clone(),
                    partition: index,
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: log.log_end_offset(),
                    high_watermark: log.high_watermark(),
                    size_bytes: log.size_bytes(),
                    replicas,
                    leader,
                    in_sync,
                });
            }
        }
        let is_controller = self.controller.is_leader();
        let offline_partitions = if is_controller {
            let image = self.controller.image();
            image
                .topics
                .values()
                .flat_map(|t| {
                    let replicated = t.replicas.iter().enumerate().filter(|(_, r)| r.len() > 1);
                    replicated.map(|(p, _)| t.leaders.get(&(p as i32)).map(|(b, _)| *b))
                })
                .filter(|leader| !leader.is_some_and(|b| b >= 0))
                .count()
        } else {
            0
        };
        let high_watermark = |topic: &str, partition: i32| {
            let log = self.topics.get(topic)?.logs.get(&partition)?;
            Some(log.high_watermark())
        };
        let group_lag = self
            .coordinator
            .committed_offsets()
            .filter_map(|(group, (topic, partition), committed)| {
                let hw = high_watermark(topic, *partition)?;
                Some(GroupLag {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: committed.offset,
                    lag: (hw - committed.offset).max(0),
                })
            })
            .collect();
        let (brokers, topics, groups) = if console {
            self.console_views()
        } else {
            Default::default()
        };
        BrokerStats {
            partitions,
            controller: self.controller.leader(),
            is_controller,
            offline_partitions,
            ready: self.controller.caught_up(),
            group_lag,
            broker_id: self.config.broker_id,
            brokers,
            topics,
            groups,
        }
    }

    /// The registered brokers, every topic and the groups coordinated here.
    fn console_views(&self) -> (Vec<BrokerView>, Vec<TopicView>, Vec<GroupView>) {
        let image = self.controller.image();
        let brokers = (image.brokers.values())
            .map(|b| BrokerView {
                id: b.id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                fenced: b.fenced,
            })
            .collect();
        let topics = (image.topics.iter())
            .map(|(name, t)| TopicView {
                name: name.clone(),
                partitions: (t.replicas.iter().enumerate())
                    .map(|(p, replicas)| PartitionView {
                        partition: p as i32,
                        leader: match t.leaders.get(&(p as i32)) {
                            Some(&(leader, _)) => (leader >= 0).then_some(leader),
                            None if replicas.len() == 1 => replicas.first().copied(),
                            None => None,
                        },
                        replicas: replicas.clone(),
                    })
                    .collect(),
            })
            .collect();
        let groups = self.coordinator.groups().map(group_view).collect();
        (brokers, topics, groups)
    }
}

/// What the console shows of a group.
fn group_view(g: &Group) -> GroupView {
    let assigned = |bytes: &Bytes| -> Vec<(String, Vec<i32>)> {
        let mut buf = bytes.clone();
        if buf.len() < 2 {
            return Vec::new();
        }
        let version = buf.get_i16();
        match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
            Ok(a) => (a.assigned_partitions.into_iter())
                .map(|tp| (tp.topic.0.to_string(), tp.partitions))
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    let consumer = g.protocol_type.as_deref() == Some("consumer");
    GroupView {
        group: g.id.clone(),
        state: g.state.name(),
        protocol: g.protocol.clone().unwrap_or_default(),
        generation: g.generation,
        members: (g.members.iter())
            .map(|(id, m)| MemberView {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                assigned: if consumer {
                    assigned(&m.assignment)
                } else {
                    Vec::new()
                },
            })
            .collect(),
    }
}
