//! Several brokers stepped in-process over in-memory disks, their peer frames delivered by
//! the harness (or dropped across a cut): shared by the cluster stories and the peer-frame
//! fuzzer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use seedlog_core::batch::complete_batches;
use seedlog_core::cluster::records::{DamagedEntry, PeerFrame};
use seedlog_core::config::BrokerConfig;
use seedlog_core::memdisk::MemDisk;
use seedlog_core::wire::{
    decode_response, encode_request, fetch_request, produce_request, record_batch, topic_name,
};
use seedlog_core::{Broker, CommittedEntry, Now, Observation, Output, Recovered};

pub const START: i64 = 1_700_000_000_000;

pub struct Node {
    pub broker: Broker,
    pub disk: MemDisk,
    pub config: BrokerConfig,
    pub inbox: VecDeque<Bytes>,
}

/// A cluster of brokers 1..=n, all voters.
pub struct Cluster {
    pub nodes: BTreeMap<i32, Node>,
    pub now: i64,
    /// Brokers whose peer traffic is dropped both ways.
    pub cut: BTreeSet<i32>,
    /// (broker, term) of every election won.
    pub elections: Vec<(i32, u64)>,
    /// Committed entries each broker reported, by (broker, partition).
    pub commits: BTreeMap<(i32, String), Vec<CommittedEntry>>,
    /// When set, every peer frame delivered: (from, to, frame).
    pub tap: Option<Vec<(i32, i32, Bytes)>>,
    /// Per broker, how many more appends sent to it get a bit flipped on the way.
    pub damage_appends_to: BTreeMap<i32, usize>,
    /// Entries damaged on the way, with the broker they were sent to.
    pub damaged_in_flight: Vec<(i32, DamagedEntry)>,
}

impl Cluster {
    pub fn new(n: i32, snapshot_entries: u64) -> Self {
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let mut config = BrokerConfig {
                broker_id: id,
                advertised_port: 9091 + id,
                ..BrokerConfig::default()
            };
            config.cluster.voters = (1..=n).collect();
            config.cluster.snapshot_entries = snapshot_entries;
            config.report_commits = true;
            let broker = Broker::new(
                config.clone(),
                Recovered::default(),
                id as u64,
                Now::at(START),
            )
            .expect("starts");
            let node = Node {
                broker,
                disk: MemDisk::new(),
                config,
                inbox: VecDeque::new(),
            };
            nodes.insert(id, node);
        }
        Cluster {
            nodes,
            now: START,
            cut: BTreeSet::new(),
            elections: Vec::new(),
            commits: BTreeMap::new(),
            tap: None,
            damage_appends_to: BTreeMap::new(),
            damaged_in_flight: Vec::new(),
        }
    }

    /// Starts broker `id` outside the voters: it must join the quorum as a learner.
    pub fn add_broker(&mut self, id: i32) {
        let voters = self
            .nodes
            .values()
            .next()
            .unwrap()
            .config
            .cluster
            .voters
            .clone();
        let mut config = BrokerConfig {
            broker_id: id,
            advertised_port: 9091 + id,
            ..BrokerConfig::default()
        };
        config.cluster.voters = voters;
        let broker = Broker::new(
            config.clone(),
            Recovered::default(),
            id as u64,
            Now::at(self.now),
        )
        .expect("starts");
        let node = Node {
            broker,
            disk: MemDisk::new(),
            config,
            inbox: VecDeque::new(),
        };
        self.nodes.insert(id, node);
    }

    /// Carries out every output until no broker has any left.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let mut frames = Vec::new();
            for (&id, node) in &mut self.nodes {
                while let Some(output) = node.broker.poll_output() {
                    match output {
                        Output::Send { frame, .. } => node.inbox.push_back(frame),
                        Output::Storage(op) => {
                            if let Some(c) = node.disk.execute(op) {
                                node.broker.handle_storage(Now::at(self.now), c);
                            }
                        }
                        Output::Peer { to, frame } => frames.push((id, to, frame.to_bytes())),
                        Output::Observed(Observation::Elected { term, .. }) => {
                            self.elections.push((id, term))
                        }
                        Output::Observed(Observation::Committed { group, entries, .. }) => {
                            self.commits.entry((id, group)).or_default().extend(entries)
                        }
                        Output::Close(_)
                        | Output::PeerAddress { .. }
                        | Output::Authenticated { .. }
                        | Output::Observed(_) => {}
                    }
                }
            }
            if frames.is_empty() {
                return;
            }
            for (from, to, mut frame) in frames {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                if let Some(left) = self.damage_appends_to.get_mut(&to).filter(|n| **n > 0) {
                    // The last bit of the first entry: deterministic, inside the CRC's cover.
                    let mut picks = [0, u64::MAX].into_iter();
                    let last = |n: u64| picks.next().unwrap_or(0).min(n.saturating_sub(1));
                    if let Some((damaged, entry)) = PeerFrame::damage_an_entry(&frame, last) {
                        *left -= 1;
                        frame = Bytes::from(damaged);
                        self.damaged_in_flight.push((to, entry));
                    }
                }
                if let Some(tap) = &mut self.tap {
                    tap.push((from, to, frame.clone()));
                }
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.broker.handle_peer(Now::at(self.now), from, frame);
                }
            }
        }
        panic!("the cluster did not settle");
    }

    /// Lets `ms` of time pass in 50 ms steps.
    pub fn advance(&mut self, ms: i64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 50;
            for node in self.nodes.values_mut() {
                if node.broker.poll_timeout().is_some_and(|t| t <= self.now) {
                    node.broker.handle_timeout(Now::at(self.now));
                }
            }
            self.settle();
        }
    }

    pub fn call(
        &mut self,
        id: i32,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> ResponseKind {
        let frame = encode_request(api, version, 1, &request)
            .unwrap()
            .slice(4..);
        self.nodes
            .get_mut(&id)
            .unwrap()
            .broker
            .handle_request(Now::at(self.now), 1, frame);
        for _ in 0..200 {
            self.settle();
            if let Some(frame) = self.nodes.get_mut(&id).unwrap().inbox.pop_front() {
                return decode_response(api, version, frame).unwrap().1;
            }
            self.advance(50);
        }
        panic!("broker {id} never answered {api:?}");
    }

    pub fn create_topic(&mut self, via: i32, name: &str, partitions: i32) -> i16 {
        self.create_replicated(via, name, partitions, 1)
    }

    pub fn create_replicated(&mut self, via: i32, name: &str, partitions: i32, rf: i16) -> i16 {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(rf)]);
        match self.call(
            via,
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(request),
        ) {
            ResponseKind::CreateTopics(r) => r.topics[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    pub fn delete_topic(&mut self, via: i32, name: &str) -> i16 {
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(5000)
            .with_topic_names(vec![topic_name(name)]);
        match self.call(
            via,
            ApiKey::DeleteTopics,
            5,
            RequestKind::DeleteTopics(request),
        ) {
            ResponseKind::DeleteTopics(r) => r.responses[0].error_code,
            other => panic!("{other:?}"),
        }
    }

    /// (topic names, broker ids, controller) as broker `id` reports them.
    pub fn metadata(&mut self, id: i32) -> (Vec<String>, Vec<i32>, i32) {
        let request = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
        let ResponseKind::Metadata(m) = self.call(id, ApiKey::Metadata, 12, request) else {
            panic!("not metadata");
        };
        let mut topics: Vec<String> = m
            .topics
            .iter()
            .filter_map(|t| t.name.as_ref())
            .map(|n| n.0.to_string())
            .collect();
        topics.sort();
        let brokers = m.brokers.iter().map(|b| b.node_id.0).collect();
        (topics, brokers, m.controller_id.0)
    }

    /// Replicas of each partition of `topic`, as broker `id` reports them.
    pub fn replicas(&mut self, id: i32, topic: &str) -> Vec<Vec<i32>> {
        self.topic_metadata(id, topic)
            .partitions
            .iter()
            .map(|p| p.replica_nodes.iter().map(|b| b.0).collect())
            .collect()
    }

    /// (leader, leader epoch) of partition 0 of `topic`, as broker `id` reports them.
    pub fn leader(&mut self, id: i32, topic: &str) -> (i32, i32) {
        let t = self.topic_metadata(id, topic);
        (t.partitions[0].leader_id.0, t.partitions[0].leader_epoch)
    }

    /// What broker `id`'s Metadata says of `topic` (which must be listed).
    pub fn topic_metadata(&mut self, id: i32, topic: &str) -> MetadataResponseTopic {
        let request = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
        let ResponseKind::Metadata(m) = self.call(id, ApiKey::Metadata, 12, request) else {
            panic!("not metadata");
        };
        m.topics
            .into_iter()
            .find(|t| t.name.as_ref().is_some_and(|n| *n.0 == *topic))
            .expect("topic listed")
    }

    /// Produces one batch of `n` records to partition 0 via broker `id`: (error, base offset).
    pub fn produce(&mut self, id: i32, topic: &str, acks: i16, n: usize) -> (i16, i64) {
        self.produce_sized(id, topic, acks, n, 2)
    }

    /// [`Self::produce`] with values of `size` bytes.
    pub fn produce_sized(
        &mut self,
        id: i32,
        topic: &str,
        acks: i16,
        n: usize,
        size: usize,
    ) -> (i16, i64) {
        let values: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + (i % 26) as u8; size]).collect();
        let batch = record_batch(values.iter().map(|v| (None, &v[..], self.now)));
        let request = produce_request(topic, 0, acks, 2000, batch);
        let ResponseKind::Produce(r) = self.call(id, ApiKey::Produce, 9, request) else {
            panic!("not produce");
        };
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    /// Data records of partition 0 readable via broker `id` from `offset`: (error, offsets).
    pub fn fetch(&mut self, id: i32, topic: &str, offset: i64) -> (i16, Vec<i64>) {
        let request = fetch_request([(topic, 0, offset)], 0, 1 << 20, 1 << 20);
        let ResponseKind::Fetch(r) = self.call(id, ApiKey::Fetch, 12, request) else {
            panic!("not fetch");
        };
        let p = &r.responses[0].partitions[0];
        let records = p.records.clone().unwrap_or_default();
        let offsets = complete_batches(&records)
            .filter(|b| !b.is_control())
            .flat_map(|b| b.base_offset()..b.next_offset())
            .collect();
        (p.error_code, offsets)
    }

    /// OffsetForLeaderEpoch for partition 0: (error, epoch, end offset).
    pub fn epoch_end(&mut self, id: i32, topic: &str, epoch: i32, current: i32) -> (i16, i32, i64) {
        use kafka_protocol::messages::offset_for_leader_epoch_request::{
            OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
        };
        let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(epoch)]),
        ]);
        let request = RequestKind::OffsetForLeaderEpoch(request);
        let ResponseKind::OffsetForLeaderEpoch(r) =
            self.call(id, ApiKey::OffsetForLeaderEpoch, 4, request)
        else {
            panic!("not offset-for-leader-epoch");
        };
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    }

    /// AlterPartitionReassignments of partition 0 via broker `id`: the partition's error.
    pub fn reassign(&mut self, id: i32, topic: &str, replicas: Option<Vec<i32>>) -> i16 {
        use kafka_protocol::messages::alter_partition_reassignments_request::{
            AlterPartitionReassignmentsRequest, ReassignablePartition, ReassignableTopic,
        };
        let replicas = replicas.map(|r| {
            r.into_iter()
                .map(kafka_protocol::messages::BrokerId)
                .collect()
        });
        let request = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(5000)
            .with_topics(vec![ReassignableTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(0)
                    .with_replicas(replicas)])]);
        let request = RequestKind::AlterPartitionReassignments(request);
        let ResponseKind::AlterPartitionReassignments(r) =
            self.call(id, ApiKey::AlterPartitionReassignments, 0, request)
        else {
            panic!("not alter-partition-reassignments");
        };
        r.responses[0].partitions[0].error_code
    }

    /// Partitions being moved, as broker `id` lists them: (topic, partition, adding).
    pub fn moving(&mut self, id: i32) -> Vec<(String, i32, Vec<i32>)> {
        let request = RequestKind::ListPartitionReassignments(Default::default());
        let ResponseKind::ListPartitionReassignments(r) =
            self.call(id, ApiKey::ListPartitionReassignments, 0, request)
        else {
            panic!("not list-partition-reassignments");
        };
        r.topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let adding = p.adding_replicas.iter().map(|b| b.0).collect();
                    (t.name.0.to_string(), p.partition_index, adding)
                })
            })
            .collect()
    }

    pub fn controller(&mut self) -> i32 {
        let (_, _, controller) = self.metadata(1);
        controller
    }

    /// Restarts broker `id` from its disk.
    pub fn restart(&mut self, id: i32) {
        let node = self.nodes.get_mut(&id).unwrap();
        let recovered = node
            .disk
            .recover(node.config.index_interval_bytes, 1 << 20)
            .expect("small state intact");
        node.broker = Broker::new(
            node.config.clone(),
            recovered,
            id as u64 + 100,
            Now::at(self.now),
        )
        .expect("restarts");
        node.inbox.clear();
        self.settle();
    }
}
