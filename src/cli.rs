//! The command line: `serve` runs the sidecar; the other subcommands are
//! gRPC clients of a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::config::{default_worker_threads, ConfigError, ServeOptions};
use crate::grpc::pb;
use crate::server::{self, ADMIN_TOKEN_FILE, DEFAULT_DATA_DIR};

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
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this account (an API key always sees only its own).
        #[arg(long, default_value = "")]
        account: String,
        /// Only this key.
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        key: String,
        /// Only events of the last N seconds.
        #[arg(long)]
        since_secs: Option<u64>,
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Fleet mode (keys shared through etcd): tools.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Export every key of a running server to a JSON-lines file (hashes
    /// only, never secrets). Needs the admin token.
    ///
    /// Example: scopegate backup --out scopegate-backup.jsonl
    Backup {
        #[command(flatten)]
        client: ClientArgs,
        /// File to write (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a fresh store from a backup file, offline (the server must not
    /// run on that data dir). Every record is checked against the catalog.
    ///
    /// Example: scopegate restore --in scopegate-backup.jsonl --data-dir /var/lib/scopegate
    Restore {
        /// Backup file written by `scopegate backup`.
        #[arg(long = "in")]
        input: PathBuf,
        /// Data dir to create; must hold no keys.
        #[arg(long)]
        data_dir: PathBuf,
        /// Catalog the keys must fit (default: the built-in one).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Refuse a backup with more keys in one account than this (as
        /// `serve --max-keys-per-account`).
        #[arg(long, default_value_t = crate::manage::DEFAULT_MAX_KEYS_PER_ACCOUNT)]
        max_keys_per_account: usize,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys). Flags and
    /// SCOPEGATE_* environment variables override it.
    #[arg(long, env = "SCOPEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: ServeOptions,
}

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

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server to talk to: host:port, http://host:port, https://host:port or
    /// unix:/path/to/socket (the forms grpcurl and grpcio take).
    #[arg(
        long,
        env = "SCOPEGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// File holding the caller's credential (admin token or API key). Also
    /// SCOPEGATE_AUTH (the credential itself). Default: <data-dir>/admin.token.
    #[arg(long, env = "SCOPEGATE_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Data dir whose admin.token is used when no credential is given.
    #[arg(long, env = "SCOPEGATE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints its token once.
    ///
    /// Example: scopegate keys create --account acme --name mailer --scope mail.send --grant stats=read
    Create {
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
        #[command(flatten)]
        terms: TermsArgs,
        /// Makes a retry safe: run the same command again with the same id
        /// (within 24 h) and it prints the first key and token instead of
        /// making a second key. Use a fresh random value per key, e.g.
        /// `--request-id "$(cat /proc/sys/kernel/random/uuid)"`.
        #[arg(long, default_value = "")]
        request_id: String,
    },
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
    Update {
        #[command(flatten)]
        client: ClientArgs,
        /// Key id (ids may begin with `-`; that is fine here).
        #[arg(allow_hyphen_values = true)]
        key_id: String,
        #[arg(long)]
        name: Option<String>,
        /// Replaces all scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// RESOURCE=read|write|full (repeatable); with --scope, the union.
        #[arg(long = "grant", value_parser = parse_grant)]
        grants: Vec<pb::Grant>,
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
    },
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
}

impl TermsArgs {
    fn expire_time(&self) -> Option<prost_types::Timestamp> {
        self.expires_in_secs.map(|secs| {
            prost_types::Timestamp::from(
                std::time::SystemTime::now() + std::time::Duration::from_secs(secs),
            )
        })
    }
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

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

fn parse_grant(text: &str) -> Result<pb::Grant, String> {
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

pub fn main() -> ExitCode {
    // Everything scopegate creates (data dir, sled files, admin token, backups,
    // the Unix socket before its chmod) is private from the first byte.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve(args);
    }
    let runtime = match runtime(default_worker_threads()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match cli.command {
        Command::Serve(_) => unreachable!("served above"),
        Command::Config(command) => config_command(command),
        Command::Fleet(FleetCommand::Import(args)) => runtime.block_on(fleet_import(args)),
        Command::Restore {
            input,
            data_dir,
            catalog,
            max_keys_per_account,
        } => runtime.block_on(restore(input, data_dir, catalog, max_keys_per_account)),
        command => runtime.block_on(client(command)),
    }
}

fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        // Store writes run on blocking threads; an idle one leaves soon
        // instead of after tokio's 10 s, so an idle sidecar keeps few threads.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::from(2)
        })
}

fn effective_options(args: ServeArgs) -> Result<ServeOptions, ConfigError> {
    Ok(match &args.config {
        Some(path) => args.options.or(ServeOptions::from_file(path)?),
        None => args.options,
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match effective_options(args).and_then(|options| options.resolve()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    init_logging(config.json_logs);
    match runtime.block_on(server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "scopegate failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn config_command(command: ConfigCommand) -> ExitCode {
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

async fn fleet_import(args: ServeArgs) -> ExitCode {
    let result = async {
        let mut options = effective_options(args).map_err(|error| error.to_string())?;
        options.store = Some("etcd".into());
        let config = options.resolve().map_err(|error| error.to_string())?;
        let fleet = config.fleet.clone().expect("store = etcd");
        let (catalog, _) =
            server::load_catalog_and_routes(&config).map_err(|error| error.to_string())?;
        let store = crate::store::Store::open(
            &config.data_dir,
            std::sync::Arc::new(arc_swap::ArcSwap::new(catalog)),
        )
        .map_err(|error| error.to_string())?;
        let records = store
            .export()
            .map_err(|error| error.to_string())?
            .iter()
            .map(|value| crate::store::decode(&[], value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        for record in &records {
            crate::manage::validate_imported(record).map_err(|error| {
                let key_id = record.key_id().map(|id| id.to_string()).unwrap_or_default();
                format!("key {key_id}: {error}")
            })?;
        }
        crate::manage::check_account_caps(&records, config.max_keys_per_account)
            .map_err(|error| error.to_string())?;
        crate::store::fleet::import(&fleet, records)
            .await
            .map_err(|error| error.to_string())
    }
    .await;
    match result {
        Ok((copied, present)) => {
            println!("copied {copied} keys into etcd ({present} were already there)");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn restore(
    input: PathBuf,
    data_dir: PathBuf,
    catalog: Option<PathBuf>,
    cap: usize,
) -> ExitCode {
    let result = async {
        let catalog = std::sync::Arc::new(match &catalog {
            Some(path) => crate::scope::Catalog::load(path).map_err(|e| e.to_string())?,
            None => crate::scope::Catalog::builtin(),
        });
        let text = std::fs::read_to_string(&input)
            .map_err(|error| format!("cannot read {}: {error}", input.display()))?;
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                backup::record_from_json(line)
                    .and_then(|record| {
                        crate::manage::validate_imported(&record)
                            .map(|()| record)
                            .map_err(|error| error.to_string())
                    })
                    .map_err(|error| format!("{} line {}: {error}", input.display(), index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::manage::check_account_caps(&records, cap).map_err(|error| error.to_string())?;
        let store = crate::store::Store::open(
            &data_dir,
            std::sync::Arc::new(arc_swap::ArcSwap::new(catalog)),
        )
        .map_err(|error| error.to_string())?;
        let written = store.import(records).map_err(|error| error.to_string())?;
        let loaded = store.load().map_err(|error| error.to_string())?;
        Ok::<_, String>((written, loaded.total()))
    }
    .await;
    match result {
        Ok((written, loaded)) => {
            println!(
                "restored {written} keys into {} ({loaded} load cleanly)",
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// The backup file: one JSON object per key, hashes only.
mod backup {
    use serde_json::{json, Value};

    use crate::store::KeyRecord;
    use crate::token::KeyId;

    pub fn record_to_json(record: &KeyRecord) -> Value {
        json!({
            "version": record.version,
            "key_id": record.key_id().map(|id| id.to_string()).unwrap_or_default(),
            "account_id": record.account_id,
            "name": record.name,
            "scopes": record.scopes,
            "secret_hash": hex(&record.secret_hash),
            "create_time_unix_ms": record.create_time_unix_ms,
            "update_time_unix_ms": record.update_time_unix_ms,
            "created_by": record.created_by,
            "expire_time_unix_ms": record.expire_time_unix_ms,
            "not_before_unix_ms": record.not_before_unix_ms,
            "disabled": record.disabled,
            "previous_secret_hash": hex(&record.previous_secret_hash),
            "previous_secret_expire_unix_ms": record.previous_secret_expire_unix_ms,
            "allowed_cidrs": record.allowed_cidrs,
            "metadata": record.metadata,
        })
    }

    pub fn record_from_json(line: &str) -> Result<KeyRecord, String> {
        let value: Value = serde_json::from_str(line).map_err(|error| error.to_string())?;
        let text = |field: &str| {
            value[field]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{field}` is missing or not a string"))
        };
        let number = |field: &str| {
            value[field]
                .as_i64()
                .ok_or_else(|| format!("`{field}` is missing or not a number"))
        };
        let key_id = KeyId::parse(&text("key_id")?).ok_or("`key_id` is not a key id")?;
        let secret_hash = unhex(&text("secret_hash")?).ok_or("`secret_hash` is not hex")?;
        let scopes = value["scopes"]
            .as_array()
            .ok_or("`scopes` is missing")?
            .iter()
            .map(|scope| {
                scope
                    .as_str()
                    .map(str::to_owned)
                    .ok_or("a scope is not a string")
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyRecord {
            version: number("version")? as u32,
            key_id: key_id.as_bytes().to_vec(),
            account_id: text("account_id")?,
            name: text("name")?,
            scopes,
            secret_hash,
            create_time_unix_ms: number("create_time_unix_ms")?,
            update_time_unix_ms: number("update_time_unix_ms")?,
            created_by: text("created_by")?,
            // Lifecycle fields: absent from version 1 backups.
            expire_time_unix_ms: value["expire_time_unix_ms"].as_i64().unwrap_or(0),
            not_before_unix_ms: value["not_before_unix_ms"].as_i64().unwrap_or(0),
            disabled: value["disabled"].as_bool().unwrap_or(false),
            previous_secret_hash: unhex(value["previous_secret_hash"].as_str().unwrap_or(""))
                .ok_or("`previous_secret_hash` is not hex")?,
            previous_secret_expire_unix_ms: value["previous_secret_expire_unix_ms"]
                .as_i64()
                .unwrap_or(0),
            allowed_cidrs: value["allowed_cidrs"]
                .as_array()
                .map(|cidrs| {
                    cidrs
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            metadata: value["metadata"]
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn unhex(text: &str) -> Option<Vec<u8>> {
        if text.len() % 2 != 0 {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok())
            .collect()
    }

    /// Writes to a temporary file, fsyncs, then renames over `path`.
    /// Writes `content` to `path` (mode 0600) through a partial file that is
    /// removed on any error; file and directory are fsync'd, so a backup
    /// reported written survives a power cut.
    pub fn write_durably(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let partial = path.with_extension("partial");
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            file.write_all(content)?;
            file.sync_all()?;
            std::fs::rename(&partial, path)?;
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => std::path::Path::new("."),
            };
            std::fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        written
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
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
        Command::Audit {
            client,
            account,
            key,
            since_secs,
            page_size,
            page_token,
        } => {
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
                           "expire_time": s.expire_time.as_ref().map(|t| t.to_string())})
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
        Command::Serve(_) | Command::Config(_) | Command::Fleet(_) | Command::Restore { .. } => {
            unreachable!("not a client command")
        }
        Command::Backup { client, out } => {
            let channel = connect(&client).await?;
            let mut stream = pb::admin_client::AdminClient::new(channel)
                .backup(authorized(&client, pb::BackupRequest {})?)
                .await
                .map_err(status_text)?
                .into_inner();
            let mut lines = String::new();
            let mut count = 0;
            while let Some(record) = stream.message().await.map_err(status_text)? {
                let record = crate::store::decode(&[], &record.key_record)
                    .map_err(|error| format!("the server sent a bad record: {error}"))?;
                lines.push_str(&backup::record_to_json(&record).to_string());
                lines.push('\n');
                count += 1;
            }
            backup::write_durably(&out, lines.as_bytes())
                .map_err(|error| format!("cannot write {}: {error}", out.display()))?;
            println!("backed up {count} keys to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let token = match (args.token, &args.token_file) {
                (Some(token), _) => token,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map(|text| text.trim().to_owned())
                    .map_err(|error| format!("cannot read {}: {error}", file.display()))?,
                (None, None) => {
                    return Err(
                        "no token: set SCOPEGATE_CHECK_TOKEN or give --token-file FILE".into(),
                    )
                }
            };
            let channel = connect(&args.client).await?;
            let response = pb::authorize_client::AuthorizeClient::new(channel)
                .check(pb::CheckRequest {
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
        Command::Scopes(client) => {
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
                    json!({"resources": resources, "caller_scopes": response.caller_scopes, "caller_is_admin": response.caller_is_admin})
                );
            } else {
                println!(
                    "{:<40} {:<10} {:<16} SCOPES",
                    "RESOURCE", "YOURS", "GRANTABLE"
                );
                for resource in &response.resources {
                    let grantable: Vec<&str> =
                        resource.grantable.iter().map(|a| access_name(*a)).collect();
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(keys) => run_keys(keys).await,
    }
}

async fn run_keys(command: KeysCommand) -> Result<ExitCode, String> {
    match command {
        KeysCommand::Create {
            client,
            account,
            name,
            scopes,
            grants,
            terms,
            request_id,
        } => {
            let mut manage = manage_client(&client).await?;
            let request = pb::CreateKeyRequest {
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
            let response = manage
                .create_key(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_token(&client, response);
        }
        KeysCommand::Get { client, key_id } => {
            let mut manage = manage_client(&client).await?;
            let key = manage
                .get_key(authorized(&client, pb::GetKeyRequest { key_id })?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_one_or_json(&client, key);
        }
        KeysCommand::List {
            client,
            account,
            page_size,
            page_token,
        } => {
            let mut manage = manage_client(&client).await?;
            let request = pb::ListKeysRequest {
                account_id: account,
                page_size,
                page_token,
            };
            let response = manage
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
        }
        KeysCommand::Update {
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
        } => {
            let mut manage = manage_client(&client).await?;
            let request = pb::UpdateKeyRequest {
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
            let key = manage
                .update_key(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_one_or_json(&client, key);
        }
        KeysCommand::Rotate {
            client,
            key_id,
            overlap_secs,
        } => {
            let mut manage = manage_client(&client).await?;
            let request = pb::RotateKeyRequest {
                key_id,
                overlap: Some(prost_types::Duration {
                    seconds: overlap_secs.min(i64::MAX as u64) as i64,
                    nanos: 0,
                }),
            };
            let response = manage
                .rotate_key(authorized(&client, request)?)
                .await
                .map_err(status_text)?
                .into_inner();
            print_token(&client, response);
        }
        KeysCommand::Delete { client, key_id } => {
            let mut manage = manage_client(&client).await?;
            manage
                .delete_key(authorized(
                    &client,
                    pb::DeleteKeyRequest {
                        key_id: key_id.clone(),
                    },
                )?)
                .await
                .map_err(status_text)?;
            if client.json {
                println!("{}", json!({"deleted": key_id}));
            } else {
                println!("deleted {key_id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `--server` points, in the forms grpcurl users type.
#[derive(Debug, PartialEq)]
enum ServerAddress {
    /// `http(s)://host:port`, or `host:port` (plaintext).
    Uri(String),
    /// `unix:/path`, `unix:///path` or `unix:relative/path`.
    Unix(PathBuf),
}

fn server_address(text: &str) -> Result<ServerAddress, String> {
    if let Some(path) = text
        .strip_prefix("unix://")
        .or_else(|| text.strip_prefix("unix:"))
    {
        if path.is_empty() {
            return Err(format!(
                "--server {text}: the socket path is missing (e.g. unix:/run/scopegate/grpc.sock)"
            ));
        }
        return Ok(ServerAddress::Unix(PathBuf::from(path)));
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(ServerAddress::Uri(text.to_owned()));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "--server {text}: `{scheme}://` is not supported; give host:port, http(s)://host:port or unix:/path"
        ));
    }
    Ok(ServerAddress::Uri(format!("http://{text}")))
}

async fn connect(client: &ClientArgs) -> Result<Channel, String> {
    let reach = |error: tonic::transport::Error| {
        let detail = std::error::Error::source(&error)
            .map(|source| format!("{error}: {source}"))
            .unwrap_or_else(|| error.to_string());
        format!("cannot reach {}: {detail}", client.server)
    };
    match server_address(&client.server)? {
        ServerAddress::Uri(uri) => Channel::from_shared(uri)
            .map_err(|error| format!("--server {}: {error}", client.server))?
            .connect()
            .await
            .map_err(reach),
        ServerAddress::Unix(path) => {
            // The URI is a placeholder: the connector below dials the socket,
            // and `localhost` is the :authority every server accepts.
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
                .map_err(reach)
        }
    }
}

async fn manage_client(
    client: &ClientArgs,
) -> Result<pb::manage_key_client::ManageKeyClient<Channel>, String> {
    Ok(pb::manage_key_client::ManageKeyClient::new(
        connect(client).await?,
    ))
}

/// Wraps a message with the caller's bearer credential.
fn authorized<T>(client: &ClientArgs, message: T) -> Result<tonic::Request<T>, String> {
    let credential = match (&client.auth_file, std::env::var("SCOPEGATE_AUTH")) {
        (Some(path), _) => read_credential(path)?,
        (None, Ok(credential)) => credential.trim().to_owned(),
        (None, Err(_)) => read_credential(&client.data_dir.join(ADMIN_TOKEN_FILE))
            .map_err(|error| format!("{error} (give --auth-file or SCOPEGATE_AUTH)"))?,
    };
    let mut request = tonic::Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {credential}"))
        .map_err(|_| "the credential contains characters not allowed in a header".to_owned())?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn read_credential(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|error| format!("cannot read credential file {}: {error}", path.display()))
}

fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn access_name(access: i32) -> &'static str {
    pb::Access::try_from(access)
        .map(|access| access.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn key_json(key: &pb::ApiKey) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string());
    json!({
        "key_id": key.key_id, "account_id": key.account_id, "name": key.name,
        "scopes": key.scopes,
        "access": key.access.iter().map(|g| json!({"resource": g.resource, "access": access_name(g.access)})).collect::<Vec<_>>(),
        "kind": pb::KeyKind::try_from(key.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
        "create_time": time(&key.create_time), "update_time": time(&key.update_time),
        "expire_time": time(&key.expire_time), "not_before": time(&key.not_before),
        "enabled": key.enabled,
        "previous_secret_expire_time": time(&key.previous_secret_expire_time),
        "allowed_cidrs": key.allowed_cidrs, "metadata": key.metadata,
        "last_used_time": time(&key.last_used_time),
    })
}

/// A key and its new token (CreateKey, RotateKey): the token is shown once.
fn print_token(client: &ClientArgs, response: pb::CreateKeyResponse) {
    let key = response.key.unwrap_or_default();
    if client.json {
        println!(
            "{}",
            json!({"key": key_json(&key), "token": response.token})
        );
    } else {
        print_keys(std::slice::from_ref(&key));
        println!("\ntoken: {}", response.token);
        println!("(shown once: only its hash is stored)");
    }
}

fn print_one_or_json(client: &ClientArgs, key: pb::ApiKey) {
    if client.json {
        println!("{}", key_json(&key));
    } else {
        print_keys(std::slice::from_ref(&key));
    }
}

fn print_keys(keys: &[pb::ApiKey]) {
    println!(
        "{:<22}  {:<16} {:<20} {:<8} ACCESS",
        "KEY ID", "ACCOUNT", "NAME", "KIND"
    );
    for key in keys {
        let access: Vec<String> = key
            .access
            .iter()
            .map(|grant| format!("{}={}", grant.resource, access_name(grant.access)))
            .collect();
        let kind = pb::KeyKind::try_from(key.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        println!(
            "{:<22}  {:<16} {:<20} {:<8} {}",
            key.key_id,
            key.account_id,
            key.name,
            kind,
            access.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
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
            | Command::Keys(KeysCommand::Update { key_id, client, .. }) => {
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
