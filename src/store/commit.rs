//! Group commit: one task makes every change queued so far durable at once
//! (sled flush, then `fdatasync` of sled's log), then publishes the changes
//! to the in-memory table in order, then replies.
//!
//! sled 0.34's `flush` ends in `sync_file_range`, which neither persists the
//! file size nor flushes the device cache: a power cut could resurrect a
//! deleted key. So after each flush the log file is `fdatasync`'d: one sync
//! per group, whatever its size.
//!
//! A failed flush or sync is final for this process: the queued changes fail
//! with UNAVAILABLE, the store refuses every later operation, and the server
//! exits non-zero so its restart reloads what the disk holds (see
//! `Store::failure`). Retrying in place could answer from sled's memory,
//! which may hold changes the disk does not.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::StoreError;
use crate::key::{AuthEntry, KeyTable};
use crate::token::KeyId;

/// Table entries to put (`Some`) or remove.
pub(super) type Entries = Vec<(KeyId, Option<Arc<AuthEntry>>)>;

pub(super) enum Publish {
    Upsert(KeyId, Arc<AuthEntry>),
    Remove(KeyId),
    /// Entries to put (`Some`) or remove, in order: a role's members.
    Many(Entries),
    /// A barrier: done once everything queued before it is durable.
    Nothing,
}

pub(super) struct Commit {
    pub publish: Publish,
    /// Woken once the change is durable and visible to `Check`.
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

/// sled's database and its log file, opened once for `fdatasync`.
#[derive(Clone)]
pub(super) struct Durable {
    db: sled::Db,
    log: Arc<File>,
}

impl Durable {
    /// sled 0.34 keeps every page in one log file, `db`, beside `conf` and
    /// occasional `snap.*` files (which it can rebuild from the log).
    /// A tree of the same database (flushed and synced with it).
    pub fn open_tree(&self, name: &str) -> sled::Result<sled::Tree> {
        self.db.open_tree(name)
    }

    /// A number larger than every one given before, across restarts.
    pub fn generate_id(&self) -> sled::Result<u64> {
        self.db.generate_id()
    }

    pub fn open(db: sled::Db, sled_dir: &Path) -> std::io::Result<Durable> {
        let log = File::open(sled_dir.join("db"))?;
        Ok(Durable {
            db,
            log: Arc::new(log),
        })
    }

    /// Flushes sled and syncs its log to stable storage; the two steps are
    /// timed apart (`scopegate_store_flush_seconds`, `..._sync_seconds`).
    pub fn sync(&self) -> Result<(), String> {
        let started = std::time::Instant::now();
        self.db
            .flush()
            .map_err(|error| format!("flush failed: {error}"))?;
        let flushed = std::time::Instant::now();
        metrics::histogram!(crate::telemetry::STORE_FLUSH_SECONDS).record(flushed - started);
        self.log
            .sync_data()
            .map_err(|error| format!("fdatasync failed: {error}"))?;
        metrics::histogram!(crate::telemetry::STORE_SYNC_SECONDS).record(flushed.elapsed());
        Ok(())
    }
}

/// fsyncs a directory, so the entries of files created in it are durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) async fn run(
    durable: Durable,
    table: Arc<KeyTable>,
    mut queue: mpsc::UnboundedReceiver<Commit>,
    failed: watch::Sender<Option<String>>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, usize::MAX).await > 0 {
        if let Some(reason) = failed.borrow().clone() {
            // Applied in sled on top of a change that may be lost: never acknowledged.
            for commit in batch.drain(..) {
                let _ = commit.done.send(Err(StoreError::Failed {
                    reason: reason.clone(),
                }));
            }
            continue;
        }
        let syncing = durable.clone();
        let synced = tokio::task::spawn_blocking(move || syncing.sync())
            .await
            .unwrap_or_else(|_| Err("the sync thread panicked".into()));
        match synced {
            Ok(()) => {
                for commit in batch.drain(..) {
                    match commit.publish {
                        Publish::Upsert(key_id, entry) => table.insert(key_id, entry),
                        Publish::Remove(key_id) => table.remove(&key_id),
                        Publish::Many(entries) => {
                            for (key_id, entry) in entries {
                                match entry {
                                    Some(entry) => table.insert(key_id, entry),
                                    None => table.remove(&key_id),
                                }
                            }
                        }
                        Publish::Nothing => {}
                    }
                    let _ = commit.done.send(Ok(()));
                }
            }
            Err(reason) => {
                tracing::error!(%reason, changes = batch.len(), "store persist failed; changes not acknowledged; refusing further changes and stopping to recover from disk");
                failed.send_replace(Some(reason.clone()));
                for commit in batch.drain(..) {
                    let _ = commit.done.send(Err(StoreError::Failed {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}
