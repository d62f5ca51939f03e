//! EndTxn (key 26): commits or aborts the producer's open transaction. Versions 0–4 are
//! transaction version 1; version 5 is version 2 (KIP-890): the transaction ends at a bumped
//! epoch and the answer carries the producer id and epoch the client continues with. Answered
//! once the markers are written to every partition of the transaction and the transaction is
//! complete (see `txn_coordinator` for why that is later than Kafka answers).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse, ProducerId};

use super::add_partitions_to_txn::fenced_for;
use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::shard::Shard;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::EndTxn,
    min_version: 0,
    max_version: 5,
};

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: EndTxnRequest) -> Outcome {
    let transactional_id = request.transactional_id.0.to_string();
    let answer = if transactional_id.is_empty() {
        Err(ResponseError::InvalidRequest)
    } else {
        let call = TxnCall::EndTxn {
            transactional_id: transactional_id.clone(),
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
            commit: request.committed,
            version_2: ctx.api_version >= 5,
        };
        match txn_coordinator::call(shard, &transactional_id, call).await {
            Some(TxnReply::ProducerId(answer)) => answer,
            _ => Err(ResponseError::CoordinatorNotAvailable),
        }
    };
    let response = match answer {
        Ok((producer_id, epoch)) => EndTxnResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(e) => EndTxnResponse::default()
            .with_error_code(fenced_for(e, ctx.api_version, 2).code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    };
    encode_response(ctx, &response)
}
