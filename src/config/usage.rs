//! The usage settings: on or off, the flush interval, each grain's
//! retention, and where a fleet adds its counts up (a Redis, by default the
//! rate limits').

use std::time::Duration;

use super::resolve::invalid;
use super::{ConfigError, ServeOptions, DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS};
use crate::usage::{UsageConfig, UsageRedis};

/// Whether and how decisions are counted.
pub(super) fn usage(options: &ServeOptions) -> Result<Option<UsageConfig>, ConfigError> {
    match options.usage.as_deref().unwrap_or("on") {
        "on" => {}
        "off" => return Ok(None),
        other => return Err(invalid("usage", format!("`{other}` is not on or off"))),
    }
    let flush_secs = options
        .usage_flush_secs
        .unwrap_or(crate::usage::DEFAULT_FLUSH_SECS);
    if !(1..=3_600).contains(&flush_secs) {
        return Err(invalid("usage_flush_secs", "must be 1 to 3600"));
    }
    let retention = |key: &'static str, value: &Option<String>, default: i64| match value {
        None => Ok(default),
        Some(text) => crate::stats::parse_duration(text)
            .ok_or_else(|| invalid(key, format!("`{text}` is not a duration (30m, 48h, 90d)"))),
    };
    let defaults = crate::stats::Kept::default();
    let kept = crate::stats::Kept {
        minute: retention(
            "usage_retention_minute",
            &options.usage_retention_minute,
            defaults.minute,
        )?,
        hour: retention(
            "usage_retention_hour",
            &options.usage_retention_hour,
            defaults.hour,
        )?,
        day: retention(
            "usage_retention_day",
            &options.usage_retention_day,
            defaults.day,
        )?,
    };
    let (url, password_file) = match (&options.usage_redis, &options.rate_limit_redis) {
        (Some(url), _) => (Some(url), options.usage_redis_password_file.clone()),
        (None, Some(url)) if options.usage_redis_password_file.is_none() => {
            (Some(url), options.rate_limit_redis_password_file.clone())
        }
        (None, _) if options.usage_redis_password_file.is_some() => {
            return Err(invalid("usage_redis_password_file", "needs usage_redis"))
        }
        (None, _) => (None, None),
    };
    let redis = match url {
        None => None,
        Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
            return Err(invalid(
                "usage_redis",
                "must be a redis:// or rediss:// URL",
            ))
        }
        Some(url) => Some(UsageRedis {
            url: url.clone(),
            password_file,
            timeout: Duration::from_millis(
                options
                    .rate_limit_redis_timeout_ms
                    .unwrap_or(DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS)
                    .max(1_000),
            ),
        }),
    };
    Ok(Some(UsageConfig {
        flush_every: Duration::from_secs(flush_secs),
        kept,
        redis,
    }))
}
