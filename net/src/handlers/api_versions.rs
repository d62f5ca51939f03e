//! ApiVersions (key 18): the list of implemented APIs, built from `handlers::APIS`.
//! A request at a version newer than ours gets UNSUPPORTED_VERSION with our list, encoded at
//! v0 so any client can read it (KIP-511).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::{Api, Outcome, APIS};
use crate::connection::{encode_response_at, RequestContext};

pub const API: Api = Api {
    key: ApiKey::ApiVersions,
    min_version: 0,
    max_version: 4,
};

pub fn handle(ctx: &RequestContext, _request: Option<ApiVersionsRequest>) -> Outcome {
    let api_keys = APIS
        .iter()
        .map(|a| {
            ApiVersion::default()
                .with_api_key(a.key as i16)
                .with_min_version(a.min_version)
                .with_max_version(a.max_version)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(api_keys);
    let version = if ctx.api_version > API.max_version || ctx.api_version < API.min_version {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    } else {
        ctx.api_version
    };
    encode_response_at(ctx, version, &response)
}
