//! Metrics and the operator's HTTP endpoint: `/metrics` (Prometheus),
//! `/healthz` (the process is up), `/readyz` (keys loaded and not draining).
//! Metric names live here; no label ever carries a token, a secret or a raw
//! path (labels are fixed sets: api, decision, method, code, kind, result).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const DECISIONS_TOTAL: &str = "scopegate_decisions_total";
pub const GRPC_REQUESTS_TOTAL: &str = "scopegate_grpc_requests_total";
pub const GRPC_REQUEST_SECONDS: &str = "scopegate_grpc_request_seconds";
pub const REQUESTS_REJECTED_TOTAL: &str = "scopegate_requests_rejected_total";
pub const MUTATIONS_TOTAL: &str = "scopegate_key_mutations_total";
/// Keys reported leaked (true positives), by the action taken.
pub const LEAKS_TOTAL: &str = "scopegate_leaked_keys_total";
/// Leak reports refused for their signature.
pub const LEAK_REPORTS_REFUSED_TOTAL: &str = "scopegate_leak_reports_refused_total";
/// `--max-staleness-secs` (fleet): past it, decisions fail closed.
pub const FLEET_MAX_STALENESS_SECONDS: &str = "scopegate_fleet_max_staleness_seconds";
/// When the serving certificate (--tls-cert-file) expires, unix seconds.
pub const TLS_CERT_EXPIRY_SECONDS: &str = "scopegate_tls_cert_expiry_timestamp_seconds";
/// Webhook delivery attempts, by outcome (delivered, failed, dead).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "scopegate_webhook_deliveries_total";
/// Webhook deliveries waiting (counted up to 1,000 per endpoint).
pub const WEBHOOK_PENDING: &str = "scopegate_webhook_pending";
/// How long the oldest waiting webhook delivery has waited.
pub const WEBHOOK_OLDEST_SECONDS: &str = "scopegate_webhook_oldest_pending_seconds";
/// 1 while this sidecar delivers webhooks (standalone always; a fleet's lease holder).
pub const WEBHOOK_DELIVERING: &str = "scopegate_webhook_delivering";
/// Derived-event signals dropped because their queue was full.
pub const WEBHOOK_SIGNALS_DROPPED_TOTAL: &str = "scopegate_webhook_signals_dropped_total";
/// ext_authz requests allowed only because of dry run, by would-be decision.
pub const DRY_RUN_DENIALS_TOTAL: &str = "scopegate_dry_run_denials_total";
pub const KEYS: &str = "scopegate_keys";
/// sled's flush of one commit group (write + sync_file_range).
pub const STORE_FLUSH_SECONDS: &str = "scopegate_store_flush_seconds";
/// The fdatasync that follows it: what makes the group durable.
pub const STORE_SYNC_SECONDS: &str = "scopegate_store_sync_seconds";
pub const RELOADS_TOTAL: &str = "scopegate_config_reloads_total";
pub const LAST_RELOAD_SUCCESS: &str = "scopegate_config_last_reload_success_timestamp_seconds";
/// Fleet mode: the etcd revision this sidecar has applied.
pub const FLEET_APPLIED_REVISION: &str = "scopegate_fleet_applied_revision";
/// Fleet mode: seconds since etcd was last heard (event or progress notification).
pub const FLEET_SECONDS_SINCE_CONTACT: &str = "scopegate_fleet_seconds_since_contact";
/// Fleet mode: full reads (first sync, compaction, restore).
pub const FLEET_RESYNCS_TOTAL: &str = "scopegate_fleet_resyncs_total";
/// Fleet mode: etcd transactions that lost their compare and were retried.
/// Records from etcd this sidecar cannot use (a scope its catalog lacks, an
/// unreadable field, an id that differs from its path): denied here.
pub const FLEET_UNFIT_RECORDS: &str = "scopegate_fleet_unfit_records";
pub const FLEET_CONFLICTS_TOTAL: &str = "scopegate_fleet_conflicts_total";
/// "Last used" marks written to disk (each round writes the keys used since
/// the one before).
pub const LAST_USED_WRITTEN_TOTAL: &str = "scopegate_last_used_written_total";
/// Rate-limit counter calls that failed (Redis away or slow).
pub const RATE_LIMIT_BACKEND_ERRORS_TOTAL: &str = "scopegate_rate_limit_backend_errors_total";
/// Usage flushes, by `result` (`ok`, `failed`: kept and retried).
pub const USAGE_FLUSHES_TOTAL: &str = "scopegate_usage_flushes_total";
/// Seconds a usage flush took (naming, rolling up, writing).
pub const USAGE_FLUSH_SECONDS: &str = "scopegate_usage_flush_seconds";
/// Decisions whose usage was dropped unwritten (its book away too long:
/// the held flushes past their bound, oldest first).
pub const USAGE_DROPPED_TOTAL: &str = "scopegate_usage_dropped_decisions_total";
/// Usage records held for a book that is away.
pub const USAGE_PENDING_RECORDS: &str = "scopegate_usage_pending_records";

/// The `kind` label of the keys gauge.
pub fn kind_label(kind: crate::scope::KeyKind) -> &'static str {
    match kind {
        crate::scope::KeyKind::General => "general",
        crate::scope::KeyKind::Billing => "billing",
    }
}

/// Installs the process-wide Prometheus recorder (once) and returns its
/// handle. Histogram samples queue up until upkeep drains them into buckets,
/// so a task runs upkeep every few seconds: without it memory grows with
/// every request (found by bench/run.sh).
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = build_recorder();
            zero_series();
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// Series that count rare events, exported at 0 from the start: a rate
/// over them (the dashboard's, the alerts') then reads 0, not "no data".
fn zero_series() {
    metrics::counter!(REQUESTS_REJECTED_TOTAL, "reason" => "overloaded").absolute(0);
    metrics::counter!(RATE_LIMIT_BACKEND_ERRORS_TOTAL).absolute(0);
    for kind in ["catalog", "routes"] {
        metrics::counter!(RELOADS_TOTAL, "kind" => kind, "result" => "error").absolute(0);
    }
    for action in ["disable", "delete", "notify"] {
        metrics::counter!(LEAKS_TOTAL, "action" => action).absolute(0);
    }
    for outcome in ["delivered", "failed", "dead"] {
        metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(WEBHOOK_SIGNALS_DROPPED_TOTAL).absolute(0);
}

fn build_recorder() -> PrometheusHandle {
    let latency_buckets = [
        0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
        0.5, 1.0,
    ];
    PrometheusBuilder::new()
        .set_buckets(&latency_buckets)
        .expect("buckets are not empty")
        .install_recorder()
        .expect("only scopegate installs a metrics recorder")
}

/// Serves /metrics, /healthz and /readyz until `shutdown` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                let status = if ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
                std::future::ready(status)
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn metrics_addr_log(addr: SocketAddr) {
    tracing::info!(addr = %addr, "metrics listening (/metrics, /healthz, /readyz)");
}

/// Counts gRPC requests by method and status and records their latency;
/// counts requests refused before a handler ran (shed by the concurrency
/// limit). Methods outside the served set are labelled "other", so a client
/// cannot create label values.
#[derive(Clone)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

const KNOWN_METHODS: [&str; 14] = [
    "/scopegate.v1.Authorize/Check",
    "/scopegate.v1.ManageKey/CreateKey",
    "/scopegate.v1.ManageKey/GetKey",
    "/scopegate.v1.ManageKey/ListKeys",
    "/scopegate.v1.ManageKey/UpdateKey",
    "/scopegate.v1.ManageKey/DeleteKey",
    "/scopegate.v1.ManageKey/RotateKey",
    "/scopegate.v1.ManageKey/ListAuditEvents",
    "/scopegate.v1.ManageKey/ListScopes",
    "/scopegate.v1.ManageKey/GetUsage",
    "/scopegate.v1.ManageKey/ExportUsage",
    "/envoy.service.auth.v3.Authorization/Check",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Looked up by a ready name: a `&str` is parsed as a header name on every
/// lookup (~300 instructions per request, issue #38).
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_index(request.uri().path());
        let started = std::time::Instant::now();
        let traced = management_call(&request);
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                // Errors are in the headers of a trailers-only response;
                // a success carries its status in the trailers (OK).
                Ok(response) => response
                    .headers()
                    .get(&GRPC_STATUS)
                    .map(|value| grpc_status_code(value.as_bytes()))
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => {
                    metrics::counter!(REQUESTS_REJECTED_TOTAL, "reason" => "overloaded")
                        .increment(1);
                    tonic::Code::ResourceExhausted
                }
            };
            let handles = &REQUEST_HANDLES[method];
            handles.count(method, code).increment(1);
            handles.seconds(method).record(started.elapsed());
            if let Some(traced) = traced {
                traced.end(code as i64);
            }
            result
        })
    }
}

/// A management call (ManageKey, Admin) being traced, when traces are on.
struct ManagementCall {
    traces: &'static crate::traces::Traces,
    path: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
    started: std::time::SystemTime,
}

fn management_call<B>(request: &http::Request<B>) -> Option<ManagementCall> {
    let traces = crate::traces::installed()?;
    let path = request.uri().path();
    if !(path.starts_with("/scopegate.v1.ManageKey/") || path.starts_with("/scopegate.v1.Admin/")) {
        return None;
    }
    let (traceparent, tracestate) = crate::traces::context_of(request.headers());
    Some(ManagementCall {
        traces,
        path: path.to_owned(),
        traceparent,
        tracestate,
        started: std::time::SystemTime::now(),
    })
}

impl ManagementCall {
    fn end(self, code: i64) {
        let method = self.path.trim_start_matches('/').to_owned();
        self.traces.call(
            method.clone(),
            (self.traceparent.as_deref(), self.tracestate.as_deref()),
            self.started,
            vec![
                opentelemetry::KeyValue::new("rpc.system", "grpc"),
                opentelemetry::KeyValue::new("rpc.method", method),
                opentelemetry::KeyValue::new("rpc.grpc.status_code", code),
            ],
        );
    }
}

/// `grpc-status` as sent (ASCII decimal); anything else is UNKNOWN.
fn grpc_status_code(value: &[u8]) -> tonic::Code {
    std::str::from_utf8(value)
        .ok()
        .and_then(|code| code.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32)
}

fn method_index(path: &str) -> usize {
    KNOWN_METHODS
        .iter()
        .position(|known| *known == path)
        .unwrap_or(KNOWN_METHODS.len())
}

/// gRPC status codes 0..=16.
const CODES: usize = 17;

/// A method's metric handles, each registered on first use: recording is
/// then an atomic add, with no label lookup, string or allocation.
struct RequestHandles {
    requests: [OnceLock<metrics::Counter>; CODES],
    seconds: OnceLock<metrics::Histogram>,
}

static REQUEST_HANDLES: [RequestHandles; KNOWN_METHODS.len() + 1] =
    [const { RequestHandles::new() }; KNOWN_METHODS.len() + 1];

impl RequestHandles {
    const fn new() -> RequestHandles {
        RequestHandles {
            requests: [const { OnceLock::new() }; CODES],
            seconds: OnceLock::new(),
        }
    }

    fn count(&self, method: usize, code: tonic::Code) -> &metrics::Counter {
        self.requests[code as usize].get_or_init(|| {
            metrics::counter!(GRPC_REQUESTS_TOTAL, "method" => method_label(method), "code" => code_name(code))
        })
    }

    fn seconds(&self, method: usize) -> &metrics::Histogram {
        self.seconds.get_or_init(
            || metrics::histogram!(GRPC_REQUEST_SECONDS, "method" => method_label(method)),
        )
    }
}

fn method_label(method: usize) -> &'static str {
    KNOWN_METHODS.get(method).copied().unwrap_or("other")
}

/// Which entry point decided.
#[derive(Debug, Clone, Copy)]
pub enum Api {
    Check = 0,
    ExtAuthz = 1,
    ForwardAuth = 2,
    AuthZen = 3,
}

/// Decision codes (`Decision::code`) with a handle each.
const DECISION_CODES: usize = 16;
const DECISION_APIS: usize = 4;

static DECISION_HANDLES: [[OnceLock<metrics::Counter>; DECISION_CODES]; DECISION_APIS] =
    [const { [const { OnceLock::new() }; DECISION_CODES] }; DECISION_APIS];

/// Counts one decision in `scopegate_decisions_total{api, decision}`.
pub fn count_decision(api: Api, decision: &crate::authz::Decision) {
    let label = match api {
        Api::Check => "check",
        Api::ExtAuthz => "ext_authz",
        Api::ForwardAuth => "forward_auth",
        Api::AuthZen => "authzen",
    };
    let name = decision.reason();
    let register = || metrics::counter!(DECISIONS_TOTAL, "api" => label, "decision" => name);
    match DECISION_HANDLES[api as usize].get(usize::from(decision.code())) {
        Some(cell) => cell.get_or_init(register).increment(1),
        None => register().increment(1),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
