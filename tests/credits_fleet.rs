//! Credits in a fleet: sidecars sharing the rate-limit Redis spend one
//! balance exactly, and a refill comes once per period however many
//! sidecars see the boundary (their clocks set by libfaketime to just
//! before midnight on the last day of a month).

mod common;

use std::time::Duration;

use common::fleet::{decision, eventually, fleet};
use common::redis::Redis;
use common::{bearer, check, create, Etcd, Server};
use scopegate::grpc::pb;

async fn spend_all(sidecars: &[&Server], token: &str, clients: usize, tries: usize) -> usize {
    let mut running = tokio::task::JoinSet::new();
    for sidecar in sidecars {
        let channel = sidecar.channel().await;
        for _ in 0..clients {
            let mut client = pb::authorize_client::AuthorizeClient::new(channel.clone());
            let request = check(token, &["mail.send"]);
            running.spawn(async move {
                let mut allowed = 0;
                for _ in 0..tries {
                    let answer = client.check(request.clone()).await.unwrap().into_inner();
                    if answer.decision == pb::Decision::Allowed as i32 {
                        allowed += 1;
                    } else {
                        assert_eq!(answer.decision, pb::Decision::UsageExceeded as i32);
                    }
                }
                allowed
            });
        }
    }
    let mut allowed = 0;
    while let Some(done) = running.join_next().await {
        allowed += done.unwrap();
    }
    allowed
}

async fn metered(
    server: &Server,
    remaining: u64,
    refill: Option<(u64, &str, u32)>,
) -> (String, String) {
    let response = server
        .manage()
        .await
        .create_key(bearer(
            &server.admin_token,
            pb::CreateKeyRequest {
                credits: Some(pb::Credits {
                    remaining,
                    refill: refill.map(|(amount, interval, day_of_month)| pb::Refill {
                        amount,
                        interval: interval.into(),
                        day_of_month,
                    }),
                }),
                ..create("acme", "metered", &["mail.send"])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (response.key.unwrap().key_id, response.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_sharing_redis_allow_exactly_the_balance() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let redis = Redis::start(dir.path());
    let flags = ["--rate-limit-redis", redis.url.as_str()];
    let sidecars: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| fleet(dir.path(), name, &etcd, &flags))
        .collect();
    let (_, token) = metered(&sidecars[0], 500, None).await;
    let probe = {
        // The key arrives everywhere (a probe spends one each: 3 of 500).
        for sidecar in &sidecars {
            eventually("the key decides everywhere", || async {
                decision(sidecar, &token, &["mail.send"]).await == pb::Decision::Allowed
            })
            .await;
        }
        3
    };
    let all: Vec<&Server> = sidecars.iter().collect();
    let allowed = spend_all(&all, &token, 8, 40).await;
    assert_eq!(allowed + probe, 500, "3 sidecars × 8 clients × 40 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_comes_once_per_day_and_month_whichever_sidecar_sees_it() {
    assert!(
        std::process::Command::new("faketime")
            .args(["-f", "+0", "true"])
            .status()
            .is_ok_and(|s| s.success()),
        "faketime is needed (scripts/test.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let redis = Redis::start(dir.path());
    let shell = "export FAKETIME='@2026-12-31 23:59:40' LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    let args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint.as_str(),
        "--rate-limit-redis",
        redis.url.as_str(),
    ];
    // Each clock starts at 23:59:40 when its sidecar starts: midnight is 20 s
    // after each launch (room for a slow start on a busy machine).
    let launched = std::time::Instant::now();
    let a = Server::start_after(shell, &dir.path().join("a"), &args);
    let b_launched = std::time::Instant::now();
    let b = Server::start_after(shell, &dir.path().join("b"), &args);
    let (_, daily) = metered(&a, 3, Some((7, "daily", 0))).await;
    let (_, monthly) = metered(&a, 2, Some((9, "monthly", 1))).await;
    for token in [&daily, &monthly] {
        eventually("the key decides on b", || async {
            decision(&b, token, &["mail.send"]).await != pb::Decision::UnknownKey
        })
        .await;
    }
    // Before midnight: what is left of the first balance, then nothing.
    assert_eq!(spend_all(&[&a], &daily, 1, 5).await, 2, "3, less b's probe");
    assert_eq!(
        spend_all(&[&a], &monthly, 1, 5).await,
        1,
        "2, less b's probe"
    );
    assert!(
        launched.elapsed() < Duration::from_secs(19),
        "too slow to stay before midnight"
    );
    // After midnight (on both clocks): one refill each, shared.
    tokio::time::sleep(Duration::from_secs(21).saturating_sub(b_launched.elapsed())).await;
    assert_eq!(
        spend_all(&[&a, &b], &daily, 4, 5).await,
        7,
        "a day's refill, once"
    );
    assert_eq!(
        spend_all(&[&a, &b], &monthly, 4, 5).await,
        9,
        "a month's refill, once"
    );
}

/// Redis away: requests of keys with credits pass unspent (as rate limits
/// fail open), or are refused with --rate-limit-fail-closed; keys without
/// credits are untouched either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_fails_open_or_closed_as_the_rate_limits_do() {
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
    let (_, open_token) = metered(&open, 5, None).await;
    let (_, closed_token) = metered(&closed, 5, None).await;
    let free = closed.admin_key(&["mail.send"]).await.token;
    let answer = open
        .authorize()
        .await
        .check(check(&open_token, &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.credits_remaining, Some(4), "Redis up: spent");
    redis.kill9();
    let answer = open
        .authorize()
        .await
        .check(check(&open_token, &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.decision, answer.credits_remaining),
        (pb::Decision::Allowed as i32, None),
        "open: unspent"
    );
    let refused = closed
        .authorize()
        .await
        .check(check(&closed_token, &["mail.send"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("credit balances"), "{refused:?}");
    let answer = closed
        .authorize()
        .await
        .check(check(&free, &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.decision,
        pb::Decision::Allowed as i32,
        "no credits, no Redis needed"
    );
    redis.restart();
    let mut spent = None;
    for _ in 0..50 {
        let answer = closed
            .authorize()
            .await
            .check(check(&closed_token, &["mail.send"]))
            .await;
        if let Ok(answer) = answer {
            spent = answer.into_inner().credits_remaining;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        spent,
        Some(4),
        "Redis back (empty): the balance starts from the terms"
    );
}
