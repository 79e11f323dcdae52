//! Events scopegate derives rather than a change: a key's rate limit hit
//! (at most once per key, limit and window, a window counted as at least
//! a minute so a per-second limit cannot make an event a second), its
//! credits run out (once per
//! key a day), its expiry near (`key.expiring`) or past (`key.expired`).
//! Decisions only offer a signal to a bounded queue (never waiting, dropped
//! when full); the queue's consumer puts each event in the outbox once per
//! id, so every sidecar noticing the same thing sends one event.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Webhooks;
use crate::authz::now_unix_ms;
use crate::ratelimit::RateStatus;
use crate::store::{AuditEvent, KeyState, RateLimitRecord, StoreError};
use crate::token::KeyId;

/// Signals queued at most; more are dropped (and counted) until it drains.
const QUEUE: usize = 1024;
/// Once-ids remembered here at most.
const MAX_REMEMBERED: usize = 100_000;

enum Signal {
    RateLimited {
        key_id: KeyId,
        account_id: Arc<str>,
        limit: Arc<str>,
        allowed: u64,
        window_secs: u64,
    },
    CreditsExhausted {
        key_id: KeyId,
        account_id: Arc<str>,
    },
}

/// Where decisions offer what they noticed.
pub struct Signals {
    queue: mpsc::Sender<Signal>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Signal>>>,
}

impl Signals {
    pub(super) fn new() -> Signals {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Signals {
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
        }
    }

    /// A request refused by a key's rate limit.
    pub fn rate_limited(&self, key_id: KeyId, account_id: &Arc<str>, status: &RateStatus) {
        self.offer(Signal::RateLimited {
            key_id,
            account_id: account_id.clone(),
            limit: status.name.clone(),
            allowed: status.limit,
            window_secs: status.window_secs,
        });
    }

    /// A request its key's credits could not pay for.
    pub fn credits_exhausted(&self, key_id: KeyId, account_id: &Arc<str>) {
        self.offer(Signal::CreditsExhausted {
            key_id,
            account_id: account_id.clone(),
        });
    }

    fn offer(&self, signal: Signal) {
        if self.queue.try_send(signal).is_err() {
            metrics::counter!(crate::telemetry::WEBHOOK_SIGNALS_DROPPED_TOTAL).increment(1);
        }
    }
}

/// Puts each signal's event in the outbox once per id; ids already put are
/// remembered here for an hour, so a key refused a million times costs the
/// store one write.
pub(super) async fn run(hooks: Arc<Webhooks>) {
    let Some(mut receiver) = hooks
        .signals
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let mut sent: HashMap<String, i64> = HashMap::new();
    while let Some(signal) = receiver.recv().await {
        let now = now_unix_ms();
        sent.retain(|_, expires| *expires > now);
        if sent.len() > MAX_REMEMBERED {
            // Bounded memory; the store's once-ids still keep events single.
            sent.clear();
        }
        let (once, expires, event) = derive(signal, now);
        if sent.contains_key(&once) {
            continue;
        }
        match hooks
            .store
            .hooks_enqueue_once(once.clone(), expires, event)
            .await
        {
            Ok(_) => {
                sent.insert(once, expires.min(now + 3_600_000));
            }
            Err(error) => tracing::warn!(%error, "webhooks: could not queue a derived event"),
        }
    }
}

/// The once-id, its expiry and the event of a signal.
fn derive(signal: Signal, now: i64) -> (String, i64, AuditEvent) {
    match signal {
        Signal::RateLimited {
            key_id,
            account_id,
            limit,
            allowed,
            window_secs,
        } => {
            let window_ms = (window_secs.max(60) * 1000) as i64;
            let window = now / window_ms;
            let limit_tag = hex::encode(&crate::token::sha256(limit.as_bytes())[..6]);
            let once = format!("rate_limited/{key_id}/{limit_tag}/{window}");
            let after = KeyState {
                rate_limits: vec![RateLimitRecord {
                    name: limit.to_string(),
                    limit: allowed,
                    window_secs,
                    ..RateLimitRecord::default()
                }],
                enabled: true,
                ..KeyState::default()
            };
            let event = derived_event("rate_limited", key_id, &account_id, now, Some(after));
            (once, (window + 1) * window_ms + 86_400_000, event)
        }
        Signal::CreditsExhausted { key_id, account_id } => {
            let day = now / 86_400_000;
            let once = format!("credits_exhausted/{key_id}/{day}");
            let event = derived_event("credits_exhausted", key_id, &account_id, now, None);
            (once, (day + 2) * 86_400_000, event)
        }
    }
}

fn derived_event(
    action: &str,
    key_id: KeyId,
    account_id: &str,
    now: i64,
    after: Option<KeyState>,
) -> AuditEvent {
    AuditEvent {
        time_unix_ms: now,
        actor: "scopegate".into(),
        action: action.into(),
        key_id: key_id.as_bytes().to_vec(),
        account_id: account_id.into(),
        after,
        ..AuditEvent::default()
    }
}

impl Webhooks {
    /// Queues `key.expiring` for keys expiring within the settings' notice
    /// and `key.expired` for keys past their expiry, once per key and
    /// expiry; drops once-ids past their time.
    pub(super) async fn scan_expiries(&self) -> Result<(), StoreError> {
        let now = now_unix_ms();
        let notice = self.settings.expiring_before.as_millis() as i64;
        let candidates = self.store.table().expiring(now.saturating_add(notice));
        for (key_id, expires) in candidates {
            let action = match expires <= now {
                true if now - expires > notice => continue,
                true => "expired",
                false => "expiring",
            };
            // Kept past the key's own life (expired keys may be listed for long).
            let once = format!("{action}/{key_id}/{expires}");
            if !self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(once.clone())
            {
                continue;
            }
            let store = self.store.clone();
            let record = tokio::task::spawn_blocking(move || store.get(&key_id))
                .await
                .map_err(|_| StoreError::Closed)??;
            let Some(record) = record else { continue };
            let mut event = derived_event(action, key_id, &record.account_id, now, None);
            event.after = Some(KeyState::of(&record));
            self.store
                .hooks_enqueue_once(once, expires + 400 * 86_400_000, event)
                .await?;
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|once| {
                once.rsplit('/')
                    .next()
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_some_and(|expires| now - expires <= notice)
            });
        self.prune_once(now).await
    }

    /// Removes once-ids whose time has passed (a bounded batch).
    async fn prune_once(&self, now: i64) -> Result<(), StoreError> {
        let entries = self.store.hooks_scan("once/", None, 10_000).await?;
        let stale: Vec<_> = entries
            .into_iter()
            .filter(|entry| {
                <[u8; 8]>::try_from(entry.value.as_slice())
                    .is_ok_and(|bytes| i64::from_be_bytes(bytes) < now)
            })
            .map(|entry| crate::store::HookOp::Delete(entry.path))
            .collect();
        for chunk in stale.chunks(100) {
            self.store.hooks_apply(chunk.to_vec()).await?;
        }
        Ok(())
    }
}
