//! Usage in Redis, shared by a fleet: every sidecar adds its flushes, so a
//! reader sees all of them. A flush is one pipeline of scripts, each
//! adding its records only if its id (sidecar, flush, chunk) is new: a
//! flush retried after a lost reply is counted once. Records expire with
//! their grain's retention (TTL); an account's keys are kept in a set.
//!
//! Keys: `scopegate:usage:{m|h|d}:{bucket}:{key}:{account}` (hash of
//! `outcome\x1fscope` → count; the account last, as it may hold `:`),
//! `scopegate:usage:keys:{account}`, `scopegate:usage:flush:{id}`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::stats::{Grain, Kept, Tally};

use super::batch::{Batch, ACCOUNT_TOTAL};
use super::UsageRow;

const PREFIX: &str = "scopegate:usage:";
/// Records per script: a flush of 100,000 keys is a pipeline of many.
const RECORDS_PER_SCRIPT: usize = 2_000;
/// How long a flush id is remembered: a flush held back longer than this
/// (Redis away for a week) is dropped, never sent twice.
pub const FLUSH_ID_TTL: Duration = Duration::from_secs(7 * 86_400);

/// ARGV: ttl by grain (m, h, d), the id's ttl, then per record
/// `grain key n field count …`, then per account key `s set member`.
const ADD: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return 0 end
local ttl = {m = ARGV[1], h = ARGV[2], d = ARGV[3]}
local i = 5
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 's' then
    redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
    redis.call('EXPIRE', ARGV[i + 1], ttl.d)
    i = i + 3
  else
    local key = ARGV[i + 1]
    local n = tonumber(ARGV[i + 2])
    i = i + 3
    for _ = 1, n do
      redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
      i = i + 2
    end
    redis.call('EXPIRE', key, ttl[kind])
  end
end
return 1
";

pub struct SharedBook {
    connection: redis::aio::ConnectionManager,
    kept: Kept,
    /// This process's part of every flush id.
    sidecar: String,
}

fn grain_code(grain: Grain) -> &'static str {
    match grain {
        Grain::Minute => "m",
        Grain::Hour => "h",
        Grain::Day => "d",
    }
}

fn record_key(grain: Grain, bucket: u32, key: &str, account: &str) -> String {
    format!("{PREFIX}{}:{bucket}:{key}:{account}", grain_code(grain))
}

fn keys_key(account: &str) -> String {
    format!("{PREFIX}keys:{account}")
}

const FIELD_SEPARATOR: char = '\x1f';

impl SharedBook {
    pub async fn connect(
        client: redis::Client,
        timeout: Duration,
        kept: Kept,
    ) -> Result<SharedBook, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout.max(Duration::from_millis(500)))
            .set_response_timeout(timeout.max(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|error| error.to_string())?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|error| error.to_string())?;
        Ok(SharedBook {
            connection,
            kept,
            sidecar: hex::encode(random),
        })
    }

    /// Adds flush `id` (retried with the same id, it adds nothing twice).
    pub async fn write(&self, id: u64, batch: &Batch) -> Result<(), String> {
        let records: Vec<_> = batch.records.iter().collect();
        let mut pipeline = redis::pipe();
        for (chunk_index, chunk) in records.chunks(RECORDS_PER_SCRIPT).enumerate() {
            let mut command = redis::cmd("EVAL");
            command
                .arg(ADD)
                .arg(1)
                .arg(format!("{PREFIX}flush:{}:{id}:{chunk_index}", self.sidecar))
                .arg(self.kept.minute)
                .arg(self.kept.hour)
                .arg(self.kept.day)
                .arg(FLUSH_ID_TTL.as_secs());
            for (record, tally) in chunk {
                command
                    .arg(grain_code(record.grain))
                    .arg(record_key(
                        record.grain,
                        record.bucket,
                        &record.key,
                        &record.account,
                    ))
                    .arg(tally.len());
                for ((outcome, scope), count) in tally.iter() {
                    command
                        .arg(format!("{outcome}{FIELD_SEPARATOR}{scope}"))
                        .arg(*count);
                }
                if record.grain == Grain::Day && &*record.key != ACCOUNT_TOTAL {
                    command
                        .arg("s")
                        .arg(keys_key(&record.account))
                        .arg(&*record.key);
                }
            }
            pipeline.add_command(command);
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<Vec<i64>>(&mut connection)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// One key's (or the account's) buckets `from..=to`.
    pub async fn read(
        &self,
        grain: Grain,
        account: &str,
        key: Option<&str>,
        (from, to): (u32, u32),
    ) -> Result<Vec<(u32, Tally)>, String> {
        let key = key.unwrap_or(ACCOUNT_TOTAL);
        let mut pipeline = redis::pipe();
        for bucket in from..=to {
            pipeline.hgetall(record_key(grain, bucket, key, account));
        }
        let mut connection = self.connection.clone();
        let hashes: Vec<BTreeMap<String, u64>> = pipeline
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        Ok((from..=to)
            .zip(hashes)
            .filter(|(_, hash)| !hash.is_empty())
            .map(|(bucket, hash)| {
                let tally = hash
                    .into_iter()
                    .filter_map(|(field, count)| {
                        let (outcome, scope) = field.split_once(FIELD_SEPARATOR)?;
                        Some(((outcome.to_owned(), scope.to_owned()), count))
                    })
                    .collect();
                (bucket, tally)
            })
            .collect())
    }

    /// Every key of `account` with decisions in buckets `from..=to`, and
    /// how many (at most `limit` keys are looked at).
    pub async fn totals(
        &self,
        grain: Grain,
        account: &str,
        range: (u32, u32),
        limit: usize,
    ) -> Result<BTreeMap<String, u64>, String> {
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys_key(account))
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        keys.sort();
        keys.truncate(limit);
        let mut totals = BTreeMap::new();
        for key in keys {
            let buckets = self.read(grain, account, Some(&key), range).await?;
            let total = crate::stats::total(&buckets);
            if total > 0 {
                totals.insert(key, total);
            }
        }
        Ok(totals)
    }

    /// Rows of every record in buckets `from..=to` (one account's, or
    /// all), a SCAN step from `cursor` (0: the start; the next is 0 at
    /// the end).
    pub async fn export(
        &self,
        grain: Grain,
        account: Option<&str>,
        (from, to): (u32, u32),
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<UsageRow>, u64), String> {
        let pattern = match account {
            Some(account) => format!("{PREFIX}{}:*:{}", grain_code(grain), glob_escaped(account)),
            None => format!("{PREFIX}{}:*", grain_code(grain)),
        };
        let mut connection = self.connection.clone();
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(limit.max(10))
            .query_async(&mut connection)
            .await
            .map_err(|error| error.to_string())?;
        let head = format!("{PREFIX}{}:", grain_code(grain));
        let wanted: Vec<(u32, String, String, String)> = keys
            .into_iter()
            .filter_map(|redis_key| {
                let rest = redis_key.strip_prefix(&head)?;
                let mut parts = rest.splitn(3, ':');
                let bucket: u32 = parts.next()?.parse().ok()?;
                let key = parts.next()?.to_owned();
                let found = parts.next()?.to_owned();
                let keep = (from..=to).contains(&bucket)
                    && key != ACCOUNT_TOTAL
                    && account.is_none_or(|account| account == found);
                let account = found;
                keep.then_some((bucket, key, account, redis_key))
            })
            .collect();
        let mut pipeline = redis::pipe();
        for (_, _, _, redis_key) in &wanted {
            pipeline.hgetall(redis_key);
        }
        let hashes: Vec<BTreeMap<String, u64>> = if wanted.is_empty() {
            Vec::new()
        } else {
            pipeline
                .query_async(&mut connection)
                .await
                .map_err(|error| error.to_string())?
        };
        let mut rows = Vec::new();
        for ((bucket, key, account, _), hash) in wanted.into_iter().zip(hashes) {
            for (field, count) in hash {
                let Some((outcome, scope)) = field.split_once(FIELD_SEPARATOR) else {
                    continue;
                };
                rows.push(UsageRow {
                    grain,
                    start: grain.start(bucket),
                    account: account.clone(),
                    key: key.clone(),
                    outcome: outcome.to_owned(),
                    scope: scope.to_owned(),
                    count,
                });
            }
        }
        Ok((rows, next))
    }
}

/// `text` as a Redis glob matching itself only.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
