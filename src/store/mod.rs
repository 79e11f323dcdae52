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

mod commit;
mod record;

pub use record::{KeyRecord, FORMAT_VERSION};

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
/// sled's page cache; the hot path never reads it, so keep it modest.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

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
    /// A change could not be made durable. From then on the process refuses
    /// every store operation and exits, so that its restart reloads from disk:
    /// memory never answers with state the disk may not hold.
    #[error("the store could not persist changes ({reason}); scopegate refuses changes and restarts to recover from disk: retry shortly")]
    Failed { reason: String },
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
    /// Serialises mutations: sled apply order == publish order, and
    /// per-account caps cannot race.
    writer: Mutex<mpsc::UnboundedSender<Commit>>,
    durable: Durable,
    /// `Some(reason)` once a change could not be made durable.
    failed: watch::Sender<Option<String>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts its commit task. Call
    /// [`Store::load`] before serving.
    pub fn open(dir: &Path, catalog: SharedCatalog) -> Result<Store, StoreError> {
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
            .cache_capacity(SLED_CACHE_BYTES)
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
        let (commits, commit_queue) = mpsc::unbounded_channel();
        let (failed, _) = watch::channel(None);
        tokio::spawn(commit::run(
            durable.clone(),
            table.clone(),
            commit_queue,
            failed.clone(),
        ));
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                keys,
                accounts,
                catalog,
                table,
                writer: Mutex::new(commits),
                durable,
                failed,
            }),
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
        published
    }

    fn publish_loaded(
        &self,
        batches: std::sync::mpsc::Receiver<Vec<(sled::IVec, sled::IVec)>>,
    ) -> Result<LoadedKeys, StoreError> {
        let mut count = LoadedKeys::default();
        // Keys of one account share one account id allocation.
        let mut accounts: std::collections::HashMap<String, Arc<str>> =
            std::collections::HashMap::new();
        for batch in batches {
            for (id_bytes, value) in batch {
                let record = decode(&id_bytes, &value)?;
                let key_id = record.key_id().ok_or_else(|| StoreError::Corrupt {
                    key_id: format!("{id_bytes:?}"),
                    reason: "key id is not 16 bytes".into(),
                })?;
                let mut entry = self.auth_entry(&record)?;
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
        Ok(AuthEntry {
            secret_hash,
            scopes,
            account_id: record.account_id.as_str().into(),
            kind,
        })
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
            Some(after) if after >= prefix.as_slice() => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            _ => prefix.clone(),
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

    /// Stores a new key if `authorize` (run under the writer lock, so it reads
    /// the state the write applies to) allows it and its account holds fewer
    /// than `cap` keys.
    pub async fn create<E>(
        &self,
        record: KeyRecord,
        cap: usize,
        authorize: impl FnOnce(&Store) -> Result<(), E> + Send + 'static,
    ) -> Result<(), E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let key_id = record.key_id().ok_or_else(|| StoreError::Corrupt {
            key_id: format!("{:?}", record.key_id),
            reason: "key id is not 16 bytes".into(),
        })?;
        let store = self.clone();
        self.commit(move || {
            authorize(&store)?;
            let inner = &store.inner;
            // Resolved under the lock: the catalog cannot change until it is released.
            let entry = store.auth_entry(&record)?;
            let held = inner
                .accounts
                .scan_prefix(account_prefix(&record.account_id))
                .count();
            if held >= cap {
                return Err(StoreError::AccountFull { cap }.into());
            }
            let index_key = account_index_key(&record.account_id, &key_id);
            let value = prost::Message::encode_to_vec(&record);
            (&inner.keys, &inner.accounts)
                .transaction(|(keys, accounts)| {
                    if keys.insert(key_id.as_bytes(), value.as_slice())?.is_some() {
                        return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                            key_id: key_id.to_string(),
                            reason: "random key id collided with an existing key".into(),
                        }));
                    }
                    accounts.insert(index_key.as_slice(), &[])?;
                    Ok(())
                })
                .map_err(transaction_error)?;
            Ok((Publish::Upsert(key_id, Arc::new(entry)), ()))
        })
        .await
    }

    /// Replaces a key's record with `change(store, current)`; `change` runs
    /// under the writer lock, so what it reads (the record, the caller's own
    /// record) is the state the write applies to. Returns the records before
    /// and after.
    pub async fn update<E>(
        &self,
        key_id: KeyId,
        change: impl FnOnce(&Store, &KeyRecord) -> Result<KeyRecord, E> + Send + 'static,
    ) -> Result<(KeyRecord, KeyRecord), E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        self.commit(move || {
            let current = store.get(&key_id)?.ok_or(StoreError::NotFound)?;
            let updated = change(&store, &current)?;
            debug_assert_eq!(updated.account_id, current.account_id);
            let entry = store.auth_entry(&updated)?;
            let value = prost::Message::encode_to_vec(&updated);
            store
                .inner
                .keys
                .insert(key_id.as_bytes(), value)
                .map_err(StoreError::from)?;
            Ok((Publish::Upsert(key_id, Arc::new(entry)), (current, updated)))
        })
        .await
    }

    /// Deletes a key if `allow(store, current)` says so (under the writer
    /// lock, like `update`); returns what was deleted.
    pub async fn delete<E>(
        &self,
        key_id: KeyId,
        allow: impl FnOnce(&Store, &KeyRecord) -> Result<(), E> + Send + 'static,
    ) -> Result<KeyRecord, E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let store = self.clone();
        self.commit(move || {
            let inner = &store.inner;
            let current = store.get(&key_id)?.ok_or(StoreError::NotFound)?;
            allow(&store, &current)?;
            let index_key = account_index_key(&current.account_id, &key_id);
            (&inner.keys, &inner.accounts)
                .transaction(|(keys, accounts)| {
                    keys.remove(key_id.as_bytes())?;
                    accounts.remove(index_key.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(transaction_error)?;
            Ok((Publish::Remove(key_id), current))
        })
        .await
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
            let (publish, value) = apply()?;
            commits
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
            count += 1;
        }
        self.sync()?;
        Ok(count)
    }

    /// Puts `catalog` in force, if every stored key fits it: all its scopes
    /// exist and its kind (billing or not) is unchanged; `also` runs right
    /// after the swap (to publish what was built against it). Runs under the
    /// writer lock, so no mutation slips in between the check and the swap.
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
