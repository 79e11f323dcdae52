//! Roles: CreateRole, GetRole, ListRoles, UpdateRole, DeleteRole, and the
//! roles a key references (resolved for CreateKey and UpdateKey).
//!
//! The rules: a role holds grants like a key's (billing alone); an API key
//! makes or widens a role only within its own scopes, and changes or
//! deletes one only if it could change every key referencing it (each no
//! stronger or freer than the caller, judged as the store holds them when
//! the change applies); a change that would leave any key mixing billing
//! and other scopes is refused, naming the keys.

use super::audit::role_event;
use super::error::{invalid, scope_error, ManageError};
use super::rules::{
    check_may_change, check_may_touch, check_no_escalation, current_caller, effective,
    effective_with, readable_account, require, visible_in,
};
use super::types::{Caller, KeyRole, NewRole, RoleChange, RoleView};
use super::validate::{validate_account_id, validate_name};
use super::{record_mutation, Manager};
use crate::authz::now_unix_ms;
use crate::role::{RoleId, MAX_ROLES_PER_KEY, MAX_ROLE_DESCRIPTION};
use crate::scope::{Catalog, KeyKind, ManageAction, ScopeSet};
use crate::store::{Change, KeyRecord, Reads, RoleRecord, Snapshot};

/// At most this many keys are named in a refusal.
const NAMED_KEYS: usize = 10;

impl Manager {
    pub async fn create_role(
        &self,
        caller: &Caller,
        request: NewRole,
    ) -> Result<RoleView, ManageError> {
        let result = self.make_role(caller, request).await;
        record_mutation("create_role", &result);
        result
    }

    async fn make_role(&self, caller: &Caller, request: NewRole) -> Result<RoleView, ManageError> {
        self.require(caller, ManageAction::Create)?;
        self.admit_mutation(caller)?;
        let account_id = match caller {
            Caller::Admin => validate_account_id(&request.account_id)?,
            Caller::Key { account_id, .. } => {
                if !request.account_id.is_empty() && request.account_id != **account_id {
                    return Err(ManageError::OtherAccount);
                }
                account_id.to_string()
            }
        };
        let name = validate_name(&request.name)?;
        let description = validate_description(&request.description)?;
        let catalog = self.catalog.load_full();
        let scopes = if request.scopes.is_empty()
            && request.grants.is_empty()
            && !request.template.is_empty()
        {
            let template = crate::role::template(&request.template).ok_or_else(|| {
                invalid(
                    "template",
                    format!(
                        "unknown template `{}`: one of {}",
                        request.template,
                        template_names()
                    ),
                )
            })?;
            (template.scopes)(&catalog)
        } else {
            if !request.template.is_empty() {
                return Err(invalid(
                    "template",
                    "give a template or scopes and grants, not both",
                ));
            }
            role_scopes(&catalog, &request.scopes, &request.grants)?
        };
        check_no_escalation(&catalog, caller, &scopes)?;
        let now = now_unix_ms();
        let role_id = RoleId::random();
        let record = RoleRecord {
            version: RoleRecord::VERSION,
            role_id: role_id.as_bytes().to_vec(),
            account_id,
            name,
            description,
            scopes: catalog.names(&scopes),
            create_time_unix_ms: now,
            update_time_unix_ms: now,
            created_by: caller.to_string(),
            members: Vec::new(),
        };
        let guard = caller.clone();
        let reads = Reads {
            keys: caller_key(caller),
            roles: vec![role_id],
            members: false,
        };
        let filed = record.clone();
        self.store
            .mutate(reads, move |snapshot| {
                let caller = current_caller(snapshot, &catalog, &guard)?;
                require(&catalog, &caller, ManageAction::Create)?;
                check_no_escalation(&catalog, &caller, &scopes)?;
                let event = role_event("role.create", &caller, None, Some(&filed), 0);
                Ok::<_, ManageError>((Change::PutRole(filed.clone()), event, ()))
            })
            .await?;
        tracing::info!(%caller, %role_id, account_id = %record.account_id, scopes = ?record.scopes, "role created");
        self.role_view(&record)
    }

    /// One role. Blocking (reads sled).
    pub fn get_role(&self, caller: &Caller, role_id: &str) -> Result<RoleView, ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let id = parse_role_id(role_id)?;
        let role = self
            .store
            .get_role(&id)?
            .filter(|role| visible_in(caller, &role.account_id))
            .ok_or_else(|| ManageError::RoleNotFound(role_id.to_owned()))?;
        self.role_view(&role)
    }

    /// An account's roles by name (the admin: every account, or the one
    /// asked for). Blocking (reads sled).
    pub fn list_roles(&self, caller: &Caller, account: &str) -> Result<Vec<RoleView>, ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let account = readable_account(caller, account)?;
        self.store
            .list_roles(account.as_deref())?
            .iter()
            .map(|role| self.role_view(role))
            .collect()
    }

    pub async fn update_role(
        &self,
        caller: &Caller,
        change: RoleChange,
    ) -> Result<RoleView, ManageError> {
        let result = self.change_role(caller, change).await;
        record_mutation("update_role", &result);
        result
    }

    async fn change_role(
        &self,
        caller: &Caller,
        change: RoleChange,
    ) -> Result<RoleView, ManageError> {
        self.require(caller, ManageAction::Update)?;
        self.admit_mutation(caller)?;
        let id = parse_role_id(&change.role_id)?;
        let name = change.name.as_deref().map(validate_name).transpose()?;
        let description = change
            .description
            .as_deref()
            .map(validate_description)
            .transpose()?;
        let catalog = self.catalog.load_full();
        let scopes = (!change.scopes.is_empty() || !change.grants.is_empty())
            .then(|| role_scopes(&catalog, &change.scopes, &change.grants))
            .transpose()?;
        if name.is_none() && description.is_none() && scopes.is_none() {
            return Err(invalid(
                "name",
                "nothing to update: give a name, a description, scopes or grants",
            ));
        }
        if let Some(scopes) = &scopes {
            check_no_escalation(&catalog, caller, scopes)?;
        }
        let guard = caller.clone();
        let text = change.role_id.clone();
        let reads = Reads {
            keys: caller_key(caller),
            roles: vec![id],
            members: true,
        };
        let updated = self
            .store
            .mutate(reads, move |snapshot| {
                let (current, caller) =
                    changeable_role(snapshot, &catalog, &guard, &id, &text, ManageAction::Update)?;
                let mut updated = current.clone();
                if let Some(name) = &name {
                    updated.name = name.clone();
                }
                if let Some(description) = &description {
                    updated.description = description.clone();
                }
                if let Some(scopes) = &scopes {
                    check_no_escalation(&catalog, &caller, scopes)?;
                    updated.scopes = catalog.names(scopes);
                    check_members_stay_apart(snapshot, &catalog, id, &updated)?;
                }
                updated.update_time_unix_ms = now_unix_ms();
                let affected = if scopes.is_some() {
                    current.members.len()
                } else {
                    0
                };
                let event = role_event(
                    "role.update",
                    &caller,
                    Some(current),
                    Some(&updated),
                    affected,
                );
                Ok::<_, ManageError>((Change::PutRole(updated.clone()), event, updated))
            })
            .await
            .map_err(|error| role_not_found_as(error, &change.role_id))?;
        tracing::info!(%caller, role_id = %id, scopes = ?updated.scopes, keys = updated.members.len(), "role updated");
        self.role_view(&updated)
    }

    pub async fn delete_role(&self, caller: &Caller, role_id: &str) -> Result<(), ManageError> {
        let result = self.remove_role(caller, role_id).await;
        record_mutation("delete_role", &result);
        result
    }

    async fn remove_role(&self, caller: &Caller, role_id: &str) -> Result<(), ManageError> {
        self.require(caller, ManageAction::Delete)?;
        self.admit_mutation(caller)?;
        let id = parse_role_id(role_id)?;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let text = role_id.to_owned();
        let reads = Reads {
            keys: caller_key(caller),
            roles: vec![id],
            members: true,
        };
        let deleted = self
            .store
            .mutate(reads, move |snapshot| {
                let (current, caller) =
                    changeable_role(snapshot, &catalog, &guard, &id, &text, ManageAction::Delete)?;
                let event = role_event(
                    "role.delete",
                    &caller,
                    Some(current),
                    None,
                    current.members.len(),
                );
                Ok::<_, ManageError>((Change::DeleteRole(current.clone()), event, current.clone()))
            })
            .await
            .map_err(|error| role_not_found_as(error, role_id))?;
        tracing::info!(%caller, role_id = %id, keys = deleted.members.len(), "role deleted");
        Ok(())
    }

    /// Role ids or names → ids, in the key's account (another account's
    /// role, or none by that name, is not found). Blocking (reads sled).
    pub(super) fn role_ids(
        &self,
        account: &str,
        roles: &[String],
    ) -> Result<Vec<RoleId>, ManageError> {
        if roles.len() > MAX_ROLES_PER_KEY {
            return Err(invalid(
                "role_ids",
                format!(
                    "a key references at most {MAX_ROLES_PER_KEY} roles ({} given)",
                    roles.len()
                ),
            ));
        }
        let mut named = None;
        let mut ids = Vec::with_capacity(roles.len());
        for text in roles {
            let id = match RoleId::parse(text) {
                Some(id) => id,
                None if text.starts_with("role_") => {
                    return Err(invalid("role_ids", format!("`{text}` is not a role id")))
                }
                None if text.trim().is_empty() => {
                    return Err(invalid("role_ids", "a role id or name is empty"))
                }
                None => {
                    let roles = match &named {
                        Some(roles) => roles,
                        None => named.insert(self.store.list_roles(Some(account))?),
                    };
                    roles
                        .iter()
                        .find(|role| role.name == *text)
                        .and_then(RoleRecord::id)
                        .ok_or_else(|| ManageError::RoleNotFound(text.clone()))?
                }
            };
            if ids.contains(&id) {
                return Err(invalid("role_ids", format!("role {id} is named twice")));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    pub(super) fn role_view(&self, role: &RoleRecord) -> Result<RoleView, ManageError> {
        let catalog = self.catalog.load();
        let role_id = role.id().map(|id| id.to_string()).unwrap_or_default();
        let scopes = catalog
            .resolve(role.scopes.iter().map(String::as_str))
            .map_err(|source| crate::store::StoreError::CatalogMismatch {
                key_id: role_id.clone(),
                source,
            })?;
        Ok(RoleView {
            role_id,
            account_id: role.account_id.clone(),
            name: role.name.clone(),
            description: role.description.clone(),
            scopes: catalog.names(&scopes),
            access: catalog
                .access_levels(&scopes)
                .into_iter()
                .map(|(id, access)| (catalog.resource(id).name.to_string(), access))
                .collect(),
            kind: catalog.kind_of(&scopes).unwrap_or(KeyKind::General),
            key_count: role.members.len(),
            create_time_unix_ms: role.create_time_unix_ms,
            update_time_unix_ms: role.update_time_unix_ms,
            created_by: role.created_by.clone(),
        })
    }

    /// The roles a key references, each with what it adds to the key's own
    /// scopes. Blocking (reads sled).
    pub(super) fn key_roles(
        &self,
        record: &KeyRecord,
        own: &ScopeSet,
    ) -> Result<(Vec<KeyRole>, ScopeSet), ManageError> {
        let catalog = self.catalog.load();
        let mut roles = Vec::new();
        let mut all = own.clone();
        for role_id in record.roles() {
            let Some(role) = self.store.get_role(&role_id)? else {
                continue; // deleted: grants nothing
            };
            if role.account_id != record.account_id {
                continue;
            }
            let scopes = catalog
                .resolve(role.scopes.iter().map(String::as_str))
                .unwrap_or_default();
            roles.push(KeyRole {
                role_id: role_id.to_string(),
                name: role.name.clone(),
                adds: catalog.names(&scopes.difference(own)),
            });
            all = all.union(&scopes);
        }
        Ok((roles, all))
    }
}

/// A key's roles as attached by a CreateKey or UpdateKey: each must exist
/// in the key's account when the change applies, and together with the
/// key's own scopes make a set within the caller's and keep billing apart.
pub(super) fn check_attached(
    snapshot: &Snapshot,
    catalog: &Catalog,
    caller: &Caller,
    record: &KeyRecord,
) -> Result<(), ManageError> {
    for role_id in record.roles() {
        let found = snapshot
            .role(&role_id)
            .is_some_and(|role| role.account_id == record.account_id);
        if !found {
            return Err(ManageError::RoleNotFound(role_id.to_string()));
        }
    }
    let scopes = effective(snapshot, catalog, record)?;
    if scopes.is_empty() {
        return Err(scope_error(crate::scope::ScopeError::Empty));
    }
    catalog
        .kind_of(&scopes)
        .map_err(|source| ManageError::BillingMixed {
            keys: vec![record.key_id().map(|id| id.to_string()).unwrap_or_default()],
            reason: source.to_string(),
        })?;
    check_no_escalation(catalog, caller, &scopes)
}

/// The role and the caller as they are when the change applies, once the
/// caller may do `action` to it: the role in the caller's account, no
/// stronger than the caller, and every key referencing it one the caller
/// could change.
fn changeable_role<'a>(
    snapshot: &'a Snapshot,
    catalog: &Catalog,
    caller: &Caller,
    id: &RoleId,
    text: &str,
    action: ManageAction,
) -> Result<(&'a RoleRecord, Caller), ManageError> {
    let caller = current_caller(snapshot, catalog, caller)?;
    let current = snapshot
        .role(id)
        .filter(|role| visible_in(&caller, &role.account_id))
        .ok_or_else(|| ManageError::RoleNotFound(text.to_owned()))?;
    require(catalog, &caller, action)?;
    if let Caller::Key { scopes: held, .. } = &caller {
        let grants = catalog
            .resolve(current.scopes.iter().map(String::as_str))
            .unwrap_or_default();
        let lacking = crate::scope::missing(held, &grants);
        if !lacking.is_empty() {
            return Err(ManageError::TargetStronger {
                key_id: text.to_owned(),
                missing: catalog.names(&lacking),
            });
        }
        for member in snapshot.members(id) {
            let key_id = member.key_id().map(|id| id.to_string()).unwrap_or_default();
            check_may_change(snapshot, catalog, &caller, member, &key_id)?;
            check_may_touch(snapshot, &caller, member, &key_id)?;
        }
    }
    Ok((current, caller))
}

/// Billing stays apart on every key the role's new grants reach.
fn check_members_stay_apart(
    snapshot: &Snapshot,
    catalog: &Catalog,
    id: RoleId,
    updated: &RoleRecord,
) -> Result<(), ManageError> {
    let mut mixed = Vec::new();
    let mut reason = String::new();
    for member in snapshot.members(&id) {
        let scopes = effective_with(snapshot, catalog, member, Some((id, Some(updated))))?;
        if let Err(error) = catalog.kind_of(&scopes) {
            if mixed.len() < NAMED_KEYS {
                mixed.push(member.key_id().map(|id| id.to_string()).unwrap_or_default());
            }
            reason = error.to_string();
        }
    }
    if mixed.is_empty() {
        Ok(())
    } else {
        Err(ManageError::BillingMixed {
            keys: mixed,
            reason,
        })
    }
}

/// A role's grants: known scopes, at least one, billing alone.
fn role_scopes(
    catalog: &Catalog,
    scopes: &[String],
    grants: &[(String, crate::scope::Access)],
) -> Result<ScopeSet, ManageError> {
    let (set, _kind) = catalog
        .key_scopes(
            scopes.iter().map(String::as_str),
            grants
                .iter()
                .map(|(resource, access)| (resource.as_str(), *access)),
        )
        .map_err(scope_error)?;
    Ok(set)
}

pub(super) fn validate_description(description: &str) -> Result<String, ManageError> {
    if description.chars().count() > MAX_ROLE_DESCRIPTION {
        return Err(invalid(
            "description",
            format!("is longer than {MAX_ROLE_DESCRIPTION} characters"),
        ));
    }
    if description.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(
            "description",
            "must not contain control characters",
        ));
    }
    Ok(description.to_owned())
}

pub(super) fn parse_role_id(text: &str) -> Result<RoleId, ManageError> {
    if text.is_empty() {
        return Err(invalid("role_id", "is required"));
    }
    RoleId::parse(text).ok_or_else(|| {
        invalid(
            "role_id",
            "is not a role id (`role_` and 22 base64url characters)",
        )
    })
}

fn template_names() -> String {
    crate::role::TEMPLATES
        .iter()
        .map(|template| template.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn caller_key(caller: &Caller) -> Vec<crate::token::KeyId> {
    match caller {
        Caller::Key { key_id, .. } => vec![*key_id],
        Caller::Admin => Vec::new(),
    }
}

fn role_not_found_as(error: ManageError, role_id: &str) -> ManageError {
    match error {
        ManageError::Store(crate::store::StoreError::RoleNotFound) => {
            ManageError::RoleNotFound(role_id.to_owned())
        }
        ManageError::RoleNotFound(text) if text == "named" => {
            ManageError::RoleNotFound(role_id.to_owned())
        }
        other => other,
    }
}
