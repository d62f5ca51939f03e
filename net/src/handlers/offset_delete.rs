//! OffsetDelete (key 47): removes a group's committed offsets for some partitions — not for
//! topics its members are subscribed to (GROUP_SUBSCRIBED_TO_TOPIC), as in Kafka.

use std::rc::Rc;

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetDeleteRequest, OffsetDeleteResponse};

use super::{topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::OffsetDelete,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: OffsetDeleteRequest,
) -> Outcome {
    let group = request.group_id.0.to_string();
    let asked: Vec<(String, Vec<i32>)> = request
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions
                    .into_iter()
                    .map(|p| p.partition_index)
                    .collect(),
            )
        })
        .collect();
    let partitions: Vec<(String, i32)> = asked
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
        .collect();
    let call = GroupCall::DeleteOffsets {
        group: group.clone(),
        partitions: partitions.clone(),
    };
    let (error, codes) = match groups::route(shard, &group, call).await {
        Ok(GroupReply::DeleteOffsets(error, codes)) => (error, codes),
        Ok(_) => (
            kafka_protocol::error::ResponseError::UnknownServerError.code(),
            Vec::new(),
        ),
        Err(e) => (e.code(), Vec::new()),
    };
    let mut codes = codes.into_iter();
    let topics = if error != 0 {
        Vec::new()
    } else {
        asked
            .into_iter()
            .map(|(name, ps)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(
                        ps.into_iter()
                            .map(|p| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(codes.next().unwrap_or(0))
                            })
                            .collect(),
                    )
            })
            .collect()
    };
    encode_response(
        ctx,
        &OffsetDeleteResponse::default()
            .with_error_code(error)
            .with_topics(topics),
    )
}
