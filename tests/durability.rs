//! Durability: every CreateKey that returned OK survives `kill -9`, on both
//! stores (standalone: sled; fleet: the sidecar and etcd both killed, a new
//! sidecar reading what etcd kept); no change is acknowledged before its
//! fdatasync returns, and a failed one never is.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bearer, check, create, fleet, Etcd, Server, Strace};
use scopegate::grpc::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--max-keys-per-account", "100000"]);
    let acknowledged = create_until_killed(server).await;
    let server = Server::start(&data, &[]);
    assert_none_lost(&server, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9_of_the_sidecar_and_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let server = fleet::fleet(
        dir.path(),
        "a",
        &etcd,
        &["--max-keys-per-account", "100000"],
    );
    let acknowledged = create_until_killed_with(server, || etcd.kill9()).await;
    etcd.restart();
    etcd.wait_healthy();
    // A sidecar that never saw them: what etcd committed is what it serves.
    let server = fleet::fleet(dir.path(), "b", &etcd, &[]);
    assert_none_lost(&server, &acknowledged).await;
}

/// Creates keys from 16 concurrent writers until a few hundred are
/// acknowledged, then kills the server mid-stream; returns the tokens whose
/// create returned OK.
async fn create_until_killed(server: Server) -> Vec<String> {
    create_until_killed_with(server, || {}).await
}

async fn create_until_killed_with(mut server: Server, also_kill: impl FnOnce()) -> Vec<String> {
    let admin = server.admin_token.clone();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();

    // 16 concurrent writers, each creating keys until the server dies.
    let mut writers = Vec::new();
    for writer in 0..16 {
        let manage = server.manage().await;
        let admin = admin.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut manage = manage;
            for index in 0.. {
                let name = format!("w{writer}-{index}");
                match manage
                    .create_key(bearer(&admin, create("acme", &name, &["mail.send"])))
                    .await
                {
                    Ok(response) => acknowledged
                        .lock()
                        .unwrap()
                        .push(response.into_inner().token),
                    Err(_) => break,
                }
            }
        }));
    }
    // Let a few hundred creates land, then pull the plug mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 300 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    also_kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 300,
        "only {} creates were acknowledged",
        acknowledged.len()
    );
    acknowledged
}

async fn assert_none_lost(server: &Server, acknowledged: &[String]) {
    let mut authorize = server.authorize().await;
    let mut lost = 0;
    for token in acknowledged {
        if !authorize
            .check(check(token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner()
            .allowed
        {
            lost += 1;
        }
    }
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged keys were lost",
        acknowledged.len()
    );
}

/// A disk that refuses writes (RLIMIT_FSIZE: sled's log hits the limit and
/// every write past it fails with EFBIG) while keys are created and deleted.
/// The change whose persist failed is answered UNAVAILABLE, every later
/// change too, the process exits non-zero on its own, and after the restart
/// every acknowledged create and delete holds: no answer contradicted disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_persist_is_never_acknowledged_and_the_restart_matches_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 128 KiB for sled's log: a few hundred changes, then EFBIG. SIGXFSZ is
    // ignored so the write fails instead of killing the process.
    let mut server = Server::start_after(
        "ulimit -f 128; trap '' XFSZ",
        &data,
        &["--max-keys-per-account", "100000"],
    );
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut live: Vec<(String, String)> = Vec::new(); // (key id, token)
    let mut deleted: Vec<String> = Vec::new(); // tokens
    let mut failure = None;
    for index in 0..20_000 {
        let result = if index % 3 == 2 && !live.is_empty() {
            let (key_id, token) = live.remove(index % live.len());
            manage
                .delete_key(bearer(&admin, pb::DeleteKeyRequest { key_id }))
                .await
                .map(|_| deleted.push(token.clone()))
                .map_err(|status| (status, Some(token)))
        } else {
            manage
                .create_key(bearer(&admin, create("acme", "k", &["mail.send"])))
                .await
                .map(|response| {
                    let response = response.into_inner();
                    live.push((response.key.unwrap().key_id, response.token));
                })
                .map_err(|status| (status, None))
        };
        if let Err(error) = result {
            failure = Some(error);
            break;
        }
    }
    let (status, unacknowledged_delete) = failure.expect("the file size limit was never hit");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("could not persist") && status.message().contains("restarts"),
        "{}",
        status.message()
    );
    // Nothing more is accepted: refused, or the process is already gone.
    let after = manage
        .create_key(bearer(&admin, create("acme", "late", &["mail.send"])))
        .await;
    if let Err(status) = &after {
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    assert!(
        after.is_err(),
        "a change was acknowledged after a failed persist"
    );
    let exit = server
        .wait_exit(15)
        .expect("the server did not exit after its store failed");
    assert!(!exit.success(), "exited {exit}");
    assert!(
        server.log().contains("the store failed"),
        "{}",
        server.log()
    );

    let server = Server::start(&data, &[]);
    let mut authorize = server.authorize().await;
    for (_, token) in &live {
        let response = authorize
            .check(check(token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert!(response.allowed, "an acknowledged create was lost");
    }
    for token in &deleted {
        let response = authorize
            .check(check(token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.decision,
            pb::Decision::UnknownKey as i32,
            "an acknowledged delete came back"
        );
    }
    // The delete that was refused may or may not have reached the disk; Check
    // and GetKey must agree on which.
    if let Some(token) = unacknowledged_delete {
        let allowed = authorize
            .check(check(&token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner()
            .allowed;
        let key_id = token.split('.').nth(1).unwrap().to_owned();
        let found = server
            .manage()
            .await
            .get_key(bearer(&server.admin_token, pb::GetKeyRequest { key_id }))
            .await
            .is_ok();
        assert_eq!(allowed, found, "Check and GetKey disagree after restart");
    }
}

/// Every acknowledged change was `fdatasync`'d: sled's own flush only issues
/// `sync_file_range`. strace attaches to the running server and counts the
/// syncs while creates run one at a time (one group each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_batch_is_synced_to_stable_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let trace = dir.path().join("trace");
    let tracer = common::Strace::attach(&server, &["-e", "trace=fsync,fdatasync"], &trace);
    let mut manage = server.manage().await;
    const CREATES: usize = 20;
    for index in 0..CREATES {
        manage
            .create_key(bearer(
                &server.admin_token,
                create("acme", &format!("k{index}"), &["mail.send"]),
            ))
            .await
            .unwrap();
    }
    tracer.detach();
    let trace = std::fs::read_to_string(&trace).unwrap();
    // Two threads syncing at once are written as `fdatasync(11 <unfinished
    // ...>` and, later, `<... fdatasync resumed>) = 0`: the result is on the
    // second line.
    let syncs = trace
        .lines()
        .filter(|line| {
            (line.contains("fdatasync(") || line.contains("fdatasync resumed"))
                && line.contains("= 0")
        })
        .count();
    assert!(
        syncs >= CREATES,
        "{syncs} successful fdatasync calls for {CREATES} acknowledged creates:\n{trace}"
    );
}

/// With every fdatasync held for 300 ms by strace, no CreateKey answers
/// sooner: the reply waits for the sync (a lower bound, which a busy machine
/// only makes safer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_acknowledged_before_its_fdatasync_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let trace = dir.path().join("trace");
    let tracer = Strace::attach(
        &server,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=300000",
        ],
        &trace,
    );
    let mut manage = server.manage().await;
    for index in 0..3 {
        let started = Instant::now();
        manage
            .create_key(bearer(
                &server.admin_token,
                create("acme", &format!("k{index}"), &["mail.send"]),
            ))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "CreateKey answered after {took:?}, before its delayed fdatasync returned"
        );
    }
    tracer.detach();
    let syncs = std::fs::read_to_string(&trace).unwrap();
    assert!(syncs.contains("fdatasync("), "{syncs}");
}

/// An fdatasync that fails (EIO, injected by strace) fails the change with
/// UNAVAILABLE, the process stops non-zero, and after a restart every
/// acknowledged key is there and Check and GetKey agree on the refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_is_never_acknowledged_and_the_restart_agrees_with_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    let kept = manage
        .create_key(bearer(
            &server.admin_token,
            create("acme", "kept", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let _tracer = Strace::attach(
        &server,
        &["-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO"],
        &dir.path().join("trace"),
    );
    let refused = manage
        .create_key(bearer(
            &server.admin_token,
            create("acme", "refused", &["mail.send"]),
        ))
        .await
        .expect_err("a change whose fdatasync failed");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("fdatasync"), "{refused:?}");
    let status = server.wait_exit(20).expect("the server stops");
    assert!(!status.success(), "it stops non-zero: {status:?}");

    let data = server.data_dir.clone();
    drop(manage);
    drop(server);
    let server = Server::start(&data, &[]);
    assert_eq!(
        common::decision(&server, &kept.token, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    let listed = server
        .manage()
        .await
        .list_keys(bearer(
            &server.admin_token,
            pb::ListKeysRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for key in listed.keys {
        let got = server
            .manage()
            .await
            .get_key(bearer(
                &server.admin_token,
                pb::GetKeyRequest {
                    key_id: key.key_id.clone(),
                },
            ))
            .await;
        assert!(got.is_ok(), "ListKeys and GetKey agree on {}", key.key_id);
    }
}
