//! The scope catalog: which resources exist, which verbs each has, which are
//! exclusive. Loaded once from TOML (built-in default or `--catalog FILE`);
//! every scope name anywhere else is checked against it.
//!
//! File format (`catalogs/*.toml`):
//! ```toml
//! [[resource]]
//! name = "stats"            # scopes are "<name>.<verb>"
//! verbs = ["read"]          # only `read`: the resource is read-only
//!
//! [[resource]]
//! name = "billing"
//! verbs = ["read", "update", "delete"]
//! exclusive = true          # its scopes never share a key with other scopes
//! ```
//! `read` is the READ level (GET/HEAD); every other verb (`create`, `update`,
//! `delete`, or an action such as `send`) belongs to the WRITE level.

use std::collections::HashMap;

/// Names to ids. The maps are built from the catalog file and never grow
/// from requests, so a fast seeded hash is safe: SipHash cost ~300
/// instructions per scope name a Check asks for (issue #38).
type ByName<T> = HashMap<Box<str>, T, foldhash::fast::RandomState>;
use std::path::Path;

use serde::Deserialize;

use super::set::{ScopeId, ScopeSet, MAX_SCOPES};
use super::CatalogError;

/// The catalog compiled into the binary (see `catalogs/default.toml`).
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../../../../catalogs/default.toml");

/// Scopes that guard key management itself; every catalog must define them.
pub const API_KEYS_RESOURCE: &str = "api_keys";
const API_KEYS_VERBS: [&str; 4] = ["create", "read", "update", "delete"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(pub(crate) u16);

#[derive(Debug)]
pub struct Resource {
    pub name: Box<str>,
    /// Every scope of the resource.
    pub scopes: ScopeSet,
    /// The `read` scope, if the resource has one.
    pub read: Option<ScopeId>,
    /// Every non-read scope.
    pub writes: ScopeSet,
    pub exclusive: bool,
}

impl Resource {
    pub fn is_read_only(&self) -> bool {
        self.read.is_some() && self.writes.is_empty()
    }
}

#[derive(Debug)]
struct ScopeEntry {
    name: Box<str>,
    resource: ResourceId,
}

#[derive(Debug)]
pub struct Catalog {
    /// Indexed by `ScopeId`; `None` for an id a previous catalog used and
    /// this one dropped (ids stay stable across reloads).
    scopes: Vec<Option<ScopeEntry>>,
    scope_by_name: ByName<ScopeId>,
    resources: Vec<Resource>,
    resource_by_name: ByName<ResourceId>,
    /// Scopes of exclusive resources (billing).
    exclusive_scopes: ScopeSet,
    api_keys: [ScopeId; 4],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    resource: Vec<ResourceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    name: String,
    verbs: Vec<String>,
    #[serde(default)]
    exclusive: bool,
}

/// The four management actions, each guarded by one `api_keys.*` scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManageAction {
    Create,
    Read,
    Update,
    Delete,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::from_toml(DEFAULT_CATALOG_TOML).expect("the built-in catalog is valid")
    }

    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|error| CatalogError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        Catalog::from_toml(&text).map_err(|error| error.in_file(path))
    }

    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        Catalog::from_toml_after(text, None)
    }

    /// Loads a catalog that replaces `previous` in a running server: every
    /// scope both have keeps its `ScopeId`, so key bitsets and route tables
    /// built against `previous` keep their meaning.
    pub fn load_after(path: &Path, previous: &Catalog) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|error| CatalogError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        Catalog::from_toml_after(&text, Some(previous)).map_err(|error| error.in_file(path))
    }

    fn from_toml_after(text: &str, previous: Option<&Catalog>) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|error| CatalogError::Invalid(error.to_string()))?;
        Catalog::build(file, previous)
    }

    fn build(file: CatalogFile, previous: Option<&Catalog>) -> Result<Catalog, CatalogError> {
        if file.resource.is_empty() {
            return Err(invalid("the catalog defines no [[resource]]".into()));
        }
        let mut resources_in = file.resource;
        resources_in.sort_by(|a, b| a.name.cmp(&b.name));
        let mut catalog = Catalog {
            scopes: Vec::new(),
            scope_by_name: ByName::default(),
            resources: Vec::new(),
            resource_by_name: ByName::default(),
            exclusive_scopes: ScopeSet::EMPTY,
            api_keys: [ScopeId(0); 4],
        };
        for resource_in in resources_in {
            catalog.add_resource(resource_in, previous)?;
        }
        for (slot, verb) in catalog.api_keys.iter_mut().zip(API_KEYS_VERBS) {
            let scope_name = format!("{API_KEYS_RESOURCE}.{verb}");
            *slot = *catalog.scope_by_name.get(scope_name.as_str()).ok_or_else(|| {
                invalid(format!(
                    "the catalog must define `{scope_name}`: the api_keys scopes guard key management"
                ))
            })?;
        }
        Ok(catalog)
    }

    fn add_resource(
        &mut self,
        resource_in: ResourceFile,
        previous: Option<&Catalog>,
    ) -> Result<(), CatalogError> {
        let name = resource_in.name;
        if !is_valid_resource_name(&name) {
            return Err(invalid(format!(
                "resource name `{name}` must be lowercase words of [a-z0-9_] joined by dots"
            )));
        }
        if self.resource_by_name.contains_key(name.as_str()) {
            return Err(invalid(format!("resource `{name}` is defined twice")));
        }
        if resource_in.verbs.is_empty() {
            return Err(invalid(format!("resource `{name}` has no verbs")));
        }
        let resource_id = ResourceId(self.resources.len() as u16);
        let mut resource = Resource {
            name: name.clone().into(),
            scopes: ScopeSet::EMPTY,
            read: None,
            writes: ScopeSet::EMPTY,
            exclusive: resource_in.exclusive,
        };
        let mut verbs = resource_in.verbs;
        verbs.sort();
        for verb in verbs {
            if !is_valid_word(&verb) {
                return Err(invalid(format!(
                    "resource `{name}`: verb `{verb}` must be one word of [a-z0-9_]"
                )));
            }
            let scope_name = format!("{name}.{verb}");
            if self.scope_by_name.contains_key(scope_name.as_str()) {
                return Err(invalid(format!("scope `{scope_name}` is defined twice")));
            }
            let scope_id = self.id_for(&scope_name, previous)?;
            let slot = scope_id.0 as usize;
            if self.scopes.len() <= slot {
                self.scopes.resize_with(slot + 1, || None);
            }
            self.scopes[slot] = Some(ScopeEntry {
                name: scope_name.clone().into(),
                resource: resource_id,
            });
            self.scope_by_name.insert(scope_name.into(), scope_id);
            resource.scopes.insert(scope_id);
            if verb == "read" {
                resource.read = Some(scope_id);
            } else {
                resource.writes.insert(scope_id);
            }
        }
        if resource.exclusive {
            self.exclusive_scopes = self.exclusive_scopes.union(&resource.scopes);
        }
        self.resource_by_name.insert(name.into(), resource_id);
        self.resources.push(resource);
        Ok(())
    }

    /// A scope keeps the id it had in the previous catalog (stored keys name
    /// scopes, tables hold ids); a new scope takes the first id neither
    /// catalog uses.
    fn id_for(
        &self,
        scope_name: &str,
        previous: Option<&Catalog>,
    ) -> Result<ScopeId, CatalogError> {
        if let Some(id) = previous.and_then(|previous| previous.scope_id(scope_name)) {
            return Ok(id);
        }
        let taken = |index: usize| {
            self.scopes.get(index).is_some_and(Option::is_some)
                || previous.is_some_and(|p| p.scopes.get(index).is_some_and(Option::is_some))
        };
        (0..MAX_SCOPES)
            .find(|index| !taken(*index))
            .map(|index| ScopeId(index as u16))
            .ok_or_else(|| invalid(format!("the catalog has more than {MAX_SCOPES} scopes")))
    }

    /// Looks a scope up by name without allocating (the hot path).
    pub fn scope_id(&self, name: &str) -> Option<ScopeId> {
        self.scope_by_name.get(name).copied()
    }

    pub fn scope_name(&self, scope: ScopeId) -> &str {
        &self.entry(scope).name
    }

    pub fn resource_of(&self, scope: ScopeId) -> ResourceId {
        self.entry(scope).resource
    }

    pub fn resource_id(&self, name: &str) -> Option<ResourceId> {
        self.resource_by_name.get(name).copied()
    }

    pub fn resource(&self, resource: ResourceId) -> &Resource {
        &self.resources[resource.0 as usize]
    }

    /// Resources in name order.
    pub fn resources(&self) -> impl Iterator<Item = (ResourceId, &Resource)> {
        self.resources
            .iter()
            .enumerate()
            .map(|(index, resource)| (ResourceId(index as u16), resource))
    }

    fn entry(&self, scope: ScopeId) -> &ScopeEntry {
        self.scopes[scope.0 as usize]
            .as_ref()
            .expect("scope ids come from this catalog")
    }

    pub fn scope_count(&self) -> usize {
        self.scope_by_name.len()
    }

    /// Every scope of the catalog.
    pub fn all_scopes(&self) -> ScopeSet {
        self.scope_by_name.values().copied().collect()
    }

    pub fn exclusive_scopes(&self) -> ScopeSet {
        self.exclusive_scopes.clone()
    }

    pub fn manage_scope(&self, action: ManageAction) -> ScopeId {
        self.api_keys[action as usize]
    }

    /// Scope names of a set, in catalog order (resource, then verb).
    pub fn names(&self, set: &ScopeSet) -> Vec<String> {
        set.iter()
            .map(|id| self.scope_name(id).to_owned())
            .collect()
    }
}

fn is_valid_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

fn is_valid_resource_name(name: &str) -> bool {
    name.split('.').all(is_valid_word)
}

fn invalid(message: String) -> CatalogError {
    CatalogError::Invalid(message)
}
