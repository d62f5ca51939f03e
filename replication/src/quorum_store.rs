//! Durable storage of the metadata quorum's Raft log: `<dir>/quorum.log`, one append-only file
//! holding raft-rs's entries and hard state, replayed into a [`MemStorage`] at start.
//!
//! Frames (also in docs/FORMATS.md, "Metadata quorum"), little-endian:
//!
//! ```text
//! length  u32   of the payload
//! crc32c  u32   over kind + payload
//! kind    u8    1 header, 2 entry, 3 hard state
//! payload       header:     format version u8 = 1, voter count u16, voter ids u64 each
//!               entry:      a raft `eraftpb::Entry` in protobuf encoding
//!               hard state: term u64, vote u64, commit u64
//! ```
//!
//! The header is always the first frame and nothing else is. Replay applies the frames in file
//! order: an entry whose index is at or below the last replayed one truncates the replayed
//! entries from that index first (Raft overwrote a conflicting suffix), and the last hard state
//! wins.
//!
//! Crash recovery: a frame that is short or fails its CRC is a torn write when no valid frame
//! follows it — the file is cut there and the store goes on, since nothing after the last
//! [`QuorumStore::sync`] was promised to anyone. A damaged frame followed by a valid one is
//! corruption and [`QuorumStore::open`] refuses to guess. (A crash in the middle of an
//! unsynced multi-page append on a file system that writes pages back out of order could
//! leave that too; it is reported, not repaired.)
//!
//! Control-plane I/O with std::fs on the core that runs the quorum: metadata entries are rare
//! and small. The file only grows — every entry since the quorum began stays in it and is
//! replayed at every start. Compaction is still to come (a later session): snapshots of the
//! metadata image, so the entries a snapshot covers can be dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::storage::MemStorage;

pub const FILE_NAME: &str = "quorum.log";

/// The header's format version.
pub const FORMAT_VERSION: u8 = 1;

/// Length, CRC and kind.
const FRAME_HEADER_BYTES: usize = 9;

const KIND_HEADER: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_HARD_STATE: u8 = 3;

/// Term, vote, commit.
const HARD_STATE_BYTES: usize = 24;

/// The quorum's log file, open for appending. Owned by the core that drives the quorum.
///
/// Appended frames are not durable until [`QuorumStore::sync`] returns. A driver handling a
/// raft-rs `Ready` appends its entries, then sets its hard state, then syncs, before it sends
/// the Ready's persisted messages or applies anything.
#[derive(Debug)]
pub struct QuorumStore {
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in the file: where a failed write is cut back to.
    len: u64,
    /// Index of the last entry in the file, 0 when none.
    last_index: u64,
    /// The commit index of the last hard state written.
    commit: u64,
    /// A write that could not be cut back, or a failed sync: what is on disk is unknown, so the
    /// store refuses everything until the process starts again and replays the file. (After a
    /// failed fsync Linux may drop the dirty pages and report the next fsync clean; retrying
    /// would claim durability it does not have.)
    failed: bool,
}

/// What [`QuorumStore::open`] read back.
pub struct Recovered {
    /// The entries and hard state, with the voters as configuration: ready for
    /// `raft::RawNode::new`.
    pub storage: MemStorage,
    pub hard_state: HardState,
    /// Entries with index <= `hard_state.commit`, in order, for replaying into the metadata
    /// image. Raft's own entries (the empty entry each new leader appends, configuration
    /// changes) are among them; the caller skips what is not a metadata entry. A caller that
    /// replays them sets `raft::Config::applied` to `hard_state.commit`, or raft-rs hands
    /// them out again as committed entries of the first `Ready`.
    pub committed: Vec<Entry>,
}

/// By hand: `MemStorage` has no `Debug`.
impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field("hard_state", &self.hard_state)
            .field("committed", &self.committed.len())
            .finish_non_exhaustive()
    }
}

impl QuorumStore {
    /// Opens or creates the store; the voters must match the header of an existing store (an
    /// error naming both lists otherwise). Voters are compared as sets; they must be non-empty,
    /// distinct and non-zero (0 is raft-rs's "no node").
    ///
    /// A torn tail is cut off (and the cut synced) before this returns; a new store's header is
    /// synced, and its directory entry too.
    pub fn open(dir: &Path, voters: &[u64]) -> io::Result<(QuorumStore, Recovered)> {
        let voters = checked_voters(voters)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let replayed = replay(&bytes).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        })?;
        if let Some(stored) = replayed.voters.as_ref().filter(|v| **v != voters) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: the store's voters are {stored:?}, not the configured {voters:?}",
                    path.display()
                ),
            ));
        }
        let valid_len = replayed.valid_len as u64;
        if replayed.valid_len < bytes.len() {
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let mut store = QuorumStore {
            file,
            path,
            len: valid_len,
            last_index: replayed.entries.last().map_or(0, |e| e.index),
            commit: replayed.hard_state.commit,
            failed: false,
        };
        if replayed.voters.is_none() {
            // A new store (or one torn before its first sync): the header first, durable with
            // the file's directory entry before anything may be appended after it.
            let mut frame = Vec::new();
            push_frame(&mut frame, KIND_HEADER, &encode_header(&voters)?)?;
            store.write_frames(&frame)?;
            store.sync()?;
            File::open(dir)?.sync_all()?;
        }
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        {
            let mut core = storage.wl();
            core.append(&replayed.entries).map_err(io::Error::other)?;
            core.set_hardstate(replayed.hard_state.clone());
        }
        // Replay checked commit <= the last index, and entries are contiguous from index 1.
        let committed_count = usize::try_from(replayed.hard_state.commit).unwrap_or(usize::MAX);
        let committed = replayed
            .entries
            .get(..committed_count.min(replayed.entries.len()))
            .unwrap_or_default()
            .to_vec();
        let recovered = Recovered {
            storage,
            hard_state: replayed.hard_state,
            committed,
        };
        Ok((store, recovered))
    }

    /// Appends entries (not durable until [`Self::sync`]). Entries at or below the last index
    /// overwrite the suffix from there, as raft-rs asks when a leader's log conflicts.
    ///
    /// # Panics
    ///
    /// When the entries are not contiguous, leave a gap after the last index, or would
    /// overwrite a committed entry: raft-rs never asks for that, and writing it would leave a
    /// file that [`Self::open`] refuses.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        assert!(
            first.index > self.commit && first.index <= self.last_index + 1,
            "raft entry {} appended after {} (committed {})",
            first.index,
            self.last_index,
            self.commit
        );
        assert!(
            entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "raft entries to append are not contiguous"
        );
        let mut frames = Vec::new();
        for entry in entries {
            let payload = entry.write_to_bytes().map_err(io::Error::other)?;
            push_frame(&mut frames, KIND_ENTRY, &payload)?;
        }
        self.write_frames(&frames)?;
        self.last_index = last.index;
        Ok(())
    }

    /// Records the hard state (not durable until [`Self::sync`]).
    ///
    /// # Panics
    ///
    /// When `hs.commit` is past the last appended entry: append a Ready's entries before its
    /// hard state, or the file could say an entry is committed that it does not hold.
    pub fn set_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        assert!(
            hs.commit <= self.last_index,
            "hard state commits {} but the last entry is {}",
            hs.commit,
            self.last_index
        );
        let mut payload = Vec::with_capacity(HARD_STATE_BYTES);
        payload.extend_from_slice(&hs.term.to_le_bytes());
        payload.extend_from_slice(&hs.vote.to_le_bytes());
        payload.extend_from_slice(&hs.commit.to_le_bytes());
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + HARD_STATE_BYTES);
        push_frame(&mut frame, KIND_HARD_STATE, &payload)?;
        self.write_frames(&frame)?;
        self.commit = hs.commit;
        Ok(())
    }

    /// fdatasync: what was appended or set is durable once this returns. After a failure the
    /// store refuses all further calls (see `failed`).
    pub fn sync(&mut self) -> io::Result<()> {
        self.check_usable()?;
        let result = self.file.sync_data();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes whole frames at the end of the file. A write that fails part way is cut back, so
    /// the file never holds a damaged frame followed by good ones (which replay would take for
    /// corruption).
    fn write_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        self.check_usable()?;
        if let Err(e) = self.file.write_all(frames) {
            if self.file.set_len(self.len).is_err() {
                self.failed = true;
            }
            return Err(e);
        }
        self.len += frames.len() as u64;
        Ok(())
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{}: an earlier write or sync failed; restart to replay the file",
                self.path.display()
            )));
        }
        Ok(())
    }
}

fn checked_voters(voters: &[u64]) -> io::Result<Vec<u64>> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() || sorted.len() != voters.len() || sorted.first() == Some(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("quorum voters {voters:?} must be non-empty, distinct and non-zero"),
        ));
    }
    Ok(sorted)
}

fn encode_header(voters: &[u64]) -> io::Result<Vec<u8>> {
    let count = u16::try_from(voters.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} quorum voters", voters.len()),
        )
    })?;
    let mut payload = Vec::with_capacity(3 + voters.len() * 8);
    payload.push(FORMAT_VERSION);
    payload.extend_from_slice(&count.to_le_bytes());
    for v in voters {
        payload.extend_from_slice(&v.to_le_bytes());
    }
    Ok(payload)
}

/// The voters of a header payload, sorted.
fn decode_header(payload: &[u8]) -> Result<Vec<u64>, String> {
    let bad = || format!("malformed header ({} bytes)", payload.len());
    let (&version, rest) = payload.split_first().ok_or_else(bad)?;
    if version != FORMAT_VERSION {
        return Err(format!("format version {version} unknown"));
    }
    let (count, ids) = rest.split_at_checked(2).ok_or_else(bad)?;
    let count = u16::from_le_bytes(count.try_into().map_err(|_| bad())?);
    if ids.len() != usize::from(count) * 8 {
        return Err(bad());
    }
    let mut voters: Vec<u64> = ids
        .chunks_exact(8)
        .filter_map(|id| id.try_into().ok().map(u64::from_le_bytes))
        .collect();
    voters.sort_unstable();
    Ok(voters)
}

fn decode_hard_state(payload: &[u8]) -> Option<HardState> {
    let field = |i: usize| -> Option<u64> {
        let bytes = payload.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    if payload.len() != HARD_STATE_BYTES {
        return None;
    }
    Some(HardState {
        term: field(0)?,
        vote: field(1)?,
        commit: field(2)?,
        ..Default::default()
    })
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("quorum frame of {} bytes", payload.len()),
        )
    })?;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// The frame starting at `pos` when it is whole and its CRC holds: (kind, payload).
fn frame_at(bytes: &[u8], pos: usize) -> Option<(u8, &[u8])> {
    let header = bytes.get(pos..pos.checked_add(FRAME_HEADER_BYTES)?)?;
    let len = usize::try_from(u32::from_le_bytes(header.get(0..4)?.try_into().ok()?)).ok()?;
    let stored = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    let kind = *header.get(8)?;
    let start = pos + FRAME_HEADER_BYTES;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    (crc == stored).then_some((kind, payload))
}

/// What a file holds.
struct Replayed {
    /// None when the file holds no whole header (new, or torn before its first sync).
    voters: Option<Vec<u64>>,
    /// Contiguous from index 1.
    entries: Vec<Entry>,
    hard_state: HardState,
    /// Bytes up to the end of the last whole frame: anything after is a torn tail.
    valid_len: usize,
}

fn replay(bytes: &[u8]) -> Result<Replayed, String> {
    let mut replayed = Replayed {
        voters: None,
        entries: Vec::new(),
        hard_state: HardState::default(),
        valid_len: 0,
    };
    let mut pos = 0;
    while pos < bytes.len() {
        let Some((kind, payload)) = frame_at(bytes, pos) else {
            if let Some(next) = (pos + 1..bytes.len()).find(|&q| frame_at(bytes, q).is_some()) {
                return Err(format!(
                    "damaged frame at byte {pos} followed by a valid frame at byte {next}"
                ));
            }
            break; // A torn tail.
        };
        match kind {
            KIND_HEADER if pos == 0 => replayed.voters = Some(decode_header(payload)?),
            _ if pos == 0 => return Err(format!("first frame is of kind {kind}, not a header")),
            KIND_HEADER => return Err(format!("a second header at byte {pos}")),
            KIND_ENTRY => {
                let entry = Entry::parse_from_bytes(payload)
                    .map_err(|e| format!("entry at byte {pos}: {e}"))?;
                push_entry(&mut replayed, entry).map_err(|why| format!("byte {pos}: {why}"))?;
            }
            KIND_HARD_STATE => {
                replayed.hard_state = decode_hard_state(payload)
                    .ok_or_else(|| format!("malformed hard state at byte {pos}"))?;
            }
            _ => return Err(format!("frame of unknown kind {kind} at byte {pos}")),
        }
        pos += FRAME_HEADER_BYTES + payload.len();
        replayed.valid_len = pos;
    }
    let last_index = replayed.entries.last().map_or(0, |e| e.index);
    if replayed.hard_state.commit > last_index {
        return Err(format!(
            "hard state commits {} but the last entry is {last_index}",
            replayed.hard_state.commit
        ));
    }
    Ok(replayed)
}

/// Adds a replayed entry, truncating the entries it overwrites. Checks what `MemStorage` would
/// otherwise panic on (a gap), and what Raft never does (overwriting a committed entry).
fn push_entry(replayed: &mut Replayed, entry: Entry) -> Result<(), String> {
    let last_index = replayed.entries.last().map_or(0, |e| e.index);
    if entry.index == 0 || entry.index > last_index + 1 {
        return Err(format!(
            "entry {} leaves a gap after entry {last_index}",
            entry.index
        ));
    }
    if entry.index <= replayed.hard_state.commit {
        return Err(format!(
            "entry {} overwrites a committed entry (commit {})",
            entry.index, replayed.hard_state.commit
        ));
    }
    // Entries are contiguous from index 1, so entry i sits at position i - 1.
    let keep = usize::try_from(entry.index - 1).map_err(|e| e.to_string())?;
    replayed.entries.truncate(keep);
    replayed.entries.push(entry);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::{GetEntriesContext, RawNode, StateRole, Storage};

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn stored_entries(storage: &MemStorage) -> Vec<Entry> {
        let last = storage.last_index().expect("last index");
        if last == 0 {
            return Vec::new();
        }
        storage
            .entries(1, last + 1, None, GetEntriesContext::empty(false))
            .expect("entries")
    }

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(FILE_NAME)).expect("stat").len()
    }

    const VOTERS: [u64; 3] = [1, 2, 3];

    #[test]
    fn entries_and_hard_state_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        assert!(recovered.committed.is_empty());
        assert_eq!(recovered.hard_state, HardState::default());
        let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, &[i as u8; 5])).collect();
        store.append(&entries).expect("append");
        store.set_hard_state(&hard_state(1, 2, 2)).expect("hs");
        store.sync().expect("sync");
        drop(store);

        // Voters in another order are the same quorum.
        let (_, recovered) = QuorumStore::open(dir.path(), &[3, 1, 2]).expect("reopen");
        assert_eq!(recovered.hard_state, hard_state(1, 2, 2));
        assert_eq!(recovered.committed, entries[..2].to_vec());
        assert_eq!(stored_entries(&recovered.storage), entries);
        let state = recovered.storage.initial_state().expect("initial state");
        assert_eq!(state.hard_state, hard_state(1, 2, 2));
        assert_eq!(state.conf_state.voters, VOTERS.to_vec());
    }

    #[test]
    fn header_layout_matches_the_documented_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        QuorumStore::open(dir.path(), &[7]).expect("create");
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).expect("read");
        let payload = [
            &[FORMAT_VERSION][..],
            &1u16.to_le_bytes(),
            &7u64.to_le_bytes(),
        ]
        .concat();
        let mut expected = (payload.len() as u32).to_le_bytes().to_vec();
        let crc = crc32c::crc32c(&[&[KIND_HEADER][..], &payload].concat());
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.push(KIND_HEADER);
        expected.extend_from_slice(&payload);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_later_entry_overwrites_the_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        let old: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"old")).collect();
        store.append(&old).expect("append");
        store.set_hard_state(&hard_state(1, 1, 2)).expect("hs");
        let new = vec![entry(3, 2, b"new"), entry(4, 2, b"new")];
        store.append(&new).expect("overwrite");
        store.append(&[entry(5, 2, b"newer")]).expect("continue");
        store.set_hard_state(&hard_state(2, 1, 4)).expect("hs");
        store.sync().expect("sync");
        drop(store);

        let (_, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("reopen");
        let expected = vec![
            old[0].clone(),
            old[1].clone(),
            new[0].clone(),
            new[1].clone(),
            entry(5, 2, b"newer"),
        ];
        assert_eq!(stored_entries(&recovered.storage), expected);
        assert_eq!(recovered.committed, expected[..4].to_vec());
        assert_eq!(recovered.hard_state, hard_state(2, 1, 4));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        store
            .append(&[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .expect("append");
        store.set_hard_state(&hard_state(1, 1, 1)).expect("hs");
        store.sync().expect("sync");
        drop(store);
        let whole = file_len(dir.path());

        // Half of an entry frame, as a crash in the middle of a write leaves it.
        let mut frame = Vec::new();
        let payload = entry(3, 1, b"torn").write_to_bytes().expect("encode");
        push_frame(&mut frame, KIND_ENTRY, &payload).expect("frame");
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .expect("open");
        file.write_all(&frame[..frame.len() / 2]).expect("write");
        drop(file);

        let (mut store, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("recover");
        assert_eq!(file_len(dir.path()), whole);
        assert_eq!(stored_entries(&recovered.storage).len(), 2);
        assert_eq!(recovered.hard_state, hard_state(1, 1, 1));
        store
            .append(&[entry(3, 1, b"c")])
            .expect("append after recovery");
        store.set_hard_state(&hard_state(1, 1, 3)).expect("hs");
        store.sync().expect("sync");
        drop(store);

        let (_, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("reopen");
        assert_eq!(
            stored_entries(&recovered.storage),
            vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]
        );
        assert_eq!(recovered.committed.len(), 3);
    }

    #[test]
    fn a_whole_last_frame_with_a_bad_crc_is_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        store.append(&[entry(1, 1, b"a")]).expect("append");
        store.sync().expect("sync");
        let before_last = file_len(dir.path());
        store.append(&[entry(2, 1, b"b")]).expect("append");
        store.sync().expect("sync");
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");

        let (_, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("recover");
        assert_eq!(file_len(dir.path()), before_last);
        assert_eq!(stored_entries(&recovered.storage), vec![entry(1, 1, b"a")]);
    }

    #[test]
    fn a_torn_header_is_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), [20, 0, 0]).expect("write");
        let (_, recovered) = QuorumStore::open(dir.path(), &VOTERS).expect("recover");
        assert!(recovered.committed.is_empty());
        QuorumStore::open(dir.path(), &VOTERS).expect("reopen");
        assert!(QuorumStore::open(dir.path(), &[1]).is_err());
    }

    #[test]
    fn damage_before_valid_frames_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        let header_end = file_len(dir.path()) as usize;
        store
            .append(&[entry(1, 1, b"first"), entry(2, 1, b"second")])
            .expect("append");
        store.set_hard_state(&hard_state(1, 1, 2)).expect("hs");
        store.sync().expect("sync");
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).expect("read");

        // A flipped byte in the first entry's payload, in its length, and in the header.
        for at in [header_end + FRAME_HEADER_BYTES + 2, header_end, 12] {
            let mut bytes = good.clone();
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).expect("write");
            let err = QuorumStore::open(dir.path(), &VOTERS).expect_err("corruption");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}: {err}");
            // Nothing was cut.
            assert_eq!(std::fs::read(&path).expect("read"), bytes);
        }
    }

    #[test]
    fn other_voters_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        QuorumStore::open(dir.path(), &[1, 2, 3]).expect("create");
        let err = QuorumStore::open(dir.path(), &[1, 2, 4]).expect_err("mismatch");
        let message = err.to_string();
        assert!(
            message.contains("[1, 2, 3]") && message.contains("[1, 2, 4]"),
            "{message}"
        );
        for bad in [&[][..], &[1, 1], &[0, 1]] {
            assert!(QuorumStore::open(dir.path(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_raft_would_panic_on_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let mut header = Vec::new();
        push_frame(
            &mut header,
            KIND_HEADER,
            &encode_header(&[1]).expect("header"),
        )
        .expect("frame");
        let entry_frame = |e: Entry| {
            let mut frame = Vec::new();
            push_frame(&mut frame, KIND_ENTRY, &e.write_to_bytes().expect("encode"))
                .expect("frame");
            frame
        };
        let hs_frame = |hs: HardState| {
            let mut payload = Vec::new();
            for v in [hs.term, hs.vote, hs.commit] {
                payload.extend_from_slice(&v.to_le_bytes());
            }
            let mut frame = Vec::new();
            push_frame(&mut frame, KIND_HARD_STATE, &payload).expect("frame");
            frame
        };
        let cases = [
            // A gap after entry 1.
            [entry_frame(entry(1, 1, b"")), entry_frame(entry(3, 1, b""))].concat(),
            // A commit past the last entry.
            [entry_frame(entry(1, 1, b"")), hs_frame(hard_state(1, 1, 2))].concat(),
            // A committed entry overwritten.
            [
                entry_frame(entry(1, 1, b"")),
                hs_frame(hard_state(1, 1, 1)),
                entry_frame(entry(1, 2, b"")),
            ]
            .concat(),
        ];
        for case in cases {
            std::fs::write(&path, [header.clone(), case].concat()).expect("write");
            let err = QuorumStore::open(dir.path(), &[1]).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
        std::fs::write(&path, entry_frame(entry(1, 1, b""))).expect("write");
        assert!(QuorumStore::open(dir.path(), &[1]).is_err(), "no header");
    }

    #[test]
    #[should_panic(expected = "appended after")]
    fn a_gap_in_appends_is_a_bug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = QuorumStore::open(dir.path(), &VOTERS).expect("create");
        let _ = store.append(&[entry(2, 1, b"")]);
    }

    /// Persists what `node` has ready the way the quorum's driver must: entries, then hard
    /// state, then sync, before applying. Returns the entries committed meanwhile.
    fn drive(node: &mut RawNode<MemStorage>, store: &mut QuorumStore) -> Vec<Entry> {
        let mut applied = Vec::new();
        while node.has_ready() {
            let mut ready = node.ready();
            store.append(ready.entries()).expect("append");
            node.mut_store()
                .wl()
                .append(ready.entries())
                .expect("mem append");
            if let Some(hs) = ready.hs() {
                store.set_hard_state(hs).expect("hs");
                node.mut_store().wl().set_hardstate(hs.clone());
            }
            store.sync().expect("sync");
            applied.extend(ready.take_committed_entries());
            let mut light = node.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut hs = node.store().rl().hard_state().clone();
                hs.commit = commit;
                store.set_hard_state(&hs).expect("hs");
                store.sync().expect("sync");
                node.mut_store().wl().set_hardstate(hs);
            }
            applied.extend(light.take_committed_entries());
            node.advance_apply();
        }
        applied
    }

    fn raw_node(storage: MemStorage) -> RawNode<MemStorage> {
        let config = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 3,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&config, storage, &logger).expect("raw node")
    }

    #[test]
    fn a_single_voter_quorum_elects_itself_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, recovered) = QuorumStore::open(dir.path(), &[1]).expect("create");
        let mut node = raw_node(recovered.storage);
        node.campaign().expect("campaign");
        let applied = drive(&mut node, &mut store);
        assert_eq!(node.raft.state, StateRole::Leader);
        assert_eq!(applied.len(), 1, "the new leader's empty entry");
        node.propose(vec![], b"metadata".to_vec()).expect("propose");
        let applied = drive(&mut node, &mut store);
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].data.as_ref(), b"metadata");
        let hs = node.raft.hard_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (1, 1, 2));
        drop(node);
        drop(store);

        let (mut store, recovered) = QuorumStore::open(dir.path(), &[1]).expect("reopen");
        assert_eq!(recovered.hard_state, hs);
        assert_eq!(recovered.committed.len(), 2);
        assert_eq!(recovered.committed[1].data.as_ref(), b"metadata");
        let mut node = raw_node(recovered.storage);
        assert_eq!(node.raft.term, 1);
        assert_eq!(node.raft.raft_log.committed, 2);
        node.campaign().expect("campaign again");
        drive(&mut node, &mut store);
        assert_eq!(node.raft.state, StateRole::Leader);
        assert_eq!(node.raft.term, 2);
    }
}
