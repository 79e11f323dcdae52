//! Token parse + verify on arbitrary text: never panics; whatever parses
//! re-renders to exactly the input's key id, and only the fixture's token
//! verifies against its hash. The fixture is fixed (key id 0x07…, secret
//! 0x2a…) and its token is in the seed corpus (`fixture`), so the fuzzer
//! starts from the one input that verifies and mutates around it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scopegate::token::{IssuedToken, KeyId, TokenFormat, SECRET_BYTES};

fn fixture() -> &'static (TokenFormat, IssuedToken) {
    static FIXTURE: OnceLock<(TokenFormat, IssuedToken)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let format = TokenFormat::new("SG", None).unwrap();
        let issued = format.issue_with_secret(KeyId::from_bytes([7; 16]), &[42; SECRET_BYTES]);
        (format, issued)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (format, issued) = fixture();
    if let Ok(parsed) = format.parse(text) {
        assert!(text.contains(&parsed.key_id.to_string()));
        let matches = format.verify(&parsed, &issued.secret_hash);
        assert_eq!(matches, text == issued.token, "only the issued token verifies");
    }
});
