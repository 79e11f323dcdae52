//! Roles in etcd: `keys/roles/<role id>` beside the keys (one watch, one
//! full read, the same revisions), and `role_names/…` so a name is taken
//! once per account, fleet-wide.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{etcd_unavailable, Fleet};
use crate::role::RoleId;
use crate::store::roles::decode_role;
use crate::store::{Change, RoleRecord, Snapshot, Store, StoreError};

/// Keys and role ids share `keys/`; a role's path has this after it (a key
/// id, 22 base64url chars, never contains `/`).
const ROLES: &str = "roles/";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Per-role turns for changes through this sidecar (a create with a role
/// rewrites the role's member list, so concurrent ones would conflict).
#[derive(Default)]
pub(super) struct Turns {
    held:
        std::sync::Mutex<std::collections::HashMap<RoleId, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Turns {
    /// Waits for the turn on every role in `roles` (in id order, so two
    /// changes never wait on each other).
    pub(super) async fn take(&self, roles: &[RoleId]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut ids = roles.to_vec();
        ids.sort();
        ids.dedup();
        let locks: Vec<_> = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.len() > 1024 {
                held.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
            }
            ids.iter()
                .map(|id| held.entry(*id).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        guards
    }
}

impl Fleet {
    pub(super) fn role_path(&self, role_id: &RoleId) -> Vec<u8> {
        format!("{}keys/{ROLES}{role_id}", self.config.prefix).into_bytes()
    }

    fn role_name_path(&self, account: &str, name: &str) -> Vec<u8> {
        format!(
            "{}role_names/{}/{}",
            self.config.prefix,
            hex(account.as_bytes()),
            hex(name.as_bytes())
        )
        .into_bytes()
    }

    /// The role id a `keys/…` path names, if it is a role's.
    pub(super) fn role_id_of(&self, path: &[u8]) -> Option<RoleId> {
        let prefix = self.keys_prefix();
        let rest = path.strip_prefix(prefix.as_slice())?;
        let id = rest.strip_prefix(ROLES.as_bytes())?;
        RoleId::parse(std::str::from_utf8(id).ok()?)
    }

    /// `fleet import`: a role put unless the same is there (false); one with
    /// other content, or its name taken by another, is refused.
    pub(super) async fn import_role(
        &self,
        client: &mut Client,
        role: &RoleRecord,
    ) -> Result<bool, StoreError> {
        let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
        let path = self.role_path(&role_id);
        let value = prost::Message::encode_to_vec(role);
        let name = self.role_name_path(&role.account_id, &role.name);
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(path.clone(), CompareOp::Equal, 0),
                Compare::create_revision(name.clone(), CompareOp::Equal, 0),
            ])
            .and_then(vec![
                TxnOp::put(path.clone(), value.clone(), None),
                TxnOp::put(name, role.role_id.clone(), None),
            ])
            .or_else(vec![TxnOp::get(path, None)]);
        let response = client.txn(txn).await.map_err(etcd_unavailable)?;
        if response.succeeded() {
            return Ok(true);
        }
        let same = response.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(got) => got
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == value.as_slice()),
            _ => false,
        });
        if same {
            Ok(false)
        } else {
            Err(StoreError::ImportConflict {
                key_id: role_id.to_string(),
            })
        }
    }

    /// Roles at one revision, and the compares that hold a write to it.
    #[allow(clippy::type_complexity)]
    pub(super) async fn read_roles(
        &self,
        client: &mut Client,
        role_ids: &[RoleId],
    ) -> Result<(Vec<(RoleId, Option<RoleRecord>)>, Vec<Compare>), StoreError> {
        if role_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let paths: Vec<Vec<u8>> = role_ids.iter().map(|id| self.role_path(id)).collect();
        let read = Txn::new().and_then(
            paths
                .iter()
                .map(|path| TxnOp::get(path.clone(), None))
                .collect::<Vec<_>>(),
        );
        let response = client.txn(read).await.map_err(etcd_unavailable)?;
        let mut roles = Vec::with_capacity(role_ids.len());
        let mut compares = Vec::with_capacity(role_ids.len());
        for ((role_id, path), op) in role_ids.iter().zip(&paths).zip(response.op_responses()) {
            let TxnOpResponse::Get(got) = op else {
                return Err(StoreError::EtcdUnavailable(
                    "unexpected read response".into(),
                ));
            };
            let (role, revision) = match got.kvs().first() {
                Some(kv) => (Some(decode_role(kv.value())?), kv.mod_revision()),
                None => (None, 0),
            };
            compares.push(Compare::mod_revision(
                path.clone(),
                CompareOp::Equal,
                revision,
            ));
            roles.push((*role_id, role));
        }
        Ok((roles, compares))
    }

    /// The writes of roles: those a key change rewrites (members), or the
    /// role a role change puts or deletes, with its name.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn role_ops(
        &self,
        store: &Store,
        client: &mut Client,
        change: &Change,
        snapshot: &Snapshot,
        role_writes: Vec<RoleRecord>,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) -> Result<(), StoreError> {
        for role in role_writes {
            let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
            ops.push(TxnOp::put(
                self.role_path(&role_id),
                prost::Message::encode_to_vec(&role),
                None,
            ));
        }
        match change {
            Change::PutRole(role) => {
                let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
                let before = snapshot.role(&role_id);
                let mut role = role.clone();
                role.members = before
                    .map(|before| before.members.clone())
                    .unwrap_or_default();
                if before.is_none() {
                    let held = store.list_roles(Some(&role.account_id))?.len();
                    if held >= crate::role::MAX_ROLES_PER_ACCOUNT {
                        return Err(StoreError::RolesFull {
                            cap: crate::role::MAX_ROLES_PER_ACCOUNT,
                        });
                    }
                }
                if before.is_none_or(|before| before.name != role.name) {
                    let name = self.role_name_path(&role.account_id, &role.name);
                    let taken = client
                        .get(name.clone(), None)
                        .await
                        .map_err(etcd_unavailable)?;
                    if taken
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.value() != role.role_id.as_slice())
                    {
                        return Err(StoreError::RoleNameTaken { name: role.name });
                    }
                    compares.push(Compare::create_revision(name.clone(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(name, role.role_id.clone(), None));
                    if let Some(before) = before {
                        let old = self.role_name_path(&before.account_id, &before.name);
                        ops.push(TxnOp::delete(old, None));
                    }
                }
                // Fails here, before anything is written, if a member would
                // be left unusable (the sidecar that applies it would deny it).
                if let Some(before) = before {
                    store.check_members(role_id, before.member_ids(), Some(&role), snapshot)?;
                }
                ops.push(TxnOp::put(
                    self.role_path(&role_id),
                    prost::Message::encode_to_vec(&role),
                    None,
                ));
            }
            Change::DeleteRole(role) => {
                let role_id = role.id().ok_or(StoreError::RoleNotFound)?;
                ops.push(TxnOp::delete(self.role_path(&role_id), None));
                ops.push(TxnOp::delete(
                    self.role_name_path(&role.account_id, &role.name),
                    None,
                ));
            }
            _ => {}
        }
        Ok(())
    }
}
