//! Typed request/response messages between cores, over glommio's bounded channel mesh.
//!
//! A request for a partition owned by another core travels to that core as a [`CoreRequest`]
//! (record bytes are `Bytes`, moved, never re-encoded) and its [`CoreResponse`] comes back
//! tagged with the caller's id. Each core sends through one local outbox per peer, drained by a
//! forwarder task into the mesh: pushing to the outbox is synchronous, so requests leave a core
//! in exactly the order they were issued (produce order per partition is preserved even when
//! the mesh channel is full and the forwarder waits), and the mesh's bounded depth back-pressures
//! the whole core rather than growing a queue without limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use sluice_core::TopicPartition;

use crate::metadata::TopicMeta;

/// Work one core asks of another.
#[derive(Debug)]
pub enum CoreRequest {
    Produce {
        acks: i16,
        timeout_ms: i32,
        partitions: Vec<(TopicPartition, Bytes)>,
    },
    Read {
        budget_bytes: usize,
        partitions: Vec<ReadPartition>,
    },
    WaitForData {
        partitions: Vec<(TopicPartition, i64)>,
        timeout_ms: u64,
        /// Wait for the last stable offset, not the high watermark, to pass the offsets.
        read_committed: bool,
        /// A follower's fetch: wait for the written end, past the high watermark.
        replica: bool,
    },
    ListOffsets {
        /// (partition, timestamp asked for, the client's current leader epoch or -1).
        partitions: Vec<(TopicPartition, i64, i32)>,
        /// isolation_level read_committed: LATEST is the last stable offset.
        read_committed: bool,
    },
    /// To core 0, the metadata owner.
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    /// To core 0, the metadata owner.
    DeleteTopics { names: Vec<String> },
    /// From core 0 to every core: apply a topic change to the local tables and logs.
    ApplyTopic(TopicChange),
    /// From core 0 to every core: the cluster's brokers and controller changed.
    ApplyCluster(crate::metadata::ClusterView),
    /// From core 0 to every core: this node lost (true) or regained contact with the metadata
    /// quorum (see `Shard::isolated`).
    Isolated(bool),
    /// To core 0, which hands out producer ids.
    AllocateProducerId,
    /// To the core owning the group's `__consumer_offsets` partition.
    Group(crate::groups::GroupCall),
    /// To the core owning the group's `__consumer_offsets` partition.
    CommitOffsets {
        group: String,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
        /// The OffsetCommit version (v9+ answers GROUP_ID_NOT_FOUND where older ones answer
        /// ILLEGAL_GENERATION).
        version: i16,
        offsets: Vec<OffsetToCommit>,
    },
    /// To the core owning the group's `__consumer_offsets` partition; None: every partition
    /// the group has an offset for.
    FetchOffsets {
        group: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
        /// OffsetFetch v7+ `require_stable`: partitions with undecided transactional offsets
        /// answer UNSTABLE_OFFSET_COMMIT.
        require_stable: bool,
    },
    /// To the core coordinating the transactional id (its `__transaction_state` partition).
    Txn(crate::txn_coordinator::TxnCall),
    /// From a transaction coordinator to a core owning partitions of the transaction: write
    /// its COMMIT or ABORT markers there.
    WriteMarkers {
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    },
    /// From a partition leader's core to core 0: propose this ISR (at this leader epoch) to the
    /// metadata quorum.
    AlterIsr {
        tp: TopicPartition,
        leader_epoch: i32,
        isr: Vec<i32>,
    },
    /// ElectLeaders, to core 0: preferred (or unclean) elections for these partitions, or for
    /// every partition that needs one (None).
    ElectLeaders {
        preferred: bool,
        partitions: Option<Vec<TopicPartition>>,
    },
    /// DescribeQuorum, to core 0 (where the quorum runs).
    DescribeQuorum,
    /// DescribeLogDirs, to every core: the logs it holds (of these partitions; None: all).
    LogSizes {
        partitions: Option<Vec<TopicPartition>>,
    },
    /// CreatePartitions, to core 0.
    CreatePartitions {
        topics: Vec<crate::partitions::PartitionsWanted>,
        validate_only: bool,
    },
    /// AlterPartitionReassignments, to core 0: per partition the target replicas (None
    /// cancels).
    Reassign {
        partitions: Vec<(TopicPartition, Option<Vec<i32>>)>,
        allow_replication_factor_change: bool,
    },
    /// ListPartitionReassignments, to core 0 (None: every partition).
    ListReassignments {
        partitions: Option<Vec<TopicPartition>>,
    },
    /// OffsetForLeaderEpoch, to the leaders' cores: (partition, the asker's current leader
    /// epoch or -1, the epoch asked about).
    EpochEndOffsets {
        partitions: Vec<(TopicPartition, i32, i32)>,
    },
    /// DescribeProducers, to the cores owning the partitions.
    DescribeProducers { partitions: Vec<TopicPartition> },
    /// TxnOffsetCommit, to the core owning the group's `__consumer_offsets` partition.
    TxnCommitOffsets {
        group: String,
        producer_id: i64,
        producer_epoch: i16,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
        offsets: Vec<OffsetToCommit>,
    },
}

#[derive(Debug, Clone)]
pub struct OffsetToCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReadPartition {
    pub tp: TopicPartition,
    pub offset: i64,
    pub max_bytes: usize,
    pub isolation: sluice_storage::log::Isolation,
    /// A follower's fetch: (its broker id, the leader epoch it follows).
    pub replica: Option<(i32, i32)>,
    /// The leader epoch a consumer knows (Fetch v9+), -1 when unknown: checked against this
    /// leader's.
    pub leader_epoch: i32,
    /// A consumer reading from this broker's follower replica (KIP-392).
    pub from_follower: bool,
}

#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, Option<String>)>,
    /// Replica lists given by the client, by partition index (empty: placed by the broker).
    pub assignments: Vec<(i32, Vec<i32>)>,
}

#[derive(Debug, Clone)]
pub enum TopicChange {
    Created {
        revision: u64,
        meta: Box<TopicMeta>,
        /// Per partition, the core serving it on this broker (None: another broker leads it).
        cores: Vec<Option<usize>>,
    },
    Deleted {
        revision: u64,
        name: String,
    },
}

/// The producers a partition remembers (DescribeProducers), or the error code to answer.
pub type ProducersOf = (
    TopicPartition,
    Result<Vec<(i64, sluice_storage::producer_state::ProducerEntry)>, i16>,
);

#[derive(Debug, Clone)]
pub struct ProduceResult {
    pub tp: TopicPartition,
    pub error: i16,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone)]
pub struct ReadOutcome {
    pub tp: TopicPartition,
    pub error: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: sluice_storage::Records,
    /// read_committed: aborted transactions (producer id, first offset) the records may hold.
    pub aborted: Option<Vec<(i64, i64)>>,
}

#[derive(Debug, Clone)]
pub struct OffsetResult {
    pub tp: TopicPartition,
    pub error: i16,
    pub timestamp: i64,
    pub offset: i64,
    /// The leader epoch of the offset's batch (latest: of the log's end), -1 when unknown.
    pub leader_epoch: i32,
}

#[derive(Debug, Clone)]
pub struct TopicResult {
    pub name: String,
    pub error: i16,
    pub message: Option<String>,
    pub meta: Option<TopicMeta>,
}

#[derive(Debug)]
pub enum CoreResponse {
    Produce(Vec<ProduceResult>),
    Read(Vec<ReadOutcome>),
    Waited,
    ListOffsets(Vec<OffsetResult>),
    Topics(Vec<TopicResult>),
    Applied,
    ProducerId(Result<i64, String>),
    Group(crate::groups::GroupReply),
    /// (topic, partition, error code) per offset of the commit, in request order.
    Committed(Vec<(String, i32, i16)>),
    /// (topic, partition, committed offset if any).
    Fetched(Vec<(String, i32, Option<crate::offsets::Committed>)>),
    Txn(crate::txn_coordinator::TxnReply),
    /// One error code per partition of a WriteMarkers.
    Markers(Vec<(TopicPartition, i16)>),
    /// Per partition: its producers by id, or an error code.
    Producers(Vec<ProducersOf>),
    /// Whether a proposed ISR change took effect.
    IsrAltered(bool),
    /// Per partition: error code and message of an election.
    Elected(Vec<(TopicPartition, i16, Option<String>)>),
    /// Per item of an admin request, in request order: error code and message.
    Answers(Vec<crate::partitions::Answer>),
    /// Per log a core holds: its size in bytes and how far its end is behind the high
    /// watermark.
    LogSizes(Vec<(TopicPartition, u64, i64)>),
    /// The quorum as its leader describes it (None: this node does not lead it), and the
    /// leader this node knows.
    Quorum(Option<crate::controller::QuorumDescription>),
    /// Partitions being reassigned.
    Reassignments(Vec<(TopicPartition, sluice_replication::PartitionState)>),
    /// A group request reached a core that does not coordinate the group (yet): the error.
    NotCoordinating(i16),
    /// Per partition: error code, epoch, end offset.
    EpochEndOffsets(Vec<(TopicPartition, i16, i32, i64)>),
}

#[derive(Debug)]
pub enum Envelope {
    Request {
        id: u64,
        from: usize,
        body: CoreRequest,
    },
    Response {
        id: u64,
        body: CoreResponse,
    },
}

/// This core's end of the mesh.
pub struct Router {
    pub core_id: usize,
    outboxes: Vec<Option<LocalSender<Envelope>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<CoreResponse>>>,
    next_id: Cell<u64>,
}

/// Why a cross-core call did not complete (the broker is shutting down).
#[derive(Debug)]
pub struct Disconnected;

impl Router {
    /// A router for a single-core broker: there are no peers.
    pub fn single() -> Rc<Router> {
        Rc::new(Router {
            core_id: 0,
            outboxes: vec![None],
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        })
    }

    /// Connects to every peer: one forwarder task per peer drains the outbox into the mesh.
    /// Returns the router and the receivers the caller must serve with [`serve_peer`].
    pub fn connect(
        senders: Senders<Envelope>,
        receivers: Receivers<Envelope>,
    ) -> (Rc<Router>, Receivers<Envelope>) {
        let core_id = senders.peer_id();
        let senders = Rc::new(senders);
        let mut outboxes = Vec::new();
        for peer in 0..senders.nr_consumers() {
            if peer == core_id {
                outboxes.push(None);
                continue;
            }
            let (tx, rx) = local_channel::new_unbounded::<Envelope>();
            let senders = senders.clone();
            glommio::spawn_local(async move {
                while let Some(envelope) = rx.recv().await {
                    if senders.send_to(peer, envelope).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
            outboxes.push(Some(tx));
        }
        let router = Router {
            core_id,
            outboxes,
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        };
        (Rc::new(router), receivers)
    }

    pub fn cores(&self) -> usize {
        self.outboxes.len()
    }

    /// Sends `body` to `core` and waits for its answer. The send itself is synchronous, which
    /// is what keeps per-partition order (see the module docs).
    pub fn call(
        &self,
        core: usize,
        body: CoreRequest,
    ) -> impl std::future::Future<Output = Result<CoreResponse, Disconnected>> + 'static {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let sent = match self.outboxes.get(core) {
            Some(Some(outbox)) => outbox
                .try_send(Envelope::Request {
                    id,
                    from: self.core_id,
                    body,
                })
                .is_ok(),
            _ => false,
        };
        if !sent {
            self.pending.borrow_mut().remove(&id);
        }
        async move {
            if !sent {
                return Err(Disconnected);
            }
            rx.await.map_err(|_| Disconnected)
        }
    }

    /// Sends an answer back to the core that asked.
    pub fn reply(&self, to: usize, id: u64, body: CoreResponse) {
        if let Some(Some(outbox)) = self.outboxes.get(to) {
            // A full stop of the peer is the only way this fails; the caller then never waits.
            let _ = outbox.try_send(Envelope::Response { id, body });
        }
    }

    /// Completes a local waiter with an answer from a peer.
    pub fn complete(&self, id: u64, body: CoreResponse) {
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.send(body);
        }
    }
}
