//! The metadata log's records and the peer wire format, as prost messages.
//!
//! No `.proto` file: the structs are the schema. Tags are never reused; a field that goes
//! away keeps its tag retired.

use bytes::Bytes;

use crate::batch::BatchView;
use std::collections::BTreeMap;

pub use crate::security::acl::AclBinding;
pub use crate::security::scram::ScramCredential;

/// One entry of the metadata log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRecord {
    /// Who proposed it and which of its requests waits for it; echoed so the proposer can
    /// answer its client when the record is applied.
    #[prost(message, optional, tag = "1")]
    pub origin: Option<Origin>,
    /// What changes.
    #[prost(oneof = "Change", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
    pub change: Option<Change>,
}

/// The proposer of a record.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Origin {
    /// Broker id of the proposer.
    #[prost(int32, tag = "1")]
    pub broker: i32,
    /// The proposer's token for the waiting request.
    #[prost(uint64, tag = "2")]
    pub token: u64,
}

/// The kinds of metadata change.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    /// A broker announces (or re-announces) where clients reach it.
    #[prost(message, tag = "2")]
    RegisterBroker(BrokerRegistration),
    /// New topics.
    #[prost(message, tag = "3")]
    CreateTopics(TopicCreations),
    /// Topics removed.
    #[prost(message, tag = "4")]
    DeleteTopics(TopicDeletions),
    /// Partitions added to existing topics.
    #[prost(message, tag = "5")]
    AddPartitions(PartitionAdditions),
    /// A broker stopped answering (fenced) or came back (unfenced).
    #[prost(message, tag = "6")]
    FenceBroker(BrokerFence),
    /// A partition's replicas elected a leader.
    #[prost(message, tag = "7")]
    PartitionLeader(PartitionLeader),
    /// Partitions' replicas are to move (AlterPartitionReassignments); a target equal to the
    /// current replicas cancels.
    #[prost(message, tag = "8")]
    Reassign(Reassignments),
    /// A partition's leader finished moving it: its replicas are now the target.
    #[prost(message, tag = "9")]
    Reassigned(PartitionReplicaSet),
    /// A broker takes the next block of producer ids (KIP-98): the block is wherever the
    /// ids handed out so far end when the record applies, so no id is given twice, across
    /// controller failovers too.
    #[prost(message, tag = "10")]
    AllocateProducerIds(ProducerIdBlock),
    /// Topics' config overrides, each replaced whole (IncrementalAlterConfigs and
    /// AlterConfigs, checked before they are proposed).
    #[prost(message, tag = "11")]
    AlterTopicConfigs(TopicConfigChanges),
    /// SCRAM credentials set or removed (AlterUserScramCredentials).
    #[prost(message, tag = "12")]
    AlterScram(ScramChanges),
    /// ACLs added (CreateAcls).
    #[prost(message, tag = "13")]
    CreateAcls(AclSet),
    /// ACLs removed (DeleteAcls, its filters resolved to bindings when proposed).
    #[prost(message, tag = "14")]
    DeleteAcls(AclSet),
}

/// SCRAM credentials to set and to remove.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScramChanges {
    /// Each replaces the user's credential of its mechanism.
    #[prost(message, repeated, tag = "1")]
    pub upserts: Vec<ScramCredential>,
    /// `(user, mechanism)` pairs to remove; salt and keys are left empty.
    #[prost(message, repeated, tag = "2")]
    pub deletions: Vec<ScramCredential>,
}

/// A set of ACL bindings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AclSet {
    /// The bindings.
    #[prost(message, repeated, tag = "1")]
    pub acls: Vec<AclBinding>,
}

/// New config overrides of topics, and new dynamic configs of brokers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicConfigChanges {
    /// One per topic.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicConfigChange>,
    /// One per broker scope.
    #[prost(message, repeated, tag = "2")]
    pub brokers: Vec<BrokerConfigChange>,
}

/// The dynamic broker configs of one scope (Kafka's broker names), replaced whole.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BrokerConfigChange {
    /// The broker they apply to; [`CLUSTER_DEFAULT`]: every broker.
    #[prost(int32, tag = "1")]
    pub broker: i32,
    /// Every dynamic config of that scope from now on.
    #[prost(btree_map = "string, string", tag = "2")]
    pub configs: BTreeMap<String, String>,
}

/// The scope of dynamic broker configs that apply to every broker (a BROKER resource with
/// an empty name); a broker's own configs override them.
pub const CLUSTER_DEFAULT: i32 = -1;

/// One topic's new config overrides.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicConfigChange {
    /// The topic.
    #[prost(message, optional, tag = "1")]
    pub topic: Option<TopicRef>,
    /// Every override it has from now on.
    #[prost(btree_map = "string, string", tag = "2")]
    pub configs: BTreeMap<String, String>,
}

/// A block of producer ids for one broker.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ProducerIdBlock {
    /// The broker that hands them out.
    #[prost(int32, tag = "1")]
    pub broker: i32,
    /// How many ids.
    #[prost(int64, tag = "2")]
    pub count: i64,
    /// Names the request of one run of the broker: a restarted broker replays its old
    /// blocks from the log and must know they are not the one it waits for.
    #[prost(uint64, tag = "3")]
    pub nonce: u64,
}

/// Partitions to move.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reassignments {
    /// One per partition.
    #[prost(message, repeated, tag = "1")]
    pub partitions: Vec<PartitionReplicaSet>,
}

/// A partition and a set of replicas for it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionReplicaSet {
    /// The topic (unset inside a snapshot's topic).
    #[prost(message, optional, tag = "1")]
    pub topic: Option<TopicRef>,
    /// Partition index.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// Broker ids; the first is the preferred leader.
    #[prost(int32, repeated, tag = "3")]
    pub replicas: Vec<i32>,
}

/// Who leads a partition, and in which leader epoch (its Raft term). Proposed by the new
/// leader so every broker can answer Metadata, replicas of the partition or not.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PartitionLeader {
    /// The topic (unset inside a snapshot's topic).
    #[prost(message, optional, tag = "1")]
    pub topic: Option<TopicRef>,
    /// Partition index.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// Leader broker id.
    #[prost(int32, tag = "3")]
    pub leader: i32,
    /// Leader epoch.
    #[prost(int32, tag = "4")]
    pub epoch: i32,
}

/// The controller's verdict on a broker's liveness.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BrokerFence {
    /// Broker id.
    #[prost(int32, tag = "1")]
    pub id: i32,
    /// True: clients must not be sent to it, and nothing new is placed on it.
    #[prost(bool, tag = "2")]
    pub fenced: bool,
}

/// A broker and its client listener.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BrokerRegistration {
    /// `node.id`.
    #[prost(int32, tag = "1")]
    pub id: i32,
    /// Advertised host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Advertised port.
    #[prost(int32, tag = "3")]
    pub port: i32,
    /// `broker.rack`, empty if none.
    #[prost(string, tag = "4")]
    pub rack: String,
    /// Set by the controller while the broker does not answer; a new registration clears it.
    #[prost(bool, tag = "5")]
    pub fenced: bool,
    /// Where other brokers reach its peer listener (`host:port`), empty if not given.
    #[prost(string, tag = "6")]
    pub peer_address: String,
    /// Its advertised listeners by name; `host` and `port` are the first of them.
    #[prost(message, repeated, tag = "7")]
    pub endpoints: Vec<Endpoint>,
}

/// One advertised listener of a broker.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Endpoint {
    /// Listener name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Advertised host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Advertised port.
    #[prost(int32, tag = "3")]
    pub port: i32,
}

impl BrokerRegistration {
    /// Where clients of listener `name` reach this broker: its endpoint of that name, else
    /// its first (brokers registered before listeners had names have only that).
    pub fn address(&self, listener: &str) -> (&str, i32) {
        self.endpoints
            .iter()
            .find(|e| e.name == listener)
            .map_or((&self.host, self.port), |e| (&e.host, e.port))
    }
}

/// Topics to create, all or nothing per topic.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicCreations {
    /// One per topic.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicCreation>,
}

/// One topic's definition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicCreation {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// KIP-516 id (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    /// Kafka-named config overrides.
    #[prost(btree_map = "string, string", tag = "3")]
    pub configs: BTreeMap<String, String>,
    /// Replicas of each partition, by partition index.
    #[prost(message, repeated, tag = "4")]
    pub partitions: Vec<Replicas>,
    /// Known partition leaders (in snapshots; empty at creation).
    #[prost(message, repeated, tag = "5")]
    pub leaders: Vec<PartitionLeader>,
    /// Reassignments under way: each partition's target (in snapshots).
    #[prost(message, repeated, tag = "6")]
    pub targets: Vec<PartitionReplicaSet>,
}

/// The brokers holding one partition; the first is the preferred leader.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Replicas {
    /// Broker ids.
    #[prost(int32, repeated, tag = "1")]
    pub brokers: Vec<i32>,
    /// The replicas the partition was created with, when moves have changed them (in
    /// snapshots; empty means `brokers`): its Raft group's first membership.
    #[prost(int32, repeated, tag = "2")]
    pub origin: Vec<i32>,
}

/// Topics to delete, by name and id (a recreated topic of the same name is left alone).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicDeletions {
    /// One per topic.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicRef>,
}

/// A topic named together with its id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicRef {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// KIP-516 id.
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
}

/// Partitions appended to topics.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionAdditions {
    /// One per topic.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<PartitionAddition>,
}

/// Partitions appended to a topic.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionAddition {
    /// The topic.
    #[prost(message, optional, tag = "1")]
    pub topic: Option<TopicRef>,
    /// Replicas of each new partition, in index order after the existing ones.
    #[prost(message, repeated, tag = "2")]
    pub partitions: Vec<Replicas>,
}

/// The whole applied metadata, as stored in a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageRecord {
    /// Registered brokers.
    #[prost(message, repeated, tag = "1")]
    pub brokers: Vec<BrokerRegistration>,
    /// Topics.
    #[prost(message, repeated, tag = "2")]
    pub topics: Vec<TopicCreation>,
    /// The first producer id not yet handed out.
    #[prost(int64, tag = "3")]
    pub next_producer_id: i64,
    /// SCRAM credentials.
    #[prost(message, repeated, tag = "4")]
    pub scram: Vec<ScramCredential>,
    /// ACLs.
    #[prost(message, repeated, tag = "5")]
    pub acls: Vec<AclBinding>,
    /// Dynamic broker configs, by scope.
    #[prost(message, repeated, tag = "6")]
    pub broker_configs: Vec<BrokerConfigChange>,
}

/// What one broker sends another in one frame: Raft messages of any groups.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerFrame {
    /// Sender's broker id.
    #[prost(int32, tag = "1")]
    pub from: i32,
    /// The messages, in order.
    #[prost(message, repeated, tag = "2")]
    pub messages: Vec<GroupMessage>,
    /// A broker outside the quorum asking to join it (as a learner of the metadata log).
    #[prost(message, optional, tag = "3")]
    pub join: Option<BrokerRegistration>,
    /// Transaction markers a coordinator asks this broker to write, as partition leader.
    #[prost(message, repeated, tag = "4")]
    pub markers: Vec<MarkerRequest>,
    /// Outcomes of markers this broker asked the sender to write.
    #[prost(message, repeated, tag = "5")]
    pub marker_results: Vec<MarkerResult>,
}

/// An encoded [`PeerFrame`] in pieces, to be sent one after another: the record batches it
/// carries are the Raft entries' own bytes, shared rather than copied (a frame to each
/// follower had copied every batch it carried once more).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerBytes {
    chunks: Vec<Bytes>,
    /// The pieces (by position, ascending) that are [`checked_batch`]es.
    batches: Vec<usize>,
}

impl PeerBytes {
    /// The pieces, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The frame's checksum in peer protocol version 3: `crc`, a running CRC32C, carried
    /// over the frame but for what the own CRC of each [`checked_batch`] covers (that CRC
    /// itself is read: the checksum binds the batch to it). The leader reads each such batch
    /// once, at produce, not once more per follower; each follower reads it once, as it
    /// checks it against that CRC. See [`received_checksum`] for the other end.
    pub fn checksum(&self, crc: u32) -> u32 {
        let mut batches = self.batches.iter().peekable();
        let mut crc = crc;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let read = match batches.next_if_eq(&&i) {
                Some(_) => BatchView::split_first(chunk)
                    .expect("checked when the frame was laid out")
                    .0
                    .outside_crc(),
                None => &chunk[..],
            };
            crc = crc32c::crc32c_append(crc, read);
        }
        crc
    }

    /// Length of the whole frame.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// True if the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame in one piece (a copy, unless it is in one already).
    pub fn to_bytes(&self) -> Bytes {
        match &self.chunks[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            chunks => Bytes::from(chunks.concat()),
        }
    }
}

impl From<Bytes> for PeerBytes {
    fn from(frame: Bytes) -> Self {
        PeerBytes {
            chunks: vec![frame],
            batches: Vec::new(),
        }
    }
}

/// Entry data at least this long travels as a piece of its own; shorter data is copied into
/// the frame, where a piece would cost more than the copy.
const SHARED_DATA_MIN: usize = 1024;

/// True if `entry` of `message` to a partition's group is a record batch that its receiver
/// checks by the batch's own CRC before it takes it (a partition replica checks every entry
/// of an append: `arrived_intact`), so the frame's checksum need not read what that CRC
/// covers. Only long entries (pieces of their own), so the leader sees one at a glance.
fn checked_batch(
    group: &GroupMessage,
    message: &raft::eraftpb::Message,
    entry: &raft::eraftpb::Entry,
) -> bool {
    use raft::eraftpb::{EntryType, MessageType};
    group.partition.is_some()
        && message.get_msg_type() == MessageType::MsgAppend
        && entry.get_entry_type() == EntryType::EntryNormal
        && entry.data.len() >= SHARED_DATA_MIN
        && BatchView::split_first(&entry.data).is_ok_and(|(_, rest)| rest.is_empty())
}

/// [`PeerBytes::checksum`] of a frame as it arrived: `crc` carried over `frame` but for
/// what the own CRC of each [`checked_batch`] the frame decodes to covers. A frame that does
/// not decode is read whole (the broker refuses it whatever its checksum).
pub fn received_checksum(crc: u32, frame: &Bytes) -> u32 {
    use prost::Message as _;
    let mut crc = crc;
    let mut read = 0;
    if let Ok(decoded) = PeerFrame::decode(frame.clone()) {
        for group in &decoded.messages {
            let Some(message) = &group.message else {
                continue;
            };
            for entry in &message.entries {
                if !checked_batch(group, message, entry) {
                    continue;
                }
                // Decoding from `Bytes` slices the frame rather than copying; a copy
                // (never seen) is read as it is, and the checksum then tells.
                let at = (entry.data.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
                if at < read || at.saturating_add(entry.data.len()) > frame.len() {
                    continue;
                }
                let (view, _) = BatchView::split_first(&entry.data).expect("checked_batch");
                crc = crc32c::crc32c_append(crc, &frame[read..at]);
                crc = crc32c::crc32c_append(crc, view.outside_crc());
                read = at + entry.data.len();
            }
        }
    }
    crc32c::crc32c_append(crc, &frame[read..])
}

impl PeerFrame {
    /// The frame encoded in pieces: each long entry's data is a piece of its own, the
    /// entry's bytes themselves. Decodes as [`prost::Message::encode_to_vec`]'s encoding
    /// does, though its fields are in another order (protobuf takes fields in any order,
    /// and keeps repeated ones in theirs): a group message's Raft message comes after the
    /// group's other fields, a message's entries after its other fields, an entry's data
    /// after its other fields, each behind the length its whole encoding has.
    pub fn encode_shared(mut self) -> PeerBytes {
        use prost::encoding::{encode_key, encode_varint, WireType};
        use prost::Message as _;
        /// Field numbers, as `PeerFrame`, `GroupMessage` and raft-rs's `eraftpb.proto` give them.
        const MESSAGES: u32 = 2;
        const MESSAGE: u32 = 3;
        const ENTRIES: u32 = 7;
        const DATA: u32 = 4;
        let messages = std::mem::take(&mut self.messages);
        let mut chunks = Vec::new();
        let mut batches = Vec::new();
        let mut scratch = Vec::with_capacity(256);
        self.encode(&mut scratch).expect("a Vec grows");
        for mut group in messages {
            encode_key(MESSAGES, WireType::LengthDelimited, &mut scratch);
            encode_varint(group.encoded_len() as u64, &mut scratch);
            let message = group.message.take();
            group.encode(&mut scratch).expect("a Vec grows");
            let Some(mut message) = message else {
                continue;
            };
            encode_key(MESSAGE, WireType::LengthDelimited, &mut scratch);
            encode_varint(message.encoded_len() as u64, &mut scratch);
            let entries = std::mem::take(&mut message.entries);
            message.encode(&mut scratch).expect("a Vec grows");
            for mut entry in entries {
                encode_key(ENTRIES, WireType::LengthDelimited, &mut scratch);
                encode_varint(entry.encoded_len() as u64, &mut scratch);
                let checked = checked_batch(&group, &message, &entry);
                let data = std::mem::take(&mut entry.data);
                entry.encode(&mut scratch).expect("a Vec grows");
                if data.is_empty() {
                    continue;
                }
                encode_key(DATA, WireType::LengthDelimited, &mut scratch);
                encode_varint(data.len() as u64, &mut scratch);
                if data.len() < SHARED_DATA_MIN {
                    scratch.extend_from_slice(&data);
                } else {
                    chunks.push(Bytes::from(std::mem::take(&mut scratch)));
                    if checked {
                        batches.push(chunks.len());
                    }
                    chunks.push(data);
                }
            }
        }
        if !scratch.is_empty() {
            chunks.push(Bytes::from(scratch));
        }
        PeerBytes { chunks, batches }
    }
}

/// Where a fault on the wire struck: the partition and Raft index of the entry damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedEntry {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Raft index of the entry.
    pub index: u64,
}

impl PeerFrame {
    /// Fault injection, for tests and the simulator: the encoded frame `bytes` with one bit
    /// flipped in the batch of one data entry its partitions' appends carry, in its CRC or
    /// the bytes the CRC covers (what a checksum on the way let through). `pick(n)` chooses
    /// below `n`: the entry, then the bit. `None` if the frame carries no such entry.
    pub fn damage_an_entry(
        bytes: &[u8],
        mut pick: impl FnMut(u64) -> u64,
    ) -> Option<(Vec<u8>, DamagedEntry)> {
        use prost::Message as _;
        use raft::eraftpb::{EntryType, MessageType};
        /// Where a batch's CRC starts: after base offset, length, leader epoch and magic.
        const CRC_AT: usize = 17;
        let mut frame = PeerFrame::decode(bytes).ok()?;
        let mut places = Vec::new();
        for (m, group) in frame.messages.iter().enumerate() {
            let (Some(topic), Some(message)) = (&group.partition, &group.message) else {
                continue;
            };
            if message.msg_type != MessageType::MsgAppend as i32 {
                continue;
            }
            for (e, entry) in message.entries.iter().enumerate() {
                if entry.entry_type == EntryType::EntryNormal as i32 && entry.data.len() > CRC_AT {
                    places.push((m, e, topic.name.clone(), group.index));
                }
            }
        }
        if places.is_empty() {
            return None;
        }
        let (m, e, topic, partition) = places.get(pick(places.len() as u64) as usize)?.clone();
        let entry = frame.messages[m].message.as_mut()?.entries.get_mut(e)?;
        let mut data = entry.data.to_vec();
        let bits = (data.len() - CRC_AT) as u64 * 8;
        let bit = pick(bits);
        data[CRC_AT + (bit / 8) as usize] ^= 1 << (bit % 8);
        entry.data = data.into();
        let index = entry.index;
        let damaged = DamagedEntry {
            topic,
            partition,
            index,
        };
        Some((frame.encode_to_vec(), damaged))
    }
}

/// Write a transaction's marker to one partition (Kafka's WriteTxnMarkers, between brokers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MarkerRequest {
    /// The coordinator's marker job.
    #[prost(uint64, tag = "1")]
    pub job: u64,
    /// The partition's topic.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// The partition.
    #[prost(int32, tag = "3")]
    pub partition: i32,
    /// The transaction's producer.
    #[prost(int64, tag = "4")]
    pub producer_id: i64,
    /// The epoch the marker carries.
    #[prost(int32, tag = "5")]
    pub epoch: i32,
    /// Commit (true) or abort.
    #[prost(bool, tag = "6")]
    pub commit: bool,
    /// The coordinator's leader epoch.
    #[prost(int32, tag = "7")]
    pub coordinator_epoch: i32,
    /// The number of the transaction it ends (written as the marker's base sequence).
    #[prost(int32, tag = "8")]
    pub txn_number: i32,
}

/// A marker written (error 0) or refused, for the coordinator that asked.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MarkerResult {
    /// The coordinator's marker job.
    #[prost(uint64, tag = "1")]
    pub job: u64,
    /// The partition's topic.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// The partition.
    #[prost(int32, tag = "3")]
    pub partition: i32,
    /// Kafka error code; 0 if the marker is committed.
    #[prost(int32, tag = "4")]
    pub error_code: i32,
}

/// One Raft message and the group it belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupMessage {
    /// The group; `None` is the metadata quorum.
    #[prost(message, optional, tag = "1")]
    pub partition: Option<TopicRef>,
    /// Partition index when `partition` is set.
    #[prost(int32, tag = "2")]
    pub index: i32,
    /// The raft-rs message.
    #[prost(message, optional, tag = "3")]
    pub message: Option<raft::eraftpb::Message>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use raft::eraftpb::{Entry, EntryType, Message, MessageType};

    fn entry(index: u64, data: usize) -> Entry {
        Entry {
            entry_type: EntryType::EntryNormal as i32,
            term: 3,
            index,
            data: Bytes::from(vec![index as u8; data]),
            ..Entry::default()
        }
    }

    /// A frame with what the replicated path sends: appends of long and short entries,
    /// an empty entry, a message without entries, a group without a message, a join.
    fn frame() -> PeerFrame {
        let append = Message {
            msg_type: MessageType::MsgAppend as i32,
            to: 2,
            from: 1,
            term: 3,
            index: 9,
            log_term: 3,
            commit: 8,
            entries: vec![
                entry(10, 4096),
                entry(11, 12),
                entry(12, 0),
                entry(13, 300_000),
            ],
            ..Message::default()
        };
        let heartbeat = Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            commit: 8,
            ..Message::default()
        };
        let group = |index, message| GroupMessage {
            partition: Some(TopicRef {
                name: "orders".into(),
                id: vec![7; 16],
            }),
            index,
            message,
        };
        PeerFrame {
            from: 1,
            messages: vec![
                group(0, Some(append)),
                group(1, Some(heartbeat)),
                group(2, None),
            ],
            join: Some(BrokerRegistration::default()),
            ..PeerFrame::default()
        }
    }

    /// An entry carrying a record batch of about `size` bytes.
    fn batch_entry(index: u64, size: usize) -> Entry {
        let value = vec![index as u8; size];
        let records = [(None, &value[..], 0)];
        Entry {
            data: crate::wire::record_batch(records),
            ..entry(index, 0)
        }
    }

    #[test]
    fn version_3_checksum_reads_all_but_what_a_batch_crc_covers_and_its_receiver_checks() {
        let mut frame = frame();
        let append = frame.messages[0].message.as_mut().unwrap();
        append.entries = vec![batch_entry(10, 4096), entry(11, 12), batch_entry(12, 300)];
        // The metadata quorum's entries, and a partition's proposal, are read whole.
        let mut metadata = frame.messages[0].clone();
        metadata.partition = None;
        let mut proposal = frame.messages[0].clone();
        proposal.message.as_mut().unwrap().msg_type = MessageType::MsgPropose as i32;
        frame.messages.extend([metadata, proposal]);
        let pieces = frame.clone().encode_shared();
        assert_eq!(pieces.batches.len(), 1, "only the long batch of the append");
        let bytes = pieces.to_bytes();
        let crc = |frame: &Bytes| received_checksum(7, frame);
        // Intact, both ends compute the same checksum.
        let plain = pieces.checksum(7);
        assert_eq!(crc(&bytes), plain);
        assert_ne!(
            plain,
            crc32c::crc32c_append(7, &bytes),
            "the batch was not skipped"
        );

        let flipped = |at: usize| {
            let mut damaged = bytes.to_vec();
            damaged[at] ^= 0x10;
            Bytes::from(damaged)
        };
        let find = |data: &Bytes, from: usize| {
            from + (bytes[from..].windows(data.len()))
                .position(|w| w == &data[..])
                .expect("the entry is in the frame")
        };
        let long = &frame.messages[0].message.as_ref().unwrap().entries[0].data;
        let at = find(long, 0);
        // Inside what the batch's CRC covers: left to the follower's check of the batch.
        let inside = flipped(at + 2000);
        assert_eq!(crc(&inside), plain);
        let decoded = PeerFrame::decode(inside).unwrap();
        let arrived = &decoded.messages[0].message.as_ref().unwrap().entries[0].data;
        let (view, _) = BatchView::split_first(arrived).unwrap();
        assert!(!view.crc_ok(), "the follower's check sees it");
        // Its offset, length, epoch, magic or CRC, or anything else: the checksum sees it.
        for at in [at, at + 9, at + 13, at + 16, at + 18, 3, bytes.len() - 1] {
            assert_ne!(crc(&flipped(at)), plain, "byte {at}");
        }
        // The same batch in the metadata quorum's group or a proposal is read whole.
        let second = find(long, at + 1);
        let third = find(long, second + 1);
        for copy in [second, third] {
            assert_ne!(crc(&flipped(copy + 2000)), plain, "byte {}", copy + 2000);
        }
    }

    #[test]
    fn a_frame_in_pieces_decodes_as_the_frame_and_shares_long_entries() {
        let frame = frame();
        let whole = frame.encode_to_vec();
        let shared = frame.clone().encode_shared();
        assert_eq!(shared.len(), whole.len());
        let decoded = PeerFrame::decode(shared.to_bytes()).expect("decodes");
        assert_eq!(decoded, frame);
        // The two long entries travel as their own bytes, not copies of them.
        let data = |i: usize| &frame.messages[0].message.as_ref().unwrap().entries[i].data;
        let pieces: Vec<&Bytes> = (shared.chunks().iter())
            .filter(|c| c.len() >= SHARED_DATA_MIN)
            .collect();
        assert_eq!(pieces.len(), 2);
        for (piece, i) in pieces.into_iter().zip([0, 3]) {
            assert_eq!(piece.as_ptr(), data(i).as_ptr(), "entry {i} was copied");
        }
        // A frame without entries is one piece.
        let join = PeerFrame {
            from: 4,
            join: Some(BrokerRegistration::default()),
            ..PeerFrame::default()
        };
        let pieces = join.clone().encode_shared();
        assert_eq!(pieces.chunks().len(), 1);
        assert_eq!(pieces.to_bytes(), join.encode_to_vec());
    }
}
