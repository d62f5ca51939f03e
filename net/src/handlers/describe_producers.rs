//! DescribeProducers (key 61): the producers each partition remembers — id, epoch, last
//! sequence and timestamp, and the first offset of an open transaction — from the cores that
//! own the partitions (what `kafka-transactions.sh describe-producers` shows operators).

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    ApiKey, DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};
use sluice_core::TopicPartition;

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeProducers,
    min_version: 0,
    max_version: 0,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DescribeProducersRequest,
) -> Outcome {
    let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
    for t in &request.topics {
        for p in &t.partition_indexes {
            let tp = TopicPartition::new(t.name.0.to_string(), *p);
            if let Some(core) = shard.table.borrow().core_of(&tp.topic, tp.partition) {
                by_core.entry(core).or_default().push(tp);
            }
        }
    }
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(core, CoreRequest::DescribeProducers { partitions })
        })
        .collect();
    let mut found = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::Producers(list)) = answer {
            found.extend(list);
        }
    }
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    let tp = TopicPartition::new(t.name.0.to_string(), *p);
                    match found.remove(&tp) {
                        Some(Ok(producers)) => PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_active_producers(
                                producers
                                    .into_iter()
                                    .map(|(id, e)| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(id))
                                            .with_producer_epoch(i32::from(e.epoch))
                                            .with_last_sequence(
                                                e.batches.back().map_or(-1, |b| b.last_seq),
                                            )
                                            .with_last_timestamp(e.last_timestamp)
                                            .with_coordinator_epoch(-1)
                                            .with_current_txn_start_offset(
                                                e.ongoing_txn.unwrap_or(-1),
                                            )
                                    })
                                    .collect(),
                            ),
                        Some(Err(code)) => PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(code),
                        None => PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    encode_response(
        ctx,
        &DescribeProducersResponse::default().with_topics(topics),
    )
}
