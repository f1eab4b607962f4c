//! The cluster metadata as applied from the metadata log: brokers, topics, replicas.
//!
//! Every broker applies the same records in the same order, so every broker's image is the
//! same at the same log index. Applying never fails as a whole: a record that no longer
//! makes sense (a topic created twice by two racing proposals) reports a per-topic error to
//! its proposer and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::canary::{is_planted, Canary};

use super::records::{
    AclBinding, BrokerConfigChange, BrokerRegistration, Change, ImageRecord, MetadataRecord,
    PartitionAddition, PartitionLeader, PartitionReplicaSet, Replicas, ScramCredential,
    TopicConfigChange, TopicCreation, TopicRef,
};

/// The most producer ids one record hands out.
const MAX_PRODUCER_ID_BLOCK: i64 = 1 << 20;

/// One topic in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    /// KIP-516 id.
    pub id: [u8; 16],
    /// Kafka-named config overrides.
    pub configs: BTreeMap<String, String>,
    /// Replicas of each partition, by index; the first is the preferred leader.
    pub replicas: Vec<Vec<i32>>,
    /// Elected leaders of replicated partitions: partition -> (broker, leader epoch).
    pub leaders: BTreeMap<i32, (i32, i32)>,
    /// Reassignments under way: partition -> the replicas it is moving to.
    pub targets: BTreeMap<i32, Vec<i32>>,
    /// Replicas each partition was created with: the first membership of its Raft group,
    /// which a replica that joins later starts from before replaying the changes.
    pub origins: Vec<Vec<i32>>,
}

/// Why a change did not apply to one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A topic of that name exists.
    AlreadyExists,
    /// No topic of that name and id.
    Unknown,
}

/// The outcome of applying one record, for the proposer's client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing a client waits for.
    Quiet,
    /// Per topic: created, or why not.
    Topics(Vec<(String, Result<(), Refusal>)>),
    /// Producer ids `first..first + count` are the proposer's to hand out.
    ProducerIds {
        /// First id of the block.
        first: i64,
        /// Ids in the block.
        count: i64,
    },
}

/// Brokers and topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Registered brokers by id.
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicImage>,
    /// The first producer id not yet handed out to a broker.
    pub next_producer_id: i64,
    /// SCRAM credentials by (user, mechanism code).
    pub scram: BTreeMap<(String, i32), ScramCredential>,
    /// ACLs, in one order on every broker.
    pub acls: BTreeSet<AclBinding>,
    /// Dynamic broker configs by scope: a broker id, or `CLUSTER_DEFAULT`.
    pub broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
}

impl MetadataImage {
    /// Applies one record.
    pub fn apply(&mut self, record: &MetadataRecord) -> Applied {
        match &record.change {
            None => Applied::Quiet,
            Some(Change::RegisterBroker(b)) => {
                self.brokers.insert(b.id, b.clone());
                Applied::Quiet
            }
            Some(Change::FenceBroker(f)) => {
                if let Some(b) = self.brokers.get_mut(&f.id) {
                    b.fenced = f.fenced;
                }
                Applied::Quiet
            }
            Some(Change::CreateTopics(c)) => Applied::Topics(
                c.topics
                    .iter()
                    .map(|t| (t.name.clone(), self.create_topic(t)))
                    .collect(),
            ),
            Some(Change::DeleteTopics(d)) => Applied::Topics(
                d.topics
                    .iter()
                    .map(|t| (t.name.clone(), self.delete_topic(t)))
                    .collect(),
            ),
            Some(Change::PartitionLeader(l)) => {
                let topic = l.topic.as_ref().and_then(|t| {
                    self.topics
                        .get_mut(&t.name)
                        .filter(|topic| topic.id[..] == *t.id)
                });
                if let Some(topic) = topic {
                    let known = topic.leaders.get(&l.partition).map_or(-1, |(_, e)| *e);
                    if l.epoch >= known {
                        topic.leaders.insert(l.partition, (l.leader, l.epoch));
                    }
                }
                Applied::Quiet
            }
            Some(Change::Reassign(r)) => {
                for p in &r.partitions {
                    if let Some((topic, index)) = self.partition_mut(p) {
                        // A move back to the current replicas (a cancel) stays a target
                        // until the leader has undone whatever the move had begun.
                        let idle = !topic.targets.contains_key(&p.partition);
                        if !(idle && topic.replicas[index] == p.replicas) {
                            topic.targets.insert(p.partition, p.replicas.clone());
                        }
                    }
                }
                Applied::Quiet
            }
            Some(Change::Reassigned(p)) => {
                if let Some((topic, index)) = self.partition_mut(p) {
                    // Only the reassignment under way finishes: a late record of an older
                    // one (since cancelled or replaced) changes nothing.
                    if topic.targets.get(&p.partition) == Some(&p.replicas) {
                        topic.targets.remove(&p.partition);
                        topic.replicas[index] = p.replicas.clone();
                    }
                }
                Applied::Quiet
            }
            Some(Change::AllocateProducerIds(block)) => {
                let first = self.next_producer_id;
                let count = block.count.clamp(1, MAX_PRODUCER_ID_BLOCK);
                self.next_producer_id = first.saturating_add(count);
                Applied::ProducerIds { first, count }
            }
            Some(Change::AlterTopicConfigs(a)) => {
                for b in &a.brokers {
                    match b.configs.is_empty() {
                        true => self.broker_configs.remove(&b.broker),
                        false => self.broker_configs.insert(b.broker, b.configs.clone()),
                    };
                }
                Applied::Topics(
                    a.topics
                        .iter()
                        .map(|c| {
                            let name = c.topic.as_ref().map_or(String::new(), |t| t.name.clone());
                            (name, self.alter_configs(c))
                        })
                        .collect(),
                )
            }
            Some(Change::AlterScram(c)) => {
                for d in &c.deletions {
                    self.scram.remove(&(d.user.clone(), d.mechanism));
                }
                for u in &c.upserts {
                    self.scram.insert((u.user.clone(), u.mechanism), u.clone());
                }
                Applied::Quiet
            }
            Some(Change::CreateAcls(a)) => {
                self.acls.extend(a.acls.iter().cloned());
                Applied::Quiet
            }
            Some(Change::DeleteAcls(a)) => {
                for acl in &a.acls {
                    self.acls.remove(acl);
                }
                Applied::Quiet
            }
            Some(Change::AddPartitions(a)) => Applied::Topics(
                a.topics
                    .iter()
                    .map(|t| {
                        let name = t.topic.as_ref().map_or(String::new(), |t| t.name.clone());
                        (name, self.add_partitions(t))
                    })
                    .collect(),
            ),
        }
    }

    /// Registered brokers that are not fenced, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// The topic named `name` if its id is `id`.
    pub fn topic(&self, name: &str, id: &[u8]) -> Option<&TopicImage> {
        self.topics.get(name).filter(|t| t.id[..] == *id)
    }

    /// The topic and partition index a record names, if both exist.
    fn partition_mut(&mut self, p: &PartitionReplicaSet) -> Option<(&mut TopicImage, usize)> {
        let t = p.topic.as_ref()?;
        let topic = self
            .topics
            .get_mut(&t.name)
            .filter(|topic| topic.id[..] == *t.id)?;
        let index = usize::try_from(p.partition)
            .ok()
            .filter(|i| *i < topic.replicas.len())?;
        Some((topic, index))
    }

    fn create_topic(&mut self, t: &TopicCreation) -> Result<(), Refusal> {
        if self.topics.contains_key(&t.name) {
            return Err(Refusal::AlreadyExists);
        }
        let mut id = [0u8; 16];
        let n = t.id.len().min(16);
        id[..n].copy_from_slice(&t.id[..n]);
        let replicas = t.partitions.iter().map(|r| r.brokers.clone()).collect();
        let origins = t
            .partitions
            .iter()
            .map(|r| match r.origin.is_empty() {
                true => r.brokers.clone(),
                false => r.origin.clone(),
            })
            .collect();
        self.topics.insert(
            t.name.clone(),
            TopicImage {
                id,
                configs: t.configs.clone(),
                replicas,
                leaders: t
                    .leaders
                    .iter()
                    .map(|l| (l.partition, (l.leader, l.epoch)))
                    .collect(),
                targets: t
                    .targets
                    .iter()
                    .map(|p| (p.partition, p.replicas.clone()))
                    .collect(),
                origins,
            },
        );
        Ok(())
    }

    fn delete_topic(&mut self, t: &TopicRef) -> Result<(), Refusal> {
        self.topic(&t.name, &t.id).ok_or(Refusal::Unknown)?;
        self.topics.remove(&t.name);
        Ok(())
    }

    fn add_partitions(&mut self, a: &PartitionAddition) -> Result<(), Refusal> {
        let t = a.topic.as_ref().ok_or(Refusal::Unknown)?;
        let topic = self
            .topics
            .get_mut(&t.name)
            .filter(|topic| topic.id[..] == *t.id)
            .ok_or(Refusal::Unknown)?;
        topic
            .replicas
            .extend(a.partitions.iter().map(|r| r.brokers.clone()));
        topic
            .origins
            .extend(a.partitions.iter().map(|r| r.brokers.clone()));
        Ok(())
    }

    fn alter_configs(&mut self, c: &TopicConfigChange) -> Result<(), Refusal> {
        let t = c.topic.as_ref().ok_or(Refusal::Unknown)?;
        let topic = self
            .topics
            .get_mut(&t.name)
            .filter(|topic| topic.id[..] == *t.id)
            .ok_or(Refusal::Unknown)?;
        topic.configs = c.configs.clone();
        Ok(())
    }

    /// The image as snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        ImageRecord {
            brokers: self.brokers.values().cloned().collect(),
            topics: self
                .topics
                .iter()
                .map(|(name, t)| TopicCreation {
                    name: name.clone(),
                    id: t.id.to_vec(),
                    configs: t.configs.clone(),
                    partitions: t
                        .replicas
                        .iter()
                        .zip(&t.origins)
                        .map(|(r, o)| Replicas {
                            brokers: r.clone(),
                            origin: if o == r { Vec::new() } else { o.clone() },
                        })
                        .collect(),
                    leaders: t
                        .leaders
                        .iter()
                        .map(|(&partition, &(leader, epoch))| PartitionLeader {
                            topic: None,
                            partition,
                            leader,
                            epoch,
                        })
                        .collect(),
                    targets: t
                        .targets
                        .iter()
                        .map(|(&partition, replicas)| PartitionReplicaSet {
                            topic: None,
                            partition,
                            replicas: replicas.clone(),
                        })
                        .collect(),
                })
                .collect(),
            next_producer_id: match is_planted(Canary::ForgetProducerIdsInSnapshot) {
                true => 0,
                false => self.next_producer_id,
            },
            scram: self.scram.values().cloned().collect(),
            acls: self.acls.iter().cloned().collect(),
            broker_configs: (self.broker_configs.iter())
                .map(|(&broker, configs)| BrokerConfigChange {
                    broker,
                    configs: configs.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// An image from snapshot bytes (empty bytes: the empty image).
    pub fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let record = ImageRecord::decode(bytes)?;
        let mut image = MetadataImage {
            next_producer_id: record.next_producer_id,
            ..MetadataImage::default()
        };
        for b in record.brokers {
            image.brokers.insert(b.id, b);
        }
        for t in &record.topics {
            let _ = image.create_topic(t);
        }
        for c in record.scram {
            image.scram.insert((c.user.clone(), c.mechanism), c);
        }
        image.acls = record.acls.into_iter().collect();
        image.broker_configs = (record.broker_configs.into_iter())
            .map(|b| (b.broker, b.configs))
            .collect();
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::records::{TopicConfigChanges, TopicCreations, TopicDeletions};

    fn create(name: &str, id: u8, partitions: usize) -> MetadataRecord {
        MetadataRecord {
            origin: None,
            change: Some(Change::CreateTopics(TopicCreations {
                topics: vec![TopicCreation {
                    name: name.into(),
                    id: vec![id; 16],
                    configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
                    partitions: vec![
                        Replicas {
                            brokers: vec![1, 2],
                            origin: Vec::new(),
                        };
                        partitions
                    ],
                    leaders: Vec::new(),
                    targets: Vec::new(),
                }],
            })),
        }
    }

    #[test]
    fn a_second_create_of_one_name_is_refused_and_changes_nothing() {
        let mut image = MetadataImage::default();
        assert_eq!(
            image.apply(&create("t", 1, 2)),
            Applied::Topics(vec![("t".into(), Ok(()))])
        );
        assert_eq!(
            image.apply(&create("t", 2, 5)),
            Applied::Topics(vec![("t".into(), Err(Refusal::AlreadyExists))])
        );
        assert_eq!(image.topics["t"].replicas.len(), 2);
        assert_eq!(image.topics["t"].id, [1; 16]);
    }

    #[test]
    fn deletes_name_the_id_so_a_recreated_topic_survives_a_stale_delete() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 1, 1));
        let delete = |id| MetadataRecord {
            origin: None,
            change: Some(Change::DeleteTopics(TopicDeletions {
                topics: vec![TopicRef {
                    name: "t".into(),
                    id: vec![id; 16],
                }],
            })),
        };
        assert_eq!(
            image.apply(&delete(9)),
            Applied::Topics(vec![("t".into(), Err(Refusal::Unknown))])
        );
        assert!(image.topics.contains_key("t"));
        image.apply(&delete(1));
        assert!(image.topics.is_empty());
    }

    #[test]
    fn an_image_survives_its_snapshot_encoding() {
        let mut image = MetadataImage::default();
        image.apply(&create("a", 1, 3));
        image.apply(&MetadataRecord {
            origin: None,
            change: Some(Change::RegisterBroker(BrokerRegistration {
                id: 2,
                host: "h".into(),
                port: 9093,
                rack: "r1".into(),
                fenced: true,
                peer_address: "h:9093".into(),
                endpoints: vec![super::super::records::Endpoint {
                    name: "SASL_SSL".into(),
                    host: "h".into(),
                    port: 9094,
                }],
            })),
        });
        let leader = |epoch| MetadataRecord {
            origin: None,
            change: Some(Change::PartitionLeader(PartitionLeader {
                topic: Some(TopicRef {
                    name: "a".into(),
                    id: vec![1; 16],
                }),
                partition: 1,
                leader: epoch,
                epoch,
            })),
        };
        image.apply(&leader(4));
        image.apply(&leader(3)); // stale: an older epoch never replaces a newer one
        assert_eq!(image.topics["a"].leaders[&1], (4, 4));
        let set = |replicas: Vec<i32>| PartitionReplicaSet {
            topic: Some(TopicRef {
                name: "a".into(),
                id: vec![1; 16],
            }),
            partition: 2,
            replicas,
        };
        let reassign = |replicas| MetadataRecord {
            origin: None,
            change: Some(Change::Reassign(super::super::records::Reassignments {
                partitions: vec![set(replicas)],
            })),
        };
        let reassigned = |replicas| MetadataRecord {
            origin: None,
            change: Some(Change::Reassigned(set(replicas))),
        };
        image.apply(&reassign(vec![2, 3]));
        image.apply(&reassigned(vec![3, 4])); // not the target under way: ignored
        assert_eq!(image.topics["a"].replicas[2], [1, 2]);
        assert_eq!(image.topics["a"].targets[&2], [2, 3]);
        assert_eq!(MetadataImage::decode(&image.encode()).unwrap(), image);
        let ids = MetadataRecord {
            origin: None,
            change: Some(Change::AllocateProducerIds(
                super::super::records::ProducerIdBlock {
                    broker: 2,
                    count: 1000,
                    nonce: 7,
                },
            )),
        };
        assert_eq!(
            image.apply(&ids),
            Applied::ProducerIds {
                first: 0,
                count: 1000
            }
        );
        assert_eq!(
            image.apply(&ids),
            Applied::ProducerIds {
                first: 1000,
                count: 1000
            }
        );
        image.apply(&reassigned(vec![2, 3]));
        assert_eq!(image.topics["a"].replicas[2], [2, 3]);
        assert!(image.topics["a"].targets.is_empty());
        let scope = |broker: i32, configs: &[(&str, &str)]| BrokerConfigChange {
            broker,
            configs: (configs.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let dynamic = MetadataRecord {
            origin: None,
            change: Some(Change::AlterTopicConfigs(TopicConfigChanges {
                topics: Vec::new(),
                brokers: vec![
                    scope(-1, &[("log.retention.ms", "1000")]),
                    scope(2, &[("log.roll.ms", "5000")]),
                ],
            })),
        };
        image.apply(&dynamic);
        assert_eq!(image.broker_configs.len(), 2);
        assert_eq!(MetadataImage::decode(&image.encode()).unwrap(), image);
        assert_eq!(
            MetadataImage::decode(&[]).unwrap(),
            MetadataImage::default()
        );
    }

    #[test]
    fn credentials_and_acls_apply_and_survive_a_snapshot() {
        use super::super::records::{AclSet, ScramChanges};
        let record = |change| MetadataRecord {
            origin: None,
            change: Some(change),
        };
        let credential = |user: &str, mechanism| ScramCredential {
            user: user.into(),
            mechanism,
            salt: vec![1, 2],
            iterations: 4096,
            stored_key: vec![3],
            server_key: vec![4],
        };
        let acl = |name: &str| AclBinding {
            resource_type: 2,
            resource_name: name.into(),
            pattern_type: 3,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: 3,
            permission: 3,
        };
        let mut image = MetadataImage::default();
        image.apply(&record(Change::AlterScram(ScramChanges {
            upserts: vec![
                credential("alice", 1),
                credential("alice", 2),
                credential("bob", 2),
            ],
            deletions: vec![],
        })));
        image.apply(&record(Change::AlterScram(ScramChanges {
            upserts: vec![],
            deletions: vec![credential("alice", 1)],
        })));
        let users: Vec<_> = image.scram.keys().cloned().collect();
        assert_eq!(users, [("alice".to_string(), 2), ("bob".to_string(), 2)]);
        image.apply(&record(Change::CreateAcls(AclSet {
            acls: vec![acl("a"), acl("b"), acl("a")],
        })));
        image.apply(&record(Change::DeleteAcls(AclSet {
            acls: vec![acl("b")],
        })));
        assert_eq!(image.acls.iter().cloned().collect::<Vec<_>>(), [acl("a")]);
        assert_eq!(MetadataImage::decode(&image.encode()).unwrap(), image);
    }
}
