//! Partition log behaviour on a real disk, in a glommio executor: append → flush → read,
//! recovery after a crash (torn and corrupt tails from fixtures), index rebuild, retention, and
//! the O_DIRECT polled-I/O trap.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use sluice_core::config::BrokerConfig;
use sluice_core::topic::{TimestampType, TopicConfig};
use sluice_storage::batch::{self, build_batch, BatchHeader};
use sluice_storage::{Durability, LogConfig, PartitionLog, StorageError};

mod common;
use common::{probe, run, scratch};

fn config() -> LogConfig {
    let topic = TopicConfig::from_broker(&BrokerConfig::default());
    LogConfig::from_topic(&topic, 4096, true)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn append_values(log: &PartitionLog, n: usize, ts: i64) -> i64 {
    let mut last = -1;
    for i in 0..n {
        let value = format!("value-{i}");
        let b = build_batch(0, ts + i as i64, &[value.as_bytes()]);
        let info = log.append(&b.freeze(), ts).expect("append");
        last = info.last_offset;
    }
    last
}

fn offsets_in(records: &sluice_storage::Records) -> Vec<i64> {
    let records = records.to_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = records.get(at..).and_then(BatchHeader::parse) {
        batch::validate(&records[at..at + h.total_bytes()]).expect("valid batch read back");
        out.push(h.base_offset);
        at += h.total_bytes();
    }
    out
}

#[test]
fn append_flush_read_and_recover() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let log = PartitionLog::open(&path.join("t-0"), "t", 0, config(), 0)
            .await
            .expect("open");
        let last = append_values(&log, 100, 1_000).await;
        assert_eq!(last, 99);
        assert_eq!(log.high_watermark(), 0, "nothing visible before the flush");
        log.flush(0).await.expect("flush");
        assert_eq!(log.high_watermark(), 100);
        let read = log.read(42, 1 << 20, true).await.expect("read");
        let offsets = offsets_in(&read.records);
        assert_eq!(offsets.first(), Some(&42));
        assert_eq!(offsets.len(), 58);
        // max_bytes limits the answer but always returns one whole batch
        let one = log.read(10, 1, true).await.expect("read");
        assert_eq!(offsets_in(&one.records), vec![10]);
        let none = log.read(10, 1, false).await.expect("read");
        assert!(none.records.is_empty());
        assert!(matches!(
            log.read(101, 100, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        drop(log);
        // "crash": reopen without close; the active segment is scanned and its index rebuilt
        let log = PartitionLog::open(&path.join("t-0"), "t", 0, config(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), 100);
        assert_eq!(log.high_watermark(), 100);
        let read = log
            .read(99, 1 << 20, true)
            .await
            .expect("read after recovery");
        assert_eq!(offsets_in(&read.records), vec![99]);
        let info = log
            .append(&build_batch(0, 5, &[b"after"]).freeze(), 0)
            .expect("append");
        assert_eq!(info.base_offset, 100, "offsets continue after recovery");
        log.flush(0).await.expect("flush");
        log.wait_durable(&info, Durability::Synced)
            .await
            .expect("durable");
        // the batch written after recovery rewrote the partial block correctly
        let all = log.read(0, 1 << 20, true).await.expect("read all");
        assert_eq!(offsets_in(&all.records).len(), 101);
    });
}

#[test]
fn segments_roll_seal_and_retention_deletes_old_ones() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let mut cfg = config();
        cfg.segment_bytes = 2000;
        cfg.retention_bytes = 3000;
        let log = PartitionLog::open(&path.join("r-0"), "r", 0, cfg.clone(), 0)
            .await
            .expect("open");
        append_values(&log, 200, 1_000).await;
        log.flush(0).await.expect("flush");
        let segments = log.segment_count();
        assert!(segments > 3, "segments rolled: {segments}");
        // sealed segments have index files and exact sizes
        let index = std::fs::read_dir(path.join("r-0"))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "index"))
            })
            .count();
        assert_eq!(index, segments - 1);
        // a reopen loads sealed segments from their indexes and still reads everything
        drop(log);
        let log = PartitionLog::open(&path.join("r-0"), "r", 0, cfg, 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), 200);
        let read = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(offsets_in(&read.records).first(), Some(&0));
        let deleted = log.enforce_retention(10_000).await.expect("retention");
        assert!(deleted > 0);
        assert!(log.log_start_offset() > 0);
        assert!(log.size_bytes() <= 3000 + 2000);
        assert!(matches!(
            log.read(0, 100, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        let start = log.log_start_offset();
        let read = log
            .read(start, 1 << 20, true)
            .await
            .expect("read from new start");
        assert_eq!(offsets_in(&read.records).first(), Some(&start));
    });
}

#[test]
fn list_offsets_by_timestamp_finds_the_first_batch_at_or_after() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let log = PartitionLog::open(&path.join("ts-0"), "ts", 0, config(), 0)
            .await
            .expect("open");
        for i in 0..50i64 {
            log.append(&build_batch(0, 10_000 + i * 100, &[b"x"]).freeze(), 0)
                .expect("append");
        }
        log.flush(0).await.expect("flush");
        let found = log
            .batch_for_timestamp(12_050)
            .await
            .expect("lookup")
            .expect("found");
        let h = BatchHeader::parse(&found).expect("header");
        assert_eq!(h.base_offset, 21);
        assert!(log
            .batch_for_timestamp(99_999)
            .await
            .expect("lookup")
            .is_none());
        let max = log
            .batch_with_max_timestamp()
            .await
            .expect("max")
            .expect("some");
        assert_eq!(BatchHeader::parse(&max).expect("header").base_offset, 49);
    });
}

#[test]
fn log_append_time_restamps_batches() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let mut cfg = config();
        cfg.timestamp_type = TimestampType::LogAppendTime;
        let log = PartitionLog::open(&path.join("l-0"), "l", 0, cfg, 0)
            .await
            .expect("open");
        let info = log
            .append(&build_batch(0, 5, &[b"x"]).freeze(), 777_000)
            .expect("append");
        assert_eq!(info.log_append_time_ms, 777_000);
        log.flush(0).await.expect("flush");
        let read = log.read(0, 1000, true).await.expect("read");
        let h = batch::validate(&read.records.to_bytes()).expect("crc still valid");
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 777_000);
    });
}

#[test]
fn oversized_and_corrupt_batches_are_refused_without_side_effects() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let mut cfg = config();
        cfg.max_message_bytes = 200;
        let log = PartitionLog::open(&path.join("b-0"), "b", 0, cfg, 0)
            .await
            .expect("open");
        let big = build_batch(0, 5, &[&[0u8; 500]]);
        assert!(matches!(
            log.append(&big.freeze(), 0),
            Err(StorageError::TooLarge { .. })
        ));
        let mut bad = build_batch(0, 5, &[b"abc"]);
        let n = bad.len();
        bad[n - 2] ^= 0x40;
        assert!(matches!(
            log.append(&bad.freeze(), 0),
            Err(StorageError::Batch(_))
        ));
        assert_eq!(log.log_end_offset(), 0);
    });
}

/// Copies a fixture segment into a fresh partition dir and recovers it.
fn recover_fixture(name: &str, expect_end: i64) {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    let part = path.join("f-0");
    std::fs::create_dir_all(&part).expect("mkdir");
    std::fs::copy(fixture(name), part.join(format!("{:020}.log", 0))).expect("copy fixture");
    let name = name.to_string();
    run(move || async move {
        probe(&path).await;
        let log = PartitionLog::open(&part, "f", 0, config(), 0)
            .await
            .expect("recover");
        assert_eq!(log.log_end_offset(), expect_end, "{name}");
        let read = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(offsets_in(&read.records).len() as i64, expect_end);
        // appending after recovery continues the offsets and is readable
        let info = log
            .append(&build_batch(0, 5, &[b"new"]).freeze(), 0)
            .expect("append");
        assert_eq!(info.base_offset, expect_end);
        log.flush(0).await.expect("flush");
        let read = log.read(expect_end, 1000, true).await.expect("read new");
        assert_eq!(offsets_in(&read.records), vec![expect_end]);
        let size = std::fs::metadata(part.join(format!("{:020}.log", 0)))
            .expect("stat")
            .len();
        assert!(size >= read.records.len() as u64);
    });
}

#[test]
fn recovery_truncates_a_torn_tail() {
    recover_fixture("torn-tail.log", 3);
}

#[test]
fn recovery_truncates_a_corrupt_last_batch() {
    recover_fixture("corrupt-crc.log", 3);
}

#[test]
fn recovery_ignores_preallocated_zeros() {
    recover_fixture("zero-padded.log", 4);
}

#[test]
fn recovery_of_an_empty_file() {
    recover_fixture("empty.log", 0);
}

/// Regenerates the fixtures (run by hand with `--ignored`; the files are checked in).
#[test]
#[ignore]
fn generate_fixtures() {
    let mut good = Vec::new();
    for i in 0..4i64 {
        let mut b = build_batch(0, 1_000 + i, &[format!("fixture-{i}").as_bytes()]);
        batch::assign_offset(&mut b, i, 0);
        good.push(b.to_vec());
    }
    let three: Vec<u8> = good[..3].concat();
    let mut torn = three.clone();
    torn.extend_from_slice(&good[3][..good[3].len() / 2]);
    std::fs::write(fixture("torn-tail.log"), torn).expect("write");
    let mut corrupt = three.clone();
    let mut last = good[3].clone();
    let n = last.len();
    last[n - 1] ^= 0xff;
    corrupt.extend_from_slice(&last);
    std::fs::write(fixture("corrupt-crc.log"), corrupt).expect("write");
    let mut padded = good.concat();
    padded.resize(8192, 0);
    std::fs::write(fixture("zero-padded.log"), padded).expect("write");
    std::fs::write(fixture("empty.log"), b"").expect("write");
}

/// glommio's polled-I/O probe on a new empty file mis-detects this kind of disk; with the guard,
/// DMA reads of a freshly created file work. Without it they fail with EOPNOTSUPP here.
#[test]
fn dma_reads_work_on_a_fresh_file_after_the_probe_guard() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let file = Rc::new(
            sluice_storage::segment::open_file(&path.join("fresh.log"), true)
                .await
                .expect("create"),
        );
        let mut buf = file.alloc_dma_buffer(4096);
        buf.as_bytes_mut().fill(7);
        file.write_at(buf, 0).await.expect("write");
        let read = file
            .read_at(0, 4096)
            .await
            .expect("DMA read must not fail with EOPNOTSUPP");
        assert!(read.iter().all(|b| *b == 7));
    });
}
