//! One file per Kafka API. Each declares its API key and the versions it implements; [`APIS`]
//! is the single list that both routes requests and builds the ApiVersions answer, so the broker
//! cannot advertise a version it does not implement.

use std::rc::Rc;

use bytes::Bytes;
use futures::future::{FutureExt, LocalBoxFuture};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Decodable;

use crate::connection::RequestContext;
use crate::shard::Shard;

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_partition_reassignments;
pub mod api_versions;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_transactions;
pub mod elect_leaders;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;
pub mod txn_offset_commit;
pub mod write_txn_markers;

/// What a handler wants done with the connection.
pub enum Outcome {
    /// A complete frame (size prefix included).
    Respond(Bytes),
    /// A frame in pieces written back to back (record bytes are not copied into one buffer).
    RespondParts(Vec<Bytes>),
    /// acks=0 produce: nothing is sent back.
    NoResponse,
    /// Close the connection (Kafka's answer to a request it cannot serve).
    Close,
}

/// An implemented API and its version range.
pub struct Api {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
}

pub const APIS: &[Api] = &[
    produce::API,
    fetch::API,
    list_offsets::API,
    metadata::API,
    api_versions::API,
    create_topics::API,
    delete_topics::API,
    describe_cluster::API,
    describe_configs::API,
    init_producer_id::API,
    find_coordinator::API,
    offset_commit::API,
    offset_fetch::API,
    join_group::API,
    sync_group::API,
    heartbeat::API,
    leave_group::API,
    list_groups::API,
    describe_groups::API,
    delete_groups::API,
    offset_delete::API,
    consumer_group_heartbeat::API,
    consumer_group_describe::API,
    add_partitions_to_txn::API,
    add_offsets_to_txn::API,
    end_txn::API,
    txn_offset_commit::API,
    describe_producers::API,
    describe_transactions::API,
    list_transactions::API,
    write_txn_markers::API,
    offset_for_leader_epoch::API,
    elect_leaders::API,
    create_partitions::API,
    alter_partition_reassignments::API,
    list_partition_reassignments::API,
    describe_log_dirs::API,
    describe_quorum::API,
];

/// APIs only a cluster node serves and advertises (a single node has no metadata quorum).
pub const CLUSTER_APIS: &[ApiKey] = &[ApiKey::DescribeQuorum];

/// Whether this broker serves `key`: everything in [`APIS`], except [`CLUSTER_APIS`] on a
/// single node.
pub fn served(key: ApiKey, clustered: bool) -> bool {
    clustered || !CLUSTER_APIS.contains(&key)
}

pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    APIS.iter()
        .find(|a| a.key == key)
        .map(|a| (a.min_version, a.max_version))
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Option<T> {
    T::decode(body, version).ok()
}

/// A decoded request body, one variant per implemented API.
pub enum Request {
    /// None when a newer-than-known ApiVersions body could not be decoded (KIP-511).
    ApiVersions(Option<kafka_protocol::messages::ApiVersionsRequest>),
    Produce(kafka_protocol::messages::ProduceRequest),
    Fetch(kafka_protocol::messages::FetchRequest),
    ListOffsets(kafka_protocol::messages::ListOffsetsRequest),
    Metadata(kafka_protocol::messages::MetadataRequest),
    CreateTopics(kafka_protocol::messages::CreateTopicsRequest),
    DeleteTopics(kafka_protocol::messages::DeleteTopicsRequest),
    DescribeCluster(kafka_protocol::messages::DescribeClusterRequest),
    DescribeConfigs(kafka_protocol::messages::DescribeConfigsRequest),
    InitProducerId(kafka_protocol::messages::InitProducerIdRequest),
    FindCoordinator(kafka_protocol::messages::FindCoordinatorRequest),
    OffsetCommit(kafka_protocol::messages::OffsetCommitRequest),
    OffsetFetch(kafka_protocol::messages::OffsetFetchRequest),
    JoinGroup(kafka_protocol::messages::JoinGroupRequest),
    SyncGroup(kafka_protocol::messages::SyncGroupRequest),
    Heartbeat(kafka_protocol::messages::HeartbeatRequest),
    LeaveGroup(kafka_protocol::messages::LeaveGroupRequest),
    ListGroups(kafka_protocol::messages::ListGroupsRequest),
    DescribeGroups(kafka_protocol::messages::DescribeGroupsRequest),
    DeleteGroups(kafka_protocol::messages::DeleteGroupsRequest),
    OffsetDelete(kafka_protocol::messages::OffsetDeleteRequest),
    ConsumerGroupHeartbeat(kafka_protocol::messages::ConsumerGroupHeartbeatRequest),
    ConsumerGroupDescribe(kafka_protocol::messages::ConsumerGroupDescribeRequest),
    AddPartitionsToTxn(kafka_protocol::messages::AddPartitionsToTxnRequest),
    AddOffsetsToTxn(kafka_protocol::messages::AddOffsetsToTxnRequest),
    EndTxn(kafka_protocol::messages::EndTxnRequest),
    TxnOffsetCommit(kafka_protocol::messages::TxnOffsetCommitRequest),
    DescribeProducers(kafka_protocol::messages::DescribeProducersRequest),
    DescribeTransactions(kafka_protocol::messages::DescribeTransactionsRequest),
    ListTransactions(kafka_protocol::messages::ListTransactionsRequest),
    WriteTxnMarkers(kafka_protocol::messages::WriteTxnMarkersRequest),
    OffsetForLeaderEpoch(kafka_protocol::messages::OffsetForLeaderEpochRequest),
    ElectLeaders(kafka_protocol::messages::ElectLeadersRequest),
    CreatePartitions(kafka_protocol::messages::CreatePartitionsRequest),
    DescribeLogDirs(kafka_protocol::messages::DescribeLogDirsRequest),
    DescribeQuorum(kafka_protocol::messages::DescribeQuorumRequest),
    AlterPartitionReassignments(kafka_protocol::messages::AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(kafka_protocol::messages::ListPartitionReassignmentsRequest),
}

/// Decodes a request body (after the header); None when it does not decode — the connection is
/// then closed. Pure: this is what the request-decoder fuzz target drives.
pub fn decode_body(ctx: &RequestContext, mut body: Bytes) -> Option<Request> {
    let v = ctx.api_version;
    Some(match ctx.api_key {
        ApiKey::ApiVersions => {
            Request::ApiVersions(decode(&mut body, v.min(api_versions::API.max_version)))
        }
        ApiKey::Produce => Request::Produce(decode(&mut body, v)?),
        ApiKey::Fetch => Request::Fetch(decode(&mut body, v)?),
        ApiKey::ListOffsets => Request::ListOffsets(decode(&mut body, v)?),
        ApiKey::Metadata => Request::Metadata(decode(&mut body, v)?),
        ApiKey::CreateTopics => Request::CreateTopics(decode(&mut body, v)?),
        ApiKey::DeleteTopics => Request::DeleteTopics(decode(&mut body, v)?),
        ApiKey::DescribeCluster => Request::DescribeCluster(decode(&mut body, v)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(decode(&mut body, v)?),
        ApiKey::InitProducerId => Request::InitProducerId(decode(&mut body, v)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(decode(&mut body, v)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(decode(&mut body, v)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(decode(&mut body, v)?),
        ApiKey::JoinGroup => Request::JoinGroup(decode(&mut body, v)?),
        ApiKey::SyncGroup => Request::SyncGroup(decode(&mut body, v)?),
        ApiKey::Heartbeat => Request::Heartbeat(decode(&mut body, v)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(decode(&mut body, v)?),
        ApiKey::ListGroups => Request::ListGroups(decode(&mut body, v)?),
        ApiKey::DescribeGroups => Request::DescribeGroups(decode(&mut body, v)?),
        ApiKey::DeleteGroups => Request::DeleteGroups(decode(&mut body, v)?),
        ApiKey::OffsetDelete => Request::OffsetDelete(decode(&mut body, v)?),
        ApiKey::ConsumerGroupHeartbeat => Request::ConsumerGroupHeartbeat(decode(&mut body, v)?),
        ApiKey::ConsumerGroupDescribe => Request::ConsumerGroupDescribe(decode(&mut body, v)?),
        ApiKey::AddPartitionsToTxn => Request::AddPartitionsToTxn(decode(&mut body, v)?),
        ApiKey::AddOffsetsToTxn => Request::AddOffsetsToTxn(decode(&mut body, v)?),
        ApiKey::EndTxn => Request::EndTxn(decode(&mut body, v)?),
        ApiKey::TxnOffsetCommit => Request::TxnOffsetCommit(decode(&mut body, v)?),
        ApiKey::DescribeProducers => Request::DescribeProducers(decode(&mut body, v)?),
        ApiKey::DescribeTransactions => Request::DescribeTransactions(decode(&mut body, v)?),
        ApiKey::ListTransactions => Request::ListTransactions(decode(&mut body, v)?),
        ApiKey::WriteTxnMarkers => Request::WriteTxnMarkers(decode(&mut body, v)?),
        ApiKey::OffsetForLeaderEpoch => Request::OffsetForLeaderEpoch(decode(&mut body, v)?),
        ApiKey::ElectLeaders => Request::ElectLeaders(decode(&mut body, v)?),
        ApiKey::CreatePartitions => Request::CreatePartitions(decode(&mut body, v)?),
        ApiKey::DescribeLogDirs => Request::DescribeLogDirs(decode(&mut body, v)?),
        ApiKey::DescribeQuorum => Request::DescribeQuorum(decode(&mut body, v)?),
        ApiKey::AlterPartitionReassignments => {
            Request::AlterPartitionReassignments(decode(&mut body, v)?)
        }
        ApiKey::ListPartitionReassignments => {
            Request::ListPartitionReassignments(decode(&mut body, v)?)
        }
        _ => return None,
    })
}

/// Starts the handler of a decoded request.
pub fn start(
    shard: &Rc<Shard>,
    ctx: RequestContext,
    request: Request,
) -> LocalBoxFuture<'static, Outcome> {
    let shard = shard.clone();
    if !served(ctx.api_key, shard.broker.clustered()) {
        return async { Outcome::Close }.boxed_local();
    }
    // A node cut off from the metadata quorum has been fenced: its metadata is stale and it
    // leads nothing any more. Closing the connection sends the client to the other brokers
    // (ApiVersions is still answered, so the client does not take it for an old broker).
    if shard.isolated.get() && ctx.api_key != ApiKey::ApiVersions {
        return async { Outcome::Close }.boxed_local();
    }
    match request {
        Request::ApiVersions(r) => {
            async move { api_versions::handle(&ctx, r, shard.broker.clustered()) }.boxed_local()
        }
        Request::Produce(r) => produce::handle(&shard, ctx, r),
        Request::Fetch(r) => async move { fetch::handle(&shard, &ctx, r).await }.boxed_local(),
        Request::ListOffsets(r) => {
            async move { list_offsets::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::Metadata(r) => {
            async move { metadata::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::CreateTopics(r) => {
            async move { create_topics::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DeleteTopics(r) => {
            async move { delete_topics::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeCluster(r) => {
            async move { describe_cluster::handle(&shard, &ctx, r) }.boxed_local()
        }
        Request::DescribeConfigs(r) => {
            async move { describe_configs::handle(&shard, &ctx, r) }.boxed_local()
        }
        Request::InitProducerId(r) => {
            async move { init_producer_id::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::FindCoordinator(r) => {
            async move { find_coordinator::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::OffsetCommit(r) => {
            async move { offset_commit::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::OffsetFetch(r) => {
            async move { offset_fetch::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::JoinGroup(r) => {
            async move { join_group::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::SyncGroup(r) => {
            async move { sync_group::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::Heartbeat(r) => {
            async move { heartbeat::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::LeaveGroup(r) => {
            async move { leave_group::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::ListGroups(r) => {
            async move { list_groups::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeGroups(r) => {
            async move { describe_groups::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DeleteGroups(r) => {
            async move { delete_groups::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::OffsetDelete(r) => {
            async move { offset_delete::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::ConsumerGroupHeartbeat(r) => {
            async move { consumer_group_heartbeat::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::ConsumerGroupDescribe(r) => {
            async move { consumer_group_describe::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::AddPartitionsToTxn(r) => {
            async move { add_partitions_to_txn::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::AddOffsetsToTxn(r) => {
            async move { add_offsets_to_txn::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::EndTxn(r) => async move { end_txn::handle(&shard, &ctx, r).await }.boxed_local(),
        Request::TxnOffsetCommit(r) => {
            async move { txn_offset_commit::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeProducers(r) => {
            async move { describe_producers::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeTransactions(r) => {
            async move { describe_transactions::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::ListTransactions(r) => {
            async move { list_transactions::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::ElectLeaders(r) => {
            async move { elect_leaders::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeQuorum(r) => {
            async move { describe_quorum::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::DescribeLogDirs(r) => {
            async move { describe_log_dirs::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::CreatePartitions(r) => {
            async move { create_partitions::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::AlterPartitionReassignments(r) => {
            async move { alter_partition_reassignments::handle(&shard, &ctx, r).await }
                .boxed_local()
        }
        Request::ListPartitionReassignments(r) => {
            async move { list_partition_reassignments::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::OffsetForLeaderEpoch(r) => {
            async move { offset_for_leader_epoch::handle(&shard, &ctx, r).await }.boxed_local()
        }
        Request::WriteTxnMarkers(r) => {
            async move { write_txn_markers::handle(&shard, &ctx, r).await }.boxed_local()
        }
    }
}

/// Kafka's topic name type from a &str.
pub fn topic_name(name: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
        name.to_string(),
    ))
}

pub fn str_bytes(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}
