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
            let (answer, group_error) =
                match fetch(shard, &g.group_id.0, topics, request.require_stable).await {
                    Ok(answer) => (answer, 0),
                    Err(e) => (Vec::new(), e.code()),
                };
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
                    .with_error_code(group_error)
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
        let asked = topics.clone();
        let (answer, group_error) = match fetch(shard, &request.group_id.0, topics, stable).await {
            Ok(answer) => (answer, 0),
            // v2+ carries the error at the top; v1 only per partition, on the asked ones.
            Err(e) => (
                asked
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                    .collect(),
                e.code(),
            ),
        };
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
                                let error = match group_error {
                                    0 => error_of(&c),
                                    e => e,
                                };
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
        OffsetFetchResponse::default()
            .with_error_code(group_error)
            .with_topics(topics)
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
) -> Result<GroupAnswer, kafka_protocol::error::ResponseError> {
    use kafka_protocol::error::ResponseError;
    let asked = topics.clone();
    let found = match offsets::coordinator(shard, group) {
        // No `__consumer_offsets` yet: nothing was ever committed.
        Err(ResponseError::CoordinatorNotAvailable) => Vec::new(),
        // Another broker coordinates the group: the client must ask it, never read "nothing
        // committed" here.
        Err(e) => return Err(e),
        Ok(core) => {
            let call = CoreRequest::FetchOffsets {
                group: group.to_string(),
                topics,
                require_stable,
            };
            match shard.call(core, call).await {
                Some(CoreResponse::Fetched(found)) => found,
                Some(CoreResponse::NotCoordinating(code)) => {
                    return Err(
                        ResponseError::try_from_code(code).unwrap_or(ResponseError::NotCoordinator)
                    )
                }
                _ => return Err(ResponseError::CoordinatorNotAvailable),
            }
        }
    };
    Ok(match asked {
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
    })
}
