//! Credits as a use-case: UpdateCredits (set, increment, decrement; an API
//! key with credits may only take away), the callers' live balances for no
//! escalation, and the balances the edges show.

use crate::balances::CreditOp;
use crate::credits::{KeyCredits, MAX_CREDITS};
use crate::scope::ManageAction;
use crate::store::{Change, KeyRecord, Snapshot, StoreError};
use crate::token::KeyId;

use super::audit::audit_event;
use super::error::{invalid, ManageError};
use super::rules::{caller_credits, caller_reads, changeable};
use super::types::{Caller, KeyView};
use super::validate::parse_key_id;
use super::{record_mutation, Manager};

impl Manager {
    /// What an API key caller with credits has left now (`None`: the
    /// admin, a key without credits, or no balances to ask).
    pub(super) async fn caller_credits_left(
        &self,
        caller: &Caller,
    ) -> Result<Option<u64>, ManageError> {
        let (Caller::Key { key_id, .. }, Some(balances)) = (caller, &self.balances) else {
            return Ok(None);
        };
        let credits = self.store.table().with(key_id, |entry| {
            entry.and_then(|entry| entry.extras.as_ref()?.credits.as_deref().copied())
        });
        match credits {
            None => Ok(None),
            Some(credits) => balances
                .remaining(*key_id, &credits)
                .await
                .map(Some)
                .map_err(|reason| ManageError::Store(StoreError::EtcdUnavailable(reason))),
        }
    }

    /// The view with its live balance (what the key has left now).
    pub async fn live_credits(&self, mut view: KeyView) -> KeyView {
        let (Some(balances), Some(id)) = (&self.balances, KeyId::parse(&view.key_id)) else {
            return view;
        };
        let credits = self.store.table().with(&id, |entry| {
            entry.and_then(|entry| entry.extras.as_ref()?.credits.as_deref().copied())
        });
        if let (Some(credits), Some(shown)) = (credits, view.credits.as_mut()) {
            if let Ok(remaining) = balances.remaining(id, &credits).await {
                shown.remaining = remaining;
            }
        }
        view
    }

    /// Sets, adds to or takes from a key's credits, atomically with the
    /// requests spending them; returns what is left. Audited.
    pub async fn update_credits(
        &self,
        caller: &Caller,
        key_id: &str,
        (op, amount): (&str, u64),
    ) -> Result<u64, ManageError> {
        let result = self.change_credits(caller, key_id, (op, amount)).await;
        record_mutation("credits", &result);
        result
    }

    async fn change_credits(
        &self,
        caller: &Caller,
        key_id: &str,
        (op, amount): (&str, u64),
    ) -> Result<u64, ManageError> {
        self.require(caller, ManageAction::Update)?;
        self.admit_mutation(caller)?;
        let op = CreditOp::parse(op)
            .ok_or_else(|| invalid("op", format!("`{op}` is not set, increment or decrement")))?;
        if amount > MAX_CREDITS {
            return Err(invalid(
                "amount",
                format!("{amount} is more than {MAX_CREDITS}"),
            ));
        }
        let id = parse_key_id(key_id)?;
        let balances = self
            .balances
            .clone()
            .ok_or_else(|| invalid("key_id", "this server keeps no credit balances"))?;
        // Who may: decided on the records as they are now, before the
        // balance moves, and again when the change is filed.
        let reads = caller_reads(caller, Some(id));
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || {
            reads
                .into_iter()
                .map(|read| Ok((read, store.get(&read)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await
        .map_err(|_| ManageError::Store(StoreError::Closed))??;
        let snapshot = Snapshot::of(records);
        let (current, credits) = self.credits_changeable(&snapshot, caller, &id, key_id, op)?;
        let generation = credits.generation + 1;
        let (before, after) = balances
            .apply(id, &credits, (op, amount), generation)
            .await
            .map_err(|reason| ManageError::Store(StoreError::EtcdUnavailable(reason)))?;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_text = key_id.to_owned();
        let mut noted_before = current.clone();
        if let Some(credits) = noted_before.credits.as_mut() {
            credits.remaining = before;
        }
        self.store
            .mutate(caller_reads(caller, Some(id)), move |snapshot| {
                let (current, caller) = changeable(
                    snapshot,
                    &catalog,
                    &guard,
                    &id,
                    &key_text,
                    ManageAction::Update,
                )?;
                let mut updated = current.clone();
                let record = updated
                    .credits
                    .as_mut()
                    .ok_or_else(|| no_credits(&key_text))?;
                record.remaining = after;
                record.generation = record.generation.max(generation);
                updated.update_time_unix_ms = crate::authz::now_unix_ms();
                let event = audit_event("credits", &caller, Some(&noted_before), Some(&updated));
                Ok::<_, ManageError>((Change::Update(updated), event, ()))
            })
            .await?;
        tracing::info!(%caller, key_id, op = ?op, amount, before, after, "credits changed");
        Ok(after)
    }

    /// The target of an UpdateCredits and its credits, once `caller` may
    /// change it that way.
    fn credits_changeable(
        &self,
        snapshot: &Snapshot,
        caller: &Caller,
        id: &KeyId,
        key_id: &str,
        op: CreditOp,
    ) -> Result<(KeyRecord, KeyCredits), ManageError> {
        let catalog = self.catalog.load_full();
        let (current, caller) =
            changeable(snapshot, &catalog, caller, id, key_id, ManageAction::Update).map_err(
                |error| match error {
                    ManageError::Store(StoreError::NotFound) => {
                        ManageError::NotFound(key_id.to_owned())
                    }
                    other => other,
                },
            )?;
        if caller_credits(snapshot, &caller)?.is_some() && op != CreditOp::Decrement {
            return Err(ManageError::CreditsEscalation(
                "the calling key has credits: it may only take credits away (decrement), never set or add".into(),
            ));
        }
        let credits = current
            .credits
            .as_ref()
            .ok_or_else(|| no_credits(key_id))?
            .key_credits()
            .map_err(|reason| {
                ManageError::Store(StoreError::Corrupt {
                    key_id: key_id.to_owned(),
                    reason,
                })
            })?;
        Ok((current.clone(), credits))
    }
}

fn no_credits(key_id: &str) -> ManageError {
    invalid(
        "key_id",
        format!("key {key_id} has unlimited credits: give it credits with UpdateKey first"),
    )
}
