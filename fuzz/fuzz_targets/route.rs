//! Route normalisation + matching. Never panics, and whatever is routed has
//! a normal form that a strict upstream, decoding once, cannot read as a
//! different path: no dot or empty segments, no `;`, no escape that decodes
//! to a separator, a dot or `%`; and resolving the normal form gives the
//! same scope (normalisation is idempotent).
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

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
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
