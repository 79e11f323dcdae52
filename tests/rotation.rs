//! Rotation through the real server: a rotated-out secret decides for its
//! overlap but never manages, on any door.

mod common;

use common::{bearer, create_manager, decision, Server};
use scopegate::grpc::pb;
use tonic::Code;

fn rotate(key_id: &str, overlap_secs: i64) -> pb::RotateKeyRequest {
    pb::RotateKeyRequest {
        key_id: key_id.into(),
        overlap: Some(prost_types::Duration {
            seconds: overlap_secs,
            nanos: 0,
        }),
    }
}

fn assert_previous_secret_refused(what: &str, result: Result<(), tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains("previous secret"),
        "{what}: the message says why: {}",
        status.message()
    );
}

/// An owner rotates because a secret leaked, with an overlap so deployments
/// can roll: the leaked secret keeps passing Check until the overlap ends, and
/// can do nothing else (it cannot rotate the owner out).
#[tokio::test]
async fn a_rotated_out_secret_decides_but_never_manages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut manage = server.manage().await;
    let owner = manage
        .create_key(bearer(
            &server.admin_token,
            create_manager("acme", "owner", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let key_id = owner.key.as_ref().unwrap().key_id.clone();
    let leaked = owner.token;
    let rotated = manage
        .rotate_key(bearer(&leaked, rotate(&key_id, 3600)))
        .await
        .unwrap()
        .into_inner();
    let current = rotated.token;

    // Decisions: both secrets, for the overlap.
    for token in [&leaked, &current] {
        assert_eq!(
            decision(&server, token, &["mail.send"]).await,
            pb::Decision::Allowed
        );
    }

    // Management: never with the previous secret.
    let rotate_result = manage
        .rotate_key(bearer(&leaked, rotate(&key_id, 0)))
        .await
        .map(drop);
    assert_previous_secret_refused("RotateKey", rotate_result);
    let update = pb::UpdateKeyRequest {
        key_id: key_id.clone(),
        name: Some("taken".into()),
        ..Default::default()
    };
    let update_result = manage.update_key(bearer(&leaked, update)).await.map(drop);
    assert_previous_secret_refused("UpdateKey", update_result);
    let create_result = manage
        .create_key(bearer(
            &leaked,
            create_manager("acme", "attacker", &["mail.send"]),
        ))
        .await
        .map(drop);
    assert_previous_secret_refused("CreateKey", create_result);
    let get = pb::GetKeyRequest {
        key_id: key_id.clone(),
    };
    let get_result = manage.get_key(bearer(&leaked, get)).await.map(drop);
    assert_previous_secret_refused("GetKey", get_result);
    let list = pb::ListKeysRequest::default();
    let list_result = manage.list_keys(bearer(&leaked, list)).await.map(drop);
    assert_previous_secret_refused("ListKeys", list_result);
    let delete = pb::DeleteKeyRequest {
        key_id: key_id.clone(),
    };
    let delete_result = manage.delete_key(bearer(&leaked, delete)).await.map(drop);
    assert_previous_secret_refused("DeleteKey", delete_result);

    // The owner's new secret still works, for both.
    assert_eq!(
        decision(&server, &current, &["mail.send"]).await,
        pb::Decision::Allowed
    );
    let again = manage
        .rotate_key(bearer(&current, rotate(&key_id, 0)))
        .await
        .unwrap()
        .into_inner();
    let newest = again.token;
    assert_eq!(
        decision(&server, &leaked, &["mail.send"]).await,
        pb::Decision::UnknownKey,
        "overlap 0 ends the previous secret at once"
    );

    // The audit trail tells the secrets apart when a key acts on itself.
    let events = manage
        .list_audit_events(bearer(
            &newest,
            pb::ListAuditEventsRequest {
                key_id: key_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let rotations: Vec<&pb::AuditEvent> = events.iter().filter(|e| e.action == "rotate").collect();
    assert_eq!(rotations.len(), 2, "{events:?}");
    let first = &rotations[0].actor_secret;
    let second = &rotations[1].actor_secret;
    assert!(!first.is_empty() && !second.is_empty(), "{rotations:?}");
    assert_ne!(first, second, "each rotation names the secret that acted");
    assert_eq!(
        first,
        &owner.key.as_ref().unwrap().secret_fingerprint,
        "the first rotation was made with the created secret"
    );
    assert_eq!(
        second,
        &rotated.key.as_ref().unwrap().secret_fingerprint,
        "the second with the secret the first rotation issued"
    );
    assert_ne!(
        again.key.as_ref().unwrap().secret_fingerprint,
        *second,
        "a rotation changes the fingerprint"
    );
}
