//! FindCoordinator (key 10): the coordinator of a group is the broker leading the group's
//! partition of `__consumer_offsets` (on a single node, this one), once the topic exists —
//! created here at the first request for a group. Kafka answers
//! COORDINATOR_NOT_AVAILABLE until its asynchronous creation is done; sluice creates it before
//! answering. Versions 4+ carry a batch of keys, answered one coordinator each. Like Kafka, the
//! empty group id is a valid key.
//!
//! The coordinator of a transactional id (key type 1) is the broker leading the id's partition
//! of `__transaction_state`, once it exists — created here at the first request for one. Any
//! other key type is INVALID_REQUEST.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::metadata::BrokerEndpoint;
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
        let topic = match request.key_type {
            KEY_TYPE_GROUP => offsets::ensure_topic(shard)
                .await
                .then_some(offsets::OFFSETS_TOPIC)
                .ok_or((
                    ResponseError::CoordinatorNotAvailable,
                    "__consumer_offsets could not be created",
                )),
            KEY_TYPE_TRANSACTION => crate::txn_coordinator::ensure_topic(shard)
                .await
                .then_some(crate::transactions::TXN_TOPIC)
                .ok_or((
                    ResponseError::CoordinatorNotAvailable,
                    "__transaction_state could not be created",
                )),
            _ => Err((ResponseError::InvalidRequest, "unknown key type")),
        };
        let found = topic.and_then(|topic| {
            coordinator_of(shard, topic, &key).ok_or((
                ResponseError::CoordinatorNotAvailable,
                "the coordinator's partition has no leader",
            ))
        });
        coordinators.push(match found {
            Ok(broker) => Coordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(broker.id))
                .with_host(str_bytes(&broker.host))
                .with_port(i32::from(broker.port)),
            Err((error, message)) => Coordinator::default()
                .with_key(key)
                .with_error_code(error.code())
                .with_error_message(Some(str_bytes(message)))
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1),
        });
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

/// The live broker leading `key`'s partition of the coordinator topic `topic`.
fn coordinator_of(shard: &Shard, topic: &str, key: &str) -> Option<BrokerEndpoint> {
    let leader = {
        let topics = shard.topics.borrow();
        let meta = topics.get(topic)?;
        meta.leader(offsets::partition_for(key, meta.partitions))?
    };
    shard
        .cluster
        .borrow()
        .broker(leader)
        .filter(|b| !b.fenced)
        .cloned()
}
