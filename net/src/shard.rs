//! Everything one core owns: its copy of the shard table and topic metadata, the partition logs
//! it owns, its flusher, and its end of the cross-core router.
//!
//! All of it lives on this core only (`Rc`/`RefCell`, no locks). Other cores reach it solely by
//! sending a [`CoreRequest`]; [`Shard::start`] is the one entry point for such work, whether the
//! caller is this core or a peer, and it re-checks ownership with this core's own shard table
//! before touching a log.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{select_all, FutureExt, LocalBoxFuture};
use kafka_protocol::error::ResponseError;
use sluice_core::config::BrokerConfig;
use sluice_core::shard_table::ShardUpdate;
use sluice_core::{ShardTable, TopicPartition};
use sluice_storage::log::Isolation;
use sluice_storage::{Durability, Flusher, LogConfig, PartitionLog, SyncPolicy};

use crate::error::storage_error_code;
use crate::metadata::TopicMeta;
use crate::producer_ids::ProducerIds;
use crate::router::{
    CoreRequest, CoreResponse, OffsetResult, ProduceResult, ReadOutcome, ReadPartition, Router,
    TopicChange,
};
use crate::topics;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Shard {
    pub core_id: usize,
    pub broker: Rc<BrokerConfig>,
    pub cluster_id: String,
    pub table: RefCell<ShardTable>,
    pub topics: RefCell<BTreeMap<String, TopicMeta>>,
    pub logs: RefCell<HashMap<TopicPartition, Rc<PartitionLog>>>,
    pub flusher: Rc<Flusher>,
    pub router: Rc<Router>,
    /// Core 0 only: the revision the next metadata change gets.
    pub next_revision: Cell<u64>,
    /// Core 0 only: the producer id allocator.
    pub producer_ids: Option<ProducerIds>,
    /// Committed offsets of the groups whose `__consumer_offsets` partition this core owns.
    pub offsets: RefCell<crate::offsets::GroupOffsets>,
    /// Membership of the groups this core coordinates.
    pub groups: RefCell<crate::groups::Groups>,
    /// KIP-848 consumer groups this core coordinates.
    pub consumer_groups: RefCell<crate::consumer_groups::Groups>,
    /// Transactional offset commits of those groups not yet decided by a marker.
    pub txn_offsets: RefCell<crate::offsets::PendingTxnOffsets>,
    /// Transactions this core coordinates (their `__transaction_state` partitions are here).
    pub txns: RefCell<crate::txn_coordinator::TxnTable>,
    /// The brokers of the cluster and its active controller.
    pub cluster: RefCell<crate::metadata::ClusterView>,
    /// The role of every replica this core holds (leader, follower, offline).
    pub replicas: RefCell<crate::replica::Replicas>,
    /// `__consumer_offsets` partitions whose groups this core coordinates (their state loaded),
    /// and those it is loading after taking the lead.
    pub coordinating: RefCell<std::collections::HashSet<i32>>,
    pub loading_offsets: RefCell<std::collections::HashSet<i32>>,
    /// `__transaction_state` partitions whose transactions this core coordinates (loaded), and
    /// those it is loading after taking the lead.
    pub txn_coordinating: RefCell<std::collections::HashSet<i32>>,
    pub txn_loading: RefCell<std::collections::HashSet<i32>>,
    /// Core 0 of a node in a metadata quorum: the quorum's driver (None on other cores and on
    /// a single node).
    pub controller: Rc<std::cell::OnceCell<Rc<crate::controller::Controller>>>,
    pub stopping: Cell<bool>,
    /// A cluster node cut off from the metadata quorum for `broker.session.timeout.ms`: the
    /// controller has fenced it, so it serves no client (closing their connections), and
    /// producers still waiting for acks are told NOT_LEADER_OR_FOLLOWER.
    pub isolated: Cell<bool>,
    /// Followed partitions whose log a truncation has taken out of `logs` while it rewrites the
    /// directory: a metadata change meanwhile must not open a second log on it.
    pub truncating: RefCell<std::collections::HashSet<TopicPartition>>,
    /// Core 0: CreatePartitions and reassignments one at a time (see `partitions`).
    pub admin_changes: glommio::sync::Semaphore,
    /// Idle connections to other brokers (see `peer`).
    pub peers: RefCell<crate::peer::PeerPool>,
    /// Requests read from clients of this core and not yet answered.
    pub inflight: Cell<usize>,
}

pub type CoreFuture = LocalBoxFuture<'static, CoreResponse>;

impl Shard {
    pub fn inflight_requests(&self) -> usize {
        self.inflight.get()
    }

    pub fn cores(&self) -> usize {
        self.router.cores()
    }

    pub fn log(&self, tp: &TopicPartition) -> Option<Rc<PartitionLog>> {
        self.logs.borrow().get(tp).cloned()
    }

    /// Runs `request` on this core (the caller is this core or a peer). Synchronous parts —
    /// notably appends — happen before this returns, so requests started in order append in
    /// order; the returned future finishes the asynchronous rest (durability, long polls).
    pub fn start(self: &Rc<Self>, request: CoreRequest) -> CoreFuture {
        match request {
            CoreRequest::Produce {
                acks,
                timeout_ms,
                partitions,
            } => self.produce(acks, timeout_ms, partitions),
            CoreRequest::Read {
                budget_bytes,
                partitions,
            } => {
                let shard = self.clone();
                async move { CoreResponse::Read(shard.read(budget_bytes, partitions).await) }
                    .boxed_local()
            }
            CoreRequest::WaitForData {
                partitions,
                timeout_ms,
                read_committed,
                replica,
            } => {
                let shard = self.clone();
                async move {
                    shard
                        .wait_for_data(partitions, timeout_ms, read_committed, replica)
                        .await;
                    CoreResponse::Waited
                }
                .boxed_local()
            }
            CoreRequest::ListOffsets {
                partitions,
                read_committed,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::ListOffsets(shard.list_offsets(partitions, read_committed).await)
                }
                .boxed_local()
            }
            CoreRequest::AlterIsr {
                tp,
                leader_epoch,
                isr,
            } => {
                let shard = self.clone();
                async move {
                    let altered = match shard.controller() {
                        Some(c) => c.alter_isr(&shard, tp, leader_epoch, isr).await,
                        None => false,
                    };
                    CoreResponse::IsrAltered(altered)
                }
                .boxed_local()
            }
            CoreRequest::ElectLeaders {
                preferred,
                partitions,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::Elected(match shard.controller() {
                        Some(c) => c.elect_leaders(preferred, partitions).await,
                        None => crate::controller::single_node_elections(&shard, partitions),
                    })
                }
                .boxed_local()
            }
            CoreRequest::DescribeQuorum => {
                let controller = self.controller();
                async move {
                    CoreResponse::Quorum(match controller {
                        Some(c) => c.quorum().await,
                        None => None,
                    })
                }
                .boxed_local()
            }
            CoreRequest::LogSizes { partitions } => {
                let sizes = self
                    .logs
                    .borrow()
                    .iter()
                    .filter(|(tp, _)| partitions.as_ref().is_none_or(|named| named.contains(tp)))
                    .map(|(tp, log)| {
                        let lag = (log.high_watermark() - log.log_end_offset()).max(0);
                        (tp.clone(), log.size_bytes(), lag)
                    })
                    .collect();
                async move { CoreResponse::LogSizes(sizes) }.boxed_local()
            }
            CoreRequest::CreatePartitions {
                topics,
                validate_only,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::Answers(
                        crate::partitions::create(&shard, topics, validate_only).await,
                    )
                }
                .boxed_local()
            }
            CoreRequest::Reassign {
                partitions,
                allow_replication_factor_change,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::Answers(
                        crate::partitions::reassign(
                            &shard,
                            partitions,
                            allow_replication_factor_change,
                        )
                        .await,
                    )
                }
                .boxed_local()
            }
            CoreRequest::ListReassignments { partitions } => {
                let listed = crate::partitions::list(self, partitions);
                async move { CoreResponse::Reassignments(listed) }.boxed_local()
            }
            CoreRequest::EpochEndOffsets { partitions } => {
                let answer = crate::replica::epoch_end_offsets(self, partitions);
                async move { CoreResponse::EpochEndOffsets(answer) }.boxed_local()
            }
            CoreRequest::DescribeProducers { partitions } => {
                let described = partitions
                    .into_iter()
                    .map(|tp| {
                        let producers = self.owned_log(&tp).map(|log| log.producers());
                        (tp, producers)
                    })
                    .collect();
                async move { CoreResponse::Producers(described) }.boxed_local()
            }
            CoreRequest::Txn(call) => {
                let shard = self.clone();
                async move { CoreResponse::Txn(crate::txn_coordinator::run(&shard, call).await) }
                    .boxed_local()
            }
            CoreRequest::WriteMarkers {
                producer_id,
                producer_epoch,
                commit,
                partitions,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::Markers(
                        crate::txn_coordinator::write_local_markers(
                            &shard,
                            producer_id,
                            producer_epoch,
                            commit,
                            partitions,
                        )
                        .await,
                    )
                }
                .boxed_local()
            }
            CoreRequest::TxnCommitOffsets {
                group,
                producer_id,
                producer_epoch,
                generation,
                member_id,
                instance_id,
                offsets,
            } => {
                if let Some(refused) = refuse_commit(self, &group, &offsets) {
                    return refused;
                }
                let shard = self.clone();
                async move {
                    CoreResponse::Committed(
                        crate::offsets::txn_commit(
                            &shard,
                            group,
                            producer_id,
                            producer_epoch,
                            generation,
                            &member_id,
                            instance_id.as_deref(),
                            offsets,
                        )
                        .await,
                    )
                }
                .boxed_local()
            }
            CoreRequest::CreateTopics {
                topics,
                validate_only,
            } => {
                let shard = self.clone();
                async move {
                    CoreResponse::Topics(topics::create(&shard, topics, validate_only).await)
                }
                .boxed_local()
            }
            CoreRequest::DeleteTopics { names } => {
                let shard = self.clone();
                async move { CoreResponse::Topics(topics::delete(&shard, names).await) }
                    .boxed_local()
            }
            CoreRequest::AllocateProducerId => {
                let shard = self.clone();
                async move {
                    CoreResponse::ProducerId(match &shard.producer_ids {
                        Some(ids) => ids.allocate().await.map_err(|e| e.to_string()),
                        None => Err(format!(
                            "core {} does not hand out producer ids",
                            shard.core_id
                        )),
                    })
                }
                .boxed_local()
            }
            CoreRequest::CommitOffsets {
                group,
                generation,
                member_id,
                instance_id,
                version,
                offsets,
            } => {
                if let Some(refused) = refuse_commit(self, &group, &offsets) {
                    return refused;
                }
                let shard = self.clone();
                async move {
                    CoreResponse::Committed(
                        crate::offsets::commit(
                            &shard,
                            group,
                            generation,
                            &member_id,
                            instance_id.as_deref(),
                            version,
                            offsets,
                        )
                        .await,
                    )
                }
                .boxed_local()
            }
            CoreRequest::Group(call) => {
                if let Some(Err(e)) = call
                    .group()
                    .map(|g| crate::offsets::check_coordinating(self, g))
                {
                    return async move { CoreResponse::NotCoordinating(e.code()) }.boxed_local();
                }
                let shard = self.clone();
                async move { CoreResponse::Group(crate::groups::run(&shard, call).await) }
                    .boxed_local()
            }
            CoreRequest::FetchOffsets {
                group,
                topics,
                require_stable,
            } => {
                if let Err(e) = crate::offsets::check_coordinating(self, &group) {
                    return async move { CoreResponse::NotCoordinating(e.code()) }.boxed_local();
                }
                let mut fetched = crate::offsets::fetch(self, &group, topics);
                if require_stable {
                    for (topic, partition, c) in fetched.iter_mut() {
                        if crate::offsets::has_pending(self, &group, topic, *partition) {
                            *c = Some(crate::offsets::Committed::unstable());
                        }
                    }
                }
                async move { CoreResponse::Fetched(fetched) }.boxed_local()
            }
            CoreRequest::ApplyCluster(view) => {
                *self.cluster.borrow_mut() = view;
                async move { CoreResponse::Applied }.boxed_local()
            }
            CoreRequest::Isolated(isolated) => {
                self.isolated.set(isolated);
                // Producers waiting for acks re-check whether they may still be answered.
                for log in self.logs.borrow().values() {
                    log.high_watermark_changed.notify_all();
                }
                async move { CoreResponse::Applied }.boxed_local()
            }
            CoreRequest::ApplyTopic(change) => {
                let shard = self.clone();
                async move {
                    shard.apply_topic(change).await;
                    CoreResponse::Applied
                }
                .boxed_local()
            }
        }
    }

    /// Sends `request` to `core` (running it here when that is this core). The request is
    /// started or queued before this returns, so dispatches made in order are applied in order;
    /// None comes back only when the peer is gone (shutdown).
    pub fn dispatch(
        self: &Rc<Self>,
        core: usize,
        request: CoreRequest,
    ) -> LocalBoxFuture<'static, Option<CoreResponse>> {
        if core == self.core_id {
            let started = self.start(request);
            return async move { Some(started.await) }.boxed_local();
        }
        let sent = self.router.call(core, request);
        async move { sent.await.ok() }.boxed_local()
    }

    pub async fn call(self: &Rc<Self>, core: usize, request: CoreRequest) -> Option<CoreResponse> {
        self.dispatch(core, request).await
    }

    fn produce(
        self: &Rc<Self>,
        acks: i16,
        timeout_ms: i32,
        partitions: Vec<(TopicPartition, bytes::Bytes)>,
    ) -> CoreFuture {
        let now = now_ms();
        let clustered = self.broker.clustered();
        let mut appended = Vec::with_capacity(partitions.len());
        for (tp, records) in partitions {
            let owned = self.owned_log(&tp).and_then(|log| {
                if self.isolated.get() {
                    return Err(ResponseError::NotLeaderOrFollower.code());
                }
                if clustered && acks == -1 {
                    crate::replica::check_min_isr(self, &tp).map_err(|e| e.code())?;
                }
                Ok(log)
            });
            let result = match owned {
                Err(code) => Err((code, None, -1)),
                Ok(log) => match log.append(&records, now) {
                    Ok(info) => {
                        self.flusher.mark_dirty(&log);
                        Ok((log, info))
                    }
                    // The log start offset tells idempotent producers whether their state may
                    // have gone with deleted segments (Kafka fills it on errors too).
                    Err(e) => Err((
                        storage_error_code(&e),
                        Some(e.to_string()),
                        log.log_start_offset(),
                    )),
                },
            };
            appended.push((tp, result));
        }
        let shard = self.clone();
        async move {
            let deadline = Duration::from_millis(timeout_ms.max(0) as u64);
            let mut results = Vec::with_capacity(appended.len());
            for (tp, result) in appended {
                let produced = match result {
                    Err((error, message, log_start_offset)) => ProduceResult {
                        tp,
                        error,
                        message,
                        base_offset: -1,
                        log_append_time_ms: -1,
                        log_start_offset,
                    },
                    Ok((log, info)) => {
                        let level = match (acks, log.config().sync) {
                            (-1, SyncPolicy::EveryWrite) => Some(Durability::Synced),
                            (0, _) => None,
                            _ => Some(Durability::Written),
                        };
                        let mut outcome = match level {
                            None => Ok(()),
                            Some(level) => {
                                let wait = log.wait_durable(&info, level);
                                match with_timeout(wait, deadline).await {
                                    Some(Ok(())) => Ok(()),
                                    Some(Err(e)) => Err((storage_error_code(&e), e.to_string())),
                                    None => Err((
                                        ResponseError::RequestTimedOut.code(),
                                        "timed out waiting for the write to be durable".into(),
                                    )),
                                }
                            }
                        };
                        // In a cluster, acks=all also waits for every in-sync replica.
                        if outcome.is_ok() && clustered && acks == -1 {
                            outcome = shard.wait_replicated(&tp, &log, &info, deadline).await;
                        }
                        match outcome {
                            Ok(()) => ProduceResult {
                                tp,
                                error: 0,
                                message: None,
                                base_offset: info.base_offset,
                                log_append_time_ms: info.log_append_time_ms,
                                log_start_offset: info.log_start_offset,
                            },
                            Err((error, message)) => ProduceResult {
                                tp,
                                error,
                                message: Some(message),
                                base_offset: -1,
                                log_append_time_ms: -1,
                                log_start_offset: -1,
                            },
                        }
                    }
                };
                results.push(produced);
            }
            CoreResponse::Produce(results)
        }
        .boxed_local()
    }

    /// acks=all in a cluster: until the high watermark passes the append (every in-sync
    /// replica wrote it), within the request's timeout.
    async fn wait_replicated(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        info: &sluice_storage::log::AppendInfo,
        deadline: Duration,
    ) -> Result<(), (i16, String)> {
        let Some(epoch) = crate::replica::leads(self, tp) else {
            return Err((
                ResponseError::NotLeaderOrFollower.code(),
                "no longer the leader".into(),
            ));
        };
        let wait = crate::replica::wait_replicated(self, tp, log, info.last_offset + 1, epoch);
        match with_timeout(wait, deadline).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err((e.code(), e.to_string())),
            None => Err((
                ResponseError::RequestTimedOut.code(),
                "timed out waiting for the in-sync replicas".into(),
            )),
        }
    }

    /// The log of a partition this core owns, or the Kafka error to answer with.
    pub(crate) fn owned_log(&self, tp: &TopicPartition) -> Result<Rc<PartitionLog>, i16> {
        match self.table.borrow().core_of(&tp.topic, tp.partition) {
            None => return Err(self.unserved_error(&tp.topic, tp.partition).code()),
            Some(core) if core != self.core_id => {
                return Err(ResponseError::NotLeaderOrFollower.code())
            }
            Some(_) => {}
        }
        self.log(tp)
            .ok_or(ResponseError::NotLeaderOrFollower.code())
    }

    async fn read(
        self: &Rc<Self>,
        budget_bytes: usize,
        partitions: Vec<ReadPartition>,
    ) -> Vec<ReadOutcome> {
        let mut out = Vec::with_capacity(partitions.len());
        let mut budget = budget_bytes;
        let mut first_with_data = true;
        for p in partitions {
            let owned = if p.from_follower {
                crate::replica::follower_read(self, &p.tp, p.leader_epoch).map_err(|e| e.code())
            } else {
                self.owned_log(&p.tp)
            };
            let owned = owned.and_then(|log| {
                if p.from_follower {
                    return Ok(log);
                }
                if let Some((follower, epoch)) = p.replica {
                    crate::replica::on_follower_fetch(self, &p.tp, &log, follower, epoch, p.offset)
                        .map_err(|e| e.code())?;
                } else if p.leader_epoch >= 0 {
                    crate::replica::check_client_epoch(self, &p.tp, p.leader_epoch)
                        .map_err(|e| e.code())?;
                }
                Ok(log)
            });
            let outcome = match owned {
                Err(error) => ReadOutcome {
                    tp: p.tp,
                    error,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    records: sluice_storage::Records::default(),
                    aborted: None,
                },
                Ok(log) => {
                    let max = p.max_bytes.min(budget);
                    let committed = p.isolation == Isolation::ReadCommitted;
                    match log
                        .read_isolated(p.offset, max, first_with_data, p.isolation)
                        .await
                    {
                        Ok(read) => {
                            if !read.records.is_empty() {
                                first_with_data = false;
                                budget = budget.saturating_sub(read.records.len());
                            }
                            ReadOutcome {
                                tp: p.tp,
                                error: 0,
                                high_watermark: read.high_watermark,
                                last_stable_offset: read.last_stable_offset,
                                log_start_offset: read.log_start_offset,
                                records: read.records,
                                aborted: committed.then(|| {
                                    read.aborted
                                        .iter()
                                        .map(|a| (a.producer_id, a.first_offset))
                                        .collect()
                                }),
                            }
                        }
                        Err(e) => ReadOutcome {
                            tp: p.tp,
                            error: storage_error_code(&e),
                            high_watermark: log.high_watermark(),
                            last_stable_offset: log.last_stable_offset(),
                            log_start_offset: log.log_start_offset(),
                            records: sluice_storage::Records::default(),
                            aborted: None,
                        },
                    }
                }
            };
            out.push(outcome);
        }
        out
    }

    /// Returns when any of the partitions has data at or past its offset, or after the timeout.
    async fn wait_for_data(
        &self,
        partitions: Vec<(TopicPartition, i64)>,
        timeout_ms: u64,
        read_committed: bool,
        replica: bool,
    ) {
        let mut waits: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
        for (tp, offset) in partitions {
            // Any local replica: a consumer may be reading a follower's (KIP-392).
            let Some(log) = self.log(&tp) else { return };
            if replica {
                waits.push(Box::pin(async move { log.wait_written_past(offset).await }));
                continue;
            }
            waits.push(Box::pin(async move {
                loop {
                    let changed = log.high_watermark_changed.notified();
                    let visible = if read_committed {
                        log.last_stable_offset()
                    } else {
                        log.high_watermark()
                    };
                    if visible > offset || log.log_start_offset() > offset {
                        return;
                    }
                    changed.await;
                }
            }));
        }
        if waits.is_empty() {
            return;
        }
        let any = select_all(waits).map(|_| ());
        let _ = with_timeout(any, Duration::from_millis(timeout_ms)).await;
    }

    async fn list_offsets(
        &self,
        partitions: Vec<(TopicPartition, i64, i32)>,
        read_committed: bool,
    ) -> Vec<OffsetResult> {
        let mut out = Vec::with_capacity(partitions.len());
        for (tp, timestamp, client_epoch) in partitions {
            let result = match self.owned_log(&tp) {
                Err(error) => Err(error),
                Ok(_) if client_epoch >= 0 => {
                    match crate::replica::check_client_epoch(self, &tp, client_epoch) {
                        Err(e) => Err(e.code()),
                        Ok(()) => Ok(()),
                    }
                }
                Ok(_) => Ok(()),
            };
            let result = match (result, self.log(&tp)) {
                (Ok(()), Some(log)) => {
                    crate::handlers::list_offsets::lookup(&log, timestamp, read_committed).await
                }
                (Ok(()), None) => Err(ResponseError::NotLeaderOrFollower.code()),
                (Err(e), _) => Err(e),
            };
            out.push(match result {
                Ok((found_timestamp, offset)) => OffsetResult {
                    // Nothing found (offset -1): no epoch either.
                    leader_epoch: if offset < 0 {
                        -1
                    } else {
                        crate::replica::epoch_of(
                            self,
                            &tp,
                            (timestamp != crate::handlers::list_offsets::LATEST).then_some(offset),
                        )
                    },
                    tp,
                    error: 0,
                    timestamp: found_timestamp,
                    offset,
                },
                Err(error) => OffsetResult {
                    tp,
                    error,
                    timestamp: -1,
                    offset: -1,
                    leader_epoch: -1,
                },
            });
        }
        out
    }

    /// Applies a topic change broadcast by core 0: update this core's tables, open the logs of
    /// new partitions this core owns, close and delete those of removed topics.
    async fn apply_topic(self: &Rc<Self>, change: TopicChange) {
        match change {
            TopicChange::Created {
                revision,
                meta,
                cores,
            } => {
                let update = ShardUpdate::TopicPlaced {
                    revision,
                    topic: meta.name.clone(),
                    cores: cores.clone(),
                };
                if !self.table.borrow_mut().apply(&update) {
                    return;
                }
                self.topics
                    .borrow_mut()
                    .insert(meta.name.clone(), (*meta).clone());
                let held = self.held_here(&meta);
                // Roles of replicas already open change now, with the table and before any
                // wait: a replica that stops leading must not take one more client write.
                for (partition, state) in meta.states.iter().enumerate() {
                    let tp = TopicPartition::new(meta.name.clone(), partition as i32);
                    if held[partition] {
                        if let Some(log) = self.log(&tp) {
                            crate::replica::apply_state(
                                self,
                                &meta,
                                partition as i32,
                                state,
                                &log,
                                None,
                            );
                            if let Some(c) = Coordinated::of(&meta.name) {
                                self.follow_coordination(c, partition as i32, &log, false)
                                    .await;
                            }
                        }
                    }
                }
                self.drop_unheld(&meta.name, &held).await;
                for (partition, state) in meta.states.iter().enumerate() {
                    let tp = TopicPartition::new(meta.name.clone(), partition as i32);
                    let truncating = self.truncating.borrow().contains(&tp);
                    if held[partition] && !self.logs.borrow().contains_key(&tp) && !truncating {
                        match self.open_log(&meta, partition as i32).await {
                            Ok((log, epochs)) => {
                                self.logs.borrow_mut().insert(tp, log.clone());
                                crate::replica::apply_state(
                                    self,
                                    &meta,
                                    partition as i32,
                                    state,
                                    &log,
                                    Some(epochs),
                                );
                                if let Some(c) = Coordinated::of(&meta.name) {
                                    // A single node loads at open, before it serves. A
                                    // cluster node may have to wait for its followers (see
                                    // `load_coordinated`), who need it serving: in a task.
                                    let wait = !self.broker.clustered();
                                    self.follow_coordination(c, partition as i32, &log, wait)
                                        .await;
                                }
                            }
                            Err(e) => {
                                eprintln!("sluice: core {}: cannot open {tp}: {e}", self.core_id)
                            }
                        }
                    }
                }
                self.resize_caches();
            }
            TopicChange::Deleted { revision, name } => {
                let update = ShardUpdate::TopicRemoved {
                    revision,
                    topic: name.clone(),
                };
                if !self.table.borrow_mut().apply(&update) {
                    return;
                }
                self.topics.borrow_mut().remove(&name);
                if name == crate::offsets::OFFSETS_TOPIC {
                    self.offsets.borrow_mut().clear();
                    self.coordinating.borrow_mut().clear();
                }
                let doomed: Vec<(TopicPartition, Rc<PartitionLog>)> = {
                    let mut logs = self.logs.borrow_mut();
                    let keys: Vec<_> = logs.keys().filter(|tp| tp.topic == name).cloned().collect();
                    for tp in &keys {
                        crate::replica::forget(self, tp);
                    }
                    keys.into_iter()
                        .filter_map(|k| logs.remove(&k).map(|l| (k, l)))
                        .collect()
                };
                let mut dirs = Vec::new();
                for (tp, log) in doomed {
                    dirs.push((tp, log.dir().to_path_buf()));
                    log.retire().await;
                }
                // One checkpoint for the whole topic, after its logs' last rounds.
                if !dirs.is_empty() {
                    self.journal_barrier(&name).await;
                }
                for (tp, dir) in dirs {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        eprintln!("sluice: cannot remove {}: {e} ({tp})", dir.display());
                    }
                }
            }
        }
    }

    /// What a core coordinates from `c`'s partitions (loaded), and what it is loading.
    fn coordinated(&self, c: Coordinated) -> &RefCell<std::collections::HashSet<i32>> {
        match c {
            Coordinated::Groups => &self.coordinating,
            Coordinated::Transactions => &self.txn_coordinating,
        }
    }

    fn loading(&self, c: Coordinated) -> &RefCell<std::collections::HashSet<i32>> {
        match c {
            Coordinated::Groups => &self.loading_offsets,
            Coordinated::Transactions => &self.txn_loading,
        }
    }

    /// Drops the state loaded from one of `c`'s partitions.
    fn unload(&self, c: Coordinated, partition: i32) {
        match c {
            Coordinated::Groups => crate::offsets::unload(self, partition),
            Coordinated::Transactions => crate::txn_coordinator::unload(self, partition),
        }
    }

    /// This core no longer coordinates `partition` of `c` (nor goes on loading it).
    fn stop_coordinating(&self, c: Coordinated, partition: i32) {
        self.loading(c).borrow_mut().remove(&partition);
        if self.coordinated(c).borrow_mut().remove(&partition) {
            self.unload(c, partition);
        }
    }

    /// The groups of a `__consumer_offsets` partition, and the transactions of a
    /// `__transaction_state` partition, follow its leadership: loaded from the log when this
    /// core starts leading it, dropped when it stops. `wait`: load before returning (at open),
    /// else in a task (a leadership change must not hold up the metadata broadcast).
    async fn follow_coordination(
        self: &Rc<Self>,
        c: Coordinated,
        partition: i32,
        log: &Rc<PartitionLog>,
        wait: bool,
    ) {
        let tp = TopicPartition::new(c.topic(), partition);
        let loaded = self.coordinated(c).borrow().contains(&partition);
        if crate::replica::leads(self, &tp).is_none() {
            if loaded {
                self.stop_coordinating(c, partition);
            }
            return;
        }
        if loaded || !self.loading(c).borrow_mut().insert(partition) {
            return;
        }
        let load = self.clone().load_coordinated(c, partition, log.clone());
        if wait {
            load.await;
        } else {
            glommio::spawn_local(load).detach();
        }
    }

    /// Loads what `partition` of `c` holds, once this core leads it. What the log holds past
    /// the high watermark may still be lost in a failover, so the load waits until the in-sync
    /// replicas have everything (the high watermark reaches the log end). Transactions found
    /// prepared are finished by `txn_coordinator::timeout_loop`, as after a restart.
    async fn load_coordinated(
        self: Rc<Self>,
        c: Coordinated,
        partition: i32,
        log: Rc<PartitionLog>,
    ) {
        let tp = TopicPartition::new(c.topic(), partition);
        loop {
            if crate::replica::leads(&self, &tp).is_none() || self.stopping.get() {
                self.loading(c).borrow_mut().remove(&partition);
                return;
            }
            if log.high_watermark() >= log.log_end_offset() {
                break;
            }
            let changed = log.high_watermark_changed.notified();
            let _ = with_timeout(changed, Duration::from_millis(100)).await;
        }
        let loaded = match c {
            Coordinated::Groups => {
                self.load_groups(&log).await;
                true
            }
            Coordinated::Transactions => self.load_txns(&tp).await,
        };
        self.loading(c).borrow_mut().remove(&partition);
        if !loaded {
            return;
        }
        if crate::replica::leads(&self, &tp).is_none() {
            self.unload(c, partition);
            return;
        }
        self.coordinated(c).borrow_mut().insert(partition);
    }

    /// Reads the groups of a `__consumer_offsets` partition into this core's tables.
    async fn load_groups(self: &Rc<Self>, log: &Rc<PartitionLog>) {
        // Groups belong to one partition each: the tables of the partitions are disjoint and
        // simply merge.
        let mut table = crate::offsets::GroupOffsets::new();
        let mut pending = crate::offsets::PendingTxnOffsets::new();
        let mut groups = HashMap::new();
        let mut consumer_groups = HashMap::new();
        let loaded = crate::offsets::load(
            &mut table,
            &mut pending,
            &mut groups,
            &mut consumer_groups,
            log,
        )
        .await;
        if let Err(e) = loaded {
            eprintln!("sluice: core {}: {e}", self.core_id);
        }
        self.offsets.borrow_mut().extend(table);
        let mut all = self.txn_offsets.borrow_mut();
        for (pid, groups) in pending {
            all.entry(pid).or_default().extend(groups);
        }
        drop(all);
        crate::groups::restore(self, groups);
        crate::consumer_groups::restore(self, consumer_groups);
    }

    /// Reads the transactions of a `__transaction_state` partition into this core's table,
    /// from the log as it is now (a truncation may have replaced it meanwhile). A load that
    /// fails is tried again rather than coordinating without those transactions; false when
    /// this core stopped leading the partition first.
    async fn load_txns(self: &Rc<Self>, tp: &TopicPartition) -> bool {
        loop {
            let Some(log) = self.log(tp) else {
                return false;
            };
            match crate::txn_coordinator::load(self, &log).await {
                Ok(_) => return true,
                Err(e) => {
                    eprintln!(
                        "sluice: core {}: loading {tp}: {e}; trying again",
                        self.core_id
                    );
                    crate::txn_coordinator::unload(self, tp.partition);
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    if crate::replica::leads(self, tp).is_none() || self.stopping.get() {
                        return false;
                    }
                }
            }
        }
    }

    /// Per partition of `meta`: whether this core holds a replica of it (this broker is one of
    /// its replicas, and the placement policy puts the partition on this core).
    fn held_here(&self, meta: &TopicMeta) -> Vec<bool> {
        let node = self.broker.node_id;
        meta.states
            .iter()
            .enumerate()
            .map(|(p, state)| {
                state.replicas.contains(&node)
                    && sluice_core::placement::core_for_partition(
                        &meta.name,
                        p as i32,
                        self.cores(),
                    ) == self.core_id
            })
            .collect()
    }

    /// Deletes the logs of `topic` this core has open but no longer holds a replica of: a
    /// reassignment moved them away (Kafka's StopReplica with deletion). The new replicas have
    /// copied everything the high watermark covers before the controller removed this one.
    async fn drop_unheld(&self, topic: &str, held: &[bool]) {
        let unserved: Vec<Rc<PartitionLog>> = {
            let mut logs = self.logs.borrow_mut();
            let keys: Vec<TopicPartition> = logs
                .keys()
                .filter(|tp| {
                    tp.topic == topic
                        && !usize::try_from(tp.partition)
                            .ok()
                            .and_then(|p| held.get(p))
                            .copied()
                            .unwrap_or(false)
                })
                .cloned()
                .collect();
            for tp in &keys {
                crate::replica::forget(self, tp);
            }
            keys.iter().filter_map(|tp| logs.remove(tp)).collect()
        };
        // Coordinators move with the replicas: what this core coordinated from a moved
        // partition of an internal topic is dropped (and loaded afresh if it ever comes back).
        if let Some(c) = Coordinated::of(topic) {
            for log in &unserved {
                self.stop_coordinating(c, log.partition);
            }
        }
        for log in unserved {
            let dir = log.dir().to_path_buf();
            let name = format!("{}-{}", log.topic, log.partition);
            if let Err(e) = log.close().await {
                eprintln!("sluice: core {}: closing {name}: {e}", self.core_id);
            }
            log.retire().await;
            drop(log);
            self.journal_barrier(&name).await;
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => eprintln!("sluice: {name}: replica moved to other brokers; log deleted"),
                Err(e) => eprintln!("sluice: cannot remove {}: {e} ({name})", dir.display()),
            }
        }
    }

    /// Checkpoints this core's journal before a log's files are removed or rewritten, so that
    /// replay never writes old bytes into a directory a new log takes (`what` names the log).
    /// A journal that cannot checkpoint means the log directory is failing (its fdatasyncs
    /// fail): the broker stops, as Kafka does when its only log directory fails, rather than
    /// change files that replay at the next start could then damage.
    pub async fn journal_barrier(&self, what: &dyn std::fmt::Display) {
        if let Err(e) = self.flusher.barrier().await {
            eprintln!(
                "sluice: core {}: the journal cannot checkpoint before changing {what}: {e}; \
                 the log directory is failing, stopping (the journal is replayed at the next start)",
                self.core_id
            );
            std::process::exit(1);
        }
    }

    /// Opens (recovering) a partition's log on this core.
    pub async fn open_log(
        &self,
        meta: &TopicMeta,
        partition: i32,
    ) -> sluice_storage::error::Result<(Rc<PartitionLog>, sluice_replication::LeaderEpochFile)>
    {
        let dir = self
            .broker
            .log_dirs
            .join(format!("{}-{partition}", meta.name));
        if dir.exists() {
            // The directory may be an earlier topic's, about to be removed (next line).
            self.journal_barrier(&format!("{}-{partition}", meta.name))
                .await;
        }
        if crate::metadata::claim_partition_dir(&dir, &meta.id)? {
            eprintln!(
                "sluice: {}-{partition}: removed the log of an earlier topic of that name",
                meta.name
            );
        }
        let config = LogConfig::from_topic(
            &meta.config,
            self.broker.log_index_interval_bytes,
            self.broker.sync_before_ack(),
        );
        let log = PartitionLog::open(&dir, &meta.name, partition, config, now_ms()).await?;
        log.set_journal(self.flusher.journal());
        let epochs = sluice_replication::LeaderEpochFile::open_or_init(&dir, log.log_end_offset())?;
        log.set_leader_epoch(epochs.current_epoch());
        if log.needs_flush() {
            self.flusher.mark_dirty(&log);
        }
        Ok((log, epochs))
    }

    /// Splits the per-core batch cache budget over the partitions this core owns.
    pub fn resize_caches(&self) {
        let logs = self.logs.borrow();
        let n = logs.len().max(1) as u64;
        let per = (sluice_core::limits::batch_cache_bytes_per_core as u64 / n)
            .min(sluice_core::limits::batch_cache_bytes_per_partition_max as u64)
            .max(64 * 1024);
        for log in logs.values() {
            log.set_cache_bytes_max(per);
        }
    }

    /// The partition → core placement of a topic on this broker.
    pub fn place(&self, meta: &TopicMeta) -> Vec<Option<usize>> {
        placement(meta, self.broker.node_id, self.cores())
    }

    /// The error for a partition this broker does not serve: NOT_LEADER_OR_FOLLOWER for a
    /// partition that exists (led by another broker, or by none), UNKNOWN_TOPIC_OR_PARTITION
    /// otherwise.
    pub fn unserved_error(&self, topic: &str, partition: i32) -> ResponseError {
        if self.table.borrow().exists(topic, partition) {
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        }
    }

    /// Core 0: the revision of the next metadata change broadcast to the cores.
    pub fn take_revision(&self) -> u64 {
        let revision = self.next_revision.get();
        self.next_revision.set(revision + 1);
        revision
    }

    /// The active controller's handle: core 0 of a node in a quorum only.
    pub fn controller(&self) -> Option<Rc<crate::controller::Controller>> {
        self.controller.get().cloned()
    }
}

/// A commit that reached a core not coordinating its group: every offset answered with why.
fn refuse_commit(
    shard: &Shard,
    group: &str,
    offsets: &[crate::router::OffsetToCommit],
) -> Option<CoreFuture> {
    let e = crate::offsets::check_coordinating(shard, group).err()?;
    let codes = offsets
        .iter()
        .map(|o| (o.topic.clone(), o.partition, e.code()))
        .collect();
    Some(async move { CoreResponse::Committed(codes) }.boxed_local())
}

/// Which core serves each partition of `meta` on broker `node`: the placement policy's core for
/// the partitions `node` leads, None for the others.
/// The coordinators whose state lives in an internal topic and follows the leadership of its
/// partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coordinated {
    /// Consumer groups and committed offsets (`__consumer_offsets`).
    Groups,
    /// Transactions (`__transaction_state`).
    Transactions,
}

impl Coordinated {
    fn of(topic: &str) -> Option<Coordinated> {
        match topic {
            crate::offsets::OFFSETS_TOPIC => Some(Coordinated::Groups),
            crate::transactions::TXN_TOPIC => Some(Coordinated::Transactions),
            _ => None,
        }
    }

    fn topic(self) -> &'static str {
        match self {
            Coordinated::Groups => crate::offsets::OFFSETS_TOPIC,
            Coordinated::Transactions => crate::transactions::TXN_TOPIC,
        }
    }
}

pub fn placement(meta: &TopicMeta, node: i32, cores: usize) -> Vec<Option<usize>> {
    (0..meta.partitions)
        .map(|p| {
            (meta.leader(p) == Some(node))
                .then(|| sluice_core::placement::core_for_partition(&meta.name, p, cores))
        })
        .collect()
}

/// Runs `f` for at most `limit`; None when the time ran out first.
pub async fn with_timeout<T>(f: impl Future<Output = T>, limit: Duration) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
