//! DeleteTopics (key 20): forwarded to core 0, which removes the topic's metadata and has every
//! core drop it; the owning cores close and delete the partition directories.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{ApiKey, DeleteTopicsRequest, DeleteTopicsResponse};
use uuid::Uuid;

use super::{str_bytes, topic_name, Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse};
use crate::shard::Shard;

pub const API: Api = Api {
    key: ApiKey::DeleteTopics,
    min_version: 1,
    max_version: 6,
};

pub async fn handle(
    shard: &Rc<Shard>,
    ctx: &RequestContext,
    request: DeleteTopicsRequest,
) -> Outcome {
    // v0-5 name topics; v6 names or ids.
    let mut asked: Vec<(Option<String>, Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    asked.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let resolved: Vec<Option<String>> = {
        let topics = shard.topics.borrow();
        asked
            .iter()
            .map(|(name, id)| match name {
                Some(n) => Some(n.clone()),
                None => topics
                    .values()
                    .find(|m| m.id == *id.as_bytes())
                    .map(|m| m.name.clone()),
            })
            .collect()
    };
    let names: Vec<String> = resolved.iter().flatten().cloned().collect();
    let mut results = match shard.call(0, CoreRequest::DeleteTopics { names }).await {
        Some(CoreResponse::Topics(results)) => results.into_iter(),
        _ => Vec::new().into_iter(),
    };
    let responses = asked
        .iter()
        .zip(resolved)
        .map(|((_, id), name)| match name {
            None => DeletableTopicResult::default()
                .with_topic_id(*id)
                .with_error_code(ResponseError::UnknownTopicId.code()),
            Some(name) => match results.next() {
                Some(r) => DeletableTopicResult::default()
                    .with_name(Some(topic_name(&r.name)))
                    .with_topic_id(r.meta.map(|m| Uuid::from_bytes(m.id)).unwrap_or(*id))
                    .with_error_code(r.error)
                    .with_error_message(r.message.as_deref().map(str_bytes)),
                None => DeletableTopicResult::default()
                    .with_name(Some(topic_name(&name)))
                    .with_error_code(ResponseError::RequestTimedOut.code()),
            },
        })
        .collect();
    encode_response(
        ctx,
        &DeleteTopicsResponse::default().with_responses(responses),
    )
}
