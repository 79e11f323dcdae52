//! scopegate: a gRPC authorization sidecar for API keys with permission scopes.
//!
//! Crate map, top down (the long version is ARCHITECTURE.md):
//! - [`cli`]: the command line, server and client subcommands.
//! - [`config`]: serve settings from file, env and flags; validation.
//! - [`server`]: `scopegate serve`: wiring, listeners, health, reflection,
//!   reload, drain.
//! - [`grpc`], [`http`], [`uds`]: the edges (gRPC and Envoy's services; REST
//!   and the console; Unix-socket connections): wire formats ↔ use-cases.
//! - [`manage`]: key lifecycle use-cases: callers, permissions, no escalation.
//! - [`gate`]: what every request of every door passes first: readiness,
//!   budgets, deadlines. [`check`]: the decision, limits counted, for every
//!   decision door. [`proxy`]: what the proxy doors share (header names,
//!   the credential scan).
//! - [`throttle`], [`readiness`], [`counters`]: management's per-account
//!   rates and failed credentials; keys loaded and fresh; the keys' rate
//!   limits' counters (limitador: in memory or Redis).
//! - [`store`]: sled (standalone) or etcd with a sled mirror (fleet), group
//!   commit, publishing into the table.
//! - [`telemetry`]: metric names, /metrics /healthz /readyz. [`traces`]:
//!   OpenTelemetry spans (management calls, sampled decisions) over OTLP.
//! - [`webhooks`]: key events to the provider's endpoints, signed, from
//!   the store's outbox (delivery, retries, dead letters, derived events).
//! - [`request_id`], [`secret_file`], [`secret_scanning`]: CreateKey retries;
//!   secrets from files; GitHub's leak reports (signatures, token patterns).
//! - The pure core, re-exported from the `scopegate-core` crate: [`authz`]
//!   (the decision, the hot path), [`key`], [`route`], [`ratelimit`],
//!   [`token`], [`scope`].
#![forbid(unsafe_code)]
// Flag docs are clap's help text, whose placeholders read `<data-dir>`.
#![allow(rustdoc::invalid_html_tags)]

pub use scopegate_core::{authz, credits, key, ratelimit, role, route, scope, stats, token};

pub mod balances;
pub mod check;
pub mod cli;
pub mod config;
pub mod counters;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod manage;
pub mod proxy;
pub mod readiness;
pub mod request_id;
pub mod secret_file;
pub mod secret_scanning;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod traces;
pub mod uds;
pub mod usage;
pub mod webhooks;
