//! `scopegate config check|print`: the serve settings, validated or shown.

use std::process::ExitCode;

use clap::Subcommand;

use super::serve::{effective_options, ServeArgs};
use crate::server;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the effective configuration, catalog and routes included,
    /// without starting. Exit code 0: valid.
    ///
    /// Example: scopegate config check --config /etc/scopegate/scopegate.toml
    Check(ServeArgs),
    /// Print the effective configuration (file, env and flags merged, defaults
    /// filled in) as TOML. Secrets are never printed: only their file paths.
    ///
    /// Example: scopegate config print --config scopegate.toml --listen 0.0.0.0:50051
    Print(ServeArgs),
}

pub(super) fn config_command(command: ConfigCommand) -> ExitCode {
    let (args, print) = match command {
        ConfigCommand::Check(args) => (args, false),
        ConfigCommand::Print(args) => (args, true),
    };
    let checked = effective_options(args).and_then(|options| {
        let config = options.resolve()?;
        Ok((options, config))
    });
    let (options, config) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if print {
        let effective = toml::to_string(&options.effective()).expect("options serialize");
        print!("{effective}");
        if std::env::var_os("SCOPEGATE_ADMIN_TOKEN").is_some() {
            println!("# admin token: from SCOPEGATE_ADMIN_TOKEN (<redacted>)");
        }
        return ExitCode::SUCCESS;
    }
    match server::load_catalog_and_routes(&config) {
        Ok((catalog, routes)) => {
            println!(
                "ok: {} scopes, {} routes",
                catalog.scope_count(),
                routes.rule_count()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
