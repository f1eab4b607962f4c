//! Values of the small state store (Raft hard state, snapshots, membership, the quorum's
//! entries), sealed so that damage is found on load instead of being decoded into a wrong
//! term or vote: a CRC-32C, then a format version, then the value.
//!
//! ```text
//! crc32c (4 bytes, little-endian, over everything after it) | format (1 byte) | value
//! ```
//!
//! The CRC comes first and covers the version, in every format to come, so a flipped version
//! byte reads as damage and a real newer format reads as one. The values whose loss would
//! leave a replica unable to know its vote or where its log starts (hard state, snapshot,
//! membership) are kept in two copies written in one atomic batch: a flipped bit in one is
//! found by its CRC and the other is used. Both copies damaged is refused (the broker stops
//! with the key named) rather than guessed at: a replica that forgot its vote could vote twice
//! in a term.

use prost::Message;
use raft::eraftpb::{ConfState, HardState, Snapshot};

use crate::canary::{is_planted, Canary};
use crate::consensus::RaftPersist;

/// The format this build writes and reads.
pub const FORMAT: u8 = 1;

/// Bytes before the value: the CRC and the format.
const HEADER: usize = 5;

/// What is wrong with a stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Shorter than its header.
    Short,
    /// Its CRC does not match: damaged on disk.
    Checksum,
    /// Intact, but of a format this build cannot read (written by a newer seedlog).
    Format(u8),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Short => write!(f, "shorter than its header"),
            Damage::Checksum => write!(f, "its checksum does not match (damaged)"),
            Damage::Format(v) => write!(
                f,
                "it is in state format {v}, and this seedlog reads format {FORMAT} only"
            ),
        }
    }
}

/// `value`, sealed.
pub fn seal(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A prost message, sealed.
pub fn seal_message(message: &impl Message) -> Vec<u8> {
    seal(&message.encode_to_vec())
}

/// The value inside `stored`, if it is intact and of this build's format.
pub fn unseal(stored: &[u8]) -> Result<&[u8], Damage> {
    if stored.len() < HEADER {
        return Err(Damage::Short);
    }
    let crc = u32::from_le_bytes(stored[..4].try_into().expect("four bytes"));
    if crc32c::crc32c(&stored[4..]) != crc {
        return Err(Damage::Checksum);
    }
    match stored[4] {
        FORMAT => Ok(&stored[HEADER..]),
        other => Err(Damage::Format(other)),
    }
}

/// The prost message sealed in `stored`; `what` names it in the error.
pub fn unseal_message<M: Message + Default>(what: &str, stored: &[u8]) -> Result<M, String> {
    let value = unseal(stored).map_err(|damage| format!("{what}: {damage}"))?;
    M::decode(value).map_err(|e| format!("{what}: intact but undecodable: {e}"))
}

/// Of the copies of one value, the first intact one; `None` if no copy was ever stored.
/// A copy of another format stops the load (this build cannot read it); so do copies that
/// are all damaged. A damaged copy beside an intact one is reported through `damaged`.
pub fn pick<M: Message + Default>(
    what: &str,
    copies: &[Option<&[u8]>],
    damaged: impl FnMut(usize, &Damage),
) -> Result<Option<M>, String> {
    pick_raw(what, copies, damaged)?
        .map(|value| {
            M::decode(&value[..]).map_err(|e| format!("{what}: intact but undecodable: {e}"))
        })
        .transpose()
}

/// [`pick`], giving the intact value's bytes.
fn pick_raw(
    what: &str,
    copies: &[Option<&[u8]>],
    mut damaged: impl FnMut(usize, &Damage),
) -> Result<Option<Vec<u8>>, String> {
    if is_planted(Canary::TrustStateCopies) {
        if let Some(first) = copies.iter().flatten().next() {
            return Ok(first.get(HEADER..).map(<[u8]>::to_vec));
        }
    }
    let mut found = None;
    let mut last_damage = None;
    for (i, copy) in copies.iter().enumerate() {
        let Some(stored) = copy else { continue };
        match unseal(stored) {
            Ok(value) => {
                if found.is_none() {
                    found = Some(value);
                }
            }
            Err(Damage::Format(v)) => return Err(format!("{what}: {}", Damage::Format(v))),
            Err(damage) => {
                damaged(i, &damage);
                last_damage = Some(damage);
            }
        }
    }
    match (found, last_damage) {
        (Some(value), _) => Ok(Some(value.to_vec())),
        (None, Some(damage)) => Err(format!(
            "{what}: every copy is damaged (the last: {damage}); this broker cannot know its \
             Raft vote and will not guess: remove its replica and let it rejoin"
        )),
        (None, None) => Ok(None),
    }
}

/// The key of copy `copy` (0 or 1) of a value kept twice under `key`.
pub fn copy_key(key: &str, copy: usize) -> String {
    match copy {
        0 => key.to_string(),
        n => format!("{key}#{}", n + 1),
    }
}

/// Fields of a Raft group's small state that are kept twice, by key.
const HARD_STATE: &str = "hard_state";
const SNAPSHOT: &str = "snapshot";
const CONF_STATE: &str = "conf_state";

/// The writes that store the twice-kept fields of `change` (hard state, snapshot and, for the
/// quorum, membership) under `prefix`: each sealed, under both of its copy keys.
pub fn raft_state_writes(prefix: &str, change: &RaftPersist) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(hard_state) = &change.hard_state {
        fields.push((HARD_STATE, seal_message(hard_state)));
    }
    if let Some(snapshot) = &change.snapshot {
        fields.push((SNAPSHOT, seal_message(snapshot)));
    }
    // A snapshot's membership is the membership, unless the change sets a later one.
    let snapshot_membership = change
        .snapshot
        .as_ref()
        .map(|s| s.get_metadata().get_conf_state());
    if let Some(conf_state) = change.conf_state.as_ref().or(snapshot_membership) {
        fields.push((CONF_STATE, seal_message(conf_state)));
    }
    let mut writes = Vec::with_capacity(fields.len() * 2);
    for (field, value) in fields {
        let key = format!("{prefix}{field}");
        writes.push((copy_key(&key, 1), value.clone()));
        writes.push((copy_key(&key, 0), value));
    }
    writes
}

/// What [`load_raft_state`] found.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// The state: its hard state, snapshot and membership (no entries).
    pub state: RaftPersist,
    /// Damaged copies found beside an intact one: (key of the damaged copy, what is wrong,
    /// the intact sealed value to write over it).
    pub repairs: Vec<(String, Damage, Vec<u8>)>,
}

/// Reads the twice-kept fields stored under `prefix` through `get` (a key's stored bytes, or
/// why they could not be read).
pub fn load_raft_state(
    prefix: &str,
    get: impl Fn(&str) -> Result<Option<Vec<u8>>, String>,
) -> Result<LoadedState, String> {
    let mut loaded = LoadedState::default();
    let field = |name: &str, loaded: &mut LoadedState| {
        let key = format!("{prefix}{name}");
        let copies = [get(&copy_key(&key, 0))?, get(&copy_key(&key, 1))?];
        let refs = [copies[0].as_deref(), copies[1].as_deref()];
        let mut damaged = Vec::new();
        let intact = refs
            .iter()
            .flatten()
            .find(|c| unseal(c).is_ok())
            .map(|c| c.to_vec());
        let value = pick_raw(&key, &refs, |i, d| damaged.push((i, d.clone())))?;
        if let Some(intact) = intact {
            for (i, damage) in damaged {
                loaded
                    .repairs
                    .push((copy_key(&key, i), damage, intact.clone()));
            }
        }
        Ok::<_, String>(value)
    };
    let hard_state = field(HARD_STATE, &mut loaded)?;
    let snapshot = field(SNAPSHOT, &mut loaded)?;
    let conf_state = field(CONF_STATE, &mut loaded)?;
    let decode_err = |what: &str, e: prost::DecodeError| format!("{prefix}{what}: {e}");
    loaded.state.hard_state = hard_state
        .map(|v| HardState::decode(&v[..]).map_err(|e| decode_err(HARD_STATE, e)))
        .transpose()?;
    loaded.state.snapshot = snapshot
        .map(|v| Snapshot::decode(&v[..]).map_err(|e| decode_err(SNAPSHOT, e)))
        .transpose()?;
    loaded.state.conf_state = conf_state
        .map(|v| ConfState::decode(&v[..]).map_err(|e| decode_err(CONF_STATE, e)))
        .transpose()?;
    Ok(loaded)
}

/// The key of the other copy of the value whose copy is stored under `key`.
pub fn twin_key(key: &str) -> String {
    match key.strip_suffix("#2") {
        Some(first) => first.to_string(),
        None => copy_key(key, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::HardState;

    fn hard_state(term: u64, vote: u64) -> HardState {
        HardState {
            term,
            vote,
            commit: 7,
        }
    }

    #[test]
    fn a_sealed_value_unseals_and_any_flipped_bit_is_found() {
        let sealed = seal_message(&hard_state(5, 2));
        let back: HardState = unseal_message("hs", &sealed).unwrap();
        assert_eq!(back, hard_state(5, 2));
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut flipped = sealed.clone();
                flipped[byte] ^= 1 << bit;
                assert_eq!(
                    unseal(&flipped),
                    Err(Damage::Checksum),
                    "bit {bit} of byte {byte}"
                );
            }
        }
        assert_eq!(unseal(&sealed[..3]), Err(Damage::Short));
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut newer = seal(b"value");
        newer[4] = FORMAT + 1;
        let crc = crc32c::crc32c(&newer[4..]);
        newer[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(unseal(&newer), Err(Damage::Format(FORMAT + 1)));
        let err = pick::<HardState>("quorum hard state", &[Some(&newer)], |_, _| {}).unwrap_err();
        assert!(err.contains("format 2"), "{err}");
    }

    #[test]
    fn pick_takes_the_intact_copy_and_refuses_when_none_is() {
        let good = seal_message(&hard_state(9, 3));
        let mut bad = good.clone();
        bad[6] ^= 0x10;
        let mut seen = Vec::new();
        let picked: Option<HardState> = pick("hs", &[Some(&bad), Some(&good)], |i, d| {
            seen.push((i, d.clone()))
        })
        .unwrap();
        assert_eq!(picked, Some(hard_state(9, 3)));
        assert_eq!(seen, vec![(0, Damage::Checksum)]);
        let picked: Option<HardState> = pick("hs", &[Some(&good), Some(&bad)], |_, _| {}).unwrap();
        assert_eq!(picked, Some(hard_state(9, 3)));
        let err = pick::<HardState>("hs", &[Some(&bad), Some(&bad)], |_, _| {}).unwrap_err();
        assert!(err.contains("every copy is damaged"), "{err}");
        assert_eq!(pick::<HardState>("hs", &[None, None], |_, _| {}), Ok(None));
        // One copy only (a value written before copies existed) is enough.
        let one: Option<HardState> = pick("hs", &[Some(&good), None], |_, _| {}).unwrap();
        assert_eq!(one, Some(hard_state(9, 3)));
    }

    #[test]
    fn copy_keys() {
        assert_eq!(copy_key("hard_state", 0), "hard_state");
        assert_eq!(copy_key("t/0/hard_state", 1), "t/0/hard_state#2");
        assert_eq!(twin_key("t/0/hard_state#2"), "t/0/hard_state");
        assert_eq!(twin_key("t/0/hard_state"), "t/0/hard_state#2");
    }
}
