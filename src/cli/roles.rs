//! `scopegate roles create|get|list|update|delete`: named grants of an
//! account that keys reference (`keys create --role NAME`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{access_name, authorized, manage_client, status_text, ClientArgs};
use super::keys::parse_grant;
use crate::grpc::pb;

#[derive(Subcommand, Debug)]
pub enum RolesCommand {
    /// Create a role: scopes and grants as for a key, or a built-in
    /// template (read-only, all-but-key-management).
    ///
    /// Example: scopegate roles create --account acme --name sender --scope mail.send
    /// Example: scopegate roles create --account acme --name viewers --template read-only
    Create(CreateRoleArgs),
    /// Show one role and how many keys reference it.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        role_id: String,
    },
    /// An account's roles, by name (the admin: every account unless --account).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "")]
        account: String,
    },
    /// Rename, describe or regrant a role: a new grant reaches every key
    /// referencing it at once.
    ///
    /// Example: scopegate roles update ROLE_ID --scope mail.send --scope stats.read
    Update(UpdateRoleArgs),
    /// Delete a role: its keys lose what it granted.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        role_id: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateRoleArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Account that owns the role (required for the admin).
    #[arg(long, default_value = "")]
    account: String,
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// A scope, e.g. mail.send (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// RESOURCE=read|write|full (repeatable).
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<pb::Grant>,
    /// A built-in template's scopes instead (see `scopegate scopes`).
    #[arg(long, default_value = "", conflicts_with_all = ["scopes", "grants"])]
    template: String,
}

#[derive(Args, Debug)]
pub struct UpdateRoleArgs {
    #[command(flatten)]
    client: ClientArgs,
    role_id: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Replaces the role's grants (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<pb::Grant>,
}

pub(super) async fn run(command: RolesCommand) -> Result<ExitCode, String> {
    match command {
        RolesCommand::Create(args) => {
            let request = pb::CreateRoleRequest {
                account_id: args.account,
                name: args.name,
                description: args.description,
                scopes: args.scopes,
                grants: args.grants,
                template: args.template,
            };
            let role = manage_client(&args.client)
                .await?
                .create_role(authorized(&args.client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_roles(&args.client, &[role], false);
        }
        RolesCommand::Get { client, role_id } => {
            let role = manage_client(&client)
                .await?
                .get_role(authorized(&client, pb::GetRoleRequest { role_id })?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_roles(&client, &[role], false);
        }
        RolesCommand::List { client, account } => {
            let roles = manage_client(&client)
                .await?
                .list_roles(authorized(
                    &client,
                    pb::ListRolesRequest {
                        account_id: account,
                    },
                )?)
                .await
                .map_err(status_text)?
                .into_inner()
                .roles;
            print_roles(&client, &roles, true);
        }
        RolesCommand::Update(args) => {
            let request = pb::UpdateRoleRequest {
                role_id: args.role_id,
                name: args.name,
                description: args.description,
                scopes: args.scopes,
                grants: args.grants,
            };
            let role = manage_client(&args.client)
                .await?
                .update_role(authorized(&args.client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_roles(&args.client, &[role], false);
        }
        RolesCommand::Delete { client, role_id } => {
            manage_client(&client)
                .await?
                .delete_role(authorized(&client, pb::DeleteRoleRequest { role_id })?)
                .await
                .map_err(status_text)?;
            if client.json {
                println!("{}", json!({"deleted": true}));
            } else {
                println!("deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn role_json(role: &pb::Role) -> Value {
    json!({
        "role_id": role.role_id, "account_id": role.account_id, "name": role.name,
        "description": role.description, "scopes": role.scopes,
        "access": role.access.iter().map(|g| json!({"resource": g.resource, "access": access_name(g.access)})).collect::<Vec<_>>(),
        "kind": pb::KeyKind::try_from(role.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
        "key_count": role.key_count,
        "create_time": role.create_time.as_ref().map(|t| t.to_string()),
        "update_time": role.update_time.as_ref().map(|t| t.to_string()),
        "created_by": role.created_by,
    })
}

fn print_roles(client: &ClientArgs, roles: &[pb::Role], list: bool) {
    if client.json {
        let roles: Vec<Value> = roles.iter().map(role_json).collect();
        match (list, roles.as_slice()) {
            (false, [role]) => println!("{role}"),
            _ => println!("{}", json!({ "roles": roles })),
        }
        return;
    }
    println!(
        "{:<27}  {:<16} {:<20} {:>5}  ACCESS",
        "ROLE ID", "ACCOUNT", "NAME", "KEYS"
    );
    for role in roles {
        let access: Vec<String> = role
            .access
            .iter()
            .map(|grant| format!("{}={}", grant.resource, access_name(grant.access)))
            .collect();
        println!(
            "{:<27}  {:<16} {:<20} {:>5}  {}",
            role.role_id,
            role.account_id,
            role.name,
            role.key_count,
            access.join(" ")
        );
    }
}
