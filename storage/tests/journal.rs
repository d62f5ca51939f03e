//! The per-core journal with real logs and a real flusher on the data disk: acknowledged bytes
//! that never reached their segments come back through replay, a large round bypasses the
//! journal, and the barrier keeps a truncated tail from coming back.

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use sluice_core::config::BrokerConfig;
use sluice_core::topic::TopicConfig;
use sluice_storage::batch::build_batch;
use sluice_storage::journal::{self, Journal};
use sluice_storage::{Durability, Flusher, LogConfig, PartitionLog};

mod common;
use common::{probe, read_records, run, scratch};

const RING: u64 = 4 << 20;

fn config() -> LogConfig {
    let topic = TopicConfig::from_broker(&BrokerConfig::default());
    LogConfig::from_topic(&topic, 4096, true)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh journal for core 0 under `root`, and a flusher that uses it (not yet running).
async fn start(root: &Path) -> (Rc<Journal>, Rc<Flusher>) {
    probe(root).await;
    journal::prepare(root, 1, RING).expect("prepare");
    let journal = Journal::open(root, 0).await.expect("journal");
    let flusher = Flusher::with_journal(journal.clone());
    (journal, flusher)
}

/// Opens partitions `t-0..t-n` with the core's journal attached.
async fn open_logs(root: &Path, n: i32, journal: &Rc<Journal>) -> Vec<Rc<PartitionLog>> {
    let mut logs = Vec::new();
    for p in 0..n {
        let log = PartitionLog::open(&root.join(format!("t-{p}")), "t", p, config(), now_ms())
            .await
            .expect("open");
        log.set_journal(Some(journal.clone()));
        logs.push(log);
    }
    logs
}

/// Appends records `values` (each its number, zero-padded to `value_bytes`) to `log` and
/// waits until they are synced.
async fn produce(
    flusher: &Flusher,
    log: &Rc<PartitionLog>,
    values: std::ops::Range<usize>,
    value_bytes: usize,
) {
    let mut infos = Vec::new();
    for i in values {
        let value = format!("{i:0width$}", width = value_bytes);
        let batch = build_batch(0, now_ms(), &[value.as_bytes()]).freeze();
        infos.push(log.append(&batch, now_ms()).expect("append"));
    }
    flusher.mark_dirty(log);
    for info in infos {
        log.wait_durable(&info, Durability::Synced)
            .await
            .expect("synced");
    }
}

/// Zeroes a segment file from `from` on: the bytes an OS crash loses when they were written
/// but their file never synced.
fn lose_tail(root: &Path, partition: i32, from: u64) {
    let path = root.join(format!("t-{partition}/00000000000000000000.log"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("segment");
    let len = file.metadata().expect("metadata").len();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&vec![0u8; (len - from) as usize], from)
        .expect("zero");
}

#[test]
fn acknowledged_bytes_lost_from_their_segments_come_back_through_replay() {
    let dir = scratch();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (journal, flusher) = start(&root).await;
        let task = glommio::spawn_local(flusher.clone().run(now_ms, Duration::from_millis(100)));
        let logs = open_logs(&root, 3, &journal).await;
        // A log's first round after open syncs its segments (recovery may have kept a tail
        // that was never synced); the rounds after it go through the journal.
        let mut synced_bytes = Vec::new();
        for log in &logs {
            produce(&flusher, log, 0..25, 100).await;
            synced_bytes.push(log.size_bytes());
        }
        assert_eq!(journal.pending_bytes(), 0);
        for log in &logs {
            produce(&flusher, log, 25..50, 100).await;
        }
        assert!(journal.pending_bytes() > 0);
        for log in &logs {
            assert_eq!(log.high_watermark(), 50);
        }
        // An OS crash now: nothing is closed or checkpointed, and the segments lose what was
        // written after their last fdatasync.
        flusher.stop();
        task.await;
        drop(logs);
        for (p, from) in synced_bytes.into_iter().enumerate() {
            lose_tail(&root, p as i32, from);
        }
        let replayed = journal::prepare(&root, 1, RING).expect("replay");
        assert!(replayed.records >= 3, "{replayed:?}");
        let journal = Journal::open(&root, 0).await.expect("journal");
        assert_eq!(journal.pending_bytes(), 0);
        for log in open_logs(&root, 3, &journal).await {
            let records = read_records(&log).await;
            assert_eq!(records.len(), 50, "partition {}", log.partition);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.value.as_deref(), Some(format!("{i:0100}").as_str()));
            }
        }
    });
}

#[test]
fn a_large_round_syncs_its_segments_instead_of_the_journal() {
    let dir = scratch();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (journal, flusher) = start(&root).await;
        let logs = open_logs(&root, 1, &journal).await;
        // Appended before the flusher runs, so that they make one round of ~2 MiB.
        let mut last = None;
        for i in 0..200 {
            let value = format!("{i:010000}");
            let batch = build_batch(0, now_ms(), &[value.as_bytes()]).freeze();
            last = Some(logs[0].append(&batch, now_ms()).expect("append"));
        }
        flusher.mark_dirty(&logs[0]);
        let task = glommio::spawn_local(flusher.clone().run(now_ms, Duration::from_millis(100)));
        logs[0]
            .wait_durable(&last.expect("appended"), Durability::Synced)
            .await
            .expect("synced");
        assert_eq!(journal.pending_bytes(), 0, "the round bypassed the journal");
        assert_eq!(logs[0].high_watermark(), 200);
        flusher.stop();
        task.await;
    });
}

#[test]
fn a_truncated_tail_does_not_come_back_through_replay() {
    let dir = scratch();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (journal, flusher) = start(&root).await;
        let task = glommio::spawn_local(flusher.clone().run(now_ms, Duration::from_millis(100)));
        let logs = open_logs(&root, 1, &journal).await;
        produce(&flusher, &logs[0], 0..20, 10).await;
        produce(&flusher, &logs[0], 20..40, 10).await;
        assert!(journal.pending_bytes() > 0);
        // A follower truncates as the broker does: close, barrier, cut.
        let log = logs.into_iter().next().expect("log");
        log.close().await.expect("close");
        log.retire().await;
        drop(log);
        flusher.barrier().await.expect("barrier");
        assert_eq!(journal.pending_bytes(), 0);
        let end = sluice_storage::log::truncate_dir(&root.join("t-0"), 10)
            .await
            .expect("truncate");
        assert_eq!(end, 10);
        flusher.stop();
        task.await;
        // Replay at the next start writes nothing back over the cut.
        let replayed = journal::prepare(&root, 1, RING).expect("replay");
        assert_eq!(replayed.records, 0);
        let journal = Journal::open(&root, 0).await.expect("journal");
        let log = open_logs(&root, 1, &journal).await.remove(0);
        assert_eq!(log.log_end_offset(), 10);
        assert_eq!(read_records(&log).await.len(), 10);
    });
}
