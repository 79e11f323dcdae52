//! The webhook settings: on or off, private targets, and the times of
//! delivery (an attempt's bound, how long to retry, the longest backoff,
//! the expiry notice); and where traces go.

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

/// Where traces go, and how many decisions are traced.
pub(super) fn traces(
    options: &ServeOptions,
) -> Result<Option<crate::traces::TraceSettings>, ConfigError> {
    let ratio = options.trace_sample_ratio.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(invalid("trace_sample_ratio", "must be 0 to 1"));
    }
    let Some(endpoint) = &options.otlp_endpoint else {
        if ratio > 0.0 {
            return Err(invalid("trace_sample_ratio", "needs otlp_endpoint"));
        }
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        || endpoint.parse::<http::Uri>().is_err()
    {
        return Err(invalid(
            "otlp_endpoint",
            format!("`{endpoint}` is not an http:// or https:// URL (an OTLP/gRPC collector, port 4317 by convention)"),
        ));
    }
    Ok(Some(crate::traces::TraceSettings {
        endpoint: endpoint.clone(),
        sample_ratio: ratio,
    }))
}
