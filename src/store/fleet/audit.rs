//! Audit events in etcd: written in each change's transaction under a
//! lease (that is retention), listed from the source of truth.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::{Client, GetOptions, Txn, TxnOp};

use super::{etcd_unavailable, lease, prefix_end, Fleet, PAGE};
use crate::store::{AuditEvent, AuditFilter, Store, StoreError};

impl Fleet {
    pub(super) fn audit_path(&self, event: &AuditEvent) -> Vec<u8> {
        let nonce = getrandom::u32().unwrap_or(0);
        format!(
            "{}audit/{:016}-{nonce:08x}",
            self.config.prefix,
            event.time_unix_ms.max(0)
        )
        .into_bytes()
    }

    pub(super) fn audit_prefix(&self) -> Vec<u8> {
        format!("{}audit/", self.config.prefix).into_bytes()
    }

    /// The event and its entries in the account's and the key's index, all
    /// under the retention lease.
    pub(super) fn audit_ops(&self, event: &AuditEvent, lease: i64) -> Vec<TxnOp> {
        let path = self.audit_path(event);
        let suffix = &path[self.audit_prefix().len()..];
        let mut by_account = self.account_audit_prefix(&event.account_id);
        by_account.extend_from_slice(suffix);
        let mut by_key = self.key_audit_prefix(&event.key_id);
        by_key.extend_from_slice(suffix);
        let leased = || Some(etcd_client::PutOptions::new().with_lease(lease));
        vec![
            TxnOp::put(path.clone(), prost::Message::encode_to_vec(event), leased()),
            // The account's entry holds the key id: trimming finds the key's entry.
            TxnOp::put(by_account, event.key_id.clone(), leased()),
            TxnOp::put(by_key, Vec::new(), leased()),
        ]
    }

    /// `audit_by_account/<account, hex>/`: one key per event, named like the
    /// event, so an account's events can be listed, counted and trimmed
    /// without reading another account's.
    fn account_audit_prefix(&self, account: &str) -> Vec<u8> {
        let hex: String = account.bytes().map(|byte| format!("{byte:02x}")).collect();
        format!("{}audit_by_account/{hex}/", self.config.prefix).into_bytes()
    }

    /// `audit_by_key/<key id, hex>/`: one empty key per event of that key.
    fn key_audit_prefix(&self, key_id: &[u8]) -> Vec<u8> {
        let hex: String = key_id.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{}audit_by_key/{hex}/", self.config.prefix).into_bytes()
    }

    /// Keeps `account` within the audit bound before one more event: when
    /// due, counts its events and deletes the oldest. Best effort: an etcd
    /// error here is logged and the change goes ahead.
    pub(super) async fn keep_audit_budget(
        &self,
        store: &Store,
        client: &mut Client,
        account: &str,
    ) {
        let Some(max) = store.audit_trim_due(account) else {
            return;
        };
        if let Err(error) = self.trim_account_audit(client, account, max).await {
            tracing::warn!(%error, "could not trim the account's audit events");
        }
    }

    async fn trim_account_audit(
        &self,
        client: &mut Client,
        account: &str,
        max: u64,
    ) -> Result<(), etcd_client::Error> {
        let prefix = self.account_audit_prefix(account);
        let held = client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count() as u64;
        let excess = (held + 1).saturating_sub(max);
        if excess == 0 {
            return Ok(());
        }
        let oldest = client
            .get(
                prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(excess.min(PAGE as u64) as i64),
                ),
            )
            .await?;
        let events = self.audit_prefix();
        let mut deletes = Vec::new();
        for kv in oldest.kvs() {
            let suffix = &kv.key()[prefix.len()..];
            let mut event = events.clone();
            event.extend_from_slice(suffix);
            deletes.push(TxnOp::delete(kv.key().to_vec(), None));
            deletes.push(TxnOp::delete(event, None));
            // Entries from before the key index hold no key id.
            if !kv.value().is_empty() {
                let mut by_key = self.key_audit_prefix(kv.value());
                by_key.extend_from_slice(suffix);
                deletes.push(TxnOp::delete(by_key, None));
            }
        }
        // etcd takes at most 128 operations per transaction by default.
        for chunk in deletes.chunks(128) {
            client.txn(Txn::new().and_then(chunk.to_vec())).await?;
        }
        Ok(())
    }

    pub fn set_audit_retention(&self, retention: Duration) {
        self.audit_retention_secs
            .store(retention.as_secs().max(60), Ordering::Relaxed);
    }

    /// The lease audit events are written under: etcd deletes them once it
    /// expires, which is how retention works in fleet mode. One lease per
    /// hour, lasting the retention plus that hour.
    pub(super) async fn audit_lease(&self, client: &mut Client) -> Result<i64, StoreError> {
        let ttl = self.audit_retention_secs.load(Ordering::Relaxed) + 3600;
        lease(&self.audit_lease, client, ttl).await
    }

    /// Audit events from etcd (fleet mode lists them from the source of
    /// truth, not the mirror), oldest first. A key's or an account's events
    /// are read through its index: one tenant's page never walks another's
    /// events.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<Vec<u8>>), StoreError> {
        let mut client = self.connected()?;
        let prefix = self.listing_prefix(filter);
        let indexed = prefix != self.audit_prefix();
        let end = prefix_end(&prefix);
        let mut start = listing_start(&prefix, filter, after)?;
        let mut events = Vec::new();
        let mut last = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if indexed {
                options = options.with_keys_only();
            }
            let page = client
                .get(start.clone(), Some(options))
                .await
                .map_err(etcd_unavailable)?;
            let values = match indexed {
                false => page
                    .kvs()
                    .iter()
                    .map(|kv| Some(kv.value().to_vec()))
                    .collect(),
                true => {
                    let suffixes: Vec<&[u8]> = page
                        .kvs()
                        .iter()
                        .map(|kv| &kv.key()[prefix.len()..])
                        .collect();
                    self.events_at(&mut client, &suffixes).await?
                }
            };
            for (kv, value) in page.kvs().iter().zip(values) {
                // An index entry whose event is gone (trimmed, expired).
                let Some(value) = value else { continue };
                let event: AuditEvent =
                    prost::Message::decode(value.as_slice()).map_err(|error| {
                        StoreError::Corrupt {
                            key_id: "audit event".into(),
                            reason: error.to_string(),
                        }
                    })?;
                if filter.end_unix_ms != 0 && event.time_unix_ms >= filter.end_unix_ms {
                    return Ok((events, None));
                }
                if !filter.matches(&event) {
                    continue;
                }
                if events.len() == limit {
                    return Ok((events, last));
                }
                events.push(event);
                last = Some(kv.key()[prefix.len()..].to_vec());
            }
            match (page.more(), page.kvs().last()) {
                (true, Some(kv)) => {
                    start = kv.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((events, None)),
            }
        }
    }
}

impl Fleet {
    /// Where a listing reads: the account's index when named (bounded per
    /// account, and it holds events from before the key index), else the
    /// key's, else every event.
    fn listing_prefix(&self, filter: &AuditFilter) -> Vec<u8> {
        match (&filter.account_id, &filter.key_id) {
            (Some(account), _) => self.account_audit_prefix(account),
            (None, Some(key_id)) => self.key_audit_prefix(key_id.as_bytes()),
            (None, None) => self.audit_prefix(),
        }
    }

    /// The events named by these suffixes, in one transaction per 128
    /// (etcd's default bound): `None` for one that is gone.
    async fn events_at(
        &self,
        client: &mut Client,
        suffixes: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let events = self.audit_prefix();
        let mut values = Vec::with_capacity(suffixes.len());
        for chunk in suffixes.chunks(128) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|suffix| {
                    let mut path = events.clone();
                    path.extend_from_slice(suffix);
                    TxnOp::get(path, None)
                })
                .collect();
            let answer = client
                .txn(Txn::new().and_then(gets))
                .await
                .map_err(etcd_unavailable)?;
            for response in answer.op_responses() {
                values.push(match response {
                    etcd_client::TxnOpResponse::Get(got) => {
                        got.kvs().first().map(|kv| kv.value().to_vec())
                    }
                    _ => None,
                });
            }
        }
        Ok(values)
    }
}

/// Where a listing starts under `prefix`: after the cursor (a position
/// inside this prefix's range, never a raw etcd key: the listing cannot
/// leave it), or at the filter's start time.
fn listing_start(
    prefix: &[u8],
    filter: &AuditFilter,
    after: Option<Vec<u8>>,
) -> Result<Vec<u8>, StoreError> {
    let mut start = prefix.to_vec();
    match after {
        Some(after) => {
            if !is_audit_suffix(&after) {
                return Err(StoreError::BadCursor);
            }
            start.extend_from_slice(&after);
            start.push(0);
        }
        None => {
            start.extend_from_slice(format!("{:016}", filter.start_unix_ms.max(0)).as_bytes());
        }
    }
    Ok(start)
}

/// `{time:016}-{nonce:08x}`: the part of an audit event's etcd key after
/// the audit prefix.
pub(super) fn is_audit_suffix(suffix: &[u8]) -> bool {
    suffix.len() == 25
        && suffix[..16].iter().all(u8::is_ascii_digit)
        && suffix[16] == b'-'
        && suffix[17..].iter().all(u8::is_ascii_hexdigit)
}
