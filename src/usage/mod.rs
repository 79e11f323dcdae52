//! Usage: every decision of every door counted per key, outcome and scope
//! (`record`, on the hot path), flushed every `--usage-flush-secs` off the
//! workers into a book (`local`: this sidecar's sled; `shared`: Redis, the
//! fleet's sum), and read back as SendGrid's stats (`crate::stats`).
//!
//! Truth: a flush is written whole or not at all, and kept (bounded) and
//! retried while its book is away; a kill -9 forgets at most the cells of
//! the flush interval that had not been flushed yet.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::authz::Decision;
use crate::key::KeyTable;
use crate::scope::{ScopeSet, SharedCatalog};
use crate::stats::{self, Grain, Kept, Point, Range, Subject, Tally};
use crate::store::Store;
use crate::telemetry;
use crate::token::TokenFormat;

mod batch;
mod local;
mod record;
mod shared;

pub use batch::{Batch, ACCOUNT_TOTAL};
use local::LocalBook;
use record::Recorder;
use shared::SharedBook;

pub const DEFAULT_FLUSH_SECS: u64 = 10;
/// Records held for an absent book before the oldest flushes are dropped:
/// ~200 bytes each, so at most ~40 MiB.
pub const MAX_PENDING_RECORDS: usize = 200_000;
/// Keys a top-keys read of one account looks at, at most.
pub const MAX_KEYS_READ: usize = 1_000;

#[derive(Debug, Clone)]
pub struct UsageConfig {
    pub flush_every: Duration,
    pub kept: Kept,
    /// The fleet's shared book; `None`: this sidecar's sled.
    pub redis: Option<UsageRedis>,
}

#[derive(Debug, Clone)]
pub struct UsageRedis {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("usage is not counted here: the sidecar runs with --usage off")]
    Off,
    #[error("usage cannot be read now: {0}")]
    Away(String),
    #[error("{0}")]
    Range(#[from] stats::RangeError),
}

enum Book {
    Local(Arc<LocalBook>),
    /// Connected in the background: until then, flushes wait.
    Shared(Box<tokio::sync::OnceCell<SharedBook>>),
}

/// One flush waiting for its book, under its id (retries reuse it).
struct Held {
    id: u64,
    batch: Arc<Batch>,
}

pub struct Usage {
    recorder: Recorder,
    book: Book,
    catalog: SharedCatalog,
    kept: Kept,
    /// A fleet without a shared book: each sidecar answers for itself.
    partial: bool,
    held: tokio::sync::Mutex<VecDeque<Held>>,
    next_id: std::sync::atomic::AtomicU64,
    /// False from a failed write to the next good one: one WARN per outage.
    reachable: AtomicBool,
}

/// One read: what and how.
pub struct UsageRead<'a> {
    pub account: &'a str,
    /// `None`: the account's total.
    pub key: Option<&'a str>,
    pub range: Range,
    pub by_scope: bool,
    /// The account's N busiest keys, each a series of its own.
    pub top_keys: usize,
}

/// One stored cell, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub grain: Grain,
    /// Unix second its bucket starts.
    pub start: i64,
    pub account: String,
    pub key: String,
    pub outcome: String,
    pub scope: String,
    pub count: u64,
}

pub struct Report {
    pub points: Vec<Point>,
    /// Only this sidecar's counts (a fleet without a shared book).
    pub partial: bool,
}

impl Usage {
    /// Opens the book and starts the flusher (and, with Redis, the
    /// connection) in the background.
    pub fn start(
        config: &UsageConfig,
        store: &Store,
        catalog: SharedCatalog,
        fleet: bool,
    ) -> Result<Arc<Usage>, String> {
        let book = match &config.redis {
            None => Book::Local(Arc::new(LocalBook::new(store.clone())?)),
            Some(_) => Book::Shared(Box::default()),
        };
        let usage = Arc::new(Usage {
            recorder: Recorder::default(),
            book,
            catalog,
            kept: config.kept,
            partial: fleet && config.redis.is_none(),
            held: tokio::sync::Mutex::new(VecDeque::new()),
            next_id: 1.into(),
            reachable: AtomicBool::new(true),
        });
        if let Some(redis) = &config.redis {
            let client = crate::counters::redis_client(
                "--usage-redis",
                &redis.url,
                redis_password(redis)?.as_deref().map(String::as_str),
            )?;
            tokio::spawn(connect(Arc::downgrade(&usage), client, redis.timeout));
        }
        tokio::spawn(flush_every(Arc::downgrade(&usage), config.flush_every));
        tokio::spawn(prune_hourly(Arc::downgrade(&usage)));
        Ok(usage)
    }

    /// Counts one decision (see `record`).
    #[inline]
    pub fn record(
        &self,
        decision: &Decision,
        token: &str,
        format: &TokenFormat,
        keys: &KeyTable,
        scopes: ScopeSet,
    ) {
        self.recorder.record(decision, token, format, keys, scopes);
    }

    /// Takes what was counted and writes it, with every flush held before
    /// it, in order; a failed write keeps them all for the next round.
    pub async fn flush(self: &Arc<Usage>) {
        let started = Instant::now();
        let usage = self.clone();
        let batch = tokio::task::spawn_blocking(move || {
            let catalog = usage.catalog.load();
            let mut batch = Batch::default();
            for cells in usage.recorder.take() {
                batch.add(&cells, &catalog);
                usage.recorder.recycle(cells);
            }
            batch
        })
        .await
        .unwrap_or_default();
        let mut held = self.held.lock().await;
        if !batch.is_empty() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            held.push_back(Held {
                id,
                batch: Arc::new(batch),
            });
            bound(&mut held);
        }
        while let Some(next) = held.front() {
            match self.write(next).await {
                Ok(()) => {
                    held.pop_front();
                    metrics::counter!(telemetry::USAGE_FLUSHES_TOTAL, "result" => "ok")
                        .increment(1);
                    if !self.reachable.swap(true, Ordering::Relaxed) {
                        tracing::info!("usage is written again");
                    }
                }
                Err(reason) => {
                    metrics::counter!(telemetry::USAGE_FLUSHES_TOTAL, "result" => "failed")
                        .increment(1);
                    if self.reachable.swap(false, Ordering::Relaxed) {
                        tracing::warn!(%reason, "usage cannot be written; held and retried each flush (one warning per outage)");
                    }
                    break;
                }
            }
        }
        let records: usize = held.iter().map(|held| held.batch.records.len()).sum();
        metrics::gauge!(telemetry::USAGE_PENDING_RECORDS).set(records as f64);
        metrics::histogram!(telemetry::USAGE_FLUSH_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// Records held for a book that was away at the last flush.
    pub async fn held_records(&self) -> usize {
        let held = self.held.lock().await;
        held.iter().map(|held| held.batch.records.len()).sum()
    }

    async fn write(&self, held: &Held) -> Result<(), String> {
        match &self.book {
            Book::Local(book) => {
                let (book, batch) = (book.clone(), held.batch.clone());
                tokio::task::spawn_blocking(move || book.write(&batch))
                    .await
                    .map_err(|error| error.to_string())?
            }
            Book::Shared(book) => match book.get() {
                Some(book) => book.write(held.id, &held.batch).await,
                None => Err("Redis is not connected yet".into()),
            },
        }
    }

    pub fn kept(&self) -> &Kept {
        &self.kept
    }

    /// A report: the subject's series per period, split by scope, with
    /// the account's busiest keys.
    pub async fn report(&self, read: &UsageRead<'_>) -> Result<Report, UsageError> {
        let grain = read.range.aggregate.grain();
        let buckets = read.range.buckets();
        let total = self.read(grain, read.account, read.key, buckets).await?;
        let mut subjects = vec![Subject {
            label: None,
            buckets: total,
        }];
        if read.top_keys > 0 {
            let totals = self.totals(grain, read.account, buckets).await?;
            let mut busiest: Vec<(String, u64)> = totals.into_iter().collect();
            busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (key, _) in busiest.into_iter().take(read.top_keys) {
                let buckets = self.read(grain, read.account, Some(&key), buckets).await?;
                subjects.push(Subject {
                    label: Some(("api_key", key)),
                    buckets,
                });
            }
        }
        let entries = stats::entries(&read.range, &subjects, read.by_scope);
        if entries > stats::MAX_ENTRIES {
            return Err(UsageError::Range(stats::RangeError::TooManyEntries {
                entries,
            }));
        }
        let (range, by_scope) = (read.range, read.by_scope);
        let points =
            tokio::task::spawn_blocking(move || stats::report(&range, &subjects, by_scope))
                .await
                .map_err(|error| UsageError::Away(error.to_string()))?;
        Ok(Report {
            points,
            partial: self.partial,
        })
    }

    async fn read(
        &self,
        grain: Grain,
        account: &str,
        key: Option<&str>,
        buckets: (u32, u32),
    ) -> Result<Vec<(u32, Tally)>, UsageError> {
        match &self.book {
            Book::Local(book) => {
                let (book, account, key) =
                    (book.clone(), account.to_owned(), key.map(str::to_owned));
                tokio::task::spawn_blocking(move || {
                    book.read(grain, &account, key.as_deref(), buckets)
                })
                .await
                .map_err(|error| UsageError::Away(error.to_string()))?
                .map_err(UsageError::Away)
            }
            Book::Shared(book) => shared(book)?
                .read(grain, account, key, buckets)
                .await
                .map_err(UsageError::Away),
        }
    }

    /// Decisions per key of `account` in `buckets` (the keys list's "last
    /// 24 h", top keys).
    pub async fn totals(
        &self,
        grain: Grain,
        account: &str,
        buckets: (u32, u32),
    ) -> Result<BTreeMap<String, u64>, UsageError> {
        match &self.book {
            Book::Local(book) => {
                let (book, account) = (book.clone(), account.to_owned());
                tokio::task::spawn_blocking(move || book.totals(grain, &account, buckets))
                    .await
                    .map_err(|error| UsageError::Away(error.to_string()))?
                    .map_err(UsageError::Away)
            }
            Book::Shared(book) => shared(book)?
                .totals(grain, account, buckets, MAX_KEYS_READ)
                .await
                .map_err(UsageError::Away),
        }
    }

    /// A page of stored cells (see `LocalBook::export`, `SharedBook::export`):
    /// the rows and the cursor of the next page, if any.
    pub async fn export(
        &self,
        grain: Grain,
        account: Option<&str>,
        buckets: (u32, u32),
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<UsageRow>, Option<Vec<u8>>), UsageError> {
        match &self.book {
            Book::Local(book) => {
                let (book, account) = (book.clone(), account.map(str::to_owned));
                tokio::task::spawn_blocking(move || {
                    book.export(grain, account.as_deref(), buckets, after.as_deref(), limit)
                })
                .await
                .map_err(|error| UsageError::Away(error.to_string()))?
                .map_err(UsageError::Away)
            }
            Book::Shared(book) => {
                let cursor = after
                    .and_then(|bytes| Some(u64::from_be_bytes(bytes.try_into().ok()?)))
                    .unwrap_or(0);
                let (rows, next) = shared(book)?
                    .export(grain, account, buckets, cursor, limit)
                    .await
                    .map_err(UsageError::Away)?;
                Ok((rows, (next != 0).then(|| next.to_be_bytes().to_vec())))
            }
        }
    }

    /// Deletes what is past retention (the local book; Redis expires its own).
    async fn prune(&self) {
        let Book::Local(book) = &self.book else {
            return;
        };
        let (book, kept) = (book.clone(), self.kept);
        let now = crate::authz::now_unix_ms() / 1000;
        match tokio::task::spawn_blocking(move || book.prune(&kept, now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pruned)) => tracing::debug!(pruned, "usage past retention pruned"),
            Ok(Err(reason)) => tracing::warn!(%reason, "usage could not be pruned"),
            Err(error) => tracing::warn!(%error, "usage prune stopped"),
        }
    }
}

fn shared(book: &tokio::sync::OnceCell<SharedBook>) -> Result<&SharedBook, UsageError> {
    book.get()
        .ok_or_else(|| UsageError::Away("usage's Redis is not connected yet".into()))
}

/// Drops the oldest held flushes past [`MAX_PENDING_RECORDS`], counting
/// their decisions.
fn bound(held: &mut VecDeque<Held>) {
    let mut records: usize = held.iter().map(|held| held.batch.records.len()).sum();
    while records > MAX_PENDING_RECORDS && held.len() > 1 {
        let Some(dropped) = held.pop_front() else {
            break;
        };
        records -= dropped.batch.records.len();
        metrics::counter!(telemetry::USAGE_DROPPED_TOTAL).increment(dropped.batch.decisions);
        tracing::warn!(
            decisions = dropped.batch.decisions,
            "usage held too long for its book was dropped"
        );
    }
}

fn redis_password(redis: &UsageRedis) -> Result<Option<zeroize::Zeroizing<String>>, String> {
    redis
        .password_file
        .as_deref()
        .map(|file| {
            crate::secret_file::read_secret_file(file, 1)
                .map(zeroize::Zeroizing::new)
                .map_err(|(file, reason)| format!("usage_redis_password_file {file}: {reason}"))
        })
        .transpose()
}

/// Connects until Redis answers; the connection manager reconnects on its
/// own from then on.
async fn connect(usage: Weak<Usage>, client: redis::Client, timeout: Duration) {
    loop {
        let Some(upgraded) = usage.upgrade() else {
            return;
        };
        let Book::Shared(cell) = &upgraded.book else {
            return;
        };
        match SharedBook::connect(client.clone(), timeout, upgraded.kept).await {
            Ok(book) => {
                let _ = cell.set(book);
                tracing::info!("usage is written to Redis");
                return;
            }
            Err(reason) => {
                if upgraded.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%reason, "usage's Redis cannot be reached; flushes are held and retried");
                }
            }
        }
        drop(upgraded);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn flush_every(usage: Weak<Usage>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(usage) = usage.upgrade() else {
            return;
        };
        usage.flush().await;
    }
}

async fn prune_hourly(usage: Weak<Usage>) {
    loop {
        let Some(upgraded) = usage.upgrade() else {
            return;
        };
        upgraded.prune().await;
        drop(upgraded);
        tokio::time::sleep(Duration::from_secs(3_600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batch::RecordKey;

    fn held(id: u64, records: usize, decisions: u64) -> Held {
        let mut batch = Batch {
            decisions,
            ..Batch::default()
        };
        for bucket in 0..records as u32 {
            let key = RecordKey {
                grain: Grain::Minute,
                account: "acme".into(),
                key: "k".into(),
                bucket,
            };
            batch.records.insert(key, Tally::new());
        }
        Held {
            id,
            batch: Arc::new(batch),
        }
    }

    #[test]
    fn held_flushes_past_the_bound_drop_oldest_first_and_never_the_newest() {
        let mut queue: VecDeque<Held> = [
            held(1, MAX_PENDING_RECORDS / 2, 10),
            held(2, MAX_PENDING_RECORDS / 2, 20),
            held(3, 10, 30),
        ]
        .into();
        bound(&mut queue);
        let ids: Vec<u64> = queue.iter().map(|held| held.id).collect();
        assert_eq!(ids, [2, 3], "the oldest went");
        let mut alone: VecDeque<Held> = [held(4, MAX_PENDING_RECORDS + 1, 1)].into();
        bound(&mut alone);
        assert_eq!(alone.len(), 1, "the newest flush is kept, however big");
    }
}
