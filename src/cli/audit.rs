//! `scopegate audit`: the audit trail, oldest first.

use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};

use super::client::{authorized, manage_client, rate_limits_json, status_text, ClientArgs};
use crate::grpc::pb;

/// What `scopegate audit` takes.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this account (an API key always sees only its own).
    #[arg(long, default_value = "")]
    pub account: String,
    /// Only this key.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub key: String,
    /// Only events of the last N seconds.
    #[arg(long)]
    pub since_secs: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub page_size: i32,
    #[arg(long, default_value = "")]
    pub page_token: String,
}

pub(super) async fn run(args: AuditArgs) -> Result<ExitCode, String> {
    let AuditArgs {
        client,
        account,
        key,
        since_secs,
        page_size,
        page_token,
    } = args;
    let mut manage = manage_client(&client).await?;
    let request = pb::ListAuditEventsRequest {
        account_id: account,
        key_id: key,
        start_time: since_secs.map(|secs| {
            (std::time::SystemTime::now() - std::time::Duration::from_secs(secs)).into()
        }),
        end_time: None,
        page_size,
        page_token,
    };
    let response = manage
        .list_audit_events(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    let state = |state: &Option<pb::KeyState>| {
        state.as_ref().map(|s| {
            json!({"name": s.name, "scopes": s.scopes, "enabled": s.enabled,
                       "expire_time": s.expire_time.as_ref().map(|t| t.to_string()),
                       "rate_limits": rate_limits_json(&s.rate_limits)})
        })
    };
    if client.json {
        let events: Vec<Value> = response
            .events
            .iter()
            .map(|e| {
                json!({"time": e.time.as_ref().map(|t| t.to_string()), "actor": e.actor,
                           "actor_account_id": e.actor_account_id, "action": e.action,
                           "key_id": e.key_id, "account_id": e.account_id,
                           "before": state(&e.before), "after": state(&e.after)})
            })
            .collect();
        println!(
            "{}",
            json!({"events": events, "next_page_token": response.next_page_token})
        );
    } else {
        println!(
            "{:<24}  {:<8} {:<22}  {:<16} BY",
            "TIME", "ACTION", "KEY ID", "ACCOUNT"
        );
        for event in &response.events {
            let time = event
                .time
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default();
            println!(
                "{:<24}  {:<8} {:<22}  {:<16} {}",
                time, event.action, event.key_id, event.account_id, event.actor
            );
        }
        if !response.next_page_token.is_empty() {
            println!("\nmore: --page-token {}", response.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}
