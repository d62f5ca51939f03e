//! Produce (key 0): route each partition's record bytes to the core that owns it, append there,
//! and answer once every partition is durable at the level `acks` asks for (see
//! `Shard::produce`). Record bytes are never decoded or re-encoded here.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::{join_all, FutureExt, LocalBoxFuture};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use sluice_core::TopicPartition;
use sluice_storage::batch::BatchHeader;
use uuid::Uuid;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse, ProduceResult};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::Produce,
    min_version: 3,
    max_version: 11,
};

/// A topic of the request in request order: name, id, and each partition with its early error
/// (None when it was routed to its owning core).
type TopicOrder = (String, Uuid, Vec<(i32, Option<ProduceResult>)>);

/// Kafka's rule for Produce v3+: exactly one record batch per partition (INVALID_RECORD
/// otherwise). A batch that does not parse as magic 2 is left to the storage layer, which
/// answers CORRUPT_MESSAGE or UNSUPPORTED_FOR_MESSAGE_FORMAT.
fn batch_count_error(records: &[u8]) -> Option<&'static str> {
    if records.is_empty() {
        return Some("a produce request must have one record batch per partition");
    }
    let first = BatchHeader::parse(records).filter(|h| h.magic == 2)?;
    (records.len() > first.total_bytes())
        .then_some("a produce request may hold only one record batch per partition")
}

/// Starts the request synchronously (appends happen in request order) and returns the rest.
pub fn handle(
    shard: &Rc<Shard>,
    ctx: RequestContext,
    request: ProduceRequest,
) -> LocalBoxFuture<'static, Outcome> {
    let acks = request.acks;
    // Answers in request order: (topic, topic id, partitions), each partition Ok(route) or an
    // early error.
    let mut order: Vec<TopicOrder> = Vec::new();
    let mut by_core: BTreeMap<usize, Vec<(TopicPartition, Bytes)>> = BTreeMap::new();
    // A transactional batch needs the request's transactional id (Kafka refuses it without).
    let transactional_without_id = request.transactional_id.is_none()
        && request.topic_data.iter().any(|t| {
            t.partition_data.iter().any(|p| {
                p.records
                    .as_deref()
                    .and_then(BatchHeader::parse)
                    .is_some_and(|h| h.magic == 2 && h.is_transactional())
            })
        });
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partition_data {
            let tp = TopicPartition::new(name.clone(), p.index);
            let early = |code: ResponseError, message: &str| {
                Some(ProduceResult {
                    tp: tp.clone(),
                    error: code.code(),
                    message: Some(message.to_string()),
                    base_offset: -1,
                    log_append_time_ms: -1,
                    log_start_offset: -1,
                })
            };
            let records = p.records.unwrap_or_default();
            let error = if !(-1..=1).contains(&acks) {
                early(
                    ResponseError::InvalidRequiredAcks,
                    "acks must be -1, 0 or 1",
                )
            } else if let Some(why) = batch_count_error(&records) {
                early(ResponseError::InvalidRecord, why)
            } else if transactional_without_id {
                early(
                    ResponseError::InvalidRecord,
                    "a transactional batch needs the request's transactional id",
                )
            } else {
                match shard.table.borrow().core_of(&name, p.index) {
                    None => early(
                        ResponseError::UnknownTopicOrPartition,
                        "This server does not host this topic-partition.",
                    ),
                    Some(core) => {
                        by_core.entry(core).or_default().push((tp.clone(), records));
                        None
                    }
                }
            };
            partitions.push((p.index, error));
        }
        order.push((name, topic.topic_id, partitions));
    }
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(
                core,
                CoreRequest::Produce {
                    acks,
                    timeout_ms: request.timeout_ms,
                    partitions,
                },
            )
        })
        .collect();
    async move {
        let mut results: BTreeMap<TopicPartition, ProduceResult> = BTreeMap::new();
        for answer in join_all(calls).await {
            if let Some(CoreResponse::Produce(list)) = answer {
                for r in list {
                    results.insert(r.tp.clone(), r);
                }
            }
        }
        let mut any_error = false;
        let responses = order
            .into_iter()
            .map(|(name, topic_id, partitions)| {
                let partition_responses = partitions
                    .into_iter()
                    .map(|(index, early)| {
                        let tp = TopicPartition::new(name.clone(), index);
                        let r = early
                            .or_else(|| results.remove(&tp))
                            .unwrap_or(ProduceResult {
                                tp,
                                error: ResponseError::KafkaStorageError.code(),
                                message: Some("the owning core did not answer".into()),
                                base_offset: -1,
                                log_append_time_ms: -1,
                                log_start_offset: -1,
                            });
                        any_error |= r.error != 0;
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(r.error)
                            .with_base_offset(r.base_offset)
                            .with_log_append_time_ms(r.log_append_time_ms)
                            .with_log_start_offset(r.log_start_offset)
                            .with_error_message(r.message.as_deref().map(str_bytes))
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(topic_name(&name))
                    .with_topic_id(topic_id)
                    .with_partition_responses(partition_responses)
            })
            .collect();
        if acks == 0 {
            // The client reads no answer; as Kafka does, a failure closes the connection so the
            // client notices and refreshes its metadata.
            return if any_error {
                Outcome::Close
            } else {
                Outcome::NoResponse
            };
        }
        encode_response(&ctx, &ProduceResponse::default().with_responses(responses))
    }
    .boxed_local()
}
