//! Sparse per-segment indexes, held in memory and written to disk when a segment is sealed.
//!
//! * Offset index: `(relative_offset u32, position u32)` every `index.interval.bytes` of log,
//!   pointing at a batch start; lookups give the greatest entry ≤ the wanted offset.
//! * Time index: `(max_timestamp_so_far i64, relative_offset u32)`, appended whenever a batch
//!   raises the segment's max timestamp; lookups give where to start scanning for a timestamp.
//!
//! File format (docs/FORMATS.md): a 24-byte header `magic "SLIX" | version u8 | kind u8 |
//! reserved u16 | base_offset i64 | entry_count u32 | crc32c u32` then the entries, big-endian.
//! The CRC covers the entries. A file whose header or CRC does not check out is rebuilt from the
//! log, never trusted.

use bytes::{Buf, BufMut, BytesMut};

pub const INDEX_MAGIC: &[u8; 4] = b"SLIX";
pub const INDEX_VERSION: u8 = 1;
pub const INDEX_HEADER_BYTES: usize = 24;
const KIND_OFFSET: u8 = 1;
const KIND_TIME: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Both indexes of one segment.
#[derive(Debug, Default, Clone)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u32,
}

impl SegmentIndex {
    /// Records a batch appended at `position`. `interval_bytes` is `index.interval.bytes`.
    pub fn on_append(
        &mut self,
        relative_offset: u32,
        position: u32,
        batch_bytes: u32,
        max_timestamp: i64,
        interval_bytes: u32,
    ) {
        if self.offsets.is_empty() || self.bytes_since_entry >= interval_bytes {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry = self.bytes_since_entry.saturating_add(batch_bytes);
        if self
            .times
            .last()
            .is_none_or(|t| max_timestamp > t.timestamp)
        {
            self.times.push(TimeEntry {
                timestamp: max_timestamp,
                relative_offset,
            });
        }
    }

    /// Position to start scanning from for `relative_offset` (0 when before every entry).
    pub fn position_for(&self, relative_offset: u32) -> u32 {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].position
        }
    }

    /// The relative offset from which a scan for the first batch with max timestamp ≥
    /// `timestamp` should start: the last entry whose running max is still below it.
    pub fn scan_start_for_timestamp(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    /// Drops every entry at or beyond `relative_offset` (used when an unwritten tail is
    /// discarded).
    pub fn truncate_from(&mut self, relative_offset: u32, position: u32) {
        self.offsets
            .retain(|e| e.relative_offset < relative_offset && e.position < position);
        self.times.retain(|e| e.relative_offset < relative_offset);
        self.bytes_since_entry = 0;
    }

    pub fn encode_offsets(&self, base_offset: i64) -> BytesMut {
        let mut entries = BytesMut::with_capacity(self.offsets.len() * 8);
        for e in &self.offsets {
            entries.put_u32(e.relative_offset);
            entries.put_u32(e.position);
        }
        encode_file(KIND_OFFSET, base_offset, self.offsets.len(), &entries)
    }

    pub fn encode_times(&self, base_offset: i64) -> BytesMut {
        let mut entries = BytesMut::with_capacity(self.times.len() * 12);
        for e in &self.times {
            entries.put_i64(e.timestamp);
            entries.put_u32(e.relative_offset);
        }
        encode_file(KIND_TIME, base_offset, self.times.len(), &entries)
    }

    /// Loads both index files of a segment; None if either is missing, damaged, or was written
    /// for another segment, in which case the caller rebuilds from the log.
    pub fn decode(base_offset: i64, offsets_file: &[u8], times_file: &[u8]) -> Option<Self> {
        let raw = decode_file(KIND_OFFSET, base_offset, offsets_file, 8)?;
        let offsets = raw
            .chunks_exact(8)
            .map(|mut c| OffsetEntry {
                relative_offset: c.get_u32(),
                position: c.get_u32(),
            })
            .collect::<Vec<_>>();
        let raw = decode_file(KIND_TIME, base_offset, times_file, 12)?;
        let times = raw
            .chunks_exact(12)
            .map(|mut c| TimeEntry {
                timestamp: c.get_i64(),
                relative_offset: c.get_u32(),
            })
            .collect::<Vec<_>>();
        let sorted = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
        if !sorted {
            return None;
        }
        Some(SegmentIndex {
            offsets,
            times,
            bytes_since_entry: 0,
        })
    }
}

fn encode_file(kind: u8, base_offset: i64, count: usize, entries: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(INDEX_HEADER_BYTES + entries.len());
    out.put_slice(INDEX_MAGIC);
    out.put_u8(INDEX_VERSION);
    out.put_u8(kind);
    out.put_u16(0);
    out.put_i64(base_offset);
    out.put_u32(count as u32);
    out.put_u32(crc32c::crc32c(entries));
    out.put_slice(entries);
    out
}

fn decode_file(kind: u8, base_offset: i64, file: &[u8], entry_bytes: usize) -> Option<&[u8]> {
    let mut header = file.get(..INDEX_HEADER_BYTES)?;
    if &header[..4] != INDEX_MAGIC {
        return None;
    }
    header.advance(4);
    if header.get_u8() != INDEX_VERSION || header.get_u8() != kind {
        return None;
    }
    header.advance(2);
    if header.get_i64() != base_offset {
        return None;
    }
    let count = header.get_u32() as usize;
    let crc = header.get_u32();
    let entries = file.get(INDEX_HEADER_BYTES..INDEX_HEADER_BYTES + count * entry_bytes)?;
    (crc32c::crc32c(entries) == crc).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::default();
        // batches of 3000 bytes, 10 records each, timestamps rising then one late record
        for (i, ts) in [100, 200, 150, 400, 500].iter().enumerate() {
            index.on_append(i as u32 * 10, i as u32 * 3000, 3000, *ts, 4096);
        }
        index
    }

    #[test]
    fn lookups_find_floor_entries() {
        let index = sample();
        // entries every 4096 bytes: batches 0, 2, 4
        assert_eq!(index.offsets.len(), 3);
        assert_eq!(index.position_for(0), 0);
        assert_eq!(index.position_for(25), 6000);
        assert_eq!(index.position_for(1000), 12000);
        assert_eq!(index.scan_start_for_timestamp(50), 0);
        assert_eq!(index.scan_start_for_timestamp(300), 10);
        assert_eq!(index.times.len(), 4, "the late timestamp adds no entry");
    }

    #[test]
    fn files_round_trip_and_reject_damage() {
        let index = sample();
        let offsets = index.encode_offsets(500);
        let times = index.encode_times(500);
        let loaded = SegmentIndex::decode(500, &offsets, &times).expect("round trip");
        assert_eq!(loaded.offsets, index.offsets);
        assert_eq!(loaded.times, index.times);
        assert!(
            SegmentIndex::decode(501, &offsets, &times).is_none(),
            "wrong segment"
        );
        let mut damaged = offsets.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(SegmentIndex::decode(500, &damaged, &times).is_none(), "crc");
        assert!(
            SegmentIndex::decode(500, &offsets[..30], &times).is_none(),
            "truncated"
        );
        assert!(SegmentIndex::decode(500, &[], &times).is_none(), "missing");
    }
}
