//! Audit events in etcd: written in each change's transaction under a
//! lease (that is retention), listed from the source of truth.

use super::*;

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
    /// truth, not the mirror), oldest first.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<Vec<u8>>), StoreError> {
        let mut client = self.connected()?;
        let prefix = self.audit_prefix();
        let end = prefix_end(&prefix);
        let mut start = match after {
            // A cursor is a position inside this prefix's audit range, never
            // a raw etcd key: the listing cannot leave it.
            Some(after) => {
                if !is_audit_suffix(&after) {
                    return Err(StoreError::BadCursor);
                }
                let mut start = prefix.clone();
                start.extend_from_slice(&after);
                start.push(0);
                start
            }
            None => {
                let mut start = prefix.clone();
                start.extend_from_slice(format!("{:016}", filter.start_unix_ms.max(0)).as_bytes());
                start
            }
        };
        let mut events = Vec::new();
        let mut last = None;
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            let page = client
                .get(start.clone(), Some(options))
                .await
                .map_err(unreachable)?;
            for kv in page.kvs() {
                let event: AuditEvent =
                    prost::Message::decode(kv.value()).map_err(|error| StoreError::Corrupt {
                        key_id: "audit event".into(),
                        reason: error.to_string(),
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

/// `{time:016}-{nonce:08x}`: the part of an audit event's etcd key after
/// the audit prefix.
pub(super) fn is_audit_suffix(suffix: &[u8]) -> bool {
    suffix.len() == 25
        && suffix[..16].iter().all(u8::is_ascii_digit)
        && suffix[16] == b'-'
        && suffix[17..].iter().all(u8::is_ascii_hexdigit)
}
