//! Crash durability: every CreateKey that returned OK survives `kill -9`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bearer, check, create, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--max-keys-per-account", "100000"]);
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
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 300,
        "only {} creates were acknowledged",
        acknowledged.len()
    );

    let server = Server::start(&data, &[]);
    let mut authorize = server.authorize().await;
    let mut lost = 0;
    for token in &acknowledged {
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
