//! Safe retries of CreateKey. A client that lost the answer (a deadline, a
//! dropped connection) cannot tell whether its key exists; a blind retry
//! would make a second key. With a client-chosen `request_id` (as Stripe's
//! idempotency keys), the retry gets the first call's key and token instead.
//!
//! The token is a secret shown once and never stored in the clear: for the
//! retry window it is kept sealed (ChaCha20-Poly1305, ring) under a key
//! derived from the request id, which is itself stored only as a hash. So the
//! disk (or etcd) holds nothing that opens it without the request id, which
//! is why the id must be unguessable (at least 16 characters; a UUIDv4).
//! PURE: no store, no transport.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use scopegate_core::token::sha256_of_parts;

/// How long a request id answers with its first result.
pub const RETENTION_MS: i64 = 24 * 3_600_000;
const MIN_CHARS: usize = 16;
const MAX_CHARS: usize = 128;

/// A validated request id, bound to the account it creates in.
pub struct RequestId {
    lookup: [u8; 32],
    seal_key: [u8; 32],
}

/// Never prints the derived keys.
impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestId(..)")
    }
}

impl RequestId {
    /// `text` is 16 to 128 of `A-Z a-z 0-9 . _ ~ -` (a UUID fits).
    pub fn new(account_id: &str, text: &str) -> Result<RequestId, String> {
        let chars = text.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&chars) {
            return Err(format!(
                "must be {MIN_CHARS} to {MAX_CHARS} characters (a UUID fits), not {chars}"
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
        {
            return Err(format!("may hold only A-Z a-z 0-9 . _ ~ -, not {bad:?}"));
        }
        Ok(RequestId {
            lookup: sha256_of_parts(&[
                b"scopegate create request",
                account_id.as_bytes(),
                text.as_bytes(),
            ]),
            seal_key: sha256_of_parts(&[
                b"scopegate sealed token",
                account_id.as_bytes(),
                text.as_bytes(),
            ]),
        })
    }

    /// Where the first result is filed (a hash: the id itself is never stored).
    pub fn lookup(&self) -> &[u8; 32] {
        &self.lookup
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.seal_key).expect("a 32-byte key"),
        )
    }

    /// The token, sealed. Each request id seals exactly one token, so its
    /// derived key never meets a second message: a fixed nonce is safe.
    pub fn seal(&self, token: &str) -> Vec<u8> {
        let mut sealed = token.as_bytes().to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut sealed,
            )
            .expect("sealing a short token");
        sealed
    }

    /// The token sealed by [`RequestId::seal`] with the same id; `None` if
    /// `sealed` is not that.
    pub fn open(&self, sealed: &[u8]) -> Option<String> {
        let mut buffer = sealed.to_vec();
        let opened = self
            .key()
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut buffer,
            )
            .ok()?;
        String::from_utf8(opened.to_vec()).ok()
    }
}

/// What a create asked for, so that a request id reused for a different
/// request is refused rather than answered with the wrong key.
pub fn request_digest(parts: &[&[u8]]) -> [u8; 32] {
    sha256_of_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_request_id_and_account() {
        let id = RequestId::new("acme", "0b6f5a0e-6f3c-4d8e-9a51-3c1b2d7e9f00").unwrap();
        let sealed = id.seal("SG.abc.def");
        assert!(!sealed.windows(10).any(|w| w == b"SG.abc.def"));
        assert_eq!(id.open(&sealed).as_deref(), Some("SG.abc.def"));
        let other_id = RequestId::new("acme", "0b6f5a0e-6f3c-4d8e-9a51-3c1b2d7e9f01").unwrap();
        assert_eq!(other_id.open(&sealed), None);
        let other_account =
            RequestId::new("other", "0b6f5a0e-6f3c-4d8e-9a51-3c1b2d7e9f00").unwrap();
        assert_eq!(other_account.open(&sealed), None);
        assert_ne!(other_account.lookup(), id.lookup());
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(id.open(&tampered), None);
    }

    #[test]
    fn request_ids_are_long_enough_and_plain() {
        assert!(RequestId::new("a", "short")
            .unwrap_err()
            .contains("16 to 128"));
        assert!(RequestId::new("a", &"x".repeat(129)).is_err());
        assert!(RequestId::new("a", "has space in it ok?")
            .unwrap_err()
            .contains("' '"));
        assert!(RequestId::new("a", "abcdefghijklmnop").is_ok());
    }
}
