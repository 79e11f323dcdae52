//! Promises that a one-line change could break silently, each with a test
//! that fails when it is broken (every one was checked by re-applying that
//! change): no reply before fdatasync, a failed fdatasync is never
//! acknowledged, a mutation decides on its caller as the store holds it under
//! the writer lock, and the pepper is really used.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{bearer, create, Server, Strace};
use scopegate::grpc::pb;
use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::{AuditEvent, Change, KeyRecord, Store, StoreError};
use scopegate::token::KeyId;
use sha2::Digest;
use tonic::Code;

/// With every fdatasync held for 300 ms by strace, no CreateKey answers
/// sooner: the reply waits for the sync (a lower bound, which a busy machine
/// only makes safer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_acknowledged_before_its_fdatasync_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let trace = dir.path().join("trace");
    let tracer = Strace::attach(
        &server,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=300000",
        ],
        &trace,
    );
    let mut manage = server.manage().await;
    for index in 0..3 {
        let started = Instant::now();
        manage
            .create_key(bearer(
                &server.admin_token,
                create("acme", &format!("k{index}"), &["mail.send"]),
            ))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "CreateKey answered after {took:?}, before its delayed fdatasync returned"
        );
    }
    tracer.detach();
    let syncs = std::fs::read_to_string(&trace).unwrap();
    assert!(syncs.contains("fdatasync("), "{syncs}");
}

/// An fdatasync that fails (EIO, injected by strace) fails the change with
/// UNAVAILABLE, the process stops non-zero, and after a restart every
/// acknowledged key is there and Check and GetKey agree on the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_is_never_acknowledged_and_the_restart_agrees_with_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    let kept = manage
        .create_key(bearer(
            &server.admin_token,
            create("acme", "kept", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let _tracer = Strace::attach(
        &server,
        &["-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO"],
        &dir.path().join("trace"),
    );
    let refused = manage
        .create_key(bearer(
            &server.admin_token,
            create("acme", "refused", &["mail.send"]),
        ))
        .await
        .expect_err("a change whose fdatasync failed");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("fdatasync"), "{refused:?}");
    let status = server.wait_exit(20).expect("the server stops");
    assert!(!status.success(), "it stops non-zero: {status:?}");

    let data = server.data_dir.clone();
    drop(manage);
    drop(server);
    let server = Server::start(&data, &[]);
    assert_eq!(
        common::decision(&server, &kept.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    let listed = server
        .manage()
        .await
        .list_keys(bearer(
            &server.admin_token,
            pb::ListKeysRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for key in listed.keys {
        let got = server
            .manage()
            .await
            .get_key(bearer(
                &server.admin_token,
                pb::GetKeyRequest {
                    key_id: key.key_id.clone(),
                },
            ))
            .await;
        assert!(got.is_ok(), "ListKeys and GetKey agree on {}", key.key_id);
    }
}

fn record(key_id: KeyId, name: &str, scopes: &[&str]) -> KeyRecord {
    KeyRecord {
        version: KeyRecord::VERSION,
        key_id: key_id.as_bytes().to_vec(),
        account_id: "acme".into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        secret_hash: vec![1; 32],
        ..Default::default()
    }
}

fn event(key_id: KeyId) -> AuditEvent {
    AuditEvent {
        key_id: key_id.as_bytes().to_vec(),
        account_id: "acme".into(),
        action: "test".into(),
        ..Default::default()
    }
}

#[derive(Debug)]
enum Refused {
    CallerGone,
    Store(#[allow(dead_code)] StoreError), // shown by Debug in a failure
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        Refused::Store(error)
    }
}

async fn seeded_store(dir: &std::path::Path) -> (Store, KeyId, KeyId) {
    let catalog: SharedCatalog = Arc::new(arc_swap::ArcSwap::from_pointee(Catalog::builtin()));
    let store = Store::open(dir, catalog).unwrap();
    let (caller, target) = (KeyId::random(), KeyId::random());
    for (key_id, name) in [(caller, "caller"), (target, "target")] {
        let change = Change::Create {
            record: record(key_id, name, &["mail.send"]),
            cap: 100,
            request: None,
        };
        store
            .mutate(vec![], move |_| {
                Ok::<_, StoreError>((change.clone(), event(key_id), ()))
            })
            .await
            .unwrap();
    }
    (store, caller, target)
}

/// The caller deletes-or-renames race at the store: `decide` must see the
/// caller's record as the store holds it when the change applies (read under
/// the writer lock), in both orders of a concurrent delete of the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutation_decides_on_its_caller_as_held_under_the_writer_lock() {
    for delete_first in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (store, caller, target) = seeded_store(dir.path()).await;
        let gate = Arc::new(Barrier::new(2));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let entered_tx = std::sync::Mutex::new(entered_tx);
        // The first mutation holds the writer lock inside `decide` until released.
        let held = {
            let (gate, store) = (gate.clone(), store.clone());
            let deletes = delete_first;
            tokio::spawn(async move {
                let reads = if deletes {
                    vec![caller]
                } else {
                    vec![caller, target]
                };
                store
                    .mutate(reads, move |snapshot| {
                        entered_tx.lock().unwrap().send(()).unwrap();
                        gate.wait();
                        let caller_record = snapshot.get(&caller).cloned();
                        let Some(caller_record) = caller_record else {
                            return Err(Refused::CallerGone);
                        };
                        let change = if deletes {
                            Change::Delete(caller_record)
                        } else {
                            let mut renamed = snapshot.get(&target).unwrap().clone();
                            renamed.name = "renamed by caller".into();
                            Change::Update(renamed)
                        };
                        Ok((change, event(caller), ()))
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
            .await
            .unwrap();
        // The second starts while the first holds the lock.
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                let reads = if delete_first {
                    vec![caller, target]
                } else {
                    vec![caller]
                };
                store
                    .mutate(reads, move |snapshot| {
                        let caller_record = snapshot.get(&caller).cloned();
                        let Some(caller_record) = caller_record else {
                            return Err(Refused::CallerGone);
                        };
                        let change = if delete_first {
                            let mut renamed = snapshot.get(&target).unwrap().clone();
                            renamed.name = "renamed by caller".into();
                            Change::Update(renamed)
                        } else {
                            Change::Delete(caller_record)
                        };
                        Ok((change, event(caller), ()))
                    })
                    .await
            })
        };
        // Time for the second to read anything it reads before the lock.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let release = gate.clone();
        tokio::task::spawn_blocking(move || release.wait())
            .await
            .unwrap();
        let first = held.await.unwrap();
        let second = waiting.await.unwrap();
        let target_name = store.get(&target).unwrap().unwrap().name;
        assert!(first.is_ok(), "delete_first={delete_first}: {first:?}");
        if delete_first {
            assert!(
                matches!(second, Err(Refused::CallerGone)),
                "a caller deleted before its change applies cannot act: {second:?}"
            );
            assert_eq!(target_name, "target");
        } else {
            assert!(second.is_ok(), "{second:?}");
            assert_eq!(target_name, "renamed by caller");
        }
        assert!(store.get(&caller).unwrap().is_none());
    }
}

/// `--pepper-file` keys the secret hash: a key made with a pepper works only
/// with that pepper, and no plain SHA-256 of its secret is on disk.
#[tokio::test]
async fn the_pepper_keys_every_secret_hash() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write_pepper = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let pepper = write_pepper("pepper", b"a pepper of thirty-two bytes or more!!");
    let other = write_pepper("other", b"another pepper of thirty-two bytes, or more");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--pepper-file", &pepper]);
    let key = server
        .admin_create(create("acme", "peppered", &["mail.send"]))
        .await
        .unwrap();
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    drop(server);

    let plain_hash = |token: &str| -> [u8; 32] {
        let secret = &token.rsplit('.').next().unwrap()[..43];
        sha2::Sha256::digest(secret.as_bytes()).into()
    };
    assert!(
        !common::disk_holds(&data, &plain_hash(&key.token)),
        "a plain SHA-256 of the secret is on disk"
    );
    // The same scan finds it where there is no pepper (it can fail).
    let unpeppered = dir.path().join("unpeppered");
    let server = Server::start(&unpeppered, &[]);
    let plain_key = server
        .admin_create(create("acme", "plain", &["mail.send"]))
        .await
        .unwrap();
    drop(server);
    assert!(common::disk_holds(
        &unpeppered,
        &plain_hash(&plain_key.token)
    ));

    for args in [vec![], vec!["--pepper-file", other.as_str()]] {
        let server = Server::start(&data, &args);
        assert_eq!(
            common::decision(&server, &key.token, &["mail.send"]).await,
            pb::Decision::UnknownKey,
            "without the pepper it was made with ({args:?})"
        );
    }
    let server = Server::start(&data, &["--pepper-file", &pepper]);
    assert_eq!(
        common::decision(&server, &key.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
}

/// Audit events past `--audit-retention-days` are pruned (standalone: in
/// bounded batches every 256 changes): here with a retention of 1 ms, set
/// through the store as the flag sets it; the listing through the account
/// index agrees with the full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_past_retention_are_pruned() {
    use scopegate::store::AuditFilter;
    let dir = tempfile::tempdir().unwrap();
    let (store, _, target) = seeded_store(dir.path()).await;
    store.set_audit_retention(Duration::from_millis(1));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    for index in 0..300 {
        let mut renamed = store.get(&target).unwrap().unwrap();
        renamed.name = format!("name {index}");
        let stamped = AuditEvent {
            time_unix_ms: now(),
            ..event(target)
        };
        store
            .mutate(vec![], move |_| {
                Ok::<_, StoreError>((Change::Update(renamed.clone()), stamped.clone(), ()))
            })
            .await
            .unwrap();
        if index % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let listed = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .audit_events(&filter, None, 1000)
                .await
                .unwrap()
                .0
                .len()
        }
    };
    let everything = listed(AuditFilter::default()).await;
    assert!(
        everything < 302,
        "{everything} of 302 events kept with a 1 ms retention"
    );
    assert!(everything >= 300 - 256, "only events before the prune went");
    let by_account = listed(AuditFilter {
        account_id: Some("acme".into()),
        ..AuditFilter::default()
    })
    .await;
    assert_eq!(by_account, everything, "the account's listing agrees");
}

/// CreateKey, UpdateKey, RotateKey and DeleteKey each decide on their caller
/// as the store holds it when the change applies, not as it authenticated:
/// a manager narrowed after authenticating cannot use the scope it lost, and
/// one deleted after authenticating cannot act at all. Deterministic: the
/// stale `Caller` is held across the admin's change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_decides_on_its_caller_as_held_now() {
    use scopegate::manage::{Caller, KeyChange, ManageError, Manager, NewKey};
    const ADMIN: &str = "admin-token-for-the-stale-caller-test";
    let dir = tempfile::tempdir().unwrap();
    let shared: SharedCatalog = Arc::new(arc_swap::ArcSwap::new(Arc::new(Catalog::builtin())));
    let store = Store::open(dir.path(), shared.clone()).unwrap();
    store.load().unwrap();
    let format = scopegate::token::TokenFormat::new("SG", None).unwrap();
    let manager = Manager::new(store, shared, format, ADMIN, 100);
    let admin = manager.authenticate(Some(ADMIN)).unwrap();
    let new_key = |scopes: &[&str]| NewKey {
        account_id: "acme".into(),
        name: "k".into(),
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
        ..NewKey::default()
    };
    const MANAGER: [&str; 5] = [
        "api_keys.create",
        "api_keys.update",
        "api_keys.delete",
        "mail.send",
        "stats.read",
    ];
    let (target, _) = manager
        .create(&admin, new_key(&["stats.read"]))
        .await
        .unwrap();
    let (held, token) = manager.create(&admin, new_key(&MANAGER)).await.unwrap();
    let stale: Caller = manager.authenticate(Some(&token)).unwrap();
    // Narrowed after authenticating: stats.read is gone.
    let narrow = KeyChange {
        key_id: held.key_id.clone(),
        scopes: MANAGER[..4].iter().map(|scope| scope.to_string()).collect(),
        ..KeyChange::default()
    };
    manager.update(&admin, narrow).await.unwrap();
    let escalation = |result: Result<(), ManageError>, what: &str| match result {
        Err(ManageError::Escalation(_) | ManageError::TargetStronger { .. }) => {}
        other => panic!("{what} by a narrowed caller: {other:?}"),
    };
    escalation(
        manager
            .create(&stale, new_key(&["stats.read"]))
            .await
            .map(drop),
        "CreateKey of stats.read",
    );
    let widen = KeyChange {
        key_id: target.key_id.clone(),
        name: Some("renamed".into()),
        ..KeyChange::default()
    };
    escalation(
        manager.update(&stale, widen).await.map(drop),
        "UpdateKey of a stats.read key",
    );
    escalation(
        manager
            .rotate(&stale, &target.key_id, Duration::ZERO)
            .await
            .map(drop),
        "RotateKey of a stats.read key",
    );
    escalation(
        manager.delete(&stale, &target.key_id).await,
        "DeleteKey of a stats.read key",
    );
    // Deleted after authenticating: nothing, not even within its scopes.
    let (mail, _) = manager
        .create(&admin, new_key(&["mail.send"]))
        .await
        .unwrap();
    manager.delete(&admin, &held.key_id).await.unwrap();
    let gone = |result: Result<(), ManageError>, what: &str| {
        assert!(
            matches!(result, Err(ManageError::BadCredentials)),
            "{what} by a deleted caller: {result:?}"
        )
    };
    gone(
        manager
            .create(&stale, new_key(&["mail.send"]))
            .await
            .map(drop),
        "CreateKey",
    );
    gone(
        manager
            .rotate(&stale, &mail.key_id, Duration::ZERO)
            .await
            .map(drop),
        "RotateKey",
    );
    gone(manager.delete(&stale, &mail.key_id).await, "DeleteKey");
    assert!(manager.get(&admin, &mail.key_id).is_ok());
}
