//! Envoy's `envoy.service.ratelimit.v3.RateLimitService`, answered from the
//! keys' own limits and the same counters Check uses: for teams that keep
//! Envoy's global rate-limit filter. A descriptor names the key with an
//! entry `key_id` (from ext_authz's dynamic metadata); `scope` (also in that
//! metadata) picks the limits counting that scope, else only the key's
//! limits on every request count; `limit` narrows to one limit by name.
//! Descriptors naming no key of ours are OK: another service's business.
//!
//! It takes no credential: whoever reaches it can spend any key's limit and
//! read what is left. So it is off unless `--rate-limit-service-listen`
//! names a listener only the proxy reaches (its own address, or the Unix
//! socket), never the check port; `hits_addend` is capped
//! (`--rate-limit-max-hits`), and its calls have a budget of their own at
//! the gate, so a flood of them never sheds a check.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use super::CheckContext;
use crate::counters::Admission;
use crate::ratelimit::{ActiveLimit, Applicable, RateStatus};
use crate::token::KeyId;

pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

pub struct RateLimitsService {
    pub context: Arc<CheckContext>,
    /// Largest `hits_addend` taken (`--rate-limit-max-hits`).
    pub max_hits: u64,
}

/// Descriptors answered per call at most (each may be a Redis round trip).
const MAX_DESCRIPTORS: usize = 16;

#[tonic::async_trait]
impl RateLimitService for RateLimitsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "descriptors: at most {MAX_DESCRIPTORS} per request"
            )));
        }
        // Refused whole before anything is counted.
        if let Some(hits) = request
            .descriptors
            .iter()
            .map(|descriptor| hits_of(&request, descriptor))
            .find(|hits| *hits > self.max_hits)
        {
            return Err(Status::invalid_argument(format!(
                "hits_addend: {hits} is above --rate-limit-max-hits {}",
                self.max_hits
            )));
        }
        let mut response = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        };
        for descriptor in &request.descriptors {
            let hits = hits_of(&request, descriptor);
            let status = match self.applicable(descriptor)? {
                None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Some(applicable) => match self.context.counters.admit(&applicable, hits).await {
                    Admission::Within(status) => descriptor_status(Code::Ok, status),
                    Admission::Over(status) => descriptor_status(Code::OverLimit, Some(status)),
                    Admission::Unavailable => {
                        return Err(Status::unavailable(
                            crate::check::CheckError::CountersAway.to_string(),
                        ))
                    }
                },
            };
            if status.code == Code::OverLimit as i32 {
                response.overall_code = Code::OverLimit as i32;
            }
            response.statuses.push(status);
        }
        Ok(Response::new(response))
    }
}

impl RateLimitsService {
    /// The key's limits a descriptor counts against, if it names a key of
    /// ours that has some.
    fn applicable(&self, descriptor: &RateLimitDescriptor) -> Result<Option<Applicable>, Status> {
        let entry = |name: &str| {
            descriptor
                .entries
                .iter()
                .find(|entry| entry.key == name)
                .map(|entry| entry.value.as_str())
        };
        let Some(key_id) = entry("key_id").and_then(KeyId::parse) else {
            return Ok(None);
        };
        let policy = self.context.policy.load();
        let scope = match entry("scope") {
            None => None,
            Some(name) => Some(policy.catalog.scope_id(name).ok_or_else(|| {
                Status::invalid_argument(format!("descriptor entry scope: `{name}` is not a scope"))
            })?),
        };
        let limits = self.context.keys.with(&key_id, |entry| {
            entry.and_then(|entry| entry.extras.as_ref()?.rate.clone())
        });
        let Some(limits) = limits else {
            return Ok(None);
        };
        let chosen = match scope {
            Some(scope) => Applicable::for_scope(&limits, scope),
            None => Applicable::named(&every_request(&limits), None),
        };
        Ok(chosen.and_then(|chosen| match entry("limit") {
            None => Some(chosen),
            Some(name) => {
                let named: Arc<[ActiveLimit]> = chosen
                    .iter()
                    .filter(|limit| *limit.name == *name)
                    .cloned()
                    .collect();
                Applicable::named(&named, None)
            }
        }))
    }
}

/// The hits a descriptor adds: its own `hits_addend`, else the request's;
/// 0 means 1.
fn hits_of(request: &RateLimitRequest, descriptor: &RateLimitDescriptor) -> u64 {
    descriptor
        .hits_addend
        .map(|hits| hits.value)
        .unwrap_or(u64::from(request.hits_addend))
        .max(1)
}

/// The limits that count every request (no scope named).
fn every_request(limits: &Arc<[ActiveLimit]>) -> Arc<[ActiveLimit]> {
    limits
        .iter()
        .filter(|limit| limit.scopes.is_none())
        .cloned()
        .collect()
}

fn descriptor_status(code: Code, status: Option<RateStatus>) -> DescriptorStatus {
    let Some(status) = status else {
        return DescriptorStatus {
            code: code as i32,
            ..Default::default()
        };
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: status.name.to_string(),
            requests_per_unit: u32::try_from(status.limit).unwrap_or(u32::MAX),
            unit: unit(status.window_secs) as i32,
        }),
        limit_remaining: u32::try_from(status.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: status.reset_secs as i64,
            nanos: 0,
        }),
        quota: None,
    }
}

/// Envoy's unit for a window, when it is exactly one (else UNKNOWN; the
/// limit's name and reset still say it all).
fn unit(window_secs: u64) -> Unit {
    match window_secs {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        _ => Unit::Unknown,
    }
}
