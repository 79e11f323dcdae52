//! What every client command shares: where the server is, the credential,
//! the connection, and how answers are printed (a table, or JSON with --json).

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::grpc::pb;
use crate::server::{ADMIN_TOKEN_FILE, DEFAULT_DATA_DIR};

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

/// Where `--server` points, in the forms grpcurl users type.
#[derive(Debug, PartialEq)]
pub(super) enum ServerAddress {
    /// `http(s)://host:port`, or `host:port` (plaintext).
    Uri(String),
    /// `unix:/path`, `unix:///path` or `unix:relative/path`.
    Unix(PathBuf),
}

pub(super) fn server_address(text: &str) -> Result<ServerAddress, String> {
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

pub(super) async fn connect(client: &ClientArgs) -> Result<Channel, String> {
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

pub(super) async fn manage_client(
    client: &ClientArgs,
) -> Result<pb::manage_key_client::ManageKeyClient<Channel>, String> {
    Ok(pb::manage_key_client::ManageKeyClient::new(
        connect(client).await?,
    ))
}

/// Wraps a message with the caller's bearer credential.
pub(super) fn authorized<T>(client: &ClientArgs, message: T) -> Result<tonic::Request<T>, String> {
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

pub(super) fn read_credential(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|error| format!("cannot read credential file {}: {error}", path.display()))
}

pub(super) fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

pub(super) fn access_name(access: i32) -> &'static str {
    pb::Access::try_from(access)
        .map(|access| access.as_str_name())
        .unwrap_or("UNKNOWN")
}

pub(super) fn key_json(key: &pb::ApiKey) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string());
    json!({
        "key_id": key.key_id, "account_id": key.account_id, "name": key.name,
        "scopes": key.scopes,
        "own_scopes": key.own_scopes,
        "exposed": key.exposed_time.as_ref().map(|t| json!({"time": t.to_string(), "url": key.exposed_url})),
        "roles": key.roles.iter().map(|r| json!({"role_id": r.role_id, "name": r.name, "adds": r.adds})).collect::<Vec<_>>(),
        "access": key.access.iter().map(|g| json!({"resource": g.resource, "access": access_name(g.access)})).collect::<Vec<_>>(),
        "kind": pb::KeyKind::try_from(key.kind).map(|k| k.as_str_name()).unwrap_or("UNKNOWN"),
        "create_time": time(&key.create_time), "update_time": time(&key.update_time),
        "expire_time": time(&key.expire_time), "not_before": time(&key.not_before),
        "enabled": key.enabled,
        "previous_secret_expire_time": time(&key.previous_secret_expire_time),
        "allowed_cidrs": key.allowed_cidrs, "metadata": key.metadata,
        "last_used_time": time(&key.last_used_time),
        "rate_limits": rate_limits_json(&key.rate_limits),
        "credits": key.credits.as_ref().map(|credits| json!({
            "remaining": credits.remaining,
            "refill": credits.refill.as_ref().map(|refill| json!({
                "amount": refill.amount, "interval": refill.interval, "day_of_month": refill.day_of_month,
            })),
        })),
    })
}

pub(super) fn rate_limits_json(limits: &[pb::RateLimit]) -> Value {
    limits
        .iter()
        .map(|limit| {
            json!({
                "name": limit.name, "limit": limit.limit,
                "window_seconds": limit.window.as_ref().map_or(0, |w| w.seconds),
                "scopes": limit.scopes, "account": limit.account,
            })
        })
        .collect()
}

/// `default=600/minute`, `org=10000/hour (account)`.
fn limit_text(limit: &pb::RateLimit) -> String {
    crate::ratelimit::RateLimit {
        name: limit.name.clone(),
        limit: limit.limit,
        window_secs: limit.window.as_ref().map_or(0, |w| w.seconds.max(0) as u64),
        scopes: limit.scopes.clone(),
        account: limit.account,
    }
    .line()
}

/// A key and its new token (CreateKey, RotateKey): the token is shown once.
pub(super) fn print_token(client: &ClientArgs, response: pb::CreateKeyResponse) {
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

pub(super) fn print_one_or_json(client: &ClientArgs, key: pb::ApiKey) {
    if client.json {
        println!("{}", key_json(&key));
    } else {
        print_keys(std::slice::from_ref(&key));
    }
}

pub(super) fn print_keys(keys: &[pb::ApiKey]) {
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
        if !key.rate_limits.is_empty() {
            let limits: Vec<String> = key.rate_limits.iter().map(limit_text).collect();
            println!("{:<22}  limits: {}", "", limits.join(", "));
        }
    }
}
