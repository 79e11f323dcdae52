//! Usage in a fleet: three sidecars on a real etcd add their counts up in a
//! real Redis, exactly, even when a flush's reply is lost and the flush is
//! sent again; a fleet without Redis answers for one sidecar, and says so.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{create_on, decision, eventually, fleet};
use common::redis::Redis;
use common::{check, http_request, metric, Etcd, Server};
use scopegate::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy to Redis that, once armed, passes one request on and drops
/// its reply (closing the connection), as a network that fails after the
/// write.
struct ReplyDropper {
    addr: String,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicUsize>,
}

async fn reply_dropper(redis_port: u16) -> ReplyDropper {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let armed = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (arm, drops) = (armed.clone(), dropped.clone());
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                .await
                .unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let (arm, drops) = (arm.clone(), drops.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let Ok(read) = server_read.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    if arm.swap(false, Ordering::SeqCst) {
                        drops.fetch_add(1, Ordering::SeqCst);
                        let _ = client_write.shutdown().await;
                        return;
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    ReplyDropper {
        addr,
        armed,
        dropped,
    }
}

fn today() -> String {
    chrono::DateTime::from_timestamp(scopegate::authz::now_unix_ms() / 1000, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// (status, head, body) of a key's stats for today on `server`.
fn allowed_today_raw(server: &Server, key_id: &str) -> (u16, String, serde_json::Value) {
    let auth = format!("Bearer {}", server.admin_token);
    let path = format!("/v3/api_keys/{key_id}/stats?start_date={}", today());
    let (status, head, body) = http_request(
        server.http_addr.as_deref().unwrap(),
        "GET",
        &path,
        &[("Authorization", &auth)],
        None,
    );
    (status, head, serde_json::from_str(&body).unwrap())
}

/// (status, allowed today, whole body) of a key's stats on `server`.
fn allowed_today(server: &Server, key_id: &str) -> (u16, u64, serde_json::Value) {
    let (status, head, body) = allowed_today_raw(server, key_id);
    let allowed = body[0]["stats"][0]["metrics"]["allowed"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        head.contains("x-scopegate-partial: true"),
        body[0]["partial"] == true,
        "{head}"
    );
    (status, allowed, body)
}

async fn checks(server: &Server, token: &str, n: usize) {
    let mut client = server.authorize().await;
    for _ in 0..n {
        let answer = client
            .check(check(token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision, pb::Decision::Allowed as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_sum_exactly_in_redis_and_a_retried_flush_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let redis = Redis::start(dir.path());
    let dropper = reply_dropper(redis.port).await;
    let through_dropper = format!("redis://{}/0", dropper.addr);
    let flags = |url: &str| {
        vec![
            "--usage-flush-secs".to_owned(),
            "1".into(),
            "--usage-redis".into(),
            url.to_owned(),
        ]
    };
    let start = |name: &str, url: &str| {
        let flags = flags(url);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        fleet(dir.path(), name, &etcd, &flags)
    };
    let a = start("a", &through_dropper);
    let b = start("b", &redis.url);
    let c = start("c", &redis.url);
    let (id, token) = create_on(&a, "acme", &["mail.send"]).await;
    for sidecar in [&a, &b, &c] {
        eventually("the key decides everywhere", || async {
            decision(sidecar, &token, &["mail.send"]).await == pb::Decision::Allowed
        })
        .await;
    }
    a.wait_for_log("usage is written to Redis", 1);
    // Each sidecar's probe above stopped at its first allowed decision.
    let before = 3;

    dropper.armed.store(true, Ordering::SeqCst);
    checks(&a, &token, 200).await;
    checks(&b, &token, 300).await;
    checks(&c, &token, 400).await;
    let expected = before + 900;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, allowed, body) = allowed_today(&c, &id);
        assert_eq!(status, 200, "{body}");
        assert!(allowed <= expected, "counted twice: {allowed} > {expected}");
        if allowed == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never summed to {expected}: {allowed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        dropper.dropped.load(Ordering::SeqCst),
        1,
        "a reply was lost"
    );
    let (_, metrics) = a.http_get("/metrics");
    assert!(
        metric(&metrics, "scopegate_usage_flushes_total{result=\"failed\"}") >= 1.0,
        "{metrics}"
    );
    // Two more flush intervals: still exactly once.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for sidecar in [&a, &b, &c] {
        let (_, allowed, body) = allowed_today(sidecar, &id);
        assert_eq!(
            allowed, expected,
            "every sidecar reads the fleet's sum: {body}"
        );
    }

    // Without Redis a fleet sidecar answers for itself, and says so.
    let alone = fleet(dir.path(), "alone", &etcd, &["--usage-flush-secs", "1"]);
    eventually("the key decides on the lone sidecar", || async {
        decision(&alone, &token, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    checks(&alone, &token, 7).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, allowed, body) = allowed_today(&alone, &id);
        if allowed >= 8 {
            assert_eq!(allowed, 8, "its own probe and checks only: {body}");
            assert_eq!(body[0]["partial"], true, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(redis);
}

/// Redis away: flushes are held, counted as failed, and sent when it is
/// back (a Redis restarted empty then holds exactly what was held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_held_while_redis_is_away_are_sent_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut redis = Redis::start(dir.path());
    let a = fleet(
        dir.path(),
        "a",
        &etcd,
        &["--usage-flush-secs", "1", "--usage-redis", &redis.url],
    );
    let (id, token) = create_on(&a, "acme", &["mail.send"]).await;
    a.wait_for_log("usage is written to Redis", 1);
    redis.kill9();
    checks(&a, &token, 50).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = a.http_get("/metrics");
        if metric(&metrics, "scopegate_usage_flushes_total{result=\"failed\"}") >= 2.0 {
            assert!(
                metric(&metrics, "scopegate_usage_pending_records") > 0.0,
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failed flush: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = allowed_today_raw(&a, &id);
    assert_eq!(status, 503, "Redis away: the read says so: {body}");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, allowed, body) = allowed_today(&a, &id);
        if status == 200 && allowed == 50 {
            break;
        }
        assert!(allowed <= 50, "{body}");
        assert!(
            Instant::now() < deadline,
            "the held flushes never arrived: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.wait_for_log("usage is written again", 1);
}
