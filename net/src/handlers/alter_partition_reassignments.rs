//! AlterPartitionReassignments (key 45, KIP-455; v1 KIP-860): moves partitions to new replica
//! lists, or cancels a move in progress (null replicas). Forwarded to core 0, which decides on
//! the metadata image and proposes each partition's change; the new replicas copy the log and
//! the controller drops the old ones once every new one is in sync (see `partitions`). The
//! answer comes when the move has started, as in Kafka; ListPartitionReassignments shows it
//! until it completes. Errors per partition: UNKNOWN_TOPIC_OR_PARTITION,
//! NO_REASSIGNMENT_IN_PROGRESS, INVALID_REPLICA_ASSIGNMENT, INVALID_REPLICATION_FACTOR (v1,
//! when the request does not allow the count to change).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey,
};
use sluice_core::TopicPartition;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::AlterPartitionReassignments,
    min_version: 0,
    max_version: 1,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: AlterPartitionReassignmentsRequest,
) -> Outcome {
    // v0 has no such field: the count may change, as before KIP-860.
    let allow = ctx.api_version < 1 || request.allow_replication_factor_change;
    let partitions: Vec<(TopicPartition, Option<Vec<i32>>)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    TopicPartition::new(t.name.0.to_string(), p.partition_index),
                    p.replicas
                        .as_ref()
                        .map(|r| r.iter().map(|id| id.0).collect()),
                )
            })
        })
        .collect();
    let call = CoreRequest::Reassign {
        partitions: partitions.clone(),
        allow_replication_factor_change: allow,
    };
    let answers = match shard.call(0, call).await {
        Some(CoreResponse::Answers(answers)) => answers,
        _ => Vec::new(),
    };
    let mut topics: Vec<ReassignableTopicResponse> = Vec::new();
    for (i, (tp, _)) in partitions.iter().enumerate() {
        let (error, message) = answers.get(i).cloned().unwrap_or((
            ResponseError::RequestTimedOut.code(),
            Some("the metadata owner did not answer".into()),
        ));
        let answer = ReassignablePartitionResponse::default()
            .with_partition_index(tp.partition)
            .with_error_code(error)
            .with_error_message(message.as_deref().map(str_bytes));
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == tp.topic => t.partitions.push(answer),
            _ => topics.push(
                ReassignableTopicResponse::default()
                    .with_name(topic_name(&tp.topic))
                    .with_partitions(vec![answer]),
            ),
        }
    }
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow)
        .with_responses(topics);
    encode_response(ctx, &response)
}
