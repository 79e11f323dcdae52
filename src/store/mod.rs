//! Persistence: sled on disk, and the in-memory [`KeyTable`] that `Check` reads.
//!
//! Write path (every mutation):
//! 1. under the writer lock, apply one sled transaction over `keys` and
//!    `accounts` (so the per-account cap and publish order are serial);
//! 2. hand the change to the commit task, still under the lock (so changes
//!    reach memory in the order sled applied them);
//! 3. the commit task flushes once for every change queued so far (group
//!    commit), then publishes them to the [`KeyTable`] and only then wakes the
//!    callers. Nothing is acknowledged before it is on disk.
//!
//! Trees: `keys` (key id → [`KeyRecord`]), `accounts` (`account NUL key id` →
//! empty), `meta` (`format_version`). The interface is narrow on purpose: a
//! fleet mode can feed the same table from a shared source of truth.

pub mod audit;
mod commit;
pub mod fleet;
mod mirror;
mod record;

pub use audit::{AuditEvent, AuditFilter, KeyState};
pub use fleet::{FleetConfig, SyncState};
pub use record::{CreateRequest, CreateRequestRecord, KeyRecord, FORMAT_VERSION};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use tokio::sync::{mpsc, oneshot, watch};

use crate::key::{AuthEntry, KeyTable};
use crate::scope::{Catalog, KeyKind, ScopeError, SharedCatalog};
use crate::token::KeyId;
use commit::{sync_dir, Commit, Durable, Publish};
use record::{account_index_key, account_prefix};

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
}

impl Snapshot {
    pub fn get(&self, key_id: &KeyId) -> Option<&KeyRecord> {
        self.records
            .iter()
            .find(|(id, _)| id == key_id)
            .and_then(|(_, record)| record.as_ref())
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
    /// Fleet mode: etcd is the source of truth, sled its mirror.
    fleet: Option<Arc<fleet::Fleet>>,
    /// `Some(reason)` once a change could not be made durable.
    failed: watch::Sender<Option<String>>,
    /// Fleet mode: the records denied here because this sidecar cannot use them.
    unfit: mirror::Unfit,
}

impl Store {
    /// Opens (or creates) a standalone store in `dir`, sled being the source
    /// of truth, and starts its commit task. Call [`Store::load`] before
    /// serving.
    pub fn open(dir: &Path, catalog: SharedCatalog) -> Result<Store, StoreError> {
        Store::open_in(dir, catalog, None, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) a store with sled's cache size; with `fleet`, the
    /// local mirror of a fleet whose source of truth is etcd: call
    /// [`Store::load`] (the mirror, served at once if it has a revision),
    /// then [`Store::follow_source`].
    pub fn open_in(
        dir: &Path,
        catalog: SharedCatalog,
        fleet: Option<FleetConfig>,
        cache_bytes: u64,
    ) -> Result<Store, StoreError> {
        let io = |error: std::io::Error| StoreError::Io(error.into());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        // A dir made by someone else (a volume mount, `mkdir`) is made private
        // too, when we own it.
        if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), %error, "cannot make the data dir private (mode 0700)");
        }
        let sled_dir = dir.join("sled");
        let new = !sled_dir.exists();
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(cache_bytes)
            // Durability comes from the commit task's explicit flush + sync,
            // never from a timer.
            .flush_every_ms(None)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked {
                        dir: dir.display().to_string(),
                    }
                }
                other => StoreError::Io(other),
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get(FORMAT_VERSION_KEY)? {
            Some(bytes) => {
                let found = bytes
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found > FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        dir: dir.display().to_string(),
                        found,
                    });
                }
            }
            None => {
                if !new && holds_data(&db)? {
                    return Err(StoreError::Foreign {
                        dir: dir.display().to_string(),
                    });
                }
                meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        let keys = db.open_tree("keys")?;
        let accounts = db.open_tree("accounts")?;
        let audit = db.open_tree("audit")?;
        let audit_index = db.open_tree("audit_index")?;
        let requests = db.open_tree("requests")?;
        audit::build_index_once(&audit, &audit_index)?;
        let last_used = db.open_tree("last_used")?;
        // Continue the sequence after the newest event.
        let audit_sequence = audit
            .last()?
            .and_then(|(key, _)| key.get(8..16)?.try_into().ok().map(u64::from_be_bytes))
            .map_or(0, |last| last + 1);
        let shown = dir.display().to_string();
        let mode: &[u8] = if fleet.is_some() {
            MODE_FLEET
        } else {
            MODE_STANDALONE
        };
        let mut applied_revision = 0;
        match meta.get(MODE_KEY)? {
            Some(found) if found.as_ref() == mode => {}
            // A mirror is a cache: a standalone store never becomes one, nor
            // the reverse, by accident.
            Some(found) if found.as_ref() == MODE_FLEET => {
                return Err(StoreError::ModeMismatch {
                    dir: shown,
                    reason: "it is a fleet mirror of etcd; serve it with --store etcd, or use another data dir".into(),
                })
            }
            _ if !keys.is_empty() && fleet.is_some() => {
                return Err(StoreError::ModeMismatch {
                    dir: shown,
                    reason: "it holds a standalone store; copy it into etcd with `scopegate fleet import`, then serve fleet mode from another data dir".into(),
                })
            }
            _ => {
                meta.insert(MODE_KEY, mode)?;
            }
        }
        if let Some(config) = &fleet {
            let same_prefix = meta
                .get(ETCD_PREFIX_KEY)?
                .is_some_and(|prefix| prefix.as_ref() == config.prefix.as_bytes());
            if same_prefix {
                applied_revision = meta
                    .get(ETCD_REVISION_KEY)?
                    .and_then(|bytes| bytes.as_ref().try_into().ok().map(i64::from_be_bytes))
                    .unwrap_or(0);
            } else {
                // Another prefix's mirror: start over with a full read.
                meta.insert(ETCD_PREFIX_KEY, config.prefix.as_bytes())?;
                meta.remove(ETCD_REVISION_KEY)?;
            }
        }
        let durable = Durable::open(db.clone(), &sled_dir).map_err(io)?;
        durable
            .sync()
            .map_err(|reason| StoreError::Failed { reason })?;
        if new {
            // The files sled just created must survive a power cut too.
            sync_dir(&sled_dir).map_err(io)?;
            sync_dir(dir).map_err(io)?;
        }
        let table = Arc::new(KeyTable::default());
        let (failed, _) = watch::channel(None);
        let commits = match fleet {
            Some(_) => None,
            None => {
                let (commits, commit_queue) = mpsc::unbounded_channel();
                tokio::spawn(commit::run(
                    durable.clone(),
                    table.clone(),
                    commit_queue,
                    failed.clone(),
                ));
                Some(commits)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                keys,
                accounts,
                catalog,
                table,
                writer: Mutex::new(commits),
                durable,
                meta,
                audit,
                audit_index,
                requests,
                requests_pruned_to: Mutex::default(),
                last_used,
                usage_persisted: Mutex::default(),
                audit_sequence: audit_sequence.into(),
                audit_retention_ms: DEFAULT_AUDIT_RETENTION_MS.into(),
                fleet: fleet.map(|config| Arc::new(fleet::Fleet::new(config, applied_revision))),
                failed,
                unfit: mirror::Unfit::default(),
            }),
        })
    }

    /// Fleet mode: starts following etcd (after [`Store::load`]). Standalone:
    /// nothing to follow.
    pub fn follow_source(&self) {
        if let Some(fleet) = &self.inner.fleet {
            tokio::spawn(fleet.clone().follow(self.clone()));
        }
    }

    /// Fleet mode: the sync state (health, staleness, metrics read it).
    pub fn sync_state(&self) -> Option<Arc<SyncState>> {
        self.inner.fleet.as_ref().map(|fleet| fleet.state.clone())
    }

    /// Whether the table may be served: always in standalone mode; in fleet
    /// mode once the mirror reflects some etcd revision (from disk or a first
    /// full read). Never an empty table that only looks real.
    pub fn has_state(&self) -> bool {
        self.sync_state()
            .is_none_or(|state| state.synced.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Fleet mode: the etcd cluster id and raft term the mirror last
    /// followed, if recorded.
    fn mirror_identity(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self.inner.meta.get(ETCD_CLUSTER_KEY)?.and_then(|bytes| {
            let bytes: [u8; 16] = bytes.as_ref().try_into().ok()?;
            let (cluster, term) = bytes.split_at(8);
            Some((
                u64::from_be_bytes(cluster.try_into().ok()?),
                u64::from_be_bytes(term.try_into().ok()?),
            ))
        }))
    }

    fn set_mirror_identity(&self, cluster: u64, term: u64) -> Result<(), StoreError> {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&cluster.to_be_bytes());
        bytes[8..].copy_from_slice(&term.to_be_bytes());
        if self.mirror_identity()? == Some((cluster, term)) {
            return Ok(());
        }
        let written = self
            .inner
            .meta
            .insert(ETCD_CLUSTER_KEY, &bytes[..])
            .map(drop)
            .map_err(StoreError::from);
        self.fail_on_io(written)?;
        self.sync_or_fail()
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

    /// Fills the in-memory table from disk. Blocking; returns the key count.
    /// One thread walks sled while another decodes and publishes, so a large
    /// store loads on two cores.
    pub fn load(&self) -> Result<LoadedKeys, StoreError> {
        const BATCH: usize = 4096;
        let (batches, receiver) = std::sync::mpsc::sync_channel::<Vec<(sled::IVec, sled::IVec)>>(4);
        let publisher = {
            let store = self.clone();
            std::thread::spawn(move || store.publish_loaded(receiver))
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut walked = Ok(());
        for item in self.inner.keys.iter() {
            match item {
                Ok(pair) => batch.push(pair),
                Err(error) => {
                    walked = Err(StoreError::from(error));
                    break;
                }
            }
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if batches.send(full).is_err() {
                    break; // the publisher stopped on an error; it reports it
                }
            }
        }
        if !batch.is_empty() {
            let _ = batches.send(batch);
        }
        drop(batches);
        let published = publisher.join().map_err(|_| StoreError::Closed)?;
        walked?;
        let loaded = published?;
        self.restore_marks()?;
        Ok(loaded)
    }

    fn publish_loaded(
        &self,
        batches: std::sync::mpsc::Receiver<Vec<(sled::IVec, sled::IVec)>>,
    ) -> Result<LoadedKeys, StoreError> {
        let mut count = LoadedKeys::default();
        // Keys of one account share one account id allocation.
        let mut accounts: std::collections::HashMap<String, Arc<str>> =
            std::collections::HashMap::new();
        let fleet = self.inner.fleet.is_some();
        for batch in batches {
            for (id_bytes, value) in batch {
                let key_id = <[u8; 16]>::try_from(id_bytes.as_ref())
                    .map(KeyId::from_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        key_id: format!("{id_bytes:?}"),
                        reason: "key id is not 16 bytes".into(),
                    })?;
                let judged = decode(&id_bytes, &value)
                    .and_then(|record| Ok((self.fit_entry(key_id, &record)?, record)));
                let (mut entry, record) = match judged {
                    Ok(judged) => judged,
                    // Fleet mode: one record this sidecar cannot use stops nothing.
                    Err(error) if fleet => {
                        self.inner.unfit.deny(key_id, &error);
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                match accounts.get(record.account_id.as_str()) {
                    Some(shared) => entry.account_id = shared.clone(),
                    None => {
                        accounts.insert(record.account_id.clone(), entry.account_id.clone());
                    }
                }
                match entry.kind {
                    KeyKind::General => count.general += 1,
                    KeyKind::Billing => count.billing += 1,
                }
                self.inner.table.insert(key_id, Arc::new(entry));
            }
        }
        Ok(count)
    }

    /// The hot-path view of a record.
    fn auth_entry(&self, record: &KeyRecord) -> Result<AuthEntry, StoreError> {
        let key_id = || KeyId::from_bytes(record.key_id.as_slice().try_into().unwrap_or([0; 16]));
        let catalog = self.inner.catalog.load();
        let scopes = catalog
            .resolve(record.scopes.iter().map(String::as_str))
            .map_err(|source| StoreError::CatalogMismatch {
                key_id: key_id().to_string(),
                source,
            })?;
        let kind = catalog
            .kind_of(&scopes)
            .map_err(|source| StoreError::CatalogMismatch {
                key_id: key_id().to_string(),
                source,
            })?;
        let secret_hash =
            record
                .secret_hash
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt {
                    key_id: key_id().to_string(),
                    reason: "secret hash is not 32 bytes".into(),
                })?;
        let limits = record.limits().map_err(|reason| StoreError::Corrupt {
            key_id: key_id().to_string(),
            reason,
        })?;
        Ok(AuthEntry::new(
            secret_hash,
            scopes,
            record.account_id.as_str().into(),
            kind,
            limits,
        ))
    }

    pub fn get(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.healthy()?;
        match self.inner.keys.get(key_id.as_bytes())? {
            Some(value) => Ok(Some(decode(key_id.as_bytes(), &value)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys of `account` (every account when `None`) whose index
    /// key sorts after `after`, and the index key to continue from.
    pub fn list(
        &self,
        account: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<KeyRecord>, Option<Vec<u8>>), StoreError> {
        self.healthy()?;
        let prefix = account.map(account_prefix).unwrap_or_default();
        let start = match after {
            // A cursor is an index key of this account's range (16-byte key id last).
            Some(after) if after.starts_with(&prefix) && after.len() > prefix.len() + 16 - 1 => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            Some(_) => return Err(StoreError::BadCursor),
            None => prefix.clone(),
        };
        let mut records = Vec::new();
        let mut last = None;
        for item in self.inner.accounts.range(start..) {
            let (index_key, _) = item?;
            if !index_key.starts_with(&prefix) {
                break;
            }
            if records.len() == limit {
                return Ok((records, last));
            }
            let key_id = &index_key[index_key.len() - 16..];
            if let Some(value) = self.inner.keys.get(key_id)? {
                records.push(decode(key_id, &value)?);
            }
            last = Some(index_key.to_vec());
        }
        Ok((records, None))
    }

    /// Applies one key change decided on current state: `decide` sees the
    /// records named in `reads` as the source of truth holds them when the
    /// change applies (standalone: read under the writer lock; fleet: read
    /// from etcd and compared in the transaction, so `decide` may run again
    /// after a conflict). Returns once the change is durable and visible to
    /// Check on this sidecar.
    pub async fn mutate<T, E>(
        &self,
        reads: Vec<KeyId>,
        decide: impl Fn(&Snapshot) -> Result<(Change, AuditEvent, T), E> + Send + Sync + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.healthy()?;
        if let Some(fleet) = &self.inner.fleet {
            return fleet.mutate(self, reads, decide).await;
        }
        let store = self.clone();
        self.commit(move || {
            let mut snapshot = Snapshot::default();
            for key_id in reads {
                let record = store.get(&key_id)?;
                snapshot.records.push((key_id, record));
            }
            let (change, event, value) = decide(&snapshot)?;
            let publish = store.apply_local(change, event)?;
            Ok((publish, value))
        })
        .await
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

    /// Writes a change and its audit event into sled (the source of truth in
    /// standalone mode), in one transaction. Called under the writer lock.
    fn apply_local(&self, change: Change, event: AuditEvent) -> Result<Publish, StoreError> {
        let applied = self.apply_local_unchecked(change, event);
        self.fail_on_io(applied)
    }

    fn apply_local_unchecked(
        &self,
        change: Change,
        event: AuditEvent,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
        let sequence = inner
            .audit_sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event_key = event.sort_key(sequence);
        let event_value = prost::Message::encode_to_vec(&event);
        if sequence % AUDIT_PRUNE_EVERY == AUDIT_PRUNE_EVERY - 1 {
            self.prune_audit(event.time_unix_ms)?;
            self.prune_requests(event.time_unix_ms)?;
        }
        let indexed = audit::index_keys(&event, &event_key);
        let audit = |trail: &sled::transaction::TransactionalTree,
                     index: &sled::transaction::TransactionalTree| {
            trail.insert(&event_key[..], event_value.as_slice())?;
            for index_key in &indexed {
                index.insert(index_key.as_slice(), &[])?;
            }
            Ok::<_, sled::transaction::UnabortableTransactionError>(())
        };
        match change {
            Change::Create {
                record,
                cap,
                request,
            } => {
                let key_id = record_id(&record)?;
                if let Some(request) = &request {
                    if inner.requests.contains_key(request.lookup)? {
                        return Err(StoreError::DuplicateRequest);
                    }
                }
                let request = request.map(|request| {
                    (
                        request.lookup,
                        prost::Message::encode_to_vec(&request.record),
                    )
                });
                // Resolved under the lock: the catalog cannot change until it is released.
                let entry = self.auth_entry(&record)?;
                let held = inner
                    .accounts
                    .scan_prefix(account_prefix(&record.account_id))
                    .count();
                if held >= cap {
                    return Err(StoreError::AccountFull { cap });
                }
                let index_key = account_index_key(&record.account_id, &key_id);
                let value = prost::Message::encode_to_vec(&record);
                (
                    &inner.keys,
                    &inner.accounts,
                    &inner.audit,
                    &inner.audit_index,
                    &inner.requests,
                )
                    .transaction(|(keys, accounts, trail, index, requests)| {
                        if let Some((lookup, value)) = &request {
                            requests.insert(&lookup[..], value.as_slice())?;
                        }
                        if keys.insert(key_id.as_bytes(), value.as_slice())?.is_some() {
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                                key_id: key_id.to_string(),
                                reason: "random key id collided with an existing key".into(),
                            }));
                        }
                        accounts.insert(index_key.as_slice(), &[])?;
                        audit(trail, index)?;
                        Ok(())
                    })
                    .map_err(transaction_error)?;
                Ok(Publish::Upsert(key_id, Arc::new(entry)))
            }
            Change::Update(record) => {
                let key_id = record_id(&record)?;
                let entry = self.auth_entry(&record)?;
                let value = prost::Message::encode_to_vec(&record);
                (&inner.keys, &inner.audit, &inner.audit_index)
                    .transaction(|(keys, trail, index)| {
                        keys.insert(key_id.as_bytes(), value.as_slice())?;
                        audit(trail, index)?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(transaction_error)?;
                Ok(Publish::Upsert(key_id, Arc::new(entry)))
            }
            Change::Delete(record) => {
                let key_id = record_id(&record)?;
                let index_key = account_index_key(&record.account_id, &key_id);
                (
                    &inner.keys,
                    &inner.accounts,
                    &inner.audit,
                    &inner.audit_index,
                )
                    .transaction(|(keys, accounts, trail, index)| {
                        keys.remove(key_id.as_bytes())?;
                        accounts.remove(index_key.as_slice())?;
                        audit(trail, index)?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(transaction_error)?;
                // Not part of the change's atomicity: a stale mark is harmless.
                let _ = inner.last_used.remove(key_id.as_bytes());
                Ok(Publish::Remove(key_id))
            }
        }
    }

    /// Writes the "last used" marks set since the last round, in one batch,
    /// and syncs. Blocking. A crash loses at most one round (documented).
    pub fn persist_usage(&self) -> Result<usize, StoreError> {
        self.healthy()?;
        let mut persisted = self
            .inner
            .usage_persisted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let used: Vec<(KeyId, u32)> = self
            .inner
            .table
            .marks()
            .into_iter()
            .filter(|(key_id, minute)| persisted.get(key_id).is_none_or(|done| minute > done))
            .collect();
        if used.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for (key_id, minute) in &used {
            batch.insert(&key_id.as_bytes()[..], &minute.to_be_bytes()[..]);
        }
        let applied = self
            .inner
            .last_used
            .apply_batch(batch)
            .map_err(StoreError::from);
        let written = self.fail_on_io(applied).and_then(|()| self.sync_or_fail());
        written?;
        persisted.extend(used.iter().copied());
        Ok(used.len())
    }

    /// Puts the persisted "last used" marks into the table (after a load or
    /// a full resync).
    fn restore_marks(&self) -> Result<(), StoreError> {
        for item in self.inner.last_used.iter() {
            let (key, value) = item?;
            let (Ok(id), Ok(minute)) = (
                <[u8; 16]>::try_from(key.as_ref()),
                <[u8; 4]>::try_from(value.as_ref()),
            ) else {
                continue;
            };
            let (key_id, minute) = (KeyId::from_bytes(id), u32::from_be_bytes(minute));
            self.inner.table.restore_mark(&key_id, minute);
            self.inner
                .usage_persisted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key_id, minute);
        }
        Ok(())
    }

    /// Sets how long audit events are kept.
    pub fn set_audit_retention(&self, retention: std::time::Duration) {
        self.inner.audit_retention_ms.store(
            retention.as_millis().min(i64::MAX as u128) as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some(fleet) = &self.inner.fleet {
            fleet.set_audit_retention(retention);
        }
    }

    /// The first result filed under a CreateKey request id's `lookup`, if any.
    pub async fn create_request(
        &self,
        lookup: &[u8; 32],
    ) -> Result<Option<CreateRequestRecord>, StoreError> {
        self.healthy()?;
        if let Some(fleet) = &self.inner.fleet {
            return fleet.create_request(Some(self), lookup).await;
        }
        // Read under the writer lock and answered once everything applied
        // before it is durable: a retry never returns a key its first call
        // has applied but not yet synced.
        let (store, lookup) = (self.clone(), *lookup);
        let value = self
            .commit(move || {
                let value = store.inner.requests.get(lookup)?;
                Ok::<_, StoreError>((Publish::Nothing, value))
            })
            .await?;
        value
            .map(|value| {
                prost::Message::decode(value.as_ref()).map_err(|error| StoreError::Corrupt {
                    key_id: "create request".into(),
                    reason: error.to_string(),
                })
            })
            .transpose()
    }

    /// Removes request ids past their retry window: a bounded batch from
    /// where the last prune stopped. Called under the writer lock.
    fn prune_requests(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut cursor = self
            .inner
            .requests_pruned_to
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut seen = 0;
        for item in self.inner.requests.range(cursor.clone()..).take(10_000) {
            let (key, value) = item?;
            seen += 1;
            let filed: Result<CreateRequestRecord, _> = prost::Message::decode(value.as_ref());
            if filed
                .is_ok_and(|filed| now_ms - filed.time_unix_ms > crate::request_id::RETENTION_MS)
            {
                batch.remove(key.clone());
            }
            *cursor = key.to_vec();
            cursor.push(0);
        }
        if seen < 10_000 {
            cursor.clear(); // wrapped: start over next time
        }
        self.inner.requests.apply_batch(batch)?;
        Ok(())
    }

    /// Runs `apply` under the writer lock on a blocking thread, queues its
    /// change for the commit task, and waits until it is durable and visible.
    ///
    /// Once `apply` has started, the change completes even if the caller
    /// stops waiting (a request timeout): it is applied and made durable, or
    /// it is not applied at all; never half.
    async fn commit<T, E>(
        &self,
        apply: impl FnOnce() -> Result<(Publish, T), E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        let (done, durable) = oneshot::channel();
        let value = tokio::task::spawn_blocking(move || {
            let commits = store
                .inner
                .writer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            store.healthy()?;
            let queue = commits.as_ref().ok_or(StoreError::Closed)?;
            let (publish, value) = apply()?;
            queue
                .send(Commit { publish, done })
                .map_err(|_| StoreError::Closed)?;
            Ok::<_, E>(value)
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        durable.await.map_err(|_| StoreError::Closed)??;
        Ok(value)
    }

    /// Every stored record, encoded, read under the writer lock so the set is
    /// consistent (no mutation is half in it).
    pub fn export(&self) -> Result<Vec<sled::IVec>, StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        self.healthy()?;
        self.inner
            .keys
            .iter()
            .values()
            .map(|value| value.map_err(StoreError::from))
            .collect()
    }

    /// Writes records into an empty store (offline restore), checking each
    /// against the catalog, then flushes. Returns how many were written.
    pub fn import(
        &self,
        records: impl IntoIterator<Item = KeyRecord>,
    ) -> Result<usize, StoreError> {
        if !self.inner.keys.is_empty() {
            return Err(StoreError::NotEmpty {
                dir: self.inner.dir.display().to_string(),
            });
        }
        let mut count = 0;
        for record in records {
            self.auth_entry(&record)?;
            let key_id = record.key_id().ok_or_else(|| StoreError::Corrupt {
                key_id: format!("{:?}", record.key_id),
                reason: "key id is not 16 bytes".into(),
            })?;
            self.inner
                .keys
                .insert(key_id.as_bytes(), prost::Message::encode_to_vec(&record))?;
            self.inner
                .accounts
                .insert(account_index_key(&record.account_id, &key_id), &[])?;
            let event = AuditEvent {
                time_unix_ms: crate::authz::now_unix_ms(),
                actor: "admin".into(),
                action: "restore".into(),
                key_id: key_id.as_bytes().to_vec(),
                account_id: record.account_id.clone(),
                after: Some(KeyState::of(&record)),
                ..AuditEvent::default()
            };
            let sequence = self
                .inner
                .audit_sequence
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sort_key = event.sort_key(sequence);
            self.inner
                .audit
                .insert(&sort_key[..], prost::Message::encode_to_vec(&event))?;
            for index_key in audit::index_keys(&event, &sort_key) {
                self.inner.audit_index.insert(index_key, &[])?;
            }
            count += 1;
        }
        self.sync()?;
        Ok(count)
    }

    /// Puts `catalog` in force. Standalone: only if every stored key fits it
    /// (all its scopes exist and its kind, billing or not, is unchanged).
    /// Fleet mode: always, each mirror record judged again under it (see
    /// `mirror`). `also` runs right after the swap (to publish what was built
    /// against it). Runs under the writer lock, so no mutation slips in
    /// between the check and the swap.
    pub fn swap_catalog(
        &self,
        catalog: Arc<Catalog>,
        also: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if self.inner.fleet.is_some() {
            self.inner.catalog.store(catalog);
            also();
            return self.rejudge_mirror();
        }
        let current = self.inner.catalog.load();
        for item in self.inner.keys.iter() {
            let (id_bytes, value) = item?;
            let record = decode(&id_bytes, &value)?;
            let key_id = || record.key_id().map(|id| id.to_string()).unwrap_or_default();
            let mismatch = |source| StoreError::CatalogMismatch {
                key_id: key_id(),
                source,
            };
            let scopes = catalog
                .resolve(record.scopes.iter().map(String::as_str))
                .map_err(mismatch)?;
            let kind = catalog.kind_of(&scopes).map_err(mismatch)?;
            let was = current
                .resolve(record.scopes.iter().map(String::as_str))
                .ok()
                .and_then(|old| current.kind_of(&old).ok());
            if was != Some(kind) {
                return Err(StoreError::KindChanged { key_id: key_id() });
            }
        }
        self.inner.catalog.store(catalog);
        also();
        Ok(())
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

/// Whether a database without scopegate's format marker holds anything.
fn holds_data(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if name.as_ref() == b"meta" {
            continue;
        }
        if !db.open_tree(&name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Io(error),
    }
}
