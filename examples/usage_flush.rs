//! What one usage flush costs at many keys: N keys each decided once (two
//! outcomes, one scope), flushed into a fresh sled store (standalone) or,
//! with `--redis URL`, into Redis; five rounds, so later ones add to records
//! already stored. Prints one JSON line per round.
//!
//!   cargo run --release --example usage_flush -- --keys 100000
//!   cargo run --release --example usage_flush -- --keys 100000 --redis redis://127.0.0.1:6379/0

use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate::authz::Decision;
use scopegate::key::KeyTable;
use scopegate::scope::{Catalog, ScopeSet};
use scopegate::stats::Kept;
use scopegate::store::Store;
use scopegate::token::{KeyId, TokenFormat};
use scopegate::usage::{Usage, UsageConfig, UsageRedis};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .map(|at| args[at + 1].clone())
    };
    let keys: usize = value("--keys").map_or(100_000, |n| n.parse().expect("--keys N"));
    let redis = value("--redis");
    let dir = tempfile::tempdir().expect("a temp dir");
    let catalog = Arc::new(Catalog::builtin());
    let shared = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
    let store = Store::open(dir.path(), shared.clone()).expect("a store");
    let config = UsageConfig {
        flush_every: Duration::from_secs(3_600),
        kept: Kept::default(),
        redis: redis.map(|url| UsageRedis {
            url,
            password_file: None,
            timeout: Duration::from_secs(10),
        }),
    };
    let usage = Usage::start(&config, &store, shared, false).expect("usage");
    // Let a Redis connection come up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let format = TokenFormat::new("SG", None).unwrap();
    let table = KeyTable::default();
    let scope = ScopeSet::single(catalog.scope_id("mail.send").unwrap());
    let ids: Vec<KeyId> = (0..keys).map(|_| KeyId::random()).collect();
    let account: Arc<str> = "bench".into();
    for round in 1..=5 {
        let recording = Instant::now();
        for (index, key_id) in ids.iter().enumerate() {
            let decision = if index % 10 == 0 {
                Decision::InsufficientScope {
                    key_id: *key_id,
                    account_id: account.clone(),
                    missing: ScopeSet::default(),
                }
            } else {
                Decision::Allowed {
                    key_id: *key_id,
                    account_id: account.clone(),
                    metadata: None,
                    rate: None,
                    credits: None,
                }
            };
            usage.record(&decision, "", &format, &table, scope.clone());
        }
        let recorded = recording.elapsed();
        let flushing = Instant::now();
        usage.flush().await;
        let flushed = flushing.elapsed();
        assert_eq!(usage.held_records().await, 0, "the flush was not written");
        println!(
            "{}",
            serde_json::json!({
                "keys": keys,
                "round": round,
                "book": if config.redis.is_some() { "redis" } else { "sled" },
                "record_ns_per_decision": recorded.as_nanos() as f64 / keys as f64,
                "flush_ms": flushed.as_secs_f64() * 1e3,
            })
        );
    }
}
