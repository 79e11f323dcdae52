//! `KeyRecord` decoding (what `load` reads from sled after a bad disk or a
//! hand-edited restore): an error or a record, never a panic; a record's
//! scopes resolve against the catalog or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::scope::Catalog;
use scopegate::store::decode;

fuzz_target!(|data: &[u8]| {
    let (id, value) = data.split_at(data.len().min(16));
    if let Ok(record) = decode(id, value) {
        let catalog = Catalog::builtin();
        if let Ok(scopes) = catalog.resolve(record.scopes.iter().map(String::as_str)) {
            let _ = catalog.kind_of(&scopes);
        }
        let _ = record.key_id();
    }
});
