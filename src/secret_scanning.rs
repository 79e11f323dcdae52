//! Leak reports from GitHub's secret scanning partner program: the public
//! keys GitHub publishes (read from a file, never fetched), the
//! ECDSA P-256 / SHA-256 signature over a report's raw body, and the
//! patterns a scanner matches scopegate's tokens with.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};

/// A report's body is refused above this.
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// Tokens in one report.
pub const MAX_REPORTED_TOKENS: usize = 1000;

/// The DER prefix of a P-256 public key (SubjectPublicKeyInfo) before its
/// 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// GitHub's published keys: identifier → uncompressed P-256 point.
#[derive(Debug, Clone, Default)]
pub struct ScanningKeys {
    keys: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("no Github-Public-Key-Identifier or Github-Public-Key-Signature header")]
    Missing,
    #[error("the public key identifier is not one of GitHub's published keys")]
    UnknownKey,
    #[error("the signature does not verify")]
    Invalid,
}

#[derive(serde::Deserialize)]
struct Published {
    public_keys: Vec<PublishedKey>,
}

#[derive(serde::Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

/// The keys file, read and parsed (at start and on SIGHUP).
pub fn read_keys(path: &std::path::Path) -> Result<ScanningKeys, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    ScanningKeys::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
}

impl ScanningKeys {
    /// GitHub's JSON as published at
    /// `api.github.com/meta/public_keys/secret_scanning`.
    pub fn parse(json: &str) -> Result<ScanningKeys, String> {
        let published: Published = serde_json::from_str(json).map_err(|error| error.to_string())?;
        let mut keys = Vec::with_capacity(published.public_keys.len());
        for key in published.public_keys {
            let point =
                p256_point(&key.key).map_err(|why| format!("key {}: {why}", key.key_identifier))?;
            keys.push((key.key_identifier, point));
        }
        if keys.is_empty() {
            return Err("no public keys".into());
        }
        Ok(ScanningKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `signature` (base64 of an ASN.1 DER ECDSA signature) over
    /// `body` with the published key named `key_id`.
    pub fn verify(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(SignatureError::Missing);
        };
        let (_, point) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or(SignatureError::UnknownKey)?;
        let signature = STANDARD
            .decode(signature.trim())
            .map_err(|_| SignatureError::Invalid)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(body, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// The PEM GitHub publishes for a P-256 public key (its uncompressed
/// point): for a keys file made here (tests, a mirror of GitHub's file).
pub fn public_key_pem(point: &[u8]) -> String {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

/// The uncompressed point of a PEM P-256 public key.
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----") && !line.is_empty())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| "not a PEM public key".to_owned())?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
        _ => Err("not an ECDSA P-256 public key".into()),
    }
}

/// The regular expression of this deployment's tokens (see `token.rs`):
/// prefix, 22-char key id, 43-char secret and a 6-char base62 checksum.
pub fn token_regex(prefix: &str) -> String {
    format!(
        r"\b{}\.[A-Za-z0-9_-]{{22}}\.[A-Za-z0-9_-]{{43}}[A-Za-z0-9]{{6}}\b",
        regex_escape(prefix)
    )
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric() && c != '_';
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    fn published(id: &str, pair: &EcdsaKeyPair) -> String {
        let pem = public_key_pem(pair.public_key().as_ref());
        serde_json::json!({"public_keys": [{"key_identifier": id, "key": pem, "is_current": true}]})
            .to_string()
    }

    #[test]
    fn a_report_signed_by_a_published_key_verifies_and_nothing_else_does() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let keys = ScanningKeys::parse(&published("abc", &pair)).unwrap();
        let body = br#"[{"token":"x","type":"t","url":"u","source":"content"}]"#;
        let signature = STANDARD.encode(pair.sign(&rng, body).unwrap());
        assert_eq!(keys.verify(Some("abc"), Some(&signature), body), Ok(()));
        assert_eq!(
            keys.verify(Some("abc"), Some(&signature), b"[]"),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            keys.verify(Some("other"), Some(&signature), body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(
            keys.verify(None, Some(&signature), body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(Some("abc"), Some("not base64!"), body),
            Err(SignatureError::Invalid)
        );
        assert!(ScanningKeys::parse(r#"{"public_keys": []}"#).is_err());
        assert!(ScanningKeys::parse(
            r#"{"public_keys": [{"key_identifier": "k", "key": "junk"}]}"#
        )
        .is_err());
    }
}
