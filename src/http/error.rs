//! Domain errors → HTTP statuses and SendGrid's error body
//! (`{"errors": [{"field": ..., "message": ...}]}`), in one place. Messages
//! name the field or scope at fault and never contain a token.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::manage::ManageError;
use crate::store::StoreError;

/// A refused request, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: field.map(str::to_owned),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// Unavailable now; worth a retry in a second.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl From<ManageError> for ApiError {
    fn from(error: ManageError) -> ApiError {
        let message = error.to_string();
        let status = match &error {
            ManageError::MissingCredentials
            | ManageError::BadCredentials
            | ManageError::Inactive(_) => StatusCode::UNAUTHORIZED,
            ManageError::IpNotAllowed
            | ManageError::PreviousSecret
            | ManageError::NeedsScope(_)
            | ManageError::Escalation(_)
            | ManageError::RateLimitEscalation(_)
            | ManageError::TermsEscalation(_)
            | ManageError::TargetStronger { .. }
            | ManageError::OtherAccount
            | ManageError::AdminOnly
            | ManageError::AccountFull { .. } => StatusCode::FORBIDDEN,
            ManageError::InvalidArgument { field, message } => {
                // SendGrid's name for a key's id.
                let field = if *field == "key_id" {
                    "api_key_id"
                } else {
                    field
                };
                return ApiError::bad_request(Some(field), message.clone());
            }
            ManageError::Scope { field, source } => {
                return ApiError::bad_request(Some(field), source.to_string())
            }
            ManageError::NotFound(_) => StatusCode::NOT_FOUND,
            ManageError::RateLimited { retry_after, .. }
            | ManageError::CredentialsThrottled { retry_after } => {
                return ApiError {
                    retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                    ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
                }
            }
            ManageError::Store(
                StoreError::Closed | StoreError::Failed { .. } | StoreError::EtcdUnavailable(_),
            ) => return ApiError::unavailable(message),
            ManageError::Store(StoreError::Conflict) => StatusCode::CONFLICT,
            ManageError::Store(store_error) => {
                tracing::error!(error = %store_error, "store failure");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [{"field": self.field, "message": self.message}]});
        let mut response = (self.status, super::json_body(&body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scopegate\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
