//! A mutation decides on its caller as the store holds it when the change
//! applies, never on the snapshot it authenticated with.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::store::{event, seeded_store};
use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::{Change, Store, StoreError};

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
