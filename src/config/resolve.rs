//! [`ServeOptions::resolve`]: defaults filled in, every value checked, each
//! error naming its key.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    default_worker_threads, ConfigError, ServeOptions, DEFAULT_AUDIT_RETENTION_DAYS,
    DEFAULT_LAST_USED_INTERVAL_SECS, DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS, DEFAULT_SLED_CACHE_MIB,
};
use crate::counters::CountersConfig;
use crate::manage::DEFAULT_MAX_KEYS_PER_ACCOUNT;
use crate::proxy::ProxyConfig;
use crate::server::{
    AdminTokenSource, ForwardAuthAt, Limits, RateLimitService, RateLimitServiceAt, ServeConfig,
    DEFAULT_DATA_DIR,
};
use crate::store::fleet::DEFAULT_PREFIX as DEFAULT_ETCD_PREFIX;
use crate::store::FleetConfig;
use crate::token::DEFAULT_PREFIX;

impl ServeOptions {
    /// Defaults filled in and every value checked.
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let options = self.effective();
        let (listen, uds_mode, metrics_listen) = listeners(&options)?;
        let (fleet, max_staleness) = store(&options)?;
        let lifetimes = lifetimes(&options)?;
        Ok(ServeConfig {
            worker_threads: worker_threads(&options)?,
            sled_cache_bytes: sled_cache_bytes(&options)?,
            last_used_interval: lifetimes.last_used_interval,
            audit_retention: lifetimes.audit_retention,
            audit_max_events_per_account: match options
                .audit_max_events_per_account
                .unwrap_or(crate::store::DEFAULT_AUDIT_MAX_EVENTS_PER_ACCOUNT)
            {
                0 => {
                    return Err(invalid(
                        "audit_max_events_per_account",
                        "must be at least 1",
                    ))
                }
                max => max,
            },
            max_key_lifetime: lifetimes.max_key_lifetime,
            fleet,
            max_staleness,
            listen,
            tls: both_or_neither(
                ("tls_cert_file", &options.tls_cert_file),
                ("tls_key_file", &options.tls_key_file),
            )?,
            uds: options.uds.clone(),
            uds_mode,
            manage_listen: options.manage_listen,
            metrics_listen,
            http_listen: optional_addr("http_listen", options.http_listen.as_deref())?,
            data_dir: options
                .data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            admin_token: admin_token(&options),
            catalog: options.catalog.clone(),
            routes: options.routes.clone(),
            ext_authz: ext_authz(&options)?,
            token_prefix: options
                .token_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
            pepper_file: options.pepper_file.clone(),
            max_keys_per_account: positive(
                "max_keys_per_account",
                options
                    .max_keys_per_account
                    .unwrap_or(DEFAULT_MAX_KEYS_PER_ACCOUNT),
            )?,
            drain_timeout: seconds(
                "drain_timeout_secs",
                options.drain_timeout_secs.unwrap_or(5.0),
            )?,
            watch_interval: Some(seconds("watch_secs", options.watch_secs.unwrap_or(0.0))?)
                .filter(|interval| !interval.is_zero()),
            limits: limits(&options)?,
            json_logs: json_logs(&options)?,
            decision_log_every: options.log_decisions_every.unwrap_or(0),
            counters: counters(&options)?,
            rate_limit_fail_closed: options.rate_limit_fail_closed.unwrap_or(false),
            rate_limit_service: rate_limit_service(&options)?,
            forward_auth: forward_auth(&options)?,
            usage: super::usage::usage(&options)?,
            leak_action: leak_action(&options)?,
            github_scanning_keys: github_scanning_keys(&options)?,
            webhooks: super::webhooks::webhooks(&options)?,
            traces: super::webhooks::traces(&options)?,
        })
    }
}

/// Where Envoy's RateLimitService is served, and the most hits it takes.
fn rate_limit_service(options: &ServeOptions) -> Result<Option<RateLimitService>, ConfigError> {
    let max_hits = options.rate_limit_max_hits.unwrap_or(1);
    if max_hits == 0 {
        return Err(invalid("rate_limit_max_hits", "must be at least 1"));
    }
    let at = match options.rate_limit_service_listen.as_deref() {
        None | Some("none") => return Ok(None),
        Some("uds") if options.uds.is_none() => {
            return Err(invalid(
                "rate_limit_service_listen",
                "is \"uds\" and no uds is set",
            ))
        }
        Some("uds") => RateLimitServiceAt::Uds,
        Some(text) => RateLimitServiceAt::Tcp(
            optional_addr("rate_limit_service_listen", Some(text))?.expect("not none"),
        ),
    };
    Ok(Some(RateLimitService { at, max_hits }))
}

/// The forward-auth door: its address, path prefix and trusted proxies.
fn forward_auth(options: &ServeOptions) -> Result<Option<ForwardAuthAt>, ConfigError> {
    let prefix = options.forward_auth_path_prefix.clone().unwrap_or_default();
    if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
        return Err(invalid(
            "forward_auth_path_prefix",
            format!("`{prefix}` must start with / and not end with one (e.g. /check)"),
        ));
    }
    let trusted_proxies = options
        .forward_auth_trusted_proxies
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "forward_auth_trusted_proxies",
                        format!("`{text}` is not an address or CIDR"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let listen = optional_addr(
        "forward_auth_listen",
        options.forward_auth_listen.as_deref(),
    )?;
    let cost_header = options
        .forward_auth_cost_header
        .as_deref()
        .map(|name| {
            axum::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                invalid(
                    "forward_auth_cost_header",
                    format!("`{name}` is not an HTTP header name"),
                )
            })
        })
        .transpose()?;
    match listen {
        None if !prefix.is_empty() || !trusted_proxies.is_empty() || cost_header.is_some() => Err(invalid(
            "forward_auth_listen",
            "is none, but forward_auth_path_prefix, forward_auth_trusted_proxies or forward_auth_cost_header is set",
        )),
        None => Ok(None),
        Some(listen) => Ok(Some(ForwardAuthAt {
            listen,
            path_prefix: prefix,
            trusted_proxies,
            cost_header,
        })),
    }
}

/// Where rate-limit counters live: memory, or a Redis named by URL.
fn counters(options: &ServeOptions) -> Result<CountersConfig, ConfigError> {
    let timeout_ms = options
        .rate_limit_redis_timeout_ms
        .unwrap_or(DEFAULT_RATE_LIMIT_REDIS_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(invalid("rate_limit_redis_timeout_ms", "must be 1 to 60000"));
    }
    match &options.rate_limit_redis {
        None if options.rate_limit_redis_password_file.is_some() => Err(invalid(
            "rate_limit_redis_password_file",
            "needs rate_limit_redis",
        )),
        None => Ok(CountersConfig::Memory),
        Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => Err(
            invalid("rate_limit_redis", "must be a redis:// or rediss:// URL"),
        ),
        Some(url) => Ok(CountersConfig::Redis {
            url: url.clone(),
            password_file: options.rate_limit_redis_password_file.clone(),
            timeout: Duration::from_millis(timeout_ms),
        }),
    }
}

fn leak_action(options: &ServeOptions) -> Result<crate::manage::LeakAction, ConfigError> {
    crate::manage::LeakAction::parse(options.leak_action.as_deref().unwrap_or("disable"))
        .map_err(|message| invalid("leak_action", message))
}

/// GitHub's keys file, read now so a bad one stops the start.
fn github_scanning_keys(options: &ServeOptions) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(path) = &options.github_scanning_keys else {
        return Ok(None);
    };
    crate::secret_scanning::read_keys(path)
        .map_err(|message| invalid("github_scanning_keys", message))?;
    Ok(Some(path.clone()))
}

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn seconds(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| invalid(key, format!("{value} is not a duration in seconds")))
}

/// Two settings that only make sense together (a certificate and its key).
fn both_or_neither<A: Clone, B: Clone>(
    (a_key, a): (&'static str, &Option<A>),
    (b_key, b): (&'static str, &Option<B>),
) -> Result<Option<(A, B)>, ConfigError> {
    match (a, b) {
        (None, None) => Ok(None),
        (Some(a), Some(b)) => Ok(Some((a.clone(), b.clone()))),
        (Some(_), None) => Err(invalid(b_key, format!("is required with {a_key}"))),
        (None, Some(_)) => Err(invalid(a_key, format!("is required with {b_key}"))),
    }
}

fn json_logs(options: &ServeOptions) -> Result<bool, ConfigError> {
    match options.log_format.as_deref().unwrap_or("human") {
        "human" => Ok(false),
        "json" => Ok(true),
        other => Err(invalid(
            "log_format",
            format!("`{other}` is not human or json"),
        )),
    }
}

fn admin_token(options: &ServeOptions) -> AdminTokenSource {
    match (
        &options.admin_token_file,
        std::env::var("SCOPEGATE_ADMIN_TOKEN"),
    ) {
        (Some(path), _) => AdminTokenSource::File(path.clone()),
        (None, Ok(token)) => AdminTokenSource::Value(token),
        (None, Err(_)) => AdminTokenSource::DataDir,
    }
}

struct Lifetimes {
    max_key_lifetime: Option<Duration>,
    audit_retention: Duration,
    last_used_interval: Duration,
}

fn lifetimes(options: &ServeOptions) -> Result<Lifetimes, ConfigError> {
    Ok(Lifetimes {
        max_key_lifetime: match options.max_key_lifetime_secs {
            None => None,
            Some(0) => return Err(invalid("max_key_lifetime_secs", "must be at least 1")),
            Some(secs) => Some(Duration::from_secs(secs)),
        },
        audit_retention: match options
            .audit_retention_days
            .unwrap_or(DEFAULT_AUDIT_RETENTION_DAYS)
        {
            0 => return Err(invalid("audit_retention_days", "must be at least 1")),
            days => Duration::from_secs(days * 86_400),
        },
        last_used_interval: match options
            .last_used_interval_secs
            .unwrap_or(DEFAULT_LAST_USED_INTERVAL_SECS)
        {
            0 => return Err(invalid("last_used_interval_secs", "must be at least 1")),
            secs => Duration::from_secs(secs),
        },
    })
}

fn worker_threads(options: &ServeOptions) -> Result<usize, ConfigError> {
    match options
        .worker_threads
        .unwrap_or_else(default_worker_threads)
    {
        0 => Err(invalid("worker_threads", "must be at least 1")),
        threads if threads > 1024 => Err(invalid(
            "worker_threads",
            format!("{threads} is above 1024"),
        )),
        threads => Ok(threads),
    }
}

fn sled_cache_bytes(options: &ServeOptions) -> Result<u64, ConfigError> {
    match options.sled_cache_mib.unwrap_or(DEFAULT_SLED_CACHE_MIB) {
        0 => Err(invalid("sled_cache_mib", "must be at least 1")),
        mib => mib
            .checked_mul(1 << 20)
            .ok_or_else(|| invalid("sled_cache_mib", format!("{mib} MiB is too large"))),
    }
}

/// The etcd settings of fleet mode, checked.
fn fleet_config(options: &ServeOptions) -> Result<FleetConfig, ConfigError> {
    let endpoints: Vec<String> = options
        .etcd_endpoints
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(invalid(
            "etcd_endpoints",
            "is required with store = etcd (e.g. http://127.0.0.1:2379)",
        ));
    }
    for endpoint in &endpoints {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid(
                "etcd_endpoints",
                format!("`{endpoint}` must start with http:// or https://"),
            ));
        }
    }
    let prefix = options
        .etcd_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into());
    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.len() < 2 {
        return Err(invalid(
            "etcd_prefix",
            format!("`{prefix}` must start and end with / (e.g. /scopegate/v1/)"),
        ));
    }
    let cert_key = both_or_neither(
        ("etcd_cert_file", &options.etcd_cert_file),
        ("etcd_key_file", &options.etcd_key_file),
    )?;
    let user = both_or_neither(
        ("etcd_user", &options.etcd_user),
        ("etcd_password_file", &options.etcd_password_file),
    )?;
    Ok(FleetConfig {
        endpoints,
        prefix,
        ca_file: options.etcd_ca_file.clone(),
        cert_key,
        user,
    })
}

/// The gRPC TCP listener, the socket's mode, the metrics listener
/// (`"none"` turns a listener off; something must serve gRPC).
fn listeners(
    options: &ServeOptions,
) -> Result<(Option<SocketAddr>, u32, Option<SocketAddr>), ConfigError> {
    let listen = match options.listen.as_deref() {
        Some("none") => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|error| {
            invalid(
                "listen",
                format!("`{text}` is not HOST:PORT or \"none\": {error}"),
            )
        })?),
        None => unreachable!("defaulted"),
    };
    if listen.is_none() && options.uds.is_none() {
        return Err(invalid(
            "listen",
            "is \"none\" and no uds is set: nothing would serve gRPC",
        ));
    }
    let uds_mode = options.uds_mode.as_deref().unwrap_or("660");
    let uds_mode = u32::from_str_radix(uds_mode, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            invalid(
                "uds_mode",
                format!("`{uds_mode}` is not an octal file mode"),
            )
        })?;
    let metrics_listen = optional_addr("metrics_listen", options.metrics_listen.as_deref())?;
    Ok((listen, uds_mode, metrics_listen))
}

/// HOST:PORT, or "none" for no listener.
fn optional_addr(key: &'static str, text: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    match text {
        None | Some("none") => Ok(None),
        Some(text) => text.parse::<SocketAddr>().map(Some).map_err(|error| {
            invalid(
                key,
                format!("`{text}` is not HOST:PORT or \"none\": {error}"),
            )
        }),
    }
}

/// The source of truth: standalone, or etcd with its connection and the
/// staleness bound that only applies there.
fn store(options: &ServeOptions) -> Result<(Option<FleetConfig>, Option<Duration>), ConfigError> {
    let fleet = match options.store.as_deref().unwrap_or("standalone") {
        "standalone" => {
            if options.etcd_endpoints.is_some() {
                return Err(invalid(
                    "etcd_endpoints",
                    "is set but store is standalone: add --store etcd for fleet mode",
                ));
            }
            None
        }
        "etcd" => Some(fleet_config(options)?),
        other => {
            return Err(invalid(
                "store",
                format!("`{other}` is not standalone or etcd"),
            ))
        }
    };
    let max_staleness = match options.max_staleness_secs {
        None => None,
        Some(_) if fleet.is_none() => {
            return Err(invalid(
                "max_staleness_secs",
                "applies to --store etcd only",
            ))
        }
        Some(value) if value > 0.0 => Some(Duration::try_from_secs_f64(value).map_err(|_| {
            invalid(
                "max_staleness_secs",
                format!("{value} is not a duration in seconds"),
            )
        })?),
        Some(value) => {
            return Err(invalid(
                "max_staleness_secs",
                format!("{value} must be above 0"),
            ))
        }
    };
    Ok((fleet, max_staleness))
}

/// Zero is never a usable count, size or rate.
fn positive(key: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

/// The admission and protocol limits, each at least 1.
fn limits(options: &ServeOptions) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    Ok(Limits {
        max_concurrent_requests: positive(
            "max_concurrent_requests",
            options
                .max_concurrent_requests
                .unwrap_or(defaults.max_concurrent_requests),
        )?,
        max_concurrent_manage: positive(
            "max_concurrent_manage",
            options
                .max_concurrent_manage
                .unwrap_or(defaults.max_concurrent_manage),
        )?,
        mutations_per_account_per_sec: positive(
            "mutations_per_account_per_sec",
            options
                .mutations_per_account_per_sec
                .unwrap_or(defaults.mutations_per_account_per_sec) as usize,
        )? as u32,
        reads_per_account_per_sec: positive(
            "reads_per_account_per_sec",
            options
                .reads_per_account_per_sec
                .unwrap_or(defaults.reads_per_account_per_sec) as usize,
        )? as u32,
        request_timeout: Duration::from_millis(positive(
            "request_timeout_ms",
            options
                .request_timeout_ms
                .unwrap_or(match options.store.as_deref() {
                    Some("etcd") => crate::server::DEFAULT_FLEET_REQUEST_TIMEOUT_MS,
                    _ => crate::server::DEFAULT_REQUEST_TIMEOUT_MS,
                }) as usize,
        )? as u64),
        max_message_bytes: positive(
            "max_message_bytes",
            options
                .max_message_bytes
                .unwrap_or(defaults.max_message_bytes),
        )?,
        ext_authz_max_message_bytes: positive(
            "ext_authz_max_message_bytes",
            options
                .ext_authz_max_message_bytes
                .unwrap_or(defaults.ext_authz_max_message_bytes),
        )?,
        http2_max_concurrent_streams: positive(
            "http2_max_concurrent_streams",
            options
                .http2_max_concurrent_streams
                .unwrap_or(defaults.http2_max_concurrent_streams) as usize,
        )? as u32,
        ..defaults
    })
}

/// What ext_authz reads and writes: header names checked, lowercased.
fn ext_authz(options: &ServeOptions) -> Result<ProxyConfig, ConfigError> {
    let header =
        |key: &'static str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                None => Ok(None),
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Ok(Some(name.to_ascii_lowercase()))
                }
                Some(name) => Err(invalid(key, format!("`{name}` is not an HTTP header name"))),
            }
        };
    Ok(ProxyConfig {
        api_key_header: header("api_key_header", options.api_key_header.clone())?,
        key_id_header: header("key_id_header", options.key_id_header.clone())?.unwrap_or_default(),
        account_id_header: header("account_id_header", options.account_id_header.clone())?
            .unwrap_or_default(),
        hide_credentials: !options.keep_credential_header.unwrap_or(false),
        dry_run: options.dry_run.unwrap_or(false),
        count_rate_limits: options.ext_authz_rate_limits.unwrap_or(true),
    })
}
