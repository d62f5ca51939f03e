//! AddPartitionsToTxn (key 24), the client versions 0–3: adds partitions to the producer's open
//! transaction (starting one if none is open) on the transaction's coordinating core. Versions
//! 4+ are Kafka's broker-to-coordinator batch (KIP-890) and are not offered.
//!
//! As in Kafka, a partition that does not exist fails the whole request: it gets
//! UNKNOWN_TOPIC_OR_PARTITION and every other partition OPERATION_NOT_ATTEMPTED. Otherwise the
//! coordinator's one answer applies to every partition. Versions below 2 get
//! INVALID_PRODUCER_EPOCH where newer ones get PRODUCER_FENCED.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey};

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::shard::Shard;
use crate::txn_coordinator::{self, TxnCall, TxnReply};

pub const API: Api = Api {
    key: ApiKey::AddPartitionsToTxn,
    min_version: 0,
    max_version: 3,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: AddPartitionsToTxnRequest,
) -> Outcome {
    let transactional_id = request.v3_and_below_transactional_id.0.to_string();
    let partitions: Vec<(String, i32)> = request
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect();
    let unknown: Vec<bool> = {
        let topics = shard.topics.borrow();
        partitions
            .iter()
            .map(|(t, p)| !topics.get(t).is_some_and(|m| (0..m.partitions).contains(p)))
            .collect()
    };
    let codes: Vec<i16> = if unknown.iter().any(|u| *u) {
        unknown
            .iter()
            .map(|u| {
                if *u {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::OperationNotAttempted.code()
                }
            })
            .collect()
    } else {
        let code = if transactional_id.is_empty() {
            ResponseError::InvalidRequest.code()
        } else {
            let call = TxnCall::AddPartitions {
                transactional_id: transactional_id.clone(),
                producer_id: request.v3_and_below_producer_id.0,
                producer_epoch: request.v3_and_below_producer_epoch,
                partitions: partitions.clone(),
            };
            match txn_coordinator::call(shard, &transactional_id, call).await {
                Some(TxnReply::Done(Ok(()))) => 0,
                Some(TxnReply::Done(Err(e))) => fenced_for(e, ctx.api_version, 2).code(),
                _ => ResponseError::CoordinatorNotAvailable.code(),
            }
        };
        vec![code; partitions.len()]
    };
    let mut results: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for ((topic, partition), code) in partitions.iter().zip(codes) {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(*partition)
            .with_partition_error_code(code);
        match results.iter_mut().find(|r| r.name.0.as_str() == topic) {
            Some(r) => r.results_by_partition.push(result),
            None => results.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(super::topic_name(topic))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    let response =
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    encode_response(ctx, &response)
}

/// PRODUCER_FENCED as the request's version knows it: versions below `since` have only
/// INVALID_PRODUCER_EPOCH.
pub fn fenced_for(e: ResponseError, version: i16, since: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < since {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}
