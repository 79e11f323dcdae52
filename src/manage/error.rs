//! What a management call can fail with: one enum, mapped to transport
//! statuses by each edge (grpc/status.rs).

use crate::scope::ScopeError;
use crate::stats::RangeError;
use crate::store::StoreError;
use crate::usage::UsageError;

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
    /// No escalation of rate limits: the key would get a higher limit, or
    /// none, where its limited creator has one.
    #[error("{0}")]
    RateLimitEscalation(String),
    /// No escalation of credits: unlimited, more than the caller has left,
    /// a larger refill, a top-up, or a key that spends more freely.
    #[error("{0}")]
    CreditsEscalation(String),
    /// No escalation of lifecycle terms: a key more open (addresses) or
    /// longer-lived than the API key that makes or changes it.
    #[error("{0}")]
    TermsEscalation(String),
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
    #[error("webhook {0} not found")]
    WebhookNotFound(String),
    #[error("{0}")]
    WebhookLimit(String),
    #[error("webhooks are off on this sidecar (--webhooks off)")]
    WebhooksOff,
    #[error("role {0} not found")]
    RoleNotFound(String),
    #[error("this account already has a role named `{0}`")]
    RoleNameTaken(String),
    /// A role change or attachment that would leave a key mixing billing
    /// and other scopes (billing keys stay separate), naming the keys.
    #[error("billing scopes need a separate key: this would mix them with other scopes on {}: {reason}", .keys.join(", "))]
    BillingMixed { keys: Vec<String>, reason: String },
    /// A role is on its maximum of keys, or an account holds its maximum of roles.
    #[error("{0}")]
    RoleLimit(String),
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
    /// Too many failed credentials from one address (every management
    /// door); a right credential from elsewhere is never refused for it.
    #[error("too many failed credentials from this address: retry in {} ms", retry_after.as_millis().max(1))]
    CredentialsThrottled { retry_after: std::time::Duration },
    #[error("store error: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Range(#[from] RangeError),
    #[error("{0}")]
    Usage(#[from] UsageError),
}

/// What kind of refusal an error is: classified once, here; each edge maps
/// a class to its own status (gRPC code, HTTP status) in one small table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// No credential, a wrong one, or one whose key is not active now.
    Unauthenticated,
    /// The caller may not do this (scope, escalation, another account, its
    /// address, a rotated-out secret).
    Forbidden,
    /// A field of the request is wrong.
    Invalid {
        field: &'a str,
        message: std::borrow::Cow<'a, str>,
    },
    NotFound,
    /// The account holds its maximum of keys (or roles; a role its maximum of keys).
    AccountFull,
    /// A name already taken.
    AlreadyExists,
    /// Too many requests; retry after this.
    Throttled {
        retry_after: std::time::Duration,
    },
    /// The store cannot answer now (closed, failed, etcd away): retry.
    Unavailable,
    /// Lost to concurrent changes too often: retry.
    Conflict,
    /// A store failure that is not the caller's to fix (logged by the edge).
    Internal,
}

impl ManageError {
    /// The class of this refusal, for the edges' status tables.
    pub fn refusal(&self) -> Refusal<'_> {
        match self {
            ManageError::MissingCredentials
            | ManageError::BadCredentials
            | ManageError::Inactive(_) => Refusal::Unauthenticated,
            ManageError::IpNotAllowed
            | ManageError::PreviousSecret
            | ManageError::NeedsScope(_)
            | ManageError::Escalation(_)
            | ManageError::RateLimitEscalation(_)
            | ManageError::TermsEscalation(_)
            | ManageError::CreditsEscalation(_)
            | ManageError::TargetStronger { .. }
            | ManageError::OtherAccount
            | ManageError::AdminOnly => Refusal::Forbidden,
            ManageError::InvalidArgument { field, message } => Refusal::Invalid {
                field,
                message: message.into(),
            },
            ManageError::Scope { field, source } => Refusal::Invalid {
                field,
                message: source.to_string().into(),
            },
            ManageError::NotFound(_)
            | ManageError::RoleNotFound(_)
            | ManageError::WebhookNotFound(_) => Refusal::NotFound,
            ManageError::WebhooksOff => Refusal::Unavailable,
            ManageError::AccountFull { .. }
            | ManageError::RoleLimit(_)
            | ManageError::WebhookLimit(_) => Refusal::AccountFull,
            ManageError::RoleNameTaken(_) => Refusal::AlreadyExists,
            ManageError::BillingMixed { .. } => Refusal::Invalid {
                field: "scopes",
                message: self.to_string().into(),
            },
            ManageError::RateLimited { retry_after, .. }
            | ManageError::CredentialsThrottled { retry_after } => Refusal::Throttled {
                retry_after: *retry_after,
            },
            ManageError::Store(
                StoreError::Closed | StoreError::Failed { .. } | StoreError::EtcdUnavailable(_),
            ) => Refusal::Unavailable,
            ManageError::Store(StoreError::Conflict) => Refusal::Conflict,
            ManageError::Range(range) => Refusal::Invalid {
                field: range.field(),
                message: range.to_string().into(),
            },
            ManageError::Usage(UsageError::Range(range)) => Refusal::Invalid {
                field: range.field(),
                message: range.to_string().into(),
            },
            ManageError::Usage(_) => Refusal::Unavailable,
            ManageError::Store(_) => Refusal::Internal,
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::BadCursor => invalid("page_token", error.to_string()),
            StoreError::RoleNotFound => ManageError::RoleNotFound("named".into()),
            StoreError::RoleNameTaken { name } => ManageError::RoleNameTaken(name),
            StoreError::RoleFull { .. }
            | StoreError::RolesFull { .. }
            | StoreError::TxnTooLarge { .. } => ManageError::RoleLimit(error.to_string()),
            error => ManageError::Store(error),
        }
    }
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> ManageError {
    ManageError::InvalidArgument {
        field,
        message: message.into(),
    }
}

pub(super) fn scope_error(source: ScopeError) -> ManageError {
    let field = match source {
        ScopeError::UnknownResource(_)
        | ScopeError::ReadOnly { .. }
        | ScopeError::WriteOnly { .. }
        | ScopeError::UngrantableAccess(_) => "grants",
        _ => "scopes",
    };
    ManageError::Scope { field, source }
}
