//! Backup from a running server, offline restore, and identical checks after.

mod common;

use std::process::Command;

use common::{bearer, check, create, create_manager, Server, BIN};
use scopegate::grpc::pb;
use tonic::Code;

const SCOPES: [&str; 6] = [
    "mail.send",
    "stats.read",
    "billing.read",
    "api_keys.read",
    "whitelabel.update",
    "mail.batch.read",
];

async fn decisions(server: &Server, tokens: &[String]) -> Vec<(bool, i32, Vec<String>)> {
    let mut authorize = server.authorize().await;
    let mut out = Vec::new();
    for token in tokens {
        for scope in SCOPES {
            let response = authorize
                .check(check(token, &[scope]))
                .await
                .unwrap()
                .into_inner();
            out.push((response.allowed, response.decision, response.missing_scopes));
        }
    }
    out
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (account, scopes) in [
        ("acme", vec!["mail.send", "stats.read"]),
        ("acme", vec!["billing.read"]),
        ("globex", vec!["api_keys.read", "whitelabel.update"]),
        ("globex", vec!["mail.batch.read"]),
    ] {
        let created = manage
            .create_key(bearer(&admin, create(account, "k", &scopes)))
            .await
            .unwrap()
            .into_inner();
        tokens.push(created.token);
        ids.push(created.key.unwrap().key_id);
    }
    manage
        .update_key(bearer(
            &admin,
            pb::UpdateKeyRequest {
                key_id: ids[0].clone(),
                scopes: vec!["mail.send".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    manage
        .delete_key(bearer(
            &admin,
            pb::DeleteKeyRequest {
                key_id: ids[3].clone(),
            },
        ))
        .await
        .unwrap();
    let before = decisions(&server, &tokens).await;

    // Only the admin may take a backup.
    let api_key = manage
        .create_key(bearer(&admin, create_manager("acme", "mgr", &[])))
        .await
        .unwrap()
        .into_inner();
    let mut admin_client = pb::admin_client::AdminClient::new(server.channel().await);
    let refused = admin_client
        .backup(bearer(&api_key.token, pb::BackupRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    manage
        .delete_key(bearer(
            &admin,
            pb::DeleteKeyRequest {
                key_id: api_key.key.unwrap().key_id,
            },
        ))
        .await
        .unwrap();

    let file = dir.path().join("backup.jsonl");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &admin).unwrap();
    let (code, out, err) = cli(&[
        "backup",
        "--server",
        &server.addr,
        "--auth-file",
        token_file.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("backed up 3 keys and 0 roles to {}", file.display())
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    for token in &tokens {
        assert!(
            !exported.contains(token.rsplit('.').next().unwrap()),
            "a secret is in the backup"
        );
    }
    drop(manage);
    drop(admin_client);
    assert!(tokio::task::block_in_place(|| server.terminate()));

    let restored = dir.path().join("restored");
    let (code, out, err) = cli(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("restored 3 keys"), "{out}");
    // Restoring into a store that holds keys is refused.
    let (code, _, err) = cli(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("already holds keys"), "{err}");

    let server = Server::start(&restored, &[]);
    assert_eq!(
        decisions(&server, &tokens).await,
        before,
        "every key checks identically after restore"
    );
    let mut manage = server.manage().await;
    let listed = manage
        .list_keys(bearer(&server.admin_token, pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 3);
    let first = manage
        .get_key(bearer(
            &server.admin_token,
            pb::GetKeyRequest {
                key_id: ids[0].clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.scopes, vec!["mail.send"]);
}

/// A backup edited by hand is held to the API's rules on restore: the line
/// at fault is named, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_holds_a_backup_to_the_api_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    for name in ["one", "two"] {
        manage
            .create_key(bearer(
                &server.admin_token,
                create("acme", name, &["mail.send"]),
            ))
            .await
            .unwrap();
    }
    let file = dir.path().join("backup.jsonl");
    server.backup(&file);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let cases: [(&str, serde_json::Value, &str); 11] = [
        (
            "account_id",
            "has space".into(),
            "account_id: must not contain whitespace",
        ),
        (
            "allowed_cidrs",
            serde_json::json!(["not-a-cidr"]),
            "allowed_cidrs",
        ),
        ("metadata", serde_json::json!({"bad key!": "v"}), "metadata"),
        ("name", "".into(), "name: is required"),
        ("version", 9.into(), "version: record version 9"),
        // Typed fields: a wrong type is named, never dropped (an allowlist
        // of `[5]` must not restore as "any address").
        (
            "allowed_cidrs",
            serde_json::json!([5]),
            "allowed_cidrs[0]: invalid type: integer `5`, expected a string",
        ),
        (
            "metadata",
            serde_json::json!({"tier": 5}),
            "metadata.tier: invalid type",
        ),
        (
            "rate_limits",
            serde_json::json!([{"name": "n", "limit": 5, "window_secs": 60, "scopes": [7]}]),
            "rate_limits[0].scopes[0]: invalid type",
        ),
        ("disabled", "yes".into(), "disabled: invalid type"),
        ("secret_hash", "zz".into(), "secret_hash: Invalid character"),
        // A field this build does not know (a newer release's) is refused.
        ("owner", "x".into(), "unknown field `owner`"),
    ];
    for (index, (field, value, expected)) in cases.into_iter().enumerate() {
        let mut edited = lines.clone();
        edited[1][field] = value;
        let text: String = edited.iter().map(|line| format!("{line}\n")).collect();
        let input = dir.path().join(format!("edited-{index}.jsonl"));
        std::fs::write(&input, text).unwrap();
        let target = dir.path().join(format!("restored-{index}"));
        let (code, _, err) = cli(&[
            "restore",
            "--in",
            input.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{field}: {err}");
        assert!(
            err.contains("line 2") && err.contains(expected),
            "{field}: {err}"
        );
        assert!(!target.join("sled").exists(), "{field}: nothing is written");
    }
    // The per-account cap holds for restores too.
    let target = dir.path().join("capped");
    let (code, _, err) = cli(&[
        "restore",
        "--in",
        file.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
        "--max-keys-per-account",
        "1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("maximum of 1 keys"), "{err}");
}
