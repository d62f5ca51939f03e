//! DescribeQuorum (key 55, KIP-595): the metadata quorum as its leader sees it, for
//! `kafka-metadata-quorum describe --status / --replication`. The one partition is
//! `__cluster_metadata`-0; the leader's epoch is its Raft term, the high watermark its commit
//! index, and each voter's log end is what the leader has replicated to it; observers are the
//! broker-only nodes following the log, with the log end they last fetched from. A node that
//! does not lead the quorum asks the one that does over the controller port (the leader may be
//! a dedicated controller with no client listener), as Kafka's brokers forward the request to
//! the active controller. Served by cluster nodes only: a single node has no quorum.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::controller::{QuorumDescription, VoterState};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeQuorum,
    min_version: 0,
    max_version: 2,
};

/// The name Kafka gives its metadata log's topic.
const METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DescribeQuorumRequest,
) -> Outcome {
    let described = match shard.call(0, CoreRequest::DescribeQuorum).await {
        Some(CoreResponse::Quorum(described)) => described,
        _ => None,
    };
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = PartitionData::default().with_partition_index(p.partition_index);
                    if t.topic_name.0.as_str() != METADATA_TOPIC || p.partition_index != 0 {
                        return answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    }
                    match &described {
                        Some(q) => describe(answer, q),
                        // No leader yet, or it could not be reached: the client retries.
                        None => answer
                            .with_error_code(ResponseError::NotLeaderOrFollower.code())
                            .with_leader_id(BrokerId(-1))
                            .with_leader_epoch(-1)
                            .with_high_watermark(-1),
                    }
                })
                .collect();
            TopicData::default()
                .with_topic_name(topic_name(t.topic_name.0.as_str()))
                .with_partitions(partitions)
        })
        .collect();
    let mut response = DescribeQuorumResponse::default().with_topics(topics);
    if ctx.api_version >= 2 {
        response = response.with_nodes(
            shard
                .broker
                .controller_quorum_voters
                .iter()
                .map(|v| {
                    Node::default()
                        .with_node_id(BrokerId(v.id))
                        .with_listeners(vec![Listener::default()
                            .with_name(str_bytes("CONTROLLER"))
                            .with_host(str_bytes(&v.host))
                            .with_port(v.port)])
                })
                .collect(),
        );
    }
    encode_response(ctx, &response)
}

fn describe(answer: PartitionData, q: &QuorumDescription) -> PartitionData {
    answer
        .with_leader_id(BrokerId(q.leader_id))
        .with_leader_epoch(q.leader_epoch)
        .with_high_watermark(q.high_watermark)
        .with_current_voters(q.voters.iter().map(replica_state).collect())
        .with_observers(q.observers.iter().map(replica_state).collect())
}

fn replica_state(v: &VoterState) -> ReplicaState {
    ReplicaState::default()
        .with_replica_id(BrokerId(v.id))
        .with_log_end_offset(v.log_end_offset)
        .with_last_fetch_timestamp(v.last_fetch_ms)
        .with_last_caught_up_timestamp(v.last_caught_up_ms)
}
