//! ConsumerGroupHeartbeat (key 68): the new consumer group protocol (KIP-848): joining,
//! heartbeating with the owned partitions, receiving the assignment the broker computed, and
//! leaving (see `consumer_groups`). v1 clients name their own member id.

use std::collections::BTreeSet;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::consumer_groups::Heartbeat;
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ConsumerGroupHeartbeat,
    min_version: 0,
    max_version: 1,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ConsumerGroupHeartbeatRequest,
) -> Outcome {
    let group = request.group_id.0.to_string();
    let regex = request.subscribed_topic_regex.map(|r| r.to_string());
    if let Some(re) = regex.as_deref().filter(|r| !r.is_empty()) {
        if let Err(e) = crate::consumer_groups::compile_regex(re) {
            let response = ConsumerGroupHeartbeatResponse::default()
                .with_error_code(ResponseError::InvalidRegularExpression.code())
                .with_error_message(Some(str_bytes(&format!("invalid regex {re:?}: {e}"))))
                .with_member_epoch(-1);
            return encode_response(ctx, &response);
        }
    }
    let call = GroupCall::ConsumerHeartbeat(Heartbeat {
        group: group.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|i| i.to_string()),
        client_id: ctx.client_id.clone().unwrap_or_default(),
        subscribed: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_regex: regex,
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        server_assignor: request.server_assignor.map(|a| a.to_string()),
        owned: request.topic_partitions.map(|tps| {
            tps.into_iter()
                .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic_id, p)))
                .collect::<BTreeSet<_>>()
        }),
    });
    let response = match groups::route(shard, &group, call).await {
        Ok(GroupReply::ConsumerHeartbeat(a)) => {
            let assignment = a.assignment.map(|set| {
                let mut by_topic: std::collections::BTreeMap<uuid::Uuid, Vec<i32>> =
                    Default::default();
                for (topic, p) in set {
                    by_topic.entry(topic).or_default().push(p);
                }
                Assignment::default().with_topic_partitions(
                    by_topic
                        .into_iter()
                        .map(|(id, partitions)| {
                            TopicPartitions::default()
                                .with_topic_id(id)
                                .with_partitions(partitions)
                        })
                        .collect(),
                )
            });
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(a.error)
                .with_error_message(a.message.as_deref().map(str_bytes))
                .with_member_id(Some(str_bytes(&a.member_id)))
                .with_member_epoch(a.member_epoch)
                .with_heartbeat_interval_ms(a.heartbeat_interval_ms)
                .with_assignment(assignment)
        }
        Ok(_) => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(ResponseError::UnknownServerError.code()),
        Err(e) => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(e.code())
            .with_member_epoch(-1),
    };
    encode_response(ctx, &response)
}
