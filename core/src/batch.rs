//! Kafka RecordBatch v2, read and stamped in place.
//!
//! Batches are stored on disk exactly as a producer sent them, except for the fields the
//! leader owns: the base offset (outside the CRC) and, for `LogAppendTime` topics, the
//! timestamp type bit and the max timestamp (inside the CRC, so it is recomputed). Nothing
//! here decodes the records themselves beyond walking their length prefixes.

use bytes::{Bytes, BytesMut};

/// Bytes before the `batch_length` field ends: base offset (8) + batch length (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of the v2 batch header, up to and including the record count.
pub const HEADER_BYTES: usize = 61;

const BATCH_LENGTH_OFFSET: usize = 8;
const LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORD_COUNT_OFFSET: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch was refused; each maps to one Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or a length field that points past the data.
    Truncated,
    /// Magic byte other than 2: message formats v0/v1 are not accepted.
    UnsupportedMagic(i8),
    /// The CRC32C over attributes..end does not match.
    CorruptCrc,
    /// Header fields that contradict each other or the record walk.
    InvalidRecords,
}

/// A borrowed view of one complete batch (header + records).
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

fn read_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn read_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Total size of the batch that starts at `bytes`, if its length prefix is readable.
/// `None` if fewer than [`LOG_OVERHEAD`] bytes are present or the length is impossible.
pub fn frame_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < LOG_OVERHEAD {
        return None;
    }
    let batch_length = read_i32(bytes, BATCH_LENGTH_OFFSET);
    let min = (HEADER_BYTES - LOG_OVERHEAD) as i32;
    if batch_length < min {
        return None;
    }
    Some(LOG_OVERHEAD + batch_length as usize)
}

/// The frame at the front of `rest` with its length and magic byte put right, if those are
/// all that is wrong with it: Kafka's CRC covers neither, so a frame whose length is one bit
/// off (or whose magic is not 2) but whose CRC-covered bytes check out at the length one bit
/// away is a damaged header over an intact batch. `None` if the frame needs no mending, or
/// cannot be mended from `rest` (its body is damaged too, or not all of it is in `rest`).
/// Up to 32 CRCs over the frame: for damaged frames only.
pub fn mend_frame(rest: &[u8]) -> Option<Vec<u8>> {
    if rest.len() < HEADER_BYTES {
        return None;
    }
    let stated = read_i32(rest, BATCH_LENGTH_OFFSET) as u32;
    let stored_crc = read_i32(rest, CRC_OFFSET) as u32;
    let lengths = std::iter::once(stated).chain((0..31).map(|bit| stated ^ (1 << bit)));
    for length in lengths {
        let size = LOG_OVERHEAD.saturating_add(length as usize);
        if size < HEADER_BYTES || size > rest.len() {
            continue;
        }
        if crc32c::crc32c(&rest[ATTRIBUTES_OFFSET..size]) != stored_crc {
            continue;
        }
        if length == stated && rest[MAGIC_OFFSET] == 2 {
            return None; // Nothing to mend.
        }
        let mut frame = rest[..size].to_vec();
        frame[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4].copy_from_slice(&length.to_be_bytes());
        frame[MAGIC_OFFSET] = 2;
        return Some(frame);
    }
    None
}

impl<'a> BatchView<'a> {
    /// Splits the first batch off `bytes` and checks its framing (not its CRC).
    pub fn split_first(bytes: &'a [u8]) -> Result<(BatchView<'a>, &'a [u8]), BatchError> {
        let size = frame_size(bytes).ok_or(BatchError::Truncated)?;
        if bytes.len() < size {
            return Err(BatchError::Truncated);
        }
        let view = BatchView {
            bytes: &bytes[..size],
        };
        if view.magic() != 2 {
            return Err(BatchError::UnsupportedMagic(view.magic()));
        }
        Ok((view, &bytes[size..]))
    }

    /// The whole batch, as stored.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Offset of the first record (as stamped by the leader).
    pub fn base_offset(&self) -> i64 {
        read_i64(self.bytes, 0)
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }
    /// Offset that follows this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    /// The leader epoch (Raft term) the batch was appended in.
    pub fn leader_epoch(&self) -> i32 {
        read_i32(self.bytes, LEADER_EPOCH_OFFSET)
    }
    /// Message format version.
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_OFFSET] as i8
    }
    /// Raw attribute bits.
    pub fn attributes(&self) -> i16 {
        read_i16(self.bytes, ATTRIBUTES_OFFSET)
    }
    /// True if the records are compressed (their bodies are opaque to us).
    pub fn is_compressed(&self) -> bool {
        self.attributes() & COMPRESSION_MASK != 0
    }
    /// True if the broker stamped the batch with its append time.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }
    /// True for control batches: transaction markers, and seedlog's Raft entries of its own.
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
    /// True if the batch belongs to a transaction: its records, or its marker.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    /// `last_offset - base_offset`.
    pub fn last_offset_delta(&self) -> i32 {
        read_i32(self.bytes, LAST_OFFSET_DELTA_OFFSET)
    }
    /// Timestamp of the first record (CreateTime batches).
    pub fn base_timestamp(&self) -> i64 {
        read_i64(self.bytes, BASE_TIMESTAMP_OFFSET)
    }
    /// Largest record timestamp in the batch (or the append time).
    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.bytes, MAX_TIMESTAMP_OFFSET)
    }
    /// Idempotent producer id, -1 if none.
    pub fn producer_id(&self) -> i64 {
        read_i64(self.bytes, PRODUCER_ID_OFFSET)
    }
    /// Idempotent producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        read_i16(self.bytes, PRODUCER_EPOCH_OFFSET)
    }
    /// Sequence number of the first record, -1 if none.
    pub fn base_sequence(&self) -> i32 {
        read_i32(self.bytes, BASE_SEQUENCE_OFFSET)
    }
    /// Declared number of records.
    pub fn record_count(&self) -> i32 {
        read_i32(self.bytes, RECORD_COUNT_OFFSET)
    }
    /// The CRC stored in the header.
    pub fn stored_crc(&self) -> u32 {
        read_i32(self.bytes, CRC_OFFSET) as u32
    }
    /// True if the stored CRC matches the bytes.
    pub fn crc_ok(&self) -> bool {
        crc32c::crc32c(&self.bytes[ATTRIBUTES_OFFSET..]) == self.stored_crc()
    }
    /// The bytes the batch's own CRC leaves out: its base offset, length, leader epoch,
    /// magic, and that CRC.
    pub fn outside_crc(&self) -> &'a [u8] {
        &self.bytes[..ATTRIBUTES_OFFSET]
    }

    /// Full validation of a batch a producer sent: CRC, header consistency, and for
    /// uncompressed batches a walk over the record length prefixes.
    pub fn validate_for_append(&self) -> Result<(), BatchError> {
        if !self.crc_ok() {
            return Err(BatchError::CorruptCrc);
        }
        let count = self.record_count();
        if count <= 0 || i64::from(self.last_offset_delta()) != i64::from(count) - 1 {
            return Err(BatchError::InvalidRecords);
        }
        if !self.is_compressed() {
            let walked = walk_records(&self.bytes[HEADER_BYTES..])?;
            if walked != count as usize {
                return Err(BatchError::InvalidRecords);
            }
        }
        Ok(())
    }

    /// The uncompressed records of this batch, for record-level lookups.
    /// `None` for compressed batches.
    pub fn records(&self) -> Option<RecordIter<'a>> {
        (!self.is_compressed()).then(|| RecordIter {
            rest: &self.bytes[HEADER_BYTES..],
            base_offset: self.base_offset(),
            base_timestamp: self.base_timestamp(),
        })
    }
}

/// Counts records by their varint length prefixes; errors if they do not tile the bytes.
fn walk_records(mut rest: &[u8]) -> Result<usize, BatchError> {
    let mut count = 0usize;
    while !rest.is_empty() {
        let (len, used) = read_varint(rest).ok_or(BatchError::InvalidRecords)?;
        let len = usize::try_from(len).map_err(|_| BatchError::InvalidRecords)?;
        let end = used.checked_add(len).ok_or(BatchError::InvalidRecords)?;
        if len == 0 || end > rest.len() {
            return Err(BatchError::InvalidRecords);
        }
        rest = &rest[end..];
        count += 1;
    }
    Ok(count)
}

/// Zig-zag varint as Kafka writes it; returns the value and the bytes used.
fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

/// Offset and timestamp of one record, read from its header only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    /// Absolute offset.
    pub offset: i64,
    /// Absolute timestamp (CreateTime).
    pub timestamp: i64,
}

/// Iterates the records of an uncompressed batch, yielding offset and timestamp.
pub struct RecordIter<'a> {
    rest: &'a [u8],
    base_offset: i64,
    base_timestamp: i64,
}

impl Iterator for RecordIter<'_> {
    type Item = RecordPosition;
    fn next(&mut self) -> Option<RecordPosition> {
        let (len, used) = read_varint(self.rest)?;
        let len = usize::try_from(len).ok()?;
        let body = self.rest.get(used..used.checked_add(len)?)?;
        self.rest = &self.rest[used + len..];
        // Record body: attributes (i8), timestamp delta (varlong), offset delta (varint).
        let (timestamp_delta, a) = read_varint(body.get(1..)?)?;
        let (offset_delta, _) = read_varint(body.get(1 + a..)?)?;
        Some(RecordPosition {
            offset: self.base_offset + offset_delta,
            timestamp: self.base_timestamp + timestamp_delta,
        })
    }
}

/// One record's offset, key and value, borrowed from its batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyValue<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// The key; `None` if null.
    pub key: Option<&'a [u8]>,
    /// The value; `None` if null (a tombstone).
    pub value: Option<&'a [u8]>,
}

impl<'a> BatchView<'a> {
    /// The keys and values of an uncompressed batch's records; `None` for compressed
    /// batches. Iteration stops at the first record that does not parse.
    pub fn key_values(&self) -> Option<impl Iterator<Item = KeyValue<'a>>> {
        let mut rest = self.bytes.get(HEADER_BYTES..)?;
        let base_offset = self.base_offset();
        let compressed = self.is_compressed();
        (!compressed).then(|| {
            std::iter::from_fn(move || {
                let (len, used) = read_varint(rest)?;
                let body = rest.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
                rest = &rest[used + body.len()..];
                // attributes (i8), timestamp delta, offset delta, key, value.
                let mut at = 1 + read_varint(body.get(1..)?)?.1;
                let (offset_delta, used) = read_varint(body.get(at..)?)?;
                at += used;
                let mut field = || -> Option<Option<&'a [u8]>> {
                    let (len, used) = read_varint(body.get(at..)?)?;
                    at += used;
                    let Ok(len) = usize::try_from(len) else {
                        return Some(None);
                    };
                    let bytes = body.get(at..at.checked_add(len)?)?;
                    at += len;
                    Some(Some(bytes))
                };
                let key = field()?;
                let value = field()?;
                Some(KeyValue {
                    offset: base_offset + offset_delta,
                    key,
                    value,
                })
            })
        })
    }
}

/// Iterates the complete batches at the front of `bytes`, stopping at the first incomplete one.
pub fn complete_batches(bytes: &[u8]) -> impl Iterator<Item = BatchView<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let (view, tail) = BatchView::split_first(rest).ok()?;
        rest = tail;
        Some(view)
    })
}

/// Bytes of a batch up to and including its leader epoch: what a leader stamps.
const STAMPED_HEAD: usize = MAGIC_OFFSET;

/// One record batch on its way to a segment file, with the base offset (and leader epoch)
/// the leader gave it. Both sit outside the CRC, so the stamp travels beside the batch as
/// it came, a slice of the client's request or of the leader's peer frame: writers put
/// [`StampedBatch::parts`] one after the other, and no batch is copied to be stamped.
#[derive(Clone, PartialEq)]
pub struct StampedBatch {
    head: [u8; STAMPED_HEAD],
    body: Bytes,
}

impl StampedBatch {
    /// `batch`, one whole record batch (at least [`HEADER_BYTES`] long, as every validated
    /// batch is), stamped with `base_offset` and, if given, `leader_epoch`.
    pub fn new(batch: Bytes, base_offset: i64, leader_epoch: Option<i32>) -> Self {
        assert!(
            batch.len() >= HEADER_BYTES,
            "a stamped batch must hold a whole batch header ({} bytes)",
            batch.len()
        );
        let mut head = [0u8; STAMPED_HEAD];
        head.copy_from_slice(&batch[..STAMPED_HEAD]);
        stamp_base_offset(&mut head, base_offset);
        if let Some(epoch) = leader_epoch {
            stamp_leader_epoch(&mut head, epoch);
        }
        StampedBatch {
            head,
            body: batch.slice(STAMPED_HEAD..),
        }
    }

    /// The batch as it is to be written, in two parts.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head, &self.body]
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        STAMPED_HEAD + self.body.len()
    }

    /// Never true: a batch has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The stamped batch in one piece (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> i64 {
        let delta = read_i32(&self.body, LAST_OFFSET_DELTA_OFFSET - STAMPED_HEAD);
        read_i64(&self.head, 0) + i64::from(delta) + 1
    }
}

impl std::fmt::Debug for StampedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StampedBatch({} bytes, next offset {})",
            self.len(),
            self.next_offset()
        )
    }
}

/// Writes the leader-assigned base offset into a batch held in `buf`.
pub fn stamp_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes the leader epoch (the Raft term of the entry) into a batch held in `buf`; like the
/// base offset it sits outside the CRC.
pub fn stamp_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// The control record type of a leader change (KIP-595's `LEADER_CHANGE`).
pub const LEADER_CHANGE_CONTROL_TYPE: i16 = 2;

/// The control record type of a partition's Raft membership change (KRaft's `KRAFT_VOTERS`
/// number; the value is seedlog's own: a raft-rs `ConfChangeV2`).
pub const MEMBERSHIP_CONTROL_TYPE: i16 = 6;

/// A one-record control batch marking a leader change: what a Raft leader's empty entry
/// becomes on disk. Clients skip control batches; it takes one offset.
///
/// Its value is the leader's `term`, inside the CRC: the leader epoch in a batch's header
/// is not, so a replica reading its log back checks every header's epoch against the term
/// of the leader change before it (see [`leader_change_term`]).
pub fn leader_change_batch(term: u64) -> BytesMut {
    control_batch(LEADER_CHANGE_CONTROL_TYPE, Some(&term.to_be_bytes()))
}

/// The term a leader-change batch carries in its value; `None` for any other batch, or one
/// written before leader changes carried their term.
pub fn leader_change_term(view: &BatchView<'_>) -> Option<u64> {
    match control_record(view)? {
        (LEADER_CHANGE_CONTROL_TYPE, Some(value)) => {
            Some(u64::from_be_bytes(value.try_into().ok()?))
        }
        _ => None,
    }
}

/// A one-record control batch of `control_type` with `value`. Timestamps are -1 (none), so
/// every replica writes the same bytes and time-based retention ignores it. Base offset and
/// leader epoch are stamped when it is appended, like any batch.
pub fn control_batch(control_type: i16, value: Option<&[u8]>) -> BytesMut {
    build_batch(
        CONTROL_BIT,
        -1,
        NO_PRODUCER,
        &[(Some(&control_key(control_type)), value)],
    )
}

/// The key of a control record: version 0, then the type.
fn control_key(control_type: i16) -> [u8; 4] {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    key
}

/// Control record type of a transaction's abort marker (Kafka's `ControlRecordType.ABORT`).
pub const ABORT_CONTROL_TYPE: i16 = 0;
/// Control record type of a transaction's commit marker.
pub const COMMIT_CONTROL_TYPE: i16 = 1;

/// A transaction marker (KIP-98): the control batch that ends `producer_id`'s transaction
/// in a partition, committing or aborting its records. Its value is Kafka's
/// `EndTransactionMarker` v0: version, then the coordinator epoch. Its base sequence,
/// which clients ignore in a control batch, is the number of the transaction it ends.
pub fn txn_marker_batch(
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    txn_number: i32,
    timestamp: i64,
) -> BytesMut {
    let control_type = if commit {
        COMMIT_CONTROL_TYPE
    } else {
        ABORT_CONTROL_TYPE
    };
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    let key = control_key(control_type);
    let attributes = CONTROL_BIT | TRANSACTIONAL_BIT;
    let producer = (producer_id, epoch, txn_number);
    build_batch(
        attributes,
        timestamp,
        producer,
        &[(Some(&key), Some(&value))],
    )
}

/// Whether `view` is a transaction marker, and if so whether it commits (`Some(true)`) or
/// aborts (`Some(false)`).
pub fn txn_marker(view: &BatchView<'_>) -> Option<bool> {
    if !view.is_transactional() {
        return None;
    }
    match control_record(view)?.0 {
        COMMIT_CONTROL_TYPE => Some(true),
        ABORT_CONTROL_TYPE => Some(false),
        _ => None,
    }
}

/// No producer: id, epoch and first sequence of a batch written by nobody's producer.
const NO_PRODUCER: (i64, i16, i32) = (-1, -1, -1);

/// A record's key and value, each possibly null.
pub type KeyAndValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// An uncompressed batch of `(key, value)` records, all stamped `timestamp`: how the broker
/// writes records of its own (the consumer groups' offsets and metadata).
pub fn data_batch(timestamp: i64, records: &[KeyAndValue<'_>]) -> BytesMut {
    build_batch(0, timestamp, NO_PRODUCER, records)
}

/// An uncompressed batch of records written inside `producer_id`'s transaction (the group
/// coordinator's offsets of a TxnOffsetCommit): they take effect with its commit marker.
pub fn txn_data_batch(
    timestamp: i64,
    producer_id: i64,
    epoch: i16,
    records: &[KeyAndValue<'_>],
) -> BytesMut {
    build_batch(
        TRANSACTIONAL_BIT,
        timestamp,
        (producer_id, epoch, -1),
        records,
    )
}

fn build_batch(
    attributes: i16,
    timestamp: i64,
    (producer_id, epoch, first_sequence): (i64, i16, i32),
    records: &[KeyAndValue<'_>],
) -> BytesMut {
    let mut body = Vec::new();
    let mut record = Vec::new();
    for (delta, (key, value)) in records.iter().enumerate() {
        // attributes, timestamp delta 0, offset delta, key, value, no headers; varints are
        // zig-zag encoded and a length of -1 means null.
        record.clear();
        record.extend_from_slice(&[0u8, 0]);
        put_varint(&mut record, delta as i64);
        for field in [key, value] {
            match field {
                Some(bytes) => {
                    put_varint(&mut record, bytes.len() as i64);
                    record.extend_from_slice(bytes);
                }
                None => put_varint(&mut record, -1),
            }
        }
        put_varint(&mut record, 0);
        put_varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
    }
    let count = records.len() as i32;
    let mut buf = BytesMut::with_capacity(HEADER_BYTES + body.len());
    buf.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = (HEADER_BYTES - LOG_OVERHEAD + body.len()) as i32;
    buf.extend_from_slice(&length.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    buf.extend_from_slice(&[2]); // magic
    buf.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    buf.extend_from_slice(&attributes.to_be_bytes());
    buf.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    buf.extend_from_slice(&timestamp.to_be_bytes()); // base timestamp
    buf.extend_from_slice(&timestamp.to_be_bytes()); // max timestamp
    buf.extend_from_slice(&producer_id.to_be_bytes());
    buf.extend_from_slice(&epoch.to_be_bytes());
    buf.extend_from_slice(&first_sequence.to_be_bytes());
    buf.extend_from_slice(&count.to_be_bytes());
    buf.extend_from_slice(&body);
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    buf
}

/// The type and value of a one-record control batch (see [`control_batch`]).
pub fn control_record<'a>(view: &BatchView<'a>) -> Option<(i16, Option<&'a [u8]>)> {
    if !view.is_control() || view.record_count() != 1 {
        return None;
    }
    let bytes = view.bytes().get(HEADER_BYTES..)?;
    let (_, used) = read_varint(bytes)?;
    let mut at = used + 3; // attributes, timestamp delta 0, offset delta 0
    let (key_len, used) = read_varint(bytes.get(at..)?)?;
    at += used;
    if key_len != 4 {
        return None;
    }
    let control_type = read_i16(bytes, at + 2);
    at += 4;
    let (value_len, used) = read_varint(bytes.get(at..)?)?;
    at += used;
    let value = match usize::try_from(value_len) {
        Ok(len) => Some(bytes.get(at..at.checked_add(len)?)?),
        Err(_) => None,
    };
    Some((control_type, value))
}

/// True if `view` is a leader-change control batch (see [`leader_change_batch`]).
pub fn is_leader_change(view: &BatchView<'_>) -> bool {
    control_record(view).is_some_and(|(t, _)| t == LEADER_CHANGE_CONTROL_TYPE)
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// A copy of `batch` marked as `LogAppendTime` with `append_time` as its max timestamp, its
/// CRC re-sealed (the CRC covers both, so the batch as it came cannot be shared). Record
/// timestamps are left alone: with that bit set, readers ignore them.
pub fn with_log_append_time(batch: &[u8], append_time: i64) -> Bytes {
    let mut buf = BytesMut::from(batch);
    let attributes = read_i16(&buf, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_BIT;
    buf[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    buf[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&append_time.to_be_bytes());
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// Makes a batch an idempotent producer's: its producer id, epoch and first sequence, and
/// re-seals its CRC (a load generator numbers one prepared batch this way per request).
pub fn stamp_producer(buf: &mut BytesMut, producer_id: i64, epoch: i16, first_sequence: i32) {
    buf[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    buf[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&epoch.to_be_bytes());
    buf[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
        .copy_from_slice(&first_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Summary of one validated batch a producer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// Number of records (offsets the batch takes).
    pub record_count: i32,
    /// Largest timestamp in the batch as sent.
    pub max_timestamp: i64,
    /// Bytes on disk.
    pub size: usize,
    /// A control batch (only the broker may write one).
    pub control: bool,
}

/// Validates every batch in a produce payload; returns their summaries in order.
pub fn validate_produce_payload(mut bytes: &[u8]) -> Result<Vec<BatchSummary>, BatchError> {
    let mut out = Vec::with_capacity(1);
    if bytes.is_empty() {
        return Err(BatchError::InvalidRecords);
    }
    while !bytes.is_empty() {
        let (view, rest) = BatchView::split_first(bytes)?;
        view.validate_for_append()?;
        out.push(BatchSummary {
            record_count: view.record_count(),
            max_timestamp: view.max_timestamp(),
            size: view.bytes().len(),
            control: view.is_control(),
        });
        bytes = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_batch_writes_what_stamping_a_copy_did() {
        let records: [KeyAndValue<'_>; 3] = [
            (None, Some(&b"one"[..])),
            (Some(&b"k"[..]), Some(&b"two"[..])),
            (None, None),
        ];
        let batch = data_batch(1_000, &records);
        let mut copy = batch.clone();
        stamp_base_offset(&mut copy, 41);
        stamp_leader_epoch(&mut copy, 7);
        let stamped = StampedBatch::new(batch.clone().freeze(), 41, Some(7));
        assert_eq!(stamped.to_vec(), copy.to_vec());
        assert_eq!(stamped.parts().concat(), copy.to_vec());
        assert_eq!(stamped.len(), batch.len());
        assert_eq!(stamped.next_offset(), 44);
        let written = stamped.to_vec();
        let (view, rest) = BatchView::split_first(&written).expect("a batch");
        assert!(
            rest.is_empty() && view.crc_ok(),
            "the stamp is outside the CRC"
        );
        // Without an epoch, the batch keeps the one it came with.
        let kept = StampedBatch::new(batch.clone().freeze(), 41, None);
        assert_eq!(
            kept.to_vec()[LEADER_EPOCH_OFFSET..],
            batch[LEADER_EPOCH_OFFSET..]
        );
    }

    #[test]
    #[should_panic(expected = "whole batch header")]
    fn a_stamped_batch_must_be_a_whole_batch() {
        StampedBatch::new(Bytes::from_static(&[0; 20]), 0, None);
    }
}
