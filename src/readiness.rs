//! The serving gate every edge asks first: nothing is answered before the
//! keys are loaded, nor (fleet mode, `--max-staleness-secs`) from a mirror
//! that has not heard from etcd for too long.

use std::sync::Arc;

use crate::store::SyncState;

/// Serving gate: the services answer UNAVAILABLE until the store is loaded
/// and, in fleet mode with `--max-staleness-secs`, while etcd has not been
/// heard from for longer than that. The one record of where serving stands:
/// the gate and /readyz both read it.
#[derive(Default)]
pub struct Readiness {
    ready: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
    staleness: Option<(std::time::Duration, Arc<SyncState>)>,
}

impl Readiness {
    pub fn new(staleness: Option<(std::time::Duration, Arc<SyncState>)>) -> Readiness {
        if let Some((bound, _)) = &staleness {
            // What the failing-closed alert compares staleness with.
            metrics::gauge!(crate::telemetry::FLEET_MAX_STALENESS_SECONDS).set(bound.as_secs_f64());
        }
        Readiness {
            staleness,
            ..Readiness::default()
        }
    }

    /// The keys are loaded: requests are answered from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Shutting down: requests in flight finish, the load balancer is told.
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// What /readyz answers: loaded and not draining. Staleness is left
    /// out: a stale sidecar fails its own decisions closed, and taking every
    /// pod out of its Service during an etcd outage helps no caller.
    pub fn probe(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
            && !self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Why requests are refused now (loading, or stale), if they are.
    pub fn check(&self) -> Result<(), String> {
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return Err("scopegate is still loading keys".into());
        }
        match self.stale() {
            Some(stale) => Err(stale),
            None => Ok(()),
        }
    }

    /// Why decisions are refused as stale, if they are.
    pub fn stale(&self) -> Option<String> {
        let (bound, sync) = self.staleness.as_ref()?;
        match sync.since_contact() {
            Some(since) if since <= *bound => None,
            since => Some(format!(
                "decisions are stale: etcd last heard {} ago, over --max-staleness-secs {}",
                since.map_or("never".into(), |since| format!(
                    "{:.1}s",
                    since.as_secs_f64()
                )),
                bound.as_secs_f64()
            )),
        }
    }
}
