//! The decision: token → key → scope check. Pure and allocation-free on the
//! allow path; this is the code every request of every pod runs.

use std::sync::Arc;

use crate::key::KeyTable;
use crate::route::{RouteMiss, RouteTable};
use crate::scope::{Catalog, ScopeId, ScopeSet};
use crate::token::{KeyId, TokenFormat};

/// A catalog and the route table built against it, swapped as one: no
/// request ever reads a route's scope id under another catalog's meaning.
pub struct Policy {
    pub catalog: Arc<Catalog>,
    pub routes: RouteTable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        key_id: KeyId,
        account_id: Arc<str>,
    },
    MissingToken,
    MalformedToken,
    /// Never issued, deleted, or the secret does not match: indistinguishable
    /// to the caller on purpose.
    UnknownKey,
    InsufficientScope {
        key_id: KeyId,
        account_id: Arc<str>,
        missing: ScopeSet,
    },
    /// No route covers the HTTP request (fail closed).
    NoRoute,
    /// The HTTP path is malformed or ambiguous.
    InvalidPath,
    /// The HTTP request carries a method-override header (ext_authz).
    MethodOverride,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// Why, in words a client can act on; never contains the token.
    pub fn message(&self, catalog: &Catalog) -> String {
        match self {
            Decision::Allowed { .. } => String::new(),
            Decision::MissingToken => "no API key was sent".into(),
            Decision::MalformedToken => {
                "the API key is malformed (wrong shape, prefix or checksum)".into()
            }
            Decision::UnknownKey => "the API key does not exist".into(),
            Decision::InsufficientScope { missing, .. } => {
                format!(
                    "the API key lacks scopes: {}",
                    catalog.names(missing).join(", ")
                )
            }
            Decision::NoRoute => "no route covers this method and path".into(),
            Decision::InvalidPath => "the request path is malformed or ambiguous".into(),
            Decision::MethodOverride => {
                "method-override headers (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override) are refused".into()
            }
        }
    }
}

/// May `token` use every scope in `required`?
pub fn decide(keys: &KeyTable, format: &TokenFormat, token: &str, required: &ScopeSet) -> Decision {
    decide_with(keys, format, token, Ok(*required))
}

/// May `token` make the HTTP request `method path`? The route table names the
/// scope; the key is authenticated first, so an unauthenticated caller learns
/// nothing about which routes exist. Returns the scope that was required.
pub fn decide_http(
    keys: &KeyTable,
    format: &TokenFormat,
    routes: &RouteTable,
    token: &str,
    method: &str,
    path: &str,
) -> (Decision, Option<ScopeId>) {
    decide_http_request(keys, format, routes, token, method, path, false)
}

/// [`decide_http`] for a request that may carry a method-override header:
/// refused (after authentication, like every routing outcome) unless the
/// route table allows such headers.
pub fn decide_http_request(
    keys: &KeyTable,
    format: &TokenFormat,
    routes: &RouteTable,
    token: &str,
    method: &str,
    path: &str,
    method_override: bool,
) -> (Decision, Option<ScopeId>) {
    if method_override && !routes.allows_method_override() {
        return (
            decide_with(keys, format, token, Err(Decision::MethodOverride)),
            None,
        );
    }
    let route = routes.resolve(method, path);
    let required = match route {
        Ok(scope) => Ok(ScopeSet::single(scope)),
        Err(RouteMiss::NoRoute) => Err(Decision::NoRoute),
        Err(RouteMiss::InvalidPath) => Err(Decision::InvalidPath),
    };
    (decide_with(keys, format, token, required), route.ok())
}

fn decide_with(
    keys: &KeyTable,
    format: &TokenFormat,
    token: &str,
    required: Result<ScopeSet, Decision>,
) -> Decision {
    if token.is_empty() {
        return Decision::MissingToken;
    }
    let Ok(parsed) = format.parse(token) else {
        return Decision::MalformedToken;
    };
    keys.with(&parsed.key_id, |entry| {
        let Some(entry) = entry else {
            return Decision::UnknownKey;
        };
        if !format.verify(&parsed, &entry.secret_hash) {
            return Decision::UnknownKey;
        }
        let required = match required {
            Ok(required) => required,
            Err(unroutable) => return unroutable,
        };
        let missing = required.difference(&entry.scopes);
        if missing.is_empty() {
            Decision::Allowed {
                key_id: parsed.key_id,
                account_id: entry.account_id.clone(),
            }
        } else {
            Decision::InsufficientScope {
                key_id: parsed.key_id,
                account_id: entry.account_id.clone(),
                missing,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::AuthEntry;
    use crate::scope::{Catalog, KeyKind};

    fn setup(scopes: &[&str]) -> (KeyTable, TokenFormat, Catalog, String, KeyId) {
        let catalog = Catalog::builtin();
        let format = TokenFormat::new("SG", None).unwrap();
        let keys = KeyTable::default();
        let issued = format.issue();
        keys.insert(
            issued.key_id,
            Arc::new(AuthEntry {
                secret_hash: issued.secret_hash,
                scopes: catalog.resolve(scopes.iter().copied()).unwrap(),
                account_id: "acct".into(),
                kind: KeyKind::General,
            }),
        );
        (keys, format, catalog, issued.token, issued.key_id)
    }

    #[test]
    fn decisions_table() {
        let (keys, format, catalog, token, key_id) = setup(&["mail.send", "stats.read"]);
        let need = |names: &[&str]| catalog.resolve(names.iter().copied()).unwrap();
        let other = format.issue();
        let mut wrong_secret = token.clone();
        wrong_secret.replace_range(30..31, if &token[30..31] == "A" { "B" } else { "A" });
        let cases: Vec<(&str, &str, ScopeSet, Decision)> = vec![
            (
                "allowed",
                &token,
                need(&["mail.send"]),
                Decision::Allowed {
                    key_id,
                    account_id: "acct".into(),
                },
            ),
            (
                "all of several",
                &token,
                need(&["mail.send", "stats.read"]),
                Decision::Allowed {
                    key_id,
                    account_id: "acct".into(),
                },
            ),
            (
                "missing token",
                "",
                need(&["mail.send"]),
                Decision::MissingToken,
            ),
            (
                "garbage",
                "Bearer xyz",
                need(&["mail.send"]),
                Decision::MalformedToken,
            ),
            (
                "typo (checksum)",
                &wrong_secret,
                need(&["mail.send"]),
                Decision::MalformedToken,
            ),
            (
                "never issued",
                &other.token,
                need(&["mail.send"]),
                Decision::UnknownKey,
            ),
            (
                "lacks a scope",
                &token,
                need(&["mail.send", "whitelabel.read"]),
                Decision::InsufficientScope {
                    key_id,
                    account_id: "acct".into(),
                    missing: need(&["whitelabel.read"]),
                },
            ),
        ];
        for (name, token, required, expected) in cases {
            assert_eq!(decide(&keys, &format, token, &required), expected, "{name}");
        }
    }

    #[test]
    fn right_id_wrong_secret_is_unknown_key() {
        let (keys, format, catalog, _token, key_id) = setup(&["mail.send"]);
        // A different secret under the same id, with a valid checksum.
        let forged = format.issue_for_test(key_id);
        let required = catalog.resolve(["mail.send"]).unwrap();
        assert_eq!(
            decide(&keys, &format, &forged, &required),
            Decision::UnknownKey
        );
    }

    #[test]
    fn removal_takes_effect_at_once() {
        let (keys, format, catalog, token, key_id) = setup(&["mail.send"]);
        let required = catalog.resolve(["mail.send"]).unwrap();
        assert!(decide(&keys, &format, &token, &required).is_allowed());
        keys.remove(&key_id);
        assert_eq!(
            decide(&keys, &format, &token, &required),
            Decision::UnknownKey
        );
    }
}
