//! Cutting back a closed log's tail, as Kafka's `truncateTo`: a follower whose log diverged
//! from its leader's truncates it before it fetches again.
//!
//! Works on the files of a log no [`PartitionLog`](super::PartitionLog) has open. The cut is
//! found by scanning the segment that holds it as recovery does (CRC checked, offsets in order,
//! gaps allowed where compaction left them); the files are then removed and shortened with
//! `std::fs` on the blocking pool — rare control-plane work, kept off the reactor. Nothing is
//! rebuilt here: the next `PartitionLog::open` rescans the cut segment and rebuilds its indexes
//! and the producer state from what is left.
//!
//! Crash safety: each step is durable before the next, and every prefix of the steps leaves a
//! directory that opens with every kept batch intact; running `truncate_dir` again finishes the
//! job. Snapshots and the cleaner checkpoint describing the removed tail go first (without them
//! recovery replays more, or the cleaner cleans once more). Then, when the cut segment may be
//! the last one (no offset gaps), whole segments go from the highest down (each state is a
//! shorter log) before the cut. A segment with gaps may never be the last (recovery requires
//! contiguous offsets there and would cut it at its first gap), so it is cut first, an empty
//! segment is placed after it, and the removed segments go last (a crash in between leaves a
//! hole followed by some of the old records, which the next run removes).

use std::path::{Path, PathBuf};

use super::{cleaner, segment_bases, snapshot_offsets, sync_dir};
use crate::error::Result;
use crate::segment;

/// Truncates the log in `dir` so that it ends at or before `offset`, as Kafka's `truncateTo`,
/// and returns the new log end. `dir` must be closed: no `PartitionLog` open on it (its flusher
/// would write the removed bytes back). Panics on a negative `offset` (a caller's bug).
///
/// * Every segment whose base is at or past `offset` is removed with all its files.
/// * The segment holding `offset` is cut before the first batch whose last offset is at or past
///   it — a batch straddling `offset` goes whole, so the new end may lie below `offset` — and
///   loses its index files (recovery rescans it). A torn tail goes too, as recovery would cut it.
/// * If that segment has offset gaps (compaction), an empty segment at the new end follows it.
/// * If `offset` is at or below the first segment's base, every segment goes and an empty
///   `<offset>` segment is left: the log reopens empty, starting at `offset`, with no producers.
/// * Producer snapshots past the new end and a cleaner checkpoint past it are removed.
///
/// Durable on return: every change is fsynced, and so is the directory.
///
/// Cost: reads the cut segment up to the cut (one scan, as recovery's); one directory fsync per
/// removed segment.
pub async fn truncate_dir(dir: &Path, offset: i64) -> Result<i64> {
    assert!(offset >= 0, "truncation to a negative offset {offset}");
    let bases = segment_bases(dir)?;
    let plan = plan(dir, &bases, offset).await?;
    let new_end = plan.new_end;
    cleaner::off_reactor(move || plan.apply()).await?;
    Ok(new_end)
}

/// Empties the log in `dir` and restarts it at `offset` (Kafka's `truncateFullyAndStartAt`): a
/// follower whose log ends before its leader's log start (the leader deleted what it lacks)
/// starts over there. `dir` must be closed, as for [`truncate_dir`].
///
/// Every segment goes (highest first), with the producer snapshots and the cleaner checkpoint;
/// then an empty `<offset>` segment is made. A crash before that leaves an empty log starting
/// at 0 (still behind the leader: the follower restarts it again), never old records after a
/// hole. Durable on return.
pub async fn restart_dir(dir: &Path, offset: i64) -> Result<()> {
    assert!(offset >= 0, "a log restarted at a negative offset {offset}");
    let plan = Plan {
        dir: dir.to_path_buf(),
        doomed: segment_bases(dir)?,
        cut: None,
        successor: None,
        new_end: 0,
        snapshots_kept_to: None,
    };
    cleaner::off_reactor(move || {
        plan.remove_stale_state()?;
        plan.remove_doomed()?;
        let empty = std::fs::File::create(segment::segment_path(&plan.dir, offset, "log"))?;
        empty.sync_all()?;
        sync_dir(&plan.dir)
    })
    .await
}

/// What a truncation does to the files, decided before anything changes.
#[derive(Debug)]
struct Plan {
    dir: PathBuf,
    /// Segments removed whole, by base offset (all at or past the truncation offset).
    doomed: Vec<i64>,
    /// The segment holding the cut, and its length after it.
    cut: Option<(i64, u64)>,
    /// An empty segment left at the new end (its base): a segment with gaps precedes it, or
    /// the log is emptied.
    successor: Option<i64>,
    new_end: i64,
    /// Snapshots at or below this offset are kept; None: every snapshot goes (no batch is left
    /// for the producer state they describe).
    snapshots_kept_to: Option<i64>,
}

async fn plan(dir: &Path, bases: &[i64], offset: i64) -> Result<Plan> {
    let dir_buf = dir.to_path_buf();
    let Some(&first) = bases.first() else {
        // No segment file: the log opens empty at 0, which ends at or before any offset.
        return Ok(Plan {
            dir: dir_buf,
            doomed: Vec::new(),
            cut: None,
            successor: None,
            new_end: 0,
            snapshots_kept_to: Some(0),
        });
    };
    if offset <= first {
        return Ok(Plan {
            dir: dir_buf,
            doomed: bases.to_vec(),
            cut: None,
            successor: Some(offset),
            new_end: offset,
            snapshots_kept_to: None,
        });
    }
    // The segment holding `offset`: the last one beginning below it (one exists: first < offset).
    let held = bases.partition_point(|base| *base < offset) - 1;
    let cut_base = bases[held];
    let doomed = bases[held + 1..].to_vec();
    // Only the last segment on disk is read the way recovery reads the active one (contiguous
    // offsets: a damaged base offset ends the valid part); sealed ones may hold compaction gaps.
    let last_on_disk = doomed.is_empty();
    let file = segment::open_file(&segment::segment_path(dir, cut_base, "log"), false).await?;
    let mut expected = cut_base;
    let mut gaps = false;
    let scanned = segment::scan_while(&file, cut_base, u32::MAX, last_on_disk, &mut |h, _| {
        if h.last_offset() >= offset {
            return false;
        }
        gaps |= h.base_offset != expected;
        expected = h.last_offset() + 1;
        true
    })
    .await;
    file.close().await?;
    let scanned = scanned?;
    let new_end = scanned.next_offset;
    assert!(
        new_end >= cut_base && new_end <= offset,
        "a cut segment ends between its base {cut_base} and the truncation offset {offset}: {new_end}"
    );
    Ok(Plan {
        dir: dir_buf,
        doomed,
        cut: Some((cut_base, scanned.valid_bytes)),
        successor: gaps.then_some(new_end),
        new_end,
        snapshots_kept_to: Some(new_end),
    })
}

impl Plan {
    /// Changes the files, in the crash-safe order the module comment gives. Blocking: runs on
    /// the blocking pool.
    fn apply(mut self) -> Result<()> {
        self.remove_stale_state()?;
        match self.successor {
            None => {
                self.remove_doomed()?;
                if let Some((base, len)) = self.cut {
                    cut_segment(&self.dir, base, len)?;
                }
            }
            Some(at) => {
                if let Some((base, len)) = self.cut {
                    cut_segment(&self.dir, base, len)?;
                }
                if self.doomed.contains(&at) {
                    // A removed segment has the successor's name: emptied in place instead.
                    cut_segment(&self.dir, at, 0)?;
                    self.doomed.retain(|base| *base != at);
                } else {
                    let empty = std::fs::File::create(segment::segment_path(&self.dir, at, "log"))?;
                    empty.sync_all()?;
                }
                sync_dir(&self.dir)?;
                self.remove_doomed()?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Producer snapshots past the new end (all, when the log is emptied) and a cleaner
    /// checkpoint past it: they describe batches that go.
    fn remove_stale_state(&self) -> Result<()> {
        for at in snapshot_offsets(&self.dir) {
            if self.snapshots_kept_to.is_none_or(|kept_to| at > kept_to) {
                cleaner::remove_if_present(&segment::segment_path(&self.dir, at, "snapshot"))?;
            }
        }
        if cleaner::read_checkpoint(&self.dir).is_some_and(|(at, _)| at > self.new_end) {
            cleaner::remove_if_present(&cleaner::checkpoint_path(&self.dir))?;
        }
        sync_dir(&self.dir)
    }

    /// Removes the doomed segments from the highest down, each durably before the next, so a
    /// crash leaves a log that ends where one of them began.
    fn remove_doomed(&self) -> Result<()> {
        for base in self.doomed.iter().rev() {
            // Index files before the log file: a stale index must never outlive its segment
            // (a segment created later at the same base would trust it).
            for ext in ["index", "timeindex", "txnindex", "log"] {
                cleaner::remove_if_present(&segment::segment_path(&self.dir, *base, ext))?;
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Cuts a segment file to `len` bytes, its index files removed first (durably: an index must
/// never describe bytes the file no longer holds). Recovery rescans it and rebuilds them.
fn cut_segment(dir: &Path, base: i64, len: u64) -> Result<()> {
    for ext in ["index", "timeindex", "txnindex"] {
        cleaner::remove_if_present(&segment::segment_path(dir, base, ext))?;
    }
    sync_dir(dir)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment::segment_path(dir, base, "log"))?;
    file.set_len(len)?;
    file.sync_all()?;
    Ok(())
}
