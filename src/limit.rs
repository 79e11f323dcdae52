//! Admission: what keeps one kind of work from starving another.
//!
//! - [`ShedLayer`]: requests in progress, bounded separately for checks and
//!   for management. A mutation holds its slot across a disk sync, so with
//!   one shared limit a tenant flooding UpdateKey could shed the Check stream
//!   Envoy depends on (and Envoy turns a shed check into an outage).
//!   Management calls also get their deadline here (`--request-timeout-ms`,
//!   or the client's shorter `grpc-timeout`): only they can wait (on a disk
//!   sync or etcd). A check never waits, so it pays for no timer.
//! - [`AccountRate`]: a token bucket per account for key changes made by API
//!   keys, so one tenant cannot monopolise the single writer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Paths served under the management limit; everything else is a check.
const MANAGE_PREFIXES: [&str; 2] = ["/scopegate.v1.ManageKey/", "/scopegate.v1.Admin/"];

#[derive(Clone)]
pub struct ShedLayer {
    checks: Arc<Semaphore>,
    manage: Arc<Semaphore>,
    manage_timeout: Duration,
}

impl ShedLayer {
    pub fn new(checks: usize, manage: usize, manage_timeout: Duration) -> ShedLayer {
        ShedLayer {
            checks: Arc::new(Semaphore::new(checks)),
            manage: Arc::new(Semaphore::new(manage)),
            manage_timeout,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    limits: ShedLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let manage = MANAGE_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix));
        let semaphore = if manage {
            &self.limits.manage
        } else {
            &self.limits.checks
        };
        let permit: OwnedSemaphorePermit = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // tonic answers this error with RESOURCE_EXHAUSTED.
            Err(_) => {
                return Box::pin(std::future::ready(Err(
                    tower::load_shed::error::Overloaded::new().into(),
                )))
            }
        };
        if !manage {
            let future = self.inner.call(request);
            return Box::pin(async move {
                let response = future.await.map_err(Into::into);
                drop(permit);
                response
            });
        }
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| grpc_timeout(value.as_bytes()))
            .map_or(self.limits.manage_timeout, |client| {
                client.min(self.limits.manage_timeout)
            });
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

/// A token bucket per account: `rate` changes per second, bursts of `rate`.
pub struct AccountRate {
    rate: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl AccountRate {
    pub fn new(per_second: u32) -> AccountRate {
        AccountRate {
            rate: f64::from(per_second.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `account`, or says how long until one is free.
    pub fn take(&self, account: &Arc<str>) -> Result<(), Duration> {
        self.take_at(account, Instant::now())
    }

    fn take_at(&self, account: &Arc<str>, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(account) {
            let rate = self.rate;
            buckets.retain(|_, bucket| refill(*bucket, rate, now).tokens < rate);
        }
        let bucket = buckets.entry(account.clone()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        *bucket = refill(*bucket, self.rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

fn refill(bucket: Bucket, rate: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    Bucket {
        tokens: (bucket.tokens + elapsed * rate).min(rate),
        at: now,
    }
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
    fn a_burst_then_the_rate_with_a_retry_hint() {
        let rate = AccountRate::new(4);
        let acme: Arc<str> = "acme".into();
        let other: Arc<str> = "other".into();
        let start = Instant::now();
        for _ in 0..4 {
            rate.take_at(&acme, start).unwrap();
        }
        let wait = rate.take_at(&acme, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        // Another account is untouched.
        rate.take_at(&other, start).unwrap();
        // A quarter second later, one more.
        let later = start + Duration::from_millis(250);
        rate.take_at(&acme, later).unwrap();
        assert!(rate.take_at(&acme, later).is_err());
    }
}
