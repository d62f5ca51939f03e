//! InitProducerId (key 22): a producer id for an idempotent producer, from core 0's allocator
//! (`producer_ids`), always with epoch 0 — as Kafka does for a producer without a transactional
//! id, whatever producer id and epoch a v3+ request carries (those matter only to transactions).
//!
//! A v3+ request giving only one of producer id and epoch gets INVALID_REQUEST, as in Kafka.
//! Transactions are not implemented yet: a request with a transactional id gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which clients treat as fatal instead of retrying, and
//! an empty transactional id gets INVALID_REQUEST, as in Kafka.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::InitProducerId,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: InitProducerIdRequest,
) -> Outcome {
    let failed = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    // v3+ (KIP-360): the producer id and epoch are both given or both -1.
    let consistent = (request.producer_id.0 == -1) == (request.producer_epoch == -1);
    let response = match request.transactional_id {
        _ if !consistent => failed(ResponseError::InvalidRequest),
        Some(id) if id.is_empty() => failed(ResponseError::InvalidRequest),
        Some(_) => failed(ResponseError::TransactionalIdAuthorizationFailed),
        None => match shard.call(0, CoreRequest::AllocateProducerId).await {
            Some(CoreResponse::ProducerId(Ok(id))) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Some(CoreResponse::ProducerId(Err(why))) => {
                eprintln!("sluice: InitProducerId: cannot allocate a producer id: {why}");
                failed(ResponseError::KafkaStorageError)
            }
            _ => failed(ResponseError::CoordinatorNotAvailable),
        },
    };
    encode_response(ctx, &response)
}
