//! The one gate, through the real binary: every route of every door (each
//! gRPC method in the served descriptor plus Envoy's two services, each REST
//! operation in the OpenAPI document, each console route) is refused while
//! the keys are not loaded and while a fleet sidecar's mirror is stale.
//! Enumerated, so a route added without the gate fails here.

mod common;

use std::time::Duration;

use common::{free_port, http_request, Etcd, Server};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Request and answer bytes as they are: an empty message is valid for
/// every method, and the gate must answer before anything decodes it.
#[derive(Default, Clone)]
struct RawCodec;

struct RawBytes;

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

/// Every gRPC method a client can call: the scopegate services from the
/// descriptor reflection serves, and Envoy's two (path, server-streaming).
fn grpc_methods() -> Vec<(String, bool)> {
    let set =
        prost_types::FileDescriptorSet::decode(scopegate::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods: Vec<(String, bool)> = set
        .file
        .iter()
        .flat_map(|file| {
            file.service.iter().flat_map(move |service| {
                service.method.iter().map(move |method| {
                    (
                        format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        method.server_streaming(),
                    )
                })
            })
        })
        .collect();
    assert!(methods.len() >= 10, "{methods:?}");
    methods.push(("/envoy.service.auth.v3.Authorization/Check".into(), false));
    methods.push((
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".into(),
        false,
    ));
    methods
}

async fn call_raw(addr: &str, path: &str, streaming: bool, token: &str) -> Result<Vec<u8>, Status> {
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(Vec::new());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    if streaming {
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await?
            .into_inner();
        Ok(stream.message().await?.unwrap_or_default())
    } else {
        Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
    }
}

/// Waits (10 s at most) until `path` is refused with `code`: the state
/// under test has set in.
async fn until_refused(addr: &str, path: &str, token: &str, code: Code) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call_raw(addr, path, false, token).await {
            Err(status) if status.code() == code => return,
            other => assert!(
                std::time::Instant::now() < deadline,
                "{path} never refused with {code:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every REST operation of the OpenAPI document (method, path), with a
/// well-formed key id in its path.
fn rest_operations() -> Vec<(String, String)> {
    let spec: serde_json::Value = serde_json::from_str(scopegate::http::OPENAPI_JSON).unwrap();
    let mut operations = Vec::new();
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                let path = template.replace("{api_key_id}", "AAAAAAAAAAAAAAAAAAAAAA");
                let path = path.replace("{id}", "AAAAAAAAAAAAAAAAAAAAAA");
                operations.push((method.to_uppercase(), path));
            }
        }
    }
    assert!(operations.len() >= 8, "{operations:?}");
    operations
}

/// Every gRPC method is a decision or management at the gate (so it waits
/// for readiness and takes a permit of its budget), never open; a service
/// nobody listed yet is management.
#[test]
fn every_grpc_method_passes_the_gate() {
    use scopegate::gate::Door;
    for (path, _) in grpc_methods() {
        assert_ne!(Door::of_grpc_path(&path), Door::Open, "{path}");
    }
    assert_eq!(
        Door::of_grpc_path("/scopegate.v1.Authorize/Check"),
        Door::Decision
    );
    assert_eq!(
        Door::of_grpc_path(scopegate::gate::EXT_AUTHZ_CHECK),
        Door::Decision
    );
    assert_eq!(Door::of_grpc_path("/scopegate.v2.New/Call"), Door::Manage);
    assert_eq!(
        Door::of_grpc_path("/grpc.health.v1.Health/Check"),
        Door::Open
    );
}

/// Routes that hold no key and so are served whatever the store's state.
fn always_served(method: &str, path: &str) -> bool {
    path == "/openapi.json"
        || path.starts_with("/console/static/")
        || (method == "GET" && (path == "/console" || path == "/console/sign-in"))
}

/// Sends every REST operation of the document (as the admin) and every
/// console route (with `cookie`, when given) once: (method, path, status,
/// body) of each one served, the always-served documents left out.
fn every_http_route(server: &Server, cookie: Option<&str>) -> Vec<(String, String, u16, String)> {
    let http = server.http_addr.as_deref().unwrap();
    let auth = format!("Bearer {}", server.admin_token);
    let mut answers = Vec::new();
    for (method, path) in rest_operations() {
        if always_served(&method, &path) {
            continue;
        }
        let body = (method != "GET" && method != "DELETE").then_some("{}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let (status, _, answer) = http_request(http, &method, &path, &headers, body);
        answers.push((method, path, status, answer));
    }
    for template in scopegate::http::ROUTES
        .iter()
        .filter(|route| route.starts_with("/console"))
    {
        let path = template
            .replace("{id}", "AAAAAAAAAAAAAAAAAAAAAA")
            .replace("{file}", "console.css");
        for method in ["GET", "POST"] {
            if always_served(method, &path) {
                continue;
            }
            let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
            headers.extend(cookie.map(|cookie| ("Cookie", cookie)));
            let body = Some("csrf=x&name=y").filter(|_| method == "POST");
            let (status, _, answer) = http_request(http, method, &path, &headers, body);
            if status != 405 {
                answers.push((method.to_owned(), path.clone(), status, answer));
            }
        }
    }
    answers
}

/// Every route of the forward-auth door: AuthZEN's (the discovery
/// document aside: it holds no key) and forward-auth itself (any other
/// path); (method, path, status, body) of each.
fn every_forward_auth_route(door: &str) -> Vec<(String, String, u16, String)> {
    let mut paths: Vec<&str> = scopegate::http::forward_auth::ROUTES
        .iter()
        .copied()
        .filter(|path| !path.starts_with("/.well-known/"))
        .collect();
    paths.push("/any/other/path");
    paths
        .into_iter()
        .map(|path| {
            let headers = [
                ("Content-Type", "application/json"),
                ("X-Forwarded-Method", "POST"),
                ("X-Forwarded-Uri", "/v3/mail/send"),
            ];
            let (status, _, answer) = http_request(door, "POST", path, &headers, Some("{}"));
            ("POST".to_owned(), path.to_owned(), status, answer)
        })
        .collect()
}

/// Asserts every door refuses, each saying `why`. `rate_limits`: the
/// address of the rate-limit service's own listener; `forward_auth`: the
/// forward-auth door's.
async fn assert_every_door_refuses(
    server: &Server,
    rate_limits: &str,
    forward_auth: &str,
    cookie: Option<&str>,
    why: &str,
) {
    for (path, streaming) in grpc_methods() {
        let addr = match path.starts_with("/envoy.service.ratelimit.") {
            true => rate_limits,
            false => &server.addr,
        };
        let answer = call_raw(addr, &path, streaming, &server.admin_token).await;
        if path == scopegate::gate::EXT_AUTHZ_CHECK {
            // Answered in Envoy's protocol: a 503 denial saying why.
            let answer = answer.expect(&path);
            let text = String::from_utf8_lossy(&answer);
            assert!(text.contains(why), "{path}: {text}");
            continue;
        }
        let status = answer.expect_err(&path);
        assert_eq!(status.code(), Code::Unavailable, "{path}: {status:?}");
        assert!(status.message().contains(why), "{path}: {status:?}");
    }
    let http = every_http_route(server, cookie);
    for (method, path, status, answer) in http
        .into_iter()
        .chain(every_forward_auth_route(forward_auth))
    {
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert!(answer.contains(why), "{method} {path}: {answer}");
    }
}

/// A fleet sidecar with no mirror and no etcd to read one from is still
/// loading: no door answers from its empty table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_refuses_while_the_keys_are_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let rate_limits = format!("127.0.0.1:{}", free_port());
    let forward_auth = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start_listening(
        &dir.path().join("data"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &nowhere,
            "--http-listen",
            &http,
            "--rate-limit-service-listen",
            &rate_limits,
            "--forward-auth-listen",
            &forward_auth,
        ],
    );
    server.http_addr = Some(http);
    let rate_limits = format!("http://{rate_limits}");
    assert_every_door_refuses(
        &server,
        &rate_limits,
        &forward_auth,
        None,
        "still loading keys",
    )
    .await;
}

/// A fleet sidecar cut off from etcd past `--max-staleness-secs` refuses on
/// every door, the console included for a session opened while it was fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_refuses_while_the_mirror_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let rate_limits = format!("127.0.0.1:{}", free_port());
    let forward_auth = format!("127.0.0.1:{}", free_port());
    let server = common::fleet::fleet(
        dir.path(),
        "a",
        &etcd,
        &[
            "--max-staleness-secs",
            "1",
            "--rate-limit-service-listen",
            &rate_limits,
            "--forward-auth-listen",
            &forward_auth,
        ],
    );
    let rate_limits = format!("http://{rate_limits}");
    let http = server.http_addr.clone().unwrap();
    let cookie = console_session(&http, &server.admin_token);
    // Fresh: the console's keys page answers.
    let (status, _, _) = http_request(
        &http,
        "GET",
        "/console/keys?account=acme",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(status, 200);
    etcd.kill9();
    until_refused(
        &server.addr,
        "/scopegate.v1.ManageKey/ListScopes",
        &server.admin_token,
        Code::Unavailable,
    )
    .await;
    assert_every_door_refuses(&server, &rate_limits, &forward_auth, Some(&cookie), "stale").await;
}

/// One raw HTTP/1.1 exchange; the whole answer as text.
fn exchange(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The value of the `name` cookie an answer sets.
fn set_cookie(answer: &str, name: &str) -> String {
    answer
        .lines()
        .filter_map(|line| {
            let (header, value) = line.split_once(": ")?;
            header.eq_ignore_ascii_case("set-cookie").then_some(value)
        })
        .map(|value| value.split(';').next().unwrap().to_owned())
        .find(|cookie| cookie.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie: {answer}"))
}

/// Signs in to the console as its sign-in page does; the session cookie
/// (`name=value`), as sent.
fn console_session(addr: &str, credential: &str) -> String {
    let page = exchange(
        addr,
        "GET /console/sign-in HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    let pre_session = set_cookie(&page, "scopegate_sign_in");
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let body = format!("credential={credential}&csrf={token}");
    let answer = exchange(
        addr,
        &format!(
            "POST /console/sign-in HTTP/1.1\r\nHost: test\r\nConnection: close\r\nCookie: {pre_session}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    set_cookie(&answer, "scopegate_console")
}

/// Every management route of every door takes a permit of the one
/// management budget, and decisions never do: with `--max-concurrent-manage
/// 1` held by a CreateKey whose fdatasync strace holds for 5 s, every gRPC
/// management method, REST operation and console route is refused as busy,
/// while Check, ext_authz and the rate-limit service answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_management_route_takes_a_permit_and_decisions_never_do() {
    let dir = tempfile::tempdir().unwrap();
    let rate_limits = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--max-concurrent-manage",
            "1",
            "--rate-limit-service-listen",
            &rate_limits,
        ],
    );
    let rate_limits = format!("http://{rate_limits}");
    let http = server.http_addr.clone().unwrap();
    let cookie = console_session(&http, &server.admin_token);
    let token = server.admin_key(&["mail.send"]).await.token;
    let tracer = common::Strace::attach(
        &server,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=5000000",
        ],
        &dir.path().join("trace"),
    );
    // A CreateKey takes the one permit and holds it in its sync. A probe
    // that took the permit first would make it fail fast: then try again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let holder = loop {
        let mut manage = server.manage().await;
        let request = common::bearer(
            &server.admin_token,
            common::create("acme", "slow", &["mail.send"]),
        );
        let holder = tokio::spawn(async move { manage.create_key(request).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let probe = call_raw(
            &server.addr,
            "/scopegate.v1.ManageKey/ListScopes",
            false,
            &token,
        )
        .await;
        if matches!(&probe, Err(status) if status.code() == Code::ResourceExhausted) {
            break holder;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the permit was never held: {probe:?}"
        );
        let _ = holder.await;
    };
    for (path, streaming) in grpc_methods() {
        let door = scopegate::gate::Door::of_grpc_path(&path);
        let addr = match door {
            scopegate::gate::Door::RateLimits => rate_limits.as_str(),
            _ => server.addr.as_str(),
        };
        let answer = call_raw(addr, &path, streaming, &token).await;
        match door {
            scopegate::gate::Door::Manage => {
                let status = answer.expect_err(&path);
                assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
            }
            _ => {
                // Decisions answer (an empty request may be refused as
                // malformed, never as busy).
                if let Err(status) = answer {
                    assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
                }
            }
        }
    }
    for (method, path, status, answer) in every_http_route(&server, Some(&cookie)) {
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert!(
            answer.contains("too many management"),
            "{method} {path}: {answer}"
        );
    }
    tracer.detach();
    holder.await.unwrap().expect("the held change completes");
}
