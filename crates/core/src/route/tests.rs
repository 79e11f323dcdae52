use super::*;

const EXAMPLE: &str = include_str!("../../../../examples/routes.toml");

fn table(text: &str) -> Result<RouteTable, RouteError> {
    RouteTable::from_toml(text, &Catalog::builtin())
}

fn scope_of(table: &RouteTable, method: &str, path: &str) -> Result<String, RouteMiss> {
    let catalog = Catalog::builtin();
    table
        .resolve(method, path)
        .map(|id| catalog.scope_name(id).to_owned())
}

#[test]
fn example_routes_cover_every_scope_of_the_default_catalog() {
    let catalog = Catalog::builtin();
    let routes = table(EXAMPLE).unwrap();
    let paths = [
        "/v3/api_keys",
        "/v3/api_keys/abc",
        "/v3/billing",
        "/v3/billing/x",
        "/v3/mail/send",
        "/v3/mail/batch",
        "/v3/mail/batch/b1",
        "/v3/marketing/singlesends/1",
        "/v3/stats",
        "/v3/categories/stats",
        "/v3/whitelabel/domains",
        "/v3/whitelabel/domains/1",
    ];
    let mut reached: Vec<String> = routes
        .reachable_scopes(&paths)
        .into_iter()
        .map(|id| catalog.scope_name(id).to_owned())
        .collect();
    reached.sort();
    let mut all = catalog.names(&catalog.all_scopes());
    all.sort();
    assert_eq!(reached, all);
}

#[test]
fn methods_map_to_verbs_and_specific_rules_win() {
    let routes = table(EXAMPLE).unwrap();
    let cases = [
        ("POST", "/v3/mail/send", Ok("mail.send")),
        ("GET", "/v3/mail/send", Err(RouteMiss::NoRoute)),
        ("GET", "/v3/mail/batch/b1", Ok("mail.batch.read")),
        ("HEAD", "/v3/mail/batch/b1", Ok("mail.batch.read")),
        ("POST", "/v3/mail/batch", Ok("mail.batch.create")),
        ("PUT", "/v3/mail/batch/b1", Ok("mail.batch.update")),
        ("PATCH", "/v3/mail/batch/b1", Ok("mail.batch.update")),
        ("DELETE", "/v3/mail/batch/b1", Ok("mail.batch.delete")),
        ("get", "/v3/stats", Ok("stats.global.read")),
        ("GET", "/v3/clients/phone/stats", Ok("stats.read")),
        ("POST", "/v3/stats", Err(RouteMiss::NoRoute)),
        ("POST", "/v3/billing", Err(RouteMiss::NoRoute)),
        ("GET", "/v3/unknown", Err(RouteMiss::NoRoute)),
        ("OPTIONS", "/v3/whitelabel/x", Err(RouteMiss::NoRoute)),
        ("GET", "/", Err(RouteMiss::NoRoute)),
    ];
    for (method, path, expected) in cases {
        let expected = expected.map(str::to_owned);
        assert_eq!(scope_of(&routes, method, path), expected, "{method} {path}");
    }
}

#[test]
fn explicit_methods_beat_a_catch_all_rule_on_the_same_path() {
    let routes = table(
        "[[route]]\nprefix = \"/v3/mail/batch\"\nresource = \"mail.batch\"\n\
         [[route]]\npath = \"/v3/mail/batch\"\nmethods = [\"POST\"]\nscope = \"mail.send\"\n",
    )
    .unwrap();
    assert_eq!(
        scope_of(&routes, "POST", "/v3/mail/batch"),
        Ok("mail.send".into())
    );
    assert_eq!(
        scope_of(&routes, "GET", "/v3/mail/batch"),
        Ok("mail.batch.read".into())
    );
}

#[test]
fn paths_are_normalised_or_refused() {
    let routes = table(EXAMPLE).unwrap();
    let cases = [
        ("/v3/mail/send?x=1", Ok("mail.send")),
        ("/v3/mail/send/", Ok("mail.send")),
        ("//v3//mail///send", Ok("mail.send")),
        ("/v3/./mail/send", Ok("mail.send")),
        ("/v3/stats/../mail/send", Ok("mail.send")),
        ("/v3/m%61il/send", Ok("mail.send")),
        ("/v3/mail%2Fsend", Err(RouteMiss::InvalidPath)),
        ("/v3/mail%2fsend", Err(RouteMiss::InvalidPath)),
        ("/v3/mail%5Csend", Err(RouteMiss::InvalidPath)),
        ("/v3\\mail\\send", Err(RouteMiss::InvalidPath)),
        ("/../v3/mail/send", Err(RouteMiss::InvalidPath)),
        ("/v3/mail/send%", Err(RouteMiss::InvalidPath)),
        ("/v3/mail/send%zz", Err(RouteMiss::InvalidPath)),
        // from_str_radix takes a sign: "%+1" must still be a bad escape.
        ("/v3/mail/send%+1", Err(RouteMiss::InvalidPath)),
        ("/v3/mail/s%2Dnd%-1", Err(RouteMiss::InvalidPath)),
        ("v3/mail/send", Err(RouteMiss::InvalidPath)),
        ("", Err(RouteMiss::InvalidPath)),
    ];
    for (path, expected) in cases {
        let expected = expected.map(str::to_owned);
        assert_eq!(scope_of(&routes, "POST", path), expected, "{path}");
    }
    assert!(matches!(
        normalize_path("/v3/mail/send"),
        Some(Cow::Borrowed(_))
    ));
    assert_eq!(normalize_path("/a/%7euser/%20x").unwrap(), "/a/~user/%20x");
}

#[test]
fn default_scope_replaces_no_route() {
    let routes = table("default_scope = \"stats.read\"\n").unwrap();
    assert_eq!(
        scope_of(&routes, "GET", "/anything"),
        Ok("stats.read".into())
    );
    assert_eq!(
        scope_of(&routes, "GET", "/a%2Fb"),
        Err(RouteMiss::InvalidPath)
    );
}

#[test]
fn bad_files_name_the_line_and_reason() {
    let cases = [
        ("[[route]]\npath = \"/a\"\nscope = \"nope.read\"\n", "line 1: unknown scope `nope.read`"),
        ("\n\n[[route]]\npath = \"/a\"\nresource = \"nope\"\n", "line 3: unknown resource `nope`"),
        ("[[route]]\npath = \"/a\"\nmethods = [\"POST\"]\nresource = \"stats\"\n", "resource `stats` has no `create` scope for POST"),
        ("[[route]]\npath = \"/a\"\nmethods = [\"BREW\"]\nscope = \"stats.read\"\n", "unknown method `BREW`"),
        ("[[route]]\nscope = \"stats.read\"\n", "exactly one of `path` or `prefix`"),
        ("[[route]]\npath = \"/a\"\n", "exactly one of `scope` or `resource`"),
        ("[[route]]\npath = \"a\"\nscope = \"stats.read\"\n", "must start with /"),
        (
            "[[route]]\npath = \"/a\"\nscope = \"stats.read\"\n[[route]]\npath = \"/a\"\nscope = \"mail.send\"\n",
            "line 4: GET /a is already covered by the rule at line 1",
        ),
        (
            "[[route]]\npath = \"/a/{x}\"\nscope = \"stats.read\"\n[[route]]\npath = \"/a/{y}\"\nscope = \"mail.send\"\n",
            "line 4: path `/a/{y}`",
        ),
        ("default_scope = \"x.y\"\n", "default_scope: unknown scope `x.y`"),
        ("[[route]]\npath = \"/a\"\nscope = \"stats.read\"\ncolour = 1\n", "unknown field `colour`"),
    ];
    for (text, expected) in cases {
        let error = table(text).err().expect(text).to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }
}

#[test]
fn path_parameter_and_double_encoding_tricks_are_refused_by_default() {
    let routes = table(EXAMPLE).unwrap();
    for path in [
        "/v3/marketing/..;/api_keys",
        "/v3/marketing/%252e%252e/api_keys",
        "/v3/marketing/x/..%3B/api_keys",
        "/v3/marketing/x/..%3b/api_keys",
        "/v3/marketing;a=b/singlesends",
        "/v3/marketing/%25",
    ] {
        assert_eq!(
            scope_of(&routes, "GET", path),
            Err(RouteMiss::InvalidPath),
            "{path}"
        );
    }
    // A `;` in the query string is not part of the path.
    assert_eq!(
        scope_of(&routes, "GET", "/v3/api_keys?a=1;b=2"),
        Ok("api_keys.read".into())
    );
}

#[test]
fn the_routes_file_can_opt_in_to_semicolons_and_encoded_percent() {
    let text = format!("allow_semicolon = true\nallow_encoded_percent = true\n{EXAMPLE}");
    let routes = table(&text).unwrap();
    // Matched literally: the segment `..;` is not `..`.
    assert_eq!(
        scope_of(&routes, "GET", "/v3/marketing/..;/api_keys"),
        scope_of(&routes, "GET", "/v3/marketing/x/api_keys")
    );
    assert!(scope_of(&routes, "GET", "/v3/marketing/%252e%252e/api_keys").is_ok());
    assert!(!table(EXAMPLE).unwrap().allows_method_override());
    assert!(table("allow_method_override = true\n")
        .unwrap()
        .allows_method_override());
}

#[test]
fn default_scope_never_covers_an_unlisted_method_on_a_matched_path() {
    let text = format!("default_scope = \"stats.read\"\n{EXAMPLE}");
    let routes = table(&text).unwrap();
    assert_eq!(
        scope_of(&routes, "POST", "/v3/mail/send"),
        Ok("mail.send".into())
    );
    for method in ["PUT", "GET", "PURGE", "OPTIONS"] {
        assert_eq!(
            scope_of(&routes, method, "/v3/mail/send"),
            Err(RouteMiss::NoRoute),
            "{method}"
        );
    }
    assert_eq!(
        scope_of(&routes, "PURGE", "/v3/api_keys"),
        Err(RouteMiss::NoRoute)
    );
    // Unmatched paths still take the default.
    assert_eq!(
        scope_of(&routes, "GET", "/not/routed"),
        Ok("stats.read".into())
    );
}

/// The one-pass scan agrees with the plain definition (the substring tests
/// it replaced) on every short path over the characters that matter.
#[test]
fn normalisation_fast_path_matches_its_definition() {
    fn definition(raw: &str, options: PathOptions) -> Option<bool> {
        let path = raw.split(['?', '#']).next().unwrap_or("");
        if !path.starts_with('/') || path.contains('\\') || path.contains('\0') {
            return None;
        }
        if !options.allow_semicolon && path.contains(';') {
            return None;
        }
        Some(
            path.contains('%')
                || path.contains("//")
                || path.contains("/./")
                || path.contains("/../")
                || path.ends_with("/.")
                || path.ends_with("/..")
                || (path.len() > 1 && path.ends_with('/')),
        )
    }
    let alphabet = ['/', '.', 'a', ';', '?', '\\'];
    let mut paths = vec![String::new()];
    for _ in 0..6 {
        let longer: Vec<String> = paths
            .iter()
            .flat_map(|path| alphabet.iter().map(move |c| format!("{path}{c}")))
            .collect();
        paths.extend(longer);
        paths.dedup();
    }
    for options in [
        PathOptions::default(),
        PathOptions {
            allow_semicolon: true,
            ..PathOptions::default()
        },
    ] {
        for path in &paths {
            let expected = definition(path, options);
            let got = normalize_path_with(path, options);
            match expected {
                None => assert!(got.is_none(), "{path:?}"),
                // A path needing no work comes back borrowed and unchanged.
                Some(false) => assert!(
                    matches!(got, Some(Cow::Borrowed(p)) if path.starts_with(p)),
                    "{path:?}"
                ),
                Some(true) => assert!(!matches!(got, Some(Cow::Borrowed(_))), "{path:?}"),
            }
        }
    }
}

/// Found by the `config_toml` fuzz target: matchit panics on a template
/// with more than 25 parameters; the loader must refuse it with a reason.
#[test]
fn a_template_with_too_many_parameters_is_an_error_not_a_panic() {
    let many: String = (0..30).map(|i| format!("/{{p{i}}}")).collect();
    let text = format!("[[route]]\npath = \"{many}\"\nscope = \"stats.read\"\n");
    let error = table(&text).err().expect("refused");
    assert!(error.to_string().contains("parameters"), "{error}");
    let sixteen: String = (0..16).map(|i| format!("/{{p{i}}}")).collect();
    let text = format!("[[route]]\npath = \"{sixteen}\"\nscope = \"stats.read\"\n");
    assert!(table(&text).is_ok());
}
