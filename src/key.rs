//! What the hot path knows about a key, and the table it reads them from.
//!
//! The table is a lock-free concurrent map (papaya): `Check` reads without
//! taking any lock, and the store's single commit task publishes changes into
//! it after they are durable.

use std::sync::Arc;

use crate::scope::{KeyKind, ScopeSet};
use crate::token::KeyId;

/// The part of a key that `Check` needs. The full record (name, times) stays
/// in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEntry {
    pub secret_hash: [u8; 32],
    pub scopes: ScopeSet,
    pub account_id: Arc<str>,
    pub kind: KeyKind,
}

#[derive(Default)]
pub struct KeyTable {
    keys: papaya::HashMap<KeyId, Arc<AuthEntry>>,
}

impl KeyTable {
    pub fn get(&self, key_id: &KeyId) -> Option<Arc<AuthEntry>> {
        self.keys.pin().get(key_id).cloned()
    }

    /// Runs `f` on the entry without touching its reference count.
    pub fn with<R>(&self, key_id: &KeyId, f: impl FnOnce(Option<&AuthEntry>) -> R) -> R {
        let keys = self.keys.pin();
        f(keys.get(key_id).map(|entry| &**entry))
    }

    pub fn insert(&self, key_id: KeyId, entry: Arc<AuthEntry>) {
        self.keys.pin().insert(key_id, entry);
    }

    pub fn remove(&self, key_id: &KeyId) {
        self.keys.pin().remove(key_id);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
