//! The REST edge: SendGrid's `/v3/api_keys` and `/v3/scopes`, shaped as its
//! public OpenAPI description has them, so SendGrid's own client libraries
//! work unchanged (`serve --http-listen`). Thin like the gRPC edge: it reads
//! the request, calls [`Manager`] (one set of rules, one audit trail, fleet
//! mode included) and writes SendGrid's shapes; errors become statuses in
//! `error.rs`. `openapi.json` describes everything served here.

mod api_keys;
mod authzen;
mod console;
mod credits;
mod error;
pub mod forward_auth;
mod gate;
mod input;
pub mod leaks;
mod roles;
mod stats;
mod tls;
mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

pub use error::ApiError;
pub use input::MAX_BODY_BYTES;

use crate::gate::Gate;
use crate::manage::{ManageError, Manager};

pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// The OpenAPI 3.1 description of this API, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
pub const HTTP_REQUESTS_TOTAL: &str = "scopegate_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "scopegate_http_request_seconds";

/// What the handlers share.
pub struct RestApi {
    pub manager: Arc<Manager>,
    /// The one gate, shared with gRPC: readiness and the management budget.
    pub gate: Arc<Gate>,
    /// How long a request waits for its body, and for its change or read.
    pub timeout: Duration,
    /// Leak reports: the action, GitHub's keys.
    pub leaks: Arc<leaks::LeakIntake>,
}

impl RestApi {
    /// Runs a change on its own task: a request that times out stops
    /// waiting, the change completes or never starts, never half.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, ManageError>> + Send + 'static,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.timeout, tokio::spawn(work)).await {
            Err(_) => Err(ApiError::unavailable(
                "the change did not finish in time and may still apply: read the key before retrying (a create retried with the same request_id is safe)",
            )),
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the change task failed",
            )),
            Ok(Ok(result)) => result.map_err(ApiError::from),
        }
    }

    /// Runs a blocking read on the blocking pool, never a decision worker.
    async fn off_workers<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<T, ManageError> + Send + 'static,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.timeout, tokio::task::spawn_blocking(read)).await {
            Err(_) => Err(ApiError::unavailable("the read did not finish in time")),
            Ok(Err(_)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the read task failed",
            )),
            Ok(Ok(result)) => result.map_err(ApiError::from),
        }
    }
}

/// Every route (the REST API and the console), with SendGrid's error shape
/// for unknown paths (404) and methods (405), and a count per route and
/// status.
pub fn router(api: Arc<RestApi>, tls: bool) -> Router {
    let api_for_gate = api.clone();
    let console = console::router(Arc::new(console::Console::new(api.clone(), tls)));
    Router::new()
        .route("/v3/api_keys", get(api_keys::list).post(api_keys::create))
        .route(
            "/v3/api_keys/{id}",
            get(api_keys::get)
                .put(api_keys::replace)
                .patch(api_keys::rename)
                .delete(api_keys::delete),
        )
        .route("/v3/api_keys/{id}/rotate", post(api_keys::rotate))
        .route(
            "/v3/api_keys/{id}/enable",
            post(|State(api), Extension(caller), headers, path| {
                api_keys::set_enabled(true, api, caller, headers, path)
            }),
        )
        .route(
            "/v3/api_keys/{id}/disable",
            post(|State(api), Extension(caller), headers, path| {
                api_keys::set_enabled(false, api, caller, headers, path)
            }),
        )
        .route("/v3/api_keys/{id}/stats", get(stats::key_stats))
        .route("/v3/api_keys/{id}/credits", post(credits::update))
        .route("/v3/stats", get(stats::account_stats))
        .route("/v3/scopes", get(api_keys::scopes))
        .route("/v3/roles", get(roles::list).post(roles::create))
        .route(
            "/v3/roles/{id}",
            get(roles::get)
                .put(roles::replace)
                .patch(roles::patch)
                .delete(roles::delete),
        )
        .route("/v3/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v3/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        )
        .route("/v3/webhooks/{id}/secret", post(webhooks::rotate_secret))
        .route(
            "/v3/webhooks/{id}/dead_letters",
            get(webhooks::dead_letters),
        )
        .route(
            "/v3/webhooks/{id}/dead_letters/redeliver",
            post(webhooks::redeliver),
        )
        .route("/secret-scanning/github", post(leaks::github))
        .route("/openapi.json", get(openapi))
        .with_state(api)
        .merge(console)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such resource: see /openapi.json")
        })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on this resource: see /openapi.json"),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            api_for_gate,
            gate::admit,
        ))
        .layer(axum::middleware::from_fn(count))
}

pub use tls::acceptor as tls_acceptor;

/// Serves the API until `shutdown`, over TLS when given an acceptor. The
/// address is logged before this returns, so it precedes "serving".
pub fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<RestApi>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "REST API listening (/v3/api_keys, /v3/scopes, /openapi.json)");
    }
    let deadline = api.timeout;
    let router = router(api, tls.is_some());
    tls::serve(listener, tls, router, shutdown, deadline)
}

async fn openapi() -> Response {
    let mut response = OPENAPI_JSON.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Pretty-free JSON with its content type.
fn json_response(value: &serde_json::Value) -> Response {
    let mut response = json_body(value).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_body(value: &serde_json::Value) -> String {
    value.to_string()
}

/// Counts requests by route template (never the raw path), method and
/// status, and times them.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| known_route(path.as_str()));
    // A route served but not in ROUTES would escape the gate test's walk.
    debug_assert_ne!(
        route,
        "other",
        "add {:?} to http::ROUTES",
        request.uri().path()
    );
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let started = Instant::now();
    // Every REST and console call is a management call: a span each when
    // traces are on, the caller's traceparent its parent.
    let traced = crate::traces::installed().map(|traces| {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        (
            traces,
            header("traceparent"),
            header("tracestate"),
            std::time::SystemTime::now(),
        )
    });
    let response = next.run(request).await;
    if let Some((traces, traceparent, tracestate, at)) = traced {
        traces.call(
            format!("{method} {route}"),
            (traceparent.as_deref(), tracestate.as_deref()),
            at,
            vec![
                opentelemetry::KeyValue::new("http.request.method", method),
                opentelemetry::KeyValue::new("http.route", route),
                opentelemetry::KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                ),
            ],
        );
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route, "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The route templates, as `'static` labels.
fn known_route(template: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|known| **known == template)
        .copied()
        .unwrap_or("other")
}

/// Every route template served (REST and console): the metrics' labels,
/// and what the gate test enumerates.
pub const ROUTES: [&str; 37] = [
    "/v3/api_keys",
    "/v3/api_keys/{id}",
    "/v3/api_keys/{id}/rotate",
    "/v3/api_keys/{id}/enable",
    "/v3/api_keys/{id}/disable",
    "/v3/api_keys/{id}/stats",
    "/v3/api_keys/{id}/credits",
    "/v3/stats",
    "/v3/scopes",
    "/v3/roles",
    "/v3/roles/{id}",
    "/v3/webhooks",
    "/v3/webhooks/{id}",
    "/v3/webhooks/{id}/secret",
    "/v3/webhooks/{id}/dead_letters",
    "/v3/webhooks/{id}/dead_letters/redeliver",
    "/secret-scanning/github",
    "/openapi.json",
    "/console",
    "/console/sign-in",
    "/console/sign-out",
    "/console/keys",
    "/console/keys/new",
    "/console/usage",
    "/console/roles",
    "/console/roles/{id}",
    "/console/roles/{id}/delete",
    "/console/webhooks",
    "/console/webhooks/{id}",
    "/console/webhooks/{id}/redeliver",
    "/console/keys/{id}",
    "/console/keys/{id}/rotate",
    "/console/keys/{id}/credits",
    "/console/keys/{id}/disable",
    "/console/keys/{id}/enable",
    "/console/keys/{id}/delete",
    "/console/static/{file}",
];
