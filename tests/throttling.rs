//! Management credentials and reads are throttled per account and per
//! source, on every management door; decisions never are.

mod common;

use common::{bearer, create_manager, decision, list_keys, Server};
use scopegate::grpc::pb;
use tonic::Code;

/// Management reads by an API key are limited per account (bursts of
/// `--reads-per-account-per-sec`), with a retry delay; the admin is not.
#[tokio::test]
async fn management_reads_are_limited_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--reads-per-account-per-sec", "1"],
    );
    let manager = server
        .admin_create(create_manager("acme", "reader", &[]))
        .await
        .unwrap()
        .token;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(status) = list_keys(&server, &manager, "", "").await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("20 reads in a row exceed a burst of 1");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry in"), "{status:?}");
    let audit = common::list_audit(&server, &manager, Default::default()).await;
    assert_eq!(audit.unwrap_err().code(), Code::ResourceExhausted);
    for _ in 0..20 {
        list_keys(&server, &server.admin_token, "acme", "")
            .await
            .expect("the admin is not limited");
    }
}

/// A raw HTTP/1.1 exchange from `source` (a loopback address of our choice);
/// the status.
async fn status_from(source: &str, addr: &str, request: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer[9..12].parse().unwrap()
}

/// Failed credentials are throttled per address on every management door:
/// wrong bearers over gRPC and REST from one address are soon refused
/// (RESOURCE_EXHAUSTED, 429) without being looked at, while the admin's
/// right credential from another address still works (nobody can lock it
/// out), and decisions answer every bad token with its denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_credentials_are_throttled_on_every_management_door() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let rest = server.http_addr.clone().unwrap();
    let guess = "SG.AAAAAAAAAAAAAAAAAAAAAA.wrongwrongwrongwrongwrongwrongwrong";
    let list = |credential: &str| {
        format!("GET /v3/api_keys HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {credential}\r\non-behalf-of: acme\r\n\r\n")
    };
    let mut manage = server.manage().await;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let answer = manage
            .list_keys(bearer(guess, pb::ListKeysRequest::default()))
            .await
            .unwrap_err();
        codes.push(answer.code());
    }
    assert_eq!(codes[0], Code::Unauthenticated, "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    // The same address over REST: throttled too (one budget per address).
    assert_eq!(status_from("127.0.0.1", &rest, list(guess)).await, 429);
    // The admin from elsewhere is never locked out.
    assert_eq!(
        status_from("127.0.0.2", &rest, list(&server.admin_token)).await,
        200
    );
    // Decisions are never throttled: the bad token gets its denial.
    for _ in 0..20 {
        assert_eq!(
            decision(&server, guess, &["mail.send"]).await,
            pb::Decision::MalformedToken
        );
    }
    // Once the bucket refills, the address is heard again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        status_from("127.0.0.1", &rest, list(&server.admin_token)).await,
        200
    );
}
