//! EndTxn (key 26), versions 0–4 (transaction version 1; v5 belongs to KIP-890's version 2,
//! which sluice does not offer): commits or aborts the producer's open transaction. Answered
//! once the markers are written to every partition of the transaction and the transaction is
//! complete (see `txn_coordinator` for why that is later than Kafka answers).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse};

use super::add_partitions_to_txn::fenced_for;
use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::shard::Shard;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::EndTxn,
    min_version: 0,
    max_version: 4,
};

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: EndTxnRequest) -> Outcome {
    let transactional_id = request.transactional_id.0.to_string();
    let code = if transactional_id.is_empty() {
        ResponseError::InvalidRequest.code()
    } else {
        let call = TxnCall::EndTxn {
            transactional_id: transactional_id.clone(),
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
            commit: request.committed,
        };
        match txn_coordinator::call(shard, &transactional_id, call).await {
            Some(TxnReply::Done(Ok(()))) => 0,
            Some(TxnReply::Done(Err(e))) => fenced_for(e, ctx.api_version, 2).code(),
            _ => ResponseError::CoordinatorNotAvailable.code(),
        }
    };
    encode_response(ctx, &EndTxnResponse::default().with_error_code(code))
}
