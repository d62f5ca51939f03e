//! DescribeGroups (key 15): state, protocol and members (with their subscription metadata and
//! assignment) of each group; a group that does not exist is described as Dead, as in Kafka.

use std::rc::Rc;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeGroups,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DescribeGroupsRequest,
) -> Outcome {
    let mut described = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        let name = id.0.to_string();
        let call = GroupCall::Describe {
            group: name.clone(),
        };
        let group = match groups::route(shard, &name, call).await {
            Ok(GroupReply::Describe(Some(d))) => DescribedGroup::default()
                .with_group_state(str_bytes(d.state))
                .with_protocol_type(str_bytes(&d.protocol_type))
                .with_protocol_data(str_bytes(&d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|(member, instance, client, host, metadata, assignment)| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(&member))
                                .with_group_instance_id(instance.as_deref().map(str_bytes))
                                .with_client_id(str_bytes(&client))
                                .with_client_host(str_bytes(&host))
                                .with_member_metadata(metadata)
                                .with_member_assignment(assignment)
                        })
                        .collect(),
                ),
            Ok(_) => DescribedGroup::default().with_group_state(str_bytes("Dead")),
            Err(e) => DescribedGroup::default().with_error_code(e.code()),
        };
        described.push(group.with_group_id(id).with_authorized_operations(i32::MIN));
    }
    encode_response(
        ctx,
        &DescribeGroupsResponse::default().with_groups(described),
    )
}
