//! The metadata image: the cluster's brokers, topics and producer-id blocks as every node of the
//! metadata quorum holds them after applying the committed log, and the controller's pure
//! decisions — which records to propose when a broker registers, is fenced or unfenced, and
//! where a new topic's replicas go.
//!
//! Kafka KRaft's rules (`ReplicationControlManager`, `ClusterControlManager`,
//! `PartitionChangeBuilder`), simplified:
//! * [`MetadataImage::apply`] is deterministic and all-or-nothing, so every node that applies the
//!   same committed entries holds the same image. Each record is validated against the image as
//!   it would be after the entry's previous records; one invalid record rejects the whole entry
//!   and changes nothing.
//! * An entry carries its proposer's sequence number, so a proposal retried after a leader
//!   change (and committed twice) is applied once.
//! * A fenced broker leads nothing and leaves every ISR except as its last member (Kafka keeps
//!   the last ISR member so that it is known which replica holds every committed record); a
//!   partition whose leader is fenced with no other live in-sync replica has no leader (-1)
//!   until that replica is unfenced again (no unclean election).
//!
//! Pure state: no I/O. The quorum's driver applies committed entries in log order, on the core
//! that owns the quorum; the decision functions only read the image and return records to
//! propose — nothing changes until those records come back committed.

use std::collections::BTreeMap;
use std::fmt;

use crate::metadata_records::{MetadataEntry, MetadataRecord, PartitionState};

/// The `leader` of a partition that has none.
pub const NO_LEADER: i32 = -1;

/// The replication factor meaning "the default": min(3, live brokers).
pub const DEFAULT_REPLICATION_FACTOR: i16 = -1;

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerState {
    pub id: i32,
    /// Chosen anew at every start of the broker: fencing and unfencing name it, so a request
    /// about an earlier life of the broker is refused.
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// A fenced broker is registered but leads nothing: it has just (re)started, or stopped
    /// heartbeating.
    pub fenced: bool,
}

/// A topic and its partitions (indexed by partition number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub id: [u8; 16],
    pub configs: Vec<(String, String)>,
    pub partitions: Vec<PartitionState>,
}

/// What an applied entry changed: what a reader of the image should look at again. In order
/// of first occurrence, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A broker registered, or was fenced or unfenced.
    Brokers,
    /// The topic was created, or one of its partitions changed.
    Topic(String),
    /// The topic is gone (it may have been created earlier in the same entry).
    TopicRemoved(String),
    /// Producer ids `first .. first + count` now belong to `broker`.
    ProducerIds { broker: i32, first: i64, count: i64 },
}

/// Why an entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TopicExists(String),
    UnknownTopic(String),
    UnknownPartition(String, i32),
    UnknownBroker(i32),
    /// The broker is registered with another incarnation: the record is about an earlier life.
    StaleIncarnation(i32),
    /// A `PartitionReplicas` decided at another partition epoch than the partition's now.
    StalePartitionEpoch(String, i32),
    /// An `AddPartitions` decided at another partition count than the topic's now.
    StalePartitionCount(String),
    Invalid(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::TopicExists(name) => write!(f, "topic {name} already exists"),
            Rejection::UnknownTopic(name) => write!(f, "topic {name} does not exist"),
            Rejection::UnknownPartition(name, p) => {
                write!(f, "topic {name} has no partition {p}")
            }
            Rejection::UnknownBroker(id) => write!(f, "broker {id} is not registered"),
            Rejection::StaleIncarnation(id) => {
                write!(f, "broker {id} is registered with another incarnation")
            }
            Rejection::StalePartitionEpoch(name, p) => {
                write!(f, "{name}-{p} changed since the change was decided")
            }
            Rejection::StalePartitionCount(name) => {
                write!(
                    f,
                    "the partitions of {name} changed since the change was decided"
                )
            }
            Rejection::Invalid(why) => write!(f, "invalid metadata record: {why}"),
        }
    }
}

impl std::error::Error for Rejection {}

/// Why ElectLeaders elects nobody for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionRefusal {
    UnknownPartition,
    /// The wanted leader leads already (ELECTION_NOT_NEEDED).
    NotNeeded,
    /// Nobody may lead it (PREFERRED_LEADER_NOT_AVAILABLE / ELIGIBLE_LEADERS_NOT_AVAILABLE).
    NotAvailable,
}

/// Why AlterPartitionReassignments changes nothing for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReassignRefusal {
    UnknownPartition,
    /// A cancellation for a partition that is not being reassigned.
    NoReassignmentInProgress,
    /// The target is empty, repeats a broker or names an unregistered one.
    InvalidAssignment(String),
    /// The target has another replication factor, which the request does not allow (KIP-860).
    ReplicationFactorChange,
    /// None of the in-sync replicas would be left, so no replica is known to hold every
    /// committed record.
    NoInSyncReplica,
}

/// Why CreatePartitions adds nothing to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddPartitionsRefusal {
    UnknownTopic,
    /// The count is not above the topic's partitions.
    InvalidPartitions(String),
    InvalidAssignment(String),
    /// Fewer live brokers than the topic's replication factor.
    InvalidReplicationFactor(String),
}

/// The outcome of applying one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Changes(Vec<Change>),
    /// Nothing changed (except that the proposer's sequence was used up).
    Rejected(Rejection),
    /// The proposer's entry with this sequence (or a later one) was applied or rejected before.
    Duplicate,
}

/// The cluster's metadata as the committed log leaves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerState>,
    pub topics: BTreeMap<String, TopicImage>,
    /// The first producer id not yet handed to any broker.
    pub next_producer_id: i64,
    /// Proposer → the sequence of its last applied or rejected entry.
    last_sequence: BTreeMap<i32, u64>,
}

/// How to put back what one applied record changed, should a later record of the same entry
/// be rejected. Kept per record rather than cloning the image: an entry that fences a broker
/// touches a few partitions of an image that may hold thousands.
enum Undo {
    Broker(i32, Option<BrokerState>),
    Topic(String, Option<TopicImage>),
    Partition(String, usize, PartitionState),
    NextProducerId(i64),
}

impl MetadataImage {
    /// The sequence of `proposer`'s last applied or rejected entry, 0 when none. A node that
    /// restarts continues its proposals after this (its own entries are in the log it
    /// replays), so they are not mistaken for duplicates.
    pub fn last_sequence(&self, proposer: i32) -> u64 {
        self.last_sequence.get(&proposer).copied().unwrap_or(0)
    }

    /// Applies a committed entry, all-or-nothing.
    ///
    /// An entry whose sequence is at most the last one seen from its proposer is a
    /// [`Applied::Duplicate`] and changes nothing (sequences start at 1). Otherwise its
    /// sequence is recorded — whether the entry is applied or rejected, so a retry of a
    /// rejected proposal is a duplicate too — and each record is validated against the image
    /// as the entry's previous records left it; the first invalid record rejects the entry and
    /// every earlier record of it is undone. Rules per record:
    /// * `RegisterBroker`: inserts or overwrites the broker (new incarnation, endpoint, rack),
    ///   fenced. The id must not be negative (-1 means "no leader").
    /// * `FenceBroker` / `UnfenceBroker`: the broker must be registered with that incarnation;
    ///   sets `fenced`. Partition changes are separate records (see [`Self::fence_records`]).
    /// * `Topic`: a new, non-empty name; at least one partition; each partition has at least
    ///   one replica, no replica twice, only registered brokers; its ISR is a non-empty subset
    ///   of the replicas without repeats; its leader is in the ISR or -1.
    /// * `PartitionChange`: the partition exists; the ISR as above; the leader epoch does not
    ///   go back. Sets leader, ISR and leader epoch; the partition epoch grows by one.
    /// * `RemoveTopic`: the topic exists.
    /// * `ProducerIds`: `first` is `next_producer_id` and `count` > 0; `next_producer_id`
    ///   moves to `first + count`.
    /// * `PartitionReplicas`: the partition exists and is at the record's partition epoch; the
    ///   replicas as for `Topic`; adding and removing are disjoint subsets of them; the ISR and
    ///   leader as above, and no fenced broker joins the ISR; the leader epoch does not go back.
    ///   Sets all of them; the partition epoch grows by one. (Leaders' ISR changes use it too.)
    /// * `AddPartitions`: the topic exists with `first` partitions; the new partitions as for
    ///   `Topic`, and the topic's partition count stays within i32.
    pub fn apply(&mut self, entry: &MetadataEntry) -> Applied {
        if entry.sequence <= self.last_sequence(entry.proposer) {
            return Applied::Duplicate;
        }
        self.last_sequence.insert(entry.proposer, entry.sequence);
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        for record in &entry.records {
            match self.apply_record(record, &mut undo) {
                Ok(change) => note_change(&mut changes, change),
                Err(rejection) => {
                    self.roll_back(undo);
                    return Applied::Rejected(rejection);
                }
            }
        }
        Applied::Changes(changes)
    }

    /// Validates one record and, when valid, applies it, saving what it overwrote in `undo`.
    /// An invalid record changes nothing.
    fn apply_record(
        &mut self,
        record: &MetadataRecord,
        undo: &mut Vec<Undo>,
    ) -> Result<Change, Rejection> {
        match record {
            MetadataRecord::RegisterBroker {
                id,
                incarnation,
                host,
                port,
                rack,
            } => {
                if *id < 0 {
                    return Err(Rejection::Invalid(format!("broker id {id} is negative")));
                }
                let broker = BrokerState {
                    id: *id,
                    incarnation: *incarnation,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: true,
                };
                undo.push(Undo::Broker(*id, self.brokers.insert(*id, broker)));
                Ok(Change::Brokers)
            }
            MetadataRecord::FenceBroker { id, incarnation } => {
                self.set_fenced(*id, *incarnation, true, undo)
            }
            MetadataRecord::UnfenceBroker { id, incarnation } => {
                self.set_fenced(*id, *incarnation, false, undo)
            }
            MetadataRecord::Topic {
                name,
                id,
                configs,
                partitions,
            } => {
                self.check_new_topic(name, partitions)?;
                let topic = TopicImage {
                    name: name.clone(),
                    id: *id,
                    configs: configs.clone(),
                    partitions: partitions.clone(),
                };
                undo.push(Undo::Topic(
                    name.clone(),
                    self.topics.insert(name.clone(), topic),
                ));
                Ok(Change::Topic(name.clone()))
            }
            MetadataRecord::PartitionChange {
                topic,
                partition,
                leader,
                isr,
                leader_epoch,
            } => {
                let (index, state) = partition_mut(&mut self.topics, topic, *partition)?;
                check_isr(&state.replicas, isr, *leader).map_err(Rejection::Invalid)?;
                if *leader_epoch < state.leader_epoch {
                    return Err(Rejection::Invalid(format!(
                        "{topic}-{partition}: leader epoch {leader_epoch} is below the current {}",
                        state.leader_epoch
                    )));
                }
                undo.push(Undo::Partition(topic.clone(), index, state.clone()));
                state.leader = *leader;
                state.isr = isr.clone();
                state.leader_epoch = *leader_epoch;
                state.partition_epoch = state.partition_epoch.saturating_add(1);
                Ok(Change::Topic(topic.clone()))
            }
            MetadataRecord::RemoveTopic { name } => {
                let removed = self
                    .topics
                    .remove(name)
                    .ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
                undo.push(Undo::Topic(name.clone(), Some(removed)));
                Ok(Change::TopicRemoved(name.clone()))
            }
            MetadataRecord::PartitionReplicas {
                topic,
                partition,
                partition_epoch,
                replicas,
                isr,
                leader,
                leader_epoch,
                adding,
                removing,
            } => {
                let name = format!("{topic}-{partition}");
                self.check_replicas(&name, replicas)?;
                check_isr(replicas, isr, *leader)
                    .map_err(|why| Rejection::Invalid(format!("{name}: {why}")))?;
                let subset =
                    |ids: &[i32]| !has_repeats(ids) && ids.iter().all(|r| replicas.contains(r));
                if !subset(adding)
                    || !subset(removing)
                    || adding.iter().any(|r| removing.contains(r))
                {
                    return Err(Rejection::Invalid(format!(
                        "{name}: adding {adding:?} and removing {removing:?} are not disjoint \
                         subsets of replicas {replicas:?}"
                    )));
                }
                let brokers = &self.brokers;
                let (index, state) = partition_mut(&mut self.topics, topic, *partition)?;
                if state.partition_epoch != *partition_epoch {
                    return Err(Rejection::StalePartitionEpoch(topic.clone(), *partition));
                }
                if *leader_epoch < state.leader_epoch {
                    return Err(Rejection::Invalid(format!(
                        "{name}: leader epoch {leader_epoch} is below the current {}",
                        state.leader_epoch
                    )));
                }
                // Kafka's AlterPartition rule: nobody joins the ISR while fenced.
                if let Some(r) = isr
                    .iter()
                    .find(|r| !state.isr.contains(r) && brokers.get(r).is_none_or(|b| b.fenced))
                {
                    return Err(Rejection::Invalid(format!(
                        "{name}: broker {r} cannot join the ISR while fenced"
                    )));
                }
                undo.push(Undo::Partition(topic.clone(), index, state.clone()));
                *state = PartitionState {
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: state.partition_epoch.saturating_add(1),
                    adding: adding.clone(),
                    removing: removing.clone(),
                };
                Ok(Change::Topic(topic.clone()))
            }
            MetadataRecord::AddPartitions {
                topic,
                first,
                partitions,
            } => {
                let before = self
                    .topics
                    .get(topic)
                    .ok_or_else(|| Rejection::UnknownTopic(topic.clone()))?;
                if usize::try_from(*first).ok() != Some(before.partitions.len()) {
                    return Err(Rejection::StalePartitionCount(topic.clone()));
                }
                let total = before.partitions.len() + partitions.len();
                if partitions.is_empty() || i32::try_from(total).is_err() {
                    return Err(Rejection::Invalid(format!(
                        "topic {topic}: {} partitions added to {}",
                        partitions.len(),
                        before.partitions.len()
                    )));
                }
                self.check_partitions(topic, before.partitions.len(), partitions)?;
                let before = before.clone();
                let mut after = before.clone();
                after.partitions.extend(partitions.iter().cloned());
                self.topics.insert(topic.clone(), after);
                undo.push(Undo::Topic(topic.clone(), Some(before)));
                Ok(Change::Topic(topic.clone()))
            }
            MetadataRecord::ProducerIds {
                broker,
                first,
                count,
            } => {
                if *first != self.next_producer_id || *count <= 0 {
                    return Err(Rejection::Invalid(format!(
                        "producer ids {first} (+{count}) do not continue at {}",
                        self.next_producer_id
                    )));
                }
                let next = first
                    .checked_add(*count)
                    .ok_or_else(|| Rejection::Invalid("producer ids exhausted".into()))?;
                undo.push(Undo::NextProducerId(self.next_producer_id));
                self.next_producer_id = next;
                Ok(Change::ProducerIds {
                    broker: *broker,
                    first: *first,
                    count: *count,
                })
            }
        }
    }

    fn set_fenced(
        &mut self,
        id: i32,
        incarnation: u64,
        fenced: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<Change, Rejection> {
        let broker = self
            .brokers
            .get_mut(&id)
            .ok_or(Rejection::UnknownBroker(id))?;
        if broker.incarnation != incarnation {
            return Err(Rejection::StaleIncarnation(id));
        }
        undo.push(Undo::Broker(id, Some(broker.clone())));
        broker.fenced = fenced;
        Ok(Change::Brokers)
    }

    fn check_new_topic(&self, name: &str, partitions: &[PartitionState]) -> Result<(), Rejection> {
        if name.is_empty() {
            return Err(Rejection::Invalid("empty topic name".into()));
        }
        if self.topics.contains_key(name) {
            return Err(Rejection::TopicExists(name.to_owned()));
        }
        if partitions.is_empty() || i32::try_from(partitions.len()).is_err() {
            return Err(Rejection::Invalid(format!(
                "topic {name}: {} partitions",
                partitions.len()
            )));
        }
        self.check_partitions(name, 0, partitions)
    }

    /// New partitions `first..` of topic `name`: valid replicas and ISR, not being reassigned.
    fn check_partitions(
        &self,
        name: &str,
        first: usize,
        partitions: &[PartitionState],
    ) -> Result<(), Rejection> {
        for (p, state) in (first..).zip(partitions) {
            let partition = format!("{name}-{p}");
            self.check_replicas(&partition, &state.replicas)?;
            check_isr(&state.replicas, &state.isr, state.leader)
                .map_err(|why| Rejection::Invalid(format!("{partition}: {why}")))?;
            if state.reassigning() {
                return Err(Rejection::Invalid(format!(
                    "{partition}: a new partition is not being reassigned"
                )));
            }
        }
        Ok(())
    }

    /// A replica list: not empty, no broker twice, only registered brokers.
    fn check_replicas(&self, partition: &str, replicas: &[i32]) -> Result<(), Rejection> {
        if replicas.is_empty() || has_repeats(replicas) {
            return Err(Rejection::Invalid(format!(
                "{partition}: replicas {replicas:?} are empty or repeat a broker"
            )));
        }
        match replicas.iter().find(|r| !self.brokers.contains_key(r)) {
            Some(r) => Err(Rejection::UnknownBroker(*r)),
            None => Ok(()),
        }
    }

    /// Puts back, newest first, what the applied records of a rejected entry changed.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Broker(id, Some(before)) => {
                    self.brokers.insert(id, before);
                }
                Undo::Broker(id, None) => {
                    self.brokers.remove(&id);
                }
                Undo::Topic(name, Some(before)) => {
                    self.topics.insert(name, before);
                }
                Undo::Topic(name, None) => {
                    self.topics.remove(&name);
                }
                Undo::Partition(topic, index, before) => {
                    let slot = self
                        .topics
                        .get_mut(&topic)
                        .and_then(|t| t.partitions.get_mut(index));
                    // Undo runs newest first, so the topic is back as this record found it.
                    let slot = slot.expect("an undone partition change finds its partition");
                    *slot = before;
                }
                Undo::NextProducerId(before) => self.next_producer_id = before,
            }
        }
    }

    /// Records to propose when broker `id` registers: the registration (the broker starts
    /// fenced), and — when the id is already registered — the partition changes that
    /// [`Self::fence_records`] would make for it. A broker that comes back with a new
    /// incarnation lost what it held in memory, so it leaves leadership and ISRs until it is
    /// unfenced and catches up again.
    pub fn register_records(
        &self,
        id: i32,
        incarnation: u64,
        host: String,
        port: u16,
        rack: Option<String>,
    ) -> Vec<MetadataRecord> {
        let mut records = vec![MetadataRecord::RegisterBroker {
            id,
            incarnation,
            host,
            port,
            rack,
        }];
        if self.brokers.contains_key(&id) {
            records.extend(self.leaving_records(id));
        }
        records
    }

    /// Records to propose to fence `broker` (it stopped heartbeating, or shuts down): the
    /// fencing, then for every partition whose ISR holds it a change that removes it from the
    /// ISR — unless it is the only member, which stays (Kafka keeps the last ISR member) — and,
    /// where it led, elects the first replica in replica order that is in the new ISR, unfenced
    /// and not `broker`, or no leader (-1), with the leader epoch + 1. Partitions whose leader
    /// does not change keep their leader epoch. Empty when `broker` is not registered.
    pub fn fence_records(&self, broker: i32) -> Vec<MetadataRecord> {
        let Some(state) = self.brokers.get(&broker) else {
            return Vec::new();
        };
        let mut records = vec![MetadataRecord::FenceBroker {
            id: broker,
            incarnation: state.incarnation,
        }];
        records.extend(self.leaving_records(broker));
        records
    }

    /// The partition changes that take `broker` out of ISRs and leadership (see
    /// [`Self::fence_records`]); none for partitions that would stay as they are.
    fn leaving_records(&self, broker: i32) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for topic in self.topics.values() {
            // Topics hold at most i32::MAX partitions (checked when created).
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                if !state.isr.contains(&broker) {
                    continue;
                }
                let isr: Vec<i32> = if state.isr == [broker] {
                    state.isr.clone()
                } else {
                    state.isr.iter().copied().filter(|r| *r != broker).collect()
                };
                let (leader, leader_epoch) = if state.leader == broker {
                    let next = state
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| *r != broker && isr.contains(r) && self.is_live(*r))
                        .unwrap_or(NO_LEADER);
                    (next, state.leader_epoch.saturating_add(1))
                } else {
                    (state.leader, state.leader_epoch)
                };
                if isr != state.isr || leader != state.leader {
                    records.push(MetadataRecord::PartitionChange {
                        topic: topic.name.clone(),
                        partition,
                        leader,
                        isr,
                        leader_epoch,
                    });
                }
            }
        }
        records
    }

    /// Records to propose to unfence `broker` (it caught up with the metadata log): the
    /// unfencing, then for every leaderless partition whose ISR holds it (it was the last
    /// in-sync replica) a change making it the leader, with the leader epoch + 1. Empty when
    /// `broker` is not registered or not fenced.
    pub fn unfence_records(&self, broker: i32) -> Vec<MetadataRecord> {
        let Some(state) = self.brokers.get(&broker).filter(|b| b.fenced) else {
            return Vec::new();
        };
        let mut records = vec![MetadataRecord::UnfenceBroker {
            id: broker,
            incarnation: state.incarnation,
        }];
        for topic in self.topics.values() {
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                if state.leader == NO_LEADER && state.isr.contains(&broker) {
                    records.push(MetadataRecord::PartitionChange {
                        topic: topic.name.clone(),
                        partition,
                        leader: broker,
                        isr: state.isr.clone(),
                        leader_epoch: state.leader_epoch.saturating_add(1),
                    });
                }
            }
        }
        records
    }

    /// Unclean leader elections (`unclean.leader.election.enable`): for every partition without
    /// a leader and without a live in-sync replica, of a topic `allowed` says may, the first live
    /// replica (in replica order) becomes leader with itself as the whole ISR, at the next
    /// leader epoch. Whatever only the old in-sync replicas had is lost: they truncate it when
    /// they return. The caller reports each election.
    pub fn unclean_elections(&self, allowed: &dyn Fn(&TopicImage) -> bool) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for topic in self.topics.values() {
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                let stranded =
                    state.leader == NO_LEADER && !state.isr.iter().any(|r| self.is_live(*r));
                if !stranded || !allowed(topic) {
                    continue;
                }
                if let Some(next) = state.replicas.iter().copied().find(|r| self.is_live(*r)) {
                    records.push(MetadataRecord::PartitionChange {
                        topic: topic.name.clone(),
                        partition,
                        leader: next,
                        isr: vec![next],
                        leader_epoch: state.leader_epoch.saturating_add(1),
                    });
                }
            }
        }
        records
    }

    /// ElectLeaders (KIP-460) for one partition: the change to propose, or why there is none.
    /// Preferred: the first replica leads, if it is live and in sync and does not lead already.
    /// Unclean: a partition without a leader gets one — a live in-sync replica if any, else the
    /// first live replica (with itself as the ISR).
    pub fn election(
        &self,
        topic: &str,
        partition: i32,
        preferred: bool,
    ) -> Result<MetadataRecord, ElectionRefusal> {
        let state = self
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(usize::try_from(partition).ok()?))
            .ok_or(ElectionRefusal::UnknownPartition)?;
        let change = |leader: i32, isr: Vec<i32>| MetadataRecord::PartitionChange {
            topic: topic.to_string(),
            partition,
            leader,
            isr,
            leader_epoch: state.leader_epoch.saturating_add(1),
        };
        if preferred {
            let first = *state
                .replicas
                .first()
                .ok_or(ElectionRefusal::NotAvailable)?;
            if state.leader == first {
                return Err(ElectionRefusal::NotNeeded);
            }
            if !self.is_live(first) || !state.isr.contains(&first) {
                return Err(ElectionRefusal::NotAvailable);
            }
            return Ok(change(first, state.isr.clone()));
        }
        if state.leader != NO_LEADER {
            return Err(ElectionRefusal::NotNeeded);
        }
        if let Some(r) = state
            .replicas
            .iter()
            .find(|r| state.isr.contains(r) && self.is_live(**r))
        {
            return Ok(change(*r, state.isr.clone()));
        }
        match state.replicas.iter().find(|r| self.is_live(**r)) {
            Some(r) => Ok(change(*r, vec![*r])),
            None => Err(ElectionRefusal::NotAvailable),
        }
    }

    /// Partitions whose preferred replica (the first) is live and in sync but does not lead,
    /// on brokers where more than `imbalance_percent` of the partitions they prefer are led by
    /// others (Kafka's `leader.imbalance.per.broker.percentage`): what the automatic leader
    /// rebalance moves back.
    pub fn imbalanced(&self, imbalance_percent: u32) -> Vec<(String, i32)> {
        let mut preferred: BTreeMap<i32, (u32, u32)> = BTreeMap::new();
        for topic in self.topics.values() {
            for state in &topic.partitions {
                if let Some(first) = state.replicas.first() {
                    let entry = preferred.entry(*first).or_default();
                    entry.0 += 1;
                    if state.leader != *first {
                        entry.1 += 1;
                    }
                }
            }
        }
        let mut moves = Vec::new();
        for topic in self.topics.values() {
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                let Some(first) = state.replicas.first() else {
                    continue;
                };
                let (total, off) = preferred.get(first).copied().unwrap_or((0, 0));
                let over = off * 100 > total * imbalance_percent;
                if over
                    && state.leader != *first
                    && self.is_live(*first)
                    && state.isr.contains(first)
                {
                    moves.push((topic.name.clone(), partition));
                }
            }
        }
        moves
    }

    /// AlterPartitionReassignments for one partition (Kafka's KIP-455 model): the change to
    /// propose, None when there is nothing to do, or why not. `target` None cancels a
    /// reassignment in progress (back to the original replicas).
    ///
    /// From the original replicas `O` (before any reassignment in progress) and the target `T`:
    /// replicas = `T` then `O - T`, adding = `T - O`, removing = `O - T`, ISR = the current ISR
    /// within those replicas. The new replicas follow the leader and join the ISR when caught
    /// up; [`Self::reassignment_completions`] then drops the removing ones. When every adding
    /// replica is in sync already (none is added, or a cancellation), the change completes at
    /// once. The leader stays if it is kept and in sync, else the first live in-sync replica of
    /// `T` (then of the rest) leads. The leader epoch grows when the leader changes or a replica
    /// leaves, so a removed replica's fetches are fenced.
    pub fn reassignment(
        &self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
        allow_replication_factor_change: bool,
    ) -> Result<Option<MetadataRecord>, ReassignRefusal> {
        let state = self
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(usize::try_from(partition).ok()?))
            .ok_or(ReassignRefusal::UnknownPartition)?;
        let original = state.original_replicas();
        let target = match target {
            None if !state.reassigning() => return Err(ReassignRefusal::NoReassignmentInProgress),
            None => original.clone(),
            Some(target) => {
                if target.is_empty() || has_repeats(target) {
                    return Err(ReassignRefusal::InvalidAssignment(format!(
                        "the replica list {target:?} is empty or repeats a broker"
                    )));
                }
                if let Some(r) = target.iter().find(|r| !self.brokers.contains_key(r)) {
                    return Err(ReassignRefusal::InvalidAssignment(format!(
                        "the assignment names broker {r}, which is not registered"
                    )));
                }
                if !allow_replication_factor_change && target.len() != original.len() {
                    return Err(ReassignRefusal::ReplicationFactorChange);
                }
                target.to_vec()
            }
        };
        self.replicas_change(topic, partition, state, &original, &target)
    }

    /// The changes that complete reassignments whose adding replicas are all in sync now: the
    /// removing replicas go (see [`Self::reassignment`]).
    pub fn reassignment_completions(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for topic in self.topics.values() {
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                if !state.reassigning() || !state.adding.iter().all(|r| state.isr.contains(r)) {
                    continue;
                }
                let change = self.replicas_change(
                    &topic.name,
                    partition,
                    state,
                    &state.original_replicas(),
                    &state.target_replicas(),
                );
                if let Ok(Some(record)) = change {
                    records.push(record);
                }
            }
        }
        records
    }

    /// Partitions being reassigned (ListPartitionReassignments): (topic, partition, state).
    pub fn reassignments(&self) -> Vec<(&str, i32, &PartitionState)> {
        let mut out = Vec::new();
        for topic in self.topics.values() {
            for (partition, state) in (0i32..).zip(&topic.partitions) {
                if state.reassigning() {
                    out.push((topic.name.as_str(), partition, state));
                }
            }
        }
        out
    }

    fn replicas_change(
        &self,
        topic: &str,
        partition: i32,
        state: &PartitionState,
        original: &[i32],
        target: &[i32],
    ) -> Result<Option<MetadataRecord>, ReassignRefusal> {
        let adding: Vec<i32> = target
            .iter()
            .copied()
            .filter(|r| !original.contains(r))
            .collect();
        let mut removing: Vec<i32> = original
            .iter()
            .copied()
            .filter(|r| !target.contains(r))
            .collect();
        let mut replicas: Vec<i32> = target.iter().chain(&removing).copied().collect();
        let mut isr: Vec<i32> = state
            .isr
            .iter()
            .copied()
            .filter(|r| replicas.contains(r))
            .collect();
        let mut adding = adding;
        if adding.iter().all(|r| isr.contains(r)) {
            // Every new replica holds the log already: the removing ones go now.
            replicas = target.to_vec();
            isr.retain(|r| target.contains(r));
            adding.clear();
            removing.clear();
        }
        if isr.is_empty() {
            return Err(ReassignRefusal::NoInSyncReplica);
        }
        let leader = if isr.contains(&state.leader) {
            state.leader
        } else {
            replicas
                .iter()
                .copied()
                .find(|r| isr.contains(r) && self.is_live(*r))
                .unwrap_or(NO_LEADER)
        };
        let replica_left = state.replicas.iter().any(|r| !replicas.contains(r));
        let leader_epoch = if leader != state.leader || replica_left {
            state.leader_epoch.saturating_add(1)
        } else {
            state.leader_epoch
        };
        if replicas == state.replicas
            && isr == state.isr
            && leader == state.leader
            && adding == state.adding
            && removing == state.removing
        {
            return Ok(None);
        }
        Ok(Some(MetadataRecord::PartitionReplicas {
            topic: topic.to_string(),
            partition,
            partition_epoch: state.partition_epoch,
            replicas,
            isr,
            leader,
            leader_epoch,
            adding,
            removing,
        }))
    }

    /// CreatePartitions: the partitions to append so that `topic` has `count`. With
    /// `assignments` (one replica list per new partition) they are used as given: each as long
    /// as the topic's replication factor, no broker twice, only registered brokers, and at
    /// least one of them live (it leads; the live ones are the ISR). Without, the new
    /// partitions continue the topic's placement (see [`Self::assign_replicas`]) over the live
    /// brokers, at the replication factor of its first partition.
    pub fn new_partitions(
        &self,
        topic: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
    ) -> Result<Vec<PartitionState>, AddPartitionsRefusal> {
        let image = self
            .topics
            .get(topic)
            .ok_or(AddPartitionsRefusal::UnknownTopic)?;
        let current = image.partitions.len();
        let wanted = usize::try_from(count).unwrap_or(0);
        if wanted <= current {
            return Err(AddPartitionsRefusal::InvalidPartitions(
                if wanted == current {
                    format!("Topic already has {current} partitions.")
                } else {
                    format!(
                        "Topic currently has {current} partitions, which is higher than the \
                     requested {count}."
                    )
                },
            ));
        }
        let factor = image
            .partitions
            .first()
            .map_or(1, |p| p.target_replicas().len());
        let Some(assignments) = assignments else {
            let rf = i16::try_from(factor).unwrap_or(i16::MAX);
            let all = self
                .assign_replicas(topic, count, rf)
                .map_err(AddPartitionsRefusal::InvalidReplicationFactor)?;
            return Ok(all.into_iter().skip(current).collect());
        };
        if assignments.len() != wanted - current {
            return Err(AddPartitionsRefusal::InvalidAssignment(format!(
                "Attempted to add {} additional partitions, but only {} assignments were \
                 specified.",
                wanted - current,
                assignments.len()
            )));
        }
        self.assigned_partitions(current, Some(factor), assignments)
            .map_err(AddPartitionsRefusal::InvalidAssignment)
    }

    /// Partitions `first..` as a client assigned them (CreateTopics, CreatePartitions): one
    /// replica list each, all as long as `factor` (when given, else as the first), no broker
    /// twice, only registered brokers, and at least one of them live: the live ones are the
    /// ISR, the first of them leads. Kafka's messages on refusal.
    pub fn assigned_partitions(
        &self,
        first: usize,
        factor: Option<usize>,
        assignments: &[Vec<i32>],
    ) -> Result<Vec<PartitionState>, String> {
        let factor = factor.or_else(|| assignments.first().map(Vec::len));
        let mut added = Vec::with_capacity(assignments.len());
        for (p, replicas) in (first..).zip(assignments) {
            if replicas.is_empty() {
                return Err(format!(
                    "The manual partition assignment of partition {p} is an empty replica list."
                ));
            }
            if let Some(factor) = factor.filter(|f| *f != replicas.len()) {
                return Err(format!(
                    "The manual partition assignment of partition {p} has {} replica(s), but \
                     the topic's other partitions have {factor}.",
                    replicas.len()
                ));
            }
            if has_repeats(replicas) {
                return Err(format!(
                    "The manual partition assignment of partition {p} repeats a broker."
                ));
            }
            if let Some(r) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(format!(
                    "The manual partition assignment includes broker {r}, but no such broker \
                     is registered."
                ));
            }
            let isr: Vec<i32> = replicas
                .iter()
                .copied()
                .filter(|r| self.is_live(*r))
                .collect();
            let Some(leader) = isr.first().copied() else {
                return Err(format!(
                    "All brokers of the manual partition assignment of partition {p} are fenced."
                ));
            };
            added.push(PartitionState::new(replicas.clone(), isr, leader, 0));
        }
        Ok(added)
    }

    /// Replica assignments for a new topic. `replication_factor` -1 means min(3, live
    /// brokers); it must then be between 1 and the number of live brokers, and `partitions`
    /// at least 1. The live brokers are listed rack by rack in turn (`L`: the first broker of
    /// each rack, then the second of each, …; racks and brokers ascending; brokers without a
    /// rack form one rack), and a start `s` = FNV-1a (64 bit) of the topic name modulo `|L|`.
    /// Partition `p` is led by `L[(s + p) % |L|]`; its other replicas are the next brokers of
    /// `L` after it, skipping those in a rack the partition already has until every rack has
    /// one (Kafka's rack-aware assignment). Leaders and replicas spread evenly, a partition
    /// survives the loss of a rack when there are enough racks, and topics created one after
    /// another do not all start on the same broker. Without racks this is `L[(s + p + k) % |L|]`
    /// for `k` in `0..replication_factor`. Leader = first replica, ISR = replicas, epochs 0.
    pub fn assign_replicas(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<Vec<PartitionState>, String> {
        let live = self.live_brokers();
        let rf = if replication_factor == DEFAULT_REPLICATION_FACTOR {
            live.len().min(3)
        } else {
            usize::try_from(replication_factor).unwrap_or(0)
        };
        if rf < 1 || rf > live.len() {
            return Err(format!(
                "replication factor {replication_factor} with {} live brokers",
                live.len()
            ));
        }
        let count = usize::try_from(partitions)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{partitions} partitions"))?;
        let live = self.by_rack(&live);
        let rack_count = {
            let mut racks: Vec<Option<&String>> = live.iter().map(|(_, r)| *r).collect();
            racks.sort_unstable();
            racks.dedup();
            racks.len()
        };
        let start = (sluice_core::placement::fnv1a(topic.as_bytes()) % live.len() as u64) as usize;
        let assignments = (0..count)
            .map(|p| {
                let mut replicas: Vec<i32> = Vec::with_capacity(rf);
                let mut racks: Vec<Option<&String>> = Vec::with_capacity(rf);
                // First pass: one replica per rack; second: fill up in list order.
                for pass in 0..2 {
                    for k in 0..live.len() {
                        if replicas.len() == rf {
                            break;
                        }
                        let (id, rack) = live[(start + p + k) % live.len()];
                        let new_rack = !racks.contains(&rack) || racks.len() >= rack_count;
                        if !replicas.contains(&id) && (pass == 1 || new_rack) {
                            replicas.push(id);
                            racks.push(rack);
                        }
                    }
                }
                PartitionState::new(
                    replicas.clone(),
                    replicas.clone(),
                    replicas.first().copied().unwrap_or(NO_LEADER),
                    0,
                )
            })
            .collect();
        Ok(assignments)
    }

    /// `brokers` with their racks, listed rack by rack in turn (see [`Self::assign_replicas`]).
    fn by_rack<'a>(&'a self, brokers: &[i32]) -> Vec<(i32, Option<&'a String>)> {
        let mut racks: BTreeMap<Option<&String>, Vec<i32>> = BTreeMap::new();
        for id in brokers {
            let rack = self.brokers.get(id).and_then(|b| b.rack.as_ref());
            racks.entry(rack).or_default().push(*id);
        }
        let mut listed = Vec::with_capacity(brokers.len());
        for round in 0.. {
            let before = listed.len();
            for (rack, ids) in &racks {
                if let Some(id) = ids.get(round) {
                    listed.push((*id, *rack));
                }
            }
            if listed.len() == before {
                break;
            }
        }
        listed
    }

    /// The leader of a partition; None when the partition is unknown or has no leader.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let state = self
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        (state.leader != NO_LEADER).then_some(state.leader)
    }

    /// Registered, unfenced brokers, ascending.
    pub fn live_brokers(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    fn is_live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }
}

/// A partition of `topics` to change, with its index: UNKNOWN_TOPIC or UNKNOWN_PARTITION.
fn partition_mut<'a>(
    topics: &'a mut BTreeMap<String, TopicImage>,
    topic: &str,
    partition: i32,
) -> Result<(usize, &'a mut PartitionState), Rejection> {
    let unknown = || Rejection::UnknownPartition(topic.to_string(), partition);
    let partitions = &mut topics
        .get_mut(topic)
        .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?
        .partitions;
    let index = usize::try_from(partition).map_err(|_| unknown())?;
    let state = partitions.get_mut(index).ok_or_else(unknown)?;
    Ok((index, state))
}

/// Adds `change` to an entry's changes: once, and a removed topic drops its earlier changes.
fn note_change(changes: &mut Vec<Change>, change: Change) {
    if let Change::TopicRemoved(name) = &change {
        changes.retain(|c| !matches!(c, Change::Topic(t) if t == name));
    }
    if !changes.contains(&change) {
        changes.push(change);
    }
}

/// An ISR must be a non-empty subset of the replicas without repeats, and the leader one of
/// its members or -1.
fn check_isr(replicas: &[i32], isr: &[i32], leader: i32) -> Result<(), String> {
    if isr.is_empty() || has_repeats(isr) || isr.iter().any(|r| !replicas.contains(r)) {
        return Err(format!(
            "isr {isr:?} is not a non-empty subset of replicas {replicas:?}"
        ));
    }
    if leader != NO_LEADER && !isr.contains(&leader) {
        return Err(format!("leader {leader} is not in isr {isr:?}"));
    }
    Ok(())
}

/// Replica lists are short (the replication factor), so the quadratic check is the cheap one.
fn has_repeats(ids: &[i32]) -> bool {
    ids.iter()
        .enumerate()
        .any(|(i, id)| ids.iter().skip(i + 1).any(|other| other == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROPOSER: i32 = 100;

    /// Applies `records` as the next entry of one proposer.
    fn commit(image: &mut MetadataImage, records: Vec<MetadataRecord>) -> Applied {
        let entry = MetadataEntry {
            proposer: PROPOSER,
            sequence: image.last_sequence(PROPOSER) + 1,
            records,
        };
        image.apply(&entry)
    }

    fn commit_ok(image: &mut MetadataImage, records: Vec<MetadataRecord>) -> Vec<Change> {
        match commit(image, records) {
            Applied::Changes(changes) => changes,
            other => panic!("expected the entry to apply, got {other:?}"),
        }
    }

    fn rejected(image: &mut MetadataImage, records: Vec<MetadataRecord>) -> Rejection {
        match commit(image, records) {
            Applied::Rejected(why) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn register(id: i32, incarnation: u64) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            id,
            incarnation,
            host: format!("broker-{id}"),
            port: 9092,
            rack: None,
        }
    }

    /// Brokers 1..=n registered (incarnation 10 + id) and unfenced.
    fn cluster(n: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=n {
            let records = image.register_records(id, 10 + id as u64, "h".into(), 1, None);
            commit_ok(&mut image, records);
            let records = image.unfence_records(id);
            commit_ok(&mut image, records);
        }
        image
    }

    fn partition(replicas: &[i32], isr: &[i32], leader: i32) -> PartitionState {
        PartitionState::new(replicas.to_vec(), isr.to_vec(), leader, 0)
    }

    fn topic(name: &str, partitions: Vec<PartitionState>) -> MetadataRecord {
        MetadataRecord::Topic {
            name: name.into(),
            id: [7; 16],
            configs: vec![("retention.ms".into(), "1000".into())],
            partitions,
        }
    }

    fn change(topic: &str, partition: i32, leader: i32, isr: &[i32], epoch: i32) -> MetadataRecord {
        MetadataRecord::PartitionChange {
            topic: topic.into(),
            partition,
            leader,
            isr: isr.to_vec(),
            leader_epoch: epoch,
        }
    }

    fn state<'a>(image: &'a MetadataImage, topic: &str, p: usize) -> &'a PartitionState {
        &image.topics[topic].partitions[p]
    }

    #[test]
    fn brokers_register_fenced_and_fence_by_incarnation() {
        let mut image = MetadataImage::default();
        assert_eq!(
            commit_ok(&mut image, vec![register(1, 5)]),
            vec![Change::Brokers]
        );
        assert!(image.brokers[&1].fenced);
        assert!(image.live_brokers().is_empty());
        let unfence = |incarnation| MetadataRecord::UnfenceBroker { id: 1, incarnation };
        assert_eq!(
            rejected(&mut image, vec![unfence(4)]),
            Rejection::StaleIncarnation(1)
        );
        assert_eq!(
            rejected(
                &mut image,
                vec![MetadataRecord::FenceBroker {
                    id: 2,
                    incarnation: 5
                }]
            ),
            Rejection::UnknownBroker(2)
        );
        commit_ok(&mut image, vec![unfence(5)]);
        assert_eq!(image.live_brokers(), vec![1]);
        // A restart: new incarnation, new endpoint, fenced again.
        commit_ok(
            &mut image,
            vec![MetadataRecord::RegisterBroker {
                id: 1,
                incarnation: 6,
                host: "elsewhere".into(),
                port: 9093,
                rack: Some("r1".into()),
            }],
        );
        let broker = &image.brokers[&1];
        assert_eq!(
            (
                broker.incarnation,
                broker.host.as_str(),
                broker.port,
                broker.fenced
            ),
            (6, "elsewhere", 9093, true)
        );
        assert_eq!(broker.rack.as_deref(), Some("r1"));
        assert_eq!(
            rejected(&mut image, vec![unfence(5)]),
            Rejection::StaleIncarnation(1)
        );
        assert!(matches!(
            rejected(&mut image, vec![register(-1, 1)]),
            Rejection::Invalid(_)
        ));
    }

    #[test]
    fn topics_are_validated() {
        let mut image = cluster(3);
        let p = |replicas: &[i32], isr: &[i32], leader| vec![partition(replicas, isr, leader)];
        assert!(matches!(
            rejected(&mut image, vec![topic("t", vec![])]),
            Rejection::Invalid(_)
        ));
        assert!(matches!(
            rejected(&mut image, vec![topic("", p(&[1], &[1], 1))]),
            Rejection::Invalid(_)
        ));
        for bad in [
            p(&[], &[], -1),        // no replica
            p(&[1, 1], &[1], 1),    // a replica twice
            p(&[1, 2], &[], -1),    // empty ISR
            p(&[1, 2], &[1, 3], 1), // ISR outside the replicas
            p(&[1, 2], &[1, 1], 1), // ISR repeats
            p(&[1, 2], &[2], 1),    // leader outside the ISR
        ] {
            assert!(
                matches!(
                    rejected(&mut image, vec![topic("t", bad.clone())]),
                    Rejection::Invalid(_)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            rejected(&mut image, vec![topic("t", p(&[1, 4], &[1], 1))]),
            Rejection::UnknownBroker(4)
        );
        assert!(image.topics.is_empty());
        assert_eq!(
            commit_ok(&mut image, vec![topic("t", p(&[1, 2], &[2], -1))]),
            vec![Change::Topic("t".into())]
        );
        assert_eq!(image.leader_of("t", 0), None);
        assert_eq!(
            rejected(&mut image, vec![topic("t", p(&[1], &[1], 1))]),
            Rejection::TopicExists("t".into())
        );
    }

    #[test]
    fn partition_changes_are_validated_and_bump_the_partition_epoch() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2, 3], &[1, 2, 3], 1)])],
        );
        assert_eq!(
            rejected(&mut image, vec![change("u", 0, 1, &[1], 1)]),
            Rejection::UnknownTopic("u".into())
        );
        for p in [1, -1] {
            assert_eq!(
                rejected(&mut image, vec![change("t", p, 1, &[1], 1)]),
                Rejection::UnknownPartition("t".into(), p)
            );
        }
        for (leader, isr) in [(1, &[][..]), (1, &[1, 4]), (3, &[1, 2]), (1, &[1, 1])] {
            assert!(matches!(
                rejected(&mut image, vec![change("t", 0, leader, isr, 1)]),
                Rejection::Invalid(_)
            ));
        }
        assert_eq!(
            commit_ok(&mut image, vec![change("t", 0, 2, &[2, 3], 4)]),
            vec![Change::Topic("t".into())]
        );
        assert_eq!(
            state(&image, "t", 0),
            &PartitionState {
                partition_epoch: 1,
                ..PartitionState::new(vec![1, 2, 3], vec![2, 3], 2, 4)
            }
        );
        // The same leader epoch with a new ISR is fine (a leader shrinking its ISR); an older
        // epoch is not.
        commit_ok(&mut image, vec![change("t", 0, 2, &[2], 4)]);
        assert_eq!(state(&image, "t", 0).partition_epoch, 2);
        assert!(matches!(
            rejected(&mut image, vec![change("t", 0, 2, &[2], 3)]),
            Rejection::Invalid(_)
        ));
        assert_eq!(image.leader_of("t", 0), Some(2));
        assert_eq!(image.leader_of("t", 1), None);
        assert_eq!(image.leader_of("nope", 0), None);
    }

    #[test]
    fn topics_are_removed_once() {
        let mut image = cluster(1);
        assert_eq!(
            rejected(
                &mut image,
                vec![MetadataRecord::RemoveTopic { name: "t".into() }]
            ),
            Rejection::UnknownTopic("t".into())
        );
        commit_ok(&mut image, vec![topic("t", vec![partition(&[1], &[1], 1)])]);
        assert_eq!(
            commit_ok(
                &mut image,
                vec![MetadataRecord::RemoveTopic { name: "t".into() }]
            ),
            vec![Change::TopicRemoved("t".into())]
        );
        assert!(image.topics.is_empty());
    }

    #[test]
    fn producer_id_blocks_continue_where_the_last_ended() {
        let mut image = MetadataImage::default();
        let block = |first, count| MetadataRecord::ProducerIds {
            broker: 1,
            first,
            count,
        };
        assert_eq!(
            commit_ok(&mut image, vec![block(0, 1000)]),
            vec![Change::ProducerIds {
                broker: 1,
                first: 0,
                count: 1000
            }]
        );
        assert_eq!(image.next_producer_id, 1000);
        for (first, count) in [(0, 1000), (1001, 1000), (1000, 0), (1000, -5)] {
            assert!(matches!(
                rejected(&mut image, vec![block(first, count)]),
                Rejection::Invalid(_)
            ));
        }
        commit_ok(&mut image, vec![block(1000, 1000)]);
        assert_eq!(image.next_producer_id, 2000);
    }

    #[test]
    fn entries_are_deduplicated_by_proposer_sequence() {
        let mut image = MetadataImage::default();
        let entry = |proposer, sequence, id| MetadataEntry {
            proposer,
            sequence,
            records: vec![register(id, 1)],
        };
        assert!(matches!(image.apply(&entry(1, 1, 1)), Applied::Changes(_)));
        assert_eq!(image.apply(&entry(1, 1, 2)), Applied::Duplicate);
        assert!(!image.brokers.contains_key(&2));
        // Sequences are per proposer, and gaps are fine.
        assert!(matches!(image.apply(&entry(2, 1, 2)), Applied::Changes(_)));
        assert!(matches!(image.apply(&entry(1, 5, 3)), Applied::Changes(_)));
        assert_eq!(image.apply(&entry(1, 4, 4)), Applied::Duplicate);
        assert_eq!(image.apply(&entry(1, 0, 4)), Applied::Duplicate);
        assert_eq!(image.last_sequence(1), 5);
        // A rejected entry uses up its sequence: its retry is a duplicate, not a second try.
        let bad = MetadataEntry {
            proposer: 1,
            sequence: 6,
            records: vec![MetadataRecord::RemoveTopic { name: "x".into() }],
        };
        assert!(matches!(image.apply(&bad), Applied::Rejected(_)));
        assert_eq!(image.apply(&bad), Applied::Duplicate);
        assert_eq!(image.last_sequence(1), 6);
    }

    #[test]
    fn a_rejected_entry_changes_nothing() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![
                topic("a", vec![partition(&[1, 2], &[1, 2], 1)]),
                topic("b", vec![partition(&[3], &[3], 3)]),
                MetadataRecord::ProducerIds {
                    broker: 1,
                    first: 0,
                    count: 10,
                },
            ],
        );
        let before = image.clone();
        // Every kind of record applies, then the last one is invalid.
        let why = rejected(
            &mut image,
            vec![
                register(4, 1),
                register(1, 99),
                MetadataRecord::FenceBroker {
                    id: 2,
                    incarnation: 12,
                },
                topic("c", vec![partition(&[4], &[4], 4)]),
                change("a", 0, 2, &[2], 1),
                MetadataRecord::RemoveTopic { name: "b".into() },
                MetadataRecord::ProducerIds {
                    broker: 1,
                    first: 10,
                    count: 10,
                },
                change("a", 0, 1, &[1, 2], 1),
                topic("a", vec![partition(&[1], &[1], 1)]),
            ],
        );
        assert_eq!(why, Rejection::TopicExists("a".into()));
        assert_eq!(image.brokers, before.brokers);
        assert_eq!(image.topics, before.topics);
        assert_eq!(image.next_producer_id, before.next_producer_id);
        assert_eq!(
            image.last_sequence(PROPOSER),
            before.last_sequence(PROPOSER) + 1
        );
    }

    #[test]
    fn records_see_the_earlier_records_of_their_entry() {
        let mut image = cluster(1);
        // A topic on a broker registered in the same entry.
        let changes = commit_ok(
            &mut image,
            vec![register(2, 1), topic("t", vec![partition(&[2], &[2], 2)])],
        );
        assert_eq!(changes, vec![Change::Brokers, Change::Topic("t".into())]);
        // A change to a topic removed earlier in the entry.
        assert_eq!(
            rejected(
                &mut image,
                vec![
                    MetadataRecord::RemoveTopic { name: "t".into() },
                    change("t", 0, 2, &[2], 1)
                ]
            ),
            Rejection::UnknownTopic("t".into())
        );
        // Created, changed and removed in one entry: only the removal is reported.
        let changes = commit_ok(
            &mut image,
            vec![
                topic("u", vec![partition(&[1], &[1], 1)]),
                change("u", 0, 1, &[1], 1),
                MetadataRecord::RemoveTopic { name: "u".into() },
            ],
        );
        assert_eq!(changes, vec![Change::TopicRemoved("u".into())]);
    }

    #[test]
    fn fencing_the_leader_elects_the_next_in_sync_replica() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![topic(
                "t",
                vec![
                    partition(&[1, 2, 3], &[1, 2, 3], 1),
                    partition(&[2, 3, 1], &[2, 3, 1], 2),
                    partition(&[1, 2, 3], &[1, 3], 1),
                ],
            )],
        );
        let records = image.fence_records(1);
        assert_eq!(
            records,
            vec![
                MetadataRecord::FenceBroker {
                    id: 1,
                    incarnation: 11
                },
                change("t", 0, 2, &[2, 3], 1),
                // A follower leaves the ISR; leader and epoch stay.
                change("t", 1, 2, &[2, 3], 0),
                // Replica 2 is not in sync: the next in-sync one leads.
                change("t", 2, 3, &[3], 1),
            ]
        );
        commit_ok(&mut image, records);
        assert!(image.brokers[&1].fenced);
        assert_eq!(
            state(&image, "t", 0),
            &PartitionState {
                partition_epoch: 1,
                ..PartitionState::new(vec![1, 2, 3], vec![2, 3], 2, 1)
            }
        );
        assert_eq!(state(&image, "t", 1).leader_epoch, 0);
        assert_eq!(image.leader_of("t", 2), Some(3));
        // Fencing again changes no partition.
        assert_eq!(image.fence_records(1).len(), 1);
        assert!(image.fence_records(9).is_empty());
    }

    #[test]
    fn fenced_replicas_are_not_elected() {
        let mut image = cluster(3);
        // Broker 2 is fenced but still in the ISR (a bare FenceBroker: the controller's own
        // records would have taken it out), so it is passed over.
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2, 3], &[1, 2, 3], 1)])],
        );
        commit_ok(
            &mut image,
            vec![MetadataRecord::FenceBroker {
                id: 2,
                incarnation: 12,
            }],
        );
        let records = image.fence_records(1);
        assert_eq!(records[1], change("t", 0, 3, &[2, 3], 1));
    }

    #[test]
    fn the_last_in_sync_replica_stays_and_comes_back_as_leader() {
        let mut image = cluster(2);
        commit_ok(
            &mut image,
            vec![topic(
                "t",
                vec![partition(&[1, 2], &[1], 1), partition(&[2, 1], &[2], 2)],
            )],
        );
        let records = image.fence_records(1);
        assert_eq!(records[1..], [change("t", 0, NO_LEADER, &[1], 1)]);
        commit_ok(&mut image, records);
        assert_eq!(image.leader_of("t", 0), None);
        assert_eq!(state(&image, "t", 0).isr, vec![1]);

        let records = image.unfence_records(1);
        assert_eq!(
            records,
            vec![
                MetadataRecord::UnfenceBroker {
                    id: 1,
                    incarnation: 11
                },
                change("t", 0, 1, &[1], 2),
            ]
        );
        commit_ok(&mut image, records);
        assert_eq!(image.leader_of("t", 0), Some(1));
        assert_eq!(state(&image, "t", 0).leader_epoch, 2);
        assert_eq!(state(&image, "t", 0).partition_epoch, 2);
        // Unfencing a live or unknown broker proposes nothing.
        assert!(image.unfence_records(1).is_empty());
        assert!(image.unfence_records(9).is_empty());
    }

    #[test]
    fn a_broker_that_registers_again_leaves_leadership_and_isrs() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2, 3], &[1, 2, 3], 1)])],
        );
        assert_eq!(image.register_records(4, 1, "h".into(), 1, None).len(), 1);
        let records = image.register_records(1, 99, "new-host".into(), 9092, None);
        assert_eq!(
            records,
            vec![
                MetadataRecord::RegisterBroker {
                    id: 1,
                    incarnation: 99,
                    host: "new-host".into(),
                    port: 9092,
                    rack: None,
                },
                change("t", 0, 2, &[2, 3], 1),
            ]
        );
        commit_ok(&mut image, records);
        assert!(image.brokers[&1].fenced);
        assert_eq!(image.live_brokers(), vec![2, 3]);
        assert_eq!(image.leader_of("t", 0), Some(2));
    }

    #[test]
    fn assignments_spread_leaders_and_replicas_evenly() {
        let image = cluster(3);
        let assignment = image.assign_replicas("orders", 6, 3).expect("assign");
        assert_eq!(assignment.len(), 6);
        let mut leaders = BTreeMap::new();
        for p in &assignment {
            assert_eq!(p.replicas.len(), 3);
            assert!(!has_repeats(&p.replicas));
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
            *leaders.entry(p.leader).or_insert(0) += 1;
        }
        assert_eq!(leaders, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
        // The documented placement, and a stable result on every node.
        let start = (sluice_core::placement::fnv1a(b"orders") % 3) as i32;
        assert_eq!(assignment[0].replicas[0], 1 + start);
        assert_eq!(image.assign_replicas("orders", 6, 3), Ok(assignment));
        // The assignment is valid for the image.
        let mut image = image;
        let partitions = image.assign_replicas("t", 4, 2).expect("assign");
        commit_ok(&mut image, vec![topic("t", partitions)]);
    }

    #[test]
    fn assignment_uses_live_brokers_and_checks_its_arguments() {
        let mut image = cluster(4);
        assert!(image
            .assign_replicas("t", 8, -1)
            .expect("default rf")
            .iter()
            .all(|p| p.replicas.len() == 3));
        let records = image.fence_records(2);
        commit_ok(&mut image, records);
        let assignment = image.assign_replicas("t", 9, 3).expect("assign");
        assert!(assignment.iter().all(|p| !p.replicas.contains(&2)));
        assert!(image.assign_replicas("t", 1, 4).is_err());
        assert!(image.assign_replicas("t", 1, 0).is_err());
        assert!(image.assign_replicas("t", 1, -2).is_err());
        assert!(image.assign_replicas("t", 0, 1).is_err());
        assert!(MetadataImage::default()
            .assign_replicas("t", 1, -1)
            .is_err());
        let two = cluster(2);
        assert!(two
            .assign_replicas("t", 3, -1)
            .expect("default rf on two brokers")
            .iter()
            .all(|p| p.replicas.len() == 2));
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(sluice_core::placement::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(sluice_core::placement::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            sluice_core::placement::fnv1a(b"foobar"),
            0x8594_4171_f739_67e8
        );
    }

    #[test]
    fn unclean_elections_pick_a_live_out_of_sync_replica_only_where_allowed() {
        let mut image = cluster(3);
        let partitions = image.assign_replicas("t", 1, 3).expect("assigned");
        let (first, second) = (partitions[0].replicas[0], partitions[0].replicas[1]);
        let record = MetadataRecord::Topic {
            name: "t".into(),
            id: [1; 16],
            configs: Vec::new(),
            partitions,
        };
        commit_ok(&mut image, vec![record]);
        // The ISR shrinks to the leader, which is then fenced: no leader, ISR [leader].
        let isr_change = MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: first,
            isr: vec![first],
            leader_epoch: 0,
        };
        commit_ok(&mut image, vec![isr_change]);
        let records = image.fence_records(first);
        commit_ok(&mut image, records);
        assert_eq!(image.leader_of("t", 0), None);
        assert!(
            image.unclean_elections(&|_| false).is_empty(),
            "not allowed: stays offline"
        );
        let records = image.unclean_elections(&|t| t.name == "t");
        assert_eq!(
            records,
            vec![MetadataRecord::PartitionChange {
                topic: "t".into(),
                partition: 0,
                leader: second,
                isr: vec![second],
                leader_epoch: 2,
            }]
        );
        commit_ok(&mut image, records);
        assert_eq!(image.leader_of("t", 0), Some(second));
        assert!(
            image.unclean_elections(&|_| true).is_empty(),
            "led again: nothing to do"
        );
    }

    #[test]
    fn preferred_and_unclean_elections_and_the_imbalance_check() {
        let mut image = cluster(3);
        let partitions = image.assign_replicas("e", 3, 3).expect("assigned");
        let preferred0 = partitions[0].replicas[0];
        let record = MetadataRecord::Topic {
            name: "e".into(),
            id: [2; 16],
            configs: Vec::new(),
            partitions,
        };
        commit_ok(&mut image, vec![record]);
        assert_eq!(
            image.election("e", 0, true),
            Err(ElectionRefusal::NotNeeded)
        );
        assert_eq!(
            image.election("e", 9, true),
            Err(ElectionRefusal::UnknownPartition)
        );
        assert!(image.imbalanced(10).is_empty());
        // The preferred leader of partition 0 is fenced (leadership moves) and comes back.
        let records = image.fence_records(preferred0);
        commit_ok(&mut image, records);
        assert_eq!(
            image.election("e", 0, true),
            Err(ElectionRefusal::NotAvailable)
        );
        let records = image.unfence_records(preferred0);
        commit_ok(&mut image, records);
        // Back, but not in the ISR until its leader adds it.
        assert_eq!(
            image.election("e", 0, true),
            Err(ElectionRefusal::NotAvailable)
        );
        let isr = vec![1, 2, 3];
        let leader = image.leader_of("e", 0).expect("a leader");
        commit_ok(
            &mut image,
            vec![MetadataRecord::PartitionChange {
                topic: "e".into(),
                partition: 0,
                leader,
                isr: isr.clone(),
                leader_epoch: 1,
            }],
        );
        assert_eq!(image.imbalanced(10), vec![("e".to_string(), 0)]);
        assert_eq!(image.imbalanced(100), Vec::<(String, i32)>::new());
        let elected = image.election("e", 0, true).expect("elected");
        assert_eq!(
            elected,
            MetadataRecord::PartitionChange {
                topic: "e".into(),
                partition: 0,
                leader: preferred0,
                isr,
                leader_epoch: 2,
            }
        );
        commit_ok(&mut image, vec![elected]);
        assert_eq!(image.leader_of("e", 0), Some(preferred0));
        // Unclean: only where there is no leader.
        assert_eq!(
            image.election("e", 1, false),
            Err(ElectionRefusal::NotNeeded)
        );
    }

    /// Moving a partition from [1, 2, 3] to [4, 2, 3] with 1 leading: 4 is added first, the
    /// partition completes only once 4 is in sync, 1 leaves, and the leader moves to 4 with a
    /// new epoch.
    #[test]
    fn a_reassignment_adds_then_completes_once_in_sync() {
        let mut image = cluster(4);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2, 3], &[1, 2, 3], 1)])],
        );
        let start = image
            .reassignment("t", 0, Some(&[4, 2, 3]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![start]);
        let s = state(&image, "t", 0).clone();
        assert_eq!(s.replicas, vec![4, 2, 3, 1]);
        assert_eq!((s.adding.clone(), s.removing.clone()), (vec![4], vec![1]));
        assert_eq!(
            (s.leader, s.leader_epoch, s.isr.clone()),
            (1, 0, vec![1, 2, 3])
        );
        assert_eq!(image.reassignments().len(), 1);
        assert!(
            image.reassignment_completions().is_empty(),
            "4 is not in sync yet"
        );
        // The leader adds 4 to the ISR once it caught up.
        commit_ok(&mut image, vec![change("t", 0, 1, &[1, 2, 3, 4], 0)]);
        let done = image.reassignment_completions();
        assert_eq!(done.len(), 1);
        commit_ok(&mut image, done);
        let s = state(&image, "t", 0);
        assert_eq!(s.replicas, vec![4, 2, 3]);
        assert_eq!(s.isr, vec![2, 3, 4]);
        assert!(!s.reassigning());
        assert_eq!(
            (s.leader, s.leader_epoch),
            (4, 1),
            "the leader left: 4 leads, epoch + 1"
        );
        assert!(image.reassignments().is_empty());
        assert!(image.reassignment_completions().is_empty());
        // The same target again: nothing to do.
        assert_eq!(image.reassignment("t", 0, Some(&[4, 2, 3]), true), Ok(None));
    }

    #[test]
    fn a_reassignment_is_cancelled_back_to_the_original_replicas() {
        let mut image = cluster(5);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2], &[1, 2], 1)])],
        );
        assert_eq!(
            image.reassignment("t", 0, None, true),
            Err(ReassignRefusal::NoReassignmentInProgress)
        );
        let start = image
            .reassignment("t", 0, Some(&[3, 4]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![start]);
        assert_eq!(state(&image, "t", 0).replicas, vec![3, 4, 1, 2]);
        // 3 caught up, 4 did not; a new target replaces the old one from the original replicas.
        commit_ok(&mut image, vec![change("t", 0, 1, &[1, 2, 3], 0)]);
        let next = image
            .reassignment("t", 0, Some(&[3, 5]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![next]);
        let s = state(&image, "t", 0).clone();
        assert_eq!(s.replicas, vec![3, 5, 1, 2]);
        assert_eq!(
            (s.adding.clone(), s.removing.clone()),
            (vec![3, 5], vec![1, 2])
        );
        assert_eq!(s.isr, vec![1, 2, 3]);
        let cancel = image
            .reassignment("t", 0, None, true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![cancel]);
        let s = state(&image, "t", 0);
        assert_eq!(
            (s.replicas.clone(), s.isr.clone()),
            (vec![1, 2], vec![1, 2])
        );
        assert!(!s.reassigning());
        assert_eq!(s.leader, 1);
        assert_eq!(
            s.leader_epoch, 2,
            "replicas left twice: their fetches are fenced"
        );
    }

    #[test]
    fn reassignments_are_validated_and_stale_ones_refused() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2], &[1, 2], 1)])],
        );
        let refusal = |image: &MetadataImage, target: &[i32], allow: bool| {
            image
                .reassignment("t", 0, Some(target), allow)
                .expect_err("refused")
        };
        assert!(matches!(
            refusal(&image, &[], true),
            ReassignRefusal::InvalidAssignment(_)
        ));
        assert!(matches!(
            refusal(&image, &[1, 1], true),
            ReassignRefusal::InvalidAssignment(_)
        ));
        assert!(matches!(
            refusal(&image, &[1, 9], true),
            ReassignRefusal::InvalidAssignment(_)
        ));
        assert_eq!(
            refusal(&image, &[1, 2, 3], false),
            ReassignRefusal::ReplicationFactorChange
        );
        assert_eq!(
            image.reassignment("t", 5, Some(&[1]), true),
            Err(ReassignRefusal::UnknownPartition)
        );
        // Decided, then the ISR changes before it commits: the decision is refused.
        let decided = image
            .reassignment("t", 0, Some(&[2, 3]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![change("t", 0, 1, &[1], 0)]);
        assert_eq!(
            rejected(&mut image, vec![decided]),
            Rejection::StalePartitionEpoch("t".into(), 0)
        );
        // Reordering is a reassignment that completes at once (a new preferred leader).
        let reorder = image
            .reassignment("t", 0, Some(&[2, 1]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![reorder]);
        let s = state(&image, "t", 0);
        assert_eq!(
            (s.replicas.clone(), s.leader, s.leader_epoch),
            (vec![2, 1], 1, 0)
        );
        // Cancelling when only an added replica is in sync would leave nobody known to hold
        // every record.
        let start = image
            .reassignment("t", 0, Some(&[3]), true)
            .expect("allowed")
            .expect("a change");
        commit_ok(&mut image, vec![start]);
        commit_ok(&mut image, vec![change("t", 0, 3, &[3], 1)]);
        assert_eq!(
            image.reassignment("t", 0, None, true),
            Err(ReassignRefusal::NoInSyncReplica)
        );
    }

    #[test]
    fn partitions_are_added_by_placement_or_as_assigned() {
        let mut image = cluster(3);
        let placed = image.assign_replicas("t", 2, 2).expect("valid");
        commit_ok(&mut image, vec![topic("t", placed)]);
        assert!(matches!(
            image.new_partitions("t", 2, None),
            Err(AddPartitionsRefusal::InvalidPartitions(_))
        ));
        assert!(matches!(
            image.new_partitions("t", 1, None),
            Err(AddPartitionsRefusal::InvalidPartitions(_))
        ));
        assert_eq!(
            image.new_partitions("u", 3, None),
            Err(AddPartitionsRefusal::UnknownTopic)
        );
        let added = image.new_partitions("t", 4, None).expect("valid");
        assert_eq!(
            added,
            image.assign_replicas("t", 4, 2).expect("valid")[2..].to_vec()
        );
        commit_ok(
            &mut image,
            vec![MetadataRecord::AddPartitions {
                topic: "t".into(),
                first: 2,
                partitions: added,
            }],
        );
        assert_eq!(image.topics["t"].partitions.len(), 4);
        for bad in [
            vec![vec![1]],
            vec![vec![1, 1]],
            vec![vec![1, 7]],
            vec![vec![1, 2]; 2],
        ] {
            assert!(matches!(
                image.new_partitions("t", 5, Some(&bad)),
                Err(AddPartitionsRefusal::InvalidAssignment(_))
            ));
        }
        let fenced = image.fence_records(3);
        commit_ok(&mut image, fenced);
        let added = image
            .new_partitions("t", 5, Some(&[vec![3, 2]]))
            .expect("valid");
        assert_eq!(added, vec![partition(&[3, 2], &[2], 2)]);
        // Fewer live brokers than the replication factor.
        let fenced = image.fence_records(2);
        commit_ok(&mut image, fenced);
        assert!(matches!(
            image.new_partitions("t", 5, None),
            Err(AddPartitionsRefusal::InvalidReplicationFactor(_))
        ));
        // A new partition must be valid as in a new topic.
        let bad = MetadataRecord::AddPartitions {
            topic: "t".into(),
            first: 4,
            partitions: vec![partition(&[1, 9], &[1], 1)],
        };
        assert_eq!(rejected(&mut image, vec![bad]), Rejection::UnknownBroker(9));
        // Decided when the topic had fewer partitions: refused, not appended twice.
        let stale = MetadataRecord::AddPartitions {
            topic: "t".into(),
            first: 2,
            partitions: vec![partition(&[1, 2], &[1, 2], 1)],
        };
        assert_eq!(
            rejected(&mut image, vec![stale]),
            Rejection::StalePartitionCount("t".into())
        );
    }

    /// Six brokers in three racks (1, 4: a; 2, 5: b; 3, 6: c): three replicas are always in
    /// three racks, leaders spread evenly; two replicas on a rack with more brokers than the
    /// others still use two racks.
    #[test]
    fn replicas_are_spread_over_racks() {
        let mut image = MetadataImage::default();
        let rack = |id: i32| ["a", "b", "c"][((id - 1) % 3) as usize].to_string();
        for id in 1..=6 {
            let records = image.register_records(id, 1, "h".into(), 1, Some(rack(id)));
            commit_ok(&mut image, records);
            let records = image.unfence_records(id);
            commit_ok(&mut image, records);
        }
        let placed = image.assign_replicas("racked", 12, 3).expect("placed");
        let mut leaders = BTreeMap::new();
        for state in &placed {
            let mut racks: Vec<String> = state.replicas.iter().map(|id| rack(*id)).collect();
            racks.sort();
            racks.dedup();
            assert_eq!(racks.len(), 3, "{:?}", state.replicas);
            *leaders.entry(state.leader).or_insert(0) += 1;
        }
        assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");
        // Brokers 1..4 with racks a, a, a, b: every pair of replicas spans both racks.
        let mut image = MetadataImage::default();
        for id in 1..=4 {
            let r = if id == 4 { "b" } else { "a" };
            let records = image.register_records(id, 1, "h".into(), 1, Some(r.into()));
            commit_ok(&mut image, records);
            let records = image.unfence_records(id);
            commit_ok(&mut image, records);
        }
        for state in image.assign_replicas("two", 8, 2).expect("placed") {
            assert!(state.replicas.contains(&4), "{:?}", state.replicas);
        }
        // Without racks, the placement is the plain round robin it always was.
        let image = cluster(5);
        let placed = image.assign_replicas("plain", 5, 3).expect("placed");
        let start = (sluice_core::placement::fnv1a(b"plain") % 5) as i32;
        for (p, state) in (0..).zip(&placed) {
            let expected: Vec<i32> = (0..3).map(|k| (start + p + k) % 5 + 1).collect();
            assert_eq!(state.replicas, expected);
        }
    }

    /// A leader's ISR change is decided at a partition epoch: a follower fenced meanwhile does
    /// not rejoin by it, and no fenced broker joins an ISR at all.
    #[test]
    fn a_fenced_follower_cannot_rejoin_the_isr() {
        let mut image = cluster(3);
        commit_ok(
            &mut image,
            vec![topic("t", vec![partition(&[1, 2, 3], &[1, 2], 1)])],
        );
        let expand = |image: &MetadataImage, isr: &[i32]| {
            let s = state(image, "t", 0);
            MetadataRecord::PartitionReplicas {
                topic: "t".into(),
                partition: 0,
                partition_epoch: s.partition_epoch,
                replicas: s.replicas.clone(),
                isr: isr.to_vec(),
                leader: s.leader,
                leader_epoch: s.leader_epoch,
                adding: Vec::new(),
                removing: Vec::new(),
            }
        };
        // Decided when 3 caught up; 3 is fenced before it commits: refused (the fencing did not
        // touch this partition, 3 was not in its ISR, so it is the fenced check that holds).
        let decided = expand(&image, &[1, 2, 3]);
        let fence = image.fence_records(3);
        commit_ok(&mut image, fence);
        assert!(matches!(
            rejected(&mut image, vec![decided]),
            Rejection::Invalid(_)
        ));
        // Decided, then the partition changes (2 is fenced out of the ISR): stale.
        let decided = expand(&image, &[1, 2]);
        let fence = image.fence_records(2);
        commit_ok(&mut image, fence);
        assert_eq!(
            rejected(&mut image, vec![decided]),
            Rejection::StalePartitionEpoch("t".into(), 0)
        );
        let unfence = image.unfence_records(2);
        commit_ok(&mut image, unfence);
        // Unfenced, it may join.
        let unfence = image.unfence_records(3);
        commit_ok(&mut image, unfence);
        let joined = expand(&image, &[1, 2, 3]);
        commit_ok(&mut image, vec![joined]);
        assert_eq!(state(&image, "t", 0).isr, vec![1, 2, 3]);
    }
}
