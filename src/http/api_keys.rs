//! `/v3/api_keys` and `/v3/scopes` as SendGrid serves them, plus the
//! lifecycle calls SendGrid lacks (rotate, disable, enable) under the same
//! path; each handler reads its input, calls [`Manager`], writes the shape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::credits::CreditsInput;
use super::error::ApiError;
use super::input::{self, on_behalf_of};
use super::{json_response, RestApi};
use crate::manage::{Caller, KeyChange, KeyTerms, KeyView, ListQuery, NewKey};
use crate::ratelimit::RateLimit;

type Result<T> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateInput {
    name: String,
    /// Left out: every scope the caller holds except billing ones.
    scopes: Option<Vec<String>>,
    /// scopegate: unix seconds after which the key stops working.
    expires_at: Option<i64>,
    /// scopegate: address ranges the key may be used from.
    allowed_cidrs: Option<Vec<String>>,
    /// scopegate: returned with every allowed check.
    metadata: Option<BTreeMap<String, String>>,
    /// scopegate: a retry with the same id returns the first key.
    request_id: Option<String>,
    /// scopegate: named rate limits.
    rate_limits: Option<Vec<RateLimitInput>>,
    /// scopegate: how much the key may spend (absent: unlimited).
    credits: Option<CreditsInput>,
    /// scopegate: roles of the account (ids or names); with them, scopes
    /// left out means none of the key's own.
    roles: Option<Vec<String>>,
}

/// scopegate's rate limit, as JSON.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateLimitInput {
    name: String,
    limit: u64,
    window_seconds: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    account: bool,
}

impl From<RateLimitInput> for RateLimit {
    fn from(input: RateLimitInput) -> Self {
        RateLimit {
            name: input.name,
            limit: input.limit,
            window_secs: input.window_seconds,
            scopes: input.scopes,
            account: input.account,
        }
    }
}

impl From<&RateLimit> for RateLimitInput {
    fn from(limit: &RateLimit) -> Self {
        RateLimitInput {
            name: limit.name.clone(),
            limit: limit.limit,
            window_seconds: limit.window_secs,
            scopes: limit.scopes.clone(),
            account: limit.account,
        }
    }
}

fn rate_limits_given(limits: Option<Vec<RateLimitInput>>) -> Option<Vec<RateLimit>> {
    limits.map(|limits| limits.into_iter().map(RateLimit::from).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceInput {
    name: String,
    scopes: Option<Vec<String>>,
    /// scopegate: the key's new rate limits ([] removes them).
    rate_limits: Option<Vec<RateLimitInput>>,
    /// scopegate: the key's new credits (null: unlimited).
    #[serde(default, deserialize_with = "super::credits::present")]
    credits: Option<Option<CreditsInput>>,
    /// scopegate: the key's roles from now on ([] removes them).
    roles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenameInput {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateInput {
    /// How long the previous secret keeps passing checks (default 0).
    overlap_seconds: Option<u64>,
}

/// The path's key id, or a 400 that says why it is not one.
pub(super) fn key_id(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::bad_request(Some("api_key_id"), rejection.body_text()))
}

fn scopes_given(scopes: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    match scopes {
        Some(scopes) if scopes.is_empty() => Err(ApiError::bad_request(
            Some("scopes"),
            "is empty: list the scopes, or leave scopes out for all of yours except billing",
        )),
        other => Ok(other),
    }
}

pub(super) async fn create(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let account_id = match (&caller, on_behalf_of(&headers)?) {
        (Caller::Admin, Some(account)) => account,
        (Caller::Admin, None) => {
            return Err(ApiError::bad_request(
                Some("on-behalf-of"),
                "the admin token creates keys in the account this header names",
            ))
        }
        (Caller::Key { .. }, obo) => refuse_on_behalf_of(obo)?,
    };
    let input: CreateInput = input::json(&headers, body).await?;
    let scopes = scopes_given(input.scopes)?;
    let new_key = NewKey {
        account_id,
        name: input.name,
        all_my_scopes_except_billing: scopes.is_none() && input.roles.is_none(),
        scopes: scopes.unwrap_or_default(),
        grants: Vec::new(),
        terms: KeyTerms {
            expire_time: input
                .expires_at
                .map(|secs| secs.checked_mul(1000).ok_or(()))
                .transpose()
                .map_err(|()| ApiError::bad_request(Some("expires_at"), "is out of range"))?,
            not_before: None,
            allowed_cidrs: input.allowed_cidrs.unwrap_or_default(),
            metadata: input.metadata.unwrap_or_default(),
            rate_limits: rate_limits_given(input.rate_limits).unwrap_or_default(),
            credits: input.credits.map(CreditsInput::terms).transpose()?,
        },
        request_id: input.request_id.unwrap_or_default(),
        roles: input.roles.unwrap_or_default(),
    };
    let manager = api.manager.clone();
    let (view, token) = api
        .detached(async move { manager.create(&caller, new_key).await })
        .await?;
    Ok((StatusCode::CREATED, json_response(&created(view, token))).into_response())
}

/// An API key acts in its own account: `on-behalf-of` is the admin's.
pub(super) fn refuse_on_behalf_of(obo: Option<String>) -> Result<String> {
    match obo {
        None => Ok(String::new()),
        Some(_) => Err(ApiError {
            field: Some("on-behalf-of".into()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "only the admin token may act on behalf of an account; an API key acts in its own",
            )
        }),
    }
}

fn created(view: KeyView, token: String) -> serde_json::Value {
    json!({"api_key": token, "api_key_id": view.key_id, "name": view.name, "scopes": view.scopes})
}

pub(super) async fn list(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let query = input::query(raw.as_deref(), &["limit", "page_token"])?;
    let limit = match query.get("limit") {
        None => 50,
        Some(text) => text
            .parse::<i32>()
            .ok()
            .filter(|limit| (1..=1000).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(Some("limit"), "is not a whole number from 1 to 1000")
            })?,
    };
    let account_id = match &caller {
        Caller::Admin => on_behalf_of(&headers)?.unwrap_or_default(),
        Caller::Key { .. } => refuse_on_behalf_of(on_behalf_of(&headers)?)?,
    };
    let list_query = ListQuery {
        account_id,
        page_size: limit,
        page_token: query.get("page_token").cloned().unwrap_or_default(),
    };
    let manager = api.manager.clone();
    let (views, next) = api
        .off_workers(move || manager.list(&caller, list_query))
        .await?;
    let result: Vec<_> = views
        .iter()
        .map(|view| json!({"name": view.name, "api_key_id": view.key_id}))
        .collect();
    let mut body = json!({ "result": result });
    if !next.is_empty() {
        body["_metadata"] =
            json!({"next": format!("/v3/api_keys?limit={limit}&page_token={next}")});
    }
    Ok(json_response(&body).into_response())
}

pub(super) async fn get(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let view = api.visible(&caller, &headers, key_id(path)?).await?;
    let view = api.manager.live_credits(view).await;
    let mut key = json!({"name": view.name, "api_key_id": view.key_id, "scopes": view.scopes});
    if !view.rate_limits.is_empty() {
        let limits: Vec<RateLimitInput> =
            view.rate_limits.iter().map(RateLimitInput::from).collect();
        key["rate_limits"] = json!(limits);
    }
    if let Some(credits) = &view.credits {
        key["credits"] = json!(CreditsInput::shown(credits));
    }
    if view.exposed_time_unix_ms != 0 {
        key["exposed"] = json!({"url": view.exposed_url, "at": view.exposed_time_unix_ms / 1000});
    }
    if !view.roles.is_empty() {
        let roles: Vec<_> = view
            .roles
            .iter()
            .map(|role| json!({"role_id": role.role_id, "name": role.name, "adds": role.adds}))
            .collect();
        key["roles"] = json!(roles);
        key["own_scopes"] = json!(view.own_scopes);
    }
    Ok(json_response(&json!({ "result": [key] })).into_response())
}

pub(super) async fn replace(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    let id = key_id(path)?;
    let input: ReplaceInput = input::json(&headers, body).await?;
    let change = KeyChange {
        key_id: id,
        name: Some(input.name),
        scopes: scopes_given(input.scopes)?.unwrap_or_default(),
        rate_limits: rate_limits_given(input.rate_limits),
        credits: input
            .credits
            .map(|credits| credits.map(CreditsInput::terms).transpose())
            .transpose()?,
        roles: input.roles,
        ..KeyChange::default()
    };
    let view = api.change(caller, &headers, change).await?;
    Ok(
        json_response(
            &json!({"api_key_id": view.key_id, "name": view.name, "scopes": view.scopes}),
        )
        .into_response(),
    )
}

pub(super) async fn rename(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    let id = key_id(path)?;
    let input: RenameInput = input::json(&headers, body).await?;
    let change = KeyChange {
        key_id: id,
        name: Some(input.name),
        ..KeyChange::default()
    };
    let view = api.change(caller, &headers, change).await?;
    Ok(json_response(&json!({"api_key_id": view.key_id, "name": view.name})).into_response())
}

pub(super) async fn delete(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = key_id(path)?;
    if matches!(caller, Caller::Admin) && on_behalf_of(&headers)?.is_some() {
        api.visible(&caller, &headers, id.clone()).await?;
    }
    let manager = api.manager.clone();
    api.detached(async move { manager.delete(&caller, &id).await })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn rotate(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response> {
    let id = key_id(path)?;
    let input: RotateInput = input::optional_json(&headers, body).await?;
    if matches!(caller, Caller::Admin) && on_behalf_of(&headers)?.is_some() {
        api.visible(&caller, &headers, id.clone()).await?;
    }
    let overlap = Duration::from_secs(input.overlap_seconds.unwrap_or(0));
    let manager = api.manager.clone();
    let (view, token) = api
        .detached(async move { manager.rotate(&caller, &id, overlap).await })
        .await?;
    Ok(json_response(&created(view, token)).into_response())
}

/// `POST …/enable` and `…/disable`.
pub(super) async fn set_enabled(
    enabled: bool,
    api: Arc<RestApi>,
    caller: Caller,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let change = KeyChange {
        key_id: key_id(path)?,
        enabled: Some(enabled),
        ..KeyChange::default()
    };
    let view = api.change(caller, &headers, change).await?;
    Ok(json_response(
        &json!({"api_key_id": view.key_id, "name": view.name, "enabled": view.enabled}),
    )
    .into_response())
}

pub(super) async fn scopes(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response> {
    if let Caller::Key { .. } = caller {
        refuse_on_behalf_of(on_behalf_of(&headers)?)?;
    }
    let view = api.manager.scopes(&caller);
    // The admin token holds every scope of the catalog.
    let scopes: Vec<String> = if view.caller_is_admin {
        view.resources
            .into_iter()
            .flat_map(|resource| resource.scopes)
            .collect()
    } else {
        view.caller_scopes
    };
    Ok(json_response(&json!({ "scopes": scopes })).into_response())
}

impl RestApi {
    /// The bearer's caller, as the gate identifies it before the body is
    /// read. An API key acts in its own account: `on-behalf-of` from one is
    /// refused on every route, before anything is read or changed.
    pub(super) fn caller(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller> {
        let caller = self
            .manager
            .authenticate_from(input::bearer(headers)?, Some(peer.ip()))?;
        if let Caller::Key { .. } = caller {
            refuse_on_behalf_of(on_behalf_of(headers)?)?;
        }
        Ok(caller)
    }

    /// A key as `caller` may see it; the admin acting on behalf of an
    /// account sees only that account's keys (404 for others).
    pub(super) async fn visible(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        key_id: String,
    ) -> Result<KeyView> {
        let obo = match caller {
            Caller::Admin => on_behalf_of(headers)?,
            Caller::Key { .. } => {
                refuse_on_behalf_of(on_behalf_of(headers)?)?;
                None
            }
        };
        let (manager, reader, id) = (self.manager.clone(), caller.clone(), key_id.clone());
        let view = self.off_workers(move || manager.get(&reader, &id)).await?;
        match obo {
            Some(account) if account != view.account_id => {
                Err(ApiError::from(crate::manage::ManageError::NotFound(key_id)))
            }
            _ => Ok(view),
        }
    }

    async fn change(
        &self,
        caller: Caller,
        headers: &HeaderMap,
        change: KeyChange,
    ) -> Result<KeyView> {
        if matches!(caller, Caller::Admin) && on_behalf_of(headers)?.is_some() {
            self.visible(&caller, headers, change.key_id.clone())
                .await?;
        } else if let Caller::Key { .. } = caller {
            refuse_on_behalf_of(on_behalf_of(headers)?)?;
        }
        let manager = self.manager.clone();
        self.detached(async move { manager.update(&caller, change).await })
            .await
    }
}
