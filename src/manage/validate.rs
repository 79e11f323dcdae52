//! Field rules for keys: names, account ids, CIDRs, metadata, validity
//! windows; also for records that arrive outside the API (restore, import).

use std::collections::BTreeMap;

use super::error::{invalid, ManageError};
use crate::ratelimit::RateLimit;
use crate::scope::Catalog;
use crate::store::{KeyRecord, RateLimitRecord, RoleRecord};
use crate::token::KeyId;

pub(super) const MAX_NAME_CHARS: usize = 100;
pub(super) const MAX_ACCOUNT_ID_BYTES: usize = 128;
pub(super) const MAX_CIDRS: usize = 32;
pub const MAX_METADATA_ENTRIES: usize = 16;
pub(super) const MAX_METADATA_KEY_BYTES: usize = 64;
pub(super) const MAX_METADATA_VALUE_BYTES: usize = 256;
pub(super) const MAX_METADATA_BYTES: usize = 2048;

pub(super) fn parse_key_id(text: &str) -> Result<KeyId, ManageError> {
    if text.is_empty() {
        return Err(invalid("key_id", "is required"));
    }
    KeyId::parse(text).ok_or_else(|| invalid("key_id", "is not a key id (22 base64url characters)"))
}

/// A record that arrives from outside the API (`restore`, `fleet import`)
/// is held to the API's rules: its shape and version, account id, name,
/// CIDRs and metadata. (Scopes and limits are checked against the catalog by
/// the store; the per-account cap by the caller, which sees every record.)
pub fn validate_imported(record: &KeyRecord) -> Result<(), ManageError> {
    if record.version == 0 || record.version > KeyRecord::VERSION {
        return Err(invalid(
            "version",
            format!(
                "record version {} is not one this build writes (1 to {})",
                record.version,
                KeyRecord::VERSION
            ),
        ));
    }
    if record.key_id.len() != 16 {
        return Err(invalid("key_id", "is not 16 bytes"));
    }
    if record.secret_hash.len() != 32 {
        return Err(invalid("secret_hash", "is not 32 bytes"));
    }
    validate_account_id(&record.account_id)?;
    validate_name(&record.name)?;
    validate_cidrs(&record.allowed_cidrs)?;
    validate_metadata(&record.metadata)?;
    crate::ratelimit::check_all(&record.rate_limits())
        .map_err(|message| invalid("rate_limits", message))?;
    Ok(())
}

/// An imported record's scopes and limits against the catalog in force, as
/// the API would take them: scopes known and non-empty, billing alone, the
/// limits' scopes known.
pub fn validate_imported_scopes(record: &KeyRecord, catalog: &Catalog) -> Result<(), ManageError> {
    let scope_error = |source| ManageError::Scope {
        field: "scopes",
        source,
    };
    if record.role_ids.is_empty() {
        catalog
            .key_scopes(record.scopes.iter().map(String::as_str), [])
            .map_err(scope_error)?;
    } else {
        // With roles, the effective set is checked once they are in (the
        // store's import judges each key as Check will).
        catalog
            .resolve(record.scopes.iter().map(String::as_str))
            .map_err(scope_error)?;
        if record.role_ids.len() > crate::role::MAX_ROLES_PER_KEY
            || record.roles().count() != record.role_ids.len()
        {
            return Err(invalid(
                "role_ids",
                format!(
                    "at most {} role ids of 16 bytes",
                    crate::role::MAX_ROLES_PER_KEY
                ),
            ));
        }
    }
    validate_rate_limits(&record.rate_limits(), catalog).map(drop)
}

/// A role that arrives from outside the API (`restore`, `fleet import`),
/// held to the API's rules: version, id, account, name, description, and
/// grants that are known scopes with billing alone.
pub fn validate_imported_role(role: &RoleRecord, catalog: &Catalog) -> Result<(), ManageError> {
    if role.version == 0 || role.version > RoleRecord::VERSION {
        return Err(invalid(
            "version",
            format!(
                "role record version {} is not one this build writes",
                role.version
            ),
        ));
    }
    if role.id().is_none() {
        return Err(invalid("role_id", "is not 16 bytes"));
    }
    validate_account_id(&role.account_id)?;
    if validate_name(&role.name)? != role.name {
        return Err(invalid("name", "has surrounding whitespace"));
    }
    if role.description.chars().count() > crate::role::MAX_ROLE_DESCRIPTION {
        return Err(invalid("description", "is too long"));
    }
    catalog
        .key_scopes(role.scopes.iter().map(String::as_str), [])
        .map_err(|source| ManageError::Scope {
            field: "scopes",
            source,
        })
        .map(drop)
}

/// A key's rate limits as the API takes them: each valid, names distinct,
/// scopes in the catalog.
pub(super) fn validate_rate_limits(
    limits: &[RateLimit],
    catalog: &Catalog,
) -> Result<Vec<RateLimitRecord>, ManageError> {
    crate::ratelimit::check_all(limits).map_err(|message| invalid("rate_limits", message))?;
    for limit in limits {
        catalog
            .resolve(limit.scopes.iter().map(String::as_str))
            .map_err(|source| ManageError::Scope {
                field: "rate_limits",
                source,
            })?;
    }
    Ok(limits.iter().map(RateLimitRecord::from).collect())
}

/// Refuses a set of records that would put more than `cap` keys in one
/// account.
pub fn check_account_caps(records: &[KeyRecord], cap: usize) -> Result<(), ManageError> {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for record in records {
        let count = counts.entry(record.account_id.as_str()).or_default();
        *count += 1;
        if *count > cap {
            return Err(ManageError::AccountFull {
                account: record.account_id.clone(),
                cap,
            });
        }
    }
    Ok(())
}

pub(super) fn validate_name(name: &str) -> Result<String, ManageError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "is required"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// A validity window (unix ms; 0 = unset): the expiry in the future, the
/// start before it, and within the maximum lifetime if there is one.
pub(super) fn validity(
    now: i64,
    not_before: i64,
    expire: i64,
    max_lifetime: Option<std::time::Duration>,
) -> Result<(i64, i64), ManageError> {
    if not_before < 0 || expire < 0 {
        return Err(invalid("expire_time", "must be after 1970"));
    }
    if expire != 0 && expire <= now {
        return Err(invalid("expire_time", "is in the past"));
    }
    if expire != 0 && not_before != 0 && not_before >= expire {
        return Err(invalid("not_before", "must be before expire_time"));
    }
    if let Some(max) = max_lifetime {
        let latest = now + max.as_millis() as i64;
        if expire == 0 {
            return Err(invalid(
                "expire_time",
                format!("is required: this server allows keys of at most {} s (--max-key-lifetime-secs)", max.as_secs()),
            ));
        }
        if expire > latest {
            return Err(invalid(
                "expire_time",
                format!(
                    "is more than {} s away (--max-key-lifetime-secs)",
                    max.as_secs()
                ),
            ));
        }
    }
    Ok((not_before, expire))
}

/// Parses and normalises CIDRs (a bare address is its /32 or /128).
pub(super) fn validate_cidrs(cidrs: &[String]) -> Result<Vec<String>, ManageError> {
    if cidrs.len() > MAX_CIDRS {
        return Err(invalid(
            "allowed_cidrs",
            format!("holds more than {MAX_CIDRS} entries"),
        ));
    }
    cidrs
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc().to_string())
                .map_err(|_| {
                    invalid(
                        "allowed_cidrs",
                        format!("`{text}` is not a CIDR (e.g. 203.0.113.0/24, 2001:db8::/32) or an address"),
                    )
                })
        })
        .collect()
}

/// Bounded: entries, key shape and length, value length, total size.
pub(super) fn validate_metadata(
    metadata: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ManageError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(
            "metadata",
            format!("holds more than {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    let mut total = 0;
    for (key, value) in metadata {
        let valid_key = (1..=MAX_METADATA_KEY_BYTES).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_key {
            return Err(invalid(
                "metadata",
                format!(
                    "key `{}` must be 1 to {MAX_METADATA_KEY_BYTES} of [A-Za-z0-9_.-]",
                    key.chars().take(80).collect::<String>()
                ),
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(invalid(
                "metadata",
                format!("the value of `{key}` is longer than {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(
                "metadata",
                format!("the value of `{key}` holds control characters"),
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(invalid(
            "metadata",
            format!("is larger than {MAX_METADATA_BYTES} bytes in all"),
        ));
    }
    Ok(metadata.clone())
}

pub(super) fn validate_account_id(account_id: &str) -> Result<String, ManageError> {
    if account_id.is_empty() {
        return Err(invalid("account_id", "is required"));
    }
    if account_id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(invalid(
            "account_id",
            format!("is longer than {MAX_ACCOUNT_ID_BYTES} bytes"),
        ));
    }
    if account_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            "account_id",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(account_id.to_owned())
}
