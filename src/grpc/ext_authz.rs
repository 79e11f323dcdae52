//! Envoy's `envoy.service.auth.v3.Authorization/Check` (ext_authz). The request
//! is read in place ([`EnvoyCheck`]: only the fields the decision reads,
//! headers as byte slices), the response is envoy-types' own
//! `CheckResponse`. Translates Envoy's request to the one check
//! (`crate::check`: the same decision `Authorize.Check{http}` makes, limits
//! counted) and the decision to an Envoy response:
//! - allow: upstream headers with the key and account ids (client-sent copies
//!   overwritten), the credential header removed, dynamic metadata for access logs;
//! - deny: 401 + `www-authenticate` for missing/malformed/unknown keys, 403 for
//!   missing scope or no route, 400 for an unusable path; a JSON body
//!   `{"errors":[{"field":null,"message":"..."}]}` that never echoes the token.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};

use super::envoy_request::EnvoyCheck;
use super::envoy_response::{Allow, EnvoyAnswer};
use super::envoy_service::authorization_server::Authorization;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tonic::{Code, Request, Response, Status};

use crate::authz::Decision;
use crate::check::{
    http_denial, rate_headers, CheckContext, Checked, HttpQuestion, CREDITS_HEADER,
};
use crate::proxy::{is_reserved, Credential, HeaderScan, ProxyConfig};
use crate::ratelimit::RateStatus;
use crate::scope::Catalog;

/// Dry run logs its first would-be denial and then one in this many.
const DRY_RUN_LOG_EVERY: u64 = 100;

const METADATA_NAMESPACE_FIELDS: [&str; 4] = ["key_id", "account_id", "scope", "decision"];

pub struct ExtAuthzService {
    pub context: Arc<CheckContext>,
    pub config: ProxyConfig,
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(&self, request: Request<EnvoyCheck>) -> Result<Response<EnvoyAnswer>, Status> {
        let context = &*self.context;
        if let Some(refused) = request.extensions().get::<crate::gate::Refused>() {
            // Not ready (the gate said): fail closed with a status Envoy
            // passes on as is, whatever its failure_mode_allow.
            return Ok(Response::new(unavailable(&refused.to_string()).into()));
        }
        let http = request.into_inner();
        if !http.has_http() {
            return Err(Status::invalid_argument(
                "attributes.request.http is required",
            ));
        }
        let http = &http;
        let traced = crate::traces::begin(|| {
            http.headers()
                .find(|(name, _)| name.eq_ignore_ascii_case(b"traceparent"))
                .and_then(|(_, value)| std::str::from_utf8(value).ok().map(str::to_owned))
        });
        let HeaderScan {
            credential,
            method_override,
            reserved,
        } = self.config.scan(http.headers());
        let token = match &credential {
            Credential::Token(_, token) => token.as_ref(),
            _ => "",
        };
        let question = HttpQuestion {
            token,
            malformed: matches!(credential, Credential::Malformed),
            method: http.method(),
            path: http.path(),
            method_override,
            client_ip: http.source_address().parse().ok(),
            proxy_scope: http.route_scope(),
            count: self.config.count_rate_limits,
            cost: http.route_cost(),
        };
        let answered = context
            .check_http(&question, |checked, policy| {
                let Checked {
                    decision,
                    rate,
                    scope,
                    credits,
                    ..
                } = checked;
                let scope_name = shown_scope(&decision, scope, &policy.catalog);
                if let Some(traced) = &traced {
                    traced.end("ext_authz", &decision, scope_name);
                }
                if !decision.is_allowed()
                    && (self.config.dry_run || policy.routes.is_dry_run(http.method(), http.path()))
                {
                    return self.dry_run(http, &decision, scope_name).into();
                }
                self.response(
                    http,
                    (&credential, reserved),
                    (decision, rate, credits),
                    scope_name,
                    &policy.catalog,
                )
            })
            .await;
        Ok(Response::new(answered.unwrap_or_else(|error| {
            unavailable(&error.to_string()).into()
        })))
    }
}

impl ExtAuthzService {
    /// Dry run: what would have been denied is allowed, counted, logged
    /// (the first and then one in DRY_RUN_LOG_EVERY) and marked in dynamic
    /// metadata (`dry_run: true`, `decision`). Client-sent `x-scopegate-*`
    /// headers are still stripped; the credential header is left for the
    /// upstream's own checks.
    fn dry_run(
        &self,
        http: &EnvoyCheck,
        decision: &Decision,
        scope: Option<&str>,
    ) -> CheckResponse {
        let decision_name = decision.reason();
        metrics::counter!(crate::telemetry::DRY_RUN_DENIALS_TOTAL, "decision" => decision_name)
            .increment(1);
        let seen = self
            .context
            .dry_run_seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if seen % DRY_RUN_LOG_EVERY == 0 {
            tracing::info!(
                decision = decision_name,
                scope,
                method = http.method(),
                "dry run: would have denied"
            );
        }
        let mut metadata = metadata(["", "", scope.unwrap_or(""), decision_name]);
        metadata.fields.insert(
            "dry_run".into(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        let mut ok = OkHttpResponseBuilder::new();
        for (name, _) in http.headers() {
            let ours = name.eq_ignore_ascii_case(self.config.key_id_header.as_bytes())
                || name.eq_ignore_ascii_case(self.config.account_id_header.as_bytes());
            if is_reserved(name) || ours {
                ok.remove_header(lower_name(name));
            }
        }
        let mut response = CheckResponse::new();
        response.set_dynamic_metadata(Some(metadata));
        response.set_status(Status::new(Code::Ok, ""));
        response.set_http_response(ok);
        response
    }

    fn response(
        &self,
        http: &EnvoyCheck,
        (credential, reserved): (&Credential<'_>, bool),
        (decision, rate, credits): (Decision, Option<RateStatus>, Option<u64>),
        scope: Option<&str>,
        catalog: &Catalog,
    ) -> EnvoyAnswer {
        let decision_name = decision.reason();
        crate::telemetry::count_decision(crate::telemetry::Api::ExtAuthz, &decision);
        let (key_id, account_id) = decision
            .key()
            .map(|(key_id, account_id)| (key_id.text(), String::from(&**account_id)))
            .unwrap_or_default();
        self.context
            .log_decision("ext_authz", decision_name, &key_id, &account_id, scope);
        let ids = (key_id.as_str(), account_id.as_str());
        match &decision {
            Decision::Allowed { .. } => {
                let mut headers: Vec<(&'static str, String)> = rate
                    .as_ref()
                    .map(rate_headers)
                    .into_iter()
                    .flatten()
                    .collect();
                if let Some(left) = credits {
                    headers.push((CREDITS_HEADER, left.to_string()));
                }
                self.allow(
                    http,
                    (credential, reserved),
                    &decision,
                    ids,
                    scope,
                    &headers,
                )
            }
            _ => deny(decision, ids, scope, catalog),
        }
    }

    /// An OK answer: the key's ids to the upstream, client-sent
    /// `x-scopegate-*` copies and (by default) the credential removed.
    fn allow(
        &self,
        http: &EnvoyCheck,
        (credential, reserved): (&Credential<'_>, bool),
        decision: &Decision,
        (key_id, account_id): (&str, &str),
        scope: Option<&str>,
        response_headers: &[(&'static str, String)],
    ) -> EnvoyAnswer {
        let key_metadata = match decision {
            Decision::Allowed { metadata, .. } => metadata.as_deref(),
            _ => None,
        };
        let mut remove: Vec<Cow<'_, str>> = Vec::new();
        if reserved {
            for (name, _) in http.headers() {
                let ours = name.eq_ignore_ascii_case(self.config.key_id_header.as_bytes())
                    || name.eq_ignore_ascii_case(self.config.account_id_header.as_bytes());
                if is_reserved(name) && !ours {
                    remove.push(Cow::Owned(lower_name(name)));
                }
            }
        }
        if let (true, Credential::Token(header, _)) = (self.config.hide_credentials, credential) {
            remove.push(if header.bytes().any(|byte| byte.is_ascii_uppercase()) {
                Cow::Owned(header.to_ascii_lowercase())
            } else {
                Cow::Borrowed(header)
            });
        }
        Allow {
            set_headers: [
                (&self.config.key_id_header, key_id),
                (&self.config.account_id_header, account_id),
            ],
            remove_headers: &remove,
            metadata: [
                ("key_id", key_id),
                ("account_id", account_id),
                ("scope", scope.unwrap_or("")),
                ("decision", decision.reason()),
            ],
            // The key's own metadata, for access logs and later filters;
            // never as upstream headers.
            key_metadata: key_metadata.map(Vec::as_slice),
            response_headers,
        }
        .encode()
    }
}

/// A denial: Envoy's status, and the HTTP answer the client gets (401 with
/// `WWW-Authenticate`, 400 or 403, a JSON body in SendGrid's error shape).
fn deny(
    decision: Decision,
    (key_id, account_id): (&str, &str),
    scope: Option<&str>,
    catalog: &Catalog,
) -> EnvoyAnswer {
    let decision_name = decision.reason();
    let mut response = CheckResponse::new();
    response.set_dynamic_metadata(Some(metadata([
        key_id,
        account_id,
        scope.unwrap_or(""),
        decision_name,
    ])));
    let denial = http_denial(&decision, catalog);
    let (http_status, code) = match denial.status {
        429 => (HttpStatusCode::TooManyRequests, Code::ResourceExhausted),
        401 => (HttpStatusCode::Unauthorized, Code::Unauthenticated),
        400 => (HttpStatusCode::BadRequest, Code::InvalidArgument),
        _ => (HttpStatusCode::Forbidden, Code::PermissionDenied),
    };
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http_status);
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    for (name, value) in denial.headers {
        denied.add_header(name, value, overwrite, false);
    }
    denied.set_body(denial.body);
    let message = denial.message;
    response.set_status(Status::new(code, message));
    response.set_http_response(denied);
    response.into()
}

/// The route's scope as shown: only to an identified key (an
/// unauthenticated caller must not learn which routes exist).
fn shown_scope<'a>(
    decision: &Decision,
    scope: Option<crate::scope::ScopeId>,
    catalog: &'a Catalog,
) -> Option<&'a str> {
    let identified = matches!(
        decision,
        Decision::Allowed { .. }
            | Decision::InsufficientScope { .. }
            | Decision::RateLimited { .. }
    );
    scope
        .filter(|_| identified)
        .map(|scope| catalog.scope_name(scope))
}

/// A header name as Envoy's `headers_to_remove` wants it.
fn lower_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

/// 503: scopegate cannot decide now (fleet mode, past --max-staleness-secs).
fn unavailable(reason: &str) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(HttpStatusCode::ServiceUnavailable);
    denied.add_header(
        "content-type",
        "application/json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    denied
        .set_body(serde_json::json!({"errors": [{"field": null, "message": reason}]}).to_string());
    let mut response = CheckResponse::new();
    response.set_status(Status::new(Code::Unavailable, reason));
    response.set_http_response(denied);
    response
}

fn metadata(values: [&str; 4]) -> Struct {
    let fields: HashMap<String, Value> = METADATA_NAMESPACE_FIELDS
        .iter()
        .zip(values)
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| {
            let value = Value {
                kind: Some(Kind::StringValue(value.to_owned())),
            };
            (name.to_string(), value)
        })
        .collect();
    Struct { fields }
}
