//! Store-level fixtures: records, audit events, and a store seeded with two
//! keys, for tests that drive `Store` directly.

use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::{AuditEvent, Change, KeyRecord, Store, StoreError};
use scopegate::token::KeyId;
use std::sync::Arc;

pub fn record(key_id: KeyId, name: &str, scopes: &[&str]) -> KeyRecord {
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

pub fn event(key_id: KeyId) -> AuditEvent {
    AuditEvent {
        key_id: key_id.as_bytes().to_vec(),
        account_id: "acme".into(),
        action: "test".into(),
        ..Default::default()
    }
}

pub async fn seeded_store(dir: &std::path::Path) -> (Store, KeyId, KeyId) {
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
