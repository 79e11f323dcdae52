//! The on-disk encoding of a key: a versioned protobuf message (prost), so
//! fields can be added without rewriting stores.

use crate::credits::{Credits, KeyCredits, Refill};
use crate::key::{KeyExtras, Metadata};
use crate::ratelimit::RateLimit;
use crate::role::RoleId;
use crate::token::KeyId;

/// Version of the whole store layout, kept in the `meta` tree.
pub const FORMAT_VERSION: u32 = 1;

/// One API key as stored. Holds the hash of the secret, never the secret.
/// The same record is one line of a backup file (JSON, hashes in hex); a
/// line with a field this build does not know is refused, never dropped.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Record version ([`KeyRecord::VERSION`] is the newest this build reads).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(with = "key_id_text")]
    pub key_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub account_id: String,
    #[prost(string, tag = "4")]
    pub name: String,
    /// Scope names (not catalog indices, so a new catalog cannot shift them).
    #[prost(string, repeated, tag = "5")]
    pub scopes: Vec<String>,
    #[prost(bytes = "vec", tag = "6")]
    #[serde(with = "hex")]
    pub secret_hash: Vec<u8>,
    #[prost(int64, tag = "7")]
    pub create_time_unix_ms: i64,
    #[prost(int64, tag = "8")]
    pub update_time_unix_ms: i64,
    /// "admin" or the key id of the API key that created it.
    #[prost(string, tag = "9")]
    pub created_by: String,
    /// Version 2 on: the lifecycle. 0 = none (and absent from version 1
    /// backups).
    #[prost(int64, tag = "10")]
    #[serde(default)]
    pub expire_time_unix_ms: i64,
    #[prost(int64, tag = "11")]
    #[serde(default)]
    pub not_before_unix_ms: i64,
    #[prost(bool, tag = "12")]
    #[serde(default)]
    pub disabled: bool,
    /// After a rotation with overlap: the previous secret's hash, and when it
    /// stops working.
    #[prost(bytes = "vec", tag = "13")]
    #[serde(default, with = "hex")]
    pub previous_secret_hash: Vec<u8>,
    #[prost(int64, tag = "14")]
    #[serde(default)]
    pub previous_secret_expire_unix_ms: i64,
    #[prost(string, repeated, tag = "15")]
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    #[prost(btree_map = "string, string", tag = "16")]
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Named rate limits ([`crate::ratelimit`]); a sidecar from before them
    /// skips the field.
    #[prost(message, repeated, tag = "17")]
    #[serde(default)]
    pub rate_limits: Vec<RateLimitRecord>,
    /// Credits ([`crate::credits`]); unset: unlimited. Version 4.
    #[prost(message, optional, tag = "18")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsRecord>,
    /// The roles this key references ([`RoleRecord`]); its effective scopes
    /// are `scopes` and theirs. Version 5.
    #[prost(bytes = "vec", repeated, tag = "19")]
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "role_ids_text")]
    pub role_ids: Vec<Vec<u8>>,
    /// When a leak of this key was reported (0: never), and where it was
    /// seen; the key was disabled or deleted then (`--leak-action`).
    #[prost(int64, tag = "20")]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exposed_time_unix_ms: i64,
    #[prost(string, tag = "21")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exposed_url: String,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// A role as stored (and in a backup line): its grants, and the keys that
/// reference it, so a change to the role reads exactly those keys and any
/// change to one of them is a change to this record (a role change decided
/// on its keys cannot race a change to one of them).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(with = "role_id_text")]
    pub role_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub account_id: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub description: String,
    /// Scope names, like a key's.
    #[prost(string, repeated, tag = "6")]
    pub scopes: Vec<String>,
    #[prost(int64, tag = "7")]
    pub create_time_unix_ms: i64,
    #[prost(int64, tag = "8")]
    pub update_time_unix_ms: i64,
    #[prost(string, tag = "9")]
    pub created_by: String,
    /// The keys referencing this role, as 16-byte ids.
    #[prost(bytes = "vec", repeated, tag = "10")]
    #[serde(default, with = "key_ids_text")]
    pub members: Vec<Vec<u8>>,
}

impl RoleRecord {
    pub const VERSION: u32 = 1;

    pub fn id(&self) -> Option<RoleId> {
        RoleId::from_slice(&self.role_id)
    }

    pub fn member_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.members
            .iter()
            .filter_map(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
            .map(KeyId::from_bytes)
    }

    /// The same grants, name and description (members and times aside).
    pub fn same_grants(&self, other: &RoleRecord) -> bool {
        let sorted = |scopes: &[String]| {
            let mut scopes = scopes.to_vec();
            scopes.sort();
            scopes
        };
        sorted(&self.scopes) == sorted(&other.scopes)
    }
}

/// Role ids in a backup line: their text form.
mod role_id_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::role::RoleId;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match RoleId::from_slice(bytes) {
            Some(id) => serializer.collect_str(&id),
            None => Err(serde::ser::Error::custom("role id is not 16 bytes")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        RoleId::parse(&text)
            .map(|id| id.as_bytes().to_vec())
            .ok_or_else(|| D::Error::custom(format!("`{text}` is not a role id")))
    }
}

/// A list of ids in a backup line, each in its text form (`$one` writes
/// and checks one).
macro_rules! id_list_text {
    ($list:ident, $one:ident) => {
        mod $list {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(
                ids: &[Vec<u8>],
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(ids.iter().map(|id| Wrapped(id)))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Vec<Vec<u8>>, D::Error> {
                let texts = Vec::<Unwrapped>::deserialize(deserializer)?;
                Ok(texts.into_iter().map(|id| id.0).collect())
            }

            struct Wrapped<'a>(&'a [u8]);

            impl serde::Serialize for Wrapped<'_> {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    super::$one::serialize(self.0, serializer)
                }
            }

            struct Unwrapped(Vec<u8>);

            impl<'de> Deserialize<'de> for Unwrapped {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    super::$one::deserialize(deserializer).map(Unwrapped)
                }
            }
        }
    };
}

id_list_text!(role_ids_text, role_id_text);
id_list_text!(key_ids_text, key_id_text);

/// A key's credits as stored (and in a backup line): the balance as last
/// set, its refill, and the balance's generation.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsRecord {
    /// The balance when last set (create, update, UpdateCredits); the live
    /// one is the credits book's.
    #[prost(uint64, tag = "1")]
    pub remaining: u64,
    #[prost(uint64, tag = "2")]
    #[serde(default)]
    pub refill_amount: u64,
    /// "daily" or "monthly"; empty: no refill.
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub refill_interval: String,
    #[prost(uint32, tag = "4")]
    #[serde(default)]
    pub refill_day_of_month: u32,
    /// Bumped each time `remaining` is set: a balance of an older
    /// generation starts again from it.
    #[prost(uint64, tag = "5")]
    #[serde(default)]
    pub generation: u64,
}

impl CreditsRecord {
    pub fn new(credits: &Credits, generation: u64) -> CreditsRecord {
        let refill = credits.refill;
        CreditsRecord {
            remaining: credits.remaining,
            refill_amount: refill.map_or(0, |refill| refill.amount),
            refill_interval: refill
                .map_or(String::new(), |refill| refill.interval.name().to_owned()),
            refill_day_of_month: refill.map_or(0, |refill| u32::from(refill.day_of_month)),
            generation,
        }
    }

    /// The terms, checked (a record this build cannot read is unfit).
    pub fn key_credits(&self) -> Result<KeyCredits, String> {
        let refill = match self.refill_interval.as_str() {
            "" => None,
            interval => Some(
                Refill::new(self.refill_amount, interval, self.refill_day_of_month)
                    .map_err(|error| error.to_string())?,
            ),
        };
        let terms = Credits::new(self.remaining, refill).map_err(|error| error.to_string())?;
        Ok(KeyCredits {
            terms,
            generation: self.generation,
        })
    }
}

/// A key id in a backup line: its text form, checked on the way in.
mod key_id_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::token::KeyId;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let id = <[u8; 16]>::try_from(bytes).map(KeyId::from_bytes);
        match id {
            Ok(id) => serializer.collect_str(&id),
            Err(_) => Err(serde::ser::Error::custom("key id is not 16 bytes")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyId::parse(&text)
            .map(|id| id.as_bytes().to_vec())
            .ok_or_else(|| D::Error::custom(format!("`{text}` is not a key id")))
    }
}

/// One named limit as stored (and in a backup line).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
    #[prost(uint64, tag = "3")]
    pub window_secs: u64,
    #[prost(string, repeated, tag = "4")]
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Counted for every key of the account (the API's `account`); backups
    /// written before the rename call it `shared`.
    #[prost(bool, tag = "5")]
    #[serde(default, alias = "shared")]
    pub account: bool,
}

impl From<&RateLimit> for RateLimitRecord {
    fn from(limit: &RateLimit) -> Self {
        RateLimitRecord {
            name: limit.name.clone(),
            limit: limit.limit,
            window_secs: limit.window_secs,
            scopes: limit.scopes.clone(),
            account: limit.account,
        }
    }
}

impl From<&RateLimitRecord> for RateLimit {
    fn from(record: &RateLimitRecord) -> Self {
        RateLimit {
            name: record.name.clone(),
            limit: record.limit,
            window_secs: record.window_secs,
            scopes: record.scopes.clone(),
            account: record.account,
        }
    }
}

impl KeyRecord {
    /// 1: the first release. 2: lifecycle fields (expiry, not-before,
    /// disabled, previous secret, allowed CIDRs, metadata). 3: rate limits.
    /// 4: credits. 5: roles. A build refuses records newer than it reads (the key is
    /// unfit: denied, never changed) instead of ignoring a field that
    /// restricts the key.
    pub const VERSION: u32 = 5;

    /// The version a record is written as: the oldest that enforces every
    /// field set in it. A key with rate limits is version 3, so a sidecar
    /// from before limits denies it rather than let it through unlimited (or
    /// rewrite it without them); a key without stays version 2, readable by
    /// that sidecar while a fleet upgrades.
    pub fn required_version(&self) -> u32 {
        if !self.role_ids.is_empty() {
            5
        } else if self.credits.is_some() {
            4
        } else if !self.rate_limits.is_empty() {
            3
        } else {
            2
        }
    }

    /// This record as it must be written: never older than its fields need.
    pub fn versioned(mut self) -> KeyRecord {
        self.version = self.version.max(self.required_version());
        self
    }

    /// The hot-path view of the lifecycle fields (rate limits are added by
    /// the table, which knows the catalog); `None` when there are none.
    pub fn extras(&self) -> Result<Option<Box<KeyExtras>>, String> {
        let previous = match self.previous_secret_hash.as_slice() {
            [] => None,
            hash => Some((
                hash.try_into()
                    .map_err(|_| "previous secret hash is not 32 bytes".to_owned())?,
                self.previous_secret_expire_unix_ms,
            )),
        };
        let cidrs = self
            .allowed_cidrs
            .iter()
            .map(|cidr| {
                cidr.parse::<ipnet::IpNet>()
                    .map_err(|_| format!("allowed CIDR `{cidr}` does not parse"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = (!self.metadata.is_empty()).then(|| {
            std::sync::Arc::new(
                self.metadata
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect::<Metadata>(),
            )
        });
        let limits = KeyExtras {
            not_before_ms: self.not_before_unix_ms,
            expire_ms: self.expire_time_unix_ms,
            disabled: self.disabled,
            previous,
            cidrs,
            metadata,
            high_scopes: None,
            rate: None,
            credits: self
                .credits
                .as_ref()
                .map(CreditsRecord::key_credits)
                .transpose()?
                .map(std::sync::Arc::new),
        };
        Ok((!limits.is_empty()).then(|| Box::new(limits)))
    }

    pub fn rate_limits(&self) -> Vec<RateLimit> {
        self.rate_limits.iter().map(RateLimit::from).collect()
    }

    pub fn roles(&self) -> impl Iterator<Item = RoleId> + '_ {
        self.role_ids.iter().filter_map(|id| RoleId::from_slice(id))
    }

    pub fn key_id(&self) -> Option<KeyId> {
        let bytes: [u8; 16] = self.key_id.as_slice().try_into().ok()?;
        Some(KeyId::from_bytes(bytes))
    }
}

/// `account_id NUL key_id`: the account index key; sorts keys by account,
/// then id.
pub fn account_index_key(account_id: &str, key_id: &KeyId) -> Vec<u8> {
    account_index_key_bytes(account_id, key_id.as_bytes())
}

/// `account_id NUL id` for any 16-byte id (keys, roles).
pub fn account_index_key_bytes(account_id: &str, id: &[u8]) -> Vec<u8> {
    let mut index_key = account_prefix(account_id);
    index_key.extend_from_slice(id);
    index_key
}

pub fn account_prefix(account_id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(account_id.len() + 17);
    prefix.extend_from_slice(account_id.as_bytes());
    prefix.push(0);
    prefix
}

/// The first result of a CreateKey made with a request id
/// ([`crate::request_id`]), filed under the id's hash for the retry window.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateRequestRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub key_id: Vec<u8>,
    /// The token, sealed under a key only the request id derives.
    #[prost(bytes = "vec", tag = "2")]
    pub sealed_token: Vec<u8>,
    /// What the request asked for (a reuse for another request is refused).
    #[prost(bytes = "vec", tag = "3")]
    pub request_digest: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub time_unix_ms: i64,
}

/// A create's request id, filed with the key in the same transaction.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    pub lookup: [u8; 32],
    pub record: CreateRequestRecord,
}
