//! Retrying a CreateKey whose answer was lost: with a request id, the retry
//! returns the first result (same key, same token), never a second key;
//! through the real server, with its syncs slowed by strace so the client's
//! deadline is shorter than the commit.

mod common;

use std::time::Duration;

use common::fleet::{eventually, fleet};
use common::{bearer, create, Etcd, Server, Strace};
use scopegate::grpc::pb;
use tonic::Code;

const REQUEST_ID: &str = "6f1c2b9e-0d4a-4c61-9b7e-2a5f8c3d1e70";

async fn key_ids(server: &Server, account: &str) -> Vec<String> {
    let listed = server
        .manage()
        .await
        .list_keys(bearer(
            &server.admin_token,
            pb::ListKeysRequest {
                account_id: account.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    listed.keys.into_iter().map(|key| key.key_id).collect()
}

/// Sends `request` with a deadline shorter than the commit: the caller gives
/// up (its own timer: CANCELLED, or the server's answer: DEADLINE_EXCEEDED)
/// although the change goes on.
async fn cut_by_deadline(server: &Server, request: pb::CreateKeyRequest, deadline: Duration) {
    let mut cut = bearer(&server.admin_token, request);
    cut.set_timeout(deadline);
    let status = server
        .manage()
        .await
        .create_key(cut)
        .await
        .expect_err("the commit outlasts the deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_with_its_request_id_makes_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // Every fdatasync takes 400 ms from here on.
    let tracer = Strace::attach(
        &server,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=400000",
        ],
        &dir.path().join("trace"),
    );
    let request = pb::CreateKeyRequest {
        request_id: REQUEST_ID.into(),
        ..create("acme", "mailer", &["mail.send"])
    };
    cut_by_deadline(&server, request.clone(), Duration::from_millis(50)).await;
    eventually("the cut create completes on its own", || async {
        key_ids(&server, "acme").await.len() == 1
    })
    .await;
    let mut manage = server.manage().await;
    let retried = manage
        .create_key(bearer(&server.admin_token, request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = manage
        .create_key(bearer(&server.admin_token, request.clone()))
        .await
        .unwrap()
        .into_inner();
    tracer.detach();
    assert_eq!(retried.key, again.key, "every retry: the first key");
    assert_eq!(retried.token, again.token, "and its token");
    let key_id = retried.key.unwrap().key_id;
    assert_eq!(
        key_ids(&server, "acme").await,
        vec![key_id.clone()],
        "one key"
    );
    let check = server
        .authorize()
        .await
        .check(common::check(&retried.token, &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed, "the returned token is the key's: {check:?}");

    // The same id for another request is refused; without an id, a retry
    // is a second key (what the id is for).
    let other = pb::CreateKeyRequest {
        name: "another".into(),
        ..request.clone()
    };
    let status = manage
        .create_key(bearer(&server.admin_token, other))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("request_id:"), "{status:?}");
    let plain = create("acme", "mailer", &["mail.send"]);
    manage
        .create_key(bearer(&server.admin_token, plain.clone()))
        .await
        .unwrap();
    assert_eq!(key_ids(&server, "acme").await.len(), 2);
    // A short or odd request id is refused with the rule.
    let short = pb::CreateKeyRequest {
        request_id: "abc".into(),
        ..plain
    };
    let status = manage
        .create_key(bearer(&server.admin_token, short))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("16 to 128"), "{status:?}");

    // The request id survives a restart (it is filed with the key).
    let data = server.data_dir.clone();
    drop(manage);
    drop(server);
    let server = Server::start(&data, &[]);
    let after = server.admin_create(request).await.unwrap();
    assert_eq!(after.key.unwrap().key_id, key_id);
    assert_eq!(after.token, retried.token);
    // Nothing on disk holds the token in the clear.
    for file in common::files_under(&data) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(retried.token.len())
                .any(|window| window == retried.token.as_bytes()),
            "{} holds the token",
            file.display()
        );
    }
}

/// Fleet mode: concurrent retries on two sidecars of one request id make one
/// key, and each gets its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_on_two_sidecars_make_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    etcd.wait_healthy();
    let a = fleet(dir.path(), "a", &etcd, &[]);
    let b = fleet(dir.path(), "b", &etcd, &[]);
    let request = pb::CreateKeyRequest {
        request_id: REQUEST_ID.into(),
        ..create("acme", "mailer", &["mail.send"])
    };
    let send = |server: &Server| {
        let (addr, admin, request) = (
            server.addr.clone(),
            server.admin_token.clone(),
            request.clone(),
        );
        tokio::spawn(async move {
            let mut client = pb::manage_key_client::ManageKeyClient::connect(addr)
                .await
                .unwrap();
            client
                .create_key(bearer(&admin, request))
                .await
                .map(|response| response.into_inner())
        })
    };
    let tasks: Vec<_> = (0..4)
        .map(|index| send(if index % 2 == 0 { &a } else { &b }))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().expect("every retry succeeds"));
    }
    for result in &results[1..] {
        assert_eq!(
            result.key.as_ref().unwrap().key_id,
            results[0].key.as_ref().unwrap().key_id
        );
        assert_eq!(result.token, results[0].token);
    }
    assert_eq!(key_ids(&a, "acme").await.len(), 1);
}

/// The server's own `--request-timeout-ms` cuts a management call that
/// waits on a slow disk (fdatasync held 600 ms by strace): the client hears
/// DEADLINE_EXCEEDED, and the change completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_request_timeout_cuts_a_slow_change_that_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--request-timeout-ms", "150"]);
    let tracer = Strace::attach(
        &server,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_exit=600000",
        ],
        &dir.path().join("trace"),
    );
    // No client deadline: a DEADLINE_EXCEEDED can only be the server's.
    let status = server
        .admin_create(create("acme", "slow", &["mail.send"]))
        .await
        .expect_err("the fdatasync outlasts the server's timeout");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("150 ms"), "{status:?}");
    eventually("the cut create completes on its own", || async {
        key_ids(&server, "acme").await.len() == 1
    })
    .await;
    tracer.detach();
}

/// A request id belongs to the caller that sent it: another manager of the
/// same account sending the same id and body gets neither the first key nor
/// its token (a refused reuse), while the first caller's retry still gets
/// its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_bound_to_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let manager = |name: &str| common::create_manager("acme", name, &["mail.send"]);
    let first = server.admin_create(manager("a")).await.unwrap().token;
    let second = server.admin_create(manager("b")).await.unwrap().token;
    let request = || pb::CreateKeyRequest {
        request_id: REQUEST_ID.into(),
        ..create("", "mailer", &["mail.send"])
    };
    let mut manage = server.manage().await;
    let made = manage
        .create_key(bearer(&first, request()))
        .await
        .unwrap()
        .into_inner();
    let stolen = manage.create_key(bearer(&second, request())).await;
    let status = stolen.expect_err("another caller's retry must not return the first key");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("request_id"), "{status:?}");
    assert!(!status
        .message()
        .contains(&made.key.as_ref().unwrap().key_id));
    let retried = manage
        .create_key(bearer(&first, request()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.token, made.token);
    assert_eq!(key_ids(&server, "acme").await.len(), 3);
}
