//! The storage half of partition replication, on a real disk: a follower copies its leader's
//! batches byte for byte (and their producer state and transactions with them), the high
//! watermark is capped by what the in-sync replicas hold, and a follower whose tail diverged
//! truncates it while its log is closed.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures_lite::future::poll_once;
use sluice_core::config::BrokerConfig;
use sluice_core::topic::{TimestampType, TopicConfig};
use sluice_storage::batch::{self, build_batch, build_keyed_batch, BatchHeader};
use sluice_storage::log::{restart_dir, truncate_dir, Isolation};
use sluice_storage::txn::Marker;
use sluice_storage::{BatchError, CleanBudget, LogConfig, PartitionLog, StorageError, SyncPolicy};

mod common;
use common::{probe, read_records, run, scratch};

fn config(segment_bytes: u64) -> LogConfig {
    let mut topic = TopicConfig::from_broker(&BrokerConfig::default());
    topic.segment_bytes = segment_bytes;
    LogConfig::from_topic(&topic, 4096, true)
}

async fn open(dir: &Path, config: LogConfig) -> std::rc::Rc<PartitionLog> {
    PartitionLog::open(dir, "r", 0, config, 0)
        .await
        .expect("open")
}

/// A batch of one record from `pid` at `seq`, transactional or not.
fn batch_of(pid: i64, epoch: i16, seq: i32, transactional: bool, value: &str) -> Bytes {
    let mut b = build_batch(0, 1_000, &[value.as_bytes()]);
    if transactional {
        b[22] |= 0x10;
    }
    batch::set_producer(&mut b, pid, epoch, seq);
    b.freeze()
}

fn plain(value: &str) -> Bytes {
    build_batch(0, 1_000, &[value.as_bytes()]).freeze()
}

/// The batches of `bytes`: (position, header).
fn headers(bytes: &[u8]) -> Vec<(usize, BatchHeader)> {
    batch::split_stored(bytes).expect("whole valid batches")
}

/// Every written byte of `log`, read as a follower reads it.
async fn replica_bytes(log: &PartitionLog) -> Bytes {
    let mut out = BytesMut::new();
    let mut offset = log.log_start_offset();
    loop {
        let read = log
            .read_isolated(offset, 1 << 20, true, Isolation::Replica)
            .await
            .expect("replica read");
        let bytes = read.records.to_bytes();
        let Some((_, last)) = headers_or_none(&bytes).last().copied() else {
            return out.freeze();
        };
        out.extend_from_slice(&bytes);
        offset = last.last_offset() + 1;
    }
}

fn headers_or_none(bytes: &[u8]) -> Vec<(usize, BatchHeader)> {
    if bytes.is_empty() {
        Vec::new()
    } else {
        headers(bytes)
    }
}

/// Fetches from `leader` what `follower` lacks, a few KiB at a time, as a follower's fetch loop
/// does; then flushes the follower.
async fn replicate(leader: &PartitionLog, follower: &PartitionLog) {
    loop {
        let read = leader
            .read_isolated(follower.log_end_offset(), 4096, true, Isolation::Replica)
            .await
            .expect("replica read");
        if read.records.is_empty() {
            break;
        }
        follower
            .append_replicated(&read.records.to_bytes(), 0)
            .expect("replicated append");
    }
    follower.flush(0).await.expect("flush follower");
}

/// (offset, value) of every record below the high watermark.
async fn values(log: &PartitionLog) -> Vec<(i64, String)> {
    read_records(log)
        .await
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect()
}

fn offsets_of(records: &sluice_storage::Records) -> Vec<i64> {
    headers_or_none(&records.to_bytes())
        .iter()
        .map(|(_, h)| h.base_offset)
        .collect()
}

fn commit() -> Marker {
    Marker {
        commit: true,
        coordinator_epoch: 0,
    }
}

#[test]
fn a_follower_holds_the_leaders_exact_bytes_and_refuses_gaps_overlaps_and_damage() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let leader = open(&path.join("leader"), config(1 << 30)).await;
        // Small segments on the follower: its copy rolls (and snapshots) on its own.
        let mut follower_config = config(800);
        // The follower never restamps: the leader's timestamps are copied as they are.
        follower_config.timestamp_type = TimestampType::LogAppendTime;
        let follower = open(&path.join("follower"), follower_config.clone()).await;
        for i in 0..5 {
            leader
                .append(&plain(&format!("e0-{i}")), 0)
                .expect("append");
        }
        // Two batches in one append, then batches under a later leader epoch.
        let mut two = BytesMut::from(&build_batch(0, 2_000, &[b"a", b"b"])[..]);
        two.extend_from_slice(&build_batch(0, 2_001, &[b"c"]));
        leader.append(&two.freeze(), 0).expect("append two");
        leader.set_leader_epoch(3);
        for i in 0..30 {
            leader
                .append(&plain(&format!("e3-{i}")), 0)
                .expect("append");
        }
        let keyed = build_keyed_batch(0, 3_000, &[(Some(b"k"), Some(b"v")), (None, Some(b"w"))]);
        leader.append(&keyed.freeze(), 0).expect("append keyed");
        let empty = leader
            .read_isolated(0, 1 << 20, true, Isolation::Replica)
            .await
            .expect("read");
        assert!(
            empty.records.is_empty(),
            "bytes only in memory are not served to a follower"
        );
        leader.flush(0).await.expect("flush");
        replicate(&leader, &follower).await;

        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(follower.log_end_offset(), 40);
        assert_eq!(follower.high_watermark(), 40);
        assert!(follower.segment_count() > 2, "the follower rolled segments");
        let copied = replica_bytes(&follower).await;
        assert_eq!(copied, replica_bytes(&leader).await, "byte for byte");
        let epochs: Vec<(i64, i32)> = headers(&copied)
            .iter()
            .map(|(_, h)| (h.base_offset, h.partition_leader_epoch))
            .collect();
        assert_eq!(epochs.len(), 38);
        for (offset, epoch) in &epochs {
            assert_eq!(*epoch, if *offset < 8 { 0 } else { 3 }, "epoch at {offset}");
        }
        assert_eq!(values(&follower).await, values(&leader).await);

        // It all survives a restart of the follower.
        follower.close().await.expect("close");
        drop(follower);
        let follower = open(&path.join("follower"), follower_config).await;
        assert_eq!(replica_bytes(&follower).await, replica_bytes(&leader).await);

        // Three more batches on the leader: 40, 41, 42.
        for i in 0..3 {
            leader
                .append(&plain(&format!("more-{i}")), 0)
                .expect("append");
        }
        leader.flush(0).await.expect("flush");
        let more = leader
            .read_isolated(40, 1 << 20, true, Isolation::Replica)
            .await
            .expect("read")
            .records
            .to_bytes();
        let at: Vec<(usize, usize)> = headers(&more)
            .iter()
            .map(|(pos, h)| (*pos, *pos + h.total_bytes()))
            .collect();
        let batch_at = |i: usize| more.slice(at[i].0..at[i].1);
        let earlier = leader
            .read_isolated(39, 1, true, Isolation::Replica)
            .await
            .expect("read")
            .records
            .to_bytes();
        let refused =
            |result: sluice_storage::error::Result<_>, expected: i64, found: i64| match result {
                Err(StorageError::NotContiguous {
                    expected: e,
                    found: f,
                }) => assert_eq!((e, f), (expected, found)),
                other => panic!("expected NotContiguous, got {other:?}"),
            };
        // A gap, an overlap, and a second batch that does not follow the first.
        refused(follower.append_replicated(&batch_at(1), 0), 40, 41);
        refused(follower.append_replicated(&earlier, 0), 40, 38); // the batch 38..39
        let mut skipping = BytesMut::from(&batch_at(0)[..]);
        skipping.extend_from_slice(&batch_at(2));
        refused(follower.append_replicated(&skipping.freeze(), 0), 41, 42);
        assert_eq!(follower.log_end_offset(), 40, "nothing appended");
        // A damaged batch.
        let mut damaged = BytesMut::from(&batch_at(0)[..]);
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(matches!(
            follower.append_replicated(&damaged.freeze(), 0),
            Err(StorageError::Batch(BatchError::CrcMismatch))
        ));
        assert_eq!(follower.log_end_offset(), 40, "nothing appended");
        // The right batches are accepted, and the copy is whole again.
        let info = follower.append_replicated(&more, 0).expect("append");
        assert_eq!((info.base_offset, info.last_offset), (40, 42));
        assert_eq!(info.log_append_time_ms, -1, "nothing stamped");
        follower.flush(0).await.expect("flush");
        assert_eq!(replica_bytes(&follower).await, replica_bytes(&leader).await);
    });
}

#[test]
fn producer_state_and_transactions_replicate_with_the_batches() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let leader = open(&path.join("leader"), config(1 << 30)).await;
        let follower_dir = path.join("follower");
        let follower = open(&follower_dir, config(1 << 30)).await;
        // 0, 1: producer 7; 2: producer 9's transaction begins; 3: producer 7 again.
        leader.append(&batch_of(7, 0, 0, false, "a"), 0).expect("a");
        leader.append(&batch_of(7, 0, 1, false, "b"), 0).expect("b");
        leader.append(&batch_of(9, 0, 0, true, "t"), 0).expect("t");
        leader.append(&batch_of(7, 0, 2, false, "c"), 0).expect("c");
        leader.flush(0).await.expect("flush");
        replicate(&leader, &follower).await;

        assert_eq!(follower.open_transactions(), vec![(2, 9)]);
        assert_eq!(follower.high_watermark(), 4);
        assert_eq!(
            follower.last_stable_offset(),
            2,
            "the open transaction holds it"
        );
        let committed = follower
            .read_isolated(0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert_eq!(offsets_of(&committed.records), vec![0, 1]);

        // The COMMIT marker reaches the follower by replication and releases the LSO.
        let marker = leader.append_marker(9, 0, commit(), 0).expect("marker");
        assert_eq!(marker.base_offset, 4);
        leader.flush(0).await.expect("flush");
        replicate(&leader, &follower).await;
        assert!(follower.open_transactions().is_empty());
        assert_eq!(follower.high_watermark(), 5);
        assert_eq!(follower.last_stable_offset(), 5);
        assert_eq!(replica_bytes(&follower).await, replica_bytes(&leader).await);

        // The follower becomes leader: a retry of producer 7's last batch is a duplicate,
        // answered with its original offset; a batch out of sequence is refused; the next one
        // is accepted.
        let check = |log: &PartitionLog| {
            let dup = log
                .append(&batch_of(7, 0, 2, false, "c"), 0)
                .expect("a retry");
            assert_eq!((dup.base_offset, dup.last_offset), (3, 3));
            assert_eq!(log.log_end_offset(), 5, "a duplicate is not appended");
            assert!(matches!(
                log.append(&batch_of(7, 0, 9, false, "gap"), 0),
                Err(StorageError::Sequence(_))
            ));
        };
        check(&follower);
        // Recovery rebuilds the same producer state from the replicated batches.
        drop(follower);
        let follower = open(&follower_dir, config(1 << 30)).await;
        check(&follower);
        let next = follower
            .append(&batch_of(7, 0, 3, false, "d"), 0)
            .expect("next sequence");
        assert_eq!(next.base_offset, 5);
        // Producer 9's transaction ended: it may write outside one again.
        follower
            .append(&batch_of(9, 0, 1, false, "after"), 0)
            .expect("after the commit");
    });
}

#[test]
fn the_high_watermark_cap_bounds_consumers_but_not_replicas() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let log = open(&path.join("capped"), config(1 << 30)).await;
        log.set_high_watermark_cap(4);
        assert_eq!(log.high_watermark(), 0);
        for i in 0..10 {
            log.append(&plain(&format!("v{i}")), 0).expect("append");
        }
        log.flush(0).await.expect("flush");
        assert_eq!(log.written_offset(), 10);
        assert_eq!(log.durable_offset(), 10);
        assert_eq!(log.high_watermark(), 4, "capped below the durable end");
        let read = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(offsets_of(&read.records), vec![0, 1, 2, 3]);
        assert_eq!(read.high_watermark, 4);
        assert!(log
            .read(4, 1 << 20, true)
            .await
            .expect("read")
            .records
            .is_empty());
        let replica = log
            .read_isolated(4, 1 << 20, true, Isolation::Replica)
            .await
            .expect("replica read");
        assert_eq!(offsets_of(&replica.records), (4..10).collect::<Vec<_>>());
        assert_eq!(replica.high_watermark, 4);
        assert_eq!(replica.log_end_offset, 10);
        assert!(replica.aborted.is_empty());

        // Raising the cap advances the high watermark and wakes long-polling fetches.
        let mut woken = std::pin::pin!(log.high_watermark_changed.notified());
        assert!(poll_once(woken.as_mut()).await.is_none());
        log.set_high_watermark_cap(7);
        assert!(poll_once(woken.as_mut()).await.is_some(), "woken");
        assert_eq!(log.high_watermark(), 7);
        let read = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(offsets_of(&read.records), (0..7).collect::<Vec<_>>());
        // A lower cap never moves it back.
        log.set_high_watermark_cap(2);
        assert_eq!(log.high_watermark(), 7);
        // A cap past the durable end: the durable end bounds it.
        log.append(&plain("v10"), 0).expect("append");
        log.set_high_watermark_cap(i64::MAX);
        assert_eq!(log.high_watermark(), 10);
        log.flush(0).await.expect("flush");
        assert_eq!(log.high_watermark(), 11);

        // A reset lowers it (never below the log start), and then caps it.
        log.reset_high_watermark(5);
        assert_eq!(log.high_watermark(), 5);
        assert_eq!(log.last_stable_offset(), 5);
        let read = log.read(0, 1 << 20, true).await.expect("read");
        assert_eq!(offsets_of(&read.records), (0..5).collect::<Vec<_>>());
        log.flush(0).await.expect("flush");
        assert_eq!(log.high_watermark(), 5, "the reset value is the cap");
        log.reset_high_watermark(-3);
        assert_eq!(log.high_watermark(), 0, "never below the log start");
        log.reset_high_watermark(8);
        assert_eq!(log.high_watermark(), 8, "a higher reset advances to it");

        // The LSO never passes a lowered high watermark.
        log.set_high_watermark_cap(i64::MAX);
        log.append(&batch_of(7, 0, 0, true, "txn"), 0).expect("txn");
        log.flush(0).await.expect("flush");
        assert_eq!(log.high_watermark(), 12);
        assert_eq!(log.last_stable_offset(), 11);
        log.reset_high_watermark(9);
        assert_eq!(log.last_stable_offset(), 9);
        let committed = log
            .read_isolated(0, 1 << 20, true, Isolation::ReadCommitted)
            .await
            .expect("read");
        assert_eq!(offsets_of(&committed.records), (0..9).collect::<Vec<_>>());
        log.set_high_watermark_cap(i64::MAX);
        assert_eq!(log.high_watermark(), 12);
        assert_eq!(log.last_stable_offset(), 11);

        // A long-polling replica fetch waits for the next batch to be written.
        let mut waiting = std::pin::pin!(log.wait_written_past(12));
        assert!(poll_once(waiting.as_mut()).await.is_none());
        log.append(&plain("v12"), 0).expect("append");
        assert!(
            poll_once(waiting.as_mut()).await.is_none(),
            "appended is not written"
        );
        log.flush(0).await.expect("flush");
        assert!(poll_once(waiting.as_mut()).await.is_some(), "written");
        assert_eq!(log.written_offset(), 13);

        // Under an interval policy the written end bounds the high watermark.
        let mut interval = config(1 << 30);
        interval.sync = SyncPolicy::Interval {
            messages: 1_000_000,
            ms: -1,
        };
        let relaxed = open(&path.join("relaxed"), interval).await;
        relaxed.append(&plain("x"), 0).expect("append");
        relaxed.flush(0).await.expect("flush");
        assert!(
            !relaxed.needs_flush() && relaxed.needs_sync(),
            "written, not synced"
        );
        assert_eq!(relaxed.durable_offset(), 1);
        assert_eq!(relaxed.high_watermark(), 1);
    });
}

/// File names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The offsets in `dir`'s file names with this extension (`<offset>.<ext>`).
fn named(dir: &Path, ext: &str) -> Vec<i64> {
    files(dir)
        .iter()
        .filter_map(|n| n.strip_suffix(&format!(".{ext}"))?.parse().ok())
        .collect()
}

fn producer_ids(log: &PartitionLog) -> Vec<i64> {
    log.producers().iter().map(|(id, _)| *id).collect()
}

#[test]
fn truncation_in_a_segment_drops_a_straddling_batch_whole_and_the_log_goes_on() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let at = path.join("t-0");
        let log = open(&at, config(1 << 30)).await;
        // 0..4: producer 1; 5..7: one batch of three; 8, 9: producer 2.
        for seq in 0..5 {
            log.append(&batch_of(1, 0, seq, false, &format!("p1-{seq}")), 0)
                .expect("append");
        }
        log.append(&build_batch(0, 1_000, &[b"x5", b"x6", b"x7"]).freeze(), 0)
            .expect("append three");
        for seq in 0..2 {
            log.append(&batch_of(2, 0, seq, false, &format!("p2-{seq}")), 0)
                .expect("append");
        }
        log.close().await.expect("close");
        let before = values(&log).await;
        drop(log);
        assert!(
            named(&at, "snapshot").contains(&10),
            "close took a snapshot"
        );
        assert!(named(&at, "index").contains(&0));

        // Past the end: nothing changes.
        assert_eq!(truncate_dir(&at, 1_000).await.expect("truncate"), 10);
        // 6 is inside the batch 5..7, which goes whole.
        assert_eq!(truncate_dir(&at, 6).await.expect("truncate"), 5);
        assert!(named(&at, "snapshot").iter().all(|o| *o <= 5));
        assert!(named(&at, "index").is_empty() && named(&at, "timeindex").is_empty());

        let log = open(&at, config(1 << 30)).await;
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.high_watermark(), 5);
        assert_eq!(values(&log).await, before[..5].to_vec());
        assert_eq!(
            producer_ids(&log),
            vec![1],
            "producer 2 wrote only past the cut"
        );
        let dup = log
            .append(&batch_of(1, 0, 4, false, "p1-4"), 0)
            .expect("retry");
        assert_eq!(dup.base_offset, 4, "a duplicate of a kept batch");
        let next = log
            .append(&batch_of(1, 0, 5, false, "p1-5"), 0)
            .expect("next");
        assert_eq!(next.base_offset, 5);
        // The cut left the file at an unaligned length: the next write rewrites its last
        // partial block, and a crash after it loses nothing.
        for i in 0..3 {
            log.append(&plain(&format!("after-{i}")), 0)
                .expect("append");
        }
        log.flush(0).await.expect("flush");
        let written = values(&log).await;
        assert_eq!(written.len(), 9);
        drop(log);
        let log = open(&at, config(1 << 30)).await;
        assert_eq!(log.log_end_offset(), 9);
        assert_eq!(values(&log).await, written);
        assert_eq!(producer_ids(&log), vec![1]);
    });
}

/// 100 one-record batches in small segments, written by producers 100..109 (ten batches
/// each, in order). Returns the log's values and the segment bases.
async fn many_segments(at: &Path, close: bool) -> (Vec<(i64, String)>, Vec<i64>) {
    let log = open(at, config(1000)).await;
    for i in 0..100i64 {
        let pid = 100 + i / 10;
        let b = batch_of(pid, 0, (i % 10) as i32, false, &format!("v{i}"));
        log.append(&b, 0).expect("append");
        if i % 7 == 0 {
            log.flush(0).await.expect("flush");
        }
    }
    log.flush(0).await.expect("flush");
    log.flush(0).await.expect("seal");
    if close {
        log.close().await.expect("close");
    }
    let all = values(&log).await;
    assert_eq!(all.len(), 100);
    drop(log);
    let bases = named(at, "log");
    assert!(bases.len() > 6, "many segments: {bases:?}");
    (all, bases)
}

/// Reopens a truncated log and checks it: its end, its records, its producers; then appends
/// more and checks again after a crash.
async fn check_truncated(at: &Path, end: i64, all: &[(i64, String)]) {
    let log = open(at, config(1000)).await;
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(values(&log).await, all[..end as usize].to_vec());
    let expected: Vec<i64> = (0..end)
        .map(|o| 100 + o / 10)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        producer_ids(&log),
        expected,
        "producers of the kept batches only"
    );
    for i in 0..20 {
        let info = log.append(&plain(&format!("new-{i}")), 0).expect("append");
        assert_eq!(info.base_offset, end + i);
    }
    log.flush(0).await.expect("flush");
    log.flush(0).await.expect("seal");
    drop(log);
    let log = open(at, config(1000)).await;
    assert_eq!(log.log_end_offset(), end + 20);
    let again = values(&log).await;
    assert_eq!(again[..end as usize], all[..end as usize]);
    assert_eq!(again[end as usize].1, "new-0");
    assert_eq!(again.len(), end as usize + 20);
}

#[test]
fn truncation_at_a_segment_boundary_and_across_segments() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        // Exactly at a segment's base: it and every later one go whole.
        let at = path.join("boundary");
        let (all, bases) = many_segments(&at, true).await;
        let base = bases[3];
        assert_eq!(truncate_dir(&at, base).await.expect("truncate"), base);
        assert_eq!(named(&at, "log"), bases[..3].to_vec());
        for ext in ["index", "timeindex", "txnindex", "snapshot"] {
            assert!(
                named(&at, ext)
                    .iter()
                    .all(|o| *o < base || (ext == "snapshot" && *o == base)),
                "{ext}: {:?}",
                files(&at)
            );
        }
        assert!(
            !named(&at, "index").contains(&bases[2]),
            "the cut segment is rescanned"
        );
        check_truncated(&at, base, &all).await;

        // Inside an early segment of a log that crashed (no clean close): many segments go.
        let at = path.join("across");
        let (all, bases) = many_segments(&at, false).await;
        let offset = bases[1] + 2;
        assert!(offset < bases[2]);
        assert_eq!(truncate_dir(&at, offset).await.expect("truncate"), offset);
        assert_eq!(named(&at, "log"), bases[..2].to_vec());
        assert!(named(&at, "snapshot").iter().all(|o| *o <= offset));
        check_truncated(&at, offset, &all).await;
    });
}

#[test]
fn truncation_at_or_below_the_first_base_leaves_an_empty_log_starting_there() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let at = path.join("zero");
        many_segments(&at, true).await;
        assert_eq!(truncate_dir(&at, 0).await.expect("truncate"), 0);
        assert_eq!(files(&at), vec![format!("{:020}.log", 0)]);
        let log = open(&at, config(1000)).await;
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
        assert_eq!(log.producer_count(), 0);
        assert_eq!(
            log.append(&plain("first"), 0).expect("append").base_offset,
            0
        );
        drop(log);

        // A log whose start retention moved: truncating below its first base, or exactly to it.
        for (name, below) in [("below", true), ("at", false)] {
            let at = path.join(name);
            many_segments(&at, true).await;
            let mut retained = config(1000);
            retained.retention_bytes = 3000;
            let log = open(&at, retained).await;
            assert!(log.enforce_retention(0).await.expect("retention") > 0);
            let start = log.log_start_offset();
            assert!(start > 10);
            log.close().await.expect("close");
            drop(log);
            let offset = if below { start - 7 } else { start };
            assert_eq!(truncate_dir(&at, offset).await.expect("truncate"), offset);
            let logs: Vec<String> = files(&at)
                .into_iter()
                .filter(|n| !n.starts_with('.'))
                .collect();
            assert_eq!(logs, vec![format!("{offset:020}.log")], "one empty segment");
            let log = open(&at, config(1000)).await;
            assert_eq!(
                (log.log_start_offset(), log.log_end_offset()),
                (offset, offset)
            );
            assert_eq!(log.producer_count(), 0, "no batch left, no producer");
            let info = log.append(&plain("restart"), 0).expect("append");
            assert_eq!(info.base_offset, offset);
            log.flush(0).await.expect("flush");
            drop(log);
            let log = open(&at, config(1000)).await;
            assert_eq!(values(&log).await, vec![(offset, "restart".to_string())]);
        }
    });
}

#[test]
fn a_log_behind_its_leaders_start_restarts_empty_there() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        let at = path.join("behind");
        many_segments(&at, true).await;
        // The leader's log starts at 250, past this log's end (100).
        restart_dir(&at, 250).await.expect("restart");
        let logs: Vec<String> = files(&at)
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(logs, vec![format!("{:020}.log", 250)], "one empty segment");
        let log = open(&at, config(1000)).await;
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (250, 250));
        assert_eq!(log.producer_count(), 0, "no batch left, no producer");
        assert_eq!(
            log.append(&plain("copied"), 0).expect("append").base_offset,
            250
        );
        log.flush(0).await.expect("flush");
        drop(log);
        let log = open(&at, config(1000)).await;
        assert_eq!(values(&log).await, vec![(250, "copied".to_string())]);
        // An empty directory (a replica that never held anything) restarts the same way.
        let at = path.join("empty");
        std::fs::create_dir_all(&at).expect("dir");
        restart_dir(&at, 7).await.expect("restart");
        let log = open(&at, config(1000)).await;
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
    });
}

/// The settings of a compacted topic with small segments.
fn compacted_config() -> LogConfig {
    let mut overrides = BTreeMap::new();
    for (k, v) in [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "2000"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ] {
        overrides.insert(k.to_string(), v.to_string());
    }
    let topic = TopicConfig::with_overrides(&BrokerConfig::default(), &overrides).expect("valid");
    LogConfig::from_topic(&topic, 4096, true)
}

const NOW_MS: i64 = 1_000_000;

fn keyed(key: &str, value: &str) -> Bytes {
    build_keyed_batch(0, NOW_MS, &[(Some(key.as_bytes()), Some(value.as_bytes()))]).freeze()
}

/// Eight keys written six times over and some filler, cleaned and closed: sealed segments
/// whose surviving records sit between offset gaps. Returns the surviving offsets.
async fn cleaned_log(at: &Path) -> Vec<i64> {
    let log = PartitionLog::open(at, "c", 0, compacted_config(), NOW_MS)
        .await
        .expect("open");
    for round in 0..6 {
        for k in 0..8 {
            let value = format!("{round}");
            log.append(&keyed(&format!("key-{k}"), &value), NOW_MS)
                .expect("append");
        }
        log.flush(NOW_MS).await.expect("flush");
    }
    for i in 0..40 {
        log.append(&keyed("filler", &format!("{i}")), NOW_MS)
            .expect("append");
    }
    log.flush(NOW_MS).await.expect("flush");
    log.flush(NOW_MS).await.expect("seal");
    let budget = CleanBudget {
        key_map_bytes: 1 << 20,
        io_bytes_per_second: f64::MAX,
    };
    log.clean(NOW_MS, budget)
        .await
        .expect("clean")
        .expect("cleaned");
    let kept: Vec<i64> = read_records(&log).await.iter().map(|r| r.offset).collect();
    log.close().await.expect("close");
    kept
}

/// Reopens a truncated compacted log: it ends at `end` and holds `survivors`; then it takes
/// one more record, and a restart keeps everything.
async fn check_compacted(at: &Path, end: i64, survivors: &[i64]) {
    let log = PartitionLog::open(at, "c", 0, compacted_config(), NOW_MS)
        .await
        .expect("reopen");
    assert_eq!(log.log_end_offset(), end);
    let reread: Vec<i64> = read_records(&log).await.iter().map(|r| r.offset).collect();
    assert_eq!(reread, survivors, "nothing kept is lost to a gap");
    let info = log.append(&keyed("key-0", "new"), NOW_MS).expect("append");
    assert_eq!(info.base_offset, end);
    log.flush(NOW_MS).await.expect("flush");
    drop(log);
    let log = PartitionLog::open(at, "c", 0, compacted_config(), NOW_MS)
        .await
        .expect("reopen");
    let mut expected = survivors.to_vec();
    expected.push(end);
    let reread: Vec<i64> = read_records(&log).await.iter().map(|r| r.offset).collect();
    assert_eq!(reread, expected);
}

#[test]
fn truncation_inside_a_compacted_segment_keeps_the_records_around_its_gaps() {
    let dir = scratch();
    let path = dir.path().to_path_buf();
    run(move || async move {
        probe(&path).await;
        // Inside a cleaned segment whose records begin past its base: recovery would cut it
        // at that gap if it were the last segment, so an empty one follows it.
        let at = path.join("inside");
        let kept = cleaned_log(&at).await;
        let bases = named(&at, "log");
        let first = kept[0];
        let holder = *bases
            .iter()
            .rev()
            .find(|b| **b <= first)
            .expect("a segment");
        assert!(
            holder < first,
            "the cleaner left a gap at the segment's start"
        );
        let offset = first + 3;
        assert_eq!(&kept[..4], &[first, first + 1, first + 2, first + 3]);
        assert!(bases.iter().any(|b| *b > offset), "segments past the cut");
        assert_eq!(truncate_dir(&at, offset).await.expect("truncate"), offset);
        let mut expected: Vec<i64> = bases.iter().copied().filter(|b| *b <= holder).collect();
        expected.push(offset);
        assert_eq!(
            named(&at, "log"),
            expected,
            "an empty segment follows the cut one"
        );
        check_compacted(&at, offset, &kept[..3]).await;

        // At a surviving record after records compaction removed: the new end is at or
        // below it, past the last record kept.
        let at = path.join("after-gap");
        let kept = cleaned_log(&at).await;
        let last_base = *named(&at, "log").last().expect("segments");
        let offset = kept
            .windows(2)
            .find(|w| w[1] > w[0] + 1 && w[1] < last_base)
            .map(|w| w[1])
            .expect("a gap the cleaner left");
        let survivors: Vec<i64> = kept.iter().copied().filter(|o| *o < offset).collect();
        let end = truncate_dir(&at, offset).await.expect("truncate");
        assert!(
            end > *survivors.last().expect("records before the cut") && end <= offset,
            "end {end}, cut at {offset}, survivors {survivors:?}"
        );
        check_compacted(&at, end, &survivors).await;
    });
}
