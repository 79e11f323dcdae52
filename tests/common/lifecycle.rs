//! Helpers of the lifecycle and audit tests: a check's decision for a full
//! request, creates and updates with a chosen credential, times from now.
#![allow(dead_code)] // each test binary uses some of them

use std::time::{Duration, SystemTime};

use super::{bearer, Server};
use scopegate::grpc::pb;

pub fn in_ms(ms: u64) -> prost_types::Timestamp {
    (SystemTime::now() + Duration::from_millis(ms)).into()
}

pub async fn decision(server: &Server, request: pb::CheckRequest) -> pb::Decision {
    let response = server
        .authorize()
        .await
        .check(request)
        .await
        .unwrap()
        .into_inner();
    pb::Decision::try_from(response.decision).unwrap()
}

pub async fn create_with(
    server: &Server,
    request: pb::CreateKeyRequest,
) -> Result<pb::CreateKeyResponse, tonic::Status> {
    server
        .manage()
        .await
        .create_key(bearer(&server.admin_token, request))
        .await
        .map(|response| response.into_inner())
}

pub async fn update(
    server: &Server,
    credential: &str,
    request: pb::UpdateKeyRequest,
) -> Result<pb::ApiKey, tonic::Status> {
    server
        .manage()
        .await
        .update_key(bearer(credential, request))
        .await
        .map(|response| response.into_inner())
}
