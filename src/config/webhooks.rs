//! The webhook settings: on or off, private targets, and the times of
//! delivery (an attempt's bound, how long to retry, the longest backoff,
//! the expiry notice).

use std::time::Duration;

use super::resolve::invalid;
use super::{ConfigError, ServeOptions};
use crate::webhooks::WebhookSettings;

pub(super) fn webhooks(options: &ServeOptions) -> Result<Option<WebhookSettings>, ConfigError> {
    match options.webhooks.as_deref().unwrap_or("on") {
        "on" => {}
        "off" => return Ok(None),
        other => return Err(invalid("webhooks", format!("`{other}` is not on or off"))),
    }
    let duration = |key: &'static str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => crate::stats::parse_duration(text)
            .map(|secs| Duration::from_secs(secs as u64))
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("`{text}` is not a duration (10s, 5m, 24h, 7d)"),
                )
            }),
    };
    let defaults = WebhookSettings::default();
    let settings = WebhookSettings {
        allow_private: options.webhook_allow_private.unwrap_or(false),
        timeout: duration(
            "webhook_timeout",
            &options.webhook_timeout,
            defaults.timeout,
        )?,
        retry_for: duration(
            "webhook_retry_for",
            &options.webhook_retry_for,
            defaults.retry_for,
        )?,
        max_backoff: duration(
            "webhook_max_backoff",
            &options.webhook_max_backoff,
            defaults.max_backoff,
        )?,
        expiring_before: duration(
            "webhook_expiring_before",
            &options.webhook_expiring_before,
            defaults.expiring_before,
        )?,
        ..defaults
    };
    if settings.timeout > Duration::from_secs(300) {
        return Err(invalid("webhook_timeout", "must be at most 5m"));
    }
    Ok(Some(settings))
}
