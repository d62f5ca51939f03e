//! Group commit for one core: every partition log of the core with appended bytes is flushed in
//! one round, the rounds run back to back, and whatever is appended while a round is in flight
//! rides in the next one. One fdatasync thereby covers all the batches that arrived during the
//! previous round, from all producers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use crate::log::PartitionLog;
use crate::notify::Notify;

#[derive(Default)]
pub struct Flusher {
    dirty: RefCell<Vec<Rc<PartitionLog>>>,
    wake: Notify,
    /// Logs under an interval sync policy that have written-but-unsynced bytes.
    unsynced: RefCell<Vec<Rc<PartitionLog>>>,
    stopping: std::cell::Cell<bool>,
}

impl Flusher {
    pub fn new() -> Rc<Flusher> {
        Rc::new(Flusher::default())
    }

    /// Queues a log for the next round.
    pub fn mark_dirty(&self, log: &Rc<PartitionLog>) {
        let mut dirty = self.dirty.borrow_mut();
        if !dirty.iter().any(|l| Rc::ptr_eq(l, log)) {
            dirty.push(log.clone());
        }
        drop(dirty);
        self.wake.notify_all();
    }

    pub fn stop(&self) {
        self.stopping.set(true);
        self.wake.notify_all();
    }

    /// Runs rounds until [`Self::stop`]; `now_ms` is the wall clock (a seam for tests).
    pub async fn run(self: Rc<Self>, now_ms: impl Fn() -> i64, tick: Duration) {
        loop {
            let batch: Vec<Rc<PartitionLog>> = std::mem::take(&mut *self.dirty.borrow_mut());
            if batch.is_empty() {
                if self.stopping.get() {
                    return;
                }
                let woken = self.wake.notified();
                let timed_out = future::or(
                    async {
                        woken.await;
                        false
                    },
                    async {
                        glommio::timer::sleep(tick).await;
                        true
                    },
                )
                .await;
                if timed_out {
                    let pending: Vec<_> = std::mem::take(&mut *self.unsynced.borrow_mut());
                    for log in pending {
                        self.mark_dirty(&log);
                    }
                }
                continue;
            }
            let now = now_ms();
            let rounds = batch.iter().map(|log| {
                let log = log.clone();
                async move {
                    // Errors are reported to the producers waiting on this log; the flusher
                    // itself goes on serving the other partitions.
                    let _ = log.flush(now).await;
                    log
                }
            });
            let flushed = futures::future::join_all(rounds).await;
            for log in flushed {
                if log.needs_sync() {
                    let mut unsynced = self.unsynced.borrow_mut();
                    if !unsynced.iter().any(|l| Rc::ptr_eq(l, &log)) {
                        unsynced.push(log.clone());
                    }
                }
            }
        }
    }
}
