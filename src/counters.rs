//! The counters behind rate limits: Kuadrant's limitador, in memory (each
//! sidecar counts alone: "per pod") or in Redis (every sidecar of a
//! deployment shares them). The edges call [`Counters::admit`] once a key is
//! allowed by scope; the limits themselves are [`crate::ratelimit`]'s.
//!
//! Redis away: limits fail open (counted, logged once per outage) unless
//! `--rate-limit-fail-closed`; a safety counter should not take the API down.
//!
//! In memory, a counter outlives its key (deleted, or its limits changed)
//! until a sweep, every [`SWEEP_EVERY`] on a blocking thread, drops the ones
//! whose window has run out, `SWEEP_CHUNK` at a time: the decision path
//! waits at most one chunk for the lock. (Redis expires its keys itself.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use limitador::counter::Counter;
use limitador::limit::{Context, Limit};
use limitador::storage::in_memory::InMemoryStorage;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::{AsyncCounterStorage, Authorization, CounterStorage, StorageErr};
use tokio::sync::watch;

use crate::ratelimit::{ActiveLimit, Applicable, RateStatus};

/// What the counters say of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Counted; the limit closest to running out (`None`: none could be
    /// read, the counters being away while failing open).
    Within(Option<RateStatus>),
    /// Refused by this limit (`remaining` 0); nothing was counted.
    Over(RateStatus),
    /// The counters are away and limits fail closed.
    Unavailable,
}

/// Where the counters live, from the command line.
#[derive(Debug, Clone)]
pub enum CountersConfig {
    Memory,
    Redis {
        /// `redis://host:port/db` or `rediss://` (TLS, the system's roots or
        /// `SSL_CERT_FILE`); no password in it.
        url: String,
        /// Redis AUTH password (user in the URL: `redis://user@host`).
        password_file: Option<std::path::PathBuf>,
        /// Per call; past it the counters count as away.
        timeout: Duration,
    },
}

pub struct Counters {
    backend: Backend,
    fail_closed: bool,
    /// False during an outage (from the first failure to the next answer):
    /// what logs once per outage. Starts true, so an outage from the start
    /// is logged too.
    reachable: AtomicBool,
    /// Reachability, for the `scopegate.v1.RateLimits` health status.
    health: watch::Sender<bool>,
}

enum Backend {
    Memory(InMemoryStorage),
    Redis {
        /// Set once the first connection is made; limitador's connection
        /// manager reconnects by itself after that.
        storage: ArcSwapOption<AsyncRedisStorage>,
        timeout: Duration,
    },
}

/// Counters kept by this process only (limitador's cache size: counters
/// with variables, which scopegate does not use).
const MEMORY_CACHE_SIZE: u64 = 10_000;
/// How often in-memory counters whose window ran out are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Counters looked at per hold of the lock.
const SWEEP_CHUNK: usize = 1024;

thread_local! {
    /// Counters without variables never read the context: one empty one
    /// per thread, not one per request.
    static NO_VARIABLES: Context<'static> = Context::default();
}

impl Counters {
    /// The counters as configured. Redis is connected in the background
    /// (until it answers, requests see it away).
    pub fn start(config: &CountersConfig, fail_closed: bool) -> Result<Arc<Counters>, String> {
        let (backend, client) = match config {
            CountersConfig::Memory => (
                Backend::Memory(InMemoryStorage::new(MEMORY_CACHE_SIZE)),
                None,
            ),
            CountersConfig::Redis {
                url,
                password_file,
                timeout,
            } => {
                let password = password_file
                    .as_deref()
                    .map(|path| crate::secret_file::read_secret_file(path, 1))
                    .transpose()
                    .map_err(|(file, reason)| {
                        format!("rate_limit_redis_password_file {file}: {reason}")
                    })?;
                let client = redis_client("--rate-limit-redis", url, password.as_deref())?;
                let backend = Backend::Redis {
                    storage: ArcSwapOption::empty(),
                    timeout: *timeout,
                };
                (backend, Some((client, *timeout)))
            }
        };
        let counters = Arc::new(Counters {
            backend,
            fail_closed,
            reachable: AtomicBool::new(true),
            health: watch::Sender::new(client.is_none()),
        });
        if let Some((client, timeout)) = client {
            tokio::spawn(connect(counters.clone(), client, timeout));
        } else if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_every_minute(Arc::downgrade(&counters)));
        }
        Ok(counters)
    }

    /// Whether the counters answer (always, in memory).
    pub fn health(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    /// Counts `hits` against every applicable limit, or none if one of them
    /// would go over.
    pub async fn admit(&self, applicable: &Applicable, hits: u64) -> Admission {
        let mut counters: Vec<Counter> = NO_VARIABLES.with(|context| {
            applicable
                .iter()
                .filter_map(|limit| Counter::new(limitador_limit(limit), context).ok().flatten())
                .collect()
        });
        let result = match &self.backend {
            Backend::Memory(storage) => storage.check_and_update(&mut counters, hits),
            Backend::Redis { storage, timeout } => match storage.load_full() {
                None => Err(StorageErr::from(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "not connected yet",
                )))),
                Some(storage) => {
                    match tokio::time::timeout(
                        *timeout,
                        storage.check_and_update(&mut counters, hits),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(StorageErr::from(redis::RedisError::from((
                            redis::ErrorKind::IoError,
                            "timed out",
                        )))),
                    }
                }
            },
        };
        match result {
            Ok(Authorization::Ok) => {
                self.reached();
                Admission::Within(closest(applicable, &counters, hits))
            }
            Ok(Authorization::Limited(_)) => {
                self.reached();
                Admission::Over(refusing(applicable, &counters, hits))
            }
            Err(error) => {
                self.unreachable(&error.to_string());
                if self.fail_closed {
                    Admission::Unavailable
                } else {
                    Admission::Within(None)
                }
            }
        }
    }

    /// Drops the in-memory counters whose window has run out; how many.
    pub fn sweep(&self) -> usize {
        let Backend::Memory(storage) = &self.backend else {
            return 0;
        };
        let mut dropped = 0;
        let mut after = None;
        loop {
            let (removed, next) = storage.remove_expired(after.as_ref(), SWEEP_CHUNK);
            dropped += removed;
            match next {
                Some(next) => after = Some(next),
                None => return dropped,
            }
        }
    }

    fn reached(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("rate-limit counters reachable again");
            self.health.send_replace(true);
        }
    }

    /// Counted on every failure, logged once per outage.
    fn unreachable(&self, reason: &str) {
        metrics::counter!(crate::telemetry::RATE_LIMIT_BACKEND_ERRORS_TOTAL).increment(1);
        if self.reachable.swap(false, Ordering::Relaxed) {
            let then = if self.fail_closed {
                "denying requests of limited keys (503) until they return"
            } else {
                "letting requests of limited keys through uncounted until they return"
            };
            tracing::warn!(reason, "rate-limit counters unreachable: {then}");
            self.health.send_replace(false);
        }
    }
}

/// The limit as limitador knows it: its counter is its namespace (the
/// window is part of a counter's identity, the count is not).
fn limitador_limit(limit: &ActiveLimit) -> Arc<Limit> {
    Arc::new(Limit::new(
        &*limit.counter,
        limit.limit,
        limit.window_secs,
        [],
        Vec::<limitador::limit::Expression>::new(),
    ))
}

/// After an admitted request: the limit with the least left.
fn closest(applicable: &Applicable, counters: &[Counter], hits: u64) -> Option<RateStatus> {
    applicable
        .iter()
        .zip(counters)
        .map(|(limit, counter)| {
            let left = counter.remaining().unwrap_or(limit.limit);
            status(limit, counter, left.saturating_sub(hits))
        })
        .min_by_key(|status| status.remaining)
}

/// After a refused request: the limit over, the one that frees up last if
/// several are (a retry before then would be refused again).
fn refusing(applicable: &Applicable, counters: &[Counter], hits: u64) -> RateStatus {
    applicable
        .iter()
        .zip(counters)
        .filter(|(_, counter)| counter.remaining().is_some_and(|left| left < hits))
        .map(|(limit, counter)| status(limit, counter, 0))
        .max_by_key(|status| status.reset_secs)
        .unwrap_or_else(|| {
            let limit = applicable.iter().next().expect("an applicable limit");
            RateStatus {
                quota: limit.quota.clone(),
                name: limit.name.clone(),
                limit: limit.limit,
                window_secs: limit.window_secs,
                remaining: 0,
                reset_secs: limit.window_secs,
            }
        })
}

fn status(limit: &ActiveLimit, counter: &Counter, remaining: u64) -> RateStatus {
    let reset = counter
        .expires_in()
        .unwrap_or(Duration::from_secs(limit.window_secs));
    RateStatus {
        quota: limit.quota.clone(),
        name: limit.name.clone(),
        limit: limit.limit,
        window_secs: limit.window_secs,
        remaining,
        reset_secs: reset.as_millis().div_ceil(1000).max(1) as u64,
    }
}

/// The Redis client for `flag`'s URL, the password set apart from it (read
/// from `flag`-password-file).
pub fn redis_client(
    flag: &str,
    url: &str,
    password: Option<&str>,
) -> Result<redis::Client, String> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|error| format!("{flag} `{}`: {error}", redacted(url)))?;
    if info.redis.password.is_some() {
        return Err(format!(
            "{flag}: put the password in {flag}-password-file, not in the URL"
        ));
    }
    info.redis.password = password.map(str::to_owned);
    redis::Client::open(info).map_err(|error| format!("{flag}: {error}"))
}

/// A URL as it may be logged: anything before an `@` dropped.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}

/// Until the counters are gone: a sweep every [`SWEEP_EVERY`], on a blocking
/// thread (never a decision worker).
async fn sweep_every_minute(counters: Weak<Counters>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(counters) = counters.upgrade() else {
            return;
        };
        let dropped = tokio::task::spawn_blocking(move || counters.sweep())
            .await
            .unwrap_or(0);
        if dropped > 0 {
            tracing::debug!(dropped, "rate-limit counters past their window dropped");
        }
    }
}

/// Connects until Redis answers once; from then on limitador's connection
/// manager reconnects on its own.
async fn connect(counters: Arc<Counters>, client: redis::Client, timeout: Duration) {
    let Backend::Redis { storage, .. } = &counters.backend else {
        return;
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout.max(Duration::from_millis(500)))
        .set_response_timeout(timeout)
        .set_number_of_retries(1);
    loop {
        let manager =
            redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone()).await;
        let connected = match manager {
            Ok(manager) => AsyncRedisStorage::new_with_conn_manager(manager).await,
            Err(error) => Err(error),
        };
        match connected {
            Ok(connected) => {
                storage.store(Some(Arc::new(connected)));
                counters.reached();
                counters.health.send_replace(true);
                return;
            }
            Err(error) => counters.unreachable(&error.to_string()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::RateLimit;

    fn applicable(texts: &[&str]) -> Applicable {
        let limits: Arc<[ActiveLimit]> = texts
            .iter()
            .map(|text| ActiveLimit::new(&RateLimit::parse(text, false).unwrap(), None, "k", "a"))
            .collect();
        Applicable::named(&limits, None).unwrap()
    }

    #[tokio::test]
    async fn in_memory_counters_refuse_past_the_limit_and_report_the_closest() {
        let counters = Counters::start(&CountersConfig::Memory, false).unwrap();
        let limits = applicable(&["small=3/minute", "big=100/minute"]);
        for left in [2, 1, 0] {
            let Admission::Within(Some(status)) = counters.admit(&limits, 1).await else {
                panic!("refused too early");
            };
            assert_eq!((&*status.name, status.remaining), ("small", left));
            assert!((1..=60).contains(&status.reset_secs), "{status:?}");
        }
        let Admission::Over(status) = counters.admit(&limits, 1).await else {
            panic!("the fourth request went through");
        };
        assert_eq!((&*status.name, status.remaining), ("small", 0));
        // Refused requests are not counted against the other limit.
        let big = applicable(&["big=100/minute"]);
        let Admission::Within(Some(status)) = counters.admit(&big, 1).await else {
            panic!("big refused");
        };
        assert_eq!(status.remaining, 96);
    }

    /// Counters of limits no longer used (a deleted key's) go once their
    /// window has run out; live ones keep their count.
    #[tokio::test]
    async fn a_sweep_drops_counters_past_their_window_and_keeps_the_rest() {
        let counters = Counters::start(&CountersConfig::Memory, false).unwrap();
        let (short, long) = (applicable(&["gone=5/3s"]), applicable(&["live=5/minute"]));
        // More than one chunk of counters that will run out.
        let many: Vec<Applicable> = (0..SWEEP_CHUNK + 10)
            .map(|n| {
                let limits: Arc<[ActiveLimit]> = [ActiveLimit::new(
                    &RateLimit::parse("x=5/3s", false).unwrap(),
                    None,
                    &format!("k{n}"),
                    "a",
                )]
                .into();
                Applicable::named(&limits, None).unwrap()
            })
            .collect();
        for limits in many.iter().chain([&short, &long]) {
            assert!(matches!(
                counters.admit(limits, 1).await,
                Admission::Within(_)
            ));
        }
        // (3 s windows: a busy machine admits all of them well within one.)
        assert_eq!(counters.sweep(), 0, "nothing has run out yet");
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(counters.sweep(), SWEEP_CHUNK + 11);
        assert_eq!(counters.sweep(), 0);
        let Admission::Within(Some(status)) = counters.admit(&long, 1).await else {
            panic!("live refused");
        };
        assert_eq!(status.remaining, 3, "the live counter kept its count");
        let Admission::Within(Some(status)) = counters.admit(&short, 1).await else {
            panic!("gone refused");
        };
        assert_eq!(status.remaining, 4, "a fresh window");
    }

    #[test]
    fn passwords_stay_out_of_urls_and_messages() {
        let error = redis_client(
            "--rate-limit-redis",
            "redis://:hunter2@127.0.0.1:6379",
            None,
        )
        .unwrap_err();
        assert!(
            error.contains("password-file") && !error.contains("hunter2"),
            "{error}"
        );
        let error = redis_client("--rate-limit-redis", "redis://:hunter2@[bad", None).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
