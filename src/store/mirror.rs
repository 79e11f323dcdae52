//! Fleet mode's local mirror: what etcd sends, written to sled and published
//! to the [`KeyTable`](crate::key::KeyTable).
//!
//! One rule for every way a record arrives (start-up from the mirror, a watch
//! event, a full read, a catalog reload): a record this sidecar cannot use (a
//! scope its catalog lacks, a field it cannot read, an inner id that differs
//! from the id in its etcd path) is denied here, counted in
//! `scopegate_fleet_unfit_records` and logged once, and stops nothing: the
//! other keys keep working, and the record is judged again when it changes or
//! the catalog does. The mirror is keyed by the id in the etcd path.

use std::collections::HashSet;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, Transactional};

use super::fleet::MirrorChange;
use super::record::{account_index_key, RoleRecord};
use super::roles::{role_index_key, RoleSource};
use super::{decode, transaction_error, Store, StoreError, ETCD_REVISION_KEY};
use crate::key::AuthEntry;
use crate::role::RoleId;
use crate::store::KeyRecord;
use crate::token::KeyId;

/// The records this sidecar denies because it cannot use them.
#[derive(Default)]
pub(super) struct Unfit {
    ids: std::sync::Mutex<HashSet<KeyId>>,
}

impl Unfit {
    fn update(&self, change: impl FnOnce(&mut HashSet<KeyId>) -> bool) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let changed = change(&mut ids);
        metrics::gauge!(crate::telemetry::FLEET_UNFIT_RECORDS).set(ids.len() as f64);
        changed
    }

    /// Marks `key_id` unfit; logs the first time.
    pub(super) fn deny(&self, key_id: KeyId, reason: &dyn std::fmt::Display) {
        if self.update(|ids| ids.insert(key_id)) {
            tracing::error!(%key_id, error = %reason, "a key record from etcd cannot be used on this sidecar: denied here (other keys are unaffected)");
        }
    }

    fn fits(&self, key_id: &KeyId) {
        if self.update(|ids| ids.remove(key_id)) {
            tracing::info!(%key_id, "a key record denied before is usable now");
        }
    }

    fn retain(&self, keep: &HashSet<KeyId>) {
        self.update(|ids| {
            ids.retain(|id| keep.contains(id));
            true
        });
    }
}

impl Store {
    /// The hot-path entry of a record stored under `key_id`, or why this
    /// sidecar cannot use it.
    pub(super) fn fit_entry(
        &self,
        key_id: KeyId,
        record: &KeyRecord,
    ) -> Result<AuthEntry, StoreError> {
        if record.key_id() != Some(key_id) {
            return Err(StoreError::Corrupt {
                key_id: key_id.to_string(),
                reason: "the record inside names another key id".into(),
            });
        }
        self.auth_entry(record)
    }

    /// Fleet mode's judgement of one record: its entry, or `None` (denied
    /// here, counted, logged once).
    pub(super) fn judge(&self, key_id: KeyId, record: &KeyRecord) -> Option<AuthEntry> {
        match self.fit_entry(key_id, record) {
            Ok(entry) => {
                self.inner.unfit.fits(&key_id);
                Some(entry)
            }
            Err(error) => {
                self.inner.unfit.deny(key_id, &error);
                None
            }
        }
    }

    /// Denies a record that could not even be decoded.
    pub(super) fn deny_unreadable(&self, key_id: KeyId, reason: &dyn std::fmt::Display) {
        self.inner.table.remove(&key_id);
        self.inner.unfit.deny(key_id, reason);
    }

    /// Applies one batch of watch events and its revision to the mirror in
    /// one sled transaction, syncs, then publishes to the table.
    pub(super) fn apply_mirror(
        &self,
        changes: &[MirrorChange],
        revision: i64,
    ) -> Result<(), StoreError> {
        let applied = self.apply_mirror_unchecked(changes, revision);
        self.fail_on_io(applied)
    }

    fn apply_mirror_unchecked(
        &self,
        changes: &[MirrorChange],
        revision: i64,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.healthy()?;
        let removed_accounts = self.removed_accounts(changes)?;
        let (regrant, unlisted) = self.roles_moved(changes)?;
        let encoded: Vec<Option<Vec<u8>>> = changes
            .iter()
            .map(|change| match change {
                MirrorChange::Put(_, record) => Some(prost::Message::encode_to_vec(record)),
                MirrorChange::Role(_, Some(role)) => Some(prost::Message::encode_to_vec(role)),
                _ => None,
            })
            .collect();
        (
            &inner.keys,
            &inner.accounts,
            &inner.meta,
            &inner.roles,
            &inner.role_accounts,
        )
            .transaction(|(keys, accounts, meta, roles, role_accounts)| {
                for listed in &unlisted {
                    role_accounts.remove(listed.as_slice())?;
                }
                for (change, value) in changes.iter().zip(&encoded) {
                    match (change, value) {
                        (MirrorChange::Role(role_id, Some(role)), Some(value)) => {
                            roles.insert(&role_id.as_bytes()[..], value.as_slice())?;
                            role_accounts.insert(role_index_key(role), &[])?;
                        }
                        (MirrorChange::Role(role_id, None), None) => {
                            roles.remove(&role_id.as_bytes()[..])?;
                        }
                        (MirrorChange::Put(key_id, record), Some(value)) => {
                            keys.insert(key_id.as_bytes(), value.as_slice())?;
                            accounts.insert(account_index_key(&record.account_id, key_id), &[])?;
                        }
                        (MirrorChange::Delete(key_id) | MirrorChange::Unreadable(key_id, _), _) => {
                            keys.remove(key_id.as_bytes())?;
                            if let Some((_, account)) =
                                removed_accounts.iter().find(|(id, _)| id == key_id)
                            {
                                accounts.remove(account_index_key(account, key_id))?;
                            }
                        }
                        _ => {}
                    }
                }
                meta.insert(ETCD_REVISION_KEY, &revision.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        self.sync_or_fail()?;
        for change in changes {
            match change {
                MirrorChange::Put(key_id, record) => self.publish(*key_id, record),
                MirrorChange::Delete(key_id) => {
                    inner.table.remove(key_id);
                    inner.unfit.fits(key_id);
                }
                MirrorChange::Unreadable(key_id, reason) => self.deny_unreadable(*key_id, reason),
                MirrorChange::Role(..) => {}
            }
        }
        self.publish_again(regrant)
    }

    /// Accounts of removed keys, from the mirror (a delete event has no value).
    fn removed_accounts(
        &self,
        changes: &[MirrorChange],
    ) -> Result<Vec<(KeyId, String)>, StoreError> {
        let mut removed = Vec::new();
        for change in changes {
            if let MirrorChange::Delete(key_id) | MirrorChange::Unreadable(key_id, _) = change {
                if let Some(value) = self.inner.keys.get(key_id.as_bytes())? {
                    if let Ok(record) = decode(key_id.as_bytes(), &value) {
                        removed.push((*key_id, record.account_id));
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Roles of a watch batch whose grants move: their members (old and new)
    /// to publish again once it is applied, and the index entries of those
    /// removed.
    fn roles_moved(
        &self,
        changes: &[MirrorChange],
    ) -> Result<(Vec<KeyId>, Vec<Vec<u8>>), StoreError> {
        let mut regrant = Vec::new();
        let mut unlisted = Vec::new();
        for change in changes {
            if let MirrorChange::Role(role_id, role) = change {
                let before = self.inner.roles.role(role_id)?;
                if let (Some(before), None) = (&before, role) {
                    unlisted.push(role_index_key(before));
                }
                let moved = match (&before, role) {
                    (Some(before), Some(role)) => !before.same_grants(role),
                    (None, None) => false,
                    _ => true,
                };
                if moved {
                    regrant.extend(before.iter().flat_map(RoleRecord::member_ids));
                    regrant.extend(role.iter().flat_map(|role| role.member_ids()));
                }
            }
        }
        Ok((regrant, unlisted))
    }

    /// Publishes these keys again from the mirror (their roles moved).
    fn publish_again(&self, mut keys: Vec<KeyId>) -> Result<(), StoreError> {
        keys.sort_unstable_by_key(|key_id| *key_id.as_bytes());
        keys.dedup();
        for key_id in keys {
            if let Some(value) = self.inner.keys.get(key_id.as_bytes())? {
                match decode(key_id.as_bytes(), &value) {
                    Ok(record) => self.publish(key_id, &record),
                    Err(error) => self.deny_unreadable(key_id, &error),
                }
            }
        }
        Ok(())
    }

    /// Replaces the whole mirror and table with a full read at `revision`:
    /// one sled transaction, then brings the table to the new set.
    pub(super) fn replace_mirror(
        &self,
        records: Vec<(KeyId, KeyRecord)>,
        roles: Vec<(RoleId, RoleRecord)>,
        unreadable: &[(KeyId, String)],
        revision: i64,
    ) -> Result<(), StoreError> {
        let replaced = self.replace_mirror_unchecked(records, roles, unreadable, revision);
        self.fail_on_io(replaced)
    }

    fn replace_mirror_unchecked(
        &self,
        records: Vec<(KeyId, KeyRecord)>,
        roles: Vec<(RoleId, RoleRecord)>,
        unreadable: &[(KeyId, String)],
        revision: i64,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _writer = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.healthy()?;
        let keep: HashSet<KeyId> = records.iter().map(|(id, _)| *id).collect();
        let stale = self.stale_keys(&keep)?;
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(|(_, record)| prost::Message::encode_to_vec(record))
            .collect();
        let stale_roles: Vec<sled::IVec> = inner.roles.iter().keys().collect::<Result<_, _>>()?;
        let stale_listed: Vec<sled::IVec> = inner
            .role_accounts
            .iter()
            .keys()
            .collect::<Result<_, _>>()?;
        let role_values: Vec<(RoleId, Vec<u8>)> = roles
            .iter()
            .map(|(role_id, role)| (*role_id, prost::Message::encode_to_vec(role)))
            .collect();
        (
            &inner.keys,
            &inner.accounts,
            &inner.meta,
            &inner.roles,
            &inner.role_accounts,
        )
            .transaction(|(keys, accounts, meta, kept_roles, role_accounts)| {
                for role_id in &stale_roles {
                    kept_roles.remove(role_id)?;
                }
                for listed in &stale_listed {
                    role_accounts.remove(listed)?;
                }
                for ((role_id, value), (_, role)) in role_values.iter().zip(&roles) {
                    kept_roles.insert(&role_id.as_bytes()[..], value.as_slice())?;
                    role_accounts.insert(role_index_key(role), &[])?;
                }
                for (key_id, account) in &stale {
                    keys.remove(key_id.as_bytes())?;
                    if let Some(account) = account {
                        accounts.remove(account_index_key(account, key_id))?;
                    }
                }
                for ((key_id, record), value) in records.iter().zip(&encoded) {
                    keys.insert(key_id.as_bytes(), value.as_slice())?;
                    accounts.insert(account_index_key(&record.account_id, key_id), &[])?;
                }
                meta.insert(ETCD_REVISION_KEY, &revision.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        self.sync_or_fail()?;
        let entries: Vec<(KeyId, Arc<AuthEntry>)> = records
            .iter()
            .filter_map(|(key_id, record)| {
                self.judge(*key_id, record)
                    .map(|entry| (*key_id, Arc::new(entry)))
            })
            .collect();
        inner.table.replace_all(entries);
        inner.unfit.retain(&keep);
        for (key_id, reason) in unreadable {
            inner.unfit.deny(*key_id, reason);
        }
        self.restore_marks()?;
        Ok(())
    }

    /// The mirror's keys a full read no longer has, with their accounts.
    #[allow(clippy::type_complexity)]
    fn stale_keys(
        &self,
        keep: &HashSet<KeyId>,
    ) -> Result<Vec<(KeyId, Option<String>)>, StoreError> {
        let mut stale = Vec::new();
        for item in self.inner.keys.iter() {
            let (id_bytes, value) = item?;
            let Ok(id) = <[u8; 16]>::try_from(id_bytes.as_ref()) else {
                continue;
            };
            let key_id = KeyId::from_bytes(id);
            if !keep.contains(&key_id) {
                let account = decode(&id_bytes, &value).map(|record| record.account_id);
                stale.push((key_id, account.ok()));
            }
        }
        Ok(stale)
    }

    /// Publishes a record that arrived from etcd, or denies it here.
    fn publish(&self, key_id: KeyId, record: &KeyRecord) {
        match self.judge(key_id, record) {
            Some(entry) => self.inner.table.insert(key_id, Arc::new(entry)),
            None => self.inner.table.remove(&key_id),
        }
    }

    /// After a catalog swap in fleet mode: every mirror record is judged
    /// again under the new catalog (a key it now fits is published, one it
    /// no longer fits is denied). Called under the writer lock.
    pub(super) fn rejudge_mirror(&self) -> Result<(), StoreError> {
        for item in self.inner.keys.iter() {
            let (id_bytes, value) = item?;
            let Ok(id) = <[u8; 16]>::try_from(id_bytes.as_ref()) else {
                continue;
            };
            let key_id = KeyId::from_bytes(id);
            let record = match decode(&id_bytes, &value) {
                Ok(record) => record,
                Err(error) => {
                    self.deny_unreadable(key_id, &error);
                    continue;
                }
            };
            let published = self.inner.table.get(&key_id);
            match self.judge(key_id, &record) {
                None => self.inner.table.remove(&key_id),
                Some(entry) => {
                    if published.is_none_or(|old| old.kind != entry.kind) {
                        self.inner.table.insert(key_id, Arc::new(entry));
                    }
                }
            }
        }
        Ok(())
    }
}
