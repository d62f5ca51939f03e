//! Transactions on a partition log: the last stable offset, read_committed reads with their
//! aborted transactions, markers fencing older epochs, and all of it rebuilt by recovery — from
//! the producer-state snapshot plus the log tail, and from sealed segments' `.txnindex` files.

use sluice_core::config::BrokerConfig;
use sluice_core::topic::TopicConfig;
use sluice_storage::batch::{self, build_batch, BatchHeader};
use sluice_storage::log::Isolation;
use sluice_storage::txn::Marker;
use sluice_storage::{LogConfig, PartitionLog, StorageError};

mod common;
use common::{probe, run, scratch};

fn config(segment_bytes: u64) -> LogConfig {
    let mut topic = TopicConfig::from_broker(&BrokerConfig::default());
    topic.segment_bytes = segment_bytes;
    LogConfig::from_topic(&topic, 4096, true)
}

/// A batch of one record from `pid` at `seq`, transactional or not.
fn batch_of(pid: i64, epoch: i16, seq: i32, transactional: bool, value: &str) -> bytes::Bytes {
    let mut b = build_batch(0, 1_000, &[value.as_bytes()]);
    if transactional {
        b[22] |= 0x10;
    }
    batch::set_producer(&mut b, pid, epoch, seq);
    b.freeze()
}

fn commit() -> Marker {
    Marker {
        commit: true,
        coordinator_epoch: 0,
    }
}

fn abort() -> Marker {
    Marker {
        commit: false,
        coordinator_epoch: 0,
    }
}

/// Base offsets of the data batches of a read (control batches skipped).
fn data_offsets(records: &sluice_storage::Records) -> Vec<i64> {
    let bytes = records.to_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = bytes.get(at..).and_then(BatchHeader::parse) {
        if !h.is_control() {
            out.push(h.base_offset);
        }
        at += h.total_bytes();
    }
    out
}

async fn flush(log: &PartitionLog) {
    log.flush(0).await.expect("flush");
}

#[test]
fn the_lso_holds_back_read_committed_until_the_transaction_is_decided() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let log = PartitionLog::open(&path.join("t-0"), "t", 0, config(1 << 30), 0)
            .await
            .expect("open");
        // 0: plain, 1: txn of producer 7, 2: idempotent producer 8, 3: txn of producer 7.
        log.append(&build_batch(0, 1, &[b"plain"]).freeze(), 0)
            .expect("plain");
        log.append(&batch_of(7, 0, 0, true, "t1"), 0).expect("txn");
        log.append(&batch_of(8, 0, 0, false, "idem"), 0)
            .expect("idempotent");
        log.append(&batch_of(7, 0, 1, true, "t2"), 0).expect("txn");
        flush(&log).await;
        assert_eq!(log.high_watermark(), 4);
        assert_eq!(log.last_stable_offset(), 1);
        let committed = log
            .read_isolated(0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert_eq!(data_offsets(&committed.records), vec![0]);
        assert_eq!(committed.last_stable_offset, 1);
        let all = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(data_offsets(&all.records), vec![0, 1, 2, 3]);
        // A producer with an open transaction may not write outside it.
        assert!(matches!(
            log.append(&batch_of(7, 0, 2, false, "x"), 0),
            Err(StorageError::Sequence(_))
        ));
        // The abort marker goes at 4; the LSO moves once it is below the high watermark.
        let info = log.append_marker(7, 0, abort(), 0).expect("marker");
        assert_eq!(info.base_offset, 4);
        assert_eq!(log.last_stable_offset(), 1);
        flush(&log).await;
        assert_eq!(log.last_stable_offset(), 5);
        let committed = log
            .read_isolated(0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert_eq!(data_offsets(&committed.records), vec![0, 1, 2, 3]);
        let aborted: Vec<(i64, i64)> = committed
            .aborted
            .iter()
            .map(|a| (a.producer_id, a.first_offset))
            .collect();
        assert_eq!(aborted, vec![(7, 1)]);
        // Reading from past the aborted transaction lists nothing.
        let later = log
            .read_isolated(5, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert!(later.aborted.is_empty());
        // A committed transaction is never listed.
        log.append(&batch_of(8, 1, 0, true, "c"), 0).expect("txn");
        log.append_marker(8, 1, commit(), 0).expect("marker");
        flush(&log).await;
        assert_eq!(log.last_stable_offset(), 7);
        let from5 = log
            .read_isolated(5, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert_eq!(data_offsets(&from5.records), vec![5]);
        assert!(from5.aborted.is_empty());
    });
}

#[test]
fn markers_fence_older_epochs_and_stale_markers_are_refused() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let log = PartitionLog::open(&path.join("t-0"), "t", 0, config(1 << 30), 0)
            .await
            .expect("open");
        log.append(&batch_of(7, 3, 0, true, "a"), 0).expect("txn");
        // The coordinator aborts a timed-out transaction with a bumped epoch.
        log.append_marker(7, 4, abort(), 0).expect("marker");
        assert!(matches!(
            log.append(&batch_of(7, 3, 1, true, "zombie"), 0),
            Err(StorageError::Sequence(_))
        ));
        assert!(matches!(
            log.append_marker(7, 3, commit(), 0),
            Err(StorageError::Sequence(_))
        ));
        // The new epoch starts at sequence 0.
        log.append(&batch_of(7, 4, 0, true, "b"), 0)
            .expect("new epoch");
    });
}

#[test]
fn transactions_survive_restarts_from_the_tail_and_from_sealed_segments() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let at = path.join("t-0");
        // Small segments: every few batches roll, so most markers end up in sealed segments.
        let log = PartitionLog::open(&at, "t", 0, config(400), 0)
            .await
            .expect("open");
        let mut aborted_firsts = Vec::new();
        for round in 0..6i32 {
            let pid = 100 + i64::from(round % 2);
            let seq = round / 2 * 2;
            let first = log
                .append(&batch_of(pid, 0, seq, true, "a"), 0)
                .expect("txn")
                .base_offset;
            log.append(&batch_of(pid, 0, seq + 1, true, "b"), 0)
                .expect("txn");
            let marker = if round % 3 == 0 { abort() } else { commit() };
            if !marker.commit {
                aborted_firsts.push((pid, first));
            }
            log.append_marker(pid, 0, marker, 0).expect("marker");
            flush(&log).await;
        }
        // An open transaction at the end.
        let open_at = log
            .append(&batch_of(200, 0, 0, true, "open"), 0)
            .expect("txn")
            .base_offset;
        flush(&log).await;
        assert!(log.segment_count() > 3, "segments rolled");
        let expect = |log: &PartitionLog| {
            assert_eq!(log.last_stable_offset(), open_at);
            assert_eq!(log.open_transactions(), vec![(open_at, 200)]);
        };
        expect(&log);
        // Reads the whole log as a read_committed consumer would, one answer at a time,
        // collecting the aborted transactions the answers list.
        let read_aborted = |log: std::rc::Rc<PartitionLog>| async move {
            let mut offset = 0;
            let mut seen = Vec::new();
            while offset < log.last_stable_offset() {
                let read = log
                    .read_isolated(offset, 1 << 20, true, Isolation::ReadCommitted)
                    .await
                    .expect("read");
                for a in &read.aborted {
                    if !seen.contains(&(a.producer_id, a.first_offset)) {
                        seen.push((a.producer_id, a.first_offset));
                    }
                }
                let bytes = read.records.to_bytes();
                let mut at = 0;
                while let Some(h) = bytes.get(at..).and_then(BatchHeader::parse) {
                    offset = h.last_offset() + 1;
                    at += h.total_bytes();
                }
                assert!(at > 0, "a read below the LSO returns batches");
            }
            seen
        };
        assert_eq!(read_aborted(log.clone()).await, aborted_firsts);
        // A crash (no clean close) and a restart.
        drop(log);
        let log = PartitionLog::open(&at, "t", 0, config(400), 0)
            .await
            .expect("reopen after crash");
        expect(&log);
        assert_eq!(read_aborted(log.clone()).await, aborted_firsts);
        // A clean close and a restart; then the open transaction commits.
        log.close().await.expect("close");
        drop(log);
        let log = PartitionLog::open(&at, "t", 0, config(400), 0)
            .await
            .expect("reopen after close");
        expect(&log);
        assert_eq!(read_aborted(log.clone()).await, aborted_firsts);
        log.append_marker(200, 0, commit(), 0).expect("marker");
        flush(&log).await;
        assert_eq!(log.last_stable_offset(), log.high_watermark());
        assert!(std::fs::read_dir(&at).expect("dir").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".txnindex")));
    });
}

/// A keyed transactional batch of one record.
fn keyed_txn(pid: i64, seq: i32, key: &str, value: &str) -> bytes::Bytes {
    let mut b =
        batch::build_keyed_batch(0, 1_000, &[(Some(key.as_bytes()), Some(value.as_bytes()))]);
    b[22] |= 0x10;
    batch::set_producer(&mut b, pid, 0, seq);
    b.freeze()
}

/// Compaction with transactions, Kafka's rules: an aborted write never shadows the committed
/// value of its key (aborted records are dropped, not kept as the latest), markers stay, and
/// nothing at or past the last stable offset is cleaned while a transaction is open.
#[test]
fn the_cleaner_drops_aborted_records_and_stops_at_the_lso() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert("cleanup.policy".to_string(), "compact".to_string());
        overrides.insert("segment.bytes".to_string(), "200".to_string());
        let topic =
            TopicConfig::with_overrides(&BrokerConfig::default(), &overrides).expect("valid");
        let config = LogConfig::from_topic(&topic, 4096, true);
        let log = PartitionLog::open(&path.join("c-0"), "c", 0, config, 0)
            .await
            .expect("open");
        let plain = |key: &str, value: &str| {
            batch::build_keyed_batch(0, 1_000, &[(Some(key.as_bytes()), Some(value.as_bytes()))])
                .freeze()
        };
        log.append(&keyed_txn(1, 0, "k", "committed"), 0)
            .expect("txn");
        log.append_marker(1, 0, commit(), 0).expect("commit");
        let aborted_at = log
            .append(&keyed_txn(2, 0, "k", "aborted"), 0)
            .expect("txn")
            .base_offset;
        log.append_marker(2, 0, abort(), 0).expect("abort");
        for i in 0..6 {
            log.append(&plain("filler", &format!("f{i}")), 0)
                .expect("filler");
        }
        let open_at = log
            .append(&keyed_txn(3, 0, "open", "o"), 0)
            .expect("txn")
            .base_offset;
        for i in 0..12 {
            log.append(&plain("late", &format!("l{i}")), 0)
                .expect("late");
        }
        flush(&log).await;
        assert!(
            log.segment_count() > 4,
            "segments rolled: {}",
            log.segment_count()
        );
        assert_eq!(log.last_stable_offset(), open_at);
        let budget = sluice_storage::CleanBudget {
            key_map_bytes: 1 << 20,
            io_bytes_per_second: f64::MAX,
        };
        log.clean(1_000_000, budget)
            .await
            .expect("clean")
            .expect("cleaned something");
        let after = common::read_records(&log).await;
        let key = |r: &common::Stored, k: &str| r.key.as_deref() == Some(k);
        let values: Vec<(i64, &str)> = after
            .iter()
            .filter(|r| !r.control && key(r, "k"))
            .map(|r| (r.offset, r.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            values,
            vec![(0, "committed")],
            "the aborted write is gone, the commit kept"
        );
        assert!(after.iter().all(|r| r.offset != aborted_at));
        assert_eq!(
            after.iter().filter(|r| r.control).count(),
            2,
            "both markers stay"
        );
        // Past the LSO nothing was cleaned: every superseded "late" value is still there.
        assert_eq!(after.iter().filter(|r| key(r, "late")).count(), 12);
        assert!(after.iter().any(|r| key(r, "open")));
        // Below the cleaned range no aborted transaction is listed any more.
        let read = log
            .read_isolated(0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert!(read.aborted.is_empty(), "{:?}", read.aborted);
    });
}
