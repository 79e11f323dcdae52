//! The key console at `/console`, on the REST listener: server-rendered
//! pages over the same [`Manager`] as gRPC and REST (one rule set, one audit
//! trail), plain forms that work without JavaScript (htmx only narrows the
//! keys table in place), a server-side session per sign-in, a CSRF token and
//! an Origin check on every change, and a strict Content-Security-Policy.

mod chart;
mod forms;
mod key;
mod pages;
mod roles;
mod session;
mod usage;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use super::error::ApiError;
use super::{input, RestApi};
use crate::manage::{Caller, KeyView, ListQuery};
use forms::KeyForm;
use pages::Frame;
use session::Sessions;

/// What the console's handlers share.
pub struct Console {
    pub api: Arc<RestApi>,
    sessions: Sessions,
    /// Cookies are `Secure` when the listener is HTTPS.
    tls: bool,
}

impl Console {
    pub fn new(api: Arc<RestApi>, tls: bool) -> Console {
        Console {
            api,
            sessions: Sessions::default(),
            tls,
        }
    }
}

type Shared = State<Arc<Console>>;

/// The console's routes, with its security headers on every answer.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/keys") }))
        .route("/console/sign-in", get(sign_in_page).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/keys", get(keys).post(create))
        .route("/console/keys/new", get(new_key))
        .route("/console/usage", get(usage::account_page))
        .route("/console/roles", get(roles::list).post(roles::create))
        .route("/console/roles/{id}", get(roles::role).post(roles::edit))
        .route("/console/roles/{id}/delete", post(roles::delete))
        .route(
            "/console/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/console/webhooks/{id}", get(webhooks::endpoint))
        .route(
            "/console/webhooks/{id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/console/keys/{id}", get(key::key).post(key::edit))
        .route("/console/keys/{id}/rotate", post(key::rotate))
        .route("/console/keys/{id}/credits", post(key::credits))
        .route("/console/keys/{id}/disable", post(key::disable))
        .route("/console/keys/{id}/enable", post(key::enable))
        .route(
            "/console/keys/{id}/delete",
            get(key::confirm_delete).post(key::delete),
        )
        .route("/console/static/{file}", get(asset))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    secure(&mut response);
    response
}

/// The gate's refusal (not ready, busy, a stalled body) as a page.
pub(super) fn refusal(status: StatusCode, why: &str) -> Response {
    let mut response = (
        status,
        Html(pages::message(None, "Unavailable", why).into_string()),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    secure(&mut response);
    response
}

fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // same-origin (not no-referrer): browsers then send our Origin on a
        // form POST, which the CSRF check compares; other sites get nothing.
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (include_bytes!("static/htmx.min.js"), "text/javascript"),
        "console.js" => (include_bytes!("static/console.js"), "text/javascript"),
        "console.css" => (include_bytes!("static/console.css"), "text/css"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// A signed-in request: who, and the session's CSRF token.
struct Signed {
    caller: Caller,
    csrf: String,
    who: String,
}

impl Signed {
    fn frame(&self) -> Frame<'_> {
        Frame {
            who: &self.who,
            csrf: &self.csrf,
        }
    }
}

/// The session's caller, authenticated again now (a key disabled or deleted
/// since sign-in ends the session), or a redirect to sign in.
fn signed_in(
    console: &Console,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Signed, Box<Response>> {
    let to_sign_in = || Box::new(Redirect::to("/console/sign-in").into_response());
    let id = session::cookie_id(headers).ok_or_else(to_sign_in)?;
    let (signed_in_as, csrf) = console.sessions.get(&id).ok_or_else(to_sign_in)?;
    match console
        .api
        .manager
        .reauthenticate(&signed_in_as, Some(peer.ip()))
    {
        Ok(caller) => Ok(Signed {
            who: match &caller {
                Caller::Admin => "the admin".into(),
                Caller::Key {
                    key_id, account_id, ..
                } => format!("key {key_id} ({account_id})"),
            },
            caller,
            csrf,
        }),
        Err(_) => {
            console.sessions.end(&id);
            Err(to_sign_in())
        }
    }
}

/// A change posted from a signed-in page: the caller, and the form once it
/// came from our own page (or the page that says why not).
async fn signed_post(
    console: &Console,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<(Signed, Vec<(String, String)>), Box<Response>> {
    let signed = signed_in(console, headers, peer)?;
    let fields = match input::form(headers, body).await {
        Ok(fields) => fields,
        Err(error) => return Err(Box::new(failed(Some(&signed), error))),
    };
    same_site(headers, &signed, &fields)?;
    Ok((signed, fields))
}

/// A change must come from our own page: the session's CSRF token in the
/// form, and (when the browser says) our own origin.
fn same_site(
    headers: &HeaderMap,
    signed: &Signed,
    form: &[(String, String)],
) -> Result<(), Box<Response>> {
    same_origin(headers, form, &signed.csrf)
}

/// The request came from our own page: `expected` (a session's or the
/// sign-in form's token) in the form, and our own origin when the browser
/// names one.
fn same_origin(
    headers: &HeaderMap,
    form: &[(String, String)],
    expected: &str,
) -> Result<(), Box<Response>> {
    let refused = |why: &str| {
        Box::new(
            (
                StatusCode::FORBIDDEN,
                Html(pages::message(None, "Refused", why).into_string()),
            )
                .into_response(),
        )
    };
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
    {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        let ours = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if ours != Some(host) {
            return Err(refused("the request came from another site"));
        }
    }
    let sent = forms::value(form, "csrf").unwrap_or("");
    if expected.is_empty() || !session::same(sent, expected) {
        return Err(refused(
            "the form's security token is missing or stale: reload the page",
        ));
    }
    Ok(())
}

fn html(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// The sign-in form, with a token of its own in a cookie and in the form
/// (double submit): a form posted from another site carries neither our
/// SameSite=Strict cookie nor our origin.
async fn sign_in_page(State(console): Shared) -> Response {
    let token = session::random_token();
    let mut response = html(pages::sign_in(None, &token));
    console.set_cookie(
        &mut response,
        &format!(
            "{}={token}; Path=/console/sign-in; HttpOnly; SameSite=Strict",
            session::SIGN_IN_COOKIE
        ),
    );
    response
}

impl Console {
    fn set_cookie(&self, response: &mut Response, cookie: &str) {
        let secure = if self.tls { "; Secure" } else { "" };
        if let Ok(value) = HeaderValue::from_str(&format!("{cookie}{secure}")) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

async fn sign_in(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let again = |status: StatusCode, why: &str| {
        let token = session::cookie(&headers, session::SIGN_IN_COOKIE).unwrap_or_default();
        (
            status,
            Html(pages::sign_in(Some(why), &token).into_string()),
        )
            .into_response()
    };
    let form = match input::form(&headers, body).await {
        Ok(form) => form,
        Err(error) => return again(error.status, &error.message),
    };
    let token = session::cookie(&headers, session::SIGN_IN_COOKIE).unwrap_or_default();
    if let Err(response) = same_origin(&headers, &form, &token) {
        return *response;
    }
    let credential = zeroize::Zeroizing::new(
        forms::value(&form, "credential")
            .unwrap_or("")
            .trim()
            .to_owned(),
    );
    let manager = &console.api.manager;
    let caller = match manager.authenticate_from(Some(&credential), Some(peer.ip())) {
        Ok(caller) => caller,
        Err(error) => {
            let error = ApiError::from(error);
            return again(error.status, &error.message);
        }
    };
    if !manager.may_manage(&caller) {
        return again(
            StatusCode::FORBIDDEN,
            "this API key holds no api_keys scope: the console only manages keys",
        );
    }
    let Some(id) = console.sessions.start(caller) else {
        return again(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console sessions are open: try again later",
        );
    };
    let mut response = Redirect::to("/console/keys").into_response();
    console.set_cookie(
        &mut response,
        &format!(
            "{}={id}; Path=/console; HttpOnly; SameSite=Strict",
            session::COOKIE
        ),
    );
    console.set_cookie(
        &mut response,
        &format!(
            "{}=; Path=/console/sign-in; HttpOnly; SameSite=Strict; Max-Age=0",
            session::SIGN_IN_COOKIE
        ),
    );
    response
}

async fn sign_out(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let form = input::form(&headers, body).await.unwrap_or_default();
    if let Err(response) = same_site(&headers, &signed, &form) {
        return *response;
    }
    if let Some(id) = session::cookie_id(&headers) {
        console.sessions.end(&id);
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    console.set_cookie(
        &mut response,
        &format!(
            "{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
            session::COOKIE
        ),
    );
    response
}

/// The account a page works in: the admin names it; a key has its own.
fn account_of(signed: &Signed, asked: Option<&str>) -> String {
    match &signed.caller {
        Caller::Admin => asked.unwrap_or("").trim().to_owned(),
        Caller::Key { account_id, .. } => account_id.to_string(),
    }
}

fn state_of(view: &KeyView) -> &'static str {
    let now = crate::authz::now_unix_ms();
    if view.exposed_time_unix_ms != 0 {
        "exposed"
    } else if !view.enabled {
        "disabled"
    } else if view.expire_time_unix_ms != 0 && view.expire_time_unix_ms <= now {
        "expired"
    } else if view.previous_secret_expire_unix_ms > now {
        "rotating"
    } else {
        "active"
    }
}

fn failed(signed: Option<&Signed>, error: ApiError) -> Response {
    let frame = signed.map(Signed::frame);
    (
        error.status,
        Html(pages::message(frame.as_ref(), "Not done", &error.message).into_string()),
    )
        .into_response()
}

/// The keys page's query: account (the admin's choice), name, state.
fn keys_query(raw: Option<&str>) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    input::query(raw, &["account", "name", "state", "sort", "role"])
}

async fn keys(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let mut query = match keys_query(raw.as_deref()) {
        Ok(query) => query,
        Err(error) => return failed(Some(&signed), error),
    };
    let account = account_of(&signed, query.get("account").map(String::as_str));
    let name = query.remove("name").unwrap_or_default();
    let state = query.remove("state").unwrap_or_default();
    let by_usage = query.remove("sort").as_deref() == Some("usage");
    let role = query.remove("role").unwrap_or_default();
    let mut rows = Vec::new();
    if !account.is_empty() {
        let (manager, caller, asked) = (
            console.api.manager.clone(),
            signed.caller.clone(),
            account.clone(),
        );
        let listed = console
            .api
            .off_workers(move || {
                manager.list(
                    &caller,
                    ListQuery {
                        account_id: asked,
                        page_size: 1000,
                        page_token: String::new(),
                    },
                )
            })
            .await;
        let (views, _) = match listed {
            Ok(listed) => listed,
            Err(error) => return failed(Some(&signed), error),
        };
        let needle = name.to_lowercase();
        let last_day = usage::last_day(&console, &signed, &account).await;
        rows = views
            .into_iter()
            .filter(|view| view.name.to_lowercase().contains(&needle))
            .filter(|view| role.is_empty() || view.roles.iter().any(|r| r.role_id == role))
            .map(|view| pages::KeyRow {
                state: state_of(&view),
                expires: pages::date(view.expire_time_unix_ms),
                last_used: pages::utc(view.last_used_unix_ms),
                last_day: last_day
                    .as_ref()
                    .map(|counts| counts.get(&view.key_id).copied().unwrap_or(0)),
                view,
            })
            .filter(|row| state.is_empty() || row.state == state)
            .collect();
        if by_usage {
            rows.sort_by_key(|row| std::cmp::Reverse(row.last_day));
        }
    }
    let is_admin = matches!(signed.caller, Caller::Admin);
    html(pages::keys(
        &signed.frame(),
        &account,
        is_admin,
        (&name, &state, &role),
        &rows,
    ))
}

async fn new_key(
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
    let form = KeyForm::default();
    let offered = console.roles_in(&signed, &account).await;
    html(forms::create_page(
        &console,
        &signed,
        &account,
        &form,
        (None, &offered),
    ))
}

async fn create(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let fields = match input::form(&headers, body).await {
        Ok(fields) => fields,
        Err(error) => return failed(Some(&signed), error),
    };
    if let Err(response) = same_site(&headers, &signed, &fields) {
        return *response;
    }
    let account = account_of(&signed, forms::value(&fields, "account"));
    let form = KeyForm::read(&fields);
    let offered = console.roles_in(&signed, &account).await;
    let new_key = match form.new_key(&console, &signed, &account) {
        Ok(new_key) => new_key,
        Err(error) => {
            return html(forms::create_page(
                &console,
                &signed,
                &account,
                &form,
                (Some(&error), &offered),
            ))
        }
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.create(&caller, new_key).await })
        .await
    {
        Ok((view, token)) => html(pages::token_once(
            &signed.frame(),
            "Create & View",
            &view,
            &token,
        )),
        Err(error) => (
            error.status,
            Html(
                forms::create_page(&console, &signed, &account, &form, (Some(&error), &offered))
                    .into_string(),
            ),
        )
            .into_response(),
    }
}
