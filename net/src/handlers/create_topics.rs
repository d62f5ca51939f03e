//! CreateTopics (key 19): forwarded to core 0, the metadata owner, which validates, persists,
//! and applies the topic on every core before answering.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse};
use uuid::Uuid;

use super::describe_configs::topic_entries;
use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse, NewTopic};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::CreateTopics,
    min_version: 2,
    max_version: 7,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: CreateTopicsRequest,
) -> Outcome {
    let topics: Vec<NewTopic> = request
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            configs: t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect(),
            assignments: t
                .assignments
                .iter()
                .map(|a| {
                    (
                        a.partition_index,
                        a.broker_ids.iter().map(|id| id.0).collect(),
                    )
                })
                .collect(),
        })
        .collect();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let results = match shard
        .call(
            0,
            CoreRequest::CreateTopics {
                topics,
                validate_only: request.validate_only,
            },
        )
        .await
    {
        Some(CoreResponse::Topics(results)) => results,
        _ => Vec::new(),
    };
    let answers = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let Some(r) = results.get(i) else {
                return CreatableTopicResult::default()
                    .with_name(topic_name(name))
                    .with_error_code(ResponseError::RequestTimedOut.code());
            };
            let mut answer = CreatableTopicResult::default()
                .with_name(topic_name(&r.name))
                .with_error_code(r.error)
                .with_error_message(r.message.as_deref().map(str_bytes))
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            if let Some(meta) = &r.meta {
                let configs = topic_entries(meta)
                    .into_iter()
                    .map(|(k, v, source)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(&v)))
                            .with_config_source(source)
                    })
                    .collect();
                answer = answer
                    .with_topic_id(Uuid::from_bytes(meta.id))
                    .with_num_partitions(meta.partitions)
                    .with_replication_factor(
                        meta.states.first().map_or(1, |s| s.replicas.len() as i16),
                    )
                    .with_configs(Some(configs));
            }
            answer
        })
        .collect();
    encode_response(ctx, &CreateTopicsResponse::default().with_topics(answers))
}
