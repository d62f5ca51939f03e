//! A partition's log: an ordered list of segments, offsets, and the durability watermarks.
//!
//! Concurrency: a `PartitionLog` lives on the core that owns the partition and is used through
//! `Rc`; appends are synchronous (memory only), so produce requests on one core append in the
//! order they run. The core's [`crate::flusher::Flusher`] makes appended bytes durable.
//!
//! Watermarks, all exclusive offsets, `log_start ≤ synced ≤ written ≤ log_end`:
//! * `log_end` (LEO): next offset to assign.
//! * `written`: DMA write completed — survives `kill -9`. acks=1 is answered here.
//! * `synced`: fdatasync completed — survives power loss. acks=all is answered here by default.
//! * `high_watermark`: what consumers may read: the durable end (`synced` under the default
//!   policy, `written` when a flush.messages/flush.ms policy is configured), capped by the
//!   replication layer's high watermark cap. On one node the cap is `i64::MAX` and the high
//!   watermark is the durable end; with replicas, the leader caps it at the lowest log end of
//!   its in-sync followers and a follower at its leader's high watermark. It never moves back
//!   except through [`PartitionLog::reset_high_watermark`].
//!
//! Replication (Kafka's model): a follower reads its leader's written batches
//! ([`Isolation::Replica`]), appends them byte for byte ([`PartitionLog::append_replicated`]),
//! and a follower whose tail diverged truncates it while the log is closed ([`truncate_dir`]).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::BufferedFile;
use sluice_core::topic::{TimestampType, TopicConfig};

use crate::batch::{self, BatchHeader};
use crate::error::{Result, StorageError};
use crate::index::SegmentIndex;
use crate::journal::{Journal, JournalRound};
use crate::notify::Notify;
use crate::producer_state::{ProducerStates, Verdict, NO_PRODUCER_ID};
use crate::segment::{self, align_down, align_up, Segment};
use crate::txn::{self, AbortedTxn, Marker, ProducerBatch, Transactions};
use sluice_core::limits;

/// How long appends fail fast after a failed write before they are tried again.
const IO_ERROR_BACKOFF_MS: i64 = 1000;

/// When bytes are fdatasync'ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync after every write (sluice's default): acks=all means on stable storage.
    EveryWrite,
    /// Kafka's flush.messages / flush.ms: sync once this many messages are unsynced or this much
    /// time passed; acks=all is answered once written (survives a process crash).
    Interval { messages: i64, ms: i64 },
}

/// Settings of one log, derived from the topic config.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub timestamp_type: TimestampType,
    pub index_interval_bytes: u32,
    pub sync: SyncPolicy,
    /// `cleanup.policy`: retention deletes old segments, the cleaner compacts, or both.
    pub delete: bool,
    pub compact: bool,
    pub delete_retention_ms: i64,
    pub min_cleanable_dirty_ratio_ppm: u32,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
}

impl LogConfig {
    pub fn from_topic(topic: &TopicConfig, index_interval_bytes: u32, sync_default: bool) -> Self {
        let sync = if sync_default && topic.flush_messages == 1 && topic.flush_ms < 0 {
            SyncPolicy::EveryWrite
        } else {
            SyncPolicy::Interval {
                messages: topic.flush_messages,
                ms: topic.flush_ms,
            }
        };
        LogConfig {
            segment_bytes: topic.segment_bytes,
            segment_ms: topic.segment_ms,
            retention_ms: topic.retention_ms,
            retention_bytes: topic.retention_bytes,
            max_message_bytes: topic.max_message_bytes,
            timestamp_type: topic.timestamp_type,
            index_interval_bytes,
            sync,
            delete: topic.deletes(),
            compact: topic.compacted(),
            delete_retention_ms: topic.delete_retention_ms,
            min_cleanable_dirty_ratio_ppm: topic.min_cleanable_dirty_ratio_ppm,
            min_compaction_lag_ms: topic.min_compaction_lag_ms,
            max_compaction_lag_ms: topic.max_compaction_lag_ms,
        }
    }
}

/// How far a producer waits before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Written,
    Synced,
}

#[derive(Debug, Clone, Copy)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker time stamped into the batches, or -1 under CreateTime.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    /// Generation of discarded tails at append time: a waiter whose bytes are discarded by a
    /// failed write sees it change.
    discard_generation: u64,
}

/// What the first half of a flusher round leaves for the second ([`PartitionLog::write_round`]).
pub struct RoundWrite {
    /// The log end the round wrote up to.
    target: i64,
    /// Segment files written.
    touched: Vec<Rc<glommio::io::DmaFile>>,
    /// The written bytes were staged in the core's journal round.
    journaled: bool,
}

/// One completed segment write of a round: bytes `from..to` of the segment with base offset
/// `base`.
struct SegmentWrite {
    file: Rc<glommio::io::DmaFile>,
    base: i64,
    from: u64,
    to: u64,
}

/// Whole batches read for a fetch, as pieces to be sent back to back: zero-copy slices of the
/// batch cache, or one buffer read from the file.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub parts: Vec<Bytes>,
}

impl Records {
    pub fn one(bytes: Bytes) -> Records {
        if bytes.is_empty() {
            Records::default()
        } else {
            Records { parts: vec![bytes] }
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The records as one buffer (copies unless there is a single piece).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in parts {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

/// Batches read for a fetch.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Whole batches, possibly empty.
    pub records: Records,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// read_committed: the aborted transactions whose records may be among `records`.
    pub aborted: Vec<AbortedTxn>,
}

/// What a fetch may see: everything below the high watermark, or only what is below the last
/// stable offset (transactions decided), with the aborted ones listed, or — for a follower
/// replica — everything written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    /// A follower's fetch: every batch whose DMA write completed (below `written`), past the
    /// high watermark, since the follower's copy is what lets the high watermark advance. Never
    /// bytes only in memory: a failed write may still take those back. No aborted list.
    Replica,
}

struct LogState {
    segments: Vec<Segment>,
    log_start: i64,
    log_end: i64,
    written: i64,
    synced: i64,
    high_watermark: i64,
    /// The replication layer's bound on the high watermark; `i64::MAX` (no bound) on one node.
    high_watermark_cap: i64,
    unsynced_messages: i64,
    last_sync_ms: i64,
    discard_generation: u64,
    /// The last failed write and when (wall clock ms); produce fails fast for a while after.
    last_io_error: Option<(String, i64)>,
    /// Idempotent producers' epochs and last batches.
    producers: ProducerStates,
    /// Open and aborted transactions.
    txns: Transactions,
    /// Producer-state snapshots taken at segment rolls, written by the next flush.
    pending_snapshots: Vec<(i64, Vec<u8>)>,
}

pub struct PartitionLog {
    pub topic: String,
    pub partition: i32,
    dir: PathBuf,
    config: RefCell<LogConfig>,
    state: RefCell<LogState>,
    leader_epoch: Cell<i32>,
    flushing: Cell<bool>,
    /// The partition was deleted: nothing is written any more.
    retired: Cell<bool>,
    /// Signalled whenever the high watermark moves (fetch long-polling waits on it).
    pub high_watermark_changed: Notify,
    /// Signalled after every flush attempt (producers waiting for acks wait on it).
    flushed: Notify,
    /// Bytes of tail kept in memory for fetches.
    cache_bytes_max: Cell<u64>,
    /// Compaction: the first offset the cleaner has not cleaned yet, the earliest delete horizon
    /// of tombstones it kept, whether it is cleaning now, and how many segments it has swapped
    /// (a read that planned against a swapped segment starts over).
    first_dirty: Cell<i64>,
    tombstone_horizon_ms: Cell<Option<i64>>,
    cleaning: Cell<bool>,
    swaps: Cell<u64>,
    clean_crash: Cell<Option<CleanCrashPoint>>,
    /// A clean failed: the cleaner leaves the log alone until the next start.
    uncleanable: Cell<bool>,
    /// The core's journal, which may hold records for this log's segment files: a compaction
    /// swap checkpoints it first (see [`crate::journal`]).
    journal: RefCell<Option<Rc<Journal>>>,
    /// The next round must fdatasync this log's segments itself rather than use the journal:
    /// set at open (recovery may keep a tail that was written but never synced, and journaled
    /// rounds would build on it without ever syncing it) and after a failed round.
    sync_directly: Cell<bool>,
}

mod cleaner;
mod replica;
mod truncate;
pub use cleaner::{CleanBudget, CleanCrashPoint, CleanStats};
pub use truncate::{restart_dir, truncate_dir};

impl PartitionLog {
    /// Opens (recovering) or creates the log in `dir`.
    ///
    /// Recovery: every segment but the last is trusted if its index files check out, else it is
    /// scanned and its indexes rebuilt; the last segment is always scanned batch by batch with
    /// CRC checks and truncated at the first torn or corrupt batch.
    ///
    /// The high watermark starts at the recovered log end with no cap (one node's answer: all
    /// of it survived). A replica, whose committed extent the log cannot know, calls
    /// [`Self::reset_high_watermark`] before serving reads.
    pub async fn open(
        dir: &Path,
        topic: &str,
        partition: i32,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Rc<PartitionLog>> {
        std::fs::create_dir_all(dir)?;
        cleaner::remove_unfinished(dir)?;
        let bases = segment_bases(dir)?;
        let mut segments = Vec::new();
        let mut seen = Recovery::default();
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let last = i + 1 == count;
            let interval = config.index_interval_bytes;
            segments.push(recover_segment(dir, base, last, interval, &mut seen).await?);
        }
        drop_merged_leftovers(&mut segments)?;
        if segments.is_empty() {
            segments.push(Segment::new(dir, 0));
        }
        let log_start = segments[0].base_offset;
        let log_end = segments.last().map(|s| s.next_offset).unwrap_or(0);
        let (producers, txns, snapshot_at) =
            recover_producers(dir, &segments, log_end, seen).await?;
        let state = LogState {
            segments,
            log_start,
            log_end,
            written: log_end,
            synced: log_end,
            high_watermark: log_end,
            high_watermark_cap: i64::MAX,
            unsynced_messages: 0,
            last_sync_ms: now_ms,
            discard_generation: 0,
            last_io_error: None,
            pending_snapshots: if snapshot_at == log_end {
                Vec::new()
            } else {
                // What recovery rebuilt, so that the next start need not replay it again.
                vec![(log_end, producers.encode(log_end))]
            },
            producers,
            txns,
        };
        let checkpoint = cleaner::read_checkpoint(dir);
        let log = Rc::new(PartitionLog {
            topic: topic.to_string(),
            partition,
            dir: dir.to_path_buf(),
            config: RefCell::new(config),
            state: RefCell::new(state),
            leader_epoch: Cell::new(0),
            flushing: Cell::new(false),
            retired: Cell::new(false),
            high_watermark_changed: Notify::new(),
            flushed: Notify::new(),
            cache_bytes_max: Cell::new(limits::batch_cache_bytes_per_partition_max as u64),
            first_dirty: Cell::new(checkpoint.map_or(log_start, |(offset, _)| offset)),
            tombstone_horizon_ms: Cell::new(checkpoint.and_then(|(_, horizon)| horizon)),
            cleaning: Cell::new(false),
            swaps: Cell::new(0),
            clean_crash: Cell::new(None),
            uncleanable: Cell::new(false),
            journal: RefCell::new(None),
            sync_directly: Cell::new(true),
        });
        log.write_pending_snapshots().await?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The core's journal, whose rounds this log's flusher rounds may be staged in.
    pub fn set_journal(&self, journal: Option<Rc<Journal>>) {
        *self.journal.borrow_mut() = journal;
    }

    /// Checkpoints the core's journal before segment files are rewritten or removed: replay
    /// must never write old bytes into them.
    async fn journal_barrier(&self) -> Result<()> {
        let journal = self.journal.borrow().clone();
        match journal {
            Some(journal) => journal.checkpoint().await,
            None => Ok(()),
        }
    }

    pub fn set_leader_epoch(&self, epoch: i32) {
        self.leader_epoch.set(epoch);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    pub fn set_cache_bytes_max(&self, bytes: u64) {
        self.cache_bytes_max.set(bytes);
    }

    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().log_end
    }

    pub fn high_watermark(&self) -> i64 {
        self.state.borrow().high_watermark
    }

    /// The last stable offset: read_committed consumers read below it. The first offset of the
    /// oldest transaction not yet decided below the high watermark, else the high watermark.
    pub fn last_stable_offset(&self) -> i64 {
        let s = self.state.borrow();
        lso(&s)
    }

    /// Open transactions on this partition: (first offset, producer id).
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.state.borrow().txns.open().collect()
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.iter().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// True when appended bytes wait for the flusher.
    pub fn needs_flush(&self) -> bool {
        let s = self.state.borrow();
        s.written < s.log_end || s.segments.iter().any(|seg| seg.rolled && !seg.sealed)
    }

    /// True when written bytes wait for an fdatasync under an interval policy.
    pub fn needs_sync(&self) -> bool {
        let s = self.state.borrow();
        s.synced < s.written
    }

    /// Validates `records` (one or more batches of one partition), assigns offsets and appends
    /// them to memory. Nothing is durable until the flusher runs; see [`Self::wait_durable`].
    pub fn append(&self, records: &Bytes, now_ms: i64) -> Result<AppendInfo> {
        self.append_from(records, now_ms, true)
    }

    /// Appends batches the broker writes on a producer's behalf (a transactional offset commit
    /// in `__consumer_offsets`): they carry the producer's id and epoch but no sequence.
    pub fn append_for_producer(&self, records: &Bytes, now_ms: i64) -> Result<AppendInfo> {
        self.append_from(records, now_ms, false)
    }

    fn append_from(&self, records: &Bytes, now_ms: i64, sequenced: bool) -> Result<AppendInfo> {
        let config = self.config.borrow();
        let batches = batch::split_and_validate(records)?;
        for (_, header) in &batches {
            if header.total_bytes() > config.max_message_bytes {
                return Err(StorageError::TooLarge {
                    bytes: header.total_bytes(),
                    max: config.max_message_bytes,
                });
            }
        }
        let mut state = self.state.borrow_mut();
        refuse_after_io_error(&state, now_ms)?;
        let base_offset = state.log_end;
        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        let headers: Vec<BatchHeader> = batches.iter().map(|(_, h)| *h).collect();
        for h in &headers {
            if h.is_control() {
                return Err(StorageError::InvalidRecord(
                    "control batches may not be produced by clients",
                ));
            }
            if h.is_transactional() && h.producer_id == NO_PRODUCER_ID {
                return Err(StorageError::InvalidRecord(
                    "a transactional batch needs a producer id",
                ));
            }
        }
        if config.compact {
            for (pos, h) in &batches {
                crate::compaction::check_keys(&records[*pos..*pos + h.total_bytes()])
                    .map_err(StorageError::InvalidRecord)?;
            }
        }
        if let Verdict::Duplicate(meta) = state
            .producers
            .check_from(&headers, base_offset, sequenced)
            .map_err(StorageError::Sequence)?
        {
            // A retry of a batch already appended: its original offsets, written once.
            return Ok(AppendInfo {
                base_offset: meta.first_offset,
                last_offset: meta.last_offset,
                log_append_time_ms: if log_append_time { meta.timestamp } else { -1 },
                log_start_offset: state.log_start,
                discard_generation: state.discard_generation,
            });
        }
        Ok(self.append_checked(&mut state, &config, records, batches, now_ms, true))
    }

    /// Writes a transaction marker (COMMIT or ABORT control batch) for `producer_id`, as the
    /// transaction coordinator asks (Kafka's WriteTxnMarkers). An epoch older than the
    /// producer's current one is refused (the marker of a fenced coordinator request).
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        let config = self.config.borrow();
        let mut state = self.state.borrow_mut();
        refuse_after_io_error(&state, now_ms)?;
        if let Some(entry) = state.producers.get(producer_id) {
            if producer_epoch < entry.epoch {
                return Err(StorageError::Sequence(
                    crate::producer_state::SequenceError::StaleEpoch {
                        producer_id,
                        epoch: producer_epoch,
                        current: entry.epoch,
                    },
                ));
            }
        }
        let bytes = txn::build_marker(producer_id, producer_epoch, marker, now_ms).freeze();
        let batches = batch::split_and_validate(&bytes)?;
        Ok(self.append_checked(&mut state, &config, &bytes, batches, now_ms, true))
    }

    /// Appends validated and checked batches to memory. `assign`: a leader's append, which
    /// assigns offsets from the log end, stamps its leader epoch and applies LogAppendTime;
    /// otherwise a replicated one, stored exactly as given (its offsets checked contiguous).
    fn append_checked(
        &self,
        state: &mut LogState,
        config: &LogConfig,
        records: &Bytes,
        batches: Vec<(usize, BatchHeader)>,
        now_ms: i64,
        assign: bool,
    ) -> AppendInfo {
        let base_offset = state.log_end;
        let log_append_time = assign && config.timestamp_type == TimestampType::LogAppendTime;
        let mut messages = 0i64;
        for (pos, header) in batches {
            let total = header.total_bytes();
            self.maybe_roll(state, config, total as u64, now_ms);
            let body = records.slice(pos + batch::HEADER_BYTES..pos + total);
            let mut header = header;
            let stored_header = if assign {
                let mut patched = BytesMut::from(&records[pos..pos + batch::HEADER_BYTES]);
                let offset = state.log_end;
                batch::assign_offset(&mut patched, offset, self.leader_epoch.get());
                header.base_offset = offset;
                if log_append_time {
                    batch::set_log_append_time_split(&mut patched, &body, now_ms);
                    header.max_timestamp = now_ms;
                }
                patched.freeze()
            } else {
                assert_eq!(
                    header.base_offset, state.log_end,
                    "replicated batches are checked contiguous before they are appended"
                );
                records.slice(pos..pos + batch::HEADER_BYTES)
            };
            let interval = config.index_interval_bytes;
            let active = state
                .segments
                .last_mut()
                .expect("a log has an active segment");
            let marker = header
                .is_control()
                .then(|| txn::parse_marker(&records[pos..pos + total]))
                .flatten();
            active.append(stored_header, body, &header, now_ms, interval);
            if let Some(event) = state.producers.replay(&ProducerBatch { header, marker }) {
                state.txns.apply(event);
            }
            state.log_end = header.last_offset() + 1;
            messages += i64::from(header.records_count);
        }
        state.unsynced_messages += messages;
        AppendInfo {
            base_offset,
            last_offset: state.log_end - 1,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset: state.log_start,
            discard_generation: state.discard_generation,
        }
    }

    fn maybe_roll(&self, state: &mut LogState, config: &LogConfig, incoming: u64, now_ms: i64) {
        let next = state.log_end;
        let active = state.segments.last_mut().expect("active segment");
        let full = active.size > 0 && active.size + incoming > config.segment_bytes;
        let aged = active
            .first_append_ms
            .is_some_and(|first| now_ms.saturating_sub(first) >= config.segment_ms);
        // Positions in the offset index are u32: never let a segment pass 4 GiB.
        let too_big = active.size + incoming > u64::from(u32::MAX);
        if full || aged || (active.size > 0 && too_big) {
            active.rolled = true;
            let dir = self.dir.clone();
            state.segments.push(Segment::new(&dir, next));
            let snapshot = state.producers.encode(next);
            state.pending_snapshots.push((next, snapshot));
        }
    }

    /// Waits until the appended batches are durable at `level`, or fails if their write failed.
    pub async fn wait_durable(&self, info: &AppendInfo, level: Durability) -> Result<()> {
        let target = info.last_offset + 1;
        loop {
            let notified = self.flushed.notified();
            {
                let s = self.state.borrow();
                let reached = match level {
                    Durability::Written => s.written,
                    Durability::Synced => s.synced,
                };
                if reached >= target {
                    return Ok(());
                }
                if s.discard_generation != info.discard_generation {
                    let why = s
                        .last_io_error
                        .as_ref()
                        .map(|(why, _)| why.clone())
                        .unwrap_or_else(|| "write failed".into());
                    return Err(StorageError::Io(std::io::Error::other(why)));
                }
            }
            notified.await;
        }
    }

    /// Writes every appended byte with O_DIRECT and, per the sync policy, fdatasyncs; then
    /// advances the watermarks. A round on its own, without the core's journal (a clean stop,
    /// tests); the flusher runs [`Self::write_round`] and [`Self::finish_round`] instead.
    pub async fn flush(&self, now_ms: i64) -> Result<()> {
        match self.write_round(now_ms, None).await {
            Some(Ok(written)) => self.finish_round(written, false, now_ms).await,
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The bytes the next round would write (the flusher sizes its journal round by them).
    pub fn unwritten_bytes(&self) -> u64 {
        let s = self.state.borrow();
        s.segments
            .iter()
            .filter(|seg| !seg.sealed)
            .map(|seg| seg.size.saturating_sub(seg.written))
            .sum()
    }

    /// First half of a flusher round: writes every appended byte with O_DIRECT. Under the
    /// sync-every-write policy the written bytes are also staged in `journal`, when given, and
    /// the round's fdatasync is then the journal's (see [`crate::journal`]). None: nothing to
    /// do (retired, or a round of this log is still running). An error has already been
    /// reported to the waiting producers.
    pub async fn write_round(
        &self,
        now_ms: i64,
        journal: Option<&JournalRound>,
    ) -> Option<Result<RoundWrite>> {
        if self.retired.get() || self.flushing.replace(true) {
            return None;
        }
        // Only when everything written before is synced: the journal holds just this round's
        // bytes, so a log left unsynced by a failed round syncs its segments itself.
        let journal = journal.filter(|_| {
            let s = self.state.borrow();
            self.config.borrow().sync == SyncPolicy::EveryWrite
                && s.synced == s.written
                && !self.sync_directly.get()
        });
        let result = self.write_unwritten(journal).await;
        if let Err(e) = &result {
            self.end_round(Some(e), now_ms);
        }
        Some(result)
    }

    /// Writes every unwritten byte; then, only if every write succeeded (a producer told its
    /// write failed must never see it come back through replay), stages the new bytes in
    /// `journal`. Only the new ones: staging the rewritten head of each partial block too would
    /// cost up to 4 KiB per partition per round, which with many partitions pushes every round
    /// past `journal_round_bytes_max`.
    async fn write_unwritten(&self, journal: Option<&JournalRound>) -> Result<RoundWrite> {
        let target = self.state.borrow().log_end;
        let mut writes = Vec::new();
        let bases: Vec<i64> = {
            let s = self.state.borrow();
            s.segments
                .iter()
                .filter(|seg| !seg.sealed)
                .map(|seg| seg.base_offset)
                .collect()
        };
        for base in bases {
            if let Some(write) = self.write_segment(base).await? {
                writes.push(write);
            }
            // A rolled segment now written in full holds every offset below the next one's
            // base: should a later write of this round fail, `written` (where a failed round
            // cuts back to) then matches the bytes on disk.
            let mut s = self.state.borrow_mut();
            let done = s
                .segments
                .iter()
                .find(|seg| seg.base_offset == base && seg.rolled && seg.written >= seg.size)
                .map(|seg| seg.next_offset);
            if let Some(next) = done {
                s.written = s.written.max(next.min(target));
            }
        }
        let journaled = journal.is_some_and(|journal| self.stage(journal, &writes));
        let mut s = self.state.borrow_mut();
        s.written = s.written.max(target);
        s.last_io_error = None;
        Ok(RoundWrite {
            target,
            touched: writes.into_iter().map(|w| w.file).collect(),
            journaled,
        })
    }

    /// Stages completed segment writes in a journal round; false (the round must then sync
    /// this log's segments itself) if any of their bytes is no longer in memory.
    fn stage(&self, journal: &JournalRound, writes: &[SegmentWrite]) -> bool {
        let s = self.state.borrow();
        for w in writes {
            // The cache is trimmed only when the round finishes, so this always holds.
            let Some(seg) = s
                .segments
                .iter()
                .find(|seg| seg.base_offset == w.base && seg.caches(w.from, w.to))
            else {
                return false;
            };
            let len = (w.to - w.from) as usize;
            journal.stage(&w.file, &self.dir, w.base, w.from, len, |out| {
                seg.copy_from_cache(w.from, w.to, out)
            });
        }
        true
    }

    /// Second half of a flusher round: fdatasyncs per the sync policy — unless `journaled`,
    /// when the journal's fdatasync made the staged bytes durable — then seals rolled
    /// segments and advances the watermarks.
    pub async fn finish_round(
        &self,
        written: RoundWrite,
        journaled: bool,
        now_ms: i64,
    ) -> Result<()> {
        let journaled = journaled && written.journaled;
        let result = self.sync_written(written, journaled, now_ms).await;
        self.end_round(result.as_ref().err(), now_ms);
        result
    }

    async fn sync_written(&self, written: RoundWrite, journaled: bool, now_ms: i64) -> Result<()> {
        let RoundWrite {
            target,
            mut touched,
            ..
        } = written;
        let sync = {
            let s = self.state.borrow();
            match self.config.borrow().sync {
                SyncPolicy::EveryWrite => true,
                SyncPolicy::Interval { messages, ms } => {
                    s.unsynced_messages >= messages
                        || (ms >= 0 && now_ms.saturating_sub(s.last_sync_ms) >= ms)
                }
            }
        };
        if sync {
            if !journaled {
                if touched.is_empty() {
                    touched = self.all_unsynced_files();
                }
                for file in &touched {
                    file.fdatasync().await?;
                }
                self.sync_directly.set(false);
            }
            let mut s = self.state.borrow_mut();
            s.synced = s.synced.max(target);
            s.unsynced_messages = 0;
            s.last_sync_ms = now_ms;
        }
        self.seal_rolled().await?;
        self.write_pending_snapshots().await?;
        self.advance_high_watermark();
        self.trim_caches();
        Ok(())
    }

    fn end_round(&self, error: Option<&StorageError>, now_ms: i64) {
        self.flushing.set(false);
        if let Some(e) = error {
            self.sync_directly.set(true);
            self.discard_unwritten(e, now_ms);
        }
        self.flushed.notify_all();
    }

    /// Writes the producer-state snapshots taken at rolls, keeping the newest few files.
    async fn write_pending_snapshots(&self) -> Result<()> {
        let pending = std::mem::take(&mut self.state.borrow_mut().pending_snapshots);
        if pending.is_empty() || self.retired.get() {
            return Ok(());
        }
        for (offset, bytes) in &pending {
            write_small_file(
                &segment::segment_path(&self.dir, *offset, "snapshot"),
                bytes,
            )
            .await?;
        }
        let mut offsets = snapshot_offsets(&self.dir);
        offsets.sort_unstable();
        // Recovery replays from a snapshot at or below the active segment's base (it scans
        // that segment anyway): the newest such one is kept too.
        let active_base = self
            .state
            .borrow()
            .segments
            .last()
            .map_or(0, |s| s.base_offset);
        let replay_start = offsets.iter().rev().find(|o| **o <= active_base).copied();
        let doomed = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
        for offset in offsets.into_iter().take(doomed) {
            if Some(offset) == replay_start {
                continue;
            }
            let _ = std::fs::remove_file(segment::segment_path(&self.dir, offset, "snapshot"));
        }
        Ok(())
    }

    /// Forgets idempotent producers whose last batch is older than `expiration_ms`
    /// (`producer.id.expiration.ms`); returns how many.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.state
            .borrow_mut()
            .producers
            .expire(now_ms, expiration_ms)
    }

    /// Producers this partition remembers (for tests and diagnostics).
    pub fn producer_count(&self) -> usize {
        self.state.borrow().producers.len()
    }

    /// The producers this partition remembers, by id (DescribeProducers).
    pub fn producers(&self) -> Vec<(i64, crate::producer_state::ProducerEntry)> {
        let s = self.state.borrow();
        let mut all: Vec<_> = s.producers.iter().map(|(id, e)| (id, e.clone())).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    fn all_unsynced_files(&self) -> Vec<Rc<glommio::io::DmaFile>> {
        let s = self.state.borrow();
        s.segments
            .iter()
            .filter(|seg| !seg.sealed)
            .filter_map(|seg| seg.file.clone())
            .collect()
    }

    /// Writes the unwritten bytes of one segment (rewriting the head of its last partial
    /// block), creating its file first if needed.
    async fn write_segment(&self, base: i64) -> Result<Option<SegmentWrite>> {
        let file = self.ensure_file(base).await?;
        let (buffer, aligned_start, from, end) = {
            let s = self.state.borrow();
            let Some(seg) = s.segments.iter().find(|seg| seg.base_offset == base) else {
                return Ok(None);
            };
            if seg.written >= seg.size {
                return Ok(None);
            }
            let aligned_start = align_down(seg.written);
            let end = seg.size;
            let len = align_up(end - aligned_start) as usize;
            let mut buffer = file.alloc_dma_buffer(len);
            let bytes = buffer.as_bytes_mut();
            let data_len = (end - aligned_start) as usize;
            seg.copy_from_cache(aligned_start, end, &mut bytes[..data_len]);
            bytes[data_len..].fill(0);
            (buffer, aligned_start, seg.written, end)
        };
        let preallocated = self.segment_field(base, |seg| seg.preallocated);
        let needed = align_up(end);
        if needed > preallocated {
            // Reserve ahead in proportion to what the segment holds (at least 256 KiB, at most
            // the step limit): a thousand quiet partitions must not reserve 64 MiB each.
            let step = needed
                .max(256 << 10)
                .next_power_of_two()
                .min(limits::segment_preallocate_step_bytes);
            let target = needed.div_ceil(step) * step;
            let segment_bytes = self.config.borrow().segment_bytes;
            let target = target.min(align_up(segment_bytes.max(needed)));
            // Preallocation only saves extent allocation later; on a nearly full disk it may
            // fail where the write itself still fits, so a failure is not an error.
            let reserved = if file.pre_allocate(target, false).await.is_ok() {
                target
            } else {
                needed
            };
            self.with_segment(base, |seg| seg.preallocated = reserved);
        }
        let mut pos = aligned_start;
        let total = buffer.len();
        if total <= limits::dma_write_bytes_max {
            write_all_at(&file, buffer, pos).await?;
        } else {
            let data = buffer.as_bytes();
            let mut done = 0;
            while done < total {
                let len = (total - done).min(limits::dma_write_bytes_max);
                let mut piece = file.alloc_dma_buffer(len);
                piece
                    .as_bytes_mut()
                    .copy_from_slice(&data[done..done + len]);
                write_all_at(&file, piece, pos).await?;
                done += len;
                pos += len as u64;
            }
        }
        self.with_segment(base, |seg| seg.written = seg.written.max(end));
        Ok(Some(SegmentWrite {
            file,
            base,
            from,
            to: end,
        }))
    }

    async fn ensure_file(&self, base: i64) -> Result<Rc<glommio::io::DmaFile>> {
        if let Some(file) = self.segment_field(base, |seg| seg.file.clone()) {
            return Ok(file);
        }
        let path = segment::segment_path(&self.dir, base, "log");
        let file = Rc::new(segment::open_file(&path, true).await?);
        // The new file's directory entry must be durable before anything in it is acknowledged;
        // the directory fsync runs on the blocking pool, not the reactor (it can take ms).
        let dir = self.dir.clone();
        cleaner::off_reactor(move || sync_dir(&dir)).await?;
        self.with_segment(base, |seg| seg.file = Some(file.clone()));
        Ok(file)
    }

    fn segment_field<T: Default>(&self, base: i64, f: impl FnOnce(&Segment) -> T) -> T {
        let s = self.state.borrow();
        s.segments
            .iter()
            .find(|seg| seg.base_offset == base)
            .map(f)
            .unwrap_or_default()
    }

    fn with_segment(&self, base: i64, f: impl FnOnce(&mut Segment)) {
        let mut s = self.state.borrow_mut();
        if let Some(seg) = s.segments.iter_mut().find(|seg| seg.base_offset == base) {
            f(seg);
        }
    }

    /// Seals rolled segments whose bytes are all written: truncate the padding away, fsync, then
    /// write the index files (a crash in between leaves indexes that are rebuilt).
    async fn seal_rolled(&self) -> Result<()> {
        loop {
            let job = {
                let s = self.state.borrow();
                s.segments
                    .iter()
                    .find(|seg| seg.rolled && !seg.sealed && seg.written >= seg.size)
                    .map(|seg| {
                        (
                            seg.base_offset,
                            seg.file.clone(),
                            seg.size,
                            seg.index.encode_offsets(seg.base_offset),
                            seg.index.encode_times(seg.base_offset),
                            s.txns.aborted_in(seg.base_offset, seg.next_offset),
                        )
                    })
            };
            let Some((base, file, size, offsets, times, aborted)) = job else {
                return Ok(());
            };
            if let Some(file) = &file {
                file.truncate(size).await?;
                file.fdatasync().await?;
            }
            // Before the offset index: a segment whose index files check out has its aborted
            // transactions on disk too.
            write_txn_index(&self.dir, base, &aborted).await?;
            write_small_file(&segment::segment_path(&self.dir, base, "index"), &offsets).await?;
            write_small_file(&segment::segment_path(&self.dir, base, "timeindex"), &times).await?;
            self.with_segment(base, |seg| seg.sealed = true);
        }
    }

    /// Moves the high watermark up to min(durable end, cap), never down.
    fn advance_high_watermark(&self) {
        let changed = {
            let mut s = self.state.borrow_mut();
            let target = durable_end(&s, self.config.borrow().sync).min(s.high_watermark_cap);
            let changed = target > s.high_watermark;
            s.high_watermark = s.high_watermark.max(target);
            let hw = s.high_watermark;
            s.txns.on_high_watermark(hw);
            changed
        };
        if changed {
            self.high_watermark_changed.notify_all();
        }
    }

    fn trim_caches(&self) {
        let keep = self.cache_bytes_max.get();
        let mut s = self.state.borrow_mut();
        let n = s.segments.len();
        for (i, seg) in s.segments.iter_mut().enumerate() {
            seg.trim_cache(if i + 1 == n { keep } else { 0 });
        }
    }

    /// A write failed: forget every byte not yet written, so that a producer told "failed" never
    /// sees its records appear later, and fail the waiters.
    fn discard_unwritten(&self, error: &StorageError, now_ms: i64) {
        let mut s = self.state.borrow_mut();
        s.last_io_error = Some((error.to_string(), now_ms));
        s.discard_generation += 1;
        let written = s.written;
        // Drop segments that start at or past the written end (never created on disk or empty).
        while s.segments.len() > 1
            && s.segments
                .last()
                .is_some_and(|seg| seg.base_offset >= written)
        {
            s.segments.pop();
        }
        if let Some(seg) = s.segments.last_mut() {
            let size = seg.written;
            seg.truncate_memory(size, written.max(seg.base_offset));
            seg.rolled = false;
        }
        s.log_end = written;
        s.unsynced_messages = 0;
        // Transactions whose marker went are open again; their producers are kept even when
        // every batch they are remembered by went too.
        let reopened = s.txns.truncate(written);
        let keep: Vec<i64> = reopened.iter().map(|(_, pid)| *pid).collect();
        s.producers.truncate_keeping(written, &keep);
        for (first, producer_id) in reopened {
            s.producers.reopen(producer_id, first);
        }
        s.pending_snapshots.retain(|(offset, _)| *offset <= written);
    }

    /// Stops all writing for a deleted partition and waits for a flush in progress, so that its
    /// directory can be removed without a late write recreating files in it (or in a new
    /// partition of the same name).
    pub async fn retire(&self) {
        self.retired.set(true);
        // A clean in progress sees `retired` at its next batch and stops.
        while self.flushing.get() || self.cleaning.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Clears a remembered I/O error so appends are tried again (called after a successful
    /// probe write, or by an operator restart).
    pub fn clear_io_error(&self) {
        self.state.borrow_mut().last_io_error = None;
    }

    /// Reads whole batches starting at the batch that holds `offset`, up to `max_bytes` (at least
    /// one batch when `min_one`), never past the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<ReadResult> {
        self.read_isolated(offset, max_bytes, min_one, Isolation::ReadUncommitted)
            .await
    }

    /// [`Self::read`] at an isolation level: read_committed stops at the last stable offset and
    /// lists the aborted transactions whose records the answer may hold; a replica's read stops
    /// at the written end instead of the high watermark (see [`Isolation::Replica`]).
    pub async fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        isolation: Isolation,
    ) -> Result<ReadResult> {
        let (mut read, upto) = self
            .until_stable(|| self.read_once(offset, max_bytes, min_one, isolation))
            .await?;
        if isolation == Isolation::ReadCommitted && !read.records.is_empty() {
            read.aborted = self.state.borrow().txns.aborted_between(offset, upto);
        }
        Ok(read)
    }

    /// Runs a read until no segment was swapped (cleaned, or deleted by retention) while it
    /// ran: a read planned against a segment's old file starts over.
    async fn until_stable<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        loop {
            let swaps = self.swaps.get();
            let result = read().await;
            if self.swaps.get() == swaps {
                return result;
            }
        }
    }

    /// One read attempt; also returns the offset after the last batch read (the answer's upper
    /// bound, which read_committed lists aborted transactions up to).
    async fn read_once(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        isolation: Isolation,
    ) -> Result<(ReadResult, i64)> {
        let (high_watermark, last_stable, log_start, log_end, written) = {
            let s = self.state.borrow();
            (s.high_watermark, lso(&s), s.log_start, s.log_end, s.written)
        };
        let hw = match isolation {
            Isolation::ReadUncommitted => high_watermark,
            Isolation::ReadCommitted => last_stable,
            Isolation::Replica => written,
        };
        let outcome = |records| ReadResult {
            records,
            high_watermark,
            last_stable_offset: last_stable,
            log_start_offset: log_start,
            log_end_offset: log_end,
            aborted: Vec::new(),
        };
        if offset < log_start || offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        if offset >= hw {
            return Ok((outcome(Records::default()), offset));
        }
        let mut offset = offset;
        loop {
            let Some(plan) = self.plan_read(offset) else {
                return Ok((outcome(Records::default()), offset));
            };
            let (records, upto) = match self.read_cached(&plan, offset, hw, max_bytes, min_one) {
                Some(read) => read,
                None => {
                    let (bytes, upto) = self
                        .read_batches(&plan, offset, hw, max_bytes, min_one)
                        .await?;
                    (Records::one(bytes), upto)
                }
            };
            if !records.is_empty() || plan.next_offset >= hw || plan.next_offset <= offset {
                return Ok((outcome(records), upto));
            }
            // `offset` lies past this segment's batches (e.g. exactly its end): try the next.
            offset = plan.next_offset;
        }
    }

    /// The fast path of [`Self::read`]: when the wanted batches are in the batch cache, walk
    /// their headers there and return zero-copy slices. None when the cache does not reach back
    /// to where the walk must start. Also the offset after the last batch taken.
    fn read_cached(
        &self,
        plan: &ReadPlan,
        offset: i64,
        hw: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Option<(Records, i64)> {
        let s = self.state.borrow();
        let seg = s
            .segments
            .iter()
            .find(|seg| seg.base_offset == plan.base_offset)?;
        if plan.start < seg.cache_start() {
            return None;
        }
        let mut header = [0u8; batch::HEADER_BYTES];
        let mut pos = plan.start;
        let mut first: Option<u64> = None;
        let mut end = pos;
        let mut upto = offset;
        while pos + batch::HEADER_BYTES as u64 <= seg.size {
            seg.copy_from_cache(pos, pos + batch::HEADER_BYTES as u64, &mut header);
            let h = BatchHeader::parse(&header)?;
            let total = h.total_bytes() as u64;
            if h.base_offset >= hw || pos + total > seg.size {
                break;
            }
            if h.last_offset() >= offset {
                let start = first.unwrap_or(pos);
                if (pos + total - start) as usize > max_bytes && !(min_one && first.is_none()) {
                    break;
                }
                first = Some(start);
                end = pos + total;
                upto = h.last_offset() + 1;
            }
            pos += total;
        }
        let records = match first {
            Some(start) => Records {
                parts: seg.pieces(start, end),
            },
            None => Records::default(),
        };
        Some((records, upto))
    }

    fn plan_read(&self, offset: i64) -> Option<ReadPlan> {
        let s = self.state.borrow();
        let i = s
            .segments
            .partition_point(|seg| seg.base_offset <= offset)
            .checked_sub(1)?;
        let seg = &s.segments[i];
        let relative = (offset - seg.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        Some(ReadPlan {
            base_offset: seg.base_offset,
            start: u64::from(seg.index.position_for(relative)),
            size: seg.size,
            next_offset: seg.next_offset,
        })
    }

    /// Reads `[from, to)` of the segment at `base`, from the cache or the file.
    async fn read_segment(&self, base: i64, from: u64, to: u64) -> Result<Bytes> {
        let (file, cached, cache_start, to) = {
            let s = self.state.borrow();
            let Some(seg) = s.segments.iter().find(|seg| seg.base_offset == base) else {
                return Ok(Bytes::new());
            };
            let to = to.min(seg.size);
            (
                seg.file.clone(),
                seg.slice_from_cache(from, to),
                seg.cache_start(),
                to,
            )
        };
        if from < cache_start && to > cache_start {
            // Straddles the cache boundary: file part, then cached part.
            let head = segment::read_range(file, None, cache_start, from, cache_start).await?;
            let tail = self.read_segment_cached(base, cache_start, to);
            let mut joined = BytesMut::with_capacity(head.len() + tail.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(&tail);
            return Ok(joined.freeze());
        }
        segment::read_range(file, cached, cache_start, from, to).await
    }

    fn read_segment_cached(&self, base: i64, from: u64, to: u64) -> Bytes {
        let s = self.state.borrow();
        s.segments
            .iter()
            .find(|seg| seg.base_offset == base)
            .and_then(|seg| seg.slice_from_cache(from, to.min(seg.size)))
            .unwrap_or_default()
    }

    async fn read_batches(
        &self,
        plan: &ReadPlan,
        offset: i64,
        hw: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<(Bytes, i64)> {
        // The index entry is at most index.interval.bytes before the wanted batch.
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        let mut from = plan.start;
        let mut window_len = (max_bytes as u64)
            .saturating_add(interval)
            .saturating_add(batch::HEADER_BYTES as u64)
            .max(64 * 1024);
        let swaps = self.swaps.get();
        loop {
            let to = from.saturating_add(window_len).min(plan.size);
            let window = self.read_segment(plan.base_offset, from, to).await?;
            if self.swaps.get() != swaps {
                // The segment was replaced under the plan: `read` starts over.
                return Ok((Bytes::new(), offset));
            }
            let mut at = 0usize;
            let mut first: Option<usize> = None;
            let mut end = 0usize;
            let mut upto = offset;
            let mut scanned_to_end = true;
            while let Some(header) = window.get(at..).and_then(BatchHeader::parse) {
                let total = header.total_bytes();
                if header.base_offset >= hw {
                    break;
                }
                if at + total > window.len() {
                    scanned_to_end = false;
                    break;
                }
                if header.last_offset() >= offset {
                    let start = first.unwrap_or(at);
                    let taken = at + total - start;
                    if taken > max_bytes && !(min_one && first.is_none()) {
                        break;
                    }
                    first = Some(start);
                    end = at + total;
                    upto = header.last_offset() + 1;
                }
                at += total;
            }
            if let Some(start) = first {
                return Ok((window.slice(start..end), upto));
            }
            if scanned_to_end || window.is_empty() {
                return Ok((Bytes::new(), offset));
            }
            // The wanted batch is cut off by the window: continue from the batch that was cut
            // off, with a window large enough for it.
            let cut = window
                .get(at..)
                .and_then(BatchHeader::parse)
                .map(|h| h.total_bytes());
            if cut.is_none_or(|c| from + at as u64 + c as u64 > plan.size) {
                // A header promising more than the segment holds: nothing more to read here.
                return Ok((Bytes::new(), offset));
            }
            from += at as u64;
            window_len = window_len.max(cut.unwrap_or(0) as u64);
            if !min_one && cut.is_some_and(|c| c > max_bytes) {
                return Ok((Bytes::new(), offset));
            }
        }
    }

    /// The first batch whose max timestamp is ≥ `timestamp`, for ListOffsets by time. Returns
    /// the batch so the caller can find the exact record inside it.
    pub async fn batch_for_timestamp(&self, timestamp: i64) -> Result<Option<Bytes>> {
        self.until_stable(|| self.batch_for_timestamp_once(timestamp))
            .await
    }

    async fn batch_for_timestamp_once(&self, timestamp: i64) -> Result<Option<Bytes>> {
        let hw = self.high_watermark();
        let candidates: Vec<(i64, u64, u64)> = {
            let s = self.state.borrow();
            s.segments
                .iter()
                .filter(|seg| seg.max_timestamp >= timestamp && seg.base_offset < hw)
                .map(|seg| {
                    let rel = seg.index.scan_start_for_timestamp(timestamp);
                    (
                        seg.base_offset,
                        u64::from(seg.index.position_for(rel)),
                        seg.size,
                    )
                })
                .collect()
        };
        for (base, mut pos, size) in candidates {
            while pos < size {
                let to = (pos + limits::dma_read_chunk_bytes as u64).min(size);
                let window = self.read_segment(base, pos, to).await?;
                let mut at = 0usize;
                while let Some(header) = window.get(at..).and_then(BatchHeader::parse) {
                    let total = header.total_bytes();
                    if header.base_offset >= hw {
                        return Ok(None);
                    }
                    if at + total > window.len() {
                        break;
                    }
                    if header.max_timestamp >= timestamp {
                        return Ok(Some(window.slice(at..at + total)));
                    }
                    at += total;
                }
                if at == 0 {
                    // A batch larger than the window: read it whole.
                    let Some(h) = window.get(..).and_then(BatchHeader::parse) else {
                        return Ok(None);
                    };
                    let whole = self
                        .read_segment(base, pos, pos + h.total_bytes() as u64)
                        .await?;
                    if h.max_timestamp >= timestamp {
                        return Ok(Some(whole));
                    }
                    at = h.total_bytes();
                }
                pos += at as u64;
            }
        }
        Ok(None)
    }

    /// The batch holding the largest timestamp below the high watermark (ListOffsets -3).
    pub async fn batch_with_max_timestamp(&self) -> Result<Option<Bytes>> {
        self.until_stable(|| self.batch_with_max_timestamp_once())
            .await
    }

    async fn batch_with_max_timestamp_once(&self) -> Result<Option<Bytes>> {
        let hw = self.high_watermark();
        let best = {
            let s = self.state.borrow();
            s.segments
                .iter()
                .filter(|seg| seg.size > 0 && seg.base_offset < hw)
                .max_by_key(|seg| seg.max_timestamp)
                .map(|seg| (seg.base_offset, seg.max_timestamp_position))
        };
        let Some((base, pos)) = best else {
            return Ok(None);
        };
        let head = self
            .read_segment(base, pos, pos + batch::HEADER_BYTES as u64)
            .await?;
        let Some(header) = BatchHeader::parse(&head) else {
            return Ok(None);
        };
        if header.base_offset >= hw {
            return Ok(None);
        }
        Ok(Some(
            self.read_segment(base, pos, pos + header.total_bytes() as u64)
                .await?,
        ))
    }

    /// Deletes whole sealed segments past `retention.ms` (by their largest timestamp) or beyond
    /// `retention.bytes`, oldest first, and advances the log start offset (only when
    /// `cleanup.policy` holds `delete`). The active segment
    /// is never deleted. Returns the number of segments deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let config = self.config();
        // A log being cleaned is left for the next round: segments never change under a swap.
        if !config.delete || self.cleaning.get() {
            return Ok(0);
        }
        let doomed: Vec<Segment> = {
            let mut s = self.state.borrow_mut();
            let mut total: i64 = s.segments.iter().map(|seg| seg.size as i64).sum();
            let mut count = 0;
            for seg in s.segments.iter().take(s.segments.len().saturating_sub(1)) {
                if !seg.sealed || seg.base_offset >= s.high_watermark {
                    break;
                }
                let expired = config.retention_ms >= 0
                    && seg.max_timestamp >= 0
                    && now_ms.saturating_sub(seg.max_timestamp) > config.retention_ms;
                let oversize = config.retention_bytes >= 0
                    && total - seg.size as i64 >= config.retention_bytes;
                if !(expired || oversize) {
                    break;
                }
                total -= seg.size as i64;
                count += 1;
            }
            let doomed: Vec<Segment> = s.segments.drain(..count).collect();
            if let Some(first) = s.segments.first() {
                s.log_start = s.log_start.max(first.base_offset);
            }
            let start = s.log_start;
            s.txns.forget_before(start);
            doomed
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        // Reads planned against a deleted segment start over (and find it gone).
        self.swaps.set(self.swaps.get() + 1);
        let (dir, bases): (PathBuf, Vec<i64>) = (
            self.dir.clone(),
            doomed.iter().map(|seg| seg.base_offset).collect(),
        );
        // Unlink and free the blocks on the blocking pool: the last close of a large unlinked
        // file frees its extents synchronously, which the reactor must not do.
        let held = cleaner::off_reactor(move || cleaner::remove_segments(&dir, &bases)).await?;
        cleaner::release(held).await;
        Ok(doomed.len())
    }

    /// Writes the unsealed segments' index files and releases the files (clean shutdown).
    pub async fn close(&self) -> Result<()> {
        self.flush(i64::MAX).await?;
        let (files, indexes) = {
            let s = self.state.borrow();
            let files: Vec<_> = s
                .segments
                .iter()
                .filter_map(|seg| seg.file.clone())
                .collect();
            let indexes: Vec<_> = s
                .segments
                .iter()
                .filter(|seg| !seg.sealed && seg.file.is_some())
                .map(|seg| {
                    (
                        seg.base_offset,
                        seg.size,
                        seg.index.encode_offsets(seg.base_offset),
                        seg.index.encode_times(seg.base_offset),
                    )
                })
                .collect();
            (files, indexes)
        };
        for (base, size, offsets, times) in indexes {
            if let Some(file) = files.iter().find(|f| {
                f.path()
                    .is_some_and(|p| *p == segment::segment_path(&self.dir, base, "log"))
            }) {
                file.truncate(size).await?;
                file.fdatasync().await?;
            }
            write_small_file(&segment::segment_path(&self.dir, base, "index"), &offsets).await?;
            write_small_file(&segment::segment_path(&self.dir, base, "timeindex"), &times).await?;
        }
        {
            let mut s = self.state.borrow_mut();
            let end = s.log_end;
            let snapshot = s.producers.encode(end);
            s.pending_snapshots.push((end, snapshot));
        }
        self.write_pending_snapshots().await
    }
}

struct ReadPlan {
    base_offset: i64,
    start: u64,
    size: u64,
    next_offset: i64,
}

async fn write_all_at(
    file: &glommio::io::DmaFile,
    buffer: glommio::io::DmaBuffer,
    pos: u64,
) -> Result<()> {
    let len = buffer.len();
    let n = file.write_at(buffer, pos).await?;
    if n != len {
        return Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short DMA write: {n} of {len} bytes at {pos}"),
        )));
    }
    Ok(())
}

/// Writes a small file (an index, a checkpoint) through the reactor and fdatasyncs it.
pub async fn write_small_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = BufferedFile::create(path).await?;
    let n = file.write_at(bytes.to_vec(), 0).await?;
    if n != bytes.len() {
        return Err(StorageError::Io(std::io::Error::other(
            "short write of a small file",
        )));
    }
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

/// Makes a newly created file's directory entry durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Appends fail fast for a while after a failed write (the disk is likely still full), then
/// are tried again.
fn refuse_after_io_error(s: &LogState, now_ms: i64) -> Result<()> {
    match &s.last_io_error {
        Some((why, at_ms)) if now_ms.saturating_sub(*at_ms) < IO_ERROR_BACKOFF_MS => {
            Err(StorageError::Io(std::io::Error::other(why.clone())))
        }
        _ => Ok(()),
    }
}

/// Where the high watermark may go on this node alone: what survives per the sync policy.
fn durable_end(s: &LogState, sync: SyncPolicy) -> i64 {
    match sync {
        SyncPolicy::EveryWrite => s.synced,
        SyncPolicy::Interval { .. } => s.written,
    }
}

/// The last stable offset of a log's state (never below the log start: retention may delete
/// the segment an open transaction began in, as Kafka clamps it).
fn lso(s: &LogState) -> i64 {
    s.txns.first_unstable().map_or(s.high_watermark, |first| {
        first.max(s.log_start).min(s.high_watermark)
    })
}

/// Writes a segment's aborted transactions to `<base>.txnindex`, or removes a stale file when
/// there are none (most segments: the file exists only where a transaction was aborted).
pub(crate) async fn write_txn_index(dir: &Path, base: i64, aborted: &[AbortedTxn]) -> Result<()> {
    let path = segment::segment_path(dir, base, "txnindex");
    if aborted.is_empty() {
        return cleaner::remove_if_present(&path);
    }
    write_small_file(&path, &txn::encode_index(aborted)).await
}

/// Producer-state snapshot files kept per partition (the newest ones).
const SNAPSHOTS_KEPT: usize = 2;

/// Base offsets of the segment files in `dir` (`<base>.log`), lowest first.
fn segment_bases(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Offsets of the producer-state snapshot files in `dir` (`<offset>.snapshot`).
fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".snapshot")?.parse().ok()
        })
        .collect()
}

/// Rebuilds the idempotent producers' state and the partition's transactions: the newest intact
/// snapshot at or below the first segment recovery scanned (snapshots past the log end describe
/// batches a crash took back, and are deleted), then every batch after it — from the recovery
/// scans where a segment was scanned anyway, else by scanning. Replay covers every scanned
/// segment because their aborted transactions are known only from it; sealed segments bring
/// theirs from their `.txnindex`. Without a snapshot the whole log is replayed. Returns the
/// state, the transactions and the snapshot offset replay started from.
async fn recover_producers(
    dir: &Path,
    segments: &[Segment],
    log_end: i64,
    mut seen: Recovery,
) -> Result<(ProducerStates, Transactions, i64)> {
    let replay_from_max = seen
        .scanned
        .keys()
        .min()
        .copied()
        .unwrap_or(log_end)
        .min(log_end);
    let mut offsets = snapshot_offsets(dir);
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    let mut loaded = None;
    for offset in offsets {
        let path = segment::segment_path(dir, offset, "snapshot");
        if offset > log_end {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if offset > replay_from_max {
            continue;
        }
        let decoded = std::fs::read(&path)
            .ok()
            .and_then(|b| ProducerStates::decode(&b));
        if let Some((at, states)) = decoded.filter(|(at, _)| *at == offset) {
            loaded = Some((at, states));
            break;
        }
    }
    let (from, mut producers) = loaded.unwrap_or_default();
    let mut txns = Transactions::default();
    txns.add_aborted(&seen.aborted);
    // Transactions open at the snapshot, so that aborts replayed below record the right last
    // stable offset.
    txns.set_open(producers.open_transactions());
    for seg in segments.iter().filter(|seg| seg.next_offset > from) {
        let batches = match seen.scanned.remove(&seg.base_offset) {
            Some(batches) => batches,
            None => {
                let Some(file) = seg.file.as_ref() else {
                    continue;
                };
                let mut batches = Vec::new();
                segment::scan(file, seg.base_offset, u32::MAX, false, &mut |h, bytes| {
                    if h.producer_id != NO_PRODUCER_ID {
                        batches.push(ProducerBatch::of(*h, bytes));
                    }
                })
                .await?;
                batches
            }
        };
        for b in batches.iter().filter(|b| b.header.base_offset >= from) {
            if let Some(event) = producers.replay(b) {
                txns.apply(event);
            }
        }
    }
    txns.set_open(producers.open_transactions());
    Ok((producers, txns, from))
}

/// What recovery learned while opening segments: the producer batches of the segments it
/// scanned (by base offset), and the aborted transactions of the sealed segments it trusted.
#[derive(Default)]
struct Recovery {
    scanned: std::collections::HashMap<i64, Vec<ProducerBatch>>,
    aborted: Vec<AbortedTxn>,
}

async fn recover_segment(
    dir: &Path,
    base: i64,
    last: bool,
    interval: u32,
    seen: &mut Recovery,
) -> Result<Segment> {
    let path = segment::segment_path(dir, base, "log");
    let file = segment::open_file(&path, false).await?;
    let mut seg = Segment::new(dir, base);
    let file_size = file.file_size().await?;
    if !last {
        let offsets = std::fs::read(seg.path("index")).unwrap_or_default();
        let times = std::fs::read(seg.path("timeindex")).unwrap_or_default();
        // No `.txnindex`: no transaction was aborted in the segment. A damaged one makes the
        // segment scanned like one without indexes.
        let aborted = match std::fs::read(seg.path("txnindex")) {
            Ok(bytes) => txn::decode_index(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
            Err(_) => None,
        };
        let index = SegmentIndex::decode(base, &offsets, &times);
        if let (Some(index), Some(aborted)) = (index, aborted) {
            seen.aborted.extend(aborted);
            // Sealed segments were truncated to their logical size before indexes were written.
            seg.max_timestamp = index.times.last().map(|t| t.timestamp).unwrap_or(-1);
            seg.max_timestamp_position = index
                .times
                .last()
                .map(|t| u64::from(index.position_for(t.relative_offset)))
                .unwrap_or(0);
            seg.index = index;
            seg.size = file_size;
            seg.written = file_size;
            seg.preallocated = file_size;
            seg.next_offset = next_base_or_scan(dir, base).unwrap_or(base);
            seg.sealed = true;
            seg.rolled = true;
            seg.seed_tail(file_size, Bytes::new());
            seg.file = Some(Rc::new(file));
            if seg.next_offset > base {
                return Ok(seg);
            }
            // The next segment could not be named: fall through to a full scan.
            let file = seg.file.take().expect("just set");
            return scan_into(seg, Rc::try_unwrap(file).ok(), &path, last, interval, seen).await;
        }
    }
    scan_into(seg, Some(file), &path, last, interval, seen).await
}

/// The cleaner merges consecutive segments into the first one's file and then deletes the
/// others; a crash in between leaves those behind it, their offsets already in the merged file.
/// A segment whose records reach past the next segment's base is such a merged one: the
/// segments it covers are deleted. Then every segment but the last ends where the next begins.
fn drop_merged_leftovers(segments: &mut Vec<Segment>) -> Result<()> {
    let mut i = 0;
    while i + 1 < segments.len() {
        if segments[i].next_offset > segments[i + 1].base_offset {
            // A leftover had its index files removed before the merge's rename (so it was
            // rescanned: not sealed) and is never the last segment (the active one is never
            // cleaned). Anything else that overlaps is damage, not a merge.
            let leftover = !segments[i + 1].sealed && i + 2 < segments.len();
            if !leftover {
                return Err(StorageError::Corrupt(format!(
                    "segment {} holds offsets up to {}, past the next segment's base {}",
                    segments[i].base_offset,
                    segments[i].next_offset,
                    segments[i + 1].base_offset
                )));
            }
            let leftover = segments.remove(i + 1);
            for ext in ["log", "index", "timeindex", "txnindex"] {
                cleaner::remove_if_present(&leftover.path(ext))?;
            }
            continue;
        }
        segments[i].next_offset = segments[i + 1].base_offset;
        i += 1;
    }
    Ok(())
}

fn next_base_or_scan(dir: &Path, base: i64) -> Option<i64> {
    let mut next: Option<i64> = None;
    for entry in std::fs::read_dir(dir).ok()? {
        let name = entry.ok()?.file_name();
        let name = name.to_string_lossy().to_string();
        if let Some(b) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<i64>().ok())
        {
            if b > base && next.is_none_or(|n| b < n) {
                next = Some(b);
            }
        }
    }
    next
}

async fn scan_into(
    mut seg: Segment,
    file: Option<glommio::io::DmaFile>,
    path: &Path,
    last: bool,
    interval: u32,
    seen: &mut Recovery,
) -> Result<Segment> {
    let file = match file {
        Some(f) => f,
        None => segment::open_file(path, false).await?,
    };
    let base = seg.base_offset;
    let mut batches = Vec::new();
    let scanned = segment::scan(&file, base, interval, last, &mut |h, bytes| {
        if h.producer_id != NO_PRODUCER_ID {
            batches.push(ProducerBatch::of(*h, bytes));
        }
    })
    .await?;
    seen.scanned.insert(base, batches);
    let file_size = file.file_size().await?;
    if scanned.valid_bytes < file_size {
        // Torn or corrupt tail (or preallocated zeros): cut the file back to the valid bytes.
        file.truncate(scanned.valid_bytes).await?;
        file.fdatasync().await?;
    }
    seg.size = scanned.valid_bytes;
    seg.written = scanned.valid_bytes;
    seg.preallocated = scanned.valid_bytes;
    // A sealed segment reaches to the next one's base: compaction may have removed the records
    // at its end, but never their offsets.
    // (When a scan reaches past the next segment's base, that segment is a leftover of an
    // interrupted merge: see `drop_merged_leftovers`.)
    seg.next_offset = if last {
        scanned.next_offset
    } else {
        next_base_or_scan(&seg.dir, base)
            .unwrap_or(scanned.next_offset)
            .max(scanned.next_offset)
    };
    seg.max_timestamp = scanned.max_timestamp;
    seg.max_timestamp_position = scanned.max_timestamp_position;
    seg.index = scanned.index;
    let aligned = align_down(seg.size);
    let tail = if seg.size > aligned {
        Bytes::copy_from_slice(&file.read_at(aligned, (seg.size - aligned) as usize).await?)
    } else {
        Bytes::new()
    };
    seg.seed_tail(aligned, tail);
    seg.file = Some(Rc::new(file));
    if !last {
        seg.rolled = true;
        seg.sealed = false; // the flusher re-seals it, writing fresh index files
    }
    Ok(seg)
}
