//! Envoy ext_authz through the envoy-types client, and its equivalence with
//! `Authorize.Check{http}`: both entry points must agree on every decision.

mod common;

use std::collections::HashMap;

use common::{bearer, create, Server};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use scopegate::grpc::pb;

const ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/routes.toml");

fn envoy_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut all: HashMap<String, String> = [
        (":authority", "api.example.com"),
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "8a2f6a5e-2f1c-4a8e-9f3e-1d2c3b4a5f6e"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in headers {
        all.insert(name.to_string(), value.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: all,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The client address both entry points are given in the agreement test.
const SOURCE: &str = "198.51.100.7";

/// `request` as Envoy sends it for a client at [`SOURCE`].
fn from_source(mut request: CheckRequest) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    request.attributes.as_mut().unwrap().source = Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: SOURCE.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    request
}

fn metadata_decision(
    response: &envoy_types::pb::envoy::service::auth::v3::CheckResponse,
) -> String {
    match &response.dynamic_metadata.as_ref().unwrap().fields["decision"].kind {
        Some(Kind::StringValue(decision)) => decision.clone(),
        other => panic!("decision metadata is {other:?}"),
    }
}

#[tokio::test]
async fn ext_authz_and_check_http_agree_on_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--routes", ROUTES]);
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut authorize = server.authorize().await;
    let mut ext_authz = AuthorizationClient::new(server.channel().await);

    let mut tokens = vec![String::new(), "SG.not.a-token".to_owned()];
    for scopes in [
        vec!["mail.send"],
        vec!["mail.batch.read", "stats.read", "stats.global.read"],
        vec!["billing.read", "billing.update"],
        vec![
            "api_keys.read",
            "whitelabel.create",
            "marketing_campaigns.delete",
        ],
    ] {
        let created = manage
            .create_key(bearer(&admin, create("acme", "k", &scopes)))
            .await
            .unwrap()
            .into_inner();
        tokens.push(created.token);
    }
    let deleted = manage
        .create_key(bearer(&admin, create("acme", "gone", &["mail.send"])))
        .await
        .unwrap()
        .into_inner();
    manage
        .delete_key(bearer(
            &admin,
            pb::DeleteKeyRequest {
                key_id: deleted.key.unwrap().key_id,
            },
        ))
        .await
        .unwrap();
    tokens.push(deleted.token);
    // Lifecycle decisions: disabled, expired, and an address allowlist that
    // both entry points read from their own field (client_ip, and Envoy's
    // source address), the one that excludes SOURCE and the one that holds it.
    let disabled = manage
        .create_key(bearer(&admin, create("acme", "off", &["mail.send"])))
        .await
        .unwrap()
        .into_inner();
    manage
        .update_key(bearer(
            &admin,
            pb::UpdateKeyRequest {
                key_id: disabled.key.unwrap().key_id,
                enabled: Some(false),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    tokens.push(disabled.token);
    let expiring = manage
        .create_key(bearer(
            &admin,
            pb::CreateKeyRequest {
                // Far enough ahead to be valid on arrival on a busy machine.
                expire_time: Some(
                    (std::time::SystemTime::now() + std::time::Duration::from_secs(2)).into(),
                ),
                ..create("acme", "brief", &["mail.send"])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokens.push(expiring.token);
    for cidr in ["203.0.113.0/24", "198.51.100.0/24"] {
        let fenced = manage
            .create_key(bearer(
                &admin,
                pb::CreateKeyRequest {
                    allowed_cidrs: vec![cidr.into()],
                    ..create("acme", "fenced", &["mail.send", "stats.read"])
                },
            ))
            .await
            .unwrap()
            .into_inner();
        tokens.push(fenced.token);
    }
    let expire = expiring.key.as_ref().unwrap().expire_time.unwrap();
    let expire = std::time::UNIX_EPOCH
        + std::time::Duration::new(expire.seconds as u64, expire.nanos as u32);
    if let Ok(left) = expire.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + std::time::Duration::from_millis(50)).await;
    }

    let paths = [
        "/v3/mail/send",
        "/v3/mail/batch",
        "/v3/mail/batch/abc",
        "/v3/stats",
        "/v3/geo/stats?start_date=2026-01-01",
        "/v3/billing",
        "/v3/api_keys/xyz",
        "/v3/whitelabel/domains",
        "/v3/marketing/singlesends/1",
        "/v3/nothing",
        "//v3//mail/send/",
        "/v3/mail%2Fsend",
        "/v3/m%61il/send",
    ];
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut compared = 0;
    let mut seen = std::collections::BTreeSet::new();
    for token in &tokens {
        for method in methods {
            for path in paths {
                let check = authorize
                    .check(pb::CheckRequest {
                        token: token.clone(),
                        scopes: vec![],
                        http: Some(pb::HttpRequest {
                            method: method.into(),
                            path: path.into(),
                        }),
                        client_ip: SOURCE.into(),
                        cost: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let authorization = format!("Bearer {token}");
                let headers: Vec<(&str, &str)> = if token.is_empty() {
                    vec![]
                } else {
                    vec![("authorization", authorization.as_str())]
                };
                let envoy = ext_authz
                    .check(from_source(envoy_request(method, path, &headers)))
                    .await
                    .unwrap()
                    .into_inner();
                let check_decision = pb::Decision::try_from(check.decision)
                    .unwrap()
                    .as_str_name();
                assert_eq!(metadata_decision(&envoy), check_decision, "{method} {path}");
                let status = envoy.status.as_ref().unwrap().code;
                assert_eq!(
                    status == 0,
                    check.allowed,
                    "{method} {path}: status {status}"
                );
                match envoy.http_response.as_ref().unwrap() {
                    HttpResponse::OkResponse(_) => assert!(check.allowed),
                    HttpResponse::DeniedResponse(denied) => {
                        assert!(!check.allowed);
                        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
                        assert_eq!(body["errors"][0]["message"], check.message.as_str());
                    }
                    other => panic!("unexpected {other:?}"),
                }
                seen.insert(check_decision);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, tokens.len() * methods.len() * paths.len());
    // The table exercises every decision there is.
    let every: std::collections::BTreeSet<&str> = [
        "ALLOWED",
        "MISSING_TOKEN",
        "MALFORMED_TOKEN",
        "UNKNOWN_KEY",
        "INSUFFICIENT_SCOPE",
        "NO_ROUTE",
        "INVALID_PATH",
        "EXPIRED",
        "DISABLED",
        "IP_NOT_ALLOWED",
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, every);
}

/// (decision in the metadata, HTTP status Envoy would send; 200 for allow).
fn outcome(response: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> (String, i32) {
    let status = match response.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(denied) => denied.status.as_ref().unwrap().code,
        other => panic!("unexpected {other:?}"),
    };
    (metadata_decision(response), status)
}

/// The tricks from the trust review, each with the decision and status it
/// must get (an oracle, not a comparison between two entry points).
#[tokio::test]
async fn path_tricks_method_overrides_and_odd_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let example = std::fs::read_to_string(ROUTES).unwrap();
    std::fs::write(
        &routes,
        format!("default_scope = \"stats.read\"\n{example}"),
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--routes", routes.to_str().unwrap()],
    );
    let marketing = server
        .manage()
        .await
        .create_key(bearer(
            &server.admin_token,
            pb::CreateKeyRequest {
                grants: vec![pb::Grant {
                    resource: "marketing_campaigns".into(),
                    access: pb::Access::Full as i32,
                }],
                ..create("acme", "marketing", &[])
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mailer = server.admin_key(&["mail.send", "stats.read"]).await.token;
    let mut ext_authz = AuthorizationClient::new(server.channel().await);
    let bearer_of = |token: &str| format!("Bearer {token}");
    // (who, method, path, extra headers, (decision, HTTP status))
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        (&'a str, i32),
    );
    let cases: Vec<Case> = vec![
        (
            "marketing",
            "GET",
            "/v3/marketing/singlesends/1",
            vec![],
            ("ALLOWED", 200),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/..;/api_keys",
            vec![],
            ("INVALID_PATH", 400),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/%252e%252e/api_keys",
            vec![],
            ("INVALID_PATH", 400),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/x/..%3B/api_keys",
            vec![],
            ("INVALID_PATH", 400),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/x/..%3b/api_keys",
            vec![],
            ("INVALID_PATH", 400),
        ),
        (
            "marketing",
            "POST",
            "/v3/marketing/singlesends",
            vec![("x-http-method-override", "DELETE")],
            ("METHOD_OVERRIDE", 400),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/singlesends/1",
            vec![("X-HTTP-Method", "DELETE")],
            ("METHOD_OVERRIDE", 400),
        ),
        (
            "marketing",
            "GET",
            "/v3/marketing/singlesends/1",
            vec![("x-method-override", "PUT")],
            ("METHOD_OVERRIDE", 400),
        ),
        (
            "none",
            "GET",
            "/v3/marketing/singlesends/1",
            vec![("x-http-method-override", "DELETE")],
            ("MISSING_TOKEN", 401),
        ),
        // A non-ASCII header name (once a panic in the handler).
        (
            "marketing",
            "GET",
            "/v3/marketing/singlesends/1",
            vec![("x-scopegateé", "1"), ("é", "2")],
            ("ALLOWED", 200),
        ),
        // default_scope covers unmatched paths only.
        ("mailer", "POST", "/v3/mail/send", vec![], ("ALLOWED", 200)),
        ("mailer", "PUT", "/v3/mail/send", vec![], ("NO_ROUTE", 403)),
        (
            "mailer",
            "PURGE",
            "/v3/mail/send",
            vec![],
            ("NO_ROUTE", 403),
        ),
        (
            "mailer",
            "OPTIONS",
            "/v3/api_keys",
            vec![],
            ("NO_ROUTE", 403),
        ),
        ("mailer", "GET", "/not/routed", vec![], ("ALLOWED", 200)),
    ];
    for (who, method, path, extra, expected) in cases {
        let token = match who {
            "marketing" => Some(bearer_of(&marketing)),
            "mailer" => Some(bearer_of(&mailer)),
            _ => None,
        };
        let mut headers = extra.clone();
        if let Some(token) = &token {
            headers.push(("authorization", token.as_str()));
        }
        let response = ext_authz
            .check(envoy_request(method, path, &headers))
            .await
            .unwrap_or_else(|status| panic!("{method} {path} {extra:?}: {status:?}"))
            .into_inner();
        assert_eq!(
            outcome(&response),
            (expected.0.to_owned(), expected.1),
            "{who} {method} {path} {extra:?}"
        );
    }
}

/// An unauthenticated caller learns nothing about which routes exist: the
/// answers for an existing and a missing route are the same bytes.
#[tokio::test]
async fn unauthenticated_answers_do_not_reveal_routes() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--routes", ROUTES]);
    let mut ext_authz = AuthorizationClient::new(server.channel().await);
    let mut authorize = server.authorize().await;
    for credential in [
        None,
        Some("Bearer SG.bad"),
        Some("Bearer SG.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAA"),
    ] {
        let headers: Vec<(&str, &str)> = credential
            .map(|c| ("authorization", c))
            .into_iter()
            .collect();
        let mut answers = Vec::new();
        for path in ["/v3/mail/send", "/v3/no/such/route"] {
            let response = ext_authz
                .check(envoy_request("POST", path, &headers))
                .await
                .unwrap()
                .into_inner();
            answers.push(response.encode_to_vec());
            let token = credential.map(|c| c.trim_start_matches("Bearer ").to_owned());
            let check = authorize
                .check(pb::CheckRequest {
                    token: token.unwrap_or_default(),
                    scopes: vec![],
                    http: Some(pb::HttpRequest {
                        method: "POST".into(),
                        path: path.into(),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            answers.push(check.encode_to_vec());
        }
        assert_eq!(answers[0], answers[2], "ext_authz, {credential:?}");
        assert_eq!(answers[1], answers[3], "Check{{http}}, {credential:?}");
    }
}

/// The header options, each with the answer it must produce, and a request
/// without `attributes.request.http`.
#[tokio::test]
async fn header_options_and_incomplete_requests() {
    use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--routes",
            ROUTES,
            "--keep-credential-header",
            "--key-id-header",
            "x-caller-key",
            "--account-id-header",
            "x-caller-account",
        ],
    );
    let key = server.admin_key(&["mail.send"]).await;
    let key_id = key.key.unwrap().key_id;
    let mut ext_authz = AuthorizationClient::new(server.channel().await);
    let bearer = format!("Bearer {}", key.token);
    let allowed = ext_authz
        .check(envoy_request(
            "POST",
            "/v3/mail/send",
            &[
                ("authorization", bearer.as_str()),
                ("x-caller-key", "spoofed"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("not allowed: {allowed:?}");
    };
    let headers: HashMap<String, String> = ok
        .headers
        .iter()
        .filter_map(|option: &HeaderValueOption| option.header.as_ref())
        .map(|header| (header.key.clone(), header.value.clone()))
        .collect();
    assert_eq!(
        headers["x-caller-key"], key_id,
        "the client's copy is overwritten"
    );
    assert_eq!(headers["x-caller-account"], "acme");
    assert!(!headers.contains_key("x-scopegate-key-id"));
    assert!(
        !ok.headers_to_remove.contains(&"authorization".to_owned()),
        "--keep-credential-header keeps it"
    );

    let invalid = ext_authz
        .check(envoy_request(
            "POST",
            "/v3/mail%2Fsend",
            &[("authorization", bearer.as_str())],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&invalid), ("INVALID_PATH".to_owned(), 400));

    let status = ext_authz.check(CheckRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("attributes.request.http"),
        "{}",
        status.message()
    );
}

/// Dry run (`--dry-run`, or `mode = "dry_run"` on a rule) never denies: what
/// it would have denied is allowed, marked in dynamic metadata and counted,
/// and client-sent identity headers are still stripped.
#[tokio::test]
async fn dry_run_never_denies_but_counts_and_marks() {
    use envoy_types::pb::google::protobuf::value::Kind;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[route]]\npath = \"/v3/mail/send\"\nmethods = [\"POST\"]\nscope = \"mail.send\"\nmode = \"dry_run\"\n\
         [[route]]\npath = \"/v3/stats\"\nscope = \"stats.read\"\n",
    )
    .unwrap();
    let per_route = Server::start(
        &dir.path().join("a"),
        &["--routes", routes.to_str().unwrap()],
    );
    let global = Server::start(&dir.path().join("b"), &["--routes", ROUTES, "--dry-run"]);
    for (server, dry_paths, enforced) in [
        (
            &per_route,
            vec![("POST", "/v3/mail/send")],
            Some(("GET", "/v3/stats")),
        ),
        (
            &global,
            vec![("POST", "/v3/mail/send"), ("GET", "/v3/stats")],
            None,
        ),
    ] {
        let stats_key = server.admin_key(&["stats.read"]).await.token;
        let mut ext_authz = AuthorizationClient::new(server.channel().await);
        let bearer = format!("Bearer {stats_key}");
        for (method, path) in &dry_paths {
            for headers in [
                vec![
                    ("authorization", "Bearer SG.nope"),
                    ("x-scopegate-key-id", "spoofed"),
                ],
                vec![("authorization", bearer.as_str())],
                vec![],
            ] {
                let response = ext_authz
                    .check(envoy_request(method, path, &headers))
                    .await
                    .unwrap()
                    .into_inner();
                let fields = &response.dynamic_metadata.as_ref().unwrap().fields;
                let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
                    panic!("dry run denied {method} {path} {headers:?}: {response:?}");
                };
                if *path == "/v3/mail/send" {
                    assert!(
                        matches!(fields["dry_run"].kind, Some(Kind::BoolValue(true))),
                        "{fields:?}"
                    );
                    assert_ne!(metadata_decision(&response), "ALLOWED");
                    assert!(!ok
                        .headers
                        .iter()
                        .any(|h| h.header.as_ref().unwrap().key == "x-scopegate-key-id"));
                    if headers
                        .iter()
                        .any(|(name, _)| *name == "x-scopegate-key-id")
                    {
                        assert!(ok
                            .headers_to_remove
                            .contains(&"x-scopegate-key-id".to_owned()));
                    }
                }
            }
        }
        if let Some((method, path)) = enforced {
            let response = ext_authz
                .check(envoy_request(
                    method,
                    path,
                    &[("authorization", "Bearer SG.nope")],
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(outcome(&response).1, 401, "an enforced rule still denies");
        }
        let (_, body) = server.http_get("/metrics");
        assert!(
            body.contains("scopegate_dry_run_denials_total{decision=\"MALFORMED_TOKEN\"}"),
            "{body}"
        );
        assert!(server.log().contains("dry run: would have denied"));
    }
}
