//! The per-core journal: one fdatasync makes a flusher round durable, however many partitions
//! the round wrote to.
//!
//! Why: without it, every partition written in a round needs its own fdatasync, and on ext4 an
//! fdatasync of a segment also writes the metadata of the preallocated range the write filled
//! (unwritten extents become written) before it flushes the device cache. A round then waits
//! for the slowest of many such syncs — the tail of acks=all latency (docs/BENCHMARKS.md). The
//! journal is a ring file written in full once, when it is created: its fdatasync has no
//! metadata to write and is one device flush.
//!
//! How (the durability contract): a round writes the segments with O_DIRECT as before, then
//! copies the bytes it wrote into one record per segment written ("these bytes go at this
//! position of this segment file": physical redo), appends the records to the journal and
//! fdatasyncs the journal only. The partitions' `synced` watermark then moves as if their
//! segments had been synced. The segments' own fdatasyncs are deferred to a **checkpoint**:
//! every segment file written since the last one is fdatasynced, then the journal's header
//! records the position before which no record is needed any more. A checkpoint runs off the
//! acknowledgement path once half the ring is in use, at a clean stop, and — as a **barrier** —
//! before anything rewrites or removes segment files the journal may name (truncation, a
//! compaction swap, deleting a partition), so that replay can never write old bytes into them.
//!
//! Replay ([`replay`]) runs at start before any log is opened, with `std::fs`: it writes each
//! record's bytes again (idempotent) and syncs them; log recovery then validates the tails as
//! it always does.
//!
//! Rounds larger than `limits::journal_round_bytes_max` bypass the journal and sync their
//! segments directly: at high throughput a round already carries enough bytes per fdatasync,
//! and copying them a second time would cost CPU and disk bandwidth for nothing.
//!
//! Concurrency: a `Journal` lives on its core's reactor; the core's flusher commits one round
//! at a time, and checkpoints are serialized by a semaphore. The format is in docs/FORMATS.md.

mod replay;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaFile;
use sluice_core::limits;

use crate::error::{Result, StorageError};
use crate::segment::{align_up, open_file};

pub use replay::{prepare, Prepared};

/// Two header slots of one block each, written alternately, then the ring.
const HEADER_SLOT_BYTES: u64 = limits::dma_alignment_bytes;
const RING_START: u64 = 2 * HEADER_SLOT_BYTES;
const MAGIC: &[u8; 4] = b"SLJN";
const VERSION: u8 = 1;
/// magic, version, 3 reserved, ring bytes, checkpoint, sequence, CRC-32C.
const HEADER_BYTES: usize = 4 + 1 + 3 + 8 + 8 + 8 + 4;
/// A record: kind, lsn, payload length, CRC-32C; then the payload.
const RECORD_WRITE: u8 = 1;
const RECORD_HEADER_BYTES: usize = 1 + 8 + 4 + 4;
/// A segment's directory name is `<topic>-<partition>`: at most 249 + 1 + 10 bytes.
const DIR_NAME_BYTES_MAX: usize = 512;

/// The journal file of core `core` under `log_dirs`.
pub fn journal_path(log_dirs: &Path, core: usize) -> PathBuf {
    journal_dir(log_dirs).join(format!("journal-{core}"))
}

fn journal_dir(log_dirs: &Path) -> PathBuf {
    log_dirs.join(".sluice")
}

/// The checkpoint a header slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    ring_bytes: u64,
    /// No record before this position is needed by replay.
    checkpoint: u64,
    /// Which slot is newer: the valid slot with the higher sequence wins.
    sequence: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[8..16].copy_from_slice(&self.ring_bytes.to_be_bytes());
        out[16..24].copy_from_slice(&self.checkpoint.to_be_bytes());
        out[24..32].copy_from_slice(&self.sequence.to_be_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes = bytes.get(..HEADER_BYTES)?;
        if &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return None;
        }
        let crc = u32::from_be_bytes(bytes[32..36].try_into().ok()?);
        if crc32c::crc32c(&bytes[..32]) != crc {
            return None;
        }
        let u64_at = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_be_bytes);
        Some(Header {
            ring_bytes: u64_at(8)?,
            checkpoint: u64_at(16)?,
            sequence: u64_at(24)?,
        })
    }

    /// The slot this header is written to: sequences alternate between the two.
    fn slot_position(&self) -> u64 {
        (self.sequence % 2) * HEADER_SLOT_BYTES
    }

    /// The newer valid header of the two slots at the start of a journal file.
    fn newest(slots: &[u8]) -> Option<Header> {
        let slot = |i: u64| {
            let at = (i * HEADER_SLOT_BYTES) as usize;
            slots.get(at..).and_then(Header::decode)
        };
        match (slot(0), slot(1)) {
            (Some(a), Some(b)) => Some(if a.sequence >= b.sequence { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Where the byte at journal position `lsn` lives in the file.
fn file_position(lsn: u64, ring_bytes: u64) -> u64 {
    RING_START + lsn % ring_bytes
}

/// Encodes a record telling replay to write `data` at `position` of the segment file with base
/// offset `segment_base` in the log directory `dir_name`.
#[cfg(test)]
fn encode_record(
    out: &mut Vec<u8>,
    lsn: u64,
    dir_name: &str,
    segment_base: i64,
    position: u64,
    data: &[u8],
) {
    let target = RecordTarget {
        dir_name,
        segment_base,
        position,
    };
    encode_record_with(out, lsn, &target, data.len(), |out| {
        out.copy_from_slice(data)
    });
}

/// Where a record's bytes go.
struct RecordTarget<'a> {
    dir_name: &'a str,
    segment_base: i64,
    position: u64,
}

/// Encodes a record of `data_len` bytes that `fill` copies in place.
fn encode_record_with(
    out: &mut Vec<u8>,
    lsn: u64,
    target: &RecordTarget<'_>,
    data_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let name = target.dir_name.as_bytes();
    let payload_len = 2 + name.len() + 8 + 8 + data_len;
    let start = out.len();
    out.push(RECORD_WRITE);
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&target.segment_base.to_be_bytes());
    out.extend_from_slice(&target.position.to_be_bytes());
    let data_at = out.len();
    out.resize(data_at + data_len, 0);
    fill(&mut out[data_at..]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 13]), &out[start + 17..]);
    out[start + 13..start + 17].copy_from_slice(&crc.to_be_bytes());
}

/// The records of one flusher round, gathered while the round's segment writes complete.
pub struct JournalRound {
    start: u64,
    bytes: RefCell<Vec<u8>>,
    files: RefCell<HashMap<*const DmaFile, Rc<DmaFile>>>,
}

impl JournalRound {
    /// Adds the bytes a segment write just completed: `data_len` bytes, copied in by `fill`,
    /// at `position` of the segment file `file` (base offset `segment_base`, in the log
    /// directory `dir`). Only bytes whose write succeeded are staged: replay must never bring
    /// back a write its producer was told failed.
    pub fn stage(
        &self,
        file: &Rc<DmaFile>,
        dir: &Path,
        segment_base: i64,
        position: u64,
        data_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let dir_name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a log directory is named <topic>-<partition>");
        assert!(dir_name.len() <= DIR_NAME_BYTES_MAX, "{dir_name}");
        let mut bytes = self.bytes.borrow_mut();
        let lsn = self.start + bytes.len() as u64;
        let target = RecordTarget {
            dir_name,
            segment_base,
            position,
        };
        encode_record_with(&mut bytes, lsn, &target, data_len, fill);
        self.files
            .borrow_mut()
            .entry(Rc::as_ptr(file))
            .or_insert_with(|| file.clone());
    }

    fn is_empty(&self) -> bool {
        self.bytes.borrow().is_empty()
    }
}

/// The journal of one core. See the module comment for its contract.
pub struct Journal {
    file: DmaFile,
    ring_bytes: u64,
    /// The position after the last committed round (always block-aligned).
    end: Cell<u64>,
    /// No record before this position is needed: durable in the segments.
    checkpointed: Cell<u64>,
    sequence: Cell<u64>,
    /// Segment files written by committed rounds since the last checkpoint, with the end of
    /// the newest round that wrote each.
    touched: RefCell<HashMap<*const DmaFile, (Rc<DmaFile>, u64)>>,
    checkpointing: glommio::sync::Semaphore,
    /// A background checkpoint is scheduled or running ([`Self::checkpoint_if_due`]).
    checkpoint_scheduled: Cell<bool>,
    /// Set after a failed journal write or checkpoint: rounds sync their segments directly from
    /// then on.
    failed: Cell<bool>,
    /// Why a checkpoint failed. Sticky: Linux reports a writeback error once, so a retried
    /// fdatasync could succeed without the bytes being on disk. The records stay in the ring,
    /// replayed at the next start, and every later checkpoint (and so every barrier) fails.
    checkpoint_failed: RefCell<Option<String>>,
    stats: Cell<JournalStats>,
}

/// What a journal did since it was opened (printed at a clean stop).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Rounds made durable by the journal, and their record bytes.
    pub rounds: u64,
    pub bytes: u64,
    /// Rounds that synced their segments instead (too large, no room, or after a failure).
    pub direct_rounds: u64,
    pub checkpoints: u64,
}

impl Journal {
    /// Opens core `core`'s journal, made ready by [`prepare`] before the cores started.
    pub async fn open(log_dirs: &Path, core: usize) -> Result<Rc<Journal>> {
        let file = open_file(&journal_path(log_dirs, core), false).await?;
        let slots = file
            .read_at_aligned(0, RING_START as usize)
            .await
            .map_err(StorageError::from)?;
        let header = Header::newest(&slots).ok_or_else(|| {
            StorageError::Corrupt(format!("journal of core {core}: no valid header"))
        })?;
        Ok(Rc::new(Journal {
            file,
            ring_bytes: header.ring_bytes,
            end: Cell::new(header.checkpoint),
            checkpointed: Cell::new(header.checkpoint),
            sequence: Cell::new(header.sequence),
            touched: RefCell::default(),
            checkpointing: glommio::sync::Semaphore::new(1),
            checkpoint_scheduled: Cell::new(false),
            failed: Cell::new(false),
            checkpoint_failed: RefCell::new(None),
            stats: Cell::default(),
        }))
    }

    /// A round for about `bytes` of segment writes, or None when it should sync its segments
    /// directly: too large to be worth copying, no room in the ring, or the journal failed.
    pub fn begin_round(&self, bytes: u64) -> Option<JournalRound> {
        if self.failed.get() || bytes > limits::journal_round_bytes_max || !self.has_room(bytes) {
            self.count(|s| s.direct_rounds += 1);
            return None;
        }
        // Sized for the round up front (its records add a few dozen bytes each): growing it
        // by doubling would copy the round's bytes again on the produce path.
        let capacity = bytes as usize + (limits::dma_alignment_bytes as usize);
        Some(JournalRound {
            start: self.end.get(),
            bytes: RefCell::new(Vec::with_capacity(capacity)),
            files: RefCell::default(),
        })
    }

    fn has_room(&self, bytes: u64) -> bool {
        self.end.get() + align_up(bytes) - self.checkpointed.get() <= self.ring_bytes
    }

    /// Writes the round's records and fdatasyncs the journal. `Ok(true)`: the round's segment
    /// writes are durable. `Ok(false)`: nothing was journaled (the round outgrew the room left);
    /// the caller syncs the segments itself. An error disables the journal.
    pub async fn commit(&self, round: &JournalRound) -> Result<bool> {
        if round.is_empty() {
            return Ok(true);
        }
        assert_eq!(round.start, self.end.get(), "rounds commit one at a time");
        let bytes = std::mem::take(&mut *round.bytes.borrow_mut());
        let len = align_up(bytes.len() as u64);
        if !self.has_room(len) {
            self.count(|s| s.direct_rounds += 1);
            return Ok(false);
        }
        let written = self.write_ring(round.start, &bytes).await;
        // Even a failed write may have reached the disk, where replay would find it: its region
        // is used up and its files are synced by the next checkpoint, which barriers wait for.
        let end = round.start + len;
        self.end.set(end);
        let mut touched = self.touched.borrow_mut();
        for (key, file) in round.files.borrow().iter() {
            touched.insert(*key, (file.clone(), end));
        }
        if written.is_err() {
            self.failed.set(true);
        }
        self.count(|s| {
            s.rounds += 1;
            s.bytes += bytes.len() as u64;
        });
        written.map(|()| true)
    }

    /// Writes `bytes` (padded with zeros to whole blocks) at ring position `start`, in two
    /// pieces when they wrap, and fdatasyncs.
    async fn write_ring(&self, start: u64, bytes: &[u8]) -> Result<()> {
        let len = align_up(bytes.len() as u64);
        let first = len.min(self.ring_bytes - start % self.ring_bytes);
        let mut done = 0u64;
        for piece in [first, len - first] {
            let mut at = 0u64;
            while at < piece {
                let chunk = (piece - at).min(limits::dma_write_bytes_max as u64);
                let mut buffer = self.file.alloc_dma_buffer(chunk as usize);
                let out = buffer.as_bytes_mut();
                let from = (done + at) as usize;
                let copied = bytes.len().saturating_sub(from).min(chunk as usize);
                out[..copied].copy_from_slice(&bytes[from..from + copied]);
                out[copied..].fill(0);
                let position = file_position(start + done + at, self.ring_bytes);
                let n = self.file.write_at(buffer, position).await?;
                if n as u64 != chunk {
                    return Err(StorageError::Io(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short journal write: {n} of {chunk} bytes at {position}"),
                    )));
                }
                at += chunk;
            }
            done += piece;
        }
        self.file.fdatasync().await?;
        Ok(())
    }

    /// Starts a checkpoint in the background when half the ring is in use, or (`idle`: nothing
    /// is being written) when anything at all is pending; never a second one while one is
    /// scheduled or running, and none after one failed.
    pub fn checkpoint_if_due(self: &Rc<Self>, idle: bool) {
        let pending = self.pending_bytes();
        let due = pending >= self.ring_bytes / 2 || (idle && pending > 0);
        if !due || self.checkpoint_scheduled.get() || self.checkpoint_failed.borrow().is_some() {
            return;
        }
        self.checkpoint_scheduled.set(true);
        let journal = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = journal.checkpoint().await {
                eprintln!("sluice: journal checkpoint failed: {e}");
            }
            journal.checkpoint_scheduled.set(false);
        })
        .detach();
    }

    /// Makes every committed record unnecessary: fdatasyncs the segment files they wrote, then
    /// records the new checkpoint in the header. Also the barrier before segment files are
    /// rewritten or removed; it returns at once when nothing was committed since the last one.
    pub async fn checkpoint(&self) -> Result<()> {
        let _permit = self
            .checkpointing
            .acquire_permit(1)
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        if let Some(why) = self.checkpoint_failed.borrow().as_ref() {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "an earlier journal checkpoint failed: {why}"
            ))));
        }
        let target = self.end.get();
        if self.checkpointed.get() >= target {
            return Ok(());
        }
        let result = self.checkpoint_to(target).await;
        if let Err(e) = &result {
            self.failed.set(true);
            *self.checkpoint_failed.borrow_mut() = Some(e.to_string());
        }
        result
    }

    async fn checkpoint_to(&self, target: u64) -> Result<()> {
        // Every file: one whose newest record is past `target` also has records before it.
        let files: Vec<Rc<DmaFile>> = self
            .touched
            .borrow()
            .values()
            .map(|(file, _)| file.clone())
            .collect();
        let synced = futures::future::join_all(files.iter().map(|f| f.fdatasync())).await;
        for result in synced {
            result?;
        }
        self.touched
            .borrow_mut()
            .retain(|_, (_, newest)| *newest > target);
        let header = Header {
            ring_bytes: self.ring_bytes,
            checkpoint: target,
            sequence: self.sequence.get() + 1,
        };
        let mut block = self.file.alloc_dma_buffer(HEADER_SLOT_BYTES as usize);
        block.as_bytes_mut().fill(0);
        block.as_bytes_mut()[..HEADER_BYTES].copy_from_slice(&header.encode());
        let n = self.file.write_at(block, header.slot_position()).await?;
        if n as u64 != HEADER_SLOT_BYTES {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short journal header write: {n} bytes"),
            )));
        }
        self.file.fdatasync().await?;
        self.sequence.set(header.sequence);
        self.checkpointed.set(target);
        self.count(|s| s.checkpoints += 1);
        Ok(())
    }

    fn count(&self, f: impl FnOnce(&mut JournalStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    pub fn stats(&self) -> JournalStats {
        self.stats.get()
    }

    /// Bytes committed and not yet checkpointed (for tests and diagnostics).
    pub fn pending_bytes(&self) -> u64 {
        self.end.get() - self.checkpointed.get()
    }

    /// A clean stop: nothing is left for replay.
    pub async fn close(&self) -> Result<()> {
        self.checkpoint().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_the_newer_valid_slot_wins() {
        let a = Header {
            ring_bytes: 1 << 20,
            checkpoint: 8192,
            sequence: 4,
        };
        let b = Header {
            checkpoint: 12288,
            sequence: 5,
            ..a
        };
        assert_eq!(Header::decode(&a.encode()), Some(a));
        let mut slots = vec![0u8; RING_START as usize];
        slots[a.slot_position() as usize..][..HEADER_BYTES].copy_from_slice(&a.encode());
        slots[b.slot_position() as usize..][..HEADER_BYTES].copy_from_slice(&b.encode());
        assert_eq!(Header::newest(&slots), Some(b));
        // A torn newer slot leaves the older one in charge.
        slots[b.slot_position() as usize + 20] ^= 0xff;
        assert_eq!(Header::newest(&slots), Some(a));
        slots[a.slot_position() as usize] = b'X';
        assert_eq!(Header::newest(&slots), None);
    }

    #[test]
    fn a_record_is_framed_with_its_position_and_checksum() {
        let mut out = Vec::new();
        encode_record(&mut out, 4096, "t-0", 100, 8000, b"hello");
        assert_eq!(out[0], RECORD_WRITE);
        assert_eq!(
            u64::from_be_bytes(out[1..9].try_into().expect("valid")),
            4096
        );
        let payload = u32::from_be_bytes(out[9..13].try_into().expect("valid")) as usize;
        assert_eq!(out.len(), RECORD_HEADER_BYTES + payload);
        let record = replay::decode_record(&out, 4096).expect("valid");
        assert_eq!(record.dir_name, "t-0");
        assert_eq!(record.segment_base, 100);
        assert_eq!(record.position, 8000);
        assert_eq!(record.data, b"hello");
        // Any flipped byte is caught, as is a record found at the wrong position.
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(replay::decode_record(&bad, 4096).is_none(), "byte {i}");
        }
        assert!(replay::decode_record(&out, 0).is_none());
    }
}
