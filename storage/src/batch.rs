//! Kafka record batches (magic 2) as raw bytes: header parsing, validation and in-place patching.
//!
//! The broker never decodes records on the produce path. It validates the 61-byte header and the
//! CRC-32C (which covers everything from `attributes` to the end of the batch), then assigns
//! offsets by overwriting `base_offset` and the partition leader epoch — both outside the CRC —
//! so a batch is stored byte-for-byte as the producer compressed it.
//!
//! Header layout (big-endian), see docs/FORMATS.md:
//! ```text
//! 0  base_offset i64        8  batch_length i32     12 partition_leader_epoch i32
//! 16 magic i8               17 crc u32              21 attributes i16
//! 23 last_offset_delta i32  27 base_timestamp i64   35 max_timestamp i64
//! 43 producer_id i64        51 producer_epoch i16   53 base_sequence i32
//! 57 records_count i32      61 records...
//! ```

use bytes::{Buf, BufMut, BytesMut};

use crate::error::BatchError;

pub const HEADER_BYTES: usize = sluice_core::limits::batch_header_bytes;
/// Bytes before `batch_length` counts from: base_offset + batch_length.
pub const LOG_OVERHEAD: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const LEADER_EPOCH_OFFSET: usize = 12;
const PRODUCER_ID_OFFSET: usize = 43;
/// Bit 3 of attributes: timestamp type (0 CreateTime, 1 LogAppendTime).
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
/// Bit 4: the batch is transactional; bit 5: it is a control batch.
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
const COMPRESSION_MASK: i16 = 0x07;

/// The decoded fixed-size header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `bytes`; None if fewer than 61 bytes are given.
    pub fn parse(bytes: &[u8]) -> Option<BatchHeader> {
        let mut b = bytes.get(..HEADER_BYTES)?;
        Some(BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            records_count: b.get_i32(),
        })
    }

    /// Total bytes of the batch including the 12-byte log overhead.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression_codec(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
}

/// Checks that `batch` is exactly one well-formed magic-2 batch whose CRC matches.
///
/// Costs one pass of CRC-32C over the batch (hardware accelerated, ~20 GB/s); nothing is
/// decompressed.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate_stored(batch)?;
    if header.records_count <= 0 || header.last_offset_delta != header.records_count - 1 {
        return Err(BatchError::RecordCount);
    }
    Ok(header)
}

/// [`validate`] for batches read back from a segment: compaction may have removed records from
/// a batch, so its record count may be below `last_offset_delta + 1` (never above).
pub fn validate_stored(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    if batch.len() < HEADER_BYTES {
        if batch.len() > MAGIC_OFFSET && batch[MAGIC_OFFSET] < 2 {
            return Err(BatchError::UnsupportedMagic(batch[MAGIC_OFFSET] as i8));
        }
        return Err(BatchError::Truncated);
    }
    let header = BatchHeader::parse(batch).ok_or(BatchError::Truncated)?;
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    if header.batch_length < (HEADER_BYTES - LOG_OVERHEAD) as i32
        || header.total_bytes() != batch.len()
    {
        return Err(BatchError::LengthMismatch);
    }
    if crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]) != header.crc {
        return Err(BatchError::CrcMismatch);
    }
    if header.records_count < 0
        || header.last_offset_delta < 0
        || i64::from(header.records_count) > i64::from(header.last_offset_delta) + 1
    {
        return Err(BatchError::RecordCount);
    }
    Ok(header)
}

/// Splits a produce payload (`records` of one partition) into batches and validates each.
pub fn split_and_validate(records: &[u8]) -> Result<Vec<(usize, BatchHeader)>, BatchError> {
    split_with(records, validate)
}

/// [`split_and_validate`] for batches read back from a log (see [`validate_stored`]).
pub fn split_stored(records: &[u8]) -> Result<Vec<(usize, BatchHeader)>, BatchError> {
    split_with(records, validate_stored)
}

fn split_with(
    records: &[u8],
    validate: fn(&[u8]) -> Result<BatchHeader, BatchError>,
) -> Result<Vec<(usize, BatchHeader)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < LOG_OVERHEAD + 5 {
            return Err(BatchError::Truncated);
        }
        let length = (&rest[8..12]).get_i32();
        if length < 0 {
            return Err(BatchError::LengthMismatch);
        }
        let total = LOG_OVERHEAD + length as usize;
        if rest[MAGIC_OFFSET] != 2 {
            return Err(BatchError::UnsupportedMagic(rest[MAGIC_OFFSET] as i8));
        }
        let batch = rest.get(..total).ok_or(BatchError::Truncated)?;
        out.push((pos, validate(batch)?));
        pos += total;
    }
    if out.is_empty() {
        return Err(BatchError::Truncated);
    }
    Ok(out)
}

/// Assigns offsets and the leader epoch by patching the header in place. Both fields lie outside
/// the CRC, so the batch stays valid.
pub fn assign_offset(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "assign_offset on a validated batch"
    );
    (&mut batch[0..8]).put_i64(base_offset);
    (&mut batch[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4]).put_i32(leader_epoch);
}

/// Stamps an idempotent producer's id, epoch and first sequence into a whole batch and
/// recomputes the CRC (all three are covered by it). What a client's idempotent producer does;
/// the broker itself never changes them.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= HEADER_BYTES, "set_producer on a whole batch");
    (&mut batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8]).put_i64(producer_id);
    (&mut batch[PRODUCER_ID_OFFSET + 8..PRODUCER_ID_OFFSET + 10]).put_i16(epoch);
    (&mut batch[PRODUCER_ID_OFFSET + 10..PRODUCER_ID_OFFSET + 14]).put_i32(base_sequence);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    (&mut batch[CRC_OFFSET..CRC_OFFSET + 4]).put_u32(crc);
}

/// Makes a whole batch a transactional batch of `producer_id` at `epoch` without a sequence
/// (what the broker writes for a transactional offset commit) and recomputes the CRC.
pub fn set_transactional(batch: &mut [u8], producer_id: i64, epoch: i16) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "set_transactional on a whole batch"
    );
    let attributes = (&batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2]).get_i16();
    (&mut batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2]).put_i16(attributes | TRANSACTIONAL_BIT);
    set_producer(batch, producer_id, epoch, -1);
}

/// Makes a whole batch a control batch of `producer_id` (transactional and control attributes,
/// base sequence -1) and recomputes the CRC. The broker writes transaction markers this way.
pub fn set_control(batch: &mut [u8], producer_id: i64, epoch: i16) {
    assert!(batch.len() >= HEADER_BYTES, "set_control on a whole batch");
    let attributes = (&batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2]).get_i16();
    (&mut batch[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2])
        .put_i16(attributes | TRANSACTIONAL_BIT | CONTROL_BIT);
    set_producer(batch, producer_id, epoch, -1);
}

/// Applies `message.timestamp.type=LogAppendTime`: sets the timestamp-type bit and the max
/// timestamp to the broker's clock, then recomputes the CRC (both fields are covered by it).
pub fn set_log_append_time(batch: &mut BytesMut, now_ms: i64) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "set_log_append_time on a validated batch"
    );
    let (header, body) = batch.split_at_mut(HEADER_BYTES);
    set_log_append_time_split(header, body, now_ms);
}

/// [`set_log_append_time`] for a batch held as its 61-byte header and its body.
pub fn set_log_append_time_split(header: &mut [u8], body: &[u8], now_ms: i64) {
    assert_eq!(header.len(), HEADER_BYTES, "a batch header is 61 bytes");
    let attributes = (&header[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2]).get_i16();
    (&mut header[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2])
        .put_i16(attributes | TIMESTAMP_TYPE_BIT);
    (&mut header[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]).put_i64(now_ms);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES_OFFSET..]), body);
    (&mut header[CRC_OFFSET..CRC_OFFSET + 4]).put_u32(crc);
}

/// Recomputes the CRC-32C of a whole batch whose attributes or records were changed (the
/// cleaner's rewritten batches).
pub fn reseal_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Builds a valid uncompressed batch holding `values` (no keys, no headers). Used by tests and
/// fixtures.
pub fn build_batch(base_offset: i64, timestamp_ms: i64, values: &[&[u8]]) -> BytesMut {
    let records: Vec<KeyValue<'_>> = values.iter().map(|v| (None, Some(*v))).collect();
    build_keyed_batch(base_offset, timestamp_ms, &records)
}

/// A record's key and value; `None` is null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Builds a valid uncompressed batch of `(key, value)` records (`None` is null: a null value is
/// a tombstone), no headers. The broker builds its own internal records this way (committed
/// offsets in `__consumer_offsets`).
pub fn build_keyed_batch(
    base_offset: i64,
    timestamp_ms: i64,
    records: &[KeyValue<'_>],
) -> BytesMut {
    let put_bytes = |buf: &mut BytesMut, bytes: Option<&[u8]>| match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    };
    let mut encoded = BytesMut::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut body = BytesMut::new();
        body.put_i8(0); // record attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, i as i64); // offset delta
        put_bytes(&mut body, *key);
        put_bytes(&mut body, *value);
        put_varint(&mut body, 0); // no headers
        put_varint(&mut encoded, body.len() as i64);
        encoded.put_slice(&body);
    }
    let mut batch = BytesMut::with_capacity(HEADER_BYTES + encoded.len());
    batch.put_i64(base_offset);
    batch.put_i32((HEADER_BYTES - LOG_OVERHEAD + encoded.len()) as i32);
    batch.put_i32(0); // partition leader epoch
    batch.put_i8(2);
    batch.put_u32(0); // crc, filled below
    batch.put_i16(0); // attributes
    batch.put_i32(records.len() as i32 - 1);
    batch.put_i64(timestamp_ms);
    batch.put_i64(timestamp_ms);
    batch.put_i64(-1); // producer id
    batch.put_i16(-1);
    batch.put_i32(-1);
    batch.put_i32(records.len() as i32);
    batch.put_slice(&encoded);
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    (&mut batch[CRC_OFFSET..CRC_OFFSET + 4]).put_u32(crc);
    batch
}

/// One record of an uncompressed batch: its offset, key and value (None: null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// The records of one whole, uncompressed, validated batch (headers skipped); None when the
/// batch is compressed or its records do not parse. The broker reads back only batches it wrote
/// itself this way.
pub fn records(batch: &[u8]) -> Option<Vec<Record<'_>>> {
    let header = BatchHeader::parse(batch)?;
    if header.compression_codec() != 0 {
        return None;
    }
    let mut rest = batch.get(HEADER_BYTES..header.total_bytes())?;
    let mut out = Vec::with_capacity(header.records_count.clamp(0, 4096) as usize);
    for _ in 0..header.records_count {
        let len = usize::try_from(get_varint(&mut rest)?).ok()?;
        let (mut record, after) = rest.split_at_checked(len)?;
        rest = after;
        record.get(..1)?;
        record = &record[1..]; // attributes
        get_varint(&mut record)?; // timestamp delta
        let offset_delta = get_varint(&mut record)?;
        let key = get_bytes(&mut record)?;
        let value = get_bytes(&mut record)?;
        out.push(Record {
            offset: header.base_offset + offset_delta,
            key,
            value,
        });
    }
    Some(out)
}

pub(crate) fn get_varint(buf: &mut &[u8]) -> Option<i64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    None
}

/// A varint-length-prefixed byte string; Some(None) for null (-1).
pub(crate) fn get_bytes<'a>(buf: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let len = get_varint(buf)?;
    if len < 0 {
        return Some(None);
    }
    let (bytes, rest) = buf.split_at_checked(usize::try_from(len).ok()?)?;
    *buf = rest;
    Some(Some(bytes))
}

pub(crate) fn put_varint(buf: &mut BytesMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_batch_round_trips_and_patches() {
        let mut batch = build_batch(0, 1000, &[b"a", b"bb", b"ccc"]);
        let header = validate(&batch).expect("valid");
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assign_offset(&mut batch, 42, 7);
        let header = validate(&batch).expect("still valid after patching");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(header.last_offset(), 44);
        set_log_append_time(&mut batch, 99_000);
        let header = validate(&batch).expect("valid after LogAppendTime");
        assert!(header.is_log_append_time());
        assert_eq!(header.max_timestamp, 99_000);
    }

    #[test]
    fn keyed_records_round_trip() {
        let mut batch = build_keyed_batch(
            0,
            1000,
            &[
                (Some(b"k1"), Some(b"v1")),
                (Some(b""), None),
                (None, Some(b"v3")),
            ],
        );
        assign_offset(&mut batch, 100, 0);
        validate(&batch).expect("valid");
        let got = records(&batch).expect("parses");
        assert_eq!(
            got,
            vec![
                Record {
                    offset: 100,
                    key: Some(b"k1"),
                    value: Some(b"v1")
                },
                Record {
                    offset: 101,
                    key: Some(b""),
                    value: None
                },
                Record {
                    offset: 102,
                    key: None,
                    value: Some(b"v3")
                },
            ]
        );
        for cut in 0..batch.len() {
            let _ = records(&batch[..cut]); // never panics on short input
        }
        let mut v = BytesMut::new();
        for x in [0i64, 1, -1, 300, -300, i64::MAX, i64::MIN] {
            v.clear();
            put_varint(&mut v, x);
            assert_eq!(get_varint(&mut &v[..]), Some(x));
        }
    }

    #[test]
    fn corruption_is_detected() {
        let batch = build_batch(0, 1000, &[b"hello"]);
        let mut bad = batch.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(validate(&bad), Err(BatchError::CrcMismatch));
        assert_eq!(validate(&batch[..30]), Err(BatchError::Truncated));
        let mut old = batch.clone();
        old[MAGIC_OFFSET] = 1;
        assert_eq!(validate(&old), Err(BatchError::UnsupportedMagic(1)));
        let mut short = batch.clone();
        short.truncate(batch.len() - 1);
        assert_eq!(validate(&short), Err(BatchError::LengthMismatch));
    }

    #[test]
    fn payloads_split_into_batches() {
        let mut payload = build_batch(0, 1, &[b"x"]);
        payload.extend_from_slice(&build_batch(0, 2, &[b"y", b"z"]));
        let batches = split_and_validate(&payload).expect("two batches");
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].1.records_count, 2);
        assert!(split_and_validate(&payload[..payload.len() - 3]).is_err());
        assert!(split_and_validate(&[]).is_err());
    }
}
