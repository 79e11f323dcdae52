//! The rules of who may change what, as pure functions over the records a
//! mutation read: the caller as the store holds it now, the `api_keys` verb,
//! no escalation, a lesser key never touching a stronger one, accounts apart.

use super::error::ManageError;
use super::types::Caller;
use super::validate::validate_account_id;
use crate::ratelimit::RateLimit;
use crate::role::RoleId;
use crate::scope::{Catalog, ManageAction, ScopeSet};
use crate::store::{CreditsRecord, KeyRecord, RateLimitRecord, RoleRecord, Snapshot, StoreError};
use crate::token::KeyId;

/// A key caller sees only its own account; other accounts' keys do not exist.
pub(super) fn visible_to(caller: &Caller, record: &KeyRecord) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Key { account_id, .. } => record.account_id == **account_id,
    }
}

/// Whether `caller` may see what belongs to `account`.
pub(super) fn visible_in(caller: &Caller, account: &str) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Key { account_id, .. } => **account_id == *account,
    }
}

/// The account a read may cover: for the admin the one asked for (`None`:
/// every account), for an API key its own (asking for another is refused).
pub(super) fn readable_account(
    caller: &Caller,
    asked: &str,
) -> Result<Option<String>, ManageError> {
    match caller {
        Caller::Admin if asked.is_empty() => Ok(None),
        Caller::Admin => Ok(Some(validate_account_id(asked)?)),
        Caller::Key { account_id, .. } => {
            if !asked.is_empty() && asked != &**account_id {
                return Err(ManageError::OtherAccount);
            }
            Ok(Some(account_id.to_string()))
        }
    }
}

/// What a mutation reads: the calling key's own record (an API key caller),
/// and the target.
pub(super) fn caller_reads(caller: &Caller, target: Option<KeyId>) -> Vec<KeyId> {
    let mut reads: Vec<KeyId> = target.into_iter().collect();
    if let Caller::Key { key_id, .. } = caller {
        if !reads.contains(key_id) {
            reads.push(*key_id);
        }
    }
    reads
}

/// The caller as the source of truth holds it when the change applies (the
/// store reads it under its writer lock, or compares it in the etcd
/// transaction), so a key deleted, narrowed or moved by a mutation
/// acknowledged before this one cannot act on its old rights: a deleted
/// caller is unauthenticated, a narrowed one is judged by its current scopes.
pub(super) fn current_caller(
    snapshot: &Snapshot,
    catalog: &Catalog,
    caller: &Caller,
) -> Result<Caller, ManageError> {
    let Caller::Key {
        key_id,
        account_id,
        secret_hash,
        ..
    } = caller
    else {
        return Ok(Caller::Admin);
    };
    let now = crate::authz::now_unix_ms();
    let record = snapshot
        .get(key_id)
        .filter(|record| record.account_id == **account_id)
        .ok_or(ManageError::BadCredentials)?;
    if record.secret_hash.as_slice() != secret_hash {
        // Rotated since authentication: the secret presented is no longer current.
        return Err(if record.previous_secret_hash.as_slice() == secret_hash {
            ManageError::PreviousSecret
        } else {
            ManageError::BadCredentials
        });
    }
    let window = (record.not_before_unix_ms == 0 || now >= record.not_before_unix_ms)
        && (record.expire_time_unix_ms == 0 || now < record.expire_time_unix_ms);
    if record.disabled || !window {
        return Err(ManageError::Inactive(
            "the calling API key is disabled or outside its validity window".into(),
        ));
    }
    let scopes = effective(snapshot, catalog, record)?;
    Ok(Caller::Key {
        key_id: *key_id,
        account_id: account_id.clone(),
        scopes,
        secret_hash: *secret_hash,
    })
}

/// An API key caller needs the `api_keys` scope of the action.
pub(super) fn require(
    catalog: &Catalog,
    caller: &Caller,
    action: ManageAction,
) -> Result<(), ManageError> {
    let Caller::Key { scopes, .. } = caller else {
        return Ok(());
    };
    let needed = catalog.manage_scope(action);
    if scopes.contains(needed) {
        Ok(())
    } else {
        Err(ManageError::NeedsScope(
            catalog.scope_name(needed).to_owned(),
        ))
    }
}

/// No escalation: an API key caller must hold every scope it grants.
pub(super) fn check_no_escalation(
    catalog: &Catalog,
    caller: &Caller,
    requested: &ScopeSet,
) -> Result<(), ManageError> {
    if let Caller::Key { scopes: held, .. } = caller {
        let lacking = crate::scope::missing(held, requested);
        if !lacking.is_empty() {
            return Err(ManageError::Escalation(catalog.names(&lacking)));
        }
    }
    Ok(())
}

/// No escalation of rate limits: a limited API key caller gives keys only
/// limits at least as strict as its own, as it holds them now.
pub(super) fn check_rate_limits(
    snapshot: &Snapshot,
    caller: &Caller,
    limits: &[RateLimitRecord],
) -> Result<(), ManageError> {
    let Caller::Key { key_id, .. } = caller else {
        return Ok(());
    };
    let Some(held) = snapshot.get(key_id) else {
        return Err(ManageError::BadCredentials);
    };
    let given: Vec<RateLimit> = limits.iter().map(RateLimit::from).collect();
    crate::ratelimit::within(&held.rate_limits(), &given).map_err(ManageError::RateLimitEscalation)
}

/// No escalation of credits: an API key with credits gives keys only
/// credits, no more than it has left (`caller_left`, its live balance read
/// before the change) and a refill only like its own (`credits::within`).
pub(super) fn check_credits_given(
    snapshot: &Snapshot,
    caller: &Caller,
    given: Option<&CreditsRecord>,
    caller_left: Option<u64>,
) -> Result<(), ManageError> {
    let Some(held) = caller_credits(snapshot, caller)? else {
        return Ok(());
    };
    let given = given
        .map(CreditsRecord::key_credits)
        .transpose()
        .map_err(|message| ManageError::InvalidArgument {
            field: "credits",
            message,
        })?;
    let left = caller_left.unwrap_or(held.terms.remaining);
    crate::credits::within(
        Some((left, held.terms.refill)),
        given.as_ref().map(|c| &c.terms),
    )
    .map_err(ManageError::CreditsEscalation)
}

/// The caller's credits as the store holds them now (`None`: the admin, or
/// a key without credits).
pub(super) fn caller_credits(
    snapshot: &Snapshot,
    caller: &Caller,
) -> Result<Option<crate::credits::KeyCredits>, ManageError> {
    let Caller::Key { key_id, .. } = caller else {
        return Ok(None);
    };
    let held = snapshot.get(key_id).ok_or(ManageError::BadCredentials)?;
    held.credits
        .as_ref()
        .map(CreditsRecord::key_credits)
        .transpose()
        .map_err(|reason| {
            ManageError::Store(StoreError::Corrupt {
                key_id: key_id.to_string(),
                reason,
            })
        })
}

/// Credits are part of "stronger": a caller with credits touches only keys
/// with credits, refilled no more generously than itself.
fn check_target_credits(
    snapshot: &Snapshot,
    caller: &Caller,
    target: &KeyRecord,
    key_id: &str,
) -> Result<(), ManageError> {
    let Some(held) = caller_credits(snapshot, caller)? else {
        return Ok(());
    };
    let target_credits = target
        .credits
        .as_ref()
        .map(CreditsRecord::key_credits)
        .transpose()
        .map_err(|reason| {
            ManageError::Store(StoreError::Corrupt {
                key_id: key_id.to_owned(),
                reason,
            })
        })?;
    let weaker = target_credits.map(|credits| crate::credits::Credits {
        remaining: 0,
        ..credits.terms
    });
    crate::credits::within(Some((u64::MAX, held.terms.refill)), weaker.as_ref()).map_err(|why| {
        ManageError::CreditsEscalation(format!(
            "key {key_id} may spend more freely than the caller ({why}): a key with credits cannot change it"
        ))
    })
}

/// A counter's window is part of its identity, so a new window is a fresh
/// count: an API key may change a limit's count or scopes, never the window
/// of a limit the key already has (the admin may).
pub(super) fn check_windows_kept(
    caller: &Caller,
    current: &KeyRecord,
    limits: &[RateLimitRecord],
) -> Result<(), ManageError> {
    if matches!(caller, Caller::Admin) {
        return Ok(());
    }
    let before = current.rate_limits();
    for limit in limits.iter().map(RateLimit::from) {
        let moved = before.iter().find(|old| {
            old.name == limit.name
                && old.account == limit.account
                && old.window_secs != limit.window_secs
        });
        if let Some(old) = moved {
            return Err(ManageError::RateLimitEscalation(format!(
                "rate limit `{}` keeps its window of {}: a new window would start a fresh count (only the admin may change it)",
                limit.name,
                crate::ratelimit::window_text(old.window_secs)
            )));
        }
    }
    Ok(())
}

/// A key's effective scopes as the change reads it: its own and those of
/// each role it references (the store reads them with the key); a role
/// that is gone, or of another account, grants nothing.
pub(super) fn effective(
    snapshot: &Snapshot,
    catalog: &Catalog,
    record: &KeyRecord,
) -> Result<ScopeSet, ManageError> {
    effective_with(snapshot, catalog, record, None)
}

/// [`effective`] with one role as it will be after a change (`Some(None)`: deleted).
pub(super) fn effective_with(
    snapshot: &Snapshot,
    catalog: &Catalog,
    record: &KeyRecord,
    replaced: Option<(RoleId, Option<&RoleRecord>)>,
) -> Result<ScopeSet, ManageError> {
    let key_id = || record.key_id().map(|id| id.to_string()).unwrap_or_default();
    let mismatch = |source| StoreError::CatalogMismatch {
        key_id: key_id(),
        source,
    };
    let mut scopes = catalog
        .resolve(record.scopes.iter().map(String::as_str))
        .map_err(mismatch)?;
    for role_id in record.roles() {
        let role = match replaced {
            Some((replaced_id, role)) if replaced_id == role_id => role,
            _ => snapshot.role(&role_id),
        };
        if let Some(role) = role.filter(|role| role.account_id == record.account_id) {
            let granted = catalog
                .resolve(role.scopes.iter().map(String::as_str))
                .map_err(mismatch)?;
            scopes = scopes.union(&granted);
        }
    }
    Ok(scopes)
}

/// The target of an update, rotation or delete and the caller as they are
/// when the change applies, once the caller may do `action` to the target.
pub(super) fn changeable<'a>(
    snapshot: &'a Snapshot,
    catalog: &Catalog,
    caller: &Caller,
    id: &KeyId,
    key_id: &str,
    action: ManageAction,
) -> Result<(&'a KeyRecord, Caller), ManageError> {
    let current = snapshot.get(id).ok_or(StoreError::NotFound)?;
    let caller = current_caller(snapshot, catalog, caller)?;
    require(catalog, &caller, action)?;
    check_may_change(snapshot, catalog, &caller, current, key_id)?;
    check_may_touch(snapshot, &caller, current, key_id)?;
    Ok((current, caller))
}

/// Beyond scopes, a key the caller may change is no freer than the caller:
/// rate limits, credits, lifecycle terms.
pub(super) fn check_may_touch(
    snapshot: &Snapshot,
    caller: &Caller,
    target: &KeyRecord,
    key_id: &str,
) -> Result<(), ManageError> {
    check_target_limits(snapshot, caller, target, key_id)?;
    check_target_credits(snapshot, caller, target, key_id)?;
    check_terms_within(snapshot, caller, target).map_err(|why| {
        ManageError::TermsEscalation(format!(
            "key {key_id} is more open or longer-lived than the caller: a key it may change needs {why}"
        ))
    })
}

/// A key an API key makes or changes is at most as open and lives at most
/// as long as that caller: within its CIDR allowlist (when it has one) and
/// expiring no later (when it expires). `Err` says what is wider.
pub(super) fn check_terms_within(
    snapshot: &Snapshot,
    caller: &Caller,
    key: &KeyRecord,
) -> Result<(), String> {
    let Caller::Key { key_id, .. } = caller else {
        return Ok(());
    };
    let Some(held) = snapshot.get(key_id) else {
        return Err("the calling key is gone".into());
    };
    if held.expire_time_unix_ms != 0
        && (key.expire_time_unix_ms == 0 || key.expire_time_unix_ms > held.expire_time_unix_ms)
    {
        return Err(format!(
            "an expiry no later than the calling key's ({} unix ms)",
            held.expire_time_unix_ms
        ));
    }
    if !held.allowed_cidrs.is_empty() {
        let parse = |cidrs: &[String]| -> Vec<ipnet::IpNet> {
            cidrs.iter().filter_map(|cidr| cidr.parse().ok()).collect()
        };
        let (outer, inner) = (parse(&held.allowed_cidrs), parse(&key.allowed_cidrs));
        let within = !inner.is_empty()
            && inner
                .iter()
                .all(|net| outer.iter().any(|allowed| allowed.contains(net)));
        if !within {
            return Err(format!(
                "allowed CIDRs within the calling key's ({})",
                held.allowed_cidrs.join(", ")
            ));
        }
    }
    Ok(())
}

/// Rate limits are part of "stronger": a limited caller touches (updates,
/// enables, rotates, deletes) only keys held to each of its limits at least
/// as strictly, so it never gets an unlimited token by rotating or enabling
/// one, whatever the change would leave.
fn check_target_limits(
    snapshot: &Snapshot,
    caller: &Caller,
    target: &KeyRecord,
    key_id: &str,
) -> Result<(), ManageError> {
    let Caller::Key {
        key_id: caller_id, ..
    } = caller
    else {
        return Ok(());
    };
    let held = snapshot
        .get(caller_id)
        .ok_or(ManageError::BadCredentials)?
        .rate_limits();
    crate::ratelimit::within(&held, &target.rate_limits()).map_err(|why| {
        ManageError::RateLimitEscalation(format!(
            "key {key_id} has looser rate limits than the caller ({why}): a limited key cannot change it"
        ))
    })
}

/// A lesser key cannot touch a stronger one.
pub(super) fn check_may_change(
    snapshot: &Snapshot,
    catalog: &Catalog,
    caller: &Caller,
    target: &KeyRecord,
    key_id: &str,
) -> Result<(), ManageError> {
    if !visible_to(caller, target) {
        return Err(ManageError::NotFound(key_id.to_owned()));
    }
    let Caller::Key { scopes: held, .. } = caller else {
        return Ok(());
    };
    let target_scopes = effective(snapshot, catalog, target)?;
    let lacking = crate::scope::missing(held, &target_scopes);
    if lacking.is_empty() {
        Ok(())
    } else {
        Err(ManageError::TargetStronger {
            key_id: key_id.to_owned(),
            missing: catalog.names(&lacking),
        })
    }
}
