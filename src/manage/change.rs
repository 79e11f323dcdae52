//! UpdateKey and DeleteKey: decided on the target and the caller as the
//! store holds them when the change applies.

use super::*;

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
        let name = change.name.as_deref().map(validate_name).transpose()?;
        let replace_scopes = !change.scopes.is_empty()
            || !change.grants.is_empty()
            || change.all_my_scopes_except_billing;
        let lifecycle = change.enabled.is_some()
            || change.expire_time.is_some()
            || change.not_before.is_some()
            || change.allowed_cidrs.is_some()
            || change.metadata.is_some();
        if name.is_none() && !replace_scopes && !lifecycle {
            return Err(invalid(
                "name",
                "nothing to update: give a name, scopes, grants, enabled, expiry, allowed CIDRs or metadata",
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
        let (enabled, expire_change, not_before_change) =
            (change.enabled, change.expire_time, change.not_before);
        let max_lifetime = self.max_key_lifetime;
        let new_scopes = if replace_scopes {
            Some(self.requested_scopes(
                caller,
                &change.scopes,
                &change.grants,
                change.all_my_scopes_except_billing,
            )?)
        } else {
            None
        };
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_id_text = change.key_id.clone();
        let (before, updated) = self
            .store
            .mutate(caller_reads(caller, Some(id)), move |snapshot| {
                let (current, caller) = changeable(
                    snapshot,
                    &catalog,
                    &guard,
                    &id,
                    &key_id_text,
                    ManageAction::Update,
                )?;
                let mut updated = current.clone();
                if let Some(name) = &name {
                    updated.name = name.clone();
                }
                if let Some(scopes) = &new_scopes {
                    check_no_escalation(&catalog, &caller, scopes)?;
                    updated.scopes = catalog.names(scopes);
                }
                let now = now_unix_ms();
                if let Some(enabled) = enabled {
                    updated.disabled = !enabled;
                }
                if let Some(cidrs) = &cidrs {
                    updated.allowed_cidrs = cidrs.clone();
                }
                if let Some(metadata) = &metadata {
                    updated.metadata = metadata.clone();
                }
                if expire_change.is_some() || not_before_change.is_some() {
                    let not_before =
                        not_before_change.map_or(updated.not_before_unix_ms, |v| v.unwrap_or(0));
                    let expire =
                        expire_change.map_or(updated.expire_time_unix_ms, |v| v.unwrap_or(0));
                    let (not_before, expire) = validity(now, not_before, expire, max_lifetime)?;
                    updated.not_before_unix_ms = not_before;
                    updated.expire_time_unix_ms = expire;
                }
                updated.version = KeyRecord::VERSION;
                updated.update_time_unix_ms = now;
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
