//! UpdateKey and DeleteKey: decided on the target and the caller as the
//! store holds them when the change applies.

use std::collections::BTreeMap;

use super::audit::audit_event;
use super::error::{invalid, ManageError};
use super::roles::check_attached;
use super::rules::{
    caller_reads, changeable, check_credits_given, check_no_escalation, check_rate_limits,
    check_terms_within, check_windows_kept,
};
use super::types::{Caller, KeyChange, KeyView};
use super::validate::{
    parse_key_id, validate_cidrs, validate_metadata, validate_name, validate_rate_limits, validity,
};
use super::{count_key, record_mutation, Manager};
use crate::authz::now_unix_ms;
use crate::scope::{Catalog, ManageAction, ScopeSet};
use crate::store::{Change, CreditsRecord, KeyRecord, RateLimitRecord, Reads, StoreError};

impl Manager {
    pub async fn update(&self, caller: &Caller, change: KeyChange) -> Result<KeyView, ManageError> {
        let result = self.update_key(caller, change).await;
        record_mutation("update", &result);
        result
    }

    async fn update_key(&self, caller: &Caller, change: KeyChange) -> Result<KeyView, ManageError> {
        self.require(caller, ManageAction::Update)?;
        self.admit_mutation(caller)?;
        let id = parse_key_id(&change.key_id)?;
        let mut patch = self.patch(caller, &change)?;
        if let Some(roles) = &change.roles {
            let account = match caller {
                Caller::Key { account_id, .. } => account_id.to_string(),
                Caller::Admin => self
                    .store
                    .get(&id)?
                    .map(|record| record.account_id)
                    .ok_or_else(|| ManageError::NotFound(change.key_id.clone()))?,
            };
            patch.roles = Some(self.role_ids(&account, roles)?);
        }
        let caller_left = self.caller_credits_left(caller).await?;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_id_text = change.key_id.clone();
        let reads = Reads {
            keys: caller_reads(caller, Some(id)),
            roles: patch.roles.clone().unwrap_or_default(),
            members: false,
        };
        let (before, updated) = self
            .store
            .mutate(reads, move |snapshot| {
                let (current, caller) = changeable(
                    snapshot,
                    &catalog,
                    &guard,
                    &id,
                    &key_id_text,
                    ManageAction::Update,
                )?;
                if let Some(scopes) = &patch.scopes {
                    check_no_escalation(&catalog, &caller, scopes)?;
                }
                if let Some(limits) = &patch.rate_limits {
                    check_rate_limits(snapshot, &caller, limits)?;
                    check_windows_kept(&caller, current, limits)?;
                }
                if let Some(credits) = &patch.credits {
                    check_credits_given(snapshot, &caller, credits.as_ref(), caller_left)?;
                }
                let mut updated = patch.apply(current, &catalog, now_unix_ms())?;
                // A deleted role the key still names is dropped on its next change.
                updated.role_ids.retain(|id| {
                    crate::role::RoleId::from_slice(id)
                        .is_some_and(|id| snapshot.role(&id).is_some())
                });
                if patch.scopes.is_some() || patch.roles.is_some() {
                    check_attached(snapshot, &catalog, &caller, &updated)?;
                }
                check_terms_within(snapshot, &caller, &updated).map_err(|why| {
                    ManageError::TermsEscalation(format!("a key changed by an API key keeps {why}"))
                })?;
                let action = match (current.disabled, updated.disabled) {
                    (false, true) => "disable",
                    (true, false) => "enable",
                    _ => "update",
                };
                let event = audit_event(action, &caller, Some(current), Some(&updated));
                Ok::<_, ManageError>((
                    Change::Update(updated.clone()),
                    event,
                    (current.clone(), updated),
                ))
            })
            .await
            .map_err(|error| not_found_as(error, &change.key_id))?;
        tracing::info!(%caller, key_id = %id, name_changed = change.name.is_some(), scopes = ?updated.scopes, "key updated");
        let (before, after) = (self.view(&before)?, self.view(&updated)?);
        if before.kind != after.kind {
            count_key(before.kind, -1.0);
            count_key(after.kind, 1.0);
        }
        Ok(after)
    }

    /// An UpdateKey request, validated; refused when it changes nothing.
    fn patch(&self, caller: &Caller, change: &KeyChange) -> Result<Patch, ManageError> {
        let name = change.name.as_deref().map(validate_name).transpose()?;
        let replace_scopes = !change.scopes.is_empty()
            || !change.grants.is_empty()
            || change.all_my_scopes_except_billing;
        let lifecycle = change.enabled.is_some()
            || change.expire_time.is_some()
            || change.not_before.is_some()
            || change.allowed_cidrs.is_some()
            || change.metadata.is_some()
            || change.rate_limits.is_some()
            || change.credits.is_some()
            || change.roles.is_some();
        if name.is_none() && !replace_scopes && !lifecycle {
            return Err(invalid(
                "name",
                "nothing to update: give a name, scopes, grants, roles, enabled, expiry, allowed CIDRs, metadata, rate limits or credits",
            ));
        }
        let cidrs = change
            .allowed_cidrs
            .as_deref()
            .map(validate_cidrs)
            .transpose()?;
        let metadata = change
            .metadata
            .as_ref()
            .map(validate_metadata)
            .transpose()?;
        let scopes = replace_scopes
            .then(|| {
                self.requested_scopes(
                    caller,
                    &change.scopes,
                    &change.grants,
                    change.all_my_scopes_except_billing,
                    false,
                )
            })
            .transpose()?;
        let rate_limits = change
            .rate_limits
            .as_deref()
            .map(|limits| validate_rate_limits(limits, &self.catalog.load()))
            .transpose()?;
        Ok(Patch {
            credits: change
                .credits
                .map(|credits| credits.map(|credits| CreditsRecord::new(&credits, 0))),
            rate_limits,
            name,
            scopes,
            enabled: change.enabled,
            cidrs,
            metadata,
            expire_time: change.expire_time,
            not_before: change.not_before,
            max_lifetime: self.max_key_lifetime,
            roles: None,
        })
    }

    pub async fn delete(&self, caller: &Caller, key_id: &str) -> Result<(), ManageError> {
        let result = self.delete_key(caller, key_id).await;
        record_mutation("delete", &result);
        result
    }

    async fn delete_key(&self, caller: &Caller, key_id: &str) -> Result<(), ManageError> {
        self.require(caller, ManageAction::Delete)?;
        self.admit_mutation(caller)?;
        let id = parse_key_id(key_id)?;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_id_text = key_id.to_owned();
        let deleted = self
            .store
            .mutate(caller_reads(caller, Some(id)), move |snapshot| {
                let (current, caller) = changeable(
                    snapshot,
                    &catalog,
                    &guard,
                    &id,
                    &key_id_text,
                    ManageAction::Delete,
                )?;
                let event = audit_event("delete", &caller, Some(current), None);
                Ok::<_, ManageError>((Change::Delete(current.clone()), event, current.clone()))
            })
            .await
            .map_err(|error| not_found_as(error, key_id))?;
        tracing::info!(%caller, key_id = %id, account_id = %deleted.account_id, "key deleted");
        count_key(self.view(&deleted)?.kind, -1.0);
        Ok(())
    }
}

pub(super) fn not_found_as(error: ManageError, key_id: &str) -> ManageError {
    match error {
        ManageError::Store(StoreError::NotFound) => ManageError::NotFound(key_id.to_owned()),
        other => other,
    }
}

/// The validated fields of an UpdateKey; `None` leaves a field as it is.
struct Patch {
    name: Option<String>,
    scopes: Option<ScopeSet>,
    enabled: Option<bool>,
    cidrs: Option<Vec<String>>,
    metadata: Option<BTreeMap<String, String>>,
    rate_limits: Option<Vec<RateLimitRecord>>,
    /// `Some(None)`: unlimited. Its generation is set from the current one.
    credits: Option<Option<CreditsRecord>>,
    /// `Some(None)`: remove.
    expire_time: Option<Option<i64>>,
    not_before: Option<Option<i64>>,
    max_lifetime: Option<std::time::Duration>,
    /// `Some`: the key's roles from now on.
    roles: Option<Vec<crate::role::RoleId>>,
}

impl Patch {
    /// The record with this patch applied at `now`.
    fn apply(
        &self,
        current: &KeyRecord,
        catalog: &Catalog,
        now: i64,
    ) -> Result<KeyRecord, ManageError> {
        let mut updated = current.clone();
        if let Some(name) = &self.name {
            updated.name = name.clone();
        }
        if let Some(scopes) = &self.scopes {
            updated.scopes = catalog.names(scopes);
        }
        if let Some(enabled) = self.enabled {
            updated.disabled = !enabled;
        }
        if let Some(roles) = &self.roles {
            updated.role_ids = roles.iter().map(|id| id.as_bytes().to_vec()).collect();
        }
        if let Some(cidrs) = &self.cidrs {
            updated.allowed_cidrs = cidrs.clone();
        }
        if let Some(metadata) = &self.metadata {
            updated.metadata = metadata.clone();
        }
        if let Some(limits) = &self.rate_limits {
            updated.rate_limits = limits.clone();
        }
        if let Some(credits) = &self.credits {
            let generation = current.credits.as_ref().map_or(0, |c| c.generation) + 1;
            updated.credits = credits.clone().map(|credits| CreditsRecord {
                generation,
                ..credits
            });
        }
        if self.expire_time.is_some() || self.not_before.is_some() {
            let not_before = self
                .not_before
                .map_or(updated.not_before_unix_ms, |v| v.unwrap_or(0));
            let expire = self
                .expire_time
                .map_or(updated.expire_time_unix_ms, |v| v.unwrap_or(0));
            let (not_before, expire) = validity(now, not_before, expire, self.max_lifetime)?;
            updated.not_before_unix_ms = not_before;
            updated.expire_time_unix_ms = expire;
        }
        updated.version = updated.required_version();
        updated.update_time_unix_ms = now;
        Ok(updated)
    }
}
