//! Roles in the store: what a mutation reads of them, the role records a
//! key change rewrites (their member lists), and the effective scopes the
//! table resolves (a key's own and its roles', from the `roles` tree).
//!
//! Every change to a key that references a role rewrites that role's
//! record (its member list, even when unchanged), so a role change decided
//! on its members' records and held to the role's revision cannot race a
//! change to one of them: the one store transaction, or etcd's compare, sees
//! it.

use std::collections::BTreeSet;

use super::record::{account_index_key_bytes, account_prefix, KeyRecord, RoleRecord};
use super::{Change, Snapshot, Store, StoreError};
use crate::role::{RoleId, MAX_KEYS_PER_ROLE};
use crate::token::KeyId;

/// What a mutation reads before it decides.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    pub keys: Vec<KeyId>,
    /// Read besides the roles the read keys reference (always read).
    pub roles: Vec<RoleId>,
    /// Also read every member of `roles` (a role change decides on them).
    pub members: bool,
}

impl From<Vec<KeyId>> for Reads {
    fn from(keys: Vec<KeyId>) -> Reads {
        Reads {
            keys,
            ..Reads::default()
        }
    }
}

impl Reads {
    /// The roles to read once the keys are: those asked for and those the
    /// read keys reference.
    pub(super) fn roles_after(&self, keys: &[(KeyId, Option<KeyRecord>)]) -> Vec<RoleId> {
        let mut roles: BTreeSet<RoleId> = self.roles.iter().copied().collect();
        for record in keys.iter().filter_map(|(_, record)| record.as_ref()) {
            roles.extend(record.roles());
        }
        roles.into_iter().collect()
    }

    /// The members to read once the roles are (none unless asked).
    pub(super) fn members_after(
        &self,
        keys: &[(KeyId, Option<KeyRecord>)],
        roles: &[(RoleId, Option<RoleRecord>)],
    ) -> Vec<KeyId> {
        if !self.members {
            return Vec::new();
        }
        let read: BTreeSet<KeyId> = keys.iter().map(|(id, _)| *id).collect();
        let mut members = BTreeSet::new();
        for (role_id, record) in roles {
            if let (true, Some(record)) = (self.roles.contains(role_id), record) {
                members.extend(record.member_ids().filter(|id| !read.contains(id)));
            }
        }
        members.into_iter().collect()
    }
}

/// The roles `members` reference that are not read yet (a role change
/// judges each key it reaches by its whole effective set).
pub(super) fn roles_of_members(
    members: &[(KeyId, Option<KeyRecord>)],
    read: &[(RoleId, Option<RoleRecord>)],
) -> Vec<RoleId> {
    let mut more = BTreeSet::new();
    for record in members.iter().filter_map(|(_, record)| record.as_ref()) {
        more.extend(
            record
                .roles()
                .filter(|id| !read.iter().any(|(read, _)| read == id)),
        );
    }
    more.into_iter().collect()
}

impl Snapshot {
    pub(super) fn with_roles(
        records: Vec<(KeyId, Option<KeyRecord>)>,
        roles: Vec<(RoleId, Option<RoleRecord>)>,
    ) -> Snapshot {
        Snapshot { records, roles }
    }

    pub(super) fn add_members(&mut self, members: Vec<(KeyId, Option<KeyRecord>)>) {
        self.records.extend(members);
    }
}

/// The role records a key change rewrites: each role the key referenced or
/// references, its member list brought up to date.
pub(super) fn role_writes(
    change: &Change,
    snapshot: &Snapshot,
) -> Result<Vec<RoleRecord>, StoreError> {
    let (before, after): (Option<&KeyRecord>, Option<&KeyRecord>) = match change {
        Change::Create { record, .. } => (None, Some(record)),
        Change::Update(record) => {
            let key_id = super::record_id(record)?;
            (snapshot.get(&key_id), Some(record))
        }
        Change::Delete(record) => (Some(record), None),
        Change::PutRole(_) | Change::DeleteRole(_) => return Ok(Vec::new()),
    };
    let key_id = super::record_id(after.or(before).expect("a key change has a record"))?;
    let mut touched: BTreeSet<RoleId> = BTreeSet::new();
    touched.extend(before.into_iter().flat_map(KeyRecord::roles));
    touched.extend(after.into_iter().flat_map(KeyRecord::roles));
    let mut writes = Vec::new();
    for role_id in touched {
        let keeps = after.is_some_and(|record| record.roles().any(|id| id == role_id));
        let Some(role) = snapshot.role(&role_id) else {
            if keeps && !before.is_some_and(|record| record.roles().any(|id| id == role_id)) {
                // Attached now, absent in the truth: deleted since decided.
                return Err(StoreError::RoleNotFound);
            }
            continue; // a deleted role the key still names: nothing to keep
        };
        let mut role = role.clone();
        role.members
            .retain(|member| member.as_slice() != key_id.as_bytes());
        if keeps {
            if role.members.len() >= MAX_KEYS_PER_ROLE {
                return Err(StoreError::RoleFull {
                    role_id: role_id.to_string(),
                    cap: MAX_KEYS_PER_ROLE,
                });
            }
            role.members.push(key_id.as_bytes().to_vec());
        }
        writes.push(role);
    }
    Ok(writes)
}

/// Roles by id, from where they are kept, or from a change about to apply.
pub(super) trait RoleSource {
    fn role(&self, role_id: &RoleId) -> Result<Option<RoleRecord>, StoreError>;
}

impl RoleSource for sled::Tree {
    fn role(&self, role_id: &RoleId) -> Result<Option<RoleRecord>, StoreError> {
        match self.get(role_id.as_bytes())? {
            Some(value) => decode_role(&value).map(Some),
            None => Ok(None),
        }
    }
}

/// A source with one role replaced (`None`: deleted), the rest as kept.
pub(super) struct Overlay<'a> {
    pub kept: &'a sled::Tree,
    pub role_id: RoleId,
    pub role: Option<&'a RoleRecord>,
}

impl RoleSource for Overlay<'_> {
    fn role(&self, role_id: &RoleId) -> Result<Option<RoleRecord>, StoreError> {
        if *role_id == self.role_id {
            return Ok(self.role.cloned());
        }
        self.kept.role(role_id)
    }
}

pub(super) fn decode_role(value: &[u8]) -> Result<RoleRecord, StoreError> {
    let record: RoleRecord =
        prost::Message::decode(value).map_err(|error| StoreError::Corrupt {
            key_id: "role".into(),
            reason: error.to_string(),
        })?;
    if record.version > RoleRecord::VERSION {
        return Err(StoreError::Corrupt {
            key_id: record.id().map(|id| id.to_string()).unwrap_or_default(),
            reason: format!(
                "role record version {} is newer than this build reads ({})",
                record.version,
                RoleRecord::VERSION
            ),
        });
    }
    Ok(record)
}

impl Store {
    /// A key's effective scope names: its own and those of every role it
    /// references that exists (a deleted role grants nothing).
    pub(super) fn effective_names(
        record: &KeyRecord,
        roles: &dyn RoleSource,
    ) -> Result<Vec<String>, StoreError> {
        if record.role_ids.is_empty() {
            return Ok(record.scopes.clone());
        }
        let mut names: BTreeSet<String> = record.scopes.iter().cloned().collect();
        for role_id in record.roles() {
            if let Some(role) = roles.role(&role_id)? {
                if role.account_id == record.account_id {
                    names.extend(role.scopes);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    pub fn get_role(&self, role_id: &RoleId) -> Result<Option<RoleRecord>, StoreError> {
        self.healthy()?;
        self.inner.roles.role(role_id)
    }

    /// An account's roles, by name (every role for `None`): a bounded read
    /// of the account's index.
    pub fn list_roles(&self, account: Option<&str>) -> Result<Vec<RoleRecord>, StoreError> {
        self.healthy()?;
        let mut roles = Vec::new();
        match account {
            Some(account) => {
                for item in self
                    .inner
                    .role_accounts
                    .scan_prefix(account_prefix(account))
                {
                    let (index_key, _) = item?;
                    let role_id = &index_key[index_key.len().saturating_sub(16)..];
                    if let Some(value) = self.inner.roles.get(role_id)? {
                        roles.push(decode_role(&value)?);
                    }
                }
            }
            None => {
                for item in self.inner.roles.iter() {
                    roles.push(decode_role(&item?.1)?);
                }
            }
        }
        roles.sort_by(|a, b| (&a.account_id, &a.name).cmp(&(&b.account_id, &b.name)));
        Ok(roles)
    }

    /// Standalone: a role's name is free in its account, and the account
    /// has room for a new role. Under the writer lock.
    pub(super) fn check_role_name(&self, role: &RoleRecord, new: bool) -> Result<(), StoreError> {
        let mut held = 0;
        for other in self.list_roles(Some(&role.account_id))? {
            held += 1;
            if other.name == role.name && other.role_id != role.role_id {
                return Err(StoreError::RoleNameTaken {
                    name: role.name.clone(),
                });
            }
        }
        if new && held >= crate::role::MAX_ROLES_PER_ACCOUNT {
            return Err(StoreError::RolesFull {
                cap: crate::role::MAX_ROLES_PER_ACCOUNT,
            });
        }
        Ok(())
    }

    /// Fleet: the role as it will be leaves every member (as read) usable.
    pub(super) fn check_members(
        &self,
        role_id: RoleId,
        members: impl IntoIterator<Item = KeyId>,
        role: Option<&RoleRecord>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let overlay = Overlay {
            kept: &self.inner.roles,
            role_id,
            role,
        };
        for key_id in members {
            if let Some(record) = snapshot.get(&key_id) {
                self.auth_entry_with(record, &overlay)?;
            }
        }
        Ok(())
    }

    /// The table entries of a role's members with the role as it will be
    /// (`None`: deleted), before the change applies: a member it would
    /// leave unusable refuses the change.
    pub(super) fn member_entries(
        &self,
        role_id: RoleId,
        members: impl IntoIterator<Item = KeyId>,
        role: Option<&RoleRecord>,
    ) -> Result<super::commit::Entries, StoreError> {
        let overlay = Overlay {
            kept: &self.inner.roles,
            role_id,
            role,
        };
        let mut entries = Vec::new();
        for key_id in members {
            let Some(record) = self.get(&key_id)? else {
                continue;
            };
            let entry = self.auth_entry_with(&record, &overlay)?;
            entries.push((key_id, Some(std::sync::Arc::new(entry))));
        }
        Ok(entries)
    }
}

/// A role's entry in the account index.
pub(super) fn role_index_key(role: &RoleRecord) -> Vec<u8> {
    account_index_key_bytes(&role.account_id, &role.role_id)
}
