//! Store-level fixtures: records, audit events, and a store seeded with two
//! keys, for tests that drive `Store` directly.

use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::{AuditEvent, Change, FleetConfig, KeyRecord, Store, StoreError};
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

/// Where the truth lives: sled in the data dir, or etcd under a prefix.
#[derive(Clone, Copy)]
pub enum Truth<'a> {
    Standalone,
    Fleet { endpoint: &'a str, prefix: &'a str },
}

/// Opens a store on `truth` and loads it; a fleet mirror also follows etcd
/// until it holds etcd's state.
pub async fn open_store(dir: &std::path::Path, truth: Truth<'_>) -> Store {
    let catalog: SharedCatalog = Arc::new(arc_swap::ArcSwap::from_pointee(Catalog::builtin()));
    let fleet = match truth {
        Truth::Standalone => None,
        Truth::Fleet { endpoint, prefix } => Some(FleetConfig {
            endpoints: vec![endpoint.to_owned()],
            prefix: prefix.to_owned(),
            ca_file: None,
            cert_key: None,
            user: None,
        }),
    };
    // Reopening waits until the previous store's tasks let go of sled.
    let mut opened = Err(None);
    for _ in 0..200 {
        match Store::open_in(dir, catalog.clone(), fleet.clone(), 16 << 20) {
            Ok(store) => {
                opened = Ok(store);
                break;
            }
            Err(error) => {
                opened = Err(Some(error));
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    let store = opened.unwrap_or_else(|error| panic!("the store opens: {error:?}"));
    store.load().unwrap();
    if let Some(state) = store.sync_state() {
        store.follow_source();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !state.synced.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the mirror never synced with etcd"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    store
}
