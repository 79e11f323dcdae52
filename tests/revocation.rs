//! A revoked or narrowed key can never act on its old rights: every mutation
//! by an API key is decided on the caller's record as the store holds it
//! inside the writer lock, not on what it held when it authenticated.
//!
//! These drive the real `Manager` and `Store` (real sled files) with a caller
//! that authenticated *before* an admin change was acknowledged: exactly the
//! interleaving a flood of requests from a stolen key produces against a
//! concurrent revocation.

use std::sync::Arc;

use scopegate::manage::{Caller, KeyChange, ManageError, Manager, NewKey};
use scopegate::scope::{Access, Catalog, SharedCatalog};
use scopegate::store::Store;
use scopegate::token::TokenFormat;

const ADMIN: &str = "admin-token-for-tests-0123456789";

async fn manager(dir: &std::path::Path) -> Manager {
    let catalog: SharedCatalog = Arc::new(arc_swap::ArcSwap::from_pointee(Catalog::builtin()));
    let store = Store::open(dir, catalog.clone()).unwrap();
    store.load().unwrap();
    Manager::new(
        store,
        catalog,
        TokenFormat::new("SG", None).unwrap(),
        ADMIN,
        2,
    )
}

fn new_key(name: &str, scopes: &[&str], api_keys: bool) -> NewKey {
    NewKey {
        account_id: "acme".into(),
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        grants: if api_keys {
            vec![("api_keys".into(), Access::Full)]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

fn change(key_id: &str, scopes: &[&str]) -> KeyChange {
    KeyChange {
        key_id: key_id.into(),
        name: None,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        grants: vec![],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_deleted_key_cannot_create_even_when_its_delete_frees_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(dir.path()).await;
    let admin = manager.authenticate(Some(ADMIN)).unwrap();
    // Cap 2: the stolen key K and one other fill the account.
    let (stolen, token) = manager
        .create(&admin, new_key("k", &["mail.send"], true))
        .await
        .unwrap();
    manager
        .create(&admin, new_key("other", &["mail.send"], false))
        .await
        .unwrap();
    // K authenticates (its request is in flight) ...
    let k = manager.authenticate(Some(&token)).unwrap();
    // ... the admin deletes K, which frees a slot ...
    manager.delete(&admin, &stolen.key_id).await.unwrap();
    // ... and K's create is applied afterwards: it must be refused.
    let result = manager
        .create(&k, new_key("escape", &["mail.send"], true))
        .await;
    assert!(
        matches!(result, Err(ManageError::BadCredentials)),
        "a deleted key created a key: {:?}",
        result.map(|(view, _)| view.key_id)
    );
    let listed = manager
        .list(
            &admin,
            scopegate::manage::ListQuery {
                account_id: "acme".into(),
                page_size: 0,
                page_token: String::new(),
            },
        )
        .unwrap()
        .0;
    assert_eq!(listed.len(), 1, "only `other` remains");
}

#[tokio::test]
async fn a_narrowed_key_acts_on_its_current_scopes_only() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(dir.path()).await;
    let admin = manager.authenticate(Some(ADMIN)).unwrap();
    let (k_view, token) = manager
        .create(&admin, new_key("k", &["mail.send", "stats.read"], true))
        .await
        .unwrap();
    let (target, _) = manager
        .create(&admin, new_key("target", &["stats.read"], false))
        .await
        .unwrap();
    let k: Caller = manager.authenticate(Some(&token)).unwrap();

    // The admin takes mail.send away from K: K may not grant it any more.
    manager
        .update(&admin, {
            let mut narrowed = change(&k_view.key_id, &["stats.read"]);
            narrowed.grants = vec![("api_keys".into(), Access::Full)];
            narrowed
        })
        .await
        .unwrap();
    let escalated = manager
        .update(&k, change(&target.key_id, &["mail.send"]))
        .await;
    assert!(
        matches!(&escalated, Err(ManageError::Escalation(missing)) if missing == &["mail.send"]),
        "{escalated:?}"
    );

    // The admin takes api_keys away from K: K may not update or delete.
    manager
        .update(&admin, change(&k_view.key_id, &["stats.read"]))
        .await
        .unwrap();
    let updated = manager
        .update(&k, change(&target.key_id, &["stats.read"]))
        .await;
    assert!(
        matches!(&updated, Err(ManageError::NeedsScope(scope)) if scope == "api_keys.update"),
        "{updated:?}"
    );
    let deleted = manager.delete(&k, &target.key_id).await;
    assert!(
        matches!(&deleted, Err(ManageError::NeedsScope(scope)) if scope == "api_keys.delete"),
        "{deleted:?}"
    );
    let created = manager
        .create(&k, new_key("x", &["stats.read"], false))
        .await;
    assert!(
        matches!(&created, Err(ManageError::NeedsScope(scope)) if scope == "api_keys.create"),
        "{:?}",
        created.map(|(view, _)| view.key_id)
    );
    // The target is untouched.
    assert_eq!(
        manager.get(&admin, &target.key_id).unwrap().scopes,
        ["stats.read"]
    );
}

#[tokio::test]
async fn a_deleted_key_cannot_update_or_delete() {
    let dir = tempfile::tempdir().unwrap();
    let manager = manager(dir.path()).await;
    let admin = manager.authenticate(Some(ADMIN)).unwrap();
    let (k_view, token) = manager
        .create(&admin, new_key("k", &["mail.send"], true))
        .await
        .unwrap();
    let (target, _) = manager
        .create(&admin, new_key("target", &["mail.send"], false))
        .await
        .unwrap();
    let k = manager.authenticate(Some(&token)).unwrap();
    manager.delete(&admin, &k_view.key_id).await.unwrap();
    let updated = manager
        .update(&k, change(&target.key_id, &["mail.send"]))
        .await;
    assert!(
        matches!(updated, Err(ManageError::BadCredentials)),
        "{updated:?}"
    );
    let deleted = manager.delete(&k, &target.key_id).await;
    assert!(
        matches!(deleted, Err(ManageError::BadCredentials)),
        "{deleted:?}"
    );
    assert!(manager.get(&admin, &target.key_id).is_ok());
}
