//! Roles through the real binary: a role on 1,000 keys narrowed once and
//! every key's next Check changes (and a restart, graceful or kill -9,
//! keeps it); every escalation path refused (a role the caller lacks, a
//! role a stronger or freer key uses, a delete that strips a stronger key,
//! an edit that would mix billing); bad input refused with nothing
//! changed; REST and the CLI. The fleet is in tests/roles_fleet.rs.

mod common;

use std::time::Duration;

use common::{bearer, check, create, create_manager, decision, http_request, Server};
use scopegate::grpc::pb;
use serde_json::Value;
use tonic::Code;

fn role(account: &str, name: &str, scopes: &[&str]) -> pb::CreateRoleRequest {
    pb::CreateRoleRequest {
        account_id: account.into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn with_roles(request: pb::CreateKeyRequest, roles: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        role_ids: roles.iter().map(|r| r.to_string()).collect(),
        ..request
    }
}

async fn make_role(
    server: &Server,
    credential: &str,
    request: pb::CreateRoleRequest,
) -> Result<pb::Role, tonic::Status> {
    server
        .manage()
        .await
        .create_role(bearer(credential, request))
        .await
        .map(|response| response.into_inner())
}

async fn make_key(
    server: &Server,
    credential: &str,
    request: pb::CreateKeyRequest,
) -> Result<(pb::ApiKey, String), tonic::Status> {
    server
        .manage()
        .await
        .create_key(bearer(credential, request))
        .await
        .map(|response| {
            let response = response.into_inner();
            (response.key.unwrap(), response.token)
        })
}

async fn regrant(
    server: &Server,
    credential: &str,
    role_id: &str,
    scopes: &[&str],
) -> Result<pb::Role, tonic::Status> {
    server
        .manage()
        .await
        .update_role(bearer(
            credential,
            pb::UpdateRoleRequest {
                role_id: role_id.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .map(|response| response.into_inner())
}

async fn get_role(server: &Server, role_id: &str) -> pb::Role {
    server
        .manage()
        .await
        .get_role(bearer(
            &server.admin_token,
            pb::GetRoleRequest {
                role_id: role_id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get_key(server: &Server, key_id: &str) -> pb::ApiKey {
    server
        .manage()
        .await
        .get_key(bearer(
            &server.admin_token,
            pb::GetKeyRequest {
                key_id: key_id.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Every token's decision for `scopes`, checked concurrently.
async fn decisions(server: &Server, tokens: &[String], scopes: &[&str]) -> Vec<pb::Decision> {
    let channel = server.channel().await;
    let mut running = tokio::task::JoinSet::new();
    for (index, chunk) in tokens.chunks(100).enumerate() {
        let mut client = pb::authorize_client::AuthorizeClient::new(channel.clone());
        let requests: Vec<_> = chunk.iter().map(|token| check(token, scopes)).collect();
        running.spawn(async move {
            let mut answers = Vec::new();
            for request in requests {
                let answer = client.check(request).await.unwrap().into_inner();
                answers.push(pb::Decision::try_from(answer.decision).unwrap());
            }
            (index, answers)
        });
    }
    let mut chunks = Vec::new();
    while let Some(done) = running.join_next().await {
        chunks.push(done.unwrap());
    }
    chunks.sort_by_key(|(index, _)| *index);
    chunks
        .into_iter()
        .flat_map(|(_, answers)| answers)
        .collect()
}

/// A refusal with this code whose message names `needle`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle}: {}",
        status.message()
    );
}

fn count(answers: &[pb::Decision], wanted: pb::Decision) -> usize {
    answers.iter().filter(|answer| **answer == wanted).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_on_a_thousand_keys_changes_each_at_once_and_a_restart_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--max-keys-per-account", "2000"]);
    let admin = server.admin_token.clone();
    let sender = make_role(
        &server,
        &admin,
        role("acme", "sender", &["mail.send", "stats.read"]),
    )
    .await
    .unwrap();
    assert_eq!(sender.key_count, 0);
    assert!(sender.role_id.starts_with("role_"), "{}", sender.role_id);
    // 1,000 keys by reference (half by id, half by name), no scopes of their
    // own, and one with stats.read of its own besides.
    let mut tokens = Vec::new();
    let mut making = tokio::task::JoinSet::new();
    for batch in 0..10 {
        let channel = server.channel().await;
        let (admin, role_id) = (admin.clone(), sender.role_id.clone());
        making.spawn(async move {
            let mut manage = pb::manage_key_client::ManageKeyClient::new(channel);
            let mut tokens = Vec::new();
            for index in 0..100 {
                let by = if index % 2 == 0 {
                    role_id.as_str()
                } else {
                    "sender"
                };
                let request = with_roles(create("acme", &format!("k{batch}-{index}"), &[]), &[by]);
                let made = manage.create_key(bearer(&admin, request)).await.unwrap();
                tokens.push(made.into_inner().token);
            }
            tokens
        });
    }
    while let Some(made) = making.join_next().await {
        tokens.extend(made.unwrap());
    }
    assert_eq!(tokens.len(), 1000);
    let (own, own_token) = make_key(
        &server,
        &admin,
        with_roles(create("acme", "own", &["stats.read"]), &["sender"]),
    )
    .await
    .unwrap();
    assert_eq!(own.own_scopes, ["stats.read"]);
    assert_eq!(own.scopes, ["mail.send", "stats.read"]);
    assert_eq!(own.roles.len(), 1);
    assert_eq!(own.roles[0].name, "sender");
    assert_eq!(own.roles[0].adds, ["mail.send"]);
    assert_eq!(get_role(&server, &sender.role_id).await.key_count, 1001);

    let before = decisions(&server, &tokens, &["stats.read"]).await;
    assert_eq!(count(&before, pb::Decision::Allowed), 1000);

    // One narrowing: every key's next Check sees it.
    let narrowed = regrant(&server, &admin, &sender.role_id, &["mail.send"])
        .await
        .unwrap();
    assert_eq!(narrowed.scopes, ["mail.send"]);
    assert_eq!(narrowed.key_count, 1001);
    let after = decisions(&server, &tokens, &["stats.read"]).await;
    assert_eq!(count(&after, pb::Decision::InsufficientScope), 1000);
    let sending = decisions(&server, &tokens, &["mail.send"]).await;
    assert_eq!(count(&sending, pb::Decision::Allowed), 1000);
    // Its own scope stays.
    assert_eq!(
        decision(&server, &own_token, &["stats.read"]).await,
        pb::Decision::Allowed
    );

    // The audit names the change and how many keys it reached.
    let events = server
        .manage()
        .await
        .list_audit_events(bearer(
            &admin,
            pb::ListAuditEventsRequest {
                key_id: sender.role_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|event| event.action.as_str()).collect();
    assert_eq!(actions, ["role.create", "role.update"]);
    assert_eq!(events[1].keys_affected, 1001);
    assert_eq!(events[1].key_id, sender.role_id);
    assert_eq!(
        events[1].before.as_ref().unwrap().scopes,
        ["mail.send", "stats.read"]
    );
    assert_eq!(events[1].after.as_ref().unwrap().scopes, ["mail.send"]);

    // A graceful restart, then a kill -9: the resolved sets are rebuilt the same.
    assert!(server.terminate());
    let mut server = Server::start(&data, &["--max-keys-per-account", "2000"]);
    let restarted = decisions(&server, &tokens, &["stats.read"]).await;
    assert_eq!(count(&restarted, pb::Decision::InsufficientScope), 1000);
    regrant(
        &server,
        &admin,
        &sender.role_id,
        &["mail.send", "stats.read"],
    )
    .await
    .unwrap();
    server.kill9();
    let server = Server::start(&data, &["--max-keys-per-account", "2000"]);
    let widened = decisions(&server, &tokens, &["stats.read"]).await;
    assert_eq!(count(&widened, pb::Decision::Allowed), 1000);

    // Deleting the role: its keys lose its grants, their own stay.
    server
        .manage()
        .await
        .delete_role(bearer(
            &admin,
            pb::DeleteRoleRequest {
                role_id: sender.role_id.clone(),
            },
        ))
        .await
        .unwrap();
    let gone = decisions(&server, &tokens, &["mail.send"]).await;
    assert_eq!(count(&gone, pb::Decision::InsufficientScope), 1000);
    assert_eq!(
        decision(&server, &own_token, &["stats.read"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&server, &own_token, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
    let shown = get_key(&server, &own.key_id).await;
    assert!(shown.roles.is_empty(), "{:?}", shown.roles);
    assert_eq!(shown.scopes, ["stats.read"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_through_a_role_lifts_a_key_above_the_key_that_acts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token.clone();
    // A manager that may send mail and manage keys, nothing else.
    let (_, manager) = make_key(&server, &admin, create_manager("acme", "m", &["mail.send"]))
        .await
        .unwrap();
    let reader = make_role(&server, &admin, role("acme", "reader", &["stats.read"]))
        .await
        .unwrap();
    let sender = make_role(&server, &admin, role("acme", "sender", &["mail.send"]))
        .await
        .unwrap();

    // A role beyond its own grants.
    refused(
        make_role(
            &server,
            &manager,
            role("acme", "mine", &["mail.send", "stats.read"]),
        )
        .await,
        Code::PermissionDenied,
        "stats.read",
    );
    // Attaching a role it lacks, by id and by name; at creation and later.
    for by in [reader.role_id.as_str(), "reader"] {
        refused(
            make_key(
                &server,
                &manager,
                with_roles(create("acme", "x", &["mail.send"]), &[by]),
            )
            .await,
            Code::PermissionDenied,
            "stats.read",
        );
    }
    let (plain, _) = make_key(
        &server,
        &manager,
        with_roles(create("acme", "p", &[]), &["sender"]),
    )
    .await
    .unwrap();
    let attach = |key_id: &str, roles: &[&str]| pb::UpdateKeyRequest {
        key_id: key_id.into(),
        role_ids: Some(pb::StringList {
            values: roles.iter().map(|r| r.to_string()).collect(),
        }),
        ..Default::default()
    };
    let update = |credential: &str, request: pb::UpdateKeyRequest| {
        let server = &server;
        let credential = credential.to_owned();
        async move {
            server
                .manage()
                .await
                .update_key(bearer(&credential, request))
                .await
                .map(|response| response.into_inner())
        }
    };
    refused(
        update(&manager, attach(&plain.key_id, &["sender", "reader"])).await,
        Code::PermissionDenied,
        "stats.read",
    );
    assert_eq!(get_key(&server, &plain.key_id).await.scopes, ["mail.send"]);

    // A stronger key shares a role: the manager may neither narrow, widen
    // nor delete it.
    let (strong, strong_token) = make_key(
        &server,
        &admin,
        with_roles(create("acme", "strong", &["stats.read"]), &["sender"]),
    )
    .await
    .unwrap();
    refused(
        regrant(&server, &manager, &sender.role_id, &["mail.send"]).await,
        Code::PermissionDenied,
        &strong.key_id,
    );
    refused(
        regrant(
            &server,
            &manager,
            &sender.role_id,
            &["mail.send", "stats.read"],
        )
        .await,
        Code::PermissionDenied,
        "stats.read",
    );
    let delete = server
        .manage()
        .await
        .delete_role(bearer(
            &manager,
            pb::DeleteRoleRequest {
                role_id: sender.role_id.clone(),
            },
        ))
        .await;
    refused(delete, Code::PermissionDenied, &strong.key_id);
    assert_eq!(
        decision(&server, &strong_token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    // A role stronger than the manager: not its to touch, whoever uses it.
    refused(
        regrant(&server, &manager, &reader.role_id, &["stats.read"]).await,
        Code::PermissionDenied,
        "stats.read",
    );

    // A freer key (no rate limit, where the caller has one) shares a role.
    let limited = pb::CreateKeyRequest {
        rate_limits: vec![pb::RateLimit {
            name: "default".into(),
            limit: 100,
            window: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..create_manager("acme", "limited", &["mail.send", "stats.read"])
    };
    let (_, limited) = make_key(&server, &admin, limited).await.unwrap();
    refused(
        regrant(&server, &limited, &sender.role_id, &["mail.send"]).await,
        Code::PermissionDenied,
        "rate limits",
    );

    // Billing stays apart on the effective set: a role turned billing on a
    // general key is refused, naming the key.
    let (_, _) = make_key(
        &server,
        &admin,
        with_roles(create("acme", "mixed", &["stats.read"]), &["reader"]),
    )
    .await
    .unwrap();
    let billing = regrant(&server, &admin, &reader.role_id, &["billing.read"]).await;
    let status = billing.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("billing"), "{}", status.message());
    let named = server
        .manage()
        .await
        .list_keys(bearer(
            &admin,
            pb::ListKeysRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .find(|key| key.name == "mixed")
        .unwrap();
    assert!(
        status.message().contains(&named.key_id),
        "{}",
        status.message()
    );
    assert_eq!(
        get_role(&server, &reader.role_id).await.scopes,
        ["stats.read"]
    );
    // And attaching a billing role to a general key.
    let bill = make_role(&server, &admin, role("acme", "bill", &["billing.read"]))
        .await
        .unwrap();
    refused(
        make_key(
            &server,
            &admin,
            with_roles(
                create("acme", "b", &["mail.send"]),
                &[bill.role_id.as_str()],
            ),
        )
        .await,
        Code::InvalidArgument,
        "billing",
    );
    // A billing key by role alone is fine.
    let (billing_key, _) = make_key(
        &server,
        &admin,
        with_roles(create("acme", "b", &[]), &["bill"]),
    )
    .await
    .unwrap();
    assert_eq!(billing_key.kind, pb::KeyKind::Billing as i32);

    // What the manager may do: narrow a role whose keys are all within it.
    let (_, weak_token) = make_key(
        &server,
        &manager,
        with_roles(create("acme", "weak", &[]), &["sender"]),
    )
    .await
    .unwrap();
    let (_, _) = (weak_token, ());
    let own = make_role(&server, &manager, role("acme", "own", &["mail.send"]))
        .await
        .unwrap();
    assert!(own.created_by.starts_with("key:"), "{}", own.created_by);
    let (_, own_token) = make_key(
        &server,
        &manager,
        with_roles(create("acme", "o", &[]), &["own"]),
    )
    .await
    .unwrap();
    let (other, _) = make_key(&server, &manager, create("acme", "o2", &["mail.send"]))
        .await
        .unwrap();
    update(&manager, attach(&other.key_id, &["own"]))
        .await
        .unwrap();
    server
        .manage()
        .await
        .delete_role(bearer(
            &manager,
            pb::DeleteRoleRequest {
                role_id: own.role_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        decision(&server, &own_token, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_role_input_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token.clone();
    let sender = make_role(&server, &admin, role("acme", "sender", &["mail.send"]))
        .await
        .unwrap();
    let theirs = make_role(&server, &admin, role("other", "sender", &["mail.send"]))
        .await
        .unwrap();
    refused(
        make_role(&server, &admin, role("acme", "sender", &["stats.read"])).await,
        Code::AlreadyExists,
        "sender",
    );
    refused(
        make_role(&server, &admin, role("acme", "", &["stats.read"])).await,
        Code::InvalidArgument,
        "name",
    );
    refused(
        make_role(&server, &admin, role("acme", "none", &[])).await,
        Code::InvalidArgument,
        "scope",
    );
    refused(
        make_role(&server, &admin, role("acme", "odd", &["mail.fly"])).await,
        Code::InvalidArgument,
        "mail.fly",
    );
    refused(
        make_role(&server, &admin, role("", "odd", &["mail.send"])).await,
        Code::InvalidArgument,
        "account_id",
    );
    refused(
        make_role(
            &server,
            &admin,
            role("acme", "mixed", &["mail.send", "billing.read"]),
        )
        .await,
        Code::InvalidArgument,
        "billing",
    );
    refused(
        make_role(
            &server,
            &admin,
            pb::CreateRoleRequest {
                template: "everything".into(),
                ..role("acme", "t", &[])
            },
        )
        .await,
        Code::InvalidArgument,
        "read-only",
    );
    let unknown = "role_AAAAAAAAAAAAAAAAAAAAAA";
    for (roles, code, needle) in [
        (vec![unknown.to_owned()], Code::NotFound, unknown),
        (
            vec![theirs.role_id.clone()],
            Code::NotFound,
            theirs.role_id.as_str(),
        ),
        (vec!["nobody".to_owned()], Code::NotFound, "nobody"),
        (vec!["role_x".to_owned()], Code::InvalidArgument, "role_ids"),
        (
            vec![sender.role_id.clone(), "sender".to_owned()],
            Code::InvalidArgument,
            "twice",
        ),
        (
            (0..17).map(|i| format!("r{i}")).collect(),
            Code::InvalidArgument,
            "at most 16",
        ),
        (
            (0..1_000).map(|i| format!("r{i}")).collect(),
            Code::InvalidArgument,
            "at most 16",
        ),
        // Past the server's message size: refused before it is read.
        (
            (0..10_000).map(|i| format!("r{i}")).collect(),
            Code::OutOfRange,
            "too large",
        ),
    ] {
        let request = pb::CreateKeyRequest {
            role_ids: roles,
            ..create("acme", "k", &[])
        };
        refused(make_key(&server, &admin, request).await, code, needle);
    }
    // A key with neither scopes nor roles.
    refused(
        make_key(&server, &admin, create("acme", "k", &[])).await,
        Code::InvalidArgument,
        "scope",
    );
    // Another account's role is not found, and it is not changed.
    let (_, manager) = make_key(&server, &admin, create_manager("acme", "m", &["mail.send"]))
        .await
        .unwrap();
    for result in [
        server
            .manage()
            .await
            .get_role(bearer(
                &manager,
                pb::GetRoleRequest {
                    role_id: theirs.role_id.clone(),
                },
            ))
            .await
            .map(drop),
        regrant(&server, &manager, &theirs.role_id, &["mail.send"])
            .await
            .map(drop),
        server
            .manage()
            .await
            .delete_role(bearer(
                &manager,
                pb::DeleteRoleRequest {
                    role_id: theirs.role_id.clone(),
                },
            ))
            .await
            .map(drop),
    ] {
        refused(result, Code::NotFound, &theirs.role_id);
    }
    refused(
        regrant(&server, &admin, "role_nope", &["mail.send"]).await,
        Code::InvalidArgument,
        "role_id",
    );
    refused(
        regrant(&server, &admin, unknown, &["mail.send"]).await,
        Code::NotFound,
        unknown,
    );
    let nothing = server
        .manage()
        .await
        .update_role(bearer(
            &admin,
            pb::UpdateRoleRequest {
                role_id: sender.role_id.clone(),
                ..Default::default()
            },
        ))
        .await;
    refused(nothing, Code::InvalidArgument, "nothing to update");
    let listed = server
        .manage()
        .await
        .list_roles(bearer(&manager, pb::ListRolesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .roles;
    let names: Vec<(&str, &str)> = listed
        .iter()
        .map(|r| (r.account_id.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(names, [("acme", "sender")]);
    assert_eq!(get_role(&server, &theirs.role_id).await.account_id, "other");
    // Renaming onto a taken name.
    let second = make_role(&server, &admin, role("acme", "second", &["stats.read"]))
        .await
        .unwrap();
    let rename = server
        .manage()
        .await
        .update_role(bearer(
            &admin,
            pb::UpdateRoleRequest {
                role_id: second.role_id.clone(),
                name: Some("sender".into()),
                ..Default::default()
            },
        ))
        .await;
    refused(rename, Code::AlreadyExists, "sender");
    // A name freed by a rename can be taken again.
    let renamed = server
        .manage()
        .await
        .update_role(bearer(
            &admin,
            pb::UpdateRoleRequest {
                role_id: second.role_id.clone(),
                name: Some("viewer".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "viewer");
    make_role(&server, &admin, role("acme", "second", &["stats.read"]))
        .await
        .unwrap();
}

fn rest(
    server: &Server,
    credential: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    obo: Option<&str>,
) -> (u16, Value) {
    let auth = format!("Bearer {credential}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(account) = obo {
        headers.push(("on-behalf-of", account));
    }
    let (status, _, body) = http_request(
        server.http_addr.as_deref().unwrap(),
        method,
        path,
        &headers,
        body,
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_on_rest_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--http-listen", "127.0.0.1:0"]);
    let admin = server.admin_token.clone();
    let (status, made) = rest(
        &server,
        &admin,
        "POST",
        "/v3/roles",
        Some(r#"{"name":"viewer","template":"read-only"}"#),
        Some("acme"),
    );
    assert_eq!(status, 201, "{made}");
    let role_id = made["role_id"].as_str().unwrap().to_owned();
    assert!(
        made["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.as_str().unwrap().ends_with(".read")),
        "{made}"
    );
    let (status, again) = rest(
        &server,
        &admin,
        "POST",
        "/v3/roles",
        Some(r#"{"name":"viewer","scopes":["mail.send"]}"#),
        Some("acme"),
    );
    assert_eq!(
        (status, again["errors"][0]["field"].as_str()),
        (409, None),
        "{again}"
    );
    let (status, bad) = rest(
        &server,
        &admin,
        "POST",
        "/v3/roles",
        Some(r#"{"name":"x","scopes":[]}"#),
        Some("acme"),
    );
    assert_eq!(
        (status, bad["errors"][0]["field"].as_str()),
        (400, Some("scopes")),
        "{bad}"
    );
    let (status, key) = rest(
        &server,
        &admin,
        "POST",
        "/v3/api_keys",
        Some(r#"{"name":"k","roles":["viewer"]}"#),
        Some("acme"),
    );
    assert_eq!(status, 201, "{key}");
    let key_id = key["api_key_id"].as_str().unwrap().to_owned();
    let token = key["api_key"].as_str().unwrap().to_owned();
    assert_eq!(
        decision(&server, &token, &["stats.read"]).await,
        pb::Decision::Allowed
    );
    let (_, shown) = rest(
        &server,
        &admin,
        "GET",
        &format!("/v3/api_keys/{key_id}"),
        None,
        Some("acme"),
    );
    assert_eq!(
        shown["result"][0]["roles"][0]["role_id"],
        role_id.as_str(),
        "{shown}"
    );
    assert_eq!(
        shown["result"][0]["own_scopes"],
        serde_json::json!([]),
        "{shown}"
    );
    let (status, patched) = rest(
        &server,
        &admin,
        "PATCH",
        &format!("/v3/roles/{role_id}"),
        Some(r#"{"scopes":["mail.send"]}"#),
        Some("acme"),
    );
    assert_eq!(
        (status, patched["key_count"].as_u64()),
        (200, Some(1)),
        "{patched}"
    );
    assert_eq!(
        decision(&server, &token, &["stats.read"]).await,
        pb::Decision::InsufficientScope
    );
    assert_eq!(
        decision(&server, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    let (status, _) = rest(
        &server,
        &admin,
        "PUT",
        &format!("/v3/roles/{role_id}"),
        Some(r#"{"scopes":["mail.send"]}"#),
        Some("acme"),
    );
    assert_eq!(status, 400);
    let (status, other) = rest(
        &server,
        &admin,
        "GET",
        &format!("/v3/roles/{role_id}"),
        None,
        Some("other"),
    );
    assert_eq!(status, 404, "{other}");
    let (status, listed) = rest(&server, &admin, "GET", "/v3/roles", None, Some("acme"));
    assert_eq!(
        (status, listed["result"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{listed}"
    );

    // The command line: a role from a template, a key by role name.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(args)
            .args(["--server", &server.addr, "--json"])
            .env("SCOPEGATE_AUTH", &admin)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let made = cli(&[
        "roles",
        "create",
        "--account",
        "acme",
        "--name",
        "ops",
        "--template",
        "all-but-key-management",
    ]);
    assert!(
        made["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "mail.send"),
        "{made}"
    );
    let key = cli(&[
        "keys",
        "create",
        "--account",
        "acme",
        "--name",
        "c",
        "--role",
        "ops",
    ]);
    assert_eq!(key["key"]["roles"][0]["name"], "ops", "{key}");
    let listed = cli(&["roles", "list", "--account", "acme"]);
    let counts: Vec<(String, u64)> = listed["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["key_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("ops".to_owned(), 1), ("viewer".to_owned(), 1)]);
    let scopes = cli(&["scopes"]);
    let templates: Vec<&str> = scopes["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(templates, ["read-only", "all-but-key-management"]);
    let (status, _) = rest(
        &server,
        &admin,
        "DELETE",
        &format!("/v3/roles/{role_id}"),
        None,
        Some("acme"),
    );
    assert_eq!(status, 204);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        decision(&server, &token, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
}

/// A backup carries the roles; a restore rebuilds them (their member lists
/// from the keys, never from the file) and every key decides as before; a
/// line naming a role the file lacks, or a role that mixes billing, is
/// refused; `fleet import` carries them into etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_and_fleet_import_carry_roles() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let admin = server.admin_token.clone();
    let sender = make_role(&server, &admin, role("acme", "sender", &["mail.send"]))
        .await
        .unwrap();
    make_role(&server, &admin, role("acme", "idle", &["stats.read"]))
        .await
        .unwrap();
    let (_, by_role) = make_key(
        &server,
        &admin,
        with_roles(create("acme", "r", &["stats.read"]), &["sender"]),
    )
    .await
    .unwrap();
    let (_, plain) = make_key(&server, &admin, create("acme", "p", &["stats.read"]))
        .await
        .unwrap();
    let file = dir.path().join("backup.jsonl");
    server.backup(&file);
    assert!(server.terminate());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines()
            .filter(|line| line.starts_with(r#"{"role""#))
            .count(),
        2,
        "{text}"
    );

    let restore = |file: &std::path::Path, target: &std::path::Path| {
        std::process::Command::new(common::BIN)
            .args(["restore", "--in"])
            .arg(file)
            .arg("--data-dir")
            .arg(target)
            .output()
            .unwrap()
    };
    let restored = dir.path().join("restored");
    let done = restore(&file, &restored);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let server = Server::start(&restored, &[]);
    assert_eq!(
        decision(&server, &by_role, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&server, &by_role, &["stats.read"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&server, &plain, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
    let roles = server
        .manage()
        .await
        .list_roles(bearer(&admin_of(&server), pb::ListRolesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .roles;
    let counts: Vec<(&str, u32)> = roles
        .iter()
        .map(|role| (role.name.as_str(), role.key_count))
        .collect();
    assert_eq!(counts, [("idle", 0), ("sender", 1)]);
    // The restored role still reaches its key.
    regrant(
        &server,
        &admin_of(&server),
        &sender.role_id,
        &["stats.read"],
    )
    .await
    .unwrap();
    assert_eq!(
        decision(&server, &by_role, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
    drop(server);

    // Edited by hand: a key naming a role not in the file; a role mixing billing.
    for (edit, needle) in [
        (
            text.lines()
                .map(|line| match line.starts_with(r#"{"role""#) {
                    true => line.to_owned(),
                    false => line.replace(&sender.role_id, "role_AAAAAAAAAAAAAAAAAAAAAA"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            "names a role",
        ),
        (
            text.replace(
                r#""scopes":["stats.read"],"create"#,
                r#""scopes":["stats.read","billing.read"],"create"#,
            ),
            "billing",
        ),
    ] {
        assert_ne!(edit, text);
        let edited = dir.path().join("edited.jsonl");
        std::fs::write(&edited, &edit).unwrap();
        let target = dir.path().join(format!("edited-{}", needle.len()));
        let refused = restore(&edited, &target);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{needle}: {stderr} {}",
            String::from_utf8_lossy(&refused.stdout)
        );
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    // fleet import: the standalone store's roles reach a fleet sidecar.
    let etcd = common::Etcd::start(dir.path());
    etcd.wait_healthy();
    let import = std::process::Command::new(common::BIN)
        .args(["fleet", "import", "--data-dir"])
        .arg(&data)
        .args(["--etcd-endpoints", &etcd.endpoint])
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let sidecar = common::fleet::fleet(dir.path(), "sidecar", &etcd, &[]);
    assert_eq!(
        decision(&sidecar, &by_role, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    regrant(
        &sidecar,
        &admin_of(&sidecar),
        &sender.role_id,
        &["stats.read"],
    )
    .await
    .unwrap();
    assert_eq!(
        decision(&sidecar, &by_role, &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
}

fn admin_of(server: &Server) -> String {
    server.admin_token.clone()
}
