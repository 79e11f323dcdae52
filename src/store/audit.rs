//! The audit trail: one event per key change, written in the same atomic
//! write as the change (the sled transaction, or the etcd transaction), so
//! it survives exactly what the keys survive. Never a secret or a hash.
//! Standalone, events are also indexed by account and by key, and read off
//! the decision workers: one tenant's listing never walks another's events.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, StoreError};
use crate::token::KeyId;

/// One key change, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditEvent {
    #[prost(int64, tag = "1")]
    pub time_unix_ms: i64,
    /// "admin" or `key:<key id>`.
    #[prost(string, tag = "2")]
    pub actor: String,
    /// The acting key's account ("" for the admin).
    #[prost(string, tag = "3")]
    pub actor_account_id: String,
    /// create, update, rotate, disable, enable, delete, restore, import.
    #[prost(string, tag = "4")]
    pub action: String,
    #[prost(bytes = "vec", tag = "5")]
    pub key_id: Vec<u8>,
    #[prost(string, tag = "6")]
    pub account_id: String,
    #[prost(message, optional, tag = "7")]
    pub before: Option<KeyState>,
    #[prost(message, optional, tag = "8")]
    pub after: Option<KeyState>,
    /// The fingerprint of the secret a key acted with ("" for the admin).
    #[prost(string, tag = "9")]
    pub actor_secret: String,
    /// A role event (`role.*`; `key_id` holds the role's id): how many keys
    /// the change reached.
    #[prost(uint32, tag = "10")]
    pub keys_affected: u32,
}

/// What an audit event shows of a key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyState {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub scopes: Vec<String>,
    /// 0: none.
    #[prost(int64, tag = "3")]
    pub expire_time_unix_ms: i64,
    #[prost(bool, tag = "4")]
    pub enabled: bool,
    #[prost(message, repeated, tag = "5")]
    pub rate_limits: Vec<super::RateLimitRecord>,
    /// The credits as set (an UpdateCredits: the balance before and after).
    #[prost(message, optional, tag = "6")]
    pub credits: Option<super::CreditsRecord>,
    /// The roles a key references (role ids, text).
    #[prost(string, repeated, tag = "7")]
    pub roles: Vec<String>,
    /// Where a leak of the key was reported (a `leak` event).
    #[prost(string, tag = "8")]
    pub exposed_url: String,
}

impl KeyState {
    pub fn of(record: &super::KeyRecord) -> KeyState {
        KeyState {
            name: record.name.clone(),
            scopes: record.scopes.clone(),
            expire_time_unix_ms: record.expire_time_unix_ms,
            enabled: !record.disabled,
            credits: record.credits.clone(),
            rate_limits: record.rate_limits.clone(),
            roles: record.roles().map(|id| id.to_string()).collect(),
            exposed_url: record.exposed_url.clone(),
        }
    }

    pub fn of_role(role: &super::RoleRecord) -> KeyState {
        KeyState {
            name: role.name.clone(),
            scopes: role.scopes.clone(),
            enabled: true,
            ..KeyState::default()
        }
    }
}

impl AuditEvent {
    /// The role an event of a role (`role.*`) is about.
    pub fn role_id(&self) -> Option<crate::role::RoleId> {
        self.action
            .starts_with("role.")
            .then(|| crate::role::RoleId::from_slice(&self.key_id))
            .flatten()
    }

    pub fn key_id(&self) -> Option<KeyId> {
        Some(KeyId::from_bytes(self.key_id.as_slice().try_into().ok()?))
    }

    /// Where the event sorts: by time, then a sequence number that keeps
    /// events of one millisecond apart.
    pub fn sort_key(&self, sequence: u64) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&(self.time_unix_ms.max(0) as u64).to_be_bytes());
        key[8..].copy_from_slice(&sequence.to_be_bytes());
        key
    }
}

/// Which events a listing wants.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub account_id: Option<String>,
    pub key_id: Option<KeyId>,
    /// Unix ms, inclusive / exclusive; 0: open.
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
}

impl AuditFilter {
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.account_id
            .as_deref()
            .is_none_or(|account| event.account_id == account)
            && self
                .key_id
                .is_none_or(|key_id| event.key_id.as_slice() == key_id.as_bytes())
            && event.time_unix_ms >= self.start_unix_ms
            && (self.end_unix_ms == 0 || event.time_unix_ms < self.end_unix_ms)
    }
}

/// The standalone audit index entries of an event stored under `sort_key`:
/// `a` account NUL sort key, and `k` key id sort key.
pub(super) fn index_keys(event: &AuditEvent, sort_key: &[u8; 16]) -> [Vec<u8>; 2] {
    let mut by_account = Vec::with_capacity(event.account_id.len() + 18);
    by_account.push(b'a');
    by_account.extend_from_slice(event.account_id.as_bytes());
    by_account.push(0);
    by_account.extend_from_slice(sort_key);
    let mut by_key = Vec::with_capacity(33);
    by_key.push(b'k');
    by_key.extend_from_slice(&event.key_id);
    by_key.extend_from_slice(sort_key);
    [by_account, by_key]
}

/// Where a listing with `filter` reads: the index prefix its entries share
/// (`None`: the events tree itself, every account).
fn index_prefix(filter: &AuditFilter) -> Option<Vec<u8>> {
    if let Some(key_id) = filter.key_id {
        let mut prefix = vec![b'k'];
        prefix.extend_from_slice(key_id.as_bytes());
        return Some(prefix);
    }
    let account = filter.account_id.as_ref()?;
    let mut prefix = vec![b'a'];
    prefix.extend_from_slice(account.as_bytes());
    prefix.push(0);
    Some(prefix)
}

/// Indexes the events of a store written before the index existed (once).
pub(super) fn build_index_once(events: &sled::Tree, index: &sled::Tree) -> Result<(), StoreError> {
    if !index.is_empty() || events.is_empty() {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for item in events.iter() {
        let (key, value) = item?;
        let (Ok(sort_key), Ok(event)) = (
            <[u8; 16]>::try_from(key.as_ref()),
            <AuditEvent as prost::Message>::decode(value.as_ref()),
        ) else {
            continue;
        };
        for index_key in index_keys(&event, &sort_key) {
            batch.insert(index_key, &[]);
        }
    }
    index.apply_batch(batch)?;
    Ok(())
}

/// An event and the sort key it is stored under.
type Stored = ([u8; 16], AuditEvent);

impl Store {
    /// Removes (a bounded batch of) standalone audit events past retention,
    /// with their index entries. Called under the writer lock; made durable
    /// with the next group.
    pub(super) fn prune_audit(&self, now_ms: i64) -> Result<(), StoreError> {
        let retention = self.inner.audit_retention_ms.load(Ordering::Relaxed);
        let cutoff = (now_ms.saturating_sub(retention)).max(0) as u64;
        let (mut events, mut index) = (sled::Batch::default(), sled::Batch::default());
        for item in self.inner.audit.iter().take(10_000) {
            let (key, value) = item?;
            let time = key
                .get(..8)
                .and_then(|t| t.try_into().ok())
                .map(u64::from_be_bytes);
            if time.is_none_or(|time| time >= cutoff) {
                break;
            }
            if let (Ok(sort_key), Ok(event)) = (
                <[u8; 16]>::try_from(key.as_ref()),
                <AuditEvent as prost::Message>::decode(value.as_ref()),
            ) {
                for index_key in index_keys(&event, &sort_key) {
                    index.remove(index_key);
                }
            }
            events.remove(key);
        }
        self.inner.audit_index.apply_batch(index)?;
        self.inner.audit.apply_batch(events)?;
        Ok(())
    }

    /// Up to `limit` audit events matching `filter`, oldest first, after the
    /// cursor `after`; and the cursor to continue from. Standalone reads run
    /// on a blocking thread, never on a decision worker, and through the
    /// account's (or key's) index, so a page costs what it returns.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<Vec<u8>>), StoreError> {
        self.inner
            .truth
            .audit_events(self, filter.clone(), after, limit)
            .await
    }

    pub(super) fn local_audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<Vec<u8>>), StoreError> {
        self.healthy()?;
        let from = match after {
            Some(after) => key_after(&after)?,
            None => {
                let mut start = [0; 16];
                start[..8].copy_from_slice(&(filter.start_unix_ms.max(0) as u64).to_be_bytes());
                start
            }
        };
        let mut walk = match index_prefix(filter) {
            Some(prefix) => self.indexed_events(prefix, &from),
            None => self.all_events(&from),
        };
        let mut events = Vec::new();
        let mut last = None;
        for item in &mut walk {
            let (sort_key, event) = item?;
            if filter.end_unix_ms != 0 && event.time_unix_ms >= filter.end_unix_ms {
                break;
            }
            if !filter.matches(&event) {
                continue;
            }
            if events.len() == limit {
                return Ok((events, last));
            }
            events.push(event);
            last = Some(sort_key.to_vec());
        }
        Ok((events, None))
    }
}

/// (sort key, event) in order.
type Walk<'a> = Box<dyn Iterator<Item = Result<Stored, StoreError>> + 'a>;

impl Store {
    /// The events under one index prefix (an account or a key), from `from`.
    fn indexed_events(&self, prefix: Vec<u8>, from: &[u8; 16]) -> Walk<'static> {
        let mut start = prefix.clone();
        start.extend_from_slice(from);
        let events = self.inner.audit.clone();
        Box::new(
            self.inner
                .audit_index
                .range(start..)
                .take_while(move |item| {
                    item.as_ref()
                        .map_or(true, |(key, _)| key.starts_with(&prefix))
                })
                .filter_map(move |item| {
                    let sort_key = match item {
                        Ok((key, _)) => {
                            <[u8; 16]>::try_from(&key[key.len() - 16..]).expect("16 bytes")
                        }
                        Err(error) => return Some(Err(error.into())),
                    };
                    // A pruned event's index entry may outlive it briefly.
                    match events.get(sort_key) {
                        Ok(Some(value)) => {
                            Some(decode_event(&value).map(|event| (sort_key, event)))
                        }
                        Ok(None) => None,
                        Err(error) => Some(Err(error.into())),
                    }
                }),
        )
    }

    /// Every event, from `from`.
    fn all_events(&self, from: &[u8; 16]) -> Walk<'static> {
        Box::new(self.inner.audit.range(*from..).map(|item| {
            let (key, value) = item?;
            let sort_key = <[u8; 16]>::try_from(key.as_ref()).map_err(|_| StoreError::Corrupt {
                key_id: "audit event".into(),
                reason: "an audit key is not 16 bytes".into(),
            })?;
            Ok((sort_key, decode_event(&value)?))
        }))
    }
}

/// The first sort key after a page cursor.
fn key_after(cursor: &[u8]) -> Result<[u8; 16], StoreError> {
    let mut key: [u8; 16] = cursor.try_into().map_err(|_| StoreError::BadCursor)?;
    for byte in key.iter_mut().rev() {
        let (next, carry) = byte.overflowing_add(1);
        *byte = next;
        if !carry {
            break;
        }
    }
    Ok(key)
}

fn decode_event(value: &[u8]) -> Result<AuditEvent, StoreError> {
    <AuditEvent as prost::Message>::decode(value).map_err(|error| StoreError::Corrupt {
        key_id: "audit event".into(),
        reason: error.to_string(),
    })
}

/// Audit events kept per account unless `--audit-max-events-per-account`
/// says otherwise: 20 changes a second for 90 days would be ~155 M.
pub const DEFAULT_AUDIT_MAX_EVENTS_PER_ACCOUNT: u64 = 100_000;

/// The per-account bound on audit events: once an account holds the
/// maximum, its oldest events make room for new ones. The exact count is
/// taken on an account's first write and then every 1 % of the bound (at
/// most every 1,000 writes), so an account holds at most the bound plus that
/// slack per writing process.
pub(super) struct AuditBudget {
    max: AtomicU64,
    writes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl AuditBudget {
    pub(super) fn new() -> AuditBudget {
        AuditBudget {
            max: AtomicU64::new(DEFAULT_AUDIT_MAX_EVENTS_PER_ACCOUNT),
            writes: Default::default(),
        }
    }

    pub(super) fn set(&self, max: u64) {
        self.max.store(max.max(1), Ordering::Relaxed);
    }

    /// Whether this write for `account` should first trim the account's
    /// events, and to what bound.
    pub(super) fn due(&self, account: &str) -> Option<u64> {
        let max = self.max.load(Ordering::Relaxed);
        let every = (max / 100).clamp(1, 1000);
        let mut writes = self
            .writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = writes.entry(account.to_owned()).or_insert(every - 1);
        *count += 1;
        (*count >= every).then(|| {
            *count = 0;
            max
        })
    }
}

impl Store {
    /// Standalone: makes room for one more event of `account` within `max`,
    /// deleting its oldest events (and their index entries).
    pub(super) fn trim_account_audit(&self, account: &str, max: u64) -> Result<(), StoreError> {
        let mut prefix = vec![b'a'];
        prefix.extend_from_slice(account.as_bytes());
        prefix.push(0);
        let held = self.inner.audit_index.scan_prefix(&prefix).keys().count() as u64;
        let excess = (held + 1).saturating_sub(max);
        if excess == 0 {
            return Ok(());
        }
        let (mut events, mut index) = (sled::Batch::default(), sled::Batch::default());
        for item in self
            .inner
            .audit_index
            .scan_prefix(&prefix)
            .keys()
            .take(excess as usize)
        {
            let key = item?;
            let Ok(sort_key) = <[u8; 16]>::try_from(&key[key.len().saturating_sub(16)..]) else {
                continue;
            };
            index.remove(key);
            if let Some(value) = self.inner.audit.get(sort_key)? {
                if let Ok(event) = <AuditEvent as prost::Message>::decode(value.as_ref()) {
                    for index_key in index_keys(&event, &sort_key) {
                        index.remove(index_key);
                    }
                }
                events.remove(&sort_key[..]);
            }
        }
        self.inner.audit_index.apply_batch(index)?;
        self.inner.audit.apply_batch(events)?;
        Ok(())
    }
}
