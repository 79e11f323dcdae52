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
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
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

    /// Parses the 22-char text form, as shown in the API.
    pub fn parse(text: &str) -> Option<KeyId> {
        if text.len() != KEY_ID_CHARS {
            return None;
        }
        let mut bytes = [0; KEY_ID_BYTES + 2];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(KEY_ID_BYTES) => Some(KeyId(bytes[..KEY_ID_BYTES].try_into().expect("16 bytes"))),
            _ => None,
        }
    }

    /// The 22-char text form, as `to_string` gives it but without the
    /// formatting machinery: every answer carries one (~400 instructions less
    /// per decision, issue #38).
    pub fn text(&self) -> String {
        String::from(std::str::from_utf8(&self.encode()).expect("base64 is ASCII"))
    }

    fn encode(&self) -> [u8; KEY_ID_CHARS] {
        let mut text = [0; KEY_ID_CHARS];
        URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut text)
            .expect("22 chars fit");
        text
    }
}

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
    pepper: Option<Hmac<Sha256>>,
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
            pepper: pepper.map(|pepper| {
                Hmac::<Sha256>::new_from_slice(pepper).expect("HMAC takes any key length")
            }),
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
        self.hash_secret(token.secret).ct_eq(stored_hash).into()
    }

    fn hash_secret(&self, secret: &str) -> [u8; 32] {
        match &self.pepper {
            None => Sha256::digest(secret.as_bytes()).into(),
            Some(keyed) => {
                let mut mac = keyed.clone();
                mac.update(secret.as_bytes());
                mac.finalize().into_bytes().into()
            }
        }
    }
}

/// Whether every byte is in the base64url alphabet (one table lookup each).
fn is_base64url(bytes: &[u8]) -> bool {
    const TABLE: [bool; 256] = {
        let mut table = [false; 256];
        let mut byte = 0;
        while byte < 256 {
            let c = byte as u8;
            table[byte] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            byte += 1;
        }
        table
    };
    bytes.iter().all(|&byte| TABLE[byte as usize])
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
    Sha256::digest(token.trim().as_bytes()).into()
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
