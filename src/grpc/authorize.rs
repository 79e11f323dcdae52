//! `scopegate.v1.Authorize`: decode, the one check (`crate::check`), encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, authorize_server::Authorize};
use super::status::{bad_request, scope_status};
use crate::authz::{Decision, Policy};
use crate::check::{CheckContext, CheckError, Checked, HttpQuestion};
use crate::ratelimit::RateStatus;
use crate::scope::Catalog;

fn rate_status_to_pb(status: &RateStatus) -> pb::RateLimitStatus {
    pb::RateLimitStatus {
        name: status.name.to_string(),
        limit: status.limit,
        window: Some(super::convert::seconds(status.window_secs)),
        remaining: status.remaining,
        reset_after: Some(super::convert::seconds(status.reset_secs)),
    }
}

pub struct AuthorizeService {
    pub context: Arc<CheckContext>,
}

#[tonic::async_trait]
impl Authorize for AuthorizeService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let context = &*self.context;
        let traced = crate::traces::begin(|| {
            request
                .metadata()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
        let request = request.into_inner();
        let client_ip = match request.client_ip.as_str() {
            "" => None,
            text => Some(text.parse::<std::net::IpAddr>().map_err(|_| {
                bad_request(
                    "client_ip",
                    format!("`{text}` is not an IPv4 or IPv6 address"),
                )
            })?),
        };
        let answer = |checked: Checked, policy: &Policy| {
            if let Some(traced) = &traced {
                let scope = checked.scope.map(|scope| policy.catalog.scope_name(scope));
                traced.end("Authorize.Check", &checked.decision, scope);
            }
            let mut response = self.response(checked.decision, checked.rate, &policy.catalog);
            if response.allowed {
                response.path = checked.canonical_path.unwrap_or_default();
            }
            response.credits_remaining = checked.credits;
            response
        };
        let checked = match &request.http {
            Some(http) => {
                if !request.scopes.is_empty() {
                    return Err(bad_request("http", "give either scopes or http, not both"));
                }
                if http.method.is_empty() {
                    return Err(bad_request("http.method", "is required"));
                }
                let question = HttpQuestion {
                    token: &request.token,
                    malformed: false,
                    method: &http.method,
                    path: &http.path,
                    method_override: false,
                    client_ip,
                    proxy_scope: None,
                    count: true,
                    cost: request.cost,
                };
                context.check_http(&question, answer).await
            }
            None => {
                if request.scopes.is_empty() {
                    return Err(bad_request("scopes", "at least one scope is required"));
                }
                context
                    .check_scopes(
                        &request.token,
                        &request.scopes,
                        (client_ip, request.cost),
                        answer,
                    )
                    .await
            }
        };
        match checked {
            Ok(response) => Ok(Response::new(response)),
            Err(away @ (CheckError::CountersAway | CheckError::CreditsAway)) => {
                Err(Status::unavailable(away.to_string()))
            }
            Err(CheckError::Scope(error)) => Err(scope_status("scopes", &error)),
        }
    }
}

impl AuthorizeService {
    fn response(
        &self,
        decision: Decision,
        rate: Option<RateStatus>,
        catalog: &Catalog,
    ) -> pb::CheckResponse {
        crate::telemetry::count_decision(crate::telemetry::Api::Check, &decision);
        let mut response = pb::CheckResponse {
            message: decision.message(catalog),
            rate_limit: rate.as_ref().map(rate_status_to_pb),
            ..Default::default()
        };
        let code = match decision {
            Decision::Allowed {
                key_id,
                account_id,
                metadata,
                rate: _,
                credits: _,
            } => {
                response.allowed = true;
                response.key_id = key_id.text();
                response.account_id = String::from(&*account_id);
                if let Some(metadata) = metadata {
                    response.metadata = metadata.iter().cloned().collect();
                }
                pb::Decision::Allowed
            }
            Decision::MissingToken => pb::Decision::MissingToken,
            Decision::MalformedToken => pb::Decision::MalformedToken,
            Decision::UnknownKey => pb::Decision::UnknownKey,
            Decision::InsufficientScope {
                key_id,
                account_id,
                missing,
            } => {
                response.key_id = key_id.text();
                response.account_id = String::from(&*account_id);
                response.missing_scopes = catalog.names(&missing);
                pb::Decision::InsufficientScope
            }
            Decision::NoRoute => pb::Decision::NoRoute,
            Decision::InvalidPath => pb::Decision::InvalidPath,
            Decision::MethodOverride => pb::Decision::MethodOverride,
            Decision::Expired => pb::Decision::Expired,
            Decision::Disabled => pb::Decision::Disabled,
            Decision::IpNotAllowed => pb::Decision::IpNotAllowed,
            Decision::RateLimited {
                key_id,
                account_id,
                status,
            } => {
                response.key_id = key_id.text();
                response.account_id = String::from(&*account_id);
                response.retry_after = Some(super::convert::seconds(status.reset_secs));
                pb::Decision::RateLimited
            }
            Decision::UsageExceeded {
                key_id, account_id, ..
            } => {
                response.key_id = key_id.text();
                response.account_id = String::from(&*account_id);
                pb::Decision::UsageExceeded
            }
        };
        self.context.log_decision(
            "check",
            code.as_str_name(),
            &response.key_id,
            &response.account_id,
            None,
        );
        response.decision = code as i32;
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::pb;
    use crate::authz::Decision;
    use crate::ratelimit::RateStatus;
    use crate::scope::ScopeSet;
    use crate::token::KeyId;

    /// The core names and numbers decisions once (`Decision::reason`,
    /// `Decision::code`); they are the proto's, for every variant.
    #[test]
    fn every_decision_has_the_protos_name_and_number() {
        let key_id = KeyId::from_bytes([1; 16]);
        let account_id: Arc<str> = "acme".into();
        let status = RateStatus {
            name: "n".into(),
            limit: 1,
            window_secs: 1,
            remaining: 0,
            reset_secs: 1,
            quota: "1;w=1".into(),
        };
        let decisions = [
            Decision::Allowed {
                key_id,
                account_id: account_id.clone(),
                metadata: None,
                rate: None,
                credits: None,
            },
            Decision::MissingToken,
            Decision::MalformedToken,
            Decision::UnknownKey,
            Decision::InsufficientScope {
                key_id,
                account_id: account_id.clone(),
                missing: ScopeSet::default(),
            },
            Decision::NoRoute,
            Decision::InvalidPath,
            Decision::MethodOverride,
            Decision::Expired,
            Decision::Disabled,
            Decision::IpNotAllowed,
            Decision::RateLimited {
                key_id,
                account_id: account_id.clone(),
                status,
            },
            Decision::UsageExceeded {
                key_id,
                account_id,
                remaining: 0,
            },
        ];
        for decision in &decisions {
            let wire = pb::Decision::try_from(i32::from(decision.code())).unwrap();
            assert_eq!(wire.as_str_name(), decision.reason());
            assert_eq!(decision.outcome(), decision.reason().to_ascii_lowercase());
        }
        let named = (1..=13).filter_map(|code| pb::Decision::try_from(code).ok());
        assert_eq!(
            named.count(),
            decisions.len(),
            "a decision the core does not know"
        );
    }
}
