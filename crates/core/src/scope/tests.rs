use proptest::prelude::*;

use super::*;

fn catalog() -> Catalog {
    Catalog::builtin()
}

fn set(catalog: &Catalog, names: &[&str]) -> ScopeSet {
    catalog.resolve(names.iter().copied()).unwrap()
}

#[test]
fn builtin_catalog_has_exactly_the_documented_scopes() {
    let catalog = catalog();
    let mut names = catalog.names(&catalog.all_scopes());
    names.sort();
    let mut expected: Vec<&str> = "api_keys.create api_keys.delete api_keys.read api_keys.update \
        billing.delete billing.read billing.update \
        mail.batch.create mail.batch.delete mail.batch.read mail.batch.update mail.send \
        marketing_campaigns.create marketing_campaigns.delete marketing_campaigns.read marketing_campaigns.update \
        stats.global.read stats.read \
        whitelabel.create whitelabel.delete whitelabel.read whitelabel.update"
        .split_whitespace()
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn resource_is_everything_before_the_last_dot() {
    let catalog = catalog();
    let id = catalog.scope_id("stats.global.read").unwrap();
    assert_eq!(
        &*catalog.resource(catalog.resource_of(id)).name,
        "stats.global"
    );
    let send = catalog.scope_id("mail.send").unwrap();
    assert_eq!(&*catalog.resource(catalog.resource_of(send)).name, "mail");
}

#[test]
fn grants_expand_to_the_scopes_of_the_level() {
    let catalog = catalog();
    let cases: &[(&str, Access, &[&str])] = &[
        (
            "marketing_campaigns",
            Access::Read,
            &["marketing_campaigns.read"],
        ),
        (
            "marketing_campaigns",
            Access::Write,
            &[
                "marketing_campaigns.create",
                "marketing_campaigns.update",
                "marketing_campaigns.delete",
            ],
        ),
        (
            "mail.batch",
            Access::Full,
            &[
                "mail.batch.create",
                "mail.batch.read",
                "mail.batch.update",
                "mail.batch.delete",
            ],
        ),
        ("mail", Access::Write, &["mail.send"]),
        ("stats", Access::Read, &["stats.read"]),
    ];
    for (resource, access, scopes) in cases {
        assert_eq!(
            catalog.expand(resource, *access).unwrap(),
            set(&catalog, scopes),
            "{resource} {access:?}"
        );
    }
}

#[test]
fn impossible_levels_are_errors_that_say_why() {
    let catalog = catalog();
    let error = catalog.expand("stats", Access::Write).unwrap_err();
    assert_eq!(
        error.to_string(),
        "resource `stats` is read-only: it cannot have WRITE access, only READ"
    );
    assert!(matches!(
        catalog.expand("stats", Access::Full),
        Err(ScopeError::ReadOnly { .. })
    ));
    assert!(matches!(
        catalog.expand("mail", Access::Read),
        Err(ScopeError::WriteOnly { .. })
    ));
    assert!(matches!(
        catalog.expand("nope", Access::Read),
        Err(ScopeError::UnknownResource(_))
    ));
    assert!(matches!(
        catalog.expand("stats", Access::NoAccess),
        Err(ScopeError::UngrantableAccess("NO_ACCESS"))
    ));
    assert!(matches!(
        catalog.expand("stats", Access::Custom),
        Err(ScopeError::UngrantableAccess("CUSTOM"))
    ));
}

#[test]
fn key_scopes_enforce_known_nonempty_and_billing_alone() {
    let catalog = catalog();
    assert_eq!(
        catalog.key_scopes(["mail.sned"], []).unwrap_err(),
        ScopeError::UnknownScope("mail.sned".into())
    );
    assert_eq!(catalog.key_scopes([], []).unwrap_err(), ScopeError::Empty);
    let mixed = catalog
        .key_scopes(["billing.read", "mail.send"], [])
        .unwrap_err();
    assert!(
        mixed
            .to_string()
            .starts_with("billing scopes need a separate key"),
        "{mixed}"
    );
    let mixed_by_grant = catalog
        .key_scopes(["billing.read"], [("stats", Access::Read)])
        .unwrap_err();
    assert!(matches!(mixed_by_grant, ScopeError::ExclusiveMixed { .. }));
    let (billing, kind) = catalog
        .key_scopes(["billing.read"], [("billing", Access::Full)])
        .unwrap();
    assert_eq!(kind, KeyKind::Billing);
    assert_eq!(billing.len(), 3);
    let (_, kind) = catalog
        .key_scopes(["mail.send"], [("stats", Access::Read)])
        .unwrap();
    assert_eq!(kind, KeyKind::General);
}

#[test]
fn effective_access_levels() {
    let catalog = catalog();
    let resource = |name| catalog.resource_id(name).unwrap();
    let cases: &[(&[&str], &str, Access)] = &[
        (&[], "mail.batch", Access::NoAccess),
        (&["mail.batch.read"], "mail.batch", Access::Read),
        (
            &[
                "mail.batch.create",
                "mail.batch.update",
                "mail.batch.delete",
            ],
            "mail.batch",
            Access::Write,
        ),
        (
            &[
                "mail.batch.create",
                "mail.batch.update",
                "mail.batch.delete",
                "mail.batch.read",
            ],
            "mail.batch",
            Access::Full,
        ),
        (&["mail.batch.update"], "mail.batch", Access::Custom),
        (
            &["mail.batch.update", "mail.batch.read"],
            "mail.batch",
            Access::Custom,
        ),
        (&["stats.read"], "stats", Access::Read),
        (&["mail.send"], "mail", Access::Write),
    ];
    for (scopes, name, expected) in cases {
        let scopes = set(&catalog, scopes);
        assert_eq!(
            catalog.access_on(resource(name), &scopes),
            *expected,
            "{scopes:?} on {name}"
        );
    }
}

#[test]
fn escalation_lists_exactly_the_missing_scopes() {
    let catalog = catalog();
    let caller = set(&catalog, &["mail.send", "stats.read", "api_keys.create"]);
    let requested = set(
        &catalog,
        &["mail.send", "stats.global.read", "whitelabel.read"],
    );
    let lacking = missing(&caller, &requested);
    assert_eq!(
        catalog.names(&lacking),
        vec!["stats.global.read", "whitelabel.read"]
    );
    assert!(missing(&caller, &caller).is_empty());
}

#[test]
fn catalog_file_errors_name_the_problem() {
    let cases = [
        ("", "defines no [[resource]]"),
        ("[[resource]]\nname = \"a\"\nverbs = []\n", "resource `a` has no verbs"),
        ("[[resource]]\nname = \"A\"\nverbs = [\"read\"]\n", "resource name `A`"),
        (
            "[[resource]]\nname = \"a\"\nverbs = [\"read\"]\n[[resource]]\nname = \"a\"\nverbs = [\"read\"]\n",
            "resource `a` is defined twice",
        ),
        ("[[resource]]\nname = \"a\"\nverbs = [\"read\"]\n", "must define `api_keys.create`"),
        ("[[resource]]\nname = \"a\"\nverbs = [\"read\"]\ncolour = 1\n", "unknown field `colour`"),
    ];
    for (text, expected) in cases {
        let error = Catalog::from_toml(text).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }
}

#[test]
fn shipped_public_catalog_loads_with_all_198_scopes() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("catalogs/sendgrid-v3.toml");
    let catalog = Catalog::load(&path).unwrap();
    assert_eq!(catalog.scope_count(), 198);
    let stats = catalog.resource_id("stats").unwrap();
    assert!(catalog.resource(stats).is_read_only());
    let billing = catalog.resource_id("billing").unwrap();
    assert!(catalog.resource(billing).exclusive);
    // The generator's input, when the shared data sits beside the checkout.
    let list = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .join("../shared/data/sendgrid-v3-scopes.txt");
    if let Ok(text) = std::fs::read_to_string(list) {
        let mut expected: Vec<&str> = text.split_whitespace().collect();
        expected.sort();
        let mut names = catalog.names(&catalog.all_scopes());
        names.sort();
        assert_eq!(names, expected);
    }
}

fn any_scope_set(scope_count: usize) -> impl Strategy<Value = ScopeSet> {
    proptest::collection::vec(0..scope_count as u16, 0..12)
        .prop_map(|ids| ids.into_iter().map(ScopeId).collect())
}

#[derive(Debug, Clone)]
enum Step {
    /// A key with `parent` creates a key with `requested`.
    Create { parent: usize, requested: ScopeSet },
    /// A key with `actor` sets key `target`'s scopes to `requested`.
    Update {
        actor: usize,
        target: usize,
        requested: ScopeSet,
    },
}

proptest! {
    #[test]
    fn level_expansion_round_trips(resource_index in 0usize..8, level in 0usize..3) {
        let catalog = catalog();
        let (id, _) = catalog.resources().nth(resource_index).unwrap();
        let grantable = catalog.grantable(id);
        let access = grantable[level % grantable.len()];
        let name = catalog.resource(id).name.to_string();
        let scopes = catalog.expand(&name, access).unwrap();
        prop_assert_eq!(catalog.access_on(id, &scopes), access);
        prop_assert_eq!(catalog.access_levels(&scopes), vec![(id, access)]);
    }

    #[test]
    fn billing_never_mixes(scopes in any_scope_set(22)) {
        let catalog = catalog();
        let names = catalog.names(&scopes);
        match catalog.key_scopes(names.iter().map(String::as_str), []) {
            Ok((set, KeyKind::Billing)) => prop_assert!(set.is_subset_of(&catalog.exclusive_scopes())),
            Ok((set, KeyKind::General)) => prop_assert!(!set.intersects(&catalog.exclusive_scopes())),
            Err(ScopeError::Empty) => prop_assert!(scopes.is_empty()),
            Err(error) => {
                prop_assert!(matches!(error, ScopeError::ExclusiveMixed { .. }), "unexpected error {:?}", error);
                prop_assert!(scopes.intersects(&catalog.exclusive_scopes()));
                prop_assert!(!scopes.is_subset_of(&catalog.exclusive_scopes()));
            }
        }
    }

    /// Whatever keys create and update each other, applying only the steps
    /// that pass the no-escalation rule, no key ever holds a scope the root
    /// did not have.
    #[test]
    fn no_sequence_of_creates_and_updates_escalates(
        root in any_scope_set(22),
        steps in proptest::collection::vec(
            prop_oneof![
                (0usize..8, any_scope_set(22)).prop_map(|(parent, requested)| Step::Create { parent, requested }),
                (0usize..8, 0usize..8, any_scope_set(22)).prop_map(|(actor, target, requested)| Step::Update { actor, target, requested }),
            ],
            0..40,
        ),
    ) {
        let mut keys = vec![root.clone()];
        for step in steps {
            match step {
                Step::Create { parent, requested } => {
                    let parent = keys[parent % keys.len()].clone();
                    if missing(&parent, &requested).is_empty() {
                        keys.push(requested);
                    }
                }
                Step::Update { actor, target, requested } => {
                    let actor_scopes = keys[actor % keys.len()].clone();
                    let target = target % keys.len();
                    if keys[target].is_subset_of(&actor_scopes) && missing(&actor_scopes, &requested).is_empty() {
                        keys[target] = requested;
                    }
                }
            }
        }
        for key in keys {
            prop_assert!(key.is_subset_of(&root));
        }
    }
}

#[test]
fn a_reloaded_catalog_keeps_every_scope_id() {
    let before = catalog();
    let extended =
        format!("{DEFAULT_CATALOG_TOML}\n[[resource]]\nname = \"reports\"\nverbs = [\"read\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, &extended).unwrap();
    let after = Catalog::load_after(&path, &before).unwrap();
    for id in before.all_scopes().iter() {
        assert_eq!(after.scope_id(before.scope_name(id)), Some(id));
    }
    let reports = after.scope_id("reports.read").unwrap();
    assert!(
        !before.all_scopes().contains(reports),
        "a new scope takes a free id"
    );
    assert_eq!(after.scope_count(), before.scope_count() + 1);

    // Dropping a resource frees nothing the survivors use.
    let smaller = DEFAULT_CATALOG_TOML.replace("name = \"whitelabel\"", "name = \"whitelabel_v2\"");
    std::fs::write(&path, smaller).unwrap();
    let shrunk = Catalog::load_after(&path, &after).unwrap();
    assert_eq!(shrunk.scope_id("whitelabel.read"), None);
    assert_eq!(shrunk.scope_id("mail.send"), after.scope_id("mail.send"));
    let renamed = shrunk.scope_id("whitelabel_v2.read").unwrap();
    assert!(
        !after.all_scopes().contains(renamed),
        "no id of the previous catalog is reused"
    );
}

/// A catalog of `resources` four-verb resources besides api_keys.
fn wide_catalog_toml(resources: usize) -> String {
    let mut text = String::from(
        "[[resource]]\nname = \"api_keys\"\nverbs = [\"create\", \"read\", \"update\", \"delete\"]\n",
    );
    for n in 0..resources {
        text.push_str(&format!(
            "[[resource]]\nname = \"r{n}\"\nverbs = [\"create\", \"read\", \"update\", \"delete\"]\n"
        ));
    }
    text
}

#[test]
fn a_catalog_may_hold_4096_scopes_and_no_more() {
    let catalog = Catalog::from_toml(&wide_catalog_toml(1023)).unwrap();
    assert_eq!(catalog.scope_count(), MAX_SCOPES);
    // Scopes on both sides of the inline 256 resolve, combine and print.
    let key = catalog
        .resolve(["r0.read", "r1000.update", "r1022.delete"])
        .unwrap();
    let high = catalog.resolve(["r1000.update"]).unwrap();
    assert!(high.is_subset_of(&key));
    assert!(!catalog.resolve(["r1000.read"]).unwrap().is_subset_of(&key));
    assert_eq!(
        catalog.names(&key.difference(&catalog.resolve(["r0.read"]).unwrap())),
        ["r1000.update", "r1022.delete"]
    );
    let full = catalog.expand("r900", Access::Full).unwrap();
    assert_eq!(catalog.names(&full).len(), 4);
    let error = Catalog::from_toml(&format!(
        "{}[[resource]]\nname = \"one_more\"\nverbs = [\"read\"]\n",
        wide_catalog_toml(1023)
    ))
    .unwrap_err()
    .to_string();
    assert!(error.contains("more than 4096 scopes"), "{error}");
}
