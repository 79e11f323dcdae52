//! Domain ⇄ protobuf conversions.

use super::pb;
use super::status::bad_request;
use crate::credits::{Credits, Refill};
use crate::manage::{KeyView, RoleView, ScopesView};
use crate::ratelimit::RateLimit;
use crate::scope::{Access, KeyKind};
use tonic::Status;

pub(super) fn access_to_pb(access: Access) -> pb::Access {
    match access {
        Access::NoAccess => pb::Access::NoAccess,
        Access::Read => pb::Access::Read,
        Access::Write => pb::Access::Write,
        Access::Full => pb::Access::Full,
        Access::Custom => pb::Access::Custom,
    }
}

/// Grants from a request; `field` names the repeated field for errors.
pub(super) fn grants_from_pb(
    grants: Vec<pb::Grant>,
) -> Result<Vec<(String, Access)>, tonic::Status> {
    grants
        .into_iter()
        .enumerate()
        .map(|(index, grant)| {
            let access = match pb::Access::try_from(grant.access) {
                Ok(pb::Access::Read) => Access::Read,
                Ok(pb::Access::Write) => Access::Write,
                Ok(pb::Access::Full) => Access::Full,
                Ok(pb::Access::NoAccess) => Access::NoAccess,
                Ok(pb::Access::Custom) => Access::Custom,
                Ok(pb::Access::Unspecified) | Err(_) => {
                    return Err(bad_request(
                        "grants",
                        format!("grant {index} (resource `{}`) has no access level: use READ, WRITE or FULL", grant.resource),
                    ))
                }
            };
            Ok((grant.resource, access))
        })
        .collect()
}

/// A timestamp from a request as unix ms; `field` names it in the error.
pub(super) fn unix_ms(field: &str, time: &prost_types::Timestamp) -> Result<i64, tonic::Status> {
    if !(0..1_000_000_000).contains(&time.nanos)
        || time.seconds < 0
        || time.seconds > 253_402_300_799
    {
        return Err(bad_request(
            field,
            "is not a valid time (after 1970, before 10000)",
        ));
    }
    Ok(time.seconds * 1000 + i64::from(time.nanos) / 1_000_000)
}

/// 0 means "unset".
pub(super) fn optional_timestamp(unix_ms: i64) -> Option<prost_types::Timestamp> {
    (unix_ms != 0).then(|| timestamp(unix_ms))
}

fn timestamp(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(super) fn key_to_pb(view: KeyView) -> pb::ApiKey {
    pb::ApiKey {
        key_id: view.key_id,
        account_id: view.account_id,
        name: view.name,
        scopes: view.scopes,
        access: view
            .access
            .into_iter()
            .map(|(resource, access)| pb::Grant {
                resource,
                access: access_to_pb(access) as i32,
            })
            .collect(),
        kind: match view.kind {
            KeyKind::General => pb::KeyKind::General,
            KeyKind::Billing => pb::KeyKind::Billing,
        } as i32,
        create_time: Some(timestamp(view.create_time_unix_ms)),
        update_time: Some(timestamp(view.update_time_unix_ms)),
        expire_time: optional_timestamp(view.expire_time_unix_ms),
        not_before: optional_timestamp(view.not_before_unix_ms),
        enabled: view.enabled,
        previous_secret_expire_time: optional_timestamp(view.previous_secret_expire_unix_ms),
        secret_fingerprint: view.secret_fingerprint,
        allowed_cidrs: view.allowed_cidrs,
        metadata: view.metadata.into_iter().collect(),
        last_used_time: optional_timestamp(view.last_used_unix_ms),
        rate_limits: view.rate_limits.iter().map(rate_limit_to_pb).collect(),
        credits: view.credits.as_ref().map(credits_to_pb),
        exposed_time: optional_timestamp(view.exposed_time_unix_ms),
        exposed_url: view.exposed_url,
        own_scopes: view.own_scopes,
        roles: view
            .roles
            .into_iter()
            .map(|role| pb::KeyRole {
                role_id: role.role_id,
                name: role.name,
                adds: role.adds,
            })
            .collect(),
    }
}

pub(super) fn role_to_pb(view: RoleView) -> pb::Role {
    pb::Role {
        role_id: view.role_id,
        account_id: view.account_id,
        name: view.name,
        description: view.description,
        scopes: view.scopes,
        access: view
            .access
            .into_iter()
            .map(|(resource, access)| pb::Grant {
                resource,
                access: access_to_pb(access) as i32,
            })
            .collect(),
        kind: match view.kind {
            KeyKind::General => pb::KeyKind::General,
            KeyKind::Billing => pb::KeyKind::Billing,
        } as i32,
        key_count: view.key_count.min(u32::MAX as usize) as u32,
        create_time: Some(timestamp(view.create_time_unix_ms)),
        update_time: Some(timestamp(view.update_time_unix_ms)),
        created_by: view.created_by,
    }
}

pub(super) fn credits_to_pb(credits: &Credits) -> pb::Credits {
    pb::Credits {
        remaining: credits.remaining,
        refill: credits.refill.map(|refill| pb::Refill {
            amount: refill.amount,
            interval: refill.interval.name().to_owned(),
            day_of_month: u32::from(refill.day_of_month),
        }),
    }
}

/// Credits from the wire, checked (a refill names its interval).
pub(super) fn credits_from_pb(credits: pb::Credits) -> Result<Credits, Status> {
    let refill = credits
        .refill
        .map(|refill| Refill::new(refill.amount, &refill.interval, refill.day_of_month))
        .transpose()
        .map_err(|error| bad_request("credits.refill", error.to_string()))?;
    Credits::new(credits.remaining, refill)
        .map_err(|error| bad_request("credits.remaining", error.to_string()))
}

fn rate_limit_to_pb(limit: &RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        name: limit.name.clone(),
        limit: limit.limit,
        window: Some(seconds(limit.window_secs)),
        scopes: limit.scopes.clone(),
        account: limit.account,
    }
}

pub(super) fn seconds(secs: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs.min(i64::MAX as u64) as i64,
        nanos: 0,
    }
}

/// Rate limits from the wire: a window is whole seconds (1 s to 30 days).
pub(super) fn rate_limits_from_pb(limits: Vec<pb::RateLimit>) -> Result<Vec<RateLimit>, Status> {
    limits
        .into_iter()
        .map(|limit| {
            let window = limit.window.unwrap_or_default();
            if window.nanos != 0 || window.seconds <= 0 {
                return Err(bad_request(
                    "rate_limits.window",
                    format!(
                        "limit `{}`: the window must be a whole, positive number of seconds",
                        limit.name
                    ),
                ));
            }
            Ok(RateLimit {
                name: limit.name,
                limit: limit.limit,
                window_secs: window.seconds as u64,
                scopes: limit.scopes,
                account: limit.account,
            })
        })
        .collect()
}

fn key_state_to_pb(state: crate::store::KeyState) -> pb::KeyState {
    pb::KeyState {
        name: state.name,
        scopes: state.scopes,
        expire_time: optional_timestamp(state.expire_time_unix_ms),
        enabled: state.enabled,
        credits: state
            .credits
            .and_then(|credits| credits.key_credits().ok())
            .map(|credits| credits_to_pb(&credits.terms)),
        rate_limits: state
            .rate_limits
            .iter()
            .map(|limit| rate_limit_to_pb(&limit.into()))
            .collect(),
        roles: state.roles,
    }
}

pub(super) fn audit_event_to_pb(event: crate::store::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(timestamp(event.time_unix_ms)),
        key_id: match event.role_id() {
            Some(role_id) => role_id.to_string(),
            None => event.key_id().map(|id| id.to_string()).unwrap_or_default(),
        },
        keys_affected: event.keys_affected,
        actor: event.actor,
        actor_account_id: event.actor_account_id,
        actor_secret: event.actor_secret,
        action: event.action,
        account_id: event.account_id,
        before: event.before.map(key_state_to_pb),
        after: event.after.map(key_state_to_pb),
    }
}

pub(super) fn scopes_to_pb(view: ScopesView) -> pb::ListScopesResponse {
    pb::ListScopesResponse {
        resources: view
            .resources
            .into_iter()
            .map(|resource| pb::ResourceScopes {
                resource: resource.resource,
                scopes: resource.scopes,
                grantable: resource
                    .grantable
                    .into_iter()
                    .map(|access| access_to_pb(access) as i32)
                    .collect(),
                read_only: resource.read_only,
                exclusive: resource.exclusive,
                caller_access: access_to_pb(resource.caller_access) as i32,
            })
            .collect(),
        caller_scopes: view.caller_scopes,
        caller_is_admin: view.caller_is_admin,
        templates: view
            .templates
            .into_iter()
            .map(|(name, description, scopes)| pb::RoleTemplate {
                name: name.to_owned(),
                description: description.to_owned(),
                scopes,
            })
            .collect(),
    }
}

pub fn usage_to_pb(report: crate::usage::Report) -> pb::GetUsageResponse {
    pb::GetUsageResponse {
        points: report
            .points
            .into_iter()
            .map(|point| pb::UsagePoint {
                date: point.date,
                start_time: point.start,
                stats: point
                    .series
                    .into_iter()
                    .map(|series| pb::UsageSeries {
                        r#type: series.kind.unwrap_or_default().to_owned(),
                        name: series.name.unwrap_or_default(),
                        metrics: series.metrics.into_iter().collect(),
                    })
                    .collect(),
            })
            .collect(),
        partial: report.partial,
    }
}

pub fn usage_row_to_pb(row: crate::usage::UsageRow) -> pb::UsageRow {
    pb::UsageRow {
        start_time: row.start,
        grain: row.grain.name().to_owned(),
        account_id: row.account,
        key_id: row.key,
        outcome: row.outcome,
        scope: row.scope,
        count: row.count,
    }
}
