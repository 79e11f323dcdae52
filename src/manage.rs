//! Key management use-cases: who is calling, what they may do, and the rules
//! (known scopes, billing alone, no escalation, account isolation, caps).
//! Transport-free: the gRPC adapter converts to and from these types.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::authz::Decision;
use crate::key::KeyTable;
use crate::limit::AccountRate;
use crate::request_id::{request_digest, RequestId};
use crate::scope::{Access, Catalog, KeyKind, ManageAction, ScopeError, ScopeSet, SharedCatalog};
use crate::store::{
    AuditEvent, AuditFilter, Change, CreateRequest, CreateRequestRecord, KeyRecord, KeyState,
    Snapshot, Store, StoreError,
};
use crate::token::{admin_token_hash, secret_fingerprint, KeyId, TokenFormat};

pub const DEFAULT_MAX_KEYS_PER_ACCOUNT: usize = 100;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const MAX_NAME_CHARS: usize = 100;
const MAX_ACCOUNT_ID_BYTES: usize = 128;
const MAX_CIDRS: usize = 32;
pub const MAX_METADATA_ENTRIES: usize = 16;
const MAX_METADATA_KEY_BYTES: usize = 64;
const MAX_METADATA_VALUE_BYTES: usize = 256;
const MAX_METADATA_BYTES: usize = 2048;
const MAX_ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Who makes a management call.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Key {
        key_id: KeyId,
        account_id: Arc<str>,
        /// As authenticated; a mutation re-reads the caller's record under
        /// the store's writer lock and decides on that (see [`current_caller`]).
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

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("missing credentials: send `authorization: Bearer <admin token or API key>`")]
    MissingCredentials,
    #[error("invalid credentials")]
    BadCredentials,
    #[error("this call needs scope {0}")]
    NeedsScope(String),
    #[error("caller lacks scopes: {}", .0.join(", "))]
    Escalation(Vec<String>),
    #[error("key {key_id} holds scopes the caller lacks ({}): a key cannot change a stronger key", .missing.join(", "))]
    TargetStronger {
        key_id: String,
        missing: Vec<String>,
    },
    #[error("an API key acts only inside its own account")]
    OtherAccount,
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{field}: {source}")]
    Scope {
        field: &'static str,
        source: ScopeError,
    },
    #[error("key {0} not found")]
    NotFound(String),
    #[error("account {account} already holds the maximum of {cap} keys")]
    AccountFull { account: String, cap: usize },
    #[error("only the admin token may do this")]
    AdminOnly,
    #[error("{0}")]
    Inactive(String),
    #[error("the API key may not be used from this address")]
    IpNotAllowed,
    /// A secret replaced by RotateKey still passes Check for its overlap (so
    /// deployments can roll) and never manages keys: whoever holds a leaked
    /// old secret cannot rotate the owner out.
    #[error("this is the key's previous secret, replaced by a rotation: it passes Check until its overlap ends but may not manage keys; use the current secret")]
    PreviousSecret,
    #[error("account {account} is {what} too fast: retry in {} ms", retry_after.as_millis().max(1))]
    RateLimited {
        account: String,
        /// "changing keys" or "reading keys".
        what: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("store error: {0}")]
    Store(StoreError),
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::BadCursor => invalid("page_token", error.to_string()),
            error => ManageError::Store(error),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ManageError {
    ManageError::InvalidArgument {
        field,
        message: message.into(),
    }
}

fn scope_error(source: ScopeError) -> ManageError {
    let field = match source {
        ScopeError::UnknownResource(_)
        | ScopeError::ReadOnly { .. }
        | ScopeError::WriteOnly { .. }
        | ScopeError::UngrantableAccess(_) => "grants",
        _ => "scopes",
    };
    ManageError::Scope { field, source }
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
    /// Names the current secret without revealing it ([`secret_fingerprint`]).
    pub secret_fingerprint: String,
    pub allowed_cidrs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// 0: not used since records began.
    pub last_used_unix_ms: i64,
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
}

/// A key's lifecycle settings (all optional).
#[derive(Debug, Clone, Default)]
pub struct KeyTerms {
    /// Unix ms.
    pub expire_time: Option<i64>,
    pub not_before: Option<i64>,
    pub allowed_cidrs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
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
}

pub struct Manager {
    store: Store,
    catalog: SharedCatalog,
    format: TokenFormat,
    admin_token_hash: [u8; 32],
    max_keys_per_account: usize,
    /// Key changes by API keys, per account; `None`: unlimited.
    mutation_rate: Option<AccountRate>,
    /// Management reads by API keys, per account; `None`: unlimited.
    read_rate: Option<AccountRate>,
    /// Every key must expire within this of now; `None`: no limit.
    max_key_lifetime: Option<std::time::Duration>,
}

impl Manager {
    pub fn new(
        store: Store,
        catalog: SharedCatalog,
        format: TokenFormat,
        admin_token: &str,
        max_keys_per_account: usize,
    ) -> Manager {
        Manager {
            store,
            catalog,
            format,
            admin_token_hash: admin_token_hash(admin_token),
            max_keys_per_account,
            mutation_rate: None,
            read_rate: None,
            max_key_lifetime: None,
        }
    }

    /// Every key must have an expiry no further than `lifetime` from now.
    pub fn with_max_key_lifetime(mut self, lifetime: Option<std::time::Duration>) -> Manager {
        self.max_key_lifetime = lifetime;
        self
    }

    /// Limits key changes by the API keys of one account to `per_second`
    /// (bursts of as many). The admin is not limited.
    pub fn with_mutation_rate(mut self, per_second: u32) -> Manager {
        self.mutation_rate = Some(AccountRate::new(per_second));
        self
    }

    /// Limits management reads (GetKey, ListKeys, ListAuditEvents) by the
    /// API keys of one account to `per_second` (bursts of as many).
    pub fn with_read_rate(mut self, per_second: u32) -> Manager {
        self.read_rate = Some(AccountRate::new(per_second));
        self
    }

    fn admit_mutation(&self, caller: &Caller) -> Result<(), ManageError> {
        admit(self.mutation_rate.as_ref(), caller, "changing keys")
    }

    fn admit_read(&self, caller: &Caller) -> Result<(), ManageError> {
        admit(self.read_rate.as_ref(), caller, "reading keys")
    }
}

/// Takes a token from the caller's account bucket (API keys only).
fn admit(
    rate: Option<&AccountRate>,
    caller: &Caller,
    what: &'static str,
) -> Result<(), ManageError> {
    {
        let (Some(rate), Caller::Key { account_id, .. }) = (rate, caller) else {
            return Ok(());
        };
        rate.take(account_id)
            .map_err(|retry_after| ManageError::RateLimited {
                account: account_id.to_string(),
                what,
                retry_after,
            })
    }
}

impl Manager {
    fn table(&self) -> &KeyTable {
        self.store.table()
    }

    /// Identifies the caller from its bearer credential.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, ManageError> {
        self.authenticate_from(bearer, None)
    }

    /// Identifies the caller; an API key is held to everything Check holds
    /// it to (enabled, within its validity window, from an allowed address)
    /// and must present its current secret: a previous one within its
    /// rotation overlap decides, it never manages.
    pub fn authenticate_from(
        &self,
        bearer: Option<&str>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Caller, ManageError> {
        let Some(presented) = bearer.filter(|token| !token.is_empty()) else {
            return Err(ManageError::MissingCredentials);
        };
        if bool::from(admin_token_hash(presented).ct_eq(&self.admin_token_hash)) {
            return Ok(Caller::Admin);
        }
        let parsed = self
            .format
            .parse(presented)
            .map_err(|_| ManageError::BadCredentials)?;
        let decision = crate::authz::decide_from(
            self.table(),
            &self.format,
            presented,
            client_ip,
            &ScopeSet::EMPTY,
        );
        match decision {
            Decision::Allowed { .. } => {}
            Decision::Expired | Decision::Disabled => {
                return Err(ManageError::Inactive(
                    decision.message(&self.catalog.load()),
                ))
            }
            Decision::IpNotAllowed => return Err(ManageError::IpNotAllowed),
            _ => return Err(ManageError::BadCredentials),
        }
        let entry = self
            .table()
            .get(&parsed.key_id)
            .ok_or(ManageError::BadCredentials)?;
        if !self.format.verify(&parsed, &entry.secret_hash) {
            // Check allowed it, so it is the previous secret within its overlap.
            return Err(ManageError::PreviousSecret);
        }
        let secret_hash = entry.secret_hash;
        Ok(Caller::Key {
            key_id: parsed.key_id,
            account_id: entry.account_id.clone(),
            scopes: entry.scopes(),
            secret_hash,
        })
    }

    fn require(&self, caller: &Caller, action: ManageAction) -> Result<(), ManageError> {
        require(&self.catalog.load(), caller, action)
    }

    /// Resolves scopes + grants into a key's scopes and checks that the
    /// caller holds all of them.
    fn requested_scopes(
        &self,
        caller: &Caller,
        scopes: &[String],
        grants: &[(String, Access)],
        all_but_exclusive: bool,
    ) -> Result<ScopeSet, ManageError> {
        let catalog = self.catalog.load();
        let mut names: Vec<String> = scopes.to_vec();
        if all_but_exclusive {
            let held = match caller {
                Caller::Admin => catalog.all_scopes(),
                Caller::Key { scopes, .. } => scopes.clone(),
            };
            names.extend(catalog.names(&held.difference(&catalog.exclusive_scopes())));
        }
        let (requested, _kind) = catalog
            .key_scopes(
                names.iter().map(String::as_str),
                grants
                    .iter()
                    .map(|(resource, access)| (resource.as_str(), *access)),
            )
            .map_err(scope_error)?;
        check_no_escalation(&catalog, caller, &requested)?;
        Ok(requested)
    }

    pub async fn create(
        &self,
        caller: &Caller,
        request: NewKey,
    ) -> Result<(KeyView, String), ManageError> {
        let result = self.create_key(caller, request).await;
        record_mutation("create", &result);
        if let Ok((view, _)) = &result {
            count_key(view.kind, 1.0);
        }
        result
    }

    async fn create_key(
        &self,
        caller: &Caller,
        request: NewKey,
    ) -> Result<(KeyView, String), ManageError> {
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
        let retry = match request.request_id.as_str() {
            "" => None,
            text => Some((
                RequestId::new(&account_id, text)
                    .map_err(|message| invalid("request_id", message))?,
                create_digest(&request),
            )),
        };
        if let Some((id, digest)) = &retry {
            if let Some(first) = self.first_result(id, digest).await? {
                return Ok(first);
            }
        }
        let name = validate_name(&request.name)?;
        let scopes = self.requested_scopes(
            caller,
            &request.scopes,
            &request.grants,
            request.all_my_scopes_except_billing,
        )?;
        let issued = self.format.issue();
        let now = now_unix_ms();
        let terms = &request.terms;
        let (not_before, expire) = self.validity(
            now,
            terms.not_before.unwrap_or(0),
            terms.expire_time.unwrap_or(0),
        )?;
        let record = KeyRecord {
            version: KeyRecord::VERSION,
            key_id: issued.key_id.as_bytes().to_vec(),
            account_id: account_id.clone(),
            name,
            scopes: self.catalog.load().names(&scopes),
            secret_hash: issued.secret_hash.to_vec(),
            create_time_unix_ms: now,
            update_time_unix_ms: now,
            created_by: caller.to_string(),
            expire_time_unix_ms: expire,
            not_before_unix_ms: not_before,
            allowed_cidrs: validate_cidrs(&terms.allowed_cidrs)?,
            metadata: validate_metadata(&terms.metadata)?,
            ..KeyRecord::default()
        };
        let view = self.view(&record)?;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let cap = self.max_keys_per_account;
        let filed = retry.as_ref().map(|(id, digest)| CreateRequest {
            lookup: *id.lookup(),
            record: CreateRequestRecord {
                key_id: record.key_id.clone(),
                sealed_token: id.seal(&issued.token),
                request_digest: digest.to_vec(),
                time_unix_ms: now,
            },
        });
        let created = self
            .store
            .mutate(caller_reads(caller, None), move |snapshot| {
                let caller = current_caller(snapshot, &catalog, &guard)?;
                require(&catalog, &caller, ManageAction::Create)?;
                check_no_escalation(&catalog, &caller, &scopes)?;
                let event = audit_event("create", &caller, None, Some(&record));
                let (record, request) = (record.clone(), filed.clone());
                let change = Change::Create {
                    record,
                    cap,
                    request,
                };
                Ok::<_, ManageError>((change, event, ()))
            })
            .await;
        match created {
            Ok(()) => {}
            // A concurrent retry with the same request id won: its result.
            Err(ManageError::Store(StoreError::DuplicateRequest)) => {
                if let Some((id, digest)) = &retry {
                    if let Some(first) = self.first_result(id, digest).await? {
                        return Ok(first);
                    }
                }
                return Err(ManageError::Store(StoreError::Conflict));
            }
            Err(ManageError::Store(StoreError::AccountFull { cap })) => {
                return Err(ManageError::AccountFull {
                    account: account_id.clone(),
                    cap,
                })
            }
            Err(other) => return Err(other),
        }
        tracing::info!(%caller, key_id = %issued.key_id, account_id = %account_id, scopes = ?view.scopes, "key created");
        Ok((view, issued.token))
    }

    /// One key. Blocking (reads sled): call it off the decision workers.
    /// The first result of a create made with this request id, if it was
    /// made within the retry window; a reuse for another request is refused.
    async fn first_result(
        &self,
        id: &RequestId,
        digest: &[u8; 32],
    ) -> Result<Option<(KeyView, String)>, ManageError> {
        let Some(first) = self.store.create_request(id.lookup()).await? else {
            return Ok(None);
        };
        if now_unix_ms() - first.time_unix_ms > crate::request_id::RETENTION_MS {
            return Ok(None);
        }
        if first.request_digest != digest {
            return Err(invalid(
                "request_id",
                "was used for a different CreateKey within the last 24 h: use a new request_id for a new key",
            ));
        }
        let token = id
            .open(&first.sealed_token)
            .ok_or_else(|| StoreError::Corrupt {
                key_id: "create request".into(),
                reason: "the sealed token does not open".into(),
            })?;
        let key_id = <[u8; 16]>::try_from(first.key_id.as_slice())
            .map(KeyId::from_bytes)
            .map_err(|_| StoreError::Corrupt {
                key_id: "create request".into(),
                reason: "key id is not 16 bytes".into(),
            })?;
        let record = self.store.get(&key_id)?.ok_or_else(|| {
            ManageError::NotFound(format!(
                "{key_id} (created by this request_id, deleted since)"
            ))
        })?;
        tracing::info!(%key_id, "CreateKey retried with its request id: the first result");
        Ok(Some((self.view(&record)?, token)))
    }

    /// One key. Blocking (reads sled): call it off the decision workers.
    pub fn get(&self, caller: &Caller, key_id: &str) -> Result<KeyView, ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let id = parse_key_id(key_id)?;
        let record = self
            .store
            .get(&id)?
            .filter(|record| visible_to(caller, record))
            .ok_or_else(|| ManageError::NotFound(key_id.to_owned()))?;
        self.view(&record)
    }

    /// A page of keys. Blocking (reads sled): call it off the decision workers.
    pub fn list(
        &self,
        caller: &Caller,
        query: ListQuery,
    ) -> Result<(Vec<KeyView>, String), ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let account = readable_account(caller, &query.account_id)?;
        let binding = page_binding(&[b"ListKeys", account.as_deref().unwrap_or("").as_bytes()]);
        let (page_size, after) = page(query.page_size, &query.page_token, &binding)?;
        let (records, next) = self
            .store
            .list(account.as_deref(), after.as_deref(), page_size)?;
        let views = records
            .iter()
            .map(|record| self.view(record))
            .collect::<Result<_, _>>()?;
        Ok((views, next_page_token(&binding, next)))
    }

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

    /// A new secret for the same key; the previous one keeps working for
    /// `overlap` (zero: it stops at once). At most one previous secret: a
    /// second rotation drops the one before.
    pub async fn rotate(
        &self,
        caller: &Caller,
        key_id: &str,
        overlap: std::time::Duration,
    ) -> Result<(KeyView, String), ManageError> {
        let result = self.rotate_key(caller, key_id, overlap).await;
        record_mutation("rotate", &result);
        result
    }

    async fn rotate_key(
        &self,
        caller: &Caller,
        key_id: &str,
        overlap: std::time::Duration,
    ) -> Result<(KeyView, String), ManageError> {
        self.require(caller, ManageAction::Update)?;
        self.admit_mutation(caller)?;
        let id = parse_key_id(key_id)?;
        if overlap > MAX_ROTATION_OVERLAP {
            return Err(invalid(
                "overlap",
                format!(
                    "is longer than {} days",
                    MAX_ROTATION_OVERLAP.as_secs() / 86_400
                ),
            ));
        }
        let issued = self.format.reissue(id);
        let secret_hash = issued.secret_hash;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_id_text = key_id.to_owned();
        let (_, rotated) = self
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
                let now = now_unix_ms();
                let mut rotated = current.clone();
                if overlap.is_zero() {
                    rotated.previous_secret_hash.clear();
                    rotated.previous_secret_expire_unix_ms = 0;
                } else {
                    rotated.previous_secret_hash = current.secret_hash.clone();
                    rotated.previous_secret_expire_unix_ms = now + overlap.as_millis() as i64;
                }
                rotated.secret_hash = secret_hash.to_vec();
                rotated.version = KeyRecord::VERSION;
                rotated.update_time_unix_ms = now;
                let event = audit_event("rotate", &caller, Some(current), Some(&rotated));
                Ok::<_, ManageError>((
                    Change::Update(rotated.clone()),
                    event,
                    (current.clone(), rotated),
                ))
            })
            .await
            .map_err(|error| not_found_as(error, key_id))?;
        tracing::info!(%caller, key_id = %id, overlap_secs = overlap.as_secs(), "key rotated");
        Ok((self.view(&rotated)?, issued.token))
    }

    /// Checks a validity window (unix ms; 0 = unset) against the server's
    /// maximum key lifetime.
    fn validity(&self, now: i64, not_before: i64, expire: i64) -> Result<(i64, i64), ManageError> {
        validity(now, not_before, expire, self.max_key_lifetime)
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

    /// Every stored record, encoded: admin only. Blocking.
    pub fn backup(&self, caller: &Caller) -> Result<Vec<sled::IVec>, ManageError> {
        if !matches!(caller, Caller::Admin) {
            return Err(ManageError::AdminOnly);
        }
        let records = self.store.export()?;
        tracing::info!(%caller, keys = records.len(), "backup exported");
        Ok(records)
    }

    pub fn scopes(&self, caller: &Caller) -> ScopesView {
        let (held, caller_is_admin) = match caller {
            Caller::Admin => (self.catalog.load().all_scopes(), true),
            Caller::Key { scopes, .. } => (scopes.clone(), false),
        };
        let resources = self
            .catalog
            .load()
            .resources()
            .map(|(id, resource)| ResourceView {
                resource: resource.name.to_string(),
                scopes: self.catalog.load().names(&resource.scopes),
                grantable: self.catalog.load().grantable(id),
                read_only: resource.is_read_only(),
                exclusive: resource.exclusive,
                caller_access: self.catalog.load().access_on(id, &held),
            })
            .collect();
        ScopesView {
            resources,
            caller_scopes: if caller_is_admin {
                Vec::new()
            } else {
                self.catalog.load().names(&held)
            },
            caller_is_admin,
        }
    }

    fn view(&self, record: &KeyRecord) -> Result<KeyView, ManageError> {
        let key_id = record.key_id().map(|id| id.to_string()).unwrap_or_default();
        let scopes = self
            .catalog
            .load()
            .resolve(record.scopes.iter().map(String::as_str))
            .map_err(|source| StoreError::CatalogMismatch {
                key_id: key_id.clone(),
                source,
            })?;
        let kind = self
            .catalog
            .load()
            .kind_of(&scopes)
            .unwrap_or(KeyKind::General);
        Ok(KeyView {
            key_id,
            account_id: record.account_id.clone(),
            name: record.name.clone(),
            scopes: self.catalog.load().names(&scopes),
            access: self
                .catalog
                .load()
                .access_levels(&scopes)
                .into_iter()
                .map(|(id, access)| (self.catalog.load().resource(id).name.to_string(), access))
                .collect(),
            kind,
            create_time_unix_ms: record.create_time_unix_ms,
            update_time_unix_ms: record.update_time_unix_ms,
            expire_time_unix_ms: record.expire_time_unix_ms,
            not_before_unix_ms: record.not_before_unix_ms,
            enabled: !record.disabled,
            previous_secret_expire_unix_ms: if record.previous_secret_hash.is_empty() {
                0
            } else {
                record.previous_secret_expire_unix_ms
            },
            secret_fingerprint: secret_fingerprint(&record.secret_hash),
            allowed_cidrs: record.allowed_cidrs.clone(),
            metadata: record.metadata.clone(),
            last_used_unix_ms: record
                .key_id()
                .and_then(|id| {
                    self.table()
                        .with(&id, |entry| entry.map(|e| e.used.minute()))
                })
                .map_or(0, |minute| i64::from(minute) * 60_000),
        })
    }
}

/// What a CreateKey asked for, as sent (a retry sends the same).
fn create_digest(request: &NewKey) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = vec![
        request.account_id.clone().into_bytes(),
        request.name.clone().into_bytes(),
        vec![u8::from(request.all_my_scopes_except_billing)],
        format!("{:?}", request.terms.expire_time).into_bytes(),
        format!("{:?}", request.terms.not_before).into_bytes(),
    ];
    parts.extend(
        request
            .scopes
            .iter()
            .map(|scope| scope.clone().into_bytes()),
    );
    parts.push(b"|grants".to_vec());
    parts.extend(
        request
            .grants
            .iter()
            .map(|(resource, access)| format!("{resource}={access:?}").into_bytes()),
    );
    parts.push(b"|cidrs".to_vec());
    parts.extend(
        request
            .terms
            .allowed_cidrs
            .iter()
            .map(|c| c.clone().into_bytes()),
    );
    parts.push(b"|metadata".to_vec());
    parts.extend(
        request
            .terms
            .metadata
            .iter()
            .map(|(key, value)| format!("{key}={value}").into_bytes()),
    );
    request_digest(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Moves the keys gauge of `kind` by `delta`.
fn count_key(kind: KeyKind, delta: f64) {
    metrics::gauge!(crate::telemetry::KEYS, "kind" => crate::telemetry::kind_label(kind))
        .increment(delta);
}

/// Counts a mutation by kind and outcome (ok, denied, invalid, not_found,
/// error): errors apart from refusals.
fn record_mutation<T>(kind: &'static str, result: &Result<T, ManageError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(
            ManageError::MissingCredentials
            | ManageError::BadCredentials
            | ManageError::NeedsScope(_)
            | ManageError::Escalation(_)
            | ManageError::TargetStronger { .. }
            | ManageError::OtherAccount
            | ManageError::AdminOnly
            | ManageError::Inactive(_)
            | ManageError::IpNotAllowed
            | ManageError::PreviousSecret
            | ManageError::AccountFull { .. },
        ) => "denied",
        Err(ManageError::RateLimited { .. }) => "rate_limited",
        Err(ManageError::InvalidArgument { .. } | ManageError::Scope { .. }) => "invalid",
        Err(ManageError::NotFound(_)) => "not_found",
        Err(ManageError::Store(_)) => "error",
    };
    metrics::counter!(crate::telemetry::MUTATIONS_TOTAL, "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// A key caller sees only its own account; other accounts' keys do not exist.
fn visible_to(caller: &Caller, record: &KeyRecord) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Key { account_id, .. } => record.account_id == **account_id,
    }
}

/// A page request: its size (default 50, at most 1000) and where to resume.
/// Page size and the store's cursor from a request. Page tokens are opaque
/// and bound to the listing that issued them (`binding`: the RPC and its
/// filter); one from another listing is refused, never followed.
fn page(
    size: i32,
    token: &str,
    binding: &[u8; 8],
) -> Result<(usize, Option<Vec<u8>>), ManageError> {
    let size = match size {
        size if size < 0 => return Err(invalid("page_size", "must not be negative")),
        0 => DEFAULT_PAGE_SIZE,
        size => (size as usize).min(MAX_PAGE_SIZE),
    };
    if token.is_empty() {
        return Ok((size, None));
    }
    let foreign = || {
        invalid(
            "page_token",
            "not a token of this listing (same call, same filter)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| foreign())?;
    match bytes.split_first_chunk::<9>() {
        Some((head, cursor)) if head[0] == PAGE_TOKEN_VERSION && head[1..] == binding[..] => {
            Ok((size, Some(cursor.to_vec())))
        }
        _ => Err(foreign()),
    }
}

const PAGE_TOKEN_VERSION: u8 = 1;

/// The next page's token: version, binding, the store's cursor.
fn next_page_token(binding: &[u8; 8], cursor: Option<Vec<u8>>) -> String {
    cursor.map_or_else(String::new, |cursor| {
        let mut bytes = Vec::with_capacity(9 + cursor.len());
        bytes.push(PAGE_TOKEN_VERSION);
        bytes.extend_from_slice(binding);
        bytes.extend_from_slice(&cursor);
        URL_SAFE_NO_PAD.encode(bytes)
    })
}

/// What a page token is bound to: the RPC and every part of its filter.
fn page_binding(parts: &[&[u8]]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut binding = [0; 8];
    binding.copy_from_slice(&digest[..8]);
    binding
}

/// The account a read may cover: for the admin the one asked for (`None`:
/// every account), for an API key its own (asking for another is refused).
fn readable_account(caller: &Caller, asked: &str) -> Result<Option<String>, ManageError> {
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

/// The audit event of a change: who, what, and the key before and after
/// (name, scopes, expiry, state; never a secret or hash).
fn audit_event(
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
    }
}

/// What a mutation reads: the calling key's own record (an API key caller),
/// and the target.
fn caller_reads(caller: &Caller, target: Option<KeyId>) -> Vec<KeyId> {
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
fn current_caller(
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
    let scopes = catalog
        .resolve(record.scopes.iter().map(String::as_str))
        .map_err(|source| StoreError::CatalogMismatch {
            key_id: key_id.to_string(),
            source,
        })?;
    Ok(Caller::Key {
        key_id: *key_id,
        account_id: account_id.clone(),
        scopes,
        secret_hash: *secret_hash,
    })
}

/// An API key caller needs the `api_keys` scope of the action.
fn require(catalog: &Catalog, caller: &Caller, action: ManageAction) -> Result<(), ManageError> {
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
fn check_no_escalation(
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

/// The target of an update, rotation or delete and the caller as they are
/// when the change applies, once the caller may do `action` to the target.
fn changeable<'a>(
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
    check_may_change(catalog, &caller, current, key_id)?;
    Ok((current, caller))
}

/// A lesser key cannot touch a stronger one.
fn check_may_change(
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
    let target_scopes = catalog
        .resolve(target.scopes.iter().map(String::as_str))
        .map_err(|source| StoreError::CatalogMismatch {
            key_id: key_id.to_owned(),
            source,
        })?;
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

fn not_found_as(error: ManageError, key_id: &str) -> ManageError {
    match error {
        ManageError::Store(StoreError::NotFound) => ManageError::NotFound(key_id.to_owned()),
        other => other,
    }
}

fn parse_key_id(text: &str) -> Result<KeyId, ManageError> {
    if text.is_empty() {
        return Err(invalid("key_id", "is required"));
    }
    KeyId::parse(text).ok_or_else(|| invalid("key_id", "is not a key id (22 base64url characters)"))
}

/// A record that arrives from outside the API (`restore`, `fleet import`)
/// is held to the API's rules: its shape and version, account id, name,
/// CIDRs and metadata. (Scopes and limits are checked against the catalog by
/// the store; the per-account cap by the caller, which sees every record.)
pub fn validate_imported(record: &KeyRecord) -> Result<(), ManageError> {
    if record.version == 0 || record.version > KeyRecord::VERSION {
        return Err(invalid(
            "version",
            format!(
                "record version {} is not one this build writes (1 to {})",
                record.version,
                KeyRecord::VERSION
            ),
        ));
    }
    if record.key_id.len() != 16 {
        return Err(invalid("key_id", "is not 16 bytes"));
    }
    if record.secret_hash.len() != 32 {
        return Err(invalid("secret_hash", "is not 32 bytes"));
    }
    validate_account_id(&record.account_id)?;
    validate_name(&record.name)?;
    validate_cidrs(&record.allowed_cidrs)?;
    validate_metadata(&record.metadata)?;
    Ok(())
}

/// Refuses a set of records that would put more than `cap` keys in one
/// account.
pub fn check_account_caps(records: &[KeyRecord], cap: usize) -> Result<(), ManageError> {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for record in records {
        let count = counts.entry(record.account_id.as_str()).or_default();
        *count += 1;
        if *count > cap {
            return Err(ManageError::AccountFull {
                account: record.account_id.clone(),
                cap,
            });
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<String, ManageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "is required"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// A validity window (unix ms; 0 = unset): the expiry in the future, the
/// start before it, and within the maximum lifetime if there is one.
fn validity(
    now: i64,
    not_before: i64,
    expire: i64,
    max_lifetime: Option<std::time::Duration>,
) -> Result<(i64, i64), ManageError> {
    if not_before < 0 || expire < 0 {
        return Err(invalid("expire_time", "must be after 1970"));
    }
    if expire != 0 && expire <= now {
        return Err(invalid("expire_time", "is in the past"));
    }
    if expire != 0 && not_before != 0 && not_before >= expire {
        return Err(invalid("not_before", "must be before expire_time"));
    }
    if let Some(max) = max_lifetime {
        let latest = now + max.as_millis() as i64;
        if expire == 0 {
            return Err(invalid(
                "expire_time",
                format!("is required: this server allows keys of at most {} s (--max-key-lifetime-secs)", max.as_secs()),
            ));
        }
        if expire > latest {
            return Err(invalid(
                "expire_time",
                format!(
                    "is more than {} s away (--max-key-lifetime-secs)",
                    max.as_secs()
                ),
            ));
        }
    }
    Ok((not_before, expire))
}

/// Parses and normalises CIDRs (a bare address is its /32 or /128).
fn validate_cidrs(cidrs: &[String]) -> Result<Vec<String>, ManageError> {
    if cidrs.len() > MAX_CIDRS {
        return Err(invalid(
            "allowed_cidrs",
            format!("holds more than {MAX_CIDRS} entries"),
        ));
    }
    cidrs
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc().to_string())
                .map_err(|_| {
                    invalid(
                        "allowed_cidrs",
                        format!("`{text}` is not a CIDR (e.g. 203.0.113.0/24, 2001:db8::/32) or an address"),
                    )
                })
        })
        .collect()
}

/// Bounded: entries, key shape and length, value length, total size.
fn validate_metadata(
    metadata: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ManageError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(
            "metadata",
            format!("holds more than {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    let mut total = 0;
    for (key, value) in metadata {
        let valid_key = (1..=MAX_METADATA_KEY_BYTES).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_key {
            return Err(invalid(
                "metadata",
                format!(
                    "key `{}` must be 1 to {MAX_METADATA_KEY_BYTES} of [A-Za-z0-9_.-]",
                    key.chars().take(80).collect::<String>()
                ),
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(invalid(
                "metadata",
                format!("the value of `{key}` is longer than {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(
                "metadata",
                format!("the value of `{key}` holds control characters"),
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("is larger than {MAX_METADATA_BYTES} bytes in all"),
        ));
    }
    Ok(metadata.clone())
}

fn validate_account_id(account_id: &str) -> Result<String, ManageError> {
    if account_id.is_empty() {
        return Err(invalid("account_id", "is required"));
    }
    if account_id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(invalid(
            "account_id",
            format!("is longer than {MAX_ACCOUNT_ID_BYTES} bytes"),
        ));
    }
    if account_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            "account_id",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(account_id.to_owned())
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}
