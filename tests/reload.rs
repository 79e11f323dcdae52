//! Reloading the catalog and the routes (SIGHUP, --watch-secs): a good file
//! is taken whole, a bad one refused with the old one kept, and a catalog is
//! checked against every stored key.

mod common;

use common::{bearer, check, create, http_decision, metric, Server};
use scopegate::grpc::pb;

/// How a changed routes file reaches the server.
#[derive(Clone, Copy, PartialEq)]
enum Reload {
    Sighup,
    Watch,
}

#[tokio::test]
async fn sighup_reloads_routes_and_keeps_the_old_table_on_a_bad_file() {
    routes_reload(Reload::Sighup).await;
}

#[tokio::test]
async fn a_watched_routes_file_reloads_on_change_and_keeps_the_old_table_on_a_bad_file() {
    routes_reload(Reload::Watch).await;
}

async fn routes_reload(how: Reload) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    // Replaced by rename, as Kubernetes updates a mounted ConfigMap.
    let replace = |text: &str| {
        let next = dir.path().join("routes.toml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &routes).unwrap();
    };
    let reload = |server: &Server| {
        if how == Reload::Sighup {
            server.signal("HUP");
        }
    };
    replace("[[route]]\npath = \"/a\"\nscope = \"mail.send\"\n");
    let watch: &[&str] = match how {
        Reload::Sighup => &[],
        Reload::Watch => &["--watch-secs", "0.05"],
    };
    let server = Server::start(
        &dir.path().join("data"),
        &[&["--routes", routes.to_str().unwrap()], watch].concat(),
    );
    let mut authorize = server.authorize().await;
    let key = server.admin_key(&["mail.send"]).await;
    let token = key.token.as_str();
    assert_eq!(
        http_decision(&mut authorize, token, "/a").await,
        pb::Decision::Allowed
    );
    assert_eq!(
        http_decision(&mut authorize, token, "/b").await,
        pb::Decision::NoRoute
    );

    replace("[[route]]\npath = \"/b\"\nscope = \"mail.send\"\n");
    reload(&server);
    server.wait_for_log("routes reloaded", 1);
    assert_eq!(
        http_decision(&mut authorize, token, "/a").await,
        pb::Decision::NoRoute
    );
    assert_eq!(
        http_decision(&mut authorize, token, "/b").await,
        pb::Decision::Allowed
    );

    replace("[[route]]\npath = \"/c\"\nscope = \"no.such\"\n");
    reload(&server);
    server.wait_for_log("routes reload rejected", 1);
    assert_eq!(
        http_decision(&mut authorize, token, "/b").await,
        pb::Decision::Allowed
    );
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(
            &body,
            r#"scopegate_config_reloads_total{kind="routes",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_config_reloads_total{kind="routes",result="error"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn sighup_reloads_the_catalog_when_every_key_fits_it() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let routes = dir.path().join("routes.toml");
    let base = scopegate::scope::DEFAULT_CATALOG_TOML;
    let stats_route = "[[route]]\npath = \"/v3/stats\"\nscope = \"stats.read\"\n";
    std::fs::write(&catalog, base).unwrap();
    std::fs::write(&routes, stats_route).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--catalog",
            catalog.to_str().unwrap(),
            "--routes",
            routes.to_str().unwrap(),
        ],
    );
    let admin = server.admin_token.clone();
    let mut manage = server.manage().await;
    let mut authorize = server.authorize().await;
    let stats = manage
        .create_key(bearer(&admin, create("acme", "stats", &["stats.read"])))
        .await
        .unwrap()
        .into_inner();

    // A new resource and a route to it, without a restart.
    let reports_resource = "\n[[resource]]\nname = \"reports\"\nverbs = [\"read\"]\n";
    std::fs::write(&catalog, format!("{base}{reports_resource}")).unwrap();
    let reports_route = "[[route]]\npath = \"/v3/reports\"\nscope = \"reports.read\"\n";
    std::fs::write(&routes, format!("{stats_route}{reports_route}")).unwrap();
    server.signal("HUP");
    server.wait_for_log("routes reloaded", 1);
    assert!(server.log().contains("catalog reloaded"));
    let reports = manage
        .create_key(bearer(&admin, create("acme", "reports", &["reports.read"])))
        .await
        .unwrap()
        .into_inner();
    let allowed = pb::Decision::Allowed;
    assert_eq!(
        http_decision(&mut authorize, &reports.token, "/v3/reports").await,
        allowed
    );
    // Keys from before the reload keep working: their scope ids did not move.
    assert_eq!(
        http_decision(&mut authorize, &stats.token, "/v3/stats").await,
        allowed
    );
    assert_ne!(
        http_decision(&mut authorize, &stats.token, "/v3/reports").await,
        allowed
    );

    // A catalog that drops a scope a key holds is refused; the old one stays.
    let renamed = base.replace("name = \"stats\"\n", "name = \"statistics\"\n");
    std::fs::write(&catalog, format!("{renamed}{reports_resource}")).unwrap();
    std::fs::write(
        &routes,
        stats_route.replace("stats.read", "statistics.read"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("catalog reload rejected", 1);
    assert!(
        server
            .log()
            .contains("names a scope the catalog does not have"),
        "{}",
        server.log()
    );
    assert!(
        authorize
            .check(check(&stats.token, &["stats.read"]))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        authorize
            .check(check(&reports.token, &["reports.read"]))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let (_, body) = server.http_get("/metrics");
    assert_eq!(
        metric(
            &body,
            r#"scopegate_config_reloads_total{kind="catalog",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            r#"scopegate_config_reloads_total{kind="catalog",result="error"}"#
        ),
        1.0
    );
}

/// A catalog and its routes are one candidate: when the routes file fails,
/// the new catalog is not put in force either, so no route is ever read
/// under another catalog's scope ids (once: a panic on the next request,
/// and later a stale route demanding a scope that reused the id).
#[tokio::test]
async fn a_reload_swaps_catalog_and_routes_together_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let routes = dir.path().join("routes.toml");
    let base = scopegate::scope::DEFAULT_CATALOG_TOML;
    let reports = "\n[[resource]]\nname = \"reports\"\nverbs = [\"read\"]\n";
    let stats_route = "[[route]]\npath = \"/v3/stats\"\nscope = \"stats.read\"\n";
    let reports_route = "[[route]]\npath = \"/v3/reports\"\nscope = \"reports.read\"\n";
    std::fs::write(&catalog, format!("{base}{reports}")).unwrap();
    std::fs::write(&routes, format!("{stats_route}{reports_route}")).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--catalog",
            catalog.to_str().unwrap(),
            "--routes",
            routes.to_str().unwrap(),
        ],
    );
    let stats = server.admin_key(&["stats.read"]).await.token;
    let mut authorize = server.authorize().await;

    // A catalog without `reports` (no key holds it) and a broken routes file.
    std::fs::write(&catalog, base).unwrap();
    std::fs::write(&routes, "[[route]\nbroken").unwrap();
    server.signal("HUP");
    server.wait_for_log("routes reload rejected", 1);
    assert!(
        !server.log().contains("catalog reloaded"),
        "{}",
        server.log()
    );
    // The old policy answers, whole: the route and its scope still exist.
    let response = authorize
        .check(pb::CheckRequest {
            token: stats.clone(),
            scopes: vec![],
            http: Some(pb::HttpRequest {
                method: "GET".into(),
                path: "/v3/reports".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("the old routes must still be answerable")
        .into_inner();
    assert_eq!(response.decision, pb::Decision::InsufficientScope as i32);
    assert_eq!(response.missing_scopes, ["reports.read"]);
    assert!(
        authorize
            .check(check(&stats, &["reports.read"]))
            .await
            .is_ok(),
        "the old catalog stays in force"
    );

    // Now a valid pair: reports gone, a new resource (which may reuse its
    // id), routes without /v3/reports. Both swap.
    let audits = "\n[[resource]]\nname = \"audits\"\nverbs = [\"read\"]\n";
    std::fs::write(&catalog, format!("{base}{audits}")).unwrap();
    std::fs::write(&routes, stats_route).unwrap();
    server.signal("HUP");
    server.wait_for_log("catalog reloaded", 1);
    server.wait_for_log("routes reloaded", 1);
    assert_eq!(
        http_decision(&mut authorize, &stats, "/v3/reports").await,
        pb::Decision::NoRoute
    );
    assert_eq!(
        http_decision(&mut authorize, &stats, "/v3/stats").await,
        pb::Decision::Allowed
    );
    let status = authorize
        .check(check(&stats, &["reports.read"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// A catalog is checked against every stored key: at start-up (a key naming
/// a scope the catalog lacks stops it, naming the key and scope), on reload
/// (a resource turning exclusive would change a key's kind), and on restore.
#[tokio::test]
async fn catalogs_are_checked_against_stored_keys_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let base = scopegate::scope::DEFAULT_CATALOG_TOML;
    let with_reports = format!("{base}\n[[resource]]\nname = \"reports\"\nverbs = [\"read\"]\n");
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, &with_reports).unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--catalog", catalog.to_str().unwrap()]);
    let reports = server.admin_key(&["reports.read"]).await;
    let stats = server.admin_key(&["stats.read"]).await;
    let backup = dir.path().join("backup.jsonl");
    server.backup(&backup);

    // Reload: `stats` turning exclusive would make the stats key a billing-like key.
    let exclusive_stats = with_reports.replace(
        "name = \"stats\"\nverbs = [\"read\"]\n",
        "name = \"stats\"\nverbs = [\"read\"]\nexclusive = true\n",
    );
    assert_ne!(exclusive_stats, with_reports);
    std::fs::write(&catalog, &exclusive_stats).unwrap();
    server.signal("HUP");
    server.wait_for_log("catalog reload rejected", 1);
    assert!(
        server.log().contains("would change kind"),
        "{}",
        server.log()
    );
    assert!(
        server
            .authorize()
            .await
            .check(check(&stats.token, &["stats.read"]))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(server.terminate());

    // Start-up with a catalog that lacks `reports`: refused, naming key and scope.
    let refused = Server::try_start(&data, &[])
        .err()
        .expect("started without reports");
    let reports_id = reports.key.unwrap().key_id;
    assert!(
        refused.contains(&reports_id) && refused.contains("reports.read"),
        "{refused}"
    );

    // Restore: checked against the catalog it is given.
    let restore = |target: &str, catalog: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(common::BIN);
        command
            .args(["restore", "--in"])
            .arg(&backup)
            .arg("--data-dir")
            .arg(dir.path().join(target));
        if let Some(catalog) = catalog {
            command.arg("--catalog").arg(catalog);
        }
        command.output().unwrap()
    };
    let refused = restore("restored-builtin", None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("reports.read"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::fs::write(&catalog, &with_reports).unwrap();
    let restored = restore("restored", Some(&catalog));
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
}
