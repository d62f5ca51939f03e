//! Produce (key 0): route each partition's record bytes to the core that owns it, append there,
//! and answer once every partition is durable at the level `acks` asks for (see
//! `Shard::produce`). Record bytes are never decoded or re-encoded here.
//!
//! Version 12 is transaction version 2 (KIP-890): a transactional producer no longer sends
//! AddPartitionsToTxn, the partitions it writes join its transaction implicitly. The batches
//! are appended first (so requests keep their order), then the partitions are added at the
//! transaction coordinator before the producer is answered — so EndTxn, which the producer
//! sends only after its writes are answered, always finds them. If the coordinator refuses
//! (a fenced epoch, no such transaction), the writes are aborted with ABORT markers at once and
//! the producer is told INVALID_PRODUCER_EPOCH or INVALID_TXN_STATE: nothing is left open.

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
    max_version: 12,
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
    // Transaction version 2: the producer (id, epoch) and the partitions its transactional
    // batches go to, added to its transaction implicitly.
    let mut implicit: Option<(i64, i16, Vec<TopicPartition>)> = None;
    let version_2_id = request
        .transactional_id
        .as_ref()
        .filter(|_| ctx.api_version >= 12)
        .map(|id| id.0.to_string());
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
                let core = shard.table.borrow().core_of(&name, p.index);
                match core {
                    None => early(
                        shard.unserved_error(&name, p.index),
                        "This server is not the leader of this topic-partition.",
                    ),
                    Some(core) => {
                        // Only a version-2 transactional request reads the header here.
                        let header = version_2_id
                            .as_ref()
                            .and_then(|_| BatchHeader::parse(&records))
                            .filter(|h| h.is_transactional());
                        if let Some(h) = header {
                            implicit
                                .get_or_insert_with(|| {
                                    (h.producer_id, h.producer_epoch, Vec::new())
                                })
                                .2
                                .push(tp.clone());
                        }
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
    let shard = shard.clone();
    async move {
        let added = async {
            match (&version_2_id, &implicit) {
                (Some(id), Some((pid, epoch, partitions))) => {
                    add_implicitly(&shard, id, *pid, *epoch, partitions).await
                }
                _ => Ok(()),
            }
        };
        let (answers, added) = futures::join!(join_all(calls), added);
        let mut results: BTreeMap<TopicPartition, ProduceResult> = BTreeMap::new();
        for answer in answers {
            if let Some(CoreResponse::Produce(list)) = answer {
                for r in list {
                    results.insert(r.tp.clone(), r);
                }
            }
        }
        if let (Err(refused), Some((pid, epoch, partitions))) = (added, &implicit) {
            abort_refused(&shard, *pid, *epoch, partitions).await;
            for tp in partitions {
                if let Some(r) = results.get_mut(tp) {
                    r.error = refused.code();
                    r.message = Some("the transaction coordinator refused the partition".into());
                    r.base_offset = -1;
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

/// Adds `partitions` to the producer's transaction at its coordinator (transaction version 2),
/// retrying while the coordinator is busy with another change of it; the error to answer the
/// producer with when the coordinator refuses.
async fn add_implicitly(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[TopicPartition],
) -> Result<(), ResponseError> {
    let partitions: Vec<(String, i32)> = partitions
        .iter()
        .map(|tp| (tp.topic.clone(), tp.partition))
        .collect();
    crate::txn_coordinator::add_with_retries(
        shard,
        transactional_id,
        producer_id,
        producer_epoch,
        partitions,
    )
    .await
    .map_err(|e| match e {
        ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch => {
            ResponseError::InvalidProducerEpoch
        }
        _ => ResponseError::InvalidTxnState,
    })
}

/// Ends with ABORT markers what a refused producer's writes opened on `partitions`.
async fn abort_refused(
    shard: &Rc<Shard>,
    producer_id: i64,
    epoch: i16,
    partitions: &[TopicPartition],
) {
    let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
    for tp in partitions {
        if let Some(core) = shard.table.borrow().core_of(&tp.topic, tp.partition) {
            by_core.entry(core).or_default().push(tp.clone());
        }
    }
    crate::txn_coordinator::dispatch_markers(shard, producer_id, epoch, false, by_core).await;
}
