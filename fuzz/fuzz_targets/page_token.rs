//! Page tokens and the cursors inside them, on any bytes: a token decodes
//! only under the listing (binding) that issued it, round-trips its cursor,
//! and a ListKeys or audit cursor, whatever its bytes, never yields a record
//! or event of another account (a sled store with two accounts whose names
//! share a prefix, built once).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use scopegate::manage::paging::{next_page_token, page, page_binding};
use scopegate::scope::Catalog;
use scopegate::store::{KeyRecord, Store};
use scopegate::token::KeyId;

fn store() -> &'static (Store, tokio::runtime::Runtime) {
    static STORE: OnceLock<(Store, tokio::runtime::Runtime)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _entered = runtime.enter();
            let dir = std::env::temp_dir().join(format!("scopegate-fuzz-page-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let catalog = Arc::new(arc_swap::ArcSwap::from_pointee(Catalog::builtin()));
            let store = Store::open(&dir, catalog).unwrap();
            let records = (0u8..20).map(|n| KeyRecord {
                version: KeyRecord::VERSION,
                key_id: KeyId::from_bytes([n; 16]).as_bytes().to_vec(),
                account_id: if n % 2 == 0 { "acme" } else { "acmf" }.into(),
                name: format!("k{n}"),
                scopes: vec!["mail.send".into()],
                secret_hash: vec![n; 32],
                ..Default::default()
            });
            store.import(records.collect(), Vec::new()).unwrap();
            (store, runtime)
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let acme = page_binding(&[b"ListKeys", b"acme"]);
    let other = page_binding(&[b"ListKeys", b"acmf"]);
    // Any cursor round-trips under its own binding and is refused elsewhere.
    let token = next_page_token(&acme, Some(rest.to_vec()));
    let (_, cursor) = page(i32::from(size), &token, &acme).expect("our own token");
    assert_eq!(cursor.as_deref(), Some(rest));
    assert!(page(i32::from(size), &token, &other).is_err());
    // Any text as a token: a page size in bounds, or a refusal.
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok((size, cursor)) = page(i32::from(size) - 128, text, &acme) {
            assert!((1..=1000).contains(&size));
            assert!(cursor.is_none() || page(10, text, &other).is_err());
        }
    }
    // Any cursor bytes against the store: acme's records only, or a refusal.
    let (store, runtime) = store();
    if let Ok((records, next)) = store.list(Some("acme"), Some(rest), 5) {
        assert!(records.iter().all(|record| record.account_id == "acme"));
        if let Some(next) = next {
            assert!(next.starts_with(b"acme\0"));
        }
    }
    // And against the audit log's account index: acme's events only.
    let filter = scopegate::store::AuditFilter {
        account_id: Some("acme".into()),
        ..Default::default()
    };
    if let Ok((events, _)) = runtime.block_on(store.audit_events(&filter, Some(rest.to_vec()), 5)) {
        assert!(events.iter().all(|event| event.account_id == "acme"));
    }
});
