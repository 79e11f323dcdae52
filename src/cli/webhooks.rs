//! `scopegate webhooks create|list|get|update|delete|rotate-secret|
//! dead-letters|redeliver`: where an account's key events are POSTed.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{authorized, manage_client, status_text, ClientArgs};
use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its signing secret (whsec_…) once.
    ///
    /// Example: scopegate webhooks create --account acme --url https://hooks.example.com/scopegate --event key.leaked --event key.deleted
    Create(CreateArgs),
    /// Show one endpoint (never its secret).
    Get(IdArgs),
    /// An account's endpoints (the admin: every account's unless --account).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "")]
        account: String,
    },
    /// Change an endpoint's URL, description, event types or state.
    ///
    /// Example: scopegate webhooks update wh_0123… --disable
    Update(UpdateArgs),
    /// Delete an endpoint, with its pending deliveries and dead letters.
    Delete(IdArgs),
    /// A new signing secret, printed once; the old one signs beside it for
    /// 24 hours, so receivers can roll.
    RotateSecret(IdArgs),
    /// Deliveries given up on after --webhook-retry-for, oldest first.
    DeadLetters(IdArgs),
    /// Queue dead letters again (all, or one with --event-id).
    Redeliver {
        #[command(flatten)]
        client: ClientArgs,
        webhook_id: String,
        #[arg(long, default_value = "")]
        event_id: String,
    },
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    client: ClientArgs,
    webhook_id: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Account whose events go there (required for the admin).
    #[arg(long, default_value = "")]
    account: String,
    /// http:// or https:// (private addresses need the server's
    /// --webhook-allow-private).
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "")]
    description: String,
    /// An event type to send, e.g. key.leaked (repeatable; none: every type).
    #[arg(long = "event")]
    events: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    client: ClientArgs,
    webhook_id: String,
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Replaces the event types (repeatable).
    #[arg(long = "event")]
    events: Vec<String>,
    /// Send every event type again.
    #[arg(long, conflicts_with = "events")]
    all_events: bool,
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    #[arg(long)]
    enable: bool,
}

pub(super) async fn run(command: WebhooksCommand) -> Result<ExitCode, String> {
    match command {
        WebhooksCommand::Create(args) => {
            let request = pb::CreateWebhookRequest {
                account_id: args.account,
                url: args.url,
                description: args.description,
                event_types: args.events,
            };
            let hook = manage_client(&args.client)
                .await?
                .create_webhook(authorized(&args.client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_webhooks(&args.client, &[hook], false);
        }
        WebhooksCommand::Get(IdArgs { client, webhook_id }) => {
            let hook = manage_client(&client)
                .await?
                .get_webhook(authorized(&client, pb::GetWebhookRequest { webhook_id })?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_webhooks(&client, &[hook], false);
        }
        WebhooksCommand::List { client, account } => {
            let request = pb::ListWebhooksRequest {
                account_id: account,
            };
            let hooks = manage_client(&client)
                .await?
                .list_webhooks(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner()
                .webhooks;
            print_webhooks(&client, &hooks, true);
        }
        WebhooksCommand::Update(args) => update(args).await?,
        WebhooksCommand::Delete(IdArgs { client, webhook_id }) => {
            manage_client(&client)
                .await?
                .delete_webhook(authorized(&client, pb::GetWebhookRequest { webhook_id })?)
                .await
                .map_err(status_text)?;
            print_value(&client, json!({"deleted": true}), "deleted");
        }
        other => secrets_and_dead_letters(other).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Rotation and the deliveries given up on.
async fn secrets_and_dead_letters(command: WebhooksCommand) -> Result<(), String> {
    match command {
        WebhooksCommand::RotateSecret(IdArgs { client, webhook_id }) => {
            let request = pb::GetWebhookRequest { webhook_id };
            let hook = manage_client(&client)
                .await?
                .rotate_webhook_secret(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_webhooks(&client, &[hook], false);
        }
        WebhooksCommand::DeadLetters(IdArgs { client, webhook_id }) => {
            let request = pb::GetWebhookRequest { webhook_id };
            let dead = manage_client(&client)
                .await?
                .list_dead_letters(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner()
                .dead_letters;
            print_dead_letters(&client, &dead);
        }
        WebhooksCommand::Redeliver {
            client,
            webhook_id,
            event_id,
        } => {
            let request = pb::RedeliverRequest {
                webhook_id,
                event_id,
            };
            let moved = manage_client(&client)
                .await?
                .redeliver(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner()
                .redelivered;
            print_value(
                &client,
                json!({"redelivered": moved}),
                &format!("{moved} queued again"),
            );
        }
        _ => unreachable!("run handles the other commands"),
    }
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let event_types = match (args.all_events, args.events.is_empty()) {
        (true, _) => Some(pb::StringList { values: Vec::new() }),
        (false, false) => Some(pb::StringList {
            values: args.events,
        }),
        (false, true) => None,
    };
    let request = pb::UpdateWebhookRequest {
        webhook_id: args.webhook_id,
        url: args.url,
        description: args.description,
        event_types,
        enabled: match (args.enable, args.disable) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    };
    let hook = manage_client(&args.client)
        .await?
        .update_webhook(authorized(&args.client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    print_webhooks(&args.client, &[hook], false);
    Ok(())
}

fn print_value(client: &ClientArgs, value: Value, text: &str) {
    if client.json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn webhook_json(hook: &pb::Webhook) -> Value {
    let mut shown = json!({
        "webhook_id": hook.webhook_id, "account_id": hook.account_id, "url": hook.url,
        "description": hook.description, "event_types": hook.event_types,
        "enabled": hook.enabled,
        "create_time": hook.create_time.as_ref().map(|t| t.to_string()),
        "update_time": hook.update_time.as_ref().map(|t| t.to_string()),
    });
    if !hook.secret.is_empty() {
        shown["secret"] = json!(hook.secret);
    }
    shown
}

fn print_webhooks(client: &ClientArgs, hooks: &[pb::Webhook], list: bool) {
    if client.json {
        let hooks: Vec<Value> = hooks.iter().map(webhook_json).collect();
        match (list, hooks.as_slice()) {
            (false, [hook]) => println!("{hook}"),
            _ => println!("{}", json!({ "webhooks": hooks })),
        }
        return;
    }
    println!(
        "{:<27}  {:<16} {:<8} {:<40} EVENTS",
        "WEBHOOK ID", "ACCOUNT", "STATE", "URL"
    );
    for hook in hooks {
        let events = if hook.event_types.is_empty() {
            "all".to_owned()
        } else {
            hook.event_types.join(",")
        };
        let state = if hook.enabled { "enabled" } else { "disabled" };
        println!(
            "{:<27}  {:<16} {:<8} {:<40} {events}",
            hook.webhook_id, hook.account_id, state, hook.url
        );
    }
    for hook in hooks.iter().filter(|hook| !hook.secret.is_empty()) {
        println!(
            "\nSigning secret of {} (shown once; verify deliveries with it):\n{}",
            hook.webhook_id, hook.secret
        );
    }
}

fn print_dead_letters(client: &ClientArgs, dead: &[pb::DeadLetter]) {
    if client.json {
        let dead: Vec<Value> = dead
            .iter()
            .map(|letter| {
                json!({
                    "event_id": letter.event_id, "type": letter.r#type,
                    "attempts": letter.attempts, "last_status": letter.last_status,
                    "last_error": letter.last_error,
                    "queued_time": letter.queued_time.as_ref().map(|t| t.to_string()),
                    "payload": serde_json::from_str::<Value>(&letter.payload).unwrap_or_default(),
                })
            })
            .collect();
        println!("{}", json!({ "dead_letters": dead }));
        return;
    }
    println!(
        "{:<28}  {:<22} {:>8}  LAST ERROR",
        "EVENT ID", "TYPE", "ATTEMPTS"
    );
    for letter in dead {
        println!(
            "{:<28}  {:<22} {:>8}  {}",
            letter.event_id, letter.r#type, letter.attempts, letter.last_error
        );
    }
}
