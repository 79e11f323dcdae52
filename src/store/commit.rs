//! Group commit: one task flushes sled for every change queued so far, then
//! publishes the changes to the in-memory table in order, then replies.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::key::{AuthEntry, KeyTable};
use crate::token::KeyId;

pub(super) enum Publish {
    Upsert(KeyId, Arc<AuthEntry>),
    Remove(KeyId),
}

pub(super) struct Commit {
    pub publish: Publish,
    /// Woken once the change is durable and visible to `Check`.
    pub done: oneshot::Sender<Result<(), StoreError>>,
}

pub(super) async fn run(
    db: sled::Db,
    table: Arc<KeyTable>,
    mut queue: mpsc::UnboundedReceiver<Commit>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, usize::MAX).await > 0 {
        let flush_db = db.clone();
        let started = std::time::Instant::now();
        let flushed = tokio::task::spawn_blocking(move || flush_db.flush()).await;
        metrics::histogram!(crate::telemetry::STORE_FLUSH_SECONDS).record(started.elapsed());
        match flushed {
            Ok(Ok(_)) => {
                for commit in batch.drain(..) {
                    match commit.publish {
                        Publish::Upsert(key_id, entry) => table.insert(key_id, entry),
                        Publish::Remove(key_id) => table.remove(&key_id),
                    }
                    let _ = commit.done.send(Ok(()));
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, changes = batch.len(), "store flush failed; changes not acknowledged");
                for commit in batch.drain(..) {
                    let _ = commit.done.send(Err(StoreError::Io(error.clone())));
                }
            }
            Err(_) => {
                for commit in batch.drain(..) {
                    let _ = commit.done.send(Err(StoreError::Closed));
                }
            }
        }
    }
}
