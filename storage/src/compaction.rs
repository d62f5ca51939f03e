//! Log compaction's pure half: the map of latest offsets per key, the rule that decides which
//! records of a batch survive, and the rewriting of a batch that lost some. No I/O happens
//! here; the cleaner (`log/cleaner.rs`) reads segments, feeds their batches through these
//! functions and swaps the results in.
//!
//! The rules are Kafka's (LogCleaner, KIP-534):
//! * a record survives when no later record in the cleaned range has its key;
//! * a tombstone (null value) also survives until its batch's *delete horizon* has passed. The
//!   first clean that keeps a tombstone stamps the horizon — now + `delete.retention.ms` — into
//!   the batch: attribute bit 6 set, the horizon in `base_timestamp`, every record's timestamp
//!   delta re-encoded against it so record timestamps do not change;
//! * records without a key do not survive (produce refuses them on compacted topics);
//! * control batches and batches that cannot be read are kept as they are;
//! * a rewritten batch keeps its base offset, last offset delta, producer id, epoch and base
//!   sequence, so offsets and idempotence metadata do not change.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use sluice_core::limits;

use crate::batch::{self, get_bytes, get_varint, put_varint, BatchHeader, HEADER_BYTES};
use crate::codec;

/// Attribute bit 6: `base_timestamp` holds the batch's delete horizon (KIP-534).
pub const DELETE_HORIZON_BIT: i16 = 0x40;

/// One record inside a batch's (decompressed) records section.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub attributes: u8,
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub has_value: bool,
    /// The record's bytes after its length prefix.
    body: &'a [u8],
    /// From the offset delta to the end of the record.
    after_timestamp: &'a [u8],
}

/// Parses exactly `count` records filling `section`, their offset deltas growing within
/// `0..=last_offset_delta`; None when they do not. (A delta is the producer's: one out of range
/// would give a record an offset it does not have, and the cleaner would keep or drop by it.)
pub fn parse_records(
    section: &[u8],
    count: i32,
    last_offset_delta: i32,
) -> Option<Vec<RecordView<'_>>> {
    let mut rest = section;
    let mut previous = -1i64;
    let mut out = Vec::with_capacity(count.clamp(0, 4096) as usize);
    for _ in 0..count {
        let len = usize::try_from(get_varint(&mut rest)?).ok()?;
        let (body, after) = rest.split_at_checked(len)?;
        rest = after;
        let (&attributes, mut fields) = body.split_first()?;
        let timestamp_delta = get_varint(&mut fields)?;
        let after_timestamp = fields;
        let offset_delta = get_varint(&mut fields)?;
        if offset_delta <= previous || offset_delta > i64::from(last_offset_delta) {
            return None;
        }
        previous = offset_delta;
        let key = get_bytes(&mut fields)?;
        let has_value = get_bytes(&mut fields)?.is_some();
        out.push(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            has_value,
            body,
            after_timestamp,
        });
    }
    rest.is_empty().then_some(out)
}

/// The records section of a whole batch, inflated.
/// The records section of a whole batch: borrowed as it is when uncompressed (no copy on the
/// produce path), inflated otherwise.
fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, &'static str> {
    let body = batch
        .get(HEADER_BYTES..header.total_bytes())
        .ok_or("record batch is truncated")?;
    if header.compression_codec() == codec::NONE {
        return Ok(Cow::Borrowed(body));
    }
    codec::decompress(
        header.compression_codec(),
        body,
        limits::decompressed_batch_bytes_max,
    )
    .map(Cow::Owned)
    .map_err(|e| match e {
        codec::CodecError::TooLarge => "records inflate past the broker's limit",
        _ => "compressed records do not decode",
    })
}

/// The produce-time check of compacted topics (Kafka's): every record has a key.
pub fn check_keys(batch: &[u8]) -> Result<(), &'static str> {
    let header = BatchHeader::parse(batch).ok_or("record batch is truncated")?;
    let section = records_section(batch, &header)?;
    let records = parse_records(&section, header.records_count, header.last_offset_delta)
        .ok_or("records do not parse")?;
    // As Kafka validates a produced batch: the records' offset deltas are 0, 1, 2, ...
    if records
        .iter()
        .enumerate()
        .any(|(i, r)| r.offset_delta != i as i64)
    {
        return Err("record offset deltas are not consecutive from 0");
    }
    if records.iter().any(|r| r.key.is_none()) {
        return Err("Compacted topic cannot accept message without key");
    }
    Ok(())
}

/// The latest offset of every key seen, within a memory budget
/// (`log.cleaner.dedupe.buffer.size`). Keys are kept whole, not hashed: a hash collision could
/// make the cleaner drop a live record.
pub struct KeyMap {
    offsets: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    bytes_max: usize,
}

/// What one entry costs besides its key: the table slot, the boxed slice's header, the offset.
const KEY_MAP_ENTRY_OVERHEAD_BYTES: usize = 48;

impl KeyMap {
    pub fn new(bytes_max: usize) -> KeyMap {
        KeyMap {
            offsets: HashMap::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Records `offset` as the latest for `key`; false (nothing recorded) when a new key does
    /// not fit in the budget.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        if let Some(latest) = self.offsets.get_mut(key) {
            *latest = (*latest).max(offset);
            return true;
        }
        let cost = key.len() + KEY_MAP_ENTRY_OVERHEAD_BYTES;
        if self.bytes + cost > self.bytes_max {
            return false;
        }
        self.bytes += cost;
        self.offsets.insert(key.into(), offset);
        true
    }

    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.offsets.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// Adds the keys of one batch to `map`. Returns false when the map filled up part-way: the
/// caller must then end the cleanable range at this batch's base offset. Control batches and
/// batches that cannot be read add nothing.
pub fn add_keys(map: &mut KeyMap, batch: &[u8]) -> bool {
    let Some(header) = BatchHeader::parse(batch) else {
        return true;
    };
    if header.is_control() {
        return true;
    }
    let Ok(section) = records_section(batch, &header) else {
        return true;
    };
    let Some(records) = parse_records(&section, header.records_count, header.last_offset_delta)
    else {
        return true;
    };
    for r in &records {
        if let Some(key) = r.key {
            if !map.put(key, header.base_offset + r.offset_delta) {
                return false;
            }
        }
    }
    true
}

/// What the cleaner does with one batch.
#[derive(Debug)]
pub enum Filtered {
    /// Unchanged: write the original bytes.
    Keep,
    /// Nothing survives.
    Drop,
    /// Some records survive, or a delete horizon was stamped: write these bytes instead.
    Rewrite(BytesMut),
}

#[derive(Debug)]
pub struct FilterOutcome {
    pub filtered: Filtered,
    pub records_removed: u32,
    /// The delete horizon of tombstones kept in the batch, if any: the log needs another clean
    /// once it passes.
    pub horizon_ms: Option<i64>,
}

impl FilterOutcome {
    fn keep() -> FilterOutcome {
        FilterOutcome {
            filtered: Filtered::Keep,
            records_removed: 0,
            horizon_ms: None,
        }
    }
}

/// Applies the compaction rules to one whole batch. Records at or past `map_end` are beyond
/// what `map` covers and always survive.
pub fn filter_batch(
    batch: &[u8],
    map: &KeyMap,
    map_end: i64,
    now_ms: i64,
    delete_retention_ms: i64,
) -> FilterOutcome {
    let Some(header) = BatchHeader::parse(batch) else {
        return FilterOutcome::keep();
    };
    if header.is_control() || header.base_offset >= map_end {
        return FilterOutcome::keep();
    }
    let Ok(section) = records_section(batch, &header) else {
        return FilterOutcome::keep();
    };
    let Some(records) = parse_records(&section, header.records_count, header.last_offset_delta)
    else {
        return FilterOutcome::keep();
    };
    let stamped = (header.attributes & DELETE_HORIZON_BIT != 0).then_some(header.base_timestamp);
    let mut kept = Vec::with_capacity(records.len());
    let mut tombstones_kept = false;
    for r in &records {
        let offset = header.base_offset + r.offset_delta;
        let survives = offset >= map_end
            || match r.key {
                None => false,
                Some(key) => {
                    let latest = map.get(key).is_none_or(|latest| offset >= latest);
                    let live = r.has_value || stamped.is_none_or(|h| now_ms < h);
                    latest && live
                }
            };
        if survives {
            tombstones_kept |= !r.has_value;
            kept.push(*r);
        }
    }
    let removed = (records.len() - kept.len()) as u32;
    let new_horizon =
        (tombstones_kept && stamped.is_none()).then(|| now_ms.saturating_add(delete_retention_ms));
    let horizon_ms = if tombstones_kept {
        stamped.or(new_horizon)
    } else {
        None
    };
    let filtered = if kept.is_empty() {
        Filtered::Drop
    } else if removed == 0 && new_horizon.is_none() {
        Filtered::Keep
    } else {
        match rebuild(batch, &header, &kept, new_horizon) {
            Ok(bytes) => Filtered::Rewrite(bytes),
            // Cannot re-encode: keep the batch whole rather than lose anything.
            Err(_) => return FilterOutcome::keep(),
        }
    };
    FilterOutcome {
        filtered,
        records_removed: removed,
        horizon_ms,
    }
}

/// A batch holding only `kept` of the original's records, its header otherwise unchanged —
/// except a new delete horizon, when given, and the max timestamp of what remains.
fn rebuild(
    original: &[u8],
    header: &BatchHeader,
    kept: &[RecordView<'_>],
    new_horizon: Option<i64>,
) -> Result<BytesMut, codec::CodecError> {
    let mut section = BytesMut::new();
    let mut max_timestamp = i64::MIN;
    let mut body = BytesMut::new();
    for r in kept {
        let timestamp = header.base_timestamp.wrapping_add(r.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        match new_horizon {
            None => {
                put_varint(&mut section, r.body.len() as i64);
                section.put_slice(r.body);
            }
            Some(horizon) => {
                body.clear();
                body.put_u8(r.attributes);
                put_varint(&mut body, timestamp.wrapping_sub(horizon));
                body.put_slice(r.after_timestamp);
                put_varint(&mut section, body.len() as i64);
                section.put_slice(&body);
            }
        }
    }
    let records = codec::compress(header.compression_codec(), &section)?;
    let mut out = BytesMut::with_capacity(HEADER_BYTES + records.len());
    out.put_slice(&original[..HEADER_BYTES]);
    out.put_slice(&records);
    let batch_length = (HEADER_BYTES - batch::LOG_OVERHEAD + records.len()) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let mut attributes = header.attributes;
    let mut base_timestamp = header.base_timestamp;
    if let Some(horizon) = new_horizon {
        attributes |= DELETE_HORIZON_BIT;
        base_timestamp = horizon;
    }
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
    if !header.is_log_append_time() {
        out[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    }
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    batch::reseal_crc(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{
        assign_offset, build_keyed_batch, records, validate_stored as validate, KeyValue,
    };

    fn batch_at(base: i64, items: &[KeyValue<'_>]) -> BytesMut {
        let mut b = build_keyed_batch(0, 1_000, items);
        assign_offset(&mut b, base, 3);
        b
    }

    fn compressed(mut b: BytesMut, codec_id: i16) -> BytesMut {
        let header = validate(&b).expect("valid");
        let packed = codec::compress(codec_id, &b[HEADER_BYTES..]).expect("compresses");
        b.truncate(HEADER_BYTES);
        b.put_slice(&packed);
        let len = (HEADER_BYTES - batch::LOG_OVERHEAD + packed.len()) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[21..23].copy_from_slice(&(header.attributes | codec_id).to_be_bytes());
        batch::reseal_crc(&mut b);
        validate(&b).expect("still valid");
        b
    }

    #[test]
    fn superseded_records_go_and_offsets_stay() {
        let old = batch_at(10, &[(Some(b"a"), Some(b"1")), (Some(b"b"), Some(b"1"))]);
        let new = batch_at(12, &[(Some(b"a"), Some(b"2"))]);
        let mut map = KeyMap::new(1 << 20);
        assert!(add_keys(&mut map, &old));
        assert!(add_keys(&mut map, &new));
        assert_eq!(map.get(b"a"), Some(12));
        let out = filter_batch(&old, &map, 13, 5_000, 1_000);
        assert_eq!(out.records_removed, 1);
        let Filtered::Rewrite(bytes) = out.filtered else {
            panic!("expected a rewrite, got {:?}", out.filtered);
        };
        let h = validate(&bytes).expect("rewritten batch is valid");
        assert_eq!(
            (h.base_offset, h.last_offset(), h.records_count),
            (10, 11, 1)
        );
        assert_eq!(h.partition_leader_epoch, 3);
        let left = records(&bytes).expect("parses");
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].offset, left[0].key), (11, Some(&b"b"[..])));
        assert!(matches!(
            filter_batch(&new, &map, 13, 5_000, 1_000).filtered,
            Filtered::Keep
        ));
        // Past the map's end everything survives.
        assert!(matches!(
            filter_batch(&old, &map, 10, 5_000, 1_000).filtered,
            Filtered::Keep
        ));
    }

    #[test]
    fn tombstones_get_a_horizon_then_go() {
        let tomb = batch_at(20, &[(Some(b"k"), None)]);
        let mut map = KeyMap::new(1 << 20);
        assert!(add_keys(&mut map, &tomb));
        let first = filter_batch(&tomb, &map, 21, 5_000, 1_000);
        assert_eq!(first.horizon_ms, Some(6_000));
        let Filtered::Rewrite(stamped) = first.filtered else {
            panic!("a kept tombstone is stamped with its horizon");
        };
        let h = validate(&stamped).expect("valid");
        assert_ne!(h.attributes & DELETE_HORIZON_BIT, 0);
        assert_eq!(h.base_timestamp, 6_000);
        assert_eq!(h.max_timestamp, 1_000, "record timestamps do not change");
        let section = &stamped[HEADER_BYTES..];
        let r = parse_records(section, 1, 0).expect("parses");
        assert_eq!(h.base_timestamp + r[0].timestamp_delta, 1_000);
        // Before the horizon: kept unchanged. After: gone.
        let again = filter_batch(&stamped, &map, 21, 5_999, 1_000);
        assert!(matches!(again.filtered, Filtered::Keep));
        assert_eq!(again.horizon_ms, Some(6_000));
        let late = filter_batch(&stamped, &map, 21, 6_000, 1_000);
        assert!(matches!(late.filtered, Filtered::Drop));
    }

    #[test]
    fn compressed_batches_are_rewritten_in_their_codec() {
        for codec_id in [codec::GZIP, codec::SNAPPY, codec::LZ4, codec::ZSTD] {
            let items: Vec<(Vec<u8>, Vec<u8>)> = (0..50)
                .map(|i| (format!("k{}", i % 10).into_bytes(), vec![b'v'; 100]))
                .collect();
            let refs: Vec<KeyValue<'_>> = items
                .iter()
                .map(|(k, v)| (Some(&k[..]), Some(&v[..])))
                .collect();
            let b = compressed(batch_at(0, &refs), codec_id);
            let mut map = KeyMap::new(1 << 20);
            assert!(add_keys(&mut map, &b));
            assert_eq!(map.len(), 10);
            let out = filter_batch(&b, &map, 50, 0, 0);
            assert_eq!(out.records_removed, 40, "codec {codec_id}");
            let Filtered::Rewrite(bytes) = out.filtered else {
                panic!("rewrite expected");
            };
            let h = validate(&bytes).expect("valid");
            assert_eq!(h.compression_codec(), codec_id);
            assert_eq!((h.last_offset(), h.records_count), (49, 10));
            let section =
                codec::decompress(codec_id, &bytes[HEADER_BYTES..], 1 << 20).expect("inflates");
            let left = parse_records(&section, 10, 49).expect("parses");
            let offsets: Vec<i64> = left.iter().map(|r| r.offset_delta).collect();
            assert_eq!(offsets, (40..50).collect::<Vec<i64>>());
        }
    }

    #[test]
    fn key_map_respects_its_budget_and_keyless_records_are_refused() {
        let mut map = KeyMap::new(2 * (KEY_MAP_ENTRY_OVERHEAD_BYTES + 1));
        assert!(map.put(b"a", 1));
        assert!(map.put(b"b", 2));
        assert!(map.put(b"a", 3), "updating a key costs nothing");
        assert!(!map.put(b"c", 4));
        assert_eq!((map.get(b"a"), map.get(b"c")), (Some(3), None));
        let keyless = batch_at(0, &[(Some(b"k"), Some(b"v")), (None, Some(b"v"))]);
        assert!(check_keys(&keyless).is_err());
        let keyed = compressed(batch_at(0, &[(Some(b"k"), None)]), codec::ZSTD);
        assert_eq!(check_keys(&keyed), Ok(()));
        for cut in 0..keyed.len() {
            let _ = check_keys(&keyed[..cut]); // never panics
            let _ = filter_batch(&keyed[..cut], &map, 10, 0, 0);
        }
        // A record claiming an offset delta past the batch's end is neither trusted by the
        // key map nor accepted at produce.
        let mut bogus = batch_at(0, &[(Some(b"k"), Some(b"v"))]);
        let delta_at = HEADER_BYTES + 1 + 1 + 1; // length, attributes, timestamp delta
        bogus[delta_at] = 0x7e; // zigzag 63
        batch::reseal_crc(&mut bogus);
        assert!(check_keys(&bogus).is_err());
        let mut fresh = KeyMap::new(1 << 20);
        assert!(add_keys(&mut fresh, &bogus));
        assert!(fresh.is_empty(), "nothing from an unreadable batch");
    }
}
