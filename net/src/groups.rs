//! Classic consumer groups: the JoinGroup / SyncGroup / Heartbeat / LeaveGroup state machine,
//! one per group, stepped by the core that owns the group's `__consumer_offsets` partition
//! (see `offsets`), with no I/O inside it.
//!
//! Kafka's states: Empty → PreparingRebalance (members (re)join; the join phase ends when every
//! known member has rejoined, or at the rebalance timeout, dropping those that did not, or —
//! for a group that was empty — after `group.initial.rebalance.delay.ms`) → CompletingRebalance
//! (a new generation; the leader gets every member's subscription and sends the assignment
//! with SyncGroup) → Stable. A member that misses heartbeats for its session timeout, leaves,
//! or joins anew sends the group back to PreparingRebalance. Join and sync metadata pass
//! through untouched, so every client-side assignor works.
//!
//! Static members (KIP-345) that restart take their membership back without a rebalance, and
//! the process they replace is fenced. Each group's generation and members are stored in
//! `__consumer_offsets` (Kafka's GroupMetadata records) and restored when the partition is
//! opened. Not here yet: the KIP-848 protocol.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;

use crate::shard::Shard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The name Kafka reports (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_heartbeat: Instant,
}

/// What a JoinGroup is answered with.
#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member's (id, instance id, metadata for the chosen protocol).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinAnswer {
    fn error(error: ResponseError, member_id: &str) -> JoinAnswer {
        JoinAnswer {
            error: error.code(),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup is answered with: error, protocol type and name, assignment.
pub type SyncAnswer = (i16, Option<String>, Option<String>, Bytes);

pub struct Group {
    pub id: String,
    /// The coordinating core, for writing the group's metadata record.
    shard: Weak<Shard>,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Members in the order they joined (the first is the leader when a new one is needed).
    pub members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending_ids: Vec<(String, Instant)>,
    awaiting_join: HashMap<String, oneshot::Sender<JoinAnswer>>,
    awaiting_sync: HashMap<String, oneshot::Sender<SyncAnswer>>,
    /// Bumped whenever a join-phase timer is (re)armed; a timer of an older round does nothing.
    join_round: u64,
    /// Until when a group that was empty waits for more members before completing the join.
    initial_delay_until: Option<Instant>,
}

/// The groups this core coordinates.
pub type Groups = HashMap<String, Rc<RefCell<Group>>>;

/// Group settings from the broker configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: i64,
}

#[derive(Debug)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED with its id (KIP-394).
    pub require_known_member_id: bool,
}

fn group_of(shard: &Shard, id: &str) -> Option<Rc<RefCell<Group>>> {
    shard.groups.borrow().get(id).cloned()
}

fn group_or_new(shard: &Rc<Shard>, id: &str) -> Rc<RefCell<Group>> {
    shard
        .groups
        .borrow_mut()
        .entry(id.to_string())
        .or_insert_with(|| {
            Rc::new(RefCell::new(Group {
                id: id.to_string(),
                shard: Rc::downgrade(shard),
                state: State::Empty,
                generation: 0,
                protocol_type: None,
                protocol: None,
                leader: None,
                members: Vec::new(),
                pending_ids: Vec::new(),
                awaiting_join: HashMap::new(),
                awaiting_sync: HashMap::new(),
                join_round: 0,
                initial_delay_until: None,
            }))
        })
        .clone()
}

/// True when the group exists and has members (commits then need a generation).
pub fn has_members(shard: &Shard, id: &str) -> bool {
    group_of(shard, id).is_some_and(|g| !g.borrow().members.is_empty())
}

/// Checks an OffsetCommit that names a generation against the group; None when it may
/// commit. Kafka: the member must be known and the generation current, and not while the
/// group is completing a rebalance.
pub fn validate_commit(
    shard: &Shard,
    id: &str,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<ResponseError> {
    let group = group_of(shard, id)?;
    let g = group.borrow();
    if fenced(&g, member_id, instance_id) {
        return Some(ResponseError::FencedInstanceId);
    }
    if g.members.is_empty() {
        return (generation >= 0).then_some(ResponseError::UnknownMemberId);
    }
    if generation < 0 && member_id.is_empty() {
        return Some(ResponseError::UnknownMemberId);
    }
    if !g.members.iter().any(|m| m.id == member_id) {
        return Some(ResponseError::UnknownMemberId);
    }
    if generation != g.generation {
        return Some(ResponseError::IllegalGeneration);
    }
    (g.state == State::CompletingRebalance).then_some(ResponseError::RebalanceInProgress)
}

/// KIP-345: a request naming a static member's instance id under another member id comes from
/// a process that was replaced (FENCED_INSTANCE_ID).
fn fenced(g: &Group, member_id: &str, instance_id: Option<&str>) -> bool {
    instance_id.is_some_and(|i| {
        g.members
            .iter()
            .any(|m| m.instance_id.as_deref() == Some(i) && m.id != member_id)
    })
}

/// JoinGroup: resolves when the join phase completes (or at once with an error).
pub async fn join(shard: &Rc<Shard>, settings: Settings, req: JoinRequest) -> JoinAnswer {
    if req.group.is_empty() {
        return JoinAnswer::error(ResponseError::InvalidGroupId, &req.member_id);
    }
    if req.session_timeout_ms < settings.min_session_timeout_ms
        || req.session_timeout_ms > settings.max_session_timeout_ms
    {
        return JoinAnswer::error(ResponseError::InvalidSessionTimeout, &req.member_id);
    }
    if req.protocol_type.is_empty() || req.protocols.is_empty() {
        return JoinAnswer::error(ResponseError::InconsistentGroupProtocol, &req.member_id);
    }
    let group = group_or_new(shard, &req.group);
    let receiver = {
        let mut g = group.borrow_mut();
        if !g.members.is_empty() {
            let same_type = g.protocol_type.as_deref() == Some(req.protocol_type.as_str());
            let shared = req.protocols.iter().any(|(name, _)| {
                g.members
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if !same_type || !shared {
                return JoinAnswer::error(ResponseError::InconsistentGroupProtocol, &req.member_id);
            }
        }
        let now = Instant::now();
        g.pending_ids
            .retain(|(_, at)| now.duration_since(*at) < Duration::from_secs(300));
        let static_member = req.instance_id.as_ref().and_then(|i| {
            g.members
                .iter()
                .position(|m| m.instance_id.as_ref() == Some(i))
        });
        if let (Some(i), false) = (static_member, req.member_id.is_empty()) {
            if g.members[i].id != req.member_id {
                return JoinAnswer::error(ResponseError::FencedInstanceId, &req.member_id);
            }
        }
        if let (Some(i), true) = (static_member, req.member_id.is_empty()) {
            // KIP-345: a static member coming back (a restarted process) takes over its old
            // membership under a new member id; the old id is fenced. A stable group keeps
            // its generation and assignment: no rebalance.
            let new_id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
            let old_id = std::mem::replace(&mut g.members[i].id, new_id.clone());
            if g.leader.as_deref() == Some(old_id.as_str()) {
                g.leader = Some(new_id.clone());
            }
            if let Some(tx) = g.awaiting_join.remove(&old_id) {
                let _ = tx.send(JoinAnswer::error(ResponseError::FencedInstanceId, &old_id));
            }
            if let Some(tx) = g.awaiting_sync.remove(&old_id) {
                let _ = tx.send((
                    ResponseError::FencedInstanceId.code(),
                    None,
                    None,
                    Bytes::new(),
                ));
            }
            g.members[i].last_heartbeat = now;
            if g.state == State::Stable && g.members[i].protocols == req.protocols {
                let answer = join_answer(&g, &new_id);
                store_later(g.shard.clone(), g.id.clone(), encode_group_value(&g));
                return answer;
            }
        }
        let member_id = if let (Some(i), true) = (static_member, req.member_id.is_empty()) {
            g.members[i].id.clone()
        } else if req.member_id.is_empty() {
            let id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
            // Static members skip MEMBER_ID_REQUIRED (KIP-345).
            if req.require_known_member_id && req.instance_id.is_none() {
                g.pending_ids.push((id.clone(), now));
                return JoinAnswer::error(ResponseError::MemberIdRequired, &id);
            }
            id
        } else {
            let known = g.members.iter().any(|m| m.id == req.member_id)
                || g.pending_ids.iter().any(|(id, _)| *id == req.member_id);
            if !known {
                return JoinAnswer::error(ResponseError::UnknownMemberId, &req.member_id);
            }
            req.member_id.clone()
        };
        g.pending_ids.retain(|(id, _)| *id != member_id);
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
        let changed = match g.members.iter_mut().find(|m| m.id == member_id) {
            Some(m) => {
                let changed = m.protocols != req.protocols;
                m.protocols = req.protocols.clone();
                m.session_timeout = session_timeout;
                m.rebalance_timeout = rebalance_timeout;
                m.last_heartbeat = now;
                changed
            }
            None => {
                g.members.push(Member {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout,
                    rebalance_timeout,
                    protocols: req.protocols.clone(),
                    assignment: Bytes::new(),
                    last_heartbeat: now,
                });
                true
            }
        };
        if g.members.len() == 1 {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        let (tx, rx) = oneshot::channel();
        if let Some(old) = g.awaiting_join.insert(member_id.clone(), tx) {
            let _ = old.send(JoinAnswer::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
        }
        // A rejoin of a stable group by its leader, or any change, starts a rebalance; a
        // follower rejoining with the same protocols during Stable gets the current state.
        let leader_rejoins = g.leader.as_deref() == Some(member_id.as_str());
        match g.state {
            State::Stable if !changed && !leader_rejoins => {
                let answer = join_answer(&g, &member_id);
                if let Some(tx) = g.awaiting_join.remove(&member_id) {
                    let _ = tx.send(answer);
                }
            }
            State::PreparingRebalance => {}
            _ => prepare_rebalance(&mut g, &group, settings),
        }
        drop(g);
        maybe_complete_join(&group);
        rx
    };
    receiver
        .await
        .unwrap_or_else(|_| JoinAnswer::error(ResponseError::RebalanceInProgress, &req.member_id))
}

fn join_answer(g: &Group, member_id: &str) -> JoinAnswer {
    let protocol = g.protocol.clone();
    let is_leader = g.leader.as_deref() == Some(member_id);
    JoinAnswer {
        error: 0,
        generation: g.generation,
        protocol_type: g.protocol_type.clone(),
        protocol: protocol.clone(),
        leader: g.leader.clone().unwrap_or_default(),
        member_id: member_id.to_string(),
        members: if is_leader {
            g.members
                .iter()
                .map(|m| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| Some(n) == protocol.as_ref())
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    (m.id.clone(), m.instance_id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Answers every waiting SyncGroup with REBALANCE_IN_PROGRESS: its generation is over.
fn send_syncs_to_rejoin(g: &mut Group) {
    for (_, tx) in g.awaiting_sync.drain() {
        let _ = tx.send((
            ResponseError::RebalanceInProgress.code(),
            None,
            None,
            Bytes::new(),
        ));
    }
}

/// Enters PreparingRebalance: pending syncs are told to rejoin, and the join phase gets its
/// deadline (the longest rebalance timeout, or the initial delay for a group that was empty).
fn prepare_rebalance(g: &mut Group, group: &Rc<RefCell<Group>>, settings: Settings) {
    send_syncs_to_rejoin(g);
    let was_empty = g.state == State::Empty;
    g.state = State::PreparingRebalance;
    g.join_round += 1;
    let timeout = g
        .members
        .iter()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or_default();
    let delay = if was_empty && settings.initial_rebalance_delay_ms > 0 {
        let d = Duration::from_millis(settings.initial_rebalance_delay_ms as u64).min(timeout);
        g.initial_delay_until = Some(Instant::now() + d);
        d
    } else {
        g.initial_delay_until = None;
        timeout
    };
    arm_join_timer(Rc::downgrade(group), g.join_round, delay);
}

fn arm_join_timer(group: Weak<RefCell<Group>>, round: u64, after: Duration) {
    glommio::spawn_local(async move {
        glommio::timer::sleep(after).await;
        let Some(group) = group.upgrade() else {
            return;
        };
        {
            let mut g = group.borrow_mut();
            if g.join_round != round || g.state != State::PreparingRebalance {
                return;
            }
            g.initial_delay_until = None;
            // The deadline passed: members that did not rejoin are dropped.
            let waiting: Vec<String> = g.awaiting_join.keys().cloned().collect();
            g.members.retain(|m| waiting.contains(&m.id));
        }
        complete_join(&group);
    })
    .detach();
}

/// Completes the join phase once every member has rejoined (and any initial delay is over).
fn maybe_complete_join(group: &Rc<RefCell<Group>>) {
    let ready = {
        let g = group.borrow();
        g.state == State::PreparingRebalance
            && g.initial_delay_until.is_none_or(|t| Instant::now() >= t)
            && g.members
                .iter()
                .all(|m| g.awaiting_join.contains_key(&m.id))
    };
    if ready {
        complete_join(group);
    }
}

/// A new generation: the protocol every member supports that they like best, a leader, and
/// an answer to every member waiting in JoinGroup.
fn complete_join(group: &Rc<RefCell<Group>>) {
    let mut g = group.borrow_mut();
    g.join_round += 1;
    if g.members.is_empty() {
        g.state = State::Empty;
        g.generation += 1;
        g.protocol = None;
        g.leader = None;
        g.protocol_type = None;
        for (id, tx) in g.awaiting_join.drain() {
            let _ = tx.send(JoinAnswer::error(ResponseError::UnknownMemberId, &id));
        }
        return;
    }
    let candidates: Vec<String> = g.members[0]
        .protocols
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| {
            g.members
                .iter()
                .all(|m| m.protocols.iter().any(|(p, _)| p == n))
        })
        .collect();
    // Kafka's vote: each member votes for its most preferred candidate; most votes wins.
    let protocol = candidates
        .iter()
        .max_by_key(|c| {
            let votes = g
                .members
                .iter()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .find(|(p, _)| candidates.contains(p))
                        .map(|(p, _)| p)
                        == Some(c)
                })
                .count();
            (
                votes,
                std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
            )
        })
        .cloned();
    g.protocol = protocol;
    g.generation += 1;
    let leader_still_here = g
        .leader
        .as_ref()
        .is_some_and(|l| g.members.iter().any(|m| m.id == *l));
    if !leader_still_here {
        g.leader = g.members.first().map(|m| m.id.clone());
    }
    g.state = State::CompletingRebalance;
    let now = Instant::now();
    for m in &mut g.members {
        m.last_heartbeat = now;
        m.assignment = Bytes::new();
    }
    let waiting: Vec<(String, oneshot::Sender<JoinAnswer>)> = g.awaiting_join.drain().collect();
    for (id, tx) in waiting {
        let _ = tx.send(join_answer(&g, &id));
    }
}

/// SyncGroup: the leader's assignment is handed to every member; followers wait for it.
pub async fn sync(shard: &Rc<Shard>, req: SyncRequest) -> SyncAnswer {
    let SyncRequest {
        group: id,
        generation,
        member_id,
        instance_id,
        protocol_type,
        protocol,
        assignments,
    } = req;
    let (id, member_id, instance_id) = (id.as_str(), member_id.as_str(), instance_id.as_deref());
    let error = |e: ResponseError| (e.code(), None, None, Bytes::new());
    let Some(group) = group_of(shard, id) else {
        return error(ResponseError::UnknownMemberId);
    };
    let rx = {
        let mut g = group.borrow_mut();
        if fenced(&g, member_id, instance_id) {
            return error(ResponseError::FencedInstanceId);
        }
        let Some(member) = g.members.iter_mut().find(|m| m.id == member_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        member.last_heartbeat = Instant::now();
        if generation != g.generation {
            return error(ResponseError::IllegalGeneration);
        }
        let mismatched = protocol_type.is_some_and(|t| Some(t) != g.protocol_type)
            || protocol.is_some_and(|p| Some(p) != g.protocol);
        if mismatched {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        match g.state {
            State::Empty => return error(ResponseError::UnknownMemberId),
            State::PreparingRebalance => return error(ResponseError::RebalanceInProgress),
            State::Stable => {
                let m = g
                    .members
                    .iter()
                    .find(|m| m.id == member_id)
                    .expect("found above");
                return (
                    0,
                    g.protocol_type.clone(),
                    g.protocol.clone(),
                    m.assignment.clone(),
                );
            }
            State::CompletingRebalance => {}
        }
        let (tx, rx) = oneshot::channel();
        g.awaiting_sync.insert(member_id.to_string(), tx);
        let mut completed = None;
        if g.leader.as_deref() == Some(member_id) {
            for m in &mut g.members {
                m.assignment = assignments
                    .iter()
                    .find(|(id, _)| *id == m.id)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
            }
            g.state = State::Stable;
            let (pt, p) = (g.protocol_type.clone(), g.protocol.clone());
            let drained: Vec<(String, oneshot::Sender<SyncAnswer>)> =
                g.awaiting_sync.drain().collect();
            let waiting: Vec<(oneshot::Sender<SyncAnswer>, SyncAnswer)> = drained
                .into_iter()
                .map(|(id, tx)| {
                    let assignment = g
                        .members
                        .iter()
                        .find(|m| m.id == id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    (tx, (0, pt.clone(), p.clone(), assignment))
                })
                .collect();
            completed = Some((encode_group_value(&g), g.generation, waiting));
        }
        (rx, completed)
    };
    let (rx, completed) = rx;
    if let Some((value, generation, waiting)) = completed {
        // As Kafka does, the new generation is stored before its members learn their
        // assignment, so that a restarted coordinator knows it.
        if let Err(e) = crate::offsets::write_group_record(shard, id, Some(value)).await {
            eprintln!("sluice: storing group {id} generation {generation}: {e}");
        }
        for (tx, answer) in waiting {
            let _ = tx.send(answer);
        }
    }
    rx.await
        .unwrap_or_else(|_| error(ResponseError::RebalanceInProgress))
}

/// Heartbeat: keeps the member's session; tells it to rejoin while the group rebalances.
/// Returns the error code (0: carry on).
pub fn heartbeat(
    shard: &Shard,
    id: &str,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
) -> i16 {
    let Some(group) = group_of(shard, id) else {
        return ResponseError::UnknownMemberId.code();
    };
    let mut g = group.borrow_mut();
    if fenced(&g, member_id, instance_id) {
        return ResponseError::FencedInstanceId.code();
    }
    let state = g.state;
    let current = g.generation;
    let Some(member) = g.members.iter_mut().find(|m| m.id == member_id) else {
        return ResponseError::UnknownMemberId.code();
    };
    member.last_heartbeat = Instant::now();
    if state == State::PreparingRebalance {
        return ResponseError::RebalanceInProgress.code();
    }
    if generation != current {
        return ResponseError::IllegalGeneration.code();
    }
    0
}

/// LeaveGroup: each leaving member's error (UNKNOWN_MEMBER_ID for one that is not in the group,
/// FENCED_INSTANCE_ID for a static member named under another member id); anyone leaving
/// starts a rebalance. A static member may leave by its instance id alone.
pub fn leave(
    shard: &Shard,
    settings: Settings,
    id: &str,
    leaving: &[(String, Option<String>)],
) -> Vec<i16> {
    let Some(group) = group_of(shard, id) else {
        return leaving
            .iter()
            .map(|_| ResponseError::UnknownMemberId.code())
            .collect();
    };
    let mut answers = Vec::with_capacity(leaving.len());
    let mut left = false;
    {
        let mut g = group.borrow_mut();
        for (member_id, instance_id) in leaving {
            let by_instance = instance_id.as_ref().and_then(|i| {
                g.members
                    .iter()
                    .find(|m| m.instance_id.as_ref() == Some(i))
                    .map(|m| m.id.clone())
            });
            let member_id = match by_instance {
                Some(found) if member_id.is_empty() || *member_id == found => found,
                Some(_) => {
                    answers.push(ResponseError::FencedInstanceId.code());
                    continue;
                }
                None => member_id.clone(),
            };
            let member_id = &member_id;
            let before = g.members.len();
            g.members.retain(|m| m.id != *member_id);
            if g.members.len() < before {
                left = true;
                if let Some(tx) = g.awaiting_join.remove(member_id) {
                    let _ = tx.send(JoinAnswer::error(ResponseError::UnknownMemberId, member_id));
                }
                g.awaiting_sync.remove(member_id);
                answers.push(0);
            } else {
                answers.push(ResponseError::UnknownMemberId.code());
            }
        }
        if left {
            members_left(&mut g, &group, settings);
        }
    }
    if left {
        maybe_complete_join(&group);
    }
    answers
}

/// After members left (or expired): an emptied group becomes Empty (and is stored so),
/// otherwise it rebalances.
fn members_left(g: &mut Group, group: &Rc<RefCell<Group>>, settings: Settings) {
    if g.members.is_empty() {
        g.state = State::Empty;
        g.generation += 1;
        g.leader = None;
        g.protocol = None;
        g.protocol_type = None;
        g.join_round += 1;
        send_syncs_to_rejoin(g);
        store_later(g.shard.clone(), g.id.clone(), encode_group_value(g));
    } else if g.state != State::PreparingRebalance {
        prepare_rebalance(g, group, settings);
    }
}

/// Removes members whose session expired; run periodically on each core.
pub fn expire_sessions(shard: &Shard, settings: Settings) {
    let groups: Vec<Rc<RefCell<Group>>> = shard.groups.borrow().values().cloned().collect();
    let now = Instant::now();
    for group in groups {
        let expired = {
            let mut g = group.borrow_mut();
            let before = g.members.len();
            let waiting: Vec<String> = g
                .awaiting_join
                .keys()
                .chain(g.awaiting_sync.keys())
                .cloned()
                .collect();
            g.members.retain(|m| {
                waiting.contains(&m.id) || now.duration_since(m.last_heartbeat) <= m.session_timeout
            });
            let expired = g.members.len() < before;
            if expired {
                members_left(&mut g, &group, settings);
            }
            expired
        };
        if expired {
            maybe_complete_join(&group);
        }
    }
}

/// One group, described (DescribeGroups).
#[derive(Debug)]
pub struct Described {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

pub fn describe(shard: &Shard, id: &str) -> Option<Described> {
    let group = group_of(shard, id)?;
    let g = group.borrow();
    Some(Described {
        state: g.state.name(),
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        protocol: g.protocol.clone().unwrap_or_default(),
        members: g
            .members
            .iter()
            .map(|m| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == g.protocol.as_ref())
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    metadata,
                    m.assignment.clone(),
                )
            })
            .collect(),
    })
}

/// The groups of this core: (id, protocol type, state) — groups with members, and groups
/// that only commit offsets (Empty, no protocol type), as Kafka lists them.
pub fn list(shard: &Shard) -> Vec<(String, String, &'static str)> {
    let groups = shard.groups.borrow();
    let mut out: Vec<(String, String, &'static str)> = groups
        .values()
        .map(|g| {
            let g = g.borrow();
            (
                g.id.clone(),
                g.protocol_type.clone().unwrap_or_default(),
                g.state.name(),
            )
        })
        .collect();
    let consumer_groups = shard.consumer_groups.borrow();
    for (id, g) in consumer_groups.iter() {
        let state = if g.borrow().members.is_empty() {
            "Empty"
        } else {
            "Stable"
        };
        out.push((id.clone(), "consumer".to_string(), state));
    }
    for id in shard.offsets.borrow().keys() {
        if !groups.contains_key(id) && !consumer_groups.contains_key(id) {
            out.push((id.clone(), String::new(), State::Empty.name()));
        }
    }
    out
}

/// Group settings from the broker configuration.
pub fn settings(broker: &sluice_core::config::BrokerConfig) -> Settings {
    Settings {
        min_session_timeout_ms: broker.group_min_session_timeout_ms,
        max_session_timeout_ms: broker.group_max_session_timeout_ms,
        initial_rebalance_delay_ms: broker.group_initial_rebalance_delay_ms,
    }
}

/// A SyncGroup request.
#[derive(Debug)]
pub struct SyncRequest {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// (member id, assignment) from the leader.
    pub assignments: Vec<(String, Bytes)>,
}

/// A group request for the coordinating core.
#[derive(Debug)]
pub enum GroupCall {
    Join(JoinRequest),
    Sync(SyncRequest),
    Heartbeat {
        group: String,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
    },
    Leave {
        group: String,
        /// (member id, group instance id)
        members: Vec<(String, Option<String>)>,
    },
    Describe {
        group: String,
    },
    List,
    /// DeleteGroups: one group.
    Delete {
        group: String,
    },
    /// OffsetDelete: some committed offsets of one group.
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    /// ConsumerGroupHeartbeat (KIP-848).
    ConsumerHeartbeat(crate::consumer_groups::Heartbeat),
    /// ConsumerGroupDescribe (KIP-848).
    ConsumerDescribe {
        group: String,
    },
}

impl GroupCall {
    /// The group the call is about (List is about every group of the core).
    pub fn group(&self) -> Option<&str> {
        match self {
            GroupCall::Join(r) => Some(&r.group),
            GroupCall::Sync(r) => Some(&r.group),
            GroupCall::Heartbeat { group, .. }
            | GroupCall::Leave { group, .. }
            | GroupCall::Describe { group }
            | GroupCall::Delete { group }
            | GroupCall::DeleteOffsets { group, .. }
            | GroupCall::ConsumerDescribe { group } => Some(group),
            GroupCall::ConsumerHeartbeat(h) => Some(&h.group),
            GroupCall::List => None,
        }
    }
}

#[derive(Debug)]
pub enum GroupReply {
    Join(JoinAnswer),
    Sync(SyncAnswer),
    Heartbeat(i16),
    Leave(Vec<i16>),
    Describe(Option<Described>),
    List(Vec<(String, String, &'static str)>),
    Delete(i16),
    /// Group-level error, then one code per partition asked.
    DeleteOffsets(i16, Vec<i16>),
    ConsumerHeartbeat(crate::consumer_groups::Answer),
    ConsumerDescribe(Option<crate::consumer_groups::Described>),
}

/// Runs a group request on this (the coordinating) core.
pub async fn run(shard: &Rc<Shard>, call: GroupCall) -> GroupReply {
    let settings = settings(&shard.broker);
    match call {
        GroupCall::Join(req) => GroupReply::Join(join(shard, settings, req).await),
        GroupCall::Sync(req) => GroupReply::Sync(sync(shard, req).await),
        GroupCall::Heartbeat {
            group,
            generation,
            member_id,
            instance_id,
        } => GroupReply::Heartbeat(heartbeat(
            shard,
            &group,
            generation,
            &member_id,
            instance_id.as_deref(),
        )),
        GroupCall::Leave { group, members } => {
            GroupReply::Leave(leave(shard, settings, &group, &members))
        }
        GroupCall::Describe { group } => GroupReply::Describe(describe(shard, &group)),
        GroupCall::List => GroupReply::List(list(shard)),
        GroupCall::Delete { group } => GroupReply::Delete(delete_group(shard, &group).await),
        GroupCall::ConsumerDescribe { group } => {
            GroupReply::ConsumerDescribe(crate::consumer_groups::describe(shard, &group))
        }
        GroupCall::ConsumerHeartbeat(req) => {
            let group = req.group.clone();
            let (answer, records) = crate::consumer_groups::heartbeat(shard, req);
            // What the heartbeat changed is durable before it is answered, as in Kafka. Should
            // the write fail, the group goes on in memory; after a restart its members would
            // be fenced and rejoin.
            if let Err(e) = crate::offsets::write_records(shard, &group, records).await {
                eprintln!("sluice: storing consumer group {group}: {e}");
            }
            GroupReply::ConsumerHeartbeat(answer)
        }
        GroupCall::DeleteOffsets { group, partitions } => {
            let (error, codes) = delete_offsets(shard, &group, &partitions).await;
            GroupReply::DeleteOffsets(error, codes)
        }
    }
}

/// DeleteGroups for one group: only a group without members can go (NON_EMPTY_GROUP
/// otherwise); its offsets are tombstoned and it is forgotten.
async fn delete_group(shard: &Rc<Shard>, id: &str) -> i16 {
    if id.is_empty() {
        return ResponseError::InvalidGroupId.code();
    }
    if has_members(shard, id) {
        return ResponseError::NonEmptyGroup.code();
    }
    let known = shard.groups.borrow().contains_key(id) || shard.offsets.borrow().contains_key(id);
    if !known {
        return ResponseError::GroupIdNotFound.code();
    }
    if let Err(e) = crate::offsets::delete(shard, id, None).await {
        eprintln!("sluice: deleting group {id}: {e}");
        return ResponseError::CoordinatorNotAvailable.code();
    }
    if shard.groups.borrow().contains_key(id) {
        if let Err(e) = crate::offsets::write_group_record(shard, id, None).await {
            eprintln!("sluice: deleting group {id}: {e}");
            return ResponseError::CoordinatorNotAvailable.code();
        }
    }
    if !has_members(shard, id) {
        shard.groups.borrow_mut().remove(id);
    }
    0
}

/// The topics the members of a consumer-protocol group subscribe to, read from their
/// subscription metadata (ConsumerProtocolSubscription: version, then the topic names).
fn subscribed_topics(g: &Group) -> Vec<String> {
    if g.protocol_type.as_deref() != Some("consumer") {
        return Vec::new();
    }
    let mut topics = Vec::new();
    for m in &g.members {
        let Some((_, metadata)) = m
            .protocols
            .iter()
            .find(|(n, _)| Some(n) == g.protocol.as_ref())
        else {
            continue;
        };
        let mut b: &[u8] = metadata;
        let read_i16 = |b: &mut &[u8]| -> Option<i16> {
            let (x, rest) = b.split_at_checked(2)?;
            *b = rest;
            Some(i16::from_be_bytes([x[0], x[1]]))
        };
        let _version = read_i16(&mut b);
        let Some((count, rest)) = b.split_at_checked(4) else {
            continue;
        };
        b = rest;
        let count = i32::from_be_bytes([count[0], count[1], count[2], count[3]]).clamp(0, 10_000);
        for _ in 0..count {
            let Some(len) = read_i16(&mut b) else { break };
            let Some((name, rest)) = b.split_at_checked(len.max(0) as usize) else {
                break;
            };
            b = rest;
            topics.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    topics
}

/// OffsetDelete: offsets of topics the group's members subscribe to stay
/// (GROUP_SUBSCRIBED_TO_TOPIC); the others are tombstoned.
async fn delete_offsets(
    shard: &Rc<Shard>,
    id: &str,
    partitions: &[(String, i32)],
) -> (i16, Vec<i16>) {
    let known = shard.groups.borrow().contains_key(id) || shard.offsets.borrow().contains_key(id);
    if !known {
        return (ResponseError::GroupIdNotFound.code(), Vec::new());
    }
    let subscribed = group_of(shard, id)
        .map(|g| subscribed_topics(&g.borrow()))
        .unwrap_or_default();
    let doomed: Vec<(String, i32)> = partitions
        .iter()
        .filter(|(t, _)| !subscribed.contains(t))
        .cloned()
        .collect();
    if let Err(e) = crate::offsets::delete(shard, id, Some(&doomed)).await {
        eprintln!("sluice: deleting offsets of group {id}: {e}");
        return (ResponseError::CoordinatorNotAvailable.code(), Vec::new());
    }
    let codes = partitions
        .iter()
        .map(|(t, _)| {
            if subscribed.contains(t) {
                ResponseError::GroupSubscribedToTopic.code()
            } else {
                0
            }
        })
        .collect();
    (0, codes)
}

/// Expires member sessions on this core twice a second, until the broker stops.
pub async fn session_loop(shard: Rc<Shard>) {
    let settings = settings(&shard.broker);
    while !shard.stopping.get() {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        expire_sessions(&shard, settings);
        // Every group's records are appended before any is waited on (each write appends when
        // first polled): a heartbeat answered meanwhile appends its records after these, in
        // the order the changes happened.
        let expired = crate::consumer_groups::expire_sessions(&shard);
        let writes = expired.into_iter().map(|(group, records)| {
            let shard = &shard;
            async move {
                let written = crate::offsets::write_records(shard, &group, records).await;
                if let Err(e) = written {
                    eprintln!("sluice: storing consumer group {group}: {e}");
                }
            }
        });
        futures::future::join_all(writes).await;
    }
}

/// Sends a group request to the group's coordinating core (creating `__consumer_offsets` if
/// need be); the error is what every answer of the request then carries.
pub async fn route(
    shard: &Rc<Shard>,
    group: &str,
    call: GroupCall,
) -> Result<GroupReply, ResponseError> {
    if !crate::offsets::ensure_topic(shard).await {
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    let core = crate::offsets::coordinator(shard, group)?;
    match shard
        .call(core, crate::router::CoreRequest::Group(call))
        .await
    {
        Some(crate::router::CoreResponse::Group(reply)) => Ok(reply),
        Some(crate::router::CoreResponse::NotCoordinating(code)) => {
            Err(ResponseError::try_from_code(code).unwrap_or(ResponseError::NotCoordinator))
        }
        _ => Err(ResponseError::CoordinatorNotAvailable),
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len().min(i16::MAX as usize) as i16).to_be_bytes());
    b.extend_from_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    b.extend_from_slice(bytes);
}

/// The group's metadata record value: Kafka's `GroupMetadataValue` at version 3 (protocol
/// type, generation, protocol, leader, state timestamp, and per member its id, instance id,
/// client id and host, timeouts, subscription and assignment).
pub fn encode_group_value(g: &Group) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&3i16.to_be_bytes());
    put_str(&mut b, g.protocol_type.as_deref().unwrap_or(""));
    b.extend_from_slice(&g.generation.to_be_bytes());
    put_nullable_str(&mut b, g.protocol.as_deref());
    put_nullable_str(&mut b, g.leader.as_deref());
    b.extend_from_slice(&crate::shard::now_ms().to_be_bytes());
    b.extend_from_slice(&(g.members.len() as i32).to_be_bytes());
    for m in &g.members {
        put_str(&mut b, &m.id);
        put_nullable_str(&mut b, m.instance_id.as_deref());
        put_str(&mut b, &m.client_id);
        put_str(&mut b, &m.client_host);
        b.extend_from_slice(&(m.rebalance_timeout.as_millis() as i32).to_be_bytes());
        b.extend_from_slice(&(m.session_timeout.as_millis() as i32).to_be_bytes());
        let subscription = m
            .protocols
            .iter()
            .find(|(n, _)| Some(n) == g.protocol.as_ref())
            .map(|(_, md)| md.clone())
            .unwrap_or_default();
        put_bytes(&mut b, &subscription);
        put_bytes(&mut b, &m.assignment);
    }
    b
}

/// A stored member: (id, instance id, client id, client host, rebalance timeout ms, session
/// timeout ms, subscription, assignment).
pub type StoredMember = (
    String,
    Option<String>,
    String,
    String,
    i32,
    i32,
    Bytes,
    Bytes,
);

/// What a stored group comes back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// (id, instance id, client id, client host, rebalance timeout ms, session timeout ms,
    /// subscription, assignment)
    pub members: Vec<StoredMember>,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn nullable_str(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        Some(Some(
            String::from_utf8(self.take(len as usize)?.to_vec()).ok()?,
        ))
    }
    fn string(&mut self) -> Option<String> {
        Some(self.nullable_str()?.unwrap_or_default())
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.i32()?;
        Some(Bytes::copy_from_slice(self.take(len.max(0) as usize)?))
    }
}

/// A `GroupMetadataValue` of version 0 to 3; None when damaged or of another version.
pub fn decode_group_value(value: &[u8]) -> Option<StoredGroup> {
    let mut c = Cursor(value);
    let version = c.i16()?;
    if !(0..=3).contains(&version) {
        return None;
    }
    let protocol_type = c.string()?;
    let generation = c.i32()?;
    let protocol = c.nullable_str()?;
    let leader = c.nullable_str()?;
    if version >= 2 {
        c.i64()?;
    }
    let count = c.i32()?.max(0) as usize;
    let mut members = Vec::with_capacity(count.min(value.len() / 16));
    for _ in 0..count {
        let id = c.string()?;
        let instance = if version >= 3 {
            c.nullable_str()?
        } else {
            None
        };
        let client_id = c.string()?;
        let client_host = c.string()?;
        let rebalance_timeout = if version >= 1 { c.i32()? } else { -1 };
        let session_timeout = c.i32()?;
        let subscription = c.bytes()?;
        let assignment = c.bytes()?;
        let rebalance_timeout = if rebalance_timeout < 0 {
            session_timeout
        } else {
            rebalance_timeout
        };
        members.push((
            id,
            instance,
            client_id,
            client_host,
            rebalance_timeout,
            session_timeout,
            subscription,
            assignment,
        ));
    }
    Some(StoredGroup {
        protocol_type,
        generation,
        protocol,
        leader,
        members,
    })
}

/// Forgets groups that are empty and have no committed offsets left (they expired), with a
/// tombstone for their stored metadata, as Kafka's periodic cleanup does.
pub async fn forget_empty(shard: &Rc<Shard>) {
    let doomed: Vec<String> = shard
        .groups
        .borrow()
        .iter()
        .filter(|(id, g)| {
            let g = g.borrow();
            g.members.is_empty()
                && g.state == State::Empty
                && !shard.offsets.borrow().contains_key(*id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in doomed {
        match crate::offsets::write_group_record(shard, &id, None).await {
            Ok(()) if !has_members(shard, &id) => {
                shard.groups.borrow_mut().remove(&id);
            }
            Ok(()) => {}
            Err(e) => eprintln!("sluice: forgetting empty group {id}: {e}"),
        }
    }
}

/// Writes the group's record in the background (from places that cannot wait).
fn store_later(shard: Weak<Shard>, id: String, value: Vec<u8>) {
    glommio::spawn_local(async move {
        if let Some(shard) = shard.upgrade() {
            if let Err(e) = crate::offsets::write_group_record(&shard, &id, Some(value)).await {
                eprintln!("sluice: storing group {id}: {e}");
            }
        }
    })
    .detach();
}

/// Brings back the groups stored in a `__consumer_offsets` partition the core has just opened:
/// a group with members comes back Stable at its generation, its members with fresh session
/// deadlines, so that they carry on heartbeating (those that do not come back expire as usual).
pub fn restore(shard: &Rc<Shard>, records: HashMap<String, Option<Vec<u8>>>) {
    let now = Instant::now();
    for (id, value) in records {
        let Some(stored) = value.as_deref().and_then(decode_group_value) else {
            shard.groups.borrow_mut().remove(&id);
            continue;
        };
        let group = group_or_new(shard, &id);
        let mut g = group.borrow_mut();
        g.generation = stored.generation;
        g.protocol_type = (!stored.protocol_type.is_empty()).then_some(stored.protocol_type);
        g.protocol = stored.protocol.clone();
        g.leader = stored.leader;
        g.members = stored
            .members
            .into_iter()
            .map(
                |(
                    id,
                    instance_id,
                    client_id,
                    client_host,
                    rebalance,
                    session,
                    subscription,
                    assignment,
                )| Member {
                    id,
                    instance_id,
                    client_id,
                    client_host,
                    session_timeout: Duration::from_millis(session.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(rebalance.max(0) as u64),
                    protocols: vec![(stored.protocol.clone().unwrap_or_default(), subscription)],
                    assignment,
                    last_heartbeat: now,
                },
            )
            .collect();
        g.state = if g.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_records_round_trip_and_reject_damage() {
        let stored = StoredGroup {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            members: vec![
                (
                    "m-1".into(),
                    None,
                    "client".into(),
                    "/10.0.0.1".into(),
                    30_000,
                    10_000,
                    Bytes::from_static(b"sub"),
                    Bytes::from_static(b"asg"),
                ),
                (
                    "m-2".into(),
                    Some("static-2".into()),
                    "client".into(),
                    "".into(),
                    30_000,
                    10_000,
                    Bytes::new(),
                    Bytes::from_static(b"x"),
                ),
            ],
        };
        let mut b = Vec::new();
        b.extend_from_slice(&3i16.to_be_bytes());
        put_str(&mut b, "consumer");
        b.extend_from_slice(&7i32.to_be_bytes());
        put_nullable_str(&mut b, Some("range"));
        put_nullable_str(&mut b, Some("m-1"));
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        for (id, instance, client, host, rebalance, session, sub, asg) in &stored.members {
            put_str(&mut b, id);
            put_nullable_str(&mut b, instance.as_deref());
            put_str(&mut b, client);
            put_str(&mut b, host);
            b.extend_from_slice(&rebalance.to_be_bytes());
            b.extend_from_slice(&session.to_be_bytes());
            put_bytes(&mut b, sub);
            put_bytes(&mut b, asg);
        }
        assert_eq!(decode_group_value(&b), Some(stored));
        for cut in 0..b.len() {
            assert_eq!(decode_group_value(&b[..cut]), None, "cut at {cut}");
        }
        let key = crate::offsets::encode_group_key("g");
        assert_eq!(crate::offsets::decode_group_key(&key), Some("g".into()));
        assert_eq!(crate::offsets::decode_key(&key), None, "not an offset key");
    }
}
