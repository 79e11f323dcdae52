//! Credit balances: what each key with credits has left. Standalone (and a
//! fleet without Redis) in memory, one small lock per key, written to sled
//! every second and before any management change is answered; a fleet with
//! Redis in one hash per key, checked, refilled and spent by one script, so
//! every sidecar spends the same balance exactly.
//!
//! A balance follows its key's terms (`credits::KeyCredits`): one of an
//! older generation starts again from the terms' `remaining`; a refill sets
//! it to the refill's amount once per period, lazily, on the first use after
//! the boundary (in Redis, inside the spending script: once, fleet-wide).
//! The bound of a kill -9 standalone: the spending of the last second is
//! forgotten, so a key may be over-granted by that much, never
//! under-granted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::credits::{KeyCredits, MAX_CREDITS};
use crate::store::Store;
use crate::token::KeyId;

/// What a request's spending came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Paid; what is left.
    Paid(u64),
    /// Not enough: what is left (nothing spent).
    Short(u64),
    /// The shared balances are unreachable.
    Away,
}

/// A management change of a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditOp {
    Set,
    Increment,
    Decrement,
}

impl CreditOp {
    pub fn parse(text: &str) -> Option<CreditOp> {
        match text {
            "set" => Some(CreditOp::Set),
            "increment" => Some(CreditOp::Increment),
            "decrement" => Some(CreditOp::Decrement),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CreditOp::Set => "set",
            CreditOp::Increment => "increment",
            CreditOp::Decrement => "decrement",
        }
    }

    fn apply(self, remaining: u64, amount: u64) -> u64 {
        match self {
            CreditOp::Set => amount,
            CreditOp::Increment => remaining.saturating_add(amount).min(MAX_CREDITS),
            CreditOp::Decrement => remaining.saturating_sub(amount),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    remaining: u64,
    /// The refill period last seen (0 without a refill).
    period: u32,
    generation: u64,
}

impl State {
    fn fresh(credits: &KeyCredits, now: i64) -> State {
        State {
            remaining: credits.terms.remaining,
            period: credits.terms.refill.map_or(0, |refill| refill.period(now)),
            generation: credits.generation,
        }
    }

    /// Brought up to date: the terms' generation, then the refill. The
    /// clock is read only for a key with a refill or new terms.
    fn current(&mut self, credits: &KeyCredits, now: impl Fn() -> i64) {
        if self.generation < credits.generation {
            *self = State::fresh(credits, now());
        }
        if let Some(refill) = credits.terms.refill {
            let period = refill.period(now());
            if period > self.period {
                self.remaining = refill.amount;
                self.period = period;
            }
        }
    }

    fn encode(&self) -> [u8; 20] {
        let mut bytes = [0; 20];
        bytes[..8].copy_from_slice(&self.generation.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.remaining.to_be_bytes());
        bytes[16..].copy_from_slice(&self.period.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<State> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(State {
            generation: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            remaining: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            period: u32::from_be_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

struct Balance {
    state: Mutex<State>,
    /// Changed since last written.
    dirty: AtomicBool,
}

type BalanceMap = papaya::HashMap<KeyId, Arc<Balance>, crate::key::KeyIdHash>;

/// Every key's balance.
pub struct Balances {
    memory: BalanceMap,
    /// Where memory's balances are written (standalone).
    disk: Option<(sled::Tree, Store)>,
    shared: Option<shared::SharedBalances>,
    /// Redis away: refuse requests of keys with credits.
    fail_closed: bool,
}

mod shared;

fn now() -> i64 {
    crate::authz::now_unix_ms() / 1000
}

fn lock(balance: &Balance) -> std::sync::MutexGuard<'_, State> {
    balance
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Balances {
    /// Balances in memory, written to `store` (loaded from it first).
    pub fn local(store: Option<&Store>) -> Result<Arc<Balances>, String> {
        let disk = match store {
            None => None,
            Some(store) => Some((
                store.credits_tree().map_err(|error| error.to_string())?,
                store.clone(),
            )),
        };
        let balances = Arc::new(Balances {
            memory: BalanceMap::default(),
            disk,
            shared: None,
            fail_closed: false,
        });
        balances.load()?;
        if balances.disk.is_some() {
            tokio::spawn(write_every_second(Arc::downgrade(&balances)));
        }
        Ok(balances)
    }

    /// Balances in Redis, shared by every sidecar that names it.
    pub fn shared(client: redis::Client, timeout: Duration, fail_closed: bool) -> Arc<Balances> {
        Arc::new(Balances {
            memory: BalanceMap::default(),
            disk: None,
            shared: Some(shared::SharedBalances::new(client, timeout)),
            fail_closed,
        })
    }

    /// Whether a request of a key with credits is refused while Redis is away.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    fn load(&self) -> Result<(), String> {
        let Some((tree, _)) = &self.disk else {
            return Ok(());
        };
        let memory = self.memory.pin();
        for entry in tree.iter() {
            let (key, value) = entry.map_err(|error| error.to_string())?;
            let (Ok(id), Some(state)) = (<[u8; 16]>::try_from(key.as_ref()), State::decode(&value))
            else {
                continue;
            };
            memory.insert(
                KeyId::from_bytes(id),
                Arc::new(Balance {
                    state: Mutex::new(state),
                    dirty: AtomicBool::new(false),
                }),
            );
        }
        Ok(())
    }

    /// Runs `use_it` on `key`'s balance (made from its terms the first
    /// time), under the map's guard: no reference count is taken.
    fn with_balance<R>(
        &self,
        key: KeyId,
        credits: &KeyCredits,
        use_it: impl FnOnce(&Balance) -> R,
    ) -> R {
        let memory = self.memory.pin();
        if let Some(balance) = memory.get(&key) {
            return use_it(balance);
        }
        let balance = memory.get_or_insert_with(key, || {
            Arc::new(Balance {
                state: Mutex::new(State::fresh(credits, now())),
                dirty: AtomicBool::new(true),
            })
        });
        use_it(balance)
    }

    /// Spends `cost` of `key`'s credits, if it has that much.
    pub async fn spend(&self, key: KeyId, credits: &KeyCredits, cost: u64) -> Spent {
        if let Some(shared) = &self.shared {
            return shared.spend(key, credits, cost, now()).await;
        }
        self.with_balance(key, credits, |balance| {
            let mut state = lock(balance);
            state.current(credits, now);
            if state.remaining < cost {
                return Spent::Short(state.remaining);
            }
            state.remaining -= cost;
            balance.dirty.store(true, Ordering::Relaxed);
            Spent::Paid(state.remaining)
        })
    }

    /// What `key` has left now.
    pub async fn remaining(&self, key: KeyId, credits: &KeyCredits) -> Result<u64, String> {
        if let Some(shared) = &self.shared {
            return shared.remaining(key, credits, now()).await;
        }
        Ok(self.with_balance(key, credits, |balance| {
            let mut state = lock(balance);
            state.current(credits, now);
            state.remaining
        }))
    }

    /// A management change, atomic with the spending; the balance takes
    /// `generation` (the terms' next), so the record written after it does
    /// not start it again. Durable before it returns (before, after).
    pub async fn apply(
        &self,
        key: KeyId,
        credits: &KeyCredits,
        (op, amount): (CreditOp, u64),
        generation: u64,
    ) -> Result<(u64, u64), String> {
        if let Some(shared) = &self.shared {
            return shared
                .apply(key, credits, (op.name(), amount), generation, now())
                .await;
        }
        let changed = self.with_balance(key, credits, |balance| {
            let mut state = lock(balance);
            state.current(credits, now);
            let before = state.remaining;
            state.remaining = op.apply(before, amount);
            state.generation = generation;
            balance.dirty.store(true, Ordering::Relaxed);
            (before, state.remaining)
        });
        self.write()?;
        Ok(changed)
    }

    /// Writes the balances changed since the last write, and syncs.
    fn write(&self) -> Result<usize, String> {
        let Some((tree, store)) = &self.disk else {
            return Ok(0);
        };
        let mut written = 0;
        for (key, balance) in self.memory.pin().iter() {
            if balance.dirty.swap(false, Ordering::Relaxed) {
                let state = *lock(balance);
                tree.insert(key.as_bytes(), &state.encode()[..])
                    .map_err(|error| error.to_string())?;
                written += 1;
            }
        }
        if written > 0 {
            store.sync().map_err(|error| error.to_string())?;
        }
        Ok(written)
    }

    /// At a clean stop: every balance written.
    pub fn flush(&self) {
        if let Err(error) = self.write() {
            tracing::warn!(%error, "credit balances could not be written at shutdown");
        }
    }
}

/// Memory's balances written every second, off the workers (and only when
/// one changed: an idle sidecar keeps no blocking thread alive).
async fn write_every_second(balances: Weak<Balances>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(balances) = balances.upgrade() else {
            return;
        };
        let changed = balances
            .memory
            .pin()
            .values()
            .any(|balance| balance.dirty.load(Ordering::Relaxed));
        if !changed {
            continue;
        }
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || balances.write()).await {
            tracing::warn!(%error, "credit balances could not be written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credits::{Credits, Refill};

    #[test]
    fn a_balance_follows_its_generation_and_its_refill() {
        let refill = Refill::new(10, "daily", 0).unwrap();
        let credits = KeyCredits {
            terms: Credits::new(3, Some(refill)).unwrap(),
            generation: 1,
        };
        let day = 20_000 * 86_400;
        let mut state = State::fresh(&credits, day);
        assert_eq!((state.remaining, state.period), (3, 20_000));
        state.remaining = 1;
        state.current(&credits, || day + 86_399);
        assert_eq!(state.remaining, 1, "no refill within the day");
        state.current(&credits, || day + 86_400);
        assert_eq!(state.remaining, 10, "refilled at midnight");
        state.remaining = 4;
        state.current(&credits, || day + 86_400 + 5);
        assert_eq!(state.remaining, 4, "once a period");
        let newer = KeyCredits {
            generation: 2,
            ..credits
        };
        state.current(&newer, || day + 86_400 + 6);
        assert_eq!(state.remaining, 3, "new terms start again");
        assert_eq!(State::decode(&state.encode()), Some(state));
        assert_eq!(CreditOp::Decrement.apply(3, 5), 0);
        assert_eq!(CreditOp::Increment.apply(MAX_CREDITS, 5), MAX_CREDITS);
    }
}
