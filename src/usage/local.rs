//! Usage in this sidecar's sled (standalone mode, or a fleet without
//! Redis): a tree of its own, one record per (grain, account, key,
//! bucket). A flush adds to each record in turn (one sled batch of 300,000
//! records took 2.6x as long as the records one by one), then syncs once:
//! a kill -9 loses at most the flush in progress and the cells not yet
//! flushed, and counts nothing twice. Blocking: called on the blocking
//! pool.

use std::collections::BTreeMap;

use crate::stats::{Grain, Kept, Tally};
use crate::store::Store;

use super::batch::{decode, encode, merge, Batch, ACCOUNT_TOTAL};
use super::UsageRow;

pub struct LocalBook {
    tree: sled::Tree,
    store: Store,
}

fn grain_code(grain: Grain) -> u8 {
    match grain {
        Grain::Minute => b'm',
        Grain::Hour => b'h',
        Grain::Day => b'd',
    }
}

/// `grain | account | 0 | key | 0`: every bucket of one key (or account
/// total) follows, in order.
fn prefix(grain: Grain, account: &str, key: Option<&str>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(account.len() + 32);
    bytes.push(grain_code(grain));
    bytes.extend_from_slice(account.as_bytes());
    bytes.push(0);
    if let Some(key) = key {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(0);
    }
    bytes
}

fn record_key(grain: Grain, account: &str, key: &str, bucket: u32) -> Vec<u8> {
    let mut bytes = prefix(grain, account, Some(key));
    bytes.extend_from_slice(&bucket.to_be_bytes());
    bytes
}

/// Records one export call looks at, at most.
const EXPORT_SCAN: usize = 50_000;

/// A record key's account, key and bucket.
fn split_record_key(key: &[u8]) -> Option<(&str, &str, u32)> {
    let body = key.get(1..key.len().checked_sub(4)?)?;
    let mut parts = body.split(|byte| *byte == 0);
    let account = std::str::from_utf8(parts.next()?).ok()?;
    let name = std::str::from_utf8(parts.next()?).ok()?;
    Some((account, name, bucket_of(key)?))
}

/// The bucket at the end of a record key.
fn bucket_of(key: &[u8]) -> Option<u32> {
    let tail = key.len().checked_sub(4)?;
    Some(u32::from_be_bytes(key[tail..].try_into().ok()?))
}

impl LocalBook {
    pub fn new(store: Store) -> Result<LocalBook, String> {
        let tree = store.usage_tree().map_err(|error| error.to_string())?;
        Ok(LocalBook { tree, store })
    }

    /// Adds a flush: every record read, added to and written, then one
    /// sync. An error may leave part of it written: never retry it.
    pub fn write(&self, batch: &Batch) -> Result<(), String> {
        for (record, tally) in &batch.records {
            let key = record_key(record.grain, &record.account, &record.key, record.bucket);
            let mut stored = match self.tree.get(&key).map_err(|error| error.to_string())? {
                Some(bytes) => decode(&bytes).unwrap_or_else(|| {
                    tracing::warn!("a usage record could not be read; it starts again from zero");
                    Tally::new()
                }),
                None => Tally::new(),
            };
            merge(&mut stored, tally);
            self.tree
                .insert(key, encode(&stored))
                .map_err(|error| error.to_string())?;
        }
        self.store.sync().map_err(|error| error.to_string())
    }

    /// One key's (or, `key` `None`, the account's) buckets `from..=to`.
    pub fn read(
        &self,
        grain: Grain,
        account: &str,
        key: Option<&str>,
        (from, to): (u32, u32),
    ) -> Result<Vec<(u32, Tally)>, String> {
        let key = key.unwrap_or(ACCOUNT_TOTAL);
        let start = record_key(grain, account, key, from);
        let end = record_key(grain, account, key, to);
        self.tree
            .range(start..=end)
            .map(|entry| {
                let (key, value) = entry.map_err(|error| error.to_string())?;
                let bucket = bucket_of(&key).ok_or("a usage record key is cut")?;
                let tally = decode(&value).ok_or("a usage record could not be read")?;
                Ok((bucket, tally))
            })
            .collect()
    }

    /// Every key of `account` with decisions in buckets `from..=to`, and
    /// how many.
    pub fn totals(
        &self,
        grain: Grain,
        account: &str,
        (from, to): (u32, u32),
    ) -> Result<BTreeMap<String, u64>, String> {
        let mut totals = BTreeMap::new();
        for entry in self.tree.scan_prefix(prefix(grain, account, None)) {
            let (key, value) = entry.map_err(|error| error.to_string())?;
            let Some(bucket) = bucket_of(&key) else {
                continue;
            };
            if !(from..=to).contains(&bucket) {
                continue;
            }
            let name_at = 1 + account.len() + 1;
            let name = key
                .get(name_at..key.len() - 5)
                .and_then(|name| std::str::from_utf8(name).ok())
                .unwrap_or_default();
            if name == ACCOUNT_TOTAL || name.is_empty() {
                continue;
            }
            let count: u64 = decode(&value).map_or(0, |tally| tally.values().sum());
            *totals.entry(name.to_owned()).or_default() += count;
        }
        Ok(totals)
    }

    /// Rows of every record (not the accounts' totals) in buckets
    /// `from..=to`, of one account or all, after `after` (a record key);
    /// at most [`EXPORT_SCAN`] records looked at per call, so a page may
    /// be short and still have a next.
    pub fn export(
        &self,
        grain: Grain,
        account: Option<&str>,
        (from, to): (u32, u32),
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<UsageRow>, Option<Vec<u8>>), String> {
        let prefix = match account {
            Some(account) => prefix(grain, account, None),
            None => vec![grain_code(grain)],
        };
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut rows = Vec::new();
        let mut last = None;
        for (scanned, entry) in self
            .tree
            .range((start, std::ops::Bound::Unbounded))
            .enumerate()
        {
            let (key, value) = entry.map_err(|error| error.to_string())?;
            if !key.starts_with(&prefix) {
                return Ok((rows, None));
            }
            if rows.len() >= limit || scanned >= EXPORT_SCAN {
                return Ok((rows, last));
            }
            last = Some(key.to_vec());
            let Some((account, name, bucket)) = split_record_key(&key) else {
                continue;
            };
            if name == ACCOUNT_TOTAL || !(from..=to).contains(&bucket) {
                continue;
            }
            let tally = decode(&value).ok_or("a usage record could not be read")?;
            rows.extend(tally.into_iter().map(|((outcome, scope), count)| UsageRow {
                grain,
                start: grain.start(bucket),
                account: account.to_owned(),
                key: name.to_owned(),
                outcome,
                scope,
                count,
            }));
        }
        Ok((rows, None))
    }

    /// Deletes buckets older than each grain is kept; returns how many.
    pub fn prune(&self, kept: &Kept, now: i64) -> Result<u64, String> {
        let mut pruned = 0;
        for grain in Grain::ALL {
            let oldest = grain.bucket(now - kept.secs(grain));
            let mut doomed = sled::Batch::default();
            let mut in_batch = 0;
            for entry in self.tree.scan_prefix([grain_code(grain)]) {
                let (key, _) = entry.map_err(|error| error.to_string())?;
                if bucket_of(&key).is_some_and(|bucket| bucket < oldest) {
                    doomed.remove(key);
                    in_batch += 1;
                }
                if in_batch == 10_000 {
                    self.tree
                        .apply_batch(std::mem::take(&mut doomed))
                        .map_err(|error| error.to_string())?;
                    pruned += in_batch;
                    in_batch = 0;
                }
            }
            self.tree
                .apply_batch(doomed)
                .map_err(|error| error.to_string())?;
            pruned += in_batch;
        }
        Ok(pruned)
    }
}
