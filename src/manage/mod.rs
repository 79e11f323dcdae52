//! Key management use-cases: who is calling, what they may do, and the rules
//! (known scopes, billing alone, no escalation, account isolation, caps).
//! Transport-free: every edge (gRPC, REST, the console) converts to and
//! from these types and calls [`Manager`], and nothing else.
//!
//! Where things live: `rules` (who may change what, pure), `validate` (field
//! rules), `create`, `change` (update, delete), `rotate`, `audit`, `paging`
//! (page tokens); this file holds [`Manager`] itself, authentication and the
//! reads.

use std::sync::Arc;

use crate::authz::Decision;
use crate::key::KeyTable;
use crate::scope::{Access, KeyKind, ManageAction, ScopeSet, SharedCatalog};
use crate::store::{KeyRecord, Store, StoreError};
use crate::throttle::Throttle;
use crate::token::{admin_token_hash, constant_time_eq, secret_fingerprint, TokenFormat};
use crate::usage::Usage;

mod audit;
mod change;
mod create;
mod credits;
mod error;
mod leak;
pub mod paging;
mod roles;
mod rotate;
mod rules;
mod types;
mod usage;
mod validate;
mod webhooks;

use error::scope_error;
pub use error::{ManageError, Refusal};
pub use leak::{LeakAction, LeakReport};
use paging::{next_page_token, page, page_binding};
use rules::{check_no_escalation, readable_account, require, visible_to};
pub use types::{
    AuditQuery, Caller, KeyChange, KeyRole, KeyTerms, KeyView, ListQuery, NewKey, NewRole,
    ResourceView, RoleChange, RoleView, ScopesView,
};
pub use usage::{ExportQuery, UsageQuery, MAX_TOP_KEYS};
pub use validate::{
    check_account_caps, validate_imported, validate_imported_role, validate_imported_scopes,
};
use validate::{parse_key_id, validity};
pub use webhooks::{DeadLetter, NewWebhook, WebhookChange, WebhookView};

pub const DEFAULT_MAX_KEYS_PER_ACCOUNT: usize = 100;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

pub struct Manager {
    store: Store,
    catalog: SharedCatalog,
    format: TokenFormat,
    admin_token_hash: [u8; 32],
    max_keys_per_account: usize,
    /// Key changes by API keys, per account; `None`: unlimited.
    mutation_rate: Option<Throttle>,
    /// Management reads by API keys, per account; `None`: unlimited.
    read_rate: Option<Throttle>,
    /// Every key must expire within this of now; `None`: no limit.
    max_key_lifetime: Option<std::time::Duration>,
    /// Failed credentials per client address, on every management door.
    failed_credentials: Throttle,
    /// Decisions counted per key (`None`: `--usage off`).
    usage: Option<Arc<Usage>>,
    /// Credit balances (`None`: a manager without them, as in tests of
    /// the store alone; credits are then shown as last set).
    balances: Option<Arc<crate::balances::Balances>>,
    /// Webhook endpoints and deliveries (`None`: `--webhooks off`).
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

/// Failed credentials one address may present per second (bursts of as
/// many) before its management requests are refused for a while.
pub const FAILED_CREDENTIALS_PER_SEC: u32 = 5;

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
            failed_credentials: Throttle::new(FAILED_CREDENTIALS_PER_SEC),
            usage: None,
            balances: None,
            webhooks: None,
        }
    }

    /// Spends and changes credits through `balances`.
    pub fn with_balances(mut self, balances: Option<Arc<crate::balances::Balances>>) -> Manager {
        self.balances = balances;
        self
    }

    /// Manages webhook endpoints of `webhooks`.
    pub fn with_webhooks(mut self, webhooks: Option<Arc<crate::webhooks::Webhooks>>) -> Manager {
        self.webhooks = webhooks;
        self
    }

    /// Reads usage from `usage` (none: usage reads answer that it is off).
    pub fn with_usage(mut self, usage: Option<Arc<Usage>>) -> Manager {
        self.usage = usage;
        self
    }

    /// Every key must have an expiry no further than `lifetime` from now.
    pub fn with_max_key_lifetime(mut self, lifetime: Option<std::time::Duration>) -> Manager {
        self.max_key_lifetime = lifetime;
        self
    }

    /// Limits key changes by the API keys of one account to `per_second`
    /// (bursts of as many). The admin is not limited.
    pub fn with_mutation_rate(mut self, per_second: u32) -> Manager {
        self.mutation_rate = Some(Throttle::new(per_second));
        self
    }

    /// Limits management reads (GetKey, ListKeys, ListAuditEvents) by the
    /// API keys of one account to `per_second` (bursts of as many).
    pub fn with_read_rate(mut self, per_second: u32) -> Manager {
        self.read_rate = Some(Throttle::new(per_second));
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
fn admit(rate: Option<&Throttle>, caller: &Caller, what: &'static str) -> Result<(), ManageError> {
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
    ///
    /// Failed credentials are throttled per client address: past
    /// [`FAILED_CREDENTIALS_PER_SEC`], that address is refused before its
    /// credential is looked at (guessing is slowed on every door), while
    /// the same credential from any other address still works (nobody can
    /// lock a key out).
    pub fn authenticate_from(
        &self,
        bearer: Option<&str>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Caller, ManageError> {
        let source: Option<Arc<str>> = client_ip.map(|ip| ip.to_canonical().to_string().into());
        if let Some(source) = &source {
            self.failed_credentials
                .peek(source)
                .map_err(|retry_after| ManageError::CredentialsThrottled { retry_after })?;
        }
        let result = self.identify(bearer, client_ip);
        if let (Err(ManageError::BadCredentials), Some(source)) = (&result, &source) {
            let _ = self.failed_credentials.take(source);
        }
        result
    }

    /// A signed request (a leak report) from this address is refused while
    /// its failed signatures are throttled, as failed credentials are.
    pub fn signature_throttled(&self, client_ip: std::net::IpAddr) -> Result<(), ManageError> {
        let source: Arc<str> = client_ip.to_canonical().to_string().into();
        self.failed_credentials
            .peek(&source)
            .map_err(|retry_after| ManageError::CredentialsThrottled { retry_after })
    }

    /// Counts a failed signature against its address.
    pub fn signature_failed(&self, client_ip: std::net::IpAddr) {
        let source: Arc<str> = client_ip.to_canonical().to_string().into();
        let _ = self.failed_credentials.take(&source);
    }

    fn identify(
        &self,
        bearer: Option<&str>,
        client_ip: Option<std::net::IpAddr>,
    ) -> Result<Caller, ManageError> {
        let Some(presented) = bearer.filter(|token| !token.is_empty()) else {
            return Err(ManageError::MissingCredentials);
        };
        if constant_time_eq(&admin_token_hash(presented), &self.admin_token_hash) {
            return Ok(Caller::Admin);
        }
        let parsed = self
            .format
            .parse(presented)
            .map_err(|_| ManageError::BadCredentials)?;
        let decision = crate::authz::decide(
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

    /// A caller identified earlier (a console session), held again to what
    /// `authenticate_from` holds it to, as the key is now: the same current
    /// secret (by its hash: the session never keeps the secret), enabled,
    /// within its window, from an allowed address. Fresh scopes.
    pub fn reauthenticate(
        &self,
        caller: &Caller,
        client_ip: Option<std::net::IpAddr>,
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
        let entry = self
            .table()
            .get(key_id)
            .filter(|entry| entry.account_id == *account_id)
            .ok_or(ManageError::BadCredentials)?;
        if !constant_time_eq(&entry.secret_hash, secret_hash) {
            return Err(ManageError::BadCredentials);
        }
        if let Some(extras) = &entry.extras {
            let now = extras.is_timed().then(crate::authz::now_unix_ms);
            match crate::authz::terms_deny(extras, now, client_ip) {
                None => {}
                Some(Decision::IpNotAllowed) => return Err(ManageError::IpNotAllowed),
                Some(decision) => {
                    return Err(ManageError::Inactive(
                        decision.message(&self.catalog.load()),
                    ))
                }
            }
        }
        Ok(Caller::Key {
            key_id: *key_id,
            account_id: entry.account_id.clone(),
            scopes: entry.scopes(),
            secret_hash: entry.secret_hash,
        })
    }

    /// `caller` holds the `api_keys` scope of `action` (the admin holds all):
    /// what an edge may check before it reads a request's body.
    pub fn may(&self, caller: &Caller, action: ManageAction) -> Result<(), ManageError> {
        self.require(caller, action)
    }

    /// Whether `caller` holds any `api_keys` scope (the admin does).
    pub fn may_manage(&self, caller: &Caller) -> bool {
        let catalog = self.catalog.load();
        [
            ManageAction::Create,
            ManageAction::Read,
            ManageAction::Update,
            ManageAction::Delete,
        ]
        .into_iter()
        .any(|action| require(&catalog, caller, action).is_ok())
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
        roles_too: bool,
    ) -> Result<ScopeSet, ManageError> {
        let catalog = self.catalog.load();
        if roles_too && scopes.is_empty() && grants.is_empty() && !all_but_exclusive {
            // Roles alone: the effective set is checked when they are read.
            return Ok(ScopeSet::EMPTY);
        }
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

    /// Checks a validity window (unix ms; 0 = unset) against the server's
    /// maximum key lifetime.
    fn validity(&self, now: i64, not_before: i64, expire: i64) -> Result<(i64, i64), ManageError> {
        validity(now, not_before, expire, self.max_key_lifetime)
    }

    /// Every stored record, encoded: admin only. Blocking.
    pub fn backup(&self, caller: &Caller) -> Result<crate::store::Exported, ManageError> {
        if !matches!(caller, Caller::Admin) {
            return Err(ManageError::AdminOnly);
        }
        let exported = self.store.export()?;
        tracing::info!(%caller, keys = exported.keys.len(), roles = exported.roles.len(), "backup exported");
        Ok(exported)
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
            templates: crate::role::TEMPLATES
                .iter()
                .map(|template| {
                    let catalog = self.catalog.load();
                    let scopes = catalog.names(&(template.scopes)(&catalog));
                    (template.name, template.description, scopes)
                })
                .collect(),
        }
    }

    fn view(&self, record: &KeyRecord) -> Result<KeyView, ManageError> {
        let key_id = record.key_id().map(|id| id.to_string()).unwrap_or_default();
        let own = self
            .catalog
            .load()
            .resolve(record.scopes.iter().map(String::as_str))
            .map_err(|source| StoreError::CatalogMismatch {
                key_id: key_id.clone(),
                source,
            })?;
        let (roles, scopes) = self.key_roles(record, &own)?;
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
            rate_limits: record.rate_limits(),
            credits: record
                .credits
                .as_ref()
                .and_then(|credits| credits.key_credits().ok())
                .map(|credits| credits.terms),
            metadata: record.metadata.clone(),
            own_scopes: self.catalog.load().names(&own),
            exposed_time_unix_ms: record.exposed_time_unix_ms,
            exposed_url: record.exposed_url.clone(),
            own_access: self
                .catalog
                .load()
                .access_levels(&own)
                .into_iter()
                .map(|(id, access)| (self.catalog.load().resource(id).name.to_string(), access))
                .collect(),
            roles,
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

/// Moves the keys gauge of `kind` by `delta`.
fn count_key(kind: KeyKind, delta: f64) {
    metrics::gauge!(crate::telemetry::KEYS, "kind" => crate::telemetry::kind_label(kind))
        .increment(delta);
}

/// Counts a mutation by kind and outcome (ok, denied, invalid, not_found,
/// error): errors apart from refusals.
fn record_mutation<T>(kind: &'static str, result: &Result<T, ManageError>) {
    let outcome = match result.as_ref().map_err(ManageError::refusal) {
        Ok(_) => "ok",
        Err(Refusal::Unauthenticated | Refusal::Forbidden | Refusal::AccountFull) => "denied",
        Err(Refusal::Throttled { .. }) => "rate_limited",
        Err(Refusal::Invalid { .. } | Refusal::AlreadyExists) => "invalid",
        Err(Refusal::NotFound) => "not_found",
        Err(Refusal::Unavailable | Refusal::Conflict | Refusal::Internal) => "error",
    };
    metrics::counter!(crate::telemetry::MUTATIONS_TOTAL, "kind" => kind, "outcome" => outcome)
        .increment(1);
}
