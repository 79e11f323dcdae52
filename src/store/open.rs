//! Opening a data dir: sled, the format and mode markers (a standalone
//! store never becomes a mirror by accident, nor the reverse), and what a
//! fleet mirror recorded of the etcd it follows.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::commit::{sync_dir, Durable};
use super::fleet::FleetConfig;
use super::record::FORMAT_VERSION;
use super::truth::Standalone;
use super::{
    audit, commit, fleet, mirror, Inner, Store, StoreError, DEFAULT_AUDIT_RETENTION_MS,
    DEFAULT_CACHE_BYTES, ETCD_CLUSTER_KEY, ETCD_PREFIX_KEY, ETCD_REVISION_KEY, FORMAT_VERSION_KEY,
    MODE_FLEET, MODE_KEY, MODE_STANDALONE,
};
use crate::key::KeyTable;
use crate::scope::SharedCatalog;

impl Store {
    /// Opens (or creates) a standalone store in `dir`, sled being the source
    /// of truth, and starts its commit task. Call [`Store::load`] before
    /// serving.
    pub fn open(dir: &Path, catalog: SharedCatalog) -> Result<Store, StoreError> {
        Store::open_in(dir, catalog, None, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) a store with sled's cache size; with `fleet`, the
    /// local mirror of a fleet whose source of truth is etcd: call
    /// [`Store::load`] (the mirror, served at once if it has a revision),
    /// then [`Store::follow_source`].
    pub fn open_in(
        dir: &Path,
        catalog: SharedCatalog,
        fleet: Option<FleetConfig>,
        cache_bytes: u64,
    ) -> Result<Store, StoreError> {
        let io = |error: std::io::Error| StoreError::Io(error.into());
        make_private_dir(dir).map_err(io)?;
        let sled_dir = dir.join("sled");
        let new = !sled_dir.exists();
        let db = open_sled(dir, &sled_dir, cache_bytes)?;
        let meta = db.open_tree("meta")?;
        check_format(dir, &db, &meta, new)?;
        let keys = db.open_tree("keys")?;
        let accounts = db.open_tree("accounts")?;
        let roles = db.open_tree("roles")?;
        let role_accounts = db.open_tree("role_accounts")?;
        let audit = db.open_tree("audit")?;
        let audit_index = db.open_tree("audit_index")?;
        let requests = db.open_tree("requests")?;
        let last_used = db.open_tree("last_used")?;
        audit::build_index_once(&audit, &audit_index)?;
        let applied_revision = check_mode(dir, &meta, &keys, fleet.as_ref())?;
        let durable = Durable::open(db.clone(), &sled_dir).map_err(io)?;
        durable
            .sync()
            .map_err(|reason| StoreError::Failed { reason })?;
        if new {
            // The files sled just created must survive a power cut too.
            sync_dir(&sled_dir).map_err(io)?;
            sync_dir(dir).map_err(io)?;
        }
        let table = Arc::new(KeyTable::default());
        let (failed, _) = watch::channel(None);
        // Standalone mode commits through one task; a mirror is written by
        // its follower.
        let commits = fleet.is_none().then(|| {
            let (commits, commit_queue) = mpsc::unbounded_channel();
            tokio::spawn(commit::run(
                durable.clone(),
                table.clone(),
                commit_queue,
                failed.clone(),
            ));
            commits
        });
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                keys,
                accounts,
                roles,
                role_accounts,
                catalog,
                table,
                writer: Mutex::new(commits),
                durable,
                meta,
                audit_sequence: next_audit_sequence(&audit)?.into(),
                audit,
                audit_index,
                requests,
                requests_pruned_to: Mutex::default(),
                last_used,
                usage_persisted: Mutex::default(),
                audit_retention_ms: DEFAULT_AUDIT_RETENTION_MS.into(),
                truth: match fleet {
                    None => Arc::new(Standalone),
                    Some(config) => Arc::new(fleet::Fleet::new(config, applied_revision)),
                },
                failed,
                unfit: mirror::Unfit::default(),
                audit_budget: audit::AuditBudget::new(),
                outbox: false.into(),
                outbox_written: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Fleet mode: the etcd cluster id and raft term the mirror last
    /// followed, if recorded.
    pub(super) fn mirror_identity(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self.inner.meta.get(ETCD_CLUSTER_KEY)?.and_then(|bytes| {
            let bytes: [u8; 16] = bytes.as_ref().try_into().ok()?;
            let (cluster, term) = bytes.split_at(8);
            Some((
                u64::from_be_bytes(cluster.try_into().ok()?),
                u64::from_be_bytes(term.try_into().ok()?),
            ))
        }))
    }

    pub(super) fn set_mirror_identity(&self, cluster: u64, term: u64) -> Result<(), StoreError> {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&cluster.to_be_bytes());
        bytes[8..].copy_from_slice(&term.to_be_bytes());
        if self.mirror_identity()? == Some((cluster, term)) {
            return Ok(());
        }
        let written = self
            .inner
            .meta
            .insert(ETCD_CLUSTER_KEY, &bytes[..])
            .map(drop)
            .map_err(StoreError::from);
        self.fail_on_io(written)?;
        self.sync_or_fail()
    }
}

/// Creates `dir` private (mode 0700); a dir made by someone else (a volume
/// mount, `mkdir`) is made private too, when we own it.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), %error, "cannot make the data dir private (mode 0700)");
    }
    Ok(())
}

fn open_sled(dir: &Path, sled_dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(sled_dir)
        .cache_capacity(cache_bytes)
        // Durability comes from the commit task's explicit flush + sync,
        // never from a timer.
        .flush_every_ms(None)
        .open()
        .map_err(|error| match error {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked {
                    dir: dir.display().to_string(),
                }
            }
            other => StoreError::Io(other),
        })
}

/// Refuses a newer format and a database that is not scopegate's; marks a
/// new one with this format.
fn check_format(dir: &Path, db: &sled::Db, meta: &sled::Tree, new: bool) -> Result<(), StoreError> {
    match meta.get(FORMAT_VERSION_KEY)? {
        Some(bytes) => {
            let found = bytes
                .as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .unwrap_or(u32::MAX);
            if found > FORMAT_VERSION {
                return Err(StoreError::NewerFormat {
                    dir: dir.display().to_string(),
                    found,
                });
            }
        }
        None => {
            if !new && holds_data(db)? {
                return Err(StoreError::Foreign {
                    dir: dir.display().to_string(),
                });
            }
            meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
        }
    }
    Ok(())
}

/// A mirror is a cache: a standalone store never becomes one, nor the
/// reverse, by accident. Returns the etcd revision a mirror of the same
/// prefix had applied (0: start with a full read).
fn check_mode(
    dir: &Path,
    meta: &sled::Tree,
    keys: &sled::Tree,
    fleet: Option<&FleetConfig>,
) -> Result<i64, StoreError> {
    let mode: &[u8] = if fleet.is_some() {
        MODE_FLEET
    } else {
        MODE_STANDALONE
    };
    let mismatch = |reason: &str| StoreError::ModeMismatch {
        dir: dir.display().to_string(),
        reason: reason.into(),
    };
    match meta.get(MODE_KEY)? {
        Some(found) if found.as_ref() == mode => {}
        Some(found) if found.as_ref() == MODE_FLEET => {
            return Err(mismatch(
                "it is a fleet mirror of etcd; serve it with --store etcd, or use another data dir",
            ));
        }
        _ if !keys.is_empty() && fleet.is_some() => {
            return Err(mismatch("it holds a standalone store; copy it into etcd with `scopegate fleet import`, then serve fleet mode from another data dir"));
        }
        _ => {
            meta.insert(MODE_KEY, mode)?;
        }
    }
    let Some(config) = fleet else {
        return Ok(0);
    };
    let same_prefix = meta
        .get(ETCD_PREFIX_KEY)?
        .is_some_and(|prefix| prefix.as_ref() == config.prefix.as_bytes());
    if !same_prefix {
        // Another prefix's mirror: start over with a full read.
        meta.insert(ETCD_PREFIX_KEY, config.prefix.as_bytes())?;
        meta.remove(ETCD_REVISION_KEY)?;
        return Ok(0);
    }
    Ok(meta
        .get(ETCD_REVISION_KEY)?
        .and_then(|bytes| bytes.as_ref().try_into().ok().map(i64::from_be_bytes))
        .unwrap_or(0))
}

/// The audit sequence continues after the newest event.
fn next_audit_sequence(audit: &sled::Tree) -> Result<u64, StoreError> {
    Ok(audit
        .last()?
        .and_then(|(key, _)| key.get(8..16)?.try_into().ok().map(u64::from_be_bytes))
        .map_or(0, |last| last + 1))
}

/// Whether a database without scopegate's format marker holds anything.
pub(super) fn holds_data(db: &sled::Db) -> Result<bool, StoreError> {
    for name in db.tree_names() {
        if name.as_ref() == b"meta" {
            continue;
        }
        if !db.open_tree(&name)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}
