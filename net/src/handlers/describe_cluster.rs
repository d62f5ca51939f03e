//! DescribeCluster (key 60): the cluster id, the live brokers, and the active controller (on a
//! single node: itself).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DescribeCluster,
    min_version: 0,
    max_version: 1,
};

pub fn handle(shard: &Shard, ctx: &RequestContext, _request: DescribeClusterRequest) -> Outcome {
    let cluster = shard.cluster.borrow();
    let brokers = cluster
        .brokers
        .iter()
        .filter(|b| !b.fenced)
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.as_deref().map(str_bytes))
        })
        .collect();
    let response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shard.cluster_id))
        .with_controller_id(BrokerId(cluster.controller_id))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(i32::MIN)
        .with_brokers(brokers);
    encode_response(ctx, &response)
}
