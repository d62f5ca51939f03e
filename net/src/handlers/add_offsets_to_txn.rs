//! AddOffsetsToTxn (key 25): adds the group's `__consumer_offsets` partition to the producer's
//! open transaction, so that its TxnOffsetCommit is decided by the transaction's marker. The
//! partition is the group's (Kafka's hash), whether or not the topic exists yet; it is created
//! here if needed, as FindCoordinator would.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, ApiKey};

use super::add_partitions_to_txn::fenced_for;
use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::offsets;
use crate::shard::Shard;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::AddOffsetsToTxn,
    min_version: 0,
    max_version: 4,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: AddOffsetsToTxnRequest,
) -> Outcome {
    let transactional_id = request.transactional_id.0.to_string();
    let code = if transactional_id.is_empty() {
        ResponseError::InvalidRequest.code()
    } else if !offsets::ensure_topic(shard).await {
        ResponseError::CoordinatorNotAvailable.code()
    } else {
        let partitions = shard
            .topics
            .borrow()
            .get(offsets::OFFSETS_TOPIC)
            .map_or(1, |t| t.partitions);
        let partition = offsets::partition_for(request.group_id.0.as_str(), partitions);
        let call = TxnCall::AddPartitions {
            transactional_id: transactional_id.clone(),
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
            partitions: vec![(offsets::OFFSETS_TOPIC.to_string(), partition)],
        };
        match txn_coordinator::call(shard, &transactional_id, call).await {
            Some(TxnReply::Done(Ok(()))) => 0,
            Some(TxnReply::Done(Err(e))) => fenced_for(e, ctx.api_version, 2).code(),
            _ => ResponseError::CoordinatorNotAvailable.code(),
        }
    };
    encode_response(
        ctx,
        &AddOffsetsToTxnResponse::default().with_error_code(code),
    )
}
