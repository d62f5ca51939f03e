//! ListOffsets (key 2): earliest (-2), latest (-1, the high watermark), max timestamp (-3), or
//! the first offset whose timestamp is at or after a given time — found with the time index,
//! then the exact record inside the batch (compressed batches are decompressed for this).
//! From v4 the answer carries the leader epoch of the offset (latest: the log's newest epoch),
//! and a client's current leader epoch is checked as Fetch checks it: older than the leader's
//! is FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_core::TopicPartition;
use sluice_storage::batch::BatchHeader;
use sluice_storage::PartitionLog;

use super::{topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::error::storage_error_code;
use crate::router::{CoreRequest, CoreResponse, OffsetResult};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ListOffsets,
    min_version: 1,
    max_version: 8,
};

pub const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ListOffsetsRequest,
) -> Outcome {
    // isolation_level (v2+): 1 is read_committed.
    let read_committed = ctx.api_version >= 2 && request.isolation_level == 1;
    let mut by_core: BTreeMap<usize, Vec<(TopicPartition, i64, i32)>> = BTreeMap::new();
    let mut early: BTreeMap<TopicPartition, i16> = BTreeMap::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
            let core = shard.table.borrow().core_of(&tp.topic, tp.partition);
            match core {
                Some(core) => {
                    // current_leader_epoch (v4+): a client with a stale view is fenced.
                    let epoch = if ctx.api_version >= 4 {
                        p.current_leader_epoch
                    } else {
                        -1
                    };
                    by_core
                        .entry(core)
                        .or_default()
                        .push((tp, p.timestamp, epoch))
                }
                None => {
                    let error = shard.unserved_error(&tp.topic, tp.partition);
                    early.insert(tp, error.code());
                }
            }
        }
    }
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(
                core,
                CoreRequest::ListOffsets {
                    partitions,
                    read_committed,
                },
            )
        })
        .collect();
    let mut results: BTreeMap<TopicPartition, OffsetResult> = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::ListOffsets(list)) = answer {
            for r in list {
                results.insert(r.tp.clone(), r);
            }
        }
    }
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let tp = TopicPartition::new(topic.name.0.to_string(), p.partition_index);
                    let r = results.remove(&tp).unwrap_or(OffsetResult {
                        tp: tp.clone(),
                        error: early
                            .get(&tp)
                            .copied()
                            .unwrap_or(ResponseError::NotLeaderOrFollower.code()),
                        timestamp: -1,
                        offset: -1,
                        leader_epoch: -1,
                    });
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(r.error)
                        .with_timestamp(r.timestamp)
                        .with_offset(r.offset)
                        .with_leader_epoch(if ctx.api_version >= 4 {
                            r.leader_epoch
                        } else {
                            -1
                        })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(topic.name.0.as_str()))
                .with_partitions(partitions)
        })
        .collect();
    encode_response(ctx, &ListOffsetsResponse::default().with_topics(topics))
}

/// Runs on the owning core: (timestamp, offset) for one partition, or a Kafka error code.
pub async fn lookup(
    log: &PartitionLog,
    timestamp: i64,
    read_committed: bool,
) -> Result<(i64, i64), i16> {
    match timestamp {
        EARLIEST => Ok((-1, log.log_start_offset())),
        LATEST if read_committed => Ok((-1, log.last_stable_offset())),
        LATEST => Ok((-1, log.high_watermark())),
        MAX_TIMESTAMP => match log.batch_with_max_timestamp().await {
            Ok(Some(batch)) => Ok(record_with_max_timestamp(batch)),
            Ok(None) => Ok((-1, -1)),
            Err(e) => Err(storage_error_code(&e)),
        },
        t if t >= 0 => match log.batch_for_timestamp(t).await {
            Ok(Some(batch)) => Ok(first_record_at_or_after(batch, t)),
            Ok(None) => Ok((-1, -1)),
            Err(e) => Err(storage_error_code(&e)),
        },
        _ => Err(ResponseError::InvalidRequest.code()),
    }
}

/// (timestamp, offset) of the first record with timestamp ≥ `t` in the batch; the batch's
/// (max timestamp, base offset) if its records cannot be decoded.
fn first_record_at_or_after(batch: bytes::Bytes, t: i64) -> (i64, i64) {
    let header = BatchHeader::parse(&batch);
    let fallback = header
        .map(|h| (h.max_timestamp, h.base_offset))
        .unwrap_or((-1, -1));
    let mut buf = batch;
    match RecordBatchDecoder::decode(&mut buf) {
        Ok(set) => set
            .records
            .iter()
            .find(|r| r.timestamp >= t)
            .map(|r| (r.timestamp, r.offset))
            .unwrap_or(fallback),
        Err(_) => fallback,
    }
}

fn record_with_max_timestamp(batch: bytes::Bytes) -> (i64, i64) {
    let header = BatchHeader::parse(&batch);
    let fallback = header
        .map(|h| (h.max_timestamp, h.last_offset()))
        .unwrap_or((-1, -1));
    let mut buf = batch;
    match RecordBatchDecoder::decode(&mut buf) {
        Ok(set) => {
            let mut best: Option<(i64, i64)> = None;
            for r in &set.records {
                if best.is_none_or(|(ts, _)| r.timestamp > ts) {
                    best = Some((r.timestamp, r.offset));
                }
            }
            best.unwrap_or(fallback)
        }
        Err(_) => fallback,
    }
}
