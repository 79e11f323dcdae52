//! Webhook state (endpoints, the outbox, pending deliveries, dead letters)
//! as ordered key → value entries, kept where the keys' truth is: sled
//! standalone, etcd in a fleet (`fleet/webhooks.rs`). The webhook logic
//! (`crate::webhooks`) is written once over this small contract.
//!
//! The outbox entry of a key change is written in the change's own atomic
//! write: standalone in the same sled transaction (webhook entries share
//! the audit index's tree, under `w/`, which every change transaction
//! already writes), in a fleet in the same etcd transaction. So an
//! acknowledged change always has its event, and a failed one none.

use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{AuditEvent, Store, StoreError};

/// Where webhook entries start in the audit index tree (standalone).
const PREFIX: &[u8] = b"w/";
/// The outbox's entries, by the order their changes applied.
pub const OUTBOX: &str = "outbox/";

/// One stored entry: its path (under the webhook prefix), its value, and
/// its place in the order changes applied (outbox entries).
#[derive(Debug, Clone)]
pub struct HookEntry {
    pub path: String,
    pub value: Vec<u8>,
    pub order: i64,
}

/// A sled key and value of an outbox entry, written in a change's transaction.
pub(super) type OutboxWrite = (Vec<u8>, Vec<u8>);

/// One write of a webhook state change.
#[derive(Debug, Clone)]
pub enum HookOp {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Store {
    /// Whether key changes write an outbox entry (a server delivering
    /// webhooks turns this on; tools and tests of the store alone do not).
    pub fn set_outbox(&self, on: bool) {
        self.inner.outbox.store(on, Ordering::Relaxed);
    }

    /// Resolves once a change made through this store is durable (at once
    /// if one was since the last call): the deliverer need not poll for it.
    pub async fn outbox_written(&self) {
        self.inner.outbox_written.notified().await
    }

    pub(super) fn outbox_on(&self) -> bool {
        self.inner.outbox.load(Ordering::Relaxed)
    }

    /// Up to `limit` entries under `prefix`, after `after` (a path), in
    /// path order; the outbox in the order its changes applied.
    pub async fn hooks_scan(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HookEntry>, StoreError> {
        self.inner
            .truth
            .hooks_scan(self, prefix.to_owned(), after, limit)
            .await
    }

    /// The entry at `path`, if any.
    pub async fn hooks_get(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.hooks_scan(path, None, 1).await?;
        Ok(found
            .into_iter()
            .find(|entry| entry.path == path)
            .map(|entry| entry.value))
    }

    /// Applies `ops` at once, durably (standalone: one sled batch, synced;
    /// fleet: one etcd transaction).
    pub async fn hooks_apply(&self, ops: Vec<HookOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.inner.truth.hooks_apply(self, ops).await
    }

    /// Puts `event` in the outbox unless an event was put under `once`
    /// before (false then): an event derived from time or traffic (expiry,
    /// a rate limit hit) is sent once however many sidecars notice it.
    /// `once` entries carry their expiry (unix ms) and are pruned after it.
    pub async fn hooks_enqueue_once(
        &self,
        once: String,
        expires_unix_ms: i64,
        event: AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner
            .truth
            .hooks_enqueue_once(self, once, expires_unix_ms, event)
            .await
    }

    /// Whether this sidecar delivers webhooks now: always standalone; in a
    /// fleet the one holding the delivery lease in etcd.
    pub async fn hooks_leader(&self, holder: &str) -> Result<bool, StoreError> {
        self.inner.truth.hooks_leader(holder.to_owned()).await
    }

    /// Standalone: the outbox entry of a change, written in its
    /// transaction (`None` when the outbox is off).
    pub(super) fn local_outbox_entry(
        &self,
        event: &AuditEvent,
    ) -> Result<Option<OutboxWrite>, StoreError> {
        if !self.outbox_on() {
            return Ok(None);
        }
        let order = self.inner.durable.generate_id()?;
        Ok(Some((
            local_key(&outbox_path(order)),
            prost::Message::encode_to_vec(event),
        )))
    }

    pub(super) fn local_hooks_scan(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HookEntry>, StoreError> {
        self.healthy()?;
        let start = match &after {
            Some(after) => {
                let mut key = local_key(after);
                key.push(0);
                key
            }
            None => local_key(prefix),
        };
        let prefix_key = local_key(prefix);
        let mut entries = Vec::new();
        for item in self.inner.audit_index.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix_key) || entries.len() == limit {
                break;
            }
            let path = String::from_utf8_lossy(&key[PREFIX.len()..]).into_owned();
            let order = outbox_order(&path).unwrap_or(0);
            entries.push(HookEntry {
                path,
                value: value.to_vec(),
                order,
            });
        }
        Ok(entries)
    }

    pub(super) fn local_hooks_apply(&self, ops: Vec<HookOp>) -> Result<(), StoreError> {
        self.healthy()?;
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                HookOp::Put(path, value) => batch.insert(local_key(&path), value),
                HookOp::Delete(path) => batch.remove(local_key(&path)),
            }
        }
        let applied = self
            .inner
            .audit_index
            .apply_batch(batch)
            .map_err(Into::into);
        self.fail_on_io(applied)?;
        self.sync_or_fail()
    }

    pub(super) fn local_hooks_enqueue_once(
        &self,
        once: &str,
        expires_unix_ms: i64,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.healthy()?;
        let once_key = local_key(&format!("once/{once}"));
        let order = self.inner.durable.generate_id()?;
        let outbox_key = local_key(&outbox_path(order));
        let value = prost::Message::encode_to_vec(event);
        let put = self
            .inner
            .audit_index
            .transaction(|tree: &TransactionalTree| {
                if tree.get(&once_key)?.is_some() {
                    return Ok(false);
                }
                tree.insert(once_key.as_slice(), &expires_unix_ms.to_be_bytes()[..])?;
                tree.insert(outbox_key.as_slice(), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(super::transaction_error);
        let put = self.fail_on_io(put)?;
        if put {
            self.sync_or_fail()?;
        }
        Ok(put)
    }
}

/// An outbox entry's path: its order, zero-padded so paths sort by it.
pub fn outbox_path(order: u64) -> String {
    format!("{OUTBOX}{order:020}")
}

/// The order in a standalone outbox path.
fn outbox_order(path: &str) -> Option<i64> {
    path.strip_prefix(OUTBOX)?.parse().ok()
}

fn local_key(path: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(path.as_bytes());
    key
}
