//! DescribeTransactions (key 65): the coordinator's state of each transactional id — its
//! state, producer id and epoch, timeout, start time and partitions — from the core that
//! coordinates it. An id the coordinator does not know gets TRANSACTIONAL_ID_NOT_FOUND.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId,
};

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::shard::Shard;
use crate::transactions::TxnMetadata;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::DescribeTransactions,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DescribeTransactionsRequest,
) -> Outcome {
    let mut states = Vec::with_capacity(request.transactional_ids.len());
    for id in request.transactional_ids {
        let name = id.0.to_string();
        let call = TxnCall::Describe {
            ids: Some(vec![name.clone()]),
        };
        let state = match txn_coordinator::call_existing(shard, &name, call).await {
            Some(TxnReply::States(mut found)) => match found.pop().and_then(|(_, m)| m) {
                Some(meta) => describe(&meta),
                None => TransactionState::default()
                    .with_error_code(ResponseError::TransactionalIdNotFound.code()),
            },
            // Another broker coordinates it, or this one is still loading it: the client
            // looks the coordinator up again, or retries.
            Some(TxnReply::Failed(e)) => TransactionState::default().with_error_code(e.code()),
            // No `__transaction_state` yet: no transactional id was ever seen.
            _ => TransactionState::default()
                .with_error_code(ResponseError::TransactionalIdNotFound.code()),
        };
        states.push(state.with_transactional_id(id));
    }
    encode_response(
        ctx,
        &DescribeTransactionsResponse::default().with_transaction_states(states),
    )
}

fn describe(meta: &TxnMetadata) -> TransactionState {
    let mut topics: Vec<TopicData> = Vec::new();
    for (topic, partition) in &meta.partitions {
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*partition),
            _ => topics.push(
                TopicData::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(vec![*partition]),
            ),
        }
    }
    TransactionState::default()
        .with_transaction_state(str_bytes(meta.state.name()))
        .with_transaction_timeout_ms(meta.timeout_ms)
        .with_transaction_start_time_ms(meta.start_ms)
        .with_producer_id(ProducerId(meta.producer_id))
        .with_producer_epoch(meta.producer_epoch)
        .with_topics(topics)
}
