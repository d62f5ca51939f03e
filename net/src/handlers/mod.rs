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

pub mod api_versions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_cluster;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

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
];

pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    APIS.iter().find(|a| a.key == key).map(|a| (a.min_version, a.max_version))
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Option<T> {
    T::decode(body, version).ok()
}

/// Decodes the body and starts its handler; None when the body does not decode (close).
pub fn start(
    shard: &Rc<Shard>,
    ctx: RequestContext,
    mut body: Bytes,
) -> Option<LocalBoxFuture<'static, Outcome>> {
    let v = ctx.api_version;
    let shard = shard.clone();
    Some(match ctx.api_key {
        ApiKey::ApiVersions => {
            let request = decode(&mut body, v.min(api_versions::API.max_version));
            async move { api_versions::handle(&ctx, request) }.boxed_local()
        }
        ApiKey::Produce => produce::handle(&shard, ctx, decode(&mut body, v)?),
        ApiKey::Fetch => {
            let request = decode(&mut body, v)?;
            async move { fetch::handle(&shard, &ctx, request).await }.boxed_local()
        }
        ApiKey::ListOffsets => {
            let request = decode(&mut body, v)?;
            async move { list_offsets::handle(&shard, &ctx, request).await }.boxed_local()
        }
        ApiKey::Metadata => {
            let request = decode(&mut body, v)?;
            async move { metadata::handle(&shard, &ctx, request).await }.boxed_local()
        }
        ApiKey::CreateTopics => {
            let request = decode(&mut body, v)?;
            async move { create_topics::handle(&shard, &ctx, request).await }.boxed_local()
        }
        ApiKey::DeleteTopics => {
            let request = decode(&mut body, v)?;
            async move { delete_topics::handle(&shard, &ctx, request).await }.boxed_local()
        }
        ApiKey::DescribeCluster => {
            let request = decode(&mut body, v)?;
            async move { describe_cluster::handle(&shard, &ctx, request) }.boxed_local()
        }
        _ => return None,
    })
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
