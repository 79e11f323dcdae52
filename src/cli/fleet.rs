//! `scopegate fleet import`: a standalone store copied into etcd.

use std::process::ExitCode;

use clap::Subcommand;

use super::serve::{effective_options, ServeArgs};
use crate::server;

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Copy a standalone store (offline: no server may run on it) into etcd,
    /// for fleet mode. Idempotent: keys already in etcd with the same content
    /// are skipped; a key there with other content stops the import and
    /// nothing is overwritten.
    ///
    /// Example: scopegate fleet import --data-dir /var/lib/scopegate --etcd-endpoints http://127.0.0.1:2379
    Import(ServeArgs),
}

pub(super) async fn fleet_import(args: ServeArgs) -> ExitCode {
    let result = async {
        let mut options = effective_options(args).map_err(|error| error.to_string())?;
        options.store = Some("etcd".into());
        let config = options.resolve().map_err(|error| error.to_string())?;
        let fleet = config.fleet.clone().expect("store = etcd");
        let (catalog, _) =
            server::load_catalog_and_routes(&config).map_err(|error| error.to_string())?;
        let store = crate::store::Store::open(
            &config.data_dir,
            std::sync::Arc::new(arc_swap::ArcSwap::new(catalog.clone())),
        )
        .map_err(|error| error.to_string())?;
        let exported = store.export().map_err(|error| error.to_string())?;
        let records = exported
            .keys
            .iter()
            .map(|value| crate::store::decode(&[], value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        let roles = exported
            .roles
            .iter()
            .map(|value| prost::Message::decode(value.as_ref()))
            .collect::<Result<Vec<crate::store::RoleRecord>, _>>()
            .map_err(|error| format!("a stored role is unreadable: {error}"))?;
        for role in &roles {
            crate::manage::validate_imported_role(role, &catalog)
                .map_err(|error| format!("role {}: {error}", role.name))?;
        }
        // Held to the rules restore and the API hold records to.
        for record in &records {
            crate::manage::validate_imported(record)
                .and_then(|()| crate::manage::validate_imported_scopes(record, &catalog))
                .map_err(|error| {
                    let key_id = record.key_id().map(|id| id.to_string()).unwrap_or_default();
                    format!("key {key_id}: {error}")
                })?;
        }
        crate::manage::check_account_caps(&records, config.max_keys_per_account)
            .map_err(|error| error.to_string())?;
        // The cap also counts the keys already in etcd (checked per key, in
        // the transaction that files it).
        crate::store::fleet::import(&fleet, records, roles, config.max_keys_per_account)
            .await
            .map_err(|error| error.to_string())
    }
    .await;
    match result {
        Ok((copied, present)) => {
            println!("copied {copied} keys and roles into etcd ({present} were already there)");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
