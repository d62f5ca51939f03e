//! The new consumer group protocol (KIP-848): ConsumerGroupHeartbeat, with the assignment
//! computed by the broker, on the core that owns the group's `__consumer_offsets` partition.
//!
//! A group has an epoch, bumped whenever its members or their subscriptions change; a target
//! assignment computed for that epoch by the `uniform` assignor (every subscribed partition to
//! one member, balanced, keeping each member's current partitions where it can); and members,
//! each reconciled towards its target one heartbeat at a time, as KIP-848 prescribes: a member
//! that must give partitions up first gets its assignment without them and keeps its epoch until
//! it reports (in `TopicPartitions`) that it let them go; only then does it move to the target
//! epoch, and it receives a partition only once no other member holds it any more.
//!
//! The `range` assignor is used when the members ask for it (`server_assignor`). A member that
//! does not give partitions up within its rebalance timeout is dropped.
//!
//! Every change is written to `__consumer_offsets` in Kafka's record formats
//! (`consumer_group_records`) before the heartbeat is answered, and groups are rebuilt from those
//! records at start: after a restart members carry on at their epochs with their assignments.
//!
//! A member may subscribe by regular expression (v1 `SubscribedTopicRegex`, what the Java
//! client's `subscribe(SubscriptionPattern)` sends): RE2 syntax, matched against whole topic
//! names, internal topics excluded. It is resolved again at every heartbeat of the group, so a
//! topic created later that matches joins the subscription (the group epoch moves).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use crate::consumer_group_records::{self as records, Persisted, Record};
use crate::shard::Shard;

/// A partition as the protocol names it: topic id and index.
pub type Tp = (Uuid, i32);

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub epoch: i32,
    /// The epoch before the last change (-1 for a member that just joined).
    pub previous_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub subscribed: Vec<String>,
    /// The member's regular-expression subscription, if any.
    pub subscribed_regex: Option<String>,
    /// The topics its regex matched at the last resolution (not stored: resolved at start).
    pub regex_topics: BTreeSet<String>,
    /// What the member has been given (it owns these once it has acknowledged them).
    pub assigned: BTreeSet<Tp>,
    /// Partitions it was asked to give up and has not yet reported as gone.
    pub revoking: BTreeSet<Tp>,
    /// The assignment last sent, so that an unchanged one is not sent again.
    last_sent: Option<BTreeSet<Tp>>,
    last_heartbeat: Instant,
    session_timeout: Duration,
    /// How long the member may take to revoke partitions before it is dropped.
    pub rebalance_timeout: Duration,
    /// Since when it has had partitions to revoke.
    revoking_since: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Group {
    /// `uniform` (the default) or `range`, as the members ask (`server_assignor`).
    pub assignor: Option<String>,
    pub epoch: i32,
    pub target_epoch: i32,
    pub target: HashMap<String, BTreeSet<Tp>>,
    pub members: BTreeMap<String, Member>,
    /// The shard table's revision when the members' regexes were last resolved (None: a regex
    /// changed since), and the regexes compiled.
    pub resolved_at: Option<u64>,
    pub compiled: HashMap<String, Option<regex::Regex>>,
}

pub type Groups = HashMap<String, Rc<RefCell<Group>>>;

impl Member {
    /// Whether the member subscribes to `topic`, by name or by regex.
    pub fn subscribes(&self, topic: &str) -> bool {
        self.subscribed.iter().any(|t| t == topic) || self.regex_topics.contains(topic)
    }
}

/// A subscription regex as Kafka applies it (RE2 syntax, the whole topic name must match).
pub fn compile_regex(regex: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{regex})$"))
        .size_limit(1 << 20)
        .build()
}

/// Resolves the members' regexes against the topics that exist now; true if any member's
/// topics changed (the group epoch must then move).
pub fn resolve_regexes(shard: &Shard, g: &mut Group) -> bool {
    let regexes: BTreeSet<String> = g
        .members
        .values()
        .filter_map(|m| m.subscribed_regex.clone())
        .collect();
    if regexes.is_empty() && g.members.values().all(|m| m.regex_topics.is_empty()) {
        return false;
    }
    // Topics only change with the shard table's revision: resolve again only then, or when a
    // member's regex changed (which clears `resolved_at`).
    let revision = shard.table.borrow().revision();
    if g.resolved_at == Some(revision) {
        return false;
    }
    g.resolved_at = Some(revision);
    g.compiled.retain(|re, _| regexes.contains(re));
    for re in regexes {
        g.compiled
            .entry(re)
            .or_insert_with_key(|re| compile_regex(re).ok());
    }
    let names: Vec<String> = shard
        .topics
        .borrow()
        .keys()
        .filter(|t| !t.starts_with("__"))
        .cloned()
        .collect();
    let mut changed = false;
    let compiled = &g.compiled;
    for m in g.members.values_mut() {
        let regex = m
            .subscribed_regex
            .as_ref()
            .and_then(|re| compiled.get(re)?.as_ref());
        let matched: BTreeSet<String> = match regex {
            Some(re) => names.iter().filter(|t| re.is_match(t)).cloned().collect(),
            None => BTreeSet::new(),
        };
        if matched != m.regex_topics {
            m.regex_topics = matched;
            changed = true;
        }
    }
    changed
}

#[derive(Debug)]
pub struct Heartbeat {
    pub group: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub subscribed: Option<Vec<String>>,
    /// None: unchanged; an empty string: no regex any more.
    pub subscribed_regex: Option<String>,
    pub owned: Option<BTreeSet<Tp>>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

#[derive(Debug)]
pub struct Answer {
    pub error: i16,
    pub message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed (always after a join).
    pub assignment: Option<BTreeSet<Tp>>,
}

fn error(e: ResponseError, message: &str, member_id: &str) -> Answer {
    Answer {
        error: e.code(),
        message: Some(message.to_string()),
        member_id: member_id.to_string(),
        member_epoch: -1,
        heartbeat_interval_ms: 0,
        assignment: None,
    }
}

/// Every partition of the topics any member subscribes to, by topic id (topics that do not
/// exist are skipped, as Kafka does until they appear).
fn subscribed_partitions(
    shard: &Shard,
    members: &BTreeMap<String, Member>,
) -> BTreeMap<String, Vec<Tp>> {
    let topics = shard.topics.borrow();
    let mut out = BTreeMap::new();
    for m in members.values() {
        for t in m.subscribed.iter().chain(m.regex_topics.iter()) {
            if out.contains_key(t) {
                continue;
            }
            if let Some(meta) = topics.get(t) {
                let id = Uuid::from_bytes(meta.id);
                out.insert(t.clone(), (0..meta.partitions).map(|p| (id, p)).collect());
            }
        }
    }
    out
}

/// An empty assignment for every member.
fn empty_target(members: &BTreeMap<String, Member>) -> HashMap<String, BTreeSet<Tp>> {
    members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect()
}

/// The `range` assignor: per topic, the members subscribed to it (by member id) each take a
/// contiguous range of its partitions, the first ones one more when they do not divide evenly.
fn assign_range(
    members: &BTreeMap<String, Member>,
    partitions: &BTreeMap<String, Vec<Tp>>,
) -> HashMap<String, BTreeSet<Tp>> {
    let mut target = empty_target(members);
    for (topic, tps) in partitions {
        let eligible: Vec<&String> = members
            .values()
            .filter(|m| m.subscribes(topic))
            .map(|m| &m.id)
            .collect();
        if eligible.is_empty() {
            continue;
        }
        let (each, extra) = (tps.len() / eligible.len(), tps.len() % eligible.len());
        let mut next = 0;
        for (i, id) in eligible.iter().enumerate() {
            let n = each + usize::from(i < extra);
            target
                .get_mut(*id)
                .expect("every member")
                .extend(tps[next..next + n].iter().copied());
            next += n;
        }
    }
    target
}

/// The `uniform` assignor: each partition to one of the members subscribed to its topic,
/// balanced, a member keeping what it already has up to its fair share.
fn assign(
    members: &BTreeMap<String, Member>,
    partitions: &BTreeMap<String, Vec<Tp>>,
) -> HashMap<String, BTreeSet<Tp>> {
    let mut target = empty_target(members);
    for (topic, tps) in partitions {
        let eligible: Vec<&Member> = members.values().filter(|m| m.subscribes(topic)).collect();
        if eligible.is_empty() {
            continue;
        }
        let quota = tps.len().div_ceil(eligible.len());
        let mut free: Vec<Tp> = Vec::new();
        for tp in tps {
            let keeper = eligible.iter().find(|m| {
                m.assigned.contains(tp)
                    && target[&m.id].iter().filter(|x| x.0 == tp.0).count() < quota
            });
            match keeper {
                Some(m) => {
                    target.get_mut(&m.id).expect("every member").insert(*tp);
                }
                None => free.push(*tp),
            }
        }
        for tp in free {
            let least = eligible
                .iter()
                .min_by_key(|m| {
                    (
                        target[&m.id].iter().filter(|x| x.0 == tp.0).count(),
                        m.id.clone(),
                    )
                })
                .expect("eligible is not empty");
            target.get_mut(&least.id).expect("every member").insert(tp);
        }
    }
    target
}

fn bump(g: &mut Group) {
    g.epoch += 1;
}

/// One heartbeat, on the coordinating core: the answer, and the records that store what it
/// changed (to be durable before the answer is sent).
pub fn heartbeat(shard: &Rc<Shard>, req: Heartbeat) -> (Answer, Vec<Record>) {
    let group = req.group.clone();
    let before = persisted(shard, &group);
    let answer = heartbeat_inner(shard, req);
    let after = persisted(shard, &group);
    (answer, records::changes(&group, &before, &after))
}

/// The records' view of a group (empty for a group not known).
fn persisted(shard: &Shard, group: &str) -> Persisted {
    shard
        .consumer_groups
        .borrow()
        .get(group)
        .map(|g| records::snapshot(&g.borrow()))
        .unwrap_or_default()
}

fn heartbeat_inner(shard: &Rc<Shard>, req: Heartbeat) -> Answer {
    if req.group.is_empty() {
        return error(
            ResponseError::InvalidRequest,
            "the group id is empty",
            &req.member_id,
        );
    }
    if let Some(assignor) = &req.server_assignor {
        if !["uniform", "range"].contains(&assignor.as_str()) {
            return error(
                ResponseError::UnsupportedAssignor,
                "assignors: uniform, range",
                &req.member_id,
            );
        }
    }
    if crate::groups::has_members(shard, &req.group) {
        return error(
            ResponseError::GroupIdNotFound,
            "the group is a classic group with members",
            &req.member_id,
        );
    }
    let interval = shard.broker.group_consumer_heartbeat_interval_ms;
    let session = Duration::from_millis(shard.broker.group_consumer_session_timeout_ms as u64);
    let group = shard
        .consumer_groups
        .borrow_mut()
        .entry(req.group.clone())
        .or_default()
        .clone();
    let mut g = group.borrow_mut();
    let now = Instant::now();
    let member_id = match req.member_epoch {
        -1 | -2 => {
            if g.members.remove(&req.member_id).is_some() {
                g.target.remove(&req.member_id);
                bump(&mut g);
            }
            return Answer {
                error: 0,
                message: None,
                member_id: req.member_id,
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                assignment: None,
            };
        }
        0 => {
            let regex = req.subscribed_regex.clone().filter(|r| !r.is_empty());
            if req.subscribed.is_none() && regex.is_none() {
                return error(
                    ResponseError::InvalidRequest,
                    "a joining member must subscribe",
                    &req.member_id,
                );
            }
            let subscribed = req.subscribed.clone().unwrap_or_default();
            let id = if req.member_id.is_empty() {
                Uuid::new_v4().to_string()
            } else {
                req.member_id.clone()
            };
            g.members.insert(
                id.clone(),
                Member {
                    id: id.clone(),
                    epoch: 0,
                    previous_epoch: -1,
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    subscribed,
                    subscribed_regex: regex,
                    regex_topics: BTreeSet::new(),
                    assigned: BTreeSet::new(),
                    revoking: BTreeSet::new(),
                    last_sent: None,
                    last_heartbeat: now,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                    revoking_since: None,
                },
            );
            if let Some(assignor) = &req.server_assignor {
                g.assignor = Some(assignor.clone());
            }
            g.resolved_at = None;
            bump(&mut g);
            id
        }
        epoch => {
            let Some(m) = g.members.get_mut(&req.member_id) else {
                return error(
                    ResponseError::UnknownMemberId,
                    "unknown member",
                    &req.member_id,
                );
            };
            if epoch != m.epoch {
                return error(
                    ResponseError::FencedMemberEpoch,
                    "the member epoch is not current",
                    &req.member_id,
                );
            }
            m.last_heartbeat = now;
            let mut changed = false;
            if let Some(subscribed) = req.subscribed.clone() {
                if subscribed != m.subscribed {
                    m.subscribed = subscribed;
                    changed = true;
                }
            }
            if let Some(regex) = &req.subscribed_regex {
                let regex = (!regex.is_empty()).then(|| regex.clone());
                if regex != m.subscribed_regex {
                    m.subscribed_regex = regex;
                    changed = true;
                }
            }
            if let Some(owned) = &req.owned {
                m.revoking.retain(|tp| owned.contains(tp));
            }
            if changed {
                g.resolved_at = None;
                bump(&mut g);
            }
            req.member_id.clone()
        }
    };
    if resolve_regexes(shard, &mut g) {
        bump(&mut g);
    }
    if g.epoch > g.target_epoch {
        let partitions = subscribed_partitions(shard, &g.members);
        g.target = match g.assignor.as_deref() {
            Some("range") => assign_range(&g.members, &partitions),
            _ => assign(&g.members, &partitions),
        };
        g.target_epoch = g.epoch;
    }
    reconcile(&mut g, &member_id, interval)
}

/// Moves one member towards its target: first give up what is no longer its own, then take
/// what is free.
fn reconcile(g: &mut Group, member_id: &str, interval: i32) -> Answer {
    let target = g.target.get(member_id).cloned().unwrap_or_default();
    let held_by_others: BTreeSet<Tp> = g
        .members
        .values()
        .filter(|m| m.id != member_id)
        .flat_map(|m| m.assigned.iter().chain(m.revoking.iter()).copied())
        .collect();
    let target_epoch = g.target_epoch;
    let m = g
        .members
        .get_mut(member_id)
        .expect("the member was just found or added");
    let revoke: BTreeSet<Tp> = m.assigned.difference(&target).copied().collect();
    if !revoke.is_empty() {
        m.assigned.retain(|tp| target.contains(tp));
        m.revoking.extend(revoke);
    }
    if m.revoking.is_empty() {
        m.revoking_since = None;
    } else {
        m.revoking_since.get_or_insert_with(Instant::now);
    }
    if m.revoking.is_empty() {
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
        }
        m.epoch = target_epoch;
        for tp in &target {
            if !held_by_others.contains(tp) {
                m.assigned.insert(*tp);
            }
        }
    }
    let assignment = (m.last_sent.as_ref() != Some(&m.assigned)).then(|| m.assigned.clone());
    if assignment.is_some() {
        m.last_sent = Some(m.assigned.clone());
    }
    Answer {
        error: 0,
        message: None,
        member_id: member_id.to_string(),
        member_epoch: m.epoch,
        heartbeat_interval_ms: interval,
        assignment,
    }
}

/// One KIP-848 group, described (ConsumerGroupDescribe).
#[derive(Debug)]
pub struct Described {
    pub state: &'static str,
    pub epoch: i32,
    pub target_epoch: i32,
    pub assignor: String,
    pub members: Vec<DescribedMember>,
}

/// Partitions grouped by topic: (topic id, partitions, topic name).
pub type ByTopic = Vec<(Uuid, Vec<i32>, String)>;

#[derive(Debug)]
pub struct DescribedMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub epoch: i32,
    pub client_id: String,
    pub subscribed: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub assigned: ByTopic,
    pub target: ByTopic,
}

fn by_topic(shard: &Shard, set: &BTreeSet<Tp>) -> ByTopic {
    let names: HashMap<Uuid, String> = shard
        .topics
        .borrow()
        .values()
        .map(|m| (Uuid::from_bytes(m.id), m.name.clone()))
        .collect();
    let mut out: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    for (t, p) in set {
        out.entry(*t).or_default().push(*p);
    }
    out.into_iter()
        .map(|(t, ps)| (t, ps, names.get(&t).cloned().unwrap_or_default()))
        .collect()
}

/// A KIP-848 group as ConsumerGroupDescribe reports it; None for any other group.
pub fn describe(shard: &Shard, group: &str) -> Option<Described> {
    let groups = shard.consumer_groups.borrow();
    let g = groups.get(group)?.borrow();
    let reconciling = g
        .members
        .values()
        .any(|m| m.epoch != g.target_epoch || !m.revoking.is_empty());
    Some(Described {
        state: match (g.members.is_empty(), reconciling) {
            (true, _) => "Empty",
            (false, true) => "Reconciling",
            (false, false) => "Stable",
        },
        epoch: g.epoch,
        target_epoch: g.target_epoch,
        assignor: g.assignor.clone().unwrap_or_else(|| "uniform".into()),
        members: g
            .members
            .values()
            .map(|m| DescribedMember {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                epoch: m.epoch,
                client_id: m.client_id.clone(),
                subscribed: m.subscribed.clone(),
                subscribed_regex: m.subscribed_regex.clone(),
                assigned: by_topic(shard, &m.assigned),
                target: by_topic(shard, g.target.get(&m.id).unwrap_or(&BTreeSet::new())),
            })
            .collect(),
    })
}

/// Checks an OffsetCommit from a member of a consumer group (its member epoch in the
/// generation field); None if it may commit, or if the group is not a consumer group.
pub fn validate_commit(
    shard: &Shard,
    group: &str,
    member_id: &str,
    epoch: i32,
) -> Option<Option<ResponseError>> {
    let groups = shard.consumer_groups.borrow();
    let g = groups.get(group)?.borrow();
    if g.members.is_empty() {
        return None;
    }
    Some(match g.members.get(member_id) {
        None => Some(ResponseError::UnknownMemberId),
        Some(m) if epoch != m.epoch => Some(ResponseError::StaleMemberEpoch),
        Some(_) => None,
    })
}

/// Drops members whose session expired, and members that did not give up partitions within
/// their rebalance timeout (so the partitions can move on); run periodically on each core.
/// Returns the records that store the changes, per group.
pub fn expire_sessions(shard: &Shard) -> Vec<(String, Vec<Record>)> {
    let now = Instant::now();
    let mut out = Vec::new();
    for (id, group) in shard.consumer_groups.borrow().iter() {
        let mut g = group.borrow_mut();
        let before = g.members.len();
        let stored = records::snapshot(&g);
        g.members.retain(|_, m| {
            now.duration_since(m.last_heartbeat) <= m.session_timeout
                && m.revoking_since
                    .is_none_or(|since| now.duration_since(since) <= m.rebalance_timeout)
        });
        if g.members.len() < before {
            let members: BTreeSet<String> = g.members.keys().cloned().collect();
            g.target.retain(|id, _| members.contains(id));
            bump(&mut g);
            out.push((
                id.clone(),
                records::changes(id, &stored, &records::snapshot(&g)),
            ));
        }
    }
    out
}

/// Brings back the KIP-848 groups stored in a `__consumer_offsets` partition the core has just
/// opened: members at their epochs, with their assignments and targets and fresh session
/// deadlines, so that they carry on heartbeating (those that do not come back expire as usual).
pub fn restore(shard: &Shard, loaded: HashMap<String, Persisted>) {
    let now = Instant::now();
    let session = Duration::from_millis(shard.broker.group_consumer_session_timeout_ms as u64);
    let mut groups = shard.consumer_groups.borrow_mut();
    for (id, p) in loaded {
        let Some(epoch) = p.epoch else {
            groups.remove(&id);
            continue;
        };
        let mut g = Group {
            assignor: p.metadata.values().find_map(|m| m.server_assignor.clone()),
            epoch,
            target_epoch: p.target_epoch.unwrap_or(0),
            target: p.target.clone().into_iter().collect(),
            members: BTreeMap::new(),
            ..Group::default()
        };
        for (member_id, meta) in p.metadata {
            let current = p.current.get(&member_id).cloned().unwrap_or_default();
            g.members.insert(
                member_id.clone(),
                Member {
                    id: member_id,
                    epoch: current.epoch,
                    previous_epoch: current.previous_epoch,
                    instance_id: meta.instance_id,
                    client_id: meta.client_id,
                    subscribed: meta.subscribed,
                    subscribed_regex: meta.subscribed_regex,
                    regex_topics: BTreeSet::new(),
                    assigned: current.assigned,
                    revoking_since: (!current.revoking.is_empty()).then_some(now),
                    revoking: current.revoking,
                    last_sent: None,
                    last_heartbeat: now,
                    session_timeout: session,
                    rebalance_timeout: Duration::from_millis(
                        meta.rebalance_timeout_ms.max(0) as u64
                    ),
                },
            );
        }
        // What the regexes matched when the group was stored is what they match now, unless
        // topics changed meanwhile (then the next heartbeat moves the epoch, as it would have).
        resolve_regexes(shard, &mut g);
        groups.insert(id, Rc::new(RefCell::new(g)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str], assigned: &[Tp]) -> Member {
        Member {
            id: id.into(),
            epoch: 1,
            previous_epoch: 0,
            instance_id: None,
            client_id: String::new(),
            subscribed: topics.iter().map(|t| t.to_string()).collect(),
            subscribed_regex: None,
            regex_topics: BTreeSet::new(),
            assigned: assigned.iter().copied().collect(),
            revoking: BTreeSet::new(),
            last_sent: None,
            last_heartbeat: Instant::now(),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(45),
            revoking_since: None,
        }
    }

    #[test]
    fn the_range_assignor_gives_contiguous_ranges() {
        let t = Uuid::from_bytes([3; 16]);
        let parts: BTreeMap<String, Vec<Tp>> =
            [("t".to_string(), (0..5).map(|p| (t, p)).collect())].into();
        let mut members = BTreeMap::new();
        members.insert("a".to_string(), member("a", &["t"], &[]));
        members.insert("b".to_string(), member("b", &["t"], &[]));
        let target = assign_range(&members, &parts);
        assert_eq!(target["a"], [(t, 0), (t, 1), (t, 2)].into());
        assert_eq!(target["b"], [(t, 3), (t, 4)].into());
    }

    #[test]
    fn the_uniform_assignor_balances_and_keeps_what_it_can() {
        let t = Uuid::from_bytes([1; 16]);
        let parts: BTreeMap<String, Vec<Tp>> =
            [("t".to_string(), (0..6).map(|p| (t, p)).collect())].into();
        let mut members = BTreeMap::new();
        members.insert(
            "a".to_string(),
            member("a", &["t"], &[(t, 0), (t, 1), (t, 2), (t, 3)]),
        );
        members.insert("b".to_string(), member("b", &["t"], &[(t, 4), (t, 5)]));
        members.insert("c".to_string(), member("c", &["t"], &[]));
        let target = assign(&members, &parts);
        let all: BTreeSet<Tp> = target.values().flatten().copied().collect();
        assert_eq!(all.len(), 6, "every partition assigned once");
        assert!(target.values().all(|s| s.len() == 2), "{target:?}");
        assert!(
            target["b"].contains(&(t, 4)) && target["b"].contains(&(t, 5)),
            "b keeps its own"
        );
        assert_eq!(target["a"].len(), 2);
        assert!(
            target["a"].iter().all(|tp| tp.1 < 4),
            "a keeps two of its own"
        );
    }

    #[test]
    fn partitions_move_only_after_they_are_revoked() {
        let t = Uuid::from_bytes([2; 16]);
        let mut g = Group::default();
        g.members
            .insert("a".into(), member("a", &["t"], &[(t, 0), (t, 1)]));
        g.members.insert("b".into(), member("b", &["t"], &[]));
        g.epoch = 2;
        g.target_epoch = 2;
        g.target.insert("a".into(), [(t, 0)].into());
        g.target.insert("b".into(), [(t, 1)].into());
        // b cannot have partition 1 while a still holds it.
        let b = reconcile(&mut g, "b", 500);
        assert_eq!(b.member_epoch, 2);
        assert_eq!(b.assignment, Some(BTreeSet::new()));
        // a is told to give it up and stays at its epoch until it reports it gone.
        let a = reconcile(&mut g, "a", 500);
        assert_eq!((a.member_epoch, a.assignment), (1, Some([(t, 0)].into())));
        assert_eq!(
            reconcile(&mut g, "b", 500).assignment,
            None,
            "still revoking: nothing new"
        );
        g.members.get_mut("a").expect("a").revoking.clear();
        let a = reconcile(&mut g, "a", 500);
        assert_eq!(a.member_epoch, 2);
        let b = reconcile(&mut g, "b", 500);
        assert_eq!(b.assignment, Some([(t, 1)].into()));
    }
}
