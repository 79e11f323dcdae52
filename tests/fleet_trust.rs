//! Fleet mode as an operator having a bad day sees it, on real etcd: a
//! restore from a snapshot never voids an acknowledged revocation, and one
//! record a sidecar cannot use never stops it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fleet::{create_on, decision, eventually, fleet};
use common::{bearer, Etcd, Server};
use scopegate::grpc::pb;
use scopegate::store::KeyRecord;
use tonic::Code;

/// DeleteKey through `server`, retried while the sidecar reconnects.
async fn delete_on(server: &Server, key_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = server
            .manage()
            .await
            .delete_key(bearer(
                &server.admin_token,
                pb::DeleteKeyRequest {
                    key_id: key_id.into(),
                },
            ))
            .await;
        match result {
            Ok(_) => return,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("DeleteKey: {status:?}"),
        }
    }
}

/// Restoring etcd from a snapshot takes its revision back: a sidecar that
/// went on from the revision it had applied would hear nothing of what
/// follows. Every answer after the restore must agree with etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restore_never_voids_an_acknowledged_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let sidecar = fleet(dir.path(), "a", &etcd, &[]);
    let (kept_id, kept) = create_on(&sidecar, "acme", &["mail.send"]).await;
    let snapshot = dir.path().join("etcd.snapshot");
    etcd.snapshot(&snapshot);
    // After the snapshot: a key the restore will drop, and enough changes to
    // take the sidecar's applied revision well past the snapshot's.
    let (_, lost) = create_on(&sidecar, "acme", &["mail.send"]).await;
    for _ in 0..5 {
        let (id, _) = create_on(&sidecar, "other", &["stats.read"]).await;
        delete_on(&sidecar, &id).await;
    }

    etcd.restore(&snapshot);
    // The revocation, acknowledged after the restore, holds on this sidecar.
    delete_on(&sidecar, &kept_id).await;
    assert_eq!(
        decision(&sidecar, &kept, &["mail.send"]).await,
        pb::Decision::UnknownKey,
        "an acknowledged DeleteKey answers UNKNOWN_KEY on the sidecar that made it"
    );
    // And the sidecar agrees with etcd on what the restore dropped.
    eventually("the key the restore dropped is denied", || async {
        decision(&sidecar, &lost, &["mail.send"]).await == pb::Decision::UnknownKey
    })
    .await;
    let fresh = fleet(dir.path(), "fresh", &etcd, &[]);
    for token in [&kept, &lost] {
        assert_eq!(
            decision(&fresh, token, &["mail.send"]).await,
            decision(&sidecar, token, &["mail.send"]).await,
            "the restored-upon sidecar answers as a fresh one"
        );
    }
    let metrics = sidecar.http_get("/metrics").1;
    assert!(
        metrics.contains("scopegate_fleet_resyncs_total 2"),
        "a full read at start and one after the restore:\n{metrics}"
    );
}

fn catalog_with_extra_scope(path: &Path) {
    let builtin = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/catalogs/default.toml"
    ))
    .unwrap();
    std::fs::write(
        path,
        format!("{builtin}\n[[resource]]\nname = \"x\"\nverbs = [\"read\"]\n"),
    )
    .unwrap();
}

fn builtin_catalog(path: &Path) {
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/catalogs/default.toml"),
        path,
    )
    .unwrap();
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

/// Catalog skew during a rolling upgrade (a key with a scope one sidecar does
/// not know), a bad `etcdctl put` (an unparsable CIDR) and a record filed
/// under another key's id: each is denied on the sidecar that cannot use it,
/// counted and logged, and never stops a start, a reload or the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unfit_record_never_stops_a_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let newer = dir.path().join("newer.toml");
    catalog_with_extra_scope(&newer);
    let older = dir.path().join("older.toml");
    builtin_catalog(&older);
    let newer_arg = newer.to_str().unwrap();
    let older_arg = older.to_str().unwrap();
    let a = fleet(dir.path(), "a", &etcd, &["--catalog", newer_arg]);
    let mut b = fleet(dir.path(), "b", &etcd, &["--catalog", older_arg]);

    let (_, good) = create_on(&a, "acme", &["mail.send"]).await;
    let (skewed_id, skewed) = create_on(&a, "acme", &["x.read", "mail.send"]).await;
    // Two records written by hand, as a bad `etcdctl put` would.
    let mut client = etcd.client().await;
    let bad_cidr = KeyRecord {
        version: KeyRecord::VERSION,
        key_id: vec![7; 16],
        account_id: "acme".into(),
        name: "bad cidr".into(),
        scopes: vec!["mail.send".into()],
        secret_hash: vec![1; 32],
        allowed_cidrs: vec!["not-a-cidr".into()],
        ..Default::default()
    };
    let misfiled = KeyRecord {
        key_id: vec![9; 16],
        name: "misfiled".into(),
        allowed_cidrs: vec![],
        ..bad_cidr.clone()
    };
    let path = |id: &[u8]| {
        let id = scopegate::token::KeyId::from_bytes(id.try_into().unwrap());
        format!("/scopegate/v1/keys/{id}")
    };
    client
        .put(
            path(&[7; 16]),
            prost::Message::encode_to_vec(&bad_cidr),
            None,
        )
        .await
        .unwrap();
    client
        .put(
            path(&[8; 16]),
            prost::Message::encode_to_vec(&misfiled),
            None,
        )
        .await
        .unwrap();

    eventually("B follows the watch past the unfit records", || async {
        decision(&b, &good, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    let (_, later) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("B keeps following", || async {
        decision(&b, &later, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    assert_eq!(
        decision(&b, &skewed, &["mail.send"]).await,
        pb::Decision::UnknownKey,
        "B's catalog lacks x.read: the whole key is denied there"
    );
    assert_eq!(
        decision(&a, &skewed, &["x.read"]).await,
        pb::Decision::Allowed
    );
    let unfit = "scopegate_fleet_unfit_records";
    let metrics = b.http_get("/metrics").1;
    assert_eq!(gauge(&metrics, unfit), Some(3.0), "{metrics}");

    // B restarts on its mirror: it starts, serves the good keys, denies the rest.
    assert!(b.terminate(), "B drains and exits cleanly");
    let b = fleet(dir.path(), "b", &etcd, &["--catalog", older_arg]);
    assert_eq!(
        decision(&b, &good, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&b, &skewed, &["mail.send"]).await,
        pb::Decision::UnknownKey
    );
    assert_eq!(gauge(&b.http_get("/metrics").1, unfit), Some(3.0));
    let log = b.log();
    assert_eq!(
        log.lines().filter(|line| line.contains(&skewed_id)).count(),
        1,
        "each unfit record is logged once per process:\n{log}"
    );

    // A catalog reload that adds the scope is taken, and the key works there.
    catalog_with_extra_scope(&older);
    b.signal("HUP");
    // (Probed with mail.send: x.read is an unknown scope to B until the reload.)
    eventually("B reloads the catalog and publishes the key", || async {
        decision(&b, &skewed, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    assert_eq!(
        decision(&b, &skewed, &["x.read"]).await,
        pb::Decision::Allowed
    );
    assert_eq!(gauge(&b.http_get("/metrics").1, unfit), Some(2.0));
    // A restart of A too: the hand-written records stop nothing.
    drop(a);
    let a = fleet(dir.path(), "a", &etcd, &["--catalog", newer_arg]);
    assert_eq!(
        decision(&a, &good, &["mail.send"]).await,
        pb::Decision::Allowed
    );
}

/// Two deployments share one etcd under different prefixes: a page token
/// that names the other prefix's audit range (or all of etcd) is refused,
/// never followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_page_tokens_cannot_cross_deployments() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let ours = fleet(dir.path(), "ours", &etcd, &[]);
    let theirs = fleet(
        dir.path(),
        "theirs",
        &etcd,
        &["--etcd-prefix", "/other-prefix/"],
    );
    for _ in 0..3 {
        create_on(&ours, "acme", &["mail.send"]).await;
        create_on(&theirs, "acme", &["stats.read"]).await;
    }
    let list = |token: &str| pb::ListAuditEventsRequest {
        account_id: "acme".into(),
        page_size: 1,
        page_token: token.into(),
        ..Default::default()
    };
    let mut manage = ours.manage().await;
    let first = manage
        .list_audit_events(bearer(&ours.admin_token, list("")))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let encode = |raw: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    for forged in [
        encode(b"/other-prefix/audit/"),
        encode(b"/"),
        encode(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00/other-prefix/audit/"),
    ] {
        let status = manage
            .list_audit_events(bearer(&ours.admin_token, list(&forged)))
            .await
            .expect_err("a forged page token");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // Our own pages hold our three events and none of theirs.
    let (mut events, mut token) = (first.events, first.next_page_token);
    while !token.is_empty() {
        let page = manage
            .list_audit_events(bearer(&ours.admin_token, list(&token)))
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        token = page.next_page_token;
    }
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|event| event.after.as_ref().unwrap().scopes == ["mail.send"]));
}

/// Polls for up to `seconds`.
async fn within<F, Fut>(seconds: u64, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !probe().await {
        assert!(Instant::now() < deadline, "not within {seconds} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sidecar whose etcd member is cut off from the rest of its cluster (the
/// other two stopped: no leader) must not count that member's replies as
/// contact: revocations made on the majority would never reach it, so with
/// `--max-staleness-secs` its decisions fail closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_leader_is_no_contact() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Etcd::cluster(dir.path(), 3);
    let sidecar = fleet(dir.path(), "a", &members[0], &["--max-staleness-secs", "3"]);
    let (_, token) = create_on(&sidecar, "acme", &["mail.send"]).await;
    assert_eq!(
        decision(&sidecar, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    members[1].kill9();
    members[2].kill9();
    within(
        40,
        "checks fail closed once the member has no leader",
        || async {
            let answer = sidecar
                .authorize()
                .await
                .check(common::check(&token, &["mail.send"]))
                .await;
            matches!(answer, Err(status) if status.code() == Code::Unavailable)
        },
    )
    .await;
    assert!(!common::serving(sidecar.channel().await, "scopegate.v1.FleetSync").await);
    members[1].restart();
    members[2].restart();
    within(40, "checks come back with the leader", || async {
        let answer = sidecar
            .authorize()
            .await
            .check(common::check(&token, &["mail.send"]))
            .await;
        matches!(answer, Ok(response) if response.get_ref().allowed)
    })
    .await;
}

fn applied_revision(server: &Server) -> f64 {
    gauge(
        &server.http_get("/metrics").1,
        "scopegate_fleet_applied_revision",
    )
    .unwrap()
}

/// The applied revision moves only on events of this deployment's keys, never
/// on a progress reply (which etcd before 3.4.25 / 3.5.8 can send ahead of a
/// queued event): writes under another prefix move etcd's revision and
/// bring progress replies, and the applied revision stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applied_revision_moves_only_on_events() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let ours = fleet(dir.path(), "ours", &etcd, &[]);
    create_on(&ours, "acme", &["mail.send"]).await;
    let before = applied_revision(&ours);
    let mut client = etcd.client().await;
    for index in 0..20 {
        client
            .put(format!("/elsewhere/{index}"), "x", None)
            .await
            .unwrap();
    }
    // Idle for over two progress periods: progress replies have come.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(common::serving(ours.channel().await, "scopegate.v1.FleetSync").await);
    assert_eq!(applied_revision(&ours), before);
    let (_, token) = create_on(&ours, "acme", &["mail.send"]).await;
    assert!(applied_revision(&ours) > before + 20.0);
    assert_eq!(
        decision(&ours, &token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
}

/// Audit volume in fleet mode: an account's events in etcd are bounded by
/// count, so a busy tenant cannot push a shared etcd to its space quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_audit_trail_in_etcd_is_bounded_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let server = fleet(
        dir.path(),
        "a",
        &etcd,
        &["--audit-max-events-per-account", "5"],
    );
    common::assert_audit_bound_of_five(&server).await;
    // The events themselves are gone from etcd, not just hidden.
    let listing = etcd.ctl(&["get", "--prefix", "/scopegate/v1/audit/", "--keys-only"]);
    let held = listing.lines().filter(|line| !line.is_empty()).count();
    assert_eq!(held, 6, "five of acme, one of globex:\n{listing}");
}

/// A record says which release it needs: a key with rate limits is written
/// as version 3, so a sidecar from before limits (which reads up to 2)
/// denies it instead of letting it through unlimited; a key without stays
/// version 2. A record newer than this build reads is denied here the same
/// way, and nobody can change it through this sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_needing_a_newer_release_is_denied_not_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let limited = a
        .admin_create(pb::CreateKeyRequest {
            rate_limits: vec![pb::RateLimit {
                name: "default".into(),
                limit: 100,
                window: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }],
            ..common::create("acme", "limited", &["mail.send"])
        })
        .await
        .unwrap();
    let (plain_id, plain) = create_on(&a, "acme", &["mail.send"]).await;
    let limited_id = limited.key.unwrap().key_id;
    let mut client = etcd.client().await;
    let path = |id: &str| format!("/scopegate/v1/keys/{id}");
    let reader = client.clone();
    let get = move |id: String| {
        let mut reader = reader.clone();
        async move {
            let got = reader.get(path(&id), None).await.unwrap();
            let record: KeyRecord = prost::Message::decode(got.kvs()[0].value()).unwrap();
            record
        }
    };
    assert_eq!(get(limited_id.clone()).await.version, 3);
    assert_eq!(get(plain_id.clone()).await.version, 2);
    // A later release's record (version 5) of the plain key: denied here.
    let newer = KeyRecord {
        version: KeyRecord::VERSION + 1,
        ..get(plain_id.clone()).await
    };
    client
        .put(path(&plain_id), prost::Message::encode_to_vec(&newer), None)
        .await
        .unwrap();
    eventually("the newer record is denied", || async {
        decision(&a, &plain, &["mail.send"]).await == pb::Decision::UnknownKey
    })
    .await;
    let rename = pb::UpdateKeyRequest {
        key_id: plain_id.clone(),
        name: Some("stripped".into()),
        ..Default::default()
    };
    let refused = a
        .manage()
        .await
        .update_key(bearer(&a.admin_token, rename))
        .await
        .expect_err("a record this build cannot read is never rewritten by it");
    assert_ne!(refused.code(), tonic::Code::Ok);
    assert_eq!(get(plain_id).await.version, KeyRecord::VERSION + 1);

    // A later release's field that needed no new version (field 99 here):
    // Check still decides on the key, but no change made here drops it.
    let (extended_id, extended) = create_on(&a, "acme", &["mail.send"]).await;
    let mut bytes = prost::Message::encode_to_vec(&get(extended_id.clone()).await);
    bytes.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
    client
        .put(path(&extended_id), bytes.clone(), None)
        .await
        .unwrap();
    let rename = pb::UpdateKeyRequest {
        key_id: extended_id.clone(),
        name: Some("stripped".into()),
        ..Default::default()
    };
    let refused = a
        .manage()
        .await
        .update_key(bearer(&a.admin_token, rename))
        .await
        .expect_err("a change would drop the field this build does not know");
    assert!(refused.message().contains("upgrade"), "{refused:?}");
    let stored = client.get(path(&extended_id), None).await.unwrap();
    assert_eq!(stored.kvs()[0].value(), bytes.as_slice());
    assert_eq!(
        decision(&a, &extended, &["mail.send"]).await,
        pb::Decision::Allowed
    );
}

/// An account's (or a key's) audit page is read through its index, never by
/// walking the deployment's events: 300 events of another tenant, written
/// so that reading any of them fails, stop neither acme's listing by account
/// nor the admin's listing by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_audit_page_never_reads_another_accounts_events() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let manager = a
        .admin_create(common::create_manager("acme", "auditor", &["mail.send"]))
        .await
        .unwrap();
    let (key_id, _) = create_on(&a, "acme", &["mail.send"]).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut client = etcd.client().await;
    for index in 0..300u32 {
        let path = format!(
            "/scopegate/v1/audit/{:016}-{index:08x}",
            now_ms - 1000 + i64::from(index)
        );
        client
            .put(path, b"\xff not an event".to_vec(), None)
            .await
            .unwrap();
    }
    let rename = pb::UpdateKeyRequest {
        key_id: key_id.clone(),
        name: Some("renamed".into()),
        ..Default::default()
    };
    a.manage()
        .await
        .update_key(bearer(&a.admin_token, rename))
        .await
        .unwrap();
    let list = |credential: &str, account: &str, key: &str| {
        let request = bearer(
            credential,
            pb::ListAuditEventsRequest {
                account_id: account.into(),
                key_id: key.into(),
                page_size: 100,
                ..Default::default()
            },
        );
        let a = &a;
        async move { a.manage().await.list_audit_events(request).await }
    };
    let by_account = list(&manager.token, "", "")
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = by_account
        .iter()
        .map(|event| event.action.as_str())
        .collect();
    assert_eq!(actions, ["create", "create", "update"]);
    let by_key = list(&a.admin_token, "", &key_id)
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = by_key.iter().map(|event| event.action.as_str()).collect();
    assert_eq!(actions, ["create", "update"]);
    // The whole deployment's listing does meet them: they are there.
    assert!(list(&a.admin_token, "", "").await.is_err());
}
