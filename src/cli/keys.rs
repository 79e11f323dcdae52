//! `scopegate keys`: create, show, list, change, rotate and delete keys.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{
    authorized, key_json, manage_client, print_keys, print_one_or_json, print_token, status_text,
    ClientArgs,
};
use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints its token once.
    ///
    /// Example: scopegate keys create --account acme --name mailer --scope mail.send --grant stats=read
    Create(CreateArgs),
    /// A new secret for a key (same id, scopes, name, metadata); prints the
    /// new token once. The old secret keeps working for --overlap-secs.
    ///
    /// Example: scopegate keys rotate qL0w1cT9Rk2tqc8z3mE1aA --overlap-secs 3600
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
        /// Key id (ids may begin with `-`; that is fine here).
        #[arg(allow_hyphen_values = true)]
        key_id: String,
        /// How long the previous secret keeps working (0: it stops now).
        #[arg(long, default_value_t = 0)]
        overlap_secs: u64,
    },
    /// Show a key.
    ///
    /// Example: scopegate keys get qL0w1cT9Rk2tqc8z3mE1aA
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// Key id (ids may begin with `-`; that is fine here).
        #[arg(allow_hyphen_values = true)]
        key_id: String,
    },
    /// List keys, ordered by id.
    ///
    /// Example: scopegate keys list --account acme --page-size 20
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Account to list (the admin may omit it to list all).
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Rename a key and/or replace its scopes; takes effect at once.
    ///
    /// Example: scopegate keys update qL0w1cT9Rk2tqc8z3mE1aA --scope mail.send --scope stats.read
    Update(UpdateArgs),
    /// Set, add to or take from a key's credits (atomic with the requests
    /// spending them); prints what is left.
    ///
    /// Example: scopegate keys credits qL0w1cT9Rk2tqc8z3mE1aA --increment 1000
    Credits {
        #[command(flatten)]
        client: ClientArgs,
        /// Key id (ids may begin with `-`; that is fine here).
        #[arg(allow_hyphen_values = true)]
        key_id: String,
        #[command(flatten)]
        op: CreditOpArgs,
    },
    /// Report leaked tokens (admin only): each that is a key's current or
    /// previous secret marks the key exposed and disables, deletes or only
    /// marks it (serve --leak-action). For GitGuardian, TruffleHog or an
    /// internal scanner; GitHub reports on its own (POST /secret-scanning/github).
    ///
    /// Example: trufflehog … | jq -r .Raw | scopegate keys report-leak --url "$WHERE" --source trufflehog
    ReportLeak(super::leaks::ReportLeakArgs),
    /// Delete a key; its token stops working at once.
    ///
    /// Example: scopegate keys delete qL0w1cT9Rk2tqc8z3mE1aA
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// Key id (ids may begin with `-`; that is fine here).
        #[arg(allow_hyphen_values = true)]
        key_id: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Account that owns the key (required for the admin).
    #[arg(long, default_value = "")]
    account: String,
    #[arg(long)]
    name: String,
    /// A scope, e.g. mail.send (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// RESOURCE=read|write|full, e.g. marketing_campaigns=full (repeatable).
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<pb::Grant>,
    /// A role of the account, by name or id (repeatable): the key may also
    /// do what it grants (`scopegate roles list`); --scope may then be left out.
    #[arg(long = "role")]
    roles: Vec<String>,
    #[command(flatten)]
    terms: TermsArgs,
    /// Makes a retry safe: run the same command again with the same id
    /// (within 24 h) and it prints the first key and token instead of
    /// making a second key. Use a fresh random value per key, e.g.
    /// `--request-id "$(cat /proc/sys/kernel/random/uuid)"`.
    #[arg(long, default_value = "")]
    request_id: String,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// Key id (ids may begin with `-`; that is fine here).
    #[arg(allow_hyphen_values = true)]
    pub(super) key_id: String,
    #[arg(long)]
    name: Option<String>,
    /// Replaces all scopes (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// RESOURCE=read|write|full (repeatable); with --scope, the union.
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<pb::Grant>,
    /// Replaces the key's roles, by name or id (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Remove every role from the key.
    #[arg(long, conflicts_with = "roles")]
    no_roles: bool,
    #[command(flatten)]
    terms: TermsArgs,
    /// Enable the key.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Disable the key: Check answers DISABLED until it is enabled again.
    #[arg(long)]
    disable: bool,
    /// Remove the expiry.
    #[arg(long, conflicts_with = "expires_in_secs")]
    no_expiry: bool,
    /// Remove the address allowlist.
    #[arg(long, conflicts_with = "cidrs")]
    no_cidrs: bool,
    /// Remove the metadata.
    #[arg(long, conflicts_with = "metadata")]
    no_metadata: bool,
    /// Remove every rate limit.
    #[arg(long, conflicts_with_all = ["limits", "account_limits"])]
    no_limits: bool,
    /// Remove the credits: the key may spend without limit.
    #[arg(long, conflicts_with = "credits")]
    unlimited: bool,
}

/// One of `--set`, `--increment`, `--decrement`.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct CreditOpArgs {
    #[arg(long)]
    set: Option<u64>,
    #[arg(long)]
    increment: Option<u64>,
    /// (never below 0)
    #[arg(long)]
    decrement: Option<u64>,
}

/// Lifecycle options of `keys create` and `keys update`.
#[derive(Args, Debug)]
pub struct TermsArgs {
    /// The key stops working this many seconds from now.
    #[arg(long)]
    expires_in_secs: Option<u64>,
    /// An address range the key may be used from, e.g. 203.0.113.0/24 or
    /// 2001:db8::/32 (repeatable; update: replaces the list).
    #[arg(long = "cidr")]
    cidrs: Vec<String>,
    /// KEY=VALUE metadata returned with every allowed check (repeatable;
    /// update: replaces the map).
    #[arg(long = "meta", value_parser = parse_meta)]
    metadata: Vec<(String, String)>,
    /// Every scope you hold except billing, plus any --scope/--grant (an
    /// explicit choice: no scopes never means everything).
    #[arg(long)]
    all_my_scopes_except_billing: bool,
    /// A rate limit on this key: NAME=COUNT/WINDOW[:SCOPE,...], e.g.
    /// default=600/minute or send=100/second:mail.send (only requests that
    /// need mail.send count). Windows: second, minute, hour, day, or 10s,
    /// 5m, 2h, 7d. Repeatable; update: replaces the list.
    #[arg(long = "limit", value_parser = parse_limit)]
    limits: Vec<pb::RateLimit>,
    /// A rate limit shared by every key of the account that carries one of
    /// this name (same form as --limit).
    #[arg(long = "account-limit", value_parser = parse_account_limit)]
    account_limits: Vec<pb::RateLimit>,
    /// Requests the key may make (each costs 1, or its route's `cost`);
    /// update: the balance starts again from this. Unset: unlimited.
    #[arg(long)]
    credits: Option<u64>,
    /// With --credits: AMOUNT/daily, or AMOUNT/monthly:DAY (1 to 31; a
    /// shorter month's last day): the balance is set back to AMOUNT then.
    #[arg(long, requires = "credits", value_parser = parse_refill)]
    refill: Option<pb::Refill>,
}

fn parse_refill(text: &str) -> Result<pb::Refill, String> {
    let shape = || format!("`{text}` is not AMOUNT/daily or AMOUNT/monthly:DAY");
    let (amount, period) = text.split_once('/').ok_or_else(shape)?;
    let amount = amount.parse::<u64>().map_err(|_| shape())?;
    let (interval, day) = match period.split_once(':') {
        Some((interval, day)) => (interval, day.parse::<u32>().map_err(|_| shape())?),
        None => (period, 0),
    };
    let refill =
        crate::credits::Refill::new(amount, interval, day).map_err(|error| error.to_string())?;
    Ok(pb::Refill {
        amount: refill.amount,
        interval: refill.interval.name().to_owned(),
        day_of_month: u32::from(refill.day_of_month),
    })
}

impl TermsArgs {
    fn credits(&mut self) -> Option<pb::Credits> {
        self.credits.map(|remaining| pb::Credits {
            remaining,
            refill: self.refill.take(),
        })
    }

    fn rate_limits(&mut self) -> Vec<pb::RateLimit> {
        let mut limits = std::mem::take(&mut self.limits);
        limits.append(&mut self.account_limits);
        limits
    }

    fn expire_time(&self) -> Option<prost_types::Timestamp> {
        self.expires_in_secs.map(|secs| {
            prost_types::Timestamp::from(
                std::time::SystemTime::now() + std::time::Duration::from_secs(secs),
            )
        })
    }
}

fn parse_limit(text: &str) -> Result<pb::RateLimit, String> {
    limit_to_pb(crate::ratelimit::RateLimit::parse(text, false)?)
}

fn parse_account_limit(text: &str) -> Result<pb::RateLimit, String> {
    limit_to_pb(crate::ratelimit::RateLimit::parse(text, true)?)
}

fn limit_to_pb(limit: crate::ratelimit::RateLimit) -> Result<pb::RateLimit, String> {
    Ok(pb::RateLimit {
        window: Some(prost_types::Duration {
            seconds: limit.window_secs as i64,
            nanos: 0,
        }),
        name: limit.name,
        limit: limit.limit,
        scopes: limit.scopes,
        account: limit.account,
    })
}

pub(super) fn parse_meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

pub(super) fn parse_grant(text: &str) -> Result<pb::Grant, String> {
    let (resource, level) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not RESOURCE=read|write|full"))?;
    let access = match level.to_ascii_lowercase().as_str() {
        "read" => pb::Access::Read,
        "write" => pb::Access::Write,
        "full" => pb::Access::Full,
        other => return Err(format!("access `{other}` is not read, write or full")),
    };
    Ok(pb::Grant {
        resource: resource.to_owned(),
        access: access as i32,
    })
}

pub(super) async fn run(command: KeysCommand) -> Result<ExitCode, String> {
    match command {
        KeysCommand::Create(args) => create(args).await?,
        KeysCommand::Get { client, key_id } => get(client, key_id).await?,
        KeysCommand::List {
            client,
            account,
            page_size,
            page_token,
        } => list(client, account, page_size, page_token).await?,
        KeysCommand::Update(args) => update(args).await?,
        KeysCommand::Rotate {
            client,
            key_id,
            overlap_secs,
        } => rotate(client, key_id, overlap_secs).await?,
        KeysCommand::Delete { client, key_id } => delete(client, key_id).await?,
        KeysCommand::Credits { client, key_id, op } => credits(client, key_id, op).await?,
        KeysCommand::ReportLeak(args) => return super::leaks::report_leak(args).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(args: CreateArgs) -> Result<(), String> {
    let CreateArgs {
        client,
        account,
        name,
        scopes,
        grants,
        roles,
        mut terms,
        request_id,
    } = args;
    let request = pb::CreateKeyRequest {
        role_ids: roles,
        credits: terms.credits(),
        rate_limits: terms.rate_limits(),
        request_id,
        account_id: account,
        name,
        scopes,
        grants,
        expire_time: terms.expire_time(),
        not_before: None,
        allowed_cidrs: terms.cidrs,
        metadata: terms.metadata.into_iter().collect(),
        all_my_scopes_except_billing: terms.all_my_scopes_except_billing,
    };
    let response = manage_client(&client)
        .await?
        .create_key(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    print_token(&client, response);
    Ok(())
}

async fn credits(client: ClientArgs, key_id: String, op: CreditOpArgs) -> Result<(), String> {
    let (op, amount) = match (op.set, op.increment, op.decrement) {
        (Some(amount), _, _) => ("set", amount),
        (_, Some(amount), _) => ("increment", amount),
        (_, _, Some(amount)) => ("decrement", amount),
        _ => return Err("give --set, --increment or --decrement".into()),
    };
    let request = pb::UpdateCreditsRequest {
        key_id,
        op: op.into(),
        amount,
    };
    let response = manage_client(&client)
        .await?
        .update_credits(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    if client.json {
        println!("{}", json!({"remaining": response.remaining}));
    } else {
        println!("{} credits left", response.remaining);
    }
    Ok(())
}

async fn get(client: ClientArgs, key_id: String) -> Result<(), String> {
    let key = manage_client(&client)
        .await?
        .get_key(authorized(&client, pb::GetKeyRequest { key_id })?)
        .await
        .map_err(status_text)?
        .into_inner();
    print_one_or_json(&client, key);
    Ok(())
}

async fn list(
    client: ClientArgs,
    account: String,
    page_size: i32,
    page_token: String,
) -> Result<(), String> {
    let request = pb::ListKeysRequest {
        account_id: account,
        page_size,
        page_token,
    };
    let response = manage_client(&client)
        .await?
        .list_keys(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    if client.json {
        let keys: Vec<Value> = response.keys.iter().map(key_json).collect();
        println!(
            "{}",
            json!({"keys": keys, "next_page_token": response.next_page_token})
        );
    } else {
        print_keys(&response.keys);
        if !response.next_page_token.is_empty() {
            println!("\nmore: --page-token {}", response.next_page_token);
        }
    }
    Ok(())
}

async fn update(args: UpdateArgs) -> Result<(), String> {
    let UpdateArgs {
        client,
        key_id,
        name,
        scopes,
        grants,
        terms,
        enable,
        disable,
        no_expiry,
        no_cidrs,
        no_metadata,
        no_limits,
        unlimited,
        roles,
        no_roles,
    } = args;
    let mut terms = terms;
    let limits = terms.rate_limits();
    let credits = terms.credits();
    let request = pb::UpdateKeyRequest {
        role_ids: (no_roles || !roles.is_empty()).then_some(pb::StringList { values: roles }),
        credits: (unlimited || credits.is_some()).then_some(pb::CreditsChange { credits }),
        rate_limits: (no_limits || !limits.is_empty()).then_some(pb::RateLimitList { limits }),
        expire_time: terms.expire_time(),
        all_my_scopes_except_billing: terms.all_my_scopes_except_billing,
        key_id,
        name,
        scopes,
        grants,
        enabled: (enable || disable).then_some(enable),
        clear_expire_time: no_expiry,
        not_before: None,
        clear_not_before: false,
        allowed_cidrs: (no_cidrs || !terms.cidrs.is_empty()).then_some(pb::StringList {
            values: terms.cidrs,
        }),
        metadata: (no_metadata || !terms.metadata.is_empty()).then_some(pb::StringMap {
            entries: terms.metadata.into_iter().collect(),
        }),
    };
    let key = manage_client(&client)
        .await?
        .update_key(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    print_one_or_json(&client, key);
    Ok(())
}

async fn rotate(client: ClientArgs, key_id: String, overlap_secs: u64) -> Result<(), String> {
    let request = pb::RotateKeyRequest {
        key_id,
        overlap: Some(prost_types::Duration {
            seconds: overlap_secs.min(i64::MAX as u64) as i64,
            nanos: 0,
        }),
    };
    let response = manage_client(&client)
        .await?
        .rotate_key(authorized(&client, request)?)
        .await
        .map_err(status_text)?
        .into_inner();
    print_token(&client, response);
    Ok(())
}

async fn delete(client: ClientArgs, key_id: String) -> Result<(), String> {
    let request = pb::DeleteKeyRequest {
        key_id: key_id.clone(),
    };
    manage_client(&client)
        .await?
        .delete_key(authorized(&client, request)?)
        .await
        .map_err(status_text)?;
    if client.json {
        println!("{}", json!({"deleted": key_id}));
    } else {
        println!("deleted {key_id}");
    }
    Ok(())
}
