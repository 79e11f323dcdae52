//! `scopegate backup` (a consistent export from a running server) and
//! `scopegate restore` (a fresh store from it, offline), and their JSON-lines
//! format: hashes only, never a secret.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::client::{authorized, connect, status_text, ClientArgs};
use crate::grpc::pb;

/// What `scopegate backup` takes.
#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// File to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// What `scopegate restore` takes.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup file written by `scopegate backup`.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Data dir to create; must hold no keys.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Catalog the keys must fit (default: the built-in one).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Refuse a backup with more keys in one account than this (as
    /// `serve --max-keys-per-account`).
    #[arg(long, default_value_t = crate::manage::DEFAULT_MAX_KEYS_PER_ACCOUNT)]
    pub max_keys_per_account: usize,
}

pub(super) async fn run(args: BackupArgs) -> Result<ExitCode, String> {
    let BackupArgs { client, out } = args;
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
        lines.push_str(&record_to_json(&record).to_string());
        lines.push('\n');
        count += 1;
    }
    write_durably(&out, lines.as_bytes())
        .map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    println!("backed up {count} keys to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn restore(args: RestoreArgs) -> ExitCode {
    let RestoreArgs {
        input,
        data_dir,
        catalog,
        max_keys_per_account: cap,
    } = args;
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
                record_from_json(line)
                    .and_then(|record| {
                        crate::manage::validate_imported(&record)
                            .and_then(|()| {
                                crate::manage::validate_imported_scopes(&record, &catalog)
                            })
                            .map(|()| record)
                            .map_err(|error| error.to_string())
                    })
                    .map_err(|error| format!("{} line {}: {error}", input.display(), index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::manage::check_account_caps(&records, cap).map_err(|error| error.to_string())?;
        let store = crate::store::Store::open(
            &data_dir,
            std::sync::Arc::new(arc_swap::ArcSwap::new(catalog.clone())),
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

use serde_json::{json, Value};

use crate::store::{KeyRecord, RateLimitRecord};
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
        "rate_limits": record.rate_limits.iter().map(|limit| json!({
            "name": limit.name,
            "limit": limit.limit,
            "window_secs": limit.window_secs,
            "scopes": limit.scopes,
            "shared": limit.shared,
        })).collect::<Vec<_>>(),
    })
}

/// Rate limits from a backup line (absent before them).
fn rate_limits_from_json(value: &Value) -> Result<Vec<RateLimitRecord>, String> {
    let Some(limits) = value.as_array() else {
        return Ok(Vec::new());
    };
    limits
        .iter()
        .map(|limit| {
            let count = |field: &str| {
                limit[field]
                    .as_u64()
                    .ok_or_else(|| format!("rate limit `{field}` is missing or not a number"))
            };
            Ok(RateLimitRecord {
                name: limit["name"]
                    .as_str()
                    .ok_or("rate limit `name` is missing")?
                    .to_owned(),
                limit: count("limit")?,
                window_secs: count("window_secs")?,
                scopes: limit["scopes"]
                    .as_array()
                    .map(|scopes| {
                        scopes
                            .iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                shared: limit["shared"].as_bool().unwrap_or(false),
            })
        })
        .collect()
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
        rate_limits: rate_limits_from_json(&value["rate_limits"])?,
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
