//! Fleet mode's connection settings against a real etcd: TLS with a client
//! certificate, and etcd's own users with a role that only reaches a
//! non-default prefix (so a sidecar that strayed from `--etcd-prefix` would
//! be refused).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::fleet::{create_on, decision, eventually};
use common::{Etcd, Server, TestCa};
use scopegate::grpc::pb;

/// Retries `start` while etcd is still coming up (TLS etcd has no plain
/// health probe here).
fn start_when_etcd_answers(data: &std::path::Path, args: &[&str]) -> Server {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Server::try_start_for(data, args, Duration::from_secs(10)) {
            Ok(server) => return server,
            Err(log) if Instant::now() > deadline => panic!("sidecar did not start:\n{log}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_mode_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"));
    let etcd = Etcd::start_tls(dir.path(), &ca);
    let path = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let (ca_file, cert, key) = (path(&ca.ca), path(&ca.client_cert), path(&ca.client_key));
    let args = |extra: &[&str]| {
        let mut args = vec![
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd.endpoint.as_str(),
            "--etcd-ca-file",
            ca_file.as_str(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let with_cert = args(&["--etcd-cert-file", &cert, "--etcd-key-file", &key]);
    let with_cert: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let a = start_when_etcd_answers(&dir.path().join("a"), &with_cert);
    let b = start_when_etcd_answers(&dir.path().join("b"), &with_cert);
    let (_, token) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("the key reaches B through TLS etcd", || async {
        decision(&b, &token, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    // Without the client certificate etcd refuses the connection: the
    // sidecar never gets a first full read, so it never serves.
    let without_cert = args(&[]);
    let without_cert: Vec<&str> = without_cert.iter().map(String::as_str).collect();
    let refused =
        Server::try_start_for(&dir.path().join("c"), &without_cert, Duration::from_secs(3));
    assert!(
        refused.is_err(),
        "a sidecar without the client certificate served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_mode_with_etcd_users_and_a_non_default_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    // root first (etcd requires it), then a user whose role reaches only /team-a/.
    etcd.ctl(&["user", "add", "root:root-password-0123"]);
    etcd.ctl(&["user", "add", "sidecar:sidecar-password-0123"]);
    etcd.ctl(&["role", "add", "team-a"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "team-a",
        "--prefix=true",
        "readwrite",
        "/team-a/",
    ]);
    etcd.ctl(&["user", "grant-role", "sidecar", "team-a"]);
    etcd.ctl(&["auth", "enable"]);
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "sidecar-password-0123\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let password = password.to_str().unwrap().to_owned();
    let args = |prefix: &'static str| {
        vec![
            "--store".to_owned(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            etcd.endpoint.clone(),
            "--etcd-user".into(),
            "sidecar".into(),
            "--etcd-password-file".into(),
            password.clone(),
            "--etcd-prefix".into(),
            prefix.into(),
        ]
    };
    let team_a = args("/team-a/");
    let team_a: Vec<&str> = team_a.iter().map(String::as_str).collect();
    let a = Server::start(&dir.path().join("a"), &team_a);
    let b = Server::start(&dir.path().join("b"), &team_a);
    let (key_id, token) = create_on(&a, "acme", &["mail.send"]).await;
    eventually("the key reaches B", || async {
        decision(&b, &token, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    // It lives under the prefix, nowhere else.
    let listed = etcd.ctl(&[
        "--user",
        "root:root-password-0123",
        "get",
        "--prefix",
        "--keys-only",
        "/",
    ]);
    assert!(
        listed.contains(&format!("/team-a/keys/{key_id}")),
        "{listed}"
    );
    assert!(!listed.contains("/scopegate/v1/"), "{listed}");
    // The default prefix is outside the role: that sidecar never serves.
    let default_prefix = args("/scopegate/v1/");
    let default_prefix: Vec<&str> = default_prefix.iter().map(String::as_str).collect();
    let refused = Server::try_start_for(
        &dir.path().join("c"),
        &default_prefix,
        Duration::from_secs(3),
    );
    assert!(
        refused.is_err(),
        "a sidecar outside its role's prefix served"
    );
}

/// Fleet mode keeps audit events under an etcd lease as long as
/// `--audit-retention-days` plus an hour: etcd deletes them, no sidecar has to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_in_etcd_live_under_a_lease_of_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let sidecar = common::fleet::fleet(dir.path(), "a", &etcd, &["--audit-retention-days", "2"]);
    create_on(&sidecar, "acme", &["mail.send"]).await;
    let mut client = etcd.client().await;
    let events = client
        .get(
            "/scopegate/v1/audit/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let lease = events.kvs().first().expect("one audit event").lease();
    assert_ne!(lease, 0, "the event has a lease");
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    let expected = 2 * 86_400 + 3_600;
    assert!(
        ttl.granted_ttl() == expected && ttl.ttl() > expected - 120,
        "granted {} s, {} s left; expected {expected} s",
        ttl.granted_ttl(),
        ttl.ttl()
    );
}
