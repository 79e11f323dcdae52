//! `ScopeSet`: a fixed-size bitset of catalog scopes. Subset checks on the hot
//! path are four word operations, and a set is `Copy`, so checking never
//! allocates.

/// Index of a scope in the loaded [`Catalog`](super::Catalog).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeId(pub(crate) u16);

const WORDS: usize = 4;

/// The most scopes one catalog may hold (the public catalog has 198).
pub const MAX_SCOPES: usize = WORDS * 64;

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet([u64; WORDS]);

impl ScopeSet {
    pub const EMPTY: ScopeSet = ScopeSet([0; WORDS]);

    pub fn single(scope: ScopeId) -> ScopeSet {
        let mut set = ScopeSet::EMPTY;
        set.insert(scope);
        set
    }

    pub fn insert(&mut self, scope: ScopeId) {
        let index = scope.0 as usize;
        self.0[index / 64] |= 1 << (index % 64);
    }

    pub fn contains(&self, scope: ScopeId) -> bool {
        let index = scope.0 as usize;
        self.0[index / 64] & (1 << (index % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|word| *word == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|word| word.count_ones() as usize).sum()
    }

    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .all(|(mine, theirs)| mine & !theirs == 0)
    }

    pub fn intersects(&self, other: &ScopeSet) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .any(|(mine, theirs)| mine & theirs != 0)
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        let mut words = self.0;
        for (word, theirs) in words.iter_mut().zip(other.0.iter()) {
            *word |= theirs;
        }
        ScopeSet(words)
    }

    /// The scopes in `self` that are not in `other`.
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        let mut words = self.0;
        for (word, theirs) in words.iter_mut().zip(other.0.iter()) {
            *word &= !theirs;
        }
        ScopeSet(words)
    }

    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        let mut words = self.0;
        for (word, theirs) in words.iter_mut().zip(other.0.iter()) {
            *word &= theirs;
        }
        ScopeSet(words)
    }

    /// Scope ids in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = ScopeId> + '_ {
        (0..MAX_SCOPES)
            .filter(|index| self.0[index / 64] & (1 << (index % 64)) != 0)
            .map(|index| ScopeId(index as u16))
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
