//! Persistence: sled on disk, and the in-memory [`KeyTable`] that `Check` reads.
//! The truth is sled itself (standalone) or etcd, sled mirroring it (fleet);
//! what differs between the two is the `truth::Truth` contract, one place.
//!
//! Standalone write path (every mutation; fleet's is in `fleet/`):
//! 1. under the writer lock, apply one sled transaction over `keys` and
//!    `accounts` (so the per-account cap and publish order are serial);
//! 2. hand the change to the commit task, still under the lock (so changes
//!    reach memory in the order sled applied them);
//! 3. the commit task flushes once for every change queued so far (group
//!    commit), then publishes them to the [`KeyTable`] and only then wakes the
//!    callers. Nothing is acknowledged before it is on disk.
//!
//! Trees: `keys` (key id → [`KeyRecord`]), `accounts` (`account NUL key id` →
//! empty), `meta` (`format_version`, mode, the mirror's etcd position), the
//! audit log and its index, request ids, last-used marks.

pub mod audit;
mod commit;
pub mod fleet;
mod local;
mod mirror;
mod open;
mod read;
mod record;
mod roles;
mod table;
mod truth;
mod webhooks;

pub use audit::{AuditEvent, AuditFilter, KeyState, DEFAULT_AUDIT_MAX_EVENTS_PER_ACCOUNT};
pub use fleet::{FleetConfig, SyncState};
pub use read::Exported;
pub use record::{
    CreateRequest, CreateRequestRecord, CreditsRecord, KeyRecord, RateLimitRecord, RoleRecord,
    FORMAT_VERSION,
};
pub use roles::Reads;
pub use webhooks::{outbox_path, HookEntry, HookOp, OUTBOX};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sled::transaction::TransactionError;

use tokio::sync::{mpsc, watch};

use crate::key::KeyTable;
use crate::role::RoleId;
use crate::scope::{ScopeError, SharedCatalog};
use crate::token::KeyId;
use commit::{Commit, Durable};

const FORMAT_VERSION_KEY: &[u8] = b"format_version";
/// Audit events are kept this long unless `set_audit_retention` says otherwise.
pub const DEFAULT_AUDIT_RETENTION_MS: i64 = 90 * 86_400_000;
/// Standalone: prune old audit events once every this many changes.
const AUDIT_PRUNE_EVERY: u64 = 256;
/// `standalone` (sled is the truth) or `fleet` (sled mirrors etcd).
const MODE_KEY: &[u8] = b"mode";
const MODE_STANDALONE: &[u8] = b"standalone";
const MODE_FLEET: &[u8] = b"fleet";
/// Fleet mirror: the etcd revision it reflects, and the prefix it mirrors.
const ETCD_REVISION_KEY: &[u8] = b"etcd_revision";
const ETCD_PREFIX_KEY: &[u8] = b"etcd_prefix";
/// Fleet mirror: the etcd cluster id and raft term it last followed (an etcd
/// restored from a snapshot may keep the id; its revision and term go back).
const ETCD_CLUSTER_KEY: &[u8] = b"etcd_cluster";
/// sled's page cache; the hot path never reads it, so keep it modest.
/// sled's record cache unless `serve --sled-cache-mib` says otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {dir} is in use by another scopegate process (sled holds an exclusive lock on it)")]
    Locked { dir: String },
    #[error("data dir {dir} holds a database scopegate did not create (no format marker); refusing to write into it")]
    Foreign { dir: String },
    #[error("data dir {dir} was written by a newer scopegate (store format {found}; this build reads up to {FORMAT_VERSION})")]
    NewerFormat { dir: String, found: u32 },
    #[error("stored key {key_id} is unreadable: {reason}")]
    Corrupt { key_id: String, reason: String },
    #[error("stored key {key_id} names a scope the catalog does not have: {source}")]
    CatalogMismatch { key_id: String, source: ScopeError },
    #[error("stored key {key_id} would change kind (billing or not) under the new catalog")]
    KindChanged { key_id: String },
    #[error("key not found")]
    NotFound,
    #[error("account already holds the maximum of {cap} keys")]
    AccountFull { cap: usize },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("data dir {dir} already holds keys: restore needs an empty one")]
    NotEmpty { dir: String },
    #[error("the store is shutting down")]
    Closed,
    #[error("data dir {dir} cannot be used here: {reason}")]
    ModeMismatch { dir: String, reason: String },
    #[error("etcd is unreachable: {0}")]
    EtcdUnavailable(String),
    /// A page token that is not a position of this listing.
    #[error("not a page token of this listing")]
    BadCursor,
    /// A CreateKey's request id is filed already (a concurrent retry won).
    #[error("this request id has been used already")]
    DuplicateRequest,
    #[error("the change conflicted with concurrent changes too often; retry")]
    Conflict,
    #[error("role not found")]
    RoleNotFound,
    #[error("this account already has a role named `{name}`")]
    RoleNameTaken { name: String },
    #[error("role {role_id} is attached to {cap} keys, the most a role may be")]
    RoleFull { role_id: String, cap: usize },
    #[error("account already holds the maximum of {cap} roles")]
    RolesFull { cap: usize },
    /// Fleet: a change that would need more than etcd's default
    /// `--max-txn-ops` (128) compares or writes in its one transaction.
    #[error("this change reaches {ops} records (the keys' other roles among them), more than one etcd transaction holds ({max}): split the role")]
    TxnTooLarge { ops: usize, max: usize },
    #[error("key {key_id} is already in etcd with different content; nothing was overwritten")]
    ImportConflict { key_id: String },
    /// A change could not be made durable. From then on the process refuses
    /// every store operation and exits, so that its restart reloads from disk:
    /// memory never answers with state the disk may not hold.
    #[error("the store could not persist changes ({reason}); scopegate refuses changes and restarts to recover from disk: retry shortly")]
    Failed { reason: String },
}

/// The records a mutation read, as the source of truth holds them when the
/// change applies.
#[derive(Default)]
pub struct Snapshot {
    records: Vec<(KeyId, Option<KeyRecord>)>,
    roles: Vec<(RoleId, Option<RoleRecord>)>,
}

impl Snapshot {
    /// A snapshot of records read now (a check before a change that is
    /// decided again when it applies).
    pub fn of(records: Vec<(KeyId, Option<KeyRecord>)>) -> Snapshot {
        Snapshot {
            records,
            roles: Vec::new(),
        }
    }

    pub fn get(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.records
            .iter()
            .find(|(id, _)| id == key_id)
            .and_then(|(_, record)| record.as_ref())
    }

    /// A role read for this change (`None`: absent, or not read).
    pub fn role(&self, role_id: &RoleId) -> Option<&RoleRecord> {
        self.roles
            .iter()
            .find(|(id, _)| id == role_id)
            .and_then(|(_, record)| record.as_ref())
    }

    /// The members of `role_id` as read (a role change reads them all).
    pub fn members(&self, role_id: &RoleId) -> Vec<&KeyRecord> {
        let Some(role) = self.role(role_id) else {
            return Vec::new();
        };
        role.member_ids()
            .filter_map(|key_id| self.get(&key_id))
            .collect()
    }
}

/// One key change.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new key, unless its account already holds `cap` keys, or its
    /// request id (if any) has been filed already.
    Create {
        record: KeyRecord,
        cap: usize,
        request: Option<CreateRequest>,
    },
    /// The whole new record of an existing key (same id and account).
    Update(KeyRecord),
    /// The record being deleted, as read.
    Delete(KeyRecord),
    /// A role, new or changed (its members as read: the store keeps them).
    PutRole(RoleRecord),
    /// The role being deleted, as read; its keys keep the id, which grants
    /// nothing once the role is gone.
    DeleteRole(RoleRecord),
}

fn record_id(record: &KeyRecord) -> Result<KeyId, StoreError> {
    record.key_id().ok_or_else(|| StoreError::Corrupt {
        key_id: format!("{:?}", record.key_id),
        reason: "key id is not 16 bytes".into(),
    })
}

/// How many keys of each kind `load` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKeys {
    pub general: usize,
    pub billing: usize,
}

impl LoadedKeys {
    pub fn total(&self) -> usize {
        self.general + self.billing
    }
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    keys: sled::Tree,
    accounts: sled::Tree,
    /// role id → [`RoleRecord`] (standalone: the truth; fleet: the mirror).
    roles: sled::Tree,
    /// `account NUL role id` → empty: an account's roles.
    role_accounts: sled::Tree,
    catalog: SharedCatalog,
    table: Arc<KeyTable>,
    /// Serialises writes to sled: sled apply order == publish order, and
    /// per-account caps cannot race. Holds the commit queue in standalone
    /// mode; the fleet watcher takes it to apply what etcd sends.
    writer: Mutex<Option<mpsc::UnboundedSender<Commit>>>,
    durable: Durable,
    meta: sled::Tree,
    /// Audit events by `AuditEvent::sort_key` (standalone mode).
    audit: sled::Tree,
    /// The same events by account and by key (`audit::index_keys`), so a
    /// page of one account's events costs what it returns.
    audit_index: sled::Tree,
    /// CreateKey request ids (hashed) → their first result, for a day.
    requests: sled::Tree,
    /// Where the next prune of expired request ids starts.
    requests_pruned_to: Mutex<Vec<u8>>,
    /// key id → the unix minute it was last used (this sidecar's view).
    last_used: sled::Tree,
    /// The minutes already written to `last_used`.
    usage_persisted: Mutex<std::collections::HashMap<KeyId, u32>>,
    audit_sequence: std::sync::atomic::AtomicU64,
    /// Events older than this are pruned (ms).
    audit_retention_ms: std::sync::atomic::AtomicI64,
    /// Where the truth lives: sled itself, or etcd with sled its mirror.
    truth: Arc<dyn truth::Truth>,
    /// `Some(reason)` once a change could not be made durable.
    failed: watch::Sender<Option<String>>,
    /// Fleet mode: the records denied here because this sidecar cannot use them.
    unfit: mirror::Unfit,
    /// The per-account bound on audit events.
    audit_budget: audit::AuditBudget,
    /// Whether changes write a webhook outbox entry.
    outbox: std::sync::atomic::AtomicBool,
    /// Woken once a change made here is durable (its outbox entry with it).
    outbox_written: tokio::sync::Notify,
}

impl Store {
    /// Fleet mode: starts following etcd (after [`Store::load`]). Standalone:
    /// nothing to follow.
    pub fn follow_source(&self) {
        self.inner.truth.clone().follow(self.clone());
    }

    /// Fleet mode: the sync state (health, staleness, metrics read it).
    pub fn sync_state(&self) -> Option<Arc<SyncState>> {
        self.inner.truth.sync_state()
    }

    /// Whether the table may be served: always in standalone mode; in fleet
    /// mode once the mirror reflects some etcd revision (from disk or a first
    /// full read). Never an empty table that only looks real.
    pub fn has_state(&self) -> bool {
        self.sync_state()
            .is_none_or(|state| state.synced.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Syncs the mirror; a failure is final, as in standalone mode.
    fn sync_or_fail(&self) -> Result<(), StoreError> {
        self.inner.durable.sync().map_err(|reason| {
            tracing::error!(%reason, "mirror persist failed; stopping to recover from disk");
            self.inner.failed.send_replace(Some(reason.clone()));
            StoreError::Failed { reason }
        })
    }

    /// Resolves once a change could not be made durable, with the reason.
    /// The server then stops and exits non-zero, so its restart reloads what
    /// the disk holds.
    pub async fn failure(&self) -> String {
        let mut failed = self.inner.failed.subscribe();
        let reason = match failed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// `Err(Failed)` once a persist failed: sled's view may then hold changes
    /// the disk does not, so nothing is read or written through it again.
    fn healthy(&self) -> Result<(), StoreError> {
        match &*self.inner.failed.borrow() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Failed {
                reason: reason.clone(),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The table the hot path reads.
    pub fn table(&self) -> &Arc<KeyTable> {
        &self.inner.table
    }

    /// Applies one key change decided on current state: `decide` sees the
    /// records named in `reads` as the source of truth holds them when the
    /// change applies (standalone: read under the writer lock; fleet: read
    /// from etcd and compared in the transaction, so `decide` may run again
    /// after a conflict). Returns once the change is durable and visible to
    /// Check on this sidecar.
    pub async fn mutate<T, E>(
        &self,
        reads: impl Into<Reads>,
        decide: impl Fn(&Snapshot) -> Result<(Change, AuditEvent, T), E> + Send + Sync + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.healthy()?;
        // The truth sees the decision without its value or error type; the
        // last run's are kept here.
        let kept: Arc<Mutex<Option<Result<T, E>>>> = Arc::default();
        let keep = kept.clone();
        let decide: truth::Decide = Box::new(move |snapshot| {
            let decided = decide(snapshot);
            let mut kept = keep.lock().unwrap_or_else(|poison| poison.into_inner());
            match decided {
                Ok((change, event, value)) => {
                    *kept = Some(Ok(value));
                    Ok((change, event))
                }
                Err(error) => {
                    *kept = Some(Err(error));
                    Err(truth::Refused::ByDecision)
                }
            }
        });
        let applied = self.inner.truth.mutate(self, reads.into(), decide).await;
        let decided = kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        match (applied, decided) {
            (Ok(()), Some(Ok(value))) => {
                // Its webhook event is in the outbox now, durably.
                self.inner.outbox_written.notify_one();
                Ok(value)
            }
            (Err(truth::Refused::ByDecision), Some(Err(error))) => Err(error),
            (Err(truth::Refused::Store(error)), _) => Err(error.into()),
            // Applied without a decision, or refused by one that said yes:
            // neither can happen; refuse rather than guess.
            _ => Err(StoreError::Closed.into()),
        }
    }

    /// The first result filed under a CreateKey request id's `lookup`, if
    /// any, once this sidecar holds what it names.
    pub async fn create_request(
        &self,
        lookup: &[u8; 32],
    ) -> Result<Option<CreateRequestRecord>, StoreError> {
        self.healthy()?;
        self.inner.truth.create_request(self, *lookup).await
    }

    /// A sled I/O error while writing leaves sled's state unknown: like a
    /// failed sync, it is final (the store refuses everything, the server
    /// restarts on what the disk holds).
    fn fail_on_io<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Io(error)) => {
                let reason = format!("write failed: {error}");
                tracing::error!(%reason, "store write failed; stopping to recover from disk");
                self.inner.failed.send_replace(Some(reason.clone()));
                Err(StoreError::Failed { reason })
            }
            other => other,
        }
    }

    /// Sets how many audit events an account keeps at most.
    pub fn set_audit_max_events_per_account(&self, max: u64) {
        self.inner.audit_budget.set(max);
    }

    /// Whether a change of `account` should first trim its audit events,
    /// and to what bound.
    pub(super) fn audit_trim_due(&self, account: &str) -> Option<u64> {
        self.inner.audit_budget.due(account)
    }

    /// Sets how long audit events are kept.
    pub fn set_audit_retention(&self, retention: std::time::Duration) {
        self.inner.audit_retention_ms.store(
            retention.as_millis().min(i64::MAX as u128) as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.truth.set_audit_retention(retention);
    }

    /// The tree decision usage is counted in (see `crate::usage`).
    pub fn usage_tree(&self) -> Result<sled::Tree, StoreError> {
        self.healthy()?;
        Ok(self.inner.durable.open_tree("usage")?)
    }

    /// The tree credit balances are kept in (see `crate::credits`).
    pub fn credits_tree(&self) -> Result<sled::Tree, StoreError> {
        self.healthy()?;
        Ok(self.inner.durable.open_tree("credits")?)
    }

    /// Flushes and syncs everything to stable storage (used at shutdown).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.healthy()?;
        self.inner
            .durable
            .sync()
            .map_err(|reason| StoreError::Failed { reason })
    }
}

pub fn decode(id_bytes: &[u8], value: &[u8]) -> Result<KeyRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key_id: id_bytes
            .try_into()
            .map(|bytes| KeyId::from_bytes(bytes).to_string())
            .unwrap_or_else(|_| format!("{id_bytes:?}")),
        reason,
    };
    let record: KeyRecord =
        prost::Message::decode(value).map_err(|error| corrupt(error.to_string()))?;
    if record.version > KeyRecord::VERSION {
        return Err(corrupt(format!(
            "record version {} is newer than this build reads ({})",
            record.version,
            KeyRecord::VERSION
        )));
    }
    Ok(record)
}

/// [`decode`] for a record that may be rewritten (GetKey and every
/// mutation read it so): one holding fields this build does not know (a
/// later release wrote it, and the field did not need a new version) is
/// refused, so no change made here ever drops them. Check still decides on
/// it (the table loads it with [`decode`]).
pub fn decode_whole(id_bytes: &[u8], value: &[u8]) -> Result<KeyRecord, StoreError> {
    let record = decode(id_bytes, value)?;
    if prost::Message::encoded_len(&record) != value.len() {
        return Err(StoreError::Corrupt {
            key_id: id_bytes
                .try_into()
                .map(|bytes| KeyId::from_bytes(bytes).to_string())
                .unwrap_or_else(|_| format!("{id_bytes:?}")),
            reason: "the record holds fields this build does not know (a later release wrote it): upgrade this sidecar to change it".into(),
        });
    }
    Ok(record)
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Io(error),
    }
}
