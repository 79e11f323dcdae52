//! The in-memory table `Check` reads: filled from disk at start (on two
//! threads), kept fitting the catalog, and the "last used" marks.

use std::sync::Arc;

use super::record::KeyRecord;
use super::roles::RoleSource;
use super::{decode, LoadedKeys, Store, StoreError};
use crate::key::AuthEntry;
use crate::scope::{Catalog, KeyKind};
use crate::token::KeyId;

impl Store {
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

    pub(super) fn publish_loaded(
        &self,
        batches: std::sync::mpsc::Receiver<Vec<(sled::IVec, sled::IVec)>>,
    ) -> Result<LoadedKeys, StoreError> {
        let mut count = LoadedKeys::default();
        // Keys of one account share one account id allocation.
        let mut accounts: std::collections::HashMap<String, Arc<str>> =
            std::collections::HashMap::new();
        let fleet = self.inner.truth.mirrors();
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

    /// The hot-path view of a record, its roles as kept now.
    pub(super) fn auth_entry(&self, record: &KeyRecord) -> Result<AuthEntry, StoreError> {
        self.auth_entry_with(record, &self.inner.roles)
    }

    /// The hot-path view of a record: its effective scopes (its own and its
    /// roles', from `roles`) resolved once, here, never per Check.
    pub(super) fn auth_entry_with(
        &self,
        record: &KeyRecord,
        roles: &dyn RoleSource,
    ) -> Result<AuthEntry, StoreError> {
        let key_id = || KeyId::from_bytes(record.key_id.as_slice().try_into().unwrap_or([0; 16]));
        let catalog = self.inner.catalog.load();
        let names = Store::effective_names(record, roles)?;
        let scopes = catalog
            .resolve(names.iter().map(String::as_str))
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
        let mut extras = record.extras().map_err(|reason| StoreError::Corrupt {
            key_id: key_id().to_string(),
            reason,
        })?;
        if !record.rate_limits.is_empty() {
            let rate = active_limits(record, &catalog, &key_id().to_string())?;
            extras.get_or_insert_with(Default::default).rate = Some(rate);
        }
        Ok(AuthEntry::new(
            secret_hash,
            scopes,
            record.account_id.as_str().into(),
            kind,
            extras,
        ))
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
    pub(super) fn restore_marks(&self) -> Result<(), StoreError> {
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
        if self.inner.truth.mirrors() {
            self.inner.catalog.store(catalog);
            also();
            return self.rejudge_mirror();
        }
        let current = self.inner.catalog.load();
        for role in self.list_roles(None)? {
            catalog
                .resolve(role.scopes.iter().map(String::as_str))
                .map_err(|source| StoreError::CatalogMismatch {
                    key_id: role.id().map(|id| id.to_string()).unwrap_or_default(),
                    source,
                })?;
        }
        for item in self.inner.keys.iter() {
            let (id_bytes, value) = item?;
            let record = decode(&id_bytes, &value)?;
            let key_id = || record.key_id().map(|id| id.to_string()).unwrap_or_default();
            let mismatch = |source| StoreError::CatalogMismatch {
                key_id: key_id(),
                source,
            };
            let names = Store::effective_names(&record, &self.inner.roles)?;
            let scopes = catalog
                .resolve(names.iter().map(String::as_str))
                .map_err(mismatch)?;
            let kind = catalog.kind_of(&scopes).map_err(mismatch)?;
            let was = current
                .resolve(names.iter().map(String::as_str))
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
}

/// A record's rate limits as Check reads them: checked, scopes resolved,
/// counters named.
fn active_limits(
    record: &KeyRecord,
    catalog: &crate::scope::Catalog,
    key_id: &str,
) -> Result<std::sync::Arc<[crate::ratelimit::ActiveLimit]>, StoreError> {
    let limits = record.rate_limits();
    crate::ratelimit::check_all(&limits).map_err(|reason| StoreError::Corrupt {
        key_id: key_id.to_owned(),
        reason,
    })?;
    limits
        .iter()
        .map(|limit| {
            let scopes = match limit.scopes.is_empty() {
                true => None,
                false => Some(
                    catalog
                        .resolve(limit.scopes.iter().map(String::as_str))
                        .map_err(|source| StoreError::CatalogMismatch {
                            key_id: key_id.to_owned(),
                            source,
                        })?,
                ),
            };
            Ok(crate::ratelimit::ActiveLimit::new(
                limit,
                scopes,
                key_id,
                &record.account_id,
            ))
        })
        .collect()
}
