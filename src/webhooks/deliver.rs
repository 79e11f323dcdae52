//! The deliverer: one loop per sidecar, working only while this sidecar
//! holds the delivery lease (always, standalone). Each round fans the
//! outbox out to endpoints, sends what is due, and scans for expiries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::record::{
    dead_path, order_of, pending_path, pending_prefix, Delivery, EndpointRecord, ENDPOINTS,
};
use super::send::{Attempt, Message};
use super::{event, new_id, sign, Webhooks};
use crate::authz::now_unix_ms;
use crate::store::{AuditEvent, HookOp, StoreError, OUTBOX};
use crate::telemetry::{
    WEBHOOK_DELIVERIES_TOTAL, WEBHOOK_DELIVERING, WEBHOOK_OLDEST_SECONDS, WEBHOOK_PENDING,
};

/// Outbox events fanned out per round.
const FAN_OUT_PER_ROUND: usize = 64;
/// Pending deliveries read per endpoint per round (the depth is counted up to it).
const PENDING_PER_ROUND: usize = 1000;
/// Writes in one webhook state write at most (etcd takes 128 per transaction).
const OPS_PER_WRITE: usize = 120;
/// Deliveries in flight per endpoint (each to a different key).
const IN_FLIGHT_PER_ENDPOINT: usize = 16;
/// How often derived events (expiries) are looked for (in memory).
const EXPIRY_SCAN_EVERY: Duration = Duration::from_secs(10);
/// ... and soon after a change, at most this often.
const EXPIRY_SCAN_AFTER_CHANGE: Duration = Duration::from_secs(1);
/// The wait between rounds when the last found nothing to do (the busy
/// wait is `WebhookSettings::tick`), unless a change made here wakes it:
/// an idle sidecar wakes every 3 s (other sidecars' changes, in a fleet,
/// wait at most that), its blocking threads let go in between.
const IDLE_TICK: Duration = Duration::from_secs(3);
/// How often the delivery lease is kept (or sought): well within its TTL,
/// and at most once a second per sidecar against etcd.
const LEASE_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn run(hooks: Arc<Webhooks>) {
    let mut warned = false;
    let (mut leading, mut asked, mut scanned) = (false, None::<Instant>, None::<Instant>);
    // `changed`: a change was seen since the last expiry scan.
    let (mut busy, mut changed) = (false, false);
    loop {
        if busy {
            tokio::time::sleep(hooks.settings.tick).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_TICK) => {}
                _ = hooks.store.outbox_written() => changed = true,
            }
        }
        if asked.is_none_or(|asked| asked.elapsed() >= LEASE_EVERY) {
            asked = Some(Instant::now());
            leading = match hooks.store.hooks_leader(&hooks.holder).await {
                Ok(leading) => leading,
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "webhooks: cannot tell whether to deliver; retrying");
                        warned = true;
                    }
                    false
                }
            };
        }
        metrics::gauge!(WEBHOOK_DELIVERING).set(if leading { 1.0 } else { 0.0 });
        if !leading {
            busy = false;
            continue;
        }
        // A change may have set an expiry within the notice: look soon.
        let scan = scanned.is_none_or(|scanned| {
            scanned.elapsed() >= EXPIRY_SCAN_EVERY
                || (changed && scanned.elapsed() >= EXPIRY_SCAN_AFTER_CHANGE)
        });
        if scan {
            scanned = Some(Instant::now());
            changed = false;
        }
        busy = match hooks.round(scan).await {
            Ok((fanned, pending)) => {
                warned = false;
                changed |= fanned > 0;
                fanned > 0 || pending > 0
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "webhooks: a delivery round failed; retrying");
                    warned = true;
                }
                true
            }
        };
    }
}

impl Webhooks {
    /// One round: how many outbox events it moved, how many deliveries wait.
    async fn round(&self, scan_expiries: bool) -> Result<(usize, usize), StoreError> {
        let endpoints = self.endpoints().await?;
        let fanned = self.fan_out(&endpoints).await?;
        let now = now_unix_ms();
        let (mut pending, mut oldest) = (0usize, now);
        let sends = endpoints
            .iter()
            .filter(|endpoint| !endpoint.disabled)
            .map(|endpoint| self.deliver_to(endpoint));
        for result in join_all(sends).await {
            let (count, first) = result?;
            pending += count;
            oldest = oldest.min(first);
        }
        metrics::gauge!(WEBHOOK_PENDING).set(pending as f64);
        metrics::gauge!(WEBHOOK_OLDEST_SECONDS).set((now - oldest).max(0) as f64 / 1000.0);
        if scan_expiries {
            self.scan_expiries().await?;
        }
        Ok((fanned, pending))
    }

    /// Every endpoint of every account.
    pub(super) async fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        let entries = self.store.hooks_scan(ENDPOINTS, None, 100_000).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| prost::Message::decode(entry.value.as_slice()).ok())
            .collect())
    }

    /// Each outbox event becomes a pending delivery per endpoint that wants
    /// it (none: it is dropped); each event's moves in one write, events
    /// grouped into as few writes (syncs) as etcd's transaction size allows.
    /// Returns how many events it moved.
    async fn fan_out(&self, endpoints: &[EndpointRecord]) -> Result<usize, StoreError> {
        let entries = self
            .store
            .hooks_scan(OUTBOX, None, FAN_OUT_PER_ROUND)
            .await?;
        let moved = entries.len();
        let mut ops = Vec::new();
        for entry in entries {
            let mut moves = vec![HookOp::Delete(entry.path.clone())];
            match <AuditEvent as prost::Message>::decode(entry.value.as_slice()) {
                Ok(audit) => moves.extend(deliveries(&audit, entry.order, endpoints)),
                Err(error) => {
                    tracing::warn!(%error, path = entry.path, "webhooks: dropped an unreadable outbox entry")
                }
            }
            if ops.len() + moves.len() > OPS_PER_WRITE {
                self.store.hooks_apply(std::mem::take(&mut ops)).await?;
            }
            ops.extend(moves);
        }
        self.store.hooks_apply(ops).await?;
        Ok(moved)
    }

    /// Sends what is due to one endpoint: each key's oldest pending
    /// delivery, if its time has come. Returns how many are pending and
    /// when the oldest was queued.
    async fn deliver_to(&self, endpoint: &EndpointRecord) -> Result<(usize, i64), StoreError> {
        let started = Instant::now();
        loop {
            let entries = self
                .store
                .hooks_scan(
                    &pending_prefix(&endpoint.endpoint_id),
                    None,
                    PENDING_PER_ROUND,
                )
                .await?;
            let now = now_unix_ms();
            let oldest = entries.iter().fold(now, |oldest, entry| {
                decode(&entry.value).map_or(oldest, |d| oldest.min(d.queued_unix_ms))
            });
            let mut keys_seen = HashSet::new();
            let mut due = Vec::new();
            for entry in &entries {
                let Some(delivery) = decode(&entry.value) else {
                    continue;
                };
                if keys_seen.insert(delivery.subject.clone())
                    && delivery.next_attempt_unix_ms <= now
                    && due.len() < IN_FLIGHT_PER_ENDPOINT
                {
                    due.push((order_of(&entry.path), delivery));
                }
            }
            if due.is_empty() || started.elapsed() > Duration::from_secs(2) {
                return Ok((entries.len(), oldest));
            }
            let attempts = due.into_iter().map(|(order, delivery)| async move {
                let attempt = self.attempt(endpoint, &delivery).await;
                (order, delivery, attempt)
            });
            let mut ops = Vec::new();
            for (order, delivery, attempt) in join_all(attempts).await {
                ops.extend(self.settle(endpoint, order, delivery, attempt));
            }
            self.store.hooks_apply(ops).await?;
        }
    }

    async fn attempt(&self, endpoint: &EndpointRecord, delivery: &Delivery) -> Attempt {
        let now = now_unix_ms();
        let mut secrets = vec![endpoint.secret.as_str()];
        if endpoint.previous_until_unix_ms > now && !endpoint.previous_secret.is_empty() {
            secrets.push(endpoint.previous_secret.as_str());
        }
        let timestamp = now / 1000;
        let signature = sign::header(&secrets, &delivery.event_id, timestamp, &delivery.payload);
        self.sender
            .send(Message {
                url: &endpoint.url,
                id: &delivery.event_id,
                timestamp,
                signature,
                body: &delivery.payload,
            })
            .await
    }

    /// What an attempt leaves behind: nothing (delivered), the delivery
    /// with its next time, or a dead letter.
    fn settle(
        &self,
        endpoint: &EndpointRecord,
        order: i64,
        mut delivery: Delivery,
        attempt: Attempt,
    ) -> Vec<HookOp> {
        let path = pending_path(&endpoint.endpoint_id, order);
        let now = now_unix_ms();
        let (status, error) = match attempt {
            Attempt::Delivered => {
                metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "delivered").increment(1);
                return vec![HookOp::Delete(path)];
            }
            Attempt::Failed(status, error) => (status, error),
        };
        if delivery.first_attempt_unix_ms == 0 {
            delivery.first_attempt_unix_ms = now;
        }
        delivery.attempts += 1;
        delivery.last_status = u32::from(status);
        delivery.last_error = error;
        let retry_for = self.settings.retry_for.as_millis() as i64;
        if now - delivery.first_attempt_unix_ms >= retry_for {
            metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "dead").increment(1);
            tracing::warn!(
                endpoint = endpoint.endpoint_id,
                event = delivery.event_id,
                error = delivery.last_error,
                "webhook delivery given up: dead letter"
            );
            let dead = prost::Message::encode_to_vec(&delivery);
            return vec![
                HookOp::Delete(path),
                HookOp::Put(dead_path(&endpoint.endpoint_id, order), dead),
            ];
        }
        metrics::counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "failed").increment(1);
        delivery.next_attempt_unix_ms = now + backoff(delivery.attempts, self.settings.max_backoff);
        vec![HookOp::Put(path, prost::Message::encode_to_vec(&delivery))]
    }
}

/// The pending deliveries of one outbox event.
fn deliveries(audit: &AuditEvent, order: i64, endpoints: &[EndpointRecord]) -> Vec<HookOp> {
    let Some(event_type) = event::event_type(&audit.action) else {
        return Vec::new();
    };
    let targets: Vec<&EndpointRecord> = endpoints
        .iter()
        .filter(|endpoint| endpoint.account_id == audit.account_id && endpoint.wants(event_type))
        .collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let now = now_unix_ms();
    let delivery = Delivery {
        event_id: new_id("msg_"),
        event_type: event_type.into(),
        subject: audit.key_id.clone(),
        payload: event::payload(event_type, audit),
        queued_unix_ms: now,
        next_attempt_unix_ms: now,
        ..Delivery::default()
    };
    let value = prost::Message::encode_to_vec(&delivery);
    targets
        .iter()
        .map(|endpoint| HookOp::Put(pending_path(&endpoint.endpoint_id, order), value.clone()))
        .collect()
}

fn decode(value: &[u8]) -> Option<Delivery> {
    prost::Message::decode(value).ok()
}

/// The wait before attempt `attempts + 1`: 1 s doubling, capped at `max`,
/// a random half of it taken off so retries of many deliveries spread out.
fn backoff(attempts: u32, max: Duration) -> i64 {
    let ceiling = (1000i64 << attempts.saturating_sub(1).min(30))
        .min(max.as_millis() as i64)
        .max(1);
    let jitter = i64::from(getrandom::u32().unwrap_or(0)) % (ceiling / 2).max(1);
    ceiling - jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_with_jitter() {
        let max = Duration::from_secs(60);
        for attempts in 1..40 {
            let wait = backoff(attempts, max);
            let ceiling = (1000i64 << (attempts - 1).min(30)).min(60_000);
            assert!(wait <= ceiling && wait >= ceiling / 2, "{attempts}: {wait}");
        }
    }

    #[test]
    fn an_event_goes_to_the_accounts_endpoints_that_want_it() {
        let endpoint = |id: &str, account: &str, types: &[&str]| EndpointRecord {
            endpoint_id: id.into(),
            account_id: account.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            ..EndpointRecord::default()
        };
        let endpoints = [
            endpoint("a", "acct", &[]),
            endpoint("b", "acct", &["key.deleted"]),
            endpoint("c", "other", &[]),
            EndpointRecord {
                disabled: true,
                ..endpoint("d", "acct", &[])
            },
        ];
        let audit = AuditEvent {
            action: "create".into(),
            account_id: "acct".into(),
            key_id: vec![1; 16],
            ..AuditEvent::default()
        };
        let ops = deliveries(&audit, 7, &endpoints);
        let paths: Vec<_> = ops
            .iter()
            .map(|op| match op {
                HookOp::Put(path, _) => path.as_str(),
                HookOp::Delete(path) => path.as_str(),
            })
            .collect();
        assert_eq!(paths, ["pending/a/00000000000000000007"]);
        let restore = AuditEvent {
            action: "restore".into(),
            ..audit
        };
        assert!(deliveries(&restore, 8, &endpoints).is_empty());
    }
}
