//! Roles: a named set of grants of one account that many keys reference.
//! A key's effective scopes are its own scopes and those of every role it
//! references, resolved ahead of time, so Check still reads one set.

use crate::scope::{Catalog, ManageAction, ScopeSet};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The most roles one key may reference.
pub const MAX_ROLES_PER_KEY: usize = 16;
/// The most keys one role may be attached to (its record lists them, and a
/// fleet writes a role as one etcd value, well under etcd's 1.5 MiB).
pub const MAX_KEYS_PER_ROLE: usize = 10_000;
/// The most roles one account may hold.
pub const MAX_ROLES_PER_ACCOUNT: usize = 1_000;
/// A role's name: 1 to this many characters.
pub const MAX_ROLE_NAME: usize = 100;
pub const MAX_ROLE_DESCRIPTION: usize = 1_000;

const ROLE_ID_BYTES: usize = 16;
const PREFIX: &str = "role_";

/// A role's id: 16 random bytes, shown as `role_` and 22 base64url chars.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleId([u8; ROLE_ID_BYTES]);

impl RoleId {
    pub fn random() -> RoleId {
        let mut bytes = [0; ROLE_ID_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        RoleId(bytes)
    }

    pub fn from_bytes(bytes: [u8; ROLE_ID_BYTES]) -> RoleId {
        RoleId(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<RoleId> {
        bytes.try_into().ok().map(RoleId)
    }

    pub fn as_bytes(&self) -> &[u8; ROLE_ID_BYTES] {
        &self.0
    }

    /// Parses the text form (`role_…`).
    pub fn parse(text: &str) -> Option<RoleId> {
        let encoded = text.strip_prefix(PREFIX)?;
        if encoded.len() != 22 {
            return None;
        }
        let mut bytes = [0; ROLE_ID_BYTES + 2];
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut bytes) {
            Ok(ROLE_ID_BYTES) => Some(RoleId(bytes[..ROLE_ID_BYTES].try_into().ok()?)),
            _ => None,
        }
    }
}

impl std::fmt::Display for RoleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl std::fmt::Debug for RoleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoleId({self})")
    }
}

/// A built-in template: a role an admin can create from, never a role itself.
pub struct Template {
    pub name: &'static str,
    pub description: &'static str,
    pub scopes: fn(&Catalog) -> ScopeSet,
}

/// The templates, in the order `scopegate scopes` shows them.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "read-only",
        description: "every read scope, billing aside",
        scopes: read_only,
    },
    Template {
        name: "all-but-key-management",
        description: "every scope except api_keys.* and billing",
        scopes: all_but_key_management,
    },
];

pub fn template(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|template| template.name == name)
}

fn read_only(catalog: &Catalog) -> ScopeSet {
    let mut set = ScopeSet::EMPTY;
    for (_, resource) in catalog.resources() {
        if let Some(read) = resource.read {
            set.insert(read);
        }
    }
    set.difference(&catalog.exclusive_scopes())
}

fn all_but_key_management(catalog: &Catalog) -> ScopeSet {
    let mut management = ScopeSet::EMPTY;
    for action in [
        ManageAction::Create,
        ManageAction::Read,
        ManageAction::Update,
        ManageAction::Delete,
    ] {
        management.insert(catalog.manage_scope(action));
    }
    catalog
        .all_scopes()
        .difference(&catalog.exclusive_scopes())
        .difference(&management)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_ids_round_trip_and_refuse_other_text() {
        let id = RoleId::random();
        assert_eq!(RoleId::parse(&id.to_string()), Some(id));
        assert!(id.to_string().starts_with("role_"));
        for bad in [
            "",
            "role_",
            "role_abc",
            "key_AAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(RoleId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn templates_follow_the_catalog() {
        let catalog = Catalog::builtin();
        let read = catalog.names(&(template("read-only").unwrap().scopes)(&catalog));
        assert!(read.contains(&"stats.read".to_owned()));
        assert!(read.iter().all(|name| name.ends_with(".read")));
        assert!(!read.iter().any(|name| name.starts_with("billing.")));
        let most = catalog.names(&(template("all-but-key-management").unwrap().scopes)(
            &catalog,
        ));
        assert!(most.contains(&"mail.send".to_owned()));
        assert!(!most
            .iter()
            .any(|name| name.starts_with("api_keys.") || name.starts_with("billing.")));
        assert!(template("everything").is_none());
    }
}
