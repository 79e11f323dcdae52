//! The in-app tower layer (`crates/client/`, for meshes without an authorization
//! hook) end to end: an axum app and a tonic service behind
//! `ScopegateLayer`, asking a real scopegate over TCP and over its Unix
//! socket; answers as ext_authz gives them, and closed when scopegate is gone.

mod common;

use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::{Extension, Router};
use common::Server;
use scopegate_client::{connect_tcp, connect_unix, Identity, ScopegateLayer};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// An axum app whose handlers show what the layer passed on.
async fn app(layer: ScopegateLayer) -> SocketAddr {
    async fn whoami(
        Extension(identity): Extension<Identity>,
        headers: axum::http::HeaderMap,
    ) -> String {
        let credential = headers.contains_key("authorization");
        format!(
            "{} {} credential={credential}",
            identity.key_id, identity.account_id
        )
    }
    let router = Router::new()
        .route("/v3/mail/send", post(whoami))
        .route("/v3/stats", get(whoami))
        .route("/v3/anything", get(whoami))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let auth = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth
        .iter()
        .map(|auth| ("Authorization", auth.as_str()))
        .collect();
    common::http_request(&addr.to_string(), method, path, &headers, None)
}

fn error_message(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(json["errors"][0]["field"].is_null(), "{body}");
    json["errors"][0]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_app_behind_the_layer_answers_as_ext_authz_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let sender = server.admin_key(&["mail.send"]).await;
    let reader = server.admin_key(&["stats.global.read"]).await;
    let channel = connect_tcp(&server.addr).unwrap();
    let addr = app(ScopegateLayer::new(channel)).await;
    let blocking = |method: &'static str, path: &'static str, token: Option<String>| {
        tokio::task::spawn_blocking(move || http(addr, method, path, token.as_deref()))
    };

    // Allowed: the handler gets the key's identity, not the credential.
    let (status, _, body) = blocking("POST", "/v3/mail/send", Some(sender.token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let key = sender.key.as_ref().unwrap();
    assert_eq!(body, format!("{} acme credential=false", key.key_id));

    // No key: 401 with WWW-Authenticate and the JSON error body.
    let (status, head, body) = blocking("POST", "/v3/mail/send", None).await.unwrap();
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(error_message(&body).contains("no API key"), "{body}");

    // The wrong scope for the route: 403 naming the scope.
    let (status, head, body) = blocking("POST", "/v3/mail/send", Some(reader.token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(!head.contains("www-authenticate"), "{head}");
    assert!(error_message(&body).contains("mail.send"), "{body}");
    // The right one for another route.
    let (status, _, _) = blocking("GET", "/v3/stats", Some(reader.token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // No route in scopegate's table: denied, fail closed.
    let (status, _, body) = blocking("GET", "/v3/anything", Some(sender.token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(error_message(&body).contains("no route"), "{body}");

    // Over the key's rate limit: 429 with Retry-After.
    let limited = server
        .admin_create(scopegate::grpc::pb::CreateKeyRequest {
            rate_limits: vec![scopegate::grpc::pb::RateLimit {
                name: "default".into(),
                limit: 1,
                window: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }],
            ..common::create("acme", "limited", &["mail.send"])
        })
        .await
        .unwrap()
        .token;
    let (status, _, _) = blocking("POST", "/v3/mail/send", Some(limited.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, head, body) = blocking("POST", "/v3/mail/send", Some(limited))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = head
        .lines()
        .find_map(|line| line.strip_prefix("retry-after: "))
        .expect("retry-after")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{head}");
    assert!(error_message(&body).contains("rate limit"), "{body}");

    // Out of credits: 429 naming credits, never a rate limit's Retry-After.
    let metered = server
        .admin_create(scopegate::grpc::pb::CreateKeyRequest {
            credits: Some(scopegate::grpc::pb::Credits {
                remaining: 1,
                refill: None,
            }),
            ..common::create("acme", "metered", &["mail.send"])
        })
        .await
        .unwrap()
        .token;
    let (status, _, _) = blocking("POST", "/v3/mail/send", Some(metered.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, head, body) = blocking("POST", "/v3/mail/send", Some(metered))
        .await
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(!head.contains("retry-after"), "{head}");
    assert!(error_message(&body).contains("out of credits"), "{body}");

    // scopegate gone: 503, never the handler.
    assert!(server.terminate());
    let (status, _, body) = blocking("POST", "/v3/mail/send", Some(sender.token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(error_message(&body).contains("unavailable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_service_behind_the_layer_over_the_unix_socket_gets_grpc_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("scopegate.sock");
    let server = Server::start(
        &dir.path().join("data"),
        &["--uds", socket.to_str().unwrap()],
    );
    let sender = server.admin_key(&["mail.send"]).await;
    let reader = server.admin_key(&["stats.read"]).await;

    // A real tonic service (gRPC health) that only mail.send keys may call.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mail", tonic_health::ServingStatus::Serving)
        .await;
    let layer = ScopegateLayer::new(connect_unix(&socket).unwrap()).scopes(["mail.send"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ask = |token: Option<&str>| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: "mail".into(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let mut client = HealthClient::new(channel.clone());
        async move { client.check(request).await }
    };

    let served = ask(Some(&sender.token)).await.unwrap().into_inner();
    assert_eq!(
        served.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let missing = ask(None).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");
    let lacking = ask(Some(&reader.token)).await.unwrap_err();
    assert_eq!(lacking.code(), tonic::Code::PermissionDenied, "{lacking:?}");
    assert!(lacking.message().contains("mail.send"), "{lacking:?}");
    let unknown = ask(Some(
        "SG.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ))
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated, "{unknown:?}");
}

/// The app behind the layer sees what scopegate decided on: the normalized
/// path (`/v3/billing/%2e%2e/mail/send` reaches the mail handler, never
/// billing's), no client-sent `x-scopegate-*` header, and no request whose
/// method-override header could make the app act as another method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_routes_on_the_path_scopegate_decided_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sender = server.admin_key(&["mail.send"]).await.token;
    async fn mail(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> String {
        let forged = headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-scopegate-"))
            .count();
        format!("mail {uri} forged={forged}")
    }
    let app = Router::new().route("/v3/mail/send", post(mail)).route(
        "/v3/billing/{*rest}",
        post(|| async { "BILLING" }).get(|| async { "BILLING" }),
    );
    // Around the whole router, so routing comes after the layer.
    let router = Router::new()
        .fallback_service(app)
        .layer(ScopegateLayer::new(connect_tcp(&server.addr).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let send = move |path: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let auth = format!("Bearer {sender}");
        tokio::task::spawn_blocking(move || {
            let mut headers = vec![("Authorization", auth.as_str())];
            headers.extend(extra);
            common::http_request(&addr.to_string(), "POST", path, &headers, None)
        })
    };
    for path in [
        "/v3/billing/%2e%2e/mail/send",
        "/v3/billing/../mail/send?x=1",
        "//v3/mail/./send/",
    ] {
        let (status, _, body) = send(path, vec![]).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with("mail /v3/mail/send"), "{path}: {body}");
    }
    let (_, _, body) = send("/v3/mail/send?x=1", vec![]).await.unwrap();
    assert_eq!(body, "mail /v3/mail/send?x=1 forged=0");
    let (status, _, body) = send(
        "/v3/mail/send",
        vec![
            ("x-scopegate-key-id", "forged"),
            ("X-Scopegate-Account-Id", "other"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "mail /v3/mail/send forged=0")
    );
    for header in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        let (status, _, body) = send("/v3/mail/send", vec![(header, "DELETE")])
            .await
            .unwrap();
        assert_eq!(status, 400, "{header}: {body}");
        assert!(
            error_message(&body).contains(&header.to_ascii_lowercase()),
            "{body}"
        );
    }
}
