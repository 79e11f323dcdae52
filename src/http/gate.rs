//! The gate (`crate::gate`) on the REST and console edge: every route but
//! the static documents is management. Readiness first; on the REST API the
//! caller and the `api_keys` scope its route needs (so a credential that may
//! not do this never gets to send a body); then the body read whole under
//! the deadline; then a permit of the management budget gRPC shares: a
//! client that stalls its body holds no permit, and times out. Refusals come
//! in each door's own shape (SendGrid's JSON, or a page).

use std::sync::Arc;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{console, RestApi};
use crate::gate::{Door, Refused};
use crate::scope::ManageAction;

/// The door of an HTTP route: documents that hold no key are open.
pub fn door(method: &Method, route: &str) -> Door {
    let document = route == "/openapi.json"
        || route == "/console/static/{file}"
        || (method == Method::GET && (route == "/console" || route == "/console/sign-in"));
    if document {
        Door::Open
    } else {
        Door::Manage
    }
}

/// The `api_keys` scope a REST route needs (`None`: any key, as
/// `GET /v3/scopes`, or a method the route does not serve).
fn action(method: &Method, route: &str) -> Option<ManageAction> {
    match (route, method.as_str()) {
        (
            "/v3/api_keys"
            | "/v3/api_keys/{id}"
            | "/v3/api_keys/{id}/stats"
            | "/v3/stats"
            | "/v3/roles"
            | "/v3/roles/{id}",
            "GET",
        ) => Some(ManageAction::Read),
        ("/v3/api_keys" | "/v3/roles", "POST") => Some(ManageAction::Create),
        ("/v3/api_keys/{id}" | "/v3/roles/{id}", "PUT" | "PATCH") => Some(ManageAction::Update),
        ("/v3/api_keys/{id}" | "/v3/roles/{id}", "DELETE") => Some(ManageAction::Delete),
        (
            "/v3/api_keys/{id}/rotate"
            | "/v3/api_keys/{id}/enable"
            | "/v3/api_keys/{id}/disable"
            | "/v3/api_keys/{id}/credits",
            "POST",
        ) => Some(ManageAction::Update),
        _ => None,
    }
}

pub(super) async fn admit(
    State(api): State<Arc<RestApi>>,
    request: Request,
    next: Next,
) -> Response {
    // Unmatched paths have no route: the fallback answers 404 or 405.
    let Some(route) = request.extensions().get::<MatchedPath>().cloned() else {
        return next.run(request).await;
    };
    let route = route.as_str();
    let door = door(request.method(), route);
    if door == Door::Open {
        return next.run(request).await;
    }
    let refuse = |status: StatusCode, message: String| -> Response {
        if route.starts_with("/console") {
            console::refusal(status, &message)
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            ApiError::unavailable(message).into_response()
        } else {
            ApiError::new(status, message).into_response()
        }
    };
    let unavailable =
        |refused: Refused| refuse(StatusCode::SERVICE_UNAVAILABLE, refused.to_string());
    if let Err(refused) = api.gate.ready(door) {
        return unavailable(refused);
    }
    let (mut parts, body) = request.into_parts();
    // The console's sessions and a leak report's signature are checked by
    // their handlers; every other REST route names its caller here.
    let leak_report = route == "/secret-scanning/github";
    if !route.starts_with("/console") && !leak_report {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let caller = match api.caller(&parts.headers, peer) {
            Ok(caller) => caller,
            Err(error) => return error.into_response(),
        };
        if let Some(action) = action(&parts.method, route) {
            if let Err(error) = api.manager.may(&caller, action) {
                return ApiError::from(error).into_response();
            }
        }
        parts.extensions.insert(caller);
    }
    let max = if leak_report {
        crate::secret_scanning::MAX_REPORT_BYTES
    } else {
        super::input::MAX_BODY_BYTES
    };
    let bytes = match super::input::body_up_to(body, api.timeout, max).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return refuse(status, message),
    };
    let _permit = match api.gate.permit(door) {
        Ok(permit) => permit,
        Err(refused) => return unavailable(refused),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
