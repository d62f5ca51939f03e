//! The transaction coordinator's state machine: one [`TxnMetadata`] per transactional id, and
//! Kafka's rules for moving it (`TransactionCoordinator`, `TransactionMetadata`) as pure
//! functions — no I/O. The driver (`txn_coordinator`) persists each new state to
//! `__transaction_state` before it takes effect, writes the markers, and answers.
//!
//! States and the bytes written for them (`TransactionStatus`): Empty 0, Ongoing 1,
//! PrepareCommit 2, PrepareAbort 3, CompleteCommit 4, CompleteAbort 5. Records are Kafka's
//! `TransactionLogKey` v0 and `TransactionLogValue` v0 (docs/FORMATS.md), so Kafka's own
//! `DumpLogSegments --transaction-log-decoder` reads them.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::error::ResponseError;

/// The internal topic holding transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// An epoch at or past this is exhausted: the next InitProducerId moves to a new producer id.
pub const EPOCH_EXHAUSTED: i16 = i16::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn completed(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

/// What the coordinator knows of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, for a retried InitProducerId (not persisted, as in
    /// Kafka).
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    pub last_update_ms: i64,
    /// When the open transaction started (its first AddPartitionsToTxn), else -1.
    pub start_ms: i64,
}

impl TxnMetadata {
    /// A new transactional id's state, before its first epoch.
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
        TxnMetadata {
            producer_id,
            producer_epoch: -1,
            last_producer_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now_ms,
            start_ms: -1,
        }
    }

    /// No transaction for `expiration_ms` (`transactional.id.expiration.ms`): the id may be
    /// forgotten, as Kafka forgets it — only between transactions.
    pub fn expired(&self, now_ms: i64, expiration_ms: i64) -> bool {
        self.state.completed() && now_ms.saturating_sub(self.last_update_ms) >= expiration_ms
    }

    /// The open transaction has run past its timeout.
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.state == TxnState::Ongoing
            && self.start_ms >= 0
            && now_ms.saturating_sub(self.start_ms) > i64::from(self.timeout_ms)
    }

    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }
}

/// What InitProducerId leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum InitNext {
    /// Persist this state (Empty, a new epoch or producer id), then answer with its id/epoch.
    Bump(TxnMetadata),
    /// A retry of the last bump: answer with the current id and epoch, nothing written.
    Current,
    /// The open transaction must be aborted first, fencing its producer with this state
    /// (PrepareAbort at a bumped epoch); the client is told CONCURRENT_TRANSACTIONS.
    FenceAndAbort(TxnMetadata),
    /// A new producer id is needed (epoch exhausted): allocate one, then bump from it.
    NewProducerId,
}

/// InitProducerId for an existing transactional id (Kafka's `handleInitProducerId` after the
/// state lookup). `expected` is the (producer id, epoch) a KIP-360 client gave, if any.
pub fn init(
    meta: &TxnMetadata,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    now_ms: i64,
) -> Result<InitNext, ResponseError> {
    if let Some((pid, _)) = expected {
        if meta.producer_epoch != -1 && pid != meta.producer_id {
            return Err(ResponseError::ProducerFenced);
        }
    }
    match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            Err(ResponseError::ConcurrentTransactions)
        }
        TxnState::Ongoing => {
            let mut next = meta.clone();
            next.producer_epoch = meta.producer_epoch.saturating_add(1);
            next.last_producer_epoch = -1;
            next.state = TxnState::PrepareAbort;
            next.last_update_ms = now_ms;
            Ok(InitNext::FenceAndAbort(next))
        }
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let expected_epoch = expected.map(|(_, e)| e);
            if meta.producer_epoch >= EPOCH_EXHAUSTED
                && expected_epoch.is_none_or(|e| e == meta.producer_epoch)
            {
                return Ok(InitNext::NewProducerId);
            }
            let (epoch, last) = match expected_epoch {
                None => (meta.producer_epoch + 1, -1),
                Some(e) if e == meta.producer_epoch || meta.producer_epoch == -1 => {
                    (meta.producer_epoch + 1, meta.producer_epoch)
                }
                Some(e) if e == meta.last_producer_epoch => return Ok(InitNext::Current),
                Some(_) => return Err(ResponseError::ProducerFenced),
            };
            Ok(InitNext::Bump(TxnMetadata {
                producer_id: meta.producer_id,
                producer_epoch: epoch,
                last_producer_epoch: last,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                last_update_ms: now_ms,
                start_ms: -1,
            }))
        }
    }
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the state to persist, or None when every partition
/// is already in the open transaction.
pub fn add_partitions(
    meta: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    now_ms: i64,
) -> Result<Option<TxnMetadata>, ResponseError> {
    meta.check_producer(producer_id, epoch)?;
    match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            Err(ResponseError::ConcurrentTransactions)
        }
        TxnState::Ongoing if partitions.iter().all(|p| meta.partitions.contains(p)) => Ok(None),
        _ => {
            let mut next = meta.clone();
            if meta.state.completed() {
                next.start_ms = now_ms;
                next.partitions.clear();
            }
            next.state = TxnState::Ongoing;
            next.partitions.extend(partitions.iter().cloned());
            next.last_update_ms = now_ms;
            Ok(Some(next))
        }
    }
}

/// What EndTxn leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum EndNext {
    /// Persist this PrepareCommit/PrepareAbort, write the markers, then complete.
    Prepare(TxnMetadata),
    /// A retry of the transaction's end that already completed: answer success.
    AlreadyDone,
}

/// EndTxn from the client. Transaction version 1 (EndTxn v0–4): the epoch stays. Version 2
/// (KIP-890, EndTxn v5): every transaction ends at a bumped epoch — the markers carry it, the
/// client continues with it — so a late write of the ended transaction is fenced; an abort
/// needs no open transaction; and a retry with the epoch before the bump of a transaction that
/// already ended that way succeeds.
pub fn end(
    meta: &TxnMetadata,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
    version_2: bool,
) -> Result<EndNext, ResponseError> {
    if version_2
        && producer_id == meta.producer_id
        && epoch.checked_add(1) == Some(meta.producer_epoch)
    {
        // A retry of the end that bumped the epoch.
        return match (meta.state, commit) {
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(EndNext::AlreadyDone)
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => Err(ResponseError::ProducerFenced),
        };
    }
    meta.check_producer(producer_id, epoch)?;
    let prepare = |state: TxnState| {
        let mut next = meta.clone();
        next.state = state;
        next.last_update_ms = now_ms;
        if version_2 {
            next.producer_epoch = meta.producer_epoch.saturating_add(1);
            next.last_producer_epoch = meta.producer_epoch;
        }
        EndNext::Prepare(next)
    };
    match (meta.state, commit) {
        (TxnState::Ongoing, true) => Ok(prepare(TxnState::PrepareCommit)),
        (TxnState::Ongoing, false) => Ok(prepare(TxnState::PrepareAbort)),
        (TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort, false)
            if version_2 =>
        {
            Ok(prepare(TxnState::PrepareAbort))
        }
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
            Ok(EndNext::AlreadyDone)
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Err(ResponseError::ConcurrentTransactions)
        }
        _ => Err(ResponseError::InvalidTxnState),
    }
}

/// The state after the markers of a prepared transaction are written.
pub fn complete(meta: &TxnMetadata, now_ms: i64) -> TxnMetadata {
    let mut next = meta.clone();
    next.state = match meta.state {
        TxnState::PrepareCommit => TxnState::CompleteCommit,
        _ => TxnState::CompleteAbort,
    };
    next.partitions.clear();
    next.last_update_ms = now_ms;
    next
}

/// The abort of a timed-out transaction: PrepareAbort at a bumped epoch, which fences the
/// producer that let it time out (Kafka's `abortTimedOutTransactions`).
pub fn abort_timed_out(meta: &TxnMetadata, now_ms: i64) -> TxnMetadata {
    let mut next = meta.clone();
    next.producer_epoch = meta.producer_epoch.saturating_add(1);
    next.last_producer_epoch = -1;
    next.state = TxnState::PrepareAbort;
    next.last_update_ms = now_ms;
    next
}

fn put_string(b: &mut BytesMut, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    b.put_i16(len as i16);
    b.put_slice(&s.as_bytes()[..len]);
}

fn get_string(b: &mut &[u8]) -> Option<String> {
    if b.len() < 2 {
        return None;
    }
    let len = usize::try_from(b.get_i16()).ok()?;
    let (s, rest) = b.split_at_checked(len)?;
    *b = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// `TransactionLogKey` v0.
pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(0);
    put_string(&mut b, transactional_id);
    b.to_vec()
}

pub fn decode_key(mut key: &[u8]) -> Option<String> {
    if key.len() < 2 || key.get_i16() != 0 {
        return None;
    }
    get_string(&mut key)
}

/// `TransactionLogValue` v0: partitions grouped by topic (null when Empty, as Kafka writes).
pub fn encode_value(m: &TxnMetadata) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i64(m.producer_id);
    b.put_i16(m.producer_epoch);
    b.put_i32(m.timeout_ms);
    b.put_i8(m.state.id());
    if m.state == TxnState::Empty {
        b.put_i32(-1);
    } else {
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (topic, partition) in &m.partitions {
            match topics.last_mut() {
                Some((t, ps)) if *t == topic.as_str() => ps.push(*partition),
                _ => topics.push((topic, vec![*partition])),
            }
        }
        b.put_i32(topics.len() as i32);
        for (topic, partitions) in topics {
            put_string(&mut b, topic);
            b.put_i32(partitions.len() as i32);
            for p in partitions {
                b.put_i32(p);
            }
        }
    }
    b.put_i64(m.last_update_ms);
    b.put_i64(m.start_ms);
    b.to_vec()
}

pub fn decode_value(mut v: &[u8]) -> Option<TxnMetadata> {
    if v.len() < 2 + 8 + 2 + 4 + 1 + 4 || v.get_i16() != 0 {
        return None;
    }
    let producer_id = v.get_i64();
    let producer_epoch = v.get_i16();
    let timeout_ms = v.get_i32();
    let state = TxnState::from_id(v.get_i8())?;
    let topics = v.get_i32();
    let mut partitions = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let topic = get_string(&mut v)?;
        if v.len() < 4 {
            return None;
        }
        let n = v.get_i32();
        if v.len() < n.max(0) as usize * 4 {
            return None;
        }
        for _ in 0..n.max(0) {
            partitions.insert((topic.clone(), v.get_i32()));
        }
    }
    if v.len() != 16 {
        return None;
    }
    Some(TxnMetadata {
        producer_id,
        producer_epoch,
        last_producer_epoch: -1,
        timeout_ms,
        state,
        partitions,
        last_update_ms: v.get_i64(),
        start_ms: v.get_i64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> TxnMetadata {
        TxnMetadata::new(7, 60_000, 0)
    }

    fn bumped(next: Result<InitNext, ResponseError>) -> TxnMetadata {
        match next {
            Ok(InitNext::Bump(m)) => m,
            other => panic!("expected a bump, got {other:?}"),
        }
    }

    #[test]
    fn init_bumps_the_epoch_and_fences_an_open_transaction() {
        let m = bumped(init(&fresh(), 60_000, None, 1));
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (7, 0, TxnState::Empty)
        );
        let m = bumped(init(&m, 60_000, None, 2));
        assert_eq!(m.producer_epoch, 1);
        // KIP-360: a retry with the epoch before the bump gets the current one back.
        let retried = bumped(init(&m, 60_000, Some((7, 1)), 3));
        assert_eq!(retried.producer_epoch, 2);
        assert_eq!(
            init(&retried, 60_000, Some((7, 1)), 4),
            Ok(InitNext::Current)
        );
        assert_eq!(
            init(&retried, 60_000, Some((7, 0)), 4),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            init(&retried, 60_000, Some((8, 2)), 4),
            Err(ResponseError::ProducerFenced)
        );
        let open = add_partitions(&retried, 7, 2, &[("t".into(), 0)], 5)
            .expect("add")
            .expect("a change");
        match init(&open, 60_000, None, 6) {
            Ok(InitNext::FenceAndAbort(f)) => {
                assert_eq!((f.producer_epoch, f.state), (3, TxnState::PrepareAbort));
                assert_eq!(f.partitions, open.partitions);
            }
            other => panic!("{other:?}"),
        }
        let mut exhausted = m.clone();
        exhausted.producer_epoch = EPOCH_EXHAUSTED;
        assert_eq!(init(&exhausted, 1, None, 7), Ok(InitNext::NewProducerId));
    }

    #[test]
    fn partitions_end_and_retries_follow_kafkas_table() {
        let m = bumped(init(&fresh(), 60_000, None, 1));
        assert_eq!(
            add_partitions(&m, 8, 0, &[("t".into(), 0)], 2),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert_eq!(
            add_partitions(&m, 7, 1, &[("t".into(), 0)], 2),
            Err(ResponseError::ProducerFenced)
        );
        let open = add_partitions(&m, 7, 0, &[("t".into(), 0)], 2)
            .expect("add")
            .expect("change");
        assert_eq!((open.state, open.start_ms), (TxnState::Ongoing, 2));
        assert_eq!(add_partitions(&open, 7, 0, &[("t".into(), 0)], 3), Ok(None));
        assert_eq!(
            end(&m, 7, 0, true, 3, false),
            Err(ResponseError::InvalidTxnState)
        );
        let EndNext::Prepare(prepared) = end(&open, 7, 0, true, 3, false).expect("end") else {
            panic!("prepare")
        };
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(
            add_partitions(&prepared, 7, 0, &[("t".into(), 1)], 4),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            end(&prepared, 7, 0, true, 4, false),
            Err(ResponseError::ConcurrentTransactions)
        );
        assert_eq!(
            end(&prepared, 7, 0, false, 4, false),
            Err(ResponseError::InvalidTxnState)
        );
        let done = complete(&prepared, 5);
        assert_eq!(done.state, TxnState::CompleteCommit);
        assert!(done.partitions.is_empty());
        assert_eq!(end(&done, 7, 0, true, 6, false), Ok(EndNext::AlreadyDone));
        assert_eq!(
            end(&done, 7, 0, false, 6, false),
            Err(ResponseError::InvalidTxnState)
        );
        // A new transaction after a completed one starts afresh.
        let next = add_partitions(&done, 7, 0, &[("u".into(), 3)], 9)
            .expect("add")
            .expect("change");
        assert_eq!(next.start_ms, 9);
        assert_eq!(next.partitions.len(), 1);
        assert!(!next.timed_out(9 + 60_000) && next.timed_out(9 + 60_001));
        let fenced = abort_timed_out(&next, 70_000);
        assert_eq!(
            (fenced.producer_epoch, fenced.state),
            (1, TxnState::PrepareAbort)
        );
        assert_eq!(
            end(&fenced, 7, 0, true, 70_001, false),
            Err(ResponseError::ProducerFenced)
        );
    }

    #[test]
    fn version_2_bumps_the_epoch_at_every_end_and_answers_retries() {
        let m = bumped(init(&fresh(), 60_000, None, 1));
        let open = add_partitions(&m, 7, 0, &[("t".into(), 0)], 2)
            .expect("add")
            .expect("change");
        let EndNext::Prepare(prepared) = end(&open, 7, 0, true, 3, true).expect("end") else {
            panic!("prepare")
        };
        assert_eq!(
            (prepared.state, prepared.producer_epoch),
            (TxnState::PrepareCommit, 1)
        );
        // A retry with the old epoch while the markers are written, then once complete.
        assert_eq!(
            end(&prepared, 7, 0, true, 4, true),
            Err(ResponseError::ConcurrentTransactions)
        );
        let done = complete(&prepared, 5);
        assert_eq!(end(&done, 7, 0, true, 6, true), Ok(EndNext::AlreadyDone));
        assert_eq!(
            end(&done, 7, 0, false, 6, true),
            Err(ResponseError::ProducerFenced)
        );
        // An abort needs no open transaction; the next transaction runs at the new epoch.
        let EndNext::Prepare(empty_abort) = end(&done, 7, 1, false, 7, true).expect("end") else {
            panic!("prepare")
        };
        assert_eq!(
            (empty_abort.state, empty_abort.producer_epoch),
            (TxnState::PrepareAbort, 2)
        );
        assert!(empty_abort.partitions.is_empty());
        assert_eq!(
            add_partitions(&done, 7, 0, &[("t".into(), 0)], 8),
            Err(ResponseError::ProducerFenced)
        );
        assert!(add_partitions(&done, 7, 1, &[("t".into(), 0)], 8).is_ok());
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let mut m = fresh();
        m.producer_epoch = 4;
        m.state = TxnState::Ongoing;
        m.partitions = [("a".to_string(), 1), ("a".into(), 2), ("b".into(), 0)]
            .into_iter()
            .collect();
        m.start_ms = 10;
        m.last_update_ms = 11;
        assert_eq!(decode_value(&encode_value(&m)), Some(m.clone()));
        assert_eq!(decode_key(&encode_key("tx-1")), Some("tx-1".into()));
        let empty = TxnMetadata {
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            ..m.clone()
        };
        assert_eq!(decode_value(&encode_value(&empty)), Some(empty));
        let bytes = encode_value(&m);
        for cut in 0..bytes.len() {
            assert_eq!(decode_value(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
