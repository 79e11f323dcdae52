//! The on-disk encoding of a key: a versioned protobuf message (prost), so
//! fields can be added without rewriting stores.

use crate::token::KeyId;

/// Version of the whole store layout, kept in the `meta` tree.
pub const FORMAT_VERSION: u32 = 1;

/// One API key as stored. Holds the hash of the secret, never the secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyRecord {
    /// Record version; 1 today.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub key_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub account_id: String,
    #[prost(string, tag = "4")]
    pub name: String,
    /// Scope names (not catalog indices, so a new catalog cannot shift them).
    #[prost(string, repeated, tag = "5")]
    pub scopes: Vec<String>,
    #[prost(bytes = "vec", tag = "6")]
    pub secret_hash: Vec<u8>,
    #[prost(int64, tag = "7")]
    pub create_time_unix_ms: i64,
    #[prost(int64, tag = "8")]
    pub update_time_unix_ms: i64,
    /// "admin" or the key id of the API key that created it.
    #[prost(string, tag = "9")]
    pub created_by: String,
}

impl KeyRecord {
    pub const VERSION: u32 = 1;

    pub fn key_id(&self) -> Option<KeyId> {
        let bytes: [u8; 16] = self.key_id.as_slice().try_into().ok()?;
        Some(KeyId::from_bytes(bytes))
    }
}

/// `account_id NUL key_id`: the account index key; sorts keys by account,
/// then id.
pub fn account_index_key(account_id: &str, key_id: &KeyId) -> Vec<u8> {
    let mut index_key = account_prefix(account_id);
    index_key.extend_from_slice(key_id.as_bytes());
    index_key
}

pub fn account_prefix(account_id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(account_id.len() + 17);
    prefix.extend_from_slice(account_id.as_bytes());
    prefix.push(0);
    prefix
}
