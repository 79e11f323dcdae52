//! `/v3/roles`: scopegate's roles next to SendGrid's API keys (its own
//! extension, in the same shapes: `on-behalf-of` for the admin, SendGrid's
//! error body). Each handler reads its input, calls [`Manager`], writes JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::api_keys::refuse_on_behalf_of;
use super::error::ApiError;
use super::input::{self, on_behalf_of};
use super::{json_response, RestApi};
use crate::manage::{Caller, ManageError, NewRole, RoleChange, RoleView};

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateInput {
    name: String,
    description: Option<String>,
    scopes: Option<Vec<String>>,
    /// A built-in template instead of scopes.
    template: Option<String>,
}

/// PUT: the whole role (name and scopes); PATCH: any of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeInput {
    name: Option<String>,
    description: Option<String>,
    scopes: Option<Vec<String>>,
}

fn role_json(view: &RoleView) -> serde_json::Value {
    json!({
        "role_id": view.role_id,
        "name": view.name,
        "description": view.description,
        "scopes": view.scopes,
        "key_count": view.key_count,
        "created_at": view.create_time_unix_ms / 1000,
        "updated_at": view.update_time_unix_ms / 1000,
    })
}

fn role_id(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::bad_request(Some("role_id"), rejection.body_text()))
}

/// The account the admin acts for (`on-behalf-of`), or "" for a key.
pub(super) fn account(caller: &Caller, headers: &HeaderMap) -> Result<Option<String>> {
    match caller {
        Caller::Admin => on_behalf_of(headers),
        Caller::Key { .. } => refuse_on_behalf_of(on_behalf_of(headers)?).map(|_| None),
    }
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
                "the admin token creates roles in the account this header names",
            ))
        }
        (_, account) => account.unwrap_or_default(),
    };
    let input: CreateInput = input::json(&headers, body).await?;
    if input.scopes.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            Some("scopes"),
            "is empty: a role grants at least one scope",
        ));
    }
    let new_role = NewRole {
        account_id,
        name: input.name,
        description: input.description.unwrap_or_default(),
        scopes: input.scopes.unwrap_or_default(),
        grants: Vec::new(),
        template: input.template.unwrap_or_default(),
    };
    let manager = api.manager.clone();
    let view = api
        .detached(async move { manager.create_role(&caller, new_role).await })
        .await?;
    Ok((StatusCode::CREATED, json_response(&role_json(&view))).into_response())
}

pub(super) async fn list(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response> {
    let account = account(&caller, &headers)?.unwrap_or_default();
    let manager = api.manager.clone();
    let views = api
        .off_workers(move || manager.list_roles(&caller, &account))
        .await?;
    let result: Vec<_> = views.iter().map(role_json).collect();
    Ok(json_response(&json!({ "result": result })).into_response())
}

pub(super) async fn get(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let view = api.visible_role(&caller, &headers, role_id(path)?).await?;
    Ok(json_response(&role_json(&view)).into_response())
}

pub(super) async fn replace(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    change(api, caller, headers, path, body, true).await
}

pub(super) async fn patch(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    change(api, caller, headers, path, body, false).await
}

async fn change(
    api: Arc<RestApi>,
    caller: Caller,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
    whole: bool,
) -> Result<Response> {
    let id = role_id(path)?;
    let input: ChangeInput = input::json(&headers, body).await?;
    if whole {
        if input.name.is_none() {
            return Err(ApiError::bad_request(
                Some("name"),
                "is required (PATCH changes part of a role)",
            ));
        }
        if input.scopes.is_none() {
            return Err(ApiError::bad_request(
                Some("scopes"),
                "is required (PATCH changes part of a role)",
            ));
        }
    }
    if input.scopes.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            Some("scopes"),
            "is empty: a role grants at least one scope",
        ));
    }
    if account(&caller, &headers)?.is_some() {
        api.visible_role(&caller, &headers, id.clone()).await?;
    }
    let change = RoleChange {
        role_id: id,
        name: input.name,
        description: input.description,
        scopes: input.scopes.unwrap_or_default(),
        grants: Vec::new(),
    };
    let manager = api.manager.clone();
    let view = api
        .detached(async move { manager.update_role(&caller, change).await })
        .await?;
    Ok(json_response(&role_json(&view)).into_response())
}

pub(super) async fn delete(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = role_id(path)?;
    if account(&caller, &headers)?.is_some() {
        api.visible_role(&caller, &headers, id.clone()).await?;
    }
    let manager = api.manager.clone();
    api.detached(async move { manager.delete_role(&caller, &id).await })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl RestApi {
    /// A role as `caller` may see it; the admin acting on behalf of an
    /// account sees only that account's roles (404 for others).
    async fn visible_role(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        id: String,
    ) -> Result<RoleView> {
        let obo = account(caller, headers)?;
        let (manager, reader, text) = (self.manager.clone(), caller.clone(), id.clone());
        let view = self
            .off_workers(move || manager.get_role(&reader, &text))
            .await?;
        match obo {
            Some(account) if account != view.account_id => {
                Err(ApiError::from(ManageError::RoleNotFound(id)))
            }
            _ => Ok(view),
        }
    }
}
