//! The replication half of a partition log (Kafka's model), on the owning core like the rest
//! of it: a follower appends its leader's batches as they are, the high watermark is capped by
//! what the in-sync replicas hold, and a leader's replica fetch waits for written bytes.
//!
//! The log only keeps the numbers; which replicas are in sync, and the caps that follow, are
//! the replication layer's to decide. With none of this used (cap `i64::MAX`), a log behaves as
//! on a single node.

use bytes::Bytes;

use super::{durable_end, refuse_after_io_error, AppendInfo, PartitionLog};
use crate::batch;
use crate::error::{Result, StorageError};

impl PartitionLog {
    /// Appends batches a follower copied from its leader, byte for byte: base offsets, partition
    /// leader epochs, timestamps and attributes stay as the leader wrote them. Every batch's CRC
    /// is checked; the first must begin at the log end and each next one right after the one
    /// before, else [`StorageError::NotContiguous`] and nothing is appended. Control batches are
    /// accepted; the leader's checks (max.message.bytes, compaction keys, producer sequences)
    /// are not repeated, but producer state and transactions are replayed from the batches as
    /// for a leader's append, so that a follower that becomes leader knows its producers and
    /// open transactions.
    ///
    /// Durability as [`Self::append`]: memory only until the flusher writes it (segments roll
    /// and producer snapshots are taken as usual); `log_append_time_ms` is -1, since nothing is
    /// stamped here. Fails fast for a while after a failed write, as `append` does.
    pub fn append_replicated(&self, records: &Bytes, now_ms: i64) -> Result<AppendInfo> {
        let config = self.config.borrow();
        // The stored form: a batch compaction thinned on the leader is copied as it is.
        let batches = batch::split_stored(records)?;
        let mut state = self.state.borrow_mut();
        refuse_after_io_error(&state, now_ms)?;
        let mut expected = state.log_end;
        for (_, h) in &batches {
            if h.base_offset != expected {
                return Err(StorageError::NotContiguous {
                    expected,
                    found: h.base_offset,
                });
            }
            expected = h.last_offset() + 1;
        }
        Ok(self.append_checked(&mut state, &config, records, batches, now_ms, false))
    }

    /// The exclusive end of the bytes whose DMA write completed (they survive a crash of the
    /// process): what a follower may fetch ([`Isolation::Replica`](super::Isolation::Replica)).
    /// Never decreases.
    pub fn written_offset(&self) -> i64 {
        self.state.borrow().written
    }

    /// The end the high watermark is bounded by locally: `synced` under
    /// [`SyncPolicy::EveryWrite`](super::SyncPolicy::EveryWrite), `written` under an interval
    /// policy. A leader's own contribution to the in-sync replicas' minimum.
    pub fn durable_offset(&self) -> i64 {
        durable_end(&self.state.borrow(), self.config.borrow().sync)
    }

    /// Sets the high watermark cap and advances the high watermark to min(durable end, cap) if
    /// that is above it (waking `high_watermark_changed`, stabilising transactions whose marker
    /// it passes). A cap below the current high watermark leaves it where it is: it never moves
    /// back here. A leader sets the lowest log end of its in-sync followers (`i64::MAX` while it
    /// is the only in-sync replica); a follower sets its leader's high watermark.
    pub fn set_high_watermark_cap(&self, cap: i64) {
        self.state.borrow_mut().high_watermark_cap = cap;
        self.advance_high_watermark();
    }

    /// Sets the cap to `high_watermark` and lowers the high watermark to it if it is above
    /// (never below the log start), for a replica whose committed extent is unknown after a
    /// restart or a role change; then advances it as [`Self::set_high_watermark_cap`] would.
    /// The last stable offset follows (it is never above the high watermark). Transactions
    /// already decided below the old high watermark stay decided: their records were readable
    /// as committed and remain so; open ones and those whose marker is not yet below the high
    /// watermark keep holding the last stable offset back.
    pub fn reset_high_watermark(&self, high_watermark: i64) {
        let lowered = {
            let mut s = self.state.borrow_mut();
            s.high_watermark_cap = high_watermark;
            let lowered = s.high_watermark.min(high_watermark).max(s.log_start);
            let changed = lowered != s.high_watermark;
            s.high_watermark = lowered;
            changed
        };
        self.advance_high_watermark();
        if lowered {
            // Long-polling fetches re-check against the lower bound.
            self.high_watermark_changed.notify_all();
        }
    }

    /// Returns once `written_offset() > offset` (a leader's long-polling replica fetch waits for
    /// the batch at `offset` to be written). Woken by every flush; never returns on a log that
    /// is not flushed any more (retired), so the caller bounds it with a timeout.
    pub async fn wait_written_past(&self, offset: i64) {
        loop {
            let notified = self.flushed.notified();
            if self.state.borrow().written > offset {
                return;
            }
            notified.await;
        }
    }
}
