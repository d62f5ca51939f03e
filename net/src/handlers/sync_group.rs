//! SyncGroup (key 14): the leader hands in the assignment, every member gets its part.

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, SyncGroupRequest, SyncGroupResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply, SyncRequest};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::SyncGroup,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: SyncGroupRequest) -> Outcome {
    let group = request.group_id.0.to_string();
    let call = GroupCall::Sync(SyncRequest {
        group: group.clone(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|i| i.to_string()),
        protocol_type: request.protocol_type.map(|p| p.to_string()),
        protocol: request.protocol_name.map(|p| p.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    });
    let response = match groups::route(shard, &group, call).await {
        Ok(GroupReply::Sync((error, protocol_type, protocol, assignment))) => {
            SyncGroupResponse::default()
                .with_error_code(error)
                .with_protocol_type(protocol_type.as_deref().map(str_bytes))
                .with_protocol_name(protocol.as_deref().map(str_bytes))
                .with_assignment(assignment)
        }
        Ok(_) => SyncGroupResponse::default()
            .with_error_code(kafka_protocol::error::ResponseError::UnknownServerError.code()),
        Err(e) => SyncGroupResponse::default().with_error_code(e.code()),
    };
    encode_response(ctx, &response)
}
