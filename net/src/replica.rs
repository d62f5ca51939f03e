//! Partition replication (Kafka's model), on the core that owns each replica.
//!
//! Every local replica of a partition has a role, set from the metadata every node applies:
//! * **Leader**: serves clients; a [`LeaderState`] tracks how far each follower has copied
//!   (from the offsets of their fetches), caps the log's high watermark at the slowest in-sync
//!   follower, and proposes ISR changes to the metadata quorum — shrinking it when a follower
//!   has not caught up for `replica.lag.time.max.ms`, growing it when one catches up.
//! * **Follower**: copies the leader's log. One fetcher task per (core, leader broker) sends
//!   Fetch requests with this broker's id as replica id to the leader's client port, appends
//!   what comes back byte for byte (`append_replicated`: offsets, leader epochs and timestamps
//!   kept), waits until it is written, and fetches again from the new end — so an acks=all write
//!   is answered only once it is written on every in-sync replica. Before its first fetch under a
//!   new leader, a follower finds where its log and the leader's diverge with
//!   OffsetForLeaderEpoch (KIP-101/279) and truncates its tail there.
//! * **Offline**: the partition has no leader; the replica waits.
//!
//! A single node runs the same code, degenerate: it leads every partition with itself as the
//! only in-sync replica, so the high watermark is its durable end, as before.
//!
//! Concurrency: [`Replicas`] lives on one core (`Rc`/`RefCell`); a fetcher only touches
//! replicas of its own core. ISR changes cross to core 0 (the quorum's driver) as messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::TopicPartition;
use sluice_replication::{LeaderEpochFile, LeaderState, PartitionState};
use sluice_storage::batch::BatchHeader;
use sluice_storage::log::Durability;
use sluice_storage::PartitionLog;

use crate::metadata::TopicMeta;
use crate::peer::PeerConnection;
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::{now_ms, Shard};

/// Fetch version followers send (flexible, with replica_id in the body).
const FETCH_VERSION: i16 = 12;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
/// How long a leader holds a follower's fetch when it has nothing new.
const FOLLOWER_FETCH_WAIT_MS: i32 = 500;
const FOLLOWER_FETCH_BYTES_MAX: i32 = 16 << 20;
const FOLLOWER_PARTITION_BYTES_MAX: i32 = 4 << 20;
/// Pause after a failed connection or an error that waits for new metadata.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Rounds of OffsetForLeaderEpoch before a follower gives up finding the divergence point
/// (each round moves to an older epoch, so a handful always suffice).
const TRUNCATION_ROUNDS_MAX: usize = 16;

/// The role of one local replica.
#[derive(Debug)]
pub enum Role {
    Leader(LeaderState),
    Follower {
        leader: i32,
        leader_epoch: i32,
        /// Divergence with this leader checked (and the tail truncated) already.
        truncated: bool,
    },
    Offline {
        leader_epoch: i32,
    },
}

#[derive(Debug)]
pub struct Replica {
    pub epochs: LeaderEpochFile,
    pub role: Role,
    pub min_insync_replicas: i32,
}

/// The replicas of one core, and the leaders it runs a fetcher for.
#[derive(Default)]
pub struct Replicas {
    pub partitions: HashMap<TopicPartition, Replica>,
    fetchers: HashSet<i32>,
}

impl Replica {
    pub fn leader_epoch(&self) -> i32 {
        match &self.role {
            Role::Leader(l) => l.leader_epoch,
            Role::Follower { leader_epoch, .. } | Role::Offline { leader_epoch } => *leader_epoch,
        }
    }
}

/// Brings the role of a replica this core holds in line with the metadata: called after its
/// log is open, for every change of the partition's state.
pub fn apply_state(
    shard: &Rc<Shard>,
    meta: &TopicMeta,
    partition: i32,
    state: &PartitionState,
    log: &Rc<PartitionLog>,
    opened_epochs: Option<LeaderEpochFile>,
) {
    let tp = TopicPartition::new(meta.name.clone(), partition);
    let node = shard.broker.node_id;
    let now = now_ms();
    let mut replicas = shard.replicas.borrow_mut();
    if !replicas.partitions.contains_key(&tp) {
        // The checkpoint `Shard::open_log` loaded with the log (a replica is always opened
        // there first).
        let Some(epochs) = opened_epochs else {
            eprintln!("sluice: {tp}: no leader-epoch checkpoint loaded with the log");
            return;
        };
        // A replicated partition's committed extent is not known after a start: the leader
        // learns it again from its followers' fetches, a follower from its leader.
        if state.replicas.len() > 1 {
            log.reset_high_watermark(log.log_start_offset());
        }
        replicas.partitions.insert(
            tp.clone(),
            Replica {
                epochs,
                role: Role::Offline { leader_epoch: -1 },
                min_insync_replicas: meta.config.min_insync_replicas,
            },
        );
    }
    let replica = replicas.partitions.get_mut(&tp).expect("inserted above");
    replica.min_insync_replicas = meta.config.min_insync_replicas;
    let mut start_fetcher = None;
    match &mut replica.role {
        Role::Leader(l) if state.leader == node && l.leader_epoch == state.leader_epoch => {
            l.set_replicas(state.replicas.clone());
            l.set_isr(state.isr.clone(), now);
        }
        Role::Follower {
            leader,
            leader_epoch,
            ..
        } if state.leader == *leader && state.leader_epoch == *leader_epoch => {}
        _ if state.leader == node => {
            let start = log.log_end_offset();
            if let Err(e) = replica.epochs.observe(state.leader_epoch, start) {
                eprintln!("sluice: {tp}: leader-epoch checkpoint: {e}");
            }
            log.set_leader_epoch(state.leader_epoch);
            replica.role = Role::Leader(LeaderState::new(
                node,
                state.leader_epoch,
                start,
                state.replicas.clone(),
                state.isr.clone(),
                now,
            ));
        }
        _ if state.leader >= 0 => {
            log.reset_high_watermark(log.high_watermark());
            // Waits on this log for a leader's write (internal topics) see the epoch move on.
            log.set_leader_epoch(state.leader_epoch);
            replica.role = Role::Follower {
                leader: state.leader,
                leader_epoch: state.leader_epoch,
                truncated: false,
            };
            start_fetcher = Some(state.leader);
        }
        _ => {
            log.reset_high_watermark(log.high_watermark());
            log.set_leader_epoch(state.leader_epoch);
            replica.role = Role::Offline {
                leader_epoch: state.leader_epoch,
            };
        }
    }
    if let Role::Leader(l) = &replica.role {
        log.set_high_watermark_cap(l.high_watermark_cap(log.high_watermark()));
    }
    let spawn = start_fetcher.filter(|leader| replicas.fetchers.insert(*leader));
    // No borrow may be held across a spawn: glommio may run the new task at once.
    drop(replicas);
    if let Some(leader) = spawn {
        glommio::spawn_local(fetch_from(shard.clone(), leader)).detach();
    }
    // Producers waiting for acks re-check whether this broker still leads.
    log.high_watermark_changed.notify_all();
}

/// Forgets a replica this core no longer holds.
pub fn forget(shard: &Shard, tp: &TopicPartition) {
    shard.replicas.borrow_mut().partitions.remove(tp);
}

/// The leader epoch if this core leads `tp`.
pub fn leads(shard: &Shard, tp: &TopicPartition) -> Option<i32> {
    match &shard.replicas.borrow().partitions.get(tp)?.role {
        Role::Leader(l) => Some(l.leader_epoch),
        _ => None,
    }
}

/// The leader epoch of `offset` in a local replica's log (None: of its end, the newest epoch);
/// -1 when unknown (no epoch recorded that early).
pub fn epoch_of(shard: &Shard, tp: &TopicPartition, offset: Option<i64>) -> i32 {
    let replicas = shard.replicas.borrow();
    let Some(replica) = replicas.partitions.get(tp) else {
        return -1;
    };
    let entries = replica.epochs.entries();
    let found = match offset {
        None => entries.last(),
        Some(offset) => entries.iter().rev().find(|e| e.start_offset <= offset),
    };
    found.map_or(-1, |e| e.epoch)
}

/// A consumer reading a follower replica (KIP-392): its log, if this core follows `tp` at the
/// leader epoch the consumer knows (-1: any). An older epoch is FENCED_LEADER_EPOCH, a newer
/// one UNKNOWN_LEADER_EPOCH; a replica that does not follow is NOT_LEADER_OR_FOLLOWER.
pub fn follower_read(
    shard: &Shard,
    tp: &TopicPartition,
    client_epoch: i32,
) -> Result<Rc<PartitionLog>, ResponseError> {
    let epoch = match &shard.replicas.borrow().partitions.get(tp) {
        Some(Replica {
            role: Role::Follower { leader_epoch, .. },
            ..
        }) => *leader_epoch,
        _ => return Err(ResponseError::NotLeaderOrFollower),
    };
    if client_epoch >= 0 && client_epoch < epoch {
        return Err(ResponseError::FencedLeaderEpoch);
    }
    if client_epoch > epoch {
        return Err(ResponseError::UnknownLeaderEpoch);
    }
    shard.log(tp).ok_or(ResponseError::NotLeaderOrFollower)
}

/// A consumer's view of the leadership (the leader epoch it sends in Fetch v9+), as Kafka checks
/// it: older than this leader's epoch is FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH; the
/// client refreshes its metadata either way.
pub fn check_client_epoch(
    shard: &Shard,
    tp: &TopicPartition,
    client_epoch: i32,
) -> Result<(), ResponseError> {
    match leads(shard, tp) {
        Some(epoch) if client_epoch < epoch => Err(ResponseError::FencedLeaderEpoch),
        Some(epoch) if client_epoch > epoch => Err(ResponseError::UnknownLeaderEpoch),
        Some(_) => Ok(()),
        None => Err(ResponseError::NotLeaderOrFollower),
    }
}

/// Before an acks=all append: NOT_ENOUGH_REPLICAS while the ISR is smaller than
/// `min.insync.replicas`.
pub fn check_min_isr(shard: &Shard, tp: &TopicPartition) -> Result<(), ResponseError> {
    let replicas = shard.replicas.borrow();
    match replicas.partitions.get(tp) {
        Some(Replica {
            role: Role::Leader(l),
            min_insync_replicas,
            ..
        }) if (l.isr.len() as i32) < *min_insync_replicas => Err(ResponseError::NotEnoughReplicas),
        _ => Ok(()),
    }
}

/// After an acks=all append is durable here: waits until the high watermark passes it, i.e.
/// every in-sync replica has it. NOT_LEADER_OR_FOLLOWER if this broker stops leading meanwhile,
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR fell below `min.insync.replicas`.
pub async fn wait_replicated(
    shard: &Shard,
    tp: &TopicPartition,
    log: &PartitionLog,
    end: i64,
    leader_epoch: i32,
) -> Result<(), ResponseError> {
    loop {
        let changed = log.high_watermark_changed.notified();
        if leads(shard, tp) != Some(leader_epoch) || shard.isolated.get() {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if log.high_watermark() >= end {
            return check_min_isr(shard, tp)
                .map_err(|_| ResponseError::NotEnoughReplicasAfterAppend);
        }
        changed.await;
    }
}

/// A follower's fetch reached the leader's core: checks the follower's view of the leadership
/// and records how far it has copied (its fetch offset), moving the high watermark and maybe
/// growing the ISR. Returns the error to answer for this partition, if any.
pub fn on_follower_fetch(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    log: &Rc<PartitionLog>,
    follower: i32,
    follower_epoch: i32,
    fetch_offset: i64,
) -> Result<(), ResponseError> {
    let mut replicas = shard.replicas.borrow_mut();
    let Some(Replica {
        role: Role::Leader(l),
        ..
    }) = replicas.partitions.get_mut(tp)
    else {
        return Err(ResponseError::NotLeaderOrFollower);
    };
    if follower_epoch < l.leader_epoch {
        return Err(ResponseError::FencedLeaderEpoch);
    }
    if follower_epoch > l.leader_epoch {
        return Err(ResponseError::UnknownLeaderEpoch);
    }
    if !l.has_follower(follower) {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    // Past this log's end the follower holds a tail this leader never wrote: it must
    // truncate before its offset counts as copied (or it could join the ISR, and hold up the
    // high watermark, with records that are not the leader's).
    if fetch_offset > log.log_end_offset() {
        return Err(ResponseError::OffsetOutOfRange);
    }
    l.on_fetch(follower, fetch_offset, log.written_offset(), now_ms());
    log.set_high_watermark_cap(l.high_watermark_cap(log.high_watermark()));
    if let Some(isr) = l.expand(log.high_watermark()) {
        let epoch = l.leader_epoch;
        drop(replicas);
        propose_isr(shard, tp.clone(), epoch, isr);
    }
    Ok(())
}

/// Sends an ISR change to the metadata quorum (through core 0); if it does not take effect,
/// the leader may try again.
fn propose_isr(shard: &Rc<Shard>, tp: TopicPartition, leader_epoch: i32, isr: Vec<i32>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let answer = shard
            .call(
                0,
                CoreRequest::AlterIsr {
                    tp: tp.clone(),
                    leader_epoch,
                    isr,
                },
            )
            .await;
        if !matches!(answer, Some(CoreResponse::IsrAltered(true))) {
            if let Some(Replica {
                role: Role::Leader(l),
                ..
            }) = shard.replicas.borrow_mut().partitions.get_mut(&tp)
            {
                l.isr_change_failed();
            }
        }
    })
    .detach();
}

/// Every `replica.lag.time.max.ms / 2`, each leader drops followers that stopped catching up.
pub async fn isr_loop(shard: Rc<Shard>) {
    let lag_ms = shard.broker.replica_lag_time_max_ms;
    let period = Duration::from_millis((lag_ms / 2).max(50) as u64);
    loop {
        glommio::timer::sleep(period).await;
        if shard.stopping.get() {
            return;
        }
        let now = now_ms();
        let mut shrinks = Vec::new();
        {
            let mut replicas = shard.replicas.borrow_mut();
            for (tp, replica) in replicas.partitions.iter_mut() {
                let Role::Leader(l) = &mut replica.role else {
                    continue;
                };
                let Some(log) = shard.log(tp) else { continue };
                if let Some(isr) = l.shrink(log.written_offset(), now, lag_ms) {
                    shrinks.push((tp.clone(), l.leader_epoch, isr));
                }
            }
        }
        for (tp, epoch, isr) in shrinks {
            propose_isr(&shard, tp, epoch, isr);
        }
    }
}

/// OffsetForLeaderEpoch on the leader's core: for each (partition, the asker's current leader
/// epoch, the epoch asked about), the largest epoch at most the one asked about and where it
/// ends here. -1 as current epoch skips the check (v0–1 and consumers that do not know it).
pub fn epoch_end_offsets(
    shard: &Shard,
    partitions: Vec<(TopicPartition, i32, i32)>,
) -> Vec<(TopicPartition, i16, i32, i64)> {
    let replicas = shard.replicas.borrow();
    partitions
        .into_iter()
        .map(|(tp, current, asked)| {
            let answer = match (replicas.partitions.get(&tp), shard.log(&tp)) {
                (
                    Some(Replica {
                        role: Role::Leader(l),
                        epochs,
                        ..
                    }),
                    Some(log),
                ) => {
                    if current >= 0 && current < l.leader_epoch {
                        Err(ResponseError::FencedLeaderEpoch)
                    } else if current > l.leader_epoch {
                        Err(ResponseError::UnknownLeaderEpoch)
                    } else {
                        Ok(epochs
                            .end_offset_for(asked, log.log_end_offset())
                            .unwrap_or((-1, -1)))
                    }
                }
                _ => Err(shard.unserved_error(&tp.topic, tp.partition)),
            };
            match answer {
                Ok((epoch, end)) => (tp, 0, epoch, end),
                Err(e) => (tp, e.code(), -1, -1),
            }
        })
        .collect()
}

/// What a fetcher does next for one partition it follows.
struct Followed {
    tp: TopicPartition,
    leader_epoch: i32,
    truncated: bool,
}

/// The partitions this core follows from `leader`.
fn followed_from(shard: &Shard, leader: i32) -> Vec<Followed> {
    let replicas = shard.replicas.borrow();
    let mut list: Vec<Followed> = replicas
        .partitions
        .iter()
        .filter_map(|(tp, r)| match r.role {
            Role::Follower {
                leader: l,
                leader_epoch,
                truncated,
            } if l == leader => Some(Followed {
                tp: tp.clone(),
                leader_epoch,
                truncated,
            }),
            _ => None,
        })
        .collect();
    list.sort_by(|a, b| a.tp.cmp(&b.tp));
    list
}

/// Marks a followed partition truncated (true) or in need of another divergence check.
fn set_truncated(shard: &Shard, tp: &TopicPartition, leader_epoch: i32, value: bool) {
    if let Some(Replica {
        role:
            Role::Follower {
                leader_epoch: e,
                truncated,
                ..
            },
        ..
    }) = shard.replicas.borrow_mut().partitions.get_mut(tp)
    {
        if *e == leader_epoch {
            *truncated = value;
        }
    }
}

/// The fetcher of this core for the partitions it follows from `leader`; ends when there are
/// none left.
async fn fetch_from(shard: Rc<Shard>, leader: i32) {
    let node = shard.broker.node_id;
    let mut connection: Option<PeerConnection> = None;
    loop {
        if shard.stopping.get() {
            break;
        }
        let followed = followed_from(&shard, leader);
        if followed.is_empty() {
            break;
        }
        if connection.is_none() {
            connection = PeerConnection::connect(&shard, leader).await;
            if connection.is_none() {
                glommio::timer::sleep(RETRY_BACKOFF).await;
                continue;
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        let mut ok = true;
        for f in followed.iter().filter(|f| !f.truncated) {
            match truncate_diverged(&shard, conn, f).await {
                Ok(()) => set_truncated(&shard, &f.tp, f.leader_epoch, true),
                Err(Some(_)) => {
                    // The leader does not agree it leads at this epoch yet: wait for metadata.
                    glommio::timer::sleep(RETRY_BACKOFF).await;
                }
                Err(None) => {
                    ok = false;
                    break;
                }
            }
        }
        let ready: Vec<&Followed> = if ok {
            followed.iter().filter(|f| f.truncated).collect()
        } else {
            Vec::new()
        };
        if ok && !ready.is_empty() {
            ok = fetch_once(&shard, conn, node, &ready).await;
        }
        if !ok {
            connection = None;
            glommio::timer::sleep(RETRY_BACKOFF).await;
        }
    }
    shard.replicas.borrow_mut().fetchers.remove(&leader);
    // A partition may have started following this leader after the last look: start again.
    if !shard.stopping.get() && !followed_from(&shard, leader).is_empty() {
        let inserted = shard.replicas.borrow_mut().fetchers.insert(leader);
        if inserted {
            glommio::spawn_local(fetch_from(shard.clone(), leader)).detach();
        }
    }
}

/// One Fetch round for the partitions ready to copy. False when the connection failed.
async fn fetch_once(
    shard: &Rc<Shard>,
    conn: &mut PeerConnection,
    node: i32,
    ready: &[&Followed],
) -> bool {
    let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
    let mut epochs: HashMap<TopicPartition, i32> = HashMap::new();
    for f in ready {
        let Some(log) = shard.log(&f.tp) else {
            continue;
        };
        epochs.insert(f.tp.clone(), f.leader_epoch);
        topics.entry(f.tp.topic.clone()).or_default().push(
            FetchPartition::default()
                .with_partition(f.tp.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(log.log_end_offset())
                .with_log_start_offset(log.log_start_offset())
                .with_partition_max_bytes(FOLLOWER_PARTITION_BYTES_MAX),
        );
    }
    if topics.is_empty() {
        glommio::timer::sleep(RETRY_BACKOFF).await;
        return true;
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(node))
        .with_max_wait_ms(FOLLOWER_FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FOLLOWER_FETCH_BYTES_MAX)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let Some(response): Option<FetchResponse> = conn
        .call(node, ApiKey::Fetch, FETCH_VERSION, &request)
        .await
    else {
        return false;
    };
    let mut backoff = false;
    for topic in response.responses {
        for p in topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.to_string(), p.partition_index);
            let Some(epoch) = epochs.get(&tp).copied() else {
                continue;
            };
            match ResponseError::try_from_code(p.error_code) {
                None => {
                    let records = p.records.unwrap_or_default();
                    if !copy(shard, &tp, epoch, records, p.high_watermark).await {
                        set_truncated(shard, &tp, epoch, false);
                    }
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    // Below the leader's log start (it deleted what this replica lacks): start
                    // over at the leader's start; otherwise find the divergence again.
                    let behind = shard
                        .log(&tp)
                        .is_some_and(|log| log.log_end_offset() < p.log_start_offset);
                    if behind {
                        truncate_log(shard, &tp, p.log_start_offset).await;
                    } else {
                        set_truncated(shard, &tp, epoch, false);
                    }
                }
                Some(_) => backoff = true,
            }
        }
    }
    if backoff {
        glommio::timer::sleep(RETRY_BACKOFF).await;
    }
    true
}

/// Appends what the leader sent, records the epochs its batches carry, waits until it is
/// written, and takes the leader's high watermark. False when the batches do not continue this
/// log (it must be checked for divergence again).
async fn copy(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    leader_epoch: i32,
    records: Bytes,
    leader_high_watermark: i64,
) -> bool {
    let Some(log) = shard.log(tp) else {
        return true;
    };
    // Still following at this epoch? (A metadata change may have arrived during the fetch.)
    let following = matches!(
        shard.replicas.borrow().partitions.get(tp),
        Some(Replica { role: Role::Follower { leader_epoch: e, .. }, .. }) if *e == leader_epoch
    );
    if !following {
        return true;
    }
    if !records.is_empty() {
        let info = match log.append_replicated(&records, now_ms()) {
            Ok(info) => info,
            Err(sluice_storage::error::StorageError::NotContiguous { .. }) => return false,
            Err(e) => {
                // A failing disk: try again after a pause, not in a tight loop.
                eprintln!("sluice: {tp}: copying from the leader: {e}");
                glommio::timer::sleep(RETRY_BACKOFF).await;
                return true;
            }
        };
        shard.flusher.mark_dirty(&log);
        if let Some(replica) = shard.replicas.borrow_mut().partitions.get_mut(tp) {
            let mut rest = &records[..];
            while let Some(header) = BatchHeader::parse(rest) {
                if let Err(e) = replica
                    .epochs
                    .observe(header.partition_leader_epoch, header.base_offset)
                {
                    eprintln!("sluice: {tp}: leader-epoch checkpoint: {e}");
                }
                let Some(next) = rest.get(header.total_bytes()..) else {
                    break;
                };
                rest = next;
            }
        }
        if let Err(e) = log.wait_durable(&info, Durability::Written).await {
            eprintln!("sluice: {tp}: writing what the leader sent: {e}");
            return true;
        }
    }
    log.set_high_watermark_cap(leader_high_watermark);
    true
}

/// Finds where this follower's log diverges from the leader's and truncates there (KIP-279):
/// ask the leader where the latest local epoch ends; if the leader's answer is an older epoch,
/// ask again about the local epoch at most that one, until both name the same epoch, whose end
/// is the lower of the two logs' ends for it. Err(Some) for an error answer (the leader does
/// not agree yet), Err(None) for a failed connection.
async fn truncate_diverged(
    shard: &Rc<Shard>,
    conn: &mut PeerConnection,
    f: &Followed,
) -> Result<(), Option<ResponseError>> {
    let node = shard.broker.node_id;
    let latest = {
        let replicas = shard.replicas.borrow();
        let Some(r) = replicas.partitions.get(&f.tp) else {
            return Ok(());
        };
        r.epochs.entries().last().map(|e| e.epoch)
    };
    let Some(mut asked) = latest else {
        return Ok(());
    };
    let mut point = None;
    for _ in 0..TRUNCATION_ROUNDS_MAX {
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(node))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(TopicName(StrBytes::from_string(f.tp.topic.clone())))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(f.tp.partition)
                    .with_current_leader_epoch(f.leader_epoch)
                    .with_leader_epoch(asked)])]);
        let response: OffsetForLeaderEpochResponse = conn
            .call(
                node,
                ApiKey::OffsetForLeaderEpoch,
                OFFSET_FOR_LEADER_EPOCH_VERSION,
                &request,
            )
            .await
            .ok_or(None)?;
        let answer = response
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition == f.tp.partition)
            .ok_or(None)?;
        if let Some(e) = ResponseError::try_from_code(answer.error_code) {
            return Err(Some(e));
        }
        let Some(log) = shard.log(&f.tp) else {
            return Ok(());
        };
        let log_end = log.log_end_offset();
        let replicas = shard.replicas.borrow();
        let Some(r) = replicas.partitions.get(&f.tp) else {
            return Ok(());
        };
        if answer.leader_epoch < 0 || answer.end_offset < 0 {
            // The leader has no epoch this old: nothing here is known to match.
            point = Some(log.log_start_offset());
            break;
        }
        match r.epochs.latest_at_most(answer.leader_epoch) {
            Some(epoch) if epoch == answer.leader_epoch => {
                let own_end = r
                    .epochs
                    .end_offset_for(epoch, log_end)
                    .map_or(log_end, |(_, end)| end);
                point = Some(answer.end_offset.min(own_end).min(log_end));
                break;
            }
            Some(older) if older < asked => asked = older,
            _ => {
                point = Some(log.log_start_offset());
                break;
            }
        }
    }
    let Some(point) = point else {
        return Err(Some(ResponseError::UnknownServerError));
    };
    let below_end = shard
        .log(&f.tp)
        .is_some_and(|log| point < log.log_end_offset());
    if below_end {
        truncate_log(shard, &f.tp, point).await;
    }
    Ok(())
}

/// Cuts a followed partition's log at `offset`: the log is closed, its tail removed on disk,
/// and it is opened again (recovery rebuilds its indexes and producer state).
async fn truncate_log(shard: &Rc<Shard>, tp: &TopicPartition, offset: i64) {
    let Some(meta) = shard.topics.borrow().get(&tp.topic).cloned() else {
        return;
    };
    let Some(log) = shard.logs.borrow_mut().remove(tp) else {
        return;
    };
    // While the directory is rewritten, nothing else may open it (see `Shard::truncating`).
    shard.truncating.borrow_mut().insert(tp.clone());
    let high_watermark = log.high_watermark();
    let old_end = log.log_end_offset();
    let dir = log.dir().to_path_buf();
    if let Err(e) = log.close().await {
        eprintln!("sluice: {tp}: closing to truncate: {e}");
    }
    log.retire().await;
    drop(log);
    shard.journal_barrier(tp).await;
    let cut = if offset > old_end {
        // Behind the leader's log start: nothing here is worth keeping.
        sluice_storage::log::restart_dir(&dir, offset)
            .await
            .map(|()| offset)
    } else {
        sluice_storage::log::truncate_dir(&dir, offset).await
    };
    let end = match cut {
        Ok(end) => end,
        Err(e) => {
            eprintln!("sluice: {tp}: truncating at {offset}: {e}");
            offset
        }
    };
    match shard.open_log(&meta, tp.partition).await {
        Ok((log, epochs)) => {
            log.reset_high_watermark(high_watermark.min(end));
            if let Some(r) = shard.replicas.borrow_mut().partitions.get_mut(tp) {
                r.epochs = epochs;
                if let Err(e) = r.epochs.truncate_from(end) {
                    eprintln!("sluice: {tp}: leader-epoch checkpoint: {e}");
                }
                log.set_leader_epoch(r.leader_epoch().max(0));
            }
            if end > old_end {
                eprintln!(
                    "sluice: {tp}: restarted empty at {end} (the leader's log starts there; \
                     this replica ended at {old_end})"
                );
            } else {
                eprintln!(
                    "sluice: {tp}: truncated from {old_end} to {end} ({} offsets) to follow the \
                     leader",
                    old_end - end
                );
            }
            settle_truncated(shard, tp, &meta, log).await;
        }
        Err(e) => eprintln!("sluice: {tp}: reopening after truncation: {e}"),
    }
    shard.truncating.borrow_mut().remove(tp);
}

/// Puts a log reopened after truncation back in service under the metadata as it is now,
/// which may have changed while the directory was rewritten: a new role is applied, and a
/// partition this broker no longer holds (its topic deleted or recreated, or the replica moved
/// away) has its log deleted instead.
async fn settle_truncated(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    truncated: &TopicMeta,
    log: Rc<PartitionLog>,
) {
    let node = shard.broker.node_id;
    let now = shard
        .topics
        .borrow()
        .get(&tp.topic)
        .filter(|m| m.id == truncated.id)
        .and_then(|m| {
            let state = m.states.get(usize::try_from(tp.partition).ok()?)?.clone();
            state.replicas.contains(&node).then(|| (m.clone(), state))
        });
    match now {
        Some((meta, state)) => {
            shard.logs.borrow_mut().insert(tp.clone(), log.clone());
            apply_state(shard, &meta, tp.partition, &state, &log, None);
        }
        None => {
            forget(shard, tp);
            let dir = log.dir().to_path_buf();
            if let Err(e) = log.close().await {
                eprintln!("sluice: {tp}: closing: {e}");
            }
            log.retire().await;
            drop(log);
            shard.journal_barrier(tp).await;
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("sluice: cannot remove {}: {e} ({tp})", dir.display());
            }
        }
    }
}
