//! Credits through the real binary: exactly N allowed then USAGE_EXCEEDED on
//! every door; costs per route, proxy and Check; set, increment and
//! decrement exact under concurrent spending; a restart and a kill -9; every
//! escalation bypass refused; bad input refused with nothing changed. The
//! fleet's shared balance and the refill across boundaries are in
//! tests/credits_fleet.rs.

mod common;

use std::time::Duration;

use common::{bearer, check, create, create_manager, http_request, Server};
use scopegate::grpc::pb;
use serde_json::Value;

fn credits(remaining: u64, refill: Option<(u64, &str, u32)>) -> Option<pb::Credits> {
    Some(pb::Credits {
        remaining,
        refill: refill.map(|(amount, interval, day_of_month)| pb::Refill {
            amount,
            interval: interval.into(),
            day_of_month,
        }),
    })
}

fn with_credits(account: &str, scopes: &[&str], remaining: u64) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        credits: credits(remaining, None),
        ..create(account, "metered", scopes)
    }
}

async fn ask(server: &Server, request: pb::CheckRequest) -> pb::CheckResponse {
    server
        .authorize()
        .await
        .check(request)
        .await
        .unwrap()
        .into_inner()
}

async fn remaining(server: &Server, key_id: &str) -> Option<u64> {
    let key = server
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
        .into_inner();
    key.credits.map(|credits| credits.remaining)
}

fn rest(
    server: &Server,
    credential: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let auth = format!("Bearer {credential}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
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
async fn exactly_n_are_allowed_then_usage_exceeded_on_every_door() {
    let dir = tempfile::tempdir().unwrap();
    let door = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start(&dir.path().join("d"), &["--forward-auth-listen", &door]);
    let key = server
        .admin_create(with_credits("acme", &["mail.send"], 5))
        .await
        .unwrap();
    let free = server.admin_key(&["mail.send"]).await;
    for left in (2..5).rev() {
        let answer = ask(&server, check(&key.token, &["mail.send"])).await;
        assert_eq!(
            (answer.decision, answer.credits_remaining),
            (pb::Decision::Allowed as i32, Some(left))
        );
    }
    // ext_authz: allowed, with the header; forward-auth too.
    let allowed = common::ext_authz_answer(&server, &key.token, None).await;
    let headers = format!("{:?}", allowed.http_response);
    assert!(
        headers.contains("x-credits-remaining") && headers.contains("\"1\""),
        "{headers}"
    );
    let auth = format!("Bearer {}", key.token);
    let forwarded = [
        ("Authorization", auth.as_str()),
        ("X-Forwarded-Method", "POST"),
        ("X-Forwarded-Uri", "/v3/mail/send"),
    ];
    let (status, head, _) = http_request(&door, "GET", "/", &forwarded, None);
    assert_eq!(status, 200);
    assert!(head.contains("x-credits-remaining: 0"), "{head}");
    // Out: every door says so, and nothing is spent.
    let answer = ask(&server, check(&key.token, &["mail.send"])).await;
    assert_eq!(
        (answer.decision, answer.credits_remaining),
        (pb::Decision::UsageExceeded as i32, Some(0))
    );
    assert!(
        answer.message.contains("out of credits"),
        "{}",
        answer.message
    );
    let (decision, status, _) = common::ext_authz(&server, &key.token, None).await;
    assert_eq!((decision.as_str(), status), ("USAGE_EXCEEDED", 429));
    let (status, head, body) = http_request(&door, "GET", "/", &forwarded, None);
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("out of credits") && !head.contains("retry-after"),
        "{head}{body}"
    );
    assert_eq!(remaining(&server, &key.key.unwrap().key_id).await, Some(0));
    // A key without credits is not touched.
    let answer = ask(&server, check(&free.token, &["mail.send"])).await;
    assert_eq!(
        (answer.decision, answer.credits_remaining),
        (pb::Decision::Allowed as i32, None)
    );
    // A denial for scope spends nothing.
    let scoped = server
        .admin_create(with_credits("acme", &["mail.send"], 1))
        .await
        .unwrap();
    let answer = ask(&server, check(&scoped.token, &["stats.read"])).await;
    assert_eq!(answer.decision, pb::Decision::InsufficientScope as i32);
    assert_eq!(
        remaining(&server, &scoped.key.unwrap().key_id).await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_costs_what_its_route_its_proxy_or_its_check_says() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[route]]\npath = \"/v3/stats\"\nmethods = [\"GET\"]\nscope = \"stats.read\"\ncost = 0\n\n\
         [[route]]\npath = \"/v3/mail/send\"\nmethods = [\"POST\"]\nscope = \"mail.send\"\ncost = 10\n",
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("d"),
        &["--routes", routes.to_str().unwrap()],
    );
    let key = server
        .admin_create(with_credits("acme", &["mail.send", "stats.read"], 25))
        .await
        .unwrap();
    let id = key.key.unwrap().key_id;
    let http = |method: &str, path: &str| pb::CheckRequest {
        token: key.token.clone(),
        http: Some(pb::HttpRequest {
            method: method.into(),
            path: path.into(),
        }),
        ..Default::default()
    };
    for _ in 0..30 {
        let answer = ask(&server, http("GET", "/v3/stats")).await;
        assert_eq!(
            answer.decision,
            pb::Decision::Allowed as i32,
            "a free route never spends"
        );
    }
    assert_eq!(remaining(&server, &id).await, Some(25));
    for left in [15, 5] {
        let answer = ask(&server, http("POST", "/v3/mail/send")).await;
        assert_eq!(answer.credits_remaining, Some(left));
    }
    let answer = ask(&server, http("POST", "/v3/mail/send")).await;
    assert_eq!(
        answer.decision,
        pb::Decision::UsageExceeded as i32,
        "10 > 5 left"
    );
    assert_eq!(
        remaining(&server, &id).await,
        Some(5),
        "a refused request spends nothing"
    );
    let answer = ask(
        &server,
        pb::CheckRequest {
            cost: Some(3),
            ..check(&key.token, &["mail.send"])
        },
    )
    .await;
    assert_eq!(answer.credits_remaining, Some(2), "Check's own cost");
    // ext_authz spends the route's cost too.
    let (decision, status, _) = common::ext_authz(&server, &key.token, None).await;
    assert_eq!(
        (decision.as_str(), status),
        ("USAGE_EXCEEDED", 429),
        "10 > 2"
    );
    assert_eq!(remaining(&server, &id).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_increment_and_decrement_stay_exact_under_spending_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let key = server
        .admin_create(with_credits("acme", &["mail.send"], 10_000))
        .await
        .unwrap();
    let id = key.key.unwrap().key_id;
    let channel = server.channel().await;
    let mut spenders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = pb::authorize_client::AuthorizeClient::new(channel.clone());
        let request = check(&key.token, &["mail.send"]);
        spenders.spawn(async move {
            for _ in 0..250 {
                let answer = client.check(request.clone()).await.unwrap().into_inner();
                assert_eq!(answer.decision, pb::Decision::Allowed as i32);
            }
        });
    }
    let mut manage = server.manage().await;
    let op = |op: &str, amount: u64| pb::UpdateCreditsRequest {
        key_id: id.clone(),
        op: op.into(),
        amount,
    };
    for _ in 0..50 {
        manage
            .update_credits(bearer(&server.admin_token, op("increment", 7)))
            .await
            .unwrap();
        manage
            .update_credits(bearer(&server.admin_token, op("decrement", 3)))
            .await
            .unwrap();
    }
    while let Some(done) = spenders.join_next().await {
        done.unwrap();
    }
    assert_eq!(remaining(&server, &id).await, Some(10_000 - 2_000 + 50 * 4));
    let set = manage
        .update_credits(bearer(&server.admin_token, op("set", 42)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.remaining, 42);
    let taken = manage
        .update_credits(bearer(&server.admin_token, op("decrement", 100)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken.remaining, 0, "never below zero");
    let events = common::list_audit(
        &server,
        &server.admin_token,
        pb::ListAuditEventsRequest {
            key_id: id.clone(),
            page_size: 1_000,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .events;
    let last = events.last().unwrap();
    assert_eq!(last.action, "credits");
    assert_eq!(
        last.before
            .as_ref()
            .unwrap()
            .credits
            .as_ref()
            .unwrap()
            .remaining,
        42
    );
    assert_eq!(
        last.after
            .as_ref()
            .unwrap()
            .credits
            .as_ref()
            .unwrap()
            .remaining,
        0
    );
    // REST and the CLI: the same call.
    let (status, body) = rest(
        &server,
        &server.admin_token,
        "POST",
        &format!("/v3/api_keys/{id}/credits"),
        Some(r#"{"op": "increment", "amount": 9}"#),
    );
    assert_eq!(
        (status, &body["remaining"]),
        (200, &Value::from(9)),
        "{body}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "keys",
            "credits",
            &id,
            "--decrement",
            "4",
            "--json",
            "--server",
            &server.addr,
        ])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).unwrap()["remaining"],
        5
    );
    let (_, got) = rest(
        &server,
        &server.admin_token,
        "GET",
        &format!("/v3/api_keys/{id}"),
        None,
    );
    assert_eq!(got["result"][0]["credits"]["remaining"], 5, "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_balance_and_a_kill_9_forgets_at_most_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let key = server
        .admin_create(with_credits("acme", &["mail.send"], 1_000))
        .await
        .unwrap();
    let id = key.key.unwrap().key_id;
    for _ in 0..100 {
        ask(&server, check(&key.token, &["mail.send"])).await;
    }
    let data = server.data_dir.clone();
    let mut server = server;
    assert!(server.terminate(), "a clean stop");
    drop(server);
    let mut server = Server::start(&data, &[]);
    assert_eq!(
        remaining(&server, &id).await,
        Some(900),
        "a clean stop keeps every spend"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for _ in 0..50 {
        ask(&server, check(&key.token, &["mail.send"])).await;
    }
    server.kill9();
    let server = Server::start(&data, &[]);
    let left = remaining(&server, &id).await.unwrap();
    assert!(
        (850..=900).contains(&left),
        "{left}: over-granted by at most the last second's 50, never under"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_credits_never_gives_more_spending_power_than_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let manager = server
        .admin_create(pb::CreateKeyRequest {
            credits: credits(100, Some((100, "daily", 0))),
            ..create_manager("acme", "metered manager", &["mail.send"])
        })
        .await
        .unwrap()
        .token;
    let mut manage = server.manage().await;
    let refused = |result: Result<tonic::Response<pb::CreateKeyResponse>, tonic::Status>,
                   why: &str| {
        let status = result.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{why}: {status:?}"
        );
    };
    refused(
        manage
            .create_key(bearer(&manager, create("", "unlimited", &["mail.send"])))
            .await,
        "unlimited",
    );
    refused(
        manage
            .create_key(bearer(&manager, with_credits("", &["mail.send"], 101)))
            .await,
        "more than it has",
    );
    let bigger = pb::CreateKeyRequest {
        credits: credits(10, Some((101, "daily", 0))),
        ..create("", "x", &["mail.send"])
    };
    refused(
        manage.create_key(bearer(&manager, bigger)).await,
        "a larger refill",
    );
    let monthly = pb::CreateKeyRequest {
        credits: credits(10, Some((1, "monthly", 1))),
        ..create("", "x", &["mail.send"])
    };
    refused(
        manage.create_key(bearer(&manager, monthly)).await,
        "another interval",
    );
    let child = manage
        .create_key(bearer(&manager, with_credits("", &["mail.send"], 50)))
        .await
        .unwrap()
        .into_inner();
    let child_id = child.key.unwrap().key_id;
    let op = |op: &str, amount: u64| pb::UpdateCreditsRequest {
        key_id: child_id.clone(),
        op: op.into(),
        amount,
    };
    for (name, amount) in [("increment", 1), ("set", 10)] {
        let status = manage
            .update_credits(bearer(&manager, op(name, amount)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{name}: {status:?}"
        );
    }
    let taken = manage
        .update_credits(bearer(&manager, op("decrement", 5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken.remaining, 45);
    let widen = pb::UpdateKeyRequest {
        key_id: child_id.clone(),
        credits: Some(pb::CreditsChange { credits: None }),
        ..Default::default()
    };
    assert_eq!(
        manage
            .update_key(bearer(&manager, widen))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    // An unlimited key is stronger: no rotation, enable, change or delete.
    let unlimited = server.admin_key(&["mail.send"]).await.key.unwrap().key_id;
    let rotate = manage
        .rotate_key(bearer(
            &manager,
            pb::RotateKeyRequest {
                key_id: unlimited.clone(),
                overlap: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(rotate.code(), tonic::Code::PermissionDenied, "{rotate:?}");
    let enable = pb::UpdateKeyRequest {
        key_id: unlimited.clone(),
        enabled: Some(true),
        ..Default::default()
    };
    assert_eq!(
        manage
            .update_key(bearer(&manager, enable))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    let delete = manage
        .delete_key(bearer(&manager, pb::DeleteKeyRequest { key_id: unlimited }))
        .await
        .unwrap_err();
    assert_eq!(delete.code(), tonic::Code::PermissionDenied);
    // A replayed request id cannot carry other credits.
    let first = pb::CreateKeyRequest {
        request_id: "credits-replay-0123456789".into(),
        ..with_credits("", &["mail.send"], 10)
    };
    manage
        .create_key(bearer(&manager, first.clone()))
        .await
        .unwrap();
    let replay = pb::CreateKeyRequest {
        credits: credits(40, None),
        ..first
    };
    assert_eq!(
        manage
            .create_key(bearer(&manager, replay))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    // The admin may do all of it.
    manage
        .update_credits(bearer(&server.admin_token, op("increment", 1_000)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credits_are_refused_naming_the_field_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]);
    let key = server
        .admin_create(with_credits("acme", &["mail.send"], 10))
        .await
        .unwrap();
    let id = key.key.unwrap().key_id;
    let mut manage = server.manage().await;
    let invalid = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    };
    let op = |op: &str, amount: u64| pb::UpdateCreditsRequest {
        key_id: id.clone(),
        op: op.into(),
        amount,
    };
    invalid(
        manage
            .update_credits(bearer(&server.admin_token, op("double", 1)))
            .await
            .unwrap_err(),
        "op",
    );
    invalid(
        manage
            .update_credits(bearer(&server.admin_token, op("increment", u64::MAX)))
            .await
            .unwrap_err(),
        "amount",
    );
    for (refill, field) in [
        ((1, "monthly", 0), "day_of_month"),
        ((1, "monthly", 32), "day_of_month"),
        ((1, "weekly", 0), "interval"),
        ((1, "daily", 2), "day_of_month"),
    ] {
        let request = pb::CreateKeyRequest {
            credits: credits(5, Some(refill)),
            ..create("acme", "x", &["mail.send"])
        };
        invalid(server.admin_create(request).await.unwrap_err(), field);
    }
    invalid(
        server
            .admin_create(pb::CreateKeyRequest {
                credits: credits(u64::MAX, None),
                ..create("acme", "x", &["mail.send"])
            })
            .await
            .unwrap_err(),
        "remaining",
    );
    let path = format!("/v3/api_keys/{id}/credits");
    for body in [
        r#"{"op": "increment", "amount": -5}"#,
        r#"{"op": "increment"}"#,
        r#"{"op": "grow", "amount": 1}"#,
        r#"{"op": "set", "amount": 1, "extra": 1}"#,
    ] {
        let (status, answer) = rest(&server, &server.admin_token, "POST", &path, Some(body));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["errors"][0]["message"].is_string(), "{answer}");
    }
    assert_eq!(remaining(&server, &id).await, Some(10), "nothing changed");
    let unlimited = server.admin_key(&["mail.send"]).await.key.unwrap().key_id;
    let status = manage
        .update_credits(bearer(
            &server.admin_token,
            pb::UpdateCreditsRequest {
                key_id: unlimited,
                op: "increment".into(),
                amount: 1,
            },
        ))
        .await
        .unwrap_err();
    invalid(status, "unlimited credits");
}

/// The proxy may name a request's cost: Envoy per route
/// (`context_extensions["cost"]`), a forward-auth proxy in the header
/// `--forward-auth-cost-header` names (never a header a client could send
/// unless the operator says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_names_the_cost_in_context_extensions_or_its_header() {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let dir = tempfile::tempdir().unwrap();
    let door = format!("127.0.0.1:{}", common::free_port());
    let server = Server::start(
        &dir.path().join("d"),
        &[
            "--forward-auth-listen",
            &door,
            "--forward-auth-cost-header",
            "X-Request-Cost",
        ],
    );
    let key = server
        .admin_create(with_credits("acme", &["mail.send"], 20))
        .await
        .unwrap();
    let id = key.key.unwrap().key_id;
    let envoy = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v3/mail/send".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {}", key.token))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("cost".to_owned(), "7".to_owned())].into_iter().collect(),
            ..Default::default()
        }),
    };
    AuthorizationClient::new(server.channel().await)
        .check(envoy)
        .await
        .unwrap();
    assert_eq!(
        remaining(&server, &id).await,
        Some(13),
        "Envoy's route said 7"
    );
    let auth = format!("Bearer {}", key.token);
    let with_cost = |cost: &'static str| {
        vec![
            ("Authorization", auth.clone()),
            ("X-Forwarded-Method", "POST".to_owned()),
            ("X-Forwarded-Uri", "/v3/mail/send".to_owned()),
            ("X-Request-Cost", cost.to_owned()),
        ]
    };
    let send = |headers: Vec<(&'static str, String)>| {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        http_request(&door, "GET", "/", &headers, None)
    };
    let (status, head, _) = send(with_cost("4"));
    assert_eq!(status, 200);
    assert!(head.contains("x-credits-remaining: 9"), "{head}");
    for bad in ["many", "-1", "1000001"] {
        let (status, _, body) = send(with_cost(bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("x-request-cost"), "{body}");
    }
    let mut twice = with_cost("1");
    twice.push(("X-Request-Cost", "2".to_owned()));
    assert_eq!(send(twice).0, 400);
    assert_eq!(
        remaining(&server, &id).await,
        Some(9),
        "refused requests spend nothing"
    );
}
