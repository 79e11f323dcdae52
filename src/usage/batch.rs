//! One flush: the shards' cells, named (key ids as text, scopes by name,
//! outcomes by name) and rolled up into the records a book stores: per
//! key and per account (`*`), per minute, hour and day.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::scope::{Catalog, ScopeSet};
use crate::stats::{Grain, Tally, NOBODY, OUTCOMES};

use super::record::Cells;

/// The key of an account's total among its keys' records.
pub const ACCOUNT_TOTAL: &str = "*";

/// Where a record lives: grain, account, key (`*`: the account's total),
/// bucket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub grain: Grain,
    pub account: Arc<str>,
    pub key: Arc<str>,
    pub bucket: u32,
}

/// What one flush adds.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    pub records: BTreeMap<RecordKey, Tally>,
    /// Decisions in it.
    pub decisions: u64,
}

impl Batch {
    /// Names and rolls up `cells` (scope ids named by `catalog`).
    pub fn add(&mut self, cells: &Cells, catalog: &Catalog) {
        let mut scope_names: HashMap<&ScopeSet, Arc<str>> = HashMap::new();
        let nobody: Arc<str> = NOBODY.into();
        let total: Arc<str> = ACCOUNT_TOTAL.into();
        for (cell, counted) in cells {
            let scope = scope_names
                .entry(&cell.scopes)
                .or_insert_with(|| match catalog.names(&cell.scopes).join("+") {
                    names if names.is_empty() => NOBODY.into(),
                    names => names.into(),
                })
                .clone();
            let outcome = OUTCOMES
                .get(usize::from(cell.outcome).wrapping_sub(1))
                .copied()
                .unwrap_or("unknown");
            let key: Arc<str> = cell
                .key
                .map_or(nobody.clone(), |key| key.to_string().into());
            let account = counted.account.clone().unwrap_or_else(|| nobody.clone());
            for grain in Grain::ALL {
                let bucket = grain.bucket_of_minute(cell.minute);
                for key in [&key, &total] {
                    let record = RecordKey {
                        grain,
                        account: account.clone(),
                        key: key.clone(),
                        bucket,
                    };
                    *self
                        .records
                        .entry(record)
                        .or_default()
                        .entry((outcome.to_owned(), scope.to_string()))
                        .or_default() += counted.count;
                }
            }
            self.decisions += counted.count;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A tally as stored: a version byte, then per cell the outcome (u8
/// length), the scope (u16 length) and the count (u64), little-endian.
pub fn encode(tally: &Tally) -> Vec<u8> {
    let mut bytes = vec![1u8];
    for ((outcome, scope), count) in tally {
        bytes.push(outcome.len().min(255) as u8);
        bytes.extend_from_slice(&outcome.as_bytes()[..outcome.len().min(255)]);
        let scope = &scope.as_bytes()[..scope.len().min(u16::MAX as usize)];
        bytes.extend_from_slice(&(scope.len() as u16).to_le_bytes());
        bytes.extend_from_slice(scope);
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    bytes
}

/// [`encode`]'s inverse; `None` for bytes it did not write.
pub fn decode(bytes: &[u8]) -> Option<Tally> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != 1 {
        return None;
    }
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let mut tally = Tally::new();
    loop {
        let Some(len) = take(1) else {
            return Some(tally);
        };
        let outcome = String::from_utf8(take(len[0] as usize)?.to_vec()).ok()?;
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let scope = String::from_utf8(take(len as usize)?.to_vec()).ok()?;
        let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
        *tally.entry((outcome, scope)).or_default() += count;
    }
}

/// Adds `more` into `tally`.
pub fn merge(tally: &mut Tally, more: &Tally) {
    for (cell, count) in more {
        *tally.entry(cell.clone()).or_default() += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reads_back_as_written_and_garbage_is_refused() {
        let mut tally = Tally::new();
        tally.insert(("allowed".into(), "mail.send".into()), 700);
        tally.insert(("unknown_key".into(), "-".into()), u64::MAX);
        tally.insert(
            ("insufficient_scope".into(), "mail.send+stats.read".into()),
            1,
        );
        let bytes = encode(&tally);
        assert_eq!(decode(&bytes), Some(tally));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None, "a cut record");
        assert_eq!(decode(&[2]), None, "another version");
        assert_eq!(decode(&[1]), Some(Tally::new()));
    }
}
