//! OffsetForLeaderEpoch (key 23): for each partition and leader epoch asked about, the largest
//! epoch at most that one in this leader's leader-epoch checkpoint and the offset where it ends
//! (the start of the next epoch, or the log end for the current one) — KIP-101/279. Followers
//! use it to find where their log diverges from the leader's before they copy; consumers (the
//! Java client) use it to detect that their position was truncated away after a leader change.
//!
//! v2+ carries the asker's current leader epoch: older than this leader's is
//! FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH (the asker has fresher metadata). An epoch
//! older than every epoch here answers epoch -1 and offset -1, as Kafka's UNDEFINED.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::future::join_all;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{ApiKey, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_core::TopicPartition;

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::OffsetForLeaderEpoch,
    min_version: 0,
    max_version: 4,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: OffsetForLeaderEpochRequest,
) -> Outcome {
    let mut by_core: BTreeMap<usize, Vec<(TopicPartition, i32, i32)>> = BTreeMap::new();
    let mut early: BTreeMap<TopicPartition, i16> = BTreeMap::new();
    for t in &request.topics {
        for p in &t.partitions {
            let tp = TopicPartition::new(t.topic.0.to_string(), p.partition);
            let current = if ctx.api_version >= 2 {
                p.current_leader_epoch
            } else {
                -1
            };
            let core = shard.table.borrow().core_of(&tp.topic, tp.partition);
            match core {
                Some(core) => by_core
                    .entry(core)
                    .or_default()
                    .push((tp, current, p.leader_epoch)),
                None => {
                    let error = shard.unserved_error(&tp.topic, tp.partition);
                    early.insert(tp, error.code());
                }
            }
        }
    }
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| shard.dispatch(core, CoreRequest::EpochEndOffsets { partitions }))
        .collect();
    let mut found = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::EpochEndOffsets(list)) = answer {
            for (tp, error, epoch, end) in list {
                found.insert(tp, (error, epoch, end));
            }
        }
    }
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let tp = TopicPartition::new(t.topic.0.to_string(), p.partition);
                    let (error, epoch, end) = match (found.remove(&tp), early.get(&tp)) {
                        (Some(answer), _) => answer,
                        (None, Some(error)) => (*error, -1, -1),
                        (None, None) => (
                            kafka_protocol::error::ResponseError::NotLeaderOrFollower.code(),
                            -1,
                            -1,
                        ),
                    };
                    EpochEndOffset::default()
                        .with_error_code(error)
                        .with_partition(p.partition)
                        .with_leader_epoch(epoch)
                        .with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    encode_response(
        ctx,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    )
}
