//! What the use-cases take and give: plain data, no transport types.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::credits::Credits;
use crate::ratelimit::RateLimit;
use crate::scope::{Access, KeyKind, ScopeSet};
use crate::token::KeyId;

/// Who makes a management call.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Key {
        key_id: KeyId,
        account_id: Arc<str>,
        /// As authenticated; a mutation re-reads the caller's record under
        /// the store's writer lock and decides on that (see `rules::current_caller`).
        scopes: ScopeSet,
        secret_hash: [u8; 32],
    },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Admin => f.write_str("admin"),
            Caller::Key { key_id, .. } => write!(f, "key:{key_id}"),
        }
    }
}

/// A key as the API shows it.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub key_id: String,
    pub account_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub access: Vec<(String, Access)>,
    pub kind: KeyKind,
    pub create_time_unix_ms: i64,
    pub update_time_unix_ms: i64,
    /// 0: none.
    pub expire_time_unix_ms: i64,
    pub not_before_unix_ms: i64,
    pub enabled: bool,
    /// When the secret before the last rotation stops (0: none).
    pub previous_secret_expire_unix_ms: i64,
    /// Names the current secret without revealing it ([`crate::token::secret_fingerprint`]).
    pub secret_fingerprint: String,
    pub allowed_cidrs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// 0: not used since records began.
    pub last_used_unix_ms: i64,
    pub rate_limits: Vec<RateLimit>,
    /// `None`: unlimited. `remaining` is the balance as last set; the
    /// edges show the live one (`Manager::live_credits`).
    pub credits: Option<Credits>,
    /// The key's own scopes (`scopes` is what it may do: these and its roles').
    pub own_scopes: Vec<String>,
    /// The access levels of its own scopes (`access`: of all it may do).
    pub own_access: Vec<(String, Access)>,
    /// When a leak was reported (0: never) and where it was seen.
    pub exposed_time_unix_ms: i64,
    pub exposed_url: String,
    pub roles: Vec<KeyRole>,
}

#[derive(Default)]
pub struct NewKey {
    pub account_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub grants: Vec<(String, Access)>,
    pub terms: KeyTerms,
    /// Every scope the caller holds except exclusive (billing) ones.
    pub all_my_scopes_except_billing: bool,
    /// Optional: a retry with the same id returns the first result
    /// ([`crate::request_id`]).
    pub request_id: String,
    /// Roles of the key's account, by id (`role_…`) or name.
    pub roles: Vec<String>,
}

/// A key's lifecycle settings (all optional).
#[derive(Debug, Clone, Default)]
pub struct KeyTerms {
    /// Unix ms.
    pub expire_time: Option<i64>,
    pub not_before: Option<i64>,
    pub allowed_cidrs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub rate_limits: Vec<RateLimit>,
    /// `None`: unlimited.
    pub credits: Option<Credits>,
}

#[derive(Default)]
pub struct KeyChange {
    pub key_id: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub grants: Vec<(String, Access)>,
    pub all_my_scopes_except_billing: bool,
    pub enabled: Option<bool>,
    /// `Some(None)`: remove the expiry.
    pub expire_time: Option<Option<i64>>,
    pub not_before: Option<Option<i64>>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// `Some`: replaces the key's rate limits (empty: none).
    pub rate_limits: Option<Vec<RateLimit>>,
    /// `Some`: replaces the key's credits (`Some(None)`: unlimited); the
    /// balance starts again from them.
    pub credits: Option<Option<Credits>>,
    /// `Some`: replaces the key's roles (empty: none), by id or name.
    pub roles: Option<Vec<String>>,
}

#[derive(Default)]
pub struct AuditQuery {
    pub account_id: String,
    pub key_id: String,
    /// Unix ms; 0: open.
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub page_size: i32,
    pub page_token: String,
}

pub struct ListQuery {
    pub account_id: String,
    pub page_size: i32,
    pub page_token: String,
}

pub struct ResourceView {
    pub resource: String,
    pub scopes: Vec<String>,
    pub grantable: Vec<Access>,
    pub read_only: bool,
    pub exclusive: bool,
    pub caller_access: Access,
}

pub struct ScopesView {
    pub resources: Vec<ResourceView>,
    pub caller_scopes: Vec<String>,
    pub caller_is_admin: bool,
    /// Built-in role templates: (name, description, scopes).
    pub templates: Vec<(&'static str, &'static str, Vec<String>)>,
}

/// A role as the API shows it.
#[derive(Debug, Clone)]
pub struct RoleView {
    pub role_id: String,
    pub account_id: String,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub access: Vec<(String, Access)>,
    pub kind: KeyKind,
    /// How many keys reference it.
    pub key_count: usize,
    pub create_time_unix_ms: i64,
    pub update_time_unix_ms: i64,
    pub created_by: String,
}

/// A role a key references, as its view shows it: what it adds beyond the
/// key's own scopes.
#[derive(Debug, Clone)]
pub struct KeyRole {
    pub role_id: String,
    pub name: String,
    pub adds: Vec<String>,
}

#[derive(Default)]
pub struct NewRole {
    pub account_id: String,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub grants: Vec<(String, Access)>,
    /// A built-in template's name ([`crate::role::TEMPLATES`]): its scopes,
    /// when no scopes or grants are given.
    pub template: String,
}

#[derive(Default)]
pub struct RoleChange {
    pub role_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Non-empty (either): replaces the role's grants.
    pub scopes: Vec<String>,
    pub grants: Vec<(String, Access)>,
}
