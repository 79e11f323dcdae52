//! Micro-benchmarks of the pure hot path (no network): token parsing, the
//! scope decision at 1K / 100K / 1M keys, route matching, and an Envoy
//! ext_authz request → response. Run: `cargo bench --bench hot_path`.

// Measure what ships: the scopegate binary runs on mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use scopegate::authz::{decide, decide_http};
use scopegate::grpc::envoy_request::EnvoyCheck;
use scopegate::grpc::envoy_service::authorization_server::Authorization;
use scopegate::grpc::{CheckContext, ExtAuthzService};
use scopegate::key::{AuthEntry, KeyTable};
use scopegate::proxy::ProxyConfig;
use scopegate::route::{RouteTable, DEFAULT_ROUTES_TOML};
use scopegate::scope::{Catalog, KeyKind};
use scopegate::token::TokenFormat;

#[path = "support/envoy_request.rs"]
mod envoy_request;
use envoy_request::envoy_request;

/// A table of `count` keys holding mail.send + stats.read, and every key's token.
fn table(count: usize, catalog: &Catalog, format: &TokenFormat) -> (KeyTable, Vec<String>) {
    table_with(count, catalog, format, &["mail.send", "stats.read"])
}

fn table_with(
    count: usize,
    catalog: &Catalog,
    format: &TokenFormat,
    names: &[&str],
) -> (KeyTable, Vec<String>) {
    let keys = KeyTable::default();
    let scopes = catalog.resolve(names.iter().copied()).unwrap();
    let account: Arc<str> = "acme".into();
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let issued = format.issue();
        keys.insert(
            issued.key_id,
            Arc::new(AuthEntry::new(
                issued.secret_hash,
                scopes.clone(),
                account.clone(),
                KeyKind::General,
                None,
            )),
        );
        tokens.push(issued.token);
    }
    (keys, tokens)
}

/// Indexes drawn uniformly (xorshift64: a few ns, the same at every size),
/// so a large table is read as traffic reads it, mostly out of cache, not as
/// a warm working set.
fn uniform_draws() -> impl FnMut(usize) -> usize {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    move |len: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % len as u64) as usize
    }
}

fn benches(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let format = TokenFormat::new("SG", None).unwrap();
    let required = catalog.resolve(["mail.send"]).unwrap();
    let routes = RouteTable::from_toml(DEFAULT_ROUTES_TOML, &catalog).unwrap();

    let issued = format.issue();
    c.bench_function("token_parse_and_checksum", |b| {
        b.iter(|| format.parse(std::hint::black_box(&issued.token)).is_ok())
    });

    // The parts of a decision, to see where its time goes.
    let secret = &issued.token[26..69];
    c.bench_function("part_sha256_of_secret", |b| {
        b.iter(|| scopegate::token::sha256(std::hint::black_box(secret.as_bytes())))
    });
    c.bench_function("part_crc32_of_token", |b| {
        b.iter(|| crc32fast::hash(std::hint::black_box(issued.token.as_bytes())))
    });

    let mut group = c.benchmark_group("decide_scope_allow");
    for count in [1_000, 100_000, 1_000_000] {
        let (keys, tokens) = table(count, &catalog, &format);
        let mut uniform = uniform_draws();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                next = uniform(tokens.len());
                let decision = decide(&keys, &format, &tokens[next], None, &required);
                assert!(decision.is_allowed());
                decision
            })
        });
        if count == 1_000 {
            group.bench_function("http_route_1000", |b| {
                b.iter(|| {
                    next = uniform(tokens.len());
                    let decision = decide_http(
                        &keys,
                        &format,
                        &routes,
                        &tokens[next],
                        "POST",
                        "/v3/mail/send",
                    );
                    assert!(decision.0.is_allowed(), "{decision:?}");
                    decision
                })
            });
        }
    }
    // A catalog of 4,096 scopes, keys holding scopes past the inline 256.
    let mut wide = String::from(
        "[[resource]]\nname = \"api_keys\"\nverbs = [\"create\", \"read\", \"update\", \"delete\"]\n",
    );
    for n in 0..1023 {
        wide.push_str(&format!(
            "[[resource]]\nname = \"r{n}\"\nverbs = [\"create\", \"read\", \"update\", \"delete\"]\n"
        ));
    }
    let wide = Catalog::from_toml(&wide).unwrap();
    let (keys, tokens) = table_with(1_000, &wide, &format, &["r3.read", "r1000.update"]);
    let required = wide.resolve(["r1000.update"]).unwrap();
    let mut uniform = uniform_draws();
    group.bench_function("wide_catalog_4096_1000", |b| {
        b.iter(|| {
            let next = uniform(tokens.len());
            let decision = decide(&keys, &format, &tokens[next], None, &required);
            assert!(decision.is_allowed());
            decision
        })
    });
    group.finish();

    let paths = [
        ("POST", "/v3/mail/send"),
        ("GET", "/v3/mail/batch/abc123"),
        ("GET", "/v3/stats?start_date=2026-01-01"),
        ("PATCH", "/v3/whitelabel/domains/42"),
        ("GET", "/v3/unknown/path"),
    ];
    c.bench_function("route_match_example_routes", |b| {
        let mut next = 0;
        b.iter(|| {
            next = (next + 1) % paths.len();
            let (method, path) = paths[next];
            routes.resolve(method, path)
        })
    });

    let (keys, tokens) = table(1_000, &catalog, &format);
    let service = ExtAuthzService {
        context: Arc::new(CheckContext {
            keys: Arc::new(keys),
            format: format.clone(),
            policy: arc_swap::ArcSwap::from_pointee(scopegate::authz::Policy {
                catalog: Arc::new(Catalog::builtin()),
                routes,
            }),
            decision_log_every: 0,
            decisions_seen: Default::default(),
            dry_run_seen: Default::default(),
            usage: None,
            signals: None,
            balances: scopegate::balances::Balances::local(None).unwrap(),
            counters: scopegate::counters::Counters::start(
                &scopegate::counters::CountersConfig::Memory,
                false,
            )
            .unwrap(),
        }),
        config: ProxyConfig::default(),
    };
    // From the bytes Envoy sends: decoding is most of the cost.
    let request = prost::Message::encode_to_vec(&envoy_request(&tokens[0]));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("ext_authz_request_to_response", |b| {
        b.to_async(&runtime).iter_batched(
            || bytes::Bytes::from(request.clone()),
            |bytes| async {
                let request = EnvoyCheck::parse(bytes).unwrap();
                service.check(tonic::Request::new(request)).await.unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
