//! The HTTP decision door (`serve --forward-auth-listen`): forward-auth for
//! nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`,
//! Envoy's HTTP ext_authz and Gateway API's `ExternalAuth`, and AuthZEN 1.0
//! (`authzen.rs`) on the same listener. Every answer is the one check's
//! (`crate::check`: the same decision as ext_authz), after the gate
//! (readiness, the decisions' budget); decisions are never throttled.
//!
//! The request judged is named by headers only the proxy sets, in this
//! order: `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik, Caddy), then
//! `X-Original-Method` + `X-Original-URI` (nginx, ingress-nginx), else the
//! request's own method and path less `--forward-auth-path-prefix` (Envoy's
//! HTTP mode, Gateway API). They are believed because only the proxy can
//! reach this listener; a client address comes from `X-Forwarded-For` only
//! when the peer is in `--forward-auth-trusted-proxies`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::authzen;
use super::error::ApiError;
use crate::authz::Decision;
use crate::check::{
    http_denial, rate_headers, CheckContext, Checked, HttpQuestion, CREDITS_HEADER,
};
use crate::gate::{Door, Gate};
use crate::proxy::{Credential, ProxyConfig};
use crate::telemetry::{count_decision, Api};

/// The routes of this door besides forward-auth itself (every other path).
pub const ROUTES: [&str; 3] = [
    authzen::EVALUATION,
    authzen::EVALUATIONS,
    authzen::CONFIGURATION,
];

/// What the handlers share.
pub struct ForwardAuth {
    pub context: Arc<CheckContext>,
    pub gate: Arc<Gate>,
    /// Header names, dry run and counting: ext_authz's settings.
    pub proxy: ProxyConfig,
    pub path_prefix: String,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the proxy names a request's cost in (`None`: the route's).
    pub cost_header: Option<axum::http::HeaderName>,
    /// How long a request's headers and body may take.
    pub timeout: Duration,
}

/// The door's router: AuthZEN's routes, forward-auth for every other one,
/// all behind the gate.
pub fn router(door: Arc<ForwardAuth>) -> Router {
    Router::new()
        .route(authzen::EVALUATION, post(authzen::evaluation))
        .route(authzen::EVALUATIONS, post(authzen::evaluations))
        .route(authzen::CONFIGURATION, get(authzen::configuration))
        .fallback(judge)
        .layer(axum::middleware::from_fn_with_state(door.clone(), admit))
        .with_state(door)
}

/// The gate: ready, the body (AuthZEN's) read under the deadline and the
/// REST API's size bound, then a
/// permit of the decisions' budget; the discovery document is open.
async fn admit(State(door): State<Arc<ForwardAuth>>, request: Request, next: Next) -> Response {
    let gate_door = match request.uri().path() {
        authzen::CONFIGURATION => Door::Open,
        _ => Door::Decision,
    };
    if let Err(refused) = door.gate.ready(gate_door) {
        return ApiError::unavailable(refused.to_string()).into_response();
    }
    let (parts, body) = request.into_parts();
    let bytes = match super::input::body_within(body, door.timeout).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return ApiError::new(status, message).into_response(),
    };
    let _permit = match door.gate.permit(gate_door) {
        Ok(permit) => permit,
        Err(refused) => return ApiError::unavailable(refused.to_string()).into_response(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Forward-auth: the decision on the request the proxy names.
async fn judge(
    State(door): State<Arc<ForwardAuth>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let traced = crate::traces::begin(|| {
        headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    });
    let (method, uri) = match judged(headers, parts.method.as_str(), &parts.uri, &door) {
        Ok(judged) => judged,
        Err(error) => return error.into_response(),
    };
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let cost = match named_cost(headers, door.cost_header.as_ref()) {
        Ok(cost) => cost,
        Err(error) => return error.into_response(),
    };
    let scan = door.proxy.scan(
        headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    );
    let token = match &scan.credential {
        Credential::Token(_, token) => token.as_ref(),
        _ => "",
    };
    let question = HttpQuestion {
        token,
        malformed: matches!(scan.credential, Credential::Malformed),
        method,
        path,
        method_override: scan.method_override,
        client_ip: Some(client_ip(headers, peer.ip(), &door.trusted_proxies)),
        proxy_scope: None,
        count: door.proxy.count_rate_limits,
        cost,
    };
    let answered = door
        .context
        .check_http(&question, |checked, policy| {
            if let Some(traced) = &traced {
                let scope = checked.scope.map(|scope| policy.catalog.scope_name(scope));
                traced.end("forward-auth", &checked.decision, scope);
            }
            answer(&door, checked, &policy.catalog)
        })
        .await;
    answered.unwrap_or_else(|error| ApiError::unavailable(error.to_string()).into_response())
}

/// The cost the proxy names (`--forward-auth-cost-header`), one header, a
/// whole number up to `route::MAX_COST`; anything else is the proxy's
/// mistake: 400, never a guess.
fn named_cost(
    headers: &HeaderMap,
    name: Option<&axum::http::HeaderName>,
) -> Result<Option<u32>, ApiError> {
    let Some(name) = name else {
        return Ok(None);
    };
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(name) {
            false => Ok(None),
            true => Err(ApiError::bad_request(
                Some(name.as_str()),
                "is given more than once",
            )),
        };
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|cost| *cost <= crate::route::MAX_COST)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                Some(name.as_str()),
                format!(
                    "is not a cost (a whole number, 0 to {})",
                    crate::route::MAX_COST
                ),
            )
        })
}

/// The method and URI judged: a forwarded pair, or the request's own. Every
/// source present must name the same request: a client behind a proxy that
/// passes its headers on could otherwise add a pair the proxy does not set
/// (X-Forwarded-* where nginx sets X-Original-*) and be judged on another
/// request than the one the proxy forwards.
fn judged<'a>(
    headers: &'a HeaderMap,
    own_method: &'a str,
    own_uri: &'a axum::http::Uri,
    door: &ForwardAuth,
) -> Result<(&'a str, &'a str), ApiError> {
    let mut named: Vec<(&str, &str)> = Vec::new();
    for (method_header, uri_header) in [
        ("x-forwarded-method", "x-forwarded-uri"),
        ("x-original-method", "x-original-uri"),
    ] {
        match (
            one_text(headers, method_header)?,
            one_text(headers, uri_header)?,
        ) {
            (None, None) => {}
            (Some(method), Some(uri)) if !method.is_empty() && uri.starts_with('/') => {
                named.push((method, uri))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    Some(uri_header),
                    format!("{method_header} must be a method and {uri_header} a path"),
                ))
            }
            // Half a pair would judge the wrong request (a POST as the
            // GET of an auth subrequest): refused.
            _ => {
                return Err(ApiError::bad_request(
                    Some(uri_header),
                    format!("{method_header} and {uri_header} come together or not at all"),
                ))
            }
        }
    }
    let under_prefix = (!door.path_prefix.is_empty())
        .then(|| own_uri.path().strip_prefix(door.path_prefix.as_str()))
        .flatten()
        .filter(|rest| rest.starts_with('/'));
    if let Some(own) = under_prefix {
        named.push((own_method, own));
    }
    fn path_of(uri: &str) -> &str {
        uri.split(['?', '#']).next().unwrap_or("")
    }
    match named.as_slice() {
        [] if door.path_prefix.is_empty() => Ok((own_method, own_uri.path())),
        [] => Err(ApiError::bad_request(
            None,
            format!(
                "no X-Forwarded-Method/-Uri or X-Original-Method/-URI, and the path is not under {}",
                door.path_prefix
            ),
        )),
        [first, rest @ ..] => {
            let same = |(method, uri): &(&str, &str)| {
                method.eq_ignore_ascii_case(first.0) && path_of(uri) == path_of(first.1)
            };
            if rest.iter().all(same) {
                Ok(*first)
            } else {
                Err(ApiError::bad_request(
                    None,
                    "the forwarded headers and the request name different requests",
                ))
            }
        }
    }
}

/// A header sent once as text; `Ok(None)` when absent.
fn one_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(Some(name), "is sent more than once"));
    }
    value
        .to_str()
        .map(|text| Some(text.trim()))
        .map_err(|_| ApiError::bad_request(Some(name), "is not text"))
}

/// The client's address: the peer's, or (from a trusted proxy) the nearest
/// `X-Forwarded-For` hop that is not itself a trusted proxy.
fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|hop| !is_trusted(hop))
        .unwrap_or(peer)
}

/// The HTTP answer: 200 with the key's ids (and metadata, rate headers) for
/// the proxy to copy upstream; a denial as ext_authz's, status for status.
fn answer(door: &ForwardAuth, checked: Checked, catalog: &crate::scope::Catalog) -> Response {
    let Checked {
        decision,
        rate,
        scope,
        credits,
        ..
    } = checked;
    count_decision(Api::ForwardAuth, &decision);
    let scope_name = scope
        .filter(|_| decision.key().is_some())
        .map(|scope| catalog.scope_name(scope));
    let (key_id, account_id) = decision
        .key()
        .map(|(key_id, account_id)| (key_id.text(), String::from(&**account_id)))
        .unwrap_or_default();
    door.context.log_decision(
        "forward_auth",
        decision.reason(),
        &key_id,
        &account_id,
        scope_name,
    );
    if !decision.is_allowed() && door.proxy.dry_run {
        metrics::counter!(crate::telemetry::DRY_RUN_DENIALS_TOTAL, "decision" => decision.reason())
            .increment(1);
        let mut response = StatusCode::OK.into_response();
        insert(&mut response, "x-scopegate-dry-run", decision.reason());
        return response;
    }
    if let Decision::Allowed { metadata, .. } = &decision {
        let mut response = StatusCode::OK.into_response();
        insert(&mut response, &door.proxy.key_id_header, &key_id);
        insert(&mut response, &door.proxy.account_id_header, &account_id);
        for (name, value) in metadata.iter().flat_map(|metadata| metadata.iter()) {
            insert(
                &mut response,
                &format!("x-scopegate-metadata-{name}"),
                value,
            );
        }
        for (name, value) in rate.as_ref().map(rate_headers).into_iter().flatten() {
            insert(&mut response, name, &value);
        }
        if let Some(left) = credits {
            response.headers_mut().insert(
                axum::http::HeaderName::from_static(CREDITS_HEADER),
                axum::http::HeaderValue::from(left),
            );
        }
        return response;
    }
    let denial = http_denial(&decision, catalog);
    let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, denial.body).into_response();
    for (name, value) in denial.headers {
        insert(&mut response, name, &value);
    }
    response
}

/// Sets a header; a name or value that is not valid in HTTP is left out.
fn insert(response: &mut Response, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
        HeaderValue::from_str(value),
    ) {
        response.headers_mut().insert(name, value);
    }
}

/// Serves the door until `shutdown`, over TLS when given an acceptor. The
/// address is logged before this returns, so it precedes "serving".
pub fn serve(
    listener: tokio::net::TcpListener,
    door: Arc<ForwardAuth>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "forward-auth listening (every path; AuthZEN at /access/v1/evaluation)");
    }
    let deadline = door.timeout;
    super::tls::serve(listener, tls, router(door), shutdown, deadline)
}
