//! A leak reported to one sidecar (GitHub's contract, signed with a P-256
//! key pair made here with ring) disables the key on every sidecar of a
//! fleet; the time from the report's answer to each sidecar's refusal is
//! printed. The contract's details are in tests/python/test_leaks.py.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::fleet::{create_on, decision, eventually, fleet};
use common::{http_request, Etcd};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use scopegate::grpc::pb;

/// GitHub's published-keys file for one P-256 public key.
fn published(id: &str, pair: &EcdsaKeyPair) -> String {
    let pem = scopegate::secret_scanning::public_key_pem(pair.public_key().as_ref());
    serde_json::json!({"public_keys": [{"key_identifier": id, "key": pem, "is_current": true}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_reported_to_one_sidecar_disables_the_key_on_every_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let keys = dir.path().join("github-keys.json");
    std::fs::write(&keys, published("gh-1", &pair)).unwrap();
    let etcd = Etcd::start(dir.path());
    let flags = ["--github-scanning-keys", keys.to_str().unwrap()];
    let sidecars: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| fleet(dir.path(), name, &etcd, &flags))
        .collect();
    let (key_id, token) = create_on(&sidecars[0], "acme", &["mail.send"]).await;
    for sidecar in &sidecars {
        eventually("the key decides everywhere", || async {
            decision(sidecar, &token, &["mail.send"]).await == pb::Decision::Allowed
        })
        .await;
    }
    let body = serde_json::json!([{"token": token, "type": "scopegate_api_key",
        "url": "https://github.com/o/r/blob/x", "source": "content"}])
    .to_string();
    let signature = STANDARD.encode(pair.sign(&rng, body.as_bytes()).unwrap());
    let (status, _, answer) = http_request(
        sidecars[0].http_addr.as_deref().unwrap(),
        "POST",
        "/secret-scanning/github",
        &[
            ("Content-Type", "application/json"),
            ("Github-Public-Key-Identifier", "gh-1"),
            ("Github-Public-Key-Signature", &signature),
        ],
        Some(&body),
    );
    let answered = Instant::now();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("true_positive"), "{answer}");
    let mut took = Vec::new();
    for sidecar in &sidecars {
        eventually("the leaked key is refused everywhere", || async {
            decision(sidecar, &token, &["mail.send"]).await == pb::Decision::Disabled
        })
        .await;
        took.push(answered.elapsed());
    }
    println!("leak reported to a: refused on a, b, c after {took:?} (from the report's answer)");
    assert!(took.iter().all(|took| *took < Duration::from_secs(10)));
    let shown = sidecars[2]
        .manage()
        .await
        .get_key(common::bearer(
            &sidecars[2].admin_token,
            pb::GetKeyRequest { key_id },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!shown.enabled);
    assert_eq!(shown.exposed_url, "https://github.com/o/r/blob/x");
    assert!(shown.exposed_time.is_some());
}
