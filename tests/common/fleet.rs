//! Fleet-mode helpers: sidecars on a real etcd, and polling for what arrives
//! through the watch.

use std::future::Future;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // used by the fleet test files, not by every binary
pub use super::decision;
use super::{bearer, create, Etcd, Server};

pub fn fleet(dir: &std::path::Path, name: &str, etcd: &Etcd, extra: &[&str]) -> Server {
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start(&dir.join(name), &args)
}

/// Polls `probe` until it returns true, for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn create_on(server: &Server, account: &str, scopes: &[&str]) -> (String, String) {
    let response = server
        .manage()
        .await
        .create_key(bearer(&server.admin_token, create(account, "k", scopes)))
        .await
        .unwrap()
        .into_inner();
    (response.key.unwrap().key_id, response.token)
}
