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
    /// `None` for a key with no lifecycle limits: it costs one branch.
    pub limits: Option<Box<KeyLimits>>,
}

/// What restricts a key beyond its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyLimits {
    /// Unix ms; 0: valid from creation.
    pub not_before_ms: i64,
    /// Unix ms; 0: never expires.
    pub expire_ms: i64,
    pub disabled: bool,
    /// The secret before the last rotation and when it stops (unix ms).
    pub previous: Option<([u8; 32], i64)>,
    /// Empty: any address.
    pub cidrs: Vec<ipnet::IpNet>,
    /// Returned with allowed decisions.
    pub metadata: Option<Arc<Metadata>>,
}

/// A key's metadata, in key order.
pub type Metadata = Vec<(String, String)>;

impl KeyLimits {
    /// Whether anything here can deny or annotate: keys without limits keep
    /// `AuthEntry::limits` at `None`.
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }

    pub fn is_timed(&self) -> bool {
        self.not_before_ms != 0 || self.expire_ms != 0 || self.previous.is_some()
    }
}

type KeyMap = papaya::HashMap<KeyId, Arc<AuthEntry>, KeyIdHash>;

/// The keys Check reads. A full resync (fleet mode) swaps the whole map at
/// once, so a reader sees the old set or the new one, never a mix.
#[derive(Default)]
pub struct KeyTable {
    keys: arc_swap::ArcSwap<KeyMap>,
}

/// Key ids come from the OS CSPRNG and only the server mints them, so their
/// bits are already a uniform hash that no client can steer: the table uses
/// them as they are instead of running SipHash on every Check. A client picks
/// the ids it looks up, not the ids stored, so it cannot build collisions.
#[derive(Clone, Default)]
pub struct KeyIdHash;

impl std::hash::BuildHasher for KeyIdHash {
    type Hasher = KeyIdHasher;
    fn build_hasher(&self) -> KeyIdHasher {
        KeyIdHasher(0)
    }
}

pub struct KeyIdHasher(u64);

impl std::hash::Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by KeyId (one write_u64); a plain fold for completeness.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x100000001b3);
        }
    }
}

impl KeyTable {
    pub fn get(&self, key_id: &KeyId) -> Option<Arc<AuthEntry>> {
        self.keys.load().pin().get(key_id).cloned()
    }

    /// Runs `f` on the entry without touching its reference count.
    pub fn with<R>(&self, key_id: &KeyId, f: impl FnOnce(Option<&AuthEntry>) -> R) -> R {
        let map = self.keys.load();
        let keys = map.pin();
        f(keys.get(key_id).map(|entry| &**entry))
    }

    pub fn insert(&self, key_id: KeyId, entry: Arc<AuthEntry>) {
        self.keys.load().pin().insert(key_id, entry);
    }

    pub fn remove(&self, key_id: &KeyId) {
        self.keys.load().pin().remove(key_id);
    }

    /// Replaces every entry at once.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (KeyId, Arc<AuthEntry>)>) {
        let map = KeyMap::default();
        {
            let pinned = map.pin();
            for (key_id, entry) in entries {
                pinned.insert(key_id, entry);
            }
        }
        self.keys.store(Arc::new(map));
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.load().is_empty()
    }
}
