//! The metadata quorum's driver: KRaft's controller role, on core 0 of every node of a cluster.
//!
//! Consensus itself is raft-rs, a pure state machine (`tick`/`step`/`propose`/`ready`); this
//! module does its I/O. It persists what each `Ready` asks (the durable [`QuorumStore`], fsync'ed
//! before any message that depends on it leaves), sends Raft messages to the other voters over
//! TCP (the controller listener of `controller.quorum.voters`), and applies committed entries
//! to the [`MetadataImage`] — the cluster's brokers, topics, partition leaders and ISRs — then
//! broadcasts the changes to every core of this node. Every node applies the same entries in the
//! same order, so every node's image is the same; the image's `apply` is deterministic and
//! validates each entry, so two nodes racing to create one topic get one success and one
//! TOPIC_ALREADY_EXISTS, decided by the log.
//!
//! Concurrency: everything here lives on core 0 (`Rc`/`RefCell`); other cores reach it only by
//! cross-core messages to core 0, and learn its results by broadcast. Metadata changes are
//! rare (topic creation, broker arrival and loss), never on the produce/fetch path.
//!
//! The active controller (the Raft leader) also decides: it registers brokers that heartbeat,
//! unfences them, and fences a broker not heard from for `broker.session.timeout.ms`, moving
//! its leaderships (see `MetadataImage::fence_records`). Its decisions are proposals like any
//! other, so a controller that loses its leadership mid-decision decides nothing.
//!
//! A proposal carries (proposer node, sequence); a node has at most one in flight and resends it
//! until it is applied, and the image ignores a sequence it has seen, so a resent proposal that
//! was committed twice applies once.
//!
//! Process roles (KRaft's `process.roles`): a voter of `controller.quorum.voters` runs the Raft
//! node; a dedicated controller (`controller`) serves no clients and is no broker. A broker-only
//! node (`broker`) has no vote: it is an observer, as in KRaft, that fetches the committed
//! entries from a voter (the leader, once it knows it) with a long poll, keeps them in its own
//! [`QuorumStore`] and applies them like a voter does. Its proposals and heartbeats go to the
//! leader like a voter's.
//!
//! Wire format on the controller port (docs/FORMATS.md): frames of [length u32][kind u8]
//! [payload]; kind 1 a Raft message (protobuf, raft-rs's own encoding), 2 a proposal forwarded
//! to the leader (an encoded [`MetadataEntry`]), 3 a broker heartbeat (an encoded
//! [`MetadataEntry`] holding the sender's `RegisterBroker` record), 4 an observer's fetch and
//! 5 its answer (committed entries), 6 a request for the quorum's description and 7 its answer.
//! Kinds 1–3 flow one way; 4 and 6 are answered on the connection they came on.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use protobuf::Message as _;
use raft::eraftpb::{EntryType, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage as _};
use sluice_core::config::BrokerConfig;
use sluice_core::topic::TopicConfig;
use sluice_replication::metadata_image::{
    Applied, Change, ElectionRefusal, MetadataImage, Rejection,
};
use sluice_replication::metadata_records::{MetadataEntry, MetadataRecord};
use sluice_replication::quorum_store::QuorumStore;

use crate::metadata::{BrokerEndpoint, ClusterView, TopicMeta};
use crate::router::{CoreRequest, TopicChange, TopicResult};
use crate::shard::{placement, with_timeout, Shard};

/// One Raft tick. Election and heartbeat timeouts are counted in ticks.
const TICK: Duration = Duration::from_millis(100);
/// Largest frame accepted from a peer; anything bigger closes the connection.
const FRAME_BYTES_MAX: usize = 16 << 20;
/// Frames queued for one peer while it is slow or down; more are dropped (Raft resends).
const OUTBOX_DEPTH: usize = 1024;
/// Messages queued for the driver.
const INBOX_DEPTH: usize = 4096;
/// How long a proposal is resent before the caller gets REQUEST_TIMED_OUT.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for a proposal's entry before sending it again (a lost forward, a leader
/// that changed).
const PROPOSAL_RESEND: Duration = Duration::from_millis(500);
/// How long a peer that refused a connection is left alone.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Ids handed out per ProducerIds record, as Kafka's controller does.
const PRODUCER_ID_BLOCK: i64 = 1000;

const FRAME_RAFT: u8 = 1;
const FRAME_PROPOSE: u8 = 2;
const FRAME_HEARTBEAT: u8 = 3;
const FRAME_FETCH: u8 = 4;
const FRAME_ENTRIES: u8 = 5;
const FRAME_DESCRIBE: u8 = 6;
const FRAME_DESCRIPTION: u8 = 7;

/// How long a voter holds an observer's fetch when it has nothing new to send.
const OBSERVER_FETCH_WAIT: Duration = Duration::from_millis(500);
/// An observer not heard from for this long is no longer listed by DescribeQuorum.
const OBSERVER_FORGOTTEN: Duration = Duration::from_secs(300);
/// How many bytes of entries one fetch answer carries at most.
const OBSERVER_FETCH_BYTES: u64 = 1 << 20;

/// Raft ids must not be 0 (raft-rs's "no node"); Kafka node ids start at 0.
fn raft_id(node: i32) -> u64 {
    node as u64 + 1
}

fn node_id(raft: u64) -> i32 {
    raft as i32 - 1
}

/// Each voter of `controller.quorum.voters` with the address its controller listens on.
fn voter_addresses(config: &BrokerConfig) -> Result<Vec<(i32, SocketAddr)>, String> {
    config
        .controller_quorum_voters
        .iter()
        .map(|voter| {
            let host = if voter.host == "localhost" {
                "127.0.0.1"
            } else {
                &voter.host
            };
            format!("{host}:{}", voter.port)
                .parse()
                .map(|address| (voter.id, address))
                .map_err(|_| format!("controller.quorum.voters: bad address of {}", voter.id))
        })
        .collect()
}

/// What was recovered from disk before the cores start (built on the main thread, moved to
/// core 0).
pub struct Recovered {
    store: QuorumStore,
    storage: MemStorage,
    applied: u64,
    pub image: MetadataImage,
}

/// Opens the quorum's store and replays its committed entries into a fresh image: what the
/// cores start from. An entry that does not decode stops the broker (a damaged log, or one
/// from a newer sluice): guessing would fork this node's view of the cluster.
pub fn recover(config: &BrokerConfig) -> Result<Recovered, String> {
    let dir = crate::metadata::metadata_dir(&config.log_dirs).join("quorum");
    let voters: Vec<u64> = config
        .controller_quorum_voters
        .iter()
        .map(|v| raft_id(v.id))
        .collect();
    let (store, recovered) = QuorumStore::open(&dir, &voters)
        .map_err(|e| format!("metadata quorum in {}: {e}", dir.display()))?;
    let mut image = MetadataImage::default();
    let mut applied = 0;
    for entry in &recovered.committed {
        applied = entry.index;
        if entry.entry_type != EntryType::EntryNormal || entry.data.is_empty() {
            continue;
        }
        let decoded = MetadataEntry::decode(&entry.data)
            .map_err(|e| format!("metadata log entry {}: {e}", entry.index))?;
        image.apply(&decoded);
    }
    Ok(Recovered {
        store,
        storage: recovered.storage,
        applied,
        image,
    })
}

/// The topics of an image as this node's cores know them.
pub fn topics_of(image: &MetadataImage, broker: &BrokerConfig) -> Vec<TopicMeta> {
    image
        .topics
        .keys()
        .filter_map(|name| topic_meta(image, name, broker))
        .collect()
}

fn topic_meta(image: &MetadataImage, name: &str, broker: &BrokerConfig) -> Option<TopicMeta> {
    let topic = image.topics.get(name)?;
    let overrides = topic.configs.iter().cloned().collect();
    let config = TopicConfig::with_overrides(broker, &overrides).unwrap_or_else(|e| {
        eprintln!("sluice: topic {name}: {e}; using the broker's defaults");
        TopicConfig::from_broker(broker)
    });
    Some(TopicMeta {
        name: name.to_string(),
        id: topic.id,
        partitions: topic.partitions.len() as i32,
        config,
        states: topic.partitions.clone(),
    })
}

/// The brokers of an image, and the controller.
pub fn cluster_of(image: &MetadataImage, controller_id: i32) -> ClusterView {
    ClusterView {
        brokers: image
            .brokers
            .values()
            .map(|b| BrokerEndpoint {
                id: b.id,
                host: b.host.clone(),
                port: b.port,
                rack: b.rack.clone(),
                fenced: b.fenced,
            })
            .collect(),
        controller_id,
    }
}

enum Inbound {
    Raft(Message),
    /// A proposal forwarded by a follower (or made here): proposed if this node leads.
    Propose(Vec<u8>),
    Heartbeat(MetadataEntry),
}

/// The quorum as its leader describes it (see `Controller::describe_quorum`).
#[derive(Debug, Clone)]
pub struct QuorumDescription {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<VoterState>,
    /// Broker-only nodes following the log, as last seen fetching by the leader.
    pub observers: Vec<VoterState>,
}

#[derive(Debug, Clone)]
pub struct VoterState {
    pub id: i32,
    pub log_end_offset: i64,
    pub last_fetch_ms: i64,
    pub last_caught_up_ms: i64,
}

/// Why a proposal did not take effect.
#[derive(Debug)]
pub enum ProposeError {
    /// No entry with it was applied in time (no quorum, or no leader).
    TimedOut,
    Rejected(Rejection),
}

pub struct Controller {
    node_id: i32,
    /// This run of the broker: a new one makes the controller drop what the old one led.
    incarnation: u64,
    registration: MetadataRecord,
    /// The Raft node of a voter; None on a broker-only node (an observer).
    raft: Option<RefCell<RawNode<MemStorage>>>,
    /// Every voter's controller address.
    voters: Vec<(i32, SocketAddr)>,
    /// An observer's idea of the quorum's leader, from the voters' fetch answers.
    leader_hint: Cell<Option<i32>>,
    /// The last entry applied to the image.
    applied: Cell<u64>,
    /// Observers' fetches waiting for the next applied entry.
    applied_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// When each other voter's last Raft message arrived (DescribeQuorum's last fetch).
    voters_heard: RefCell<HashMap<i32, Instant>>,
    /// Active controller only: each observer's log end and when it last fetched.
    observers: RefCell<HashMap<i32, (u64, Instant)>>,
    store: RefCell<QuorumStore>,
    pub image: RefCell<MetadataImage>,
    outboxes: HashMap<u64, LocalSender<Vec<u8>>>,
    inbox: Rc<LocalSender<Inbound>>,
    /// This node's proposals waiting for their entry, by sequence.
    waiters: RefCell<HashMap<u64, oneshot::Sender<Applied>>>,
    next_sequence: Cell<u64>,
    /// One proposal of this node in flight at a time (see the module docs).
    proposing: glommio::sync::Semaphore,
    /// Active controller only: when each broker last heartbeat, since this node took the lead.
    heard_from: RefCell<HashMap<i32, Instant>>,
    leader_since: Cell<Option<Instant>>,
    /// Brokers a decision of this (active) controller is being proposed for.
    deciding: RefCell<HashSet<i32>>,
    session_timeout: Duration,
    heartbeat_interval: Duration,
    /// The last cluster summary logged (each change is logged once).
    last_summary: RefCell<String>,
    /// When a message from the quorum's leader last arrived (this node's start at first).
    last_leader_contact: Cell<Instant>,
    /// Cut off from the quorum for the session timeout (see `Shard::isolated`).
    isolated: Cell<bool>,
}

impl Controller {
    /// Starts the quorum on core 0: the Raft node, the controller listener, one link per peer,
    /// the driver, heartbeats and (while leading) the broker liveness checks.
    pub fn start(shard: &Rc<Shard>, recovered: Recovered) -> Result<Rc<Controller>, String> {
        let config = shard.broker.clone();
        let election_tick = (config.controller_quorum_election_timeout_ms / 100).max(3) as usize;
        let raft_config = raft::Config {
            id: raft_id(config.node_id),
            election_tick,
            heartbeat_tick: (election_tick / 4).max(1),
            applied: recovered.applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raft = match config.controller_role {
            true => Some(RefCell::new(
                RawNode::new(&raft_config, recovered.storage, &logger)
                    .map_err(|e| format!("metadata quorum: {e}"))?,
            )),
            false => None,
        };
        let voters = voter_addresses(&config)?;
        let mut outboxes = HashMap::new();
        for &(id, address) in &voters {
            if id == config.node_id {
                continue;
            }
            let (tx, rx) = local_channel::new_bounded(OUTBOX_DEPTH);
            glommio::spawn_local(peer_link(address, rx)).detach();
            outboxes.insert(raft_id(id), tx);
        }
        let (inbox, inbound) = local_channel::new_bounded(INBOX_DEPTH);
        let inbox = Rc::new(inbox);
        let incarnation = crate::shard::now_ms() as u64;
        let last = recovered.image.last_sequence(config.node_id);
        let controller = Rc::new(Controller {
            node_id: config.node_id,
            incarnation,
            registration: MetadataRecord::RegisterBroker {
                id: config.node_id,
                incarnation,
                host: config.advertised_host.clone(),
                port: config.advertised_port,
                rack: config.broker_rack.clone(),
            },
            raft,
            voters,
            leader_hint: Cell::new(None),
            applied: Cell::new(recovered.applied),
            applied_waiters: RefCell::new(Vec::new()),
            voters_heard: RefCell::new(HashMap::new()),
            observers: RefCell::new(HashMap::new()),
            store: RefCell::new(recovered.store),
            image: RefCell::new(recovered.image),
            outboxes,
            inbox,
            waiters: RefCell::new(HashMap::new()),
            // Past anything an earlier run of this node proposed, even if that was never applied.
            next_sequence: Cell::new(last.max(incarnation.saturating_mul(1000)) + 1),
            proposing: glommio::sync::Semaphore::new(1),
            heard_from: RefCell::new(HashMap::new()),
            leader_since: Cell::new(None),
            deciding: RefCell::new(HashSet::new()),
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
            heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
            last_summary: RefCell::new(String::new()),
            last_leader_contact: Cell::new(Instant::now()),
            isolated: Cell::new(false),
        });
        if config.controller_role {
            let listen = config
                .controller_listener()
                .ok_or("controller.quorum.voters does not list this node")?;
            let listener = crate::runtime::bind_listener(listen)
                .map_err(|e| format!("controller listener {listen}: {e}"))?;
            glommio::spawn_local(accept_peers(listener, controller.clone())).detach();
            glommio::spawn_local(drive(shard.clone(), controller.clone(), inbound)).detach();
            glommio::spawn_local(liveness(shard.clone(), controller.clone())).detach();
            if config.auto_leader_rebalance_enable {
                glommio::spawn_local(rebalance_loop(shard.clone(), controller.clone())).detach();
            }
        } else {
            // Nothing reaches an observer's inbox: it never leads.
            drop(inbound);
            glommio::spawn_local(observe(shard.clone(), controller.clone())).detach();
        }
        if config.broker_role {
            glommio::spawn_local(heartbeats(shard.clone(), controller.clone())).detach();
            glommio::spawn_local(watch_contact_loop(shard.clone(), controller.clone())).detach();
        }
        Ok(controller)
    }

    /// The node leading the quorum, if one is known.
    pub fn leader(&self) -> Option<i32> {
        match &self.raft {
            Some(raft) => {
                let id = raft.borrow().raft.leader_id;
                (id != raft::INVALID_ID).then(|| node_id(id))
            }
            None => self.leader_hint.get(),
        }
    }

    fn is_leader(&self) -> bool {
        self.raft
            .as_ref()
            .is_some_and(|raft| raft.borrow().raft.state == StateRole::Leader)
    }

    /// Proposes `records` as one entry and waits until this node has applied it (and every
    /// core here has seen its changes).
    pub async fn propose(
        self: &Rc<Self>,
        records: Vec<MetadataRecord>,
    ) -> Result<Vec<Change>, ProposeError> {
        let Ok(_permit) = self.proposing.acquire_permit(1).await else {
            return Err(ProposeError::TimedOut);
        };
        let sequence = self.next_sequence.get();
        self.next_sequence.set(sequence + 1);
        let entry = MetadataEntry {
            proposer: self.node_id,
            sequence,
            records,
        }
        .encode()
        .map_err(|e| ProposeError::Rejected(Rejection::Invalid(e.to_string())))?;
        let (tx, mut rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(sequence, tx);
        let deadline = Instant::now() + PROPOSAL_TIMEOUT;
        loop {
            self.submit(entry.clone());
            match with_timeout(&mut rx, PROPOSAL_RESEND).await {
                Some(Ok(Applied::Changes(changes))) => return Ok(changes),
                Some(Ok(Applied::Rejected(why))) => return Err(ProposeError::Rejected(why)),
                // Only a resend of an applied proposal is a duplicate, and the first
                // application completed the waiter.
                Some(Ok(Applied::Duplicate)) | Some(Err(_)) => return Err(ProposeError::TimedOut),
                None if Instant::now() >= deadline => {
                    self.waiters.borrow_mut().remove(&sequence);
                    return Err(ProposeError::TimedOut);
                }
                None => {}
            }
        }
    }

    /// Hands an encoded entry to the leader: proposed here if this node leads, forwarded
    /// otherwise, dropped while there is no leader (the caller resends).
    fn submit(&self, entry: Vec<u8>) {
        match self.leader() {
            Some(leader) if leader == self.node_id => {
                let _ = self.inbox.try_send(Inbound::Propose(entry));
            }
            Some(leader) => {
                if let Some(outbox) = self.outboxes.get(&raft_id(leader)) {
                    let _ = outbox.try_send(frame(FRAME_PROPOSE, &entry));
                }
            }
            None => {}
        }
    }

    /// A leader's ISR change (Kafka's AlterPartition): proposed as a `PartitionReplicas` record
    /// at the partition epoch this node's image has, so that it is refused if anything about the
    /// partition changed first — a follower fenced after the leader saw it catch up does not come
    /// back into the ISR by a change decided before. True once applied.
    pub async fn alter_isr(
        self: &Rc<Self>,
        shard: &Shard,
        tp: sluice_core::TopicPartition,
        leader_epoch: i32,
        isr: Vec<i32>,
    ) -> bool {
        let current = self.image.borrow().topics.get(&tp.topic).and_then(|t| {
            t.partitions
                .get(usize::try_from(tp.partition).ok()?)
                .cloned()
        });
        let Some(current) = current else {
            return false;
        };
        // Only the leader of this very epoch may change its ISR, never to drop itself, and
        // never to add a broker the controller has fenced.
        let fenced_joiner = {
            let image = self.image.borrow();
            isr.iter().any(|id| {
                !current.isr.contains(id) && image.brokers.get(id).is_none_or(|b| b.fenced)
            })
        };
        if current.leader != shard.broker.node_id
            || current.leader_epoch != leader_epoch
            || !isr.contains(&current.leader)
            || fenced_joiner
        {
            return false;
        }
        let record = MetadataRecord::PartitionReplicas {
            topic: tp.topic.clone(),
            partition: tp.partition,
            partition_epoch: current.partition_epoch,
            replicas: current.replicas.clone(),
            isr: isr.clone(),
            leader: current.leader,
            leader_epoch,
            adding: current.adding.clone(),
            removing: current.removing.clone(),
        };
        match self.propose(vec![record]).await {
            Ok(_) => {
                eprintln!("sluice: {tp}: ISR is now {isr:?}");
                true
            }
            Err(_) => false,
        }
    }

    /// ElectLeaders: one entry with every election that can be made; each partition's answer.
    /// With no partitions named, every partition whose preferred (or, unclean, any) leader is
    /// missing; those already led as wanted are left out of the answer, as in Kafka.
    pub async fn elect_leaders(
        self: &Rc<Self>,
        preferred: bool,
        partitions: Option<Vec<sluice_core::TopicPartition>>,
    ) -> Vec<(sluice_core::TopicPartition, i16, Option<String>)> {
        let named = partitions.is_some();
        let wanted = partitions.unwrap_or_else(|| {
            let image = self.image.borrow();
            image
                .topics
                .values()
                .flat_map(|t| {
                    (0..t.partitions.len() as i32)
                        .map(|p| sluice_core::TopicPartition::new(t.name.clone(), p))
                })
                .collect()
        });
        let mut records = Vec::new();
        let mut answers = Vec::new();
        for tp in wanted {
            let decided = self
                .image
                .borrow()
                .election(&tp.topic, tp.partition, preferred);
            match decided {
                Ok(record) => {
                    records.push(record);
                    answers.push((tp, 0, None));
                }
                Err(ElectionRefusal::NotNeeded) if !named => {}
                Err(refusal) => {
                    let (error, message) = match (refusal, preferred) {
                        (ElectionRefusal::UnknownPartition, _) => {
                            (ResponseError::UnknownTopicOrPartition, "no such partition")
                        }
                        (ElectionRefusal::NotNeeded, true) => (
                            ResponseError::ElectionNotNeeded,
                            "the preferred replica leads already",
                        ),
                        (ElectionRefusal::NotNeeded, false) => (
                            ResponseError::ElectionNotNeeded,
                            "the partition has a leader",
                        ),
                        (ElectionRefusal::NotAvailable, true) => (
                            ResponseError::PreferredLeaderNotAvailable,
                            "the preferred replica is not alive and in sync",
                        ),
                        (ElectionRefusal::NotAvailable, false) => (
                            ResponseError::EligibleLeadersNotAvailable,
                            "no replica is alive",
                        ),
                    };
                    answers.push((tp, error.code(), Some(message.to_string())));
                }
            }
        }
        if records.is_empty() {
            return answers;
        }
        if let Err(e) = self.propose(records).await {
            let (error, message) = match e {
                ProposeError::TimedOut => (
                    ResponseError::RequestTimedOut,
                    "the metadata quorum did not commit the election in time".to_string(),
                ),
                ProposeError::Rejected(why) => (ResponseError::InvalidRequest, why.to_string()),
            };
            for answer in answers.iter_mut().filter(|a| a.1 == 0) {
                answer.1 = error.code();
                answer.2 = Some(message.clone());
            }
        }
        answers
    }

    /// The quorum as its leader sees it (DescribeQuorum), if this node leads it: the leader's
    /// epoch (Raft term), the high watermark (commit index), and per voter its log end as
    /// replicated to it (the leader's own log end for itself) and when it was last heard from
    /// (ms since the epoch; -1 never).
    pub fn describe_quorum(&self) -> Option<QuorumDescription> {
        if !self.is_leader() {
            return None;
        }
        let raft = self.raft.as_ref()?.borrow();
        let now_ms = crate::shard::now_ms();
        let now = Instant::now();
        let heard = self.voters_heard.borrow();
        let last_index = raft.raft.raft_log.last_index();
        let committed = raft.raft.raft_log.committed;
        let mut voters: Vec<VoterState> = raft
            .raft
            .prs()
            .iter()
            .map(|(id, progress)| {
                let node = node_id(*id);
                let (log_end, heard_ms) = if node == self.node_id {
                    (last_index, now_ms)
                } else {
                    let heard_ms = heard.get(&node).map_or(-1, |at| {
                        now_ms - i64::try_from(now.duration_since(*at).as_millis()).unwrap_or(0)
                    });
                    (progress.matched, heard_ms)
                };
                VoterState {
                    id: node,
                    log_end_offset: i64::try_from(log_end).unwrap_or(i64::MAX),
                    last_fetch_ms: heard_ms,
                    last_caught_up_ms: if log_end >= committed { heard_ms } else { -1 },
                }
            })
            .collect();
        voters.sort_by_key(|v| v.id);
        let mut observers: Vec<VoterState> = self
            .observers
            .borrow()
            .iter()
            .map(|(id, (log_end, at))| {
                let fetched_ms =
                    now_ms - i64::try_from(now.duration_since(*at).as_millis()).unwrap_or(0);
                VoterState {
                    id: *id,
                    log_end_offset: i64::try_from(*log_end).unwrap_or(i64::MAX),
                    last_fetch_ms: fetched_ms,
                    last_caught_up_ms: if *log_end >= committed {
                        fetched_ms
                    } else {
                        -1
                    },
                }
            })
            .collect();
        observers.sort_by_key(|o| o.id);
        Some(QuorumDescription {
            leader_id: self.node_id,
            leader_epoch: i32::try_from(raft.raft.term).unwrap_or(i32::MAX),
            high_watermark: i64::try_from(committed).unwrap_or(i64::MAX),
            voters,
            observers,
        })
    }

    /// The quorum's description from its leader: this node's own if it leads, otherwise asked
    /// of the leader over the controller port (None: no leader known, or it did not answer).
    pub async fn quorum(&self) -> Option<QuorumDescription> {
        if let Some(described) = self.describe_quorum() {
            return Some(described);
        }
        let leader = self.leader().filter(|l| *l != self.node_id)?;
        let address = self.voters.iter().find(|(id, _)| *id == leader)?.1;
        let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(1))
            .await
            .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(&frame(FRAME_DESCRIBE, &[])).await.ok()?;
        match read_frame(&mut stream).await? {
            (FRAME_DESCRIPTION, payload) => decode_description(&payload),
            _ => None,
        }
    }

    /// A voter's answer to an observer's fetch from `from`: the committed entries it has applied
    /// from there (at most `OBSERVER_FETCH_BYTES`, at least one), after waiting up to `wait` for
    /// one if there is none yet. Payload: responder i32, leader i32 (-1 unknown), count u32, then
    /// per entry its length u32 and protobuf encoding.
    async fn serve_fetch(&self, observer: i32, from: u64, wait: Duration) -> Vec<u8> {
        if self.is_leader() {
            let mut observers = self.observers.borrow_mut();
            // Observers gone for good (a broker removed or renumbered) leave DescribeQuorum, as
            // KRaft times them out.
            observers.retain(|_, (_, at)| at.elapsed() < OBSERVER_FORGOTTEN);
            observers.insert(observer, (from.saturating_sub(1), Instant::now()));
        }
        if self.applied.get() < from {
            let (tx, rx) = oneshot::channel();
            {
                let mut waiters = self.applied_waiters.borrow_mut();
                // Fetches that timed out (nothing was applied meanwhile) left their senders.
                waiters.retain(|w| !w.is_canceled());
                waiters.push(tx);
            }
            let _ = with_timeout(rx, wait).await;
        }
        let entries = match &self.raft {
            Some(raft) => {
                let raft = raft.borrow();
                let store = raft.store();
                let last = self.applied.get().min(store.last_index().unwrap_or(0));
                if from >= 1 && from <= last {
                    store
                        .entries(
                            from,
                            last + 1,
                            OBSERVER_FETCH_BYTES,
                            raft::GetEntriesContext::empty(false),
                        )
                        .unwrap_or_default()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.leader().unwrap_or(-1).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for entry in &entries {
            let Ok(bytes) = entry.write_to_bytes() else {
                return Vec::new();
            };
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// A block of producer ids for this broker: (first, count).
    pub async fn producer_id_block(self: &Rc<Self>) -> Result<(i64, i64), String> {
        loop {
            let first = self.image.borrow().next_producer_id;
            let record = MetadataRecord::ProducerIds {
                broker: self.node_id,
                first,
                count: PRODUCER_ID_BLOCK,
            };
            match self.propose(vec![record]).await {
                Ok(_) => return Ok((first, PRODUCER_ID_BLOCK)),
                // Another broker took that block first: ask for the next one.
                Err(ProposeError::Rejected(_)) => continue,
                Err(ProposeError::TimedOut) => {
                    return Err("the metadata quorum did not answer".into())
                }
            }
        }
    }

    /// The active controller's decision about a broker that heartbeat: register it (new or
    /// restarted), or unfence it.
    fn on_heartbeat(self: &Rc<Self>, heartbeat: MetadataEntry) {
        if !self.is_leader() {
            return;
        }
        let Some(MetadataRecord::RegisterBroker {
            id,
            incarnation,
            host,
            port,
            rack,
        }) = heartbeat.records.into_iter().next()
        else {
            return;
        };
        self.heard_from.borrow_mut().insert(id, Instant::now());
        let needs_registration = {
            let image = self.image.borrow();
            match image.brokers.get(&id) {
                None => true,
                Some(b) => {
                    b.incarnation != incarnation
                        || b.host != host
                        || b.port != port
                        || b.rack != rack
                }
            }
        };
        let fenced = self
            .image
            .borrow()
            .brokers
            .get(&id)
            .is_some_and(|b| b.fenced);
        if !needs_registration && !fenced {
            return;
        }
        if !self.deciding.borrow_mut().insert(id) {
            return;
        }
        let controller = self.clone();
        glommio::spawn_local(async move {
            if needs_registration {
                let records =
                    controller
                        .image
                        .borrow()
                        .register_records(id, incarnation, host, port, rack);
                if let Err(e) = controller.propose(records).await {
                    eprintln!("sluice: registering broker {id}: {e:?}");
                }
            }
            // A registered broker starts fenced; it is unfenced as soon as it is registered,
            // since this broker's heartbeat shows it alive.
            let records = controller.image.borrow().unfence_records(id);
            if !records.is_empty() {
                if let Err(e) = controller.propose(records).await {
                    eprintln!("sluice: unfencing broker {id}: {e:?}");
                }
            }
            controller.deciding.borrow_mut().remove(&id);
        })
        .detach();
    }
}

/// Frames `payload` for the wire.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// Sends frames to one peer over one connection, reconnecting as needed. While the peer is
/// unreachable its frames are dropped: Raft resends what matters.
async fn peer_link(address: SocketAddr, frames: LocalReceiver<Vec<u8>>) {
    let mut stream: Option<TcpStream> = None;
    let mut down_until: Option<Instant> = None;
    while let Some(frame) = frames.recv().await {
        if stream.is_none() {
            if down_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match TcpStream::connect_timeout(address, Duration::from_millis(500)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    down_until = None;
                }
                Err(_) => {
                    down_until = Some(Instant::now() + RECONNECT_BACKOFF);
                    continue;
                }
            }
        }
        if let Some(s) = stream.as_mut() {
            if s.write_all(&frame).await.is_err() {
                stream = None;
            }
        }
    }
}

/// Accepts connections from other controllers and observers.
async fn accept_peers(listener: glommio::net::TcpListener, controller: Rc<Controller>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(read_peer(stream, controller.clone())).detach();
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One frame: (kind, payload); None when the connection ends, fails or sends a frame over
/// `FRAME_BYTES_MAX`.
async fn read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.ok()?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if length > FRAME_BYTES_MAX {
        return None;
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.ok()?;
    Some((header[4], payload))
}

/// Reads one peer's frames until it closes or sends something malformed (then the connection
/// is closed; the peer reconnects). Raft messages, proposals and heartbeats go to the driver;
/// fetches and quorum descriptions are answered on the same connection.
async fn read_peer(mut stream: TcpStream, controller: Rc<Controller>) {
    while let Some((kind, payload)) = read_frame(&mut stream).await {
        let inbound = match kind {
            FRAME_RAFT => match Message::parse_from_bytes(&payload) {
                Ok(m) => Inbound::Raft(m),
                Err(_) => return,
            },
            FRAME_PROPOSE => match MetadataEntry::decode(&payload) {
                Ok(_) => Inbound::Propose(payload),
                Err(_) => return,
            },
            FRAME_HEARTBEAT => match MetadataEntry::decode(&payload) {
                Ok(entry) => Inbound::Heartbeat(entry),
                Err(_) => return,
            },
            FRAME_FETCH => {
                // Observer id i32, first index wanted u64, longest wait in ms u32.
                let Some((observer, from, wait_ms)) = decode_fetch(&payload) else {
                    return;
                };
                let wait = Duration::from_millis(u64::from(wait_ms)).min(OBSERVER_FETCH_WAIT * 4);
                let answer = controller.serve_fetch(observer, from, wait).await;
                if stream
                    .write_all(&frame(FRAME_ENTRIES, &answer))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            FRAME_DESCRIBE => {
                let answer = controller
                    .describe_quorum()
                    .map(|q| encode_description(&q))
                    .unwrap_or_default();
                if stream
                    .write_all(&frame(FRAME_DESCRIPTION, &answer))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            _ => return,
        };
        if controller.inbox.send(inbound).await.is_err() {
            return;
        }
    }
}

fn decode_fetch(payload: &[u8]) -> Option<(i32, u64, u32)> {
    if payload.len() != 16 {
        return None;
    }
    let observer = i32::from_le_bytes(payload[0..4].try_into().ok()?);
    let from = u64::from_le_bytes(payload[4..12].try_into().ok()?);
    let wait_ms = u32::from_le_bytes(payload[12..16].try_into().ok()?);
    Some((observer, from, wait_ms))
}

/// The quorum's description on the controller port: leader i32, epoch i32, high watermark
/// i64, then voters and observers, each a count u32 and per replica id i32, log end i64, last
/// fetch ms i64, last caught up ms i64. An empty payload: the asked node does not lead.
fn encode_description(q: &QuorumDescription) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&q.leader_id.to_le_bytes());
    out.extend_from_slice(&q.leader_epoch.to_le_bytes());
    out.extend_from_slice(&q.high_watermark.to_le_bytes());
    for replicas in [&q.voters, &q.observers] {
        out.extend_from_slice(&(replicas.len() as u32).to_le_bytes());
        for r in replicas {
            out.extend_from_slice(&r.id.to_le_bytes());
            out.extend_from_slice(&r.log_end_offset.to_le_bytes());
            out.extend_from_slice(&r.last_fetch_ms.to_le_bytes());
            out.extend_from_slice(&r.last_caught_up_ms.to_le_bytes());
        }
    }
    out
}

fn decode_description(payload: &[u8]) -> Option<QuorumDescription> {
    let mut reader = Reader(payload);
    let leader_id = reader.i32()?;
    let leader_epoch = reader.i32()?;
    let high_watermark = reader.i64()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = reader.u32()? as usize;
        for _ in 0..count.min(payload.len()) {
            list.push(VoterState {
                id: reader.i32()?,
                log_end_offset: reader.i64()?,
                last_fetch_ms: reader.i64()?,
                last_caught_up_ms: reader.i64()?,
            });
        }
    }
    let [voters, observers] = lists;
    Some(QuorumDescription {
        leader_id,
        leader_epoch,
        high_watermark,
        voters,
        observers,
    })
}

/// Little-endian fields off the front of a payload; None once it runs short.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }

    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// A fetch answer: (responder, leader if it knows one, entries). None if it does not decode.
fn decode_entries(payload: &[u8]) -> Option<(i32, Option<i32>, Vec<raft::eraftpb::Entry>)> {
    let mut reader = Reader(payload);
    let responder = reader.i32()?;
    let leader = reader.i32()?;
    let count = reader.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let length = reader.u32()? as usize;
        entries.push(raft::eraftpb::Entry::parse_from_bytes(reader.bytes(length)?).ok()?);
    }
    if !reader.0.is_empty() {
        return None;
    }
    Some((responder, (leader >= 0).then_some(leader), entries))
}

/// A broker-only node follows the quorum's log: it fetches the committed entries after the
/// last it applied from a voter (the leader, once a voter names it), makes them durable in its
/// own store and applies them. A voter that fails or knows no leader is left for the next.
/// Each answer from the leader counts as contact with the quorum (see `watch_contact`).
async fn observe(shard: Rc<Shard>, controller: Rc<Controller>) {
    let voters = controller.voters.clone();
    if voters.is_empty() {
        return;
    }
    let mut target = 0usize;
    let mut stream: Option<TcpStream> = None;
    while !shard.stopping.get() {
        if let Some(leader) = controller.leader_hint.get() {
            if let Some(i) = voters.iter().position(|(id, _)| *id == leader) {
                if i != target {
                    target = i;
                    stream = None;
                }
            }
        }
        let (voter, address) = voters[target];
        if stream.is_none() {
            match TcpStream::connect_timeout(address, Duration::from_millis(500)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(OBSERVER_FETCH_WAIT + Duration::from_secs(2)));
                    stream = Some(s);
                }
                Err(_) => {
                    follow_leader(&shard, &controller, None).await;
                    target = (target + 1) % voters.len();
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else {
            continue;
        };
        let from = controller.applied.get() + 1;
        let mut request = Vec::with_capacity(16);
        request.extend_from_slice(&controller.node_id.to_le_bytes());
        request.extend_from_slice(&from.to_le_bytes());
        request.extend_from_slice(&(OBSERVER_FETCH_WAIT.as_millis() as u32).to_le_bytes());
        let answer = match s.write_all(&frame(FRAME_FETCH, &request)).await {
            Ok(()) => read_frame(s).await,
            Err(_) => None,
        };
        let Some((_, leader, entries)) = answer
            .filter(|(kind, _)| *kind == FRAME_ENTRIES)
            .and_then(|(_, payload)| decode_entries(&payload))
            .filter(|(responder, _, _)| *responder == voter)
        else {
            stream = None;
            follow_leader(&shard, &controller, None).await;
            target = (target + 1) % voters.len();
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
            continue;
        };
        if leader == Some(voter) {
            controller.last_leader_contact.set(Instant::now());
        }
        if let Err(e) = follow(&shard, &controller, from, entries).await {
            eprintln!("sluice: metadata quorum: {e}; stopping");
            std::process::exit(70);
        }
        follow_leader(&shard, &controller, leader).await;
        if leader.is_none() {
            // An election is under way: ask the next voter after a moment.
            stream = None;
            target = (target + 1) % voters.len();
            glommio::timer::sleep(TICK).await;
        }
    }
}

/// An observer's idea of the quorum's leader changes: its cores learn the controller id anew.
async fn follow_leader(shard: &Rc<Shard>, controller: &Rc<Controller>, leader: Option<i32>) {
    if controller.leader_hint.replace(leader) != leader {
        publish_cluster(shard, controller).await;
    }
}

/// An observer's step: entries from `from` on, checked to be the next ones, made durable, then
/// applied. A leader change is told to the cores like a voter's.
async fn follow(
    shard: &Rc<Shard>,
    controller: &Rc<Controller>,
    from: u64,
    entries: Vec<raft::eraftpb::Entry>,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    if entries
        .iter()
        .enumerate()
        .any(|(i, e)| e.index != from + i as u64)
    {
        // Not what was asked for: a confused voter. Nothing is applied from it.
        return Ok(());
    }
    let last = entries.last().map_or(0, |e| e.index);
    {
        let mut store = controller.store.borrow_mut();
        store.append(&entries).map_err(|e| e.to_string())?;
        let hard_state = raft::eraftpb::HardState {
            term: entries.last().map_or(0, |e| e.term),
            vote: 0,
            commit: last,
            ..Default::default()
        };
        store
            .set_hard_state(&hard_state)
            .map_err(|e| e.to_string())?;
        // Durable before applied: partition logs are created and removed by what is applied,
        // and a restart judges the logs it finds by what the store holds.
        store.sync().map_err(|e| e.to_string())?;
    }
    apply_committed(shard, controller, &entries).await
}

/// The Raft driver: ticks, steps what peers send, and handles each Ready.
async fn drive(shard: Rc<Shard>, controller: Rc<Controller>, inbound: LocalReceiver<Inbound>) {
    let Some(raft) = &controller.raft else {
        return;
    };
    let mut next_tick = Instant::now() + TICK;
    loop {
        if shard.stopping.get() {
            return;
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let message = with_timeout(inbound.recv(), wait).await;
        match message {
            Some(None) => return,
            Some(Some(message)) => handle(&controller, message),
            None => {}
        }
        if Instant::now() >= next_tick {
            raft.borrow_mut().tick();
            next_tick = Instant::now() + TICK;
        }
        if let Err(e) = handle_ready(&shard, &controller, raft).await {
            // The metadata log could not be made durable: carrying on could acknowledge what
            // a restart would not remember.
            eprintln!("sluice: metadata quorum: {e}; stopping");
            std::process::exit(70);
        }
    }
}

fn handle(controller: &Rc<Controller>, message: Inbound) {
    match message {
        Inbound::Raft(m) => {
            let Some(raft) = &controller.raft else {
                return;
            };
            let from = m.from;
            controller
                .voters_heard
                .borrow_mut()
                .insert(node_id(from), Instant::now());
            let mut raft = raft.borrow_mut();
            // Errors are messages from unknown peers or stale terms: nothing to do.
            let _ = raft.step(m);
            if from == raft.raft.leader_id {
                controller.last_leader_contact.set(Instant::now());
            }
        }
        Inbound::Propose(entry) => {
            if let Some(raft) = controller.raft.as_ref().filter(|_| controller.is_leader()) {
                let _ = raft.borrow_mut().propose(Vec::new(), entry);
            }
        }
        Inbound::Heartbeat(entry) => controller.on_heartbeat(entry),
    }
}

/// Persists, sends and applies what raft-rs has ready, in the order its docs require:
/// messages a leader may send before persisting first, then entries and hard state made durable,
/// then the messages that depend on them.
async fn handle_ready(
    shard: &Rc<Shard>,
    controller: &Rc<Controller>,
    node: &RefCell<RawNode<MemStorage>>,
) -> Result<(), String> {
    let mut committed = Vec::new();
    let mut leader_changed = false;
    {
        let mut raft = node.borrow_mut();
        if !raft.has_ready() {
            return Ok(());
        }
        let mut ready = raft.ready();
        if ready.ss().is_some() {
            leader_changed = true;
        }
        send(controller, ready.take_messages());
        if !ready.snapshot().is_empty() {
            // This store never compacts, so no peer has a reason to send a snapshot.
            eprintln!("sluice: metadata quorum: ignoring an unexpected snapshot");
        }
        committed.extend(ready.take_committed_entries());
        let mut store = controller.store.borrow_mut();
        if !ready.entries().is_empty() {
            store.append(ready.entries()).map_err(|e| e.to_string())?;
            raft.mut_store()
                .wl()
                .append(ready.entries())
                .map_err(|e| e.to_string())?;
        }
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs).map_err(|e| e.to_string())?;
            raft.mut_store().wl().set_hardstate(hs.clone());
        }
        if ready.must_sync() {
            store.sync().map_err(|e| e.to_string())?;
        }
        send(controller, ready.take_persisted_messages());
        let mut light = raft.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut storage = raft.mut_store().wl();
            storage.mut_hard_state().commit = commit;
            let hs = storage.hard_state().clone();
            drop(storage);
            store.set_hard_state(&hs).map_err(|e| e.to_string())?;
        }
        send(controller, light.take_messages());
        committed.extend(light.take_committed_entries());
        if !committed.is_empty() {
            // What is applied must be what a restart replays: partition logs are created and,
            // at the next start, kept or removed by it.
            store.sync().map_err(|e| e.to_string())?;
        }
    }
    if leader_changed {
        let leading = controller.is_leader();
        if leading && controller.leader_since.get().is_none() {
            controller.leader_since.set(Some(Instant::now()));
            controller.heard_from.borrow_mut().clear();
            controller.observers.borrow_mut().clear();
        } else if !leading {
            controller.leader_since.set(None);
        }
        publish_cluster(shard, controller).await;
    }
    apply_committed(shard, controller, &committed).await?;
    node.borrow_mut().advance_apply();
    Ok(())
}

/// Applies committed entries to the image, in order, tells this node's cores and proposers,
/// and wakes the observers' fetches waiting for them. Voters and observers alike.
async fn apply_committed(
    shard: &Rc<Shard>,
    controller: &Rc<Controller>,
    committed: &[raft::eraftpb::Entry],
) -> Result<(), String> {
    for entry in committed {
        if entry.entry_type == EntryType::EntryNormal && !entry.data.is_empty() {
            let decoded = MetadataEntry::decode(&entry.data)
                .map_err(|e| format!("committed entry {} does not decode: {e}", entry.index))?;
            let applied = controller.image.borrow_mut().apply(&decoded);
            if let Applied::Changes(changes) = &applied {
                publish(shard, controller, changes).await;
            }
            if decoded.proposer == controller.node_id {
                if let Some(waiter) = controller.waiters.borrow_mut().remove(&decoded.sequence) {
                    let _ = waiter.send(applied);
                }
            }
        }
        controller.applied.set(entry.index);
    }
    if !committed.is_empty() {
        for waiter in controller.applied_waiters.take() {
            let _ = waiter.send(());
        }
    }
    Ok(())
}

fn send(controller: &Controller, messages: Vec<Message>) {
    for message in messages {
        let Some(outbox) = controller.outboxes.get(&message.to) else {
            continue;
        };
        match message.write_to_bytes() {
            Ok(bytes) => _ = outbox.try_send(frame(FRAME_RAFT, &bytes)),
            Err(e) => eprintln!("sluice: metadata quorum: cannot encode a message: {e}"),
        }
    }
}

/// Brings every core of this node up to date with applied changes.
async fn publish(shard: &Rc<Shard>, controller: &Rc<Controller>, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Topic(name) => {
                let meta = topic_meta(&controller.image.borrow(), name, &shard.broker);
                if let Some(meta) = meta {
                    let cores = placement(&meta, shard.broker.node_id, shard.cores());
                    let revision = shard.take_revision();
                    crate::topics::broadcast(
                        shard,
                        TopicChange::Created {
                            revision,
                            meta: Box::new(meta),
                            cores,
                        },
                    )
                    .await;
                }
            }
            Change::TopicRemoved(name) => {
                let revision = shard.take_revision();
                crate::topics::broadcast(
                    shard,
                    TopicChange::Deleted {
                        revision,
                        name: name.clone(),
                    },
                )
                .await;
            }
            Change::Brokers => publish_cluster(shard, controller).await,
            Change::ProducerIds { .. } => {}
        }
    }
}

async fn publish_cluster(shard: &Rc<Shard>, controller: &Rc<Controller>) {
    let view = {
        let image = controller.image.borrow();
        cluster_of(&image, visible_controller(&image, controller.leader()))
    };
    // Operators (and scripts/cluster.sh) watch for this line: the cluster as this node sees it.
    let live: Vec<String> = view
        .brokers
        .iter()
        .filter(|b| !b.fenced)
        .map(|b| b.id.to_string())
        .collect();
    let summary = format!(
        "{} live broker(s) [{}], controller {}",
        live.len(),
        live.join(","),
        view.controller_id
    );
    if controller.last_summary.replace(summary.clone()) != summary {
        eprintln!("sluice: cluster: {summary}");
    }
    let calls = (0..shard.cores()).map(|core| {
        let shard = shard.clone();
        let view = view.clone();
        async move { shard.call(core, CoreRequest::ApplyCluster(view)).await }
    });
    futures::future::join_all(calls).await;
}

/// The controller id clients are told (Metadata, DescribeCluster): the quorum's leader when it
/// is a live broker too; otherwise, as Kafka's KRaft brokers do (clients cannot reach a
/// dedicated controller), a live broker — the lowest id, so that every node names the same one.
fn visible_controller(image: &MetadataImage, leader: Option<i32>) -> i32 {
    let live = |id: &i32| image.brokers.get(id).is_some_and(|b| !b.fenced);
    match leader {
        Some(leader) if live(&leader) => leader,
        None => -1,
        Some(_) => image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .min()
            .unwrap_or(-1),
    }
}

/// Every node tells the active controller it is alive, every `broker.heartbeat.interval.ms`
/// (every tick until the first one reached a leader).
async fn heartbeats(shard: Rc<Shard>, controller: Rc<Controller>) {
    let heartbeat = MetadataEntry {
        proposer: controller.node_id,
        sequence: 0,
        records: vec![controller.registration.clone()],
    };
    let encoded = match heartbeat.encode() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sluice: metadata quorum: this broker's registration: {e}");
            return;
        }
    };
    loop {
        if shard.stopping.get() {
            return;
        }
        let sent = match controller.leader() {
            None => false,
            Some(leader) if leader == controller.node_id => {
                controller.on_heartbeat(heartbeat.clone());
                true
            }
            Some(leader) => controller
                .outboxes
                .get(&raft_id(leader))
                .is_some_and(|outbox| outbox.try_send(frame(FRAME_HEARTBEAT, &encoded)).is_ok()),
        };
        let registered = controller
            .image
            .borrow()
            .brokers
            .get(&controller.node_id)
            .is_some_and(|b| b.incarnation == controller.incarnation && !b.fenced);
        let pause = if sent && registered {
            controller.heartbeat_interval
        } else {
            TICK
        };
        glommio::timer::sleep(pause).await;
    }
}

/// The active controller fences brokers it has not heard from for `broker.session.timeout.ms`
/// (counted from when it took the lead, for brokers it has not heard from at all).
async fn liveness(shard: Rc<Shard>, controller: Rc<Controller>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        if shard.stopping.get() {
            return;
        }
        let Some(since) = controller.leader_since.get() else {
            continue;
        };
        if !controller.is_leader() {
            continue;
        }
        let now = Instant::now();
        let silent: Vec<i32> = {
            let image = controller.image.borrow();
            let heard = controller.heard_from.borrow();
            image
                .brokers
                .values()
                .filter(|b| !b.fenced)
                .filter(|b| {
                    let last = heard.get(&b.id).copied().unwrap_or(since).max(since);
                    now.duration_since(last) > controller.session_timeout
                })
                .map(|b| b.id)
                .collect()
        };
        unclean_elections(&shard, &controller);
        complete_reassignments(&controller);
        for id in silent {
            if !controller.deciding.borrow_mut().insert(id) {
                continue;
            }
            let records = controller.image.borrow().fence_records(id);
            let controller = controller.clone();
            glommio::spawn_local(async move {
                if let Err(e) = controller.propose(records).await {
                    eprintln!("sluice: fencing broker {id}: {e:?}");
                }
                controller.deciding.borrow_mut().remove(&id);
            })
            .detach();
        }
    }
}

/// A broker checks its contact with the quorum's leader every 250 ms.
async fn watch_contact_loop(shard: Rc<Shard>, controller: Rc<Controller>) {
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        watch_contact(&shard, &controller).await;
    }
}

/// A node that has heard nothing from the quorum's leader for `broker.session.timeout.ms`
/// (and does not lead the quorum itself: with check_quorum a leader steps down sooner) has
/// been fenced by the active controller, which counts the same timeout from this node's last
/// heartbeat, and its partitions have other leaders or none. It stops serving clients (see
/// `Shard::isolated`) so that they find the new leaders, instead of waiting on it until their
/// requests time out and asking it again for metadata it no longer has; it serves again once
/// the quorum's leader is heard.
async fn watch_contact(shard: &Rc<Shard>, controller: &Rc<Controller>) {
    if controller.is_leader() {
        // Counted from now if it steps down, not from before it led.
        controller.last_leader_contact.set(Instant::now());
    }
    let silent = controller.last_leader_contact.get().elapsed();
    let isolated = !controller.is_leader() && silent > controller.session_timeout;
    if isolated == controller.isolated.get() {
        return;
    }
    controller.isolated.set(isolated);
    if isolated {
        eprintln!(
            "sluice: cut off from the metadata quorum for {} ms: fenced, serving no client until \
             it is back",
            silent.as_millis()
        );
    } else {
        eprintln!("sluice: back in contact with the metadata quorum");
    }
    let calls = (0..shard.cores()).map(|core| {
        let shard = shard.clone();
        async move { shard.call(core, CoreRequest::Isolated(isolated)).await }
    });
    futures::future::join_all(calls).await;
}

/// The active controller elects an out-of-sync replica where a topic allows it and no in-sync
/// replica is left (see `MetadataImage::unclean_elections`), and says so: what only the lost
/// in-sync replicas had is gone.
fn unclean_elections(shard: &Rc<Shard>, controller: &Rc<Controller>) {
    // One election proposal at a time, under a key no broker id uses.
    const UNCLEAN: i32 = -1;
    if controller.deciding.borrow().contains(&UNCLEAN) {
        return;
    }
    let broker = shard.broker.clone();
    let allowed = |topic: &sluice_replication::metadata_image::TopicImage| {
        let overrides = topic.configs.iter().cloned().collect();
        TopicConfig::with_overrides(&broker, &overrides)
            .map(|c| c.unclean_leader_election_enable)
            .unwrap_or(broker.unclean_leader_election_enable)
    };
    let records = controller.image.borrow().unclean_elections(&allowed);
    if records.is_empty() {
        return;
    }
    controller.deciding.borrow_mut().insert(UNCLEAN);
    let controller = controller.clone();
    glommio::spawn_local(async move {
        let proposed = controller.propose(records.clone()).await;
        for record in records.iter().filter(|_| proposed.is_ok()) {
            if let MetadataRecord::PartitionChange {
                topic,
                partition,
                leader,
                leader_epoch,
                ..
            } = record
            {
                eprintln!(
                    "sluice: {topic}-{partition}: unclean leader election: broker {leader} leads \
                     at epoch {leader_epoch} without having been in sync; records only the lost \
                     in-sync replicas had are gone"
                );
            }
        }
        if let Err(e) = proposed {
            eprintln!("sluice: unclean leader election: {e:?}");
        }
        controller.deciding.borrow_mut().remove(&UNCLEAN);
    })
    .detach();
}

/// The active controller completes the reassignments whose new replicas are all in sync: the
/// replicas being removed go (see `MetadataImage::reassignment_completions`). Their brokers
/// then stop following and delete their copies.
fn complete_reassignments(controller: &Rc<Controller>) {
    // One completion proposal at a time, under a key no broker id uses.
    const COMPLETING: i32 = -2;
    if controller.deciding.borrow().contains(&COMPLETING) {
        return;
    }
    let records = controller.image.borrow().reassignment_completions();
    if records.is_empty() {
        return;
    }
    controller.deciding.borrow_mut().insert(COMPLETING);
    let controller = controller.clone();
    glommio::spawn_local(async move {
        // One entry per partition: a partition that changed meanwhile (a stale partition
        // epoch) must not hold up the others; it is looked at again on the next round.
        for record in records {
            let MetadataRecord::PartitionReplicas {
                topic,
                partition,
                replicas,
                leader,
                ..
            } = &record
            else {
                continue;
            };
            let what = format!(
                "{topic}-{partition}: reassignment complete, replicas {replicas:?}, leader {leader}"
            );
            match controller.propose(vec![record.clone()]).await {
                Ok(_) => eprintln!("sluice: {what}"),
                Err(ProposeError::Rejected(Rejection::StalePartitionEpoch(..))) => {}
                Err(e) => eprintln!("sluice: completing a reassignment: {e:?}"),
            }
        }
        controller.deciding.borrow_mut().remove(&COMPLETING);
    })
    .detach();
}

/// ElectLeaders on a single node: it is the only replica and the leader of every partition.
pub fn single_node_elections(
    shard: &Shard,
    partitions: Option<Vec<sluice_core::TopicPartition>>,
) -> Vec<(sluice_core::TopicPartition, i16, Option<String>)> {
    partitions
        .unwrap_or_default()
        .into_iter()
        .map(|tp| {
            if shard.table.borrow().exists(&tp.topic, tp.partition) {
                let message = "the only replica leads already".to_string();
                (tp, ResponseError::ElectionNotNeeded.code(), Some(message))
            } else {
                let message = "no such partition".to_string();
                (
                    tp,
                    ResponseError::UnknownTopicOrPartition.code(),
                    Some(message),
                )
            }
        })
        .collect()
}

/// The active controller's automatic preferred-leader election (`auto.leader.rebalance.enable`):
/// every `leader.imbalance.check.interval.seconds`, partitions of brokers whose preferred
/// partitions are led elsewhere beyond `leader.imbalance.per.broker.percentage` go back to
/// their preferred replica.
async fn rebalance_loop(shard: Rc<Shard>, controller: Rc<Controller>) {
    let interval = Duration::from_secs(shard.broker.leader_imbalance_check_interval_seconds);
    loop {
        glommio::timer::sleep(interval).await;
        if shard.stopping.get() {
            return;
        }
        if !controller.is_leader() {
            continue;
        }
        let moves = controller
            .image
            .borrow()
            .imbalanced(shard.broker.leader_imbalance_per_broker_percentage);
        if moves.is_empty() {
            continue;
        }
        let partitions = moves
            .into_iter()
            .map(|(topic, p)| sluice_core::TopicPartition::new(topic, p))
            .collect();
        for (tp, error, message) in controller.elect_leaders(true, Some(partitions)).await {
            if error == 0 {
                eprintln!("sluice: {tp}: leadership back to its preferred replica");
            } else if let Some(message) = message {
                eprintln!("sluice: {tp}: preferred leader election: {message}");
            }
        }
    }
}

/// CreateTopics in a cluster: propose the topic, with its replicas as the client assigned them
/// (`manual`: `meta.states`) or assigned by this node from the live brokers it knows, and
/// answer once it is applied here.
pub async fn create_topic(
    controller: &Rc<Controller>,
    meta: TopicMeta,
    replication_factor: i16,
    manual: bool,
) -> TopicResult {
    let name = meta.name.clone();
    let failure = |error: ResponseError, message: String| TopicResult {
        name: name.clone(),
        error: error.code(),
        message: Some(message),
        meta: None,
    };
    let assigned = if manual {
        Ok(meta.states.clone())
    } else {
        controller
            .image
            .borrow()
            .assign_replicas(&meta.name, meta.partitions, replication_factor)
    };
    let partitions = match assigned {
        Ok(p) => p,
        Err(why) => return failure(ResponseError::InvalidReplicationFactor, why),
    };
    let record = MetadataRecord::Topic {
        name: meta.name.clone(),
        id: meta.id,
        configs: meta
            .config
            .overrides
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        partitions: partitions.clone(),
    };
    match controller.propose(vec![record]).await {
        Ok(_) => TopicResult {
            name: name.clone(),
            error: 0,
            message: None,
            meta: Some(TopicMeta {
                states: partitions,
                ..meta
            }),
        },
        Err(ProposeError::Rejected(Rejection::TopicExists(_))) => failure(
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ),
        Err(ProposeError::Rejected(why)) => failure(ResponseError::InvalidRequest, why.to_string()),
        Err(ProposeError::TimedOut) => failure(
            ResponseError::RequestTimedOut,
            "the metadata quorum did not commit the topic in time".into(),
        ),
    }
}

/// DeleteTopics in a cluster.
pub async fn delete_topic(controller: &Rc<Controller>, meta: TopicMeta) -> TopicResult {
    let name = meta.name.clone();
    let failure = |error: ResponseError, message: String| TopicResult {
        name: name.clone(),
        error: error.code(),
        message: Some(message),
        meta: None,
    };
    match controller
        .propose(vec![MetadataRecord::RemoveTopic { name: name.clone() }])
        .await
    {
        Ok(_) => TopicResult {
            name: name.clone(),
            error: 0,
            message: None,
            meta: Some(meta),
        },
        Err(ProposeError::Rejected(Rejection::UnknownTopic(_))) => failure(
            ResponseError::UnknownTopicOrPartition,
            "This server does not host this topic-partition.".into(),
        ),
        Err(ProposeError::Rejected(why)) => failure(ResponseError::InvalidRequest, why.to_string()),
        Err(ProposeError::TimedOut) => failure(
            ResponseError::RequestTimedOut,
            "the metadata quorum did not commit the deletion in time".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> QuorumDescription {
        let replica = |id, log_end_offset| VoterState {
            id,
            log_end_offset,
            last_fetch_ms: 1_700_000_000_000 + i64::from(id),
            last_caught_up_ms: -1,
        };
        QuorumDescription {
            leader_id: 4,
            leader_epoch: 7,
            high_watermark: 42,
            voters: vec![replica(4, 42), replica(5, 41), replica(6, 42)],
            observers: vec![replica(1, 40), replica(2, 42)],
        }
    }

    #[test]
    fn a_quorum_description_round_trips_and_bad_ones_are_refused() {
        let encoded = encode_description(&description());
        let decoded = decode_description(&encoded).expect("decodes");
        assert_eq!(format!("{decoded:?}"), format!("{:?}", description()));
        // Every truncation, and a count larger than what follows, is refused, never a panic.
        for cut in 0..encoded.len() {
            assert!(
                decode_description(&encoded[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        let mut huge = encoded[..16].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_description(&huge).is_none());
    }

    #[test]
    fn fetch_answers_round_trip_and_bad_ones_are_refused() {
        let entries: Vec<raft::eraftpb::Entry> = (5..8)
            .map(|index| raft::eraftpb::Entry {
                index,
                term: 2,
                data: vec![index as u8; 10].into(),
                ..Default::default()
            })
            .collect();
        let mut payload = Vec::new();
        payload.extend_from_slice(&5i32.to_le_bytes());
        payload.extend_from_slice(&4i32.to_le_bytes());
        payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for entry in &entries {
            let bytes = entry.write_to_bytes().expect("encodes");
            payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            payload.extend_from_slice(&bytes);
        }
        let (responder, leader, decoded) = decode_entries(&payload).expect("decodes");
        assert_eq!((responder, leader), (5, Some(4)));
        assert_eq!(
            decoded
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(5, 2), (6, 2), (7, 2)]
        );
        for cut in 0..payload.len() {
            assert!(decode_entries(&payload[..cut]).is_none(), "cut at {cut}");
        }
        let mut trailing = payload.clone();
        trailing.push(0);
        assert!(
            decode_entries(&trailing).is_none(),
            "bytes after the entries"
        );
        let mut unknown_leader = payload[..12].to_vec();
        unknown_leader[4..8].copy_from_slice(&(-1i32).to_le_bytes());
        unknown_leader[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_entries(&unknown_leader).map(|d| d.1), Some(None));
        // A fetch is exactly 16 bytes.
        let mut fetch = 3i32.to_le_bytes().to_vec();
        fetch.extend_from_slice(&9u64.to_le_bytes());
        fetch.extend_from_slice(&500u32.to_le_bytes());
        assert_eq!(decode_fetch(&fetch), Some((3, 9, 500)));
        assert_eq!(decode_fetch(&fetch[..15]), None);
        fetch.push(0);
        assert_eq!(decode_fetch(&fetch), None);
    }
}
