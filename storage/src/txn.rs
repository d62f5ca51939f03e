//! Transactions as a partition sees them: which transactions are still open (they hold back the
//! last stable offset), which were aborted (read_committed consumers are told to drop their
//! records), and the control batches — COMMIT and ABORT markers — that end them.
//!
//! A transaction on a partition starts with a producer's first transactional batch and ends with
//! the marker the transaction coordinator writes. Kafka's rules (`ProducerStateManager`,
//! `LogSegment.collectAbortedTxns`):
//! * the last stable offset (LSO) is the first offset of the oldest transaction that is open, or
//!   whose marker is not yet below the high watermark; the high watermark when there is none;
//! * an aborted transaction is remembered as (producer id, first offset, marker offset), and a
//!   read_committed fetch from offset `o` up to `u` lists those with `marker ≥ o` and
//!   `first < u`.
//!
//! Pure state: no I/O. The log keeps one [`Transactions`] per partition on the owning core and
//! writes the aborted entries of each segment to `<base>.txnindex` when the segment is sealed
//! (format in docs/FORMATS.md).

use std::collections::BTreeMap;

use crate::batch::{self, BatchHeader};

/// What a control batch says: how the transaction ended, and the coordinator epoch that wrote
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// A batch as producer state needs it: its header, and for a control batch what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub header: BatchHeader,
    pub marker: Option<Marker>,
}

impl ProducerBatch {
    /// From a whole stored batch (the marker is read from a control batch's record).
    pub fn of(header: BatchHeader, bytes: &[u8]) -> ProducerBatch {
        let marker = if header.is_control() {
            parse_marker(bytes)
        } else {
            None
        };
        ProducerBatch { header, marker }
    }
}

/// A change to a partition's transactions, produced by `ProducerStates::replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEvent {
    Started {
        producer_id: i64,
        first_offset: i64,
    },
    Ended {
        producer_id: i64,
        first_offset: i64,
        marker_offset: i64,
        commit: bool,
    },
}

/// One aborted transaction of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of its ABORT marker.
    pub last_offset: i64,
    /// The last stable offset this abort left, as Kafka records it: the first offset of the
    /// oldest transaction of another producer still open, else the marker's offset + 1. Every
    /// transaction aborted later begins at or after it, which is what lets a reader stop early.
    pub last_stable_offset: i64,
}

/// The open and aborted transactions of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transactions {
    /// First offset → (producer id, marker offset once ended). An ended transaction stays until
    /// the high watermark passes its marker.
    unstable: BTreeMap<i64, (i64, Option<i64>)>,
    /// By marker offset.
    aborted: BTreeMap<i64, AbortedTxn>,
}

impl Transactions {
    /// The first offset a read_committed consumer may not see yet, if any transaction holds it.
    pub fn first_unstable(&self) -> Option<i64> {
        self.unstable.keys().next().copied()
    }

    /// Open transactions (for DescribeProducers and tests): (first offset, producer id).
    pub fn open(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.unstable
            .iter()
            .filter(|(_, (_, marker))| marker.is_none())
            .map(|(first, (pid, _))| (*first, *pid))
    }

    /// Applies an event of an append (or of recovery).
    pub fn apply(&mut self, event: TxnEvent) {
        match event {
            TxnEvent::Started {
                producer_id,
                first_offset,
            } => {
                self.unstable.insert(first_offset, (producer_id, None));
            }
            TxnEvent::Ended {
                producer_id,
                first_offset,
                marker_offset,
                commit,
            } => {
                if let Some(entry) = self.unstable.get_mut(&first_offset) {
                    entry.1 = Some(marker_offset);
                }
                if !commit {
                    let lso_after = self
                        .unstable
                        .iter()
                        .find(|(_, (pid, marker))| marker.is_none() && *pid != producer_id)
                        .map_or(marker_offset + 1, |(first, _)| *first);
                    self.aborted.insert(
                        marker_offset,
                        AbortedTxn {
                            producer_id,
                            first_offset,
                            last_offset: marker_offset,
                            last_stable_offset: lso_after,
                        },
                    );
                }
            }
        }
    }

    /// The high watermark moved to `hw`: transactions whose marker is below it are stable.
    pub fn on_high_watermark(&mut self, hw: i64) {
        self.unstable
            .retain(|_, (_, marker)| marker.is_none_or(|m| m >= hw));
    }

    /// Sets the open transactions from recovered producer state (first offset, producer id).
    pub fn set_open(&mut self, open: impl Iterator<Item = (i64, i64)>) {
        self.unstable = open.map(|(first, pid)| (first, (pid, None))).collect();
    }

    /// Adds aborted transactions read from a segment's `.txnindex`.
    pub fn add_aborted(&mut self, entries: &[AbortedTxn]) {
        for e in entries {
            self.aborted.insert(e.last_offset, *e);
        }
    }

    /// Aborted transactions whose records may lie in `[from, upto)`: marker at or past `from`
    /// and first offset before `upto`, oldest first. The walk stops at the first abort whose
    /// last stable offset reaches `upto` (every later one begins at or after it), as Kafka's
    /// does, so a lagging reader does not walk every abort after its offset.
    pub fn aborted_between(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let mut out = Vec::new();
        for a in self.aborted.range(from..).map(|(_, a)| *a) {
            if a.first_offset < upto {
                out.push(a);
            }
            if a.last_stable_offset >= upto {
                break;
            }
        }
        out
    }

    /// Aborted transactions whose marker lies in `[base, next)` (one segment's `.txnindex`).
    pub fn aborted_in(&self, base: i64, next: i64) -> Vec<AbortedTxn> {
        self.aborted.range(base..next).map(|(_, a)| *a).collect()
    }

    /// Is the transactional batch of `producer_id` at `offset` part of an aborted transaction?
    /// A producer's transactions never overlap, so only its first abort marker at or after
    /// `offset` can be the one.
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        self.aborted
            .range(offset..)
            .map(|(_, a)| a)
            .find(|a| a.producer_id == producer_id)
            .is_some_and(|a| a.first_offset <= offset)
    }

    /// Every batch at or past `end` was discarded: forget what they started, ended or aborted.
    /// Returns the transactions open again because their marker went (first offset, producer).
    pub fn truncate(&mut self, end: i64) -> Vec<(i64, i64)> {
        self.unstable.retain(|first, _| *first < end);
        self.aborted.retain(|marker, _| *marker < end);
        let mut reopened = Vec::new();
        for (first, (pid, marker)) in self.unstable.iter_mut() {
            if marker.is_some_and(|m| m >= end) {
                *marker = None;
                reopened.push((*first, *pid));
            }
        }
        reopened
    }

    /// Forgets aborted transactions that ended before `offset`: their segments were deleted by
    /// retention, or cleaned of their records.
    pub fn forget_before(&mut self, log_start: i64) {
        self.aborted = self.aborted.split_off(&log_start);
    }
}

/// Control record key: version (0) and type (0 ABORT, 1 COMMIT).
const CONTROL_KEY_VERSION: i16 = 0;
/// `EndTxnMarker` value: version (0) and coordinator epoch.
const MARKER_VALUE_VERSION: i16 = 0;

/// A control batch ending `producer_id`'s transaction: one record whose key is the control
/// type and whose value is the `EndTxnMarker`, as Kafka writes it (attributes: transactional and
/// control; base sequence -1).
pub fn build_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp_ms: i64,
) -> bytes::BytesMut {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
    key.extend_from_slice(&i16::from(marker.commit).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&MARKER_VALUE_VERSION.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let mut out = batch::build_keyed_batch(0, timestamp_ms, &[(Some(&key), Some(&value))]);
    batch::set_control(&mut out, producer_id, producer_epoch);
    out
}

/// What a control batch says; None for anything else or a marker that does not parse.
pub fn parse_marker(bytes: &[u8]) -> Option<Marker> {
    let header = BatchHeader::parse(bytes)?;
    if !header.is_control() {
        return None;
    }
    let records = batch::records(bytes)?;
    let record = records.first()?;
    let key = record.key?;
    let commit = match i16::from_be_bytes(key.get(2..4)?.try_into().ok()?) {
        0 => false,
        1 => true,
        _ => return None,
    };
    let coordinator_epoch = record
        .value
        .and_then(|v| v.get(2..6))
        .and_then(|v| v.try_into().ok())
        .map(i32::from_be_bytes)
        .unwrap_or(-1);
    Some(Marker {
        commit,
        coordinator_epoch,
    })
}

const TXN_INDEX_MAGIC: &[u8; 4] = b"SLTX";
const TXN_INDEX_VERSION: u16 = 1;
const TXN_INDEX_ENTRY_BYTES: usize = 32;

/// The `.txnindex` file of a segment: magic, version, count, entries, CRC-32C.
pub fn encode_index(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + entries.len() * TXN_INDEX_ENTRY_BYTES);
    out.extend_from_slice(TXN_INDEX_MAGIC);
    out.extend_from_slice(&TXN_INDEX_VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.producer_id.to_be_bytes());
        out.extend_from_slice(&e.first_offset.to_be_bytes());
        out.extend_from_slice(&e.last_offset.to_be_bytes());
        out.extend_from_slice(&e.last_stable_offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads a `.txnindex` file; None if it is damaged in any way.
pub fn decode_index(bytes: &[u8]) -> Option<Vec<AbortedTxn>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let (head, mut rest) = body.split_at_checked(10)?;
    if &head[..4] != TXN_INDEX_MAGIC || u16::from_be_bytes([head[4], head[5]]) != TXN_INDEX_VERSION
    {
        return None;
    }
    let count = u32::from_be_bytes(head[6..10].try_into().ok()?) as usize;
    if rest.len() != count.checked_mul(TXN_INDEX_ENTRY_BYTES)? {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    let i64_at = |rest: &mut &[u8]| -> Option<i64> {
        let (v, after) = rest.split_at_checked(8)?;
        *rest = after;
        Some(i64::from_be_bytes(v.try_into().ok()?))
    };
    for _ in 0..count {
        out.push(AbortedTxn {
            producer_id: i64_at(&mut rest)?,
            first_offset: i64_at(&mut rest)?,
            last_offset: i64_at(&mut rest)?,
            last_stable_offset: i64_at(&mut rest)?,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_are_valid_batches() {
        for (commit, epoch) in [(true, 7), (false, 0)] {
            let m = Marker {
                commit,
                coordinator_epoch: epoch,
            };
            let bytes = build_marker(42, 3, m, 1000);
            let header = batch::validate(&bytes).expect("a valid batch");
            assert!(header.is_control() && header.is_transactional());
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (42, 3, -1)
            );
            assert_eq!(parse_marker(&bytes), Some(m));
        }
        let data = batch::build_batch(0, 1, &[b"x"]);
        assert_eq!(parse_marker(&data), None);
    }

    #[test]
    fn the_lso_waits_for_open_and_unreplicated_transactions() {
        let mut t = Transactions::default();
        t.apply(TxnEvent::Started {
            producer_id: 1,
            first_offset: 5,
        });
        t.apply(TxnEvent::Started {
            producer_id: 2,
            first_offset: 8,
        });
        assert_eq!(t.first_unstable(), Some(5));
        t.apply(TxnEvent::Ended {
            producer_id: 1,
            first_offset: 5,
            marker_offset: 10,
            commit: false,
        });
        // Ended, but its marker is not below the high watermark yet.
        t.on_high_watermark(10);
        assert_eq!(t.first_unstable(), Some(5));
        t.on_high_watermark(11);
        assert_eq!(t.first_unstable(), Some(8));
        assert_eq!(t.aborted_between(0, 100).len(), 1);
        assert_eq!(t.aborted_between(11, 100), vec![]);
        assert_eq!(t.aborted_between(0, 5), vec![]);
        assert!(t.is_aborted(1, 7) && !t.is_aborted(2, 7) && !t.is_aborted(1, 11));
        // A discarded marker reopens its transaction.
        let mut u = t.clone();
        u.apply(TxnEvent::Ended {
            producer_id: 2,
            first_offset: 8,
            marker_offset: 12,
            commit: true,
        });
        assert_eq!(u.truncate(12), vec![(8, 2)]);
        assert_eq!(u, t);
        t.forget_before(11);
        assert_eq!(t.aborted_between(0, 100), vec![]);
    }

    fn start(t: &mut Transactions, producer_id: i64, first_offset: i64) {
        t.apply(TxnEvent::Started {
            producer_id,
            first_offset,
        });
    }

    fn abort(t: &mut Transactions, producer_id: i64, first_offset: i64, marker_offset: i64) {
        t.apply(TxnEvent::Ended {
            producer_id,
            first_offset,
            marker_offset,
            commit: false,
        });
    }

    #[test]
    fn the_abort_walk_stops_where_later_aborts_cannot_reach() {
        // Overlapping: producer 2 is open when producer 1 aborts, so that abort's last stable
        // offset is producer 2's first offset.
        let mut t = Transactions::default();
        start(&mut t, 1, 0);
        start(&mut t, 2, 1);
        abort(&mut t, 1, 0, 3);
        abort(&mut t, 2, 1, 4);
        start(&mut t, 3, 10);
        abort(&mut t, 3, 10, 12);
        let lsos: Vec<i64> = t
            .aborted_between(0, 100)
            .iter()
            .map(|a| a.last_stable_offset)
            .collect();
        assert_eq!(lsos, vec![1, 5, 13]);
        let firsts = |from, upto| -> Vec<i64> {
            t.aborted_between(from, upto)
                .iter()
                .map(|a| a.first_offset)
                .collect()
        };
        assert_eq!(firsts(0, 2), vec![0, 1], "both overlap [0, 2)");
        assert_eq!(firsts(0, 10), vec![0, 1]);
        assert_eq!(firsts(0, 11), vec![0, 1, 10]);
        assert_eq!(firsts(4, 11), vec![1, 10]);
        assert_eq!(firsts(5, 11), vec![10]);
        // Every abort the walk skips begins at or after `upto`: the same answer as a full scan.
        for from in 0..14 {
            for upto in from..15 {
                let full: Vec<i64> = t
                    .aborted
                    .range(from..)
                    .map(|(_, a)| *a)
                    .filter(|a| a.first_offset < upto)
                    .map(|a| a.first_offset)
                    .collect();
                assert_eq!(firsts(from, upto), full, "from {from} upto {upto}");
            }
        }
    }

    #[test]
    fn txn_index_round_trips_and_rejects_damage() {
        let entries = vec![
            AbortedTxn {
                producer_id: 3,
                first_offset: 10,
                last_offset: 20,
                last_stable_offset: 10,
            },
            AbortedTxn {
                producer_id: 4,
                first_offset: 11,
                last_offset: 25,
                last_stable_offset: 11,
            },
        ];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes), Some(entries));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_index(&bad), None, "flip at byte {i}");
        }
        assert_eq!(decode_index(&encode_index(&[])), Some(vec![]));
        assert_eq!(decode_index(&[]), None);
    }
}
