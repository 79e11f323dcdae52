//! Page tokens stay inside their listing: another account, filter or
//! deployment cannot use them.

mod common;

use common::{bearer, list_keys, Server};
use scopegate::grpc::pb;
use tonic::Code;

fn assert_foreign_token(what: &str, result: Result<impl std::fmt::Debug, tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with("page_token:"),
        "{what}: {status:?}"
    );
}

/// Page tokens are opaque and bound to the listing that issued them: one
/// from another account, another filter or a hand-made cursor is refused,
/// never followed; and a tenant's pages list exactly its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_stay_inside_their_listing() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut acme_ids = Vec::new();
    for account in ["acme", "other", "acme", "other", "other"] {
        let created = manage
            .create_key(bearer(&admin, common::create(account, "k", &["mail.send"])))
            .await
            .unwrap()
            .into_inner();
        if account == "acme" {
            acme_ids.push(created.key.unwrap().key_id);
        }
    }
    let reader = manage
        .create_key(bearer(
            &admin,
            pb::CreateKeyRequest {
                grants: vec![pb::Grant {
                    resource: "api_keys".into(),
                    access: pb::Access::Read as i32,
                }],
                ..common::create("acme", "reader", &[])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    acme_ids.push(reader.key.unwrap().key_id);
    let reader = reader.token;

    // ListKeys: the admin's token for "other" is no token of acme's listing.
    let other_page = list_keys(&server, &admin, "other", "").await.unwrap();
    assert!(!other_page.next_page_token.is_empty());
    assert_foreign_token(
        "another account's ListKeys token",
        list_keys(&server, &reader, "", &other_page.next_page_token).await,
    );
    // A raw index key, as tokens were before they were bound.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"other\0");
    assert_foreign_token("a raw cursor", list_keys(&server, &reader, "", &raw).await);
    // Acme's own pages walk exactly its keys.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = list_keys(&server, &reader, "", &token).await.unwrap();
        seen.extend(page.keys.into_iter().map(|key| key.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    acme_ids.sort();
    assert_eq!(seen, acme_ids);

    // ListAuditEvents: bound to account and filter.
    let request = |account: &str, key_id: &str, token: &str| pb::ListAuditEventsRequest {
        account_id: account.into(),
        key_id: key_id.into(),
        page_size: 1,
        page_token: token.into(),
        ..Default::default()
    };
    let other_events = common::list_audit(&server, &admin, request("other", "", ""))
        .await
        .unwrap();
    assert_foreign_token(
        "another account's audit token",
        common::list_audit(
            &server,
            &reader,
            request("", "", &other_events.next_page_token),
        )
        .await,
    );
    let acme_first = common::list_audit(&server, &reader, request("", "", ""))
        .await
        .unwrap();
    assert_foreign_token(
        "a token of another filter",
        common::list_audit(
            &server,
            &reader,
            request("", &acme_ids[0], &acme_first.next_page_token),
        )
        .await,
    );
    let (mut events, mut token) = (Vec::new(), String::new());
    loop {
        let page = common::list_audit(&server, &reader, request("", "", &token))
            .await
            .unwrap();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(events.len(), 3, "acme's three creates: {events:?}");
    assert!(events.iter().all(|event| event.account_id == "acme"));
    let one_key = common::list_audit(&server, &reader, request("", &acme_ids[1], ""))
        .await
        .unwrap();
    assert_eq!(one_key.events.len(), 1);
    assert_eq!(one_key.events[0].key_id, acme_ids[1]);
}
