//! Topic creation and deletion, run on core 0 (the metadata owner): validate, persist, then
//! broadcast the change to every core and wait until each has applied it, so that once a client
//! hears "created", every core can serve the topic.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use sluice_core::topic::{validate_topic_name, TopicConfig};
use sluice_replication::PartitionState;

use crate::metadata::{self, TopicMeta};
use crate::router::{CoreRequest, NewTopic, TopicChange, TopicResult};
use crate::shard::Shard;

fn failure(name: String, error: ResponseError, message: String) -> TopicResult {
    TopicResult {
        name,
        error: error.code(),
        message: Some(message),
        meta: None,
    }
}

pub async fn create(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<TopicResult> {
    assert_eq!(shard.core_id, 0, "topics are created by the metadata owner");
    let mut results = Vec::with_capacity(topics.len());
    for topic in topics {
        results.push(create_one(shard, topic, validate_only).await);
    }
    results
}

async fn create_one(shard: &Rc<Shard>, topic: NewTopic, validate_only: bool) -> TopicResult {
    let name = topic.name.clone();
    if let Err(e) = validate_topic_name(&name) {
        return failure(name, ResponseError::InvalidTopicException, e.0);
    }
    if shard.topics.borrow().contains_key(&name) {
        return failure(
            name.clone(),
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        );
    }
    if shard.topics.borrow().len() >= sluice_core::limits::topics_max {
        return failure(
            name,
            ResponseError::PolicyViolation,
            "too many topics".into(),
        );
    }
    let assigned = if topic.assignments.is_empty() {
        None
    } else {
        match assigned_partitions(shard, &topic) {
            Ok(states) => Some(states),
            Err((error, message)) => return failure(name, error, message),
        }
    };
    let partitions = if let Some(states) = &assigned {
        states.len() as i32
    } else if topic.partitions == -1 {
        shard.broker.num_partitions
    } else {
        topic.partitions
    };
    if partitions <= 0 || partitions > sluice_core::limits::partitions_per_topic_max {
        return failure(
            name,
            ResponseError::InvalidPartitions,
            format!(
                "Number of partitions must be between 1 and {}.",
                sluice_core::limits::partitions_per_topic_max
            ),
        );
    }
    let clustered = shard.broker.clustered();
    let replication_factor = match topic.replication_factor {
        -1 => shard.broker.default_replication_factor,
        rf => rf,
    };
    if !clustered && replication_factor != 1 {
        return failure(
            name,
            ResponseError::InvalidReplicationFactor,
            format!(
                "Replication factor {} is larger than the 1 available broker.",
                topic.replication_factor
            ),
        );
    }
    let mut overrides = BTreeMap::new();
    for (k, v) in topic.configs {
        match v {
            Some(v) => _ = overrides.insert(k, v),
            None => {
                return failure(
                    name,
                    ResponseError::InvalidConfig,
                    format!("config '{k}' has a null value"),
                )
            }
        }
    }
    let config = match TopicConfig::with_overrides(&shard.broker, &overrides) {
        Ok(c) => c,
        Err(e) => return failure(name, ResponseError::InvalidConfig, e.to_string()),
    };
    let mut meta = TopicMeta::single_node(
        name.clone(),
        *uuid::Uuid::new_v4().as_bytes(),
        partitions,
        config,
        shard.broker.node_id,
    );
    let manual = assigned.is_some();
    if let Some(states) = assigned {
        meta.states = states;
    }
    if validate_only {
        return TopicResult {
            name,
            error: 0,
            message: None,
            meta: Some(meta),
        };
    }
    if shard.broker.clustered() {
        return match shard.controller() {
            Some(controller) => {
                crate::controller::create_topic(&controller, meta, replication_factor, manual).await
            }
            None => failure(
                name,
                ResponseError::NotController,
                "the metadata quorum is not running yet".into(),
            ),
        };
    }
    if let Err(e) = metadata::store(&shard.broker.log_dirs, &meta) {
        return failure(name, ResponseError::KafkaStorageError, e.to_string());
    }
    let revision = shard.take_revision();
    let cores = shard.place(&meta);
    broadcast(
        shard,
        TopicChange::Created {
            revision,
            meta: Box::new(meta.clone()),
            cores,
        },
    )
    .await;
    TopicResult {
        name,
        error: 0,
        message: None,
        meta: Some(meta),
    }
}

/// The partitions of a new topic as the client assigned them (Kafka's rules): only with
/// num_partitions and replication_factor left at -1, partition indexes 0, 1, 2, … each once, and
/// replica lists the metadata image accepts (see `MetadataImage::assigned_partitions`).
fn assigned_partitions(
    shard: &Shard,
    topic: &NewTopic,
) -> Result<Vec<PartitionState>, (ResponseError, String)> {
    if topic.partitions != -1 || topic.replication_factor != -1 {
        return Err((
            ResponseError::InvalidRequest,
            "Both numPartitions or replicationFactor and replicasAssignments were set. Both \
             cannot be used at the same time."
                .into(),
        ));
    }
    let mut by_index = topic.assignments.clone();
    by_index.sort_by_key(|(index, _)| *index);
    if by_index
        .iter()
        .enumerate()
        .any(|(i, (index, _))| usize::try_from(*index).ok() != Some(i))
    {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            "Partitions should be a consecutive 0-based integer sequence".into(),
        ));
    }
    let lists: Vec<Vec<i32>> = by_index.into_iter().map(|(_, list)| list).collect();
    crate::partitions::decide(shard, |image| image.assigned_partitions(0, None, &lists))
        .map_err(|why| (ResponseError::InvalidReplicaAssignment, why))
}

pub async fn delete(shard: &Rc<Shard>, names: Vec<String>) -> Vec<TopicResult> {
    assert_eq!(shard.core_id, 0, "topics are deleted by the metadata owner");
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let meta = shard.topics.borrow().get(&name).cloned();
        let Some(meta) = meta else {
            results.push(failure(
                name,
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.".into(),
            ));
            continue;
        };
        if shard.broker.clustered() {
            results.push(match shard.controller() {
                Some(controller) => crate::controller::delete_topic(&controller, meta).await,
                None => failure(
                    name,
                    ResponseError::NotController,
                    "the metadata quorum is not running yet".into(),
                ),
            });
            continue;
        }
        if let Err(e) = metadata::remove(&shard.broker.log_dirs, &name) {
            results.push(failure(
                name,
                ResponseError::KafkaStorageError,
                e.to_string(),
            ));
            continue;
        }
        let revision = shard.take_revision();
        broadcast(
            shard,
            TopicChange::Deleted {
                revision,
                name: name.clone(),
            },
        )
        .await;
        results.push(TopicResult {
            name,
            error: 0,
            message: None,
            meta: Some(meta),
        });
    }
    results
}

/// Applies a change on every core (this one included) and waits for all of them.
pub(crate) async fn broadcast(shard: &Rc<Shard>, change: TopicChange) {
    let calls = (0..shard.cores()).map(|core| {
        let shard = shard.clone();
        let change = change.clone();
        async move { shard.call(core, CoreRequest::ApplyTopic(change)).await }
    });
    futures::future::join_all(calls).await;
}
