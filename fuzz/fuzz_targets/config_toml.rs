//! The catalog and routes TOML loaders: any text gets a catalog, a table or
//! an error, never a panic. A catalog that loads must accept its own routes
//! check (every scope it names resolves).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::route::RouteTable;
use scopegate::scope::Catalog;
use std::sync::OnceLock;

static BUILTIN: OnceLock<Catalog> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let builtin = BUILTIN.get_or_init(Catalog::builtin);
    let _ = RouteTable::from_toml(text, builtin);
    if let Ok(catalog) = Catalog::from_toml(text) {
        let all = catalog.all_scopes();
        let names = catalog.names(&all);
        assert_eq!(catalog.resolve(names.iter().map(String::as_str)).unwrap(), all);
    }
});
