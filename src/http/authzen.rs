//! OpenID AuthZEN Authorization API 1.0 on the forward-auth listener: the
//! standard PEP→PDP call, answered with the one check (`crate::check`).
//!
//! - Subject: `{"type": "api_key", "id": "<token>"}` (or the token in
//!   `properties.token`); `properties.ip_address` is the client address a
//!   key's allowlist is held to.
//! - Action and resource: `{"name": "<scope>"}` on any resource, or, with a
//!   resource `{"type": "route", "id": "<path>"}`, the action is an HTTP
//!   method judged through the route table (as ext_authz would).
//! - Answer: `{"decision": true}`, or `false` with `context.reason`, Check's
//!   name for the decision (`INSUFFICIENT_SCOPE`, …); the key's ids ride in
//!   `context` whenever the key was identified. A request the evaluation
//!   cannot read is a 400 for the whole call, or (in a batch) that one
//!   evaluation's `false` with `context.error` (spec §7.3).
//!
//! The message types are the `openidauthzen` crate's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use openidauthzen::{
    EvaluationItem, EvaluationRequest, EvaluationResponse, EvaluationSemantic, EvaluationsRequest,
    EvaluationsResponse, PdpConfiguration,
};
use serde_json::{json, Value};

use super::forward_auth::ForwardAuth;
use crate::authz::Decision;
use crate::check::{CheckError, Checked, HttpQuestion};
use crate::telemetry::{count_decision, Api};

pub const EVALUATION: &str = "/access/v1/evaluation";
pub const EVALUATIONS: &str = "/access/v1/evaluations";
pub const CONFIGURATION: &str = "/.well-known/authzen-configuration";

/// An evaluation that could not be read: its status and message.
struct Unreadable(StatusCode, String);

/// `POST /access/v1/evaluation`.
pub async fn evaluation(State(door): State<Arc<ForwardAuth>>, body: Bytes) -> Response {
    let request: EvaluationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    match evaluate(&door, &request).await {
        Ok(answer) => json_response(&answer),
        Err(Unreadable(status, message)) => error_response(status, &message),
    }
}

/// `POST /access/v1/evaluations`: the batch, with the top level as each
/// evaluation's defaults and the three semantics; without `evaluations`, a
/// single evaluation (spec §7.1).
pub async fn evaluations(state: State<Arc<ForwardAuth>>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    if value.get("evaluations").is_none() {
        return evaluation(state, body).await;
    }
    let State(door) = state;
    let request: EvaluationsRequest = match serde_json::from_value(value) {
        Ok(request) => request,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let semantic = request
        .options
        .as_ref()
        .and_then(|options| options.evaluations_semantic.clone())
        .unwrap_or(EvaluationSemantic::ExecuteAll);
    let mut answers = Vec::with_capacity(request.evaluations.len());
    for item in &request.evaluations {
        let answer = match with_defaults(&request, item) {
            Ok(evaluation) => match evaluate(&door, &evaluation).await {
                Ok(answer) => answer,
                Err(Unreadable(status, message)) => failed(status, &message),
            },
            Err(message) => failed(StatusCode::BAD_REQUEST, &message),
        };
        let decided = answer.decision;
        answers.push(answer);
        let stop = match semantic {
            EvaluationSemantic::DenyOnFirstDeny => !decided,
            EvaluationSemantic::PermitOnFirstPermit => decided,
            _ => false,
        };
        if stop {
            break;
        }
    }
    json_response(&EvaluationsResponse {
        decision: None,
        evaluations: answers,
    })
}

/// `GET /.well-known/authzen-configuration`: the endpoints, under the base
/// the caller used (`Host`), which only the proxy can reach.
pub async fn configuration(request: Request) -> Response {
    let scheme = request.uri().scheme_str().unwrap_or("http");
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("{scheme}://{host}");
    json_response(&PdpConfiguration {
        policy_decision_point: base.clone(),
        access_evaluation_endpoint: format!("{base}{EVALUATION}"),
        access_evaluations_endpoint: Some(format!("{base}{EVALUATIONS}")),
        search_subject_endpoint: None,
        search_resource_endpoint: None,
        search_action_endpoint: None,
        capabilities: None,
        signed_metadata: None,
    })
}

/// One evaluation from a batch item and the batch's defaults.
fn with_defaults(
    batch: &EvaluationsRequest,
    item: &EvaluationItem,
) -> Result<EvaluationRequest, String> {
    let missing = |what: &str| format!("{what} is required (in the evaluation or as a default)");
    Ok(EvaluationRequest {
        subject: item
            .subject
            .clone()
            .or_else(|| batch.subject.clone())
            .ok_or_else(|| missing("subject"))?,
        action: item
            .action
            .clone()
            .or_else(|| batch.action.clone())
            .ok_or_else(|| missing("action"))?,
        resource: item
            .resource
            .clone()
            .or_else(|| batch.resource.clone())
            .ok_or_else(|| missing("resource"))?,
        context: item.context.clone().or_else(|| batch.context.clone()),
    })
}

/// The one check on an evaluation.
async fn evaluate(
    door: &ForwardAuth,
    request: &EvaluationRequest,
) -> Result<EvaluationResponse, Unreadable> {
    let invalid = |message: String| Unreadable(StatusCode::BAD_REQUEST, message);
    if request.subject.subject_type != "api_key" {
        return Err(invalid(format!(
            "subject.type is `{}`: scopegate decides for `api_key` subjects",
            request.subject.subject_type
        )));
    }
    let properties = request.subject.properties.as_ref();
    let property = |name: &str| properties.and_then(|p| p.get(name)).and_then(Value::as_str);
    let token = request
        .subject
        .id
        .as_deref()
        .filter(|id| !id.is_empty())
        .or_else(|| property("token"))
        .unwrap_or("");
    let client_ip = match property("ip_address") {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(format!(
                "subject.properties.ip_address `{text}` is not an IP address"
            ))
        })?),
    };
    let answer = |checked: Checked, _: &crate::authz::Policy| answer(checked.decision);
    let checked = if request.resource.resource_type == "route" {
        let path = request.resource.id.as_deref().unwrap_or("");
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "resource.id `{path}` is not a path: a route resource is judged by its path"
            )));
        }
        let question = HttpQuestion {
            token,
            malformed: false,
            method: &request.action.name,
            path,
            method_override: false,
            client_ip,
            proxy_scope: None,
            count: true,
            cost: None,
        };
        door.context.check_http(&question, answer).await
    } else {
        let scopes = [request.action.name.clone()];
        door.context
            .check_scopes(token, &scopes, (client_ip, None), answer)
            .await
    };
    checked.map_err(|error| match error {
        CheckError::Scope(error) => invalid(format!("action.name: {error}")),
        away @ (CheckError::CountersAway | CheckError::CreditsAway) => {
            Unreadable(StatusCode::SERVICE_UNAVAILABLE, away.to_string())
        }
    })
}

/// The decision as AuthZEN's answer.
fn answer(decision: Decision) -> EvaluationResponse {
    count_decision(Api::AuthZen, &decision);
    let mut context = serde_json::Map::new();
    if let Some((key_id, account_id)) = decision.key() {
        context.insert("key_id".into(), key_id.to_string().into());
        context.insert("account_id".into(), account_id.to_string().into());
    }
    if !decision.is_allowed() {
        context.insert("reason".into(), decision.reason().into());
    }
    if let Decision::RateLimited { status, .. } = &decision {
        context.insert("retry_after_seconds".into(), status.reset_secs.into());
    }
    EvaluationResponse {
        decision: decision.is_allowed(),
        context: (!context.is_empty()).then_some(Value::Object(context)),
    }
}

/// An evaluation of a batch that could not be made: closed, with the error.
fn failed(status: StatusCode, message: &str) -> EvaluationResponse {
    EvaluationResponse {
        decision: false,
        context: Some(json!({"error": {"status": status.as_u16(), "message": message}})),
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"status": status.as_u16(), "message": message}});
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(value: &impl serde::Serialize) -> Response {
    let mut response = serde_json::to_string(value)
        .unwrap_or_default()
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
