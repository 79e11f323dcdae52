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
    let (mut count, mut roles) = (0, 0);
    while let Some(record) = stream.message().await.map_err(status_text)? {
        let bad = |error: String| format!("the server sent a bad record: {error}");
        let line = if record.role_record.is_empty() {
            let record = crate::store::decode(&[], &record.key_record)
                .map_err(|error| bad(error.to_string()))?;
            count += 1;
            record_to_json(&record).map_err(bad)?
        } else {
            let role = prost::Message::decode(record.role_record.as_slice())
                .map_err(|error: prost::DecodeError| bad(error.to_string()))?;
            roles += 1;
            role_to_json(&role).map_err(bad)?
        };
        lines.push_str(&line);
        lines.push('\n');
    }
    write_durably(&out, lines.as_bytes())
        .map_err(|error| format!("cannot write {}: {error}", out.display()))?;
    println!(
        "backed up {count} keys and {roles} roles to {}",
        out.display()
    );
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
        let (mut records, mut roles) = (Vec::new(), Vec::new());
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |error: String| format!("{} line {}: {error}", input.display(), index + 1);
            match line_from_json(line).map_err(at)? {
                Line::Key(record) => {
                    crate::manage::validate_imported(&record)
                        .and_then(|()| crate::manage::validate_imported_scopes(&record, &catalog))
                        .map_err(|error| at(error.to_string()))?;
                    records.push(*record);
                }
                Line::Role(role) => {
                    crate::manage::validate_imported_role(&role, &catalog)
                        .map_err(|error| at(error.to_string()))?;
                    roles.push(role);
                }
            }
        }
        crate::manage::check_account_caps(&records, cap).map_err(|error| error.to_string())?;
        let store = crate::store::Store::open(
            &data_dir,
            std::sync::Arc::new(arc_swap::ArcSwap::new(catalog.clone())),
        )
        .map_err(|error| error.to_string())?;
        let written = store
            .import(records, roles)
            .map_err(|error| error.to_string())?;
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

use crate::store::{KeyRecord, RoleRecord};

/// One backup line: the stored record as JSON (hashes in hex).
pub fn record_to_json(record: &KeyRecord) -> Result<String, String> {
    serde_json::to_string(record).map_err(|error| error.to_string())
}

/// A role's backup line: `{"role": {…}}` (a build from before roles refuses
/// it as an unknown field, never drops it).
pub fn role_to_json(role: &RoleRecord) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct RoleLine<'a> {
        role: &'a RoleRecord,
    }
    serde_json::to_string(&RoleLine { role }).map_err(|error| error.to_string())
}

/// What one backup line holds.
pub enum Line {
    Key(Box<KeyRecord>),
    Role(RoleRecord),
}

/// A key's or a role's line.
pub fn line_from_json(line: &str) -> Result<Line, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RoleLine {
        role: RoleRecord,
    }
    if line.trim_start().starts_with(r#"{"role""#) {
        return typed::<RoleLine>(line).map(|line| Line::Role(line.role));
    }
    record_from_json(line).map(|record| Line::Key(Box::new(record)))
}

/// A record from one backup line: every field typed, none unknown (a
/// newer release's field is refused, never dropped).
pub fn record_from_json(line: &str) -> Result<KeyRecord, String> {
    typed(line)
}

fn typed<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, String> {
    let mut fields = serde_json::Deserializer::from_str(line);
    let record = serde_path_to_error::deserialize(&mut fields).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // serde names an unknown or missing field itself.
        match path.as_str() {
            "." | "" => inner.to_string(),
            _ => format!("{path}: {inner}"),
        }
    })?;
    fields.end().map_err(|error| error.to_string())?;
    Ok(record)
}

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

#[cfg(test)]
mod tests {
    use super::{record_from_json, record_to_json};

    /// Backups from before the rename name an account limit `shared`; they
    /// restore as one, and new backups say `account`.
    #[test]
    fn an_account_limit_reads_under_either_name() {
        let key_id = crate::token::KeyId::from_bytes([1; 16]);
        let line = format!(
            r#"{{"version":3,"key_id":"{key_id}","account_id":"acme","name":"k","scopes":["mail.send"],"secret_hash":"{}","create_time_unix_ms":1,"update_time_unix_ms":1,"created_by":"admin","rate_limits":[{{"name":"org","limit":5,"window_secs":60,"shared":true}}]}}"#,
            "01".repeat(32)
        );
        let record = record_from_json(&line).unwrap();
        assert!(record.rate_limits[0].account);
        let written = record_to_json(&record).unwrap();
        assert!(written.contains(r#""account":true"#), "{written}");
        assert_eq!(record_from_json(&written).unwrap(), record);
    }
}
