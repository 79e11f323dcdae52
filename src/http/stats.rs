//! Usage as SendGrid's stats: `GET /v3/api_keys/{id}/stats` (one key) and
//! `GET /v3/stats` (the caller's account; the admin names it with
//! `on-behalf-of`), `[{"date": …, "stats": [{"metrics": {…}}]}]`, with
//! scopegate's `aggregated_by=hour|minute`, `group_by=scope` and
//! `top_keys=N`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::api_keys::{key_id, refuse_on_behalf_of};
use super::error::ApiError;
use super::input::{self, on_behalf_of};
use super::{json_response, RestApi};
use crate::manage::{Caller, UsageQuery};
use crate::stats::RangeQuery;
use crate::usage::Report;

const RANGE: [&str; 6] = [
    "start_date",
    "end_date",
    "aggregated_by",
    "start_time",
    "end_time",
    "group_by",
];

pub(super) async fn key_stats(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = key_id(path)?;
    let params = input::query(raw.as_deref(), &RANGE)?;
    let account = account(&caller, &headers)?;
    let query = UsageQuery {
        key_id: Some(&id),
        account_id: &account,
        ..usage_query(&params)?
    };
    answer(&api, &caller, query).await
}

pub(super) async fn account_stats(
    State(api): State<Arc<RestApi>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut known = RANGE.to_vec();
    known.push("top_keys");
    let params = input::query(raw.as_deref(), &known)?;
    let account = account(&caller, &headers)?;
    let top_keys = match params.get("top_keys") {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::manage::MAX_TOP_KEYS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    Some("top_keys"),
                    format!(
                        "is not a whole number from 1 to {}",
                        crate::manage::MAX_TOP_KEYS
                    ),
                )
            })?,
    };
    let query = UsageQuery {
        account_id: &account,
        top_keys,
        ..usage_query(&params)?
    };
    answer(&api, &caller, query).await
}

/// The admin names an account with `on-behalf-of`; an API key reads its own.
fn account(caller: &Caller, headers: &HeaderMap) -> Result<String, ApiError> {
    match caller {
        Caller::Admin => Ok(on_behalf_of(headers)?.unwrap_or_default()),
        Caller::Key { .. } => refuse_on_behalf_of(on_behalf_of(headers)?),
    }
}

fn usage_query(
    params: &std::collections::BTreeMap<String, String>,
) -> Result<UsageQuery<'_>, ApiError> {
    let group_by_scope = match params.get("group_by").map(String::as_str) {
        None => false,
        Some("scope") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("group_by"),
                format!("`{other}` is not scope"),
            ))
        }
    };
    let get = |name: &str| params.get(name).map(String::as_str);
    Ok(UsageQuery {
        range: RangeQuery {
            aggregated_by: get("aggregated_by"),
            start_date: get("start_date"),
            end_date: get("end_date"),
            start_time: get("start_time"),
            end_time: get("end_time"),
        },
        group_by_scope,
        ..UsageQuery::default()
    })
}

async fn answer(
    api: &RestApi,
    caller: &Caller,
    query: UsageQuery<'_>,
) -> Result<Response, ApiError> {
    let report = tokio::time::timeout(api.timeout, api.manager.usage(caller, query))
        .await
        .map_err(|_| ApiError::unavailable("the read did not finish in time"))??;
    let mut response = json_response(&stats_json(&report)).into_response();
    if report.partial {
        response
            .headers_mut()
            .insert("x-scopegate-partial", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A report in SendGrid's shape; by hour or minute each point also has
/// `time` (unix seconds); each says `"partial": true` when only this
/// sidecar's counts are in it.
pub fn stats_json(report: &Report) -> Value {
    let points: Vec<Value> = report
        .points
        .iter()
        .map(|point| {
            let stats: Vec<Value> = point
                .series
                .iter()
                .map(|series| {
                    let mut entry = json!({ "metrics": series.metrics });
                    if let (Some(kind), Some(name)) = (series.kind, &series.name) {
                        entry["type"] = json!(kind);
                        entry["name"] = json!(name);
                    }
                    entry
                })
                .collect();
            let mut value = json!({ "date": point.date, "stats": stats });
            if point.date.len() > 10 {
                value["time"] = json!(point.start);
            }
            if report.partial {
                value["partial"] = json!(true);
            }
            value
        })
        .collect();
    Value::Array(points)
}
