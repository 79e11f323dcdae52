//! `scopegate serve`: load the catalog, open the store, resolve the admin
//! token, bind, serve every service on one port, and drain on shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::manage_key_server::ManageKeyServer;
use crate::grpc::{
    self, AuthorizeService, CheckContext, ExtAuthzConfig, ExtAuthzService, ManageKeyService,
    Readiness,
};
use crate::manage::Manager;
use crate::route::{RouteError, RouteTable, DEFAULT_ROUTES_TOML};
use crate::scope::{Catalog, CatalogError};
use crate::store::{Store, StoreError};
use crate::token::{new_admin_token, TokenError, TokenFormat};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "scopegate-data";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Everything `serve` needs; built from flags and env by the CLI.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the admin token comes from, when not `<data_dir>/admin.token`.
    pub admin_token: AdminTokenSource,
    pub catalog: Option<PathBuf>,
    /// HTTP route table for ext_authz and `Check{http}`; none: every HTTP
    /// check is NO_ROUTE.
    pub routes: Option<PathBuf>,
    pub ext_authz: ExtAuthzConfig,
    pub token_prefix: String,
    pub pepper_file: Option<PathBuf>,
    pub max_keys_per_account: usize,
    /// How long shutdown waits for in-flight requests and open connections.
    pub drain_timeout: std::time::Duration,
}

#[derive(Clone)]
pub enum AdminTokenSource {
    /// `<data_dir>/admin.token`, generated on first start.
    DataDir,
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for AdminTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTokenSource::DataDir => f.write_str("DataDir"),
            AdminTokenSource::File(path) => write!(f, "File({})", path.display()),
            AdminTokenSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error("--token-prefix: {0}")]
    TokenPrefix(#[from] TokenError),
    #[error("admin token {path}: {reason}")]
    AdminToken { path: String, reason: String },
    #[error("pepper file {path}: {reason}")]
    Pepper { path: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Runs the server until `shutdown` resolves, then drains and flushes.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let catalog = Arc::new(match &config.catalog {
        Some(path) => Catalog::load(path)?,
        None => Catalog::builtin(),
    });
    let routes = match (&config.routes, &config.catalog) {
        (Some(path), _) => RouteTable::load(path, &catalog)?,
        (None, None) => RouteTable::from_toml(DEFAULT_ROUTES_TOML, &catalog)?,
        (None, Some(_)) => {
            tracing::warn!("--catalog without --routes: every HTTP check (ext_authz, Check{{http}}) is denied NO_ROUTE");
            RouteTable::empty()
        }
    };
    let pepper = config
        .pepper_file
        .as_deref()
        .map(|path| read_secret_file(path, 16))
        .transpose()
        .map_err(|(path, reason)| StartError::Pepper { path, reason })?;
    let format = TokenFormat::new(&config.token_prefix, pepper.as_deref().map(str::as_bytes))?;
    let store = Store::open(&config.data_dir, catalog.clone())?;
    let admin_token = resolve_admin_token(&config)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;

    let readiness = Arc::new(Readiness::default());
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let route_count = routes.rule_count();
    let check_context = Arc::new(CheckContext {
        catalog: catalog.clone(),
        keys: store.table().clone(),
        format: format.clone(),
        routes: arc_swap::ArcSwap::from_pointee(routes),
        readiness: readiness.clone(),
    });
    let authorize = AuthorizeService {
        context: check_context.clone(),
    };
    let ext_authz = ExtAuthzService {
        context: check_context,
        config: config.ext_authz.clone(),
    };
    let manager = Arc::new(Manager::new(
        store.clone(),
        catalog.clone(),
        format,
        &admin_token,
        config.max_keys_per_account,
    ));
    drop(admin_token);
    let manage = ManageKeyService {
        manager,
        readiness: readiness.clone(),
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let draining = health.clone();
    let (drain_started, mut drain_deadline) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = drain_started.send(true);
        tracing::info!("shutdown requested: draining");
        set_health(&draining, ServingStatus::NotServing).await;
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(AuthorizeServer::new(authorize))
            .add_service(ManageKeyServer::new(manage))
            .add_service(AuthorizationServer::new(ext_authz))
            .serve_with_incoming_shutdown(incoming, shutdown),
    );
    tracing::info!(addr = %local_addr, data_dir = %config.data_dir.display(), "scopegate listening");

    let loading = store.clone();
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || loading.load())
        .await
        .map_err(|_| StoreError::Closed)??;
    readiness.set_ready();
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(
        keys = loaded,
        elapsed_ms = started.elapsed().as_millis() as u64,
        scopes = catalog.scope_count(),
        routes = route_count,
        "keys loaded; serving"
    );

    // Graceful shutdown waits for clients to close their connections; an idle
    // client may never do so, so the drain is bounded.
    let drain_timeout = config.drain_timeout;
    let drain_expired = async move {
        let _ = drain_deadline.wait_for(|started| *started).await;
        tokio::time::sleep(drain_timeout).await;
    };
    let mut server = server;
    let served = tokio::select! {
        served = &mut server => served.map_err(|_| StoreError::Closed)?,
        () = drain_expired => {
            tracing::warn!(drain_timeout_ms = drain_timeout.as_millis() as u64, "drain timed out; closing remaining connections");
            server.abort();
            Ok(())
        }
    };
    store.flush()?;
    tracing::info!("stopped");
    served.map_err(StartError::from)
}

/// Sets the overall status ("") and every service's to `status`.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for service in [
        "",
        AuthorizeServer::<AuthorizeService>::NAME,
        ManageKeyServer::<ManageKeyService>::NAME,
        AuthorizationServer::<ExtAuthzService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

fn resolve_admin_token(config: &ServeConfig) -> Result<String, StartError> {
    let error = |path: &Path, reason: String| StartError::AdminToken {
        path: path.display().to_string(),
        reason,
    };
    match &config.admin_token {
        AdminTokenSource::Value(token) => {
            if token.trim().len() < MIN_ADMIN_TOKEN_CHARS {
                return Err(StartError::AdminToken {
                    path: "SCOPEGATE_ADMIN_TOKEN".into(),
                    reason: format!("must be at least {MIN_ADMIN_TOKEN_CHARS} characters"),
                });
            }
            Ok(token.trim().to_owned())
        }
        AdminTokenSource::File(path) => read_secret_file(path, MIN_ADMIN_TOKEN_CHARS)
            .map_err(|(path, reason)| StartError::AdminToken { path, reason }),
        AdminTokenSource::DataDir => {
            let path = config.data_dir.join(ADMIN_TOKEN_FILE);
            if path.exists() {
                return read_secret_file(&path, MIN_ADMIN_TOKEN_CHARS)
                    .map_err(|(path, reason)| StartError::AdminToken { path, reason });
            }
            let token = new_admin_token();
            write_private_file(&path, &token).map_err(|io| error(&path, io.to_string()))?;
            tracing::info!(path = %path.display(), "generated an admin token (mode 0600); pass it as `authorization: Bearer <token>`");
            Ok(token)
        }
    }
}

/// Reads a secret from a file, trimmed; the error names the file, never the content.
fn read_secret_file(path: &Path, min_chars: usize) -> Result<String, (String, String)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| (shown.clone(), error.to_string()))?;
    let secret = text.trim();
    if secret.len() < min_chars {
        return Err((shown, format!("must hold at least {min_chars} characters")));
    }
    Ok(secret.to_owned())
}

fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
