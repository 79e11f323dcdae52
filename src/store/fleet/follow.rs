//! The watcher → writer half: one watch on the keys, applied batch by batch
//! to the mirror and the table; a full read when the watch cannot resume
//! (compaction, no mirror, or an etcd whose history is not the one the
//! mirror followed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};

use super::{etcd_unavailable, prefix_end, Fleet, MirrorChange, PAGE, PROGRESS_EVERY};
use crate::store::{decode, Store, StoreError};

impl Fleet {
    /// The watcher: keeps the mirror and the table following etcd, forever.
    pub async fn follow(self: Arc<Fleet>, store: Store) {
        let mut backoff = Duration::from_millis(100);
        let mut last_error = String::new();
        loop {
            let outcome = self.follow_once(&store).await;
            self.state.watching.store(false, Ordering::Release);
            if let Err(error) = outcome {
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!(error = %text, "etcd sync interrupted; serving the last applied state and retrying");
                    last_error = text;
                }
                if matches!(error, StoreError::Failed { .. }) {
                    return; // the server is stopping to recover from disk
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }

    /// Connects, catches up (a full read if needed) and follows the watch
    /// until it breaks.
    pub(super) async fn follow_once(&self, store: &Store) -> Result<(), StoreError> {
        let mut client = self.connect().await?;
        let position = self.position(&mut client).await?;
        let applied = *self.applied.borrow();
        if applied == 0 {
            self.resync(store, &mut client).await?;
        } else if let Some(reason) = went_back(applied, store.mirror_identity()?, position) {
            // Watching from `applied + 1` would hear nothing of etcd's new
            // history (a restore from a snapshot, another cluster): read it whole.
            tracing::warn!(
                applied,
                etcd_revision = position.revision,
                %reason,
                "etcd is not the history this mirror followed: full resync"
            );
            self.resync(store, &mut client).await?;
        }
        store.set_mirror_identity(position.cluster, position.term)?;
        let from = *self.applied.borrow() + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = client
            .watch(self.keys_prefix(), Some(options))
            .await
            .map_err(etcd_unavailable)?;
        match self.apply_stream(store, &mut stream).await? {
            StreamEnd::Compacted(revision) => {
                tracing::warn!(
                    compacted = revision,
                    applied = *self.applied.borrow(),
                    "etcd compacted past the applied revision: full resync"
                );
                self.resync(store, &mut client).await
            }
            StreamEnd::Broken(reason) => Err(StoreError::EtcdUnavailable(reason)),
        }
    }

    pub(super) async fn apply_stream(
        &self,
        store: &Store,
        stream: &mut WatchStream,
    ) -> Result<StreamEnd, StoreError> {
        loop {
            let message = match tokio::time::timeout(PROGRESS_EVERY, stream.message()).await {
                Err(_idle) => {
                    if let Err(error) = stream.request_progress().await {
                        return Ok(StreamEnd::Broken(error.to_string()));
                    }
                    continue;
                }
                Ok(Err(error)) => return Ok(StreamEnd::Broken(error.to_string())),
                Ok(Ok(None)) => return Ok(StreamEnd::Broken("the watch stream ended".into())),
                Ok(Ok(Some(message))) => message,
            };
            if message.compact_revision() > 0 {
                return Ok(StreamEnd::Compacted(message.compact_revision()));
            }
            if message.canceled() {
                return Ok(StreamEnd::Broken(format!(
                    "watch canceled: {}",
                    message.cancel_reason()
                )));
            }
            self.state.touch();
            self.state.watching.store(true, Ordering::Release);
            if message.events().is_empty() {
                // Created, or a progress notification: contact, nothing more.
                // The applied revision moves only on events: before etcd
                // 3.4.25 / 3.5.8 (etcd issue 15220) a progress reply can pass
                // an event still queued, and advancing on it would let a
                // re-watch skip that event.
                continue;
            }
            let mut changes = Vec::with_capacity(message.events().len());
            let mut revision = 0;
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                if let Some(role_id) = self.role_id_of(kv.key()) {
                    changes.push(MirrorChange::Role(
                        role_id,
                        match event.event_type() {
                            EventType::Put => self.role_value(role_id, kv.value()),
                            EventType::Delete => None,
                        },
                    ));
                    continue;
                }
                let Some(key_id) = self.key_id_of(kv.key()) else {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring an etcd key that is not a key record");
                    continue;
                };
                changes.push(match event.event_type() {
                    EventType::Put => match decode(key_id.as_bytes(), kv.value()) {
                        Ok(record) => MirrorChange::Put(key_id, Box::new(record)),
                        // Never stall the fleet on one bad record: deny it here.
                        Err(error) => MirrorChange::Unreadable(key_id, error.to_string()),
                    },
                    EventType::Delete => MirrorChange::Delete(key_id),
                });
            }
            store.apply_mirror(&changes, revision)?;
            self.advance(revision);
        }
    }

    /// A role from etcd; one this sidecar cannot read grants nothing here
    /// (its keys keep their own scopes), logged.
    fn role_value(
        &self,
        role_id: crate::role::RoleId,
        value: &[u8],
    ) -> Option<Box<crate::store::RoleRecord>> {
        match crate::store::roles::decode_role(value) {
            Ok(role) if role.id() == Some(role_id) => Some(Box::new(role)),
            Ok(_) => {
                tracing::warn!(%role_id, "ignoring a role whose inner id differs from its path");
                None
            }
            Err(error) => {
                tracing::warn!(%role_id, %error, "ignoring a role this sidecar cannot read");
                None
            }
        }
    }

    pub(super) fn advance(&self, revision: i64) {
        self.applied.send_if_modified(|applied| {
            if revision > *applied {
                *applied = revision;
                true
            } else {
                false
            }
        });
        let applied = *self.applied.borrow();
        self.state
            .applied_revision
            .store(applied, Ordering::Release);
        metrics::gauge!(crate::telemetry::FLEET_APPLIED_REVISION).set(applied as f64);
    }

    /// etcd's cluster id, current revision and raft term, from a
    /// linearizable read (the member answering has a leader).
    pub(super) async fn position(&self, client: &mut Client) -> Result<Position, StoreError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let got = client
            .get(self.keys_prefix(), Some(options))
            .await
            .map_err(etcd_unavailable)?;
        let header = got
            .header()
            .ok_or_else(|| StoreError::EtcdUnavailable("a reply without a header".into()))?;
        Ok(Position {
            cluster: header.cluster_id(),
            revision: header.revision(),
            term: header.raft_term(),
        })
    }

    /// A full read of every key at one revision, replacing the mirror whole.
    pub(super) async fn resync(
        &self,
        store: &Store,
        client: &mut Client,
    ) -> Result<(), StoreError> {
        let prefix = self.keys_prefix();
        let end = prefix_end(&prefix);
        let mut records = Vec::new();
        let mut roles = Vec::new();
        let mut unreadable = Vec::new();
        let mut revision = 0;
        let mut start = prefix.clone();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = client
                .get(start.clone(), Some(options))
                .await
                .map_err(etcd_unavailable)?;
            if revision == 0 {
                revision = page.header().map(|header| header.revision()).unwrap_or(0);
            }
            for kv in page.kvs() {
                if let Some(role_id) = self.role_id_of(kv.key()) {
                    if let Some(role) = self.role_value(role_id, kv.value()) {
                        roles.push((role_id, *role));
                    }
                    continue;
                }
                let Some(key_id) = self.key_id_of(kv.key()) else {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring an etcd key that is not a key record");
                    continue;
                };
                match decode(key_id.as_bytes(), kv.value()) {
                    Ok(record) => records.push((key_id, record)),
                    Err(error) => unreadable.push((key_id, error.to_string())),
                }
            }
            match (page.more(), page.kvs().last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        let count = records.len();
        store.replace_mirror(records, roles, &unreadable, revision)?;
        self.state.touch();
        self.state.synced.store(true, Ordering::Release);
        self.state.resyncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::FLEET_RESYNCS_TOTAL).increment(1);
        // A full read replaces whatever was applied, even at a lower revision
        // (a restored etcd); later events follow from here.
        self.applied.send_replace(revision);
        self.advance(revision);
        tracing::info!(revision, keys = count, "full sync from etcd applied");
        Ok(())
    }
}

/// Where etcd is: which cluster, how far its history goes, which raft term.
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    cluster: u64,
    revision: i64,
    term: u64,
}

/// Why etcd's history cannot be the one the mirror followed up to `applied`:
/// another cluster, or a revision or raft term behind what the mirror saw
/// (neither ever goes back in a living cluster; a restore takes both back).
pub(super) fn went_back(
    applied: i64,
    recorded: Option<(u64, u64)>,
    now: Position,
) -> Option<String> {
    if now.revision < applied {
        return Some(format!(
            "etcd's revision {} is behind the mirror's {applied}",
            now.revision
        ));
    }
    let (cluster, term) = recorded?;
    if cluster != now.cluster {
        return Some(format!(
            "etcd's cluster id {:x} is not the mirror's {cluster:x}",
            now.cluster
        ));
    }
    (now.term < term).then(|| {
        format!(
            "etcd's raft term {} is behind the mirror's {term}",
            now.term
        )
    })
}

pub(super) enum StreamEnd {
    Compacted(i64),
    Broken(String),
}
