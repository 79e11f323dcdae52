//! `scopegate scopes`: the catalog, and the caller's access to each resource.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::client::{access_name, authorized, manage_client, status_text, ClientArgs};
use crate::grpc::pb;

pub(super) async fn run(client: ClientArgs) -> Result<ExitCode, String> {
    let mut manage = manage_client(&client).await?;
    let response = manage
        .list_scopes(authorized(&client, pb::ListScopesRequest {})?)
        .await
        .map_err(status_text)?
        .into_inner();
    if client.json {
        let resources: Vec<Value> = response
                .resources
                .iter()
                .map(|resource| {
                    json!({
                        "resource": resource.resource, "scopes": resource.scopes,
                        "grantable": resource.grantable.iter().map(|a| access_name(*a)).collect::<Vec<_>>(),
                        "read_only": resource.read_only, "exclusive": resource.exclusive,
                        "caller_access": access_name(resource.caller_access),
                    })
                })
                .collect();
        println!(
            "{}",
            json!({"resources": resources, "caller_scopes": response.caller_scopes, "caller_is_admin": response.caller_is_admin,
                   "templates": response.templates.iter().map(|t| json!({"name": t.name, "description": t.description, "scopes": t.scopes})).collect::<Vec<_>>()})
        );
    } else {
        println!(
            "{:<40} {:<10} {:<16} SCOPES",
            "RESOURCE", "YOURS", "GRANTABLE"
        );
        for resource in &response.resources {
            let grantable: Vec<&str> = resource.grantable.iter().map(|a| access_name(*a)).collect();
            let mut flags = String::new();
            if resource.exclusive {
                flags.push_str(" (exclusive)");
            }
            println!(
                "{:<40} {:<10} {:<16} {}{}",
                resource.resource,
                access_name(resource.caller_access),
                grantable.join(","),
                resource.scopes.join(" "),
                flags
            );
        }
        println!("\nROLE TEMPLATES (scopegate roles create --template NAME)");
        for template in &response.templates {
            println!(
                "{:<24} {}: {}",
                template.name,
                template.description,
                template.scopes.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
