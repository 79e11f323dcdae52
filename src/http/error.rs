//! Domain errors → HTTP statuses and SendGrid's error body
//! (`{"errors": [{"field": ..., "message": ...}]}`), in one place. Messages
//! name the field or scope at fault and never contain a token.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::manage::{ManageError, Refusal};

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
        let status = match error.refusal() {
            Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
            // SendGrid answers a full account with 403 too.
            Refusal::Forbidden | Refusal::AccountFull => StatusCode::FORBIDDEN,
            Refusal::AlreadyExists => StatusCode::CONFLICT,
            Refusal::Invalid { field, message } => {
                // SendGrid's name for a key's id.
                let field = if field == "key_id" {
                    "api_key_id"
                } else {
                    field
                };
                return ApiError::bad_request(Some(field), message);
            }
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Throttled { retry_after } => {
                return ApiError {
                    retry_after: Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                    ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
                }
            }
            Refusal::Unavailable => return ApiError::unavailable(message),
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::Internal => {
                tracing::error!(%error, "store failure");
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
