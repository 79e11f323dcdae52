//! The hot path's side of usage: a decision adds one to a cell of its
//! worker's shard. A shard is a map owned by one thread; its mutex is only
//! ever contended by the flush, which swaps the whole map out once an
//! interval (O(1) under the lock). So a decision pays a hash of a small
//! key and an increment: no shared cache line, no allocation once the
//! map is warm, no syscall (the minute is the coarse clock's atomic).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thread_local::ThreadLocal;

use crate::authz::Decision;
use crate::key::{KeyTable, COARSE_MINUTE};
use crate::scope::ScopeSet;
use crate::token::{KeyId, TokenFormat};

/// What one count is of.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    /// Unix minute.
    pub minute: u32,
    /// The key the token names, when it exists (`None`: counted under `-`).
    pub key: Option<KeyId>,
    /// `Decision::code`.
    pub outcome: u8,
    /// The scopes required (empty: none, a request without a route).
    pub scopes: ScopeSet,
}

pub struct Counted {
    pub count: u64,
    /// The key's account, taken when the cell is first counted.
    pub account: Option<Arc<str>>,
}

pub type Cells = HashMap<CellKey, Counted, foldhash::fast::RandomState>;

/// Cells a shard is made with: a busy worker's minute of distinct keys.
const SHARD_CAPACITY: usize = 256;

#[derive(Default)]
pub struct Recorder {
    shards: ThreadLocal<Mutex<Cells>>,
    /// Emptied maps, capacity kept, swapped in by the next flush.
    spares: Mutex<Vec<Cells>>,
}

impl Recorder {
    /// Counts one decision. `token` is read again only for a denial that
    /// names no key (a wrong secret, an expired or disabled key, no
    /// route…), so its key's owner sees it.
    pub fn record(
        &self,
        decision: &Decision,
        token: &str,
        format: &TokenFormat,
        keys: &KeyTable,
        scopes: ScopeSet,
    ) {
        let (key, account) = match decision.key() {
            Some((key, account)) => (Some(key), Some(account.clone())),
            None => named_key(token, format, keys),
        };
        let minute = match COARSE_MINUTE.load(std::sync::atomic::Ordering::Relaxed) {
            0 => (crate::authz::now_unix_ms() / 60_000) as u32,
            minute => minute,
        };
        let cell = CellKey {
            minute,
            key,
            outcome: decision.code(),
            scopes,
        };
        let shard = self.shards.get_or(|| {
            Mutex::new(Cells::with_capacity_and_hasher(
                SHARD_CAPACITY,
                Default::default(),
            ))
        });
        let mut cells = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cells
            .entry(cell)
            .or_insert_with(|| Counted { count: 0, account })
            .count += 1;
    }

    /// Every shard's cells, each shard left with an empty map.
    pub fn take(&self) -> Vec<Cells> {
        let mut taken = Vec::new();
        for shard in self.shards.iter() {
            let spare = self.spare();
            let mut cells = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if cells.is_empty() {
                drop(cells);
                self.recycle(spare);
                continue;
            }
            taken.push(std::mem::replace(&mut *cells, spare));
        }
        taken
    }

    /// Gives a taken map back, emptied, for a later swap.
    pub fn recycle(&self, mut cells: Cells) {
        cells.clear();
        let mut spares = self
            .spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if spares.len() < 64 {
            spares.push(cells);
        }
    }

    fn spare(&self) -> Cells {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_else(|| Cells::with_capacity_and_hasher(SHARD_CAPACITY, Default::default()))
    }
}

/// The key a token names and its account, when that key exists: what a
/// denial without a key in it is counted on.
fn named_key(
    token: &str,
    format: &TokenFormat,
    keys: &KeyTable,
) -> (Option<KeyId>, Option<Arc<str>>) {
    if token.is_empty() {
        return (None, None);
    }
    let Ok(parsed) = format.parse(token) else {
        return (None, None);
    };
    match keys.with(&parsed.key_id, |entry| {
        entry.map(|entry| entry.account_id.clone())
    }) {
        Some(account) => (Some(parsed.key_id), Some(account)),
        None => (None, None),
    }
}
