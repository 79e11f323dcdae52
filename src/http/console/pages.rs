//! The console's HTML (maud: every value is escaped). No inline script or
//! style: the stylesheet and scripts are files under `/console/static/`, so
//! the Content-Security-Policy can say `default-src 'self'`.

use maud::{html, Markup, DOCTYPE};

use crate::manage::{KeyView, ResourceView};
use crate::scope::Access;
use crate::store::AuditEvent;

/// What every signed-in page knows.
pub struct Frame<'a> {
    pub who: &'a str,
    pub csrf: &'a str,
}

pub fn page(title: &str, frame: Option<&Frame<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles": false}"#;
                title { (title) " · scopegate" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/htmx.min.js" defer {}
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console/keys" { "scopegate" }
                    @if let Some(frame) = frame {
                        span.who { "Signed in as " (frame.who) }
                        form method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(frame.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn sign_in(error: Option<&str>, token: &str) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            form method="post" action="/console/sign-in" {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                input type="hidden" name="csrf" value=(token);
                label for="credential" { "Admin token or API key" }
                input #credential type="password" name="credential" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
            p.hint { "An API key needs the api_keys scopes it will use. The server keeps who signed in (a key id and its secret's hash) for this session, never the credential." }
        },
    )
}

/// One row of the keys table.
pub struct KeyRow {
    pub view: KeyView,
    pub state: &'static str,
    pub expires: String,
    pub last_used: String,
    /// Decisions in the last 24 hours (`None`: usage cannot be read).
    pub last_day: Option<u64>,
}

pub fn keys(
    frame: &Frame<'_>,
    account: &str,
    is_admin: bool,
    (name, state, role): (&str, &str, &str),
    rows: &[KeyRow],
) -> Markup {
    page(
        "API keys",
        Some(frame),
        html! {
            form.filters method="get" action="/console/keys" hx-get="/console/keys" hx-target="#keys" hx-select="#keys" hx-trigger="change, keyup delay:300ms from:#name" {
                @if is_admin {
                    label for="account" { "Account" }
                    input #account name="account" value=(account) required;
                }
                label for="name" { "Name contains" }
                input #name name="name" value=(name);
                label for="state" { "State" }
                select #state name="state" {
                    @for option in ["", "active", "disabled", "expired", "rotating", "exposed"] {
                        option value=(option) selected[option == state] { @if option.is_empty() { "any" } @else { (option) } }
                    }
                }
                @if !role.is_empty() {
                    input type="hidden" name="role" value=(role);
                    span #role-filter { "with role " code { (role) } " " a href=(format!("/console/keys?account={}", url(account))) { "(any role)" } }
                }
                button type="submit" { "Show" }
            }
            @if !account.is_empty() {
                p {
                    a.button href=(format!("/console/keys/new?account={}", url(account))) { "Create API key" }
                    " "
                    a href=(format!("/console/usage?account={}", url(account))) { "Usage of " (account) }
                    " "
                    a href=(format!("/console/roles?account={}", url(account))) { "Roles of " (account) }
                    " "
                    a href=(format!("/console/webhooks?account={}", url(account))) { "Webhooks of " (account) }
                }
            }
            table #keys {
                thead { tr {
                    th { "Name" } th { "ID" } th { "Kind" } th { "State" } th { "Expires" } th { "Last used" }
                    th { a #sort-usage href=(format!("/console/keys?account={}&name={}&state={}&sort=usage", url(account), url(name), url(state))) { "Last 24 h" } }
                } }
                tbody {
                    @for row in rows {
                        tr {
                            td { a href=(format!("/console/keys/{}", row.view.key_id)) { (row.view.name) } }
                            td { code { (row.view.key_id) } }
                            td { (crate::telemetry::kind_label(row.view.kind)) }
                            td { (row.state) }
                            td { (row.expires) }
                            td { (row.last_used) }
                            td.last-day { @match row.last_day { Some(count) => (count), None => "–" } }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="7" { "No keys." } } }
                }
            }
        },
    )
}

/// The permissions grid's state for one form.
pub struct Grid<'a> {
    pub resources: &'a [ResourceView],
    /// Everything is allowed (the admin).
    pub caller_is_admin: bool,
    pub caller_scopes: &'a [String],
    pub billing: bool,
    /// Chosen level per resource.
    pub levels: &'a dyn Fn(&str) -> Access,
    pub chosen_scopes: &'a [String],
}

fn level_value(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Write => "write",
        Access::Full => "full",
        _ => "none",
    }
}

fn level_label(access: Access) -> &'static str {
    match access {
        Access::Read => "Read Access",
        Access::Write => "Write Access",
        Access::Full => "Full Access",
        _ => "No Access",
    }
}

/// Whether a caller holding `held` on a resource may grant `level`.
fn may_grant(held: Access, level: Access) -> bool {
    level == Access::NoAccess || held == Access::Full || held == level
}

pub(super) fn grid_rows(grid: &Grid<'_>, exclusive: bool) -> Markup {
    html! {
        @for resource in grid.resources.iter().filter(|r| r.exclusive == exclusive) {
            @let chosen = (grid.levels)(&resource.resource);
            @let held = if grid.caller_is_admin { Access::Full } else { resource.caller_access };
            fieldset.row {
                legend { (resource.resource) }
                @for level in std::iter::once(Access::NoAccess).chain(resource.grantable.iter().copied()) {
                    @let id = format!("level-{}-{}", resource.resource, level_value(level));
                    @let allowed = may_grant(held, level);
                    span.level {
                        input id=(id) type="radio" name=(format!("access.{}", resource.resource)) value=(level_value(level))
                            checked[chosen == level] disabled[!allowed];
                        label for=(id) title=[(!allowed).then(|| format!("you hold {} on {}", level_label(held), resource.resource))] {
                            (level_label(level))
                        }
                        @if !allowed { span.reason { "(you lack it)" } }
                    }
                }
                details {
                    summary { "individual scopes" }
                    @for scope in &resource.scopes {
                        @let id = format!("scope-{scope}");
                        @let held_scope = grid.caller_is_admin || grid.caller_scopes.contains(scope);
                        span.scope {
                            input id=(id) type="checkbox" name="scope" value=(scope)
                                checked[grid.chosen_scopes.contains(scope)] disabled[!held_scope];
                            label for=(id) { (scope) }
                        }
                    }
                }
            }
        }
    }
}

/// The create and edit form's fields (not the form element itself).
pub struct KeyFields<'a> {
    /// The account's roles: (id, name, chosen).
    pub roles: Vec<(&'a str, &'a str, bool)>,
    pub name: &'a str,
    pub expires: &'a str,
    pub cidrs: &'a str,
    pub metadata: &'a str,
    /// One limit per line.
    pub limits: &'a str,
    /// The balance (empty: unlimited) and its refill.
    pub credits: &'a str,
    pub refill: &'a str,
    /// (field, message) of the Manager's error, shown next to that field.
    pub error: Option<(&'a str, &'a str)>,
}

fn error_for(fields: &KeyFields<'_>, names: &[&str]) -> Markup {
    html! {
        @if let Some((field, message)) = fields.error {
            @if names.contains(&field) { p.error role="alert" { (message) } }
        }
    }
}

pub fn key_form(
    action: &str,
    submit: &str,
    csrf: &str,
    account: Option<&str>,
    fields: &KeyFields<'_>,
    grid: &Grid<'_>,
) -> Markup {
    html! {
        form.key method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(account) = account { input type="hidden" name="account" value=(account); }
            @if let Some((field, message)) = fields.error {
                @if !["name", "scopes", "grants", "role_ids", "expire_time", "allowed_cidrs", "metadata", "rate_limits", "credits", "credits.refill"].contains(&field) {
                    p.error role="alert" { (message) }
                }
            }
            label for="key-name" { "Name" }
            input #key-name name="name" value=(fields.name) required;
            (error_for(fields, &["name"]))
            fieldset.kind {
                legend { "Key type" }
                input #kind-general type="radio" name="kind" value="general" checked[!grid.billing];
                label for="kind-general" { "General Access" }
                input #kind-billing type="radio" name="kind" value="billing" checked[grid.billing];
                label for="kind-billing" { "Billing Access" }
                p.hint { "Billing access is a key of its own: it never shares a key with other scopes." }
            }
            (error_for(fields, &["scopes", "grants"]))
            div.grid.general { (grid_rows(grid, false)) }
            div.grid.billing { (grid_rows(grid, true)) }
            @if !fields.roles.is_empty() {
                fieldset #roles {
                    legend { "Roles (the key may also do what each grants)" }
                    @for (id, name, chosen) in &fields.roles {
                        span.scope {
                            input id=(format!("role-{id}")) type="checkbox" name="role" value=(id) checked[*chosen];
                            label for=(format!("role-{id}")) { (name) }
                        }
                    }
                }
            }
            (error_for(fields, &["role_ids"]))
            label for="expires" { "Expires on (UTC date, empty: never)" }
            input #expires type="date" name="expires" value=(fields.expires);
            (error_for(fields, &["expire_time"]))
            label for="cidrs" { "Allowed addresses (one CIDR per line, empty: anywhere)" }
            textarea #cidrs name="cidrs" rows="3" { (fields.cidrs) }
            (error_for(fields, &["allowed_cidrs"]))
            label for="metadata" { "Metadata (KEY=VALUE per line)" }
            textarea #metadata name="metadata" rows="3" { (fields.metadata) }
            (error_for(fields, &["metadata"]))
            label for="limits" { "Rate limits (NAME=COUNT/WINDOW[:SCOPES] per line, e.g. default=600/minute; \"(account)\" at the end: shared by the account's keys)" }
            textarea #limits name="limits" rows="3" { (fields.limits) }
            (error_for(fields, &["rate_limits"]))
            label for="credits" { "Credits (requests the key may make; empty: unlimited; a change starts the balance again)" }
            input #credits name="credits" inputmode="numeric" value=(fields.credits);
            (error_for(fields, &["credits", "credits.remaining"]))
            label for="refill" { "Refill (AMOUNT/daily or AMOUNT/monthly:DAY; empty: none)" }
            input #refill name="refill" value=(fields.refill);
            (error_for(fields, &["credits.refill"]))
            button type="submit" { (submit) }
        }
    }
}

/// "Create & View": the token, this once.
pub fn token_once(frame: &Frame<'_>, title: &str, view: &KeyView, token: &str) -> Markup {
    page(
        title,
        Some(frame),
        html! {
            p.warning role="alert" { "Copy this API key now: it is shown once and never again." }
            label for="token" { "API key for " (view.name) }
            input #token type="text" readonly value=(token);
            button type="button" data-copy="#token" { "Copy" }
            p { a href=(format!("/console/keys/{}", view.key_id)) { "Done" } }
        },
    )
}

/// A key's roles and what each adds to its own scopes.
fn key_roles(view: &KeyView) -> Markup {
    html! {
        @if !view.roles.is_empty() {
            dt { "Roles" }
            dd #key-roles {
                @for role in &view.roles {
                    span.role {
                        a href=(format!("/console/roles/{}", role.role_id)) { (role.name) }
                        " adds " (if role.adds.is_empty() { "nothing of its own".to_owned() } else { role.adds.join(", ") })
                    }
                    br;
                }
            }
        }
    }
}

/// The credits form of a key with credits.
fn credits_form(frame: &Frame<'_>, view: &KeyView) -> Markup {
    html! {
        @if view.credits.is_some() {
            form.filters method="post" action=(format!("/console/keys/{}/credits", view.key_id)) {
                input type="hidden" name="csrf" value=(frame.csrf);
                label for="credit-op" { "Credits" }
                select #credit-op name="op" {
                    option value="increment" { "add" }
                    option value="decrement" { "take away" }
                    option value="set" { "set to" }
                }
                input #credit-amount name="amount" inputmode="numeric" required;
                button type="submit" { "Change credits" }
            }
        }
    }
}

pub fn key_detail(
    frame: &Frame<'_>,
    view: &KeyView,
    state: &str,
    (usage, form): (Markup, Markup),
    events: &[AuditEvent],
) -> Markup {
    let credits = view.credits.map_or_else(
        || "unlimited".to_owned(),
        |credits| match credits.refill {
            None => format!("{} left", credits.remaining),
            Some(refill) => format!("{} left; refill {}", credits.remaining, refill.text()),
        },
    );
    page(
        &format!("Key {}", view.name),
        Some(frame),
        html! {
            dl {
                dt { "ID" } dd { code { (view.key_id) } }
                dt { "Account" } dd { (view.account_id) }
                dt { "State" } dd #state { (state) }
                @if view.exposed_time_unix_ms != 0 {
                    dt { "Exposed" }
                    dd #exposed.warning { "reported leaked " (utc(view.exposed_time_unix_ms)) " at " (view.exposed_url) }
                }
                dt { "Scopes" } dd #scopes { (view.scopes.join(", ")) }
                (key_roles(view))
                dt { "Rate limits" }
                dd #rate-limits {
                    @for limit in &view.rate_limits {
                        span.limit { (limit.line()) } " "
                    }
                    @if view.rate_limits.is_empty() { "none" }
                }
                dt { "Credits" } dd #credits-left { (credits) }
                dt { "Secret" } dd { "fingerprint " code { (view.secret_fingerprint) } }
            }
            (credits_form(frame, view))
            h2 #usage { "Usage" }
            (usage)
            h2 { "Edit" }
            (form)
            h2 { "Actions" }
            form method="post" action=(format!("/console/keys/{}/rotate", view.key_id)) {
                input type="hidden" name="csrf" value=(frame.csrf);
                label for="overlap" { "Previous secret keeps working for (seconds)" }
                input #overlap type="number" name="overlap" min="0" value="0";
                button type="submit" { "Rotate" }
            }
            @let toggle = if view.enabled { "disable" } else { "enable" };
            form method="post" action=(format!("/console/keys/{}/{toggle}", view.key_id)) {
                input type="hidden" name="csrf" value=(frame.csrf);
                button type="submit" { @if view.enabled { "Disable" } @else { "Enable" } }
            }
            p { a.danger href=(format!("/console/keys/{}/delete", view.key_id)) { "Delete…" } }
            h2 { "Audit events" }
            table #audit {
                thead { tr { th { "When (UTC)" } th { "Who" } th { "Action" } th { "Name after" } } }
                tbody {
                    @for event in events.iter().rev() {
                        tr {
                            td { (utc(event.time_unix_ms)) }
                            td { (event.actor) }
                            td {
                                (event.action)
                                @if let Some(role_id) = event.role_id() {
                                    " " a href=(format!("/console/roles/{role_id}")) { "(role, " (event.keys_affected) " keys)" }
                                }
                            }
                            td { (event.after.as_ref().map_or("", |after| after.name.as_str())) }
                        }
                    }
                }
            }
        },
    )
}

pub fn confirm_delete(frame: &Frame<'_>, view: &KeyView) -> Markup {
    page(
        "Delete key",
        Some(frame),
        html! {
            p { "Delete the key " strong { (view.name) } " (" code { (view.key_id) } ")? Its token stops working at once; this cannot be undone." }
            form method="post" action=(format!("/console/keys/{}/delete", view.key_id)) {
                input type="hidden" name="csrf" value=(frame.csrf);
                button.danger type="submit" { "Delete " (view.name) }
            }
            p { a href=(format!("/console/keys/{}", view.key_id)) { "Cancel" } }
        },
    )
}

pub fn message(frame: Option<&Frame<'_>>, title: &str, text: &str) -> Markup {
    page(
        title,
        frame,
        html! { p role="alert" { (text) } p { a href="/console/keys" { "Back to the keys" } } },
    )
}

/// `YYYY-MM-DD HH:MM` for unix ms (UTC); empty for 0.
pub fn utc(unix_ms: i64) -> String {
    shown(unix_ms, "%Y-%m-%d %H:%M")
}

/// `YYYY-MM-DD` for unix ms (UTC); empty for 0.
pub fn date(unix_ms: i64) -> String {
    shown(unix_ms, "%Y-%m-%d")
}

fn shown(unix_ms: i64, format: &str) -> String {
    match chrono::DateTime::from_timestamp_millis(unix_ms) {
        Some(time) if unix_ms > 0 => time.format(format).to_string(),
        _ => String::new(),
    }
}

/// Unix ms of `YYYY-MM-DD` 00:00 UTC; `None` for anything else, a day
/// past its month's end (February 31) included.
pub fn parse_date(text: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(
        date.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis(),
    )
}

/// Percent-encodes a query value (all but RFC 3986's unreserved characters).
pub fn url(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for text in ["1970-01-02", "2000-02-29", "2026-11-28", "2099-12-31"] {
            assert_eq!(date(parse_date(text).unwrap()), text);
        }
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("tomorrow"), None);
    }

    /// A day past its month's end is refused, not moved into the next month.
    #[test]
    fn a_date_that_does_not_exist_is_refused() {
        for text in [
            "2026-02-31",
            "2025-02-29",
            "2026-04-31",
            "2026-00-10",
            "2026-01-32",
        ] {
            assert_eq!(parse_date(text), None, "{text}");
        }
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(parse_date("2026-12-31"), Some(1_798_675_200_000));
    }
}
