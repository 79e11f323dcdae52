//! Trust, round 2, through the real server: a rotated-out secret decides but
//! never manages, page tokens stay inside their account and deployment, and
//! IPv4-mapped source addresses are compared as IPv4.

mod common;

use common::{bearer, check, create_manager, Server};
use scopegate::grpc::pb;
use tonic::Code;

async fn decision(server: &Server, token: &str, scope: &str) -> pb::Decision {
    let response = server
        .authorize()
        .await
        .check(check(token, &[scope]))
        .await
        .unwrap()
        .into_inner();
    pb::Decision::try_from(response.decision).unwrap()
}

fn rotate(key_id: &str, overlap_secs: i64) -> pb::RotateKeyRequest {
    pb::RotateKeyRequest {
        key_id: key_id.into(),
        overlap: Some(prost_types::Duration {
            seconds: overlap_secs,
            nanos: 0,
        }),
    }
}

fn assert_previous_secret_refused(what: &str, result: Result<(), tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains("previous secret"),
        "{what}: the message says why: {}",
        status.message()
    );
}

/// An owner rotates because a secret leaked, with an overlap so deployments
/// can roll: the leaked secret keeps passing Check until the overlap ends, and
/// can do nothing else (it cannot rotate the owner out).
#[tokio::test]
async fn a_rotated_out_secret_decides_but_never_manages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    let owner = manage
        .create_key(bearer(
            &server.admin_token,
            create_manager("acme", "owner", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let key_id = owner.key.as_ref().unwrap().key_id.clone();
    let leaked = owner.token;
    let rotated = manage
        .rotate_key(bearer(&leaked, rotate(&key_id, 3600)))
        .await
        .unwrap()
        .into_inner();
    let current = rotated.token;

    // Decisions: both secrets, for the overlap.
    for token in [&leaked, &current] {
        assert_eq!(
            decision(&server, token, "mail.send").await,
            pb::Decision::Allowed
        );
    }

    // Management: never with the previous secret.
    let rotate_result = manage
        .rotate_key(bearer(&leaked, rotate(&key_id, 0)))
        .await
        .map(drop);
    assert_previous_secret_refused("RotateKey", rotate_result);
    let update = pb::UpdateKeyRequest {
        key_id: key_id.clone(),
        name: Some("taken".into()),
        ..Default::default()
    };
    let update_result = manage.update_key(bearer(&leaked, update)).await.map(drop);
    assert_previous_secret_refused("UpdateKey", update_result);
    let create_result = manage
        .create_key(bearer(
            &leaked,
            create_manager("acme", "attacker", &["mail.send"]),
        ))
        .await
        .map(drop);
    assert_previous_secret_refused("CreateKey", create_result);
    let get = pb::GetKeyRequest {
        key_id: key_id.clone(),
    };
    let get_result = manage.get_key(bearer(&leaked, get)).await.map(drop);
    assert_previous_secret_refused("GetKey", get_result);
    let list = pb::ListKeysRequest::default();
    let list_result = manage.list_keys(bearer(&leaked, list)).await.map(drop);
    assert_previous_secret_refused("ListKeys", list_result);
    let delete = pb::DeleteKeyRequest {
        key_id: key_id.clone(),
    };
    let delete_result = manage.delete_key(bearer(&leaked, delete)).await.map(drop);
    assert_previous_secret_refused("DeleteKey", delete_result);

    // The owner's new secret still works, for both.
    assert_eq!(
        decision(&server, &current, "mail.send").await,
        pb::Decision::Allowed
    );
    let again = manage
        .rotate_key(bearer(&current, rotate(&key_id, 0)))
        .await
        .unwrap()
        .into_inner();
    let newest = again.token;
    assert_eq!(
        decision(&server, &leaked, "mail.send").await,
        pb::Decision::UnknownKey,
        "overlap 0 ends the previous secret at once"
    );

    // The audit trail tells the secrets apart when a key acts on itself.
    let events = manage
        .list_audit_events(bearer(
            &newest,
            pb::ListAuditEventsRequest {
                key_id: key_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let rotations: Vec<&pb::AuditEvent> = events.iter().filter(|e| e.action == "rotate").collect();
    assert_eq!(rotations.len(), 2, "{events:?}");
    let first = &rotations[0].actor_secret;
    let second = &rotations[1].actor_secret;
    assert!(!first.is_empty() && !second.is_empty(), "{rotations:?}");
    assert_ne!(first, second, "each rotation names the secret that acted");
    assert_eq!(
        first,
        &owner.key.as_ref().unwrap().secret_fingerprint,
        "the first rotation was made with the created secret"
    );
    assert_eq!(
        second,
        &rotated.key.as_ref().unwrap().secret_fingerprint,
        "the second with the secret the first rotation issued"
    );
    assert_ne!(
        again.key.as_ref().unwrap().secret_fingerprint,
        *second,
        "a rotation changes the fingerprint"
    );
}

/// Dual-stack listeners hand Envoy IPv4 peers as `::ffff:a.b.c.d`: the key's
/// IPv4 allowlist holds for them, through both entry points.
#[tokio::test]
async fn ipv4_mapped_sources_are_compared_as_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server
        .admin_create(pb::CreateKeyRequest {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            ..common::create("acme", "office", &["mail.send"])
        })
        .await
        .unwrap();
    for (source, expected) in [
        ("::ffff:203.0.113.7", 200),
        ("203.0.113.7", 200),
        ("::ffff:198.51.100.7", 403),
        ("2001:db8::7", 403),
    ] {
        let (decision, status, _) = common::ext_authz(&server, &key.token, Some(source)).await;
        assert_eq!(status, expected, "ext_authz from {source}: {decision}");
        let request = pb::CheckRequest {
            client_ip: source.into(),
            ..check(&key.token, &["mail.send"])
        };
        let answer = server
            .authorize()
            .await
            .check(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.allowed,
            expected == 200,
            "Authorize.Check from {source}: {answer:?}"
        );
    }
}

async fn list_keys(
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

fn assert_foreign_token(what: &str, result: Result<impl std::fmt::Debug, tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with("page_token:"),
        "{what}: {status:?}"
    );
}

/// Page tokens are opaque and bound to the listing that issued them: one
/// from another account, another filter or a hand-made cursor is refused,
/// never followed; and a tenant's pages list exactly its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_stay_inside_their_listing() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut acme_ids = Vec::new();
    for account in ["acme", "other", "acme", "other", "other"] {
        let created = manage
            .create_key(bearer(&admin, common::create(account, "k", &["mail.send"])))
            .await
            .unwrap()
            .into_inner();
        if account == "acme" {
            acme_ids.push(created.key.unwrap().key_id);
        }
    }
    let reader = manage
        .create_key(bearer(
            &admin,
            pb::CreateKeyRequest {
                grants: vec![pb::Grant {
                    resource: "api_keys".into(),
                    access: pb::Access::Read as i32,
                }],
                ..common::create("acme", "reader", &[])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    acme_ids.push(reader.key.unwrap().key_id);
    let reader = reader.token;

    // ListKeys: the admin's token for "other" is no token of acme's listing.
    let other_page = list_keys(&server, &admin, "other", "").await.unwrap();
    assert!(!other_page.next_page_token.is_empty());
    assert_foreign_token(
        "another account's ListKeys token",
        list_keys(&server, &reader, "", &other_page.next_page_token).await,
    );
    // A raw index key, as tokens were before they were bound.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"other\0");
    assert_foreign_token("a raw cursor", list_keys(&server, &reader, "", &raw).await);
    // Acme's own pages walk exactly its keys.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = list_keys(&server, &reader, "", &token).await.unwrap();
        seen.extend(page.keys.into_iter().map(|key| key.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    acme_ids.sort();
    assert_eq!(seen, acme_ids);

    // ListAuditEvents: bound to account and filter.
    let request = |account: &str, key_id: &str, token: &str| pb::ListAuditEventsRequest {
        account_id: account.into(),
        key_id: key_id.into(),
        page_size: 1,
        page_token: token.into(),
        ..Default::default()
    };
    let other_events = common::list_audit(&server, &admin, request("other", "", ""))
        .await
        .unwrap();
    assert_foreign_token(
        "another account's audit token",
        common::list_audit(
            &server,
            &reader,
            request("", "", &other_events.next_page_token),
        )
        .await,
    );
    let acme_first = common::list_audit(&server, &reader, request("", "", ""))
        .await
        .unwrap();
    assert_foreign_token(
        "a token of another filter",
        common::list_audit(
            &server,
            &reader,
            request("", &acme_ids[0], &acme_first.next_page_token),
        )
        .await,
    );
    let (mut events, mut token) = (Vec::new(), String::new());
    loop {
        let page = common::list_audit(&server, &reader, request("", "", &token))
            .await
            .unwrap();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(events.len(), 3, "acme's three creates: {events:?}");
    assert!(events.iter().all(|event| event.account_id == "acme"));
    let one_key = common::list_audit(&server, &reader, request("", &acme_ids[1], ""))
        .await
        .unwrap();
    assert_eq!(one_key.events.len(), 1);
    assert_eq!(one_key.events[0].key_id, acme_ids[1]);
}

/// Management reads by an API key are limited per account (bursts of
/// `--reads-per-account-per-sec`), with a retry delay; the admin is not.
#[tokio::test]
async fn management_reads_are_limited_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--reads-per-account-per-sec", "1"],
    );
    let manager = server
        .admin_create(create_manager("acme", "reader", &[]))
        .await
        .unwrap()
        .token;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(status) = list_keys(&server, &manager, "", "").await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("20 reads in a row exceed a burst of 1");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry in"), "{status:?}");
    let audit = common::list_audit(&server, &manager, Default::default()).await;
    assert_eq!(audit.unwrap_err().code(), Code::ResourceExhausted);
    for _ in 0..20 {
        list_keys(&server, &server.admin_token, "acme", "")
            .await
            .expect("the admin is not limited");
    }
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

/// Audit volume: an account's trail is bounded by count (the oldest go
/// first), so a busy tenant cannot fill the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_audit_trail_is_bounded_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--audit-max-events-per-account", "5"],
    );
    common::assert_audit_bound_of_five(&server).await;
}

/// A raw HTTP/1.1 exchange from `source` (a loopback address of our choice);
/// the status.
async fn status_from(source: &str, addr: &str, request: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer[9..12].parse().unwrap()
}

/// Failed credentials are throttled per address on every management door:
/// wrong bearers over gRPC and REST from one address are soon refused
/// (RESOURCE_EXHAUSTED, 429) without being looked at, while the admin's
/// right credential from another address still works (nobody can lock it
/// out), and decisions answer every bad token with its denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_credentials_are_throttled_on_every_management_door() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rest = server.http_addr.clone().unwrap();
    let guess = "SG.AAAAAAAAAAAAAAAAAAAAAA.wrongwrongwrongwrongwrongwrongwrong";
    let list = |credential: &str| {
        format!("GET /v3/api_keys HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {credential}\r\non-behalf-of: acme\r\n\r\n")
    };
    let mut manage = server.manage().await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let answer = manage
            .list_keys(bearer(guess, pb::ListKeysRequest::default()))
            .await
            .unwrap_err();
        codes.push(answer.code());
    }
    assert_eq!(codes[0], Code::Unauthenticated, "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    // The same address over REST: throttled too (one budget per address).
    assert_eq!(status_from("127.0.0.1", &rest, list(guess)).await, 429);
    // The admin from elsewhere is never locked out.
    assert_eq!(
        status_from("127.0.0.2", &rest, list(&server.admin_token)).await,
        200
    );
    // Decisions are never throttled: the bad token gets its denial.
    for _ in 0..20 {
        assert_eq!(
            decision(&server, guess, "mail.send").await,
            pb::Decision::MalformedToken
        );
    }
    // Once the bucket refills, the address is heard again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        status_from("127.0.0.1", &rest, list(&server.admin_token)).await,
        200
    );
}
