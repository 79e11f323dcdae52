//! Documented flags, exercised through the real binary: each test changes
//! one flag (of `serve`, or of the `check` command) and looks for its
//! documented effect.

mod common;

use common::{check, create, Server};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use scopegate::grpc::pb;
use sha2::Digest;
use tonic::Code;

/// `--token-prefix` names the tokens issued, and changing it invalidates the
/// tokens issued before (README, "Tokens").
#[tokio::test]
async fn the_token_prefix_names_tokens_and_changing_it_invalidates_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--token-prefix", "ACME"]);
    let key = server
        .admin_create(create("acme", "k", &["mail.send"]))
        .await
        .unwrap();
    assert!(key.token.starts_with("ACME."), "{}", key.token);
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    let as_default = key.token.replacen("ACME.", "SG.", 1);
    assert_eq!(
        common::decision(&server, &as_default, &["mail.send"]).await,
        pb::Decision::MalformedToken
    );
    drop(server);
    let server = Server::start(&data, &[]);
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::MalformedToken,
        "with the default prefix, an ACME token is no token"
    );
}

fn envoy_request(extra_header_bytes: usize) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v3/mail/send".into(),
                    headers: [("x-padding".to_owned(), "p".repeat(extra_header_bytes))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `--ext-authz-max-message-bytes` bounds what Envoy may send: a larger
/// CheckRequest is refused before it is decoded, a smaller one answered.
#[tokio::test]
async fn ext_authz_requests_over_the_message_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--ext-authz-max-message-bytes", "4096"],
    );
    let mut client = AuthorizationClient::new(server.channel().await);
    let small = client.check(envoy_request(1000)).await;
    assert!(small.is_ok(), "{small:?}");
    let status = client.check(envoy_request(8000)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Authorize keeps its own limit (--max-message-bytes, 64 KiB).
    let mut big_check = check("SG.x.y", &["mail.send"]);
    big_check.token = "x".repeat(8000);
    let answer = server.authorize().await.check(big_check).await;
    assert!(answer.is_ok(), "{answer:?}");
}

fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .starts_with("tokio-rt-worker")
        })
        .count()
}

/// `--worker-threads` is how many threads answer requests. (tokio names its
/// blocking threads alike; they leave after 2 idle seconds, so the count
/// settles on the workers.)
#[tokio::test]
async fn worker_threads_sets_the_runtime_threads() {
    let dir = tempfile::tempdir().unwrap();
    for threads in [1, 3] {
        let threads_arg = threads.to_string();
        let server = Server::start(
            &dir.path().join(format!("data-{threads}")),
            &["--worker-threads", &threads_arg],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = worker_threads(server.child.id());
        while seen != threads && std::time::Instant::now() < deadline {
            assert!(
                seen > threads,
                "{seen} runtime threads for --worker-threads {threads}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            seen = worker_threads(server.child.id());
        }
        assert_eq!(seen, threads);
    }
}

/// ManageKey reachable beyond loopback without TLS is worth a warning at
/// start (README, "listeners"); on loopback there is none.
#[tokio::test]
async fn management_beyond_loopback_without_tls_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = Server::start(&dir.path().join("quiet"), &[]);
    assert!(!quiet.log().contains("without TLS"));
    // Binding every interface sends nothing anywhere; the test talks to loopback.
    let exposed = Server::start(
        &dir.path().join("exposed"),
        &["--manage-listen", "0.0.0.0:0"],
    );
    assert!(
        exposed
            .log()
            .contains("ManageKey is exposed on a non-loopback address without TLS"),
        "{}",
        exposed.log()
    );
}

/// `--max-concurrent-requests` bounds checks in progress: past it a check
/// is shed at once with RESOURCE_EXHAUSTED (never queued), counted, and the
/// server answers again as soon as the flood ends. (One slot against 16
/// connections sending at once: checks overlap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_past_the_concurrency_limit_are_shed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-concurrent-requests", "1"],
    );
    let key = server
        .admin_create(create("acme", "k", &["mail.send"]))
        .await
        .unwrap();
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (addr, token) = (server.addr.clone(), key.token.clone());
        senders.push(tokio::spawn(async move {
            let authorize = pb::authorize_client::AuthorizeClient::connect(addr)
                .await
                .unwrap();
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..100 {
                let mut authorize = authorize.clone();
                let request = check(&token, &["mail.send"]);
                calls.spawn(async move { authorize.check(request).await });
            }
            let mut shed = 0u32;
            while let Some(result) = calls.join_next().await {
                match result.unwrap() {
                    Ok(answer) => assert!(answer.get_ref().allowed),
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        shed += 1;
                    }
                }
            }
            shed
        }));
    }
    let mut shed = 0;
    for sender in senders {
        shed += sender.await.unwrap();
    }
    assert!(shed > 0, "1,600 checks on one slot and none shed");
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed,
        "answered again after the flood"
    );
    let counted = common::metric(
        &server.http_get("/metrics").1,
        r#"scopegate_requests_rejected_total{reason="overloaded"}"#,
    );
    assert!(counted >= f64::from(shed), "{counted} counted, {shed} seen");
}

/// One HTTP/2 frame read off a raw connection: (type, flags, payload).
fn read_frame(stream: &mut std::net::TcpStream) -> (u8, u8, Vec<u8>) {
    use std::io::Read;
    let mut header = [0u8; 9];
    stream
        .read_exact(&mut header)
        .expect("a frame before the timeout");
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload).unwrap();
    (header[3], header[4], payload)
}

/// Speaking HTTP/2 by hand: the server's SETTINGS carry
/// `--http2-max-concurrent-streams`, and an idle connection to a listener
/// on a network address gets a keepalive PING (every 30 s, README "limits";
/// loopback listeners are not pinged, `server::listen::Peer`).
#[test]
fn http2_settings_carry_the_stream_limit_and_idle_connections_are_pinged() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--http2-max-concurrent-streams",
            "7",
            "--listen",
            "0.0.0.0:0",
        ],
    );
    let port = server.addr.rsplit(':').next().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    let (kind, flags, payload) = read_frame(&mut stream);
    assert_eq!((kind, flags), (4, 0), "the server's SETTINGS come first");
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|pair| {
            (
                u16::from_be_bytes([pair[0], pair[1]]),
                u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]),
            )
        })
        .collect();
    assert!(
        settings.contains(&(0x3, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 7 in {settings:?}"
    );
    stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap(); // SETTINGS ACK
    let started = std::time::Instant::now();
    loop {
        let (kind, flags, payload) = read_frame(&mut stream);
        if kind == 6 && flags & 1 == 0 {
            // A PING that asks for an answer: keepalive.
            let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
            ack.extend_from_slice(&payload);
            stream.write_all(&ack).unwrap();
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }
}

/// `--sled-cache-mib` is sled's page cache: with 20,000 keys, a second full
/// export from a 64 MiB cache reads nothing from disk, from a 1 MiB cache it
/// reads pages again (pread64, counted by strace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_cache_holds_what_it_is_given() {
    use std::fmt::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut backup = String::new();
    for index in 0..20_000u32 {
        let key_id = scopegate::token::KeyId::random();
        let hash: String = (0..32u32).fold(String::new(), |mut hex, byte| {
            let _ = write!(
                hex,
                "{:02x}",
                (index.wrapping_mul(31).wrapping_add(byte)) as u8
            );
            hex
        });
        let _ = writeln!(
            backup,
            r#"{{"version":1,"key_id":"{key_id}","account_id":"acct-{}","name":"key {index}","scopes":["mail.send","stats.read"],"secret_hash":"{hash}","create_time_unix_ms":0,"update_time_unix_ms":0,"created_by":"admin"}}"#,
            index / 100
        );
    }
    let input = dir.path().join("keys.jsonl");
    std::fs::write(&input, backup).unwrap();
    let mut preads = Vec::new();
    for mib in ["1", "64"] {
        let data = dir.path().join(format!("data-{mib}"));
        let restored = std::process::Command::new(common::BIN)
            .args(["restore", "--in"])
            .arg(&input)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(restored.status.success(), "{restored:?}");
        let server = Server::start(&data, &["--sled-cache-mib", mib]);
        server.backup(&dir.path().join("first.jsonl"));
        let trace = dir.path().join(format!("trace-{mib}"));
        let tracer = common::Strace::attach(&server, &["-e", "trace=pread64"], &trace);
        server.backup(&dir.path().join("second.jsonl"));
        tracer.detach();
        let reads = std::fs::read_to_string(&trace)
            .unwrap()
            .matches("pread64(")
            .count();
        preads.push(reads);
    }
    assert!(
        preads[0] > 100 && preads[1] * 10 < preads[0],
        "page reads in a second export: {} with 1 MiB, {} with 64 MiB",
        preads[0],
        preads[1]
    );
}

/// `scopegate check` takes the token from the environment or a file (never
/// needing it on the command line) and answers by exit code.
#[tokio::test]
async fn the_check_command_reads_its_token_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server
        .admin_create(common::create("acme", "k", &["mail.send"]))
        .await
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", key.token)).unwrap();
    let run = |scope: &str, env: bool, file: bool| {
        let mut command = std::process::Command::new(common::BIN);
        command.args(["check", "--server", &server.addr, "--scope", scope]);
        command.env_remove("SCOPEGATE_CHECK_TOKEN");
        if env {
            command.env("SCOPEGATE_CHECK_TOKEN", &key.token);
        }
        if file {
            command.arg("--token-file").arg(&token_file);
        }
        let output = command.output().unwrap();
        (
            output.status.code().unwrap(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    for (env, file) in [(true, false), (false, true)] {
        assert_eq!(run("mail.send", env, file).0, 0, "env {env} file {file}");
        let (code, out) = run("stats.read", env, file);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("INSUFFICIENT_SCOPE"), "{out}");
        assert!(
            !out.contains(&key.token),
            "the token is never printed: {out}"
        );
    }
    let (code, out) = run("mail.send", false, false);
    assert_eq!(code, 2);
    assert!(out.contains("SCOPEGATE_CHECK_TOKEN"), "{out}");
}

/// `--pepper-file` keys the secret hash: a key made with a pepper works only
/// with that pepper, and no plain SHA-256 of its secret is on disk.
#[tokio::test]
async fn the_pepper_keys_every_secret_hash() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write_pepper = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let pepper = write_pepper("pepper", b"a pepper of thirty-two bytes or more!!");
    let other = write_pepper("other", b"another pepper of thirty-two bytes, or more");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--pepper-file", &pepper]);
    let key = server
        .admin_create(create("acme", "peppered", &["mail.send"]))
        .await
        .unwrap();
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    drop(server);

    let plain_hash = |token: &str| -> [u8; 32] {
        let secret = &token.rsplit('.').next().unwrap()[..43];
        sha2::Sha256::digest(secret.as_bytes()).into()
    };
    assert!(
        !common::disk_holds(&data, &plain_hash(&key.token)),
        "a plain SHA-256 of the secret is on disk"
    );
    // The same scan finds it where there is no pepper (it can fail).
    let unpeppered = dir.path().join("unpeppered");
    let server = Server::start(&unpeppered, &[]);
    let plain_key = server
        .admin_create(create("acme", "plain", &["mail.send"]))
        .await
        .unwrap();
    drop(server);
    assert!(common::disk_holds(
        &unpeppered,
        &plain_hash(&plain_key.token)
    ));

    for args in [vec![], vec!["--pepper-file", other.as_str()]] {
        let server = Server::start(&data, &args);
        assert_eq!(
            common::decision(&server, &key.token, &["mail.send"]).await,
            pb::Decision::UnknownKey,
            "without the pepper it was made with ({args:?})"
        );
    }
    let server = Server::start(&data, &["--pepper-file", &pepper]);
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
}
