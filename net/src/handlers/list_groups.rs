//! ListGroups (key 16): every group of every core — groups with members and groups that only
//! commit offsets — filtered by state (v4+) and type (v5+: only "classic" groups exist here).

use std::rc::Rc;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ApiKey, GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{GroupCall, GroupReply};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ListGroups,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ListGroupsRequest,
) -> Outcome {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let mut groups = Vec::new();
    for core in 0..shard.cores() {
        if let Some(CoreResponse::Group(GroupReply::List(listed))) =
            shard.call(core, CoreRequest::Group(GroupCall::List)).await
        {
            groups.extend(listed);
        }
    }
    groups.sort();
    let listed = groups
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&id)))
                .with_protocol_type(str_bytes(&protocol_type))
                .with_group_state(str_bytes(state))
                .with_group_type(str_bytes("Classic"))
        })
        .collect();
    encode_response(ctx, &ListGroupsResponse::default().with_groups(listed))
}
