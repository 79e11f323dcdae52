//! Fleet mode: etcd holds the keys of every sidecar of a deployment; each
//! sidecar keeps a local mirror and decides from memory.
//!
//! Shaped like kube-rs's watcher → writer → readers:
//! - **watcher**: one etcd watch on the prefix, from the mirror's revision + 1,
//!   asking for a progress notification whenever it has been idle for
//!   [`PROGRESS_EVERY`]; a compacted start revision (or an empty mirror) means
//!   a full read at one revision instead;
//! - **writer**: each watch response is applied to the sled mirror together
//!   with its revision in one sled transaction, synced like any standalone
//!   write, and only then published to the [`crate::key::KeyTable`] (a full read replaces
//!   the mirror in one transaction, then brings the table to the new set);
//! - **readers**: Check reads the table; Get/List read the mirror.
//!
//! A mutation is one etcd transaction that compares the `mod_revision` of
//! every record its decision read (the target and the caller's own record)
//! and of the account's key counter, so a caller deleted or narrowed on
//! another sidecar cannot act on its old rights and the per-account cap holds
//! fleet-wide. On a conflict the decision is taken again on fresh reads. The
//! reply waits until this sidecar has applied the transaction's revision
//! (read-your-writes). scopegate implements no consensus: etcd does.
//!
//! Layout under the prefix (webhook state under `webhooks/`, see
//! `webhooks.rs`): `keys/<key id>` → `KeyRecord` (hashes only),
//! `keys/roles/<role id>` → `RoleRecord` (under `keys/`, so one watch and
//! one full read carry keys and roles at the same revisions),
//! `role_names/<account>/<name>` (hex) → the role id (names unique per
//! account), `accounts/<account id>` → the account's key count, in decimal.

mod audit;
mod follow;
mod import;
mod roles;
mod webhooks;

pub use import::import;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;

use super::truth::{Decide, Refused};
use super::{Change, KeyRecord, Snapshot, Store, StoreError};
use crate::token::KeyId;

pub const DEFAULT_PREFIX: &str = "/scopegate/v1/";
/// An idle watch asks etcd for a progress notification this often, so
/// "seconds since etcd was last heard" stays meaningful without events.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A mutation that keeps losing its compare gives up with ABORTED. Creates
/// and deletes in one account contend on its counter; a jittered backoff
/// between attempts lets one of them win each round.
const MAX_ATTEMPTS: u32 = 24;
/// etcd's default `--max-txn-ops`: compares or writes in one transaction.
const MAX_TXN_OPS: usize = 128;
/// One etcd call gives up after this.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per page of a full read.
const PAGE: i64 = 1000;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// CA bundle (PEM) that signs etcd's server certificate: enables TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's client-cert auth.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// etcd user, and the file holding its password.
    pub user: Option<(String, PathBuf)>,
}

/// What the sidecar knows about its sync with etcd (health, staleness,
/// metrics read it).
#[derive(Debug, Default)]
pub struct SyncState {
    /// Milliseconds since `started` when etcd was last heard (an event, a
    /// progress notification, a full read).
    last_contact_ms: AtomicU64,
    pub applied_revision: AtomicI64,
    pub resyncs: AtomicU64,
    /// A full read has completed, or the mirror had a revision at start.
    pub synced: AtomicBool,
    pub watching: AtomicBool,
    started: OnceLock<Instant>,
}

impl SyncState {
    fn origin(&self) -> Instant {
        *self.started.get_or_init(Instant::now)
    }

    fn touch(&self) {
        let elapsed = self.origin().elapsed().as_millis() as u64;
        self.last_contact_ms
            .store(elapsed.max(1), Ordering::Release);
    }

    /// Time since etcd was last heard; `None` if never.
    pub fn since_contact(&self) -> Option<Duration> {
        let last = self.last_contact_ms.load(Ordering::Acquire);
        if last == 0 {
            return None;
        }
        let now = self.origin().elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(last)))
    }

    /// In sync: watching, and etcd heard from within a few progress periods.
    pub fn in_sync(&self) -> bool {
        self.watching.load(Ordering::Acquire)
            && self
                .since_contact()
                .is_some_and(|since| since < PROGRESS_EVERY * 3)
    }
}

pub(super) struct Fleet {
    config: FleetConfig,
    client: OnceLock<Client>,
    audit_retention_secs: AtomicU64,
    /// (lease id, when granted) for audit events.
    audit_lease: std::sync::Mutex<Option<(i64, Instant)>>,
    /// The same for CreateKey request ids.
    request_lease: std::sync::Mutex<Option<(i64, Instant)>>,
    /// The etcd revision the mirror and table reflect.
    applied: watch::Sender<i64>,
    pub state: Arc<SyncState>,
    /// Changes through this sidecar that write the same role take turns
    /// here instead of losing compares to each other in etcd.
    role_turns: roles::Turns,
    /// The webhook delivery lease, while this sidecar holds it.
    hooks_lease: std::sync::Mutex<Option<i64>>,
}

/// Any etcd client error: the store is unavailable, the write not acknowledged.
fn etcd_unavailable(error: etcd_client::Error) -> StoreError {
    StoreError::EtcdUnavailable(error.to_string())
}

impl Fleet {
    pub fn new(config: FleetConfig, applied_revision: i64) -> Fleet {
        let state = Arc::new(SyncState::default());
        state.origin();
        state
            .applied_revision
            .store(applied_revision, Ordering::Release);
        state.synced.store(applied_revision > 0, Ordering::Release);
        Fleet {
            config,
            client: OnceLock::new(),
            audit_retention_secs: AtomicU64::new((super::DEFAULT_AUDIT_RETENTION_MS / 1000) as u64),
            audit_lease: std::sync::Mutex::new(None),
            request_lease: std::sync::Mutex::new(None),
            applied: watch::channel(applied_revision).0,
            state,
            role_turns: roles::Turns::default(),
            hooks_lease: std::sync::Mutex::new(None),
        }
    }

    fn key_path(&self, key_id: &KeyId) -> Vec<u8> {
        format!("{}keys/{key_id}", self.config.prefix).into_bytes()
    }

    fn keys_prefix(&self) -> Vec<u8> {
        format!("{}keys/", self.config.prefix).into_bytes()
    }

    fn account_path(&self, account: &str) -> Vec<u8> {
        format!("{}accounts/{account}", self.config.prefix).into_bytes()
    }

    fn key_id_of(&self, path: &[u8]) -> Option<KeyId> {
        let prefix = self.keys_prefix();
        let id = path.strip_prefix(prefix.as_slice())?;
        KeyId::parse(std::str::from_utf8(id).ok()?)
    }

    fn connected(&self) -> Result<Client, StoreError> {
        self.client
            .get()
            .cloned()
            .ok_or_else(|| StoreError::EtcdUnavailable("not connected yet".into()))
    }

    pub(in crate::store) async fn mutate(
        &self,
        store: &Store,
        reads: super::Reads,
        decide: Decide,
    ) -> Result<(), Refused> {
        self.await_watching().await?;
        let mut client = self.connected()?;
        let _turn = self.role_turns.take(&reads.roles).await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let (snapshot, mut compares) = self.read_snapshot(&mut client, &reads).await?;
            let (change, event) = decide(&snapshot)?;
            let role_writes = super::roles::role_writes(&change, &snapshot)?;
            if attempt == 0 {
                self.keep_audit_budget(store, &mut client, &event.account_id)
                    .await;
            }
            let lease = self.audit_lease(&mut client).await?;
            let mut ops = self.audit_ops(&event, lease);
            if store.outbox_on() {
                ops.push(self.outbox_op(&event));
            }
            self.change_ops(store, &mut client, &change, &mut compares, &mut ops)
                .await?;
            self.role_ops(
                store,
                &mut client,
                &change,
                &snapshot,
                role_writes,
                &mut compares,
                &mut ops,
            )
            .await?;
            let size = compares.len().max(ops.len());
            if size > MAX_TXN_OPS {
                return Err(StoreError::TxnTooLarge {
                    ops: size,
                    max: MAX_TXN_OPS,
                }
                .into());
            }
            let response = client
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(etcd_unavailable)?;
            if !response.succeeded() {
                metrics::counter!(crate::telemetry::FLEET_CONFLICTS_TOTAL).increment(1);
                continue;
            }
            let revision = response
                .header()
                .map(|header| header.revision())
                .unwrap_or(0);
            self.wait_applied(store, revision).await?;
            return Ok(());
        }
        Err(StoreError::Conflict.into())
    }

    /// One read transaction: every record the decision needs, at one
    /// revision, and the compares that hold the write to that revision.
    async fn read_snapshot(
        &self,
        client: &mut Client,
        reads: &super::Reads,
    ) -> Result<(Snapshot, Vec<Compare>), StoreError> {
        let (records, mut compares) = self.read_keys(client, &reads.keys).await?;
        let role_ids = reads.roles_after(&records);
        let (roles, role_compares) = self.read_roles(client, &role_ids).await?;
        compares.extend(role_compares);
        // Members are not compared: any change to one rewrites its roles,
        // whose revisions are.
        let members = reads.members_after(&records, &roles);
        let mut member_records = Vec::with_capacity(members.len());
        for chunk in members.chunks(100) {
            member_records.extend(self.read_keys(client, chunk).await?.0);
        }
        // The other roles of those keys are compared: a role change judges
        // each key by its whole effective set, as it is when it applies.
        let more = super::roles::roles_of_members(&member_records, &roles);
        let (more, more_compares) = self.read_roles(client, &more).await?;
        let mut roles = roles;
        roles.extend(more);
        compares.extend(more_compares);
        let mut snapshot = Snapshot::with_roles(records, roles);
        snapshot.add_members(member_records);
        Ok((snapshot, compares))
    }

    /// Key records at one revision, and the compares that hold a write to it.
    #[allow(clippy::type_complexity)]
    async fn read_keys(
        &self,
        client: &mut Client,
        reads: &[KeyId],
    ) -> Result<(Vec<(KeyId, Option<KeyRecord>)>, Vec<Compare>), StoreError> {
        let paths: Vec<Vec<u8>> = reads.iter().map(|id| self.key_path(id)).collect();
        let read = Txn::new().and_then(
            paths
                .iter()
                .map(|path| TxnOp::get(path.clone(), None))
                .collect::<Vec<_>>(),
        );
        let response = client.txn(read).await.map_err(etcd_unavailable)?;
        let mut records = Vec::with_capacity(reads.len());
        let mut compares = Vec::new();
        for ((key_id, path), op) in reads.iter().zip(&paths).zip(response.op_responses()) {
            let TxnOpResponse::Get(got) = op else {
                return Err(StoreError::EtcdUnavailable(
                    "unexpected read response".into(),
                ));
            };
            let (record, revision) = match got.kvs().first() {
                Some(kv) => (
                    Some(crate::store::decode_whole(key_id.as_bytes(), kv.value())?),
                    kv.mod_revision(),
                ),
                None => (None, 0),
            };
            compares.push(Compare::mod_revision(
                path.clone(),
                CompareOp::Equal,
                revision,
            ));
            records.push((*key_id, record));
        }
        Ok((records, compares))
    }

    /// The compares and writes of one change: the key, the account counter
    /// (creates and deletes), the request id (a create that has one).
    async fn change_ops(
        &self,
        store: &Store,
        client: &mut Client,
        change: &Change,
        compares: &mut Vec<Compare>,
        ops: &mut Vec<TxnOp>,
    ) -> Result<(), StoreError> {
        match change {
            Change::Create {
                record,
                cap,
                request,
            } => {
                store.auth_entry(record)?;
                let key_id = super::record_id(record)?;
                if let Some(request) = request {
                    // Checked on every attempt: after a lost compare, a
                    // concurrent retry that won is found here.
                    if self.create_request(None, &request.lookup).await?.is_some() {
                        return Err(StoreError::DuplicateRequest);
                    }
                    let path = self.request_path(&request.lookup);
                    compares.push(Compare::create_revision(path.clone(), CompareOp::Equal, 0));
                    let lease = self.request_lease(client).await?;
                    ops.push(TxnOp::put(
                        path,
                        prost::Message::encode_to_vec(&request.record),
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    ));
                }
                let (count, revision) = self.account_count(client, &record.account_id).await?;
                if count >= *cap {
                    return Err(StoreError::AccountFull { cap: *cap });
                }
                let account = self.account_path(&record.account_id);
                compares.push(Compare::mod_revision(
                    account.clone(),
                    CompareOp::Equal,
                    revision,
                ));
                let path = self.key_path(&key_id);
                compares.push(Compare::create_revision(path.clone(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(
                    path,
                    prost::Message::encode_to_vec(record),
                    None,
                ));
                ops.push(TxnOp::put(account, (count + 1).to_string(), None));
            }
            Change::Update(record) => {
                store.auth_entry(record)?;
                let key_id = super::record_id(record)?;
                ops.push(TxnOp::put(
                    self.key_path(&key_id),
                    prost::Message::encode_to_vec(record),
                    None,
                ));
            }
            Change::PutRole(_) | Change::DeleteRole(_) => {}
            Change::Delete(record) => {
                let key_id = super::record_id(record)?;
                let (count, revision) = self.account_count(client, &record.account_id).await?;
                let account = self.account_path(&record.account_id);
                compares.push(Compare::mod_revision(
                    account.clone(),
                    CompareOp::Equal,
                    revision,
                ));
                ops.push(TxnOp::delete(self.key_path(&key_id), None));
                ops.push(TxnOp::put(
                    account,
                    count.saturating_sub(1).to_string(),
                    None,
                ));
            }
        }
        Ok(())
    }

    fn request_path(&self, lookup: &[u8; 32]) -> Vec<u8> {
        let hex: String = lookup.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{}requests/{hex}", self.config.prefix).into_bytes()
    }

    /// The first result filed under a CreateKey request id, from etcd; with
    /// `store`, once this sidecar has applied it (so the key can be read).
    pub async fn create_request(
        &self,
        store: Option<&Store>,
        lookup: &[u8; 32],
    ) -> Result<Option<super::CreateRequestRecord>, StoreError> {
        let mut client = self.connected()?;
        let got = client
            .get(self.request_path(lookup), None)
            .await
            .map_err(etcd_unavailable)?;
        let Some(kv) = got.kvs().first() else {
            return Ok(None);
        };
        let filed = prost::Message::decode(kv.value()).map_err(|error| StoreError::Corrupt {
            key_id: "create request".into(),
            reason: error.to_string(),
        })?;
        if let Some(store) = store {
            self.wait_applied(store, kv.mod_revision()).await?;
        }
        Ok(Some(filed))
    }

    /// The lease request ids are filed under: etcd drops them after the
    /// retry window. One lease per hour, lasting the window plus that hour.
    async fn request_lease(&self, client: &mut Client) -> Result<i64, StoreError> {
        let ttl = (crate::request_id::RETENTION_MS / 1000) as u64 + 3600;
        lease(&self.request_lease, client, ttl).await
    }

    /// Fails fast while the watch is down (etcd unreachable), after a short
    /// grace for a watcher that is (re)connecting: a change this sidecar could
    /// not see applied would break read-your-writes anyway.
    async fn await_watching(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_millis(500);
        while !self.state.watching.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                let since = self.state.since_contact().map_or("never".into(), |since| {
                    format!("{:.1}s ago", since.as_secs_f64())
                });
                return Err(StoreError::EtcdUnavailable(format!(
                    "not connected (last heard {since}); decisions continue from the last applied state"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The account's key count and the counter's `mod_revision` (0: none yet).
    async fn account_count(
        &self,
        client: &mut Client,
        account: &str,
    ) -> Result<(usize, i64), StoreError> {
        let got = client
            .get(self.account_path(account), None)
            .await
            .map_err(etcd_unavailable)?;
        Ok(match got.kvs().first() {
            Some(kv) => {
                let count = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key_id: account.to_owned(),
                        reason: "the account counter in etcd is not a number".into(),
                    })?;
                (count, kv.mod_revision())
            }
            None => (0, 0),
        })
    }

    /// Read-your-writes: returns once this sidecar has applied `revision`.
    async fn wait_applied(&self, store: &Store, revision: i64) -> Result<(), StoreError> {
        let mut applied = self.applied.subscribe();
        tokio::select! {
            waited = applied.wait_for(|applied| *applied >= revision) => {
                waited.map(drop).map_err(|_| StoreError::Closed)
            }
            reason = store.failure() => Err(StoreError::Failed { reason }),
        }
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // One etcd call; well below the fleet's management deadline
            // (15 s), so a caller hears "etcd is unreachable" rather than a
            // bare deadline, and long enough for a leader election.
            .with_timeout(ETCD_CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // `hasleader` on every call: a member cut off from its leader
            // cancels our watch instead of answering progress requests, so
            // it never counts as contact while revocations pass it by.
            .with_require_leader(true);
        if let Some((user, file)) = &self.config.user {
            let password =
                crate::secret_file::read_secret_file(file, 1).map_err(|(path, reason)| {
                    StoreError::EtcdUnavailable(format!("password file {path}: {reason}"))
                })?;
            options = options.with_user(user.clone(), password);
        }
        if self.config.ca_file.is_some() || self.config.cert_key.is_some() {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|error| {
                    StoreError::EtcdUnavailable(format!("{}: {error}", path.display()))
                })
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.config.ca_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &self.config.cert_key {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(&self.config.endpoints, Some(options))
            .await
            .map_err(etcd_unavailable)?;
        Ok(self.client.get_or_init(|| client).clone())
    }
}

/// A lease of `ttl_secs`, granted anew once an hour and shared until then.
async fn lease(
    held: &std::sync::Mutex<Option<(i64, Instant)>>,
    client: &mut Client,
    ttl_secs: u64,
) -> Result<i64, StoreError> {
    let current = *held.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((id, granted)) = current {
        if granted.elapsed() < Duration::from_secs(3600) {
            return Ok(id);
        }
    }
    let granted = client
        .lease_grant(ttl_secs.min(i64::MAX as u64) as i64, None)
        .await
        .map_err(etcd_unavailable)?;
    *held.lock().unwrap_or_else(|p| p.into_inner()) = Some((granted.id(), Instant::now()));
    Ok(granted.id())
}

/// Up to 1 ms << min(attempt, 5), at random, so contenders spread out.
async fn backoff(attempt: u32) {
    let ceiling_us = 1000u32 << attempt.min(5);
    let jitter = getrandom::u32().unwrap_or(ceiling_us / 2) % ceiling_us;
    tokio::time::sleep(Duration::from_micros(u64::from(jitter))).await;
}

/// One watch event, decoded.
pub(super) enum MirrorChange {
    Put(KeyId, Box<KeyRecord>),
    Delete(KeyId),
    /// A value that does not decode: removed from the mirror, denied here.
    Unreadable(KeyId, String),
    /// A role, or its removal (`None`: deleted, or unreadable: it grants
    /// nothing here).
    Role(crate::role::RoleId, Option<Box<super::RoleRecord>>),
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
