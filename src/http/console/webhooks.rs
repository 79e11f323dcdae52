//! Webhooks in the console: an account's endpoints and a form for a new one
//! (its secret shown once, on the page that made it), and one endpoint's
//! page with its dead letters, each redeliverable (or all at once).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::forms::value;
use super::pages::{self, url};
use super::{
    account_of, failed, html, keys_query, signed_in, signed_post, Console, Shared, Signed,
};
use crate::http::error::ApiError;
use crate::manage::{DeadLetter, NewWebhook, WebhookView};
use crate::webhooks::event::{timestamp, EVENT_TYPES};

fn list_page(
    signed: &Signed,
    account: &str,
    hooks: &[WebhookView],
    made: Option<&WebhookView>,
    error: Option<&ApiError>,
) -> Markup {
    let is_admin = matches!(signed.caller, crate::manage::Caller::Admin);
    pages::page(
        &format!("Webhooks of {account}"),
        Some(&signed.frame()),
        html! {
            @if is_admin {
                form.filters method="get" action="/console/webhooks" {
                    label for="account" { "Account" }
                    input #account name="account" value=(account) required;
                    button type="submit" { "Show" }
                }
            }
            @if let Some(made) = made {
                div.token role="status" {
                    p { "Signing secret of " code { (made.endpoint.endpoint_id) } ": copy it now, it is not shown again. Verify each delivery's webhook-signature with it (Standard Webhooks)." }
                    code #webhook-secret { (made.secret.as_deref().unwrap_or("")) }
                }
            }
            table #webhooks {
                thead { tr { th { "URL" } th { "ID" } th { "Events" } th { "State" } } }
                tbody {
                    @for hook in hooks {
                        tr {
                            td { a href=(format!("/console/webhooks/{}", hook.endpoint.endpoint_id)) { (hook.endpoint.url) } }
                            td { code { (hook.endpoint.endpoint_id) } }
                            td { @if hook.endpoint.event_types.is_empty() { "all" } @else { (hook.endpoint.event_types.join(", ")) } }
                            td { @if hook.endpoint.disabled { "disabled" } @else { "enabled" } }
                        }
                    }
                    @if hooks.is_empty() { tr { td colspan="4" { "No endpoints." } } }
                }
            }
            @if !account.is_empty() {
                h2 { "New endpoint" }
                form.key method="post" action=(format!("/console/webhooks?account={}", url(account))) {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    @if let Some(error) = error { p.error role="alert" { (error.message) } }
                    label for="url" { "URL (https://…)" }
                    input #url name="url" type="url" required;
                    label for="description" { "Description" }
                    input #description name="description";
                    fieldset #event-types {
                        legend { "Events (none ticked: every type)" }
                        @for event_type in EVENT_TYPES {
                            label { input type="checkbox" name="event" value=(event_type); " " (event_type) }
                        }
                    }
                    button type="submit" { "Create endpoint" }
                }
            }
        },
    )
}

fn endpoint_page(signed: &Signed, hook: &WebhookView, dead: &[DeadLetter]) -> Markup {
    let endpoint = &hook.endpoint;
    let redeliver = format!("/console/webhooks/{}/redeliver", endpoint.endpoint_id);
    pages::page(
        &format!("Webhook {}", endpoint.url),
        Some(&signed.frame()),
        html! {
            dl {
                dt { "ID" } dd { code { (endpoint.endpoint_id) } }
                dt { "Account" } dd { a href=(format!("/console/webhooks?account={}", url(&endpoint.account_id))) { (endpoint.account_id) } }
                dt { "Events" } dd { @if endpoint.event_types.is_empty() { "all" } @else { (endpoint.event_types.join(", ")) } }
                dt { "State" } dd { @if endpoint.disabled { "disabled" } @else { "enabled" } }
            }
            h2 { "Dead letters" }
            p.hint { "Deliveries given up on after the retry window. Redelivered ones keep their webhook-id, so a receiver that took one already drops it." }
            table #dead-letters {
                thead { tr { th { "Event" } th { "Type" } th { "Attempts" } th { "Last error" } th { "Queued" } th {} } }
                tbody {
                    @for letter in dead {
                        tr {
                            td { code { (letter.delivery.event_id) } }
                            td { (letter.delivery.event_type) }
                            td { (letter.delivery.attempts) }
                            td { (letter.delivery.last_error) }
                            td { (timestamp(letter.delivery.queued_unix_ms)) }
                            td {
                                form method="post" action=(redeliver) {
                                    input type="hidden" name="csrf" value=(signed.csrf);
                                    input type="hidden" name="event_id" value=(letter.delivery.event_id);
                                    button type="submit" { "Redeliver" }
                                }
                            }
                        }
                    }
                    @if dead.is_empty() { tr { td colspan="6" { "None." } } }
                }
            }
            @if !dead.is_empty() {
                form method="post" action=(redeliver) {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    button #redeliver-all type="submit" { "Redeliver all" }
                }
            }
        },
    )
}

async fn hooks_of(
    console: &Console,
    signed: &Signed,
    account: &str,
) -> Result<Vec<WebhookView>, ApiError> {
    if account.is_empty() {
        return Ok(Vec::new());
    }
    let (manager, caller, account) = (
        console.api.manager.clone(),
        signed.caller.clone(),
        account.to_owned(),
    );
    console
        .api
        .detached(async move { manager.list_webhooks(&caller, &account).await })
        .await
}

pub(super) async fn list(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let query = match keys_query(raw.as_deref()) {
        Ok(query) => query,
        Err(error) => return failed(Some(&signed), error),
    };
    let account = account_of(&signed, query.get("account").map(String::as_str));
    match hooks_of(&console, &signed, &account).await {
        Ok(hooks) => html(list_page(&signed, &account, &hooks, None, None)),
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn create(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Response {
    let (signed, fields) = match signed_post(&console, &headers, peer, body).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let query = keys_query(raw.as_deref()).unwrap_or_default();
    let account = account_of(&signed, query.get("account").map(String::as_str));
    let request = NewWebhook {
        account_id: account.clone(),
        url: value(&fields, "url").unwrap_or("").trim().to_owned(),
        description: value(&fields, "description").unwrap_or("").to_owned(),
        event_types: fields
            .iter()
            .filter(|(field, _)| field == "event")
            .map(|(_, chosen)| chosen.clone())
            .collect(),
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    let made = console
        .api
        .detached(async move { manager.create_webhook(&caller, request).await })
        .await;
    let hooks = hooks_of(&console, &signed, &account)
        .await
        .unwrap_or_default();
    match made {
        Ok(made) => html(list_page(&signed, &account, &hooks, Some(&made), None)),
        Err(error) => (
            error.status,
            html(list_page(&signed, &account, &hooks, None, Some(&error))),
        )
            .into_response(),
    }
}

pub(super) async fn endpoint(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    let read = console
        .api
        .detached(async move {
            let hook = manager.get_webhook(&caller, &id).await?;
            let dead = manager.dead_letters(&caller, &id).await?;
            Ok((hook, dead))
        })
        .await;
    match read {
        Ok((hook, dead)) => html(endpoint_page(&signed, &hook, &dead)),
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn redeliver(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields) = match signed_post(&console, &headers, peer, body).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let event_id = value(&fields, "event_id").unwrap_or("").to_owned();
    let (manager, caller, endpoint) = (
        console.api.manager.clone(),
        signed.caller.clone(),
        id.clone(),
    );
    match console
        .api
        .detached(async move { manager.redeliver(&caller, &endpoint, &event_id).await })
        .await
    {
        Ok(_) => Redirect::to(&format!("/console/webhooks/{id}")).into_response(),
        Err(error) => failed(Some(&signed), error),
    }
}
