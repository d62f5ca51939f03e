//! OffsetFetch (key 9): the offsets a group committed, from the group's coordinating core.
//! A partition without a committed offset answers offset -1 and empty metadata with no error,
//! as in Kafka; no topics (null, v2+) asks for every committed offset of the group; v8+ asks
//! for several groups at once. With `require_stable` (v7+), a partition whose offsets a
//! transaction has sent but not yet decided answers UNSTABLE_OFFSET_COMMIT, which consumers
//! retry — so a consumer never starts from an offset an open transaction is about to replace.

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{ApiKey, OffsetFetchRequest, OffsetFetchResponse};

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::offsets::{self, Committed};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::OffsetFetch,
    min_version: 1,
    max_version: 9,
};

/// One group's answer: per topic (in request order, or sorted for "all"), its partitions.
type GroupAnswer = Vec<(String, Vec<(i32, Option<Committed>)>)>;

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: OffsetFetchRequest,
) -> Outcome {
    let response = if ctx.api_version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for g in request.groups {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let answer = fetch(shard, &g.group_id.0, topics, request.require_stable).await;
            let topics = answer
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(topic_name(&name))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, c)| {
                                    let error = error_of(&c);
                                    let (offset, epoch, metadata) = fields(c);
                                    OffsetFetchResponsePartitions::default()
                                        .with_error_code(error)
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(Some(str_bytes(&metadata)))
                                })
                                .collect(),
                        )
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics),
            );
        }
        OffsetFetchResponse::default().with_groups(groups)
    } else {
        let topics = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let stable = ctx.api_version >= 7 && request.require_stable;
        let answer = fetch(shard, &request.group_id.0, topics, stable).await;
        let with_epoch = ctx.api_version >= 5;
        let topics = answer
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(p, c)| {
                                let error = error_of(&c);
                                let (offset, epoch, metadata) = fields(c);
                                let partition = OffsetFetchResponsePartition::default()
                                    .with_error_code(error)
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_metadata(Some(str_bytes(&metadata)));
                                if with_epoch {
                                    partition.with_committed_leader_epoch(epoch)
                                } else {
                                    partition
                                }
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    };
    encode_response(ctx, &response)
}

fn error_of(c: &Option<Committed>) -> i16 {
    if c.as_ref().is_some_and(Committed::is_unstable) {
        kafka_protocol::error::ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

fn fields(c: Option<Committed>) -> (i64, i32, String) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, c.metadata),
        None => (-1, -1, String::new()),
    }
}

/// The group's committed offsets, grouped by topic.
async fn fetch(
    shard: &Rc<Shard>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> GroupAnswer {
    let asked = topics.clone();
    let found = match offsets::coordinator_core(shard, group) {
        // No `__consumer_offsets` yet: nothing was ever committed.
        None => Vec::new(),
        Some(core) => {
            let call = CoreRequest::FetchOffsets {
                group: group.to_string(),
                topics,
                require_stable,
            };
            match shard.call(core, call).await {
                Some(CoreResponse::Fetched(found)) => found,
                _ => Vec::new(),
            }
        }
    };
    match asked {
        Some(asked) => asked
            .into_iter()
            .map(|(name, partitions)| {
                let answers = partitions
                    .into_iter()
                    .map(|p| {
                        let c = found
                            .iter()
                            .find(|(t, q, _)| *t == name && *q == p)
                            .and_then(|f| f.2.clone());
                        (p, c)
                    })
                    .collect();
                (name, answers)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<(i32, Option<Committed>)>> =
                Default::default();
            for (t, p, c) in found {
                by_topic.entry(t).or_default().push((p, c));
            }
            by_topic.into_iter().collect()
        }
    }
}
