//! A partition leader's view of its followers (Kafka's `Partition`): the ISR, how far each
//! follower has copied, the high watermark that follows from it, and when the ISR should shrink
//! or grow. A pure state machine: the caller passes the time and the leader's log end, and
//! carries out what it decides (ISR changes go through the metadata quorum).
//!
//! Lives on the core that owns the partition, one per partition this broker leads.

use std::collections::BTreeMap;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Follower {
    /// The follower's log end: the offset of its last fetch. -1 until it fetched under this
    /// leadership.
    log_end: i64,
    /// When the follower was last known to have everything the leader had (Kafka's
    /// `lastCaughtUpTimeMs`).
    last_caught_up_ms: i64,
    last_fetch_ms: i64,
    /// The leader's log end at the follower's previous fetch.
    last_fetch_leader_log_end: i64,
}

/// The leader side of one partition at one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    pub node: i32,
    pub leader_epoch: i32,
    /// The offset this leader epoch starts at: a follower rejoins the ISR only once it has
    /// copied past it (everything older may still diverge from this leader's log).
    pub epoch_start_offset: i64,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    followers: BTreeMap<i32, Follower>,
    /// An ISR change proposed and not applied yet: no other is proposed meanwhile.
    pending_isr: Option<Vec<i32>>,
}

impl LeaderState {
    /// A leadership starting now: in-sync followers get a full `replica.lag.time.max.ms` to
    /// show up before they count as lagging.
    pub fn new(
        node: i32,
        leader_epoch: i32,
        epoch_start_offset: i64,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) -> LeaderState {
        let followers = replicas
            .iter()
            .filter(|r| **r != node)
            .map(|r| {
                (
                    *r,
                    Follower {
                        log_end: -1,
                        last_caught_up_ms: if isr.contains(r) { now_ms } else { 0 },
                        last_fetch_ms: 0,
                        last_fetch_leader_log_end: -1,
                    },
                )
            })
            .collect();
        LeaderState {
            node,
            leader_epoch,
            epoch_start_offset,
            replicas,
            isr,
            followers,
            pending_isr: None,
        }
    }

    /// The metadata now says `isr` (for this epoch): the proposed change, or another one. A
    /// follower taken out (by this leader, or fenced by the controller) must fetch again before
    /// it can rejoin: what it had copied says nothing about whether it is still there.
    pub fn set_isr(&mut self, isr: Vec<i32>, now_ms: i64) {
        for (id, f) in &mut self.followers {
            if isr.contains(id) && !self.isr.contains(id) {
                f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
            }
            if !isr.contains(id) && self.isr.contains(id) {
                f.log_end = -1;
                f.last_fetch_leader_log_end = -1;
            }
        }
        self.isr = isr;
        self.pending_isr = None;
    }

    /// The metadata now says `replicas` (for this epoch; a reassignment added or removed some):
    /// new followers start unknown and out of sync, removed ones are forgotten.
    pub fn set_replicas(&mut self, replicas: Vec<i32>) {
        self.followers.retain(|id, _| replicas.contains(id));
        for r in replicas.iter().filter(|r| **r != self.node) {
            self.followers.entry(*r).or_insert(Follower {
                log_end: -1,
                last_caught_up_ms: 0,
                last_fetch_ms: 0,
                last_fetch_leader_log_end: -1,
            });
        }
        self.replicas = replicas;
    }

    /// A follower fetched from `fetch_offset` (so its log ends there) while this leader's log
    /// ended at `leader_log_end`. Kafka's rule: it is caught up as of now if it reached the
    /// leader's end, or as of its previous fetch if it reached the end the leader had then.
    pub fn on_fetch(&mut self, follower: i32, fetch_offset: i64, leader_log_end: i64, now_ms: i64) {
        let Some(f) = self.followers.get_mut(&follower) else {
            return;
        };
        if fetch_offset >= leader_log_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if f.last_fetch_leader_log_end >= 0 && fetch_offset >= f.last_fetch_leader_log_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end = fetch_offset;
        f.last_fetch_ms = now_ms;
        f.last_fetch_leader_log_end = leader_log_end;
    }

    /// Whether `follower` is a replica of this partition.
    pub fn has_follower(&self, follower: i32) -> bool {
        self.followers.contains_key(&follower)
    }

    /// The cap on the high watermark: the lowest log end among the in-sync followers (none
    /// known yet: `fallback`, the high watermark the leader has). i64::MAX when the leader is
    /// the only in-sync replica: then its own durable end is the high watermark.
    pub fn high_watermark_cap(&self, fallback: i64) -> i64 {
        let mut cap = i64::MAX;
        for id in &self.isr {
            if *id == self.node {
                continue;
            }
            match self.followers.get(id) {
                Some(f) if f.log_end >= 0 => cap = cap.min(f.log_end),
                _ => cap = cap.min(fallback),
            }
        }
        cap
    }

    /// The ISR without the followers that have not caught up for `lag_max_ms` (None: nothing
    /// to change, or a change is already pending). A follower whose log end equals the
    /// leader's is never lagging.
    pub fn shrink(
        &mut self,
        leader_log_end: i64,
        now_ms: i64,
        lag_max_ms: i64,
    ) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let lagging = |id: &i32| {
            self.followers.get(id).is_some_and(|f| {
                f.log_end != leader_log_end
                    && now_ms.saturating_sub(f.last_caught_up_ms) > lag_max_ms
            })
        };
        if !self.isr.iter().any(lagging) {
            return None;
        }
        let isr: Vec<i32> = self.isr.iter().copied().filter(|id| !lagging(id)).collect();
        self.pending_isr = Some(isr.clone());
        Some(isr)
    }

    /// The ISR with the followers that caught up: their log end reached the high watermark and
    /// the start of this leader epoch (None: nothing to change, or a change is pending).
    pub fn expand(&mut self, high_watermark: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let joining: Vec<i32> = self
            .followers
            .iter()
            .filter(|(id, f)| {
                !self.isr.contains(id)
                    && f.log_end >= 0
                    && f.log_end >= high_watermark
                    && f.log_end >= self.epoch_start_offset
            })
            .map(|(id, _)| *id)
            .collect();
        if joining.is_empty() {
            return None;
        }
        let mut isr = self.isr.clone();
        isr.extend(joining);
        // Kafka lists the ISR in replica order.
        isr.sort_by_key(|id| self.replicas.iter().position(|r| r == id));
        self.pending_isr = Some(isr.clone());
        Some(isr)
    }

    /// A proposed ISR change did not take effect (refused, or timed out): another may be tried.
    pub fn isr_change_failed(&mut self) {
        self.pending_isr = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> LeaderState {
        LeaderState::new(1, 4, 100, vec![1, 2, 3], vec![1, 2, 3], 1_000)
    }

    #[test]
    fn the_high_watermark_is_the_slowest_in_sync_follower() {
        let mut l = leader();
        assert_eq!(l.high_watermark_cap(90), 90, "followers unknown: stay put");
        l.on_fetch(2, 150, 200, 1_100);
        assert_eq!(l.high_watermark_cap(90), 90, "follower 3 still unknown");
        l.on_fetch(3, 120, 200, 1_100);
        assert_eq!(l.high_watermark_cap(90), 120);
        l.set_isr(vec![1, 2], 1_200);
        assert_eq!(l.high_watermark_cap(90), 150, "3 left the ISR");
        l.set_isr(vec![1], 1_300);
        assert_eq!(
            l.high_watermark_cap(90),
            i64::MAX,
            "alone: the leader's own end"
        );
    }

    #[test]
    fn a_follower_that_stops_catching_up_is_dropped_after_the_lag_time() {
        let mut l = leader();
        l.on_fetch(2, 200, 200, 2_000);
        l.on_fetch(3, 150, 200, 2_000);
        // 3 had reached the end the leader had at its previous fetch: caught up then.
        l.on_fetch(3, 200, 260, 2_500);
        assert_eq!(l.shrink(260, 12_000, 30_000), None);
        l.on_fetch(2, 260, 260, 30_000);
        // 3 stopped fetching at 2 500 having caught up as of 2 000.
        assert_eq!(l.shrink(260, 32_001, 30_000), Some(vec![1, 2]));
        assert_eq!(l.shrink(260, 40_000, 30_000), None, "one change at a time");
        l.isr_change_failed();
        assert_eq!(l.shrink(260, 40_000, 30_000), Some(vec![1, 2]));
        l.set_isr(vec![1, 2], 40_000);
        // A follower at the leader's end is never lagging, however long ago it fetched.
        assert_eq!(l.shrink(260, 100_000, 30_000), None);
    }

    #[test]
    fn a_follower_rejoins_once_past_the_high_watermark_and_the_epoch_start() {
        let mut l = LeaderState::new(1, 4, 100, vec![1, 2, 3], vec![1, 2], 0);
        l.on_fetch(3, 90, 200, 10);
        assert_eq!(l.expand(80), None, "behind this epoch's start");
        l.on_fetch(3, 150, 200, 20);
        assert_eq!(l.expand(160), None, "behind the high watermark");
        assert_eq!(l.expand(150), Some(vec![1, 2, 3]));
        assert_eq!(l.expand(150), None, "pending");
        l.set_isr(vec![1, 2, 3], 30);
        assert_eq!(l.expand(150), None);
        assert!(l.has_follower(3) && !l.has_follower(1) && !l.has_follower(9));
    }

    #[test]
    fn a_follower_taken_out_of_the_isr_rejoins_only_after_fetching_again() {
        let mut l = leader();
        l.on_fetch(2, 200, 200, 10);
        l.on_fetch(3, 200, 200, 10);
        // The controller fenced 3 (it died fully caught up).
        l.set_isr(vec![1, 2], 20);
        assert_eq!(
            l.expand(200),
            None,
            "its old progress does not bring it back"
        );
        l.on_fetch(3, 200, 200, 30);
        assert_eq!(l.expand(200), Some(vec![1, 2, 3]));
    }

    #[test]
    fn a_replica_added_by_a_reassignment_joins_once_caught_up() {
        let mut l = leader();
        assert!(!l.has_follower(4));
        l.set_replicas(vec![4, 2, 3, 1]);
        assert!(l.has_follower(4));
        l.on_fetch(4, 150, 300, 2_000);
        assert_eq!(l.expand(200), None, "4 is behind the high watermark");
        l.on_fetch(4, 300, 300, 2_100);
        assert_eq!(l.expand(300), Some(vec![4, 2, 3, 1]), "in replica order");
        l.set_replicas(vec![4, 1, 3]);
        assert!(!l.has_follower(2), "a removed replica is forgotten");
        assert!(l.has_follower(4) && l.has_follower(3));
    }
}
