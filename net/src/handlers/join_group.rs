//! JoinGroup (key 11): joins (or rejoins) a classic group; answered when the join phase of the
//! rebalance completes (see `groups`). From v4 a new member first gets MEMBER_ID_REQUIRED with
//! the id to join with (KIP-394).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ApiKey, JoinGroupRequest, JoinGroupResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply, JoinRequest};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::JoinGroup,
    min_version: 0,
    max_version: 9,
};

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: JoinGroupRequest) -> Outcome {
    let group = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let call = GroupCall::Join(JoinRequest {
        group: group.clone(),
        member_id: member_id.clone(),
        instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id: ctx.client_id.clone().unwrap_or_default(),
        client_host: String::new(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if ctx.api_version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: ctx.api_version >= 4,
    });
    let response = match groups::route(shard, &group, call).await {
        Ok(GroupReply::Join(a)) => JoinGroupResponse::default()
            .with_error_code(a.error)
            .with_generation_id(a.generation)
            .with_protocol_type(a.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(a.protocol.as_deref().map(str_bytes))
            .with_leader(str_bytes(&a.leader))
            .with_member_id(str_bytes(&a.member_id))
            .with_members(
                a.members
                    .into_iter()
                    .map(
                        |(id, instance, metadata): (String, Option<String>, Bytes)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(str_bytes(&id))
                                .with_group_instance_id(instance.as_deref().map(str_bytes))
                                .with_metadata(metadata)
                        },
                    )
                    .collect(),
            ),
        Ok(_) => JoinGroupResponse::default()
            .with_error_code(kafka_protocol::error::ResponseError::UnknownServerError.code()),
        Err(e) => JoinGroupResponse::default()
            .with_error_code(e.code())
            .with_generation_id(-1)
            .with_member_id(str_bytes(&member_id)),
    };
    encode_response(ctx, &response)
}
