//! FindCoordinator (key 10): the coordinator of a group is this broker (the one node), once
//! `__consumer_offsets` exists — created here at the first request for a group. Kafka answers
//! COORDINATOR_NOT_AVAILABLE until its asynchronous creation is done; sluice creates it before
//! answering. Versions 4+ carry a batch of keys, answered one coordinator each. Like Kafka, the
//! empty group id is a valid key.
//!
//! The coordinator of a transactional id (key type 1) is this broker too, once
//! `__transaction_state` exists — created here at the first request for one. Any other key type
//! is INVALID_REQUEST.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::offsets;
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::FindCoordinator,
    min_version: 0,
    max_version: 5,
};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: FindCoordinatorRequest,
) -> Outcome {
    let keys: Vec<StrBytes> = if ctx.api_version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        let failure = match request.key_type {
            KEY_TYPE_GROUP => (!offsets::ensure_topic(shard).await).then_some((
                ResponseError::CoordinatorNotAvailable,
                "__consumer_offsets could not be created",
            )),
            KEY_TYPE_TRANSACTION => {
                (!crate::txn_coordinator::ensure_topic(shard).await).then_some((
                    ResponseError::CoordinatorNotAvailable,
                    "__transaction_state could not be created",
                ))
            }
            _ => Some((ResponseError::InvalidRequest, "unknown key type")),
        };
        let broker = &shard.broker;
        let found = failure.is_none();
        let message = failure.map_or("", |f| f.1);
        coordinators.push(
            Coordinator::default()
                .with_key(key)
                .with_error_code(failure.map_or(0, |f| f.0.code()))
                .with_error_message((!found).then(|| str_bytes(message)))
                .with_node_id(BrokerId(if found { broker.node_id } else { -1 }))
                .with_host(str_bytes(if found { &broker.advertised_host } else { "" }))
                .with_port(if found {
                    i32::from(broker.advertised_port)
                } else {
                    -1
                }),
        );
    }
    let response = if ctx.api_version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let c = coordinators.pop().unwrap_or_default();
        FindCoordinatorResponse::default()
            .with_error_code(c.error_code)
            .with_error_message(c.error_message)
            .with_node_id(c.node_id)
            .with_host(c.host)
            .with_port(c.port)
    };
    encode_response(ctx, &response)
}
