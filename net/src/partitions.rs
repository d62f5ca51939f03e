//! CreatePartitions and partition reassignment (AlterPartitionReassignments,
//! ListPartitionReassignments), run on core 0 (the metadata owner).
//!
//! The decisions are the metadata image's (`MetadataImage::new_partitions`,
//! `MetadataImage::reassignment`), so a single node and a cluster follow one set of rules. A
//! cluster proposes them to the metadata quorum and answers once they are applied here; the
//! controller completes reassignments as their new replicas catch up
//! (`controller::complete_reassignments`). A single node decides on an image of itself — the one
//! broker and its topics — and applies new partitions the way it creates topics: persisted,
//! then broadcast to every core. Its only possible reassignment is to itself, which changes
//! nothing, as on a one-broker Kafka.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use sluice_core::TopicPartition;
use sluice_replication::metadata_image::{
    AddPartitionsRefusal, BrokerState, MetadataImage, ReassignRefusal, TopicImage,
};
use sluice_replication::metadata_records::MetadataRecord;
use sluice_replication::PartitionState;

use crate::controller::ProposeError;
use crate::metadata::{self, TopicMeta};
use crate::router::TopicChange;
use crate::shard::Shard;
use sluice_replication::metadata_image::Rejection;

/// How often a reassignment decided on an image that moved on before it committed is decided
/// again.
const STALE_RETRIES: usize = 3;

/// One topic of a CreatePartitions request.
#[derive(Debug, Clone)]
pub struct PartitionsWanted {
    pub topic: String,
    /// The partition count wanted.
    pub count: i32,
    /// A replica list per new partition, or None to place them.
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// A per-item answer: error code and message.
pub type Answer = (i16, Option<String>);

fn fail(error: ResponseError, message: impl Into<String>) -> Answer {
    (error.code(), Some(message.into()))
}

/// Topics that must keep their partition count: groups and transactional ids are mapped to a
/// partition by hash modulo the count, so growing them would lose every group's offsets and
/// every transaction's state. Kafka allows it and warns in its docs; sluice refuses.
fn fixed_partition_count(topic: &str) -> bool {
    topic == crate::offsets::OFFSETS_TOPIC || topic == crate::transactions::TXN_TOPIC
}

/// A single node's image of itself: this broker, live, and its topics.
pub fn single_node_image(shard: &Shard) -> MetadataImage {
    let node = shard.broker.node_id;
    let mut image = MetadataImage::default();
    image.brokers.insert(
        node,
        BrokerState {
            id: node,
            incarnation: 0,
            host: shard.broker.advertised_host.clone(),
            port: shard.broker.advertised_port,
            rack: shard.broker.broker_rack.clone(),
            fenced: false,
        },
    );
    for meta in shard.topics.borrow().values() {
        image.topics.insert(
            meta.name.clone(),
            TopicImage {
                name: meta.name.clone(),
                id: meta.id,
                configs: Vec::new(),
                partitions: meta.states.clone(),
            },
        );
    }
    image
}

/// Runs `decide` on the cluster's image, or on a single node's.
pub fn decide<R>(shard: &Shard, decide: impl FnOnce(&MetadataImage) -> R) -> R {
    match shard.controller() {
        Some(controller) => decide(&controller.image.borrow()),
        None => decide(&single_node_image(shard)),
    }
}

/// CreatePartitions: one answer per topic, in request order.
pub async fn create(
    shard: &Rc<Shard>,
    topics: Vec<PartitionsWanted>,
    validate_only: bool,
) -> Vec<Answer> {
    assert_eq!(
        shard.core_id, 0,
        "partitions are added by the metadata owner"
    );
    let mut answers = Vec::with_capacity(topics.len());
    for wanted in topics {
        answers.push(create_one(shard, wanted, validate_only).await);
    }
    answers
}

async fn create_one(shard: &Rc<Shard>, wanted: PartitionsWanted, validate_only: bool) -> Answer {
    if fixed_partition_count(&wanted.topic) {
        return fail(
            ResponseError::InvalidRequest,
            format!(
                "The partition count of the internal topic {} cannot change.",
                wanted.topic
            ),
        );
    }
    if wanted.count > sluice_core::limits::partitions_per_topic_max {
        return fail(
            ResponseError::InvalidPartitions,
            format!(
                "Number of partitions must be at most {}.",
                sluice_core::limits::partitions_per_topic_max
            ),
        );
    }
    for _ in 0..STALE_RETRIES {
        let decided = decide(shard, |image| {
            let first = image
                .topics
                .get(&wanted.topic)
                .map_or(0, |t| t.partitions.len());
            image
                .new_partitions(&wanted.topic, wanted.count, wanted.assignments.as_deref())
                .map(|added| (first, added))
        });
        let (first, added) = match decided {
            Ok(decided) => decided,
            Err(AddPartitionsRefusal::UnknownTopic) => {
                return fail(
                    ResponseError::UnknownTopicOrPartition,
                    format!("The topic '{}' does not exist.", wanted.topic),
                )
            }
            Err(AddPartitionsRefusal::InvalidPartitions(why)) => {
                return fail(ResponseError::InvalidPartitions, why)
            }
            Err(AddPartitionsRefusal::InvalidAssignment(why)) => {
                return fail(ResponseError::InvalidReplicaAssignment, why)
            }
            Err(AddPartitionsRefusal::InvalidReplicationFactor(why)) => {
                return fail(ResponseError::InvalidReplicationFactor, why)
            }
        };
        if validate_only {
            return (0, None);
        }
        let Some(controller) = shard.controller() else {
            return add_on_single_node(shard, &wanted.topic, added).await;
        };
        let record = MetadataRecord::AddPartitions {
            topic: wanted.topic.clone(),
            first: i32::try_from(first).unwrap_or(i32::MAX),
            partitions: added,
        };
        return match controller.propose(vec![record]).await {
            Ok(_) => (0, None),
            // Another request grew the topic since: decided again (and refused if the count
            // is reached already, as Kafka answers the second of two such requests).
            Err(ProposeError::Rejected(Rejection::StalePartitionCount(_))) => continue,
            Err(ProposeError::Rejected(Rejection::UnknownTopic(_))) => fail(
                ResponseError::UnknownTopicOrPartition,
                format!("The topic '{}' does not exist.", wanted.topic),
            ),
            Err(ProposeError::Rejected(why)) => {
                fail(ResponseError::InvalidRequest, why.to_string())
            }
            Err(ProposeError::TimedOut) => fail(
                ResponseError::RequestTimedOut,
                "the metadata quorum did not commit the new partitions in time",
            ),
        };
    }
    fail(
        ResponseError::RequestTimedOut,
        format!(
            "the partitions of {} kept changing; try again",
            wanted.topic
        ),
    )
}

/// Appends new partitions to a single node's topic: persisted, then applied on every core.
async fn add_on_single_node(
    shard: &Rc<Shard>,
    topic: &str,
    added: Vec<sluice_replication::PartitionState>,
) -> Answer {
    let Some(mut meta) = shard.topics.borrow().get(topic).cloned() else {
        return fail(
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{topic}' does not exist."),
        );
    };
    meta.states.extend(added);
    meta.partitions = meta.states.len() as i32;
    if let Err(e) = metadata::store(&shard.broker.log_dirs, &meta) {
        return fail(ResponseError::KafkaStorageError, e.to_string());
    }
    publish(shard, meta).await;
    (0, None)
}

/// Applies a single node's changed topic on every core.
async fn publish(shard: &Rc<Shard>, meta: TopicMeta) {
    let revision = shard.take_revision();
    let cores = shard.place(&meta);
    crate::topics::broadcast(
        shard,
        TopicChange::Created {
            revision,
            meta: Box::new(meta),
            cores,
        },
    )
    .await;
}

/// AlterPartitionReassignments: per partition, the target replicas (None cancels); one answer
/// each, in order.
pub async fn reassign(
    shard: &Rc<Shard>,
    partitions: Vec<(TopicPartition, Option<Vec<i32>>)>,
    allow_replication_factor_change: bool,
) -> Vec<Answer> {
    assert_eq!(
        shard.core_id, 0,
        "reassignments are made by the metadata owner"
    );
    let mut answers = Vec::with_capacity(partitions.len());
    for (tp, target) in partitions {
        answers.push(
            reassign_one(
                shard,
                &tp,
                target.as_deref(),
                allow_replication_factor_change,
            )
            .await,
        );
    }
    answers
}

async fn reassign_one(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    target: Option<&[i32]>,
    allow_replication_factor_change: bool,
) -> Answer {
    for _ in 0..STALE_RETRIES {
        let decided = decide(shard, |image| {
            image.reassignment(
                &tp.topic,
                tp.partition,
                target,
                allow_replication_factor_change,
            )
        });
        let record =
            match decided {
                Ok(None) => return (0, None),
                Ok(Some(record)) => record,
                Err(ReassignRefusal::UnknownPartition) => {
                    return fail(
                        ResponseError::UnknownTopicOrPartition,
                        format!("The partition {tp} does not exist."),
                    )
                }
                Err(ReassignRefusal::NoReassignmentInProgress) => {
                    return fail(
                        ResponseError::NoReassignmentInProgress,
                        format!("No reassignment of {tp} is in progress."),
                    )
                }
                Err(ReassignRefusal::InvalidAssignment(why)) => {
                    return fail(ResponseError::InvalidReplicaAssignment, why)
                }
                Err(ReassignRefusal::ReplicationFactorChange) => return fail(
                    ResponseError::InvalidReplicationFactor,
                    "The replication factor is changed but allowReplicationFactorChange is false.",
                ),
                Err(ReassignRefusal::NoInSyncReplica) => {
                    return fail(
                        ResponseError::InvalidReplicaAssignment,
                        format!("No replica of {tp} that would be left is in sync."),
                    )
                }
            };
        let Some(controller) = shard.controller() else {
            // A single node's image has one broker: every change it allows is a no-op.
            return fail(
                ResponseError::InvalidReplicaAssignment,
                "a single node cannot move replicas",
            );
        };
        match controller.propose(vec![record]).await {
            Ok(_) => return (0, None),
            Err(ProposeError::Rejected(Rejection::StalePartitionEpoch(..))) => continue,
            Err(ProposeError::Rejected(why)) => {
                return fail(ResponseError::InvalidReplicaAssignment, why.to_string())
            }
            Err(ProposeError::TimedOut) => {
                return fail(
                    ResponseError::RequestTimedOut,
                    "the metadata quorum did not commit the reassignment in time",
                )
            }
        }
    }
    fail(
        ResponseError::RequestTimedOut,
        format!("{tp} kept changing while the reassignment was decided; try again"),
    )
}

/// ListPartitionReassignments: the partitions being reassigned, of those named (None: all).
pub fn list(
    shard: &Shard,
    named: Option<Vec<TopicPartition>>,
) -> Vec<(TopicPartition, PartitionState)> {
    decide(shard, |image| {
        image
            .reassignments()
            .into_iter()
            .map(|(topic, p, state)| (TopicPartition::new(topic, p), state.clone()))
            .filter(|(tp, _)| named.as_ref().is_none_or(|named| named.contains(tp)))
            .collect()
    })
}
