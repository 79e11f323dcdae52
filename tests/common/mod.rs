//! Test harness: the real `scopegate` binary on an ephemeral port, a temp data
//! dir, and real gRPC clients.
#![allow(dead_code)]

pub mod fleet;
pub mod lifecycle;
pub mod redis;
pub mod store;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scopegate::grpc::pb;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_scopegate");

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// HOST:PORT of /metrics, /healthz, /readyz.
    pub metrics_addr: String,
    /// The REST API, unless the test turned it off (`--http-listen none`).
    pub http_addr: Option<String>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub admin_token: String,
}

impl Server {
    /// Starts a server on `data_dir` and waits until it serves.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::try_start(data_dir, extra_args)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Starts a server; `Err(log)` if it exits before serving.
    pub fn try_start(data_dir: &Path, extra_args: &[&str]) -> Result<Server, String> {
        Server::try_start_in(None, data_dir, extra_args, Duration::from_secs(30))
    }

    /// Starts a server and returns once it listens, serving or not (a fleet
    /// sidecar with no mirror listens NOT_SERVING until its first sync).
    pub fn start_listening(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::launch(None, data_dir, extra_args, Duration::from_secs(30), false)
            .unwrap_or_else(|log| panic!("server did not listen:\n{log}"))
    }

    /// Starts a server; `Err(log)` if it does not serve within `wait`.
    pub fn try_start_for(
        data_dir: &Path,
        extra_args: &[&str],
        wait: Duration,
    ) -> Result<Server, String> {
        Server::try_start_in(None, data_dir, extra_args, wait)
    }

    /// Starts a server from a bash line that ends by `exec`ing it (so its pid
    /// is the server's), e.g. `ulimit -f 128` to inject a disk fault.
    pub fn start_after(shell: &str, data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::try_start_in(Some(shell), data_dir, extra_args, Duration::from_secs(30))
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    fn try_start_in(
        shell: Option<&str>,
        data_dir: &Path,
        extra_args: &[&str],
        wait: Duration,
    ) -> Result<Server, String> {
        Server::launch(shell, data_dir, extra_args, wait, true)
    }

    /// Spawns the server; returns once it serves (`until_serving`) or once
    /// it listens with its metrics address known.
    fn launch(
        shell: Option<&str>,
        data_dir: &Path,
        extra_args: &[&str],
        wait: Duration,
        until_serving: bool,
    ) -> Result<Server, String> {
        std::fs::create_dir_all(data_dir).unwrap();
        let log_path = data_dir.with_extension(format!("{}.log", unique()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = match shell {
            None => Command::new(BIN),
            Some(shell) => {
                let mut command = Command::new("bash");
                command
                    .arg("-c")
                    .arg(format!("{shell}; exec \"$0\" \"$@\""))
                    .arg(BIN);
                command
            }
        };
        let mut child = command
            .arg("serve")
            // Loopback on an ephemeral port, unless the test says otherwise.
            .args(
                (!extra_args.contains(&"--listen"))
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(["--metrics-listen", "127.0.0.1:0"])
            // The REST API on an ephemeral port, unless the test says otherwise.
            .args(
                (!extra_args.contains(&"--http-listen"))
                    .then_some(["--http-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args([
                "--log-format",
                "json",
                "--drain-timeout-secs",
                "5",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra_args)
            .env_remove("SCOPEGATE_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn scopegate");
        let deadline = Instant::now() + wait;
        let mut addr = None;
        let mut metrics_addr = None;
        let mut http_addr = None;
        let mut serving = false;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            for line in BufReader::new(text.as_bytes())
                .lines()
                .map_while(Result::ok)
            {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                match event["fields"]["message"].as_str() {
                    Some("scopegate listening") => {
                        addr = event["fields"]["addr"].as_str().map(str::to_owned);
                    }
                    Some("metrics listening (/metrics, /healthz, /readyz)") => {
                        metrics_addr = event["fields"]["addr"].as_str().map(str::to_owned);
                    }
                    Some("REST API listening (/v3/api_keys, /v3/scopes, /openapi.json)") => {
                        http_addr = event["fields"]["addr"].as_str().map(str::to_owned);
                    }
                    Some("keys loaded; serving") => serving = true,
                    _ => {}
                }
            }
            if let (Some(addr), Some(metrics_addr)) = (&addr, &metrics_addr) {
                if serving || !until_serving {
                    let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))
                        .unwrap()
                        .trim()
                        .to_owned();
                    return Ok(Server {
                        child,
                        addr: format!("http://{addr}"),
                        metrics_addr: metrics_addr.clone(),
                        http_addr: http_addr.clone(),
                        data_dir: data_dir.to_owned(),
                        log_path,
                        admin_token,
                    });
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{text}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("timed out:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn authorize(&self) -> pb::authorize_client::AuthorizeClient<Channel> {
        pb::authorize_client::AuthorizeClient::new(self.channel().await)
    }

    pub async fn manage(&self) -> pb::manage_key_client::ManageKeyClient<Channel> {
        pb::manage_key_client::ManageKeyClient::new(self.channel().await)
    }

    /// A key the admin creates in account "acme".
    /// CreateKey as the admin.
    pub async fn admin_create(
        &self,
        request: pb::CreateKeyRequest,
    ) -> Result<pb::CreateKeyResponse, tonic::Status> {
        self.manage()
            .await
            .create_key(bearer(&self.admin_token, request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn admin_key(&self, scopes: &[&str]) -> pb::CreateKeyResponse {
        self.manage()
            .await
            .create_key(bearer(&self.admin_token, create("acme", "k", scopes)))
            .await
            .unwrap()
            .into_inner()
    }

    /// GET on the metrics listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics_addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: scopegate\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap()
    }

    /// `scopegate backup --out FILE` against this server, as the admin.
    pub fn backup(&self, out: &Path) {
        let status = Command::new(BIN)
            .args(["backup", "--server", &self.addr, "--out"])
            .arg(out)
            .env("SCOPEGATE_AUTH", &self.admin_token)
            .status()
            .unwrap();
        assert!(status.success(), "backup to {} failed", out.display());
    }

    /// Sends a signal by name (HUP, TERM, …).
    pub fn signal(&self, name: &str) {
        Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits until the log holds `needle` `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        for _ in 0..500 {
            if self.log().matches(needle).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {needle:?} (x{count}) in log:\n{}", self.log());
    }

    /// Waits up to `seconds` for the process to exit on its own.
    pub fn wait_exit(&mut self, seconds: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: no chance to flush.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::process::id() as u64 * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A request carrying `authorization: Bearer <credential>`.
pub fn bearer<T>(credential: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    request
}

pub fn create(account: &str, name: &str, scopes: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        account_id: account.into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        grants: vec![],
        ..Default::default()
    }
}

/// A key that may also manage keys (FULL on api_keys).
pub fn create_manager(account: &str, name: &str, scopes: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        grants: vec![pb::Grant {
            resource: "api_keys".into(),
            access: pb::Access::Full as i32,
        }],
        ..create(account, name, scopes)
    }
}

/// Envoy's whole answer to `POST /v3/mail/send` with `token` from `source`.
pub async fn ext_authz_answer(
    server: &Server,
    token: &str,
    source: Option<&str>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: source.map(|ip| Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v3/mail/send".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    AuthorizationClient::new(server.channel().await)
        .check(request)
        .await
        .unwrap()
        .into_inner()
}

/// (decision in the metadata, HTTP status) for `POST /v3/mail/send` from `source`.
pub async fn ext_authz(
    server: &Server,
    token: &str,
    source: Option<&str>,
) -> (String, i32, Option<prost_types::Struct>) {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::google::protobuf::value::Kind;
    let response = ext_authz_answer(server, token, source).await;
    let metadata = response.dynamic_metadata.clone().unwrap();
    let decision = match &metadata.fields["decision"].kind {
        Some(Kind::StringValue(decision)) => decision.clone(),
        other => panic!("{other:?}"),
    };
    let key_metadata = match metadata
        .fields
        .get("key_metadata")
        .and_then(|v| v.kind.clone())
    {
        Some(Kind::StructValue(fields)) => Some(prost_types::Struct {
            fields: fields
                .fields
                .into_iter()
                .map(|(k, v)| {
                    let text = match v.kind {
                        Some(Kind::StringValue(text)) => text,
                        other => panic!("{other:?}"),
                    };
                    (
                        k,
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(text)),
                        },
                    )
                })
                .collect(),
        }),
        _ => None,
    };
    let status = match response.http_response.unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(denied) => denied.status.unwrap().code,
        other => panic!("{other:?}"),
    };
    (decision, status, key_metadata)
}

/// The value of one Prometheus series in a /metrics body (0 when absent).
pub fn metric(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// ListAuditEvents with `credential`.
pub async fn list_audit(
    server: &Server,
    credential: &str,
    request: pb::ListAuditEventsRequest,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    server
        .manage()
        .await
        .list_audit_events(bearer(credential, request))
        .await
        .map(|response| response.into_inner())
}

/// One ListKeys page of `account` (one key a page), as `credential`.
pub async fn list_keys(
    server: &Server,
    credential: &str,
    account: &str,
    page_token: &str,
) -> Result<pb::ListKeysResponse, tonic::Status> {
    let request = pb::ListKeysRequest {
        account_id: account.into(),
        page_size: 1,
        page_token: page_token.into(),
    };
    server
        .manage()
        .await
        .list_keys(bearer(credential, request))
        .await
        .map(|response| response.into_inner())
}

/// The decision of Authorize.Check for `token` and `scopes` (panics on an
/// error status: for servers that answer).
pub async fn decision(server: &Server, token: &str, scopes: &[&str]) -> pb::Decision {
    let answer = server
        .authorize()
        .await
        .check(check(token, scopes))
        .await
        .unwrap()
        .into_inner();
    pb::Decision::try_from(answer.decision).unwrap()
}

/// The decision for `GET path` through Authorize.Check{http}.
pub async fn http_decision(
    authorize: &mut pb::authorize_client::AuthorizeClient<Channel>,
    token: &str,
    path: &str,
) -> pb::Decision {
    let request = pb::CheckRequest {
        token: token.into(),
        scopes: vec![],
        http: Some(pb::HttpRequest {
            method: "GET".into(),
            path: path.into(),
        }),
        ..Default::default()
    };
    let response = authorize.check(request).await.unwrap().into_inner();
    pb::Decision::try_from(response.decision).unwrap()
}

pub fn check(token: &str, scopes: &[&str]) -> pb::CheckRequest {
    pb::CheckRequest {
        token: token.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        http: None,
        ..Default::default()
    }
}

/// Whether grpc.health.v1 reports `service` ("" for the server) as SERVING.
pub async fn serving(channel: Channel, service: &str) -> bool {
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd (Debian's etcd-server) on loopback ports with a temp data dir.
pub struct Etcd {
    pub child: Child,
    pub endpoint: String,
    /// Extra flags (TLS), on every start.
    extra: Vec<String>,
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    cluster: String,
    log_path: PathBuf,
}

impl Etcd {
    /// A single-member cluster.
    pub fn start(dir: &Path) -> Etcd {
        let peer_port = free_port();
        let cluster = format!("default=http://127.0.0.1:{peer_port}");
        Etcd::member("default", dir, free_port(), peer_port, &cluster)
    }

    /// A cluster of `size` members on loopback, each healthy.
    pub fn cluster(dir: &Path, size: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(index, (_, peer))| format!("m{index}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(index, (client, peer))| {
                Etcd::member(&format!("m{index}"), dir, *client, *peer, &cluster)
            })
            .collect();
        for member in &members {
            member.wait_healthy();
        }
        members
    }

    /// One member of a cluster given as `name=http://127.0.0.1:PEER,…`.
    pub fn member(name: &str, dir: &Path, client_port: u16, peer_port: u16, cluster: &str) -> Etcd {
        let found = Command::new("etcd").arg("--version").output();
        assert!(
            found.is_ok_and(|out| out.status.success()),
            "etcd is needed for fleet tests (scripts/test.sh installs Debian's etcd-server)"
        );
        let mut etcd = Etcd {
            child: Command::new("true").spawn().unwrap(),
            endpoint: format!("http://127.0.0.1:{client_port}"),
            extra: Vec::new(),
            name: name.into(),
            dir: dir.join(name),
            client_port,
            peer_port,
            cluster: cluster.into(),
            log_path: dir.join(format!("{name}.etcd.log")),
        };
        etcd.child.wait().unwrap();
        etcd.spawn();
        etcd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let client = self.endpoint.clone();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "scopegate-test"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
    }

    /// Waits until etcd answers /health with true.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.healthy() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A single member serving clients over TLS with client certificates
    /// (from [`TestCa`]); `wait_healthy` does not apply (its probe is plain HTTP).
    pub fn start_tls(dir: &Path, ca: &TestCa) -> Etcd {
        let peer_port = free_port();
        let client_port = free_port();
        let cluster = format!("tls=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::member("tls", dir, client_port, peer_port, &cluster);
        etcd.kill9();
        std::fs::remove_dir_all(&etcd.dir).ok();
        etcd.endpoint = format!("https://127.0.0.1:{client_port}");
        let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
        etcd.extra = vec![
            "--cert-file".into(),
            path(&ca.server_cert),
            "--key-file".into(),
            path(&ca.server_key),
            "--trusted-ca-file".into(),
            path(&ca.ca),
            "--client-cert-auth".into(),
        ];
        etcd.spawn();
        etcd
    }

    /// `etcdctl` against this member (plain HTTP), for setup such as users.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_healthy();
    }

    /// `etcdctl snapshot save FILE` (Debian's etcd-client).
    pub fn snapshot(&self, file: &Path) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "snapshot", "save"])
            .arg(file)
            .output()
            .expect("etcdctl (scripts/test.sh installs Debian's etcd-client)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops etcd, restores its data dir from a snapshot the way an operator
    /// would (same name, peer URLs and cluster token: the revision goes back),
    /// and starts it again on the same ports.
    pub fn restore(&mut self, file: &Path) {
        self.kill9();
        std::fs::remove_dir_all(&self.dir).unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(file)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster-token", "scopegate-test"])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn();
        self.wait_healthy();
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// strace attached to a running server (every thread), e.g. to count its
/// syncs or to inject a delay or an error into them (`-e inject=…`).
pub struct Strace {
    child: Child,
}

impl Strace {
    /// Attaches with `args` (plus `-f -qq -o out`), and returns once every
    /// thread is traced.
    pub fn attach(server: &Server, args: &[&str], out: &Path) -> Strace {
        let found = Command::new("strace").arg("-V").output();
        assert!(
            found.is_ok_and(|out| out.status.success()),
            "strace is needed (scripts/test.sh installs it)"
        );
        let pid = server.child.id();
        let child = Command::new("strace")
            .args(["-f", "-qq"])
            .args(args)
            .arg("-o")
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // strace writes nothing until a traced call: wait until the kernel
        // names it the server's tracer.
        let status_path = format!("/proc/{pid}/status");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&status_path)
            .unwrap()
            .contains(&format!("TracerPid:\t{}", child.id()))
        {
            assert!(Instant::now() < deadline, "strace did not attach");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300)); // every thread attached
        Strace { child }
    }

    /// Detaches (the server runs on untraced).
    pub fn detach(mut self) {
        signal(self.child.id(), "INT");
        let _ = self.child.wait();
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test certificate authority (openssl, Debian's): a server certificate
/// for 127.0.0.1 and localhost, and a client certificate.
pub struct TestCa {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for args in [
            "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
            "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out server.pem -extfile server.ext",
            "req -newkey rsa:2048 -nodes -subj /CN=scopegate -keyout client.key -out client.csr",
            "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem -extfile client.ext",
        ] {
            let output = Command::new("openssl")
                .args(args.split(' '))
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
        for key in ["ca.key", "server.key", "client.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        TestCa {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Whether any file below `dir` holds `needle`.
pub fn disk_holds(dir: &Path, needle: &[u8]) -> bool {
    files_under(dir).iter().any(|file| {
        std::fs::read(file)
            .unwrap()
            .windows(needle.len())
            .any(|window| window == needle)
    })
}

/// Sends a signal by name to a process.
pub fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
}

/// One HTTP/1.1 request over a fresh connection: (status, head in lower
/// case, body).
#[allow(dead_code)] // used by the REST and tower-layer tests, not every binary
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        head.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// Run against a server started with `--audit-max-events-per-account 5`:
/// eleven changes of one key leave its account's five newest events (by the
/// account and by the key), and another account's events stay.
#[allow(dead_code)] // used by trust.rs and fleet_trust.rs
pub async fn assert_audit_bound_of_five(server: &Server) {
    let admin = server.admin_token.clone();
    let key = server
        .admin_create(create("acme", "v0", &["mail.send"]))
        .await
        .unwrap()
        .key
        .unwrap();
    server
        .admin_create(create("globex", "other", &["mail.send"]))
        .await
        .unwrap();
    for version in 1..=10 {
        let rename = pb::UpdateKeyRequest {
            key_id: key.key_id.clone(),
            name: Some(format!("v{version}")),
            ..Default::default()
        };
        server
            .manage()
            .await
            .update_key(bearer(&admin, rename))
            .await
            .unwrap();
    }
    let listed = |account: &str, key_id: &str| pb::ListAuditEventsRequest {
        account_id: account.into(),
        key_id: key_id.into(),
        page_size: 100,
        ..Default::default()
    };
    let names = |events: &[pb::AuditEvent]| -> Vec<String> {
        events
            .iter()
            .map(|event| {
                event
                    .after
                    .as_ref()
                    .map_or(String::new(), |after| after.name.clone())
            })
            .collect()
    };
    let newest: Vec<String> = (6..=10).map(|version| format!("v{version}")).collect();
    let by_account = list_audit(server, &admin, listed("acme", ""))
        .await
        .unwrap()
        .events;
    assert_eq!(names(&by_account), newest);
    let by_key = list_audit(server, &admin, listed("", &key.key_id))
        .await
        .unwrap()
        .events;
    assert_eq!(names(&by_key), newest);
    let other = list_audit(server, &admin, listed("globex", ""))
        .await
        .unwrap()
        .events;
    assert_eq!(names(&other), vec!["other".to_owned()]);
}
