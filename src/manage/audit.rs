//! The audit trail as the use-cases write and read it.

use super::error::{invalid, ManageError};
use super::paging::{next_page_token, page, page_binding};
use super::rules::readable_account;
use super::types::{AuditQuery, Caller};
use super::validate::parse_key_id;
use super::Manager;
use crate::authz::now_unix_ms;
use crate::scope::ManageAction;
use crate::store::{AuditEvent, AuditFilter, KeyRecord, KeyState, RoleRecord};
use crate::token::secret_fingerprint;

impl Manager {
    /// Audit events, oldest first: the admin sees every account (or the one
    /// asked for); an API key needs api_keys.read and sees only its own
    /// account's.
    pub async fn audit(
        &self,
        caller: &Caller,
        query: AuditQuery,
    ) -> Result<(Vec<AuditEvent>, String), ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let account_id = readable_account(caller, &query.account_id)?;
        let key_id = match query.key_id.as_str() {
            "" => None,
            // A role's events are listed under its id, in the same index.
            text if text.starts_with("role_") => Some(crate::token::KeyId::from_bytes(
                *super::roles::parse_role_id(text)?.as_bytes(),
            )),
            text => Some(parse_key_id(text)?),
        };
        if query.end_unix_ms != 0 && query.end_unix_ms <= query.start_unix_ms {
            return Err(invalid("end_time", "must be after start_time"));
        }
        let binding = page_binding(&[
            b"ListAuditEvents",
            account_id.as_deref().unwrap_or("").as_bytes(),
            key_id.as_ref().map_or(&[][..], |id| &id.as_bytes()[..]),
            &query.start_unix_ms.to_be_bytes(),
            &query.end_unix_ms.to_be_bytes(),
        ]);
        let (page_size, after) = page(query.page_size, &query.page_token, &binding)?;
        let filter = AuditFilter {
            account_id,
            key_id,
            start_unix_ms: query.start_unix_ms,
            end_unix_ms: query.end_unix_ms,
        };
        let (events, next) = self.store.audit_events(&filter, after, page_size).await?;
        Ok((events, next_page_token(&binding, next)))
    }
}

/// The audit event of a change: who, what, and the key before and after
/// (name, scopes, expiry, state; never a secret or hash).
pub(super) fn audit_event(
    action: &str,
    caller: &Caller,
    before: Option<&KeyRecord>,
    after: Option<&KeyRecord>,
) -> AuditEvent {
    let record = after.or(before).expect("a change has a key");
    AuditEvent {
        time_unix_ms: now_unix_ms(),
        actor: caller.to_string(),
        actor_account_id: match caller {
            Caller::Admin => String::new(),
            Caller::Key { account_id, .. } => account_id.to_string(),
        },
        actor_secret: match caller {
            Caller::Admin => String::new(),
            Caller::Key { secret_hash, .. } => secret_fingerprint(secret_hash),
        },
        action: action.into(),
        key_id: record.key_id.clone(),
        account_id: record.account_id.clone(),
        before: before.map(KeyState::of),
        after: after.map(KeyState::of),
        keys_affected: 0,
    }
}

/// The audit event of a role change: the role before and after (name,
/// grants), and how many keys it reached; listed under the role's id.
pub(super) fn role_event(
    action: &str,
    caller: &Caller,
    before: Option<&RoleRecord>,
    after: Option<&RoleRecord>,
    keys_affected: usize,
) -> AuditEvent {
    let role = after.or(before).expect("a change has a role");
    AuditEvent {
        before: before.map(KeyState::of_role),
        after: after.map(KeyState::of_role),
        keys_affected: keys_affected.min(u32::MAX as usize) as u32,
        key_id: role.role_id.clone(),
        account_id: role.account_id.clone(),
        action: action.into(),
        ..audit_event("", caller, None, Some(&KeyRecord::default()))
    }
}
