//! Message sets v0 and v1 (magic 0 and 1), the record format before Kafka 0.11, converted
//! to and from RecordBatch v2 at the edge: the log only ever holds v2 batches.
//!
//! A message: `offset i64, size i32, crc i32, magic i8, attributes i8, [timestamp i64 if
//! magic 1], key bytes, value bytes`; the CRC is CRC-32 (IEEE) over magic..end.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;

use crate::batch::complete_batches;

const COMPRESSION_MASK: i8 = 0x07;

/// Why a message set from an old producer could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpConvertError {
    /// A message's CRC or framing is wrong.
    Corrupt,
    /// Compressed messages (wrapper messages): not converted, refused.
    Compressed,
}

fn nullable(buf: &mut Bytes) -> Result<Option<Bytes>, UpConvertError> {
    if buf.remaining() < 4 {
        return Err(UpConvertError::Corrupt);
    }
    let len = buf.get_i32();
    match len {
        -1 => Ok(None),
        n if n >= 0 && n as usize <= buf.remaining() => Ok(Some(buf.split_to(n as usize))),
        _ => Err(UpConvertError::Corrupt),
    }
}

/// True if `records` holds a v0/v1 message set rather than v2 batches (the magic byte
/// sits at the same place in both).
pub fn is_legacy(records: &[u8]) -> bool {
    records.get(16).is_some_and(|&magic| magic < 2)
}

/// One v2 batch holding the records of a v0/v1 message set. Messages without a timestamp
/// (magic 0, or -1) take `wall`, the wall clock: the log's time retention needs one.
pub fn up_convert(mut set: Bytes, wall: i64) -> Result<Bytes, UpConvertError> {
    let mut records: Vec<(Option<Bytes>, Option<Bytes>, i64)> = Vec::new();
    while set.has_remaining() {
        if set.remaining() < 12 {
            break; // A partial trailing message, as old producers never send.
        }
        let _offset = set.get_i64();
        let size = set.get_i32();
        if size < 14 || size as usize > set.remaining() {
            return Err(UpConvertError::Corrupt);
        }
        let mut message = set.split_to(size as usize);
        let crc = message.get_u32();
        if crc32fast::hash(&message) != crc {
            return Err(UpConvertError::Corrupt);
        }
        let magic = message.get_i8();
        let attributes = message.get_i8();
        if attributes & COMPRESSION_MASK != 0 {
            return Err(UpConvertError::Compressed);
        }
        let timestamp = match magic {
            0 => -1,
            1 if message.remaining() >= 8 => message.get_i64(),
            _ => return Err(UpConvertError::Corrupt),
        };
        let key = nullable(&mut message)?;
        let value = nullable(&mut message)?;
        records.push((key, value, if timestamp < 0 { wall } else { timestamp }));
    }
    if records.is_empty() {
        return Err(UpConvertError::Corrupt);
    }
    Ok(crate::wire::batch_of(records.into_iter()))
}

/// The records of stored v2 batches as a v0 or v1 message set, for fetches of versions
/// 0-3: compressed batches are decompressed, control batches left out (old consumers
/// step over the offsets they take). A trailing partial batch is dropped.
pub fn down_convert(batches: &Bytes, magic: i8) -> Bytes {
    let mut out = BytesMut::with_capacity(batches.len() + batches.len() / 4);
    for view in complete_batches(batches) {
        if view.is_control() {
            continue;
        }
        let mut bytes = Bytes::copy_from_slice(view.bytes());
        let Ok(set) = RecordBatchDecoder::decode(&mut bytes) else {
            // Stored batches are checked on the way in and on every read; an unreadable
            // one ends what an old consumer can be given.
            break;
        };
        for record in &set.records {
            let start = out.len();
            out.put_i64(record.offset);
            out.put_i32(0); // size, patched below
            out.put_u32(0); // crc, patched below
            out.put_i8(magic);
            out.put_i8(if view.is_log_append_time() && magic > 0 {
                0x08
            } else {
                0
            });
            if magic > 0 {
                out.put_i64(record.timestamp);
            }
            for field in [&record.key, &record.value] {
                match field {
                    Some(b) => {
                        out.put_i32(b.len() as i32);
                        out.put_slice(b);
                    }
                    None => out.put_i32(-1),
                }
            }
            let size = (out.len() - start - 12) as i32;
            out[start + 8..start + 12].copy_from_slice(&size.to_be_bytes());
            let crc = crc32fast::hash(&out[start + 16..]);
            out[start + 12..start + 16].copy_from_slice(&crc.to_be_bytes());
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v0/v1 message set as an old producer writes it.
    pub fn message_set(magic: i8, values: &[(&[u8], i64)]) -> Bytes {
        let mut out = BytesMut::new();
        for (i, (value, timestamp)) in values.iter().enumerate() {
            let mut m = BytesMut::new();
            m.put_i8(magic);
            m.put_i8(0);
            if magic == 1 {
                m.put_i64(*timestamp);
            }
            m.put_i32(-1);
            m.put_i32(value.len() as i32);
            m.put_slice(value);
            out.put_i64(i as i64);
            out.put_i32(m.len() as i32 + 4);
            out.put_u32(crc32fast::hash(&m));
            out.put_slice(&m);
        }
        out.freeze()
    }

    #[test]
    fn an_old_message_set_becomes_one_batch_and_comes_back_the_same() {
        for magic in [0, 1] {
            let set = message_set(magic, &[(b"a", 5), (b"bb", 6)]);
            assert!(is_legacy(&set));
            let batch = up_convert(set.clone(), 99).expect("converts");
            assert!(!is_legacy(&batch));
            let back = down_convert(&batch, magic);
            let expected = if magic == 0 {
                set
            } else {
                message_set(1, &[(b"a", 5), (b"bb", 6)])
            };
            assert_eq!(back, expected, "magic {magic}");
        }
        let batch = up_convert(message_set(0, &[(b"a", 0)]), 99).unwrap();
        let (view, _) = crate::batch::BatchView::split_first(&batch).unwrap();
        assert_eq!(
            view.max_timestamp(),
            99,
            "magic 0 has no timestamp: the broker's"
        );
    }

    #[test]
    fn corrupt_and_compressed_message_sets_are_refused() {
        let set = message_set(1, &[(b"a", 5)]);
        let mut bad = BytesMut::from(&set[..]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(up_convert(bad.freeze(), 0), Err(UpConvertError::Corrupt));
        let mut zipped = BytesMut::from(&set[..]);
        zipped[17] = 1; // attributes: gzip
        let crc = crc32fast::hash(&zipped[16..]);
        zipped[12..16].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            up_convert(zipped.freeze(), 0),
            Err(UpConvertError::Compressed)
        );
        assert_eq!(
            up_convert(Bytes::from_static(&[0; 9]), 0),
            Err(UpConvertError::Corrupt)
        );
    }
}
