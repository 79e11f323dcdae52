//! Operating scopegate: metrics, listeners, limits, shutdown, config
//! (reloads: tests/reload.rs).

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bearer, check, create, metric, serving, Server, BIN};
use scopegate::grpc::pb;
use tonic::Code;

#[tokio::test]
async fn metrics_count_what_happened_and_carry_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut authorize = server.authorize().await;
    let created = manage
        .create_key(bearer(&admin, create("acme", "m", &["mail.send"])))
        .await
        .unwrap()
        .into_inner();
    let _ = manage
        .create_key(bearer(&admin, create("acme", "bad", &["nope.read"])))
        .await;
    for _ in 0..3 {
        authorize
            .check(check(&created.token, &["mail.send"]))
            .await
            .unwrap();
    }
    authorize
        .check(check(&created.token, &["stats.read"]))
        .await
        .unwrap();
    authorize.check(check("", &["stats.read"])).await.unwrap();
    // The keys gauge follows kinds: a billing key, counted, then turned general.
    let billing = manage
        .create_key(bearer(&admin, create("acme", "b", &["billing.read"])))
        .await
        .unwrap()
        .into_inner();
    let (_, body) = server.http_get("/metrics");
    assert_eq!(metric(&body, r#"scopegate_keys{kind="billing"}"#), 1.0);
    manage
        .update_key(bearer(
            &admin,
            pb::UpdateKeyRequest {
                key_id: billing.key.unwrap().key_id,
                scopes: vec!["stats.read".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let (status, body) = server.http_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &body,
            r#"scopegate_decisions_total{api="check",decision="ALLOWED"}"#
        ),
        3.0,
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_decisions_total{api="check",decision="INSUFFICIENT_SCOPE"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_decisions_total{api="check",decision="MISSING_TOKEN"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_key_mutations_total{kind="create",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_key_mutations_total{kind="update",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_key_mutations_total{kind="create",outcome="invalid"}"#
        ),
        1.0
    );
    assert_eq!(metric(&body, r#"scopegate_keys{kind="general"}"#), 2.0);
    assert!(
        body.contains("scopegate_keys{kind=\"billing\"} 0"),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_grpc_requests_total{method="/scopegate.v1.Authorize/Check",code="OK"}"#
        ),
        5.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_grpc_requests_total{method="/scopegate.v1.ManageKey/CreateKey",code="INVALID_ARGUMENT"}"#
        ),
        1.0
    );
    assert!(metric(&body, "scopegate_store_flush_seconds_count") >= 1.0);
    assert!(
        metric(
            &body,
            r#"scopegate_grpc_request_seconds_count{method="/scopegate.v1.Authorize/Check"}"#
        ) >= 5.0
    );
    assert!(
        !body.contains(&created.token[3..25]),
        "no key id or token in labels"
    );
    assert!(!body.contains(&admin));
    assert_eq!(server.http_get("/healthz").0, 200);
    assert_eq!(server.http_get("/readyz").0, 200);
}

#[test]
fn unix_socket_and_a_separate_management_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("scopegate.sock");
    let manage_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--uds",
            socket.to_str().unwrap(),
            "--uds-mode",
            "600",
            "--manage-listen",
            &manage_port.to_string(),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let run = |args: &[&str]| {
        let output = Command::new(&grpcurl)
            .args(args)
            .output()
            .expect("grpcurl (scripts/test.sh installs it)");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // The hot path over the Unix socket.
    let (ok, out) = run(&[
        "-plaintext",
        "-authority",
        "localhost",
        "-unix",
        socket.to_str().unwrap(),
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-authority",
        "localhost",
        "-unix",
        "-d",
        r#"{"token":"","scopes":["mail.send"]}"#,
        socket.to_str().unwrap(),
        "scopegate.v1.Authorize/Check",
    ]);
    assert!(ok && out.contains("MISSING_TOKEN"), "{out}");
    // ManageKey lives only on its own listener.
    let auth = format!("authorization: Bearer {}", server.admin_token);
    let main = server.addr.trim_start_matches("http://").to_owned();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        "{}",
        &main,
        "scopegate.v1.ManageKey/ListScopes",
    ]);
    assert!(!ok && out.contains("Unimplemented"), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        "{}",
        &manage_port.to_string(),
        "scopegate.v1.ManageKey/ListScopes",
    ]);
    assert!(ok && out.contains("callerIsAdmin"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_at_once_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-concurrent-manage",
            "2",
            "--max-keys-per-account",
            "1000",
        ],
    );
    let admin = server.admin_token.clone();
    // 64 durable creates at once: each holds a slot for a flush.
    let mut calls = Vec::new();
    for index in 0..64 {
        let mut manage = server.manage().await;
        let admin = admin.clone();
        calls.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = manage
                .create_key(bearer(
                    &admin,
                    create("acme", &format!("k{index}"), &["mail.send"]),
                ))
                .await;
            (
                result.map(|_| ()).map_err(|status| status.code()),
                started.elapsed(),
            )
        }));
    }
    let mut shed = 0;
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(Code::ResourceExhausted), elapsed) => {
                shed += 1;
                assert!(
                    elapsed < Duration::from_secs(5),
                    "a shed request waited {elapsed:?}"
                );
            }
            (Err(code), _) => panic!("unexpected {code:?}"),
        }
    }
    assert!(shed > 0, "nothing was shed ({ok} ok)");
    assert!(ok > 0);
    // Recovered: the next request is served.
    let mut manage = server.manage().await;
    manage
        .create_key(bearer(&admin, create("acme", "after", &["mail.send"])))
        .await
        .unwrap();
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(
            &body,
            r#"scopegate_requests_rejected_total{reason="overloaded"}"#
        ),
        shed as f64
    );
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-message-bytes", "1024"]);
    let mut authorize = server.authorize().await;
    let huge = "x".repeat(4096);
    let status = authorize
        .check(check(&huge, &["mail.send"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // A normal request on the same server is fine.
    assert!(authorize.check(check("", &["mail.send"])).await.is_ok());
}

#[tokio::test]
async fn an_expired_deadline_returns_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    let mut request = bearer(&server.admin_token, create("acme", "late", &["mail.send"]));
    request.set_timeout(Duration::from_micros(1));
    let started = std::time::Instant::now();
    let status = manage.create_key(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A call the server never processed because its connection was being shut
/// down gracefully (HTTP/2 GOAWAY with NO_ERROR); tonic's client reports it
/// as INTERNAL with the transport error as its source.
fn refused_by_goaway(status: &tonic::Status) -> bool {
    let source = format!("{:?}", std::error::Error::source(status));
    status.code() == Code::Internal && source.contains("GoAway") && source.contains("NO_ERROR")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--max-keys-per-account", "100000"]);
    let admin = server.admin_token.clone();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<tonic::Status>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut manage = server.manage().await;
        let (admin, acknowledged, unexpected) =
            (admin.clone(), acknowledged.clone(), unexpected.clone());
        writers.push(tokio::spawn(async move {
            for index in 0.. {
                match manage
                    .create_key(bearer(
                        &admin,
                        create("acme", &format!("w{writer}-{index}"), &["mail.send"]),
                    ))
                    .await
                {
                    Ok(response) => acknowledged
                        .lock()
                        .unwrap()
                        .push(response.into_inner().token),
                    // Refused once draining: the connection is going away.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ) || refused_by_goaway(&status) =>
                    {
                        break
                    }
                    Err(status) => {
                        unexpected.lock().unwrap().push(status);
                        break;
                    }
                }
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let exited_ok = tokio::task::block_in_place(|| server.terminate());
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(exited_ok, "SIGTERM exits 0:\n{}", server.log());
    assert!(
        unexpected.lock().unwrap().is_empty(),
        "{:?}",
        unexpected.lock().unwrap()
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let server = Server::start(&data, &[]);
    let mut authorize = server.authorize().await;
    for token in &acknowledged {
        assert!(
            authorize
                .check(check(token, &["mail.send"]))
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
    }
}

#[test]
fn config_check_and_print() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scopegate.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:7001\"\nmax_keys_per_account = 5\nroutes = \"examples/routes.toml\"\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let path = config.to_str().unwrap();
    let (code, out, err) = run(&["config", "check", "--config", path], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ok: 22 scopes, 15 routes");

    // Precedence: flag > env > file > default.
    let (code, out, _) = run(
        &[
            "config",
            "print",
            "--config",
            path,
            "--max-keys-per-account",
            "9",
        ],
        &[
            ("SCOPEGATE_LISTEN", "127.0.0.1:7002"),
            ("SCOPEGATE_ADMIN_TOKEN", "super-secret-admin-token"),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("listen = \"127.0.0.1:7002\""), "{out}");
    assert!(out.contains("max_keys_per_account = 9"), "{out}");
    assert!(out.contains("token_prefix = \"SG\""), "{out}");
    assert!(!out.contains("super-secret-admin-token"), "{out}");

    std::fs::write(&config, "listen = \"127.0.0.1:7001\"\nlisten_typo = 1\n").unwrap();
    let (code, _, err) = run(&["config", "check", "--config", path], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `listen_typo`"), "{err}");
    std::fs::write(&config, "routes = \"tests/no-such-routes.toml\"\n").unwrap();
    let (code, _, err) = run(&["config", "check", "--config", path], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read routes tests/no-such-routes.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_on_the_tcp_listener() {
    let dir = tempfile::tempdir().unwrap();
    // A test CA, and a leaf certificate for localhost signed by it.
    let test_ca = common::TestCa::new(&dir.path().join("ca"));
    let (cert, key, ca) = (test_ca.server_cert, test_ca.server_key, test_ca.ca);
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    let https = server.addr.replace("http://", "https://");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&ca).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(https)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut authorize = pb::authorize_client::AuthorizeClient::new(channel);
    let response = authorize
        .check(check("", &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pb::Decision::try_from(response.decision).unwrap(),
        pb::Decision::MissingToken
    );
    // Plaintext is refused on a TLS listener.
    let plain = tonic::transport::Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => pb::authorize_client::AuthorizeClient::new(channel)
            .check(check("", &["mail.send"]))
            .await
            .is_err(),
    };
    assert!(refused);
    // Half a TLS configuration is a start-up error naming the key.
    let half = Command::new(BIN)
        .args(["config", "check", "--tls-cert-file", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr)
        .contains("tls_key_file: is required with tls_cert_file"));
}

/// As in the container image (Dockerfile): the release binary, uid 65532
/// (distroless "nonroot"), nothing writable but the data dir and the socket dir.
/// `scripts/test.sh` builds the release binary and names it in
/// SCOPEGATE_RELEASE_BIN; a plain `cargo test` falls back to the test build.
#[tokio::test]
async fn runs_as_non_root_with_only_its_own_paths_writable() {
    use std::os::unix::fs::PermissionsExt;
    const NONROOT: u32 = 65532;
    let dir = tempfile::tempdir().unwrap();
    let set_mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(dir.path(), 0o755);
    let source = std::env::var("SCOPEGATE_RELEASE_BIN").unwrap_or_else(|_| BIN.to_owned());
    eprintln!("image test runs {source}");
    let binary = dir.path().join("scopegate");
    std::fs::copy(&source, &binary).unwrap();
    let root = dir.path().join("root");
    for writable in ["data", "run"] {
        std::fs::create_dir_all(root.join(writable)).unwrap();
        std::os::unix::fs::chown(root.join(writable), Some(NONROOT), Some(NONROOT)).unwrap();
    }
    set_mode(&root, 0o555);
    let log = dir.path().join("serve.log");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &NONROOT.to_string(),
            "--regid",
            &NONROOT.to_string(),
        ])
        .arg("--clear-groups")
        .arg(&binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
            "--http-listen",
            "none",
            "--log-format",
            "json",
        ])
        .arg(format!("--uds={}", root.join("run/grpc.sock").display()))
        .arg(format!("--data-dir={}", root.join("data").display()))
        .current_dir(&root)
        .env_remove("SCOPEGATE_ADMIN_TOKEN")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut addr = None;
    for _ in 0..500 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["fields"]["message"] == "scopegate listening" {
                addr = event["fields"]["addr"].as_str().map(str::to_owned);
            }
        }
        if addr.is_some() && text.contains("keys loaded; serving") {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = addr.expect("listening");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(serving(channel, "").await);
    let mut entries: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["data", "run"],
        "nothing written outside the configured paths"
    );
    assert!(root.join("data/admin.token").exists());
    assert!(root.join("run/grpc.sock").exists());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn decisions_are_logged_when_sampled_and_never_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--log-decisions-every", "2"]);
    let mut authorize = server.authorize().await;
    let key = server.admin_key(&["mail.send"]).await;
    for _ in 0..4 {
        authorize
            .check(check(&key.token, &["mail.send"]))
            .await
            .unwrap();
    }
    let log = server.log();
    let decisions: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(r#""message":"decision""#))
        .collect();
    assert_eq!(decisions.len(), 2, "one in two of 4 decisions:\n{log}");
    assert!(
        decisions[0].contains(r#""decision":"ALLOWED""#)
            && decisions[0].contains(r#""account_id":"acme""#)
    );
    let secret_and_checksum = key.token.rsplit('.').next().unwrap();
    let raw_secret = &secret_and_checksum[..secret_and_checksum.len() - 6];
    assert_eq!(raw_secret.len(), 43);
    assert!(!log.contains(raw_secret), "the raw secret is in the log");
}

/// One tenant flooding key changes cannot shed checks: checks and management
/// have separate concurrency limits, and an account's API keys are rate
/// limited (RESOURCE_EXHAUSTED with a retry delay). With one shared limit,
/// the flood held every slot across its disk syncs and checks were shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_flood_never_sheds_checks() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-concurrent-requests",
            "16",
            "--max-concurrent-manage",
            "4",
            "--mutations-per-account-per-sec",
            "20",
        ],
    );
    let tenant = server
        .manage()
        .await
        .create_key(bearer(
            &server.admin_token,
            common::create_manager("tenant", "flooder", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let tenant_id = tenant.key.unwrap().key_id;
    let checker = server.admin_key(&["mail.send"]).await.token;
    let flood_for = Duration::from_secs(2);
    let started = std::time::Instant::now();

    let mut flooders = Vec::new();
    for index in 0..32 {
        let mut manage = server.manage().await;
        let (token, key_id) = (tenant.token.clone(), tenant_id.clone());
        flooders.push(tokio::spawn(async move {
            let (mut ok, mut limited, mut shed) = (0u64, 0u64, 0u64);
            while started.elapsed() < flood_for {
                let update = pb::UpdateKeyRequest {
                    key_id: key_id.clone(),
                    name: Some(format!("n{index}")),
                    ..Default::default()
                };
                match manage.update_key(bearer(&token, update)).await {
                    Ok(_) => ok += 1,
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        if status.get_details_retry_info().is_some() {
                            limited += 1;
                        } else {
                            shed += 1;
                        }
                    }
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }
            (ok, limited, shed)
        }));
    }
    let mut checkers = Vec::new();
    for _ in 0..4 {
        let mut authorize = server.authorize().await;
        let token = checker.clone();
        checkers.push(tokio::spawn(async move {
            let (mut allowed, mut errors) = (0u64, Vec::new());
            while started.elapsed() < flood_for {
                match authorize.check(check(&token, &["mail.send"])).await {
                    Ok(response) if response.get_ref().allowed => allowed += 1,
                    Ok(response) => errors.push(format!("{:?}", response.into_inner())),
                    Err(status) => errors.push(format!("{status:?}")),
                }
            }
            (allowed, errors)
        }));
    }
    let (mut ok, mut limited, mut shed) = (0, 0, 0);
    for flooder in flooders {
        let (o, l, s) = flooder.await.unwrap();
        (ok, limited, shed) = (ok + o, limited + l, shed + s);
    }
    let mut checks = 0;
    for checker in checkers {
        let (allowed, errors) = checker.await.unwrap();
        assert!(
            errors.is_empty(),
            "checks failed during the flood: {errors:?}"
        );
        checks += allowed;
    }
    eprintln!(
        "during a {flood_for:?} flood: {checks} checks allowed, 0 errors; mutations {ok} ok, {limited} rate limited, {shed} shed"
    );
    assert!(checks > 0);
    assert!(limited > 0, "the flood was never rate limited");
    // 20/s with a burst of 20 over 2 s: at most ~60 changes got through.
    assert!(ok <= 70, "{ok} changes went through a 20/s limit");
}

/// SIGTERM drains: health turns NOT_SERVING while open calls run on (a
/// health Watch stream here, which a server that exits at once would cut),
/// a stream of Checks sees only OK answers or a clean refusal of new calls,
/// and once the last call ends the process exits 0, well within the drain
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_serving_and_lets_open_calls_finish() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    // The harness sets --drain-timeout-secs 5.
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let token = server.admin_key(&["mail.send"]).await.token;
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest {
            service: "scopegate.v1.Authorize".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut authorize = server.authorize().await;
    let checks = tokio::spawn(async move {
        let mut ok = 0;
        loop {
            match authorize.check(check(&token, &["mail.send"])).await {
                Ok(response) => {
                    assert!(response.into_inner().allowed);
                    ok += 1;
                }
                Err(status)
                    if refused_by_goaway(&status)
                        || matches!(status.code(), Code::Unavailable | Code::Cancelled) =>
                {
                    return ok
                }
                Err(status) => panic!("a check in flight failed: {status:?}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = std::time::Instant::now();
    server.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("no health update after SIGTERM")
        .expect("the open Watch call was cut: the server did not drain")
        .expect("the Watch stream ended before reporting NOT_SERVING");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let checks_ok = checks.await.unwrap();
    assert!(checks_ok > 0);
    // The open Watch call keeps the server draining, not gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a call open"
    );
    drop(watch);
    let status = tokio::task::block_in_place(|| server.wait_exit(15)).expect("did not exit");
    assert!(status.success(), "exit {status}:\n{}", server.log());
    assert!(
        !server.log().contains("drain timed out"),
        "the drain ran into its timeout instead of ending with the last call:\n{}",
        server.log()
    );
    assert!(sent.elapsed() < Duration::from_secs(5));
}

/// A change cut by its deadline completes whole or never happens: after a
/// burst of creates and deletes with deadlines of a few milliseconds, sled
/// (ListKeys), the table (Check) and the keys gauge all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_cut_by_their_deadline_complete_or_never_happen() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-keys-per-account", "100000"],
    );
    let admin = server.admin_token.clone();
    let mut calls = Vec::new();
    for index in 0..200u64 {
        let mut manage = server.manage().await;
        let admin = admin.clone();
        calls.push(tokio::spawn(async move {
            let mut request = bearer(&admin, create("acme", &format!("k{index}"), &["mail.send"]));
            request.set_timeout(Duration::from_micros(500 + 1000 * (index % 20)));
            let created = manage.create_key(request).await;
            if let Ok(created) = created {
                let created = created.into_inner();
                let key_id = created.key.unwrap().key_id;
                if index % 2 == 0 {
                    let mut request = bearer(
                        &admin,
                        pb::DeleteKeyRequest {
                            key_id: key_id.clone(),
                        },
                    );
                    request.set_timeout(Duration::from_micros(300));
                    let _ = manage.delete_key(request).await;
                }
                return Some((key_id, created.token));
            }
            None
        }));
    }
    let mut tokens = Vec::new();
    for call in calls {
        tokens.extend(call.await.unwrap());
    }
    let acknowledged = tokens.len();
    tokio::time::sleep(Duration::from_millis(500)).await; // let detached changes finish
    let listed = server
        .manage()
        .await
        .list_keys(bearer(
            &admin,
            pb::ListKeysRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    eprintln!(
        "{acknowledged} of 200 creates acknowledged; {} keys stored",
        listed.len()
    );
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(&body, r#"scopegate_keys{kind="general"}"#),
        listed.len() as f64,
        "the keys gauge drifted from what is stored"
    );
    // Check agrees with what is stored for every key whose token we hold:
    // allowed exactly when the key is stored (a cut delete either happened or not).
    let stored: std::collections::BTreeSet<String> =
        listed.iter().map(|key| key.key_id.clone()).collect();
    let decisions = |server: &Server| {
        let server_addr = server.addr.clone();
        let tokens = tokens.clone();
        async move {
            let mut authorize = pb::authorize_client::AuthorizeClient::connect(server_addr)
                .await
                .unwrap();
            let mut allowed = std::collections::BTreeSet::new();
            for (key_id, token) in &tokens {
                let answer = authorize
                    .check(check(token, &["mail.send"]))
                    .await
                    .unwrap()
                    .into_inner();
                if answer.allowed {
                    allowed.insert(key_id.clone());
                }
            }
            allowed
        }
    };
    let ours: std::collections::BTreeSet<String> = tokens
        .iter()
        .map(|(key_id, _)| key_id.clone())
        .filter(|key_id| stored.contains(key_id))
        .collect();
    assert_eq!(
        decisions(&server).await,
        ours,
        "Check and the store disagree"
    );
    // After a restart (the table rebuilt from disk) the count is the same.
    let count_before = listed.len();
    drop(server);
    let server = Server::start(&dir.path().join("data"), &[]);
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(&body, r#"scopegate_keys{kind="general"}"#),
        count_before as f64
    );
    assert_eq!(decisions(&server).await, ours, "and after a restart");
}
