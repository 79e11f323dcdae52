//! The source of truth behind a [`Store`]: sled in the data dir
//! (standalone), or etcd with sled as this sidecar's mirror (fleet). The
//! store's methods are the same in both modes; what differs is this one
//! contract, [`Truth`], and its two implementations below. `tests/model.rs`
//! and `tests/durability.rs` run the same promises against both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::audit::{AuditEvent, AuditFilter};
use super::fleet::{Fleet, SyncState};
use super::record::CreateRequestRecord;
use super::roles::roles_of_members;
use super::webhooks::{HookEntry, HookOp};
use super::{Change, Reads, Snapshot, Store, StoreError};
use crate::role::RoleId;
use crate::token::KeyId;

pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A mutation's decision with its value kept by the caller
/// ([`Store::mutate`]): it may run more than once (fleet: again after a
/// conflict), the last run being the one applied.
pub(super) type Decide =
    Box<dyn Fn(&Snapshot) -> Result<(Change, AuditEvent), Refused> + Send + Sync>;

/// A page of audit events and the cursor to continue from.
pub(super) type AuditPage = (Vec<AuditEvent>, Option<Vec<u8>>);

/// Why a mutation did not apply.
pub(super) enum Refused {
    /// The decision refused it (its error is with the caller).
    ByDecision,
    Store(StoreError),
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        Refused::Store(error)
    }
}

/// Where the keys' truth lives, and what only it can do.
pub(super) trait Truth: Send + Sync {
    /// Applies one change decided on the records `reads` names as the truth
    /// holds them when the change applies; returns once the change is
    /// durable and visible to Check on this sidecar.
    fn mutate<'a>(
        &'a self,
        store: &'a Store,
        reads: Reads,
        decide: Decide,
    ) -> BoxFuture<'a, Result<(), Refused>>;

    /// The first result filed under a CreateKey request id's `lookup`, once
    /// this sidecar holds what it names.
    fn create_request<'a>(
        &'a self,
        store: &'a Store,
        lookup: [u8; 32],
    ) -> BoxFuture<'a, Result<Option<CreateRequestRecord>, StoreError>>;

    /// A page of audit events: up to `limit` matching `filter` after the
    /// cursor `after`, and the cursor to continue from.
    fn audit_events<'a>(
        &'a self,
        store: &'a Store,
        filter: AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<AuditPage, StoreError>>;

    /// Starts keeping the mirror up to date, if sled mirrors another truth.
    fn follow(self: Arc<Self>, store: Store);

    /// Whether sled mirrors another truth (fleet): a record the mirror holds
    /// but this sidecar cannot use is denied, never refused at load.
    fn mirrors(&self) -> bool;

    /// How fresh the mirror is (fleet only).
    fn sync_state(&self) -> Option<Arc<SyncState>>;

    /// How long audit events are kept where the truth keeps them.
    fn set_audit_retention(&self, retention: Duration);

    /// Webhook state (`webhooks.rs`): a page of entries under `prefix`.
    fn hooks_scan<'a>(
        &'a self,
        store: &'a Store,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<HookEntry>, StoreError>>;

    /// Webhook state: writes applied at once, durably.
    fn hooks_apply<'a>(
        &'a self,
        store: &'a Store,
        ops: Vec<HookOp>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Webhook state: an event put in the outbox once per `once` id.
    fn hooks_enqueue_once<'a>(
        &'a self,
        store: &'a Store,
        once: String,
        expires_unix_ms: i64,
        event: AuditEvent,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Whether this sidecar is the one delivering webhooks now.
    fn hooks_leader(&self, holder: String) -> BoxFuture<'_, Result<bool, StoreError>>;
}

/// Runs a blocking store call off the decision workers.
fn blocking<T: Send + 'static>(
    store: &Store,
    call: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
) -> BoxFuture<'static, Result<T, StoreError>> {
    let store = store.clone();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || call(store))
            .await
            .map_err(|_| StoreError::Closed)?
    })
}

/// Standalone: sled is the truth, written under the writer lock and group
/// committed (`local.rs`, `commit.rs`).
pub(super) struct Standalone;

impl Truth for Standalone {
    fn mutate<'a>(
        &'a self,
        store: &'a Store,
        reads: Reads,
        decide: Decide,
    ) -> BoxFuture<'a, Result<(), Refused>> {
        let writing = store.clone();
        Box::pin(store.commit(move || {
            let read = |ids: Vec<KeyId>| -> Result<Vec<_>, StoreError> {
                ids.into_iter()
                    .map(|key_id| Ok((key_id, writing.get(&key_id)?)))
                    .collect()
            };
            let records = read(reads.keys.clone())?;
            let read_roles = |ids: Vec<RoleId>| -> Result<Vec<_>, StoreError> {
                ids.into_iter()
                    .map(|role_id| Ok((role_id, writing.get_role(&role_id)?)))
                    .collect()
            };
            let mut roles = read_roles(reads.roles_after(&records))?;
            let members = read(reads.members_after(&records, &roles))?;
            roles.extend(read_roles(roles_of_members(&members, &roles))?);
            let mut snapshot = Snapshot::with_roles(records, roles);
            snapshot.add_members(members);
            let (change, event) = decide(&snapshot)?;
            let publish = writing.apply_local(change, event, &snapshot)?;
            Ok((publish, ()))
        }))
    }

    fn create_request<'a>(
        &'a self,
        store: &'a Store,
        lookup: [u8; 32],
    ) -> BoxFuture<'a, Result<Option<CreateRequestRecord>, StoreError>> {
        Box::pin(store.local_create_request(lookup))
    }

    fn audit_events<'a>(
        &'a self,
        store: &'a Store,
        filter: AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<AuditPage, StoreError>> {
        // On a blocking thread, never on a decision worker.
        let store = store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.local_audit_events(&filter, after, limit))
                .await
                .map_err(|_| StoreError::Closed)?
        })
    }

    fn follow(self: Arc<Self>, _store: Store) {}

    fn mirrors(&self) -> bool {
        false
    }

    fn sync_state(&self) -> Option<Arc<SyncState>> {
        None
    }

    fn set_audit_retention(&self, _retention: Duration) {
        // Kept by the store itself (pruned every `AUDIT_PRUNE_EVERY` changes).
    }

    fn hooks_scan<'a>(
        &'a self,
        store: &'a Store,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<HookEntry>, StoreError>> {
        blocking(store, move |store| {
            store.local_hooks_scan(&prefix, after, limit)
        })
    }

    fn hooks_apply<'a>(
        &'a self,
        store: &'a Store,
        ops: Vec<HookOp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        blocking(store, move |store| store.local_hooks_apply(ops))
    }

    fn hooks_enqueue_once<'a>(
        &'a self,
        store: &'a Store,
        once: String,
        expires_unix_ms: i64,
        event: AuditEvent,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        blocking(store, move |store| {
            store.local_hooks_enqueue_once(&once, expires_unix_ms, &event)
        })
    }

    fn hooks_leader(&self, _holder: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(true) })
    }
}

/// Fleet: etcd is the truth, sled this sidecar's mirror (`fleet/`).
impl Truth for Fleet {
    fn mutate<'a>(
        &'a self,
        store: &'a Store,
        reads: Reads,
        decide: Decide,
    ) -> BoxFuture<'a, Result<(), Refused>> {
        Box::pin(Fleet::mutate(self, store, reads, decide))
    }

    fn create_request<'a>(
        &'a self,
        store: &'a Store,
        lookup: [u8; 32],
    ) -> BoxFuture<'a, Result<Option<CreateRequestRecord>, StoreError>> {
        Box::pin(async move { Fleet::create_request(self, Some(store), &lookup).await })
    }

    fn audit_events<'a>(
        &'a self,
        _store: &'a Store,
        filter: AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<AuditPage, StoreError>> {
        Box::pin(async move { Fleet::audit_events(self, &filter, after, limit).await })
    }

    fn follow(self: Arc<Self>, store: Store) {
        tokio::spawn(Fleet::follow(self, store));
    }

    fn mirrors(&self) -> bool {
        true
    }

    fn sync_state(&self) -> Option<Arc<SyncState>> {
        Some(self.state.clone())
    }

    fn set_audit_retention(&self, retention: Duration) {
        Fleet::set_audit_retention(self, retention);
    }

    fn hooks_scan<'a>(
        &'a self,
        _store: &'a Store,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<HookEntry>, StoreError>> {
        Box::pin(async move { Fleet::etcd_hooks_scan(self, &prefix, after, limit).await })
    }

    fn hooks_apply<'a>(
        &'a self,
        _store: &'a Store,
        ops: Vec<HookOp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Fleet::etcd_hooks_apply(self, ops))
    }

    fn hooks_enqueue_once<'a>(
        &'a self,
        _store: &'a Store,
        once: String,
        expires_unix_ms: i64,
        event: AuditEvent,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            Fleet::etcd_hooks_enqueue_once(self, &once, expires_unix_ms, &event).await
        })
    }

    fn hooks_leader(&self, holder: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Fleet::etcd_hooks_leader(self, &holder).await })
    }
}
