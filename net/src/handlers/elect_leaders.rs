//! ElectLeaders (key 43, KIP-460): preferred-leader election (type 0) moves a partition's
//! leadership back to its first replica when that one is alive and in sync; unclean election
//! (type 1, v1+) gives a partition without a leader one, out of sync if it must. The active
//! controller decides (through core 0, which proposes every election in one metadata entry);
//! no partitions named (null) means every partition that needs an election. Answers per
//! partition: 0, ELECTION_NOT_NEEDED, PREFERRED_LEADER_NOT_AVAILABLE,
//! ELIGIBLE_LEADERS_NOT_AVAILABLE or UNKNOWN_TOPIC_OR_PARTITION. On a single node every
//! partition is led by its only replica: ELECTION_NOT_NEEDED.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse};
use sluice_core::TopicPartition;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::ElectLeaders,
    min_version: 0,
    max_version: 2,
};

const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: ElectLeadersRequest,
) -> Outcome {
    let election_type = if ctx.api_version >= 1 {
        request.election_type
    } else {
        ELECTION_PREFERRED
    };
    if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
        let response =
            ElectLeadersResponse::default().with_error_code(ResponseError::InvalidRequest.code());
        return encode_response(ctx, &response);
    }
    let partitions = request.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .flat_map(|t| {
                let name = t.topic.0.to_string();
                t.partitions
                    .into_iter()
                    .map(move |p| TopicPartition::new(name.clone(), p))
            })
            .collect::<Vec<_>>()
    });
    let call = CoreRequest::ElectLeaders {
        preferred: election_type == ELECTION_PREFERRED,
        partitions: partitions.clone(),
    };
    let results = match shard.call(0, call).await {
        Some(CoreResponse::Elected(results)) => results,
        _ => partitions
            .unwrap_or_default()
            .into_iter()
            .map(|tp| (tp, ResponseError::CoordinatorNotAvailable.code(), None))
            .collect(),
    };
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (tp, error, message) in results {
        by_topic.entry(tp.topic).or_default().push(
            PartitionResult::default()
                .with_partition_id(tp.partition)
                .with_error_code(error)
                .with_error_message(message.as_deref().map(str_bytes)),
        );
    }
    let results = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            ReplicaElectionResult::default()
                .with_topic(topic_name(&topic))
                .with_partition_result(partitions)
        })
        .collect();
    encode_response(
        ctx,
        &ElectLeadersResponse::default().with_replica_election_results(results),
    )
}
