//! Log compaction on a real disk: the latest value per key survives with its offset, tombstones
//! outlive `delete.retention.ms` and then go, the result survives a restart, and a crash at any
//! step of a segment swap loses nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use sluice_core::config::BrokerConfig;
use sluice_core::topic::TopicConfig;
use sluice_storage::batch::{self, build_keyed_batch};
use sluice_storage::{CleanBudget, CleanCrashPoint, LogConfig, PartitionLog, StorageError};

mod common;
use common::{probe, run, scratch};

const DELETE_RETENTION_MS: i64 = 1_000;
const BUDGET: CleanBudget = CleanBudget {
    key_map_bytes: 1 << 20,
    io_bytes_per_second: f64::MAX,
};

fn compacted_config() -> LogConfig {
    config_with(&[])
}

/// The compacted test topic's settings, with `extra` overrides on top.
fn config_with(extra: &[(&str, &str)]) -> LogConfig {
    let mut overrides = BTreeMap::new();
    for (k, v) in [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "2000"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "1000"),
    ]
    .iter()
    .chain(extra)
    {
        overrides.insert(k.to_string(), v.to_string());
    }
    let topic = TopicConfig::with_overrides(&BrokerConfig::default(), &overrides).expect("valid");
    LogConfig::from_topic(&topic, 4096, true)
}

/// Every record below the high watermark: (offset, key, value).
type Row = (i64, String, Option<String>);

async fn read_all(log: &PartitionLog) -> Vec<Row> {
    common::read_records(log)
        .await
        .into_iter()
        .map(|r| (r.offset, r.key.expect("keyed"), r.value))
        .collect()
}

async fn put(log: &PartitionLog, key: &str, value: Option<&str>, now_ms: i64) -> i64 {
    let b = build_keyed_batch(
        0,
        now_ms,
        &[(Some(key.as_bytes()), value.map(str::as_bytes))],
    );
    log.append(&b.freeze(), now_ms).expect("append").base_offset
}

/// 10 keys written 5 times over, then 3 deleted, then one more record so that everything
/// before it sits in sealed segments. Returns what a compacted log must hold: the latest
/// record of each key, with its offset.
async fn fill(log: &PartitionLog, now_ms: i64) -> BTreeMap<String, (i64, Option<String>)> {
    let mut latest = BTreeMap::new();
    for round in 0..5 {
        for k in 0..10 {
            let (key, value) = (format!("key-{k}"), format!("value-{k}-{round}"));
            let offset = put(log, &key, Some(&value), now_ms).await;
            latest.insert(key, (offset, Some(value)));
        }
        log.flush(now_ms).await.expect("flush");
    }
    for k in 0..3 {
        let key = format!("key-{k}");
        let offset = put(log, &key, None, now_ms).await;
        latest.insert(key, (offset, None));
    }
    // Fill the active segment so the tombstones' segment rolls and seals.
    for i in 0..40 {
        put(log, "filler", Some(&format!("f{i}")), now_ms).await;
    }
    log.flush(now_ms).await.expect("flush");
    log.flush(now_ms).await.expect("seal");
    latest
}

/// What `rows` say each key's latest record is.
fn latest_of(rows: &[Row]) -> BTreeMap<String, (i64, Option<String>)> {
    rows.iter()
        .filter(|(_, k, _)| k != "filler")
        .map(|(o, k, v)| (k.clone(), (*o, v.clone())))
        .collect()
}

#[test]
fn compaction_keeps_the_latest_value_per_key_at_its_offset_and_tombstones_expire() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let now = 1_000_000;
        let log = PartitionLog::open(&path.join("c-0"), "c", 0, compacted_config(), now)
            .await
            .expect("open");
        let latest = fill(&log, now).await;
        let before = read_all(&log).await;
        assert!(log.segment_count() > 3, "the fill rolled several segments");
        assert!(
            log.cleaning_due(now).is_some(),
            "a dirty compacted log is due"
        );

        let stats = log
            .clean(now, BUDGET)
            .await
            .expect("clean")
            .expect("did work");
        assert!(stats.records_removed >= 40, "{stats:?}");
        let after = read_all(&log).await;
        assert_eq!(
            latest_of(&after),
            latest,
            "the latest record of every key, at its offset"
        );
        let keyed: Vec<&Row> = after.iter().filter(|r| r.1 != "filler").collect();
        assert_eq!(keyed.len(), 10, "one record per key: {keyed:?}");
        assert!(after.len() < before.len());
        assert_eq!(
            log.log_start_offset(),
            0,
            "compaction never moves the log start"
        );
        let mut sorted = after.clone();
        sorted.sort();
        assert_eq!(sorted, after, "offsets stay in order");
        assert!(
            log.cleaning_due(now).is_none(),
            "nothing dirty is left and the tombstones' horizon is ahead"
        );

        // Tombstones are readable until delete.retention.ms after the clean that kept them,
        // a restart in between included (the checkpoint keeps their horizon)...
        let tombstones = |rows: &[Row]| rows.iter().filter(|r| r.2.is_none()).count();
        assert_eq!(tombstones(&after), 3);
        log.close().await.expect("close");
        drop(log);
        let log = PartitionLog::open(&path.join("c-0"), "c", 0, compacted_config(), now)
            .await
            .expect("reopen");
        assert_eq!(read_all(&log).await, after);
        let later = now + DELETE_RETENTION_MS;
        assert!(
            log.cleaning_due(later).is_some(),
            "a passed horizon makes the log due"
        );
        let merged = log
            .clean(later, BUDGET)
            .await
            .expect("clean")
            .expect("did work");
        assert!(
            log.segment_count() <= 3,
            "segments the first clean shrank are merged into one ({} left, {merged:?})",
            log.segment_count()
        );
        let expired = read_all(&log).await;
        assert_eq!(tombstones(&expired), 0, "then they are gone");
        let live: BTreeMap<_, _> = latest
            .into_iter()
            .filter(|(_, (_, v))| v.is_some())
            .collect();
        assert_eq!(latest_of(&expired), live);

        // ... and all of it survives a restart, checkpoint included.
        let checkpoint = log.cleaner_checkpoint();
        log.close().await.expect("close");
        drop(log);
        let log = PartitionLog::open(&path.join("c-0"), "c", 0, compacted_config(), later)
            .await
            .expect("reopen");
        assert_eq!(read_all(&log).await, expired);
        assert_eq!(log.cleaner_checkpoint(), checkpoint);
        assert!(log.cleaning_due(later).is_none());

        // Compacted topics refuse records without a key (INVALID_RECORD on the wire).
        let keyless = batch::build_batch(0, later, &[b"no key"]);
        assert!(matches!(
            log.append(&keyless.freeze(), later),
            Err(StorageError::InvalidRecord(_))
        ));
    });
}

fn crash_and_recover(point: CleanCrashPoint) {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let now = 1_000_000;
        let log_dir = path.join("c-0");
        let log = PartitionLog::open(&log_dir, "c", 0, compacted_config(), now)
            .await
            .expect("open");
        let mut latest = fill(&log, now).await;
        // A first clean shrinks the segments, so that the next one merges them.
        log.clean(now, BUDGET)
            .await
            .expect("clean")
            .expect("did work");
        for k in 3..10 {
            let (key, value) = (format!("key-{k}"), format!("value-{k}-again"));
            let offset = put(&log, &key, Some(&value), now).await;
            latest.insert(key, (offset, Some(value)));
        }
        for i in 0..40 {
            put(&log, "filler", Some(&format!("g{i}")), now).await;
        }
        log.flush(now).await.expect("flush");
        log.flush(now).await.expect("seal");
        let before = read_all(&log).await;
        log.inject_clean_crash(Some(point));
        assert!(
            log.clean(now, BUDGET).await.is_err(),
            "the injected crash stops the clean"
        );
        drop(log); // no close: the process died
        let files = count_logs(&log_dir);

        let log = PartitionLog::open(&log_dir, "c", 0, compacted_config(), now)
            .await
            .expect("recover");
        let recovered = read_all(&log).await;
        if point == CleanCrashPoint::Renamed {
            // The merged file took the first segment's place; the rest of its group is still
            // on disk, and recovery drops it.
            assert!(
                log.segment_count() < files && count_logs(&log_dir) < files,
                "merge leftovers dropped ({} segments, {files} files before)",
                log.segment_count()
            );
        }
        assert_eq!(latest_of(&recovered), latest, "after a crash at {point:?}");
        assert!(recovered.len() <= before.len());
        assert!(
            recovered.windows(2).all(|w| w[0].0 < w[1].0),
            "every offset once, in order"
        );
        let last_filler = |rows: &[Row]| rows.iter().rev().find(|r| r.1 == "filler").cloned();
        assert_eq!(last_filler(&recovered), last_filler(&before));
        assert!(
            no_leftovers(&log_dir),
            "stale .cleaned files are removed at start"
        );
        // The interrupted clean runs again to completion.
        log.flush(now).await.expect("reseal");
        let log = Rc::new(log);
        log.clean(now, BUDGET).await.expect("clean again");
        assert_eq!(latest_of(&read_all(&log).await), latest);
    });
}

fn count_logs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count()
}

fn no_leftovers(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("dir").all(|e| {
        !e.expect("entry")
            .path()
            .to_string_lossy()
            .ends_with(".cleaned")
    })
}

#[test]
fn a_crash_after_the_cleaned_file_is_written_loses_nothing() {
    crash_and_recover(CleanCrashPoint::CleanedWritten);
}

#[test]
fn a_crash_after_the_indexes_are_removed_loses_nothing() {
    crash_and_recover(CleanCrashPoint::IndexesRemoved);
}

#[test]
fn a_crash_after_the_rename_loses_nothing() {
    crash_and_recover(CleanCrashPoint::Renamed);
}

/// `min.compaction.lag.ms` keeps young records out of a clean however dirty the log is;
/// `max.compaction.lag.ms` makes a log due once its oldest dirty record is that old, however
/// clean it looks by `min.cleanable.dirty.ratio`.
#[test]
fn compaction_lags_bound_when_a_log_is_cleaned() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let now = 1_000_000;

        // Records stamped `now` may not be compacted before now + 60 s.
        let young = config_with(&[("min.compaction.lag.ms", "60000")]);
        let log = PartitionLog::open(&path.join("young-0"), "young", 0, young, now)
            .await
            .expect("open");
        fill(&log, now).await;
        assert_eq!(
            log.cleaning_due(now + 59_000),
            None,
            "every segment is too young"
        );
        assert!(log
            .clean(now + 59_000, BUDGET)
            .await
            .expect("clean")
            .is_none());
        assert!(log.cleaning_due(now + 61_000).is_some(), "old enough");
        let stats = log
            .clean(now + 61_000, BUDGET)
            .await
            .expect("clean")
            .expect("cleaned");
        assert!(stats.records_removed > 0);

        // A dirty ratio of 1.0 is never reached while clean segments exist; the max lag
        // forces the clean anyway.
        // (Tombstones kept for long, so that their horizon does not make the log due first.)
        let lazy = [
            ("min.cleanable.dirty.ratio", "1.0"),
            ("max.compaction.lag.ms", "5000"),
            ("delete.retention.ms", "100000"),
        ];
        let log = PartitionLog::open(&path.join("lazy-0"), "lazy", 0, config_with(&lazy), now)
            .await
            .expect("open");
        fill(&log, now).await;
        log.clean(now, BUDGET)
            .await
            .expect("clean")
            .expect("a first clean");
        // More updates: dirty again, but below a ratio of 1.0.
        for k in 0..10 {
            put(&log, &format!("key-{k}"), Some("again"), now).await;
        }
        for i in 0..40 {
            put(&log, "filler", Some(&format!("g{i}")), now).await;
        }
        log.flush(now).await.expect("flush");
        log.flush(now).await.expect("seal");
        assert_eq!(
            log.cleaning_due(now + 4_000),
            None,
            "ratio not reached, lag not passed"
        );
        assert!(
            log.cleaning_due(now + 6_000).is_some(),
            "the max lag passed"
        );
    });
}
