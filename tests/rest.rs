//! The REST edge as an operator meets it: fleet mode through it (create on
//! one sidecar, decided on another), its metrics, its listener flag. The
//! shapes and the official clients are in tests/python/test_rest.py.

mod common;

use common::fleet::{decision, eventually, fleet};
use common::{http_request, metric, Etcd, Server};
use scopegate::grpc::pb;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// `POST /v3/api_keys` with a bearer credential (and on-behalf-of).
fn create(
    addr: &str,
    credential: &str,
    account: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {credential}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(account) = account {
        headers.push(("on-behalf-of", account));
    }
    let (status, _, body) = http_request(addr, "POST", "/v3/api_keys", &headers, Some(body));
    (status, json(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_over_rest_on_one_sidecar_is_decided_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let (a_rest, b_rest) = (a.http_addr.clone().unwrap(), b.http_addr.clone().unwrap());

    let (status, manager) = create(
        &a_rest,
        &a.admin_token,
        Some("acme"),
        r#"{"name": "manager", "scopes": ["api_keys.create", "api_keys.delete", "mail.send"]}"#,
    );
    assert_eq!(status, 201, "{manager}");
    let manager_token = manager["api_key"].as_str().unwrap().to_owned();
    let (status, key) = create(
        &a_rest,
        &manager_token,
        None,
        r#"{"name": "mail", "scopes": ["mail.send"]}"#,
    );
    assert_eq!(status, 201, "{key}");
    let token = key["api_key"].as_str().unwrap().to_owned();
    eventually("the REST-made key decides on b", || {
        let (b, token) = (&b, token.clone());
        async move { decision(b, &token, &["mail.send"]).await == pb::Decision::Allowed }
    })
    .await;

    // Deleted over REST on b (the manager key arrived there through etcd): denied on a.
    eventually("the manager key is usable on b", || {
        let (b, token) = (&b, manager_token.clone());
        async move { decision(b, &token, &["mail.send"]).await == pb::Decision::Allowed }
    })
    .await;
    let auth = format!("Bearer {manager_token}");
    let path = format!("/v3/api_keys/{}", key["api_key_id"].as_str().unwrap());
    let (status, _, body) =
        http_request(&b_rest, "DELETE", &path, &[("Authorization", &auth)], None);
    assert_eq!(status, 204, "{body}");
    eventually("the deletion reaches a", || {
        let (a, token) = (&a, token.clone());
        async move { decision(a, &token, &["mail.send"]).await == pb::Decision::UnknownKey }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_requests_are_counted_by_route_and_status_never_by_raw_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rest = server.http_addr.clone().unwrap();
    let (status, _) = create(
        &rest,
        &server.admin_token,
        Some("acme"),
        r#"{"name": "k", "scopes": ["mail.send"]}"#,
    );
    assert_eq!(status, 201);
    let (status, _) = create(&rest, "SG.bad.bad", None, r#"{"name": "k"}"#);
    assert_eq!(status, 401);
    let (status, _, _) = http_request(&rest, "GET", "/v3/secret-looking-path", &[], None);
    assert_eq!(status, 404);
    let (_, metrics) = server.http_get("/metrics");
    let count = |labels: &str| {
        metric(
            &metrics,
            &format!("scopegate_http_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        count(r#"route="/v3/api_keys",method="POST",status="201""#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(r#"route="/v3/api_keys",method="POST",status="401""#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(r#"route="unmatched",method="GET",status="404""#),
        1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("secret-looking-path"));
    // The same change is a key mutation like one made over gRPC.
    assert!(
        metrics.contains("scopegate_key_mutations_total"),
        "{metrics}"
    );
}

#[test]
fn the_rest_listener_can_be_turned_off_and_a_bad_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("off"), &["--http-listen", "none"]);
    assert!(server.http_addr.is_none());
    assert!(!server.log().contains("REST API listening"));
    let refused = Server::try_start(&dir.path().join("bad"), &["--http-listen", "everywhere"])
        .err()
        .expect("a bad address must stop start-up");
    assert!(
        refused.contains("http_listen") && refused.contains("everywhere"),
        "{refused}"
    );
}

#[test]
fn with_tls_the_rest_api_serves_the_grpc_certificate_and_only_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(&dir.path().join("ca"));
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            ca.server_cert.to_str().unwrap(),
            "--tls-key-file",
            ca.server_key.to_str().unwrap(),
        ],
    );
    let rest = server.http_addr.clone().unwrap();
    let port = rest.rsplit(':').next().unwrap();
    // curl checks the chain against the test CA and the name against the SAN.
    let output = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(&ca.ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", server.admin_token),
        ])
        .arg(format!("https://localhost:{port}/v3/scopes"))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        json(&body)["scopes"].as_array().unwrap().len() > 10,
        "{body}"
    );
    // Plain HTTP to the TLS port gets no answer from the API.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{rest}/v3/scopes"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("scopes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_gone_is_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    let server = fleet(dir.path(), "a", &etcd, &["--request-timeout-ms", "3000"]);
    let rest = server.http_addr.clone().unwrap();
    let (status, body) = create(
        &rest,
        &server.admin_token,
        Some("acme"),
        r#"{"name": "k", "scopes": ["mail.send"]}"#,
    );
    assert_eq!(status, 201, "{body}");
    etcd.kill9();
    let auth = format!("Bearer {}", server.admin_token);
    let (status, head, body) = http_request(
        &rest,
        "POST",
        "/v3/api_keys",
        &[
            ("Authorization", &auth),
            ("on-behalf-of", "acme"),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"name": "k2", "scopes": ["mail.send"]}"#),
    );
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(json(&body)["errors"][0]["message"].is_string());
}

/// Bodies that never arrive hold no management permit: with two permits,
/// six requests stalled mid-body leave the admin's requests answered at
/// once, and each stalled one gets 408 once `--request-timeout-ms` passes;
/// a key that may not create keys is refused (403) before its body is read.
#[test]
fn stalled_bodies_hold_no_management_permit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-concurrent-manage",
            "2",
            "--request-timeout-ms",
            "1500",
        ],
    );
    let rest = server.http_addr.clone().unwrap();
    let (status, sender) = create(
        &rest,
        &server.admin_token,
        Some("acme"),
        r#"{"name": "sender", "scopes": ["mail.send"]}"#,
    );
    assert_eq!(status, 201);
    let token = sender["api_key"].as_str().unwrap().to_owned();
    let stall = |credential: &str| {
        let mut stream = std::net::TcpStream::connect(&rest).unwrap();
        write!(
            stream,
            "POST /v3/api_keys HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {credential}\r\non-behalf-of: acme\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
        )
        .unwrap();
        stream
    };
    // mail.send only: refused before the body, which never comes.
    let mut refused = std::net::TcpStream::connect(&rest).unwrap();
    write!(
        refused,
        "POST /v3/api_keys HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
    )
    .unwrap();
    refused
        .set_read_timeout(Some(std::time::Duration::from_millis(1000)))
        .unwrap();
    let mut head = [0u8; 12];
    refused.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");
    let stalled: Vec<std::net::TcpStream> = (0..6).map(|_| stall(&server.admin_token)).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let auth = format!("Bearer {}", server.admin_token);
    for _ in 0..3 {
        let (status, _, body) = http_request(
            &rest,
            "GET",
            "/v3/api_keys?limit=10",
            &[("Authorization", &auth), ("on-behalf-of", "acme")],
            None,
        );
        assert_eq!(status, 200, "{body}");
    }
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// Headers that never finish are not waited for: with
/// `--request-timeout-ms 1000`, a connection stalled mid-headers is closed
/// within a few seconds, while a complete request on another is answered.
#[test]
fn stalled_headers_are_dropped_at_the_deadline() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--request-timeout-ms", "1000"]);
    let rest = server.http_addr.clone().unwrap();
    let started = std::time::Instant::now();
    let mut stalled = std::net::TcpStream::connect(&rest).unwrap();
    stalled
        .write_all(b"GET /v3/scopes HTTP/1.1\r\nHost: test\r\nAuthorization: Bea")
        .unwrap();
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let auth = format!("Bearer {}", server.admin_token);
    let (status, _, body) = http_request(
        &rest,
        "GET",
        "/v3/scopes",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let mut answer = Vec::new();
    stalled
        .read_to_end(&mut answer)
        .expect("the server closes the connection rather than wait");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "closed only after {took:?}"
    );
}
