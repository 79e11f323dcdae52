//! Domain errors → `tonic::Status`, in one place. Messages name the field or
//! scope at fault and never contain a token.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::manage::ManageError;
use crate::scope::ScopeError;
use crate::store::StoreError;

pub(super) fn bad_request(field: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        ErrorDetails::with_bad_request_violation(field, message),
    )
}

pub(super) fn scope_status(field: &str, error: &ScopeError) -> Status {
    bad_request(field, error.to_string())
}

impl From<ManageError> for Status {
    fn from(error: ManageError) -> Status {
        let message = error.to_string();
        match error {
            ManageError::MissingCredentials
            | ManageError::BadCredentials
            | ManageError::Inactive(_) => Status::unauthenticated(message),
            ManageError::IpNotAllowed | ManageError::PreviousSecret => {
                Status::permission_denied(message)
            }
            ManageError::NeedsScope(_)
            | ManageError::Escalation(_)
            | ManageError::RateLimitEscalation(_)
            | ManageError::TermsEscalation(_)
            | ManageError::TargetStronger { .. }
            | ManageError::OtherAccount
            | ManageError::AdminOnly => Status::permission_denied(message),
            ManageError::InvalidArgument { field, message } => bad_request(field, message),
            ManageError::Scope { field, source } => scope_status(field, &source),
            ManageError::NotFound(_) => Status::not_found(message),
            ManageError::AccountFull { .. } => Status::resource_exhausted(message),
            ManageError::RateLimited { retry_after, .. }
            | ManageError::CredentialsThrottled { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ManageError::Store(
                StoreError::Closed | StoreError::Failed { .. } | StoreError::EtcdUnavailable(_),
            ) => Status::unavailable(message),
            ManageError::Store(StoreError::Conflict) => Status::aborted(message),
            ManageError::Store(store_error) => {
                tracing::error!(error = %store_error, "store failure");
                Status::internal(message)
            }
        }
    }
}
