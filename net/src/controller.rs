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
//! Wire format between controllers (docs/FORMATS.md): frames of [length u32][kind u8][payload];
//! kind 1 a Raft message (protobuf, raft-rs's own encoding), 2 a proposal forwarded to the
//! leader (an encoded [`MetadataEntry`]), 3 a broker heartbeat (an encoded [`MetadataEntry`]
//! holding the sender's `RegisterBroker` record).

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
use raft::{RawNode, StateRole};
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

/// Raft ids must not be 0 (raft-rs's "no node"); Kafka node ids start at 0.
fn raft_id(node: i32) -> u64 {
    node as u64 + 1
}

fn node_id(raft: u64) -> i32 {
    raft as i32 - 1
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
    raft: RefCell<RawNode<MemStorage>>,
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
        let raft = RawNode::new(&raft_config, recovered.storage, &logger)
            .map_err(|e| format!("metadata quorum: {e}"))?;
        let mut outboxes = HashMap::new();
        for voter in &config.controller_quorum_voters {
            if voter.id == config.node_id {
                continue;
            }
            let host = if voter.host == "localhost" {
                "127.0.0.1"
            } else {
                &voter.host
            };
            let address: SocketAddr = format!("{host}:{}", voter.port)
                .parse()
                .map_err(|_| format!("controller.quorum.voters: bad address of {}", voter.id))?;
            let (tx, rx) = local_channel::new_bounded(OUTBOX_DEPTH);
            glommio::spawn_local(peer_link(address, rx)).detach();
            outboxes.insert(raft_id(voter.id), tx);
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
            raft: RefCell::new(raft),
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
        let listen = config
            .controller_listener()
            .ok_or("controller.quorum.voters does not list this node")?;
        let listener = crate::runtime::bind_listener(listen)
            .map_err(|e| format!("controller listener {listen}: {e}"))?;
        glommio::spawn_local(accept_peers(listener, controller.inbox.clone())).detach();
        glommio::spawn_local(drive(shard.clone(), controller.clone(), inbound)).detach();
        glommio::spawn_local(heartbeats(shard.clone(), controller.clone())).detach();
        glommio::spawn_local(liveness(shard.clone(), controller.clone())).detach();
        if config.auto_leader_rebalance_enable {
            glommio::spawn_local(rebalance_loop(shard.clone(), controller.clone())).detach();
        }
        Ok(controller)
    }

    /// The node leading the quorum, if one is known.
    pub fn leader(&self) -> Option<i32> {
        let id = self.raft.borrow().raft.leader_id;
        (id != raft::INVALID_ID).then(|| node_id(id))
    }

    fn is_leader(&self) -> bool {
        self.raft.borrow().raft.state == StateRole::Leader
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
        let raft = self.raft.borrow();
        let now_ms = crate::shard::now_ms();
        let now = Instant::now();
        let heard = self.heard_from.borrow();
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
        Some(QuorumDescription {
            leader_id: self.node_id,
            leader_epoch: i32::try_from(raft.raft.term).unwrap_or(i32::MAX),
            high_watermark: i64::try_from(committed).unwrap_or(i64::MAX),
            voters,
        })
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

/// Accepts connections from other controllers; each one's frames go to the driver.
async fn accept_peers(listener: glommio::net::TcpListener, inbox: Rc<LocalSender<Inbound>>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(read_peer(stream, inbox.clone())).detach();
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Reads one peer's frames until it closes or sends something malformed (then the connection
/// is closed; the peer reconnects).
async fn read_peer(mut stream: TcpStream, inbox: Rc<LocalSender<Inbound>>) {
    let mut header = [0u8; 5];
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if length > FRAME_BYTES_MAX {
            return;
        }
        let mut payload = vec![0u8; length];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let inbound = match header[4] {
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
            _ => return,
        };
        if inbox.send(inbound).await.is_err() {
            return;
        }
    }
}

/// The Raft driver: ticks, steps what peers send, and handles each Ready.
async fn drive(shard: Rc<Shard>, controller: Rc<Controller>, inbound: LocalReceiver<Inbound>) {
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
            controller.raft.borrow_mut().tick();
            next_tick = Instant::now() + TICK;
        }
        if let Err(e) = handle_ready(&shard, &controller).await {
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
            let from = m.from;
            let mut raft = controller.raft.borrow_mut();
            // Errors are messages from unknown peers or stale terms: nothing to do.
            let _ = raft.step(m);
            if from == raft.raft.leader_id {
                controller.last_leader_contact.set(Instant::now());
            }
        }
        Inbound::Propose(entry) => {
            if controller.is_leader() {
                let _ = controller.raft.borrow_mut().propose(Vec::new(), entry);
            }
        }
        Inbound::Heartbeat(entry) => controller.on_heartbeat(entry),
    }
}

/// Persists, sends and applies what raft-rs has ready, in the order its docs require:
/// messages a leader may send before persisting first, then entries and hard state made durable,
/// then the messages that depend on them.
async fn handle_ready(shard: &Rc<Shard>, controller: &Rc<Controller>) -> Result<(), String> {
    let mut committed = Vec::new();
    let mut leader_changed = false;
    {
        let mut raft = controller.raft.borrow_mut();
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
    }
    if leader_changed {
        let leading = controller.is_leader();
        if leading && controller.leader_since.get().is_none() {
            controller.leader_since.set(Some(Instant::now()));
            controller.heard_from.borrow_mut().clear();
        } else if !leading {
            controller.leader_since.set(None);
        }
        publish_cluster(shard, controller).await;
    }
    for entry in committed {
        if entry.entry_type != EntryType::EntryNormal || entry.data.is_empty() {
            continue;
        }
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
    controller.raft.borrow_mut().advance_apply();
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
    let view = cluster_of(
        &controller.image.borrow(),
        controller.leader().unwrap_or(-1),
    );
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
        watch_contact(&shard, &controller).await;
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
