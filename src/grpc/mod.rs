//! The gRPC edge: the only place that knows generated types. Each service
//! decodes, calls the domain, encodes; errors become `Status` in `status.rs`.

mod admin;
mod authorize;
mod convert;
pub mod envoy_request;
pub mod envoy_response;
mod ext_authz;
mod manage;
mod ratelimit;
mod status;

use std::sync::Arc;

pub use admin::AdminService;
pub use authorize::AuthorizeService;
pub use ext_authz::{ExtAuthzConfig, ExtAuthzService};
pub use manage::ManageKeyService;
pub use ratelimit::{RateLimitServiceServer, RateLimitsService};

use crate::authz::{Decision, Policy};
use crate::counters::{Admission, Counters};
use crate::key::KeyTable;
use crate::ratelimit::RateStatus;
use crate::token::TokenFormat;

/// What both check entry points (Authorize and ext_authz) read.
pub struct CheckContext {
    pub keys: Arc<KeyTable>,
    pub format: TokenFormat,
    /// Catalog + routes, swapped whole on reload; a check loads it once and
    /// reads one policy from start to end.
    pub policy: arc_swap::ArcSwap<Policy>,
    /// Log one decision in this many (0: none).
    pub decision_log_every: u64,
    pub decisions_seen: std::sync::atomic::AtomicU64,
    /// Would-be denials let through by dry run (for sampled logs).
    pub dry_run_seen: std::sync::atomic::AtomicU64,
    /// The rate limits' counters.
    pub counters: Arc<Counters>,
}

/// Why a check could not be answered: the counters are away and limits fail
/// closed.
pub(crate) const COUNTERS_AWAY: &str =
    "rate-limit counters are unreachable and --rate-limit-fail-closed is set";

impl CheckContext {
    /// Counts an allowed request against the key's rate limits, after every
    /// other rule: the decision stands (with where its closest limit
    /// stands), turns RATE_LIMITED, or `None`: the counters are away and
    /// limits fail closed. A key without limits costs one match.
    async fn count(&self, decision: Decision) -> Option<(Decision, Option<RateStatus>)> {
        let Decision::Allowed {
            rate: Some(applicable),
            ..
        } = &decision
        else {
            return Some((decision, None));
        };
        match self.counters.admit(applicable, 1).await {
            Admission::Within(status) => Some((decision, status)),
            Admission::Over(status) => match decision {
                Decision::Allowed {
                    key_id, account_id, ..
                } => Some((
                    Decision::RateLimited {
                        key_id,
                        account_id,
                        status: status.clone(),
                    },
                    Some(status),
                )),
                other => Some((other, None)),
            },
            Admission::Unavailable => None,
        }
    }

    /// Sampled per-decision log line: ids, scope and outcome, never a token.
    fn log_decision(
        &self,
        api: &'static str,
        decision: &'static str,
        key_id: &str,
        account_id: &str,
        scope: Option<&str>,
    ) {
        if self.decision_log_every == 0 {
            return;
        }
        let seen = self
            .decisions_seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if seen % self.decision_log_every == 0 {
            tracing::info!(api, decision, key_id, account_id, scope, "decision");
        }
    }
}

/// Generated code for `proto/scopegate/v1` (the `scopegate-protocol` crate).
pub use scopegate_protocol as pb;

/// Envoy's ext_authz service (`proto/envoy`): its request is read in place
/// by [`envoy_request::EnvoyCheck`], its response written as bytes
/// ([`envoy_response::EnvoyAnswer`]).
pub mod envoy_service {
    #![allow(clippy::all)]
    tonic::include_proto!("envoy.service.auth.v3");
}
