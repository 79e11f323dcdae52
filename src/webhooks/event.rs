//! What an event is called and what its body says, made from the audit
//! event of a change (or one scopegate derives: an expiry, a limit hit).
//! A body carries ids, names, the actor and the key before and after:
//! never a secret or a hash.

use serde_json::{json, Value};

use crate::store::{AuditEvent, KeyState};

/// Every event type an endpoint may ask for.
pub const EVENT_TYPES: &[&str] = &[
    "key.created",
    "key.updated",
    "key.rotated",
    "key.disabled",
    "key.enabled",
    "key.deleted",
    "key.expiring",
    "key.expired",
    "key.leaked",
    "key.rate_limited",
    "key.credits_updated",
    "key.credits_exhausted",
    "role.created",
    "role.updated",
    "role.deleted",
];

/// The webhook type of an audit event's action (`None`: not sent, as a
/// restore or an import, which replay history rather than make it).
pub fn event_type(action: &str) -> Option<&'static str> {
    Some(match action {
        "create" => "key.created",
        "update" => "key.updated",
        "rotate" => "key.rotated",
        "disable" => "key.disabled",
        "enable" => "key.enabled",
        "delete" => "key.deleted",
        "expiring" => "key.expiring",
        "expired" => "key.expired",
        "leak" => "key.leaked",
        "rate_limited" => "key.rate_limited",
        "credits" => "key.credits_updated",
        "credits_exhausted" => "key.credits_exhausted",
        "role.create" => "role.created",
        "role.update" => "role.updated",
        "role.delete" => "role.deleted",
        _ => return None,
    })
}

/// The JSON body of the event: Standard Webhooks' `type`, `timestamp`,
/// `data`.
pub fn payload(event_type: &str, event: &AuditEvent) -> Vec<u8> {
    let subject = match event.role_id() {
        Some(role_id) => json!({ "role_id": role_id.to_string() }),
        None => json!({
            "key_id": event.key_id().map(|id| id.to_string()).unwrap_or_default()
        }),
    };
    let mut data = json!({
        "account_id": event.account_id,
        "actor": event.actor,
        "actor_account_id": event.actor_account_id,
        "before": event.before.as_ref().map(state),
        "after": event.after.as_ref().map(state),
    });
    if let (Value::Object(data), Value::Object(subject)) = (&mut data, subject) {
        data.extend(subject);
        if event.keys_affected > 0 {
            data.insert("keys_affected".into(), event.keys_affected.into());
        }
    }
    let body = json!({
        "type": event_type,
        "timestamp": timestamp(event.time_unix_ms),
        "data": data,
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

/// A key as an event shows it.
fn state(state: &KeyState) -> Value {
    json!({
        "name": state.name,
        "scopes": state.scopes,
        "enabled": state.enabled,
        "expire_time": (state.expire_time_unix_ms > 0).then(|| timestamp(state.expire_time_unix_ms)),
        "rate_limits": state.rate_limits.iter().map(|limit| json!({
            "name": limit.name,
            "limit": limit.limit,
            "window_secs": limit.window_secs,
            "scopes": limit.scopes,
            "account": limit.account,
        })).collect::<Vec<_>>(),
        "credits": state.credits.as_ref().map(|credits| json!({
            "remaining": credits.remaining,
            "refill_amount": credits.refill_amount,
            "refill_interval": credits.refill_interval,
        })),
        "roles": state.roles,
        "exposed_url": (!state.exposed_url.is_empty()).then_some(&state.exposed_url),
    })
}

/// RFC 3339 in UTC, to the millisecond.
pub fn timestamp(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_that_changes_a_key_has_a_listed_type() {
        for action in [
            "create",
            "update",
            "rotate",
            "disable",
            "enable",
            "delete",
            "expiring",
            "expired",
            "leak",
            "rate_limited",
            "credits",
            "credits_exhausted",
            "role.create",
            "role.update",
            "role.delete",
        ] {
            let kind = event_type(action).unwrap();
            assert!(EVENT_TYPES.contains(&kind), "{kind}");
        }
        assert_eq!(event_type("restore"), None);
        assert_eq!(event_type("import"), None);
    }

    #[test]
    fn a_body_names_the_key_and_never_a_secret() {
        let event = AuditEvent {
            time_unix_ms: 1_765_000_000_000,
            actor: "admin".into(),
            action: "update".into(),
            key_id: vec![7; 16],
            account_id: "acct".into(),
            actor_secret: "fingerprint".into(),
            after: Some(KeyState {
                name: "ci".into(),
                scopes: vec!["mail.send".into()],
                enabled: true,
                ..KeyState::default()
            }),
            ..AuditEvent::default()
        };
        let body: Value = serde_json::from_slice(&payload("key.updated", &event)).unwrap();
        assert_eq!(body["type"], "key.updated");
        assert_eq!(body["timestamp"], "2025-12-06T05:46:40.000Z");
        assert_eq!(body["data"]["after"]["scopes"][0], "mail.send");
        let key_id = crate::token::KeyId::from_bytes([7; 16]).to_string();
        assert_eq!(body["data"]["key_id"], key_id.as_str());
        assert!(!body.to_string().contains("fingerprint"));
    }
}
