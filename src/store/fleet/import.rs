//! `scopegate fleet import`: a standalone store copied into etcd.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{backoff, etcd_unavailable, Fleet, FleetConfig, MAX_ATTEMPTS};
use crate::store::{AuditEvent, KeyRecord, RoleRecord, StoreError};

/// Copies a standalone store's records into etcd: a record already there
/// with the same bytes is skipped, a different one is refused (nothing is
/// overwritten). Returns (copied, already there).
pub async fn import(
    config: &FleetConfig,
    records: Vec<KeyRecord>,
    roles: Vec<RoleRecord>,
    cap: usize,
) -> Result<(usize, usize), StoreError> {
    let fleet = Fleet::new(config.clone(), 0);
    let mut client = fleet.connect().await?;
    let (mut copied, mut present) = (0, 0);
    // Roles first (members from the keys), so no key arrives without them.
    for mut role in crate::store::local::with_members(roles, &records)? {
        role.version = RoleRecord::VERSION;
        if fleet.import_role(&mut client, &role).await? {
            copied += 1;
        } else {
            present += 1;
        }
    }
    for record in records {
        if fleet.import_key(&mut client, record, cap).await? {
            copied += 1;
        } else {
            present += 1;
        }
    }
    Ok((copied, present))
}

impl Fleet {
    /// One key into etcd with its account count and audit event: true when
    /// copied, false when the same was there already.
    async fn import_key(
        &self,
        client: &mut etcd_client::Client,
        record: KeyRecord,
        cap: usize,
    ) -> Result<bool, StoreError> {
        let record = record.versioned();
        let key_id = crate::store::record_id(&record)?;
        let path = self.key_path(&key_id);
        let value = prost::Message::encode_to_vec(&record);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let existing = client
                .get(path.clone(), None)
                .await
                .map_err(etcd_unavailable)?;
            if let Some(kv) = existing.kvs().first() {
                if kv.value() == value.as_slice() {
                    return Ok(false);
                }
                return Err(StoreError::ImportConflict {
                    key_id: key_id.to_string(),
                });
            }
            let (count, revision) = self.account_count(client, &record.account_id).await?;
            if count >= cap {
                return Err(StoreError::AccountFull { cap });
            }
            let account = self.account_path(&record.account_id);
            // Audited like any other way in, in the same transaction.
            let event = AuditEvent {
                time_unix_ms: crate::authz::now_unix_ms(),
                actor: "admin".into(),
                action: "import".into(),
                key_id: key_id.as_bytes().to_vec(),
                account_id: record.account_id.clone(),
                after: Some(crate::store::KeyState::of(&record)),
                ..AuditEvent::default()
            };
            let lease = self.audit_lease(client).await?;
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(path.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(account.clone(), CompareOp::Equal, revision),
                ])
                .and_then(vec![
                    TxnOp::put(path.clone(), value.clone(), None),
                    TxnOp::put(account, (count + 1).to_string(), None),
                    TxnOp::put(
                        self.audit_path(&event),
                        prost::Message::encode_to_vec(&event),
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    ),
                ]);
            if client.txn(txn).await.map_err(etcd_unavailable)?.succeeded() {
                return Ok(true);
            }
        }
        Err(StoreError::Conflict)
    }
}
