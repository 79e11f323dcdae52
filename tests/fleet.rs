//! Fleet mode against real etcd processes (Debian's etcd-server on loopback):
//! sidecars share their keys through etcd and keep deciding from their own
//! mirror, through etcd outages, pauses, compactions and restarts.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use common::{bearer, check, create, Etcd, Server};
use scopegate::grpc::pb;
use tonic::Code;

fn fleet(dir: &std::path::Path, name: &str, etcd: &Etcd, extra: &[&str]) -> Server {
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start(&dir.join(name), &args)
}

async fn decision(server: &Server, token: &str, scopes: &[&str]) -> pb::Decision {
    let response = server
        .authorize()
        .await
        .check(check(token, scopes))
        .await
        .unwrap()
        .into_inner();
    pb::Decision::try_from(response.decision).unwrap()
}

/// Polls `probe` until it returns true, for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn key_ids(server: &Server) -> BTreeSet<String> {
    let response = server
        .manage()
        .await
        .list_keys(bearer(
            &server.admin_token,
            pb::ListKeysRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    response.keys.into_iter().map(|key| key.key_id).collect()
}

/// The key ids etcd holds under the default prefix.
async fn etcd_key_ids(etcd: &Etcd) -> BTreeSet<String> {
    let mut client = etcd.client().await;
    let got = client
        .get(
            "/scopegate/v1/keys/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    got.kvs()
        .iter()
        .map(|kv| {
            kv.key_str()
                .unwrap()
                .trim_start_matches("/scopegate/v1/keys/")
                .to_owned()
        })
        .collect()
}

async fn create_on(server: &Server, account: &str, scopes: &[&str]) -> (String, String) {
    let response = server
        .manage()
        .await
        .create_key(bearer(&server.admin_token, create(account, "k", scopes)))
        .await
        .unwrap()
        .into_inner();
    (response.key.unwrap().key_id, response.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_share_creates_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let c = fleet(dir.path(), "c", &etcd, &[]);

    // Create on A: A sees it at once (read-your-writes), B and C soon.
    let (key_id, token) = create_on(&a, "acme", &["mail.send", "stats.read"]).await;
    assert_eq!(
        decision(&a, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    for other in [&b, &c] {
        eventually("the key reaches every sidecar", || async {
            decision(other, &token, &["mail.send", "stats.read"]).await == pb::Decision::Allowed
        })
        .await;
    }

    // Update on B (stats.read removed): denied for that scope everywhere.
    b.manage()
        .await
        .update_key(bearer(
            &b.admin_token,
            pb::UpdateKeyRequest {
                key_id: key_id.clone(),
                scopes: vec!["mail.send".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        decision(&b, &token, &["stats.read"]).await,
        pb::Decision::InsufficientScope
    );
    for other in [&a, &c] {
        eventually("the narrowing reaches every sidecar", || async {
            decision(other, &token, &["stats.read"]).await == pb::Decision::InsufficientScope
        })
        .await;
        assert_eq!(
            decision(other, &token, &["mail.send"]).await,
            pb::Decision::Allowed
        );
    }

    // Delete on C: unknown everywhere, through Authorize and ext_authz.
    c.manage()
        .await
        .delete_key(bearer(
            &c.admin_token,
            pb::DeleteKeyRequest {
                key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        decision(&c, &token, &["mail.send"]).await,
        pb::Decision::UnknownKey
    );
    for other in [&a, &b] {
        eventually("the delete reaches every sidecar", || async {
            decision(other, &token, &["mail.send"]).await == pb::Decision::UnknownKey
        })
        .await;
    }
    for server in [&a, &b, &c] {
        let status = ext_authz_status(server, &token).await;
        assert_eq!(status, 401);
    }

    // Every sidecar's table is what etcd holds.
    let (_, kept) = create_on(&b, "acme", &["mail.send"]).await;
    for server in [&a, &c] {
        eventually("the second key arrives", || async {
            decision(server, &kept, &["mail.send"]).await == pb::Decision::Allowed
        })
        .await;
    }
    let truth = etcd_key_ids(&etcd).await;
    assert_eq!(truth.len(), 1);
    for server in [&a, &b, &c] {
        assert_eq!(key_ids(server).await, truth);
    }
}

/// The HTTP status Envoy would send for `GET /v3/mail/send`... here POST, the
/// route of mail.send.
async fn ext_authz_status(server: &Server, token: &str) -> i32 {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let request = CheckRequest {
        attributes: Some(AttributeContext {
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
    let response = AuthorizationClient::new(server.channel().await)
        .check(request)
        .await
        .unwrap()
        .into_inner();
    match response.http_response.unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(denied) => denied.status.unwrap().code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_decisions_and_refuses_changes_then_everyone_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let (_, first) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("B sees the first key", || async {
        decision(&b, &first, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;

    etcd.kill9();
    for server in [&a, &b] {
        assert_eq!(
            decision(server, &first, &["mail.send"]).await,
            pb::Decision::Allowed
        );
        let refused = server
            .manage()
            .await
            .create_key(bearer(
                &server.admin_token,
                create("acme", "x", &["mail.send"]),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("etcd is unreachable"),
            "{}",
            refused.message()
        );
    }
    eventually("FleetSync reports NOT_SERVING", || async {
        !common::serving(a.channel().await, "scopegate.v1.FleetSync").await
    })
    .await;
    assert!(common::serving(a.channel().await, "scopegate.v1.Authorize").await);

    etcd.restart();
    eventually("A writes again", || async {
        a.manage()
            .await
            .create_key(bearer(&a.admin_token, create("acme", "y", &["mail.send"])))
            .await
            .is_ok()
    })
    .await;
    let (_, second) = create_on(&b, "acme", &["mail.send"]).await;
    eventually("A sees B's key", || async {
        decision(&a, &second, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    // No event missed or applied twice: both tables equal etcd.
    let truth = etcd_key_ids(&etcd).await;
    assert_eq!(truth.len(), 3);
    for server in [&a, &b] {
        eventually("the sidecar equals etcd", || async {
            key_ids(server).await == truth
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_restarted_sidecars_resync_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let mut b = fleet(dir.path(), "b", &etcd, &[]);
    let (doomed_id, doomed) = create_on(&a, "acme", &["mail.send"]).await;
    let (kept_id, kept) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("B has both keys", || async {
        decision(&b, &doomed, &["mail.send"]).await == pb::Decision::Allowed
            && decision(&b, &kept, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;

    // Paused while keys are created and deleted and etcd is compacted.
    common::signal(b.child.id(), "STOP");
    a.manage()
        .await
        .delete_key(bearer(
            &a.admin_token,
            pb::DeleteKeyRequest { key_id: doomed_id },
        ))
        .await
        .unwrap();
    let (_, fresh) = create_on(&a, "acme", &["mail.send"]).await;
    compact(&etcd).await;
    common::signal(b.child.id(), "CONT");
    eventually("B drops the deleted key and has the new one", || async {
        decision(&b, &doomed, &["mail.send"]).await == pb::Decision::UnknownKey
            && decision(&b, &fresh, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;

    // Stopped (not paused) across more changes and a compaction: its mirror's
    // revision is compacted away, so it must do a full read.
    assert!(b.terminate());
    let (_, later) = create_on(&a, "acme", &["mail.send"]).await;
    a.manage()
        .await
        .delete_key(bearer(
            &a.admin_token,
            pb::DeleteKeyRequest {
                key_id: kept_id.clone(),
            },
        ))
        .await
        .unwrap();
    compact(&etcd).await;
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while decision(&b, &later, &["mail.send"]).await != pb::Decision::Allowed {
        assert!(
            Instant::now() < deadline,
            "B did not resync after the compaction:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let truth = etcd_key_ids(&etcd).await;
    assert!(!truth.contains(&kept_id));
    assert_eq!(
        decision(&b, &kept, &["mail.send"]).await,
        pb::Decision::UnknownKey
    );
    eventually("B equals etcd", || async { key_ids(&b).await == truth }).await;
    assert!(
        b.log().contains("compacted past the applied revision"),
        "{}",
        b.log()
    );
    let (_, metrics) = b.http_get("/metrics");
    assert!(
        metrics.contains("scopegate_fleet_resyncs_total 1"),
        "{metrics}"
    );
}

async fn compact(etcd: &Etcd) {
    let mut client = etcd.client().await;
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_restarted_while_etcd_is_down_serves_its_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let mut a = fleet(dir.path(), "a", &etcd, &[]);
    let (_, token) = create_on(&a, "acme", &["mail.send"]).await;
    assert!(a.terminate());
    etcd.kill9();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    assert_eq!(
        decision(&a, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    assert!(common::serving(a.channel().await, "scopegate.v1.Authorize").await);
    assert!(!common::serving(a.channel().await, "scopegate.v1.FleetSync").await);

    // Without a mirror and without etcd, nothing is served as if it were real.
    let refused = Server::try_start_for(
        &dir.path().join("empty"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint.as_str(),
        ],
        Duration::from_secs(2),
    );
    assert!(
        refused.is_err(),
        "a sidecar without a mirror served before any sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_staleness_decisions_fail_closed_when_etcd_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &["--max-staleness-secs", "3"]);
    let (_, token) = create_on(&a, "acme", &["mail.send"]).await;
    assert_eq!(
        decision(&a, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    etcd.kill9();
    eventually("checks fail closed", || async {
        let status = a.authorize().await.check(check(&token, &["mail.send"])).await;
        matches!(status, Err(status) if status.code() == Code::Unavailable && status.message().contains("stale"))
    })
    .await;
    assert_eq!(ext_authz_status(&a, &token).await, 503);
    etcd.restart();
    eventually("checks come back", || async {
        matches!(a.authorize().await.check(check(&token, &["mail.send"])).await, Ok(response) if response.get_ref().allowed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_cap_holds_fleet_wide_under_concurrent_creates() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let cap = ["--max-keys-per-account", "5"];
    let servers = [
        fleet(dir.path(), "a", &etcd, &cap),
        fleet(dir.path(), "b", &etcd, &cap),
        fleet(dir.path(), "c", &etcd, &cap),
    ];
    let mut calls = Vec::new();
    for server in &servers {
        for index in 0..8 {
            let mut manage = server.manage().await;
            let admin = server.admin_token.clone();
            calls.push(tokio::spawn(async move {
                manage
                    .create_key(bearer(
                        &admin,
                        create("acme", &format!("k{index}"), &["mail.send"]),
                    ))
                    .await
                    .map(drop)
                    .map_err(|status| status.code())
            }));
        }
    }
    let mut created = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(()) => created += 1,
            Err(Code::ResourceExhausted | Code::Aborted) => {}
            Err(code) => panic!("unexpected {code:?}"),
        }
    }
    assert_eq!(created, 5, "the cap of 5 was not exact fleet-wide");
    assert_eq!(etcd_key_ids(&etcd).await.len(), 5);
    let mut client = etcd.client().await;
    let counter = client
        .get("/scopegate/v1/accounts/acme", None)
        .await
        .unwrap();
    assert_eq!(counter.kvs()[0].value_str().unwrap(), "5");
    for server in &servers {
        eventually("every sidecar holds the 5", || async {
            key_ids(server).await.len() == 5
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_two_sidecars_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let (key_id, _) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("B has the key", || async {
        key_ids(&b).await.contains(&key_id)
    })
    .await;
    let mut calls = Vec::new();
    for (label, server) in [("a", &a), ("b", &b)] {
        for index in 0..10 {
            let mut manage = server.manage().await;
            let admin = server.admin_token.clone();
            let key_id = key_id.clone();
            calls.push(tokio::spawn(async move {
                let name = format!("{label}{index}");
                let update = pb::UpdateKeyRequest {
                    key_id,
                    name: Some(name.clone()),
                    ..Default::default()
                };
                match manage.update_key(bearer(&admin, update)).await {
                    Ok(_) => Some(name),
                    Err(status) if status.code() == Code::Aborted => None,
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }));
        }
    }
    let mut acknowledged = Vec::new();
    for call in calls {
        acknowledged.extend(call.await.unwrap());
    }
    assert!(!acknowledged.is_empty());
    // etcd counts the puts of a key in its version: one for the create, one
    // per acknowledged update; none for a refused one, none lost.
    let mut client = etcd.client().await;
    let got = client
        .get(format!("/scopegate/v1/keys/{key_id}"), None)
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].version(), 1 + acknowledged.len() as i64);
    async fn name_on(server: &Server, key_id: &str) -> String {
        let request = bearer(
            &server.admin_token,
            pb::GetKeyRequest {
                key_id: key_id.to_owned(),
            },
        );
        let mut manage = server.manage().await;
        manage.get_key(request).await.unwrap().into_inner().name
    }
    eventually(
        "both sidecars converge on one acknowledged name",
        || async {
            let (on_a, on_b) = (name_on(&a, &key_id).await, name_on(&b, &key_id).await);
            on_a == on_b && acknowledged.contains(&on_a)
        },
    )
    .await;
}
