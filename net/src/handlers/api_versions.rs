//! ApiVersions (key 18): the list of implemented APIs, built from `handlers::APIS`.
//! A request at a version newer than ours gets UNSUPPORTED_VERSION with our list, encoded at
//! v0 so any client can read it (KIP-511).
//!
//! v3+ also lists the features (KIP-584) this broker supports and has finalized: only
//! `transaction.version` 2 (KIP-890), which tells clients such as the Java producer 4.x to use
//! transaction version 2 (Produce v12, EndTxn v5, TxnOffsetCommit v5, no AddPartitionsToTxn).
//! sluice has no feature upgrades: the finalized levels never change, at epoch 1.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::{str_bytes, Api, Outcome, APIS};

/// The one feature sluice advertises (KIP-584), and its finalized level.
const TRANSACTION_VERSION: &str = "transaction.version";
const TRANSACTION_VERSION_LEVEL: i16 = 2;
const FINALIZED_FEATURES_EPOCH: i64 = 1;
use crate::connection::{encode_response_at, RequestContext};

pub const API: Api = Api {
    key: ApiKey::ApiVersions,
    min_version: 0,
    max_version: 4,
};

pub fn handle(
    ctx: &RequestContext,
    _request: Option<ApiVersionsRequest>,
    clustered: bool,
) -> Outcome {
    let api_keys = APIS
        .iter()
        .filter(|a| super::served(a.key, clustered))
        .map(|a| {
            ApiVersion::default()
                .with_api_key(a.key as i16)
                .with_min_version(a.min_version)
                .with_max_version(a.max_version)
        })
        .collect();
    let mut response = ApiVersionsResponse::default()
        .with_api_keys(api_keys)
        .with_supported_features(vec![SupportedFeatureKey::default()
            .with_name(str_bytes(TRANSACTION_VERSION))
            .with_min_version(0)
            .with_max_version(TRANSACTION_VERSION_LEVEL)])
        .with_finalized_features_epoch(FINALIZED_FEATURES_EPOCH)
        .with_finalized_features(vec![FinalizedFeatureKey::default()
            .with_name(str_bytes(TRANSACTION_VERSION))
            .with_min_version_level(TRANSACTION_VERSION_LEVEL)
            .with_max_version_level(TRANSACTION_VERSION_LEVEL)]);
    let version = if ctx.api_version > API.max_version || ctx.api_version < API.min_version {
        response.error_code = ResponseError::UnsupportedVersion.code();
        0
    } else {
        ctx.api_version
    };
    encode_response_at(ctx, version, &response)
}
