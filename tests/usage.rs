//! Usage through the real binary: known traffic read back the same through
//! REST, gRPC and the CLI; who may read whose; bad ranges; a restart and a
//! kill -9; retention. The fleet's shared Redis is in tests/usage_fleet.rs,
//! SendGrid's client and the console's chart in tests/python/test_usage.py.

mod common;

use std::time::{Duration, Instant};

use common::{bearer, check, create, create_manager, http_request, Server};
use scopegate::grpc::pb;
use serde_json::Value;

const FLUSH: &[&str] = &["--usage-flush-secs", "1"];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

fn now() -> i64 {
    scopegate::authz::now_unix_ms() / 1000
}

fn today() -> String {
    chrono::DateTime::from_timestamp(now(), 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// GET on the REST API as `credential` (and on behalf of `account`).
fn rest(server: &Server, credential: &str, account: Option<&str>, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {credential}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(account) = account {
        headers.push(("on-behalf-of", account));
    }
    let (status, _, body) = http_request(
        server.http_addr.as_deref().unwrap(),
        "GET",
        path,
        &headers,
        None,
    );
    (status, json(&body))
}

/// Every point's metric `name` of the series at `index`, summed.
fn sum(points: &Value, index: usize, name: &str) -> u64 {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["stats"][index]["metrics"][name].as_u64().unwrap_or(0))
        .sum()
}

/// A well-formed token for `key_id` whose secret is not the key's.
fn wrong_secret(key_id: &str) -> String {
    let format = scopegate::token::TokenFormat::new("SG", None).unwrap();
    let id = scopegate::token::KeyId::parse(key_id).unwrap();
    format.reissue(id).token
}

/// Sends `n` Checks of `token` for `scopes`, 16 in flight.
async fn checks(server: &Server, token: &str, scopes: &[&str], n: usize) {
    let channel = server.channel().await;
    let mut running = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = pb::authorize_client::AuthorizeClient::new(channel.clone());
        let request = check(token, scopes);
        let count = n / 16 + usize::from(worker < n % 16);
        running.spawn(async move {
            for _ in 0..count {
                client.check(request.clone()).await.unwrap();
            }
        });
    }
    while let Some(done) = running.join_next().await {
        done.unwrap();
    }
}

/// Polls a key's stats for today until `allowed` reaches `expected` (a
/// flush or two), then returns them.
async fn settled(server: &Server, key_id: &str, metric: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let path = format!("/v3/api_keys/{key_id}/stats?start_date={}", today());
        let (status, body) = rest(server, &server.admin_token, None, &path);
        assert_eq!(status, 200, "{body}");
        if sum(&body, 0, metric) >= expected {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never {expected} {metric}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_reads_the_same_through_rest_grpc_and_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), FLUSH);
    let key = server.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    let idle = server.admin_key(&["mail.send"]).await.key.unwrap().key_id;
    checks(&server, &key.token, &["mail.send"], 700).await;
    checks(&server, &key.token, &["stats.read"], 200).await;
    checks(&server, &wrong_secret(&id), &["mail.send"], 100).await;
    checks(&server, "SG.garbage", &["mail.send"], 5).await;
    let body = settled(&server, &id, "unknown_key", 100).await;

    // REST, by day: one point, today, every outcome present.
    let points = body.as_array().unwrap();
    assert_eq!(points.len(), 1, "{body}");
    assert_eq!(points[0]["date"], today());
    let metrics = points[0]["stats"][0]["metrics"].as_object().unwrap();
    assert_eq!(
        metrics.len(),
        scopegate::stats::OUTCOMES.len(),
        "every outcome, zeros too: {body}"
    );
    assert_eq!(metrics["allowed"], 700);
    assert_eq!(metrics["insufficient_scope"], 200);
    assert_eq!(
        metrics["unknown_key"], 100,
        "a wrong secret counts on its key"
    );
    assert_eq!(metrics["malformed_token"], 0, "garbage is nobody's");

    // By minute, over the last hour: the same totals, whatever minute
    // edges the run crossed.
    let path = format!(
        "/v3/api_keys/{id}/stats?aggregated_by=minute&start_time={}",
        now() - 3_600
    );
    let (status, minutes) = rest(&server, &server.admin_token, None, &path);
    assert_eq!(status, 200, "{minutes}");
    assert_eq!(minutes.as_array().unwrap().len(), 61);
    assert_eq!(minutes[0]["time"].as_i64().unwrap() % 60, 0);
    assert_eq!(sum(&minutes, 0, "allowed"), 700);
    assert_eq!(sum(&minutes, 0, "insufficient_scope"), 200);

    // By scope: mail.send holds the allowed and the wrong secrets.
    let path = format!(
        "/v3/api_keys/{id}/stats?start_date={}&group_by=scope",
        today()
    );
    let (_, by_scope) = rest(&server, &server.admin_token, None, &path);
    let stats = by_scope[0]["stats"].as_array().unwrap();
    let names: Vec<&str> = stats.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mail.send", "stats.read"], "{by_scope}");
    assert_eq!(stats[0]["type"], "scope");
    assert_eq!(stats[0]["metrics"]["allowed"], 700);
    assert_eq!(stats[0]["metrics"]["unknown_key"], 100);
    assert_eq!(stats[1]["metrics"]["insufficient_scope"], 200);

    // The account's total and its busiest key; requests naming no key
    // are the account `-`'s.
    let path = format!("/v3/stats?start_date={}&top_keys=5", today());
    let (status, account) = rest(&server, &server.admin_token, Some("acme"), &path);
    assert_eq!(status, 200, "{account}");
    let stats = account[0]["stats"].as_array().unwrap();
    assert_eq!(stats.len(), 2, "the total and the one key used: {account}");
    assert_eq!(stats[0]["metrics"]["allowed"], 700);
    assert_eq!(
        (stats[1]["type"].as_str(), stats[1]["name"].as_str()),
        (Some("api_key"), Some(id.as_str()))
    );
    assert_ne!(stats[1]["name"], idle.as_str());
    let (_, nobody) = rest(
        &server,
        &server.admin_token,
        Some("-"),
        &format!("/v3/stats?start_date={}", today()),
    );
    assert_eq!(
        nobody[0]["stats"][0]["metrics"]["malformed_token"], 5,
        "{nobody}"
    );

    // gRPC: the same.
    let usage = server
        .manage()
        .await
        .get_usage(bearer(
            &server.admin_token,
            pb::GetUsageRequest {
                key_id: id.clone(),
                start_date: today(),
                group_by_scope: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!usage.partial);
    let series = &usage.points[0].stats;
    assert_eq!(
        (series[0].r#type.as_str(), series[0].name.as_str()),
        ("scope", "mail.send")
    );
    assert_eq!(series[0].metrics["allowed"], 700);
    assert_eq!(series[1].metrics["insufficient_scope"], 200);

    // The CLI: the same, as JSON.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "usage",
            "--key",
            &id,
            "--since",
            "2h",
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
    let cli = json(&String::from_utf8(output.stdout).unwrap());
    let total = |name: &str| -> u64 {
        cli["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|point| point["stats"][0]["metrics"][name].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        (
            total("allowed"),
            total("insufficient_scope"),
            total("unknown_key")
        ),
        (700, 200, 100)
    );
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "usage",
            "--key",
            &id,
            "--since",
            "2h",
            "--server",
            &server.addr,
        ])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.starts_with("PERIOD") && table.contains("INSUFFICIENT_SCOPE"),
        "{table}"
    );

    // The export: every cell, as CSV and as NDJSON, the same counts.
    let export = |format: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args([
                "usage", "export", "--since", "1h", "--grain", "minute", "--format", format,
            ])
            .args(["--server", &server.addr])
            .env("SCOPEGATE_AUTH", &server.admin_token)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let csv = export("csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("start_time,grain,account_id,key_id,outcome,scope,count")
    );
    let mut exported = std::collections::BTreeMap::<(String, String, String), u64>::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 7, "{line}");
        *exported
            .entry((fields[3].into(), fields[4].into(), fields[5].into()))
            .or_default() += fields[6].parse::<u64>().unwrap();
    }
    let cell = |outcome: &str, scope: &str| {
        exported
            .get(&(id.clone(), outcome.into(), scope.into()))
            .copied()
    };
    assert_eq!(cell("allowed", "mail.send"), Some(700), "{csv}");
    assert_eq!(cell("insufficient_scope", "stats.read"), Some(200));
    assert_eq!(cell("unknown_key", "mail.send"), Some(100));
    let nobody: u64 = exported
        .iter()
        .filter(|((key, ..), _)| key == "-")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(nobody, 5, "the garbage tokens, under -");
    let ndjson: u64 = export("ndjson")
        .lines()
        .map(|line| json(line)["count"].as_u64().unwrap())
        .sum();
    assert_eq!(ndjson, 1_005);

    // A graceful restart keeps every count.
    let data = server.data_dir.clone();
    drop(server);
    let server = Server::start(&data, FLUSH);
    let body = settled(&server, &id, "allowed", 700).await;
    assert_eq!(sum(&body, 0, "allowed"), 700);
    assert_eq!(sum(&body, 0, "unknown_key"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_read_their_own_accounts_usage_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), FLUSH);
    let key = server.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    let reader = server
        .admin_create(create_manager("acme", "reader", &[]))
        .await
        .unwrap()
        .token;
    let stranger = server
        .admin_create(create_manager("globex", "stranger", &[]))
        .await
        .unwrap()
        .token;
    let sender = server
        .admin_create(create("acme", "sender", &["mail.send"]))
        .await
        .unwrap()
        .token;
    checks(&server, &key.token, &["mail.send"], 30).await;
    settled(&server, &id, "allowed", 30).await;

    let path = format!("/v3/api_keys/{id}/stats?start_date={}", today());
    let (status, body) = rest(&server, &reader, None, &path);
    assert_eq!((status, sum(&body, 0, "allowed")), (200, 30), "{body}");
    let (status, body) = rest(&server, &stranger, None, &path);
    assert_eq!(status, 404, "another account's key is not found: {body}");
    let (status, body) = rest(&server, &sender, None, &path);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("api_keys.read"),
        "{body}"
    );
    let (status, body) = rest(&server, &reader, Some("globex"), &path);
    assert_eq!(
        status, 403,
        "a key cannot speak for another account: {body}"
    );
    let (status, _) = rest(&server, &server.admin_token, Some("globex"), &path);
    assert_eq!(
        status, 404,
        "the admin on behalf of another account does not see it"
    );

    let account = format!("/v3/stats?start_date={}", today());
    let (status, body) = rest(&server, &reader, None, &account);
    assert_eq!((status, sum(&body, 0, "allowed")), (200, 30), "{body}");
    let (status, body) = rest(&server, &stranger, None, &account);
    assert_eq!(
        (status, sum(&body, 0, "allowed")),
        (200, 0),
        "its own account: {body}"
    );
    let (status, body) = rest(&server, &server.admin_token, None, &account);
    assert_eq!(status, 400, "the admin names the account: {body}");
    assert_eq!(body["errors"][0]["field"], "account_id");

    let denied = server
        .manage()
        .await
        .get_usage(bearer(
            &stranger,
            pb::GetUsageRequest {
                key_id: id.clone(),
                start_date: today(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_are_refused_with_sendgrids_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), FLUSH);
    let id = server.admin_key(&["mail.send"]).await.key.unwrap().key_id;
    let cases = [
        ("", "start_date", "start_date is required"),
        ("start_date=2026-02-30", "start_date", "is not a date"),
        (
            "start_date=2026-12-05&end_date=2026-12-01",
            "end_date",
            "end_date is before start_date",
        ),
        (
            "start_date=2026-12-01&aggregated_by=fortnight",
            "aggregated_by",
            "is not day, week, month, hour or minute",
        ),
        (
            "aggregated_by=minute&start_time=0",
            "aggregated_by",
            "minute buckets are kept (2d)",
        ),
        (
            "aggregated_by=hour&start_date=2026-12-01",
            "start_date",
            "dates and times cannot be mixed",
        ),
        (
            "aggregated_by=hour&start_time=soon",
            "start_time",
            "is not a unix time",
        ),
        (
            "start_date=2026-12-01&group_by=colour",
            "group_by",
            "is not scope",
        ),
        (
            "start_date=2026-12-01&top_keys=3",
            "top_keys",
            "unknown query parameter",
        ),
        (
            "start_date=2026-12-01&start_date=2026-12-02",
            "start_date",
            "more than once",
        ),
    ];
    for (query, field, message) in cases {
        let (status, body) = rest(
            &server,
            &server.admin_token,
            None,
            &format!("/v3/api_keys/{id}/stats?{query}"),
        );
        assert_eq!(status, 400, "{query}: {body}");
        let error = &body["errors"][0];
        assert_eq!(error["field"], field, "{query}: {body}");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{query}: {body}"
        );
    }
    let (status, body) = rest(
        &server,
        &server.admin_token,
        Some("acme"),
        "/v3/stats?start_date=2026-12-01&top_keys=1000",
    );
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (400, &Value::from("top_keys")),
        "{body}"
    );
    let (status, _) = rest(
        &server,
        &server.admin_token,
        None,
        "/v3/api_keys/AAAAAAAAAAAAAAAAAAAAAA/stats?start_date=2026-12-01",
    );
    assert_eq!(status, 404);
    let invalid = server
        .manage()
        .await
        .get_usage(bearer(
            &server.admin_token,
            pb::GetUsageRequest {
                key_id: id,
                aggregated_by: "hour".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(
        invalid.message().contains("start_time is required"),
        "{invalid:?}"
    );

    let off = Server::start(&dir.path().join("off"), &["--usage", "off"]);
    let id = off.admin_key(&["mail.send"]).await.key.unwrap().key_id;
    let (status, body) = rest(
        &off,
        &off.admin_token,
        None,
        &format!("/v3/api_keys/{id}/stats?start_date={}", today()),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--usage off"),
        "{body}"
    );
}

/// A kill -9 forgets at most what came after the last flush, and never
/// counts anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_at_most_one_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("d"), FLUSH);
    let key = server.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    checks(&server, &key.token, &["mail.send"], 300).await;
    settled(&server, &id, "allowed", 300).await;
    checks(&server, &key.token, &["mail.send"], 200).await;
    server.kill9();
    let server = Server::start(&server.data_dir.clone(), FLUSH);
    let body = settled(&server, &id, "allowed", 300).await;
    let kept = sum(&body, 0, "allowed");
    assert!((300..=500).contains(&kept), "{kept} of 500 kept");
}

/// Minute buckets go after `--usage-retention-minute` (48h), hours and days
/// stay: traffic made three days ago (the server under libfaketime) is
/// pruned when a server starts today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_minutes_and_keeps_hours_and_days() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut args = FLUSH.to_vec();
    args.extend(["--usage-retention-hour", "90d"]);
    let past = Server::start_after(
        "export FAKETIME='-3d' LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        &data,
        &args,
    );
    let key = past.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    checks(&past, &key.token, &["mail.send"], 40).await;
    let then = now() - 3 * 86_400;
    let minutes = format!(
        "/v3/api_keys/{id}/stats?aggregated_by=minute&start_time={}&end_time={}",
        then - 600,
        then + 600
    );
    let hours = format!(
        "/v3/api_keys/{id}/stats?aggregated_by=hour&start_time={}&end_time={}",
        then - 7_200,
        then + 7_200
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while sum(
        &rest(&past, &past.admin_token, None, &minutes).1,
        0,
        "allowed",
    ) < 40
    {
        assert!(Instant::now() < deadline, "the past server never flushed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(past);

    let server = Server::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = rest(&server, &server.admin_token, None, &minutes);
        assert_eq!(status, 200, "{body}");
        if sum(&body, 0, "allowed") == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "minute buckets three days old were never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = rest(&server, &server.admin_token, None, &hours);
    assert_eq!(sum(&body, 0, "allowed"), 40, "hour buckets stay: {body}");
    let day = chrono::DateTime::from_timestamp(then, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let (_, body) = rest(
        &server,
        &server.admin_token,
        None,
        &format!("/v3/api_keys/{id}/stats?start_date={day}&end_date={day}"),
    );
    assert_eq!(sum(&body, 0, "allowed"), 40, "day buckets stay: {body}");
}

/// Every decision door counts, on the key and the scope it required: Check,
/// Envoy's ext_authz, forward-auth and AuthZEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_counts_its_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let door = format!("127.0.0.1:{}", common::free_port());
    let mut args = FLUSH.to_vec();
    args.extend(["--forward-auth-listen", door.as_str()]);
    let server = Server::start(&dir.path().join("d"), &args);
    let key = server.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    let auth = format!("Bearer {}", key.token);
    checks(&server, &key.token, &["mail.send"], 1).await;
    for _ in 0..2 {
        let (decision, status, _) = common::ext_authz(&server, &key.token, None).await;
        assert_eq!((decision.as_str(), status), ("ALLOWED", 200));
    }
    for _ in 0..3 {
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", "/v3/mail/send"),
        ];
        let (status, _, body) = http_request(&door, "GET", "/", &headers, None);
        assert_eq!(status, 200, "{body}");
    }
    let evaluation = serde_json::json!({
        "subject": {"type": "api_key", "properties": {"token": key.token}},
        "action": {"name": "mail.send"},
        "resource": {"type": "account", "id": "acme"},
    })
    .to_string();
    for _ in 0..4 {
        let headers = [("Content-Type", "application/json")];
        let (status, _, body) = http_request(
            &door,
            "POST",
            "/access/v1/evaluation",
            &headers,
            Some(&evaluation),
        );
        assert_eq!(
            (status, json(&body)["decision"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    }
    let body = settled(&server, &id, "allowed", 10).await;
    assert_eq!(sum(&body, 0, "allowed"), 10, "1 + 2 + 3 + 4: {body}");
    let (_, by_scope) = rest(
        &server,
        &server.admin_token,
        None,
        &format!(
            "/v3/api_keys/{id}/stats?start_date={}&group_by=scope",
            today()
        ),
    );
    assert_eq!(by_scope[0]["stats"][0]["name"], "mail.send", "{by_scope}");
    assert_eq!(
        by_scope[0]["stats"].as_array().unwrap().len(),
        1,
        "{by_scope}"
    );
}

/// Counts land in the minute they were decided in: a run that crosses a
/// minute (the server's clock set to 10:00:45 by libfaketime, traffic for
/// eight seconds) shows in two minute buckets that add up to the hour's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_rolling_over_mid_run_splits_the_counts_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_after(
        "export FAKETIME='@2026-12-07 10:00:45' LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        &dir.path().join("d"),
        FLUSH,
    );
    let key = server.admin_key(&["mail.send"]).await;
    let id = key.key.unwrap().key_id;
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(18) {
        checks(&server, &key.token, &["mail.send"], 20).await;
        sent += 20;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ten = 1_796_637_600; // 2026-12-07T10:00:00Z
    let minutes = format!(
        "/v3/api_keys/{id}/stats?aggregated_by=minute&start_time={ten}&end_time={}",
        ten + 120
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = rest(&server, &server.admin_token, None, &minutes);
        assert_eq!(status, 200, "{body}");
        if sum(&body, 0, "allowed") == sent {
            break body;
        }
        assert!(Instant::now() < deadline, "{sent} sent: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let per_minute: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stats"][0]["metrics"]["allowed"].as_u64().unwrap())
        .collect();
    assert!(
        per_minute[0] > 0 && per_minute[1] > 0,
        "both sides of 10:01: {per_minute:?}"
    );
    let hour =
        format!("/v3/api_keys/{id}/stats?aggregated_by=hour&start_time={ten}&end_time={ten}");
    let (_, body) = rest(&server, &server.admin_token, None, &hour);
    assert_eq!(sum(&body, 0, "allowed"), sent, "{body}");
}
