//! Roles in a fleet: a role on 1,000 keys narrowed through one sidecar
//! reaches every key on the other two (the time from the acknowledgment to
//! each key's first narrowed Check is measured and printed: BENCHMARKS.md
//! "Roles"); a sidecar stopped across role changes and a compaction
//! resyncs to the resolved sets; names are unique fleet-wide.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{decision, eventually, fleet};
use common::{bearer, check, create, Etcd, Server};
use scopegate::grpc::pb;
use tonic::Code;

async fn make_role(
    server: &Server,
    name: &str,
    scopes: &[&str],
) -> Result<pb::Role, tonic::Status> {
    server
        .manage()
        .await
        .create_role(bearer(
            &server.admin_token,
            pb::CreateRoleRequest {
                account_id: "acme".into(),
                name: name.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .map(|response| response.into_inner())
}

async fn regrant(server: &Server, role_id: &str, scopes: &[&str]) -> pb::Role {
    server
        .manage()
        .await
        .update_role(bearer(
            &server.admin_token,
            pb::UpdateRoleRequest {
                role_id: role_id.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Keys referencing `role`, made through `server` by 10 clients at once.
async fn keys_with_role(server: &Server, role: &str, count: usize) -> Vec<String> {
    let mut making = tokio::task::JoinSet::new();
    for client in 0..10 {
        let channel = server.channel().await;
        let (admin, role) = (server.admin_token.clone(), role.to_owned());
        making.spawn(async move {
            let mut manage = pb::manage_key_client::ManageKeyClient::new(channel);
            let mut tokens = Vec::new();
            for index in (client..count).step_by(10) {
                let request = pb::CreateKeyRequest {
                    role_ids: vec![role.clone()],
                    ..create("acme", &format!("k{index}"), &[])
                };
                tokens.push(
                    manage
                        .create_key(bearer(&admin, request))
                        .await
                        .unwrap()
                        .into_inner()
                        .token,
                );
            }
            tokens
        });
    }
    let mut tokens = Vec::new();
    while let Some(made) = making.join_next().await {
        tokens.extend(made.unwrap());
    }
    tokens
}

/// From `since`, how long until each token's Check for `scopes` on
/// `server` first comes back `wanted` (20 pollers, each over its share).
async fn first_seen(
    server: &Server,
    tokens: &[String],
    scopes: &[&str],
    wanted: pb::Decision,
    since: Instant,
) -> Vec<Duration> {
    let channel = server.channel().await;
    let mut polling = tokio::task::JoinSet::new();
    for chunk in tokens.chunks(tokens.len().div_ceil(20)) {
        let mut client = pb::authorize_client::AuthorizeClient::new(channel.clone());
        let mut waiting: Vec<pb::CheckRequest> =
            chunk.iter().map(|token| check(token, scopes)).collect();
        polling.spawn(async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !waiting.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{} keys never changed",
                    waiting.len()
                );
                let mut still = Vec::new();
                for request in waiting {
                    let answer = client.check(request.clone()).await.unwrap().into_inner();
                    if answer.decision == wanted as i32 {
                        seen.push(since.elapsed());
                    } else {
                        still.push(request);
                    }
                }
                waiting = still;
            }
            seen
        });
    }
    let mut seen = Vec::new();
    while let Some(done) = polling.join_next().await {
        seen.extend(done.unwrap());
    }
    seen.sort();
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_narrowed_on_one_sidecar_reaches_a_thousand_keys_on_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let flags = ["--max-keys-per-account", "2000"];
    let mut sidecars: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| fleet(dir.path(), name, &etcd, &flags))
        .collect();
    let sender = make_role(&sidecars[0], "sender", &["mail.send", "stats.read"])
        .await
        .unwrap();
    let tokens = keys_with_role(&sidecars[0], "sender", 1000).await;
    assert_eq!(tokens.len(), 1000);
    // Everywhere before the change: the last key made is allowed on b and c.
    for sidecar in &sidecars[1..] {
        eventually("the keys arrive", || async {
            decision(sidecar, &tokens[999], &["stats.read"]).await == pb::Decision::Allowed
        })
        .await;
    }
    // A name is taken once, fleet-wide (another sidecar is refused).
    let taken = make_role(&sidecars[1], "sender", &["mail.send"])
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    let asked = Instant::now();
    let narrowed = regrant(&sidecars[0], &sender.role_id, &["mail.send"]).await;
    let acknowledged = Instant::now();
    assert_eq!(narrowed.key_count, 1000);
    let (on_b, on_c) = tokio::join!(
        first_seen(
            &sidecars[1],
            &tokens,
            &["stats.read"],
            pb::Decision::InsufficientScope,
            acknowledged
        ),
        first_seen(
            &sidecars[2],
            &tokens,
            &["stats.read"],
            pb::Decision::InsufficientScope,
            acknowledged
        ),
    );
    let mut all: Vec<Duration> = on_b.iter().chain(&on_c).copied().collect();
    all.sort();
    assert_eq!(all.len(), 2000);
    println!(
        "role narrowed on 1,000 keys: UpdateRole {:?}; from its reply to each key's first narrowed Check on two other sidecars (2,000 key-sidecar pairs): p50 {:?}, p99 {:?}, max {:?}",
        acknowledged - asked,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all[all.len() - 1],
    );
    // The sidecar that took the change already decides on it.
    let on_a = first_seen(
        &sidecars[0],
        &tokens,
        &["stats.read"],
        pb::Decision::InsufficientScope,
        acknowledged,
    )
    .await;
    assert_eq!(on_a.len(), 1000);

    // Stopped across two changes and a compaction, c resyncs whole: the
    // role's new grants, resolved into every key.
    assert!(sidecars[2].terminate());
    regrant(&sidecars[0], &sender.role_id, &["stats.read"]).await;
    let viewer = make_role(&sidecars[1], "viewer", &["mail.send"])
        .await
        .unwrap();
    compact(&etcd).await;
    let c = fleet(dir.path(), "c", &etcd, &flags);
    sidecars[2] = c;
    let seen = first_seen(
        &sidecars[2],
        &tokens,
        &["stats.read"],
        pb::Decision::Allowed,
        Instant::now(),
    )
    .await;
    assert_eq!(seen.len(), 1000);
    assert_eq!(
        decision(&sidecars[2], &tokens[0], &["mail.send"]).await,
        pb::Decision::InsufficientScope
    );
    // And it follows again: a key given the new role through b.
    let roles = sidecars[2]
        .manage()
        .await
        .list_roles(bearer(
            &sidecars[2].admin_token,
            pb::ListRolesRequest {
                account_id: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .roles;
    let names: Vec<&str> = roles.iter().map(|role| role.name.as_str()).collect();
    assert_eq!(names, ["sender", "viewer"]);
    let (key, token) = {
        let made = sidecars[1]
            .manage()
            .await
            .create_key(bearer(
                &sidecars[1].admin_token,
                pb::CreateKeyRequest {
                    role_ids: vec![viewer.role_id.clone()],
                    ..create("acme", "late", &[])
                },
            ))
            .await
            .unwrap()
            .into_inner();
        (made.key.unwrap(), made.token)
    };
    assert_eq!(key.scopes, ["mail.send"]);
    eventually("the new key decides on c", || async {
        decision(&sidecars[2], &token, &["mail.send"]).await == pb::Decision::Allowed
    })
    .await;
    // A delete through c strips it on a.
    sidecars[2]
        .manage()
        .await
        .delete_role(bearer(
            &sidecars[2].admin_token,
            pb::DeleteRoleRequest {
                role_id: viewer.role_id.clone(),
            },
        ))
        .await
        .unwrap();
    eventually("the role's grants leave a", || async {
        decision(&sidecars[0], &token, &["mail.send"]).await == pb::Decision::InsufficientScope
    })
    .await;
}

async fn compact(etcd: &Etcd) {
    let mut client = etcd.client().await;
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
}
