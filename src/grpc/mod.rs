//! The gRPC edges: each service decodes, calls the use-cases (`manage`) or
//! the one check (`check`), encodes; errors become `Status` in `status.rs`.

mod admin;
mod authorize;
mod convert;
pub mod envoy_request;
pub mod envoy_response;
mod ext_authz;
mod manage;
mod ratelimit;
mod roles;
mod status;
mod webhooks;

pub use admin::AdminService;
pub use authorize::AuthorizeService;
pub use ext_authz::ExtAuthzService;
pub use manage::ManageKeyService;
pub use ratelimit::{RateLimitServiceServer, RateLimitsService};

pub use crate::check::CheckContext;

/// Generated code for `proto/scopegate/v1` (the `scopegate-protocol` crate).
pub use scopegate_protocol as pb;

/// Envoy's ext_authz service (`proto/envoy`): its request is read in place
/// by [`envoy_request::EnvoyCheck`], its response written as bytes
/// ([`envoy_response::EnvoyAnswer`]).
pub mod envoy_service {
    #![allow(clippy::all)]
    tonic::include_proto!("envoy.service.auth.v3");
}
