//! Reads of the records themselves (GetKey, ListKeys, backup), from sled:
//! the truth standalone, the mirror in fleet mode.

use super::record::{account_prefix, KeyRecord};
use super::{decode, decode_whole, Store, StoreError};
use crate::token::KeyId;

/// Every stored record, encoded: keys and roles.
pub struct Exported {
    pub keys: Vec<sled::IVec>,
    pub roles: Vec<sled::IVec>,
}

impl Store {
    pub fn get(&self, key_id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.healthy()?;
        match self.inner.keys.get(key_id.as_bytes())? {
            Some(value) => Ok(Some(decode_whole(key_id.as_bytes(), &value)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys of `account` (every account when `None`) whose index
    /// key sorts after `after`, and the index key to continue from.
    pub fn list(
        &self,
        account: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<KeyRecord>, Option<Vec<u8>>), StoreError> {
        self.healthy()?;
        let prefix = account.map(account_prefix).unwrap_or_default();
        let start = match after {
            // A cursor is an index key of this account's range (16-byte key id last).
            Some(after) if after.starts_with(&prefix) && after.len() > prefix.len() + 16 - 1 => {
                let mut start = after.to_vec();
                start.push(0);
                start
            }
            Some(_) => return Err(StoreError::BadCursor),
            None => prefix.clone(),
        };
        let mut records = Vec::new();
        let mut last = None;
        for item in self.inner.accounts.range(start..) {
            let (index_key, _) = item?;
            if !index_key.starts_with(&prefix) {
                break;
            }
            if records.len() == limit {
                return Ok((records, last));
            }
            let key_id = &index_key[index_key.len() - 16..];
            if let Some(value) = self.inner.keys.get(key_id)? {
                records.push(decode(key_id, &value)?);
            }
            last = Some(index_key.to_vec());
        }
        Ok((records, None))
    }

    /// Every stored record, encoded, read under the writer lock so the set is
    /// consistent (no mutation is half in it).
    pub fn export(&self) -> Result<Exported, StoreError> {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        self.healthy()?;
        let values = |tree: &sled::Tree| {
            tree.iter()
                .values()
                .map(|value| value.map_err(StoreError::from))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Exported {
            keys: values(&self.inner.keys)?,
            roles: values(&self.inner.roles)?,
        })
    }
}
