//! A property test of key management against a model: random sequences of
//! create / update / delete by random callers (the admin, live keys, and
//! stale snapshots of keys taken steps earlier, i.e. revoked or narrowed
//! callers still in flight) drive the real `Manager` and `Store` on real
//! sled files. After every step:
//! - the call succeeded exactly when the rules allow it on the *current*
//!   state (caller exists, holds the api_keys verb, no escalation, no
//!   stronger target, own account, billing alone, cap);
//! - no key holds a scope its creator / last updater lacked at the time, no
//!   billing key holds anything else, no key caller touched another account;
//! - the store (ListKeys) and the in-memory table (Check) agree with the model.
//!
//! At the end the store is reopened from disk and must equal the model.
//!
//! The same test runs on both stores: standalone (sled is the truth) and
//! fleet (a real etcd is the truth, sled its mirror; the reopening is a new
//! sidecar with an empty data dir, which must rebuild the model from etcd).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use scopegate::authz::{decide, Decision};
use scopegate::manage::{Caller, KeyChange, ListQuery, Manager, NewKey};
use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::Store;
use scopegate::token::TokenFormat;

mod common;

use common::store::{open_store, Truth};

const ADMIN: &str = "admin-token-for-the-model-test-0123";
const CAP: usize = 4;
const SCOPES: [&str; 7] = [
    "mail.send",
    "stats.read",
    "api_keys.create",
    "api_keys.read",
    "api_keys.update",
    "api_keys.delete",
    "billing.read",
];
const ACCOUNTS: [&str; 2] = ["acme", "other"];

#[derive(Debug, Clone)]
enum Op {
    /// caller (None: admin), account (admin only), scopes bitmask
    Create(Option<usize>, usize, u8),
    /// caller, target, scopes bitmask
    Update(Option<usize>, usize, u8),
    Delete(Option<usize>, usize),
    /// Take a fresh snapshot of this key as a caller (used by later steps).
    Authenticate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let caller = prop::option::weighted(0.7, 0..16usize);
    prop_oneof![
        (caller.clone(), 0..2usize, 1..128u8).prop_map(|(c, a, s)| Op::Create(c, a, s)),
        (caller.clone(), 0..16usize, 1..128u8).prop_map(|(c, t, s)| Op::Update(c, t, s)),
        (caller, 0..16usize).prop_map(|(c, t)| Op::Delete(c, t)),
        (0..16usize).prop_map(Op::Authenticate),
    ]
}

fn names(mask: u8) -> BTreeSet<String> {
    (0..SCOPES.len())
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| SCOPES[bit].to_owned())
        .collect()
}

#[derive(Clone, Debug)]
struct ModelKey {
    account: String,
    scopes: BTreeSet<String>,
    token: String,
}

/// What a key caller held when it authenticated, what it holds now (empty:
/// deleted), and its account.
type Held = (BTreeSet<String>, BTreeSet<String>, String);

/// A caller as some earlier step saw it: what it held then.
struct Snapshot {
    key_id: String,
    caller: Caller,
    scopes: BTreeSet<String>,
}

struct World {
    manager: Manager,
    catalog: Arc<Catalog>,
    format: TokenFormat,
    model: BTreeMap<String, ModelKey>,
    /// Every key ever created, in order (targets and callers pick from it).
    ever: Vec<String>,
    snapshots: Vec<Snapshot>,
}

fn manager(store: &Store) -> (Manager, Arc<Catalog>, TokenFormat) {
    let catalog = Arc::new(Catalog::builtin());
    let shared: SharedCatalog = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
    let format = TokenFormat::new("SG", None).unwrap();
    let manager = Manager::new(store.clone(), shared, format.clone(), ADMIN, CAP);
    (manager, catalog, format)
}

impl World {
    /// A managing key in each account, authenticated.
    async fn seed(&mut self) {
        for account in ACCOUNTS {
            let admin = self.manager.authenticate(Some(ADMIN)).unwrap();
            let scopes: BTreeSet<String> = names(0b0111111);
            let new = NewKey {
                account_id: account.into(),
                name: "root".into(),
                scopes: scopes.iter().cloned().collect(),
                grants: vec![],
                ..Default::default()
            };
            let (view, token) = self.manager.create(&admin, new).await.unwrap();
            self.ever.push(view.key_id.clone());
            let key = ModelKey {
                account: account.into(),
                scopes: scopes.clone(),
                token: token.clone(),
            };
            self.model.insert(view.key_id.clone(), key);
            let caller = self.manager.authenticate(Some(&token)).unwrap();
            self.snapshots.push(Snapshot {
                key_id: view.key_id,
                caller,
                scopes,
            });
        }
    }

    /// The model's own reading of the product rules, not the code under
    /// test's: a key holds at least one scope, and billing scopes alone.
    fn valid(&self, scopes: &BTreeSet<String>) -> bool {
        let billing = scopes
            .iter()
            .filter(|scope| scope.starts_with("billing."))
            .count();
        !scopes.is_empty() && (billing == 0 || billing == scopes.len())
    }

    /// The caller for `index` (a snapshot), with what it held when it
    /// authenticated and what it holds now (None: gone).
    fn caller(&self, index: Option<usize>) -> Option<(Caller, Option<Held>)> {
        match index {
            None => Some((self.manager.authenticate(Some(ADMIN)).unwrap(), None)),
            Some(index) => {
                let snapshot = self.snapshots.get(index % self.snapshots.len().max(1))?;
                let now = self
                    .model
                    .get(&snapshot.key_id)
                    .map(|key| key.scopes.clone());
                let account = match &snapshot.caller {
                    Caller::Key { account_id, .. } => account_id.to_string(),
                    Caller::Admin => unreachable!(),
                };
                Some((
                    snapshot.caller.clone(),
                    Some((snapshot.scopes.clone(), now.unwrap_or_default(), account)),
                ))
            }
        }
    }

    fn target(&self, index: usize) -> Option<String> {
        (!self.ever.is_empty()).then(|| self.ever[index % self.ever.len()].clone())
    }

    fn count(&self, account: &str) -> usize {
        self.model
            .values()
            .filter(|key| key.account == account)
            .count()
    }

    async fn step(&mut self, op: &Op) {
        match op {
            Op::Authenticate(index) => {
                let Some(key_id) = self.target(*index) else {
                    return;
                };
                let Some(key) = self.model.get(&key_id) else {
                    return;
                };
                let caller = self.manager.authenticate(Some(&key.token)).unwrap();
                self.snapshots.push(Snapshot {
                    key_id,
                    caller,
                    scopes: key.scopes.clone(),
                });
            }
            Op::Create(caller, account, mask) => {
                let Some((caller, key)) = self.caller(*caller) else {
                    return;
                };
                let requested = names(*mask);
                let account = match &key {
                    None => ACCOUNTS[*account].to_owned(),
                    Some((_, _, own)) => own.clone(),
                };
                let allowed = self.valid(&requested)
                    && self.count(&account) < CAP
                    && key.as_ref().is_none_or(|(then, now, _)| {
                        [then, now].iter().all(|held| {
                            !now.is_empty()
                                && held.contains("api_keys.create")
                                && requested.is_subset(held)
                        })
                    });
                let result = self
                    .manager
                    .create(
                        &caller,
                        NewKey {
                            account_id: if key.is_none() {
                                account.clone()
                            } else {
                                String::new()
                            },
                            name: "k".into(),
                            scopes: requested.iter().cloned().collect(),
                            grants: vec![],
                            ..Default::default()
                        },
                    )
                    .await;
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{op:?} by {caller}: {:?}",
                    result.as_ref().err()
                );
                if let Ok((view, token)) = result {
                    assert_eq!(view.account_id, account);
                    self.ever.push(view.key_id.clone());
                    self.model.insert(
                        view.key_id,
                        ModelKey {
                            account,
                            scopes: requested,
                            token,
                        },
                    );
                }
            }
            Op::Update(caller, target, mask) => {
                let (Some((caller, key)), Some(target)) =
                    (self.caller(*caller), self.target(*target))
                else {
                    return;
                };
                let requested = names(*mask);
                let current = self.model.get(&target).cloned();
                let allowed = self.valid(&requested)
                    && current.as_ref().is_some_and(|current| {
                        key.as_ref().is_none_or(|(then, now, own)| {
                            *own == current.account
                                && [then, now].iter().all(|held| {
                                    !now.is_empty()
                                        && held.contains("api_keys.update")
                                        && requested.is_subset(held)
                                })
                                && current.scopes.is_subset(now)
                        })
                    });
                let result = self
                    .manager
                    .update(
                        &caller,
                        KeyChange {
                            key_id: target.clone(),
                            name: None,
                            scopes: requested.iter().cloned().collect(),
                            grants: vec![],
                            ..Default::default()
                        },
                    )
                    .await;
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{op:?} by {caller}: {:?}",
                    result.as_ref().err()
                );
                if result.is_ok() {
                    self.model.get_mut(&target).unwrap().scopes = requested;
                }
            }
            Op::Delete(caller, target) => {
                let (Some((caller, key)), Some(target)) =
                    (self.caller(*caller), self.target(*target))
                else {
                    return;
                };
                let current = self.model.get(&target).cloned();
                let allowed = current.as_ref().is_some_and(|current| {
                    key.as_ref().is_none_or(|(then, now, own)| {
                        *own == current.account
                            && !now.is_empty()
                            && then.contains("api_keys.delete")
                            && now.contains("api_keys.delete")
                            && current.scopes.is_subset(now)
                    })
                });
                let result = self.manager.delete(&caller, &target).await;
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{op:?} by {caller}: {:?}",
                    result.as_ref().err()
                );
                if result.is_ok() {
                    self.model.remove(&target);
                }
            }
        }
    }

    /// Disk (ListKeys) and memory (Check) agree with the model.
    fn agree(&self, store: &Store) {
        let admin = self.manager.authenticate(Some(ADMIN)).unwrap();
        let listed = self
            .manager
            .list(
                &admin,
                ListQuery {
                    account_id: String::new(),
                    page_size: 1000,
                    page_token: String::new(),
                },
            )
            .unwrap()
            .0;
        let on_disk: BTreeMap<String, (String, BTreeSet<String>)> = listed
            .into_iter()
            .map(|view| {
                (
                    view.key_id,
                    (view.account_id, view.scopes.into_iter().collect()),
                )
            })
            .collect();
        let expected: BTreeMap<String, (String, BTreeSet<String>)> = self
            .model
            .iter()
            .map(|(id, key)| (id.clone(), (key.account.clone(), key.scopes.clone())))
            .collect();
        assert_eq!(on_disk, expected, "sled differs from the model");
        assert_eq!(store.table().len(), self.model.len());
        for key in self.model.values() {
            let required = self
                .catalog
                .resolve(key.scopes.iter().map(String::as_str))
                .unwrap();
            let decision = decide(store.table(), &self.format, &key.token, None, &required);
            assert!(matches!(decision, Decision::Allowed { .. }), "{decision:?}");
            // And denied every scope the model says it does not hold (a
            // narrowing that kept old scopes would pass the check above).
            for scope in SCOPES.iter().filter(|scope| !key.scopes.contains(**scope)) {
                let other = self.catalog.resolve([*scope]).unwrap();
                let decision = decide(store.table(), &self.format, &key.token, None, &other);
                assert!(
                    matches!(decision, Decision::InsufficientScope { .. }),
                    "{scope} for a key holding {:?}: {decision:?}",
                    key.scopes
                );
            }
            let billing = key.scopes.contains("billing.read");
            assert!(
                !billing || key.scopes.len() == 1,
                "a billing key holds more: {:?}",
                key.scopes
            );
        }
    }
}

/// One random sequence of operations on `truth`, checked after every step
/// and after reopening.
fn run(ops: &[Op], truth: Truth<'_>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("first"), truth).await;
        let (manager, catalog, format) = manager(&store);
        let mut world = World {
            manager,
            catalog,
            format,
            model: BTreeMap::new(),
            ever: Vec::new(),
            snapshots: Vec::new(),
        };
        world.seed().await;
        for op in ops {
            world.step(op).await;
            world.agree(&store);
        }
        let model = world.model.clone();
        let format = world.format.clone();
        drop(world);
        drop(store);
        // Standalone: the same data dir, from disk. Fleet: a new sidecar,
        // from etcd.
        let again = match truth {
            Truth::Standalone => dir.path().join("first"),
            Truth::Fleet { .. } => dir.path().join("second"),
        };
        let store = open_store(&again, truth).await;
        assert_eq!(store.table().len(), model.len());
        let catalog = Catalog::builtin();
        for key in model.values() {
            let required = catalog
                .resolve(key.scopes.iter().map(String::as_str))
                .unwrap();
            assert!(decide(store.table(), &format, &key.token, None, &required).is_allowed());
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn management_follows_the_rules_on_current_state(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, Truth::Standalone);
    }
}

/// The same property with etcd as the truth: one etcd, a prefix per case.
#[test]
fn management_follows_the_rules_on_current_state_in_fleet_mode() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = common::Etcd::start(dir.path());
    etcd.wait_healthy();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..60), |ops| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("/model-{case}/");
            run(
                &ops,
                Truth::Fleet {
                    endpoint: &etcd.endpoint,
                    prefix: &prefix,
                },
            );
            Ok(())
        })
        .unwrap();
}
