//! Roles in the console: an account's roles with how many keys use each, a
//! new role from the same grid as keys (or a template), one role's page to
//! regrant, rename or delete it, and the keys that use it.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::forms::value;
use super::pages::{self, grid_rows, url, Grid};
use super::{
    account_of, failed, html, keys_query, signed_in, signed_post, Console, Shared, Signed,
};
use crate::http::error::ApiError;
use crate::manage::{NewRole, RoleChange, RoleView};
use crate::scope::Access;

impl Console {
    /// The account's roles a key form offers: (id, name); none if they
    /// cannot be read (the form still works without them).
    pub(super) async fn roles_in(&self, signed: &Signed, account: &str) -> Vec<(String, String)> {
        if account.is_empty() {
            return Vec::new();
        }
        let (manager, caller, account) = (
            self.api.manager.clone(),
            signed.caller.clone(),
            account.to_owned(),
        );
        self.api
            .off_workers(move || manager.list_roles(&caller, &account))
            .await
            .map(|roles| {
                roles
                    .into_iter()
                    .map(|role| (role.role_id, role.name))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The grants a role form chose on the grid (levels and single scopes).
fn chosen(fields: &[(String, String)]) -> (Vec<(String, Access)>, Vec<String>) {
    let mut grants = Vec::new();
    let mut scopes = Vec::new();
    for (field, chosen) in fields {
        if let Some(resource) = field.strip_prefix("access.") {
            let level = match chosen.as_str() {
                "read" => Access::Read,
                "write" => Access::Write,
                "full" => Access::Full,
                _ => continue,
            };
            grants.push((resource.to_owned(), level));
        } else if field == "scope" {
            scopes.push(chosen.clone());
        }
    }
    (grants, scopes)
}

fn role_form(
    console: &Console,
    signed: &Signed,
    action: &str,
    role: Option<&RoleView>,
    error: Option<&ApiError>,
) -> Markup {
    let view = console.api.manager.scopes(&signed.caller);
    let held: Vec<(String, Access)> = role.map(|role| role.access.clone()).unwrap_or_default();
    let levels = |resource: &str| {
        held.iter()
            .find(|(name, _)| name == resource)
            .map_or(Access::NoAccess, |(_, access)| *access)
    };
    let billing = role.is_some_and(|role| matches!(role.kind, crate::scope::KeyKind::Billing));
    // Single scopes only where a resource is partly granted (its level Custom).
    let custom: Vec<&String> = held
        .iter()
        .filter(|(_, access)| matches!(access, Access::Custom))
        .map(|(resource, _)| resource)
        .collect();
    let chosen_scopes: Vec<String> = role
        .map(|role| role.scopes.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|scope| {
            custom
                .iter()
                .any(|resource| scope.starts_with(&format!("{resource}.")))
        })
        .collect();
    let grid = Grid {
        resources: &view.resources,
        caller_is_admin: view.caller_is_admin,
        caller_scopes: &view.caller_scopes,
        billing,
        levels: &levels,
        chosen_scopes: &chosen_scopes,
    };
    html! {
        form.key.role method="post" action=(action) {
            input type="hidden" name="csrf" value=(signed.csrf);
            @if let Some(error) = error { p.error role="alert" { (error.message) } }
            label for="role-name" { "Name" }
            input #role-name name="name" value=(role.map_or("", |role| role.name.as_str())) required;
            label for="role-description" { "Description" }
            input #role-description name="description" value=(role.map_or("", |role| role.description.as_str()));
            @if role.is_none() {
                label for="template" { "From a template (instead of the grid)" }
                select #template name="template" {
                    option value="" { "none: the grid below" }
                    @for (name, description, _) in &view.templates {
                        option value=(name) { (name) ": " (description) }
                    }
                }
            }
            p.hint { "A role holds general or billing scopes, never both." }
            div.grid.general { (grid_rows(&grid, false)) }
            div.grid.billing { (grid_rows(&grid, true)) }
            button type="submit" { @if role.is_some() { "Save role" } @else { "Create role" } }
        }
    }
}

fn list_page(
    console: &Console,
    signed: &Signed,
    account: &str,
    roles: &[RoleView],
    error: Option<&ApiError>,
) -> Markup {
    let is_admin = matches!(signed.caller, crate::manage::Caller::Admin);
    let action = format!("/console/roles?account={}", url(account));
    pages::page(
        &format!("Roles of {account}"),
        Some(&signed.frame()),
        html! {
            @if is_admin {
                form.filters method="get" action="/console/roles" {
                    label for="account" { "Account" }
                    input #account name="account" value=(account) required;
                    button type="submit" { "Show" }
                }
            }
            table #roles {
                thead { tr { th { "Name" } th { "ID" } th { "Scopes" } th { "Keys" } } }
                tbody {
                    @for role in roles {
                        tr {
                            td { a href=(format!("/console/roles/{}", role.role_id)) { (role.name) } }
                            td { code { (role.role_id) } }
                            td { (role.scopes.join(", ")) }
                            td.key-count { (role.key_count) }
                        }
                    }
                    @if roles.is_empty() { tr { td colspan="4" { "No roles." } } }
                }
            }
            @if !account.is_empty() {
                h2 { "New role" }
                (role_form(console, signed, &action, None, error))
            }
        },
    )
}

async fn roles_of(
    console: &Console,
    signed: &Signed,
    account: &str,
) -> Result<Vec<RoleView>, ApiError> {
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
        .off_workers(move || manager.list_roles(&caller, &account))
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
    match roles_of(&console, &signed, &account).await {
        Ok(roles) => html(list_page(&console, &signed, &account, &roles, None)),
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
    let template = value(&fields, "template").unwrap_or("").to_owned();
    let (grants, scopes) = if template.is_empty() {
        chosen(&fields)
    } else {
        (Vec::new(), Vec::new())
    };
    let new_role = NewRole {
        account_id: account.clone(),
        name: value(&fields, "name").unwrap_or("").to_owned(),
        description: value(&fields, "description").unwrap_or("").to_owned(),
        scopes,
        grants,
        template,
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.create_role(&caller, new_role).await })
        .await
    {
        Ok(view) => Redirect::to(&format!("/console/roles/{}", view.role_id)).into_response(),
        Err(error) => {
            let roles = roles_of(&console, &signed, &account)
                .await
                .unwrap_or_default();
            let status = error.status;
            (
                status,
                html(list_page(&console, &signed, &account, &roles, Some(&error))),
            )
                .into_response()
        }
    }
}

async fn visible(console: &Console, signed: &Signed, id: String) -> Result<RoleView, ApiError> {
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    console
        .api
        .off_workers(move || manager.get_role(&caller, &id))
        .await
}

fn role_page(
    console: &Console,
    signed: &Signed,
    role: &RoleView,
    error: Option<&ApiError>,
) -> Markup {
    let action = format!("/console/roles/{}", role.role_id);
    pages::page(
        &format!("Role {}", role.name),
        Some(&signed.frame()),
        html! {
            dl {
                dt { "ID" } dd { code { (role.role_id) } }
                dt { "Account" } dd { (role.account_id) }
                dt { "Scopes" } dd #role-scopes { (role.scopes.join(", ")) }
                dt { "Keys" }
                dd #role-keys {
                    (role.key_count) " "
                    a href=(format!("/console/keys?account={}&role={}", url(&role.account_id), url(&role.role_id))) { "(show them)" }
                }
            }
            p.hint { "A change here reaches every key with this role at once." }
            (role_form(console, signed, &action, Some(role), error))
            h2 { "Delete" }
            form method="post" action=(format!("/console/roles/{}/delete", role.role_id)) {
                input type="hidden" name="csrf" value=(signed.csrf);
                p { "Its " (role.key_count) " keys lose what it grants, at once." }
                button.danger type="submit" { "Delete role" }
            }
        },
    )
}

pub(super) async fn role(
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
        Ok(role) => html(role_page(&console, &signed, &role, None)),
        Err(error) => failed(Some(&signed), error),
    }
}

pub(super) async fn edit(
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
    let current = match visible(&console, &signed, id.clone()).await {
        Ok(role) => role,
        Err(error) => return failed(Some(&signed), error),
    };
    let (grants, scopes) = chosen(&fields);
    let name = value(&fields, "name").unwrap_or("").to_owned();
    let description = value(&fields, "description").unwrap_or("").to_owned();
    let change = RoleChange {
        role_id: id,
        name: (name != current.name).then_some(name),
        description: (description != current.description).then_some(description),
        scopes,
        grants,
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.update_role(&caller, change).await })
        .await
    {
        Ok(role) => html(role_page(&console, &signed, &role, None)),
        Err(error) => {
            let status = error.status;
            (
                status,
                html(role_page(&console, &signed, &current, Some(&error))),
            )
                .into_response()
        }
    }
}

pub(super) async fn delete(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let (signed, _) = match signed_post(&console, &headers, peer, body).await {
        Ok(posted) => posted,
        Err(response) => return *response,
    };
    let current = match visible(&console, &signed, id.clone()).await {
        Ok(role) => role,
        Err(error) => return failed(Some(&signed), error),
    };
    let (manager, caller) = (console.api.manager.clone(), signed.caller.clone());
    match console
        .api
        .detached(async move { manager.delete_role(&caller, &id).await })
        .await
    {
        Ok(()) => Redirect::to(&format!(
            "/console/roles?account={}",
            url(&current.account_id)
        ))
        .into_response(),
        Err(error) => failed(Some(&signed), error),
    }
}
