//! DeleteGroups (key 42): removes groups without members and their committed offsets
//! (NON_EMPTY_GROUP for one with members, GROUP_ID_NOT_FOUND for one that does not exist).

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsRequest, DeleteGroupsResponse};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::groups::{self, GroupCall, GroupReply};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DeleteGroups,
    min_version: 0,
    max_version: 2,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DeleteGroupsRequest,
) -> Outcome {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let name = id.0.to_string();
        let code = match groups::route(
            shard,
            &name,
            GroupCall::Delete {
                group: name.clone(),
            },
        )
        .await
        {
            Ok(GroupReply::Delete(code)) => code,
            Ok(_) => kafka_protocol::error::ResponseError::UnknownServerError.code(),
            Err(e) => e.code(),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    encode_response(ctx, &DeleteGroupsResponse::default().with_results(results))
}
