//! API tokens: format, parsing, checksum and hashing. Pure.
//!
//! A token is `PREFIX.KEYID.SECRETCHECK`, e.g.
//! `SG.qL0w1cT9Rk2tqc8z3mE1aA.Xb1b…(43 chars)…3fZk9a`:
//! - `PREFIX`: configurable (default `SG`), `[A-Za-z0-9_]{1,16}`.
//! - `KEYID`: 16 random bytes, base64url without padding (22 chars). It is
//!   the key's public id, so finding the key is one hash-map lookup.
//! - `SECRET`: 32 bytes (256 bits) from the OS CSPRNG, base64url (43 chars).
//! - `CHECK`: CRC32 of everything before it, 6 base62 chars. A mistyped or
//!   truncated token is rejected without a lookup, and secret scanners can
//!   match `PREFIX\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}[A-Za-z0-9]{6}` and
//!   verify the checksum to cut false positives.
//!
//! Only `SHA-256(secret)` (or `HMAC-SHA256(pepper, secret)` when the server has
//! a pepper) is stored; comparison is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

pub const DEFAULT_PREFIX: &str = "SG";
const KEY_ID_BYTES: usize = 16;
const KEY_ID_CHARS: usize = 22;
pub const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = 43;
const CHECK_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key's public identifier (the middle part of its token).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_BYTES]);

/// One word: the id is 16 random bytes, so any hasher gets a uniform input
/// and [`crate::key::KeyTable`] can use it as the hash itself.
impl std::hash::Hash for KeyId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (low, high) = self.0.split_at(8);
        let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8 bytes"));
        state.write_u64(word(low) ^ word(high));
    }
}

impl KeyId {
    pub fn random() -> KeyId {
        let mut bytes = [0; KEY_ID_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        KeyId(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_ID_BYTES]) -> KeyId {
        KeyId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_ID_BYTES] {
        &self.0
    }

    /// Parses the 22-char text form, as shown in the API: canonical
    /// base64url only (the last character's unused bits zero), as the base64
    /// crate decodes it (a property test holds the two together).
    pub fn parse(text: &str) -> Option<KeyId> {
        let text: &[u8; KEY_ID_CHARS] = text.as_bytes().try_into().ok()?;
        let mut bytes = [0; KEY_ID_BYTES];
        for (chars, out) in text.chunks(4).zip(bytes.chunks_mut(3)) {
            let mut bits = 0;
            for (at, &char) in chars.iter().enumerate() {
                let value = BASE64URL_VALUES[usize::from(char)];
                if value == NOT_BASE64URL {
                    return None;
                }
                bits |= u32::from(value) << (18 - 6 * at);
            }
            out.copy_from_slice(&bits.to_be_bytes()[1..1 + out.len()]);
        }
        // The last character holds 6 bits, of which the id uses 2.
        (BASE64URL_VALUES[usize::from(text[KEY_ID_CHARS - 1])] & 0x0f == 0).then_some(KeyId(bytes))
    }

    /// The 22-char text form, as `to_string` gives it but without the
    /// formatting machinery: every answer carries one.
    pub fn text(&self) -> String {
        String::from(std::str::from_utf8(&self.encode()).expect("base64 is ASCII"))
    }

    /// Base64url without padding, 3 bytes to 4 characters. By hand, as
    /// [`KeyId::parse`]: the base64 crate's general engine cost ~700
    /// instructions per decision for the two (issue #38).
    fn encode(&self) -> [u8; KEY_ID_CHARS] {
        let mut text = [0; KEY_ID_CHARS];
        for (group, out) in self.0.chunks(3).zip(text.chunks_mut(4)) {
            let mut word = [0; 4];
            word[1..1 + group.len()].copy_from_slice(group);
            let bits = u32::from_be_bytes(word);
            for (at, char) in out.iter_mut().enumerate() {
                *char = BASE64URL[(bits >> (18 - 6 * at)) as usize & 63];
            }
        }
        text
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const NOT_BASE64URL: u8 = 0xff;
/// Each byte's value in [`BASE64URL`], or [`NOT_BASE64URL`].
const BASE64URL_VALUES: [u8; 256] = {
    let mut table = [NOT_BASE64URL; 256];
    let mut value = 0;
    while value < 64 {
        table[BASE64URL[value] as usize] = value as u8;
        value += 1;
    }
    table
};

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.encode()).expect("base64 is ASCII"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token prefix must be 1 to 16 characters of [A-Za-z0-9_]")]
    BadPrefix,
}

/// Why a string is not a well-formed token. Never carries the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Shape,
    Prefix,
    Checksum,
}

/// A parsed token, borrowing the secret from the input. Its Debug shows the
/// key id only.
pub struct ParsedToken<'a> {
    pub key_id: KeyId,
    secret: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedToken")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Issues, parses and hashes tokens for one server configuration.
#[derive(Clone)]
pub struct TokenFormat {
    prefix: String,
    pepper: Option<hmac::Key>,
}

/// A new key's token and what is stored of it. (The random secret's
/// intermediate buffers are zeroized; the token itself goes to the reply.)
pub struct IssuedToken {
    pub key_id: KeyId,
    /// Shown to the creator once, never stored or logged.
    pub token: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("key_id", &self.key_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TokenFormat {
    pub fn new(prefix: &str, pepper: Option<&[u8]>) -> Result<TokenFormat, TokenError> {
        let valid = (1..=16).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if !valid {
            return Err(TokenError::BadPrefix);
        }
        Ok(TokenFormat {
            prefix: prefix.to_owned(),
            pepper: pepper.map(|pepper| hmac::Key::new(hmac::HMAC_SHA256, pepper)),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn issue(&self) -> IssuedToken {
        self.issue_for(KeyId::random())
    }

    /// A new secret for an existing key id (rotation).
    pub fn reissue(&self, key_id: KeyId) -> IssuedToken {
        self.issue_for(key_id)
    }

    fn issue_for(&self, key_id: KeyId) -> IssuedToken {
        let mut secret_bytes = zeroize::Zeroizing::new([0; SECRET_BYTES]);
        getrandom::fill(&mut *secret_bytes).expect("the OS random source works");
        self.issue_with_secret(key_id, &secret_bytes)
    }

    /// The token of `key_id` with the given secret bytes. The server only
    /// ever uses random ones ([`TokenFormat::issue`]); fixtures that need a
    /// token known in advance (fuzz seeds, benchmarks) pass fixed ones.
    pub fn issue_with_secret(
        &self,
        key_id: KeyId,
        secret_bytes: &[u8; SECRET_BYTES],
    ) -> IssuedToken {
        let secret = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(secret_bytes));
        let mut token = format!("{}.{}.{}", self.prefix, key_id, *secret);
        let check = checksum(&token);
        token.push_str(std::str::from_utf8(&check).expect("base62 is ASCII"));
        IssuedToken {
            key_id,
            secret_hash: self.hash_secret(&secret),
            token,
        }
    }

    /// A token for an existing id with a fresh secret: lets tests forge a
    /// well-formed token whose secret does not match.
    #[cfg(test)]
    pub fn issue_for_test(&self, key_id: KeyId) -> String {
        self.issue_for(key_id).token
    }

    /// Checks shape, prefix and checksum; no lookup, no allocation. The key id
    /// and secret have fixed lengths, so the parts are found from the end.
    pub fn parse<'a>(&self, token: &'a str) -> Result<ParsedToken<'a>, Malformed> {
        let bytes = token.as_bytes();
        let body_len = bytes
            .len()
            .checked_sub(CHECK_CHARS)
            .ok_or(Malformed::Shape)?;
        let secret_at = body_len.checked_sub(SECRET_CHARS).ok_or(Malformed::Shape)?;
        let prefix_len = secret_at
            .checked_sub(KEY_ID_CHARS + 2)
            .ok_or(Malformed::Shape)?;
        let id_at = prefix_len + 1;
        if bytes[prefix_len] != b'.'
            || bytes[secret_at - 1] != b'.'
            || !is_base64url(&bytes[id_at..secret_at - 1])
            || !is_base64url(&bytes[secret_at..body_len])
        {
            return Err(Malformed::Shape);
        }
        // Every byte from `prefix_len` on is ASCII, so these are char boundaries.
        if token[..prefix_len] != *self.prefix {
            return Err(Malformed::Prefix);
        }
        if checksum(&token[..body_len]) != bytes[body_len..] {
            return Err(Malformed::Checksum);
        }
        let key_id = KeyId::parse(&token[id_at..secret_at - 1]).ok_or(Malformed::Shape)?;
        Ok(ParsedToken {
            key_id,
            secret: &token[secret_at..body_len],
        })
    }

    /// Whether the token's secret matches a stored hash, in constant time.
    pub fn verify(&self, token: &ParsedToken<'_>, stored_hash: &[u8; 32]) -> bool {
        constant_time_eq(&self.hash_secret(token.secret), stored_hash)
    }

    /// SHA-256 through ring, as the TLS stack already links it: its
    /// assembly uses the CPU's SHA extensions, or SIMD where there are none
    /// (a third of sha2's portable code's instructions, issue #38).
    fn hash_secret(&self, secret: &str) -> [u8; 32] {
        match &self.pepper {
            None => sha256(secret.as_bytes()),
            Some(key) => array(hmac::sign(key, secret.as_bytes()).as_ref()),
        }
    }
}

/// Whether every byte is in the base64url alphabet (one table lookup each).
fn is_base64url(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&byte| BASE64URL_VALUES[usize::from(byte)] != NOT_BASE64URL)
}

/// CRC32 of `body` as 6 base62 digits (62^6 > 2^32).
fn checksum(body: &str) -> [u8; CHECK_CHARS] {
    let mut value = crc32fast::hash(body.as_bytes()) as u64;
    let mut digits = [b'0'; CHECK_CHARS];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// Hash of an admin token, for constant-time comparison with a presented one.
pub fn admin_token_hash(token: &str) -> [u8; 32] {
    sha256(token.trim().as_bytes())
}

/// Whether two hashes are equal, taking the same time whatever they hold:
/// compared as four words (subtle's comparison of 32 bytes one at a time
/// cost ~300 instructions per decision, issue #38).
pub fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let words = |bytes: &[u8; 32]| -> [u64; 4] {
        std::array::from_fn(|at| {
            u64::from_ne_bytes(bytes[at * 8..at * 8 + 8].try_into().expect("8 bytes"))
        })
    };
    words(left).ct_eq(&words(right)).into()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    array(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// SHA-256 of several parts, each preceded by its length, so no two lists
/// of parts hash alike (request ids, page tokens' bindings).
pub fn sha256_of_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    array(context.finish().as_ref())
}

fn array(hash: &[u8]) -> [u8; 32] {
    hash.try_into().expect("SHA-256 is 32 bytes")
}

/// Names a secret without revealing it: the first 12 hex digits of its
/// stored hash (48 bits of a hash of 256 random bits: tells secrets apart,
/// helps no one guess one).
pub fn secret_fingerprint(stored_hash: &[u8]) -> String {
    use std::fmt::Write;
    stored_hash
        .iter()
        .take(6)
        .fold(String::new(), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// A fresh random admin token (`scopegate-admin.` + 43 base64url chars).
pub fn new_admin_token() -> String {
    let mut bytes = [0; SECRET_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("scopegate-admin.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The token of an `authorization` header value: `Bearer <token>`, the
/// scheme in any case (every management door reads credentials with this).
/// `Err` says what is wrong, never echoing the value.
pub fn bearer(value: &[u8]) -> Result<&str, &'static str> {
    let value = std::str::from_utf8(value).map_err(|_| "invalid credentials")?;
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or("authorization must be `Bearer <token>`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Stored hashes are the published functions, whatever computes them:
    /// FIPS 180-2's SHA-256 of "abc" and RFC 4231's HMAC-SHA256 case 2 (the
    /// pepper "Jefe"), so stores written with another implementation verify.
    #[test]
    fn secret_hashes_are_sha256_and_hmac_sha256_as_published() {
        let plain = TokenFormat::new("SG", None).unwrap();
        assert_eq!(
            hex(&plain.hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let peppered = TokenFormat::new("SG", Some(b"Jefe")).unwrap();
        assert_eq!(
            hex(&peppered.hash_secret("what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    proptest::proptest! {
        /// The hand-written key id codec is the base64 crate's
        /// URL_SAFE_NO_PAD: the same text for any id, and the same verdict
        /// and bytes for any 22 characters (any byte, and mostly the
        /// alphabet, so non-canonical last characters are tried too).
        #[test]
        fn key_id_codec_agrees_with_the_base64_crate(
            bytes in proptest::array::uniform16(proptest::num::u8::ANY),
            text in "[A-Za-z0-9_=+/-]{22}|[\\x00-\\xff]{22}",
        ) {
            let id = KeyId::from_bytes(bytes);
            proptest::prop_assert_eq!(id.text(), URL_SAFE_NO_PAD.encode(bytes));
            proptest::prop_assert_eq!(KeyId::parse(&id.text()), Some(id));
            let mut decoded = [0; KEY_ID_BYTES + 2];
            let expected = match URL_SAFE_NO_PAD.decode_slice(&text, &mut decoded) {
                Ok(KEY_ID_BYTES) => Some(KeyId::from_bytes(decoded[..KEY_ID_BYTES].try_into().unwrap())),
                _ => None,
            };
            proptest::prop_assert_eq!(KeyId::parse(&text), expected);
        }
    }

    #[test]
    fn a_key_id_with_unused_bits_set_is_not_canonical() {
        // `B` is 000001: two bits for the last byte, four left over.
        assert_eq!(KeyId::parse("AAAAAAAAAAAAAAAAAAAAAB"), None);
        assert!(URL_SAFE_NO_PAD.decode("AAAAAAAAAAAAAAAAAAAAAB").is_err());
        assert!(KeyId::parse("AAAAAAAAAAAAAAAAAAAAAQ").is_some());
    }

    #[test]
    fn constant_time_eq_tells_every_byte() {
        let hash = sha256(b"secret");
        assert!(constant_time_eq(&hash, &hash.clone()));
        for at in 0..32 {
            let mut other = hash;
            other[at] ^= 0x80;
            assert!(!constant_time_eq(&hash, &other), "byte {at}");
        }
    }

    #[test]
    fn key_id_text_is_its_display_and_parses_back() {
        for bytes in [
            [0; KEY_ID_BYTES],
            [0xff; KEY_ID_BYTES],
            *KeyId::random().as_bytes(),
        ] {
            let id = KeyId::from_bytes(bytes);
            assert_eq!(id.text(), id.to_string());
            assert_eq!(id.text().len(), KEY_ID_CHARS);
            assert_eq!(KeyId::parse(&id.text()), Some(id));
        }
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_value_only() {
        assert_eq!(bearer(b"Bearer SG.a.b"), Ok("SG.a.b"));
        assert_eq!(bearer(b"bearer  SG.a.b "), Ok("SG.a.b"));
        for bad in [&b"Basic abc"[..], b"Bearer", b"SG.a.b", b"\xffBearer x"] {
            assert!(bearer(bad).is_err(), "{bad:?}");
        }
        assert_eq!(bearer(b"\xff"), Err("invalid credentials"));
    }

    fn format() -> TokenFormat {
        TokenFormat::new("SG", None).unwrap()
    }

    #[test]
    fn issued_tokens_parse_and_verify() {
        let format = format();
        let issued = format.issue();
        assert!(issued.token.starts_with("SG."));
        assert_eq!(issued.token.len(), 2 + 1 + 22 + 1 + 43 + 6);
        let parsed = format.parse(&issued.token).unwrap();
        assert_eq!(parsed.key_id, issued.key_id);
        assert!(format.verify(&parsed, &issued.secret_hash));
        assert!(!format.verify(&parsed, &[0; 32]));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let format = format();
        let issued = format.issue();
        for index in 0..issued.token.len() {
            let mut bytes = issued.token.clone().into_bytes();
            bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(bytes).unwrap();
            assert!(format.parse(&typo).is_err(), "typo at {index} accepted");
        }
    }

    proptest::proptest! {
        /// Any text, or a token with any one char replaced (multi-byte ones
        /// included): an error or the original, never a panic.
        #[test]
        fn parse_never_panics(text in "\\PC{0,90}", index in 0usize..80, typo in proptest::char::any()) {
            let format = format();
            let _ = format.parse(&text);
            let token = format.issue().token;
            let mut chars: Vec<char> = token.chars().collect();
            let index = index % chars.len();
            let original = chars[index];
            chars[index] = typo;
            let changed: String = chars.into_iter().collect();
            proptest::prop_assert_eq!(format.parse(&changed).is_ok(), typo == original);
        }
    }

    #[test]
    fn malformed_tokens_are_classified() {
        let format = format();
        let issued = format.issue();
        assert_eq!(format.parse("").unwrap_err(), Malformed::Shape);
        assert_eq!(format.parse("SG.abc.def").unwrap_err(), Malformed::Shape);
        let truncated = &issued.token[..issued.token.len() - 1];
        assert_eq!(format.parse(truncated).unwrap_err(), Malformed::Shape);
        assert_eq!(
            format.parse(&issued.token[1..]).unwrap_err(),
            Malformed::Prefix
        );
        let other_prefix = TokenFormat::new("XX", None).unwrap().issue();
        assert_eq!(
            format.parse(&other_prefix.token).unwrap_err(),
            Malformed::Prefix
        );
        assert_eq!(
            format.parse("é".repeat(40).as_str()).unwrap_err(),
            Malformed::Shape
        );
    }

    #[test]
    fn secrets_are_random_and_ids_round_trip() {
        let format = format();
        let first = format.issue();
        let second = format.issue();
        assert_ne!(first.key_id, second.key_id);
        assert_ne!(first.secret_hash, second.secret_hash);
        assert_eq!(KeyId::parse(&first.key_id.to_string()), Some(first.key_id));
        assert_eq!(KeyId::parse("short"), None);
    }

    #[test]
    fn pepper_changes_the_stored_hash() {
        let peppered = TokenFormat::new("SG", Some(b"pepper")).unwrap();
        let issued = peppered.issue();
        let parsed = peppered.parse(&issued.token).unwrap();
        assert!(peppered.verify(&parsed, &issued.secret_hash));
        assert!(!format().verify(&parsed, &issued.secret_hash));
    }

    #[test]
    fn prefix_is_validated() {
        assert!(TokenFormat::new("", None).is_err());
        assert!(TokenFormat::new("S.G", None).is_err());
        assert!(TokenFormat::new("sk_live", None).is_ok());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let issued = format().issue();
        assert!(!format!("{issued:?}").contains(&issued.token));
    }
}
