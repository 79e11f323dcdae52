//! The audit trail: one event per key change, written in the same atomic
//! write as the change (the sled transaction, or the etcd transaction), so
//! it survives exactly what the keys survive. Never a secret or a hash.

use crate::token::KeyId;

/// One key change, as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditEvent {
    #[prost(int64, tag = "1")]
    pub time_unix_ms: i64,
    /// "admin" or "key:<key id>".
    #[prost(string, tag = "2")]
    pub actor: String,
    /// The acting key's account ("" for the admin).
    #[prost(string, tag = "3")]
    pub actor_account_id: String,
    /// create, update, rotate, disable, enable, delete, restore.
    #[prost(string, tag = "4")]
    pub action: String,
    #[prost(bytes = "vec", tag = "5")]
    pub key_id: Vec<u8>,
    #[prost(string, tag = "6")]
    pub account_id: String,
    #[prost(message, optional, tag = "7")]
    pub before: Option<KeyState>,
    #[prost(message, optional, tag = "8")]
    pub after: Option<KeyState>,
    /// The fingerprint of the secret a key acted with ("" for the admin).
    #[prost(string, tag = "9")]
    pub actor_secret: String,
}

/// What an audit event shows of a key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyState {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub scopes: Vec<String>,
    /// 0: none.
    #[prost(int64, tag = "3")]
    pub expire_time_unix_ms: i64,
    #[prost(bool, tag = "4")]
    pub enabled: bool,
}

impl KeyState {
    pub fn of(record: &super::KeyRecord) -> KeyState {
        KeyState {
            name: record.name.clone(),
            scopes: record.scopes.clone(),
            expire_time_unix_ms: record.expire_time_unix_ms,
            enabled: !record.disabled,
        }
    }
}

impl AuditEvent {
    pub fn key_id(&self) -> Option<KeyId> {
        Some(KeyId::from_bytes(self.key_id.as_slice().try_into().ok()?))
    }

    /// Where the event sorts: by time, then a sequence number that keeps
    /// events of one millisecond apart.
    pub fn sort_key(&self, sequence: u64) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&(self.time_unix_ms.max(0) as u64).to_be_bytes());
        key[8..].copy_from_slice(&sequence.to_be_bytes());
        key
    }
}

/// Which events a listing wants.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub account_id: Option<String>,
    pub key_id: Option<KeyId>,
    /// Unix ms, inclusive / exclusive; 0: open.
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
}

impl AuditFilter {
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.account_id
            .as_deref()
            .is_none_or(|account| event.account_id == account)
            && self
                .key_id
                .is_none_or(|key_id| event.key_id.as_slice() == key_id.as_bytes())
            && event.time_unix_ms >= self.start_unix_ms
            && (self.end_unix_ms == 0 || event.time_unix_ms < self.end_unix_ms)
    }
}
