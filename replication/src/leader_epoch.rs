//! The `leader-epoch-checkpoint` file, in Kafka's own text format so its tools can read it:
//!
//! ```text
//! 0            <- format version
//! 2            <- number of entries
//! 0 0          <- epoch, first offset written in that epoch
//! 1 1500
//! ```
//!
//! Written to a temporary file, fsync'ed, and renamed over the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug, Clone)]
pub struct LeaderEpochFile {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochFile {
    /// Loads the checkpoint of a partition directory, creating it with epoch 0 starting at
    /// `log_end_offset` when there is none (a new partition, or a log from before epochs).
    pub fn open_or_init(dir: &Path, log_end_offset: i64) -> std::io::Result<LeaderEpochFile> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let entries = parse(&text).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a leader-epoch checkpoint", path.display()),
                    )
                })?;
                if !entries.is_empty() {
                    return Ok(LeaderEpochFile { path, entries });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = LeaderEpochFile {
            path,
            entries: Vec::new(),
        };
        file.begin_epoch(0, log_end_offset)?;
        Ok(file)
    }

    pub fn current_epoch(&self) -> i32 {
        self.entries.last().map(|e| e.epoch).unwrap_or(0)
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// Records that `epoch` starts at `start_offset` and persists the checkpoint.
    pub fn begin_epoch(&mut self, epoch: i32, start_offset: i64) -> std::io::Result<()> {
        if let Some(last) = self.entries.last() {
            assert!(epoch > last.epoch, "leader epochs only grow");
            assert!(
                start_offset >= last.start_offset,
                "epoch start offsets only grow"
            );
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.persist()
    }

    /// Records `epoch` starting at `start_offset` unless it is already the current epoch (or an
    /// older one): what a follower does for each batch it copies, and a leader when it takes
    /// the lead.
    pub fn observe(&mut self, epoch: i32, start_offset: i64) -> std::io::Result<()> {
        if self.entries.last().is_some_and(|last| epoch <= last.epoch) {
            return Ok(());
        }
        let start = self
            .entries
            .last()
            .map_or(start_offset, |last| start_offset.max(last.start_offset));
        self.begin_epoch(epoch, start)
    }

    /// The answer to OffsetForLeaderEpoch for `epoch` (KIP-101/279): the largest epoch at most
    /// `epoch` this log has, and where it ends — the start of the next epoch, or `log_end` for
    /// the latest. None when every epoch here is newer (Kafka's UNDEFINED_EPOCH).
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let at = self.entries.iter().rposition(|e| e.epoch <= epoch)?;
        let end = self
            .entries
            .get(at + 1)
            .map_or(log_end, |next| next.start_offset);
        Some((self.entries[at].epoch, end.min(log_end)))
    }

    /// The largest epoch of this log that is at most `epoch`.
    pub fn latest_at_most(&self, epoch: i32) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.epoch <= epoch)
            .map(|e| e.epoch)
    }

    /// Forgets the epochs that start at or after `offset`: the log was truncated there.
    pub fn truncate_from(&mut self, offset: i64) -> std::io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < offset);
        if self.entries.len() == before {
            return Ok(());
        }
        self.persist()
    }

    fn persist(&self) -> std::io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn parse(text: &str) -> Option<Vec<EpochEntry>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let mut parts = lines.next()?.split_whitespace();
        let epoch = parts.next()?.parse().ok()?;
        let start_offset = parts.next()?.parse().ok()?;
        entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_persists_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = LeaderEpochFile::open_or_init(dir.path(), 0).expect("init");
        assert_eq!(f.current_epoch(), 0);
        f.begin_epoch(3, 120).expect("epoch 3");
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("read");
        assert_eq!(text, "0\n2\n0 0\n3 120\n");
        let again = LeaderEpochFile::open_or_init(dir.path(), 500).expect("reload");
        assert_eq!(again.current_epoch(), 3);
        assert_eq!(
            again.entries()[1],
            EpochEntry {
                epoch: 3,
                start_offset: 120
            }
        );
        std::fs::write(dir.path().join(FILE_NAME), "garbage").expect("write");
        assert!(LeaderEpochFile::open_or_init(dir.path(), 0).is_err());
    }

    #[test]
    fn end_offsets_per_epoch_answer_offset_for_leader_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = LeaderEpochFile::open_or_init(dir.path(), 0).expect("init");
        f.observe(2, 100).expect("epoch 2");
        f.observe(2, 150).expect("same epoch: nothing");
        f.observe(1, 160).expect("older epoch: nothing");
        f.observe(5, 200).expect("epoch 5");
        assert_eq!(f.entries().len(), 3);
        // Epoch 0 ends where 2 begins; 1 is not here, so its answer is epoch 0's; the latest
        // epoch ends at the log end.
        assert_eq!(f.end_offset_for(0, 300), Some((0, 100)));
        assert_eq!(f.end_offset_for(1, 300), Some((0, 100)));
        assert_eq!(f.end_offset_for(3, 300), Some((2, 200)));
        assert_eq!(f.end_offset_for(7, 300), Some((5, 300)));
        assert_eq!(f.end_offset_for(-1, 300), None);
        assert_eq!(f.latest_at_most(4), Some(2));
        f.truncate_from(150).expect("truncate");
        assert_eq!(f.current_epoch(), 2);
        let again = LeaderEpochFile::open_or_init(dir.path(), 0).expect("reload");
        assert_eq!(again.entries(), f.entries());
        f.truncate_from(0).expect("everything");
        assert!(f.entries().is_empty());
        std::fs::write(dir.path().join(FILE_NAME), "garbage").expect("write");
        assert!(LeaderEpochFile::open_or_init(dir.path(), 0).is_err());
    }
}
