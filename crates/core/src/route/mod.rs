//! The HTTP route table: (method, path) → the one scope a request needs.
//! Pure; built once from TOML and read by both `Authorize.Check{http}` and
//! ext_authz through [`crate::authz::decide_http`].
//!
//! File format (`--routes FILE`, see `examples/routes.toml`):
//! ```toml
//! default_scope = "stats.read"     # optional: requests whose path no rule matches
//!                                  # need this scope instead of being denied NO_ROUTE
//!                                  # (a matched path with an unlisted method stays NO_ROUTE)
//! allow_semicolon = false          # optional: `;` or `%3B` in the path (refused by default:
//!                                  # Java upstreams read `/a/..;/b` as `/b`)
//! allow_encoded_percent = false    # optional: `%25` in the path (refused by default:
//!                                  # a double-decoding upstream reads `%252e` as `.`)
//! allow_method_override = false    # optional: let ext_authz requests carry
//!                                  # X-HTTP-Method-Override / X-HTTP-Method / X-Method-Override
//!                                  # (refused 400 by default: the upstream may act on
//!                                  # another method than the one authorized)
//! [[route]]
//! path = "/v3/mail/send"           # a matchit template: /a/{id}, /a/{*rest}
//! methods = ["POST"]               # optional; default: every method the target allows
//! scope = "mail.send"              # an explicit scope ...
//!
//! [[route]]
//! prefix = "/v3/whitelabel"        # ... or a prefix: the path itself and everything below
//! resource = "whitelabel"          # ... or a resource: the verb follows the method
//! ```
//! A rule may say `mode = "dry_run"`: ext_authz then allows what it would
//! deny on that rule, counting and marking it (see `serve --dry-run`); and
//! `cost = N`: what its requests spend of a key with credits (default 1;
//! `cost = 0` for free reads).
//!
//! Method → verb for `resource`: GET/HEAD → read, POST → create, PUT/PATCH →
//! update, DELETE → delete. Overlaps resolve as matchit does: the most specific
//! template wins (static segment > `{param}` > `{*catch_all}`), and an exact
//! method rule beats a rule without `methods` on the same template.
//!
//! Paths are normalised before matching, and requests whose path cannot be
//! normalised safely are refused (see [`normalize_path`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::scope::{Catalog, ScopeId};

/// Routes for the built-in catalog (`examples/routes.toml`), used when the
/// server runs the built-in catalog without `--routes`.
pub const DEFAULT_ROUTES_TOML: &str = include_str!("../../../../examples/routes.toml");

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `{param}` segments in one template at most (matchit panics past 25).
const MAX_TEMPLATE_PARAMETERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("cannot read routes {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid routes{file}: {reason}")]
    Invalid { file: String, reason: String },
}

/// Why a request has no scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMiss {
    /// No rule covers the method and path.
    NoRoute,
    /// The path is malformed or ambiguous (encoded slash, `..` above the root).
    InvalidPath,
}

/// While loading: (scope, line, explicit method, dry run, cost) per method.
type MethodRule = (ScopeId, usize, bool, bool, u32);

/// What a request costs a key with credits unless its rule says otherwise.
pub const DEFAULT_COST: u32 = 1;
/// The most a rule may say a request costs.
pub const MAX_COST: u32 = 1_000_000;

#[derive(Debug, Default, Clone)]
struct MethodTable {
    /// The scope and the cost of each method.
    by_method: HashMap<&'static str, (ScopeId, u32)>,
    /// Methods whose rule says `mode = "dry_run"`.
    dry_run: Vec<&'static str>,
}

pub struct RouteTable {
    router: matchit::Router<MethodTable>,
    default_scope: Option<ScopeId>,
    rule_count: usize,
    paths: PathOptions,
    allow_method_override: bool,
}

/// Path forms refused unless the routes file opts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// `;` or `%3B` anywhere in the path.
    pub allow_semicolon: bool,
    /// `%25`, an encoded `%`.
    pub allow_encoded_percent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    default_scope: Option<String>,
    #[serde(default)]
    allow_semicolon: bool,
    #[serde(default)]
    allow_encoded_percent: bool,
    #[serde(default)]
    allow_method_override: bool,
    #[serde(default)]
    route: Vec<toml::Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    path: Option<String>,
    prefix: Option<String>,
    methods: Option<Vec<String>>,
    scope: Option<String>,
    resource: Option<String>,
    /// "enforce" (default) or "dry_run": ext_authz allows what this rule
    /// would deny, and counts and marks it.
    mode: Option<String>,
    /// What a request costs a key with credits (default 1; 0: free).
    cost: Option<u32>,
}

impl RuleFile {
    fn cost(&self) -> Result<u32, String> {
        match self.cost {
            None => Ok(DEFAULT_COST),
            Some(cost) if cost <= MAX_COST => Ok(cost),
            Some(cost) => Err(format!("cost {cost} is more than {MAX_COST}")),
        }
    }

    fn dry_run(&self) -> Result<bool, String> {
        match self.mode.as_deref() {
            None | Some("enforce") => Ok(false),
            Some("dry_run") => Ok(true),
            Some(other) => Err(format!("mode `{other}` is not enforce or dry_run")),
        }
    }

    /// The matchit templates: the path, or a prefix and everything below it.
    fn templates(&self) -> Result<Vec<String>, String> {
        let templates = match (&self.path, &self.prefix) {
            (Some(path), None) => vec![path.clone()],
            (None, Some(prefix)) => {
                let base = prefix.trim_end_matches('/');
                let itself = if base.is_empty() { "/" } else { base };
                vec![itself.to_owned(), format!("{base}/{{*rest}}")]
            }
            _ => return Err("give exactly one of `path` or `prefix`".into()),
        };
        if let Some(template) = templates.iter().find(|template| !template.starts_with('/')) {
            return Err(format!("path `{template}` must start with /"));
        }
        match templates
            .iter()
            .find(|template| template.matches('{').count() > MAX_TEMPLATE_PARAMETERS)
        {
            Some(template) => Err(format!(
                "path `{template}` has more than {MAX_TEMPLATE_PARAMETERS} parameters"
            )),
            None => Ok(templates),
        }
    }

    /// (method, named explicitly): the listed methods, or all of them.
    fn methods(&self) -> Result<Vec<(&'static str, bool)>, String> {
        let Some(methods) = &self.methods else {
            return Ok(METHODS.iter().map(|method| (*method, false)).collect());
        };
        if methods.is_empty() {
            return Err("`methods` is empty; leave it out for every method".into());
        }
        methods
            .iter()
            .map(|method| {
                let upper = method.to_ascii_uppercase();
                METHODS
                    .iter()
                    .find(|known| **known == upper)
                    .map(|known| (*known, true))
                    .ok_or_else(|| format!("unknown method `{method}`"))
            })
            .collect()
    }

    /// (method, scope, named explicitly) for each method the rule covers: a
    /// `scope` for all of them, or a `resource` whose verb follows the method.
    fn targets(&self, catalog: &Catalog) -> Result<Vec<(&'static str, ScopeId, bool)>, String> {
        let methods = self.methods()?;
        match (&self.scope, &self.resource) {
            (Some(scope), None) => {
                let id = catalog
                    .scope_id(scope)
                    .ok_or_else(|| format!("unknown scope `{scope}`"))?;
                Ok(methods
                    .into_iter()
                    .map(|(method, explicit)| (method, id, explicit))
                    .collect())
            }
            (None, Some(resource)) => {
                if catalog.resource_id(resource).is_none() {
                    return Err(format!("unknown resource `{resource}`"));
                }
                let mut targets = Vec::new();
                for (method, explicit) in methods {
                    let Some(verb) = verb_for(method) else {
                        if explicit {
                            return Err(format!("method {method} has no verb; use `scope`"));
                        }
                        continue;
                    };
                    match catalog.scope_id(&format!("{resource}.{verb}")) {
                        Some(id) => targets.push((method, id, explicit)),
                        None if explicit => {
                            return Err(format!(
                                "resource `{resource}` has no `{verb}` scope for {method}"
                            ))
                        }
                        None => {}
                    }
                }
                Ok(targets)
            }
            _ => Err("give exactly one of `scope` or `resource`".into()),
        }
    }
}

impl RouteTable {
    /// A table without rules: every request is NO_ROUTE.
    pub fn empty() -> RouteTable {
        RouteTable {
            router: matchit::Router::new(),
            default_scope: None,
            rule_count: 0,
            paths: PathOptions::default(),
            allow_method_override: false,
        }
    }

    pub fn load(path: &Path, catalog: &Catalog) -> Result<RouteTable, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|error| RouteError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        RouteTable::from_toml(&text, catalog).map_err(|error| match error {
            RouteError::Invalid { reason, .. } => RouteError::Invalid {
                file: format!(" {}", path.display()),
                reason,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str, catalog: &Catalog) -> Result<RouteTable, RouteError> {
        let invalid = |reason: String| RouteError::Invalid {
            file: String::new(),
            reason,
        };
        let file: RoutesFile = toml::from_str(text).map_err(|error| invalid(error.to_string()))?;
        let default_scope = match &file.default_scope {
            None => None,
            Some(name) => Some(
                catalog
                    .scope_id(name)
                    .ok_or_else(|| invalid(format!("default_scope: unknown scope `{name}`")))?,
            ),
        };
        // Template → (method → (scope, line, explicit method, dry run)).
        let mut templates: Vec<(String, usize)> = Vec::new();
        let mut tables: HashMap<String, HashMap<&'static str, MethodRule>> = HashMap::new();
        for spanned in &file.route {
            let line = 1 + text[..spanned.span().start].matches('\n').count();
            let at = |reason: String| invalid(format!("line {line}: {reason}"));
            let rule = spanned.get_ref();
            let dry_run = rule.dry_run().map_err(at)?;
            let cost = rule.cost().map_err(at)?;
            let rule_templates = rule.templates().map_err(at)?;
            let targets = rule.targets(catalog).map_err(at)?;
            for template in rule_templates {
                let table = tables.entry(template.clone()).or_insert_with(|| {
                    templates.push((template.clone(), line));
                    HashMap::new()
                });
                for (method, scope, explicit) in &targets {
                    match table.get(method) {
                        Some((_, other_line, other_explicit, _, _)) if *other_explicit == *explicit => {
                            return Err(at(format!(
                                "{method} {template} is already covered by the rule at line {other_line}"
                            )))
                        }
                        Some((_, _, true, _, _)) => {} // an explicit method rule beats a catch-all one
                        _ => {
                            table.insert(method, (*scope, line, *explicit, dry_run, cost));
                        }
                    }
                }
            }
        }
        let mut router = matchit::Router::new();
        for (template, line) in &templates {
            let methods = MethodTable {
                by_method: tables[template]
                    .iter()
                    .map(|(method, (scope, _, _, _, cost))| (*method, (*scope, *cost)))
                    .collect(),
                dry_run: tables[template]
                    .iter()
                    .filter(|(_, (_, _, _, dry_run, _))| *dry_run)
                    .map(|(method, _)| *method)
                    .collect(),
            };
            router
                .insert(template.as_str(), methods)
                .map_err(|error| invalid(format!("line {line}: path `{template}`: {error}")))?;
        }
        Ok(RouteTable {
            router,
            default_scope,
            rule_count: file.route.len(),
            paths: PathOptions {
                allow_semicolon: file.allow_semicolon,
                allow_encoded_percent: file.allow_encoded_percent,
            },
            allow_method_override: file.allow_method_override,
        })
    }

    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// Whether ext_authz lets method-override headers through.
    pub fn allows_method_override(&self) -> bool {
        self.allow_method_override
    }

    /// The scope `method path` needs. `default_scope` covers only paths no
    /// rule matches: a matched path with a method no rule lists is NO_ROUTE.
    pub fn resolve(&self, method: &str, path: &str) -> Result<ScopeId, RouteMiss> {
        self.route(method, path).0
    }

    /// [`RouteTable::resolve`], and whether the path decided on differs
    /// from the one sent (normalizing changed it, beyond dropping a query):
    /// then [`RouteTable::canonical_path`] is worth asking for.
    pub fn route(&self, method: &str, path: &str) -> (Result<ScopeId, RouteMiss>, bool) {
        let (routed, changed) = self.route_costed(method, path);
        (routed.map(|(scope, _)| scope), changed)
    }

    /// [`RouteTable::route`], with what the request costs a key with
    /// credits (its rule's `cost`, 1 by default).
    pub fn route_costed(
        &self,
        method: &str,
        path: &str,
    ) -> (Result<(ScopeId, u32), RouteMiss>, bool) {
        let Some(path) = normalize_path_with(path, self.paths) else {
            return (Err(RouteMiss::InvalidPath), false);
        };
        let changed = matches!(path, Cow::Owned(_));
        let routed = match self.router.at(&path) {
            Ok(found) => lookup_method(&found.value.by_method, method).ok_or(RouteMiss::NoRoute),
            Err(_) => self
                .default_scope
                .map(|scope| (scope, DEFAULT_COST))
                .ok_or(RouteMiss::NoRoute),
        };
        (routed, changed)
    }

    /// The path as this table decides on it (normalized, without the
    /// query), when that differs from `raw`'s path; `None` when `raw` is
    /// already canonical (no allocation) or refused.
    pub fn canonical_path(&self, raw: &str) -> Option<String> {
        let without_query = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];
        match normalize_path_with(raw, self.paths)? {
            Cow::Borrowed(path) if path == without_query => None,
            path => Some(path.into_owned()),
        }
    }

    /// Whether the rule that covers `method path` is in dry-run mode. Read
    /// only on the deny path.
    pub fn is_dry_run(&self, method: &str, path: &str) -> bool {
        let Some(path) = normalize_path_with(path, self.paths) else {
            return false;
        };
        self.router.at(&path).is_ok_and(|found| {
            found
                .value
                .dry_run
                .iter()
                .any(|known| known.eq_ignore_ascii_case(method))
        })
    }

    /// Every scope some request can reach (for coverage tests).
    pub fn reachable_scopes(&self, paths: &[&str]) -> Vec<ScopeId> {
        let mut scopes: Vec<ScopeId> = paths
            .iter()
            .flat_map(|path| {
                METHODS
                    .iter()
                    .filter_map(|method| self.resolve(method, path).ok())
            })
            .collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }
}

fn lookup_method(
    table: &HashMap<&'static str, (ScopeId, u32)>,
    method: &str,
) -> Option<(ScopeId, u32)> {
    if let Some(scope) = table.get(method) {
        return Some(*scope);
    }
    // Methods arrive upper-case from Envoy; accept any case without allocating.
    METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .and_then(|known| table.get(known).copied())
}

fn verb_for(method: &str) -> Option<&'static str> {
    match method {
        "GET" | "HEAD" => Some("read"),
        "POST" => Some("create"),
        "PUT" | "PATCH" => Some("update"),
        "DELETE" => Some("delete"),
        _ => None,
    }
}

/// Normalises a request path for matching with the strict defaults, or
/// refuses it (see [`normalize_path_with`]).
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    normalize_path_with(raw, PathOptions::default())
}

/// Normalises a request path for matching, or refuses it:
/// - the query string and fragment are dropped;
/// - it must start with `/`; a backslash, a NUL, or an encoded `/`, `\` or NUL
///   (`%2F`, `%5C`, `%00`) is refused, as is a malformed `%` escape;
/// - `;` and `%3B` are refused unless `allow_semicolon` (path parameters:
///   Java upstreams resolve `/a/..;/b` to `/b`), and `%25` unless
///   `allow_encoded_percent` (a double-decoding upstream reads `%252e` as `.`);
/// - `%XX` escapes of unreserved characters (letters, digits, `-._~`) are
///   decoded, so `/v3/m%61il/send` cannot dodge the `/v3/mail/send` rule;
/// - repeated slashes are merged, `.` segments dropped, `..` segments resolved
///   (refused above the root), and a trailing slash removed.
///
/// Returns the input unchanged (no allocation) when it is already normal.
pub fn normalize_path_with(raw: &str, options: PathOptions) -> Option<Cow<'_, str>> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    if !path.starts_with('/') {
        return None;
    }
    // One pass over the bytes (this runs on every HTTP check): refuse what
    // is never allowed, and see whether anything needs decoding or
    // collapsing (a '%', an empty, "." or ".." segment, a trailing slash).
    let bytes = path.as_bytes();
    let mut needs_work = false;
    for (index, byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' | 0 => return None,
            b';' if !options.allow_semicolon => return None,
            b'%' => needs_work = true,
            b'/' => {
                let rest = &bytes[index + 1..];
                let segment_end = |at: usize| rest.len() == at || rest[at] == b'/';
                needs_work |= (rest.is_empty() && index > 0)
                    || rest.first() == Some(&b'/')
                    || (rest.first() == Some(&b'.') && segment_end(1))
                    || (rest.starts_with(b"..") && segment_end(2));
            }
            _ => {}
        }
    }
    if !needs_work {
        return Some(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, options)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    Some(Cow::Owned(normal))
}

fn decode_unreserved(path: &str, options: PathOptions) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            let next = path[index..]
                .find('%')
                .map_or(path.len(), |offset| index + offset);
            out.push_str(&path[index..next]);
            index = next;
            continue;
        }
        let hex = path.get(index + 1..index + 3)?;
        // Two hex digits; from_str_radix alone would also take "+1".
        if !hex.bytes().all(|digit| digit.is_ascii_hexdigit()) {
            return None;
        }
        let value = u8::from_str_radix(hex, 16).ok()?;
        match value {
            b'/' | b'\\' | 0 => return None,
            b';' if !options.allow_semicolon => return None,
            b'%' if !options.allow_encoded_percent => return None,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(value as char)
            }
            _ => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        index += 3;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
