//! The Unix-socket `:authority` fix on arbitrary client bytes, fed in
//! arbitrary pieces: never panics; a connection it never rewrote reaches h2
//! byte for byte, and a rewritten one keeps its preface.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scopegate::uds::AuthorityFix;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    // Half the inputs start with the preface, so frames get parsed.
    let input: Vec<u8> = if chunk & 0x80 != 0 {
        PREFACE.iter().chain(bytes).copied().collect()
    } else {
        bytes.to_vec()
    };
    let mut fix = AuthorityFix::default();
    for piece in input.chunks(usize::from(chunk & 0x7f).max(1)) {
        fix.push(piece);
    }
    let rewrote = fix.rewriting();
    fix.finish();
    let output = fix.output().to_vec();
    if !rewrote {
        assert_eq!(output, input);
    } else {
        assert!(output.starts_with(PREFACE));
    }
});
