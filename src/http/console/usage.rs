//! Usage in the console: a key's last 24 hours (by hour) and 30 days (by
//! day) as charts on its page; an account's page with its 30 days and its
//! busiest keys; the keys list's "last 24 h" counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use maud::{html, Markup};

use super::{account_of, chart, failed, html, input, pages, signed_in, Console, Shared, Signed};
use crate::manage::UsageQuery;
use crate::stats::{Point, RangeQuery};

const DAY: i64 = 86_400;

fn now() -> i64 {
    crate::authz::now_unix_ms() / 1000
}

fn date(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map_or_else(String::new, |time| time.format("%Y-%m-%d").to_string())
}

/// `13:00` of an hour's point, `12-01` of a day's.
fn short(point: &Point) -> String {
    match point.date.split_once('T') {
        Some((_, time)) => time[..5].to_owned(),
        None => point.date[5..].to_owned(),
    }
}

/// The two charts of one key (or, `key` `None`, of an account): or why
/// there are none (usage off, its book away).
pub(super) async fn charts(
    console: &Console,
    signed: &Signed,
    account: &str,
    key: Option<&str>,
) -> Markup {
    let since = (now() - 23 * 3_600).to_string();
    let hours = UsageQuery {
        key_id: key,
        account_id: account,
        range: RangeQuery {
            aggregated_by: Some("hour"),
            start_time: Some(&since),
            ..RangeQuery::default()
        },
        ..UsageQuery::default()
    };
    let first_day = date(now() - 29 * DAY);
    let days = UsageQuery {
        range: RangeQuery {
            start_date: Some(&first_day),
            ..RangeQuery::default()
        },
        ..UsageQuery {
            key_id: key,
            account_id: account,
            ..UsageQuery::default()
        }
    };
    let manager = &console.api.manager;
    let (hours, days) = (
        manager.usage(&signed.caller, hours).await,
        manager.usage(&signed.caller, days).await,
    );
    match (hours, days) {
        (Ok(hours), Ok(days)) => html! {
            (chart::bars("usage-hours", "Last 24 hours, by hour (UTC)", &hours.points, short))
            (chart::bars("usage-days", "Last 30 days, by day (UTC)", &days.points, short))
            @if hours.partial { p.hint { "This sidecar's decisions only (no shared usage Redis)." } }
        },
        (Err(error), _) | (_, Err(error)) => {
            html! { p.hint #usage-unavailable { (error.to_string()) } }
        }
    }
}

/// Decisions per key of `account` in the last 24 hours (empty when usage
/// cannot be read: the list still shows).
pub(super) async fn last_day(
    console: &Console,
    signed: &Signed,
    account: &str,
) -> Option<BTreeMap<String, u64>> {
    console
        .api
        .manager
        .recent_usage(&signed.caller, account, 24)
        .await
        .ok()
}

/// `/console/usage?account=…`: an account's 30 days and its busiest keys.
pub(super) async fn account_page(
    State(console): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let signed = match signed_in(&console, &headers, peer) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let query = match input::query(raw.as_deref(), &["account"]) {
        Ok(query) => query,
        Err(error) => return failed(Some(&signed), error),
    };
    let account = account_of(&signed, query.get("account").map(String::as_str));
    let mut busiest: Vec<(String, u64)> = Vec::new();
    let charts = if account.is_empty() {
        html! {}
    } else {
        let first_day = date(now() - 29 * DAY);
        let top = UsageQuery {
            account_id: &account,
            range: RangeQuery {
                start_date: Some(&first_day),
                ..RangeQuery::default()
            },
            top_keys: 10,
            ..UsageQuery::default()
        };
        if let Ok(report) = console.api.manager.usage(&signed.caller, top).await {
            let series = report
                .points
                .iter()
                .flat_map(|point| point.series.iter().skip(1));
            let mut totals: BTreeMap<String, u64> = BTreeMap::new();
            for series in series {
                *totals
                    .entry(series.name.clone().unwrap_or_default())
                    .or_default() += series.metrics.values().sum::<u64>();
            }
            busiest = totals.into_iter().collect();
            busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        }
        charts(&console, &signed, &account, None).await
    };
    let is_admin = matches!(signed.caller, crate::manage::Caller::Admin);
    html(pages::page(
        "Usage",
        Some(&signed.frame()),
        html! {
            @if is_admin {
                form.filters method="get" action="/console/usage" {
                    label for="account" { "Account" }
                    input #account name="account" value=(account) required;
                    button type="submit" { "Show" }
                }
            }
            @if !account.is_empty() {
                p { a href=(format!("/console/keys?account={}", pages::url(&account))) { "Keys of " (account) } }
                (charts)
                h2 { "Busiest keys, last 30 days" }
                table #top-keys {
                    thead { tr { th { "Key" } th { "Decisions" } } }
                    tbody {
                        @for (key, total) in &busiest {
                            tr { td { a href=(format!("/console/keys/{key}")) { code { (key) } } } td { (total) } }
                        }
                        @if busiest.is_empty() { tr { td colspan="2" { "No decisions." } } }
                    }
                }
            }
        },
    ))
}
