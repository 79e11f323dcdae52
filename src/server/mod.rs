//! `scopegate serve`: load the catalog, open the store, resolve the admin
//! token, bind, serve every service on one port, and drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::grpc::envoy_service::authorization_server::AuthorizationServer;
use tonic_health::ServingStatus;

use crate::authz::Policy;
use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::manage_key_server::ManageKeyServer;
use crate::grpc::{AuthorizeService, CheckContext, ExtAuthzService, ManageKeyService};
use crate::manage::Manager;
use crate::readiness::Readiness;
use crate::route::{RouteError, RouteTable, DEFAULT_ROUTES_TOML};
use crate::scope::{Catalog, CatalogError, SharedCatalog};
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::token::{TokenError, TokenFormat};

mod admin_token;
mod background;
mod listen;
mod reload;
mod settings;

use admin_token::resolve_admin_token;
use background::{record_last_used, report_sync, start_counters};
use reload::{reload_files, watched_content};
pub use settings::*;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("traces: {0}")]
    Traces(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error("--token-prefix: {0}")]
    TokenPrefix(#[from] TokenError),
    #[error("admin token {path}: {reason}")]
    AdminToken { path: String, reason: String },
    #[error("rate limits: {0}")]
    RateLimits(String),
    #[error("usage: {0}")]
    Usage(String),
    #[error("credits: {0}")]
    Credits(String),
    #[error("pepper file {path}: {reason}")]
    Pepper { path: String, reason: String },
    #[error("TLS {path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Loads the catalog and the route table a config names, as start-up and
/// `config check` do.
pub fn load_catalog_and_routes(
    config: &ServeConfig,
) -> Result<(Arc<Catalog>, RouteTable), StartError> {
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
    Ok((catalog, routes))
}

/// Runs the server until `shutdown` resolves, then drains and flushes.
/// What start-up opened: the store and what decides with it.
struct Opened {
    catalog: Arc<Catalog>,
    routes: RouteTable,
    shared_catalog: SharedCatalog,
    format: TokenFormat,
    store: Store,
    admin_token: zeroize::Zeroizing<String>,
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

/// Every socket, bound before anything is served.
struct Listeners {
    tcp: Option<tokio::net::TcpListener>,
    uds: Option<(tokio::net::UnixListener, PathBuf)>,
    manage_tcp: Option<tokio::net::TcpListener>,
    rate_limits_tcp: Option<tokio::net::TcpListener>,
    metrics_tcp: Option<tokio::net::TcpListener>,
    http_tcp: Option<tokio::net::TcpListener>,
    forward_auth_tcp: Option<tokio::net::TcpListener>,
}

/// The running servers and what start-up and shutdown flip.
struct Serving {
    servers: tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
    metrics_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The REST API's and the forward-auth door's.
    http_servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    readiness: Arc<Readiness>,
    check_context: Arc<CheckContext>,
}

/// `serve`, step by step: each step is a function below, in this order.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // Taken before loading, so a change made while starting is still seen.
    let watched = watched_content(&config);
    if let Some(traces) = &config.traces {
        crate::traces::install(traces).map_err(StartError::Traces)?;
    }
    let opened = open(&config)?;
    // Without a metrics listener nobody reads metrics: record none.
    let metrics_handle = config.metrics_listen.map(|_| telemetry::install_metrics());
    let listeners = bind_all(&config).await?;
    let (catalog, route_count) = (opened.catalog.clone(), opened.routes.rule_count());
    let (store, webhooks) = (opened.store.clone(), opened.webhooks.clone());
    let serving = serve_all(&config, opened, listeners, metrics_handle).await?;
    load_keys(&store, &serving, &catalog, route_count).await?;
    if let Some(webhooks) = &webhooks {
        webhooks.start();
    }
    let last_used = tokio::spawn(record_last_used(store.clone(), config.last_used_interval));
    let reloader = tokio::spawn(reload_files(
        watched,
        config.clone(),
        serving.check_context.clone(),
        store.clone(),
    ));
    let failed = until_stopped(shutdown, &store).await;
    reloader.abort();
    last_used.abort();
    drain(&config, serving, &store, failed).await
}

/// Loads the catalog and routes, reads the pepper, opens the store and
/// resolves the admin token.
fn open(config: &ServeConfig) -> Result<Opened, StartError> {
    let (catalog, routes) = load_catalog_and_routes(config)?;
    let pepper = config
        .pepper_file
        .as_deref()
        .map(|path| crate::secret_file::read_secret_file(path, 16))
        .transpose()
        .map_err(|(path, reason)| StartError::Pepper { path, reason })?;
    let format = TokenFormat::new(&config.token_prefix, pepper.as_deref().map(str::as_bytes))?;
    let shared_catalog: SharedCatalog = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
    let store = Store::open_in(
        &config.data_dir,
        shared_catalog.clone(),
        config.fleet.clone(),
        config.sled_cache_bytes,
    )?;
    store.set_audit_retention(config.audit_retention);
    store.set_audit_max_events_per_account(config.audit_max_events_per_account);
    let admin_token = zeroize::Zeroizing::new(resolve_admin_token(config)?);
    let webhooks = config
        .webhooks
        .clone()
        .map(|settings| crate::webhooks::Webhooks::new(store.clone(), settings));
    Ok(Opened {
        webhooks,
        catalog,
        routes,
        shared_catalog,
        format,
        store,
        admin_token,
    })
}

/// Binds every listener before serving anything, so a taken port fails
/// start-up.
async fn bind_all(config: &ServeConfig) -> Result<Listeners, StartError> {
    Ok(Listeners {
        tcp: match config.listen {
            Some(addr) => Some(bind_tcp(addr).await?),
            None => None,
        },
        uds: match &config.uds {
            Some(path) => Some(bind_uds(path, config.uds_mode)?),
            None => None,
        },
        manage_tcp: match config.manage_listen {
            Some(addr) => Some(bind_tcp(addr).await?),
            None => None,
        },
        rate_limits_tcp: match config
            .rate_limit_service
            .as_ref()
            .map(|service| &service.at)
        {
            Some(RateLimitServiceAt::Tcp(addr)) => Some(bind_tcp(*addr).await?),
            _ => None,
        },
        metrics_tcp: match config.metrics_listen {
            Some(addr) => Some(bind_tcp(addr).await?),
            None => None,
        },
        http_tcp: match config.http_listen {
            Some(addr) => Some(bind_tcp(addr).await?),
            None => None,
        },
        forward_auth_tcp: match &config.forward_auth {
            Some(door) => Some(bind_tcp(door.listen).await?),
            None => None,
        },
    })
}

/// Builds the services and starts serving on every listener, NOT_SERVING
/// until the keys are loaded.
async fn serve_all(
    config: &ServeConfig,
    mut opened: Opened,
    listeners: Listeners,
    metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<Serving, StartError> {
    let readiness = Arc::new(Readiness::new(
        config.max_staleness.zip(opened.store.sync_state()),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let policy = Policy {
        catalog: opened.catalog.clone(),
        routes: std::mem::replace(&mut opened.routes, RouteTable::empty()),
    };
    let check_context = check_context(config, &health, &opened, policy)?;
    let manager = manager(
        config,
        &opened,
        (check_context.usage.clone(), check_context.balances.clone()),
    );
    drop(opened.admin_token);
    let gate = listen::gate(config, &readiness);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }
    };
    let http_servers = listen::spawn_http(
        config,
        (listeners.http_tcp, listeners.forward_auth_tcp),
        (&manager, &check_context, &gate),
        &stopped,
    )?;
    let services = listen::Services::new(config, check_context.clone(), manager, health_service)?;
    let servers = services.spawn(
        config,
        listen::GrpcListeners {
            tcp: listeners.tcp,
            uds: listeners.uds,
            manage_tcp: listeners.manage_tcp,
            rate_limits_tcp: listeners.rate_limits_tcp,
        },
        &gate,
        &stopped,
    )?;
    let metrics_server =
        listeners
            .metrics_tcp
            .zip(metrics_handle)
            .map(|(listener, metrics_handle)| {
                telemetry::metrics_addr_log(local_addr(&listener));
                tokio::spawn(telemetry::serve_http(
                    listener,
                    metrics_handle,
                    {
                        let readiness = readiness.clone();
                        move || readiness.probe()
                    },
                    stopped(),
                ))
            });
    Ok(Serving {
        servers,
        metrics_server,
        http_servers,
        stop,
        health,
        readiness,
        check_context,
    })
}

/// What every decision door reads: the keys, the policy, the counters,
/// and where decisions are counted.
fn check_context(
    config: &ServeConfig,
    health: &tonic_health::server::HealthReporter,
    opened: &Opened,
    policy: Policy,
) -> Result<Arc<CheckContext>, StartError> {
    let usage = config
        .usage
        .as_ref()
        .map(|usage| {
            crate::usage::Usage::start(
                usage,
                &opened.store,
                opened.shared_catalog.clone(),
                config.fleet.is_some(),
            )
        })
        .transpose()
        .map_err(StartError::Usage)?;
    let balances = balances(config, opened)?;
    Ok(Arc::new(CheckContext {
        usage,
        balances,
        counters: start_counters(config, health)?,
        keys: opened.store.table().clone(),
        format: opened.format.clone(),
        policy: arc_swap::ArcSwap::from_pointee(policy),
        decision_log_every: config.decision_log_every,
        decisions_seen: Default::default(),
        dry_run_seen: Default::default(),
        signals: opened.webhooks.as_ref().map(|webhooks| webhooks.signals()),
    }))
}

/// Where credit balances live: the rate-limit Redis when the fleet shares
/// one (one balance for every sidecar), else memory written to the data
/// dir (standalone; in a fleet without Redis, per sidecar).
fn balances(
    config: &ServeConfig,
    opened: &Opened,
) -> Result<Arc<crate::balances::Balances>, StartError> {
    match &config.counters {
        crate::counters::CountersConfig::Redis {
            url,
            password_file,
            timeout,
        } => {
            let password = password_file
                .as_deref()
                .map(|path| crate::secret_file::read_secret_file(path, 1))
                .transpose()
                .map_err(|(file, reason)| {
                    StartError::RateLimits(format!(
                        "rate_limit_redis_password_file {file}: {reason}"
                    ))
                })?;
            let client =
                crate::counters::redis_client("--rate-limit-redis", url, password.as_deref())
                    .map_err(StartError::RateLimits)?;
            Ok(crate::balances::Balances::shared(
                client,
                *timeout,
                config.rate_limit_fail_closed,
            ))
        }
        crate::counters::CountersConfig::Memory => {
            crate::balances::Balances::local(Some(&opened.store)).map_err(StartError::Credits)
        }
    }
}

/// The use-cases every edge calls, with the limits the config sets.
fn manager(
    config: &ServeConfig,
    opened: &Opened,
    (usage, balances): (
        Option<Arc<crate::usage::Usage>>,
        Arc<crate::balances::Balances>,
    ),
) -> Arc<Manager> {
    Arc::new(
        Manager::new(
            opened.store.clone(),
            opened.shared_catalog.clone(),
            opened.format.clone(),
            &opened.admin_token,
            config.max_keys_per_account,
        )
        .with_mutation_rate(config.limits.mutations_per_account_per_sec)
        .with_read_rate(config.limits.reads_per_account_per_sec)
        .with_max_key_lifetime(config.max_key_lifetime)
        .with_usage(usage)
        .with_balances(Some(balances))
        .with_webhooks(opened.webhooks.clone()),
    )
}

/// Fills the table (standalone: from disk; fleet: from the mirror, then
/// follows etcd; with no mirror, after the first full read), then SERVING.
async fn load_keys(
    store: &Store,
    serving: &Serving,
    catalog: &Catalog,
    route_count: usize,
) -> Result<(), StartError> {
    let loading = store.clone();
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || loading.load())
        .await
        .map_err(|_| StoreError::Closed)??;
    metrics::gauge!(telemetry::KEYS, "kind" => "general").set(loaded.general as f64);
    metrics::gauge!(telemetry::KEYS, "kind" => "billing").set(loaded.billing as f64);
    store.follow_source();
    if let Some(sync) = store.sync_state() {
        tokio::spawn(report_sync(sync.clone(), serving.health.clone()));
        if !store.has_state() {
            // No mirror yet: never serve an empty table as if it were real.
            tracing::info!("no local mirror yet: waiting for the first full sync from etcd");
            while !sync.synced.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    serving.readiness.set_ready();
    set_health(&serving.health, ServingStatus::Serving).await;
    metrics::gauge!(telemetry::LAST_RELOAD_SUCCESS).set(unix_now_secs());
    tracing::info!(
        keys = loaded.total(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        scopes = catalog.scope_count(),
        routes = route_count,
        "keys loaded; serving"
    );
    Ok(())
}

/// Waits for a shutdown request, or for the store to fail (`Some(reason)`).
async fn until_stopped(shutdown: impl Future<Output = ()>, store: &Store) -> Option<String> {
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested: draining");
            None
        }
        reason = store.failure() => {
            tracing::error!(%reason, "the store failed: draining, then exiting non-zero so the restart recovers from disk");
            Some(reason)
        }
    }
}

/// NOT_SERVING, stop accepting, finish what is in flight (bounded), then
/// keep the last usage marks and sync; a failed store exits non-zero.
async fn drain(
    config: &ServeConfig,
    mut serving: Serving,
    store: &Store,
    failed: Option<String>,
) -> Result<(), StartError> {
    serving.readiness.set_draining();
    set_health(&serving.health, ServingStatus::NotServing).await;
    let _ = serving.stop.send(true);
    // Graceful shutdown waits for clients to close their connections; an idle
    // client may never do so, so the drain is bounded.
    let http_servers = std::mem::take(&mut serving.http_servers);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        let mut result = Ok(());
        while let Some(served) = serving.servers.join_next().await {
            if let Ok(Err(error)) = served {
                result = Err(error);
            }
        }
        // HTTP requests in progress finish too (the servers stopped accepting).
        for http_server in http_servers {
            let _ = http_server.await;
        }
        result
    })
    .await;
    let served = match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                drain_timeout_ms = config.drain_timeout.as_millis() as u64,
                "drain timed out; closing remaining connections"
            );
            serving.servers.abort_all();
            Ok(())
        }
    };
    if let Some(metrics_server) = serving.metrics_server {
        metrics_server.abort();
    }
    if let Some(path) = &config.uds {
        let _ = std::fs::remove_file(path);
    }
    if let Some(reason) = failed {
        return Err(StartError::Store(StoreError::Failed { reason }));
    }
    // A clean stop keeps the decisions counted since the last flush, and
    // the last round of "last used" marks.
    if let Some(usage) = &serving.check_context.usage {
        usage.flush().await;
    }
    serving.check_context.balances.flush();
    if let Err(error) = store.persist_usage() {
        tracing::warn!(%error, "could not record last-used times at shutdown");
    }
    store.sync()?;
    crate::traces::shutdown().await;
    tracing::info!("stopped");
    served.map_err(StartError::from)
}

fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            addr: addr.to_string(),
            reason: error.to_string(),
        })
}

fn local_addr(listener: &tokio::net::TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// Binds a Unix socket, replacing a stale socket file but nothing else.
fn bind_uds(path: &Path, mode: u32) -> Result<(tokio::net::UnixListener, PathBuf), StartError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let error = |reason: String| StartError::Bind {
        addr: path.display().to_string(),
        reason,
    };
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(error("exists and is not a socket".into()));
        }
        std::fs::remove_file(path).map_err(|e| error(e.to_string()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| error(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| error(e.to_string()))?;
    Ok((listener, path.to_owned()))
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
