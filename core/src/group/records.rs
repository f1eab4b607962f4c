//! What the coordinator writes to `__consumer_offsets`, in Kafka's own record formats, so the
//! log reads the same to Kafka's tools: a committed offset is key `OffsetCommitKey` v1 (group,
//! topic, partition) with value `OffsetCommitValue` v3; a group's membership is key
//! `GroupMetadataKey` v2 (group) with value `GroupMetadataValue` v3. A null value deletes.

use bytes::{BufMut, Bytes};

/// A committed offset and what came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group will read.
    pub offset: i64,
    /// The leader epoch of the record before it, or -1.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// When it was committed (ms).
    pub timestamp: i64,
}

/// One member as the group's metadata record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Member id given by the coordinator.
    pub member_id: String,
    /// Static membership id (KIP-345), if any.
    pub instance_id: Option<String>,
    /// The client's id and host.
    pub client_id: String,
    /// Where the member connected from.
    pub client_host: String,
    /// Its rebalance timeout (ms).
    pub rebalance_timeout: i32,
    /// Its session timeout (ms).
    pub session_timeout: i32,
    /// Its metadata for the selected protocol.
    pub subscription: Bytes,
    /// What the leader assigned it.
    pub assignment: Bytes,
}

/// A group's membership at the end of a rebalance (or when it became empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// `consumer` for Kafka consumers; opaque to the coordinator.
    pub protocol_type: String,
    /// The generation.
    pub generation: i32,
    /// The selected protocol (assignor), if the group has members.
    pub protocol: Option<String>,
    /// The leader member's id, if any.
    pub leader: Option<String>,
    /// When the group entered its current state (ms).
    pub state_timestamp: i64,
    /// The members.
    pub members: Vec<MemberRecord>,
}

/// What a record's key addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A committed offset: group, topic, partition.
    Offset(String, String, i32),
    /// A group's metadata.
    Group(String),
}

/// A decoded record: its key and, unless it is a tombstone, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A committed offset, or its deletion.
    Offset {
        /// Group, topic, partition.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The commit; `None` deletes it.
        value: Option<Committed>,
    },
    /// A group's metadata, or the group's deletion.
    Group {
        /// Group id.
        group: String,
        /// The metadata; `None` deletes the group.
        value: Option<GroupRecord>,
    },
}

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

impl Key {
    /// The key's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Key::Offset(group, topic, partition) => {
                out.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut out, group);
                put_str(&mut out, topic);
                out.put_i32(*partition);
            }
            Key::Group(group) => {
                out.put_i16(GROUP_KEY_VERSION);
                put_str(&mut out, group);
            }
        }
        out
    }
}

impl Committed {
    /// The value's bytes (`OffsetCommitValue` v3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i16(OFFSET_VALUE_VERSION);
        out.put_i64(self.offset);
        out.put_i32(self.leader_epoch);
        put_str(&mut out, &self.metadata);
        out.put_i64(self.timestamp);
        out
    }

    fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let version = r.i16()?;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.string()?;
        let timestamp = r.i64()?;
        if version == 1 {
            r.i64()?; // expire timestamp, unused since KIP-211
        }
        Some(Committed {
            offset,
            leader_epoch,
            metadata,
            timestamp,
        })
    }
}

impl GroupRecord {
    /// The value's bytes (`GroupMetadataValue` v3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_i16(GROUP_VALUE_VERSION);
        put_str(&mut out, &self.protocol_type);
        out.put_i32(self.generation);
        put_nullable_str(&mut out, self.protocol.as_deref());
        put_nullable_str(&mut out, self.leader.as_deref());
        out.put_i64(self.state_timestamp);
        out.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_str(&mut out, &m.member_id);
            put_nullable_str(&mut out, m.instance_id.as_deref());
            put_str(&mut out, &m.client_id);
            put_str(&mut out, &m.client_host);
            out.put_i32(m.rebalance_timeout);
            out.put_i32(m.session_timeout);
            put_bytes(&mut out, &m.subscription);
            put_bytes(&mut out, &m.assignment);
        }
        out
    }

    fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let version = r.i16()?;
        if !(0..=3).contains(&version) {
            return None;
        }
        let protocol_type = r.string()?;
        let generation = r.i32()?;
        let protocol = r.nullable_string()?;
        let leader = r.nullable_string()?;
        let state_timestamp = if version >= 2 { r.i64()? } else { -1 };
        let count = r.i32()?;
        let mut members = Vec::new();
        for _ in 0..count.max(0) {
            let member_id = r.string()?;
            let instance_id = if version >= 3 {
                r.nullable_string()?
            } else {
                None
            };
            let client_id = r.string()?;
            let client_host = r.string()?;
            let rebalance_timeout = if version >= 1 { r.i32()? } else { 0 };
            let session_timeout = r.i32()?;
            let subscription = r.bytes()?;
            let assignment = r.bytes()?;
            members.push(MemberRecord {
                member_id,
                instance_id,
                client_id,
                client_host,
                rebalance_timeout: if version >= 1 {
                    rebalance_timeout
                } else {
                    session_timeout
                },
                session_timeout,
                subscription,
                assignment,
            });
        }
        Some(GroupRecord {
            protocol_type,
            generation,
            protocol,
            leader,
            state_timestamp,
            members,
        })
    }
}

/// Decodes one record of `__consumer_offsets`; `None` if it is not one of ours (or is
/// damaged: a batch's CRC already vouched for it, so that would be a bug of the writer).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Record> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | 1 => {
            let group = k.string()?;
            let topic = k.string()?;
            let partition = k.i32()?;
            let value = match value {
                Some(v) => Some(Committed::decode(&mut Reader(v))?),
                None => None,
            };
            Some(Record::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = k.string()?;
            let value = match value {
                Some(v) => Some(GroupRecord::decode(&mut Reader(v))?),
                None => None,
            };
            Some(Record::Group { group, value })
        }
        _ => None,
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn put_nullable_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

/// A cursor over big-endian fields.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    pub(crate) fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn nullable_string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        let Ok(len) = usize::try_from(len) else {
            return Some(None);
        };
        Some(Some(String::from_utf8(self.take(len)?.to_vec()).ok()?))
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        self.nullable_string()?
    }
    pub(crate) fn bytes(&mut self) -> Option<Bytes> {
        let len = usize::try_from(self.i32()?).ok()?;
        Some(Bytes::copy_from_slice(self.take(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_groups_round_trip_through_their_bytes() {
        let committed = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            timestamp: 1_700_000_000_000,
        };
        let key = Key::Offset("g".into(), "t".into(), 5).encode();
        assert_eq!(
            decode(&key, Some(&committed.encode())),
            Some(Record::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 5,
                value: Some(committed),
            })
        );
        let group = GroupRecord {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp: 9,
            members: vec![MemberRecord {
                member_id: "m-1".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout: 300_000,
                session_timeout: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let key = Key::Group("g".into()).encode();
        assert_eq!(
            decode(&key, Some(&group.encode())),
            Some(Record::Group {
                group: "g".into(),
                value: Some(group),
            })
        );
        assert_eq!(
            decode(&key, None),
            Some(Record::Group {
                group: "g".into(),
                value: None
            })
        );
        // Damaged bytes decode to nothing rather than to a wrong value.
        assert_eq!(decode(&key[..3], None), None);
        assert_eq!(decode(&[0, 9], None), None);
    }
}
