//! Fleet mode against real etcd processes (Debian's etcd-server on loopback):
//! sidecars share their keys through etcd and keep deciding from their own
//! mirror, through etcd outages, pauses, compactions and restarts.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::fleet::{create_on, decision, eventually, fleet};
use common::{bearer, check, create, Etcd, Server};
use scopegate::grpc::pb;
use tonic::Code;

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
        assert_eq!(
            ext_authz_status(other, &token, "POST", "/v3/mail/send").await,
            200
        );
        assert_eq!(
            ext_authz_status(other, &token, "GET", "/v3/geo/stats").await,
            200
        );
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
        assert_eq!(
            ext_authz_status(other, &token, "GET", "/v3/geo/stats").await,
            403
        );
        assert_eq!(
            ext_authz_status(other, &token, "POST", "/v3/mail/send").await,
            200
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
        let status = ext_authz_status(server, &token, "POST", "/v3/mail/send").await;
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

/// The HTTP status Envoy would send for `method path` with this token.
async fn ext_authz_status(server: &Server, token: &str, method: &str, path: &str) -> i32 {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
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
async fn paused_sidecars_catch_up_and_restarted_ones_resync_after_compaction() {
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

    // Paused while keys are created and deleted and etcd is compacted: its
    // watch stays open and etcd delivers what it buffered, so it catches up
    // without a full read (its one resync is the start-up read).
    let resyncs = |server: &Server| {
        let metrics = server.http_get("/metrics").1;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("scopegate_fleet_resyncs_total "))
            .map(|value| value.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(resyncs(&b), "1", "B's start-up read");
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
    assert_eq!(
        resyncs(&b),
        "1",
        "caught up from the open watch, no full read"
    );

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

    // Without a mirror and without etcd, nothing is served as if it were
    // real: the sidecar stays up, NOT_SERVING, until its first full read.
    let mut empty = Server::start_listening(
        &dir.path().join("empty"),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint.as_str(),
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        empty.child.try_wait().unwrap().is_none(),
        "it waits for etcd, it does not exit"
    );
    for service in ["", "scopegate.v1.Authorize"] {
        assert!(
            !common::serving(empty.channel().await, service).await,
            "health of {service:?} is NOT_SERVING before any sync"
        );
    }
    assert_ne!(empty.http_get("/readyz").0, 200);
    etcd.restart();
    eventually(
        "the empty sidecar serves after its first full read",
        || async { common::serving(empty.channel().await, "scopegate.v1.Authorize").await },
    )
    .await;
    assert_eq!(empty.http_get("/readyz").0, 200);
    assert_eq!(
        decision(&empty, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    assert!(empty.terminate());
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
    assert_eq!(
        ext_authz_status(&a, &token, "POST", "/v3/mail/send").await,
        503
    );
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

/// `fleet import` copies a standalone store into etcd (idempotent; a key
/// already there with other content is refused, nothing overwritten), and
/// `backup` works against a fleet sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_import_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let standalone = dir.path().join("standalone");
    let mut old = Server::start(&standalone, &[]);
    let (renamed_id, first) = create_on(&old, "acme", &["mail.send"]).await;
    let (_, second) = create_on(&old, "other", &["stats.read"]).await;
    assert!(old.terminate());

    let import = || {
        std::process::Command::new(common::BIN)
            .args(["fleet", "import", "--data-dir"])
            .arg(&standalone)
            .args(["--etcd-endpoints", &etcd.endpoint])
            .output()
            .unwrap()
    };
    let once = import();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(String::from_utf8_lossy(&once.stdout).contains("copied 2 keys and roles"));
    let twice = import();
    assert!(twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stdout)
            .contains("copied 0 keys and roles into etcd (2 were already there)"),
        "{}",
        String::from_utf8_lossy(&twice.stdout)
    );

    let a = fleet(dir.path(), "a", &etcd, &[]);
    assert_eq!(
        decision(&a, &first, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&a, &second, &["stats.read"]).await,
        pb::Decision::Allowed
    );
    // Each imported key is audited, once (the second import copied nothing).
    let events = a
        .manage()
        .await
        .list_audit_events(bearer(
            &a.admin_token,
            pb::ListAuditEventsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let imports: Vec<_> = events.iter().filter(|e| e.action == "import").collect();
    assert_eq!(imports.len(), 2, "{events:?}");
    assert!(imports
        .iter()
        .all(|e| e.actor == "admin" && e.after.is_some()));
    // The per-account counters came along: the cap still holds.
    let mut client = etcd.client().await;
    let counter = client
        .get("/scopegate/v1/accounts/acme", None)
        .await
        .unwrap();
    assert_eq!(counter.kvs()[0].value_str().unwrap(), "1");

    // Changed in the fleet since: a re-import refuses to overwrite it.
    a.manage()
        .await
        .update_key(bearer(
            &a.admin_token,
            pb::UpdateKeyRequest {
                key_id: renamed_id.clone(),
                name: Some("renamed".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let refused = import();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&renamed_id) && stderr.contains("nothing was overwritten"),
        "{stderr}"
    );

    // Backup from a fleet sidecar.
    let backup = dir.path().join("fleet-backup.jsonl");
    a.backup(&backup);
    let lines = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("renamed"));
}

/// A sidecar killed (-9) in the middle of a full read comes back with its
/// mirror whole: the old set or the new one, never a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_during_a_resync_never_keeps_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(
        dir.path(),
        "a",
        &etcd,
        &["--max-keys-per-account", "100000"],
    );
    let old = create_many(&a, 400).await;
    let mut b = fleet(dir.path(), "b", &etcd, &[]);
    eventually("B has the old set", || async { key_ids(&b).await == old }).await;
    assert!(b.terminate());

    // While B is down: half the old keys go, as many new ones come, and etcd
    // compacts, so B's restart needs a full read.
    for key_id in old.iter().take(200) {
        a.manage()
            .await
            .delete_key(bearer(
                &a.admin_token,
                pb::DeleteKeyRequest {
                    key_id: key_id.clone(),
                },
            ))
            .await
            .unwrap();
    }
    create_many(&a, 400).await;
    compact(&etcd).await;
    let new = etcd_key_ids(&etcd).await;
    assert_eq!(new.len(), 600);

    // Kill B at several points of its restart, then look at its mirror alone
    // (etcd down, so it serves exactly what it has on disk).
    for delay_ms in [0u64, 5, 15, 40, 100] {
        let mut b = Server::try_start_for(
            &dir.path().join("b"),
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                etcd.endpoint.as_str(),
            ],
            Duration::from_secs(30),
        )
        .unwrap_or_else(|log| panic!("{log}"));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        b.kill9();
    }
    etcd.kill9();
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let mirror = key_ids(&b).await;
    assert!(
        mirror == old || mirror == new,
        "a mix: {} keys, {} of the old set, {} of the new",
        mirror.len(),
        mirror.intersection(&old).count(),
        mirror.intersection(&new).count()
    );
}

async fn create_many(server: &Server, count: usize) -> BTreeSet<String> {
    let mut calls = Vec::new();
    for worker in 0..8 {
        let mut manage = server.manage().await;
        let admin = server.admin_token.clone();
        calls.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for index in (worker..count).step_by(8) {
                // Eight writers on one account's counter: a create that lost
                // its compare 24 times is ABORTED, and a client retries it.
                let response = loop {
                    let made = manage
                        .create_key(bearer(
                            &admin,
                            create("acme", &format!("k{index}"), &["mail.send"]),
                        ))
                        .await;
                    match made {
                        Err(status) if status.code() == Code::Aborted => continue,
                        made => break made.unwrap().into_inner(),
                    }
                };
                ids.push(response.key.unwrap().key_id);
            }
            ids
        }));
    }
    let mut ids = BTreeSet::new();
    for call in calls {
        ids.extend(call.await.unwrap());
    }
    ids
}

/// A 3-member etcd cluster loses its leader while two sidecars create keys:
/// every acknowledged create is on every sidecar afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_the_loss_of_the_etcd_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Etcd::cluster(dir.path(), 3);
    let endpoints = members
        .iter()
        .map(|member| member.endpoint.clone())
        .collect::<Vec<_>>()
        .join(",");
    let args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints.as_str(),
        "--max-keys-per-account",
        "100000",
    ];
    let a = Server::start(&dir.path().join("a"), &args);
    let b = Server::start(&dir.path().join("b"), &args);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for server in [&a, &b] {
        for _ in 0..2 {
            let mut manage = server.manage().await;
            let admin = server.admin_token.clone();
            let stop = stop.clone();
            let progress = progress.clone();
            writers.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match manage
                        .create_key(bearer(&admin, create("acme", "k", &["mail.send"])))
                        .await
                    {
                        Ok(response) => {
                            acknowledged.push(response.into_inner().token);
                            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(status) => assert!(
                            matches!(
                                status.code(),
                                Code::Unavailable
                                    | Code::Aborted
                                    | Code::DeadlineExceeded
                                    | Code::Cancelled
                            ),
                            "{status:?}"
                        ),
                    }
                }
                acknowledged
            }));
        }
    }
    // Creates until `count` more than `from` are acknowledged.
    let acknowledged_past = |from: usize, count: usize, what: &'static str| {
        let progress = progress.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while progress.load(std::sync::atomic::Ordering::Relaxed) < from + count {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    acknowledged_past(0, 20, "no creates before the leader's loss").await;
    // Find and kill the leader.
    let mut leader = None;
    for (index, member) in members.iter().enumerate() {
        let mut client = member.client().await;
        let status = client.status().await.unwrap();
        if status.header().unwrap().member_id() == status.leader() {
            leader = Some(index);
        }
    }
    let leader = leader.expect("a leader");
    members[leader].kill9();
    let at_loss = progress.load(std::sync::atomic::Ordering::Relaxed);
    // A new leader takes over: creates are acknowledged again.
    acknowledged_past(at_loss, 20, "no creates after the leader's loss").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 10,
        "only {} creates went through",
        acknowledged.len()
    );
    for server in [&a, &b] {
        for token in &acknowledged {
            eventually("an acknowledged create is everywhere", || async {
                decision(server, token, &["mail.send"]).await == pb::Decision::Allowed
            })
            .await;
        }
    }
    let _ = members.remove(leader);
}

/// In fleet mode the audit trail lives in etcd, written in the same
/// transaction as the change: any sidecar lists the events of every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_shared_through_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let (key_id, _) = create_on(&a, "acme", &["mail.send"]).await;
    // Every kind of change, alternating sidecars: each writes its event.
    let update = |name: Option<&str>, enabled: Option<bool>| pb::UpdateKeyRequest {
        key_id: key_id.clone(),
        name: name.map(str::to_owned),
        enabled,
        ..Default::default()
    };
    for (server, change) in [
        (&b, update(Some("renamed"), None)),
        (&a, update(None, Some(false))),
        (&b, update(None, Some(true))),
    ] {
        eventually("the key reaches the sidecar", || {
            let (server, key_id) = (server, key_id.clone());
            async move {
                server
                    .manage()
                    .await
                    .get_key(bearer(&server.admin_token, pb::GetKeyRequest { key_id }))
                    .await
                    .is_ok()
            }
        })
        .await;
        server
            .manage()
            .await
            .update_key(bearer(&server.admin_token, change))
            .await
            .unwrap();
    }
    a.manage()
        .await
        .rotate_key(bearer(
            &a.admin_token,
            pb::RotateKeyRequest {
                key_id: key_id.clone(),
                overlap: None,
            },
        ))
        .await
        .unwrap();
    b.manage()
        .await
        .delete_key(bearer(
            &b.admin_token,
            pb::DeleteKeyRequest {
                key_id: key_id.clone(),
            },
        ))
        .await
        .unwrap();
    for server in [&a, &b] {
        let events = server
            .manage()
            .await
            .list_audit_events(bearer(
                &server.admin_token,
                pb::ListAuditEventsRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = events.iter().map(|event| event.action.as_str()).collect();
        assert_eq!(
            actions,
            ["create", "update", "disable", "enable", "rotate", "delete"]
        );
        assert!(events.iter().all(|event| event.key_id == key_id));
    }
}

/// `fleet import` holds records to the rules `restore` and the API hold them
/// to: the per-account cap counts the keys already in etcd, and a record the
/// fleet's catalog cannot hold (a scope written under another catalog) is
/// refused with nothing copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_import_keeps_the_cap_and_the_catalog() {
    use scopegate::scope::{Catalog, SharedCatalog, DEFAULT_CATALOG_TOML};
    use scopegate::store::{KeyRecord, Store};
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &["--max-keys-per-account", "2"]);
    create_on(&a, "acme", &["mail.send"]).await;
    create_on(&a, "acme", &["mail.send"]).await;
    let import = |data: &std::path::Path| {
        let out = std::process::Command::new(common::BIN)
            .args([
                "fleet",
                "import",
                "--max-keys-per-account",
                "2",
                "--data-dir",
            ])
            .arg(data)
            .args(["--etcd-endpoints", &etcd.endpoint])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A standalone store written under a catalog with one more resource.
    let wider = std::sync::Arc::new(
        Catalog::from_toml(&format!(
            "{DEFAULT_CATALOG_TOML}\n[[resource]]\nname = \"x\"\nverbs = [\"read\"]\n"
        ))
        .unwrap(),
    );
    let write_store = |name: &str, account: &str, scopes: &[&str]| {
        let data = dir.path().join(name);
        let shared: SharedCatalog = std::sync::Arc::new(arc_swap::ArcSwap::new(wider.clone()));
        let store = Store::open(&data, shared).unwrap();
        let record = KeyRecord {
            version: 2,
            key_id: vec![name.len() as u8; 16],
            account_id: account.into(),
            name: name.into(),
            scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
            secret_hash: vec![3; 32],
            ..Default::default()
        };
        store.import(vec![record], vec![]).unwrap();
        drop(store);
        data
    };
    // acme holds 2 of 2 in etcd: one more from a standalone store is refused.
    let (ok, stderr) = import(&write_store("third", "acme", &["mail.send"]));
    assert!(!ok && stderr.contains("maximum of 2"), "{stderr}");
    // A scope the fleet's catalog does not have.
    let (ok, stderr) = import(&write_store("skewed", "globex", &["x.read"]));
    assert!(!ok && stderr.contains("x.read"), "{stderr}");
    let mut client = etcd.client().await;
    let counter = client
        .get("/scopegate/v1/accounts/acme", None)
        .await
        .unwrap();
    assert_eq!(counter.kvs()[0].value_str().unwrap(), "2");
    let globex = client
        .get("/scopegate/v1/accounts/globex", None)
        .await
        .unwrap();
    assert!(globex.kvs().is_empty());
}
