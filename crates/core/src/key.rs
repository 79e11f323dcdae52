//! What the hot path knows about a key, and the table it reads them from.
//!
//! The table is a lock-free concurrent map (papaya): `Check` reads without
//! taking any lock, and the store's single commit task publishes changes into
//! it after they are durable.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::scope::{HighWords, KeyKind, ScopeId, ScopeSet};
use crate::token::KeyId;

/// The part of a key that `Check` needs. The full record (name, times) stays
/// in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEntry {
    pub secret_hash: [u8; 32],
    /// The key's scopes among the catalog's first 256 (all of them, for such
    /// a catalog); any past those sit in `extras` (see [`AuthEntry::new`]).
    low_scopes: [u64; 4],
    pub account_id: Arc<str>,
    pub kind: KeyKind,
    /// Everything else a decision may read; `None` for a key with only
    /// scopes, so such a key costs one branch.
    pub extras: Option<Box<KeyExtras>>,
    /// When the key was last used (authenticated), in minutes.
    pub used: UsageMark,
}

/// The coarse clock of "last used": unix minutes, kept by a one-second ticker
/// of the server (0 until it runs: nothing is marked then). Check reads it
/// with one relaxed load; a key's mark is written once a minute at most.
pub static COARSE_MINUTE: AtomicU32 = AtomicU32::new(0);

/// Sets the coarse clock from the wall clock.
pub fn tick_coarse_minute() {
    let minutes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| (elapsed.as_secs() / 60) as u32)
        .unwrap_or(0);
    COARSE_MINUTE.store(minutes, Ordering::Relaxed);
}

/// A key's last-used minute, in memory. One `AtomicU32`, so that it sits in
/// the entry's padding: `AuthEntry` keeps the allocator size class it had
/// before the lifecycle fields (a bigger entry cost 40 % at 1M keys). Not
/// part of the key's identity: two entries compare equal whatever their
/// marks. What was persisted is tracked by the store, off the hot path.
#[derive(Default)]
pub struct UsageMark(AtomicU32);

impl UsageMark {
    pub fn at(minute: u32) -> UsageMark {
        UsageMark(AtomicU32::new(minute))
    }

    /// Marks a use now: a load and, once a minute, a store.
    #[inline]
    pub fn mark(&self) {
        let now = COARSE_MINUTE.load(Ordering::Relaxed);
        if now != 0 && self.0.load(Ordering::Relaxed) != now {
            self.0.store(now, Ordering::Relaxed);
        }
    }

    pub fn minute(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Raises the mark (a mark loaded from disk, or carried over).
    pub fn raise(&self, minute: u32) {
        self.0.fetch_max(minute, Ordering::Relaxed);
    }
}

impl Clone for UsageMark {
    fn clone(&self) -> Self {
        UsageMark::at(self.minute())
    }
}

impl PartialEq for UsageMark {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for UsageMark {}

impl std::fmt::Debug for UsageMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UsageMark({})", self.minute())
    }
}

/// What a decision reads of a key beyond its secret and its first 256
/// scopes: its validity window, disabled flag, previous secret, address
/// allowlist, metadata, further scopes and rate limits. Boxed, so a key
/// without any stays one small entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyExtras {
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
    /// The key's scopes past the catalog's first 256, for catalogs that have
    /// them: kept here so that the entry stays its size (a `ScopeSet` inline
    /// would push it into the next allocator size class).
    pub high_scopes: Option<Arc<HighWords>>,
    /// Named rate limits, counted after the scope check.
    pub rate: Option<Arc<[crate::ratelimit::ActiveLimit]>>,
    /// Credits, spent after the rate limits; `None`: unlimited.
    pub credits: Option<Arc<crate::credits::KeyCredits>>,
}

/// A key's metadata, in key order.
pub type Metadata = Vec<(String, String)>;

impl KeyExtras {
    /// Whether this holds nothing: such keys keep `AuthEntry::extras` at
    /// `None`.
    pub fn is_empty(&self) -> bool {
        *self == KeyExtras::default()
    }

    pub fn is_timed(&self) -> bool {
        self.not_before_ms != 0 || self.expire_ms != 0 || self.previous.is_some()
    }
}

impl AuthEntry {
    pub fn new(
        secret_hash: [u8; 32],
        scopes: ScopeSet,
        account_id: Arc<str>,
        kind: KeyKind,
        extras: Option<Box<KeyExtras>>,
    ) -> AuthEntry {
        let (low_scopes, high) = scopes.into_parts();
        let extras = match high {
            None => extras,
            Some(high) => {
                let mut extras = extras.unwrap_or_default();
                extras.high_scopes = Some(high);
                Some(extras)
            }
        };
        AuthEntry {
            secret_hash,
            low_scopes,
            account_id,
            kind,
            extras,
            used: UsageMark::default(),
        }
    }

    /// Whether the key holds every scope of `required` (the hot path: no
    /// set is assembled).
    #[inline]
    pub fn holds(&self, required: &ScopeSet) -> bool {
        required.is_subset_of_parts(&self.low_scopes, self.high_scopes())
    }

    /// Whether the key holds `scope`.
    #[inline]
    pub fn holds_scope(&self, scope: ScopeId) -> bool {
        ScopeSet::parts_contain(&self.low_scopes, self.high_scopes(), scope)
    }

    fn high_scopes(&self) -> Option<&HighWords> {
        self.extras
            .as_deref()
            .and_then(|extras| extras.high_scopes.as_deref())
    }

    /// The key's scopes (no allocation: the part past 256 is shared).
    pub fn scopes(&self) -> ScopeSet {
        let high = self
            .extras
            .as_ref()
            .and_then(|extras| extras.high_scopes.clone());
        ScopeSet::from_parts(self.low_scopes, high)
    }
}

type KeyMap = papaya::HashMap<KeyId, Arc<AuthEntry>, KeyIdHash>;

/// The keys Check reads. Each Check reads one entry, atomically: the entry
/// before a change or the one after, never a mix of the two. The map sits
/// inline (an `ArcSwap` around it, to swap a whole new map on a full resync,
/// cost 5–8 % per decision at 1M keys).
#[derive(Default)]
pub struct KeyTable {
    keys: Inline,
}

/// The map, read in place.
#[derive(Default)]
struct Inline(KeyMap);

impl Inline {
    fn load(&self) -> &KeyMap {
        &self.0
    }
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

    /// Inserts or replaces an entry; a replaced entry's usage mark carries
    /// over (a change does not make a key look unused).
    pub fn insert(&self, key_id: KeyId, entry: Arc<AuthEntry>) {
        let map = self.keys.load();
        let pinned = map.pin();
        if let Some(old) = pinned.get(&key_id) {
            entry.used.raise(old.used.minute());
        }
        pinned.insert(key_id, entry);
    }

    /// Sets a key's usage mark as loaded from disk.
    pub fn restore_mark(&self, key_id: &KeyId, minute: u32) {
        self.with(key_id, |entry| {
            if let Some(entry) = entry {
                entry.used.raise(minute);
            }
        });
    }

    pub fn remove(&self, key_id: &KeyId) {
        self.keys.load().pin().remove(key_id);
    }

    /// Makes the table hold exactly `entries` (a full resync): every entry
    /// is put (each put atomic for its key), then every key not among them
    /// is removed. A Check reads one key, so it sees that key's old entry or
    /// its new one; a key that is gone from `entries` is gone once this
    /// returns.
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (KeyId, Arc<AuthEntry>)>) {
        let mut kept = std::collections::HashSet::new();
        for (key_id, entry) in entries {
            kept.insert(key_id);
            self.insert(key_id, entry);
        }
        let map = self.keys.load();
        let pinned = map.pin();
        let stale: Vec<KeyId> = pinned
            .keys()
            .filter(|key_id| !kept.contains(*key_id))
            .copied()
            .collect();
        for key_id in stale {
            pinned.remove(&key_id);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Every key's usage mark that is set: (id, minute).
    pub fn marks(&self) -> Vec<(KeyId, u32)> {
        let map = self.keys.load();
        let pinned = map.pin();
        pinned
            .iter()
            .map(|(key_id, entry)| (*key_id, entry.used.minute()))
            .filter(|(_, minute)| *minute != 0)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.load().is_empty()
    }

    /// Every key that expires (or expired) before `before_ms`: (id, expiry).
    /// Read from memory: a scan for expiry notices touches no disk.
    pub fn expiring(&self, before_ms: i64) -> Vec<(KeyId, i64)> {
        let map = self.keys.load();
        let pinned = map.pin();
        pinned
            .iter()
            .filter_map(|(key_id, entry)| {
                let expire_ms = entry.extras.as_ref()?.expire_ms;
                (expire_ms != 0 && expire_ms < before_ms).then_some((*key_id, expire_ms))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hot path reads one entry per check: keep it within the allocator
    /// size class it had before the lifecycle fields (with the Arc's counts,
    /// 112 bytes under mimalloc). A bigger entry cost 40 % at 1M keys.
    #[test]
    fn an_entry_stays_in_its_size_class() {
        assert!(
            std::mem::size_of::<AuthEntry>() <= 96,
            "{}",
            std::mem::size_of::<AuthEntry>()
        );
    }
}
