//! Idempotent producers, per partition: each producer's epoch and the sequence ranges and offsets
//! of its last five batches, so that a retried batch is answered with its original offsets and
//! written once, a gap in sequence numbers is refused, and a producer with an older epoch than
//! one already seen is fenced — Kafka's rules (`ProducerAppendInfo`, `ProducerStateEntry`).
//!
//! The state is rebuilt at start from the newest snapshot at or below the log end plus the
//! batches after it (`PartitionLog::open`). Snapshots are taken when a segment rolls and at a
//! clean shutdown; their format is in docs/FORMATS.md.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::txn::{ProducerBatch, TxnEvent};

/// Batches remembered per producer for duplicate detection (Kafka keeps five: the most a
/// producer may have in flight).
pub const BATCHES_RETAINED: usize = 5;

/// `producer_id` of a batch from a producer without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;

/// What is remembered of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp (for expiry).
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`BATCHES_RETAINED`].
    pub batches: VecDeque<BatchMeta>,
    /// Max timestamp of the producer's last batch.
    pub last_timestamp: i64,
    /// The first offset of the producer's open transaction on this partition, if any.
    pub ongoing_txn: Option<i64>,
}

impl ProducerEntry {
    /// Remembers an appended batch, forgetting the oldest beyond [`BATCHES_RETAINED`].
    fn remember(&mut self, batch: BatchMeta) {
        self.batches.push_back(batch);
        while self.batches.len() > BATCHES_RETAINED {
            self.batches.pop_front();
        }
        self.last_timestamp = batch.timestamp;
    }
}

/// Why an idempotent batch was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceError {
    /// The batch's epoch is older than the producer's current one (a zombie):
    /// INVALID_PRODUCER_EPOCH.
    StaleEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// The sequence does not follow the last one: OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// A non-transactional batch from a producer with an open transaction: INVALID_TXN_STATE.
    NotTransactional { producer_id: i64 },
}

impl std::fmt::Display for SequenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceError::StaleEpoch {
                producer_id,
                epoch,
                current,
            } => write!(
                f,
                "epoch {epoch} of producer {producer_id} is older than its current epoch {current}"
            ),
            SequenceError::OutOfOrder {
                producer_id,
                expected,
                got,
            } => write!(
                f,
                "out of order sequence number for producer {producer_id}: expected {expected}, got {got}"
            ),
            SequenceError::NotTransactional { producer_id } => write!(
                f,
                "producer {producer_id} has an open transaction: a non-transactional write is refused"
            ),
        }
    }
}

/// The sequence after `seq` plus `delta`, wrapping from i32::MAX to 0 as Kafka does.
pub fn increment_sequence(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

fn last_sequence(h: &BatchHeader) -> i32 {
    increment_sequence(h.base_sequence, h.last_offset_delta)
}

/// The producers of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    entries: HashMap<i64, ProducerEntry>,
}

/// The verdict on the batches of one append.
#[derive(Debug)]
pub enum Verdict {
    /// Append them; `staged` holds the producers' states after them, applied with
    /// [`ProducerStates::commit`] once they are appended.
    Append(Staged),
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate(BatchMeta),
}

/// Producer entries as they will be after an append.
#[derive(Debug, Default)]
pub struct Staged {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Every producer the partition remembers, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// Checks the batches of one append, whose offsets will start at `first_offset`, in order,
    /// as Kafka does: a batch that repeats one of the producer's last five (same epoch, same
    /// sequence range) makes the whole append a duplicate; an older epoch is fenced; within an
    /// epoch each batch must follow the last sequence; a new epoch may start anywhere only for a
    /// producer this partition has not seen (or has forgotten), else at sequence 0.
    pub fn check(
        &self,
        headers: &[BatchHeader],
        first_offset: i64,
    ) -> Result<Verdict, SequenceError> {
        self.check_from(headers, first_offset, true)
    }

    /// [`Self::check`], with `sequenced` false for batches the broker writes on a producer's
    /// behalf (a transactional offset commit): those carry no sequence, so only the epoch and
    /// the transaction are checked, as Kafka does for a coordinator's appends.
    pub fn check_from(
        &self,
        headers: &[BatchHeader],
        first_offset: i64,
        sequenced: bool,
    ) -> Result<Verdict, SequenceError> {
        let mut staged = Staged::default();
        let mut offset = first_offset;
        for h in headers {
            let batch_first = offset;
            offset += i64::from(h.last_offset_delta) + 1;
            if h.producer_id == NO_PRODUCER_ID {
                continue;
            }
            let current = staged
                .entries
                .get(&h.producer_id)
                .or_else(|| self.entries.get(&h.producer_id));
            let first_seq = h.base_sequence;
            let last_seq = last_sequence(h);
            if let Some(entry) = current {
                if h.producer_epoch == entry.epoch && sequenced {
                    if let Some(dup) = entry
                        .batches
                        .iter()
                        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
                    {
                        return Ok(Verdict::Duplicate(*dup));
                    }
                }
                if !h.is_transactional() && entry.ongoing_txn.is_some() {
                    return Err(SequenceError::NotTransactional {
                        producer_id: h.producer_id,
                    });
                }
                if h.producer_epoch < entry.epoch {
                    return Err(SequenceError::StaleEpoch {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                        current: entry.epoch,
                    });
                }
                if !sequenced {
                    // Epoch and transaction checked above; no sequence to follow.
                } else if h.producer_epoch > entry.epoch {
                    if first_seq != 0 {
                        return Err(SequenceError::OutOfOrder {
                            producer_id: h.producer_id,
                            expected: 0,
                            got: first_seq,
                        });
                    }
                } else if let Some(last) = entry.batches.back() {
                    let expected = increment_sequence(last.last_seq, 1);
                    if first_seq != expected {
                        return Err(SequenceError::OutOfOrder {
                            producer_id: h.producer_id,
                            expected,
                            got: first_seq,
                        });
                    }
                }
            }
            let mut entry = current.cloned().unwrap_or(ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
                ongoing_txn: None,
            });
            if entry.epoch != h.producer_epoch {
                entry.epoch = h.producer_epoch;
                entry.batches.clear();
            }
            if h.is_transactional() && entry.ongoing_txn.is_none() {
                entry.ongoing_txn = Some(batch_first);
            }
            entry.remember(BatchMeta {
                first_seq,
                last_seq,
                first_offset: batch_first,
                last_offset: offset - 1,
                timestamp: h.max_timestamp,
            });
            staged.entries.insert(h.producer_id, entry);
        }
        Ok(Verdict::Append(staged))
    }

    /// Applies the producers' states after a checked append.
    pub fn commit(&mut self, staged: Staged) {
        self.entries.extend(staged.entries);
    }

    /// Applies one appended batch (or one read back by recovery, trusting it): remembers a
    /// data batch, starts a transaction at a producer's first transactional batch, and ends it
    /// at a control batch (a marker with a newer epoch also fences the producer's older one).
    pub fn replay(&mut self, b: &ProducerBatch) -> Option<TxnEvent> {
        let h = &b.header;
        if h.producer_id == NO_PRODUCER_ID {
            return None;
        }
        let entry = self
            .entries
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: -1,
                ongoing_txn: None,
            });
        if h.is_control() {
            if h.producer_epoch > entry.epoch {
                entry.epoch = h.producer_epoch;
                entry.batches.clear();
            }
            entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
            let first_offset = entry.ongoing_txn.take()?;
            return Some(TxnEvent::Ended {
                producer_id: h.producer_id,
                first_offset,
                marker_offset: h.base_offset,
                commit: b.marker.is_some_and(|m| m.commit),
            });
        }
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        let started = (h.is_transactional() && entry.ongoing_txn.is_none()).then(|| {
            entry.ongoing_txn = Some(h.base_offset);
            TxnEvent::Started {
                producer_id: h.producer_id,
                first_offset: h.base_offset,
            }
        });
        entry.remember(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp: h.max_timestamp,
        });
        started
    }

    /// The producer's open transactions: (first offset, producer id).
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.entries
            .iter()
            .filter_map(|(pid, e)| e.ongoing_txn.map(|first| (first, *pid)))
    }

    /// A transaction whose marker was discarded (a failed write) is open again.
    pub fn reopen(&mut self, producer_id: i64, first_offset: i64) {
        if let Some(e) = self.entries.get_mut(&producer_id) {
            e.ongoing_txn = Some(first_offset);
        }
    }

    /// Forgets every batch at or past `end_offset` (an unwritten tail was discarded). A producer
    /// left with no remembered batch is forgotten whole, so that its next batch is accepted at
    /// whatever sequence it carries rather than refused against a batch that no longer exists.
    pub fn truncate(&mut self, end_offset: i64) {
        self.truncate_keeping(end_offset, &[]);
    }

    /// [`Self::truncate`], keeping the producers in `keep` even when none of their batches
    /// remain (their transaction is open again: its marker was discarded).
    pub fn truncate_keeping(&mut self, end_offset: i64, keep: &[i64]) {
        self.entries.retain(|pid, e| {
            e.batches.retain(|b| b.last_offset < end_offset);
            e.ongoing_txn = e.ongoing_txn.filter(|first| *first < end_offset);
            !e.batches.is_empty() || e.ongoing_txn.is_some() || keep.contains(pid)
        });
    }

    /// Forgets producers whose last batch is older than `expiration_ms`
    /// (`producer.id.expiration.ms`), except those with an open transaction (as Kafka does).
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            e.ongoing_txn.is_some() || now_ms.saturating_sub(e.last_timestamp) < expiration_ms
        });
        before - self.entries.len()
    }

    /// The snapshot file's bytes for this state, valid at log offset `offset`.
    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.entries.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.entries[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.extend_from_slice(&e.ongoing_txn.unwrap_or(-1).to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot: its offset and state; None if it is damaged in any way.
    pub fn decode(bytes: &[u8]) -> Option<(i64, ProducerStates)> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return None;
        }
        // Version 1 (before transactions) lacks the open transaction's first offset.
        let version = r.u16()?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return None;
        }
        let offset = r.i64()?;
        let count = r.u32()? as usize;
        let mut entries = HashMap::with_capacity(count.min(body.len() / 19));
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.u16()? as i16;
            let last_timestamp = r.i64()?;
            let ongoing_txn = if version >= 2 {
                Some(r.i64()?).filter(|first| *first >= 0)
            } else {
                None
            };
            let n = usize::from(*r.take(1)?.first()?);
            if n > BATCHES_RETAINED {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: r.u32()? as i32,
                    last_seq: r.u32()? as i32,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                    timestamp: r.i64()?,
                });
            }
            entries.insert(
                id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp,
                    ongoing_txn,
                },
            );
        }
        if !r.0.is_empty() {
            return None;
        }
        Some((offset, ProducerStates { entries }))
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"SLPS";
const SNAPSHOT_VERSION: u16 = 2;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, seq: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 1000,
            max_timestamp: 1000 + i64::from(seq),
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: records,
        }
    }

    /// Appends `h` at `offset` if the verdict says so; returns the verdict's offsets.
    fn append(
        s: &mut ProducerStates,
        h: BatchHeader,
        offset: i64,
    ) -> Result<(i64, bool), SequenceError> {
        match s.check(&[h], offset)? {
            Verdict::Append(staged) => {
                s.commit(staged);
                Ok((offset, false))
            }
            Verdict::Duplicate(meta) => Ok((meta.first_offset, true)),
        }
    }

    #[test]
    fn sequences_must_follow_and_retries_are_answered_with_the_original_offsets() {
        let mut s = ProducerStates::default();
        assert_eq!(append(&mut s, batch(7, 0, 0, 3), 0), Ok((0, false)));
        assert_eq!(append(&mut s, batch(7, 0, 3, 2), 3), Ok((3, false)));
        // A retry of either batch: its original offsets, not appended again.
        assert_eq!(append(&mut s, batch(7, 0, 0, 3), 5), Ok((0, true)));
        assert_eq!(append(&mut s, batch(7, 0, 3, 2), 5), Ok((3, true)));
        // A gap.
        assert_eq!(
            append(&mut s, batch(7, 0, 9, 1), 5),
            Err(SequenceError::OutOfOrder {
                producer_id: 7,
                expected: 5,
                got: 9
            })
        );
        // Another producer is independent and may start anywhere the first time.
        assert_eq!(append(&mut s, batch(8, 3, 42, 1), 5), Ok((5, false)));
    }

    #[test]
    fn epochs_fence_zombies_and_a_new_epoch_starts_at_zero() {
        let mut s = ProducerStates::default();
        append(&mut s, batch(7, 1, 0, 1), 0).expect("first");
        assert!(matches!(
            append(&mut s, batch(7, 0, 1, 1), 1),
            Err(SequenceError::StaleEpoch { current: 1, .. })
        ));
        assert!(matches!(
            append(&mut s, batch(7, 2, 5, 1), 1),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 5,
                ..
            })
        ));
        assert_eq!(append(&mut s, batch(7, 2, 0, 1), 1), Ok((1, false)));
        assert_eq!(s.get(7).map(|e| e.epoch), Some(2));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            append(&mut s, batch(7, 0, i, 1), i64::from(i)).expect("append");
        }
        assert_eq!(append(&mut s, batch(7, 0, 2, 1), 7), Ok((2, true)));
        assert!(matches!(
            append(&mut s, batch(7, 0, 1, 1), 7),
            Err(SequenceError::OutOfOrder {
                expected: 7,
                got: 1,
                ..
            })
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        let mut s = ProducerStates::default();
        append(&mut s, batch(7, 0, i32::MAX - 1, 2), 0).expect("up to MAX");
        assert_eq!(append(&mut s, batch(7, 0, 0, 1), 2), Ok((2, false)));
    }

    #[test]
    fn a_failing_batch_leaves_the_whole_append_unapplied() {
        let mut s = ProducerStates::default();
        let headers = [batch(7, 0, 0, 1), batch(7, 0, 5, 1)];
        assert!(s.check(&headers, 0).is_err());
        assert!(s.is_empty());
        let headers = [batch(7, 0, 0, 1), batch(7, 0, 1, 2)];
        let Ok(Verdict::Append(staged)) = s.check(&headers, 0) else {
            panic!("in order")
        };
        s.commit(staged);
        assert_eq!(
            s.get(7)
                .and_then(|e| e.batches.back())
                .map(|b| b.last_offset),
            Some(2)
        );
    }

    #[test]
    fn truncation_and_expiry_forget_producers() {
        let mut s = ProducerStates::default();
        append(&mut s, batch(7, 0, 0, 1), 0).expect("append");
        append(&mut s, batch(8, 0, 0, 1), 1).expect("append");
        s.truncate(1);
        assert!(s.get(7).is_some() && s.get(8).is_none());
        assert_eq!(s.expire(1000 + 10_000, 5_000), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            append(&mut s, batch(7, 2, i * 2, 2), i64::from(i) * 2).expect("append");
        }
        append(&mut s, batch(-1, -1, -1, 1), 14).expect("plain batch");
        append(&mut s, batch(9, 0, 0, 1), 15).expect("append");
        let bytes = s.encode(16);
        assert_eq!(ProducerStates::decode(&bytes), Some((16, s.clone())));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(ProducerStates::decode(&bad), None, "flip at byte {i}");
        }
        assert_eq!(ProducerStates::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(ProducerStates::decode(&[]), None);
    }

    #[test]
    fn replay_rebuilds_what_appends_built() {
        let mut appended = ProducerStates::default();
        let mut replayed = ProducerStates::default();
        let mut offset = 0;
        for (pid, epoch, seq, n) in [(7, 0, 0, 2), (7, 0, 2, 1), (8, 1, 0, 4), (7, 1, 0, 1)] {
            let mut h = batch(pid, epoch, seq, n);
            append(&mut appended, h, offset).expect("append");
            h.base_offset = offset;
            replayed.replay(&ProducerBatch {
                header: h,
                marker: None,
            });
            offset += i64::from(n);
        }
        assert_eq!(appended, replayed);
    }
}
