//! LeaveGroup (key 13): members leave (one in v0-2, a batch from v3); the group rebalances.

use std::rc::Rc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::LeaveGroup,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: LeaveGroupRequest,
) -> Outcome {
    let group = request.group_id.0.to_string();
    let identities: Vec<(String, Option<_>)> = if ctx.api_version >= 3 {
        request
            .members
            .into_iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let call = GroupCall::Leave {
        group: group.clone(),
        members: identities
            .iter()
            .map(|(id, instance)| (id.clone(), instance.as_ref().map(|i| i.to_string())))
            .collect(),
    };
    let codes: Vec<i16> = match groups::route(shard, &group, call).await {
        Ok(GroupReply::Leave(codes)) => codes,
        Ok(_) => {
            vec![kafka_protocol::error::ResponseError::UnknownServerError.code(); identities.len()]
        }
        Err(e) => vec![e.code(); identities.len()],
    };
    let response = if ctx.api_version >= 3 {
        LeaveGroupResponse::default().with_members(
            identities
                .into_iter()
                .zip(codes)
                .map(|((id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(super::str_bytes(&id))
                        .with_group_instance_id(instance)
                        .with_error_code(code)
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
    };
    encode_response(ctx, &response)
}
