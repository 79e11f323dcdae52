//! The ext_authz handler on arbitrary `CheckRequest` bytes (what Envoy, or
//! anyone who reaches the port, sends): decode, then the real handler. It may
//! answer anything, but never panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use scopegate::authz::Policy;
use scopegate::grpc::envoy_lean::authorization_server::Authorization;
use scopegate::grpc::envoy_lean::CheckRequest;
use scopegate::grpc::{CheckContext, ExtAuthzConfig, ExtAuthzService, Readiness};
use scopegate::key::{AuthEntry, KeyTable};
use scopegate::route::{RouteTable, DEFAULT_ROUTES_TOML};
use scopegate::scope::{Catalog, KeyKind};
use scopegate::token::TokenFormat;

fn service() -> &'static (ExtAuthzService, tokio::runtime::Runtime) {
    static SERVICE: OnceLock<(ExtAuthzService, tokio::runtime::Runtime)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let catalog = Arc::new(Catalog::builtin());
        let format = TokenFormat::new("SG", None).unwrap();
        let keys = KeyTable::default();
        // A known key, so that fuzzed requests can reach the allow path.
        let issued = format.issue();
        keys.insert(
            issued.key_id,
            Arc::new(AuthEntry {
                secret_hash: issued.secret_hash,
                scopes: catalog.all_scopes(),
                account_id: "acme".into(),
                kind: KeyKind::General,
                limits: None,
                used: Default::default(),
            }),
        );
        let readiness = Arc::new(Readiness::default());
        readiness.set_ready();
        let routes = RouteTable::from_toml(DEFAULT_ROUTES_TOML, &catalog).unwrap();
        let service = ExtAuthzService {
            context: Arc::new(CheckContext {
                keys: Arc::new(keys),
                format,
                policy: arc_swap::ArcSwap::from_pointee(Policy { catalog, routes }),
                readiness,
                decision_log_every: 0,
                decisions_seen: Default::default(),
                dry_run_seen: Default::default(),
            }),
            config: ExtAuthzConfig {
                api_key_header: Some("x-api-key".into()),
                ..ExtAuthzConfig::default()
            },
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (service, runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let (service, runtime) = service();
    let _ = runtime.block_on(service.check(tonic::Request::new(request)));
});
