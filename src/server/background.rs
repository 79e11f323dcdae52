//! What runs beside the servers: the coarse clock and "last used" marks,
//! fleet sync health, the rate limits' counters and their health.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;

use super::{ServeConfig, StartError, FLEET_SYNC_SERVICE, RATE_LIMITS_SERVICE};
use crate::store::Store;
use crate::telemetry;

/// Keeps the coarse clock of "last used" (every second) and writes the
/// marks of the keys used since the last round (every `every`).
pub(super) async fn record_last_used(store: Store, every: Duration) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut last_write = std::time::Instant::now();
    loop {
        ticks.tick().await;
        crate::key::tick_coarse_minute();
        if last_write.elapsed() < every {
            continue;
        }
        last_write = std::time::Instant::now();
        let writing = store.clone();
        match tokio::task::spawn_blocking(move || writing.persist_usage()).await {
            Ok(Ok(written)) => {
                metrics::counter!(telemetry::LAST_USED_WRITTEN_TOTAL).increment(written as u64)
            }
            Ok(Err(error)) => tracing::warn!(%error, "could not record last-used times"),
            Err(_) => {}
        }
    }
}

/// Fleet mode: the sync health service (`scopegate.v1.FleetSync`: SERVING
/// while etcd is followed and heard from) and the staleness gauge, every
/// second. `scopegate.v1.Authorize` stays SERVING while it answers.
pub(super) async fn report_sync(
    sync: Arc<crate::store::SyncState>,
    health: tonic_health::server::HealthReporter,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut last = None;
    loop {
        every.tick().await;
        let status = if sync.in_sync() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            health.set_service_status(FLEET_SYNC_SERVICE, status).await;
            last = Some(status);
        }
        let since = sync
            .since_contact()
            .map_or(f64::INFINITY, |since| since.as_secs_f64());
        metrics::gauge!(telemetry::FLEET_SECONDS_SINCE_CONTACT).set(since);
    }
}

/// The rate limits' counters, their reachability reported to health.
pub(super) fn start_counters(
    config: &ServeConfig,
    health: &tonic_health::server::HealthReporter,
) -> Result<Arc<crate::counters::Counters>, StartError> {
    let counters =
        crate::counters::Counters::start(&config.counters, config.rate_limit_fail_closed)
            .map_err(StartError::RateLimits)?;
    tokio::spawn(report_rate_limits(counters.health(), health.clone()));
    Ok(counters)
}

/// The counters' reachability as `scopegate.v1.RateLimits` (always SERVING
/// with counters in memory).
async fn report_rate_limits(
    mut reachable: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
) {
    loop {
        let status = match *reachable.borrow_and_update() {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        };
        health.set_service_status(RATE_LIMITS_SERVICE, status).await;
        if reachable.changed().await.is_err() {
            return;
        }
    }
}
