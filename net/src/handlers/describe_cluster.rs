//! DescribeCluster (key 60): this broker, its cluster id, and itself as controller.

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
    let broker = &shard.broker;
    let response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shard.cluster_id))
        .with_controller_id(BrokerId(broker.node_id))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(i32::MIN)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(broker.node_id))
            .with_host(str_bytes(&broker.advertised_host))
            .with_port(i32::from(broker.advertised_port))]);
    encode_response(ctx, &response)
}
