//! The per-core log cleaner: compacts the logs of topics whose `cleanup.policy` holds `compact`
//! (`__consumer_offsets` among them), one log at a time, dirtiest first.
//!
//! It runs in its own glommio task queue with a small share of the core, so produce and fetch
//! keep their latency while it works; its I/O is paced by `log.cleaner.io.max.bytes.per.second`
//! and its memory bounded by its share of `log.cleaner.dedupe.buffer.size`. The cleaning itself
//! (what is kept, the crash-safe swap) lives in sluice-storage.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{Latency, Shares};
use sluice_storage::{CleanBudget, PartitionLog};

use crate::shard::{now_ms, Shard};

/// The cleaner's share of the core against the default queue's 1000: it gets the CPU the
/// request path leaves idle, and about a tenth of it when the core is saturated.
const CLEANER_SHARES: usize = 100;

/// Starts this core's cleaner when `log.cleaner.enable` is set.
pub fn start(shard: Rc<Shard>) {
    if !shard.broker.log_cleaner_enable {
        return;
    }
    let queue = glommio::executor().create_task_queue(
        Shares::Static(CLEANER_SHARES),
        Latency::NotImportant,
        "log-cleaner",
    );
    if let Ok(task) = glommio::spawn_local_into(run(shard), queue) {
        task.detach();
    }
}

async fn run(shard: Rc<Shard>) {
    let backoff = Duration::from_millis(shard.broker.log_cleaner_backoff_ms);
    let budget = CleanBudget {
        key_map_bytes: (shard.broker.log_cleaner_dedupe_buffer_size / shard.cores().max(1) as u64)
            as usize,
        io_bytes_per_second: shard.broker.log_cleaner_io_max_bytes_per_second
            / shard.cores().max(1) as f64,
    };
    while !shard.stopping.get() {
        let Some(log) = dirtiest(&shard) else {
            glommio::timer::sleep(backoff).await;
            continue;
        };
        let started = Instant::now();
        match log.clean(now_ms(), budget).await {
            Ok(Some(stats)) => {
                if stats.segments_rewritten + stats.segments_removed > 0 {
                    let seconds = started.elapsed().as_secs_f64();
                    eprintln!(
                        "sluice: cleaned {}-{}: {} segments rewritten, {} removed, {} records \
                         removed, {} bytes read, {} written, clean to offset {}; {:.1} MB of log \
                         cleaned in {:.3} s ({:.1} MB/s)",
                        log.topic,
                        log.partition,
                        stats.segments_rewritten,
                        stats.segments_removed,
                        stats.records_removed,
                        stats.bytes_read,
                        stats.bytes_written,
                        stats.cleaned_to,
                        stats.bytes_cleaned as f64 / 1e6,
                        seconds,
                        stats.bytes_cleaned as f64 / 1e6 / seconds.max(1e-9)
                    );
                }
            }
            Ok(None) => glommio::timer::sleep(backoff).await,
            Err(e) => {
                eprintln!(
                    "sluice: cleaning {}-{} failed: {e}",
                    log.topic, log.partition
                );
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

/// The due log with the largest dirty share on this core.
fn dirtiest(shard: &Shard) -> Option<Rc<PartitionLog>> {
    let now = now_ms();
    shard
        .logs
        .borrow()
        .values()
        .filter_map(|log| log.cleaning_due(now).map(|ratio| (ratio, log.clone())))
        .max_by_key(|(ratio, _)| *ratio)
        .map(|(_, log)| log)
}
