//! Metadata (key 3): brokers, topics and partition leaders, from this core's copy of the topic
//! table. Unknown topics are created on the spot when the client allows it and
//! `auto.create.topics.enable` is true; unlike Kafka, which first answers LEADER_NOT_AVAILABLE,
//! the topic is created before answering, so the client can produce at once.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse};
use sluice_core::topic::validate_topic_name;
use uuid::Uuid;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::metadata::TopicMeta;
use crate::router::{CoreRequest, CoreResponse, NewTopic};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::Metadata,
    min_version: 0,
    max_version: 12,
};

enum Wanted {
    Name(String),
    Id(Uuid),
}

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: MetadataRequest) -> Outcome {
    let broker = &shard.broker;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let wanted: Option<Vec<Wanted>> = match request.topics {
        None => None,
        Some(list) if list.is_empty() && ctx.api_version == 0 => None,
        Some(list) => Some(
            list.into_iter()
                // A lookup by topic id (v10+) leaves the name null, or empty as the Java client
                // sends it.
                .map(|t| match t.name {
                    Some(name) if !name.is_empty() || t.topic_id.is_nil() => {
                        Wanted::Name(name.0.to_string())
                    }
                    _ => Wanted::Id(t.topic_id),
                })
                .collect(),
        ),
    };
    let auto_create = broker.auto_create_topics_enable
        && (ctx.api_version < 4 || request.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match wanted {
        None => {
            let all: Vec<TopicMeta> = shard.topics.borrow().values().cloned().collect();
            topics.extend(all.iter().map(|m| describe(shard, m)));
        }
        Some(list) => {
            for wanted in list {
                topics.push(describe_wanted(shard, wanted, auto_create).await);
            }
        }
    }
    let cluster = shard.cluster.borrow().clone();
    let brokers = cluster
        .brokers
        .iter()
        .filter(|b| !b.fenced)
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.as_deref().map(str_bytes))
        })
        .collect();
    let response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&shard.cluster_id)))
        .with_controller_id(BrokerId(cluster.controller_id))
        .with_cluster_authorized_operations(i32::MIN)
        .with_topics(topics);
    encode_response(ctx, &response)
}

async fn describe_wanted(
    shard: &Rc<Shard>,
    wanted: Wanted,
    auto_create: bool,
) -> MetadataResponseTopic {
    let name = match wanted {
        Wanted::Id(id) => {
            let found = shard
                .topics
                .borrow()
                .values()
                .find(|m| m.id == *id.as_bytes())
                .cloned();
            return match found {
                Some(meta) => describe(shard, &meta),
                None => MetadataResponseTopic::default()
                    .with_topic_id(id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
            };
        }
        Wanted::Name(name) => name,
    };
    let error_topic = |code: i16| {
        MetadataResponseTopic::default()
            .with_name(Some(topic_name(&name)))
            .with_error_code(code)
    };
    if validate_topic_name(&name).is_err() {
        return error_topic(ResponseError::InvalidTopicException.code());
    }
    let existing = shard.topics.borrow().get(&name).cloned();
    if let Some(meta) = existing {
        return describe(shard, &meta);
    }
    if !auto_create {
        return error_topic(ResponseError::UnknownTopicOrPartition.code());
    }
    let create = CoreRequest::CreateTopics {
        topics: vec![NewTopic {
            name: name.clone(),
            partitions: -1,
            replication_factor: -1,
            configs: Vec::new(),
            assignments: Vec::new(),
        }],
        validate_only: false,
    };
    let meta = match shard.call(0, create).await {
        Some(CoreResponse::Topics(results)) => {
            let result = results.into_iter().next();
            match result {
                Some(r) if r.error == 0 || r.error == ResponseError::TopicAlreadyExists.code() => {
                    shard.topics.borrow().get(&name).cloned()
                }
                _ => None,
            }
        }
        _ => None,
    };
    match meta {
        Some(meta) => describe(shard, &meta),
        None => error_topic(ResponseError::LeaderNotAvailable.code()),
    }
}

/// A topic's partitions as the metadata says: leader (LEADER_NOT_AVAILABLE without one),
/// leader epoch, replicas, ISR, and the replicas on brokers that are not alive.
fn describe(shard: &Shard, meta: &TopicMeta) -> MetadataResponseTopic {
    let cluster = shard.cluster.borrow();
    let alive = |id: &i32| cluster.broker(*id).is_some_and(|b| !b.fenced);
    let ids = |list: &[i32]| list.iter().map(|id| BrokerId(*id)).collect::<Vec<_>>();
    let partitions = meta
        .states
        .iter()
        .enumerate()
        .map(|(p, state)| {
            let offline: Vec<i32> = state
                .replicas
                .iter()
                .copied()
                .filter(|r| !alive(r))
                .collect();
            MetadataResponsePartition::default()
                .with_error_code(if state.leader < 0 {
                    ResponseError::LeaderNotAvailable.code()
                } else {
                    0
                })
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(state.leader))
                .with_leader_epoch(state.leader_epoch)
                .with_replica_nodes(ids(&state.replicas))
                .with_isr_nodes(ids(&state.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&meta.name)))
        .with_is_internal(
            meta.name == crate::offsets::OFFSETS_TOPIC
                || meta.name == crate::transactions::TXN_TOPIC,
        )
        .with_topic_id(Uuid::from_bytes(meta.id))
        .with_topic_authorized_operations(i32::MIN)
        .with_partitions(partitions)
}
