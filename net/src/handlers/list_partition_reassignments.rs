//! ListPartitionReassignments (key 46, KIP-455): the partitions being moved, with their
//! replicas (targets first, then those being removed) and which are being added and removed.
//! Null topics means every partition; named partitions that are not being moved (or do not
//! exist) are left out, as in Kafka.

use std::rc::Rc;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use sluice_core::TopicPartition;

use super::{topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ListPartitionReassignments,
    min_version: 0,
    max_version: 0,
};

fn ids(ids: &[i32]) -> Vec<BrokerId> {
    ids.iter().copied().map(BrokerId).collect()
}

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ListPartitionReassignmentsRequest,
) -> Outcome {
    let named = request.topics.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partition_indexes
                    .into_iter()
                    .map(move |p| TopicPartition::new(name.clone(), p))
            })
            .collect::<Vec<_>>()
    });
    let listed = match shard
        .call(0, CoreRequest::ListReassignments { partitions: named })
        .await
    {
        Some(CoreResponse::Reassignments(listed)) => listed,
        _ => Vec::new(),
    };
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for (tp, state) in listed {
        let ongoing = OngoingPartitionReassignment::default()
            .with_partition_index(tp.partition)
            .with_replicas(ids(&state.replicas))
            .with_adding_replicas(ids(&state.adding))
            .with_removing_replicas(ids(&state.removing));
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == tp.topic => t.partitions.push(ongoing),
            _ => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(topic_name(&tp.topic))
                    .with_partitions(vec![ongoing]),
            ),
        }
    }
    encode_response(
        ctx,
        &ListPartitionReassignmentsResponse::default().with_topics(topics),
    )
}
