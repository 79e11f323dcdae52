//! What `serve` runs with once `config` has resolved it, and the defaults
//! that belong to the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::ProxyConfig;
use crate::store::FleetConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Health service name that reports whether rate-limit counters answer.
pub const RATE_LIMITS_SERVICE: &str = "scopegate.v1.RateLimits";

/// Health service name that reports fleet sync (not decision) health.
pub const FLEET_SYNC_SERVICE: &str = "scopegate.v1.FleetSync";
pub const DEFAULT_DATA_DIR: &str = "scopegate-data";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub(super) const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Everything `serve` needs, resolved and validated (see `config.rs`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Runtime threads answering requests.
    pub worker_threads: usize,
    /// sled's record cache.
    pub sled_cache_bytes: u64,
    /// How often the "last used" marks are written.
    pub last_used_interval: Duration,
    /// How long audit events are kept.
    pub audit_retention: Duration,
    /// Audit events kept per account at most.
    pub audit_max_events_per_account: u64,
    /// Every key must expire within this; `None`: no limit.
    pub max_key_lifetime: Option<Duration>,
    /// Fleet mode (etcd is the source of truth); `None`: standalone.
    pub fleet: Option<FleetConfig>,
    /// Fleet mode: fail closed when etcd has not been heard for this long.
    pub max_staleness: Option<Duration>,
    /// TCP address for gRPC; `None`: Unix socket only.
    pub listen: Option<SocketAddr>,
    pub uds: Option<PathBuf>,
    pub uds_mode: u32,
    /// (certificate chain, private key) PEM files: TLS on the TCP listeners.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Separate address for ManageKey; `None`: served with the others.
    pub manage_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// The REST API (SendGrid's shapes), if any.
    pub http_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Where the admin token comes from, when not `<data_dir>/admin.token`.
    pub admin_token: AdminTokenSource,
    pub catalog: Option<PathBuf>,
    /// HTTP route table for ext_authz and `Check{http}`.
    pub routes: Option<PathBuf>,
    pub ext_authz: ProxyConfig,
    pub token_prefix: String,
    pub pepper_file: Option<PathBuf>,
    pub max_keys_per_account: usize,
    /// How long shutdown waits for in-flight requests and open connections.
    pub drain_timeout: Duration,
    /// Poll the catalog and routes files this often and reload on change.
    pub watch_interval: Option<Duration>,
    pub limits: Limits,
    pub json_logs: bool,
    /// Log one check decision in this many (0: none).
    pub decision_log_every: u64,
    /// Where rate-limit counters live.
    pub counters: crate::counters::CountersConfig,
    /// Counters away: deny requests of limited keys.
    pub rate_limit_fail_closed: bool,
    /// Envoy's RateLimitService, where the operator put it (off: `None`).
    pub rate_limit_service: Option<RateLimitService>,
    /// The forward-auth and AuthZEN door, if any.
    pub forward_auth: Option<ForwardAuthAt>,
    /// Decisions counted per key (`None`: `--usage off`).
    pub usage: Option<crate::usage::UsageConfig>,
    /// Webhook delivery (`None`: `--webhooks off`).
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
    /// OpenTelemetry traces (`None`: no --otlp-endpoint).
    pub traces: Option<crate::traces::TraceSettings>,
    /// What a reported leak does to its key.
    pub leak_action: crate::manage::LeakAction,
    /// GitHub's secret scanning keys file (`None`: no GitHub intake).
    pub github_scanning_keys: Option<std::path::PathBuf>,
}

/// Envoy's RateLimitService: it counts hits for any key id it is sent, so
/// it is served only where the operator says, never on the check port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub at: RateLimitServiceAt,
    /// Largest `hits_addend` taken.
    pub max_hits: u64,
}

/// Where the forward-auth door listens, and how it reads what the proxy says.
#[derive(Debug, Clone)]
pub struct ForwardAuthAt {
    pub listen: SocketAddr,
    /// Stripped from the request's own path when no forwarded headers say
    /// which request is judged.
    pub path_prefix: String,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the proxy names a request's cost in, if it does.
    pub cost_header: Option<axum::http::HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitServiceAt {
    /// On the Unix socket, beside the decisions.
    Uds,
    /// A TCP listener of its own.
    Tcp(SocketAddr),
}

/// Management deadlines: long enough for an fdatasync on a busy disk, or an
/// etcd commit across a leader election, so a change that will complete is
/// not reported as DEADLINE_EXCEEDED (and retried into a duplicate).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FLEET_REQUEST_TIMEOUT_MS: u64 = 15_000;

/// Resource bounds, each with its reason.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Check requests in progress. Beyond it a request is shed at once
    /// (RESOURCE_EXHAUSTED) rather than queued: a sidecar that queues without
    /// bound turns a burst into latency for every request behind it.
    pub max_concurrent_requests: usize,
    /// Management requests in progress: a separate limit, so a flood of
    /// mutations (each holding its slot across a disk sync) never sheds a
    /// check.
    pub max_concurrent_manage: usize,
    /// Envoy's RateLimitService calls in progress (each may wait on Redis):
    /// a budget of their own, so a flood never sheds a check.
    pub max_concurrent_rate_limits: usize,
    /// Mutations per second (and burst) for the API keys of one account.
    pub mutations_per_account_per_sec: u32,
    /// Management reads per second (and burst) for the API keys of one account.
    pub reads_per_account_per_sec: u32,
    /// A management request still running after this is cancelled; a
    /// shorter client `grpc-timeout` wins. Only a stuck disk or etcd could
    /// come near it; checks never wait, so they carry no timer.
    pub request_timeout: Duration,
    /// Check and management messages are small; anything larger is a mistake
    /// or an attack.
    pub max_message_bytes: usize,
    /// Envoy may forward request bodies to ext_authz.
    pub ext_authz_max_message_bytes: usize,
    /// Streams per HTTP/2 connection: enough for Envoy's multiplexing, bounded
    /// so one connection cannot take every concurrency slot.
    pub http2_max_concurrent_streams: u32,
    /// Connections whose peer makes us reset this many streams are closed
    /// (the HTTP/2 rapid-reset guard, which tonic leaves off unless set).
    pub http2_max_local_error_reset_streams: usize,
    /// Ping idle HTTP/2 connections, and drop peers that stop answering, so
    /// dead Envoys do not hold connections forever: on listeners at a
    /// network address only (`listen::Peer`).
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_requests: 1024,
            max_concurrent_manage: 64,
            max_concurrent_rate_limits: 256,
            mutations_per_account_per_sec: 20,
            reads_per_account_per_sec: 50,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_message_bytes: 64 * 1024,
            ext_authz_max_message_bytes: 1024 * 1024,
            http2_max_concurrent_streams: 256,
            http2_max_local_error_reset_streams: 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub enum AdminTokenSource {
    /// `<data_dir>/admin.token`, generated on first start.
    DataDir,
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for AdminTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTokenSource::DataDir => f.write_str("DataDir"),
            AdminTokenSource::File(path) => write!(f, "File({})", path.display()),
            AdminTokenSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}
