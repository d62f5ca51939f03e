//! DescribeConfigs (key 32): a topic's effective configs (its overrides marked as dynamic topic
//! configs, the rest as defaults) and this broker's settings, as `kafka-configs.sh --describe`
//! and `Admin.describeConfigs` ask for them.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::metadata::TopicMeta;
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeConfigs,
    min_version: 1,
    max_version: 4,
};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources, as DescribeConfigs and CreateTopics report them.
pub const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
pub const SOURCE_DEFAULT: i8 = 5;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

/// Kafka's declared type of a config, reported from v3 on.
fn config_type(name: &str) -> i8 {
    match name {
        "segment.bytes"
        | "max.message.bytes"
        | "num.partitions"
        | "node.id"
        | "broker.id"
        | "log.segment.bytes"
        | "log.index.interval.bytes"
        | "message.max.bytes"
        | "socket.request.max.bytes" => TYPE_INT,
        "default.replication.factor" => 4, // SHORT
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        "cleanup.policy" | "listeners" | "advertised.listeners" | "log.dirs" => TYPE_LIST,
        "message.timestamp.type" | "log.message.timestamp.type" => TYPE_STRING,
        _ => TYPE_LONG,
    }
}

/// A topic's effective configs with their sources: overrides given at creation are dynamic
/// topic configs, the rest come from the broker's defaults.
pub fn topic_entries(meta: &TopicMeta) -> Vec<(&'static str, String, i8)> {
    meta.config
        .entries()
        .into_iter()
        .map(|(k, v)| {
            let source = if meta.config.overrides.contains_key(k) {
                SOURCE_DYNAMIC_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            (k, v, source)
        })
        .collect()
}

pub fn handle(shard: &Shard, ctx: &RequestContext, request: DescribeConfigsRequest) -> Outcome {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.as_str();
            let wanted = |key: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries: Vec<(&str, String, i8)> = match resource.resource_type {
                RESOURCE_TOPIC => {
                    let topics = shard.topics.borrow();
                    let Some(meta) = topics.get(name) else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "Topic '{name}' does not exist."
                            ))));
                    };
                    topic_entries(meta)
                }
                RESOURCE_BROKER => {
                    let own = shard.broker.node_id.to_string();
                    if !name.is_empty() && name != own {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "broker '{name}' is not this broker ({own})"
                            ))));
                    }
                    shard
                        .broker
                        .entries()
                        .into_iter()
                        .map(|(k, v)| (k, v, SOURCE_STATIC_BROKER))
                        .collect()
                }
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "resource type {other} has no configs in sluice"
                        ))));
                }
            };
            let configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted(k))
                .map(|(k, v, source)| {
                    let mut entry = DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(k))
                        .with_value(Some(str_bytes(&v)))
                        .with_read_only(resource.resource_type == RESOURCE_BROKER)
                        .with_config_source(source);
                    if ctx.api_version >= 3 {
                        entry = entry.with_config_type(config_type(k));
                    }
                    entry
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    encode_response(
        ctx,
        &DescribeConfigsResponse::default().with_results(results),
    )
}
