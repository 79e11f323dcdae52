//! Forward-auth behind real proxies: Debian's nginx (`auth_request`) and
//! Caddy (`forward_auth`), on loopback ports, in front of an upstream that
//! records what reaches it. The upstream sees exactly the requests
//! scopegate allowed, with the key's identity and without its credential;
//! every refusal comes back from the proxy with scopegate's status. Also:
//! Envoy's HTTP mode (path prefix), the request headers' rules, AuthZEN.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, http_request, Server};
use scopegate::grpc::pb;

/// An upstream that answers 200 and records each request's head.
struct Upstream {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                record.lock().unwrap().push(head);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream",
                );
            }
        });
        Upstream { addr, seen }
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A proxy process, stopped when dropped.
struct Proxy {
    child: Child,
    addr: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "proxy exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "proxy never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with `auth_request`, as examples/forward-auth/nginx.conf has it.
fn nginx(dir: &Path, scopegate: &str, upstream: &str) -> Proxy {
    let port = free_port();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/forward-auth/nginx.conf"),
    )
    .unwrap();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n{}\n}}\n",
        example
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:8181", scopegate)
            .replace("127.0.0.1:3000", upstream),
        dir = dir.display(),
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let test = Command::new("nginx")
        .args(["-t", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx (Debian's nginx package)");
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_listening(&addr, &mut child, &dir.join("error.log"));
    Proxy { child, addr }
}

/// Caddy with `forward_auth`, as examples/forward-auth/Caddyfile has it.
fn caddy(dir: &Path, scopegate: &str, upstream: &str) -> Proxy {
    let port = free_port();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/forward-auth/Caddyfile"),
    )
    .unwrap();
    let config = format!(
        "{{\n  admin off\n  auto_https off\n  storage file_system {dir}\n}}\n{}",
        example
            .replace(":8000", &format!("http://:{port}"))
            .replace("127.0.0.1:8181", scopegate)
            .replace("127.0.0.1:3000", upstream),
        dir = dir.display(),
    );
    let file = dir.join("Caddyfile");
    std::fs::write(&file, config).unwrap();
    let validate = Command::new("caddy")
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir)
        .output()
        .expect("caddy (Debian's caddy package)");
    assert!(
        validate.status.success(),
        "caddy validate: {}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let log = dir.join("caddy.log");
    let mut child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_listening(&addr, &mut child, &log);
    Proxy { child, addr }
}

/// A server with the forward-auth door on a free port; its address.
fn server_with_door(dir: &Path, extra: &[&str]) -> (Server, String) {
    let door = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--forward-auth-listen", door.as_str()];
    args.extend_from_slice(extra);
    (Server::start(&dir.join("data"), &args), door)
}

/// Keys for every outcome: (allowed, no scope, over its limit, not yet valid).
async fn keys(server: &Server) -> [String; 4] {
    let create =
        |request: pb::CreateKeyRequest| async { server.admin_create(request).await.unwrap().token };
    let allowed = create(common::create("acme", "sender", &["mail.send"])).await;
    let reader = create(common::create("acme", "reader", &["stats.read"])).await;
    let limited = create(pb::CreateKeyRequest {
        rate_limits: vec![pb::RateLimit {
            name: "tiny".into(),
            limit: 1,
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..common::create("acme", "limited", &["mail.send"])
    })
    .await;
    let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let later = create(pb::CreateKeyRequest {
        not_before: Some(tomorrow.into()),
        ..common::create("acme", "later", &["mail.send"])
    })
    .await;
    [allowed, reader, limited, later]
}

/// The same promises through any proxy: what reaches the upstream, and what
/// the client gets for each refusal.
async fn behind(proxy: &Proxy, upstream: &Upstream, server: &Server, nginx: bool) {
    let [allowed, reader, limited, later] = keys(server).await;
    let send = |token: &str, path: &str| {
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = match token {
            "" => vec![],
            _ => vec![("Authorization", auth.as_str())],
        };
        http_request(&proxy.addr, "POST", path, &headers, Some("{}"))
    };
    let (status, head, body) = send(&allowed, "/v3/mail/send");
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream"),
        "{head} upstream saw {:?}",
        upstream.heads()
    );
    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("post /v3/mail/send "), "{}", heads[0]);
    assert!(heads[0].contains("x-scopegate-key-id: "), "{}", heads[0]);
    assert!(
        heads[0].contains("x-scopegate-account-id: acme"),
        "{}",
        heads[0]
    );
    assert!(
        !heads[0].contains("authorization"),
        "credential passed on: {}",
        heads[0]
    );
    assert!(!heads[0].contains(&allowed.to_ascii_lowercase()));
    // Refusals, each with scopegate's status.
    assert_eq!(send(&reader, "/v3/mail/send").0, 403);
    let (status, head, _) = send("", "/v3/mail/send");
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(send(&later, "/v3/mail/send").0, 401);
    assert_eq!(send(&limited, "/v3/mail/send").0, 200);
    let (status, head, _) = send(&limited, "/v3/mail/send");
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("retry-after: "), "{head}");
    // Path tricks never reach the upstream.
    for path in [
        "/v3/mail/%2e%2e/api_keys",
        "/v3/mail/send/../../api_keys",
        "/v3/mail%2fsend",
        "/v3/mail/send;/../../api_keys",
        "//v3/api_keys",
        "/v3/api_keys",
    ] {
        let (status, _, _) = send(&allowed, path);
        assert!(
            status >= 400,
            "{path} passed with {status} (nginx: {nginx})"
        );
    }
    // A client naming an allowed request in the proxies' headers while it
    // sends another: never reaches the upstream.
    let auth = format!("Bearer {allowed}");
    let (status, _, _) = http_request(
        &proxy.addr,
        "POST",
        "/v3/api_keys",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", "/v3/mail/send"),
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/v3/mail/send"),
        ],
        Some("{}"),
    );
    assert!(status >= 400, "smuggled with {status}");
    assert_eq!(
        upstream.heads().len(),
        2,
        "the upstream saw a request scopegate did not allow: {:?}",
        upstream.heads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_only_allowed_requests_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (server, door) = server_with_door(dir.path(), &[]);
    let upstream = Upstream::start();
    let proxy = nginx(dir.path(), &door, &upstream.addr);
    behind(&proxy, &upstream, &server, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_caddy_only_allowed_requests_reach_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (server, door) = server_with_door(dir.path(), &[]);
    let upstream = Upstream::start();
    let proxy = caddy(dir.path(), &door, &upstream.addr);
    behind(&proxy, &upstream, &server, false).await;
}

/// Envoy's HTTP ext_authz sends the client's request with its path under
/// `path_prefix` and the client's headers; the door judges that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_http_mode_and_the_request_headers_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (server, door) = server_with_door(
        dir.path(),
        &[
            "--forward-auth-path-prefix",
            "/check",
            "--forward-auth-trusted-proxies",
            "10.0.0.0/8",
        ],
    );
    let [allowed, reader, _, _] = keys(&server).await;
    let bearer = |token: &str| format!("Bearer {token}");
    let own = |token: &str, method: &str, path: &str| {
        http_request(
            &door,
            method,
            path,
            &[("Authorization", &bearer(token))],
            None,
        )
    };
    let (status, head, _) = own(&allowed, "POST", "/check/v3/mail/send");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-scopegate-key-id: "), "{head}");
    assert_eq!(own(&reader, "POST", "/check/v3/mail/send").0, 403);
    // Outside the prefix, with no forwarded headers: nothing to judge.
    let (status, _, body) = own(&allowed, "POST", "/v3/mail/send");
    assert_eq!(status, 400, "{body}");
    // A forwarded pair names the request; half a pair is refused, never
    // guessed.
    let auth = bearer(&allowed);
    let forwarded = |headers: &[(&str, &str)]| {
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        http_request(&door, "GET", "/", &all, None)
    };
    let (status, _, _) = forwarded(&[
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Uri", "/v3/mail/send?x=1"),
    ]);
    assert_eq!(status, 200);
    let (status, _, body) = forwarded(&[("X-Original-URI", "/v3/mail/send")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("x-original-method"), "{body}");
    let (status, _, _) = forwarded(&[
        ("X-Original-Method", "POST"),
        ("X-Original-URI", "/v3/mail/send"),
    ]);
    assert_eq!(status, 200);
    // Two sources naming different requests: refused (a client adding the
    // pair its proxy does not set must not be judged on another request).
    let (status, _, body) = forwarded(&[
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Uri", "/v3/mail/send"),
        ("X-Original-Method", "DELETE"),
        ("X-Original-URI", "/v3/api_keys/AAAAAAAAAAAAAAAAAAAAAA"),
    ]);
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = http_request(
        &door,
        "GET",
        "/check/v3/stats",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", "/v3/mail/send"),
        ],
        None,
    );
    assert_eq!(status, 400);
    // A method-override header is refused as ext_authz refuses it.
    let (status, _, _) = forwarded(&[
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Uri", "/v3/mail/send"),
        ("X-HTTP-Method-Override", "DELETE"),
    ]);
    assert_eq!(status, 400);
}

/// A key held to an allowlist: X-Forwarded-For is believed only from a
/// trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    for (trusted, expected) in [("", 403), ("127.0.0.1/32", 200)] {
        let (server, door) = server_with_door(
            &dir.path().join(format!("t{expected}")),
            &["--forward-auth-trusted-proxies", trusted],
        );
        let token = server
            .admin_create(pb::CreateKeyRequest {
                allowed_cidrs: vec!["203.0.113.0/24".into()],
                ..common::create("acme", "pinned", &["mail.send"])
            })
            .await
            .unwrap()
            .token;
        let auth = format!("Bearer {token}");
        let (status, _, body) = http_request(
            &door,
            "GET",
            "/",
            &[
                ("Authorization", &auth),
                ("X-Forwarded-Method", "POST"),
                ("X-Forwarded-Uri", "/v3/mail/send"),
                ("X-Forwarded-For", "203.0.113.7"),
            ],
            None,
        );
        assert_eq!(status, expected, "trusted `{trusted}`: {body}");
    }
}

/// AuthZEN 1.0: single and batch evaluations answer as Check does, with the
/// three batch semantics; the discovery document names the endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_evaluations_answer_as_check() {
    let dir = tempfile::tempdir().unwrap();
    let (server, door) = server_with_door(dir.path(), &[]);
    let [allowed, reader, _, _] = keys(&server).await;
    let post = |path: &str, body: serde_json::Value| {
        let (status, _, answer) = http_request(
            &door,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&body.to_string()),
        );
        let answer: serde_json::Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{status} {answer}"));
        (status, answer)
    };
    let subject = |token: &str| serde_json::json!({"type": "api_key", "id": token});
    for (token, scope) in [
        (&allowed, "mail.send"),
        (&reader, "mail.send"),
        (&reader, "stats.read"),
        (&"SG.nope.nope".to_owned(), "stats.read"),
    ] {
        let (status, answer) = post(
            "/access/v1/evaluation",
            serde_json::json!({
                "subject": subject(token),
                "action": {"name": scope},
                "resource": {"type": "account", "id": "acme"},
            }),
        );
        assert_eq!(status, 200, "{answer}");
        let check = common::decision(&server, token, &[scope]).await;
        assert_eq!(
            answer["decision"].as_bool().unwrap(),
            check == pb::Decision::Allowed,
            "{answer}"
        );
        if check != pb::Decision::Allowed {
            assert_eq!(answer["context"]["reason"], check.as_str_name(), "{answer}");
        }
    }
    // A route resource is judged through the route table.
    let (_, answer) = post(
        "/access/v1/evaluation",
        serde_json::json!({
            "subject": {"type": "api_key", "properties": {"token": allowed}},
            "action": {"name": "POST"},
            "resource": {"type": "route", "id": "/v3/mail/send"},
        }),
    );
    assert_eq!(answer["decision"], true, "{answer}");
    // Batches: defaults, the three semantics, an unreadable item closed.
    let batch = |semantic: &str| {
        serde_json::json!({
            "subject": subject(&reader),
            "resource": {"type": "account", "id": "acme"},
            "options": {"evaluations_semantic": semantic},
            "evaluations": [
                {"action": {"name": "stats.read"}},
                {"action": {"name": "mail.send"}},
                {"action": {"name": "no.such.scope"}},
                {"subject": subject(&allowed), "action": {"name": "mail.send"}},
            ],
        })
    };
    let decisions = |answer: &serde_json::Value| -> Vec<bool> {
        answer["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|one| one["decision"].as_bool().unwrap())
            .collect()
    };
    let (_, all) = post("/access/v1/evaluations", batch("execute_all"));
    assert_eq!(decisions(&all), [true, false, false, true], "{all}");
    assert_eq!(
        all["evaluations"][1]["context"]["reason"],
        "INSUFFICIENT_SCOPE"
    );
    assert_eq!(
        all["evaluations"][2]["context"]["error"]["status"], 400,
        "{all}"
    );
    let (_, deny) = post("/access/v1/evaluations", batch("deny_on_first_deny"));
    assert_eq!(decisions(&deny), [true, false], "{deny}");
    let (_, permit) = post("/access/v1/evaluations", batch("permit_on_first_permit"));
    assert_eq!(decisions(&permit), [true], "{permit}");
    // Without `evaluations`, a single evaluation (spec §7.1).
    let (_, single) = post(
        "/access/v1/evaluations",
        serde_json::json!({
            "subject": subject(&allowed),
            "action": {"name": "mail.send"},
            "resource": {"type": "account", "id": "acme"},
        }),
    );
    assert_eq!(single["decision"], true, "{single}");
    // Malformed: a 400 with the error's status and message.
    let (status, error) = post("/access/v1/evaluation", serde_json::json!({"subject": 1}));
    assert_eq!(status, 400);
    assert_eq!(error["error"]["status"], 400, "{error}");
    let (status, error) = post(
        "/access/v1/evaluation",
        serde_json::json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "mail.send"},
            "resource": {"type": "account", "id": "acme"},
        }),
    );
    assert_eq!(status, 400, "{error}");
    let (status, _, document) = http_request(
        &door,
        "GET",
        "/.well-known/authzen-configuration",
        &[],
        None,
    );
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(
        document["access_evaluation_endpoint"], "http://test/access/v1/evaluation",
        "{document}"
    );
}

/// Bad forward-auth settings stop start-up, naming the setting.
#[test]
fn bad_forward_auth_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let door = format!("127.0.0.1:{}", free_port());
    for (args, named) in [
        (
            vec!["--forward-auth-listen", "everywhere"],
            "forward_auth_listen",
        ),
        (
            vec![
                "--forward-auth-listen",
                &door,
                "--forward-auth-path-prefix",
                "check",
            ],
            "forward_auth_path_prefix",
        ),
        (
            vec![
                "--forward-auth-listen",
                &door,
                "--forward-auth-trusted-proxies",
                "10.0.0.0/8,proxy",
            ],
            "forward_auth_trusted_proxies",
        ),
        (
            vec!["--forward-auth-path-prefix", "/check"],
            "forward_auth_listen",
        ),
    ] {
        let refused = Server::try_start(&dir.path().join(named), &args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} started"));
        assert!(refused.contains(named), "{args:?}: {refused}");
    }
}
