//! Replay at start, and each core's journal made ready, before any core runs (plain `std::fs`).
//!
//! Replay reads a journal from its checkpoint and stops at the first record that is not there:
//! a block that starts with a zero (never written, or the end of the last round), a record whose
//! position field is not where it was found (left from an earlier lap of the ring), or a torn
//! or damaged one (CRC). Each record's bytes are written again where the segment had them; a
//! segment file that no longer exists (deleted by retention) is skipped, never recreated.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    file_position, journal_dir, journal_path, Header, RECORD_HEADER_BYTES, RECORD_WRITE, RING_START,
};
use crate::error::{Result, StorageError};
use crate::log::sync_dir;
use crate::segment::{align_up, segment_path};

/// What [`prepare`] replayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Records written back into segment files, and their bytes.
    pub records: usize,
    pub bytes: u64,
    /// Records for segment files that are gone.
    pub skipped: usize,
}

pub(super) struct Record<'a> {
    pub dir_name: &'a str,
    pub segment_base: i64,
    pub position: u64,
    pub data: &'a [u8],
}

/// Decodes the record at the start of `bytes`, found at journal position `lsn`; None when it is
/// not a whole, valid record written at that position.
pub(super) fn decode_record(bytes: &[u8], lsn: u64) -> Option<Record<'_>> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    if header[0] != RECORD_WRITE || u64::from_be_bytes(header[1..9].try_into().ok()?) != lsn {
        return None;
    }
    let payload_len = u32::from_be_bytes(header[9..13].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[13..17].try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len)?;
    if crc32c::crc32c_append(crc32c::crc32c(&header[..13]), payload) != crc {
        return None;
    }
    let name_len = usize::from(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?));
    let dir_name = std::str::from_utf8(payload.get(2..2 + name_len)?).ok()?;
    let rest = payload.get(2 + name_len..)?;
    Some(Record {
        dir_name,
        segment_base: i64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
        position: u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?),
        data: rest.get(16..)?,
    })
}

/// The encoded length of a record, from its header.
fn record_len(header: &[u8]) -> Option<u64> {
    let payload_len = u32::from_be_bytes(header.get(9..13)?.try_into().ok()?);
    Some(RECORD_HEADER_BYTES as u64 + u64::from(payload_len))
}

/// Replays every journal under `log_dirs`, then leaves exactly `cores` journals of
/// `ring_bytes` each (none when 0), every one empty: a checkpoint at the end of what was
/// replayed, or a new file written in full. Journals of cores beyond `cores` go, as do journals
/// of another ring size (after their replay).
pub fn prepare(log_dirs: &Path, cores: usize, ring_bytes: u64) -> Result<Prepared> {
    assert_eq!(ring_bytes % 4096, 0, "the ring is whole blocks");
    let dir = journal_dir(log_dirs);
    std::fs::create_dir_all(&dir)?;
    let mut found: Vec<(usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name();
        let Some(core) = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        found.push((core, entry.path()));
    }
    found.sort();
    let mut prepared = Prepared::default();
    let mut segments: HashMap<PathBuf, File> = HashMap::new();
    let mut ends: HashMap<usize, (Header, u64)> = HashMap::new();
    for (core, path) in &found {
        let (header, end) = replay_file(path, log_dirs, &mut segments, &mut prepared)?;
        ends.insert(*core, (header, end));
    }
    // Everything replayed is durable before any journal forgets it.
    for file in segments.values() {
        file.sync_data()?;
    }
    for (core, path) in &found {
        let keep = *core < cores
            && ends
                .get(core)
                .is_some_and(|(h, _)| h.ring_bytes == ring_bytes);
        if !keep {
            std::fs::remove_file(path)?;
        }
    }
    for core in 0..cores {
        if ring_bytes == 0 {
            break;
        }
        match ends.get(&core).filter(|(h, _)| h.ring_bytes == ring_bytes) {
            Some((old, end)) => {
                // A full lap ahead: a record left in the ring (a round that was not
                // acknowledged and only partly reached the disk) can never match a position
                // this run writes, however its rounds fall.
                let header = Header {
                    ring_bytes,
                    checkpoint: end + ring_bytes,
                    sequence: old.sequence + 1,
                };
                let file = OpenOptions::new()
                    .write(true)
                    .open(journal_path(log_dirs, core))?;
                file.write_all_at(&header.encode(), header.slot_position())?;
                file.sync_data()?;
            }
            None => create(log_dirs, core, ring_bytes)?,
        }
    }
    sync_dir(&dir)?;
    Ok(prepared)
}

/// Replays one journal into the segment files; returns its header and the block-aligned end of
/// what it holds.
fn replay_file(
    path: &Path,
    log_dirs: &Path,
    segments: &mut HashMap<PathBuf, File>,
    prepared: &mut Prepared,
) -> Result<(Header, u64)> {
    let file = File::open(path)?;
    let mut slots = vec![0u8; RING_START as usize];
    file.read_exact_at(&mut slots, 0)?;
    let header = Header::newest(&slots).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "{}: no valid header (remove the file only if no acknowledged write may be in it)",
            path.display()
        ))
    })?;
    let ring = header.ring_bytes;
    let file_len = file.metadata()?.len();
    if ring == 0 || ring % 4096 != 0 || file_len < RING_START + ring {
        return Err(StorageError::Corrupt(format!(
            "{}: header names a ring of {ring} bytes in a file of {file_len}",
            path.display()
        )));
    }
    let read = |lsn: u64, len: u64| -> Result<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        let first = len.min(ring - lsn % ring) as usize;
        file.read_exact_at(&mut out[..first], file_position(lsn, ring))?;
        file.read_exact_at(&mut out[first..], RING_START)?;
        Ok(out)
    };
    let mut lsn = header.checkpoint;
    while lsn - header.checkpoint < ring {
        let room = ring - (lsn - header.checkpoint);
        let head = read(lsn, (RECORD_HEADER_BYTES as u64).min(room))?;
        if head.first() == Some(&0) {
            // Padding to the end of a round's last block, or the end of the journal.
            if lsn % 4096 == 0 {
                break;
            }
            lsn = align_up(lsn);
            continue;
        }
        // The position is checked before the length is trusted with an allocation.
        let at_lsn = head
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if head.first() != Some(&RECORD_WRITE) || at_lsn != Some(lsn) {
            break;
        }
        let Some(len) = record_len(&head).filter(|len| *len <= room) else {
            break;
        };
        let bytes = read(lsn, len)?;
        let Some(record) = decode_record(&bytes, lsn) else {
            break;
        };
        apply(&record, log_dirs, segments, prepared)?;
        lsn += len;
    }
    Ok((header, align_up(lsn)))
}

/// Writes a record's bytes back into its segment file, if the file is still there.
fn apply(
    record: &Record<'_>,
    log_dirs: &Path,
    segments: &mut HashMap<PathBuf, File>,
    prepared: &mut Prepared,
) -> Result<()> {
    // Topic names may start with a dot (Kafka allows `.`, `_`, `-`): only names that would
    // leave the log directory are refused.
    let plain = !matches!(record.dir_name, "" | "." | "..") && !record.dir_name.contains('/');
    let path = segment_path(&log_dirs.join(record.dir_name), record.segment_base, "log");
    if !plain || !path.is_file() {
        prepared.skipped += 1;
        return Ok(());
    }
    if !segments.contains_key(&path) {
        let file = OpenOptions::new().write(true).open(&path)?;
        segments.insert(path.clone(), file);
    }
    let file = &segments[&path];
    file.write_all_at(record.data, record.position)?;
    prepared.records += 1;
    prepared.bytes += record.data.len() as u64;
    Ok(())
}

/// Writes a new, empty journal in full (so that its fdatasyncs never have metadata to write),
/// under a temporary name until it is complete.
fn create(log_dirs: &Path, core: usize, ring_bytes: u64) -> Result<()> {
    let path = journal_path(log_dirs, core);
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let total = RING_START + ring_bytes;
    let mut at = 0u64;
    while at < total {
        let len = (total - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    let header = Header {
        ring_bytes,
        checkpoint: 0,
        sequence: 0,
    };
    file.write_all_at(&header.encode(), header.slot_position())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::encode_record;
    use super::*;

    const RING: u64 = 64 << 10;

    fn segment(log_dirs: &Path, dir: &str, base: i64, bytes: &[u8]) -> PathBuf {
        std::fs::create_dir_all(log_dirs.join(dir)).expect("test file");
        let path = segment_path(&log_dirs.join(dir), base, "log");
        std::fs::write(&path, bytes).expect("test file");
        path
    }

    /// Appends one round of records at the journal's `lsn`, as the flusher would; returns the
    /// end of the round.
    fn write_round(log_dirs: &Path, lsn: u64, records: &[(&str, i64, u64, &[u8])]) -> u64 {
        let mut bytes = Vec::new();
        for (dir, base, position, data) in records {
            let at = lsn + bytes.len() as u64;
            encode_record(&mut bytes, at, dir, *base, *position, data);
        }
        let len = align_up(bytes.len() as u64);
        bytes.resize(len as usize, 0);
        let file = OpenOptions::new()
            .write(true)
            .open(journal_path(log_dirs, 0))
            .expect("test file");
        let first = len.min(RING - lsn % RING) as usize;
        file.write_all_at(&bytes[..first], file_position(lsn, RING))
            .expect("test file");
        file.write_all_at(&bytes[first..], RING_START)
            .expect("test file");
        lsn + len
    }

    fn checkpoint_of(log_dirs: &Path) -> u64 {
        let mut slots = vec![0u8; RING_START as usize];
        File::open(journal_path(log_dirs, 0))
            .expect("test file")
            .read_exact_at(&mut slots, 0)
            .expect("test file");
        Header::newest(&slots).expect("test file").checkpoint
    }

    #[test]
    fn a_fresh_journal_is_written_in_full_and_replays_nothing() {
        let tmp = tempfile::tempdir().expect("test file");
        let prepared = prepare(tmp.path(), 2, RING).expect("test file");
        assert_eq!(prepared, Prepared::default());
        for core in 0..2 {
            let meta = std::fs::metadata(journal_path(tmp.path(), core)).expect("test file");
            assert_eq!(meta.len(), RING_START + RING);
            // Written, not sparse: every block is allocated.
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 >= RING_START + RING);
        }
        assert_eq!(checkpoint_of(tmp.path()), 0);
    }

    #[test]
    fn lost_segment_bytes_come_back_and_the_journal_is_emptied() {
        let tmp = tempfile::tempdir().expect("test file");
        let logs = tmp.path();
        prepare(logs, 1, RING).expect("test file");
        // The segment lost its tail (written, never synced); the journal has it.
        let seg = segment(logs, "t-0", 0, b"AAAA");
        let end = write_round(logs, 0, &[("t-0", 0, 4, b"BBBB"), ("t-0", 0, 8, b"CC")]);
        let end = write_round(logs, end, &[("t-0", 0, 10, b"DD")]);
        let prepared = prepare(logs, 1, RING).expect("test file");
        assert_eq!(prepared.records, 3);
        assert_eq!(prepared.bytes, 8);
        assert_eq!(std::fs::read(&seg).expect("test file"), b"AAAABBBBCCDD");
        assert_eq!(checkpoint_of(logs), end + RING);
        // A second start replays nothing: the checkpoint moved past it all.
        std::fs::write(&seg, b"AAAA").expect("test file");
        assert_eq!(prepare(logs, 1, RING).expect("test file").records, 0);
        assert_eq!(std::fs::read(&seg).expect("test file"), b"AAAA");
    }

    #[test]
    fn replay_stops_at_a_torn_record_and_at_a_stale_lap() {
        let tmp = tempfile::tempdir().expect("test file");
        let logs = tmp.path();
        prepare(logs, 1, RING).expect("test file");
        let seg = segment(logs, "t-0", 0, b"");
        let end = write_round(logs, 0, &[("t-0", 0, 0, b"one")]);
        let torn = write_round(logs, end, &[("t-0", 0, 3, b"two")]);
        // Tear the second round's record: replay keeps the first and stops there.
        let file = OpenOptions::new()
            .write(true)
            .open(journal_path(logs, 0))
            .expect("test file");
        file.write_all_at(b"X", file_position(end + 30, RING))
            .expect("test file");
        let prepared = prepare(logs, 1, RING).expect("test file");
        assert_eq!(prepared.records, 1);
        assert_eq!(std::fs::read(&seg).expect("test file"), b"one");
        assert_eq!(checkpoint_of(logs), end + RING, "{torn}");
    }

    #[test]
    fn records_wrap_around_the_ring_and_old_laps_are_not_replayed() {
        let tmp = tempfile::tempdir().expect("test file");
        let logs = tmp.path();
        prepare(logs, 1, RING).expect("test file");
        let seg = segment(logs, "t-0", 5, b"");
        // Fill most of a lap with a record replay must not see again after the checkpoint.
        let big = vec![b'x'; (RING - 8192) as usize];
        let mut lsn = write_round(logs, 0, &[("t-0", 5, 0, &big)]);
        prepare(logs, 1, RING).expect("test file");
        lsn += RING;
        std::fs::write(&seg, b"").expect("test file");
        // A record that straddles the end of the ring.
        let data = vec![b'y'; 10_000];
        lsn = write_round(logs, lsn, &[("t-0", 5, 0, &data)]);
        assert!(lsn % RING < 10_000, "the record wrapped");
        let prepared = prepare(logs, 1, RING).expect("test file");
        assert_eq!(prepared.records, 1);
        assert_eq!(std::fs::read(&seg).expect("test file"), data);
        assert_eq!(checkpoint_of(logs), lsn + RING);
    }

    #[test]
    fn a_run_numbers_its_rounds_a_lap_past_what_an_unfinished_round_left() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let logs = tmp.path();
        prepare(logs, 1, RING).expect("prepare");
        let seg = segment(logs, "t-0", 0, b"");
        // A round that was never acknowledged reached the disk only in part: its first block
        // is lost, a record at the start of its second block survived.
        let stale = write_round(logs, 4096, &[("t-0", 0, 0, b"stale")]);
        let file = OpenOptions::new()
            .write(true)
            .open(journal_path(logs, 0))
            .expect("journal");
        file.write_all_at(&[0u8; 4096], file_position(0, RING))
            .expect("lose the first block");
        assert_eq!(prepare(logs, 1, RING).expect("replay").records, 0);
        // The next run's first round is one block long, so its successor would start where the
        // stale record lies; it is numbered a lap later, and replay does not take the stale one.
        let start = checkpoint_of(logs);
        assert_eq!(start, RING);
        let end = write_round(logs, start, &[("t-0", 0, 0, b"fresh")]);
        assert_eq!(end, start + 4096, "{stale}");
        let prepared = prepare(logs, 1, RING).expect("replay");
        assert_eq!(prepared.records, 1);
        assert_eq!(std::fs::read(&seg).expect("segment"), b"fresh");
    }

    #[test]
    fn deleted_segments_are_skipped_and_extra_journals_go() {
        let tmp = tempfile::tempdir().expect("test file");
        let logs = tmp.path();
        prepare(logs, 3, RING).expect("test file");
        let hidden = segment(logs, ".hidden-0", 0, b"");
        write_round(
            logs,
            0,
            &[
                ("gone-0", 0, 0, b"zz"),
                ("..", 0, 0, b"zz"),
                (".hidden-0", 0, 0, b"kept"),
            ],
        );
        let prepared = prepare(logs, 1, RING).expect("test file");
        assert_eq!(prepared.skipped, 2);
        assert_eq!(prepared.records, 1);
        // A topic name may start with a dot.
        assert_eq!(std::fs::read(&hidden).expect("test file"), b"kept");
        assert!(!logs.join("gone-0").exists());
        assert!(journal_path(logs, 0).exists());
        assert!(!journal_path(logs, 1).exists());
        assert!(!journal_path(logs, 2).exists());
        // Turned off: replayed, then removed.
        prepare(logs, 1, 0).expect("test file");
        assert!(!journal_path(logs, 0).exists());
    }
}
