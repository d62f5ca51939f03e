//! CreatePartitions (key 37): grows topics to a new partition count, with the new partitions
//! placed like the topic's others or assigned by the client. Forwarded to core 0, which
//! decides (see `partitions`), commits the change (cluster: through the metadata quorum;
//! single node: on disk) and applies it on every core before answering. Errors per topic:
//! UNKNOWN_TOPIC_OR_PARTITION, INVALID_PARTITIONS (not more than now), INVALID_REPLICA_ASSIGNMENT,
//! INVALID_REPLICATION_FACTOR (fewer live brokers than replicas), INVALID_REQUEST (a topic
//! named twice, or an internal topic).

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{ApiKey, CreatePartitionsRequest, CreatePartitionsResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::partitions::PartitionsWanted;
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::CreatePartitions,
    min_version: 0,
    max_version: 3,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: CreatePartitionsRequest,
) -> Outcome {
    let mut seen = HashSet::new();
    let repeated: HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|name| !seen.insert(name.clone()))
        .collect();
    let wanted: Vec<PartitionsWanted> = request
        .topics
        .iter()
        .filter(|t| !repeated.contains(t.name.0.as_str()))
        .map(|t| PartitionsWanted {
            topic: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|a| a.broker_ids.iter().map(|id| id.0).collect())
                    .collect()
            }),
        })
        .collect();
    let names: Vec<String> = wanted.iter().map(|w| w.topic.clone()).collect();
    let answers = match shard
        .call(
            0,
            CoreRequest::CreatePartitions {
                topics: wanted,
                validate_only: request.validate_only,
            },
        )
        .await
    {
        Some(CoreResponse::Answers(answers)) => answers,
        _ => Vec::new(),
    };
    let mut results: Vec<CreatePartitionsTopicResult> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (error, message) = answers.get(i).cloned().unwrap_or((
                ResponseError::RequestTimedOut.code(),
                Some("the metadata owner did not answer".into()),
            ));
            CreatePartitionsTopicResult::default()
                .with_name(super::topic_name(name))
                .with_error_code(error)
                .with_error_message(message.as_deref().map(str_bytes))
        })
        .collect();
    for name in repeated {
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(super::topic_name(&name))
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(str_bytes("Duplicate topic in request."))),
        );
    }
    encode_response(
        ctx,
        &CreatePartitionsResponse::default().with_results(results),
    )
}
