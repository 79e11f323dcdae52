//! Credits on the REST edge: the `credits` object of `POST` and `PUT
//! /v3/api_keys` and of `GET`, and `POST /v3/api_keys/{id}/credits`
//! (`{"op": "set"|"increment"|"decrement", "amount": N}` → `{"remaining": N}`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::api_keys::{key_id, refuse_on_behalf_of};
use super::error::ApiError;
use super::input::{self, on_behalf_of};
use super::{json_response, RestApi};
use crate::credits::{Credits, Refill};
use crate::manage::Caller;

/// A key's credits, as JSON.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreditsInput {
    remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refill: Option<RefillInput>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefillInput {
    amount: u64,
    interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day_of_month: Option<u32>,
}

impl CreditsInput {
    /// The terms, checked (400 naming the field).
    pub(super) fn terms(self) -> Result<Credits, ApiError> {
        let refill = self
            .refill
            .map(|refill| {
                Refill::new(
                    refill.amount,
                    &refill.interval,
                    refill.day_of_month.unwrap_or(0),
                )
            })
            .transpose()
            .map_err(|error| ApiError::bad_request(Some("credits.refill"), error.to_string()))?;
        Credits::new(self.remaining, refill)
            .map_err(|error| ApiError::bad_request(Some("credits.remaining"), error.to_string()))
    }

    pub(super) fn shown(credits: &Credits) -> CreditsInput {
        CreditsInput {
            remaining: credits.remaining,
            refill: credits.refill.map(|refill| RefillInput {
                amount: refill.amount,
                interval: refill.interval.name().to_owned(),
                day_of_month: (refill.day_of_month != 0).then_some(u32::from(refill.day_of_month)),
            }),
        }
    }
}

/// `"credits"` absent: unchanged; `null`: unlimited; an object: replaced.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreditsChange {
    op: String,
    amount: u64,
}

pub(super) async fn update(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let id = key_id(path)?;
    let change: CreditsChange = input::json(&headers, body).await?;
    // An API key acts in its own account; the admin's on-behalf-of must
    // name the key's.
    match (&caller, on_behalf_of(&headers)?) {
        (Caller::Key { .. }, obo) => drop(refuse_on_behalf_of(obo)?),
        (Caller::Admin, Some(_)) => drop(api.visible(&caller, &headers, id.clone()).await?),
        (Caller::Admin, None) => {}
    }
    let manager = api.manager.clone();
    let remaining = api
        .detached(async move {
            manager
                .update_credits(&caller, &id, (&change.op, change.amount))
                .await
        })
        .await?;
    Ok(json_response(&json!({ "remaining": remaining })).into_response())
}
