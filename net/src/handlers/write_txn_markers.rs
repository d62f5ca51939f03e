//! WriteTxnMarkers (key 27), v1: writes COMMIT or ABORT markers for a producer to the given
//! partitions. In Kafka the transaction coordinator sends it to partition leaders; clients send
//! it to end a hanging transaction — one a partition holds open but no coordinator will end
//! (`Admin.abortTransaction`, `kafka-transactions.sh abort`). sluice's own coordinator writes
//! markers with a cross-core message instead; this is the operator's entry to the same path,
//! each partition's marker written on its owning core and answered once durable. A marker with
//! an epoch older than the producer's current one gets INVALID_PRODUCER_EPOCH.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{ApiKey, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use sluice_core::TopicPartition;

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::CoreResponse;
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::WriteTxnMarkers,
    min_version: 1,
    max_version: 1,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: WriteTxnMarkersRequest,
) -> Outcome {
    let mut results = Vec::with_capacity(request.markers.len());
    for marker in request.markers {
        let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        let mut errors: BTreeMap<TopicPartition, i16> = BTreeMap::new();
        for t in &marker.topics {
            for p in &t.partition_indexes {
                let tp = TopicPartition::new(t.name.0.to_string(), *p);
                match shard.table.borrow().core_of(&tp.topic, tp.partition) {
                    Some(core) => by_core.entry(core).or_default().push(tp),
                    None => {
                        let error = shard.unserved_error(&tp.topic, tp.partition);
                        errors.insert(tp, error.code());
                    }
                }
            }
        }
        let answers = crate::txn_coordinator::dispatch_markers(
            shard,
            marker.producer_id.0,
            marker.producer_epoch,
            marker.transaction_result,
            by_core,
        );
        for answer in answers.await {
            if let Some(CoreResponse::Markers(list)) = answer {
                errors.extend(list);
            }
        }
        let topics = marker
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|p| {
                        let tp = TopicPartition::new(t.name.0.to_string(), *p);
                        let code = errors
                            .get(&tp)
                            .copied()
                            .unwrap_or(ResponseError::NotLeaderOrFollower.code());
                        WritableTxnMarkerPartitionResult::default()
                            .with_partition_index(*p)
                            .with_error_code(code)
                    })
                    .collect();
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    encode_response(
        ctx,
        &WriteTxnMarkersResponse::default().with_markers(results),
    )
}
