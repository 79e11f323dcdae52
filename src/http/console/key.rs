//! One key's pages: its details and audit events, the edit grid, rotate,
//! disable and enable, and delete behind a confirmation that names it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::Markup;

use super::forms::KeyForm;
use super::{
    failed, forms, html, pages, same_site, signed_in, state_of, usage, Console, Shared, Signed,
};
use crate::http::error::ApiError;
use crate::http::input;
use crate::manage::{AuditQuery, KeyView};

/// The key, as the signed-in caller may see it.
async fn visible(console: &Console, signed: &Signed, id: String) -> Result<KeyView, ApiError> {
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    console
        .api
        .off_workers(move || manager.get(&caller, &id))
        .await
}

async fn key_page(
    console: &Console,
    signed: &Signed,
    view: &KeyView,
    form: &KeyForm,
    error: Option<&ApiError>,
) -> Markup {
    let (manager, caller, key_id) = (
        console.api.manager.clone(),
        signed.caller.clone(),
        view.key_id.clone(),
    );
    // The key's own events and those of its roles (changes that reached it
    // through a role), oldest first.
    let mut events = Vec::new();
    let sources = std::iter::once(key_id).chain(view.roles.iter().map(|role| role.role_id.clone()));
    for source in sources {
        let listed = manager
            .audit(
                &caller,
                AuditQuery {
                    key_id: source,
                    page_size: 100,
                    ..AuditQuery::default()
                },
            )
            .await;
        events.extend(listed.map(|(events, _)| events).unwrap_or_default());
    }
    events.sort_by_key(|event| event.time_unix_ms);
    let offered = console.roles_in(signed, &view.account_id).await;
    let edit = forms::edit_form(console, signed, view, form, (error, &offered));
    let usage = usage::charts(console, signed, &view.account_id, Some(&view.key_id)).await;
    // The form holds the credits as set; the page shows what is left now.
    let shown = console.api.manager.live_credits(view.clone()).await;
    pages::key_detail(
        &signed.frame(),
        &shown,
        state_of(view),
        (usage, edit),
        &events,
    )
}

pub(super) async fn key(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    match visible(&console, &signed, id).await {
        Ok(view) => {
            html(key_page(&console, &signed, &view, &KeyForm::from_view(&view), None).await)
        }
        Err(error) => failed(Some(&signed), error),
    }
}

/// Reads a posted form for one key: signed in, same site, the key visible.
async fn posted(
    console: &Console,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
    id: String,
) -> Result<(Signed, Vec<(String, String)>, KeyView), Box<Response>> {
    let signed = signed_in(console, headers, peer)?;
    let fields = input::form(headers, body)
        .await
        .map_err(|error| Box::new(failed(Some(&signed), error)))?;
    same_site(headers, &signed, &fields)?;
    let view = visible(console, &signed, id)
        .await
        .map_err(|error| Box::new(failed(Some(&signed), error)))?;
    Ok((signed, fields, view))
}

pub(super) async fn edit(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields, view) = match posted(&console, &headers, peer, body, id).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let form = KeyForm::read(&fields);
    let change = match form.change(&console, &signed, &view) {
        Ok(change) => change,
        Err(error) => return html(key_page(&console, &signed, &view, &form, Some(&error)).await),
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.update(&caller, change).await })
        .await
    {
        Ok(view) => {
            html(key_page(&console, &signed, &view, &KeyForm::from_view(&view), None).await)
        }
        Err(error) => (
            error.status,
            Html(
                key_page(&console, &signed, &view, &form, Some(&error))
                    .await
                    .into_string(),
            ),
        )
            .into_response(),
    }
}

/// Sets, adds to or takes from the key's credits, then shows the key.
pub(super) async fn credits(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields, view) = match posted(&console, &headers, peer, body, id).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let op = forms::value(&fields, "op").unwrap_or("").to_owned();
    let Ok(amount) = forms::value(&fields, "amount")
        .unwrap_or("")
        .trim()
        .parse::<u64>()
    else {
        return failed(
            Some(&signed),
            ApiError::bad_request(Some("amount"), "is not a whole number"),
        );
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    let key_id = view.key_id.clone();
    let changed = console
        .api
        .detached(async move {
            manager
                .update_credits(&caller, &key_id, (&op, amount))
                .await
        })
        .await;
    if let Err(error) = changed {
        return failed(Some(&signed), error);
    }
    // Read again: the form must hold the credits as now set.
    match visible(&console, &signed, view.key_id.clone()).await {
        Ok(view) => {
            html(key_page(&console, &signed, &view, &KeyForm::from_view(&view), None).await)
        }
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn rotate(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields, view) = match posted(&console, &headers, peer, body, id).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let overlap = forms::value(&fields, "overlap")
        .unwrap_or("0")
        .trim()
        .parse::<u64>();
    let Ok(overlap) = overlap else {
        return failed(
            Some(&signed),
            ApiError::bad_request(Some("overlap"), "is not a whole number of seconds"),
        );
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    let key_id = view.key_id.clone();
    let rotated = console
        .api
        .detached(async move {
            manager
                .rotate(&caller, &key_id, std::time::Duration::from_secs(overlap))
                .await
        })
        .await;
    match rotated {
        Ok((view, token)) => html(pages::token_once(
            &signed.frame(),
            "Rotated: the new key",
            &view,
            &token,
        )),
        Err(error) => failed(Some(&signed), error),
    }
}

async fn set_enabled(
    console: Arc<Console>,
    peer: SocketAddr,
    headers: HeaderMap,
    id: String,
    body: Body,
    enabled: bool,
) -> Response {
    let (signed, _, view) = match posted(&console, &headers, peer, body, id).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let change = crate::manage::KeyChange {
        key_id: view.key_id.clone(),
        enabled: Some(enabled),
        ..Default::default()
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.update(&caller, change).await })
        .await
    {
        Ok(view) => Redirect::to(&format!("/console/keys/{}", view.key_id)).into_response(),
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn disable(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    set_enabled(console, peer, headers, id, body, false).await
}

pub(super) async fn enable(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    set_enabled(console, peer, headers, id, body, true).await
}

pub(super) async fn confirm_delete(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    match visible(&console, &signed, id).await {
        Ok(view) => html(pages::confirm_delete(&signed.frame(), &view)),
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn delete(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, _, view) = match posted(&console, &headers, peer, body, id).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let (manager, caller, key_id) = (
        console.api.manager.clone(),
        signed.caller.clone(),
        view.key_id.clone(),
    );
    match console
        .api
        .detached(async move { manager.delete(&caller, &key_id).await })
        .await
    {
        Ok(()) => html(pages::message(
            Some(&signed.frame()),
            "Key deleted",
            &format!(
                "The key {} is deleted; its token no longer works.",
                view.name
            ),
        )),
        Err(error) => failed(Some(&signed), error),
    }
}
