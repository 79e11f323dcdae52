//! Named rate limits on keys: what a limit is (`default=600/minute`), which
//! requests it counts, and the no-escalation comparison. Pure: counting is
//! `counters`' job (limitador), storing is `store::record`'s.
//!
//! A limit counts the requests of one key, or (`account`) of every key of the
//! account that carries a limit of that name: an account limit lives on the
//! keys, so it needs no record of its own and changes with them.

use std::fmt;
use std::sync::Arc;

use crate::scope::{ScopeId, ScopeSet};

/// At most this many limits on one key (a Check counts each that applies).
pub const MAX_PER_KEY: usize = 8;
pub const MAX_COUNT: u64 = 1_000_000_000;
/// 30 days.
pub const MAX_WINDOW_SECS: u64 = 30 * 86_400;

/// A limit as written and stored: at most `limit` requests per `window_secs`
/// (fixed windows), counting those that need one of `scopes` (every request
/// when empty), per key or, `account`, per account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub window_secs: u64,
    pub scopes: Vec<String>,
    pub account: bool,
}

/// What follows an account limit's rule on its line.
const ACCOUNT: &str = "(account)";

impl RateLimit {
    /// One line, as the CLI and the console show a limit and the console
    /// reads it back: `default=600/minute`, `org=10000/hour (account)`.
    pub fn line(&self) -> String {
        if self.account {
            format!("{self} {ACCOUNT}")
        } else {
            self.to_string()
        }
    }

    /// The inverse of [`RateLimit::line`].
    pub fn parse_line(line: &str) -> Result<RateLimit, String> {
        match line.trim().strip_suffix(ACCOUNT) {
            Some(rule) => RateLimit::parse(rule.trim_end(), true),
            None => RateLimit::parse(line.trim(), false),
        }
    }

    /// `NAME=COUNT/WINDOW[:SCOPE,SCOPE…]`, e.g. `default=600/minute`,
    /// `send=100/second:mail.send`, `burst=20/10s`.
    pub fn parse(text: &str, account: bool) -> Result<RateLimit, String> {
        let shape =
            || format!("`{text}` is not NAME=COUNT/WINDOW[:SCOPE,…] (e.g. default=600/minute)");
        let (name, rest) = text.split_once('=').ok_or_else(shape)?;
        let (rate, scopes) = match rest.split_once(':') {
            Some((rate, scopes)) => (rate, scopes.split(',').map(str::to_owned).collect()),
            None => (rest, Vec::new()),
        };
        let (count, window) = rate.split_once('/').ok_or_else(shape)?;
        let limit = RateLimit {
            name: name.to_owned(),
            limit: count
                .parse()
                .map_err(|_| format!("`{count}` is not a whole number of requests"))?,
            window_secs: parse_window(window)?,
            scopes,
            account,
        };
        limit.check()?;
        Ok(limit)
    }

    /// The rules every limit keeps, whoever sets it.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._-".contains(&byte)
            });
        if !name_ok {
            return Err(format!(
                "limit name `{}` must be 1-64 of a-z, 0-9, '.', '_', '-'",
                self.name
            ));
        }
        if !(1..=MAX_COUNT).contains(&self.limit) {
            return Err(format!(
                "limit `{}`: the count must be 1 to {MAX_COUNT}",
                self.name
            ));
        }
        if !(1..=MAX_WINDOW_SECS).contains(&self.window_secs) {
            return Err(format!(
                "limit `{}`: the window must be 1 second to 30 days",
                self.name
            ));
        }
        let mut scopes = self.scopes.clone();
        scopes.sort();
        scopes.dedup();
        if scopes.len() != self.scopes.len() || scopes.iter().any(String::is_empty) {
            return Err(format!(
                "limit `{}`: its scopes must be distinct and non-empty",
                self.name
            ));
        }
        Ok(())
    }

    /// At least as strict as `other`: counts every request `other` counts,
    /// no more of them, over a window at least as long. An account's limit
    /// is one counter per name only over one window (a counter's window is
    /// part of its identity), so an account limit keeps `other`'s window
    /// exactly: a longer one would be a fresh count.
    fn at_least_as_strict_as(&self, other: &RateLimit) -> bool {
        let counts_all_of_other = self.scopes.is_empty()
            || (!other.scopes.is_empty()
                && other.scopes.iter().all(|scope| self.scopes.contains(scope)));
        let window = if self.account {
            self.window_secs == other.window_secs
        } else {
            self.window_secs >= other.window_secs
        };
        self.account == other.account && counts_all_of_other && self.limit <= other.limit && window
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}/{}",
            self.name,
            self.limit,
            window_text(self.window_secs)
        )?;
        if !self.scopes.is_empty() {
            write!(f, ":{}", self.scopes.join(","))?;
        }
        Ok(())
    }
}

/// `second`, `minute`, `hour`, `day` (or `s`, `min`, `h`, `d`), or a number
/// of them: `10s`, `5m`, `2h`, `7d`.
pub fn parse_window(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (count, unit) = text.split_at(digits);
    let count: u64 = match count {
        "" => 1,
        count => count
            .parse()
            .map_err(|_| format!("window `{text}` is too long"))?,
    };
    let unit = match unit {
        "s" | "sec" | "second" | "seconds" => 1,
        "m" | "min" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => {
            return Err(format!(
                "window `{text}` is not second, minute, hour, day or a number of them (10s, 5m)"
            ))
        }
    };
    count
        .checked_mul(unit)
        .ok_or_else(|| format!("window `{text}` is too long"))
}

/// The shortest text [`parse_window`] reads back as `secs`.
pub fn window_text(secs: u64) -> String {
    match secs {
        1 => "second".into(),
        60 => "minute".into(),
        3_600 => "hour".into(),
        86_400 => "day".into(),
        secs if secs % 86_400 == 0 => format!("{}d", secs / 86_400),
        secs if secs % 3_600 == 0 => format!("{}h", secs / 3_600),
        secs if secs % 60 == 0 => format!("{}m", secs / 60),
        secs => format!("{secs}s"),
    }
}

/// A key's limits together: each valid, names distinct, at most
/// [`MAX_PER_KEY`].
pub fn check_all(limits: &[RateLimit]) -> Result<(), String> {
    if limits.len() > MAX_PER_KEY {
        return Err(format!("at most {MAX_PER_KEY} limits per key"));
    }
    for (index, limit) in limits.iter().enumerate() {
        limit.check()?;
        if limits[..index].iter().any(|other| other.name == limit.name) {
            return Err(format!("limit `{}` is named twice", limit.name));
        }
    }
    Ok(())
}

/// No escalation: a limited caller's key must be held to each of the
/// caller's limits by one of its own of the same name, at least as strict.
/// `Err` names the caller's limit that is not matched.
pub fn within(caller: &[RateLimit], key: &[RateLimit]) -> Result<(), String> {
    for held in caller {
        let matched = key
            .iter()
            .any(|limit| limit.name == held.name && limit.at_least_as_strict_as(held));
        if !matched {
            return Err(format!(
                "the calling key is limited to {}{}: the key must carry a limit `{}` at least as strict{}",
                held,
                if held.account { " (account)" } else { "" },
                held.name,
                if held.account {
                    ", over the same window (an account limit is one count per name)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// A limit as Check reads it: scopes resolved, its counter named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveLimit {
    pub name: Arc<str>,
    pub limit: u64,
    pub window_secs: u64,
    /// `None`: counts every request.
    pub scopes: Option<ScopeSet>,
    /// `key:<key id>:<name>` or `account:<account id>:<name>` (names hold no
    /// `:`, so the last one splits).
    pub counter: Arc<str>,
    /// `X-RateLimit-Limit` as draft-03 writes it, made once:
    /// `10, 10;w=60;name="default"`.
    pub quota: Arc<str>,
}

impl ActiveLimit {
    pub fn new(
        limit: &RateLimit,
        scopes: Option<ScopeSet>,
        key_id: &str,
        account_id: &str,
    ) -> ActiveLimit {
        let counter = if limit.account {
            format!("account:{account_id}:{}", limit.name)
        } else {
            format!("key:{key_id}:{}", limit.name)
        };
        let quota = format!(
            "{}, {};w={};name=\"{}\"",
            limit.limit, limit.limit, limit.window_secs, limit.name
        );
        ActiveLimit {
            quota: quota.into(),
            name: limit.name.as_str().into(),
            limit: limit.limit,
            window_secs: limit.window_secs,
            scopes,
            counter: counter.into(),
        }
    }
}

/// The limits of one key that a request counts against (`mask`: bit i for
/// `limits[i]`; never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable {
    pub limits: Arc<[ActiveLimit]>,
    pub mask: u8,
}

impl Applicable {
    /// The limits counting a request that needs `scope`.
    pub fn for_scope(limits: &Arc<[ActiveLimit]>, scope: ScopeId) -> Option<Applicable> {
        Self::select(limits, |scopes| scopes.contains(scope))
    }

    /// The limits counting a request that needs `required`.
    pub fn for_set(limits: &Arc<[ActiveLimit]>, required: &ScopeSet) -> Option<Applicable> {
        Self::select(limits, |scopes| scopes.intersects(required))
    }

    /// Every limit of the key, or the one named `name`.
    pub fn named(limits: &Arc<[ActiveLimit]>, name: Option<&str>) -> Option<Applicable> {
        let mut mask = 0u8;
        for (index, limit) in limits.iter().enumerate() {
            if name.is_none_or(|name| *limit.name == *name) {
                mask |= 1 << index;
            }
        }
        (mask != 0).then(|| Applicable {
            limits: limits.clone(),
            mask,
        })
    }

    fn select(
        limits: &Arc<[ActiveLimit]>,
        counts: impl Fn(&ScopeSet) -> bool,
    ) -> Option<Applicable> {
        let mut mask = 0u8;
        for (index, limit) in limits.iter().enumerate() {
            if limit.scopes.as_ref().is_none_or(&counts) {
                mask |= 1 << index;
            }
        }
        (mask != 0).then(|| Applicable {
            limits: limits.clone(),
            mask,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &ActiveLimit> {
        self.limits
            .iter()
            .enumerate()
            .filter(|(index, _)| self.mask & (1 << index) != 0)
            .map(|(_, limit)| limit)
    }
}

/// Where one limit stands after a request: the one closest to running out
/// (allowed), or the one that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateStatus {
    pub name: Arc<str>,
    pub limit: u64,
    pub window_secs: u64,
    pub remaining: u64,
    /// Until the window ends, in whole seconds (rounded up, at least 1).
    pub reset_secs: u64,
    /// [`ActiveLimit::quota`].
    pub quota: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_the_same_limit() {
        for text in [
            "default=600/minute",
            "send=100/second:mail.send,stats.read",
            "org=10000/hour (account)",
        ] {
            let limit = RateLimit::parse_line(text).unwrap();
            assert_eq!(limit.line(), text);
            assert_eq!(limit.account, text.ends_with("(account)"));
        }
    }

    fn limit(text: &str) -> RateLimit {
        RateLimit::parse(text, false).unwrap()
    }

    #[test]
    fn limits_parse_and_print_back() {
        for text in [
            "default=600/minute",
            "send=100/second:mail.send",
            "burst=20/10s",
            "d=5/7d:a.b,c.d",
        ] {
            assert_eq!(limit(text).to_string(), text);
        }
        assert_eq!(limit("x=1/90s").window_secs, 90);
        assert_eq!(limit("x=1/2h").window_secs, 7_200);
        assert_eq!(limit("x=1/min").to_string(), "x=1/minute");
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        for (text, says) in [
            ("default", "NAME=COUNT/WINDOW"),
            ("Default=1/s", "limit name"),
            ("a=0/s", "count must be"),
            ("a=x/s", "whole number"),
            ("a=1/fortnight", "not second"),
            ("a=1/31d", "30 days"),
            ("a=1/s:mail.send,mail.send", "distinct"),
            ("a=1/99999999999999999999s", "too long"),
        ] {
            let error = RateLimit::parse(text, false).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
        let two = [limit("a=1/s"), limit("a=2/s")];
        assert!(check_all(&two).unwrap_err().contains("named twice"));
    }

    #[test]
    fn a_limited_caller_passes_on_its_limits_or_stricter_ones() {
        let caller = [limit("default=100/minute")];
        assert!(within(&caller, &[limit("default=100/minute")]).is_ok());
        assert!(within(&caller, &[limit("default=10/hour")]).is_ok());
        // No limit, a higher one, a shorter window, another name: refused.
        assert!(within(&caller, &[]).is_err());
        assert!(within(&caller, &[limit("default=101/minute")]).is_err());
        assert!(within(&caller, &[limit("default=100/second")]).is_err());
        assert!(within(&caller, &[limit("other=1/minute")]).is_err());
        // Counting fewer requests (a scope only) is not as strict.
        assert!(within(&caller, &[limit("default=1/minute:mail.send")]).is_err());
        let scoped = [limit("send=10/second:mail.send")];
        assert!(within(&scoped, &[limit("send=10/second")]).is_ok());
        assert!(within(&scoped, &[limit("send=10/second:mail.send,stats.read")]).is_ok());
        // An account limit is matched only by an account limit.
        let per_account = [RateLimit::parse("org=1000/hour", true).unwrap()];
        assert!(within(&per_account, &[limit("org=1000/hour")]).is_err());
        assert!(within(
            &per_account,
            &[RateLimit::parse("org=1000/hour", true).unwrap()]
        )
        .is_ok());
        // ... over its own window only: a longer one would be a fresh count.
        let longer = RateLimit::parse("org=1000/3601s", true).unwrap();
        assert!(within(&per_account, &[longer])
            .unwrap_err()
            .contains("same window"));
        let fewer = RateLimit::parse("org=10/hour", true).unwrap();
        assert!(within(&per_account, &[fewer]).is_ok());
        // An unlimited caller grants anything.
        assert!(within(&[], &[]).is_ok());
    }

    #[test]
    fn a_request_counts_against_the_limits_of_its_scopes() {
        let (a, b) = (ScopeId(1), ScopeId(2));
        let limits: Arc<[ActiveLimit]> = vec![
            ActiveLimit::new(&limit("all=1/s"), None, "k", "acct"),
            ActiveLimit::new(&limit("a=1/s:x"), Some(ScopeSet::single(a)), "k", "acct"),
        ]
        .into();
        assert_eq!(Applicable::for_scope(&limits, a).unwrap().mask, 0b11);
        assert_eq!(Applicable::for_scope(&limits, b).unwrap().mask, 0b01);
        assert_eq!(Applicable::named(&limits, Some("a")).unwrap().mask, 0b10);
        assert!(Applicable::named(&limits, Some("none")).is_none());
        assert_eq!(&*limits[0].counter, "key:k:all");
        let per_account =
            ActiveLimit::new(&RateLimit::parse("o=1/s", true).unwrap(), None, "k", "acct");
        assert_eq!(&*per_account.counter, "account:acct:o");
    }
}
