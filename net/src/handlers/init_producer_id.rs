//! InitProducerId (key 22). Without a transactional id: a producer id for an idempotent
//! producer, from core 0's allocator (`producer_ids`), always with epoch 0 — as Kafka does,
//! whatever producer id and epoch a v3+ request carries. With one: the transaction
//! coordinator's answer (`txn_coordinator`): a new epoch for the id, fencing older producers
//! with the same id and aborting their open transaction first (CONCURRENT_TRANSACTIONS until
//! that is done, which clients retry).
//!
//! A v3+ request giving only one of producer id and epoch gets INVALID_REQUEST and an empty
//! transactional id INVALID_REQUEST, as in Kafka; versions below 4 get INVALID_PRODUCER_EPOCH
//! where newer ones get PRODUCER_FENCED.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::add_partitions_to_txn::fenced_for;
use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

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
        Some(id) => {
            let expected = (request.producer_id.0 != -1)
                .then_some((request.producer_id.0, request.producer_epoch));
            let call = TxnCall::InitProducerId {
                transactional_id: id.0.to_string(),
                timeout_ms: request.transaction_timeout_ms,
                expected,
            };
            match txn_coordinator::call(shard, id.0.as_str(), call).await {
                Some(TxnReply::ProducerId(Ok((pid, epoch)))) => InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch),
                Some(TxnReply::ProducerId(Err(e))) => failed(fenced_for(e, ctx.api_version, 4)),
                _ => failed(ResponseError::CoordinatorNotAvailable),
            }
        }
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
