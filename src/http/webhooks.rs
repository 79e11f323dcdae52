//! `/v3/webhooks`: an account's webhook endpoints and their dead letters
//! (scopegate's extension, in SendGrid's shapes: `on-behalf-of` for the
//! admin, SendGrid's error body). The secret is in the answer of a create
//! and of a rotation (`POST …/secret`), and nowhere else.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::input;
use super::roles::account;
use super::{json_response, RestApi};
use crate::manage::{Caller, DeadLetter, ManageError, NewWebhook, WebhookChange, WebhookView};
use crate::webhooks::event::timestamp;

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateInput {
    url: String,
    description: Option<String>,
    event_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeInput {
    url: Option<String>,
    description: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RedeliverInput {
    /// One dead letter; absent: all of them.
    event_id: Option<String>,
}

pub(super) fn webhook_json(view: &WebhookView) -> serde_json::Value {
    let endpoint = &view.endpoint;
    let mut shown = json!({
        "id": endpoint.endpoint_id,
        "account_id": endpoint.account_id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": !endpoint.disabled,
        "created_at": endpoint.create_time_unix_ms / 1000,
        "updated_at": endpoint.update_time_unix_ms / 1000,
    });
    if let Some(secret) = &view.secret {
        shown["secret"] = json!(secret);
    }
    shown
}

pub(super) fn dead_letter_json(dead: &DeadLetter) -> serde_json::Value {
    let delivery = &dead.delivery;
    json!({
        "event_id": delivery.event_id,
        "type": delivery.event_type,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "queued_at": timestamp(delivery.queued_unix_ms),
        "first_attempt_at": timestamp(delivery.first_attempt_unix_ms),
        "payload": serde_json::from_slice::<serde_json::Value>(&delivery.payload).unwrap_or_default(),
    })
}

fn endpoint_id(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::bad_request(Some("id"), rejection.body_text()))
}

pub(super) async fn create(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let account_id = match (&caller, account(&caller, &headers)?) {
        (Caller::Admin, None) => {
            return Err(ApiError::bad_request(
                Some("on-behalf-of"),
                "the admin token creates endpoints in the account this header names",
            ))
        }
        (_, account) => account.unwrap_or_default(),
    };
    let input: CreateInput = input::json(&headers, body).await?;
    let request = NewWebhook {
        account_id,
        url: input.url,
        description: input.description.unwrap_or_default(),
        event_types: input.event_types.unwrap_or_default(),
    };
    let manager = api.manager.clone();
    let view = api
        .detached(async move { manager.create_webhook(&caller, request).await })
        .await?;
    Ok((StatusCode::CREATED, json_response(&webhook_json(&view))).into_response())
}

pub(super) async fn list(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response> {
    let account = account(&caller, &headers)?.unwrap_or_default();
    let manager = api.manager.clone();
    let views = api
        .detached(async move { manager.list_webhooks(&caller, &account).await })
        .await?;
    let result: Vec<_> = views.iter().map(webhook_json).collect();
    Ok(json_response(&json!({ "result": result })).into_response())
}

pub(super) async fn get(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let view = api
        .visible_webhook(&caller, &headers, endpoint_id(path)?)
        .await?;
    Ok(json_response(&webhook_json(&view)).into_response())
}

pub(super) async fn patch(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    let id = endpoint_id(path)?;
    let input: ChangeInput = input::json(&headers, body).await?;
    api.visible_webhook(&caller, &headers, id.clone()).await?;
    let change = WebhookChange {
        endpoint_id: id,
        url: input.url,
        description: input.description,
        event_types: input.event_types,
        disabled: input.enabled.map(|enabled| !enabled),
    };
    let manager = api.manager.clone();
    let view = api
        .detached(async move { manager.update_webhook(&caller, change).await })
        .await?;
    Ok(json_response(&webhook_json(&view)).into_response())
}

pub(super) async fn delete(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = endpoint_id(path)?;
    api.visible_webhook(&caller, &headers, id.clone()).await?;
    let manager = api.manager.clone();
    api.detached(async move { manager.delete_webhook(&caller, &id).await })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A new secret (shown once); the old one signs beside it for a day.
pub(super) async fn rotate_secret(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = endpoint_id(path)?;
    api.visible_webhook(&caller, &headers, id.clone()).await?;
    let manager = api.manager.clone();
    let view = api
        .detached(async move { manager.rotate_webhook_secret(&caller, &id).await })
        .await?;
    Ok(json_response(&webhook_json(&view)).into_response())
}

pub(super) async fn dead_letters(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = endpoint_id(path)?;
    api.visible_webhook(&caller, &headers, id.clone()).await?;
    let manager = api.manager.clone();
    let dead = api
        .detached(async move { manager.dead_letters(&caller, &id).await })
        .await?;
    let result: Vec<_> = dead.iter().map(dead_letter_json).collect();
    Ok(json_response(&json!({ "result": result })).into_response())
}

pub(super) async fn redeliver(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    let id = endpoint_id(path)?;
    let input: RedeliverInput = input::optional_json(&headers, body).await?;
    api.visible_webhook(&caller, &headers, id.clone()).await?;
    let manager = api.manager.clone();
    let event_id = input.event_id.unwrap_or_default();
    let moved = api
        .detached(async move { manager.redeliver(&caller, &id, &event_id).await })
        .await?;
    Ok(json_response(&json!({ "redelivered": moved })).into_response())
}

impl RestApi {
    /// An endpoint as `caller` may see it; the admin acting on behalf of an
    /// account sees only that account's (404 for others).
    async fn visible_webhook(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        id: String,
    ) -> Result<WebhookView> {
        let obo = account(caller, headers)?;
        let (manager, reader, text) = (self.manager.clone(), caller.clone(), id.clone());
        let view = self
            .detached(async move { manager.get_webhook(&reader, &text).await })
            .await?;
        match obo {
            Some(account) if account != view.endpoint.account_id => {
                Err(ApiError::from(ManageError::WebhookNotFound(id)))
            }
            _ => Ok(view),
        }
    }
}
