//! ListTransactions (key 66), v0–2: every transactional id the coordinators know, gathered from
//! every core, filtered as Kafka filters: by state names (unknown names are echoed back in
//! `unknown_state_filters`), by producer ids, by how long the transaction has been open
//! (v1, `duration_filter` ms; -1 none) and by a regular expression over the id (v2, matched
//! against the whole id; INVALID_REGULAR_EXPRESSION when it does not compile).

use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ApiKey, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::{now_ms, Shard};
use crate::txn_coordinator::{TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::ListTransactions,
    min_version: 0,
    max_version: 2,
};

/// Kafka's state names (including the two a coordinator never reports as current).
const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ListTransactionsRequest,
) -> Outcome {
    let pattern = match request.transactional_id_pattern.as_deref() {
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(r) => Some(r),
            Err(_) => {
                let response = ListTransactionsResponse::default()
                    .with_error_code(ResponseError::InvalidRegularExpression.code());
                return encode_response(ctx, &response);
            }
        },
        _ => None,
    };
    let unknown: Vec<_> = request
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let calls: Vec<_> = (0..shard.cores())
        .map(|core| shard.dispatch(core, CoreRequest::Txn(TxnCall::Describe { ids: None })))
        .collect();
    let now = now_ms();
    let mut states = Vec::new();
    for answer in join_all(calls).await {
        let Some(CoreResponse::Txn(TxnReply::States(found))) = answer else {
            continue;
        };
        for (id, meta) in found {
            let Some(meta) = meta else { continue };
            let state_ok = request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == meta.state.name());
            let producer_ok = request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|p| p.0 == meta.producer_id);
            let duration_ok = request.duration_filter < 0
                || (meta.start_ms >= 0
                    && now.saturating_sub(meta.start_ms) >= request.duration_filter);
            let id_ok = pattern.as_ref().is_none_or(|r| r.is_match(&id));
            if state_ok && producer_ok && duration_ok && id_ok {
                states.push(
                    TransactionState::default()
                        .with_transactional_id(TransactionalId(str_bytes(&id)))
                        .with_producer_id(ProducerId(meta.producer_id))
                        .with_transaction_state(str_bytes(meta.state.name())),
                );
            }
        }
    }
    let response = ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states);
    encode_response(ctx, &response)
}
