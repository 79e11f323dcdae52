//! `serve` configuration: one struct read from a TOML file (`--config`), the
//! environment (`SCOPEGATE_…`) and flags. Precedence: flag > environment >
//! file > built-in default. Every field is optional at each level; [`resolve`]
//! fills defaults and validates, naming the key at fault.
//!
//! [`resolve`]: ServeOptions::resolve

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::manage::DEFAULT_MAX_KEYS_PER_ACCOUNT;
use crate::proxy::ProxyConfig;
use crate::server::{Limits, DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use crate::store::fleet::DEFAULT_PREFIX as DEFAULT_ETCD_PREFIX;
use crate::token::DEFAULT_PREFIX;

mod resolve;
mod usage;
mod webhooks;

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// Threads answering requests unless `--worker-threads` says otherwise: two,
/// or one where the process may use only one CPU (taskset, a 1-CPU
/// container): two workers pinned to one CPU measured 0.61x one worker.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |cpus| cpus.get().min(2))
}
pub const DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS: u64 = 100;
pub const DEFAULT_SLED_CACHE_MIB: u64 = crate::store::DEFAULT_CACHE_BYTES >> 20;

/// Settings of `scopegate serve`. The same names are TOML keys (snake_case),
/// flags (kebab-case) and env vars (SCOPEGATE_ + upper case).
#[derive(Args, Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// TCP address for gRPC (all services), or "none" for Unix socket only.
    /// [default: 127.0.0.1:50051]
    #[arg(long, env = "SCOPEGATE_LISTEN")]
    pub listen: Option<String>,
    /// Also serve gRPC on this Unix domain socket (for Envoy and apps in the pod).
    #[arg(long, env = "SCOPEGATE_UDS")]
    pub uds: Option<PathBuf>,
    /// File mode of the Unix socket, octal. [default: 660]
    #[arg(long, env = "SCOPEGATE_UDS_MODE")]
    pub uds_mode: Option<String>,
    /// Serve ManageKey only on this separate address (the hot-path services
    /// stay on --listen / --uds). Unset: ManageKey is served with the others.
    #[arg(long, env = "SCOPEGATE_MANAGE_LISTEN")]
    pub manage_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve gRPC over TLS on the TCP listeners (the
    /// Unix socket stays local plaintext). Needs --tls-key-file.
    #[arg(long, env = "SCOPEGATE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for --tls-cert-file.
    #[arg(long, env = "SCOPEGATE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// HTTP address for /metrics (Prometheus), /healthz and /readyz, or "none".
    /// [default: 127.0.0.1:9090]
    #[arg(long, env = "SCOPEGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// HTTP address of the SendGrid-shaped REST API (/v3/api_keys,
    /// /v3/scopes, /openapi.json) and the key console (/console), or "none".
    /// Same TLS as gRPC.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "SCOPEGATE_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Where keys are stored (sled). Created if missing; one process at a time.
    /// [default: scopegate-data]
    #[arg(long, env = "SCOPEGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File holding the admin token. The token may also come from the
    /// SCOPEGATE_ADMIN_TOKEN environment variable. Default:
    /// <data-dir>/admin.token, generated on first start.
    #[arg(long, env = "SCOPEGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Catalog TOML replacing the built-in scopes (see catalogs/).
    #[arg(long, env = "SCOPEGATE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// HTTP routes (TOML) mapping method + path to a scope, for Envoy
    /// ext_authz and Authorize.Check{http}; reloaded on SIGHUP. Default with
    /// the built-in catalog: the built-in copy of examples/routes.toml.
    #[arg(long, env = "SCOPEGATE_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Also reload the catalog and routes files when their content changes,
    /// checked every this many seconds; 0 turns the watch off (SIGHUP still
    /// works). Replace files by rename so a half-written one is never read.
    /// [default: 0]
    #[arg(long, env = "SCOPEGATE_WATCH_SECS")]
    pub watch_secs: Option<f64>,
    /// ext_authz: also accept the raw token in this header (e.g. x-api-key),
    /// besides `authorization: Bearer <token>`.
    #[arg(long, env = "SCOPEGATE_API_KEY_HEADER")]
    pub api_key_header: Option<String>,
    /// ext_authz: upstream header that carries the key id on allow.
    /// [default: x-scopegate-key-id]
    #[arg(long, env = "SCOPEGATE_KEY_ID_HEADER")]
    pub key_id_header: Option<String>,
    /// ext_authz: upstream header that carries the account id on allow.
    /// [default: x-scopegate-account-id]
    #[arg(long, env = "SCOPEGATE_ACCOUNT_ID_HEADER")]
    pub account_id_header: Option<String>,
    /// ext_authz: pass the credential header upstream (default: removed).
    #[arg(long, env = "SCOPEGATE_KEEP_CREDENTIAL_HEADER", num_args = 0..=1, default_missing_value = "true")]
    pub keep_credential_header: Option<bool>,
    /// First part of every token, as in SG.<key id>.<secret>. Changing it
    /// invalidates existing tokens. [default: SG]
    #[arg(long, env = "SCOPEGATE_TOKEN_PREFIX")]
    pub token_prefix: Option<String>,
    /// File holding a server secret: secrets are then stored as
    /// HMAC-SHA256(pepper, secret) instead of SHA-256(secret). Keep it stable.
    #[arg(long, env = "SCOPEGATE_PEPPER_FILE")]
    pub pepper_file: Option<PathBuf>,
    /// Most keys one account may hold. [default: 100]
    #[arg(long, env = "SCOPEGATE_MAX_KEYS_PER_ACCOUNT")]
    pub max_keys_per_account: Option<usize>,
    /// Every key must expire within this many seconds of its creation or
    /// last expiry change (a key without expire_time is refused). Unset: no
    /// limit.
    #[arg(long, env = "SCOPEGATE_MAX_KEY_LIFETIME_SECS")]
    pub max_key_lifetime_secs: Option<u64>,
    /// Seconds between writes of the keys' "last used" marks (one batch of
    /// the keys used since the round before). [default: 60]
    #[arg(long, env = "SCOPEGATE_LAST_USED_INTERVAL_SECS")]
    pub last_used_interval_secs: Option<u64>,
    /// Days the audit trail keeps each event. [default: 90]
    #[arg(long, env = "SCOPEGATE_AUDIT_RETENTION_DAYS")]
    pub audit_retention_days: Option<u64>,
    /// Audit events kept per account at most; the oldest go first. Bounds
    /// the audit trail's space (in fleet mode, etcd's, shared by every
    /// deployment on it). [default: 100000]
    #[arg(long, env = "SCOPEGATE_AUDIT_MAX_EVENTS_PER_ACCOUNT")]
    pub audit_max_events_per_account: Option<u64>,
    /// ext_authz allows every request but counts (scopegate_dry_run_denials_total),
    /// logs (sampled) and marks in dynamic metadata what it would have
    /// denied: for putting scopegate in front of a live API without breaking
    /// clients. A routes file can do the same per rule (`mode = "dry_run"`).
    #[arg(long, env = "SCOPEGATE_DRY_RUN", num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: Option<bool>,
    /// Where keys live: "standalone" (the sled store in --data-dir is the
    /// truth) or "etcd" (fleet mode: every sidecar of a deployment shares its
    /// keys through etcd; --data-dir holds this sidecar's mirror, served at
    /// once on restart, even while etcd is down). [default: standalone]
    #[arg(long, env = "SCOPEGATE_STORE")]
    pub store: Option<String>,
    /// Fleet mode: etcd client URLs, comma-separated, e.g.
    /// https://etcd-0:2379,https://etcd-1:2379
    #[arg(long, env = "SCOPEGATE_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// Fleet mode: the key prefix of this deployment in etcd.
    /// [default: /scopegate/v1/]
    #[arg(long, env = "SCOPEGATE_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Fleet mode: PEM CA bundle for etcd's server certificate (enables TLS).
    #[arg(long, env = "SCOPEGATE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Fleet mode: PEM client certificate for etcd (needs --etcd-key-file).
    #[arg(long, env = "SCOPEGATE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Fleet mode: PEM private key for --etcd-cert-file.
    #[arg(long, env = "SCOPEGATE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Fleet mode: etcd user (needs --etcd-password-file).
    #[arg(long, env = "SCOPEGATE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// Fleet mode: file holding the etcd user's password (mode 0600).
    #[arg(long, env = "SCOPEGATE_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Fleet mode: when etcd has not been heard from for this many seconds,
    /// fail closed (Check UNAVAILABLE, ext_authz 503) instead of deciding
    /// from the last applied state. Off by default: a sidecar keeps serving
    /// through an etcd outage (fail-static), at the price of honouring
    /// revocations made elsewhere only once etcd is back.
    #[arg(long, env = "SCOPEGATE_MAX_STALENESS_SECS")]
    pub max_staleness_secs: Option<f64>,
    /// Seconds that shutdown (SIGTERM/SIGINT) waits for in-flight requests
    /// before closing connections. [default: 5]
    #[arg(long, env = "SCOPEGATE_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<f64>,
    /// Check requests (Authorize, ext_authz, health, reflection) handled at
    /// once; beyond it they are shed at once with RESOURCE_EXHAUSTED instead
    /// of queueing. Management has its own limit, so it can never starve
    /// checks. [default: 1024]
    #[arg(long, env = "SCOPEGATE_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Management requests (ManageKey, Admin, REST, console) handled at
    /// once, one budget for every door (shed beyond it, like checks).
    /// [default: 64]
    #[arg(long, env = "SCOPEGATE_MAX_CONCURRENT_MANAGE")]
    pub max_concurrent_manage: Option<usize>,
    /// Key changes (create, update, delete) per second that the API keys of
    /// one account may make, with bursts of as many; beyond it
    /// RESOURCE_EXHAUSTED with a retry delay. The admin token is not limited.
    /// [default: 20]
    #[arg(long, env = "SCOPEGATE_MUTATIONS_PER_ACCOUNT_PER_SEC")]
    pub mutations_per_account_per_sec: Option<u32>,
    /// Management reads (GetKey, ListKeys, ListAuditEvents) per second that
    /// the API keys of one account may make, with bursts of as many; beyond
    /// it RESOURCE_EXHAUSTED with a retry delay. They run off the decision
    /// workers either way. The admin token is not limited. [default: 50]
    #[arg(long, env = "SCOPEGATE_READS_PER_ACCOUNT_PER_SEC")]
    pub reads_per_account_per_sec: Option<u32>,
    /// Deadline of a management call in milliseconds (a shorter grpc-timeout
    /// wins); checks never wait. A change cut by it still completes or never
    /// happens; retry a CreateKey with the same request_id to get its result.
    /// [default: 5000 standalone (an fdatasync on a busy disk), 15000 with
    /// --store etcd (a commit across a leader election)]
    #[arg(long, env = "SCOPEGATE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest request message for Authorize and ManageKey, bytes. [default: 65536]
    #[arg(long, env = "SCOPEGATE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest ext_authz request, bytes (Envoy may send bodies). [default: 1048576]
    #[arg(long, env = "SCOPEGATE_EXT_AUTHZ_MAX_MESSAGE_BYTES")]
    pub ext_authz_max_message_bytes: Option<usize>,
    /// HTTP/2 streams per connection. [default: 256]
    #[arg(long, env = "SCOPEGATE_HTTP2_MAX_CONCURRENT_STREAMS")]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Log one check decision in N (ids, scope, outcome; never a token);
    /// 0 logs none. [default: 0]
    #[arg(long, env = "SCOPEGATE_LOG_DECISIONS_EVERY")]
    pub log_decisions_every: Option<u64>,
    /// Log format: human or json. [default: human]
    #[arg(long, env = "SCOPEGATE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Threads answering requests. Each check takes microseconds, so two
    /// keep up with what a pod's app can send; more only help a sidecar given
    /// more than two CPUs. [default: 2, or 1 where the process may use only
    /// one CPU (taskset, cgroup CPU quota)]
    #[arg(long, env = "SCOPEGATE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Memory sled may use to cache key records, MiB. Checks never read it
    /// (keys are served from memory); it speeds up key management and
    /// start-up on large stores. [default: 16]
    #[arg(long, env = "SCOPEGATE_SLED_CACHE_MIB")]
    pub sled_cache_mib: Option<u64>,
    /// Keep keys' rate-limit counters in this Redis, shared by every sidecar
    /// that names it: redis://host:6379/0, rediss:// for TLS (the system's
    /// CAs, or SSL_CERT_FILE). Unset: counters in memory, per sidecar (per
    /// pod: N pods allow N times a limit).
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_REDIS")]
    pub rate_limit_redis: Option<String>,
    /// File holding the Redis password (mode 0600); never in the URL.
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_REDIS_PASSWORD_FILE")]
    pub rate_limit_redis_password_file: Option<PathBuf>,
    /// Longest wait for Redis per check, ms; past it Redis counts as away.
    /// [default: 100]
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_REDIS_TIMEOUT_MS")]
    pub rate_limit_redis_timeout_ms: Option<u64>,
    /// Redis away: deny requests of limited keys (gRPC UNAVAILABLE, HTTP
    /// 503) instead of letting them through uncounted (the default: a
    /// safety counter should not take the API down).
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_FAIL_CLOSED", num_args = 0..=1, default_missing_value = "true")]
    pub rate_limit_fail_closed: Option<bool>,
    /// ext_authz counts keys' rate limits (default). Set false where Envoy's
    /// rate-limit filter asks scopegate's RateLimitService instead, so a
    /// request is not counted twice.
    #[arg(long, env = "SCOPEGATE_EXT_AUTHZ_RATE_LIMITS", num_args = 0..=1, default_missing_value = "true")]
    pub ext_authz_rate_limits: Option<bool>,
    /// Where Envoy's RateLimitService (envoy.service.ratelimit.v3) is
    /// served: `none`, `uds` (on --uds, beside the decisions) or HOST:PORT
    /// (a listener of its own; TLS as gRPC's). It counts hits against any
    /// key id it is sent and tells what is left, so only the proxy may reach
    /// it: it is never on the check port. [default: none]
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_SERVICE_LISTEN")]
    pub rate_limit_service_listen: Option<String>,
    /// Largest `hits_addend` the RateLimitService takes (per request or
    /// descriptor); above it the call is refused with INVALID_ARGUMENT.
    /// [default: 1]
    #[arg(long, env = "SCOPEGATE_RATE_LIMIT_MAX_HITS")]
    pub rate_limit_max_hits: Option<u64>,
    /// HTTP address of the forward-auth door (nginx auth_request, Traefik
    /// ForwardAuth, Caddy forward_auth, Envoy's HTTP ext_authz, Gateway
    /// API's ExternalAuth) and of AuthZEN 1.0 (/access/v1/evaluation(s)), or
    /// "none". It trusts X-Forwarded-Method/-Uri and X-Original-Method/-URI
    /// to name the request judged, so only the proxy may reach it (loopback
    /// beside it, or a NetworkPolicy). Same TLS as gRPC. [default: none]
    #[arg(long, env = "SCOPEGATE_FORWARD_AUTH_LISTEN")]
    pub forward_auth_listen: Option<String>,
    /// Forward-auth without X-Forwarded-*/X-Original-* headers judges the
    /// request's own method and path, less this prefix (Envoy's HTTP
    /// ext_authz `path_prefix`, e.g. /check). [default: ""]
    #[arg(long, env = "SCOPEGATE_FORWARD_AUTH_PATH_PREFIX")]
    pub forward_auth_path_prefix: Option<String>,
    /// Proxies (comma-separated CIDRs) whose X-Forwarded-For names the
    /// client address forward-auth judges (a key's allowlist). Unset: the
    /// peer's own address, X-Forwarded-For ignored. [default: ""]
    #[arg(long, env = "SCOPEGATE_FORWARD_AUTH_TRUSTED_PROXIES")]
    pub forward_auth_trusted_proxies: Option<String>,
    /// A header the proxy sets (overwriting any the client sent, e.g.
    /// nginx's proxy_set_header) to say what the request costs a key with
    /// credits, instead of its route's `cost`. Unset: route costs only (a
    /// header a client could send is never believed).
    #[arg(long, env = "SCOPEGATE_FORWARD_AUTH_COST_HEADER")]
    pub forward_auth_cost_header: Option<String>,
    /// Count every decision per key, outcome and scope, readable as
    /// SendGrid's stats (GET /v3/api_keys/{id}/stats, /v3/stats,
    /// ManageKey.GetUsage, `scopegate usage`, the console): `on` or `off`.
    /// [default: on]
    #[arg(long, env = "SCOPEGATE_USAGE")]
    pub usage: Option<String>,
    /// Seconds between usage flushes (counts become readable then; a
    /// kill -9 forgets at most this much). [default: 10]
    #[arg(long, env = "SCOPEGATE_USAGE_FLUSH_SECS")]
    pub usage_flush_secs: Option<u64>,
    /// How long minute buckets of usage are kept (30m, 48h, 7d).
    /// [default: 48h]
    #[arg(long, env = "SCOPEGATE_USAGE_RETENTION_MINUTE")]
    pub usage_retention_minute: Option<String>,
    /// How long hour buckets of usage are kept. [default: 90d]
    #[arg(long, env = "SCOPEGATE_USAGE_RETENTION_HOUR")]
    pub usage_retention_hour: Option<String>,
    /// How long day buckets of usage are kept. [default: 400d]
    #[arg(long, env = "SCOPEGATE_USAGE_RETENTION_DAY")]
    pub usage_retention_day: Option<String>,
    /// Add every sidecar's usage up in this Redis (fleet mode):
    /// redis:// or rediss://. Unset: --rate-limit-redis, if that is set;
    /// else each sidecar's own data dir (a fleet's reads say "partial").
    #[arg(long, env = "SCOPEGATE_USAGE_REDIS")]
    pub usage_redis: Option<String>,
    /// File holding the usage Redis's password (mode 0600). Unset, with
    /// --usage-redis unset too: --rate-limit-redis-password-file.
    #[arg(long, env = "SCOPEGATE_USAGE_REDIS_PASSWORD_FILE")]
    pub usage_redis_password_file: Option<PathBuf>,
    /// What a reported leak (GitHub's secret scanning, `keys report-leak`)
    /// does to its key besides marking it exposed: disable, delete or
    /// notify (mark only). [default: disable]
    #[arg(long, env = "SCOPEGATE_LEAK_ACTION")]
    pub leak_action: Option<String>,
    /// GitHub's secret scanning public keys, as published at
    /// api.github.com/meta/public_keys/secret_scanning (save it; nothing is
    /// fetched at run time; reloaded on SIGHUP). Set: POST
    /// /secret-scanning/github on the REST listener takes GitHub's reports.
    #[arg(long, env = "SCOPEGATE_GITHUB_SCANNING_KEYS")]
    pub github_scanning_keys: Option<PathBuf>,
    /// Send key events to the webhook endpoints accounts register
    /// (POST /v3/webhooks, `scopegate webhooks`, the console), signed per
    /// Standard Webhooks: `on` or `off`. [default: on]
    #[arg(long, env = "SCOPEGATE_WEBHOOKS")]
    pub webhooks: Option<String>,
    /// Let webhook endpoints be on loopback, link-local or private
    /// addresses (refused by default: a tenant's URL must not reach what
    /// only the sidecar can, like a cloud metadata service).
    #[arg(long, env = "SCOPEGATE_WEBHOOK_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhook_allow_private: Option<bool>,
    /// One delivery attempt gives up after this (5s, 1m). [default: 10s]
    #[arg(long, env = "SCOPEGATE_WEBHOOK_TIMEOUT")]
    pub webhook_timeout: Option<String>,
    /// A delivery is retried (backing off) this long after its first
    /// attempt, then kept as a dead letter to redeliver. [default: 24h]
    #[arg(long, env = "SCOPEGATE_WEBHOOK_RETRY_FOR")]
    pub webhook_retry_for: Option<String>,
    /// The longest wait between two attempts of one delivery. [default: 1h]
    #[arg(long, env = "SCOPEGATE_WEBHOOK_MAX_BACKOFF")]
    pub webhook_max_backoff: Option<String>,
    /// `key.expiring` goes out this long before a key expires. [default: 7d]
    #[arg(long, env = "SCOPEGATE_WEBHOOK_EXPIRING_BEFORE")]
    pub webhook_expiring_before: Option<String>,
    /// Send OpenTelemetry traces to this OTLP/gRPC collector, e.g.
    /// http://otel-collector:4317: a span per management call, and per
    /// sampled decision. Unset: no traces.
    #[arg(long, env = "SCOPEGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of decisions traced, 0 to 1 (0.01: one in a hundred). 0:
    /// none, at no cost to decisions. [default: 0]
    #[arg(long, env = "SCOPEGATE_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
}

/// Seconds between writes of the keys' "last used" marks, by default.
pub const DEFAULT_LAST_USED_INTERVAL_SECS: u64 = 60;
/// Days the audit trail keeps an event, by default.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid config {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

macro_rules! prefer {
    ($high:ident, $low:ident, $($field:ident),* $(,)?) => {
        $( if $high.$field.is_none() { $high.$field = $low.$field.take(); } )*
    };
}

/// The later half of [`ServeOptions::or`] (proxies, usage, leaks, webhooks).
fn prefer_more(high: &mut ServeOptions, lower: &mut ServeOptions) {
    prefer!(
        high,
        lower,
        forward_auth_listen,
        forward_auth_path_prefix,
        forward_auth_trusted_proxies,
        forward_auth_cost_header,
        usage,
        usage_flush_secs,
        usage_retention_minute,
        usage_retention_hour,
        usage_retention_day,
        usage_redis,
        usage_redis_password_file,
        leak_action,
        github_scanning_keys,
        webhooks,
        webhook_allow_private,
        webhook_timeout,
        webhook_retry_for,
        webhook_max_backoff,
        webhook_expiring_before,
        otlp_endpoint,
        trace_sample_ratio,
    );
}

impl ServeOptions {
    pub fn from_file(path: &Path) -> Result<ServeOptions, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
    }

    /// Fills every field still unset from `lower` (flags/env over file).
    pub fn or(mut self, mut lower: ServeOptions) -> ServeOptions {
        let high = &mut self;
        prefer!(
            high,
            lower,
            listen,
            uds,
            uds_mode,
            manage_listen,
            tls_cert_file,
            tls_key_file,
            metrics_listen,
            http_listen,
            data_dir,
            admin_token_file,
            catalog,
            routes,
            watch_secs,
            api_key_header,
            key_id_header,
            account_id_header,
            keep_credential_header,
            token_prefix,
            pepper_file,
            max_keys_per_account,
            max_key_lifetime_secs,
            audit_retention_days,
            audit_max_events_per_account,
            last_used_interval_secs,
            dry_run,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_ca_file,
            etcd_cert_file,
            etcd_key_file,
            etcd_user,
            etcd_password_file,
            max_staleness_secs,
            drain_timeout_secs,
            max_concurrent_requests,
            max_concurrent_manage,
            mutations_per_account_per_sec,
            reads_per_account_per_sec,
            request_timeout_ms,
            max_message_bytes,
            ext_authz_max_message_bytes,
            http2_max_concurrent_streams,
            log_decisions_every,
            log_format,
            worker_threads,
            sled_cache_mib,
            rate_limit_redis,
            rate_limit_redis_password_file,
            rate_limit_redis_timeout_ms,
            rate_limit_fail_closed,
            ext_authz_rate_limits,
            rate_limit_service_listen,
            rate_limit_max_hits,
        );
        prefer_more(high, &mut lower);
        self
    }

    /// Every field with its effective value (defaults filled in), for
    /// `config print`. Holds file paths only, never a secret.
    pub fn effective(&self) -> ServeOptions {
        let defaults = ServeOptions {
            listen: Some(DEFAULT_LISTEN.into()),
            uds_mode: Some("660".into()),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.into()),
            http_listen: Some(crate::http::DEFAULT_HTTP_LISTEN.into()),
            data_dir: Some(DEFAULT_DATA_DIR.into()),
            key_id_header: Some(ProxyConfig::default().key_id_header),
            account_id_header: Some(ProxyConfig::default().account_id_header),
            keep_credential_header: Some(false),
            token_prefix: Some(DEFAULT_PREFIX.into()),
            max_keys_per_account: Some(DEFAULT_MAX_KEYS_PER_ACCOUNT),
            drain_timeout_secs: Some(5.0),
            watch_secs: Some(0.0),
            max_concurrent_requests: Some(Limits::default().max_concurrent_requests),
            max_concurrent_manage: Some(Limits::default().max_concurrent_manage),
            mutations_per_account_per_sec: Some(Limits::default().mutations_per_account_per_sec),
            reads_per_account_per_sec: Some(Limits::default().reads_per_account_per_sec),
            request_timeout_ms: Some(match self.store.as_deref() {
                Some("etcd") => crate::server::DEFAULT_FLEET_REQUEST_TIMEOUT_MS,
                _ => crate::server::DEFAULT_REQUEST_TIMEOUT_MS,
            }),
            max_message_bytes: Some(Limits::default().max_message_bytes),
            ext_authz_max_message_bytes: Some(Limits::default().ext_authz_max_message_bytes),
            http2_max_concurrent_streams: Some(Limits::default().http2_max_concurrent_streams),
            log_decisions_every: Some(0),
            log_format: Some("human".into()),
            worker_threads: Some(default_worker_threads()),
            sled_cache_mib: Some(DEFAULT_SLED_CACHE_MIB),
            rate_limit_redis_timeout_ms: Some(DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS),
            rate_limit_fail_closed: Some(false),
            ext_authz_rate_limits: Some(true),
            rate_limit_service_listen: Some("none".into()),
            rate_limit_max_hits: Some(1),
            forward_auth_listen: Some("none".into()),
            forward_auth_path_prefix: Some(String::new()),
            forward_auth_trusted_proxies: Some(String::new()),
            usage: Some("on".into()),
            leak_action: Some("disable".into()),
            webhooks: Some("on".into()),
            webhook_allow_private: Some(false),
            webhook_timeout: Some("10s".into()),
            webhook_retry_for: Some("24h".into()),
            webhook_max_backoff: Some("1h".into()),
            webhook_expiring_before: Some("7d".into()),
            trace_sample_ratio: Some(0.0),
            usage_flush_secs: Some(crate::usage::DEFAULT_FLUSH_SECS),
            usage_retention_minute: Some("48h".into()),
            usage_retention_hour: Some("90d".into()),
            usage_retention_day: Some("400d".into()),
            last_used_interval_secs: Some(DEFAULT_LAST_USED_INTERVAL_SECS),
            audit_retention_days: Some(DEFAULT_AUDIT_RETENTION_DAYS),
            audit_max_events_per_account: Some(crate::store::DEFAULT_AUDIT_MAX_EVENTS_PER_ACCOUNT),
            store: Some("standalone".into()),
            etcd_prefix: Some(DEFAULT_ETCD_PREFIX.into()),
            ..ServeOptions::default()
        };
        self.clone().or(defaults)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: ServeOptions =
            toml::from_str("listen = \"127.0.0.1:7000\"\nmax_keys_per_account = 7\n").unwrap();
        let flags = ServeOptions {
            listen: Some("127.0.0.1:8000".into()),
            ..ServeOptions::default()
        };
        let config = flags.or(file).resolve().unwrap();
        assert_eq!(config.listen.unwrap().port(), 8000);
        assert_eq!(config.max_keys_per_account, 7);
        assert_eq!(config.token_prefix, "SG");
    }

    #[test]
    fn every_file_setting_reaches_the_config() {
        // A file that sets every key (values distinct from the defaults).
        let file: ServeOptions = toml::from_str(
            r#"
            listen = "127.0.0.1:7000"
            uds = "/run/s.sock"
            uds_mode = "600"
            manage_listen = "127.0.0.1:7001"
            tls_cert_file = "/c.pem"
            tls_key_file = "/k.pem"
            metrics_listen = "none"
            data_dir = "/d"
            admin_token_file = "/a"
            catalog = "/cat.toml"
            routes = "/r.toml"
            watch_secs = 0.5
            api_key_header = "X-Api-Key"
            key_id_header = "x-k"
            account_id_header = "x-a"
            keep_credential_header = true
            token_prefix = "TK"
            pepper_file = "/p"
            max_keys_per_account = 7
            max_key_lifetime_secs = 86400
            audit_retention_days = 30
            last_used_interval_secs = 5
            dry_run = true
            drain_timeout_secs = 2.5
            max_concurrent_requests = 9
            store = "etcd"
            etcd_endpoints = "http://127.0.0.1:2379, http://127.0.0.2:2379"
            etcd_prefix = "/sg/"
            etcd_ca_file = "/ca.pem"
            etcd_cert_file = "/etcd.pem"
            etcd_key_file = "/etcd.key"
            etcd_user = "sg"
            etcd_password_file = "/pw"
            max_staleness_secs = 30
            max_concurrent_manage = 5
            mutations_per_account_per_sec = 6
            request_timeout_ms = 250
            max_message_bytes = 1000
            ext_authz_max_message_bytes = 2000
            http2_max_concurrent_streams = 11
            log_decisions_every = 3
            log_format = "json"
            "#,
        )
        .unwrap();
        let merged = ServeOptions::default().or(file.clone());
        assert_eq!(
            toml::to_string(&merged).unwrap(),
            toml::to_string(&file).unwrap(),
            "a field is missing from ServeOptions::or"
        );
        let config = merged.resolve().unwrap();
        assert_eq!(config.tls, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(config.decision_log_every, 3);
        assert_eq!(config.watch_interval, Some(Duration::from_millis(500)));
        assert_eq!(config.limits.request_timeout, Duration::from_millis(250));
        assert!(config.json_logs && config.metrics_listen.is_none());
        assert_eq!(
            config.ext_authz.api_key_header.as_deref(),
            Some("x-api-key")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen: `nowhere` is not HOST:PORT"),
            (
                "uds_mode = \"999\"",
                "uds_mode: `999` is not an octal file mode",
            ),
            (
                "max_concurrent_requests = 0",
                "max_concurrent_requests: must be at least 1",
            ),
            (
                "log_format = \"xml\"",
                "log_format: `xml` is not human or json",
            ),
            (
                "key_id_header = \"a b\"",
                "key_id_header: `a b` is not an HTTP header name",
            ),
            ("listen = \"none\"", "listen: is \"none\" and no uds is set"),
            (
                "watch_secs = -1.0",
                "watch_secs: -1 is not a duration in seconds",
            ),
        ];
        for (text, expected) in cases {
            let options: ServeOptions = toml::from_str(text).unwrap();
            let error = options.resolve().unwrap_err().to_string();
            assert!(
                error.starts_with(expected),
                "{error:?} should start with {expected:?}"
            );
        }
        let unknown = toml::from_str::<ServeOptions>("colour = 1")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `colour`"), "{unknown}");
    }
}
