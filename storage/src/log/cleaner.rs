//! Log compaction's I/O half (the rules are in `compaction.rs`): deciding when a compacted log
//! is due, streaming its sealed segments through the filter into `<base>.cleaned` files, and
//! swapping those in crash-safely.
//!
//! A clean works like Kafka's: the *dirty* segments (those past the cleaner checkpoint) are
//! read once to build a map of each key's latest offset, then every segment from the log start
//! to the end of what the map covers is rewritten through the filter — consecutive segments
//! whose sizes add up to at most `segment.bytes` into one file, so that segments earlier cleans
//! shrank are merged rather than left to pile up. Only sealed segments below
//! the high watermark and older than `min.compaction.lag.ms` are touched; the active segment
//! never is. Offsets never change: a segment keeps its base offset, batches keep theirs.
//!
//! Crash safety of a swap, step by step (each step durable before the next):
//! 1. write and fdatasync `<base>.cleaned` (`<base>`: the group's first segment);
//! 2. remove the group's index files, then rename `<base>.cleaned` over `<base>.log`
//!    (an atomic replace), and sync the directory;
//! 3. delete the group's other segments;
//! 4. write the new index files.
//!
//! A crash before 2 leaves the old segments (and a stale `.cleaned`, deleted at start); a crash
//! after it leaves the new one, and before 3 completes also some of the others, whose offsets
//! the new file already holds: recovery rescans a segment without index files and drops the
//! segments its records reach into. An index can never describe the other file.
//!
//! Cost: reads every cleanable byte once or twice and writes what survives, paced to
//! `log.cleaner.io.max.bytes.per.second`, yielding to the reactor between batches. Memory: the
//! key map (`log.cleaner.dedupe.buffer.size` split between cores), one read window
//! (`dma_read_chunk_bytes`) and one write chunk (`cleaner_write_chunk_bytes`).

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::DmaFile;

use super::{sync_dir, write_all_at, write_small_file, PartitionLog};
use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::compaction::{self, Filtered, KeyMap};
use crate::error::{Result, StorageError};
use crate::index::SegmentIndex;
use crate::segment::{self, align_down, align_up};
use crate::txn::Transactions;
use sluice_core::limits;

/// The file holding the cleaner checkpoint: the first offset not cleaned yet.
const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"SLCC";
const CHECKPOINT_VERSION: u8 = 1;
const CHECKPOINT_BYTES: usize = 4 + 1 + 8 + 8 + 4;

/// What one clean may use.
#[derive(Debug, Clone, Copy)]
pub struct CleanBudget {
    pub key_map_bytes: usize,
    pub io_bytes_per_second: f64,
}

/// What one clean did.
#[derive(Debug, Clone, Default)]
pub struct CleanStats {
    pub segments_rewritten: usize,
    pub segments_removed: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    /// Bytes of the segments passed through the filter (Kafka's "MB of log processed").
    pub bytes_cleaned: u64,
    /// The new cleaner checkpoint.
    pub cleaned_to: i64,
}

/// Where a test makes a clean stop as if the process had died there, leaving the files as
/// they are (the deterministic crash injection of the swap's steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanCrashPoint {
    /// `<base>.cleaned` written and synced; nothing else changed.
    CleanedWritten,
    /// The old segment's index files removed.
    IndexesRemoved,
    /// `<base>.cleaned` renamed over `<base>.log`; no index files yet.
    Renamed,
}

/// A sealed segment as the cleaner saw it when it planned the clean.
#[derive(Clone)]
struct Planned {
    base: i64,
    file: Rc<DmaFile>,
    size: u64,
    next_offset: i64,
    first_timestamp: i64,
}

/// A rewritten segment, written and synced, waiting to be swapped in.
struct Cleaned {
    file: Option<Rc<DmaFile>>,
    size: u64,
    index: SegmentIndex,
    max_timestamp: i64,
    max_timestamp_position: u64,
}

impl PartitionLog {
    /// The dirty share of the log in millionths, when it is due for cleaning: compacted, and
    /// dirtier than `min.cleanable.dirty.ratio`, or holding a record older than
    /// `max.compaction.lag.ms` that was never cleaned, or holding tombstones whose delete
    /// horizon has passed. None when not due.
    pub fn cleaning_due(&self, now_ms: i64) -> Option<u32> {
        let config = self.config();
        if !config.compact || self.retired.get() || self.uncleanable.get() {
            return None;
        }
        let segments = self.cleanable_segments(now_ms, config.min_compaction_lag_ms);
        let first_dirty = self.first_dirty.get().max(self.log_start_offset());
        let mut clean_bytes = 0u64;
        let mut dirty_bytes = 0u64;
        let mut oldest_dirty = None;
        for seg in &segments {
            if seg.next_offset <= first_dirty {
                clean_bytes += seg.size;
            } else {
                dirty_bytes += seg.size;
                oldest_dirty.get_or_insert(seg.first_timestamp);
            }
        }
        let horizon_passed = self.tombstone_horizon_ms.get().is_some_and(|h| now_ms >= h);
        if dirty_bytes == 0 && !horizon_passed {
            return None;
        }
        let ratio_ppm =
            (dirty_bytes.saturating_mul(1_000_000) / (clean_bytes + dirty_bytes).max(1)) as u32;
        let overdue = oldest_dirty
            .is_some_and(|t| t >= 0 && now_ms.saturating_sub(t) > config.max_compaction_lag_ms);
        let due = ratio_ppm >= config.min_cleanable_dirty_ratio_ppm || overdue || horizon_passed;
        due.then_some(ratio_ppm)
    }

    /// Makes the next clean stop at `point` as if the process died there (tests only).
    pub fn inject_clean_crash(&self, point: Option<CleanCrashPoint>) {
        self.clean_crash.set(point);
    }

    fn crash_if(&self, point: CleanCrashPoint) -> Result<()> {
        if self.clean_crash.get() == Some(point) {
            self.retired.set(true); // a dead process writes nothing more
            return Err(StorageError::Corrupt(format!(
                "injected crash at {point:?}"
            )));
        }
        Ok(())
    }

    /// The first offset the cleaner has not cleaned (its checkpoint).
    pub fn cleaner_checkpoint(&self) -> i64 {
        self.first_dirty.get()
    }

    /// Sealed segments from the start of the log that the cleaner may rewrite: below the high
    /// watermark, not the active segment, and older than `min.compaction.lag.ms`.
    fn cleanable_segments(&self, now_ms: i64, min_lag_ms: i64) -> Vec<Planned> {
        let s = self.state.borrow();
        let mut out = Vec::new();
        for (i, seg) in s
            .segments
            .iter()
            .enumerate()
            .take(s.segments.len().saturating_sub(1))
        {
            let young = min_lag_ms > 0 && now_ms.saturating_sub(seg.max_timestamp) < min_lag_ms;
            // The segment after it must have its file: the last segment file on disk is then
            // never a cleaned one, and recovery may require contiguous offsets in it.
            let successor_on_disk = s.segments.get(i + 1).is_some_and(|n| n.file.is_some());
            // Below the last stable offset: every transaction in it is decided.
            if !seg.sealed || seg.next_offset > super::lso(&s) || young || !successor_on_disk {
                break;
            }
            let Some(file) = seg.file.clone() else {
                break;
            };
            out.push(Planned {
                base: seg.base_offset,
                file,
                size: seg.size,
                next_offset: seg.next_offset,
                first_timestamp: seg.index.times.first().map_or(-1, |t| t.timestamp),
            });
        }
        out
    }

    /// Cleans the log once: builds the key map from the dirty segments, rewrites the segments
    /// it covers and swaps them in, then advances the checkpoint. None when there was nothing
    /// to do (not compacted, no cleanable segment, another clean running, partition deleted).
    pub async fn clean(&self, now_ms: i64, budget: CleanBudget) -> Result<Option<CleanStats>> {
        let config = self.config();
        if !config.compact || self.retired.get() || self.cleaning.replace(true) {
            return Ok(None);
        }
        let result = self.clean_inner(now_ms, budget, &config).await;
        self.cleaning.set(false);
        if result.is_err() {
            // As Kafka marks a log uncleanable: it is not picked again until the broker
            // restarts, so that one damaged log cannot keep the cleaner from the others.
            self.uncleanable.set(true);
        }
        result
    }

    async fn clean_inner(
        &self,
        now_ms: i64,
        budget: CleanBudget,
        config: &super::LogConfig,
    ) -> Result<Option<CleanStats>> {
        let segments = self.cleanable_segments(now_ms, config.min_compaction_lag_ms);
        if segments.is_empty() {
            return Ok(None);
        }
        let first_dirty = self.first_dirty.get().max(self.log_start_offset());
        let mut pace = Pace::new(budget.io_bytes_per_second);
        let mut stats = CleanStats::default();
        let mut map = KeyMap::new(budget.key_map_bytes);
        let mut map_end = first_dirty;
        // Records of aborted transactions neither enter the key map nor survive (Kafka's rule):
        // an aborted write must never shadow a committed one.
        let txns = self.state.borrow().txns.clone();
        'segments: for seg in segments.iter().filter(|s| s.next_offset > first_dirty) {
            let mut reader = BatchReader::new(seg);
            while let Some(bytes) = reader.next(&mut pace, &mut stats).await? {
                let Some(header) = BatchHeader::parse(&bytes) else {
                    break;
                };
                if header.last_offset() < first_dirty || aborted(&txns, &header) {
                    continue;
                }
                if !compaction::add_keys(&mut map, &bytes) {
                    map_end = map_end.max(header.base_offset);
                    break 'segments;
                }
                pace.breathe().await;
            }
            map_end = seg.next_offset;
        }
        let horizon_passed = self.tombstone_horizon_ms.get().is_some_and(|h| now_ms >= h);
        if map_end <= first_dirty && !horizon_passed {
            return Err(StorageError::Corrupt(format!(
                "{}-{}: log.cleaner.dedupe.buffer.size is too small for one batch of keys",
                self.topic, self.partition
            )));
        }
        let mut horizon: Option<i64> = None;
        let covered: Vec<Planned> = segments
            .iter()
            .filter(|s| s.base < map_end)
            .cloned()
            .collect();
        for group in group_segments(&covered, config.segment_bytes) {
            if self.retired.get() {
                return Ok(None);
            }
            let cleaned = self
                .rewrite_group(
                    &group,
                    &map,
                    map_end,
                    now_ms,
                    config,
                    &mut pace,
                    &mut stats,
                    &mut horizon,
                    &txns,
                )
                .await?;
            if let Some(cleaned) = cleaned {
                self.swap_in(&group, cleaned, &mut stats).await?;
            }
        }
        if self.retired.get() {
            return Ok(None);
        }
        self.first_dirty.set(map_end);
        // Aborted transactions that ended below `map_end` have no records left (every segment
        // holding some was rewritten without them): read_committed fetches need not list them.
        self.state.borrow_mut().txns.forget_before(map_end);
        self.tombstone_horizon_ms.set(horizon);
        write_checkpoint(&self.dir, map_end, horizon).await?;
        stats.cleaned_to = map_end;
        Ok(Some(stats))
    }

    /// Streams a group of consecutive segments through the filter into one file,
    /// `<first base>.cleaned`. None when it is one segment and nothing in it changed.
    #[allow(clippy::too_many_arguments)]
    async fn rewrite_group(
        &self,
        group: &[Planned],
        map: &KeyMap,
        map_end: i64,
        now_ms: i64,
        config: &super::LogConfig,
        pace: &mut Pace,
        stats: &mut CleanStats,
        horizon: &mut Option<i64>,
        txns: &Transactions,
    ) -> Result<Option<Cleaned>> {
        let base = group.first().expect("a group is never empty").base;
        let path = segment::segment_path(&self.dir, base, "cleaned");
        let _ = std::fs::remove_file(&path);
        let file = segment::open_file(&path, true).await?;
        let mut out = CleanedWriter::new(file, base, config.index_interval_bytes);
        let mut changed = group.len() > 1;
        let mut removed = 0u64;
        for seg in group {
            stats.bytes_cleaned += seg.size;
            let mut reader = BatchReader::new(seg);
            while let Some(bytes) = reader.next(pace, stats).await? {
                if BatchHeader::parse(&bytes).is_some_and(|h| aborted(txns, &h)) {
                    changed = true;
                    removed += 1;
                    continue;
                }
                let outcome = compaction::filter_batch(
                    &bytes,
                    map,
                    map_end,
                    now_ms,
                    config.delete_retention_ms,
                );
                removed += u64::from(outcome.records_removed);
                if let Some(h) = outcome.horizon_ms {
                    *horizon = Some(horizon.map_or(h, |old| old.min(h)));
                }
                match outcome.filtered {
                    Filtered::Keep => out.push(&bytes, pace, stats).await?,
                    Filtered::Drop => changed = true,
                    Filtered::Rewrite(new) => {
                        changed = true;
                        out.push(&new, pace, stats).await?;
                    }
                }
                pace.breathe().await;
                if self.retired.get() {
                    out.abandon(&path).await;
                    return Ok(None);
                }
            }
        }
        if !changed {
            out.abandon(&path).await;
            return Ok(None);
        }
        stats.records_removed += removed;
        Ok(Some(out.finish(pace, stats).await?))
    }

    /// Replaces a group of consecutive segments with their cleaned copy (see the module
    /// comment for the steps): the copy takes the first segment's place and the others go. A
    /// group that retention touched, or a partition deleted, while it was being cleaned is left
    /// alone and the copy discarded.
    async fn swap_in(
        &self,
        group: &[Planned],
        cleaned: Cleaned,
        stats: &mut CleanStats,
    ) -> Result<()> {
        let base = group.first().expect("a group is never empty").base;
        let end = group.last().expect("a group is never empty").next_offset;
        let cleaned_path = segment::segment_path(&self.dir, base, "cleaned");
        let position = self.group_position(group).filter(|_| !self.retired.get());
        let Some(position) = position else {
            off_reactor(move || remove_if_present(&cleaned_path)).await?;
            return Ok(());
        };
        self.crash_if(CleanCrashPoint::CleanedWritten)?;
        // The journal may name these segment files: after the swap, replay must not write
        // their old bytes into the cleaned copy.
        self.journal_barrier().await?;
        let dir = self.dir.clone();
        let bases: Vec<i64> = group.iter().map(|g| g.base).collect();
        let all = bases.clone();
        off_reactor(move || -> Result<()> {
            for base in all {
                for ext in ["index", "timeindex", "txnindex"] {
                    remove_if_present(&segment::segment_path(&dir, base, ext))?;
                }
            }
            Ok(())
        })
        .await?;
        self.crash_if(CleanCrashPoint::IndexesRemoved)?;
        if self.retired.get() {
            return Ok(());
        }
        let mut held = Vec::new();
        if cleaned.size == 0 && position > 0 {
            // Nothing survived: the segments go; the one before them now reaches to their end
            // (recovery names a segment's end by the next segment's base).
            let (dir, doomed) = (self.dir.clone(), bases.clone());
            held = off_reactor(move || -> Result<Vec<std::fs::File>> {
                let held = remove_segments(&dir, &doomed)?;
                remove_if_present(&cleaned_path)?;
                sync_dir(&dir)?;
                Ok(held)
            })
            .await?;
            // Found again after the await, and changed without one in between.
            if let Some(i) = self.group_position(group) {
                let mut s = self.state.borrow_mut();
                s.segments.drain(i..i + group.len());
                match i.checked_sub(1).and_then(|p| s.segments.get_mut(p)) {
                    Some(prev) => prev.next_offset = end,
                    None => s.log_start = s.log_start.max(end),
                }
            }
            stats.segments_removed += group.len();
        } else {
            let dir = self.dir.clone();
            let old = off_reactor(move || -> Result<Option<std::fs::File>> {
                sync_dir(&dir)?;
                let path = segment::segment_path(&dir, base, "log");
                let old = hold_inode(&path);
                std::fs::rename(&cleaned_path, path)?;
                sync_dir(&dir)?;
                Ok(old)
            })
            .await?;
            held.extend(old);
            self.crash_if(CleanCrashPoint::Renamed)?;
            // The rest of the group now lives in the first segment's file. A crash before they
            // are gone leaves them behind it; recovery drops segments that a scanned segment
            // already covers.
            let (dir, merged) = (self.dir.clone(), bases[1..].to_vec());
            held.extend(
                off_reactor(move || -> Result<Vec<std::fs::File>> {
                    let held = remove_segments(&dir, &merged)?;
                    sync_dir(&dir)?;
                    Ok(held)
                })
                .await?,
            );
            let offsets = cleaned.index.encode_offsets(base);
            let times = cleaned.index.encode_times(base);
            let aborted_here = self.state.borrow().txns.aborted_in(base, end);
            super::write_txn_index(&self.dir, base, &aborted_here).await?;
            write_small_file(&segment::segment_path(&self.dir, base, "index"), &offsets).await?;
            write_small_file(&segment::segment_path(&self.dir, base, "timeindex"), &times).await?;
            // Looked up again after the awaits, and changed without one in between. Retention
            // leaves a log alone while it is being cleaned, so only a deletion of the partition
            // can have taken the segments away.
            let Some(i) = self.group_position(group) else {
                release(held).await;
                return Ok(());
            };
            {
                let mut s = self.state.borrow_mut();
                s.segments.drain(i + 1..i + group.len());
                let x = &mut s.segments[i];
                x.file = cleaned.file;
                x.size = cleaned.size;
                x.written = cleaned.size;
                x.preallocated = cleaned.size;
                x.index = cleaned.index;
                x.max_timestamp = cleaned.max_timestamp;
                x.max_timestamp_position = cleaned.max_timestamp_position;
                x.next_offset = end;
                x.clear_cache();
            }
            stats.segments_rewritten += 1;
            stats.segments_removed += group.len() - 1;
        }
        self.swaps.set(self.swaps.get() + 1);
        release(held).await;
        Ok(())
    }

    /// Where the group's first segment is in the log, if every segment of the group is still
    /// there, in order, with the files the clean read.
    fn group_position(&self, group: &[Planned]) -> Option<usize> {
        let s = self.state.borrow();
        let first = group.first()?;
        let i = s
            .segments
            .iter()
            .position(|x| x.base_offset == first.base)?;
        let same = group.iter().enumerate().all(|(k, g)| {
            s.segments.get(i + k).is_some_and(|x| {
                x.base_offset == g.base && x.file.as_ref().is_some_and(|f| Rc::ptr_eq(f, &g.file))
            })
        });
        same.then_some(i)
    }
}

/// Kafka's grouping of segments for one clean: consecutive segments whose current sizes add up
/// to at most `segment.bytes` (so segments that earlier cleans shrank are merged into one),
/// within what one segment's indexes can address (u32 positions and relative offsets).
fn group_segments(segments: &[Planned], segment_bytes: u64) -> Vec<Vec<Planned>> {
    let bytes_max = segment_bytes.min(u64::from(u32::MAX));
    let mut groups: Vec<Vec<Planned>> = Vec::new();
    for seg in segments {
        let fits = groups.last().is_some_and(|g| {
            let size: u64 = g.iter().map(|x| x.size).sum();
            let span = seg.next_offset - g[0].base;
            size + seg.size <= bytes_max && span <= i64::from(u32::MAX)
        });
        match groups.last_mut() {
            Some(g) if fits => g.push(seg.clone()),
            _ => groups.push(vec![seg.clone()]),
        }
    }
    groups
}

/// Deletes segments' files, holding their inodes so that [`release`] frees the blocks.
pub(super) fn remove_segments(dir: &Path, bases: &[i64]) -> Result<Vec<std::fs::File>> {
    let mut held = Vec::new();
    for base in bases {
        let log = segment::segment_path(dir, *base, "log");
        held.extend(hold_inode(&log));
        for ext in ["log", "index", "timeindex", "txnindex"] {
            remove_if_present(&segment::segment_path(dir, *base, ext))?;
        }
    }
    Ok(held)
}

/// Reads a sealed segment batch by batch through one window, checking each batch's CRC.
struct BatchReader {
    file: Rc<DmaFile>,
    size: u64,
    pos: u64,
    window: Bytes,
    window_start: u64,
}

impl BatchReader {
    fn new(seg: &Planned) -> BatchReader {
        BatchReader {
            file: seg.file.clone(),
            size: seg.size,
            pos: 0,
            window: Bytes::new(),
            window_start: 0,
        }
    }

    async fn next(&mut self, pace: &mut Pace, stats: &mut CleanStats) -> Result<Option<Bytes>> {
        if self.pos + HEADER_BYTES as u64 > self.size {
            return Ok(None);
        }
        self.cover(HEADER_BYTES as u64, pace, stats).await?;
        let at = (self.pos - self.window_start) as usize;
        let header = BatchHeader::parse(&self.window[at..])
            .ok_or_else(|| StorageError::Corrupt("short batch header".into()))?;
        let total = header.total_bytes() as u64;
        if total < HEADER_BYTES as u64 || self.pos + total > self.size {
            return Err(StorageError::Corrupt(format!(
                "batch at position {} runs past the segment end",
                self.pos
            )));
        }
        self.cover(total, pace, stats).await?;
        let at = (self.pos - self.window_start) as usize;
        let bytes = self.window.slice(at..at + total as usize);
        batch::validate_stored(&bytes)
            .map_err(|e| StorageError::Corrupt(format!("batch at position {}: {e}", self.pos)))?;
        self.pos += total;
        Ok(Some(bytes))
    }

    /// Makes the window hold `[pos, pos + len)`.
    async fn cover(&mut self, len: u64, pace: &mut Pace, stats: &mut CleanStats) -> Result<()> {
        let end = self.window_start + self.window.len() as u64;
        if self.pos >= self.window_start && self.pos + len <= end {
            return Ok(());
        }
        let want = len
            .max(limits::dma_read_chunk_bytes as u64)
            .min(self.size - self.pos);
        let mut buf = Vec::with_capacity(want as usize);
        while (buf.len() as u64) < want {
            let at = self.pos + buf.len() as u64;
            let n = ((want - buf.len() as u64) as usize).min(limits::dma_read_chunk_bytes);
            let chunk = self.file.read_at(at, n).await?;
            if chunk.is_empty() {
                return Err(StorageError::Corrupt(format!("short read at {at}")));
            }
            buf.extend_from_slice(&chunk);
        }
        stats.bytes_read += want;
        pace.charge(want).await;
        self.window = Bytes::from(buf);
        self.window_start = self.pos;
        Ok(())
    }
}

/// Gathers a cleaned segment's batches and writes them with O_DIRECT in aligned chunks,
/// building its indexes as it goes.
struct CleanedWriter {
    file: DmaFile,
    base: i64,
    interval: u32,
    pending: Vec<u8>,
    flushed: u64,
    size: u64,
    index: SegmentIndex,
    max_timestamp: i64,
    max_timestamp_position: u64,
}

impl CleanedWriter {
    fn new(file: DmaFile, base: i64, interval: u32) -> CleanedWriter {
        CleanedWriter {
            file,
            base,
            interval,
            pending: Vec::new(),
            flushed: 0,
            size: 0,
            index: SegmentIndex::default(),
            max_timestamp: -1,
            max_timestamp_position: 0,
        }
    }

    async fn push(&mut self, bytes: &[u8], pace: &mut Pace, stats: &mut CleanStats) -> Result<()> {
        let header = BatchHeader::parse(bytes).expect("the reader yields whole batches");
        // Index positions and relative offsets are u32. Groups are sized within that, but a
        // rewrite can grow batches a little (re-encoded timestamps, recompression).
        if self.size + bytes.len() as u64 > u64::from(u32::MAX) {
            return Err(StorageError::Corrupt(
                "a cleaned segment would pass 4 GiB; the clean is abandoned".into(),
            ));
        }
        let relative = (header.base_offset - self.base) as u32;
        self.index.on_append(
            relative,
            self.size as u32,
            bytes.len() as u32,
            header.max_timestamp,
            self.interval,
        );
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_position = self.size;
        }
        self.pending.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        if self.pending.len() >= limits::cleaner_write_chunk_bytes {
            let len = align_down(self.pending.len() as u64) as usize;
            self.write(len, pace, stats).await?;
        }
        Ok(())
    }

    /// Writes the first `len` pending bytes (a multiple of the alignment, or everything,
    /// zero-padded, at the end).
    async fn write(&mut self, len: usize, pace: &mut Pace, stats: &mut CleanStats) -> Result<()> {
        let padded = align_up(len as u64) as usize;
        let mut buffer = self.file.alloc_dma_buffer(padded);
        let out = buffer.as_bytes_mut();
        out[..len].copy_from_slice(&self.pending[..len]);
        out[len..].fill(0);
        write_all_at(&self.file, buffer, self.flushed).await?;
        self.pending.drain(..len);
        self.flushed += len as u64;
        stats.bytes_written += padded as u64;
        pace.charge(padded as u64).await;
        Ok(())
    }

    async fn finish(mut self, pace: &mut Pace, stats: &mut CleanStats) -> Result<Cleaned> {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.write(len, pace, stats).await?;
        }
        self.file.truncate(self.size).await?;
        self.file.fdatasync().await?;
        Ok(Cleaned {
            file: Some(Rc::new(self.file)),
            size: self.size,
            index: self.index,
            max_timestamp: self.max_timestamp,
            max_timestamp_position: self.max_timestamp_position,
        })
    }

    /// Drops an unneeded copy; its blocks are freed off the reactor.
    async fn abandon(self, path: &Path) {
        let _ = self.file.close().await;
        let path = path.to_path_buf();
        let held = off_reactor(move || {
            let held = hold_inode(&path);
            let _ = remove_if_present(&path);
            held
        })
        .await;
        release(held.into_iter().collect()).await;
    }
}

/// A handle on a segment file's inode, taken before the file is unlinked or renamed over, so
/// that [`release`] can free its blocks off the reactor. None if it cannot be opened (then the
/// blocks are freed when the last handle closes, as usual).
pub(super) fn hold_inode(path: &Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open(path).ok()
}

/// Frees the blocks of a replaced segment file on the blocking pool. The last close of an
/// unlinked file frees its extents synchronously, and for a segment of many MiB that is
/// milliseconds of journal work the reactor would otherwise spend when the old `DmaFile` is
/// dropped. Reads still holding the old file see it shrink, but every such read was planned
/// before the swap counter moved and starts over.
pub(super) async fn release(held: Vec<std::fs::File>) {
    if held.is_empty() {
        return;
    }
    off_reactor(move || {
        for file in held {
            let _ = file.set_len(0);
        }
    })
    .await;
}

/// Runs a blocking file-system call (rename, unlink, directory fsync) on glommio's blocking
/// thread pool: a directory fsync can take milliseconds, which the reactor must not spend.
pub(super) async fn off_reactor<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// How long the cleaner computes before it steps aside for the reactor. glommio polls for I/O
/// completions (new requests, finished writes) only when no task queue is runnable or its
/// preempt timer fires (100 ms when no queue declares a latency); a queue that merely yields
/// stays runnable, so a clean that only yielded would delay produce and fetch by up to that
/// long. Sleeping briefly makes the cleaner not runnable, so the reactor polls.
const CLEANER_SLICE: Duration = Duration::from_micros(500);
const CLEANER_PAUSE: Duration = Duration::from_micros(20);

/// Paces the cleaner's I/O to `log.cleaner.io.max.bytes.per.second` and its CPU to slices of
/// [`CLEANER_SLICE`].
struct Pace {
    started: Instant,
    bytes: u64,
    bytes_per_second: f64,
    slice_started: Instant,
}

impl Pace {
    fn new(bytes_per_second: f64) -> Pace {
        Pace {
            started: Instant::now(),
            bytes: 0,
            // At least a byte a second: a tinier rate would overflow the sleep's duration.
            bytes_per_second: bytes_per_second.max(1.0),
            slice_started: Instant::now(),
        }
    }

    /// Lets the reactor poll and the core's other tasks run when this slice is used up.
    async fn breathe(&mut self) {
        if self.slice_started.elapsed() >= CLEANER_SLICE {
            glommio::timer::sleep(CLEANER_PAUSE).await;
            self.slice_started = Instant::now();
        }
    }

    async fn charge(&mut self, bytes: u64) {
        self.bytes += bytes;
        if !self.bytes_per_second.is_finite() || self.bytes_per_second >= f64::MAX / 2.0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        }
    }
}

/// A data batch of an aborted transaction.
fn aborted(txns: &Transactions, h: &BatchHeader) -> bool {
    h.is_transactional() && !h.is_control() && txns.is_aborted(h.producer_id, h.base_offset)
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `.cleaned` files a crash left behind (the swap never began for them).
pub(super) fn remove_unfinished(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cleaned") {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

/// The cleaner checkpoint: magic `SLCC`, version 1, the first uncleaned offset (i64), the
/// earliest delete horizon of the tombstones the last clean kept (i64, -1 for none), and a
/// CRC-32C of the bytes before it (all big-endian). None when absent or damaged: the whole log
/// then counts as dirty, which costs one extra clean and loses nothing.
pub(super) fn read_checkpoint(dir: &Path) -> Option<(i64, Option<i64>)> {
    let bytes = std::fs::read(checkpoint_path(dir)).ok()?;
    let bytes: &[u8; CHECKPOINT_BYTES] = bytes.as_slice().try_into().ok()?;
    let (body, crc) = bytes.split_at(CHECKPOINT_BYTES - 4);
    if &body[..4] != CHECKPOINT_MAGIC
        || body[4] != CHECKPOINT_VERSION
        || crc32c::crc32c(body).to_be_bytes() != crc
    {
        return None;
    }
    let offset = i64::from_be_bytes(body[5..13].try_into().ok()?);
    let horizon = i64::from_be_bytes(body[13..21].try_into().ok()?);
    Some((offset, (horizon >= 0).then_some(horizon)))
}

/// Where the cleaner checkpoint of the log in `dir` lives.
pub(super) fn checkpoint_path(dir: &Path) -> std::path::PathBuf {
    dir.join(CHECKPOINT_FILE)
}

async fn write_checkpoint(dir: &Path, offset: i64, horizon_ms: Option<i64>) -> Result<()> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.push(CHECKPOINT_VERSION);
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&horizon_ms.unwrap_or(-1).to_be_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_be_bytes());
    write_small_file(&checkpoint_path(dir), &bytes).await
}
