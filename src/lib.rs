//! scopegate: a gRPC authorization sidecar for API keys with permission scopes.
//!
//! Crate map (the long version is ARCHITECTURE.md):
//! - [`scope`]: PURE. Catalog, `ScopeSet`, access levels, the key rules.
//! - [`token`]: PURE. Token format, checksum, secret hashing.
//! - [`key`]: the hot-path view of a key and the lock-free table of them.
//! - [`route`]: PURE. HTTP route table: (method, path) → scope, path normalisation.
//! - [`ratelimit`]: PURE. Named rate limits: parsing, no escalation, which requests count.
//! - [`counters`]: the limits' counters (limitador: in memory or Redis).
//! - [`authz`]: PURE. `decide` / `decide_http` → `Decision`: the hot path.
//! - [`limit`]: admission: check and management concurrency apart, a
//!   per-account rate for key changes.
//! - [`manage`]: key lifecycle use-cases: callers, permissions, no escalation.
//! - [`store`]: sled persistence, group commit, publishing into the table.
//! - [`grpc`]: the only module that knows generated types; thin adapters.
//! - [`server`]: `scopegate serve`: wiring, listeners, tower limits, health,
//!   reflection, reload, drain.
//! - [`config`]: serve settings from file, env and flags; validation.
//! - [`telemetry`]: metric names, the gRPC metrics layer, /metrics /healthz /readyz.
//! - [`uds`]: Unix socket connections, with the `:authority` fix that lets
//!   grpcio, grpcurl and grpc-java clients through hyper's h2.
//! - [`cli`]: the command line, server and client subcommands.
#![forbid(unsafe_code)]

pub use scopegate_core::{authz, key, ratelimit, route, scope, token};

pub mod cli;
pub mod config;
pub mod counters;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod limit;
pub mod manage;
pub mod readiness;
pub mod request_id;
pub mod secret_file;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod uds;
