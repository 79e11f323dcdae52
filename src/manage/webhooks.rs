//! Webhook endpoints and their dead letters: the admin manages any
//! account's, an API key with `api_keys.update` its own account's (another
//! account's endpoint is not found). A secret is shown once, when made
//! (create, rotate); reads never show it.

use std::sync::Arc;

use super::error::invalid;
use super::roles::validate_description;
use super::validate::validate_account_id;
use super::{Caller, ManageError, Manager};
use crate::authz::now_unix_ms;
use crate::scope::ManageAction;
use crate::store::HookOp;
use crate::webhooks::record::{
    dead_path, dead_prefix, endpoint_path, order_of, pending_path, pending_prefix, Delivery,
    EndpointRecord, ENDPOINTS,
};
use crate::webhooks::{
    event::EVENT_TYPES, guard, new_id, sign, Webhooks, MAX_ENDPOINTS_PER_ACCOUNT,
};

/// How long a rotated-out secret keeps signing beside the new one.
pub const PREVIOUS_SECRET_OVERLAP_MS: i64 = 24 * 3_600_000;
/// Dead letters listed at most per call.
pub const MAX_DEAD_LETTERS: usize = 1000;

/// A new endpoint.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    /// The admin names it; an API key's own account otherwise.
    pub account_id: String,
    pub url: String,
    pub description: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
}

/// A change to an endpoint (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct WebhookChange {
    pub endpoint_id: String,
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

/// An endpoint as shown; `secret` only where it was just made.
#[derive(Debug, Clone)]
pub struct WebhookView {
    pub endpoint: EndpointRecord,
    pub secret: Option<String>,
}

/// A delivery given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub delivery: Delivery,
}

impl Manager {
    /// The webhook service, or why there is none.
    fn hooks(&self) -> Result<&Arc<Webhooks>, ManageError> {
        self.webhooks.as_ref().ok_or(ManageError::WebhooksOff)
    }

    /// The account `caller` manages endpoints of (`asked`: the admin's pick).
    fn hooks_account(&self, caller: &Caller, asked: &str) -> Result<String, ManageError> {
        self.require(caller, ManageAction::Update)?;
        match caller {
            Caller::Admin => validate_account_id(asked),
            Caller::Key { account_id, .. } if asked.is_empty() || asked == &**account_id => {
                Ok(account_id.to_string())
            }
            Caller::Key { .. } => Err(ManageError::OtherAccount),
        }
    }

    pub async fn create_webhook(
        &self,
        caller: &Caller,
        request: NewWebhook,
    ) -> Result<WebhookView, ManageError> {
        let hooks = self.hooks()?;
        let account_id = self.hooks_account(caller, &request.account_id)?;
        self.admit_mutation(caller)?;
        let url = validate_url(&request.url, hooks.settings.allow_private)?;
        let event_types = validate_event_types(request.event_types)?;
        let description = validate_description(&request.description)?;
        let held = self.account_endpoints(&account_id).await?.len();
        if held >= MAX_ENDPOINTS_PER_ACCOUNT {
            return Err(ManageError::WebhookLimit(format!(
                "account {account_id} already has the maximum of {MAX_ENDPOINTS_PER_ACCOUNT} webhook endpoints"
            )));
        }
        let now = now_unix_ms();
        let endpoint = EndpointRecord {
            endpoint_id: new_id("wh_"),
            account_id,
            url,
            secret: sign::new_secret(),
            event_types,
            description,
            create_time_unix_ms: now,
            update_time_unix_ms: now,
            ..EndpointRecord::default()
        };
        self.put_endpoint(&endpoint).await?;
        tracing::info!(%caller, endpoint = endpoint.endpoint_id, account = endpoint.account_id, "webhook endpoint created");
        Ok(WebhookView {
            secret: Some(endpoint.secret.clone()),
            endpoint,
        })
    }

    /// The endpoints of `account` (the admin: "" lists every account's).
    pub async fn list_webhooks(
        &self,
        caller: &Caller,
        account: &str,
    ) -> Result<Vec<WebhookView>, ManageError> {
        self.hooks()?;
        self.admit_read(caller)?;
        let endpoints = match (caller, account) {
            (Caller::Admin, "") => {
                self.require(caller, ManageAction::Update)?;
                self.all_endpoints().await?
            }
            _ => {
                let account = self.hooks_account(caller, account)?;
                self.account_endpoints(&account).await?
            }
        };
        Ok(endpoints.into_iter().map(shown).collect())
    }

    pub async fn get_webhook(&self, caller: &Caller, id: &str) -> Result<WebhookView, ManageError> {
        self.hooks()?;
        self.admit_read(caller)?;
        Ok(shown(self.visible_endpoint(caller, id).await?))
    }

    pub async fn update_webhook(
        &self,
        caller: &Caller,
        change: WebhookChange,
    ) -> Result<WebhookView, ManageError> {
        let hooks = self.hooks()?;
        self.admit_mutation(caller)?;
        let mut endpoint = self.visible_endpoint(caller, &change.endpoint_id).await?;
        if let Some(url) = change.url {
            endpoint.url = validate_url(&url, hooks.settings.allow_private)?;
        }
        if let Some(types) = change.event_types {
            endpoint.event_types = validate_event_types(types)?;
        }
        if let Some(description) = change.description {
            endpoint.description = validate_description(&description)?;
        }
        if let Some(disabled) = change.disabled {
            endpoint.disabled = disabled;
        }
        endpoint.update_time_unix_ms = now_unix_ms();
        self.put_endpoint(&endpoint).await?;
        Ok(shown(endpoint))
    }

    /// A new secret; the old one keeps signing beside it for a day.
    pub async fn rotate_webhook_secret(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<WebhookView, ManageError> {
        self.hooks()?;
        self.admit_mutation(caller)?;
        let mut endpoint = self.visible_endpoint(caller, id).await?;
        let now = now_unix_ms();
        endpoint.previous_secret = std::mem::replace(&mut endpoint.secret, sign::new_secret());
        endpoint.previous_until_unix_ms = now + PREVIOUS_SECRET_OVERLAP_MS;
        endpoint.update_time_unix_ms = now;
        self.put_endpoint(&endpoint).await?;
        tracing::info!(%caller, endpoint = endpoint.endpoint_id, "webhook secret rotated");
        Ok(WebhookView {
            secret: Some(endpoint.secret.clone()),
            endpoint,
        })
    }

    /// Removes the endpoint, its pending deliveries and dead letters.
    pub async fn delete_webhook(&self, caller: &Caller, id: &str) -> Result<(), ManageError> {
        let hooks = self.hooks()?;
        self.admit_mutation(caller)?;
        let endpoint = self.visible_endpoint(caller, id).await?;
        hooks
            .store()
            .hooks_apply(vec![HookOp::Delete(endpoint_path(&endpoint.endpoint_id))])
            .await?;
        for prefix in [pending_prefix(id), dead_prefix(id)] {
            loop {
                let entries = hooks.store().hooks_scan(&prefix, None, 100).await?;
                if entries.is_empty() {
                    break;
                }
                let ops = entries.into_iter().map(|entry| HookOp::Delete(entry.path));
                hooks.store().hooks_apply(ops.collect()).await?;
            }
        }
        tracing::info!(%caller, endpoint = id, "webhook endpoint deleted");
        Ok(())
    }

    /// The endpoint's dead letters, oldest first (at most 1,000).
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Vec<DeadLetter>, ManageError> {
        let hooks = self.hooks()?;
        self.admit_read(caller)?;
        let endpoint = self.visible_endpoint(caller, id).await?;
        let entries = hooks
            .store()
            .hooks_scan(&dead_prefix(&endpoint.endpoint_id), None, MAX_DEAD_LETTERS)
            .await?;
        Ok(entries
            .iter()
            .filter_map(|entry| prost::Message::decode(entry.value.as_slice()).ok())
            .map(|delivery| DeadLetter { delivery })
            .collect())
    }

    /// Queues dead letters again (`event_id` empty: all of them), each
    /// with its id (receivers drop what they already took). Returns how many.
    pub async fn redeliver(
        &self,
        caller: &Caller,
        id: &str,
        event_id: &str,
    ) -> Result<usize, ManageError> {
        let hooks = self.hooks()?;
        self.admit_mutation(caller)?;
        let endpoint = self.visible_endpoint(caller, id).await?;
        let entries = hooks
            .store()
            .hooks_scan(&dead_prefix(&endpoint.endpoint_id), None, MAX_DEAD_LETTERS)
            .await?;
        let now = now_unix_ms();
        let mut moved = 0;
        for entry in entries {
            let Ok(mut delivery) = <Delivery as prost::Message>::decode(entry.value.as_slice())
            else {
                continue;
            };
            if !event_id.is_empty() && delivery.event_id != event_id {
                continue;
            }
            delivery.attempts = 0;
            delivery.first_attempt_unix_ms = 0;
            delivery.next_attempt_unix_ms = now;
            let order = order_of(&entry.path);
            hooks
                .store()
                .hooks_apply(vec![
                    HookOp::Delete(dead_path(&endpoint.endpoint_id, order)),
                    HookOp::Put(
                        pending_path(&endpoint.endpoint_id, order),
                        prost::Message::encode_to_vec(&delivery),
                    ),
                ])
                .await?;
            moved += 1;
        }
        if moved == 0 && !event_id.is_empty() {
            return Err(ManageError::WebhookNotFound(format!(
                "dead letter {event_id}"
            )));
        }
        tracing::info!(%caller, endpoint = id, moved, "dead letters queued again");
        Ok(moved)
    }

    async fn put_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), ManageError> {
        let value = prost::Message::encode_to_vec(endpoint);
        self.hooks()?
            .store()
            .hooks_apply(vec![HookOp::Put(
                endpoint_path(&endpoint.endpoint_id),
                value,
            )])
            .await?;
        Ok(())
    }

    async fn all_endpoints(&self) -> Result<Vec<EndpointRecord>, ManageError> {
        let entries = self
            .hooks()?
            .store()
            .hooks_scan(ENDPOINTS, None, 100_000)
            .await?;
        Ok(entries
            .iter()
            .filter_map(|entry| prost::Message::decode(entry.value.as_slice()).ok())
            .collect())
    }

    async fn account_endpoints(&self, account: &str) -> Result<Vec<EndpointRecord>, ManageError> {
        let mut endpoints = self.all_endpoints().await?;
        endpoints.retain(|endpoint| endpoint.account_id == account);
        Ok(endpoints)
    }

    /// The endpoint `id` if `caller` may manage it; not found otherwise.
    async fn visible_endpoint(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<EndpointRecord, ManageError> {
        self.require(caller, ManageAction::Update)?;
        if id.is_empty() {
            return Err(invalid("endpoint_id", "is required"));
        }
        if !id.starts_with("wh_")
            || id.len() != 27
            || !id[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(
                "endpoint_id",
                format!("`{id}` is not an endpoint id (wh_ and 24 hex digits)"),
            ));
        }
        let found = self.hooks()?.store().hooks_get(&endpoint_path(id)).await?;
        let endpoint: Option<EndpointRecord> =
            found.and_then(|value| prost::Message::decode(value.as_slice()).ok());
        match endpoint {
            Some(endpoint) if super::rules::visible_in(caller, &endpoint.account_id) => {
                Ok(endpoint)
            }
            _ => Err(ManageError::WebhookNotFound(id.to_owned())),
        }
    }
}

/// An endpoint without its secrets.
fn shown(mut endpoint: EndpointRecord) -> WebhookView {
    endpoint.secret.clear();
    endpoint.previous_secret.clear();
    WebhookView {
        endpoint,
        secret: None,
    }
}

fn validate_url(url: &str, allow_private: bool) -> Result<String, ManageError> {
    if url.is_empty() {
        return Err(invalid("url", "is required"));
    }
    guard::check_url(url, allow_private).map_err(|reason| invalid("url", reason))?;
    Ok(url.to_owned())
}

fn validate_event_types(types: Vec<String>) -> Result<Vec<String>, ManageError> {
    let mut types = types;
    for event_type in &types {
        if !EVENT_TYPES.contains(&event_type.as_str()) {
            return Err(invalid(
                "event_types",
                format!(
                    "`{event_type}` is not an event type (one of: {})",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}
