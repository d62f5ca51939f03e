//! One segment of a partition log: a `.log` file written with O_DIRECT, its in-memory indexes,
//! and the in-memory tail of recently appended batches.
//!
//! Durability contract: `append` only changes memory. Bytes become *written* (they survive a
//! crash of the process) when the core's flusher has copied them into an aligned DMA buffer and
//! the write completed, and *synced* (they survive power loss) after the fdatasync that follows.
//! The file may hold zero padding past `size` (the partial last block is padded to the 4 KiB
//! alignment and preallocation extends the file); recovery stops at the first header that is
//! not a valid batch, so padding is never mistaken for data.
//!
//! Lives on the core that owns the partition; never shared with another core.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::error::{Result, StorageError};
use crate::index::SegmentIndex;
use sluice_core::limits;

/// File names of a segment, named by base offset like Kafka's (20 digits, zero padded).
pub fn segment_path(dir: &Path, base_offset: i64, extension: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{extension}"))
}

pub fn align_down(v: u64) -> u64 {
    v & !(limits::dma_alignment_bytes - 1)
}

pub fn align_up(v: u64) -> u64 {
    align_down(v + limits::dma_alignment_bytes - 1)
}

pub struct Segment {
    pub base_offset: i64,
    pub dir: PathBuf,
    /// None until the flusher has created the file (appends never wait for file creation).
    pub file: Option<Rc<DmaFile>>,
    /// Logical bytes appended.
    pub size: u64,
    /// Bytes whose DMA write completed.
    pub written: u64,
    /// Bytes the file has been extended to by preallocation.
    pub preallocated: u64,
    /// One past the last offset in the segment (== base_offset when empty).
    pub next_offset: i64,
    pub max_timestamp: i64,
    /// Position of the batch holding `max_timestamp`.
    pub max_timestamp_position: u64,
    /// Wall clock of the first append, for `segment.ms`.
    pub first_append_ms: Option<i64>,
    pub index: SegmentIndex,
    /// Recent bytes, contiguous from `cache_start` to `size`; always covers everything from
    /// the aligned start of the unwritten tail (the flusher rewrites that partial block).
    cache: VecDeque<Bytes>,
    cache_start: u64,
    /// The segment is no longer appended to and has been truncated and its indexes written.
    pub sealed: bool,
    /// No more appends: the flusher must seal it once everything is written.
    pub rolled: bool,
}

impl Segment {
    /// A new, empty segment whose file the flusher will create.
    pub fn new(dir: &Path, base_offset: i64) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            written: 0,
            preallocated: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            max_timestamp_position: 0,
            first_append_ms: None,
            index: SegmentIndex::default(),
            cache: VecDeque::new(),
            cache_start: 0,
            sealed: false,
            rolled: false,
        }
    }

    pub fn path(&self, extension: &str) -> PathBuf {
        segment_path(&self.dir, self.base_offset, extension)
    }

    pub fn cache_bytes(&self) -> u64 {
        self.size - self.cache_start
    }

    /// Appends one validated, offset-assigned batch to memory, as two pieces: its patched
    /// 61-byte header and its body, which stays the producer's bytes (a zero-copy slice of the
    /// request buffer — the only copy on the produce path is into the DMA buffer).
    pub fn append(
        &mut self,
        patched_header: Bytes,
        body: Bytes,
        header: &BatchHeader,
        now_ms: i64,
        interval: u32,
    ) {
        assert_eq!(
            patched_header.len(),
            HEADER_BYTES,
            "a batch header is 61 bytes"
        );
        let batch_len = (patched_header.len() + body.len()) as u64;
        assert!(
            header.base_offset == self.next_offset,
            "offsets are contiguous in a segment"
        );
        assert!(!self.rolled, "append to a rolled segment");
        let position = self.size;
        let relative = (header.base_offset - self.base_offset) as u32;
        self.index.on_append(
            relative,
            position as u32,
            batch_len as u32,
            header.max_timestamp,
            interval,
        );
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_position = position;
        }
        self.first_append_ms.get_or_insert(now_ms);
        self.size += batch_len;
        self.next_offset = header.last_offset() + 1;
        self.cache.push_back(patched_header);
        if !body.is_empty() {
            self.cache.push_back(body);
        }
    }

    /// Drops cached chunks from the front until at most `keep_bytes` remain, never dropping
    /// bytes the flusher still needs.
    pub fn trim_cache(&mut self, keep_bytes: u64) {
        let needed_from = align_down(self.written);
        while self.cache_bytes() > keep_bytes {
            let Some(front) = self.cache.front() else {
                break;
            };
            let front_end = self.cache_start + front.len() as u64;
            if front_end > needed_from {
                break;
            }
            self.cache_start = front_end;
            self.cache.pop_front();
        }
    }

    /// True when bytes `from..to` are all in the cache.
    pub fn caches(&self, from: u64, to: u64) -> bool {
        from >= self.cache_start && from <= to && to <= self.size
    }

    /// Copies `[from, to)` out of the cache; the range must lie inside it.
    pub fn copy_from_cache(&self, from: u64, to: u64, out: &mut [u8]) {
        assert!(from >= self.cache_start && to <= self.size && out.len() as u64 >= to - from);
        let mut chunk_start = self.cache_start;
        let mut written = 0usize;
        for chunk in &self.cache {
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end > from && chunk_start < to {
                let a = from.max(chunk_start) - chunk_start;
                let b = to.min(chunk_end) - chunk_start;
                let piece = &chunk[a as usize..b as usize];
                out[written..written + piece.len()].copy_from_slice(piece);
                written += piece.len();
            }
            if chunk_end >= to {
                break;
            }
            chunk_start = chunk_end;
        }
        assert_eq!(
            written as u64,
            to - from,
            "cache covers the requested range"
        );
    }

    /// Returns `[from, to)` from the cache when the range lies inside it: zero-copy when it lies
    /// inside one batch, one copy otherwise.
    pub fn slice_from_cache(&self, from: u64, to: u64) -> Option<Bytes> {
        if from < self.cache_start || to > self.size || from > to {
            return None;
        }
        let mut chunk_start = self.cache_start;
        for chunk in &self.cache {
            let chunk_end = chunk_start + chunk.len() as u64;
            if from >= chunk_start && to <= chunk_end {
                return Some(
                    chunk.slice((from - chunk_start) as usize..(to - chunk_start) as usize),
                );
            }
            if chunk_end > from {
                break;
            }
            chunk_start = chunk_end;
        }
        let mut out = BytesMut::zeroed((to - from) as usize);
        self.copy_from_cache(from, to, &mut out);
        Some(out.freeze())
    }

    /// `[from, to)` of the cache as zero-copy slices of its pieces; the range must lie inside it.
    pub fn pieces(&self, from: u64, to: u64) -> Vec<Bytes> {
        assert!(from >= self.cache_start && to <= self.size && from <= to);
        let mut out = Vec::new();
        let mut chunk_start = self.cache_start;
        for chunk in &self.cache {
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end > from && chunk_start < to {
                let a = (from.max(chunk_start) - chunk_start) as usize;
                let b = (to.min(chunk_end) - chunk_start) as usize;
                out.push(chunk.slice(a..b));
            }
            if chunk_end >= to {
                break;
            }
            chunk_start = chunk_end;
        }
        out
    }

    /// Where cached bytes begin; everything before is read from the file.
    pub fn cache_start(&self) -> u64 {
        self.cache_start
    }

    /// Forgets the cache: every byte of the segment is read from its file (a sealed segment
    /// whose file the cleaner replaced).
    pub fn clear_cache(&mut self) {
        assert!(
            self.sealed,
            "only a sealed segment reads everything from its file"
        );
        self.cache.clear();
        self.cache_start = self.size;
    }

    /// Places the recovered partial last block in the cache so the next flush can rewrite it.
    pub fn seed_tail(&mut self, aligned_start: u64, tail: Bytes) {
        assert!(self.cache.is_empty() && aligned_start + tail.len() as u64 == self.size);
        self.cache_start = aligned_start;
        if !tail.is_empty() {
            self.cache.push_back(tail);
        }
    }

    /// Forgets every byte past `size` bytes / `next_offset` (an unwritten tail that failed).
    pub fn truncate_memory(&mut self, size: u64, next_offset: i64) {
        assert!(size >= self.written && size <= self.size);
        let mut keep = VecDeque::new();
        let mut start = self.cache_start;
        for chunk in self.cache.drain(..) {
            let end = start + chunk.len() as u64;
            if end <= size {
                keep.push_back(chunk);
            } else if start < size {
                keep.push_back(chunk.slice(..(size - start) as usize));
            }
            start = end;
        }
        self.cache = keep;
        self.size = size;
        self.next_offset = next_offset;
        self.index
            .truncate_from((next_offset - self.base_offset) as u32, size as u32);
        if self.size == 0 {
            self.first_append_ms = None;
        }
    }
}

/// Reads `[from, to)` of a segment: cache where possible, the file below the cache.
pub async fn read_range(
    file: Option<Rc<DmaFile>>,
    cached: Option<Bytes>,
    cache_start: u64,
    from: u64,
    to: u64,
) -> Result<Bytes> {
    if from >= to {
        return Ok(Bytes::new());
    }
    if let Some(bytes) = cached {
        return Ok(bytes);
    }
    let file = file.ok_or_else(|| StorageError::Corrupt("segment has no file".into()))?;
    let disk_to = to.min(cache_start.max(from));
    let mut out = BytesMut::with_capacity((to - from) as usize);
    let mut pos = from;
    while pos < disk_to {
        let len = ((disk_to - pos) as usize).min(limits::dma_read_chunk_bytes);
        let chunk = file.read_at(pos, len).await?;
        if chunk.is_empty() {
            return Err(StorageError::Corrupt(format!("short read at {pos}")));
        }
        out.extend_from_slice(&chunk);
        pos += chunk.len() as u64;
    }
    Ok(out.freeze())
}

/// Result of scanning a segment file batch by batch.
pub struct ScanResult {
    /// Bytes of whole, valid batches from the start of the file.
    pub valid_bytes: u64,
    pub next_offset: i64,
    pub index: SegmentIndex,
    pub max_timestamp: i64,
    pub max_timestamp_position: u64,
    /// Bytes after `valid_bytes` that held something other than zero padding.
    pub garbage_after: bool,
}

/// Walks every batch of `file` from position 0, checking header sanity, that offsets follow
/// (`contiguous`) or at least grow, and CRC, and stops at the first batch that fails: that is
/// where a torn or corrupt tail begins.
///
/// `on_batch` sees the header of every valid batch, with its offset, in log order.
pub async fn scan(
    file: &DmaFile,
    base_offset: i64,
    interval: u32,
    contiguous: bool,
    on_batch: &mut dyn FnMut(&BatchHeader, &[u8]),
) -> Result<ScanResult> {
    scan_while(file, base_offset, interval, contiguous, &mut |h, bytes| {
        on_batch(h, bytes);
        true
    })
    .await
}

/// [`scan`], which also stops before the first valid batch `keep` refuses: that batch and
/// everything after it count as not valid (`valid_bytes` is its position, `next_offset` the end
/// of the batch before it). Truncation finds where to cut a segment this way.
pub async fn scan_while(
    file: &DmaFile,
    base_offset: i64,
    interval: u32,
    contiguous: bool,
    keep: &mut dyn FnMut(&BatchHeader, &[u8]) -> bool,
) -> Result<ScanResult> {
    let file_size = file.file_size().await?;
    let mut result = ScanResult {
        valid_bytes: 0,
        next_offset: base_offset,
        index: SegmentIndex::default(),
        max_timestamp: -1,
        max_timestamp_position: 0,
        garbage_after: false,
    };
    let mut window = Bytes::new();
    let mut window_start = 0u64;
    let mut pos = 0u64;
    loop {
        if pos + HEADER_BYTES as u64 > file_size {
            break;
        }
        let need = |len: u64, start: u64, window_len: usize| {
            pos < start || pos + len > start + window_len as u64
        };
        if need(HEADER_BYTES as u64, window_start, window.len()) {
            let len = (limits::dma_read_chunk_bytes as u64).min(file_size - pos);
            window = Bytes::copy_from_slice(&file.read_at(pos, len as usize).await?);
            window_start = pos;
        }
        let at = (pos - window_start) as usize;
        let Some(header) = BatchHeader::parse(&window[at..]) else {
            break;
        };
        let total = header.total_bytes() as u64;
        let sane = header.magic == 2
            && header.batch_length >= (HEADER_BYTES - batch::LOG_OVERHEAD) as i32
            // Offsets only grow; compaction leaves gaps between batches, but never in the last
            // segment (`contiguous`), whose continuity catches a damaged base offset (the CRC
            // does not cover it).
            && (header.base_offset == result.next_offset
                || (!contiguous && header.base_offset > result.next_offset))
            && header.base_offset - base_offset <= i64::from(u32::MAX)
            && header
                .base_offset
                .checked_add(i64::from(header.last_offset_delta) + 1)
                .is_some()
            && pos + total <= file_size;
        if !sane {
            result.garbage_after = window[at..].iter().take(HEADER_BYTES).any(|b| *b != 0);
            break;
        }
        if need(total, window_start, window.len()) {
            let len = total
                .max(limits::dma_read_chunk_bytes as u64)
                .min(file_size - pos);
            window = Bytes::copy_from_slice(&file.read_at(pos, len as usize).await?);
            window_start = pos;
        }
        let at = (pos - window_start) as usize;
        let bytes = &window[at..at + total as usize];
        if batch::validate_stored(bytes).is_err() {
            result.garbage_after = true;
            break;
        }
        if !keep(&header, bytes) {
            break;
        }
        let relative = (header.base_offset - base_offset) as u32;
        result.index.on_append(
            relative,
            pos as u32,
            total as u32,
            header.max_timestamp,
            interval,
        );
        if header.max_timestamp > result.max_timestamp {
            result.max_timestamp = header.max_timestamp;
            result.max_timestamp_position = pos;
        }
        result.next_offset = header.last_offset() + 1;
        pos += total;
        result.valid_bytes = pos;
    }
    Ok(result)
}

/// Opens an existing segment file for reading and writing with O_DIRECT.
pub async fn open_file(path: &Path, create: bool) -> Result<DmaFile> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(b: &[u8]) -> BatchHeader {
        batch::validate(b).expect("valid")
    }

    #[test]
    fn cache_slices_and_trims_without_losing_unwritten_bytes() {
        let dir = PathBuf::from("/nonexistent");
        let mut seg = Segment::new(&dir, 10);
        let mut sizes = Vec::new();
        for i in 0..50 {
            let mut b = batch::build_batch(0, 1000 + i, &[&[b'x'; 300]]);
            batch::assign_offset(&mut b, 10 + i, 0);
            let h = header_of(&b);
            sizes.push(b.len() as u64);
            let b = b.freeze();
            seg.append(
                b.slice(..HEADER_BYTES),
                b.slice(HEADER_BYTES..),
                &h,
                0,
                4096,
            );
        }
        assert_eq!(seg.next_offset, 60);
        let one = seg.slice_from_cache(0, sizes[0]).expect("cached");
        assert_eq!(one.len() as u64, sizes[0]);
        assert_eq!(header_of(&one).base_offset, 10);
        let two = seg.slice_from_cache(0, sizes[0] * 2).expect("cached");
        assert_eq!(two.len() as u64, sizes[0] * 2);
        // nothing written yet: trimming keeps everything
        seg.trim_cache(0);
        assert_eq!(seg.cache_start(), 0);
        seg.written = seg.size;
        seg.trim_cache(0);
        assert!(seg.cache_start() <= align_down(seg.written));
        assert!(seg.cache_start() > 0);
        assert!(seg.slice_from_cache(0, 10).is_none());
    }

    #[test]
    fn truncate_memory_discards_the_unwritten_tail() {
        let dir = PathBuf::from("/nonexistent");
        let mut seg = Segment::new(&dir, 0);
        let mut ends = Vec::new();
        for i in 0..3 {
            let mut b = batch::build_batch(0, 5, &[b"abc"]);
            batch::assign_offset(&mut b, i, 0);
            let h = header_of(&b);
            let b = b.freeze();
            seg.append(b.slice(..HEADER_BYTES), b.slice(HEADER_BYTES..), &h, 0, 1);
            ends.push(seg.size);
        }
        seg.truncate_memory(ends[0], 1);
        assert_eq!(seg.size, ends[0]);
        assert_eq!(seg.next_offset, 1);
        assert_eq!(seg.index.offsets.len(), 1);
    }
}
