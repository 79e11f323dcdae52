//! The command line: `serve` runs the sidecar; the other subcommands are
//! gRPC clients of a running one.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::default_worker_threads;

mod audit;
mod backup;
mod check;
mod client;
mod config;
mod fleet;
mod keys;
mod leaks;
mod roles;
mod scopes;
mod serve;
mod usage;
mod webhooks;

pub use audit::AuditArgs;
pub use backup::{BackupArgs, RestoreArgs};
pub use check::CheckArgs;
pub use client::ClientArgs;
pub use config::ConfigCommand;
pub use fleet::FleetCommand;
pub use keys::{CreateArgs, KeysCommand, TermsArgs, UpdateArgs};
pub use serve::ServeArgs;
pub use usage::UsageArgs;

const EXAMPLES: &str = "\
Quick start:
  scopegate serve &                                   # 127.0.0.1:50051, data in ./scopegate-data
  scopegate keys create --account acme --name ops --grant api_keys=full --scope mail.send
  scopegate keys list --account acme
  SCOPEGATE_CHECK_TOKEN=SG.xxx.yyy scopegate check --scope mail.send
  scopegate scopes

Client commands authenticate with the admin token in ./scopegate-data/admin.token
unless --auth-file or SCOPEGATE_AUTH says otherwise.";

/// A gRPC authorization sidecar for API keys with permission scopes.
///
/// scopegate stores API keys (hashes only) with scopes such as `mail.send` or
/// `stats.read`, and answers "may this key do this?" over gRPC in
/// microseconds. Run `scopegate serve`, then manage keys with the client
/// subcommands below (or any gRPC client: reflection is on).
#[derive(Parser, Debug)]
#[command(name = "scopegate", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar: Authorize, Envoy ext_authz, ManageKey, Admin, health and reflection.
    ///
    /// Example: scopegate serve --listen 127.0.0.1:50051 --data-dir /var/lib/scopegate
    ///
    /// On first start without --admin-token-file or SCOPEGATE_ADMIN_TOKEN, an
    /// admin token is generated into <data-dir>/admin.token (mode 0600); its
    /// path is logged, never the token.
    Serve(ServeArgs),
    /// Create, show, list, change and delete API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Roles: named grants of an account that keys reference; a change to a
    /// role reaches every such key at once.
    #[command(subcommand)]
    Roles(roles::RolesCommand),
    /// Webhooks: endpoints an account's key events are POSTed to (signed
    /// per Standard Webhooks), and the deliveries given up on.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// List the catalog: resources, their scopes and access levels, and yours.
    ///
    /// Example: scopegate scopes --json
    Scopes(ClientArgs),
    /// Ask the server whether a token may use scopes. Exit code 0: allowed,
    /// 1: denied, 2: error.
    ///
    /// Example: SCOPEGATE_CHECK_TOKEN="$TOKEN" scopegate check --scope mail.send --scope stats.read
    /// (or --token-file FILE; a token on the command line shows in `ps`).
    Check(CheckArgs),
    /// Validate or print the serve configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit trail: every key change, oldest first (who, what, the key
    /// before and after; never a secret).
    ///
    /// Example: scopegate audit --account acme --since-secs 86400
    Audit(AuditArgs),
    /// How much keys were decided on, by outcome (allowed, insufficient
    /// scope, unknown key…), per minute, hour, day, week or month; and the
    /// stored counts exported for a warehouse.
    ///
    /// Example: scopegate usage --key KEY_ID --since 24h
    /// Example: scopegate usage --account acme --since 30d --by day --top 5
    /// Example: scopegate usage export --since 7d --format csv > usage.csv
    Usage(UsageArgs),
    /// Print this deployment's token pattern for secret scanners, so a key
    /// pushed anywhere is found (and reported: POST /secret-scanning/github,
    /// `scopegate keys report-leak`).
    ///
    /// Example: scopegate secret-patterns --format gitleaks >> .gitleaks.toml
    SecretPatterns(leaks::SecretPatternsArgs),
    /// Fleet mode (keys shared through etcd): tools.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Export every key of a running server to a JSON-lines file (hashes
    /// only, never secrets). Needs the admin token.
    ///
    /// Example: scopegate backup --out scopegate-backup.jsonl
    Backup(BackupArgs),
    /// Build a fresh store from a backup file, offline (the server must not
    /// run on that data dir). Every record is held to the API's rules (the
    /// catalog, account id, name, CIDRs, metadata, the per-account cap).
    ///
    /// Example: scopegate restore --in scopegate-backup.jsonl --data-dir /var/lib/scopegate
    Restore(RestoreArgs),
}

pub fn main() -> ExitCode {
    // Everything scopegate creates (data dir, sled files, admin token, backups,
    // the Unix socket before its chmod) is private from the first byte.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve::serve(args);
    }
    let runtime = match serve::runtime(default_worker_threads()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match cli.command {
        Command::Serve(_) => unreachable!("served above"),
        Command::Config(command) => config::config_command(command),
        Command::SecretPatterns(args) => leaks::secret_patterns(&args),
        Command::Fleet(FleetCommand::Import(args)) => runtime.block_on(fleet::fleet_import(args)),
        Command::Restore(args) => runtime.block_on(backup::restore(args)),
        command => runtime.block_on(client(command)),
    }
}

/// Client subcommands: 0 success, 1 denied (check), 2 error.
async fn client(command: Command) -> ExitCode {
    match run_client(command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run_client(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Keys(keys) => keys::run(keys).await,
        Command::Roles(roles) => roles::run(roles).await,
        Command::Webhooks(webhooks) => webhooks::run(webhooks).await,
        Command::Scopes(client) => scopes::run(client).await,
        Command::Check(args) => check::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Serve(_)
        | Command::Config(_)
        | Command::Fleet(_)
        | Command::Restore(_)
        | Command::SecretPatterns(_) => {
            unreachable!("not a client command")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::client::{server_address, ServerAddress};
    use super::*;

    #[test]
    fn server_takes_the_forms_grpcurl_users_type() {
        let uri = |text: &str| ServerAddress::Uri(text.to_owned());
        let unix = |path: &str| ServerAddress::Unix(PathBuf::from(path));
        for (given, expected) in [
            ("127.0.0.1:50051", uri("http://127.0.0.1:50051")),
            ("localhost:1", uri("http://localhost:1")),
            ("http://h:1", uri("http://h:1")),
            ("https://h:443", uri("https://h:443")),
            ("unix:/run/s.sock", unix("/run/s.sock")),
            ("unix:///run/s.sock", unix("/run/s.sock")),
            ("unix:rel/s.sock", unix("rel/s.sock")),
        ] {
            assert_eq!(server_address(given).unwrap(), expected, "{given}");
        }
        let error = server_address("ftp://h:1").unwrap_err();
        assert!(
            error.contains("host:port, http(s)://host:port or unix:/path"),
            "{error}"
        );
        assert!(server_address("unix:")
            .unwrap_err()
            .contains("socket path is missing"));
    }

    fn parsed_key_id(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Keys(KeysCommand::Delete { key_id, client })
            | Command::Keys(KeysCommand::Get { key_id, client })
            | Command::Keys(KeysCommand::Rotate { key_id, client, .. })
            | Command::Keys(KeysCommand::Update(UpdateArgs { key_id, client, .. })) => {
                assert_eq!(client.server, "http://h:1", "{args:?}");
                key_id
            }
            other => panic!("{other:?}"),
        }
    }

    /// Key ids are base64url, so one in 32 begins with `-`; it must still
    /// parse as the id, before or after the flags.
    #[test]
    fn key_ids_that_begin_with_a_hyphen_are_ids() {
        for verb in ["get", "delete", "update", "rotate"] {
            for id in ["-jace9rfduigJHh1AJIVA", "qL0w1cT9Rk2tqc8z3mE1aA"] {
                let before = ["scopegate", "keys", verb, "--server", "http://h:1", id];
                assert_eq!(parsed_key_id(&before), id);
                let after = ["scopegate", "keys", verb, id, "--server", "http://h:1"];
                assert_eq!(parsed_key_id(&after), id);
            }
        }
    }
}
