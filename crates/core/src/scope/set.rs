//! `ScopeSet`: a bitset of catalog scopes. The first 256 scopes of a catalog
//! sit inline (four words: the subset test on the hot path is four word
//! operations, and such a set never allocates); a catalog may hold up to
//! 4,096, the rest in a shared, copy-on-write block that exists only in sets
//! that hold one of them.

use std::sync::Arc;

/// Index of a scope in the loaded [`Catalog`](super::Catalog).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeId(pub(crate) u16);

const INLINE_WORDS: usize = 4;
const HIGH_WORDS: usize = 60;

/// Scopes held inline: a catalog this size or smaller never allocates.
pub const INLINE_SCOPES: usize = INLINE_WORDS * 64;

/// The most scopes one catalog may hold (the public catalog has 198).
pub const MAX_SCOPES: usize = (INLINE_WORDS + HIGH_WORDS) * 64;

/// Bits of scopes 256..4096.
pub type HighWords = [u64; HIGH_WORDS];

#[derive(Clone, Default)]
pub struct ScopeSet {
    low: [u64; INLINE_WORDS],
    /// `None` when no scope past the first 256 is in the set.
    high: Option<Arc<HighWords>>,
}

impl ScopeSet {
    pub const EMPTY: ScopeSet = ScopeSet {
        low: [0; INLINE_WORDS],
        high: None,
    };

    /// A set from its two parts (as [`ScopeSet::into_parts`] gives them).
    pub fn from_parts(low: [u64; INLINE_WORDS], high: Option<Arc<HighWords>>) -> ScopeSet {
        ScopeSet {
            low,
            high: high.filter(|words| words.iter().any(|word| *word != 0)),
        }
    }

    /// The inline words and the block past them, if any.
    pub fn into_parts(self) -> ([u64; INLINE_WORDS], Option<Arc<HighWords>>) {
        (self.low, self.high)
    }

    pub fn single(scope: ScopeId) -> ScopeSet {
        let mut set = ScopeSet::EMPTY;
        set.insert(scope);
        set
    }

    pub fn insert(&mut self, scope: ScopeId) {
        let index = scope.0 as usize;
        if index < INLINE_SCOPES {
            self.low[index / 64] |= 1 << (index % 64);
            return;
        }
        let high = self.high.get_or_insert_with(|| Arc::new([0; HIGH_WORDS]));
        let index = index - INLINE_SCOPES;
        Arc::make_mut(high)[index / 64] |= 1 << (index % 64);
    }

    pub fn contains(&self, scope: ScopeId) -> bool {
        let index = scope.0 as usize;
        if index < INLINE_SCOPES {
            return self.low[index / 64] & (1 << (index % 64)) != 0;
        }
        let index = index - INLINE_SCOPES;
        self.high_words()
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn high_words(&self) -> &[u64] {
        self.high.as_deref().map_or(&[], |words| &words[..])
    }

    pub fn is_empty(&self) -> bool {
        self.low.iter().all(|word| *word == 0) && self.high_words().iter().all(|word| *word == 0)
    }

    pub fn len(&self) -> usize {
        self.low
            .iter()
            .chain(self.high_words())
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.is_subset_of_parts(&other.low, other.high.as_deref())
    }

    /// [`ScopeSet::is_subset_of`] a set given as its parts (a key entry
    /// keeps them apart), without assembling it.
    #[inline]
    pub fn is_subset_of_parts(&self, low: &[u64; INLINE_WORDS], high: Option<&HighWords>) -> bool {
        let within_low = self
            .low
            .iter()
            .zip(low.iter())
            .all(|(mine, theirs)| mine & !theirs == 0);
        // A set of the first 256 scopes (every set of a small catalog) stops here.
        within_low
            && match &self.high {
                None => true,
                Some(mine) => {
                    let theirs: &[u64] = high.map_or(&[], |words| &words[..]);
                    mine.iter()
                        .enumerate()
                        .all(|(index, word)| word & !theirs.get(index).copied().unwrap_or(0) == 0)
                }
            }
    }

    /// Whether a set given as its parts holds `scope`.
    #[inline]
    pub fn parts_contain(
        low: &[u64; INLINE_WORDS],
        high: Option<&HighWords>,
        scope: ScopeId,
    ) -> bool {
        let index = scope.0 as usize;
        if index < INLINE_SCOPES {
            return low[index / 64] & (1 << (index % 64)) != 0;
        }
        let index = index - INLINE_SCOPES;
        high.and_then(|words| words.get(index / 64))
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    pub fn intersects(&self, other: &ScopeSet) -> bool {
        let low = self
            .low
            .iter()
            .zip(other.low.iter())
            .any(|(mine, theirs)| mine & theirs != 0);
        low || self
            .high_words()
            .iter()
            .zip(other.high_words())
            .any(|(mine, theirs)| mine & theirs != 0)
    }

    fn combine(&self, other: &ScopeSet, op: impl Fn(u64, u64) -> u64) -> ScopeSet {
        let mut low = self.low;
        for (word, theirs) in low.iter_mut().zip(other.low.iter()) {
            *word = op(*word, *theirs);
        }
        let high = match (&self.high, &other.high) {
            (None, None) => None,
            _ => {
                let (mine, theirs) = (self.high_words(), other.high_words());
                let mut words = [0u64; HIGH_WORDS];
                for (index, word) in words.iter_mut().enumerate() {
                    *word = op(
                        mine.get(index).copied().unwrap_or(0),
                        theirs.get(index).copied().unwrap_or(0),
                    );
                }
                Some(Arc::new(words))
            }
        };
        ScopeSet::from_parts(low, high)
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        self.combine(other, |mine, theirs| mine | theirs)
    }

    /// The scopes in `self` that are not in `other`.
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        self.combine(other, |mine, theirs| mine & !theirs)
    }

    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        self.combine(other, |mine, theirs| mine & theirs)
    }

    /// Scope ids in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = ScopeId> + '_ {
        self.low
            .iter()
            .chain(self.high_words())
            .enumerate()
            .flat_map(|(word_index, word)| {
                let mut bits = *word;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(ScopeId((word_index * 64 + bit) as u16))
                })
            })
    }
}

impl PartialEq for ScopeSet {
    fn eq(&self, other: &ScopeSet) -> bool {
        let (mine, theirs) = (self.high_words(), other.high_words());
        self.low == other.low
            && (0..HIGH_WORDS).all(|index| {
                mine.get(index).copied().unwrap_or(0) == theirs.get(index).copied().unwrap_or(0)
            })
    }
}

impl Eq for ScopeSet {}

impl std::hash::Hash for ScopeSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.low.hash(state);
        if self.high_words().iter().any(|word| *word != 0) {
            self.high_words().hash(state);
        }
    }
}

impl FromIterator<ScopeId> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = ScopeId>>(iter: I) -> Self {
        let mut set = ScopeSet::EMPTY;
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl std::fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(|id| id.0)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u16]) -> ScopeSet {
        ids.iter().map(|id| ScopeId(*id)).collect()
    }

    #[test]
    fn sets_across_the_inline_boundary_behave_as_sets() {
        let small = set(&[0, 63, 64, 255]);
        let wide = set(&[0, 255, 256, 1000, 4095]);
        assert!(small.high.is_none(), "the first 256 never allocate");
        assert_eq!(wide.len(), 5);
        assert!(wide.contains(ScopeId(4095)) && !wide.contains(ScopeId(4094)));
        assert_eq!(
            wide.iter().map(|id| id.0).collect::<Vec<_>>(),
            [0, 255, 256, 1000, 4095]
        );
        assert!(set(&[256]).is_subset_of(&wide));
        assert!(!set(&[257]).is_subset_of(&wide));
        assert!(!wide.is_subset_of(&small));
        assert!(set(&[0, 255]).is_subset_of(&small));
        assert_eq!(wide.difference(&small), set(&[256, 1000, 4095]));
        assert_eq!(wide.intersection(&small), set(&[0, 255]));
        // A difference that empties the high block compares (and hashes)
        // equal to a set that never had one.
        let back = wide.difference(&set(&[256, 1000, 4095]));
        assert_eq!(back, set(&[0, 255]));
        assert!(back.high.is_none());
        assert_eq!(small.union(&wide).len(), 7);
        assert!(wide.intersects(&set(&[1000])) && !wide.intersects(&set(&[999, 1])));
        assert!(ScopeSet::EMPTY.is_subset_of(&small) && ScopeSet::EMPTY.is_empty());
    }

    #[test]
    fn copy_on_write_keeps_clones_apart() {
        let wide = set(&[300]);
        let mut other = wide.clone();
        other.insert(ScopeId(301));
        assert!(!wide.contains(ScopeId(301)) && other.contains(ScopeId(301)));
    }
}
