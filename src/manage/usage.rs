//! Reading usage: who may read whose, over which range. The admin reads
//! any account and key; an API key holding `api_keys.read` reads its own
//! account's (another account's key id is not found, as everywhere),
//! under the per-account read limit.

use crate::scope::ManageAction;
use crate::stats::{Grain, Range, RangeQuery};
use crate::usage::{Report, UsageError, UsageRead};

use super::error::invalid;
use super::rules::{readable_account, visible_in};
use super::validate::parse_key_id;
use super::{Caller, ManageError, Manager};

/// What a usage read asks for.
#[derive(Default)]
pub struct UsageQuery<'a> {
    /// One key's usage; `None`: the account's.
    pub key_id: Option<&'a str>,
    /// The account (the admin names it; an API key's is its own).
    pub account_id: &'a str,
    pub range: RangeQuery<'a>,
    pub group_by_scope: bool,
    /// The account's N busiest keys as series of their own (account reads).
    pub top_keys: usize,
}

/// The most keys a read may list as its busiest.
pub const MAX_TOP_KEYS: usize = 100;

impl Manager {
    /// A usage report. Reads off the decision workers (the book's own
    /// blocking reads, or Redis).
    pub async fn usage(
        &self,
        caller: &Caller,
        query: UsageQuery<'_>,
    ) -> Result<Report, ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let usage = self.usage.as_ref().ok_or(UsageError::Off)?;
        let now = crate::authz::now_unix_ms() / 1000;
        let range = Range::parse(&query.range, now, usage.kept())?;
        if query.top_keys > MAX_TOP_KEYS {
            return Err(invalid(
                "top_keys",
                format!("must be at most {MAX_TOP_KEYS}"),
            ));
        }
        let account = match query.key_id {
            Some(key_id) => {
                if query.top_keys > 0 {
                    return Err(invalid(
                        "top_keys",
                        "applies to an account's stats, not one key's",
                    ));
                }
                let account = self.key_account(caller, key_id)?;
                if !query.account_id.is_empty() && account != query.account_id {
                    return Err(ManageError::NotFound(key_id.to_owned()));
                }
                account
            }
            None => readable_account(caller, query.account_id)?.ok_or_else(|| {
                invalid(
                    "account_id",
                    "is required: name the account (REST: the on-behalf-of header)",
                )
            })?,
        };
        Ok(usage
            .report(&UsageRead {
                account: &account,
                key: query.key_id,
                range,
                by_scope: query.group_by_scope,
                top_keys: query.top_keys,
            })
            .await?)
    }

    /// Decisions per key of the caller's account (the admin's: `account`)
    /// over the last `hours` hours (the console's keys list).
    pub async fn recent_usage(
        &self,
        caller: &Caller,
        account: &str,
        hours: u32,
    ) -> Result<std::collections::BTreeMap<String, u64>, ManageError> {
        self.require(caller, ManageAction::Read)?;
        let usage = self.usage.as_ref().ok_or(UsageError::Off)?;
        let account = readable_account(caller, account)?
            .ok_or_else(|| invalid("account_id", "is required"))?;
        let now = crate::authz::now_unix_ms() / 1000;
        let last = Grain::Hour.bucket(now);
        let range = (last.saturating_sub(hours.saturating_sub(1)), last);
        Ok(usage.totals(Grain::Hour, &account, range).await?)
    }

    /// The account of a key the caller may see (from the key table: no
    /// disk read); another account's key is not found.
    fn key_account(&self, caller: &Caller, key_id: &str) -> Result<String, ManageError> {
        let id = parse_key_id(key_id)?;
        self.store
            .table()
            .with(&id, |entry| {
                entry
                    .filter(|entry| visible_in(caller, &entry.account_id))
                    .map(|entry| entry.account_id.to_string())
            })
            .ok_or_else(|| ManageError::NotFound(key_id.to_owned()))
    }
}

/// What an export asks for.
pub struct ExportQuery<'a> {
    /// The admin may leave it empty for every account.
    pub account_id: &'a str,
    pub grain: &'a str,
    pub start_time: i64,
    /// `None`: now.
    pub end_time: Option<i64>,
    pub page_size: i32,
    pub page_token: &'a str,
}

impl Manager {
    /// A page of stored usage cells (`scopegate usage export`).
    pub async fn export_usage(
        &self,
        caller: &Caller,
        query: ExportQuery<'_>,
    ) -> Result<(Vec<crate::usage::UsageRow>, String), ManageError> {
        self.require(caller, ManageAction::Read)?;
        self.admit_read(caller)?;
        let usage = self.usage.as_ref().ok_or(UsageError::Off)?;
        let grain = match query.grain {
            "" | "day" => Grain::Day,
            "hour" => Grain::Hour,
            "minute" => Grain::Minute,
            other => {
                return Err(invalid(
                    "grain",
                    format!("`{other}` is not minute, hour or day"),
                ))
            }
        };
        let now = crate::authz::now_unix_ms() / 1000;
        let end = query.end_time.unwrap_or(now);
        if query.start_time < 0 || end < query.start_time {
            return Err(invalid("end_time", "is before start_time"));
        }
        let account = readable_account(caller, query.account_id)?;
        let binding = super::paging::page_binding(&[
            b"ExportUsage",
            account.as_deref().unwrap_or("").as_bytes(),
            grain.name().as_bytes(),
            &query.start_time.to_be_bytes(),
            &end.to_be_bytes(),
        ]);
        let (size, after) = super::paging::page(query.page_size, query.page_token, &binding)?;
        let buckets = (grain.bucket(query.start_time), grain.bucket(end));
        let (rows, next) = usage
            .export(grain, account.as_deref(), buckets, after, size)
            .await?;
        Ok((rows, super::paging::next_page_token(&binding, next)))
    }
}
