//! Fetch (key 1): read from each partition's owning core, long-polling until `min_bytes` have
//! accumulated or `max_wait_ms` has passed. Waiting is driven by high-watermark notifications
//! on the owning cores (no polling loop): each round reads, and if short of `min_bytes` asks
//! every involved core to report when any of its partitions gets new data.
//!
//! `max_bytes` is split over the involved cores in proportion to their partitions, and each
//! core honours `partition_max_bytes`; the first non-empty partition of each core's share returns
//! at least one whole batch even if larger (KIP-74), so an oversized batch never stalls a client.
//!
//! Fetch sessions (KIP-227): sluice answers every request sessionless (session id 0), which the
//! protocol allows and clients handle by sending full fetch requests.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{join_all, select_all, FutureExt};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use sluice_core::TopicPartition;
use uuid::Uuid;

use super::{topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse, ReadOutcome, ReadPartition};
use crate::shard::Shard;

pub const API: Api = Api { key: ApiKey::Fetch, min_version: 4, max_version: 16 };

struct Wanted {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    core: Option<usize>,
    early_error: i16,
}

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: FetchRequest) -> Outcome {
    if request.session_id != 0 {
        let response = FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code());
        return encode_response(ctx, &response);
    }
    if request.session_epoch > 0 {
        let response = FetchResponse::default()
            .with_error_code(ResponseError::InvalidFetchSessionEpoch.code());
        return encode_response(ctx, &response);
    }
    let wanted = resolve(shard, ctx, &request);
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 { usize::MAX } else { request.max_bytes as usize };
    let started = Instant::now();
    let mut outcomes;
    loop {
        outcomes = read_round(shard, &wanted, max_bytes).await;
        let bytes: usize = outcomes.values().map(|o| o.records.len()).sum();
        let any_error = outcomes.values().any(|o| o.error != 0);
        let elapsed = started.elapsed();
        if bytes >= min_bytes || any_error || elapsed >= max_wait || wanted.is_empty() {
            break;
        }
        wait_for_data(shard, &wanted, max_wait - elapsed).await;
        if started.elapsed() >= max_wait && shard.stopping.get() {
            break;
        }
    }
    encode_response(ctx, &build_response(ctx, wanted, outcomes))
}

fn resolve(shard: &Shard, ctx: &RequestContext, request: &FetchRequest) -> Vec<Wanted> {
    let by_id = ctx.api_version >= 13;
    let topics = shard.topics.borrow();
    let table = shard.table.borrow();
    let mut wanted = Vec::new();
    for topic in &request.topics {
        let name = if by_id {
            topics.values().find(|m| m.id == *topic.topic_id.as_bytes()).map(|m| m.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        for p in &topic.partitions {
            let (core, early_error) = match &name {
                None => (None, ResponseError::UnknownTopicId.code()),
                Some(n) => match table.core_of(n, p.partition) {
                    None => (None, ResponseError::UnknownTopicOrPartition.code()),
                    Some(core) => (Some(core), 0),
                },
            };
            wanted.push(Wanted {
                topic: name.clone().unwrap_or_else(|| topic.topic.0.to_string()),
                topic_id: topic.topic_id,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                core,
                early_error,
            });
        }
    }
    wanted
}

async fn read_round(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    max_bytes: usize,
) -> BTreeMap<TopicPartition, ReadOutcome> {
    let mut by_core: BTreeMap<usize, Vec<ReadPartition>> = BTreeMap::new();
    for w in wanted {
        if let Some(core) = w.core {
            by_core.entry(core).or_default().push(ReadPartition {
                tp: TopicPartition::new(w.topic.clone(), w.partition),
                offset: w.offset,
                max_bytes: w.max_bytes,
            });
        }
    }
    let routed: usize = by_core.values().map(Vec::len).sum::<usize>().max(1);
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            let share = (max_bytes / routed).saturating_mul(partitions.len()).max(1);
            let budget = if max_bytes == usize::MAX { usize::MAX } else { share };
            shard.dispatch(core, CoreRequest::Read { budget_bytes: budget, partitions })
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::Read(list)) = answer {
            for o in list {
                outcomes.insert(o.tp.clone(), o);
            }
        }
    }
    outcomes
}

async fn wait_for_data(shard: &Rc<Shard>, wanted: &[Wanted], remaining: Duration) {
    let mut by_core: BTreeMap<usize, Vec<(TopicPartition, i64)>> = BTreeMap::new();
    for w in wanted {
        if let Some(core) = w.core {
            by_core
                .entry(core)
                .or_default()
                .push((TopicPartition::new(w.topic.clone(), w.partition), w.offset));
        }
    }
    if by_core.is_empty() {
        glommio::timer::sleep(remaining).await;
        return;
    }
    let timeout_ms = remaining.as_millis() as u64;
    let waits: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(core, CoreRequest::WaitForData { partitions, timeout_ms })
        })
        .collect();
    select_all(waits).map(|_| ()).await;
}

fn build_response(
    ctx: &RequestContext,
    wanted: Vec<Wanted>,
    mut outcomes: BTreeMap<TopicPartition, ReadOutcome>,
) -> FetchResponse {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for w in wanted {
        let tp = TopicPartition::new(w.topic.clone(), w.partition);
        let data = match outcomes.remove(&tp) {
            Some(o) if w.early_error == 0 => PartitionData::default()
                .with_partition_index(w.partition)
                .with_error_code(o.error)
                .with_high_watermark(o.high_watermark)
                .with_last_stable_offset(o.high_watermark)
                .with_log_start_offset(o.log_start_offset)
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(o.records)),
            _ => PartitionData::default()
                .with_partition_index(w.partition)
                .with_error_code(if w.early_error != 0 {
                    w.early_error
                } else {
                    ResponseError::NotLeaderOrFollower.code()
                })
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(bytes::Bytes::new())),
        };
        let same_topic = topics.last().is_some_and(|t| {
            if ctx.api_version >= 13 {
                t.topic_id == w.topic_id
            } else {
                t.topic.0.as_str() == w.topic
            }
        });
        if same_topic {
            if let Some(t) = topics.last_mut() {
                t.partitions.push(data);
            }
        } else {
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&w.topic))
                    .with_topic_id(w.topic_id)
                    .with_partitions(vec![data]),
            );
        }
    }
    FetchResponse::default().with_session_id(0).with_responses(topics)
}
