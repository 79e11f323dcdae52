//! Stores written by earlier releases still load: a data dir written by the
//! release before the lifecycle fields (key records version 1) opens, every
//! key checks as before, and a change rewrites its record in today's version.

mod common;

use common::{bearer, check, Server};
use scopegate::grpc::pb;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_store_written_by_the_previous_release_loads() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("tokens.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture.join("sled"), &data.join("sled"));
    for round in 0..2 {
        let mut server = Server::start(&data, &[]);
        for key in tokens.as_array().unwrap() {
            let scopes: Vec<&str> = key["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let response = server
                .authorize()
                .await
                .check(check(key["token"].as_str().unwrap(), &scopes))
                .await
                .unwrap()
                .into_inner();
            assert!(response.allowed, "round {round}: {response:?}");
            let view = server
                .manage()
                .await
                .get_key(bearer(
                    &server.admin_token,
                    pb::GetKeyRequest {
                        key_id: key["key_id"].as_str().unwrap().into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(view.enabled && view.expire_time.is_none() && view.allowed_cidrs.is_empty());
        }
        if round == 0 {
            // A change writes the record in today's version; it loads too.
            server
                .manage()
                .await
                .update_key(bearer(
                    &server.admin_token,
                    pb::UpdateKeyRequest {
                        key_id: tokens[0]["key_id"].as_str().unwrap().into(),
                        metadata: Some(pb::StringMap {
                            entries: [("migrated".to_owned(), "yes".to_owned())]
                                .into_iter()
                                .collect(),
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap();
        }
        assert!(server.terminate());
    }
}
