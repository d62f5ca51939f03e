//! Committed offsets: the group coordinator's offset store, for consumers that commit — members
//! of a group (`groups`), or consumers that `assign()` partitions and commit without joining
//! (a "simple" group: generation -1, no members).
//!
//! A group belongs to one partition of the internal topic `__consumer_offsets`
//! (`offsets.topic.num.partitions`, 50), chosen as Kafka chooses it (the absolute value of the
//! Java hash of the group id, modulo the partition count), and so to the core that owns that
//! partition: commits and fetches for a group run there, nowhere else, so nothing is shared
//! between cores. A commit is appended to that partition as records in Kafka's own formats
//! (key `OffsetCommitKey` v1, value `OffsetCommitValue` v3, see docs/FORMATS.md) and answered
//! once they are durable; the core's in-memory table is what fetches read, and it is rebuilt
//! from the partition when the core opens it at start.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::error::ResponseError;
use sluice_core::config::BrokerConfig;
use sluice_core::TopicPartition;
use sluice_storage::{batch, Durability, PartitionLog};

use crate::router::{CoreRequest, CoreResponse, NewTopic, OffsetToCommit};
use crate::shard::{now_ms, Shard};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Settings of `__consumer_offsets` when sluice creates it, Kafka's: compacted (the latest
/// commit per group and partition is kept, tombstones of expired offsets and deleted groups go
/// after `delete.retention.ms`), never deleted by retention, in segments of
/// `offsets.topic.segment.bytes`.
pub fn offsets_topic_configs(broker: &BrokerConfig) -> Vec<(String, Option<String>)> {
    vec![
        ("cleanup.policy".into(), Some("compact".into())),
        (
            "segment.bytes".into(),
            Some(broker.offsets_topic_segment_bytes.to_string()),
        ),
    ]
}

/// A committed offset as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Where its record is in `__consumer_offsets` (not part of the record): of two commits
    /// for a partition, the later record wins, whatever order their writes complete in.
    pub log_offset: i64,
}

impl Committed {
    /// What OffsetFetch with `require_stable` answers for a partition whose transactional
    /// offsets are undecided: no offset, and UNSTABLE_OFFSET_COMMIT (see [`Self::is_unstable`]).
    pub fn unstable() -> Committed {
        Committed {
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: -1,
            log_offset: UNSTABLE_LOG_OFFSET,
        }
    }

    pub fn is_unstable(&self) -> bool {
        self.log_offset == UNSTABLE_LOG_OFFSET
    }
}

/// The `log_offset` of [`Committed::unstable`]: no record has a negative offset.
const UNSTABLE_LOG_OFFSET: i64 = -2;

/// Offsets of the groups whose `__consumer_offsets` partition this core owns.
pub type GroupOffsets = HashMap<String, BTreeMap<(String, i32), Committed>>;

/// Java's `String.hashCode` over UTF-16 code units.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The `__consumer_offsets` partition of a group: Kafka's `Utils.abs(hashCode) % partitions`,
/// where `Utils.abs(Integer.MIN_VALUE)` is 0.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_i16(s.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn get_string(buf: &mut &[u8]) -> Option<String> {
    if buf.len() < 2 {
        return None;
    }
    let len = buf.get_i16();
    if len < 0 {
        return Some(String::new());
    }
    let (s, rest) = buf.split_at_checked(len as usize)?;
    *buf = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// The record key of a committed offset: `OffsetCommitKey` at version 1.
pub fn encode_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    put_string(&mut b, group);
    put_string(&mut b, topic);
    b.put_i32(partition);
    b.to_vec()
}

/// The record value of a committed offset: `OffsetCommitValue` at version 3.
pub fn encode_value(c: &Committed) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(3);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    put_string(&mut b, &c.metadata);
    b.put_i64(c.commit_timestamp);
    b.to_vec()
}

/// The record key of a group's metadata: `GroupMetadataKey`, type 2.
pub fn encode_group_key(group: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(2);
    put_string(&mut b, group);
    b.to_vec()
}

/// The group of a `GroupMetadataKey` (type 2); None for other record types.
pub fn decode_group_key(mut key: &[u8]) -> Option<String> {
    if key.len() < 2 || key.get_i16() != 2 {
        return None;
    }
    get_string(&mut key)
}

/// Writes a group's metadata record (None: a tombstone) to the group's partition and waits
/// until it is durable.
pub async fn write_group_record(
    shard: &Rc<Shard>,
    group: &str,
    value: Option<Vec<u8>>,
) -> Result<(), String> {
    let log = group_log(shard, group).map_err(|e| e.to_string())?;
    append_records(
        &log,
        &shard.flusher,
        &[(encode_group_key(group), value)],
        now_ms(),
    )
    .await
    .map(|_| ())
}

/// Appends records of `group` (KIP-848 group records, in order) to the group's partition and
/// waits until they are durable.
pub async fn write_records(
    shard: &Rc<Shard>,
    group: &str,
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let log = group_log(shard, group).map_err(|e| e.to_string())?;
    append_records(&log, &shard.flusher, &records, now_ms())
        .await
        .map(|_| ())
}

/// (group, topic, partition) of an offset record's key; None for other record types (group
/// metadata keys are version 2) or damage.
pub fn decode_key(mut key: &[u8]) -> Option<(String, String, i32)> {
    if key.len() < 2 {
        return None;
    }
    let version = key.get_i16();
    if !(0..=1).contains(&version) {
        return None;
    }
    let group = get_string(&mut key)?;
    let topic = get_string(&mut key)?;
    if key.len() < 4 {
        return None;
    }
    Some((group, topic, key.get_i32()))
}

/// An `OffsetCommitValue` of version 0 to 3.
pub fn decode_value(mut value: &[u8]) -> Option<Committed> {
    if value.len() < 2 {
        return None;
    }
    let version = value.get_i16();
    if !(0..=3).contains(&version) || value.len() < 8 {
        return None;
    }
    let offset = value.get_i64();
    let leader_epoch = if version >= 3 {
        if value.len() < 4 {
            return None;
        }
        value.get_i32()
    } else {
        -1
    };
    let metadata = get_string(&mut value)?;
    if value.len() < 8 {
        return None;
    }
    let commit_timestamp = value.get_i64();
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
        log_offset: -1,
    })
}

/// Applies one `__consumer_offsets` record (at `log_offset`) to the table: a value sets an
/// offset, a null value (tombstone) removes it; other record types are skipped.
pub fn apply_record(
    table: &mut GroupOffsets,
    log_offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let Some((group, topic, partition)) = key.and_then(decode_key) else {
        return;
    };
    match value {
        Some(v) => {
            if let Some(mut c) = decode_value(v) {
                c.log_offset = log_offset;
                set(table, group, topic, partition, c);
            }
        }
        None => {
            if let Some(offsets) = table.get_mut(&group) {
                offsets.remove(&(topic, partition));
                if offsets.is_empty() {
                    table.remove(&group);
                }
            }
        }
    }
}

/// Sets an offset unless the table holds one from a later record.
fn set(table: &mut GroupOffsets, group: String, topic: String, partition: i32, c: Committed) {
    let offsets = table.entry(group).or_default();
    match offsets.get(&(topic.clone(), partition)) {
        Some(existing) if existing.log_offset > c.log_offset => {}
        _ => {
            offsets.insert((topic, partition), c);
        }
    }
}

/// Rebuilds the offset table from one `__consumer_offsets` partition, read from its start to
/// its high watermark; the last group-metadata record of each group (key type 2; None for a
/// tombstone) is put in `group_records`, KIP-848 groups in `consumer_groups`, and transactional
/// offsets not yet decided by a marker in `pending`.
pub async fn load(
    table: &mut GroupOffsets,
    pending: &mut PendingTxnOffsets,
    group_records: &mut HashMap<String, Option<Vec<u8>>>,
    consumer_groups: &mut HashMap<String, crate::consumer_group_records::Persisted>,
    log: &Rc<PartitionLog>,
) -> Result<usize, String> {
    let mut applied = 0;
    for_each_batch(log, |header, whole, from| {
        if header.is_control() {
            // A transaction's end: its offsets become visible, or are dropped.
            if let Some(m) = sluice_storage::txn::parse_marker(whole) {
                let at = header.base_offset;
                end_pending(table, pending, header.producer_id, m.commit, at, |_| true);
            }
            return;
        }
        for record in batch::records(whole).unwrap_or_default() {
            if record.offset < from {
                continue;
            }
            applied += 1;
            if header.is_transactional() {
                // TxnOffsetCommit: pending until the transaction's marker.
                if let (Some((group, topic, partition)), Some(mut c)) = (
                    record.key.and_then(decode_key),
                    record.value.and_then(decode_value),
                ) {
                    c.log_offset = record.offset;
                    pending
                        .entry(header.producer_id)
                        .or_default()
                        .entry(group)
                        .or_default()
                        .insert((topic, partition), c);
                }
                continue;
            }
            let kip848 = record.key.is_some_and(|k| {
                crate::consumer_group_records::replay(consumer_groups, k, record.value)
            });
            if let Some(group) = record.key.and_then(decode_group_key) {
                group_records.insert(group, record.value.map(<[u8]>::to_vec));
            } else if !kip848 {
                apply_record(table, record.offset, record.key, record.value);
            }
        }
    })
    .await?;
    Ok(applied)
}

/// Calls `f` with every whole batch of an internal partition, from its start to its high
/// watermark, and the offset reading had reached (records below it were already seen: a batch
/// is read again whole when a read window ended inside it).
async fn for_each_batch(
    log: &Rc<PartitionLog>,
    mut f: impl FnMut(&batch::BatchHeader, &[u8], i64),
) -> Result<(), String> {
    let mut offset = log.log_start_offset();
    let end = log.high_watermark();
    while offset < end {
        let read = log
            .read(offset, 4 << 20, true)
            .await
            .map_err(|e| format!("reading {}-{}: {e}", log.topic, log.partition))?;
        let bytes = read.records.to_bytes();
        if bytes.is_empty() {
            break;
        }
        let batches = batch::split_stored(&bytes)
            .map_err(|e| format!("{}-{} at {offset}: {e}", log.topic, log.partition))?;
        for (pos, header) in batches {
            f(&header, &bytes[pos..pos + header.total_bytes()], offset);
            offset = offset.max(header.last_offset() + 1);
        }
    }
    Ok(())
}

/// Calls `f` with the key and value of every record of an internal partition's data batches
/// (control batches skipped), from its start to its high watermark.
pub async fn for_each_record(
    log: &Rc<PartitionLog>,
    mut f: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), String> {
    for_each_batch(log, |header, whole, from| {
        if header.is_control() {
            return;
        }
        for record in batch::records(whole).unwrap_or_default() {
            if let (true, Some(key)) = (record.offset >= from, record.key) {
                f(key, record.value);
            }
        }
    })
    .await
}

/// Transactional offset commits not yet decided: producer id → group → partition → offset.
pub type PendingTxnOffsets = HashMap<i64, HashMap<String, BTreeMap<(String, i32), Committed>>>;

/// Ends `producer_id`'s pending offsets of the groups `in_partition` accepts that were written
/// before its marker at `marker_offset`: on commit they become the groups' offsets (unless a
/// later record set them), on abort they are dropped.
fn end_pending(
    table: &mut GroupOffsets,
    pending: &mut PendingTxnOffsets,
    producer_id: i64,
    commit: bool,
    marker_offset: i64,
    in_partition: impl Fn(&str) -> bool,
) {
    let Some(groups) = pending.get_mut(&producer_id) else {
        return;
    };
    let ended: Vec<String> = groups.keys().filter(|g| in_partition(g)).cloned().collect();
    for group in ended {
        let Some(offsets) = groups.get_mut(&group) else {
            continue;
        };
        let decided: Vec<(String, i32)> = offsets
            .iter()
            .filter(|(_, c)| c.log_offset < marker_offset)
            .map(|(k, _)| k.clone())
            .collect();
        for key in decided {
            if let Some(c) = offsets.remove(&key) {
                if commit {
                    set(table, group.clone(), key.0, key.1, c);
                }
            }
        }
        if offsets.is_empty() {
            groups.remove(&group);
        }
    }
    if groups.is_empty() {
        pending.remove(&producer_id);
    }
}

/// A transaction marker was written at `marker_offset` of `__consumer_offsets` partition
/// `partition` (on this, its owning core): the producer's pending offsets of the groups there
/// are decided.
pub fn end_transaction(
    shard: &Shard,
    partition: i32,
    producer_id: i64,
    commit: bool,
    marker_offset: i64,
) {
    let partitions = shard
        .topics
        .borrow()
        .get(OFFSETS_TOPIC)
        .map_or(1, |t| t.partitions);
    end_pending(
        &mut shard.offsets.borrow_mut(),
        &mut shard.txn_offsets.borrow_mut(),
        producer_id,
        commit,
        marker_offset,
        |group| partition_for(group, partitions) == partition,
    );
}

/// Whether `group` has transactional offsets not yet decided for the partition (OffsetFetch
/// with `require_stable` answers UNSTABLE_OFFSET_COMMIT for those).
pub fn has_pending(shard: &Shard, group: &str, topic: &str, partition: i32) -> bool {
    shard.txn_offsets.borrow().values().any(|groups| {
        groups
            .get(group)
            .is_some_and(|o| o.contains_key(&(topic.to_string(), partition)))
    })
}

/// TxnOffsetCommit, on the group's coordinating core: the offsets are written to the group's
/// partition as a transactional batch of the producer and stay pending — invisible to
/// OffsetFetch — until the transaction's marker decides them. The group check is Kafka's for
/// transactional commits: a commit without generation (-1) and member is accepted; otherwise
/// the member and generation must be current.
#[allow(clippy::too_many_arguments)]
pub async fn txn_commit(
    shard: &Rc<Shard>,
    group: String,
    producer_id: i64,
    producer_epoch: i16,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
    offsets: Vec<OffsetToCommit>,
) -> Vec<(String, i32, i16)> {
    let all = |code: ResponseError| {
        offsets
            .iter()
            .map(|o| (o.topic.clone(), o.partition, code.code()))
            .collect::<Vec<_>>()
    };
    let unchecked = generation < 0 && member_id.is_empty() && instance_id.is_none();
    if !unchecked {
        let verdict = crate::consumer_groups::validate_commit(shard, &group, member_id, generation);
        let error = match verdict {
            Some(e) => e,
            None if crate::groups::has_members(shard, &group) => {
                crate::groups::validate_commit(shard, &group, generation, member_id, instance_id)
            }
            None if generation >= 0 => Some(ResponseError::IllegalGeneration),
            None => None,
        };
        if let Some(e) = error {
            return all(e);
        }
    }
    let log = match group_log(shard, &group) {
        Ok(log) => log,
        Err(e) => return all(e),
    };
    let now = now_ms();
    let (mut answers, accepted) = accept(shard, offsets, now);
    if accepted.is_empty() {
        return answers;
    }
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = accepted
        .iter()
        .map(|(t, p, c)| (encode_key(&group, t, *p), Some(encode_value(c))))
        .collect();
    let records: Vec<batch::KeyValue<'_>> = encoded
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
        .collect();
    let mut bytes = batch::build_keyed_batch(0, now, &records);
    batch::set_transactional(&mut bytes, producer_id, producer_epoch);
    let written = match log.append_for_producer(&bytes.freeze(), now) {
        Err(e) => Err(crate::error::storage_error_code(&e)),
        Ok(info) => {
            // Pending from the moment the records are in the log, in log order with the
            // markers: a marker appended after them decides them, even one written before
            // this commit is durable.
            let first = info.base_offset;
            let keys: Vec<((String, i32), i64)> = accepted
                .iter()
                .enumerate()
                .map(|(i, (t, p, _))| ((t.clone(), *p), first + i as i64))
                .collect();
            {
                let mut pending = shard.txn_offsets.borrow_mut();
                let table = pending
                    .entry(producer_id)
                    .or_default()
                    .entry(group.clone())
                    .or_default();
                for (i, (topic, partition, mut c)) in accepted.into_iter().enumerate() {
                    c.log_offset = first + i as i64;
                    table.insert((topic, partition), c);
                }
            }
            shard.flusher.mark_dirty(&log);
            let durable = log.wait_durable(&info, Durability::Synced).await;
            durable.map_err(|e| {
                // The write failed and its records are gone: so are these pending offsets.
                forget_pending(shard, producer_id, &group, &keys);
                crate::error::storage_error_code(&e)
            })
        }
    };
    if let Err(code) = written {
        // A fenced producer's epoch is INVALID_PRODUCER_EPOCH, as Kafka answers it here.
        for a in answers.iter_mut().filter(|a| a.2 == 0) {
            a.2 = code;
        }
    }
    answers
}

/// Removes pending offsets that a failed write took back (those still from that write).
fn forget_pending(shard: &Shard, producer_id: i64, group: &str, keys: &[((String, i32), i64)]) {
    let mut pending = shard.txn_offsets.borrow_mut();
    let Some(groups) = pending.get_mut(&producer_id) else {
        return;
    };
    if let Some(table) = groups.get_mut(group) {
        for (key, log_offset) in keys {
            if table.get(key).is_some_and(|c| c.log_offset == *log_offset) {
                table.remove(key);
            }
        }
        if table.is_empty() {
            groups.remove(group);
        }
    }
    if groups.is_empty() {
        pending.remove(&producer_id);
    }
}

/// (topic, partition, error code) per offset of a commit, in request order.
pub type CommitAnswers = Vec<(String, i32, i16)>;
/// The offsets of a commit that passed the checks, as they will be stored.
type Accepted = Vec<(String, i32, Committed)>;

/// Checks each offset of a commit: its partition must exist and its metadata fit
/// `offset.metadata.max.bytes`. Returns the answer per offset (in request order; 0 for the
/// accepted) and the accepted offsets as they will be stored.
fn accept(shard: &Shard, offsets: Vec<OffsetToCommit>, now_ms: i64) -> (CommitAnswers, Accepted) {
    let mut answers = Vec::with_capacity(offsets.len());
    let mut accepted = Vec::new();
    for o in offsets {
        let known = shard
            .topics
            .borrow()
            .get(&o.topic)
            .is_some_and(|t| (0..t.partitions).contains(&o.partition));
        let metadata = o.metadata.unwrap_or_default();
        let error = if !known {
            ResponseError::UnknownTopicOrPartition.code()
        } else if metadata.encode_utf16().count() > shard.broker.offset_metadata_max_bytes {
            ResponseError::OffsetMetadataTooLarge.code()
        } else {
            accepted.push((
                o.topic.clone(),
                o.partition,
                Committed {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata,
                    commit_timestamp: now_ms,
                    log_offset: -1,
                },
            ));
            0
        };
        answers.push((o.topic, o.partition, error));
    }
    (answers, accepted)
}

/// Appends the offsets of one commit to the group's partition and waits until they are
/// durable; returns the log offset of the first record.
async fn append_commit(
    log: &Rc<PartitionLog>,
    flusher: &sluice_storage::Flusher,
    group: &str,
    offsets: &[(String, i32, Committed)],
    now_ms: i64,
) -> Result<i64, String> {
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = offsets
        .iter()
        .map(|(topic, partition, c)| (encode_key(group, topic, *partition), Some(encode_value(c))))
        .collect();
    append_records(log, flusher, &encoded, now_ms).await
}

/// How long a write to an internal topic waits for its in-sync replicas.
const INTERNAL_REPLICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Appends records (key, value or tombstone) to an internal partition as one batch and waits
/// until they are durable (and, in a cluster, copied by the in-sync replicas); returns the log
/// offset of the first.
pub(crate) async fn append_records(
    log: &Rc<PartitionLog>,
    flusher: &sluice_storage::Flusher,
    encoded: &[(Vec<u8>, Option<Vec<u8>>)],
    now_ms: i64,
) -> Result<i64, String> {
    if encoded.is_empty() {
        return Ok(log.log_end_offset());
    }
    let records: Vec<batch::KeyValue<'_>> = encoded
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
        .collect();
    let batch = batch::build_keyed_batch(0, now_ms, &records).freeze();
    let epoch = log.leader_epoch();
    let info = log.append(&batch, now_ms).map_err(|e| e.to_string())?;
    flusher.mark_dirty(log);
    log.wait_durable(&info, Durability::Synced)
        .await
        .map_err(|e| e.to_string())?;
    // Replicated (a cluster): answered once every in-sync replica has it, as Kafka writes its
    // internal topics with acks=all. A single node's high watermark is its durable end.
    let end = info.last_offset + 1;
    // A new leader epoch meanwhile (the lead lost, and maybe regained) means the record may
    // have been truncated away, whatever the high watermark says now.
    let replicated = async {
        while log.high_watermark() < end && log.leader_epoch() == epoch {
            let changed = log.high_watermark_changed.notified();
            if log.high_watermark() >= end || log.leader_epoch() != epoch {
                break;
            }
            changed.await;
        }
        log.leader_epoch() == epoch
    };
    let kept = crate::shard::with_timeout(replicated, INTERNAL_REPLICATION_WAIT)
        .await
        .ok_or("the in-sync replicas did not copy the write in time")?;
    if !kept {
        return Err("the partition's leadership changed before the in-sync replicas had it".into());
    }
    Ok(info.base_offset)
}

/// Removes offsets of `group` — the listed partitions, or all of them — by writing tombstones
/// (null values) to the group's partition, as Kafka does; on the coordinating core.
pub async fn delete(
    shard: &Rc<Shard>,
    group: &str,
    which: Option<&[(String, i32)]>,
) -> Result<(), String> {
    let doomed: Vec<(String, i32)> = match shard.offsets.borrow().get(group) {
        None => return Ok(()),
        Some(offsets) => offsets
            .keys()
            .filter(|k| which.is_none_or(|w| w.contains(k)))
            .cloned()
            .collect(),
    };
    if doomed.is_empty() {
        return Ok(());
    }
    let log = group_log(shard, group).map_err(|e| e.to_string())?;
    let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = doomed
        .iter()
        .map(|(t, p)| (encode_key(group, t, *p), None))
        .collect();
    let first = append_records(&log, &shard.flusher, &records, now_ms()).await?;
    let mut table = shard.offsets.borrow_mut();
    if let Some(offsets) = table.get_mut(group) {
        for (i, key) in doomed.iter().enumerate() {
            // A commit made while the tombstones were being written wins.
            if offsets
                .get(key)
                .is_some_and(|c| c.log_offset < first + i as i64)
            {
                offsets.remove(key);
            }
        }
        if offsets.is_empty() {
            table.remove(group);
        }
    }
    Ok(())
}

/// Offsets due to expire (`offsets.retention.minutes`): those of groups without members whose
/// commit is at least `retention_ms` old (Kafka's rule for groups that only commit, and for
/// empty groups whose offsets outlived the retention).
pub fn expired(
    table: &GroupOffsets,
    has_members: impl Fn(&str) -> bool,
    now_ms: i64,
    retention_ms: i64,
) -> Vec<(String, Vec<(String, i32)>)> {
    table
        .iter()
        .filter(|(group, _)| !has_members(group))
        .filter_map(|(group, offsets)| {
            let old: Vec<(String, i32)> = offsets
                .iter()
                .filter(|(_, c)| now_ms.saturating_sub(c.commit_timestamp) >= retention_ms)
                .map(|(k, _)| k.clone())
                .collect();
            (!old.is_empty()).then(|| (group.clone(), old))
        })
        .collect()
}

/// Expires old offsets on this core every `offsets.retention.check.interval.ms`.
pub async fn expiry_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(shard.broker.offsets_retention_check_interval_ms);
    let retention_ms = shard
        .broker
        .offsets_retention_minutes
        .saturating_mul(60_000);
    while !shard.stopping.get() {
        glommio::timer::sleep(interval).await;
        let due = expired(
            &shard.offsets.borrow(),
            |g| crate::groups::has_members(&shard, g),
            now_ms(),
            retention_ms,
        );
        for (group, partitions) in due {
            if let Err(e) = delete(&shard, &group, Some(&partitions)).await {
                eprintln!("sluice: expiring offsets of group {group}: {e}");
            }
        }
        crate::groups::forget_empty(&shard).await;
    }
}

/// Creates `__consumer_offsets` (through core 0) unless it exists; false if that failed.
pub async fn ensure_topic(shard: &Rc<Shard>) -> bool {
    let partitions = shard.broker.offsets_topic_num_partitions;
    let configs = offsets_topic_configs(&shard.broker);
    ensure_internal_topic(
        shard,
        OFFSETS_TOPIC,
        partitions,
        shard.broker.offsets_topic_replication_factor,
        None,
        configs,
    )
    .await
}

/// Creates an internal topic (through core 0, the metadata owner) unless it exists; false if
/// that failed. Another request creating it at the same time counts as success.
pub async fn ensure_internal_topic(
    shard: &Rc<Shard>,
    name: &str,
    partitions: i32,
    wanted_replication_factor: i16,
    min_insync_replicas: Option<i32>,
    mut configs: Vec<(String, Option<String>)>,
) -> bool {
    if shard.topics.borrow().contains_key(name) {
        return true;
    }
    // In a cluster, internal topics are replicated (`wanted_replication_factor`), so that their
    // coordinators move with leadership when a broker goes. As in Kafka, they are not created
    // until that many brokers are live (the client is told COORDINATOR_NOT_AVAILABLE and
    // retries): created with fewer, they would stay under-replicated for good.
    let replication_factor = if shard.broker.clustered() {
        let live = shard
            .cluster
            .borrow()
            .brokers
            .iter()
            .filter(|b| !b.fenced)
            .count();
        if live < usize::try_from(wanted_replication_factor).unwrap_or(usize::MAX) {
            return false;
        }
        wanted_replication_factor
    } else {
        1
    };
    if let Some(min) = min_insync_replicas {
        let min = min.min(i32::from(replication_factor)).max(1);
        configs.push(("min.insync.replicas".to_string(), Some(min.to_string())));
    }
    let topic = NewTopic {
        name: name.to_string(),
        partitions,
        replication_factor,
        configs,
        assignments: Vec::new(),
    };
    let created = shard
        .call(
            0,
            CoreRequest::CreateTopics {
                topics: vec![topic],
                validate_only: false,
            },
        )
        .await;
    match created {
        Some(CoreResponse::Topics(results)) => {
            results
                .iter()
                .all(|r| r.error == 0 || r.error == ResponseError::TopicAlreadyExists.code())
                && shard.topics.borrow().contains_key(name)
        }
        _ => false,
    }
}

/// The `__consumer_offsets` partition of `group`, once the topic exists.
fn group_partition(shard: &Shard, group: &str) -> Option<TopicPartition> {
    let partitions = shard.topics.borrow().get(OFFSETS_TOPIC)?.partitions;
    Some(TopicPartition::new(
        OFFSETS_TOPIC.to_string(),
        partition_for(group, partitions),
    ))
}

/// The log of `group`'s partition on this (the coordinating) core: COORDINATOR_NOT_AVAILABLE
/// before `__consumer_offsets` exists, NOT_COORDINATOR on another core.
fn group_log(shard: &Shard, group: &str) -> Result<Rc<PartitionLog>, ResponseError> {
    let tp = group_partition(shard, group).ok_or(ResponseError::CoordinatorNotAvailable)?;
    shard.log(&tp).ok_or(ResponseError::NotCoordinator)
}

/// Where `group` is coordinated on this broker: COORDINATOR_NOT_AVAILABLE before
/// `__consumer_offsets` exists, NOT_COORDINATOR when this broker does not lead the group's
/// partition (another one does, or none: the client looks the coordinator up again).
pub fn coordinator(shard: &Shard, group: &str) -> Result<usize, ResponseError> {
    let tp = group_partition(shard, group).ok_or(ResponseError::CoordinatorNotAvailable)?;
    shard
        .table
        .borrow()
        .core_of(&tp.topic, tp.partition)
        .ok_or(ResponseError::NotCoordinator)
}

/// On the coordinating core: whether the group state of `group`'s partition is loaded here
/// (COORDINATOR_LOAD_IN_PROGRESS while it loads after this broker took the lead,
/// NOT_COORDINATOR when this core does not coordinate it).
pub fn check_coordinating(shard: &Shard, group: &str) -> Result<(), ResponseError> {
    let Some(tp) = group_partition(shard, group) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    if shard.coordinating.borrow().contains(&tp.partition) {
        Ok(())
    } else if shard.loading_offsets.borrow().contains(&tp.partition) {
        Err(ResponseError::CoordinatorLoadInProgress)
    } else {
        Err(ResponseError::NotCoordinator)
    }
}

/// Drops the group state of one `__consumer_offsets` partition from this core: it no longer
/// coordinates those groups (another broker leads the partition now and loads them from its
/// copy of the log).
pub fn unload(shard: &Shard, partition: i32) {
    let Some(partitions) = shard
        .topics
        .borrow()
        .get(OFFSETS_TOPIC)
        .map(|m| m.partitions)
    else {
        return;
    };
    let here = |group: &String| partition_for(group, partitions) == partition;
    shard.offsets.borrow_mut().retain(|g, _| !here(g));
    shard.groups.borrow_mut().retain(|g, _| !here(g));
    shard.consumer_groups.borrow_mut().retain(|g, _| !here(g));
    for groups in shard.txn_offsets.borrow_mut().values_mut() {
        groups.retain(|g, _| !here(g));
    }
}

/// A commit, on the coordinating core. A group with members takes it only from a current
/// member of the current generation (`groups::validate_commit`). A group without members, as
/// in Kafka, accepts a commit without a generation (-1, whatever the member id) and refuses one
/// with a generation — UNKNOWN_MEMBER_ID for a group that exists, else ILLEGAL_GENERATION, or
/// GROUP_ID_NOT_FOUND from v9.
pub async fn commit(
    shard: &Rc<Shard>,
    group: String,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
    version: i16,
    offsets: Vec<OffsetToCommit>,
) -> Vec<(String, i32, i16)> {
    let all = |code: ResponseError| {
        offsets
            .iter()
            .map(|o| (o.topic.clone(), o.partition, code.code()))
            .collect::<Vec<_>>()
    };
    if let Some(verdict) =
        crate::consumer_groups::validate_commit(shard, &group, member_id, generation)
    {
        if let Some(e) = verdict {
            return all(e);
        }
    } else if crate::groups::has_members(shard, &group) {
        if let Some(e) =
            crate::groups::validate_commit(shard, &group, generation, member_id, instance_id)
        {
            return all(e);
        }
    } else if generation >= 0 {
        let exists = shard.offsets.borrow().contains_key(&group)
            || shard.groups.borrow().contains_key(&group);
        return all(if exists {
            ResponseError::UnknownMemberId
        } else if version >= 9 {
            ResponseError::GroupIdNotFound
        } else {
            ResponseError::IllegalGeneration
        });
    }
    let log = match group_log(shard, &group) {
        Ok(log) => log,
        Err(e) => return all(e),
    };
    let now = now_ms();
    let (mut answers, accepted) = accept(shard, offsets, now);
    if accepted.is_empty() {
        return answers;
    }
    match append_commit(&log, &shard.flusher, &group, &accepted, now).await {
        Ok(first) => {
            let mut table = shard.offsets.borrow_mut();
            for (i, (topic, partition, mut c)) in accepted.into_iter().enumerate() {
                c.log_offset = first + i as i64;
                set(&mut table, group.clone(), topic, partition, c);
            }
        }
        Err(why) => {
            eprintln!("sluice: committing offsets of group {group}: {why}");
            for a in answers.iter_mut().filter(|a| a.2 == 0) {
                a.2 = ResponseError::CoordinatorNotAvailable.code();
            }
        }
    }
    answers
}

/// Committed offsets of `group`, on the coordinating core: for the partitions asked, each with
/// its offset or None; for `None`, every partition the group has an offset for.
pub fn fetch(
    shard: &Shard,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, i32, Option<Committed>)> {
    let table = shard.offsets.borrow();
    let offsets = table.get(group);
    match topics {
        None => offsets
            .map(|o| {
                o.iter()
                    .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                    .collect()
            })
            .unwrap_or_default(),
        Some(topics) => topics
            .into_iter()
            .flat_map(|(topic, partitions)| partitions.into_iter().map(move |p| (topic.clone(), p)))
            .map(|(topic, p)| {
                let c = offsets.and_then(|o| o.get(&(topic.clone(), p))).cloned();
                (topic, p, c)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_partitions_as_in_kafka() {
        // Values from the JDK's String.hashCode and Kafka's Utils.abs(h) % 50.
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(java_hash("consumers"), -421_004_483);
        assert_eq!(partition_for("consumers", 50), 33);
        assert_eq!(partition_for("sluice-tests", 50), 37);
        assert_eq!(partition_for("😀", 50), 49);
        assert_eq!(java_hash(""), 0);
        assert_eq!(partition_for("", 50), 0);
        // Non-ASCII text hashes over UTF-16 code units.
        assert_eq!(java_hash("é"), 0xe9);
        assert_eq!(java_hash("😀"), 1_772_899);
        for g in ["a", "consumers", "Ünïcödé", "x".repeat(1000).as_str()] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p), "{g} → {p}");
        }
    }

    #[test]
    fn offsets_expire_by_commit_time_only_in_groups_without_members() {
        let at = |ts: i64| Committed {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: ts,
            log_offset: 0,
        };
        let mut table = GroupOffsets::new();
        table
            .entry("idle".into())
            .or_default()
            .insert(("t".into(), 0), at(1_000));
        table
            .entry("idle".into())
            .or_default()
            .insert(("t".into(), 1), at(9_000));
        table
            .entry("busy".into())
            .or_default()
            .insert(("t".into(), 0), at(1_000));
        let due = expired(&table, |g| g == "busy", 10_000, 5_000);
        assert_eq!(due, vec![("idle".to_string(), vec![("t".to_string(), 0)])]);
        assert!(expired(&table, |_| false, 5_999, 5_000).is_empty());
    }

    #[test]
    fn records_round_trip_and_tombstones_delete() {
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp: 1_700_000_000_000,
            log_offset: -1,
        };
        let key = encode_key("g", "orders", 7);
        assert_eq!(decode_key(&key), Some(("g".into(), "orders".into(), 7)));
        assert_eq!(decode_value(&encode_value(&c)), Some(c.clone()));
        let mut table = GroupOffsets::new();
        apply_record(&mut table, 10, Some(&key), Some(&encode_value(&c)));
        let stored = &table["g"][&("orders".to_string(), 7)];
        assert_eq!((stored.offset, stored.log_offset), (42, 10));
        // An earlier record does not overwrite a later one.
        let older = Committed {
            offset: 1,
            ..c.clone()
        };
        apply_record(&mut table, 9, Some(&key), Some(&encode_value(&older)));
        assert_eq!(table["g"][&("orders".to_string(), 7)].offset, 42);
        // A group metadata key (version 2) is not an offset.
        let mut other = key.clone();
        other[1] = 2;
        apply_record(&mut table, 11, Some(&other), None);
        assert_eq!(table.len(), 1);
        apply_record(&mut table, 12, Some(&key), None);
        assert!(table.is_empty());
        for cut in 0..key.len() {
            let _ = decode_key(&key[..cut]);
        }
        let value = encode_value(&c);
        for cut in 0..value.len() {
            assert_eq!(decode_value(&value[..cut]), None);
        }
    }
}
