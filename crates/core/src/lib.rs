//! scopegate's pure core: what a key may do, decided without I/O.
//!
//! Modules, bottom up (a module imports only those listed before it):
//! - [`scope`], [`token`]: the catalog, `ScopeSet`, access levels and the key
//!   rules; the token format, its checksum and secret hashing.
//! - [`role`]: role ids and the built-in templates.
//! - [`credits`]: credit terms, refill periods, no escalation of spending power.
//! - [`stats`]: usage as SendGrid's stats: buckets, ranges, reports.
//! - [`ratelimit`]: named rate limits: parsing, no escalation, which requests
//!   count.
//! - [`key`], [`route`]: the hot-path view of a key and the lock-free table
//!   of them; the HTTP route table and path normalisation.
//! - [`authz`]: the decision, the hot path.
#![forbid(unsafe_code)]

pub mod authz;
pub mod credits;
pub mod key;
pub mod ratelimit;
pub mod role;
pub mod route;
pub mod scope;
pub mod stats;
pub mod token;
