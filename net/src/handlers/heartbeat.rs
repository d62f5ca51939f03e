//! Heartbeat (key 12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::Heartbeat,
    min_version: 0,
    max_version: 4,
};

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: HeartbeatRequest) -> Outcome {
    let group = request.group_id.0.to_string();
    let call = GroupCall::Heartbeat {
        group: group.clone(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|i| i.to_string()),
    };
    let error = match groups::route(shard, &group, call).await {
        Ok(GroupReply::Heartbeat(code)) => code,
        Ok(_) => kafka_protocol::error::ResponseError::UnknownServerError.code(),
        Err(e) => e.code(),
    };
    encode_response(ctx, &HeartbeatResponse::default().with_error_code(error))
}
