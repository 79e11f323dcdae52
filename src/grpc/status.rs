//! Domain errors → `tonic::Status`, in one place. Messages name the field or
//! scope at fault and never contain a token.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::manage::{ManageError, Refusal};
use crate::scope::ScopeError;

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
        match error.refusal() {
            Refusal::Unauthenticated => Status::unauthenticated(message),
            Refusal::Forbidden => Status::permission_denied(message),
            Refusal::Invalid { field, message } => bad_request(field, message),
            Refusal::NotFound => Status::not_found(message),
            Refusal::AccountFull => Status::resource_exhausted(message),
            Refusal::AlreadyExists => Status::already_exists(message),
            Refusal::Throttled { retry_after } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            Refusal::Unavailable => Status::unavailable(message),
            Refusal::Conflict => Status::aborted(message),
            Refusal::Internal => {
                tracing::error!(%error, "store failure");
                Status::internal(message)
            }
        }
    }
}
