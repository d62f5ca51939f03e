//! ConsumerGroupDescribe (key 69): KIP-848 groups with their epochs, members, subscriptions
//! and assignments. A group that is not a KIP-848 group gets GROUP_ID_NOT_FOUND ("not a
//! consumer group"), as Kafka answers, which tells admin clients to describe it with
//! DescribeGroups instead.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ConsumerGroupDescribe,
    min_version: 0,
    max_version: 1,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ConsumerGroupDescribeRequest,
) -> Outcome {
    let mut described = Vec::with_capacity(request.group_ids.len());
    for id in request.group_ids {
        let name = id.0.to_string();
        let call = GroupCall::ConsumerDescribe {
            group: name.clone(),
        };
        let group = match groups::route(shard, &name, call).await {
            Ok(GroupReply::ConsumerDescribe(Some(d))) => DescribedGroup::default()
                .with_group_state(str_bytes(d.state))
                .with_group_epoch(d.epoch)
                .with_assignment_epoch(d.target_epoch)
                .with_assignor_name(str_bytes(&d.assignor))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            let topics = |set: Vec<(uuid::Uuid, Vec<i32>, String)>| {
                                Assignment::default().with_topic_partitions(
                                    set.into_iter()
                                        .map(|(tid, partitions, name)| {
                                            TopicPartitions::default()
                                                .with_topic_id(tid)
                                                .with_topic_name(TopicName(str_bytes(&name)))
                                                .with_partitions(partitions)
                                        })
                                        .collect(),
                                )
                            };
                            Member::default()
                                .with_member_id(str_bytes(&m.id))
                                .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                .with_member_epoch(m.epoch)
                                .with_client_id(str_bytes(&m.client_id))
                                .with_subscribed_topic_names(
                                    m.subscribed
                                        .iter()
                                        .map(|t| TopicName(str_bytes(t)))
                                        .collect(),
                                )
                                .with_subscribed_topic_regex(
                                    m.subscribed_regex.as_deref().map(str_bytes),
                                )
                                .with_assignment(topics(m.assigned))
                                .with_target_assignment(topics(m.target))
                                .with_member_type(1)
                        })
                        .collect(),
                ),
            Ok(_) => DescribedGroup::default()
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(str_bytes(&format!(
                    "Group {name} is not a consumer group."
                )))),
            Err(e) => DescribedGroup::default().with_error_code(e.code()),
        };
        described.push(group.with_group_id(id).with_authorized_operations(i32::MIN));
    }
    encode_response(
        ctx,
        &ConsumerGroupDescribeResponse::default().with_groups(described),
    )
}
