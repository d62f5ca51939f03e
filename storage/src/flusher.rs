//! Group commit for one core: every partition log of the core with appended bytes is flushed in
//! one round, the rounds run back to back, and whatever is appended while a round is in flight
//! rides in the next one. One fdatasync thereby covers all the batches that arrived during the
//! previous round, from all producers.
//!
//! With a journal (see [`crate::journal`]), a round is two halves: every log writes its bytes
//! and stages them in the round, then one journal write and fdatasync makes them all durable,
//! then every log advances its watermarks. A round too large for the journal, or one the
//! journal could not take, has each log fdatasync its own segments, as without one.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use crate::journal::Journal;
use crate::log::PartitionLog;
use crate::notify::Notify;

#[derive(Default)]
pub struct Flusher {
    dirty: RefCell<Vec<Rc<PartitionLog>>>,
    wake: Notify,
    /// Logs under an interval sync policy that have written-but-unsynced bytes.
    unsynced: RefCell<Vec<Rc<PartitionLog>>>,
    stopping: std::cell::Cell<bool>,
    journal: Option<Rc<Journal>>,
}

impl Flusher {
    pub fn new() -> Rc<Flusher> {
        Rc::new(Flusher::default())
    }

    /// A flusher whose rounds are made durable by `journal`.
    pub fn with_journal(journal: Rc<Journal>) -> Rc<Flusher> {
        Rc::new(Flusher {
            journal: Some(journal),
            ..Flusher::default()
        })
    }

    pub fn journal(&self) -> Option<Rc<Journal>> {
        self.journal.clone()
    }

    /// Checkpoints the journal, if any: call before rewriting or removing a log's segment
    /// files (truncation, deleting a partition), so that replay never writes old bytes there.
    pub async fn barrier(&self) -> crate::error::Result<()> {
        match &self.journal {
            Some(journal) => journal.checkpoint().await,
            None => Ok(()),
        }
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
                    self.checkpoint_if_due(true);
                    let pending: Vec<_> = std::mem::take(&mut *self.unsynced.borrow_mut());
                    for log in pending {
                        self.mark_dirty(&log);
                    }
                }
                continue;
            }
            let now = now_ms();
            let flushed = self.round(&batch, now).await;
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

impl Flusher {
    /// One round over `batch`: see the module comment.
    async fn round(&self, batch: &[Rc<PartitionLog>], now: i64) -> Vec<Rc<PartitionLog>> {
        let bytes: u64 = batch.iter().map(|log| log.unwritten_bytes()).sum();
        let journal = self.journal.as_ref();
        let round = journal.and_then(|j| j.begin_round(bytes));
        let writes = batch.iter().map(|log| {
            let round = round.as_ref();
            async move { (log.clone(), log.write_round(now, round).await) }
        });
        let written = futures::future::join_all(writes).await;
        let journaled = match (journal, &round) {
            (Some(journal), Some(round)) => match journal.commit(round).await {
                Ok(committed) => committed,
                Err(e) => {
                    eprintln!(
                        "sluice: the journal failed ({e}); rounds now sync their segments directly"
                    );
                    false
                }
            },
            _ => false,
        };
        self.checkpoint_if_due(false);
        let finishes = written.into_iter().map(|(log, write)| async move {
            if let Some(Ok(write)) = write {
                // Errors are reported to the producers waiting on this log; the flusher
                // itself goes on serving the other partitions.
                let _ = log.finish_round(write, journaled, now).await;
            }
            log
        });
        futures::future::join_all(finishes).await
    }

    fn checkpoint_if_due(&self, idle: bool) {
        if let Some(journal) = &self.journal {
            journal.checkpoint_if_due(idle);
        }
    }
}
