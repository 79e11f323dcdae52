//! `scopegate check`: may this token use these scopes? Answered by exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::{connect, status_text, ClientArgs};
use crate::grpc::pb;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The API key to check. Prefer SCOPEGATE_CHECK_TOKEN or --token-file:
    /// a token on the command line shows in `ps` and shell history.
    #[arg(long, env = "SCOPEGATE_CHECK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API key to check (surrounding whitespace ignored).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// A scope the key must hold (repeatable).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The address the request comes from (for keys with an allowlist).
    #[arg(long)]
    pub client_ip: Option<String>,
}

pub(super) async fn run(args: CheckArgs) -> Result<ExitCode, String> {
    let token = match (args.token, &args.token_file) {
        (Some(token), _) => token,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|text| text.trim().to_owned())
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?,
        (None, None) => {
            return Err("no token: set SCOPEGATE_CHECK_TOKEN or give --token-file FILE".into())
        }
    };
    let channel = connect(&args.client).await?;
    let response = pb::authorize_client::AuthorizeClient::new(channel)
        .check(pb::CheckRequest {
            cost: None,
            token,
            scopes: args.scopes,
            http: None,
            client_ip: args.client_ip.unwrap_or_default(),
        })
        .await
        .map_err(status_text)?
        .into_inner();
    let decision = pb::Decision::try_from(response.decision)
        .map(|d| d.as_str_name())
        .unwrap_or("UNKNOWN");
    if args.client.json {
        println!(
            "{}",
            json!({
                "allowed": response.allowed, "decision": decision,
                "key_id": response.key_id, "account_id": response.account_id,
                "missing_scopes": response.missing_scopes, "message": response.message,
            })
        );
    } else if response.allowed {
        println!(
            "ALLOWED key {} (account {})",
            response.key_id, response.account_id
        );
    } else {
        println!("DENIED {decision}: {}", response.message);
    }
    Ok(if response.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
