//! KIP-848 consumer groups in `__consumer_offsets`, in Kafka's own record formats, so that a
//! group survives a restart of the broker (its members carry on heartbeating at their epochs)
//! and Kafka's tools can read the topic.
//!
//! Record types (the key's leading int16), values at version 0 in Kafka's flexible encoding
//! (compact strings and arrays, a tagged-field section after every struct):
//! * 3 `ConsumerGroupMetadata` (group) → the group epoch;
//! * 5 `ConsumerGroupMemberMetadata` (group, member) → instance id, rack, client id and host,
//!   subscribed topics, regex, rebalance timeout, server assignor;
//! * 6 `ConsumerGroupTargetAssignmentMetadata` (group) → the target assignment's epoch;
//! * 7 `ConsumerGroupTargetAssignmentMember` (group, member) → the member's target partitions;
//! * 8 `ConsumerGroupCurrentMemberAssignment` (group, member) → the member's epoch, previous
//!   epoch, state, assigned partitions and partitions pending revocation.
//!
//! The coordinator compares a group before and after each change and writes the records that
//! differ, in Kafka's order (a leaving member's 8, 7 and 5 tombstones first). At load the
//! records are replayed in log order, the latest per key winning; a tombstone removes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::{Buf, BufMut};
use uuid::Uuid;

use crate::consumer_groups::{Group, Tp};

const GROUP_METADATA: i16 = 3;
const MEMBER_METADATA: i16 = 5;
const TARGET_METADATA: i16 = 6;
const TARGET_MEMBER: i16 = 7;
const CURRENT_MEMBER: i16 = 8;

/// What the member metadata record (type 5) holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMetadata {
    pub instance_id: Option<String>,
    pub client_id: String,
    pub subscribed: Vec<String>,
    pub subscribed_regex: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub server_assignor: Option<String>,
}

/// What the current assignment record (type 8) holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentAssignment {
    pub epoch: i32,
    pub previous_epoch: i32,
    /// Kafka's member state: 0 stable, 1 unrevoked partitions, 2 unreleased partitions.
    pub state: i8,
    pub assigned: BTreeSet<Tp>,
    pub revoking: BTreeSet<Tp>,
}

/// A group as its records describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Persisted {
    pub epoch: Option<i32>,
    pub target_epoch: Option<i32>,
    pub metadata: BTreeMap<String, MemberMetadata>,
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    pub current: BTreeMap<String, CurrentAssignment>,
}

/// The records' view of a group in memory.
pub fn snapshot(g: &Group) -> Persisted {
    let mut p = Persisted {
        epoch: Some(g.epoch),
        target_epoch: Some(g.target_epoch),
        ..Persisted::default()
    };
    for (id, m) in &g.members {
        p.metadata.insert(
            id.clone(),
            MemberMetadata {
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                subscribed: m.subscribed.clone(),
                subscribed_regex: m.subscribed_regex.clone(),
                rebalance_timeout_ms: m.rebalance_timeout.as_millis().min(i32::MAX as u128) as i32,
                server_assignor: g.assignor.clone(),
            },
        );
        let target = g.target.get(id).cloned().unwrap_or_default();
        let state = if !m.revoking.is_empty() {
            1
        } else if m.assigned != target && m.epoch == g.target_epoch {
            2
        } else {
            0
        };
        p.current.insert(
            id.clone(),
            CurrentAssignment {
                epoch: m.epoch,
                previous_epoch: m.previous_epoch,
                state,
                assigned: m.assigned.clone(),
                revoking: m.revoking.clone(),
            },
        );
        p.target.insert(id.clone(), target);
    }
    p
}

/// A key and its value (None: a tombstone), ready to append.
pub type Record = (Vec<u8>, Option<Vec<u8>>);

/// The records that turn `before` into `after`, in Kafka's order: leaving members' tombstones
/// (current assignment, target, metadata), member metadata, the group epoch, target
/// assignments and their epoch, current assignments.
pub fn changes(group: &str, before: &Persisted, after: &Persisted) -> Vec<Record> {
    let mut out = Vec::new();
    for id in before
        .metadata
        .keys()
        .filter(|id| !after.metadata.contains_key(*id))
    {
        for kind in [CURRENT_MEMBER, TARGET_MEMBER, MEMBER_METADATA] {
            out.push((member_key(kind, group, id), None));
        }
    }
    for (id, m) in &after.metadata {
        if before.metadata.get(id) != Some(m) {
            out.push((
                member_key(MEMBER_METADATA, group, id),
                Some(encode_metadata(m)),
            ));
        }
    }
    if let Some(epoch) = after.epoch.filter(|e| before.epoch != Some(*e)) {
        out.push((group_key(GROUP_METADATA, group), Some(encode_epoch(epoch))));
    }
    for (id, target) in &after.target {
        if before.target.get(id) != Some(target) {
            out.push((
                member_key(TARGET_MEMBER, group, id),
                Some(encode_target(target)),
            ));
        }
    }
    if let Some(epoch) = after
        .target_epoch
        .filter(|e| before.target_epoch != Some(*e))
    {
        out.push((group_key(TARGET_METADATA, group), Some(encode_epoch(epoch))));
    }
    for (id, current) in &after.current {
        if before.current.get(id) != Some(current) {
            out.push((
                member_key(CURRENT_MEMBER, group, id),
                Some(encode_current(current)),
            ));
        }
    }
    out
}

/// Applies one `__consumer_offsets` record to the groups being loaded; false if it is not one
/// of the record types here. A record that does not decode is skipped, like Kafka's loader
/// skips what it cannot read.
pub fn replay(groups: &mut HashMap<String, Persisted>, key: &[u8], value: Option<&[u8]>) -> bool {
    let mut k = key;
    if k.len() < 2 {
        return false;
    }
    let kind = k.get_i16();
    if ![
        GROUP_METADATA,
        MEMBER_METADATA,
        TARGET_METADATA,
        TARGET_MEMBER,
        CURRENT_MEMBER,
    ]
    .contains(&kind)
    {
        return false;
    }
    let Some(group) = get_key_string(&mut k) else {
        return true;
    };
    let member = if [MEMBER_METADATA, TARGET_MEMBER, CURRENT_MEMBER].contains(&kind) {
        match get_key_string(&mut k) {
            Some(m) => Some(m),
            None => return true,
        }
    } else {
        None
    };
    let p = groups.entry(group).or_default();
    let body = value.and_then(versioned_body);
    match (kind, member, value.is_some()) {
        (GROUP_METADATA, _, false) => p.epoch = None,
        (TARGET_METADATA, _, false) => p.target_epoch = None,
        (GROUP_METADATA, _, true) => p.epoch = body.and_then(|mut b| get_i32(&mut b)).or(p.epoch),
        (TARGET_METADATA, _, true) => {
            p.target_epoch = body.and_then(|mut b| get_i32(&mut b)).or(p.target_epoch)
        }
        (MEMBER_METADATA, Some(id), false) => _ = p.metadata.remove(&id),
        (TARGET_MEMBER, Some(id), false) => _ = p.target.remove(&id),
        (CURRENT_MEMBER, Some(id), false) => _ = p.current.remove(&id),
        (MEMBER_METADATA, Some(id), true) => {
            if let Some(m) = body.and_then(decode_metadata) {
                p.metadata.insert(id, m);
            }
        }
        (TARGET_MEMBER, Some(id), true) => {
            if let Some(t) = body.and_then(|mut b| get_partitions(&mut b)) {
                p.target.insert(id, t);
            }
        }
        (CURRENT_MEMBER, Some(id), true) => {
            if let Some(c) = body.and_then(decode_current) {
                p.current.insert(id, c);
            }
        }
        _ => {}
    }
    true
}

fn group_key(kind: i16, group: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(kind);
    put_key_string(&mut b, group);
    b
}

fn member_key(kind: i16, group: &str, member: &str) -> Vec<u8> {
    let mut b = group_key(kind, group);
    put_key_string(&mut b, member);
    b
}

/// Keys are not flexible: int16 length, then UTF-8.
fn put_key_string(b: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    b.put_i16(len as i16);
    b.put_slice(&s.as_bytes()[..len]);
}

fn get_key_string(b: &mut &[u8]) -> Option<String> {
    if b.len() < 2 {
        return None;
    }
    let len = usize::try_from(b.get_i16()).ok()?;
    let (s, rest) = b.split_at_checked(len)?;
    *b = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// A value's body at version 0 (the only version Kafka writes for these types).
fn versioned_body(value: &[u8]) -> Option<&[u8]> {
    let (version, body) = value.split_first_chunk::<2>()?;
    (i16::from_be_bytes(*version) == 0).then_some(body)
}

fn encode_epoch(epoch: i32) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.put_i32(epoch);
    b.put_u8(0); // no tagged fields
    b
}

fn encode_metadata(m: &MemberMetadata) -> Vec<u8> {
    let mut b = vec![0, 0];
    put_nullable(&mut b, m.instance_id.as_deref());
    put_nullable(&mut b, None); // rack
    put_compact(&mut b, &m.client_id);
    put_compact(&mut b, ""); // client host
    put_uvarint(&mut b, m.subscribed.len() as u64 + 1);
    for t in &m.subscribed {
        put_compact(&mut b, t);
    }
    put_nullable(&mut b, m.subscribed_regex.as_deref());
    b.put_i32(m.rebalance_timeout_ms);
    put_nullable(&mut b, m.server_assignor.as_deref());
    b.put_u8(0);
    b
}

fn decode_metadata(mut b: &[u8]) -> Option<MemberMetadata> {
    let instance_id = get_nullable(&mut b)?;
    get_nullable(&mut b)?; // rack
    let client_id = get_nullable(&mut b)??;
    get_nullable(&mut b)?; // client host
    let n = get_uvarint(&mut b)?.checked_sub(1)?;
    let mut subscribed = Vec::new();
    for _ in 0..n {
        subscribed.push(get_nullable(&mut b)??);
    }
    let subscribed_regex = get_nullable(&mut b)?;
    let rebalance_timeout_ms = get_i32(&mut b)?;
    let server_assignor = get_nullable(&mut b)?;
    Some(MemberMetadata {
        instance_id,
        client_id,
        subscribed,
        subscribed_regex,
        rebalance_timeout_ms,
        server_assignor,
    })
}

fn encode_target(target: &BTreeSet<Tp>) -> Vec<u8> {
    let mut b = vec![0, 0];
    put_partitions(&mut b, target);
    b.put_u8(0);
    b
}

fn encode_current(c: &CurrentAssignment) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.put_i32(c.epoch);
    b.put_i32(c.previous_epoch);
    b.put_i8(c.state);
    put_partitions(&mut b, &c.assigned);
    put_partitions(&mut b, &c.revoking);
    b.put_u8(0);
    b
}

fn decode_current(mut b: &[u8]) -> Option<CurrentAssignment> {
    let epoch = get_i32(&mut b)?;
    let previous_epoch = get_i32(&mut b)?;
    let state = *b.first()? as i8;
    b = &b[1..];
    let assigned = get_partitions(&mut b)?;
    let revoking = get_partitions(&mut b)?;
    Some(CurrentAssignment {
        epoch,
        previous_epoch,
        state,
        assigned,
        revoking,
    })
}

/// `[]TopicPartitions`: per topic its id (16 bytes), its partitions, no tagged fields.
fn put_partitions(b: &mut Vec<u8>, set: &BTreeSet<Tp>) {
    let mut by_topic: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in set {
        by_topic.entry(*topic).or_default().push(*partition);
    }
    put_uvarint(b, by_topic.len() as u64 + 1);
    for (topic, partitions) in by_topic {
        b.put_slice(topic.as_bytes());
        put_uvarint(b, partitions.len() as u64 + 1);
        for p in partitions {
            b.put_i32(p);
        }
        b.put_u8(0);
    }
}

fn get_partitions(b: &mut &[u8]) -> Option<BTreeSet<Tp>> {
    let topics = get_uvarint(b)?.checked_sub(1)?;
    let mut out = BTreeSet::new();
    for _ in 0..topics {
        let (id, rest) = b.split_first_chunk::<16>()?;
        let topic = Uuid::from_bytes(*id);
        *b = rest;
        let n = get_uvarint(b)?.checked_sub(1)?;
        for _ in 0..n {
            out.insert((topic, get_i32(b)?));
        }
        skip_tagged(b)?;
    }
    Some(out)
}

fn put_uvarint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn get_uvarint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn get_i32(b: &mut &[u8]) -> Option<i32> {
    let (v, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(i32::from_be_bytes(*v))
}

fn put_compact(b: &mut Vec<u8>, s: &str) {
    put_uvarint(b, s.len() as u64 + 1);
    b.put_slice(s.as_bytes());
}

fn put_nullable(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_uvarint(b, 0),
        Some(s) => put_compact(b, s),
    }
}

/// A compact nullable string: Some(None) for null.
fn get_nullable(b: &mut &[u8]) -> Option<Option<String>> {
    let len = get_uvarint(b)?;
    if len == 0 {
        return Some(None);
    }
    let (s, rest) = b.split_at_checked(usize::try_from(len - 1).ok()?)?;
    *b = rest;
    Some(Some(String::from_utf8(s.to_vec()).ok()?))
}

fn skip_tagged(b: &mut &[u8]) -> Option<()> {
    let n = get_uvarint(b)?;
    for _ in 0..n {
        get_uvarint(b)?;
        let size = usize::try_from(get_uvarint(b)?).ok()?;
        *b = b.get(size..)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Persisted {
        let t = Uuid::from_bytes([7; 16]);
        let u = Uuid::from_bytes([9; 16]);
        let mut p = Persisted {
            epoch: Some(4),
            target_epoch: Some(4),
            ..Persisted::default()
        };
        for (id, parts) in [("a", vec![(t, 0), (u, 1)]), ("b", vec![(t, 1)])] {
            p.metadata.insert(
                id.into(),
                MemberMetadata {
                    instance_id: (id == "b").then(|| "static-b".into()),
                    client_id: format!("client-{id}"),
                    subscribed: vec!["orders".into(), "refunds".into()],
                    subscribed_regex: (id == "a").then(|| "orders-.*".into()),
                    rebalance_timeout_ms: 30_000,
                    server_assignor: Some("range".into()),
                },
            );
            let set: BTreeSet<Tp> = parts.into_iter().collect();
            p.target.insert(id.into(), set.clone());
            p.current.insert(
                id.into(),
                CurrentAssignment {
                    epoch: 4,
                    previous_epoch: 3,
                    state: 0,
                    assigned: set,
                    revoking: BTreeSet::new(),
                },
            );
        }
        p
    }

    fn replay_all(records: &[Record], groups: &mut HashMap<String, Persisted>) {
        for (k, v) in records {
            assert!(replay(groups, k, v.as_deref()), "a KIP-848 record");
        }
    }

    #[test]
    fn changes_replay_to_the_same_group() {
        let after = sample();
        let records = changes("g", &Persisted::default(), &after);
        // 2 metadata, 1 epoch, 2 targets, 1 target epoch, 2 current assignments.
        assert_eq!(records.len(), 8);
        assert_eq!(&records[0].0[..2], &MEMBER_METADATA.to_be_bytes());
        let mut groups = HashMap::new();
        replay_all(&records, &mut groups);
        assert_eq!(groups["g"], after);
        // Nothing changed: nothing to write.
        assert!(changes("g", &after, &after).is_empty());
        // b leaves: its three tombstones first, current assignment first of all.
        let mut left = after.clone();
        left.metadata.remove("b");
        left.target.remove("b");
        left.current.remove("b");
        left.epoch = Some(5);
        let records = changes("g", &after, &left);
        assert_eq!(&records[0].0[..2], &CURRENT_MEMBER.to_be_bytes());
        assert!(records[..3].iter().all(|(_, v)| v.is_none()));
        replay_all(&records, &mut groups);
        assert_eq!(groups["g"], left);
    }

    #[test]
    fn the_bytes_are_kafkas() {
        // ConsumerGroupMetadata for group "g" at epoch 5: key 00 03 | 00 01 'g', value
        // version 0, epoch, empty tagged fields.
        let records = changes(
            "g",
            &Persisted::default(),
            &Persisted {
                epoch: Some(5),
                ..Persisted::default()
            },
        );
        assert_eq!(records[0].0, vec![0, 3, 0, 1, b'g']);
        assert_eq!(records[0].1.as_deref(), Some(&[0, 0, 0, 0, 0, 5, 0][..]));
        // Damaged values are skipped, never a panic.
        let mut groups = HashMap::new();
        for (k, v) in changes("g", &Persisted::default(), &sample()) {
            let v = v.expect("value");
            for cut in 0..v.len() {
                replay(&mut groups, &k, Some(&v[..cut]));
            }
            for cut in 0..k.len() {
                replay(&mut groups, &k[..cut], Some(&v));
            }
        }
        assert!(
            !replay(&mut groups, &[0, 1, 0, 0], None),
            "offset commits are not ours"
        );
    }
}
