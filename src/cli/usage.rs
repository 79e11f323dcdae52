//! `scopegate usage`: how much a key (or an account) was decided on, by
//! outcome, as a table or JSON; `scopegate usage export`: the stored cells
//! as NDJSON or CSV, for a warehouse.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::client::{authorized, manage_client, status_text, ClientArgs};
use crate::grpc::pb;
use crate::stats::parse_duration;

/// What `scopegate usage` takes.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Every stored cell (bucket, account, key, outcome, scope, count) of a
    /// range, all pages, to stdout.
    ///
    /// Example: scopegate usage export --since 7d --format csv > usage.csv
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// One key's usage.
    #[arg(long, allow_hyphen_values = true)]
    pub key: Option<String>,
    /// An account's usage (the admin names it; an API key reads its own).
    #[arg(long, default_value = "")]
    pub account: String,
    /// How far back: 90m, 24h, 30d.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// minute, hour, day, week or month. [default: hour up to 48h back, else day]
    #[arg(long)]
    pub by: Option<String>,
    /// One row per scope.
    #[arg(long)]
    pub scope: bool,
    /// The account's N busiest keys, each a row of its own.
    #[arg(long, default_value_t = 0)]
    pub top: i32,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this account (the admin may leave it out for all).
    #[arg(long, default_value = "")]
    pub account: String,
    /// How far back: 90m, 24h, 30d.
    #[arg(long)]
    pub since: String,
    /// Buckets exported: minute, hour or day.
    #[arg(long, default_value = "day")]
    pub grain: String,
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Ndjson,
    Csv,
}

pub(super) async fn run(args: UsageArgs) -> Result<ExitCode, String> {
    match args.command {
        Some(UsageCommand::Export(export)) => run_export(export).await,
        None => run_report(args.report).await,
    }
}

fn since_secs(text: &str) -> Result<i64, String> {
    parse_duration(text)
        .ok_or_else(|| format!("--since: `{text}` is not a duration (90m, 24h, 30d)"))
}

fn now() -> i64 {
    crate::authz::now_unix_ms() / 1000
}

async fn run_report(args: ReportArgs) -> Result<ExitCode, String> {
    let since = since_secs(&args.since)?;
    let by = args
        .by
        .clone()
        .unwrap_or_else(|| if since <= 48 * 3_600 { "hour" } else { "day" }.into());
    let start = now() - since;
    let by_date = matches!(by.as_str(), "day" | "week" | "month");
    let date = |at: i64| {
        chrono::DateTime::from_timestamp(at, 0)
            .map(|time| time.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    let request = pb::GetUsageRequest {
        key_id: args.key.clone().unwrap_or_default(),
        account_id: args.account.clone(),
        aggregated_by: by,
        start_date: if by_date { date(start) } else { String::new() },
        start_time: (!by_date).then_some(start),
        group_by_scope: args.scope,
        top_keys: args.top,
        ..pb::GetUsageRequest::default()
    };
    let mut manage = manage_client(&args.client).await?;
    let response = manage
        .get_usage(authorized(&args.client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    if args.client.json {
        let points: Vec<_> = response
            .points
            .iter()
            .map(|point| {
                let stats: Vec<_> = point
                    .stats
                    .iter()
                    .map(|series| json!({"type": series.r#type, "name": series.name, "metrics": series.metrics}))
                    .collect();
                json!({"date": point.date, "start_time": point.start_time, "stats": stats})
            })
            .collect();
        println!("{}", json!({"points": points, "partial": response.partial}));
    } else {
        print_table(&response);
    }
    Ok(ExitCode::SUCCESS)
}

/// A row per period and series; a column per outcome seen anywhere.
fn print_table(response: &pb::GetUsageResponse) {
    let mut outcomes: Vec<&str> = crate::stats::OUTCOMES
        .iter()
        .copied()
        .filter(|outcome| {
            response
                .points
                .iter()
                .flat_map(|point| &point.stats)
                .any(|series| series.metrics.get(*outcome).is_some_and(|count| *count > 0))
        })
        .collect();
    if outcomes.is_empty() {
        outcomes.push("allowed");
    }
    let mut header = format!("{:<22}  {:<24}  {:>9}", "PERIOD", "SERIES", "TOTAL");
    for outcome in &outcomes {
        header.push_str(&format!(
            "  {:>width$}",
            outcome.to_uppercase(),
            width = outcome.len().max(7)
        ));
    }
    println!("{header}");
    for point in &response.points {
        for series in &point.stats {
            let name = match series.r#type.as_str() {
                "" => "total".to_owned(),
                kind => format!("{kind}:{}", series.name),
            };
            let total: u64 = series.metrics.values().sum();
            let mut line = format!("{:<22}  {:<24}  {:>9}", point.date, name, total);
            for outcome in &outcomes {
                let count = series.metrics.get(*outcome).copied().unwrap_or(0);
                line.push_str(&format!(
                    "  {:>width$}",
                    count,
                    width = outcome.len().max(7)
                ));
            }
            println!("{line}");
        }
    }
    if response.partial {
        println!("\npartial: this sidecar's counts only (no shared usage Redis)");
    }
}

async fn run_export(args: ExportArgs) -> Result<ExitCode, String> {
    let start_time = now() - since_secs(&args.since)?;
    let end_time = now();
    let mut manage = manage_client(&args.client).await?;
    if let Format::Csv = args.format {
        println!("start_time,grain,account_id,key_id,outcome,scope,count");
    }
    let mut page_token = String::new();
    loop {
        let request = pb::ExportUsageRequest {
            account_id: args.account.clone(),
            grain: args.grain.clone(),
            start_time,
            end_time: Some(end_time),
            page_size: 1_000,
            page_token,
        };
        let page = manage
            .export_usage(authorized(&args.client, request)?)
            .await
            .map_err(status_text)?
            .into_inner();
        for row in &page.rows {
            match args.format {
                Format::Ndjson => println!(
                    "{}",
                    json!({"start_time": row.start_time, "grain": row.grain, "account_id": row.account_id,
                           "key_id": row.key_id, "outcome": row.outcome, "scope": row.scope, "count": row.count})
                ),
                Format::Csv => println!(
                    "{},{},{},{},{},{},{}",
                    row.start_time,
                    row.grain,
                    csv_field(&row.account_id),
                    csv_field(&row.key_id),
                    row.outcome,
                    csv_field(&row.scope),
                    row.count
                ),
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        page_token = page.next_page_token;
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or newline.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}
