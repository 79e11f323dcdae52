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
use crate::check::{CheckContext, Checked, HttpQuestion};
use crate::ratelimit::RateStatus;
use crate::scope::Catalog;

/// Header names, configurable from the command line.
#[derive(Debug, Clone)]
pub struct ExtAuthzConfig {
    /// Extra header carrying the raw token (e.g. `x-api-key`), besides
    /// `authorization: Bearer <token>`. Lower-case.
    pub api_key_header: Option<String>,
    pub key_id_header: String,
    pub account_id_header: String,
    /// Remove the credential header before the request goes upstream.
    pub hide_credentials: bool,
    /// Allow every request, but count, log (sampled) and mark in dynamic
    /// metadata what would have been denied.
    pub dry_run: bool,
    /// Count keys' rate limits here (off where Envoy's rate-limit filter
    /// asks the RateLimitService instead).
    pub count_rate_limits: bool,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        ExtAuthzConfig {
            api_key_header: None,
            key_id_header: "x-scopegate-key-id".into(),
            account_id_header: "x-scopegate-account-id".into(),
            hide_credentials: true,
            dry_run: false,
            count_rate_limits: true,
        }
    }
}

/// Dry run logs its first would-be denial and then one in this many.
const DRY_RUN_LOG_EVERY: u64 = 100;

/// Client-sent headers with this prefix never reach the upstream.
const RESERVED_HEADER_PREFIX: &str = "x-scopegate-";
const METADATA_NAMESPACE_FIELDS: [&str; 4] = ["key_id", "account_id", "scope", "decision"];

pub struct ExtAuthzService {
    pub context: Arc<CheckContext>,
    pub config: ExtAuthzConfig,
}

/// The credential found in the request headers.
enum Credential<'a> {
    Missing,
    /// The header it came from (as sent) and the token.
    Token(&'a str, Cow<'a, str>),
    /// Several values, several credential headers, a non-UTF-8 value, or an
    /// `authorization` header that is not `Bearer <token>`.
    Malformed,
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
        let HeaderScan {
            credential,
            method_override,
            reserved,
        } = self.scan(http);
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
        };
        let answered = context
            .check_http(&question, |checked, policy| {
                let Checked {
                    decision,
                    rate,
                    scope,
                    ..
                } = checked;
                let scope_name = shown_scope(&decision, scope, &policy.catalog);
                if !decision.is_allowed()
                    && (self.config.dry_run || policy.routes.is_dry_run(http.method(), http.path()))
                {
                    return self.dry_run(http, &decision, scope_name).into();
                }
                self.response(
                    http,
                    (&credential, reserved),
                    (decision, rate),
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
    /// One pass over the request headers: the credential, whether a
    /// method-override header is present, and whether any client-sent
    /// `x-scopegate-*` header is (to be stripped on allow).
    fn scan<'a>(&self, http: &'a EnvoyCheck) -> HeaderScan<'a> {
        let mut credential = Credential::Missing;
        let mut count = 0;
        let mut method_override = false;
        let mut reserved = false;
        for (name, value) in http.headers() {
            method_override |= METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|header| name.eq_ignore_ascii_case(header.as_bytes()));
            reserved |= is_reserved(name);
            let is_bearer = name.eq_ignore_ascii_case(b"authorization");
            let is_api_key = self
                .config
                .api_key_header
                .as_deref()
                .is_some_and(|header| name.eq_ignore_ascii_case(header.as_bytes()));
            if !is_bearer && !is_api_key {
                continue;
            }
            count += 1;
            credential = parse_credential(name, value, is_bearer);
        }
        if count > 1 {
            credential = Credential::Malformed;
        }
        HeaderScan {
            credential,
            method_override,
            reserved,
        }
    }

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
        let decision_name = decision_name(decision);
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
        (decision, rate): (Decision, Option<RateStatus>),
        scope: Option<&str>,
        catalog: &Catalog,
    ) -> EnvoyAnswer {
        let wire = wire_decision(&decision);
        let decision_name = wire.as_str_name();
        crate::telemetry::count_decision(
            crate::telemetry::Api::ExtAuthz,
            wire as i32,
            decision_name,
        );
        let (key_id, account_id) = match &decision {
            Decision::Allowed {
                key_id, account_id, ..
            }
            | Decision::InsufficientScope {
                key_id, account_id, ..
            }
            | Decision::RateLimited {
                key_id, account_id, ..
            } => (key_id.to_string(), account_id.to_string()),
            _ => (String::new(), String::new()),
        };
        self.context
            .log_decision("ext_authz", decision_name, &key_id, &account_id, scope);
        let ids = (key_id.as_str(), account_id.as_str());
        match &decision {
            Decision::Allowed { .. } => {
                let headers = rate.as_ref().map(rate_headers);
                let headers = headers.as_ref().map_or(&[][..], |headers| &headers[..]);
                self.allow(http, (credential, reserved), &decision, ids, scope, headers)
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
                ("decision", wire_decision(decision).as_str_name()),
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
    let decision_name = wire_decision(&decision).as_str_name();
    let mut response = CheckResponse::new();
    response.set_dynamic_metadata(Some(metadata([
        key_id,
        account_id,
        scope.unwrap_or(""),
        decision_name,
    ])));
    let message = decision.message(catalog);
    let limited = match &decision {
        Decision::RateLimited { status, .. } => Some(status.clone()),
        _ => None,
    };
    let (http_status, code) = match decision {
        Decision::RateLimited { .. } => (HttpStatusCode::TooManyRequests, Code::ResourceExhausted),
        Decision::MissingToken
        | Decision::MalformedToken
        | Decision::UnknownKey
        | Decision::Expired
        | Decision::Disabled => (HttpStatusCode::Unauthorized, Code::Unauthenticated),
        Decision::InvalidPath | Decision::MethodOverride => {
            (HttpStatusCode::BadRequest, Code::InvalidArgument)
        }
        _ => (HttpStatusCode::Forbidden, Code::PermissionDenied),
    };
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http_status);
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    denied.add_header("content-type", "application/json", overwrite, false);
    if http_status == HttpStatusCode::Unauthorized {
        denied.add_header(
            "www-authenticate",
            "Bearer realm=\"scopegate\"",
            overwrite,
            false,
        );
    }
    if let Some(status) = limited {
        denied.add_header(
            "retry-after",
            status.reset_secs.to_string(),
            overwrite,
            false,
        );
        for (name, value) in rate_headers(&status) {
            denied.add_header(name, value, overwrite, false);
        }
    }
    denied
        .set_body(serde_json::json!({"errors": [{"field": null, "message": message}]}).to_string());
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

/// A client-sent `x-scopegate-*` header (bytes: a name may hold non-ASCII).
fn is_reserved(name: &[u8]) -> bool {
    name.get(..RESERVED_HEADER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX.as_bytes()))
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

/// Headers with which clients ask an upstream to act on another method.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What the headers say, from [`ExtAuthzService::scan`].
struct HeaderScan<'a> {
    credential: Credential<'a>,
    method_override: bool,
    /// A client-sent `x-scopegate-*` header is present.
    reserved: bool,
}

/// The token in a credential header: `Bearer <token>` for `authorization`,
/// the raw value for the API-key header.
fn parse_credential<'a>(name: &'a [u8], value: &'a [u8], is_bearer: bool) -> Credential<'a> {
    // Both names matched ASCII text, so the name is UTF-8.
    let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
        return Credential::Malformed;
    };
    // Envoy joins repeated headers with ','; a token never holds one.
    if value.contains(',') {
        return Credential::Malformed;
    }
    let token = if is_bearer {
        match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Credential::Malformed,
        }
    } else {
        value.trim()
    };
    Credential::Token(name, Cow::Borrowed(token))
}

fn decision_name(decision: &Decision) -> &'static str {
    wire_decision(decision).as_str_name()
}

fn wire_decision(decision: &Decision) -> super::pb::Decision {
    use super::pb::Decision as Wire;
    match decision {
        Decision::Allowed { .. } => Wire::Allowed,
        Decision::MissingToken => Wire::MissingToken,
        Decision::MalformedToken => Wire::MalformedToken,
        Decision::UnknownKey => Wire::UnknownKey,
        Decision::InsufficientScope { .. } => Wire::InsufficientScope,
        Decision::NoRoute => Wire::NoRoute,
        Decision::InvalidPath => Wire::InvalidPath,
        Decision::MethodOverride => Wire::MethodOverride,
        Decision::Expired => Wire::Expired,
        Decision::Disabled => Wire::Disabled,
        Decision::IpNotAllowed => Wire::IpNotAllowed,
        Decision::RateLimited { .. } => Wire::RateLimited,
    }
}

/// Envoy's rate-limit filter headers (draft-03) for the limit closest to
/// running out.
fn rate_headers(status: &RateStatus) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", status.quota.to_string()),
        ("x-ratelimit-remaining", status.remaining.to_string()),
        ("x-ratelimit-reset", status.reset_secs.to_string()),
    ]
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
