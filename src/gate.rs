//! The one gate every request of every door passes before its edge reads it:
//! readiness (keys loaded; in fleet mode, etcd heard from within
//! `--max-staleness-secs`), the concurrency budget of its kind of work, and
//! management's deadline. Each door once re-did these rules, and each new
//! door forgot one (the console ignored staleness; Envoy's rate-limit
//! service shared the decisions' budget). Now an edge only translates a
//! [`Refused`] into its wire format.
//!
//! Budgets, never shared: decisions (Check, ext_authz), management (gRPC
//! ManageKey and Admin, REST and the console: one budget), and Envoy's
//! rate-limit service. A mutation holds its permit across a disk sync, so a
//! tenant flooding UpdateKey could otherwise shed the checks Envoy depends
//! on. A refusal is immediate, never queued.
//!
//! A gRPC path this gate does not know is management: a service added
//! without a line here is gated and budgeted, never open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::readiness::Readiness;

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// What kind of work a request is, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Authorize.Check, ext_authz: never wait, never starve.
    Decision,
    /// Key management on any edge: waits on disk or etcd, has a deadline.
    Manage,
    /// Envoy's RateLimitService (counts, may wait on Redis).
    RateLimits,
    /// Holds no key: health, reflection, static documents.
    Open,
}

/// Envoy's ext_authz method: its refusals are answered in Envoy's protocol
/// (a 503 denial), so no `failure_mode_allow` turns them into an allow.
pub const EXT_AUTHZ_CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

impl Door {
    /// The door of a gRPC request path (`/package.Service/Method`): prefix
    /// compares, decisions first (this runs on every Check).
    pub fn of_grpc_path(path: &str) -> Door {
        const DECISIONS: [&str; 2] = [
            "/scopegate.v1.Authorize/",
            "/envoy.service.auth.v3.Authorization/",
        ];
        const OPEN: [&str; 3] = [
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1.ServerReflection/",
            "/grpc.reflection.v1alpha.ServerReflection/",
        ];
        let under = |prefixes: &[&str]| prefixes.iter().any(|prefix| path.starts_with(prefix));
        if under(&DECISIONS) {
            Door::Decision
        } else if path.starts_with("/envoy.service.ratelimit.v3.RateLimitService/") {
            Door::RateLimits
        } else if under(&OPEN) {
            Door::Open
        } else {
            Door::Manage
        }
    }
}

/// Why the gate refused a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// Still loading keys, or (fleet) decisions would be stale.
    #[error("{0}")]
    NotReady(String),
    /// The door's concurrency budget is spent.
    #[error("too many {0} requests in progress: retry shortly")]
    Busy(&'static str),
}

/// The gate's state: shared by every listener and edge of one server.
pub struct Gate {
    readiness: Arc<Readiness>,
    decisions: Arc<Semaphore>,
    manage: Arc<Semaphore>,
    rate_limits: Arc<Semaphore>,
    manage_timeout: Duration,
}

/// The budgets, in requests in progress.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub decisions: usize,
    pub manage: usize,
    pub rate_limits: usize,
}

impl Gate {
    pub fn new(readiness: Arc<Readiness>, budgets: Budgets, manage_timeout: Duration) -> Gate {
        Gate {
            readiness,
            decisions: Arc::new(Semaphore::new(budgets.decisions)),
            manage: Arc::new(Semaphore::new(budgets.manage)),
            rate_limits: Arc::new(Semaphore::new(budgets.rate_limits)),
            manage_timeout,
        }
    }

    /// Admits a request through `door`: ready, and a permit of its budget
    /// (held until the answer is written). Open doors need neither.
    pub fn admit(&self, door: Door) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        self.ready(door)?;
        self.permit(door)
    }

    /// The first half of [`Gate::admit`], for an edge that reads a body in
    /// between (so a stalled body holds no permit).
    pub fn ready(&self, door: Door) -> Result<(), Refused> {
        match door {
            Door::Open => Ok(()),
            _ => self.readiness.check().map_err(Refused::NotReady),
        }
    }

    /// The second half of [`Gate::admit`]: a permit of the door's budget.
    pub fn permit(&self, door: Door) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        let (budget, what) = match door {
            Door::Open => return Ok(None),
            Door::Decision => (&self.decisions, "check"),
            Door::Manage => (&self.manage, "management"),
            Door::RateLimits => (&self.rate_limits, "rate-limit service"),
        };
        budget
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| Refused::Busy(what))
    }

    /// How long a management request may take (`--request-timeout-ms`).
    pub fn manage_timeout(&self) -> Duration {
        self.manage_timeout
    }
}

/// The gate as a tower layer for the gRPC listeners.
#[derive(Clone)]
pub struct GateLayer {
    gate: Arc<Gate>,
}

impl GateLayer {
    pub fn new(gate: Arc<Gate>) -> GateLayer {
        GateLayer { gate }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let door = Door::of_grpc_path(path);
        let permit = match self.gate.admit(door) {
            Ok(permit) => permit,
            // ext_authz answers in Envoy's protocol: its edge reads this.
            Err(refused @ Refused::NotReady(_)) if path == EXT_AUTHZ_CHECK => {
                request.extensions_mut().insert(refused);
                None
            }
            Err(Refused::NotReady(reason)) => {
                return Box::pin(std::future::ready(Err(
                    tonic::Status::unavailable(reason).into()
                )))
            }
            // tonic answers this error with RESOURCE_EXHAUSTED.
            Err(Refused::Busy(_)) => {
                return Box::pin(std::future::ready(Err(
                    tower::load_shed::error::Overloaded::new().into(),
                )))
            }
        };
        if door != Door::Manage {
            let future = self.inner.call(request);
            return Box::pin(async move {
                let response = future.await.map_err(Into::into);
                drop(permit);
                response
            });
        }
        let limit = self.gate.manage_timeout;
        let timeout = request
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|value| grpc_timeout(value.as_bytes()))
            .map_or(limit, |client| client.min(limit));
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = match tokio::time::timeout(timeout, future).await {
                Ok(response) => response.map_err(Into::into),
                // tonic answers a Status error as that status. A change cut
                // here still completes on its own task (store::mutate).
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "not done within {} ms (--request-timeout-ms or the client's grpc-timeout)",
                    timeout.as_millis()
                ))
                .into()),
            };
            drop(permit);
            response
        })
    }
}

/// A `grpc-timeout` header value: at most 8 digits and a unit (H, M, S, m,
/// u, n), as the gRPC HTTP/2 protocol defines it.
fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_refusal_comes_before_the_budget_and_open_doors_need_neither() {
        let readiness = Arc::new(Readiness::new(None));
        let budgets = Budgets {
            decisions: 1,
            manage: 1,
            rate_limits: 1,
        };
        let gate = Gate::new(readiness.clone(), budgets, Duration::from_secs(1));
        assert!(matches!(
            gate.admit(Door::Manage),
            Err(Refused::NotReady(_))
        ));
        assert!(gate.admit(Door::Open).unwrap().is_none());
        readiness.set_ready();
        let held = gate.admit(Door::Manage).unwrap();
        assert!(matches!(gate.admit(Door::Manage), Err(Refused::Busy(_))));
        // Management's budget is not the decisions' nor the rate limits'.
        let _check = gate.admit(Door::Decision).unwrap();
        let _limits = gate.admit(Door::RateLimits).unwrap();
        drop(held);
        assert!(gate.admit(Door::Manage).is_ok());
    }
}
