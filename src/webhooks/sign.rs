//! Standard Webhooks signing: `webhook-id`, `webhook-timestamp` (unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `id.timestamp.body`, keyed by the secret's bytes (`whsec_<base64>`).
//! Several signatures are space-separated (a rotated secret beside the new).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh endpoint secret: 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// `v1,<signature>` of one message under one secret (`None`: not a secret
/// this module made).
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    Some(format!("v1,{}", STANDARD.encode(context.sign().as_ref())))
}

/// The `webhook-signature` header value: one signature per secret.
pub fn header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|secret| signature(secret, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_fresh_and_sign() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let both = header(&[&a, &b], "id", 1, b"{}");
        assert_eq!(both.split(' ').count(), 2);
        assert!(signature("not-a-secret", "id", 1, b"{}").is_none());
    }
}
