//! The decision: token → key → scope check. Pure and allocation-free on the
//! allow path; this is the code every request of every pod runs.

use std::sync::Arc;

use std::net::IpAddr;

use crate::credits::KeyCredits;
use crate::key::{KeyExtras, KeyTable, Metadata};
use crate::ratelimit::{Applicable, RateStatus};
use crate::route::{RouteMiss, RouteTable, DEFAULT_COST};
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
        /// The key's metadata, if it has any (a reference count, no copy).
        metadata: Option<Arc<Metadata>>,
        /// The key's rate limits this request counts against, if any: the
        /// edge counts them (the sidecar's `counters`) before it answers.
        rate: Option<Applicable>,
        /// The key's credits, if it has any: the edge spends them (the
        /// sidecar's `credits`), after the rate limits.
        credits: Option<Arc<KeyCredits>>,
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
    /// Past the key's expiry or before its not-before time.
    Expired,
    /// The key is disabled.
    Disabled,
    /// The request's address is outside the key's allowed CIDRs (or unknown).
    IpNotAllowed,
    /// Allowed by scope, over one of the key's rate limits (decided by the
    /// counters, after everything else).
    RateLimited {
        key_id: KeyId,
        account_id: Arc<str>,
        status: RateStatus,
    },
    /// Allowed by scope and limits, but its credits cannot pay the
    /// request's cost (nothing spent).
    UsageExceeded {
        key_id: KeyId,
        account_id: Arc<str>,
        /// What is left (less than the cost).
        remaining: u64,
    },
}

impl Decision {
    /// The decision's name, as `scopegate.v1.Decision` spells it: what every
    /// door shows (Check's enum, ext_authz metadata, forward-auth and
    /// AuthZEN reasons, metrics, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allowed { .. } => "ALLOWED",
            Decision::MissingToken => "MISSING_TOKEN",
            Decision::MalformedToken => "MALFORMED_TOKEN",
            Decision::UnknownKey => "UNKNOWN_KEY",
            Decision::InsufficientScope { .. } => "INSUFFICIENT_SCOPE",
            Decision::NoRoute => "NO_ROUTE",
            Decision::InvalidPath => "INVALID_PATH",
            Decision::MethodOverride => "METHOD_OVERRIDE",
            Decision::Expired => "EXPIRED",
            Decision::Disabled => "DISABLED",
            Decision::IpNotAllowed => "IP_NOT_ALLOWED",
            Decision::RateLimited { .. } => "RATE_LIMITED",
            Decision::UsageExceeded { .. } => "USAGE_EXCEEDED",
        }
    }

    /// The decision's number in `scopegate.v1.Decision` (1 to 13; the gRPC
    /// edge's tests hold this and [`Decision::reason`] to the proto).
    pub fn code(&self) -> u8 {
        match self {
            Decision::Allowed { .. } => 1,
            Decision::MissingToken => 2,
            Decision::MalformedToken => 3,
            Decision::UnknownKey => 4,
            Decision::InsufficientScope { .. } => 5,
            Decision::NoRoute => 6,
            Decision::InvalidPath => 7,
            Decision::MethodOverride => 8,
            Decision::Expired => 9,
            Decision::Disabled => 10,
            Decision::IpNotAllowed => 11,
            Decision::RateLimited { .. } => 12,
            Decision::UsageExceeded { .. } => 13,
        }
    }

    /// The decision as usage counts it: its name, lower-cased
    /// (`insufficient_scope`).
    pub fn outcome(&self) -> &'static str {
        crate::stats::OUTCOMES[self.code() as usize - 1]
    }

    /// The key's ids, when the decision identified one.
    pub fn key(&self) -> Option<(KeyId, &Arc<str>)> {
        match self {
            Decision::Allowed {
                key_id, account_id, ..
            }
            | Decision::InsufficientScope {
                key_id, account_id, ..
            }
            | Decision::RateLimited {
                key_id, account_id, ..
            }
            | Decision::UsageExceeded {
                key_id, account_id, ..
            } => Some((*key_id, account_id)),
            _ => None,
        }
    }

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
            Decision::Expired => "the API key has expired or is not valid yet".into(),
            Decision::Disabled => "the API key is disabled".into(),
            Decision::IpNotAllowed => {
                "the API key may not be used from this address".into()
            }
            Decision::RateLimited { status, .. } => format!(
                "the API key is over its rate limit `{}` ({} per {}): retry in {} s",
                status.name,
                status.limit,
                crate::ratelimit::window_text(status.window_secs),
                status.reset_secs
            ),
            Decision::UsageExceeded { remaining, .. } => format!(
                "the API key is out of credits ({remaining} left, less than this request costs)"
            ),
            Decision::MethodOverride => {
                "method-override headers (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override) are refused".into()
            }
        }
    }
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
    let request = HttpCheck {
        method,
        path,
        method_override: false,
        client_ip: None,
        scope_from: ScopeFrom::Routes,
    };
    decide_http_request(keys, format, routes, token, &request)
}

/// What an HTTP check knows of the request besides the token.
#[derive(Clone, Copy)]
pub struct HttpCheck<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// It carries a method-override header (ext_authz).
    pub method_override: bool,
    pub client_ip: Option<IpAddr>,
    /// Where the required scope comes from.
    pub scope_from: ScopeFrom,
}

/// Where an HTTP check's required scope comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeFrom {
    /// The route table, by method and path.
    Routes,
    /// The scope the proxy names for this route (ext_authz
    /// `context_extensions`), instead of the route table's.
    Proxy(ScopeId),
    /// The proxy names a scope the catalog does not have: denied as no
    /// route.
    UnknownToProxy,
}

/// [`decide_http`] for a request that may carry a method-override header
/// (refused, after authentication like every routing outcome, unless the
/// route table allows such headers) and whose address may be known.
pub fn decide_http_request(
    keys: &KeyTable,
    format: &TokenFormat,
    routes: &RouteTable,
    token: &str,
    request: &HttpCheck<'_>,
) -> (Decision, Option<ScopeId>) {
    let decided = decide_http_noting(keys, format, routes, token, request);
    (decided.decision, decided.scope)
}

/// An HTTP decision with what the route said besides.
pub struct HttpDecided {
    pub decision: Decision,
    /// The scope the route required.
    pub scope: Option<ScopeId>,
    /// The route table decided on a path other than the one sent (see
    /// `RouteTable::route`).
    pub renormalized: bool,
    /// What the request costs a key with credits (its rule's `cost`).
    pub cost: u32,
}

/// [`decide_http_request`], with the route's scope, cost and whether the
/// path was renormalized.
pub fn decide_http_noting(
    keys: &KeyTable,
    format: &TokenFormat,
    routes: &RouteTable,
    token: &str,
    request: &HttpCheck<'_>,
) -> HttpDecided {
    let HttpCheck {
        method,
        path,
        method_override,
        client_ip,
        scope_from,
    } = *request;
    if method_override && !routes.allows_method_override() {
        return HttpDecided {
            decision: decide_with(
                keys,
                format,
                token,
                client_ip,
                Err(Decision::MethodOverride),
            ),
            scope: None,
            renormalized: false,
            cost: DEFAULT_COST,
        };
    }
    let (resolved, changed) = routes.route_costed(method, path);
    let route = match (resolved, scope_from) {
        // An unusable path is refused whoever names the scope.
        (Err(RouteMiss::InvalidPath), _) => Err(RouteMiss::InvalidPath),
        (_, ScopeFrom::Proxy(scope)) => Ok((scope, DEFAULT_COST)),
        (_, ScopeFrom::UnknownToProxy) => Err(RouteMiss::NoRoute),
        (route, ScopeFrom::Routes) => route,
    };
    let required = match route {
        Ok((scope, _)) => Ok(Required::Scope(scope)),
        Err(RouteMiss::NoRoute) => Err(Decision::NoRoute),
        Err(RouteMiss::InvalidPath) => Err(Decision::InvalidPath),
    };
    HttpDecided {
        decision: decide_with(keys, format, token, client_ip, required),
        scope: route.ok().map(|(scope, _)| scope),
        renormalized: changed,
        cost: route.map_or(DEFAULT_COST, |(_, cost)| cost),
    }
}

/// May `token` use every scope in `required`? `client_ip`: where the request
/// comes from, if known (a key with an allowlist is denied without it).
pub fn decide(
    keys: &KeyTable,
    format: &TokenFormat,
    token: &str,
    client_ip: Option<IpAddr>,
    required: &ScopeSet,
) -> Decision {
    decide_with(keys, format, token, client_ip, Ok(Required::Set(required)))
}

/// What a check needs: one route's scope, or the scopes a caller named.
#[derive(Clone, Copy)]
enum Required<'a> {
    Scope(ScopeId),
    Set(&'a ScopeSet),
}

fn decide_with(
    keys: &KeyTable,
    format: &TokenFormat,
    token: &str,
    client_ip: Option<IpAddr>,
    required: Result<Required<'_>, Decision>,
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
        let extras = entry.extras.as_deref();
        // A key without extras pays for this one branch and nothing else.
        let now = extras
            .filter(|extras| extras.is_timed())
            .map(|_| now_unix_ms());
        let current = format.verify(&parsed, &entry.secret_hash);
        let previous = || {
            extras
                .and_then(|extras| extras.previous)
                .is_some_and(|(hash, until)| {
                    now.is_some_and(|now| now < until) && format.verify(&parsed, &hash)
                })
        };
        if !current && !previous() {
            return Decision::UnknownKey;
        }
        entry.used.mark();
        if let Some(extras) = extras {
            if let Some(denied) = terms_deny(extras, now, client_ip) {
                return denied;
            }
        }
        let required = match required {
            Ok(required) => required,
            Err(unroutable) => return unroutable,
        };
        let allowed = match required {
            Required::Scope(scope) => entry.holds_scope(scope),
            Required::Set(required) => entry.holds(required),
        };
        if allowed {
            Decision::Allowed {
                key_id: parsed.key_id,
                account_id: entry.account_id.clone(),
                metadata: extras.and_then(|extras| extras.metadata.clone()),
                rate: extras.and_then(|extras| extras.rate.as_ref()).and_then(
                    |rate| match required {
                        Required::Scope(scope) => Applicable::for_scope(rate, scope),
                        Required::Set(required) => Applicable::for_set(rate, required),
                    },
                ),
                credits: extras.and_then(|extras| extras.credits.clone()),
            }
        } else {
            Decision::InsufficientScope {
                key_id: parsed.key_id,
                account_id: entry.account_id.clone(),
                missing: match required {
                    Required::Scope(scope) => ScopeSet::single(scope),
                    Required::Set(required) => required.difference(&entry.scopes()),
                },
            }
        }
    })
}

/// What a key's terms deny now, if anything: disabled, outside its validity
/// window (`now`: unix ms; `None` skips the window, read only for keys with
/// one), or an address its allowlist does not hold.
pub fn terms_deny(
    extras: &KeyExtras,
    now: Option<i64>,
    client_ip: Option<IpAddr>,
) -> Option<Decision> {
    if extras.disabled {
        return Some(Decision::Disabled);
    }
    if let Some(now) = now {
        let early = extras.not_before_ms != 0 && now < extras.not_before_ms;
        let late = extras.expire_ms != 0 && now >= extras.expire_ms;
        if early || late {
            return Some(Decision::Expired);
        }
    }
    if !extras.cidrs.is_empty()
        && !client_ip.is_some_and(|ip| {
            // Dual-stack listeners report IPv4 peers as `::ffff:a.b.c.d`.
            let canonical = ip.to_canonical();
            extras
                .cidrs
                .iter()
                .any(|cidr| cidr.contains(&ip) || cidr.contains(&canonical))
        })
    {
        return Some(Decision::IpNotAllowed);
    }
    None
}

/// Wall-clock milliseconds (clock_gettime through the vDSO: tens of ns).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
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
            Arc::new(AuthEntry::new(
                issued.secret_hash,
                catalog.resolve(scopes.iter().copied()).unwrap(),
                "acct".into(),
                KeyKind::General,
                None,
            )),
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
                    metadata: None,
                    rate: None,
                    credits: None,
                },
            ),
            (
                "all of several",
                &token,
                need(&["mail.send", "stats.read"]),
                Decision::Allowed {
                    key_id,
                    account_id: "acct".into(),
                    metadata: None,
                    rate: None,
                    credits: None,
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
            assert_eq!(
                decide(&keys, &format, token, None, &required),
                expected,
                "{name}"
            );
        }
    }

    /// The validity window is half-open, to the millisecond: valid from
    /// `not_before` inclusive, expired from `expire` inclusive.
    #[test]
    fn the_validity_window_is_exact_to_the_millisecond() {
        let limits = KeyExtras {
            not_before_ms: 1_000,
            expire_ms: 2_000,
            ..KeyExtras::default()
        };
        let at = |now| terms_deny(&limits, Some(now), None);
        assert_eq!(at(999), Some(Decision::Expired));
        assert_eq!(at(1_000), None);
        assert_eq!(at(1_999), None);
        assert_eq!(at(2_000), Some(Decision::Expired));
        let open_ended = KeyExtras {
            expire_ms: 2_000,
            ..KeyExtras::default()
        };
        assert_eq!(terms_deny(&open_ended, Some(0), None), None);
    }

    #[test]
    fn right_id_wrong_secret_is_unknown_key() {
        let (keys, format, catalog, _token, key_id) = setup(&["mail.send"]);
        // A different secret under the same id, with a valid checksum.
        let forged = format.issue_for_test(key_id);
        let required = catalog.resolve(["mail.send"]).unwrap();
        assert_eq!(
            decide(&keys, &format, &forged, None, &required),
            Decision::UnknownKey
        );
    }

    #[test]
    fn removal_takes_effect_at_once() {
        let (keys, format, catalog, token, key_id) = setup(&["mail.send"]);
        let required = catalog.resolve(["mail.send"]).unwrap();
        assert!(decide(&keys, &format, &token, None, &required).is_allowed());
        keys.remove(&key_id);
        assert_eq!(
            decide(&keys, &format, &token, None, &required),
            Decision::UnknownKey
        );
    }
}
