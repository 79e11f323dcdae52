//! The ext_authz handler on arbitrary `CheckRequest` bytes (what Envoy, or
//! anyone who reaches the port, sends): decode, then the real handler. It
//! never panics; every answer decodes with envoy-types; an allow (which the
//! fixed key in the seed `allowed` reaches: `Bearer` + its token, POST
//! /v3/mail/send) names that key and is exactly as long as prost encodes the
//! message it decodes to, so the hand-written allow encoder is fuzzed too.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use scopegate::authz::Policy;
use scopegate::grpc::envoy_request::EnvoyCheck;
use scopegate::grpc::envoy_service::authorization_server::Authorization;
use scopegate::grpc::{CheckContext, ExtAuthzService};
use scopegate::proxy::ProxyConfig;
use scopegate::key::{AuthEntry, KeyTable};
use scopegate::route::{RouteTable, DEFAULT_ROUTES_TOML};
use scopegate::scope::{Catalog, KeyKind};
use scopegate::token::{KeyId, TokenFormat, SECRET_BYTES};

fn service() -> &'static (ExtAuthzService, tokio::runtime::Runtime) {
    static SERVICE: OnceLock<(ExtAuthzService, tokio::runtime::Runtime)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let catalog = Arc::new(Catalog::builtin());
        let format = TokenFormat::new("SG", None).unwrap();
        let keys = KeyTable::default();
        // A known key, so that fuzzed requests can reach the allow path.
        let issued = format.issue_with_secret(KeyId::from_bytes([7; 16]), &[42; SECRET_BYTES]);
        keys.insert(
            issued.key_id,
            Arc::new(AuthEntry::new(issued.secret_hash, catalog.all_scopes(), "acme".into(), KeyKind::General, None)),
        );
        let routes = RouteTable::from_toml(DEFAULT_ROUTES_TOML, &catalog).unwrap();
        let service = ExtAuthzService {
            context: Arc::new(CheckContext {
                keys: Arc::new(keys),
                format,
                policy: arc_swap::ArcSwap::from_pointee(Policy { catalog, routes }),
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
            config: ProxyConfig {
                api_key_header: Some("x-api-key".into()),
                ..ProxyConfig::default()
            },
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (service, runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    // The in-place reader agrees with envoy-types' decoder wherever that
    // decoder accepts the bytes: same method, path, header names and
    // proxy-named scope.
    let parsed = EnvoyCheck::parse(bytes::Bytes::copy_from_slice(data));
    if let Ok(full) = envoy_types::ext_authz::v3::pb::CheckRequest::decode(data) {
        let check = parsed.as_ref().expect("envoy-types accepts what we refuse");
        let http = full
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref());
        assert_eq!(check.has_http(), http.is_some());
        let extensions = full.attributes.as_ref().map(|attributes| &attributes.context_extensions);
        assert_eq!(
            check.route_scope(),
            extensions.and_then(|map| map.get("scope")).map(String::as_str)
        );
        if let Some(http) = http {
            assert_eq!(check.method(), http.method);
            assert_eq!(check.path(), http.path);
            let ours: std::collections::BTreeSet<&[u8]> = check.headers().map(|(name, _)| name).collect();
            let theirs: std::collections::BTreeSet<&[u8]> = http
                .headers
                .keys()
                .map(|name| name.as_bytes())
                .chain(http.header_map.iter().flat_map(|map| map.headers.iter().map(|h| h.key.as_bytes())))
                .collect();
            assert_eq!(ours, theirs);
        }
    }
    let Ok(request) = parsed else {
        return;
    };
    let (service, runtime) = service();
    let Ok(answer) = runtime.block_on(service.check(tonic::Request::new(request))) else {
        return;
    };
    let bytes = answer.get_ref().as_bytes().to_vec();
    let decoded = answer
        .get_ref()
        .decode()
        .expect("every answer decodes with envoy-types");
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    if let Some(HttpResponse::OkResponse(ok)) = &decoded.http_response {
        assert_eq!(decoded.status.as_ref().map_or(0, |status| status.code), 0);
        let header = |name: &str| {
            ok.headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .find(|header| header.key == name)
                .map(|header| header.value.clone())
        };
        let key_id = KeyId::from_bytes([7; 16]).to_string();
        assert_eq!(header("x-scopegate-key-id").as_deref(), Some(key_id.as_str()));
        assert_eq!(header("x-scopegate-account-id").as_deref(), Some("acme"));
        assert_eq!(decoded.encoded_len(), bytes.len(), "the allow encoder's sizes");
    }
});
