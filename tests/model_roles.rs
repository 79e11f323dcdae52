//! A property test of roles against a model: random sequences of role and
//! key changes (create, regrant and delete roles; create keys with roles,
//! change a key's roles, delete keys) by the admin and by live keys drive
//! the real `Manager` and `Store`. After every step:
//! - the call succeeded exactly when the model's own reading of the rules
//!   allows it on the current state (the api_keys verb, a role within the
//!   caller's effective scopes, every key a role change reaches no stronger
//!   than the caller, billing alone on every effective set, accounts apart);
//! - every key's Check (the in-memory table) allows exactly its effective
//!   scopes: its own and those of the roles it references;
//! - the roles listed (name, grants, key count) are the model's.
//!
//! At the end the store is reopened (standalone: from disk; fleet: a new
//! sidecar from etcd) and every key's decisions are checked again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use scopegate::authz::{decide, Decision};
use scopegate::manage::{Caller, KeyChange, Manager, NewKey, NewRole, RoleChange};
use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::Store;
use scopegate::token::TokenFormat;

mod common;

use common::store::{open_store, Truth};

const ADMIN: &str = "admin-token-for-the-roles-model-0123";
/// What keys and roles are made of: two plain scopes, one billing scope,
/// and the key management verbs (given to managers as their own).
const SCOPES: [&str; 3] = ["mail.send", "stats.read", "billing.read"];
const MANAGE: [&str; 4] = [
    "api_keys.create",
    "api_keys.read",
    "api_keys.update",
    "api_keys.delete",
];
const ROLES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// caller, role slot, grants mask
    CreateRole(Option<usize>, usize, u8),
    RegrantRole(Option<usize>, usize, u8),
    DeleteRole(Option<usize>, usize),
    /// caller, own scopes mask, roles mask, a manager (api_keys verbs of its own)
    CreateKey(Option<usize>, u8, u8, bool),
    /// caller, target, roles mask
    SetRoles(Option<usize>, usize, u8),
    DeleteKey(Option<usize>, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let caller = prop::option::weighted(0.6, 0..12usize);
    // Mostly plain scopes and roles, now and then billing (which must stay alone).
    let own = prop_oneof![6 => 0..4u8, 1 => Just(0b100u8), 1 => 0..8u8];
    let roles = prop_oneof![6 => 0..4u8, 1 => Just(0b100u8), 1 => 0..8u8];
    let grants = prop_oneof![6 => 1..4u8, 1 => Just(0b100u8), 1 => 1..8u8];
    prop_oneof![
        2 => (caller.clone(), 0..ROLES, grants.clone()).prop_map(|(c, r, m)| Op::CreateRole(c, r, m)),
        4 => (caller.clone(), 0..ROLES, grants).prop_map(|(c, r, m)| Op::RegrantRole(c, r, m)),
        2 => (caller.clone(), 0..ROLES).prop_map(|(c, r)| Op::DeleteRole(c, r)),
        6 => (caller.clone(), own, roles.clone(), any::<bool>()).prop_map(|(c, s, r, m)| Op::CreateKey(c, s, r, m)),
        4 => (caller.clone(), 0..12usize, roles).prop_map(|(c, t, r)| Op::SetRoles(c, t, r)),
        1 => (caller, 0..12usize).prop_map(|(c, t)| Op::DeleteKey(c, t)),
    ]
}

fn scopes(mask: u8) -> BTreeSet<String> {
    (0..SCOPES.len())
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| SCOPES[bit].to_owned())
        .collect()
}

fn slots(mask: u8) -> Vec<usize> {
    (0..ROLES).filter(|bit| mask & (1 << bit) != 0).collect()
}

#[derive(Clone, Debug)]
struct ModelKey {
    own: BTreeSet<String>,
    roles: BTreeSet<usize>,
    token: String,
}

struct World {
    manager: Manager,
    catalog: Arc<Catalog>,
    format: TokenFormat,
    /// Role slot → (id, grants), all in account "acme".
    roles: BTreeMap<usize, (String, BTreeSet<String>)>,
    keys: BTreeMap<String, ModelKey>,
    ever: Vec<String>,
}

impl World {
    /// The model's reading: a key may do its own scopes and its roles'.
    fn effective(&self, key: &ModelKey) -> BTreeSet<String> {
        let mut all = key.own.clone();
        for slot in &key.roles {
            if let Some((_, grants)) = self.roles.get(slot) {
                all.extend(grants.iter().cloned());
            }
        }
        all
    }

    /// Non-empty, and billing alone (the management verbs are not billing).
    fn valid(set: &BTreeSet<String>) -> bool {
        let billing = set.iter().filter(|s| s.starts_with("billing.")).count();
        !set.is_empty() && (billing == 0 || billing == set.len())
    }

    fn caller(&self, index: Option<usize>) -> Option<(Caller, Option<BTreeSet<String>>)> {
        match index {
            None => Some((self.manager.authenticate(Some(ADMIN)).unwrap(), None)),
            Some(index) => {
                let key_id = self.ever.get(index % self.ever.len().max(1))?;
                let key = self.keys.get(key_id)?;
                let caller = self.manager.authenticate(Some(&key.token)).ok()?;
                Some((caller, Some(self.effective(key))))
            }
        }
    }

    fn members(&self, slot: usize) -> Vec<&ModelKey> {
        self.keys
            .values()
            .filter(|key| key.roles.contains(&slot))
            .collect()
    }

    fn within(held: &Option<BTreeSet<String>>, verb: &str, set: &BTreeSet<String>) -> bool {
        held.as_ref()
            .is_none_or(|held| held.contains(verb) && set.is_subset(held))
    }

    async fn step(&mut self, op: &Op) {
        match op {
            Op::CreateRole(caller, slot, mask) => {
                let Some((caller, held)) = self.caller(*caller) else {
                    return;
                };
                let grants = scopes(*mask);
                let allowed = !self.roles.contains_key(slot)
                    && Self::valid(&grants)
                    && Self::within(&held, "api_keys.create", &grants);
                let result = self
                    .manager
                    .create_role(
                        &caller,
                        NewRole {
                            account_id: if held.is_none() {
                                "acme".into()
                            } else {
                                String::new()
                            },
                            name: format!("r{slot}"),
                            scopes: grants.iter().cloned().collect(),
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
                if let Ok(view) = result {
                    self.roles.insert(*slot, (view.role_id, grants));
                }
            }
            Op::RegrantRole(caller, slot, _) | Op::DeleteRole(caller, slot) => {
                let Some((caller, held)) = self.caller(*caller) else {
                    return;
                };
                let Some((role_id, old)) = self.roles.get(slot).cloned() else {
                    return;
                };
                let new = mask_of(op).map(scopes);
                let verb = if new.is_some() {
                    "api_keys.update"
                } else {
                    "api_keys.delete"
                };
                let members_within = self
                    .members(*slot)
                    .iter()
                    .all(|member| Self::within(&held, verb, &self.effective(member)));
                let billing_apart = match &new {
                    None => true,
                    Some(new) => self.members(*slot).iter().all(|member| {
                        let mut after = member.own.clone();
                        for other in member.roles.iter().filter(|other| *other != slot) {
                            if let Some((_, grants)) = self.roles.get(other) {
                                after.extend(grants.iter().cloned());
                            }
                        }
                        after.extend(new.iter().cloned());
                        Self::valid(&after)
                    }),
                };
                let allowed = Self::within(&held, verb, &old)
                    && new
                        .as_ref()
                        .is_none_or(|new| Self::valid(new) && Self::within(&held, verb, new))
                    && members_within
                    && billing_apart;
                let result = match &new {
                    Some(new) => self
                        .manager
                        .update_role(
                            &caller,
                            RoleChange {
                                role_id: role_id.clone(),
                                scopes: new.iter().cloned().collect(),
                                ..Default::default()
                            },
                        )
                        .await
                        .map(drop),
                    None => self.manager.delete_role(&caller, &role_id).await,
                };
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{op:?} by {caller}: {:?}",
                    result.as_ref().err()
                );
                if result.is_ok() {
                    match new {
                        Some(new) => self.roles.get_mut(slot).unwrap().1 = new,
                        None => {
                            self.roles.remove(slot);
                            for key in self.keys.values_mut() {
                                key.roles.remove(slot);
                            }
                        }
                    }
                }
            }
            Op::CreateKey(caller, own_mask, roles_mask, manager) => {
                let Some((caller, held)) = self.caller(*caller) else {
                    return;
                };
                let mut own = scopes(*own_mask);
                if *manager {
                    own.extend(MANAGE.iter().map(|s| s.to_string()));
                }
                let wanted = slots(*roles_mask);
                let key = ModelKey {
                    own: own.clone(),
                    roles: wanted.iter().copied().collect(),
                    token: String::new(),
                };
                let exist = wanted.iter().all(|slot| self.roles.contains_key(slot));
                let effective = self.effective(&key);
                let allowed = exist
                    && (!own.is_empty() || !wanted.is_empty())
                    && Self::valid(&effective)
                    && Self::within(&held, "api_keys.create", &effective);
                let role_ids: Vec<String> = wanted
                    .iter()
                    .map(|slot| {
                        self.roles
                            .get(slot)
                            .map_or_else(|| format!("r{slot}"), |(id, _)| id.clone())
                    })
                    .collect();
                let result = self
                    .manager
                    .create(
                        &caller,
                        NewKey {
                            account_id: if held.is_none() {
                                "acme".into()
                            } else {
                                String::new()
                            },
                            name: "k".into(),
                            scopes: own.iter().cloned().collect(),
                            roles: role_ids,
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
                    self.ever.push(view.key_id.clone());
                    self.keys.insert(view.key_id, ModelKey { token, ..key });
                }
            }
            Op::SetRoles(caller, target, roles_mask) => {
                let Some((caller, held)) = self.caller(*caller) else {
                    return;
                };
                let Some(target) = self.ever.get(target % self.ever.len().max(1)).cloned() else {
                    return;
                };
                let wanted = slots(*roles_mask);
                let current = self.keys.get(&target).cloned();
                let role_ids: Vec<String> = wanted
                    .iter()
                    .map(|slot| {
                        self.roles
                            .get(slot)
                            .map_or_else(|| format!("r{slot}"), |(id, _)| id.clone())
                    })
                    .collect();
                let allowed = current.as_ref().is_some_and(|current| {
                    let after = ModelKey {
                        roles: wanted.iter().copied().collect(),
                        ..current.clone()
                    };
                    wanted.iter().all(|slot| self.roles.contains_key(slot))
                        && Self::within(&held, "api_keys.update", &self.effective(current))
                        && Self::valid(&self.effective(&after))
                        && Self::within(&held, "api_keys.update", &self.effective(&after))
                });
                let result = self
                    .manager
                    .update(
                        &caller,
                        KeyChange {
                            key_id: target.clone(),
                            roles: Some(role_ids),
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
                    self.keys.get_mut(&target).unwrap().roles = wanted.into_iter().collect();
                }
            }
            Op::DeleteKey(caller, target) => {
                let Some((caller, held)) = self.caller(*caller) else {
                    return;
                };
                let Some(target) = self.ever.get(target % self.ever.len().max(1)).cloned() else {
                    return;
                };
                let current = self.keys.get(&target).cloned();
                let allowed = current.as_ref().is_some_and(|current| {
                    Self::within(&held, "api_keys.delete", &self.effective(current))
                });
                let result = self.manager.delete(&caller, &target).await;
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{op:?} by {caller}: {:?}",
                    result.as_ref().err()
                );
                if result.is_ok() {
                    self.keys.remove(&target);
                }
            }
        }
    }

    /// Check allows exactly each key's effective scopes; the roles listed
    /// are the model's.
    fn agree(&self, store: &Store) {
        assert_eq!(store.table().len(), self.keys.len());
        for key in self.keys.values() {
            let effective = self.effective(key);
            for scope in SCOPES.iter().chain(&MANAGE) {
                let required = self.catalog.resolve([*scope]).unwrap();
                let decision = decide(store.table(), &self.format, &key.token, None, &required);
                assert_eq!(
                    matches!(decision, Decision::Allowed { .. }),
                    effective.contains(*scope),
                    "{scope} for {key:?} (effective {effective:?}): {decision:?}"
                );
            }
        }
        let admin = self.manager.authenticate(Some(ADMIN)).unwrap();
        let listed: BTreeMap<String, (BTreeSet<String>, usize)> = self
            .manager
            .list_roles(&admin, "acme")
            .unwrap()
            .into_iter()
            .map(|role| {
                (
                    role.role_id,
                    (role.scopes.into_iter().collect(), role.key_count),
                )
            })
            .collect();
        let expected: BTreeMap<String, (BTreeSet<String>, usize)> = self
            .roles
            .iter()
            .map(|(slot, (id, grants))| (id.clone(), (grants.clone(), self.members(*slot).len())))
            .collect();
        assert_eq!(listed, expected, "the roles listed differ from the model");
    }
}

fn mask_of(op: &Op) -> Option<u8> {
    match op {
        Op::RegrantRole(_, _, mask) => Some(*mask),
        _ => None,
    }
}

fn run(ops: &[Op], truth: Truth<'_>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("first"), truth).await;
        let catalog = Arc::new(Catalog::builtin());
        let shared: SharedCatalog = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
        let format = TokenFormat::new("SG", None).unwrap();
        let manager = Manager::new(store.clone(), shared, format.clone(), ADMIN, 1000);
        let mut world = World {
            manager,
            catalog,
            format,
            roles: BTreeMap::new(),
            keys: BTreeMap::new(),
            ever: Vec::new(),
        };
        // A start where keys can act: every role slot filled (mail, stats,
        // billing) and two managers, one with every plain scope, one that
        // may only send mail.
        for (slot, mask) in [(0, 0b001), (1, 0b010), (2, 0b100)] {
            world.step(&Op::CreateRole(None, slot, mask)).await;
        }
        world.step(&Op::CreateKey(None, 0b011, 0, true)).await;
        world.step(&Op::CreateKey(None, 0b001, 0, true)).await;
        assert_eq!((world.keys.len(), world.roles.len()), (2, 3));
        for op in ops {
            world.step(op).await;
            world.agree(&store);
        }
        let (keys, roles) = (world.keys.clone(), world.roles.clone());
        drop(world);
        drop(store);
        let again = match truth {
            Truth::Standalone => dir.path().join("first"),
            Truth::Fleet { .. } => dir.path().join("second"),
        };
        let store = open_store(&again, truth).await;
        assert_eq!(store.table().len(), keys.len());
        let catalog = Catalog::builtin();
        let format = TokenFormat::new("SG", None).unwrap();
        for key in keys.values() {
            let mut effective = key.own.clone();
            for slot in &key.roles {
                effective.extend(roles[slot].1.iter().cloned());
            }
            for scope in SCOPES {
                let required = catalog.resolve([scope]).unwrap();
                let allowed =
                    decide(store.table(), &format, &key.token, None, &required).is_allowed();
                assert_eq!(
                    allowed,
                    effective.contains(scope),
                    "{scope} after reopening: {key:?}"
                );
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn roles_follow_the_rules_on_current_state(ops in prop::collection::vec(op(), 1..50)) {
        run(&ops, Truth::Standalone);
    }
}

/// The same property with etcd as the truth: one etcd, a prefix per case.
#[test]
fn roles_follow_the_rules_on_current_state_in_fleet_mode() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = common::Etcd::start(dir.path());
    etcd.wait_healthy();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..50), |ops| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("/roles-model-{case}/");
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
