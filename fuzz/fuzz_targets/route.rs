//! Route normalisation + matching. Never panics; `normalize_path` agrees
//! with an independent reference written from README's rules (RFC 3986
//! 6.2.2.2 decoding of unreserved characters, `//` merged, RFC 3986 5.2.4
//! `remove_dot_segments`, the trailing slash dropped; refused: a backslash,
//! NUL, `;`, a bad escape, an encoded `/` `\` NUL `;` `%`, `..` above the
//! root) on every input; and whatever is routed has a normal form that a
//! strict upstream, decoding once, cannot read as a different path, and
//! that resolves to the same scope.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scopegate::route::{normalize_path, RouteTable, DEFAULT_ROUTES_TOML};
use scopegate::scope::Catalog;

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE", "get",
];

fn routes() -> &'static RouteTable {
    static ROUTES: OnceLock<RouteTable> = OnceLock::new();
    ROUTES.get_or_init(|| RouteTable::from_toml(DEFAULT_ROUTES_TOML, &Catalog::builtin()).unwrap())
}

/// README's path rules, implemented apart from `route::normalize_path`.
fn reference(raw: &str) -> Option<String> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') || path.contains(['\\', '\0', ';']) {
        return None;
    }
    // RFC 3986 6.2.2.2: decode unreserved characters only.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'%' {
            decoded.push(bytes[at]);
            at += 1;
            continue;
        }
        let hex = bytes.get(at + 1..at + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let value = (char::from(hex[0]).to_digit(16)? * 16 + char::from(hex[1]).to_digit(16)?) as u8;
        match value {
            b'/' | b'\\' | 0 | b';' | b'%' => return None,
            c if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => decoded.push(c),
            _ => {
                decoded.push(b'%');
                decoded.extend(hex.iter().map(u8::to_ascii_uppercase));
            }
        }
        at += 3;
    }
    let decoded = String::from_utf8(decoded).ok()?;
    // `//` merged.
    let mut input = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && input.ends_with('/')) {
            input.push(c);
        }
    }
    // RFC 3986 5.2.4, with `..` above the root refused instead of clamped.
    let mut output = String::new();
    while !input.is_empty() {
        if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") || input == "/.." {
            let cut = if input == "/.." { 3 } else { 4 };
            input.replace_range(..cut, "/");
            let last = output.rfind('/')?;
            output.truncate(last);
        } else {
            let end = input[1..].find('/').map_or(input.len(), |at| at + 1);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    if output.len() > 1 && output.ends_with('/') {
        output.pop();
    }
    if output.is_empty() {
        output.push('/');
    }
    Some(output)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    assert_eq!(
        normalize_path(path).as_deref(),
        reference(path).as_deref(),
        "{path:?}"
    );
    let method = METHODS[selector as usize % METHODS.len()];
    let Ok(scope) = routes().resolve(method, path) else {
        return;
    };
    let normal = normalize_path(path).expect("a routed path has a normal form");
    assert_eq!(routes().resolve(method, &normal), Ok(scope), "{path:?} -> {normal:?}");
    assert!(normal.starts_with('/'));
    for segment in normal.split('/').skip(1) {
        assert!(
            normal == "/" || !(segment.is_empty() || segment == "." || segment == ".."),
            "{path:?} -> {normal:?}"
        );
        assert!(!segment.contains(';'), "{path:?} -> {normal:?}");
    }
    let bytes = normal.as_bytes();
    for (index, _) in normal.match_indices('%') {
        let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap();
        let decoded = u8::from_str_radix(hex, 16).unwrap();
        assert!(
            !matches!(decoded, b'/' | b'\\' | b'.' | b';' | b'%' | 0)
                && !decoded.is_ascii_alphanumeric(),
            "{path:?} -> {normal:?} keeps %{hex}"
        );
    }
});
