//! Standalone mode, where sled is the truth: each change in one sled
//! transaction under the writer lock, then group commit (commit.rs); the
//! CreateKey request ids; offline restore.

use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, Transactional};
use tokio::sync::oneshot;

use super::audit::{AuditEvent, KeyState};
use super::commit::{Commit, Publish};
use super::record::{
    account_index_key, account_prefix, CreateRequest, CreateRequestRecord, KeyRecord, RoleRecord,
};
use super::roles::{role_index_key, role_writes};
use super::{
    audit, record_id, transaction_error, Change, Snapshot, Store, StoreError, AUDIT_PRUNE_EVERY,
};

impl Store {
    /// Writes a change and its audit event into sled (the source of truth in
    /// standalone mode), in one transaction. Called under the writer lock.
    pub(super) fn apply_local(
        &self,
        change: Change,
        event: AuditEvent,
        snapshot: &Snapshot,
    ) -> Result<Publish, StoreError> {
        let applied = self.apply_local_unchecked(change, event, snapshot);
        self.fail_on_io(applied)
    }

    pub(super) fn apply_local_unchecked(
        &self,
        change: Change,
        event: AuditEvent,
        snapshot: &Snapshot,
    ) -> Result<Publish, StoreError> {
        let sequence = self
            .inner
            .audit_sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if sequence % AUDIT_PRUNE_EVERY == AUDIT_PRUNE_EVERY - 1 {
            self.prune_audit(event.time_unix_ms)?;
            self.prune_requests(event.time_unix_ms)?;
        }
        if let Some(max) = self.audit_trim_due(&event.account_id) {
            self.trim_account_audit(&event.account_id, max)?;
        }
        let audit = AuditWrite::new(&event, sequence, self.local_outbox_entry(&event)?);
        let roles = RoleWrites::new(role_writes(&change, snapshot)?);
        match change {
            Change::Create {
                record,
                cap,
                request,
            } => self.create_local(record, cap, request, &audit, &roles),
            Change::Update(record) => self.update_local(record, &audit, &roles),
            Change::Delete(record) => self.delete_local(record, &audit, &roles),
            Change::PutRole(role) => self.put_role_local(role, snapshot, &audit),
            Change::DeleteRole(role) => self.delete_role_local(role, &audit),
        }
    }

    /// A role, new or changed, and its members' entries if its grants moved.
    fn put_role_local(
        &self,
        role: RoleRecord,
        snapshot: &Snapshot,
        audit: &AuditWrite,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
        let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
        let before = snapshot.role(&role_id);
        // The members are the store's to keep, never the decision's.
        let mut role = role;
        role.members = before
            .map(|before| before.members.clone())
            .unwrap_or_default();
        self.check_role_name(&role, before.is_none())?;
        let entries = match before {
            Some(before) if !before.same_grants(&role) => {
                self.member_entries(role_id, before.member_ids(), Some(&role))?
            }
            _ => Vec::new(),
        };
        let value = prost::Message::encode_to_vec(&role);
        let listed = role_index_key(&role);
        (
            &inner.roles,
            &inner.role_accounts,
            &inner.audit,
            &inner.audit_index,
        )
            .transaction(|(roles, accounts, trail, index)| {
                roles.insert(&role_id.as_bytes()[..], value.as_slice())?;
                accounts.insert(listed.as_slice(), &[])?;
                audit.write(trail, index)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        Ok(Publish::Many(entries))
    }

    /// A role removed; its members lose its grants.
    fn delete_role_local(
        &self,
        role: RoleRecord,
        audit: &AuditWrite,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
        let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
        let entries = self.member_entries(role_id, role.member_ids(), None)?;
        let listed = role_index_key(&role);
        (
            &inner.roles,
            &inner.role_accounts,
            &inner.audit,
            &inner.audit_index,
        )
            .transaction(|(roles, accounts, trail, index)| {
                roles.remove(&role_id.as_bytes()[..])?;
                accounts.remove(listed.as_slice())?;
                audit.write(trail, index)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        Ok(Publish::Many(entries))
    }

    fn create_local(
        &self,
        record: KeyRecord,
        cap: usize,
        request: Option<CreateRequest>,
        audit: &AuditWrite,
        role_writes: &RoleWrites,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
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
            &inner.roles,
        )
            .transaction(|(keys, accounts, trail, index, requests, roles)| {
                role_writes.write(roles)?;
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
                audit.write(trail, index)?;
                Ok(())
            })
            .map_err(transaction_error)?;
        Ok(Publish::Upsert(key_id, Arc::new(entry)))
    }

    fn update_local(
        &self,
        record: KeyRecord,
        audit: &AuditWrite,
        role_writes: &RoleWrites,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
        let key_id = record_id(&record)?;
        let entry = self.auth_entry(&record)?;
        let value = prost::Message::encode_to_vec(&record);
        (&inner.keys, &inner.audit, &inner.audit_index, &inner.roles)
            .transaction(|(keys, trail, index, roles)| {
                role_writes.write(roles)?;
                keys.insert(key_id.as_bytes(), value.as_slice())?;
                audit.write(trail, index)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        Ok(Publish::Upsert(key_id, Arc::new(entry)))
    }

    fn delete_local(
        &self,
        record: KeyRecord,
        audit: &AuditWrite,
        role_writes: &RoleWrites,
    ) -> Result<Publish, StoreError> {
        let inner = &self.inner;
        let key_id = record_id(&record)?;
        let index_key = account_index_key(&record.account_id, &key_id);
        (
            &inner.keys,
            &inner.accounts,
            &inner.audit,
            &inner.audit_index,
            &inner.roles,
        )
            .transaction(|(keys, accounts, trail, index, roles)| {
                role_writes.write(roles)?;
                keys.remove(key_id.as_bytes())?;
                accounts.remove(index_key.as_slice())?;
                audit.write(trail, index)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(transaction_error)?;
        // Not part of the change's atomicity: a stale mark is harmless.
        let _ = inner.last_used.remove(key_id.as_bytes());
        Ok(Publish::Remove(key_id))
    }

    /// Standalone: the first result filed under a CreateKey request id's
    /// `lookup`, if any.
    pub(super) async fn local_create_request(
        &self,
        lookup: [u8; 32],
    ) -> Result<Option<CreateRequestRecord>, StoreError> {
        // Read under the writer lock and answered once everything applied
        // before it is durable: a retry never returns a key its first call
        // has applied but not yet synced.
        let store = self.clone();
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
    pub(super) fn prune_requests(&self, now_ms: i64) -> Result<(), StoreError> {
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
    pub(super) async fn commit<T, E>(
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

    /// Writes records into an empty store (offline restore), checking each
    /// against the catalog, then flushes. Returns how many were written.
    pub fn import(
        &self,
        records: Vec<KeyRecord>,
        roles: Vec<RoleRecord>,
    ) -> Result<usize, StoreError> {
        if !self.inner.keys.is_empty() || !self.inner.roles.is_empty() {
            return Err(StoreError::NotEmpty {
                dir: self.inner.dir.display().to_string(),
            });
        }
        // Roles first, their members taken from the keys (never from the
        // file), so every key below is judged with its roles in place.
        for mut role in with_members(roles, &records)? {
            role.version = RoleRecord::VERSION;
            let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
            self.check_role_name(&role, true)?;
            self.inner
                .roles
                .insert(role_id.as_bytes(), prost::Message::encode_to_vec(&role))?;
            self.inner
                .role_accounts
                .insert(role_index_key(&role), &[])?;
        }
        let mut count = 0;
        for record in records {
            let record = record.versioned();
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
}

/// One audit event and its index entries, written inside a change's
/// transaction.
struct AuditWrite {
    key: Vec<u8>,
    value: Vec<u8>,
    indexed: [Vec<u8>; 2],
    /// The change's webhook outbox entry (`store/webhooks.rs`).
    outbox: Option<super::webhooks::OutboxWrite>,
}

impl AuditWrite {
    fn new(
        event: &AuditEvent,
        sequence: u64,
        outbox: Option<super::webhooks::OutboxWrite>,
    ) -> AuditWrite {
        let key = event.sort_key(sequence);
        AuditWrite {
            outbox,
            indexed: audit::index_keys(event, &key),
            value: prost::Message::encode_to_vec(event),
            key: key.to_vec(),
        }
    }

    fn write(
        &self,
        trail: &sled::transaction::TransactionalTree,
        index: &sled::transaction::TransactionalTree,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        trail.insert(self.key.as_slice(), self.value.as_slice())?;
        for index_key in &self.indexed {
            index.insert(index_key.as_slice(), &[])?;
        }
        if let Some((key, value)) = &self.outbox {
            index.insert(key.as_slice(), value.as_slice())?;
        }
        Ok(())
    }
}

/// The role records a key change rewrites, encoded once, written inside the
/// change's sled transaction.
pub(super) struct RoleWrites(Vec<(Vec<u8>, Vec<u8>)>);

impl RoleWrites {
    fn new(roles: Vec<RoleRecord>) -> RoleWrites {
        RoleWrites(
            roles
                .iter()
                .map(|role| (role.role_id.clone(), prost::Message::encode_to_vec(role)))
                .collect(),
        )
    }

    fn write(
        &self,
        roles: &sled::transaction::TransactionalTree,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        for (role_id, value) in &self.0 {
            roles.insert(role_id.as_slice(), value.as_slice())?;
        }
        Ok(())
    }
}

/// Roles with their member lists made from the keys that reference them; a
/// key naming a role of another account, or none in the file, is refused.
pub(super) fn with_members(
    roles: Vec<RoleRecord>,
    records: &[KeyRecord],
) -> Result<Vec<RoleRecord>, StoreError> {
    let mut roles: std::collections::BTreeMap<Vec<u8>, RoleRecord> = roles
        .into_iter()
        .map(|mut role| {
            role.members.clear();
            (role.role_id.clone(), role)
        })
        .collect();
    for record in records {
        let key_id = record_id(record)?;
        for role_id in &record.role_ids {
            let role = roles
                .get_mut(role_id)
                .filter(|role| role.account_id == record.account_id)
                .ok_or_else(|| StoreError::Corrupt {
                    key_id: key_id.to_string(),
                    reason: "names a role its account does not have in this backup".into(),
                })?;
            if role.members.len() >= crate::role::MAX_KEYS_PER_ROLE {
                return Err(StoreError::RoleFull {
                    role_id: role.id().map(|id| id.to_string()).unwrap_or_default(),
                    cap: crate::role::MAX_KEYS_PER_ROLE,
                });
            }
            role.members.push(key_id.as_bytes().to_vec());
        }
    }
    Ok(roles.into_values().collect())
}
