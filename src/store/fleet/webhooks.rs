//! Webhook state in etcd, under `webhooks/`: the outbox (written in each
//! change's transaction, ordered by etcd's create revision), endpoints,
//! pending deliveries and dead letters; and the delivery lease, so one
//! sidecar at a time delivers.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};

use super::{etcd_unavailable, prefix_end, Fleet, MAX_TXN_OPS};
use crate::store::webhooks::{HookEntry, HookOp, OUTBOX};
use crate::store::{AuditEvent, StoreError};

/// How long a delivering sidecar's lease lasts without a keep-alive: how
/// long deliveries may pause when it dies.
const LEADER_TTL_SECS: i64 = 10;

impl Fleet {
    fn hooks_path(&self, path: &str) -> Vec<u8> {
        format!("{}webhooks/{path}", self.config.prefix).into_bytes()
    }

    /// The change's outbox entry, put in its transaction.
    pub(super) fn outbox_op(&self, event: &AuditEvent) -> TxnOp {
        let nonce = getrandom::u64().unwrap_or(0);
        let path = self.hooks_path(&format!(
            "{OUTBOX}{:016}-{nonce:016x}",
            event.time_unix_ms.max(0)
        ));
        TxnOp::put(path, prost::Message::encode_to_vec(event), None)
    }

    pub(in crate::store) async fn etcd_hooks_scan(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<HookEntry>, StoreError> {
        let mut client = self.connected()?;
        let root = self.hooks_path("");
        let start = match &after {
            Some(after) => {
                let mut key = self.hooks_path(after);
                key.push(0);
                key
            }
            None => self.hooks_path(prefix),
        };
        let mut options = GetOptions::new()
            .with_range(prefix_end(&self.hooks_path(prefix)))
            .with_limit(limit.min(i64::MAX as usize) as i64);
        if prefix == OUTBOX {
            // The order the changes applied in, whatever the sidecars' clocks.
            options = options.with_sort(SortTarget::Create, SortOrder::Ascend);
        }
        let response = client
            .get(start, Some(options))
            .await
            .map_err(etcd_unavailable)?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| HookEntry {
                path: String::from_utf8_lossy(&kv.key()[root.len()..]).into_owned(),
                value: kv.value().to_vec(),
                order: kv.create_revision(),
            })
            .collect())
    }

    pub(in crate::store) async fn etcd_hooks_apply(
        &self,
        ops: Vec<HookOp>,
    ) -> Result<(), StoreError> {
        let mut client = self.connected()?;
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                HookOp::Put(path, value) => TxnOp::put(self.hooks_path(&path), value, None),
                HookOp::Delete(path) => TxnOp::delete(self.hooks_path(&path), None),
            })
            .collect();
        if ops.len() > MAX_TXN_OPS {
            return Err(StoreError::TxnTooLarge {
                ops: ops.len(),
                max: MAX_TXN_OPS,
            });
        }
        client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(etcd_unavailable)?;
        Ok(())
    }

    pub(in crate::store) async fn etcd_hooks_enqueue_once(
        &self,
        once: &str,
        expires_unix_ms: i64,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut client = self.connected()?;
        let once = self.hooks_path(&format!("once/{once}"));
        let txn = Txn::new()
            .when([Compare::create_revision(once.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(once, expires_unix_ms.to_be_bytes().to_vec(), None),
                self.outbox_op(event),
            ]);
        let response = client.txn(txn).await.map_err(etcd_unavailable)?;
        Ok(response.succeeded())
    }

    /// Keeps (or takes, when free) the delivery lease: `webhooks/leader`
    /// under a lease of [`LEADER_TTL_SECS`], kept alive by each call.
    pub(in crate::store) async fn etcd_hooks_leader(
        &self,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.connected()?;
        let leader = self.hooks_path("leader");
        let held = *self.hooks_lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lease) = held {
            let (mut keeper, mut replies) = client
                .lease_keep_alive(lease)
                .await
                .map_err(etcd_unavailable)?;
            keeper.keep_alive().await.map_err(etcd_unavailable)?;
            let alive = replies
                .message()
                .await
                .map_err(etcd_unavailable)?
                .is_some_and(|reply| reply.ttl() > 0);
            let current = client
                .get(leader.clone(), None)
                .await
                .map_err(etcd_unavailable)?;
            if alive && current.kvs().first().is_some_and(|kv| kv.lease() == lease) {
                return Ok(true);
            }
            *self.hooks_lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::warn!("lost the webhook delivery lease; another sidecar delivers");
        }
        // Held by another: one read, no lease granted.
        let current = client
            .get(leader.clone(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(etcd_unavailable)?;
        if current.count() > 0 {
            return Ok(false);
        }
        let lease = client
            .lease_grant(LEADER_TTL_SECS, None)
            .await
            .map_err(etcd_unavailable)?
            .id();
        let taken = client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        leader.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(
                        leader,
                        holder.as_bytes().to_vec(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            )
            .await
            .map_err(etcd_unavailable)?
            .succeeded();
        if taken {
            *self.hooks_lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
            tracing::info!(holder, "took the webhook delivery lease");
        } else {
            let _ = client.lease_revoke(lease).await;
        }
        Ok(taken)
    }
}
