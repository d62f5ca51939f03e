//! OffsetCommit (key 8): offsets committed by a group's consumers, stored by the group's
//! coordinating core in `__consumer_offsets` (see `offsets`) and answered once durable.
//!
//! A group with members takes commits only from a current member of the current generation
//! (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS otherwise); a group without
//! members takes commits without a generation (what consumers using `assign()` send) and
//! answers one with a generation as Kafka does for an empty group: UNKNOWN_MEMBER_ID when the
//! group exists, else ILLEGAL_GENERATION (GROUP_ID_NOT_FOUND from v9). The empty group id is
//! accepted, as Kafka does for backward compatibility.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse};

use super::{topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::offsets;
use crate::router::{CoreRequest, CoreResponse, OffsetToCommit};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::OffsetCommit,
    min_version: 2,
    max_version: 9,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: OffsetCommitRequest,
) -> Outcome {
    let group = request.group_id.0.to_string();
    let mut order: Vec<(String, Vec<i32>)> = Vec::new();
    let mut wanted = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::new();
        for p in topic.partitions {
            partitions.push(p.partition_index);
            wanted.push(OffsetToCommit {
                topic: name.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.map(|m| m.to_string()),
            });
        }
        order.push((name, partitions));
    }
    let answers: Vec<(String, i32, i16)> = if !offsets::ensure_topic(shard).await {
        codes(&wanted, ResponseError::CoordinatorNotAvailable)
    } else {
        match offsets::coordinator(shard, &group) {
            Err(e) => codes(&wanted, e),
            Ok(core) => {
                let call = CoreRequest::CommitOffsets {
                    group,
                    generation: request.generation_id_or_member_epoch,
                    member_id: request.member_id.to_string(),
                    instance_id: request.group_instance_id.map(|i| i.to_string()),
                    version: ctx.api_version,
                    offsets: wanted.clone(),
                };
                match shard.call(core, call).await {
                    Some(CoreResponse::Committed(answers)) => answers,
                    _ => codes(&wanted, ResponseError::CoordinatorNotAvailable),
                }
            }
        }
    };
    let mut answers = answers.into_iter();
    let topics = order
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|p| {
                    let code = answers
                        .next()
                        .map_or(ResponseError::UnknownServerError.code(), |a| a.2);
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    encode_response(ctx, &OffsetCommitResponse::default().with_topics(topics))
}

fn codes(wanted: &[OffsetToCommit], error: ResponseError) -> Vec<(String, i32, i16)> {
    wanted
        .iter()
        .map(|o| (o.topic.clone(), o.partition, error.code()))
        .collect()
}
