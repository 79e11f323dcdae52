//! Key lifecycle through the real server: expiry and not-before, disable and
//! enable, rotation with an overlap, IP allowlists, metadata, and the limits
//! on who may change them.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::lifecycle::{create_with, decision, in_ms, update};
use common::{bearer, check, create, create_manager, ext_authz, Server};
use scopegate::grpc::pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_crosses_cleanly_under_a_stream_of_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = create_with(
        &server,
        pb::CreateKeyRequest {
            expire_time: Some(in_ms(1200)),
            ..create("acme", "short", &["mail.send"])
        },
    )
    .await
    .unwrap();
    let view = key.key.clone().unwrap();
    assert!(view.expire_time.is_some());
    let mut authorize = server.authorize().await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let unix_ms = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let mut last_allowed_sent = 0;
    let first_expired_received = loop {
        let sent = unix_ms();
        let response = authorize
            .check(check(&key.token, &["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        let received = unix_ms();
        let decision = pb::Decision::try_from(response.decision).unwrap();
        if seen.last() != Some(&decision) {
            seen.push(decision);
        }
        if decision == pb::Decision::Allowed {
            last_allowed_sent = sent;
        }
        if decision == pb::Decision::Expired || Instant::now() > deadline {
            break received;
        }
    };
    // The switch happens at expire_time, on the same clock: the last allow
    // was asked before it, the first denial answered after it.
    let expire = view.expire_time.as_ref().unwrap();
    let expire_ms = expire.seconds * 1000 + i64::from(expire.nanos) / 1_000_000;
    assert!(
        last_allowed_sent < expire_ms && expire_ms <= first_expired_received,
        "allowed until {last_allowed_sent}, expired from {first_expired_received}, expire_time {expire_ms}"
    );
    // A few more after the crossing: never allowed again.
    for _ in 0..50 {
        assert_eq!(
            decision(&server, check(&key.token, &["mail.send"])).await,
            pb::Decision::Expired
        );
    }
    assert_eq!(seen, [pb::Decision::Allowed, pb::Decision::Expired]);
    let (name, status, _) = ext_authz(&server, &key.token, None).await;
    assert_eq!((name.as_str(), status), ("EXPIRED", 401));
    // An expired key cannot manage either.
    let manager = create_with(
        &server,
        pb::CreateKeyRequest {
            expire_time: Some(in_ms(300)),
            ..create_manager("acme", "m", &["mail.send"])
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refused = server
        .manage()
        .await
        .create_key(bearer(&manager.token, create("", "x", &["mail.send"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[tokio::test]
async fn not_before_and_the_maximum_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-key-lifetime-secs", "60"]);
    let missing = create_with(&server, create("acme", "forever", &["mail.send"]))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing.message().starts_with("expire_time: is required"),
        "{}",
        missing.message()
    );
    let too_long = create_with(
        &server,
        pb::CreateKeyRequest {
            expire_time: Some(in_ms(120_000)),
            ..create("acme", "long", &["mail.send"])
        },
    )
    .await
    .unwrap_err();
    assert!(
        too_long.message().contains("more than 60 s"),
        "{}",
        too_long.message()
    );
    let past = create_with(
        &server,
        pb::CreateKeyRequest {
            expire_time: Some((SystemTime::now() - Duration::from_secs(5)).into()),
            ..create("acme", "past", &["mail.send"])
        },
    )
    .await
    .unwrap_err();
    assert_eq!(past.message(), "expire_time: is in the past");
    let later = create_with(
        &server,
        pb::CreateKeyRequest {
            expire_time: Some(in_ms(30_000)),
            not_before: Some(in_ms(700)),
            ..create("acme", "later", &["mail.send"])
        },
    )
    .await
    .unwrap();
    assert_eq!(
        decision(&server, check(&later.token, &["mail.send"])).await,
        pb::Decision::Expired
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        decision(&server, check(&later.token, &["mail.send"])).await,
        pb::Decision::Allowed
    );
    // Removing the expiry is refused under a maximum lifetime.
    let cleared = update(
        &server,
        &server.admin_token,
        pb::UpdateKeyRequest {
            key_id: later.key.unwrap().key_id,
            clear_expire_time: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        cleared.message().starts_with("expire_time: is required"),
        "{}",
        cleared.message()
    );
}

#[tokio::test]
async fn disable_enable_and_who_may_do_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let strong = server.admin_key(&["mail.send", "stats.read"]).await;
    let strong_id = strong.key.unwrap().key_id;
    let disable = |enabled| pb::UpdateKeyRequest {
        key_id: strong_id.clone(),
        enabled: Some(enabled),
        ..Default::default()
    };
    let view = update(&server, &server.admin_token, disable(false))
        .await
        .unwrap();
    assert!(!view.enabled);
    assert_eq!(
        decision(&server, check(&strong.token, &["mail.send"])).await,
        pb::Decision::Disabled
    );
    assert_eq!(ext_authz(&server, &strong.token, None).await.1, 401);
    let view = update(&server, &server.admin_token, disable(true))
        .await
        .unwrap();
    assert!(view.enabled);
    assert_eq!(
        decision(&server, check(&strong.token, &["mail.send"])).await,
        pb::Decision::Allowed
    );

    // A lesser key can neither disable nor rotate a stronger one.
    let lesser = server
        .manage()
        .await
        .create_key(bearer(
            &server.admin_token,
            create_manager("acme", "lesser", &["mail.send"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let refused = update(&server, &lesser.token, disable(false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("stats.read"),
        "{}",
        refused.message()
    );
    let refused = server
        .manage()
        .await
        .rotate_key(bearer(
            &lesser.token,
            pb::RotateKeyRequest {
                key_id: strong_id.clone(),
                overlap: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        decision(&server, check(&strong.token, &["mail.send"])).await,
        pb::Decision::Allowed
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_overlap_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = create_with(
        &server,
        pb::CreateKeyRequest {
            metadata: [("team".to_owned(), "mail".to_owned())]
                .into_iter()
                .collect(),
            ..create("acme", "rotating", &["mail.send"])
        },
    )
    .await
    .unwrap();
    let key_id = key.key.unwrap().key_id;
    let rotate = |overlap_ms: u64| pb::RotateKeyRequest {
        key_id: key_id.clone(),
        overlap: Some(prost_types::Duration {
            seconds: (overlap_ms / 1000) as i64,
            nanos: ((overlap_ms % 1000) * 1_000_000) as i32,
        }),
    };
    let rotated = server
        .manage()
        .await
        .rotate_key(bearer(&server.admin_token, rotate(1500)))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, key.token);
    let view = rotated.key.unwrap();
    assert_eq!(view.key_id, key_id, "same key");
    assert_eq!(view.metadata["team"], "mail", "same metadata");
    assert!(
        view.previous_secret_expire_time.is_some(),
        "GetKey shows when the old secret stops"
    );
    for token in [&key.token, &rotated.token] {
        assert_eq!(
            decision(&server, check(token, &["mail.send"])).await,
            pb::Decision::Allowed
        );
    }
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        decision(&server, check(&key.token, &["mail.send"])).await,
        pb::Decision::UnknownKey
    );
    assert_eq!(
        decision(&server, check(&rotated.token, &["mail.send"])).await,
        pb::Decision::Allowed
    );

    // Without an overlap the old secret stops at once.
    let again = server
        .manage()
        .await
        .rotate_key(bearer(&server.admin_token, rotate(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decision(&server, check(&rotated.token, &["mail.send"])).await,
        pb::Decision::UnknownKey
    );
    assert_eq!(
        decision(&server, check(&again.token, &["mail.send"])).await,
        pb::Decision::Allowed
    );
    assert!(again.key.unwrap().previous_secret_expire_time.is_none());
    // The CLI prints the new token.
    let output = std::process::Command::new(common::BIN)
        .args([
            "keys",
            "rotate",
            "--server",
            &server.addr,
            "--json",
            &key_id,
            "--overlap-secs",
            "0",
        ])
        .env("SCOPEGATE_AUTH", &server.admin_token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = printed["token"].as_str().unwrap();
    assert_eq!(
        decision(&server, check(token, &["mail.send"])).await,
        pb::Decision::Allowed
    );
    assert_eq!(
        decision(&server, check(&again.token, &["mail.send"])).await,
        pb::Decision::UnknownKey
    );
}

#[tokio::test]
async fn ip_allowlists_for_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let bad = create_with(
        &server,
        pb::CreateKeyRequest {
            allowed_cidrs: vec!["10.0.0.0/33".into()],
            ..create("acme", "bad", &["mail.send"])
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message()
            .starts_with("allowed_cidrs: `10.0.0.0/33` is not a CIDR"),
        "{}",
        bad.message()
    );
    let key = create_with(
        &server,
        pb::CreateKeyRequest {
            allowed_cidrs: vec![
                "10.1.0.0/16".into(),
                "2001:db8::/32".into(),
                "192.0.2.7".into(),
            ],
            ..create("acme", "office", &["mail.send"])
        },
    )
    .await
    .unwrap();
    assert_eq!(
        key.key.as_ref().unwrap().allowed_cidrs,
        ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7/32"]
    );
    let from = |ip: &str| pb::CheckRequest {
        client_ip: ip.into(),
        ..check(&key.token, &["mail.send"])
    };
    for (ip, expected) in [
        ("10.1.2.3", pb::Decision::Allowed),
        ("192.0.2.7", pb::Decision::Allowed),
        ("2001:db8::1", pb::Decision::Allowed),
        ("10.2.0.1", pb::Decision::IpNotAllowed),
        ("2001:db9::1", pb::Decision::IpNotAllowed),
        ("", pb::Decision::IpNotAllowed),
    ] {
        assert_eq!(decision(&server, from(ip)).await, expected, "{ip}");
    }
    let invalid = server
        .authorize()
        .await
        .check(from("10.1.2"))
        .await
        .unwrap_err();
    assert_eq!(
        invalid.message(),
        "client_ip: `10.1.2` is not an IPv4 or IPv6 address"
    );
    assert_eq!(
        ext_authz(&server, &key.token, Some("10.1.9.9")).await.1,
        200
    );
    assert_eq!(
        ext_authz(&server, &key.token, Some("2001:db8::9")).await.1,
        200
    );
    let (name, status, _) = ext_authz(&server, &key.token, Some("172.16.0.1")).await;
    assert_eq!((name.as_str(), status), ("IP_NOT_ALLOWED", 403));
    assert_eq!(
        ext_authz(&server, &key.token, None).await.1,
        403,
        "no source address"
    );
    // A key without a list is unaffected, with or without an address.
    let open = server.admin_key(&["mail.send"]).await.token;
    assert_eq!(ext_authz(&server, &open, None).await.1, 200);
}

#[tokio::test]
async fn metadata_is_returned_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = create_with(
        &server,
        pb::CreateKeyRequest {
            metadata: [
                ("plan".to_owned(), "pro".to_owned()),
                ("customer".to_owned(), "c-42".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..create("acme", "meta", &["mail.send"])
        },
    )
    .await
    .unwrap();
    let response = server
        .authorize()
        .await
        .check(check(&key.token, &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.metadata["plan"], "pro");
    assert_eq!(response.metadata["customer"], "c-42");
    let (_, status, key_metadata) = ext_authz(&server, &key.token, None).await;
    assert_eq!(status, 200);
    let fields = key_metadata
        .expect("key metadata in dynamic metadata")
        .fields;
    assert!(
        matches!(&fields["plan"].kind, Some(prost_types::value::Kind::StringValue(v)) if v == "pro")
    );

    let too_many = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    for (metadata, expected) in [
        (too_many, "metadata: holds more than 16 entries"),
        (
            [("bad key".to_owned(), "v".to_owned())]
                .into_iter()
                .collect(),
            "metadata: key `bad key` must be 1 to 64 of [A-Za-z0-9_.-]",
        ),
        (
            [("k".to_owned(), "x".repeat(300))].into_iter().collect(),
            "metadata: the value of `k` is longer than 256 bytes",
        ),
    ] {
        let refused = create_with(
            &server,
            pb::CreateKeyRequest {
                metadata,
                ..create("acme", "m", &["mail.send"])
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(refused.message(), expected);
    }
    // Replaced and removed through UpdateKey.
    let key_id = key.key.unwrap().key_id;
    let view = update(
        &server,
        &server.admin_token,
        pb::UpdateKeyRequest {
            key_id: key_id.clone(),
            metadata: Some(pb::StringMap::default()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(view.metadata.is_empty());
}

/// Lifecycle state is durable: it survives a restart and a backup/restore.
#[tokio::test]
async fn lifecycle_state_survives_restart_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let key = create_with(
        &server,
        pb::CreateKeyRequest {
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            metadata: [("plan".to_owned(), "pro".to_owned())]
                .into_iter()
                .collect(),
            expire_time: Some(in_ms(3_600_000)),
            ..create("acme", "durable", &["mail.send"])
        },
    )
    .await
    .unwrap();
    let key_id = key.key.unwrap().key_id;
    update(
        &server,
        &server.admin_token,
        pb::UpdateKeyRequest {
            key_id: key_id.clone(),
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let backup = dir.path().join("backup.jsonl");
    server.backup(&backup);
    assert!(server.terminate());
    let restored = dir.path().join("restored");
    let status = std::process::Command::new(common::BIN)
        .args(["restore", "--in"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored)
        .status()
        .unwrap();
    assert!(status.success());
    for dir in [&data, &restored] {
        let server = Server::start(dir, &[]);
        let view = server
            .manage()
            .await
            .get_key(bearer(
                &server.admin_token,
                pb::GetKeyRequest {
                    key_id: key_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!view.enabled && view.expire_time.is_some());
        assert_eq!(view.allowed_cidrs, ["10.0.0.0/8"]);
        assert_eq!(view.metadata["plan"], "pro");
        let request = pb::CheckRequest {
            client_ip: "10.0.0.1".into(),
            ..check(&key.token, &["mail.send"])
        };
        assert_eq!(decision(&server, request).await, pb::Decision::Disabled);
    }
}

/// SendGrid's two update shapes map onto UpdateKey: PATCH (rename only, the
/// scopes stay) and PUT (name and scopes replaced). "All my scopes except
/// billing" is an explicit option; an empty scope list never means it.
#[tokio::test]
async fn update_shapes_and_all_scopes_except_billing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server.admin_key(&["mail.send", "stats.read"]).await;
    let key_id = key.key.unwrap().key_id;
    // PATCH: name only.
    let patched = update(
        &server,
        &server.admin_token,
        pb::UpdateKeyRequest {
            key_id: key_id.clone(),
            name: Some("renamed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(patched.name, "renamed");
    assert_eq!(patched.scopes, ["mail.send", "stats.read"]);
    // PUT: name and scopes replaced.
    let put = update(
        &server,
        &server.admin_token,
        pb::UpdateKeyRequest {
            key_id: key_id.clone(),
            name: Some("put".into()),
            scopes: vec!["stats.read".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (put.name.as_str(), put.scopes.as_slice()),
        ("put", &["stats.read".to_owned()][..])
    );
    // Empty scopes on create are an error, not "everything".
    let empty = create_with(&server, create("acme", "empty", &[]))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    // The explicit option: a manager key gets its own scopes minus billing.
    let manager = create_with(
        &server,
        pb::CreateKeyRequest {
            all_my_scopes_except_billing: true,
            ..create("acme", "everything", &[])
        },
    )
    .await
    .unwrap();
    let view = manager.key.unwrap();
    assert!(
        view.scopes.contains(&"mail.send".to_owned())
            && view.scopes.contains(&"api_keys.create".to_owned())
    );
    assert!(
        !view
            .scopes
            .iter()
            .any(|scope| scope.starts_with("billing.")),
        "{:?}",
        view.scopes
    );
    let child = server
        .manage()
        .await
        .create_key(bearer(
            &manager.token,
            pb::CreateKeyRequest {
                all_my_scopes_except_billing: true,
                ..create("", "child", &[])
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(
        child.scopes, view.scopes,
        "a key's 'everything' is what it holds"
    );
}

/// A key an API key makes or changes is at most as open and as long-lived
/// as that key: a manager allowed only from 127.0.0.0/8 and expiring within
/// the hour gives no key a wider allowlist, none, no expiry or a later one,
/// cannot widen a child later, and cannot rotate a key more open than itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_no_more_open_and_live_no_longer_than_their_creator() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let manager = create_with(
        &server,
        pb::CreateKeyRequest {
            allowed_cidrs: vec!["127.0.0.0/8".into()],
            expire_time: Some(in_ms(3_600_000)),
            ..create_manager("acme", "office manager", &["mail.send"])
        },
    )
    .await
    .unwrap()
    .token;
    let child = |cidrs: &[&str], expire_ms: Option<u64>| pb::CreateKeyRequest {
        allowed_cidrs: cidrs.iter().map(|cidr| cidr.to_string()).collect(),
        expire_time: expire_ms.map(in_ms),
        ..create("", "child", &["mail.send"])
    };
    let mut manage = server.manage().await;
    for (request, why) in [
        (child(&[], Some(60_000)), "no allowlist"),
        (child(&["10.0.0.0/8"], Some(60_000)), "another network"),
        (child(&["0.0.0.0/0"], Some(60_000)), "everywhere"),
        (child(&["127.0.0.1/32"], None), "no expiry"),
        (child(&["127.0.0.1/32"], Some(7_200_000)), "a later expiry"),
    ] {
        let status = manage
            .create_key(bearer(&manager, request))
            .await
            .expect_err(why);
        assert_eq!(status.code(), Code::PermissionDenied, "{why}: {status:?}");
    }
    let made = manage
        .create_key(bearer(&manager, child(&["127.0.0.1/32"], Some(60_000))))
        .await
        .unwrap()
        .into_inner();
    let child_id = made.key.unwrap().key_id;
    let from_loopback = pb::CheckRequest {
        client_ip: "127.0.0.1".into(),
        ..check(&made.token, &["mail.send"])
    };
    assert_eq!(
        decision(&server, from_loopback).await,
        pb::Decision::Allowed
    );
    for (change, why) in [
        (
            pb::UpdateKeyRequest {
                key_id: child_id.clone(),
                allowed_cidrs: Some(pb::StringList { values: vec![] }),
                ..Default::default()
            },
            "removing the allowlist",
        ),
        (
            pb::UpdateKeyRequest {
                key_id: child_id.clone(),
                clear_expire_time: true,
                ..Default::default()
            },
            "removing the expiry",
        ),
    ] {
        let status = update(&server, &manager, change).await.expect_err(why);
        assert_eq!(status.code(), Code::PermissionDenied, "{why}: {status:?}");
    }
    // A key the admin left open everywhere: out of the manager's reach.
    let open = create_with(&server, create("acme", "open", &["mail.send"]))
        .await
        .unwrap()
        .key
        .unwrap()
        .key_id;
    let status = manage
        .rotate_key(bearer(
            &manager,
            pb::RotateKeyRequest {
                key_id: open,
                overlap: None,
            },
        ))
        .await
        .expect_err("rotating a key more open than the caller");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("more open"), "{status:?}");
}

/// Dual-stack listeners hand Envoy IPv4 peers as `::ffff:a.b.c.d`: the key's
/// IPv4 allowlist holds for them, through both entry points.
#[tokio::test]
async fn ipv4_mapped_sources_are_compared_as_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let key = server
        .admin_create(pb::CreateKeyRequest {
            allowed_cidrs: vec!["203.0.113.0/24".into()],
            ..common::create("acme", "office", &["mail.send"])
        })
        .await
        .unwrap();
    for (source, expected) in [
        ("::ffff:203.0.113.7", 200),
        ("203.0.113.7", 200),
        ("::ffff:198.51.100.7", 403),
        ("2001:db8::7", 403),
    ] {
        let (decision, status, _) = common::ext_authz(&server, &key.token, Some(source)).await;
        assert_eq!(status, expected, "ext_authz from {source}: {decision}");
        let request = pb::CheckRequest {
            client_ip: source.into(),
            ..check(&key.token, &["mail.send"])
        };
        let answer = server
            .authorize()
            .await
            .check(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.allowed,
            expected == 200,
            "Authorize.Check from {source}: {answer:?}"
        );
    }
}
