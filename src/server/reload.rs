//! Reloading the catalog and routes: on SIGHUP, or when `--watch-secs`
//! sees their content change. A bad file is refused whole; the old one stays.

use std::path::PathBuf;
use std::sync::Arc;

use super::settings::ServeConfig;
use super::unix_now_secs;
use crate::authz::Policy;
use crate::grpc::CheckContext;
use crate::route::{RouteTable, DEFAULT_ROUTES_TOML};
use crate::scope::Catalog;
use crate::store::Store;
use crate::telemetry;

/// Reloads the catalog and routes files on SIGHUP and, with a watch interval,
/// whenever their content changes. A bad new file is rejected, logged and
/// counted, and the old one stays in force.
pub(super) async fn reload_files(
    mut seen: [Option<u32>; 2],
    config: ServeConfig,
    context: Arc<CheckContext>,
    store: Store,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload on signal disabled");
            None
        }
    };
    let mut ticks = config.watch_interval.map(|every| {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    loop {
        seen = tokio::select! {
            alive = next_hangup(&mut hangups) => {
                if !alive {
                    return;
                }
                watched_content(&config)
            }
            () = next_tick(&mut ticks) => {
                let current = watched_content(&config);
                if current == seen {
                    continue;
                }
                tracing::info!("a watched file changed: reloading");
                current
            }
        };
        reload(&config, &context, &store);
    }
}

pub(super) async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> bool {
    match hangups {
        Some(hangups) => hangups.recv().await.is_some(),
        None => std::future::pending().await,
    }
}

pub(super) async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => drop(ticks.tick().await),
        None => std::future::pending().await,
    }
}

/// A checksum of each watched file (None: unreadable), cheap enough to take
/// every tick: these files are small.
pub(super) fn watched_content(config: &ServeConfig) -> [Option<u32>; 2] {
    let checksum = |path: &Option<PathBuf>| {
        let bytes = std::fs::read(path.as_ref()?).ok()?;
        Some(crc32fast::hash(&bytes))
    };
    [checksum(&config.catalog), checksum(&config.routes)]
}

/// Reloads the catalog (when `--catalog` names a file) and the routes file
/// as one candidate policy: both are built, the catalog is checked against
/// every stored key, and then both are swapped together, or neither is.
/// Scope ids are stable across catalogs, so key entries stay right.
pub(super) fn reload(config: &ServeConfig, context: &CheckContext, store: &Store) {
    let previous = context.policy.load_full();
    let catalog = match &config.catalog {
        Some(path) => match Catalog::load_after(path, &previous.catalog) {
            Ok(catalog) => Arc::new(catalog),
            Err(error) => return rejected("catalog", &error.to_string()),
        },
        None => previous.catalog.clone(),
    };
    let routes = match (&config.routes, &config.catalog) {
        (Some(path), _) => RouteTable::load(path, &catalog),
        (None, None) => RouteTable::from_toml(DEFAULT_ROUTES_TOML, &catalog),
        (None, Some(_)) => Ok(RouteTable::empty()),
    };
    let routes = match routes {
        Ok(routes) => routes,
        Err(error) => return rejected("routes", &error.to_string()),
    };
    let rules = routes.rule_count();
    let scopes = catalog.scope_count();
    let policy = Arc::new(Policy {
        catalog: catalog.clone(),
        routes,
    });
    if config.catalog.is_some() {
        let swapped = store.swap_catalog(catalog, || context.policy.store(policy));
        if let Err(error) = swapped {
            return rejected("catalog", &error.to_string());
        }
        reloaded("catalog", true);
        tracing::info!(scopes, "catalog reloaded");
    } else {
        context.policy.store(policy);
    }
    if let Some(path) = &config.routes {
        reloaded("routes", true);
        tracing::info!(path = %path.display(), routes = rules, "routes reloaded");
    }
}

/// A reload refused as a whole: the previous catalog and routes stay.
pub(super) fn rejected(kind: &'static str, error: &str) {
    reloaded(kind, false);
    tracing::error!(%error, "{kind} reload rejected; the previous catalog and routes stay in force");
}

pub(super) fn reloaded(kind: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(telemetry::RELOADS_TOTAL, "kind" => kind, "result" => result).increment(1);
    if ok {
        metrics::gauge!(telemetry::LAST_RELOAD_SUCCESS).set(unix_now_secs());
    }
}
