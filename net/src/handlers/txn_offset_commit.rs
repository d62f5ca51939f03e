//! TxnOffsetCommit (key 28), versions 0–4: a transactional producer commits a consumer group's
//! offsets as part of its transaction (`sendOffsetsToTransaction`). The group's coordinating
//! core writes them as a transactional batch of the producer; they become the group's offsets
//! only when the transaction commits (its marker reaches the group's partition), and are
//! dropped when it aborts. Version 5 is transaction version 2 (KIP-890): the client sends no
//! AddOffsetsToTxn, and the group's partition joins the transaction here, at the coordinator,
//! before the offsets are written.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::offsets;
use crate::router::{CoreRequest, CoreResponse, OffsetToCommit};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::TxnOffsetCommit,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: TxnOffsetCommitRequest,
) -> Outcome {
    let group = request.group_id.0.to_string();
    let to_commit: Vec<OffsetToCommit> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| OffsetToCommit {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let failed = |code: ResponseError| {
        to_commit
            .iter()
            .map(|o| (o.topic.clone(), o.partition, code.code()))
            .collect::<Vec<_>>()
    };
    let results = if group.is_empty() {
        failed(ResponseError::InvalidGroupId)
    } else if !offsets::ensure_topic(shard).await {
        failed(ResponseError::CoordinatorNotAvailable)
    } else if let Err(e) = add_implicitly(shard, ctx, &request, &group).await {
        failed(e)
    } else {
        match offsets::coordinator(shard, &group) {
            Err(e) => failed(e),
            Ok(core) => {
                let call = CoreRequest::TxnCommitOffsets {
                    group: group.clone(),
                    producer_id: request.producer_id.0,
                    producer_epoch: request.producer_epoch,
                    generation: if ctx.api_version >= 3 {
                        request.generation_id
                    } else {
                        -1
                    },
                    member_id: request.member_id.to_string(),
                    instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
                    offsets: to_commit.clone(),
                };
                match shard.call(core, call).await {
                    Some(CoreResponse::Committed(results)) => results,
                    _ => failed(ResponseError::CoordinatorNotAvailable),
                }
            }
        }
    };
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = Vec::new();
    for (topic, partition, code) in results {
        let p = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(super::topic_name(&topic))
                    .with_partitions(vec![p]),
            ),
        }
    }
    encode_response(ctx, &TxnOffsetCommitResponse::default().with_topics(topics))
}

/// Transaction version 2 (v5): adds the group's `__consumer_offsets` partition to the
/// producer's transaction, as AddOffsetsToTxn did before.
async fn add_implicitly(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: &TxnOffsetCommitRequest,
    group: &str,
) -> Result<(), ResponseError> {
    if ctx.api_version < 5 {
        return Ok(());
    }
    let partitions = shard
        .topics
        .borrow()
        .get(offsets::OFFSETS_TOPIC)
        .map_or(1, |t| t.partitions);
    let partition = (
        offsets::OFFSETS_TOPIC.to_string(),
        offsets::partition_for(group, partitions),
    );
    crate::txn_coordinator::add_with_retries(
        shard,
        request.transactional_id.0.as_str(),
        request.producer_id.0,
        request.producer_epoch,
        vec![partition],
    )
    .await
    .map_err(|e| match e {
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        ResponseError::InvalidProducerIdMapping | ResponseError::ConcurrentTransactions => {
            ResponseError::InvalidTxnState
        }
        other => other,
    })
}
