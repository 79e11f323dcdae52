//! Per-key rate limits through the real binary: Check and ext_authz, counters
//! in memory and in a real Redis shared by sidecars, Redis going away and
//! coming back, window boundaries, account limits, no escalation.

mod common;

use std::time::Duration;

use common::fleet::{eventually, fleet};
use common::redis::Redis;
use common::{bearer, check, create, create_manager, Etcd, Server};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use scopegate::grpc::pb;

fn limit(name: &str, count: u64, window_secs: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.into(),
        limit: count,
        window: Some(prost_types::Duration {
            seconds: window_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn account_limit(name: &str, count: u64, window_secs: i64) -> pb::RateLimit {
    pb::RateLimit {
        account: true,
        ..limit(name, count, window_secs)
    }
}

/// A key in `account` holding mail.send, with `limits`.
async fn limited_key(server: &Server, account: &str, limits: Vec<pb::RateLimit>) -> String {
    let request = pb::CreateKeyRequest {
        rate_limits: limits,
        ..create(account, "limited", &["mail.send"])
    };
    server.admin_create(request).await.unwrap().token
}

async fn check_answer(server: &Server, token: &str) -> pb::CheckResponse {
    server
        .authorize()
        .await
        .check(check(token, &["mail.send"]))
        .await
        .unwrap()
        .into_inner()
}

/// `POST /v3/mail/send` through ext_authz, as Envoy asks.
async fn envoy_check(server: &Server, token: &str) -> CheckResponse {
    common::ext_authz_answer(server, token, None).await
}

/// (HTTP status, headers for the client) of an ext_authz answer.
fn client_view(answer: &CheckResponse) -> (i32, Vec<(String, String)>) {
    let pairs = |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .map(|header| (header.key.clone(), header.value.clone()))
            .collect::<Vec<_>>()
    };
    match answer.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => (200, pairs(&ok.response_headers_to_add)),
        HttpResponse::DeniedResponse(denied) => {
            (denied.status.as_ref().unwrap().code, pairs(&denied.headers))
        }
        other => panic!("{other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn ten_a_minute_allows_ten_then_check_says_rate_limited_and_envoy_gets_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let token = limited_key(&server, "acme", vec![limit("default", 10, 60)]).await;
    let free = server.admin_key(&["mail.send"]).await.token;
    for left in (0..10).rev() {
        let answer = check_answer(&server, &token).await;
        assert_eq!(answer.decision(), pb::Decision::Allowed);
        let status = answer.rate_limit.unwrap();
        assert_eq!(
            (status.name.as_str(), status.limit, status.remaining),
            ("default", 10, left)
        );
    }
    let answer = check_answer(&server, &token).await;
    assert_eq!(answer.decision(), pb::Decision::RateLimited, "{answer:?}");
    assert!(!answer.allowed && !answer.key_id.is_empty());
    let retry = answer.retry_after.unwrap().seconds;
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        answer.message.contains("rate limit `default`"),
        "{}",
        answer.message
    );
    assert_eq!(answer.rate_limit.unwrap().remaining, 0);
    // ext_authz: the same counter, a 429 with Envoy's headers.
    let denied = envoy_check(&server, &token).await;
    let (status, headers) = client_view(&denied);
    assert_eq!(status, 429);
    let retry_after: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(
        header(&headers, "x-ratelimit-limit"),
        Some("10, 10;w=60;name=\"default\"")
    );
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        header(&headers, "x-ratelimit-reset"),
        Some(retry_after.to_string().as_str())
    );
    // A key without limits is not counted, and gets no rate-limit headers.
    for _ in 0..15 {
        assert_eq!(
            check_answer(&server, &free).await.decision(),
            pb::Decision::Allowed
        );
    }
    let (status, headers) = client_view(&envoy_check(&server, &free).await);
    assert_eq!((status, header(&headers, "x-ratelimit-limit")), (200, None));
    let body = server.http_get("/metrics").1;
    assert!(
        common::metric(
            &body,
            "scopegate_decisions_total{api=\"check\",decision=\"RATE_LIMITED\"}"
        ) >= 1.0,
        "{body}"
    );
}

#[tokio::test]
async fn a_window_boundary_resets_the_count_and_the_headers_say_when() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--rate-limit-redis", &redis.url],
    );
    let token = limited_key(&server, "acme", vec![limit("burst", 3, 2)]).await;
    for round in 0..2 {
        for left in (0..3).rev() {
            let (status, headers) = client_view(&envoy_check(&server, &token).await);
            assert_eq!(status, 200, "round {round}");
            assert_eq!(
                header(&headers, "x-ratelimit-limit"),
                Some("3, 3;w=2;name=\"burst\"")
            );
            assert_eq!(
                header(&headers, "x-ratelimit-remaining"),
                Some(left.to_string().as_str())
            );
            let reset: u64 = header(&headers, "x-ratelimit-reset")
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&reset), "{reset}");
        }
        let answer = check_answer(&server, &token).await;
        assert_eq!(answer.decision(), pb::Decision::RateLimited);
        let retry = answer.retry_after.unwrap().seconds as u64;
        assert!((1..=2).contains(&retry), "{retry}");
        // Retry-After is enough: waiting it out always opens a new window.
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
}

#[tokio::test]
async fn three_sidecars_sharing_redis_allow_the_limit_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let redis = Redis::start(dir.path());
    let args = ["--rate-limit-redis", redis.url.as_str()];
    let sidecars: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| fleet(dir.path(), name, &etcd, &args))
        .collect();
    let created = sidecars[0]
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![limit("default", 1000, 3600)],
            ..create("acme", "shared", &["mail.send"])
        })
        .await
        .unwrap();
    let key_id = created.key.unwrap().key_id;
    for sidecar in &sidecars {
        eventually("the key reaches every sidecar", || async {
            sidecar
                .manage()
                .await
                .get_key(bearer(
                    &sidecar.admin_token,
                    pb::GetKeyRequest {
                        key_id: key_id.clone(),
                    },
                ))
                .await
                .is_ok()
        })
        .await;
    }
    // 8 clients per sidecar, 125 Checks each: 24 in flight against one counter.
    let mut tasks = Vec::new();
    for sidecar in sidecars.iter().flat_map(|sidecar| [sidecar; 8]) {
        let mut client = sidecar.authorize().await;
        let token = created.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0u32;
            for _ in 0..125 {
                let answer = client
                    .check(check(&token, &["mail.send"]))
                    .await
                    .unwrap()
                    .into_inner();
                match answer.decision() {
                    pb::Decision::Allowed => allowed += 1,
                    pb::Decision::RateLimited => {}
                    other => panic!("{other:?}"),
                }
            }
            allowed
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // Not 3 × 1,000: one counter for the fleet, checked and counted in one
    // step, so racing sidecars never pass it.
    assert_eq!(total, 1000, "allowed {total} of 3,000 at a limit of 1,000");
}

#[tokio::test]
async fn redis_away_fails_open_by_default_and_closed_when_asked_and_both_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path());
    let open = Server::start(
        &dir.path().join("open"),
        &["--rate-limit-redis", &redis.url],
    );
    let closed = Server::start(
        &dir.path().join("closed"),
        &["--rate-limit-redis", &redis.url, "--rate-limit-fail-closed"],
    );
    let open_key = limited_key(&open, "acme", vec![limit("default", 5, 3600)]).await;
    let closed_key = limited_key(&closed, "acme", vec![limit("default", 5, 3600)]).await;
    let closed_free = closed.admin_key(&["mail.send"]).await.token;
    for (server, token) in [(&open, &open_key), (&closed, &closed_key)] {
        assert!(common::serving(server.channel().await, "scopegate.v1.RateLimits").await);
        for _ in 0..5 {
            assert_eq!(
                check_answer(server, token).await.decision(),
                pb::Decision::Allowed
            );
        }
        assert_eq!(
            check_answer(server, token).await.decision(),
            pb::Decision::RateLimited
        );
    }
    redis.kill9();
    // Open: let through, uncounted, no status; counted in a metric.
    for _ in 0..3 {
        let answer = check_answer(&open, &open_key).await;
        assert_eq!(answer.decision(), pb::Decision::Allowed);
        assert!(answer.rate_limit.is_none());
    }
    assert!(
        common::metric(
            &open.http_get("/metrics").1,
            "scopegate_rate_limit_backend_errors_total"
        ) >= 3.0
    );
    assert!(!common::serving(open.channel().await, "scopegate.v1.RateLimits").await);
    // Closed: UNAVAILABLE on Check, 503 through ext_authz; a key without
    // limits needs no counter and still passes.
    let error = closed
        .authorize()
        .await
        .check(check(&closed_key, &["mail.send"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert_eq!(client_view(&envoy_check(&closed, &closed_key).await).0, 503);
    assert_eq!(
        check_answer(&closed, &closed_free).await.decision(),
        pb::Decision::Allowed
    );
    // Logged once per outage, never the URL's secrets.
    assert_eq!(
        open.log()
            .matches("rate-limit counters unreachable")
            .count(),
        1,
        "{}",
        open.log()
    );
    redis.restart();
    // Back (an empty Redis: counts start again), on both.
    for (server, token) in [(&open, &open_key), (&closed, &closed_key)] {
        eventually("counting resumes", || async {
            let answer = server
                .authorize()
                .await
                .check(check(token, &["mail.send"]))
                .await;
            answer.is_ok_and(|answer| answer.into_inner().rate_limit.is_some())
        })
        .await;
        assert!(common::serving(server.channel().await, "scopegate.v1.RateLimits").await);
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(check_answer(server, token).await.decision());
        }
        assert_eq!(
            answers.last(),
            Some(&pb::Decision::RateLimited),
            "{answers:?}"
        );
    }
    assert!(open.log().contains("rate-limit counters reachable again"));
}

#[tokio::test]
async fn redis_over_tls_with_the_password_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path());
    let secret = "redis-secret-7d1f";
    let redis = Redis::start_tls(dir.path(), &ca, secret);
    let password_file = dir.path().join("redis.password");
    std::fs::write(&password_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The test CA is trusted the way a pod would: SSL_CERT_FILE.
    let trust = format!("export SSL_CERT_FILE={}", ca.ca.display());
    let server = Server::start_after(
        &trust,
        &dir.path().join("data"),
        &[
            "--rate-limit-redis",
            &redis.url,
            "--rate-limit-redis-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    let token = limited_key(&server, "acme", vec![limit("default", 2, 60)]).await;
    eventually("counting over TLS", || async {
        let answer = server
            .authorize()
            .await
            .check(check(&token, &["mail.send"]))
            .await;
        answer.is_ok_and(|answer| answer.into_inner().rate_limit.is_some())
    })
    .await;
    assert_eq!(
        check_answer(&server, &token).await.decision(),
        pb::Decision::Allowed
    );
    assert_eq!(
        check_answer(&server, &token).await.decision(),
        pb::Decision::RateLimited
    );
    // Without the password: away (open: uncounted), and never a secret logged.
    let anonymous = Server::start_after(
        &trust,
        &dir.path().join("anonymous"),
        &["--rate-limit-redis", &redis.url],
    );
    let token = limited_key(&anonymous, "acme", vec![limit("default", 1, 60)]).await;
    for _ in 0..3 {
        let answer = check_answer(&anonymous, &token).await;
        assert!(answer.allowed && answer.rate_limit.is_none(), "{answer:?}");
    }
    assert!(
        anonymous.log().contains("rate-limit counters unreachable"),
        "{}",
        anonymous.log()
    );
    assert!(!server.log().contains(secret) && !anonymous.log().contains(secret));
    // A password in the URL is refused at start, and not echoed.
    let url = format!("rediss://:{secret}@127.0.0.1:{}/0", redis.port);
    let Err(refused) =
        Server::try_start(&dir.path().join("refused"), &["--rate-limit-redis", &url])
    else {
        panic!("started with a password in the URL");
    };
    assert!(
        refused.contains("password-file") && !refused.contains(secret),
        "{refused}"
    );
}

#[tokio::test]
async fn an_account_limit_is_shared_by_the_accounts_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let first = limited_key(&server, "acme", vec![account_limit("org", 6, 60)]).await;
    let second = limited_key(&server, "acme", vec![account_limit("org", 6, 60)]).await;
    let elsewhere = limited_key(&server, "other", vec![account_limit("org", 6, 60)]).await;
    for _ in 0..3 {
        assert_eq!(
            check_answer(&server, &first).await.decision(),
            pb::Decision::Allowed
        );
        assert_eq!(
            check_answer(&server, &second).await.decision(),
            pb::Decision::Allowed
        );
    }
    assert_eq!(
        check_answer(&server, &first).await.decision(),
        pb::Decision::RateLimited
    );
    assert_eq!(
        check_answer(&server, &second).await.decision(),
        pb::Decision::RateLimited
    );
    // Another account's keys have their own counter.
    assert_eq!(
        check_answer(&server, &elsewhere).await.decision(),
        pb::Decision::Allowed
    );
}

#[tokio::test]
async fn a_limit_on_a_scope_counts_only_requests_that_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let scoped = pb::RateLimit {
        scopes: vec!["mail.send".into()],
        ..limit("send", 2, 60)
    };
    let request = pb::CreateKeyRequest {
        rate_limits: vec![scoped],
        ..create("acme", "k", &["mail.send", "stats.read"])
    };
    let token = server.admin_create(request).await.unwrap().token;
    let ask = |scopes: &'static [&'static str]| {
        let token = token.clone();
        let server = &server;
        async move { common::decision(server, &token, scopes).await }
    };
    for _ in 0..5 {
        assert_eq!(ask(&["stats.read"]).await, pb::Decision::Allowed);
    }
    assert_eq!(ask(&["mail.send"]).await, pb::Decision::Allowed);
    assert_eq!(
        ask(&["mail.send", "stats.read"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(ask(&["mail.send"]).await, pb::Decision::RateLimited);
    assert_eq!(ask(&["stats.read"]).await, pb::Decision::Allowed);
}

#[tokio::test]
async fn a_limited_key_cannot_create_or_leave_a_key_less_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let manager = server
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![limit("default", 10, 60)],
            ..create_manager("acme", "manager", &["mail.send"])
        })
        .await
        .unwrap()
        .token;
    let attempt = |limits: Vec<pb::RateLimit>| {
        let manager = manager.clone();
        let server = &server;
        async move {
            let request = pb::CreateKeyRequest {
                rate_limits: limits,
                ..create("acme", "child", &["mail.send"])
            };
            server
                .manage()
                .await
                .create_key(bearer(&manager, request))
                .await
        }
    };
    for (limits, why) in [
        (vec![], "no limit"),
        (vec![limit("default", 11, 60)], "a higher limit"),
        (vec![limit("default", 10, 1)], "a shorter window"),
        (vec![limit("other", 1, 60)], "another name"),
        (
            vec![account_limit("default", 10, 60)],
            "an account limit for a key limit",
        ),
    ] {
        let error = attempt(limits).await.unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::PermissionDenied,
            "{why}: {error:?}"
        );
        assert!(
            error.message().contains("limited to default=10/minute"),
            "{why}: {}",
            error.message()
        );
    }
    let child = attempt(vec![limit("default", 5, 60), limit("extra", 1, 1)])
        .await
        .unwrap()
        .into_inner();
    let child_id = child.key.unwrap().key_id;
    // Nor later: an update may not lift the child's limit.
    let lift = pb::UpdateKeyRequest {
        key_id: child_id.clone(),
        rate_limits: Some(pb::RateLimitList { limits: vec![] }),
        ..Default::default()
    };
    let error = server
        .manage()
        .await
        .update_key(bearer(&manager, lift.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    // The admin may; GetKey shows what the key carries.
    let lifted = server
        .manage()
        .await
        .update_key(bearer(&server.admin_token, lift))
        .await
        .unwrap()
        .into_inner();
    assert!(lifted.rate_limits.is_empty());
    let tightened = pb::UpdateKeyRequest {
        key_id: child_id.clone(),
        rate_limits: Some(pb::RateLimitList {
            limits: vec![limit("default", 2, 3600)],
        }),
        ..Default::default()
    };
    // Unlimited now, the child is freer than the manager: out of its reach,
    // even to tighten it (limits are part of "stronger"); the admin may.
    let error = server
        .manage()
        .await
        .update_key(bearer(&manager, tightened.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("looser rate limits"), "{error:?}");
    let shown = server
        .manage()
        .await
        .update_key(bearer(&server.admin_token, tightened))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.rate_limits, vec![limit("default", 2, 3600)]);
    // The audit trail shows each change of limits: what the key had, what it got.
    let events = common::list_audit(
        &server,
        &server.admin_token,
        pb::ListAuditEventsRequest {
            key_id: child_id,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .events;
    let limits = |state: &Option<pb::KeyState>| state.as_ref().unwrap().rate_limits.clone();
    let created = vec![limit("default", 5, 60), limit("extra", 1, 1)];
    let changes: Vec<_> = events
        .iter()
        .filter(|event| event.action == "update")
        .map(|event| (limits(&event.before), limits(&event.after)))
        .collect();
    assert_eq!(
        changes,
        [
            (created.clone(), vec![]),
            (vec![], vec![limit("default", 2, 3600)]),
        ]
    );
    assert_eq!(events[0].action, "create");
    assert_eq!(limits(&events[0].after), created);
}

#[tokio::test]
async fn bad_limits_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let scoped = |scope: &str| pb::RateLimit {
        scopes: vec![scope.into()],
        ..limit("s", 1, 1)
    };
    for (limits, says) in [
        (vec![limit("default", 0, 60)], "count must be 1"),
        (
            vec![limit("default", 1, 0)],
            "whole, positive number of seconds",
        ),
        (vec![limit("default", 1, 31 * 86_400)], "30 days"),
        (vec![limit("Bad Name", 1, 60)], "limit name"),
        (vec![limit("a", 1, 60), limit("a", 2, 60)], "named twice"),
        (
            (0..9).map(|n| limit(&format!("l{n}"), 1, 60)).collect(),
            "at most 8",
        ),
        (vec![scoped("no.such")], "no.such"),
    ] {
        let request = pb::CreateKeyRequest {
            rate_limits: limits,
            ..create("acme", "k", &["mail.send"])
        };
        let error = server.admin_create(request).await.unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::InvalidArgument,
            "{says}: {error:?}"
        );
        assert!(
            error.message().contains(says),
            "{says}: {}",
            error.message()
        );
    }
}

#[tokio::test]
async fn the_cli_and_rest_set_and_show_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let output = std::process::Command::new(common::BIN)
        .args([
            "keys",
            "create",
            "--server",
            &server.addr,
            "--json",
            "--account",
            "acme",
            "--name",
            "cli",
        ])
        .args(["--scope", "mail.send", "--limit", "default=600/minute"])
        .args([
            "--limit",
            "send=100/second:mail.send",
            "--account-limit",
            "org=10000/hour",
        ])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let limits = &printed["key"]["rate_limits"];
    assert_eq!(limits[0]["name"], "default");
    assert_eq!(limits[0]["window_seconds"], 60);
    assert_eq!(limits[1]["scopes"][0], "mail.send");
    assert_eq!(limits[2]["account"], true);
    // The audit trail's key state carries them too.
    let audit = std::process::Command::new(common::BIN)
        .args(["audit", "--server", &server.addr, "--json"])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let audit: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(audit["events"][0]["after"]["rate_limits"], *limits);
    let bad = std::process::Command::new(common::BIN)
        .args([
            "keys",
            "create",
            "--server",
            &server.addr,
            "--account",
            "acme",
            "--name",
            "x",
        ])
        .args(["--scope", "mail.send", "--limit", "default=600/fortnight"])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fortnight"));
    // REST: SendGrid's create, with scopegate's rate_limits; GET shows them.
    let http = server.http_addr.as_deref().unwrap();
    let auth = format!("Bearer {}", server.admin_token);
    let body = r#"{"name":"rest","scopes":["mail.send"],"rate_limits":[{"name":"default","limit":5,"window_seconds":60}]}"#;
    let (status, _, created) = common::http_request(
        http,
        "POST",
        "/v3/api_keys",
        &[
            ("authorization", &auth),
            ("on-behalf-of", "acme"),
            ("content-type", "application/json"),
        ],
        Some(body),
    );
    assert_eq!(status, 201, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let (status, _, shown) = common::http_request(
        http,
        "GET",
        &format!("/v3/api_keys/{}", created["api_key_id"].as_str().unwrap()),
        &[("authorization", &auth), ("on-behalf-of", "acme")],
        None,
    );
    assert_eq!(status, 200, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["result"][0]["rate_limits"][0]["limit"], 5);
    let token = created["api_key"].as_str().unwrap();
    for _ in 0..5 {
        assert_eq!(
            common::decision(&server, token, &["mail.send"]).await,
            pb::Decision::Allowed
        );
    }
    assert_eq!(
        common::decision(&server, token, &["mail.send"]).await,
        pb::Decision::RateLimited
    );
}

/// A request refused by any other rule costs no quota (the README: limits
/// count after every other rule): a key limited to 2 a minute, first refused
/// for scope, route, path and while disabled, through Check and ext_authz,
/// still has both of its requests, then the third is RATE_LIMITED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_another_rule_cost_no_quota() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = server
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![limit("default", 2, 60)],
            ..create("acme", "limited", &["mail.send"])
        })
        .await
        .unwrap();
    let (token, key_id) = (created.token, created.key.unwrap().key_id);
    let mut authorize = server.authorize().await;
    let decide = |scopes: &[&str]| check(&token, scopes);
    for _ in 0..3 {
        let answer = authorize
            .check(decide(&["stats.read"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision, pb::Decision::InsufficientScope as i32);
        for (path, refused) in [
            ("/nowhere/at/all", pb::Decision::NoRoute),
            ("/v3/mail/%2e%2e%2fsend", pb::Decision::InvalidPath),
            ("/v3/stats", pb::Decision::InsufficientScope),
        ] {
            let got = common::http_decision(&mut authorize, &token, path).await;
            assert_eq!(got, refused, "{path}");
        }
    }
    let set_enabled = |enabled: bool| pb::UpdateKeyRequest {
        key_id: key_id.clone(),
        enabled: Some(enabled),
        ..Default::default()
    };
    let mut manage = server.manage().await;
    manage
        .update_key(bearer(&server.admin_token, set_enabled(false)))
        .await
        .unwrap();
    for _ in 0..3 {
        let answer = authorize
            .check(decide(&["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision, pb::Decision::Disabled as i32);
        let (status, _) = client_view(&envoy_check(&server, &token).await);
        assert_eq!(status, 401);
    }
    manage
        .update_key(bearer(&server.admin_token, set_enabled(true)))
        .await
        .unwrap();
    for expected in [
        pb::Decision::Allowed,
        pb::Decision::Allowed,
        pb::Decision::RateLimited,
    ] {
        let answer = authorize
            .check(decide(&["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision, expected as i32);
    }
}

/// Limits are part of "stronger": a manager limited to 10 a minute cannot
/// rotate, enable, rename or delete a key of its account that is unlimited
/// (it would get an unlimited token, or act on a key freer than itself),
/// while a key at least as strict stays within its reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_manager_cannot_touch_a_key_with_looser_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let manager = server
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![limit("default", 10, 60)],
            ..create_manager("acme", "limited manager", &["mail.send"])
        })
        .await
        .unwrap()
        .token;
    let key_with = |limits: Vec<pb::RateLimit>| {
        let server = &server;
        async move {
            server
                .admin_create(pb::CreateKeyRequest {
                    rate_limits: limits,
                    ..create("acme", "target", &["mail.send"])
                })
                .await
                .unwrap()
                .key
                .unwrap()
                .key_id
        }
    };
    let free = key_with(vec![]).await;
    let looser = key_with(vec![limit("default", 11, 60)]).await;
    let stricter = key_with(vec![limit("default", 5, 60)]).await;
    let mut manage = server.manage().await;
    let rotate = |key_id: &str| pb::RotateKeyRequest {
        key_id: key_id.into(),
        overlap: None,
    };
    let update = |key_id: &str, enabled: Option<bool>, name: Option<&str>| pb::UpdateKeyRequest {
        key_id: key_id.into(),
        enabled,
        name: name.map(str::to_owned),
        ..Default::default()
    };
    // The admin disables them first, so "enable" is a real change.
    for key_id in [&free, &looser, &stricter] {
        manage
            .update_key(bearer(
                &server.admin_token,
                update(key_id, Some(false), None),
            ))
            .await
            .unwrap();
    }
    for key_id in [&free, &looser] {
        let refused = |result: Result<(), tonic::Status>, what: &str| {
            let status = result.expect_err(what);
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{what}: {status:?}"
            );
            assert!(
                status.message().contains("looser rate limits"),
                "{what}: {status:?}"
            );
        };
        refused(
            manage
                .rotate_key(bearer(&manager, rotate(key_id)))
                .await
                .map(drop),
            "rotate",
        );
        refused(
            manage
                .update_key(bearer(&manager, update(key_id, Some(true), None)))
                .await
                .map(drop),
            "enable",
        );
        refused(
            manage
                .update_key(bearer(&manager, update(key_id, None, Some("renamed"))))
                .await
                .map(drop),
            "rename",
        );
        refused(
            manage
                .delete_key(bearer(
                    &manager,
                    pb::DeleteKeyRequest {
                        key_id: key_id.clone(),
                    },
                ))
                .await
                .map(drop),
            "delete",
        );
    }
    manage
        .update_key(bearer(&manager, update(&stricter, Some(true), None)))
        .await
        .unwrap();
    let rotated = manage
        .rotate_key(bearer(&manager, rotate(&stricter)))
        .await
        .unwrap()
        .into_inner();
    let answer = check_answer(&server, &rotated.token).await;
    assert_eq!(answer.decision, pb::Decision::Allowed as i32);
    assert_eq!(answer.rate_limit.unwrap().limit, 5);
}

/// Neither a longer window nor a changed one escapes a count: a manager's
/// children must carry its account limit over the same window (so they
/// share its one counter), and a limited key cannot move its own limit's
/// window to start a fresh count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_window_length_escapes_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let created = server
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![account_limit("org", 3, 3600), limit("default", 2, 60)],
            ..create_manager("acme", "limited manager", &["mail.send"])
        })
        .await
        .unwrap();
    let (manager, manager_id) = (created.token, created.key.unwrap().key_id);
    let mut manage = server.manage().await;
    let child = |org_window: i64| pb::CreateKeyRequest {
        rate_limits: vec![account_limit("org", 3, org_window), limit("default", 2, 60)],
        ..create("", "child", &["mail.send"])
    };
    for window in [3601, 7200, 86_400] {
        let status = manage
            .create_key(bearer(&manager, child(window)))
            .await
            .expect_err("a longer window would be a fresh account count");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("same window"), "{status:?}");
    }
    let child_token = manage
        .create_key(bearer(&manager, child(3600)))
        .await
        .unwrap()
        .into_inner()
        .token;
    // One account count: two by the manager, one by the child, then none.
    for (token, expected) in [
        (&manager, pb::Decision::Allowed),
        (&manager, pb::Decision::Allowed),
        (&child_token, pb::Decision::Allowed),
        (&child_token, pb::Decision::RateLimited),
    ] {
        assert_eq!(check_answer(&server, token).await.decision, expected as i32);
    }
    // Its own per-key limit, spent: a window one second longer is refused.
    let moved = pb::UpdateKeyRequest {
        key_id: manager_id,
        rate_limits: Some(pb::RateLimitList {
            limits: vec![account_limit("org", 3, 3600), limit("default", 2, 61)],
        }),
        ..Default::default()
    };
    let status = manage
        .update_key(bearer(&manager, moved))
        .await
        .expect_err("a new window would reset the count");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("keeps its window"), "{status:?}");
}
