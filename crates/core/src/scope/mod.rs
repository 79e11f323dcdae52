//! The permission model, pure: no I/O, no tonic, no sled.
//!
//! - [`Catalog`]: which scopes exist (resources × verbs), loaded once.
//! - [`ScopeSet`]: a bitset of catalog scopes; the hot path's currency.
//! - [`Access`] levels per resource, expanded to scopes and computed back.
//! - The rules every key obeys: [`Catalog::key_scopes`] (known scopes, a
//!   non-empty set, billing never mixed) and [`missing`] (no escalation).

mod catalog;
mod set;

pub use catalog::{
    Catalog, ManageAction, Resource, ResourceId, API_KEYS_RESOURCE, DEFAULT_CATALOG_TOML,
};
pub use set::{HighWords, ScopeId, ScopeSet, INLINE_SCOPES, MAX_SCOPES};

/// The catalog in force, swapped whole on reload. Scope ids are stable
/// across reloads (see [`Catalog::load_after`]), so a check that reads two
/// generations still compares like with like.
pub type SharedCatalog = std::sync::Arc<arc_swap::ArcSwap<Catalog>>;

use std::path::Path;

/// Access level on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    NoAccess,
    /// The `read` scope.
    Read,
    /// Every non-read scope.
    Write,
    /// Every scope.
    Full,
    /// Some but not all scopes of a level: reported, never granted.
    Custom,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::NoAccess => "NO_ACCESS",
            Access::Read => "READ",
            Access::Write => "WRITE",
            Access::Full => "FULL",
            Access::Custom => "CUSTOM",
        }
    }
}

/// A billing key holds only scopes of exclusive resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    General,
    Billing,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid catalog: {0}")]
    Invalid(String),
    #[error("invalid catalog {path}: {reason}")]
    InvalidFile { path: String, reason: String },
}

impl CatalogError {
    fn in_file(self, path: &Path) -> CatalogError {
        match self {
            CatalogError::Invalid(reason) => CatalogError::InvalidFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        }
    }
}

/// Why a set of scopes or grants cannot be a key's scopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown scope `{0}`: it is not in the catalog (see ListScopes)")]
    UnknownScope(String),
    #[error("unknown resource `{0}`: it is not in the catalog (see ListScopes)")]
    UnknownResource(String),
    #[error("resource `{resource}` is read-only: it cannot have {access} access, only READ")]
    ReadOnly {
        resource: String,
        access: &'static str,
    },
    #[error("resource `{resource}` has no read scope: it cannot have {access} access, only WRITE")]
    WriteOnly {
        resource: String,
        access: &'static str,
    },
    #[error("access {0} cannot be granted: use READ, WRITE or FULL, and leave a resource out for no access")]
    UngrantableAccess(&'static str),
    #[error("a key needs at least one scope or grant")]
    Empty,
    #[error("billing scopes need a separate key: {exclusive} cannot share a key with {other}")]
    ExclusiveMixed { exclusive: String, other: String },
}

impl Catalog {
    /// Resolves scope names, failing on the first unknown one.
    pub fn resolve<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::EMPTY;
        for name in names {
            match self.scope_id(name) {
                Some(id) => set.insert(id),
                None => return Err(ScopeError::UnknownScope(name.to_owned())),
            }
        }
        Ok(set)
    }

    /// The scopes that a grant of `access` on `resource` stands for.
    pub fn expand(&self, resource: &str, access: Access) -> Result<ScopeSet, ScopeError> {
        let id = self
            .resource_id(resource)
            .ok_or_else(|| ScopeError::UnknownResource(resource.to_owned()))?;
        let resource = self.resource(id);
        let needs_read = matches!(access, Access::Read | Access::Full);
        let needs_write = matches!(access, Access::Write | Access::Full);
        if !needs_read && !needs_write {
            return Err(ScopeError::UngrantableAccess(access.as_str()));
        }
        if needs_write && resource.writes.is_empty() {
            return Err(ScopeError::ReadOnly {
                resource: resource.name.to_string(),
                access: access.as_str(),
            });
        }
        let mut set = ScopeSet::EMPTY;
        if needs_read {
            match resource.read {
                Some(read) => set.insert(read),
                None => {
                    return Err(ScopeError::WriteOnly {
                        resource: resource.name.to_string(),
                        access: access.as_str(),
                    })
                }
            }
        }
        if needs_write {
            set = set.union(&resource.writes);
        }
        Ok(set)
    }

    /// The levels a grant may ask for on a resource.
    pub fn grantable(&self, resource: ResourceId) -> Vec<Access> {
        let resource = self.resource(resource);
        match (resource.read.is_some(), !resource.writes.is_empty()) {
            (true, true) => vec![Access::Read, Access::Write, Access::Full],
            (true, false) => vec![Access::Read],
            (false, true) => vec![Access::Write],
            (false, false) => vec![],
        }
    }

    /// The effective level on one resource given a set of scopes.
    pub fn access_on(&self, resource: ResourceId, set: &ScopeSet) -> Access {
        let resource = self.resource(resource);
        let held = set.intersection(&resource.scopes);
        if held.is_empty() {
            return Access::NoAccess;
        }
        if held == resource.scopes {
            return match (resource.read.is_some(), !resource.writes.is_empty()) {
                (true, true) => Access::Full,
                (true, false) => Access::Read,
                _ => Access::Write,
            };
        }
        let has_read = resource.read.is_some_and(|read| held.contains(read));
        let writes_held = held.intersection(&resource.writes);
        match (
            has_read,
            writes_held.is_empty(),
            writes_held == resource.writes,
        ) {
            (true, true, _) => Access::Read,
            (false, false, true) => Access::Write,
            _ => Access::Custom,
        }
    }

    /// The effective level on every resource the set touches, in name order.
    pub fn access_levels(&self, set: &ScopeSet) -> Vec<(ResourceId, Access)> {
        self.resources()
            .filter(|(_, resource)| resource.scopes.intersects(set))
            .map(|(id, _)| (id, self.access_on(id, set)))
            .collect()
    }

    /// Builds a key's scopes from explicit scopes and grants, and checks the
    /// rules every key obeys: known scopes, at least one, billing alone.
    pub fn key_scopes<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
        grants: impl IntoIterator<Item = (&'a str, Access)>,
    ) -> Result<(ScopeSet, KeyKind), ScopeError> {
        let mut set = self.resolve(scopes)?;
        for (resource, access) in grants {
            set = set.union(&self.expand(resource, access)?);
        }
        if set.is_empty() {
            return Err(ScopeError::Empty);
        }
        let kind = self.kind_of(&set)?;
        Ok((set, kind))
    }

    /// Billing (exclusive) scopes never share a key with other scopes.
    pub fn kind_of(&self, set: &ScopeSet) -> Result<KeyKind, ScopeError> {
        let exclusive = set.intersection(&self.exclusive_scopes());
        if exclusive.is_empty() {
            return Ok(KeyKind::General);
        }
        let others = set.difference(&exclusive);
        let exclusive_resources: std::collections::BTreeSet<ResourceId> =
            exclusive.iter().map(|id| self.resource_of(id)).collect();
        let first_exclusive = exclusive.iter().next().expect("not empty");
        if let Some(other) = others.iter().next() {
            return Err(ScopeError::ExclusiveMixed {
                exclusive: self.scope_name(first_exclusive).to_owned(),
                other: self.scope_name(other).to_owned(),
            });
        }
        if exclusive_resources.len() > 1 {
            let last_exclusive = exclusive.iter().last().expect("not empty");
            return Err(ScopeError::ExclusiveMixed {
                exclusive: self.scope_name(first_exclusive).to_owned(),
                other: self.scope_name(last_exclusive).to_owned(),
            });
        }
        Ok(KeyKind::Billing)
    }
}

/// No escalation: the scopes in `requested` that `caller` lacks. Empty means
/// the request stays within the caller's own permissions.
pub fn missing(caller: &ScopeSet, requested: &ScopeSet) -> ScopeSet {
    requested.difference(caller)
}

#[cfg(test)]
mod tests;
