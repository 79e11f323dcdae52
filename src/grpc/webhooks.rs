//! The webhook calls of `scopegate.v1.ManageKey`: translate, call
//! [`Manager`](crate::manage::Manager), encode.

use tonic::{Request, Response, Status};

use super::convert::optional_timestamp;
use super::manage::{detached, ManageKeyService};
use super::pb;
use crate::manage::{DeadLetter, NewWebhook, WebhookChange, WebhookView};

fn webhook_to_pb(view: WebhookView) -> pb::Webhook {
    let endpoint = view.endpoint;
    pb::Webhook {
        webhook_id: endpoint.endpoint_id,
        account_id: endpoint.account_id,
        url: endpoint.url,
        description: endpoint.description,
        event_types: endpoint.event_types,
        enabled: !endpoint.disabled,
        create_time: optional_timestamp(endpoint.create_time_unix_ms),
        update_time: optional_timestamp(endpoint.update_time_unix_ms),
        secret: view.secret.unwrap_or_default(),
    }
}

fn dead_letter_to_pb(dead: DeadLetter) -> pb::DeadLetter {
    let delivery = dead.delivery;
    pb::DeadLetter {
        event_id: delivery.event_id,
        r#type: delivery.event_type,
        attempts: delivery.attempts,
        last_status: delivery.last_status,
        last_error: delivery.last_error,
        queued_time: optional_timestamp(delivery.queued_unix_ms),
        first_attempt_time: optional_timestamp(delivery.first_attempt_unix_ms),
        payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
    }
}

impl ManageKeyService {
    pub(super) async fn create_webhook_pb(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let new = NewWebhook {
            account_id: request.account_id,
            url: request.url,
            description: request.description,
            event_types: request.event_types,
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.create_webhook(&caller, new).await }).await?;
        Ok(Response::new(webhook_to_pb(view)))
    }

    pub(super) async fn get_webhook_pb(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = self.caller(&request)?;
        let (manager, id) = (self.manager.clone(), request.into_inner().webhook_id);
        let view = detached(async move { manager.get_webhook(&caller, &id).await }).await?;
        Ok(Response::new(webhook_to_pb(view)))
    }

    pub(super) async fn list_webhooks_pb(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, account) = (self.manager.clone(), request.into_inner().account_id);
        let views = detached(async move { manager.list_webhooks(&caller, &account).await }).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: views.into_iter().map(webhook_to_pb).collect(),
        }))
    }

    pub(super) async fn update_webhook_pb(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let change = WebhookChange {
            endpoint_id: request.webhook_id,
            url: request.url,
            description: request.description,
            event_types: request.event_types.map(|list| list.values),
            disabled: request.enabled.map(|enabled| !enabled),
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.update_webhook(&caller, change).await }).await?;
        Ok(Response::new(webhook_to_pb(view)))
    }

    pub(super) async fn delete_webhook_pb(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, id) = (self.manager.clone(), request.into_inner().webhook_id);
        detached(async move { manager.delete_webhook(&caller, &id).await }).await?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    pub(super) async fn rotate_webhook_secret_pb(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let caller = self.caller(&request)?;
        let (manager, id) = (self.manager.clone(), request.into_inner().webhook_id);
        let view =
            detached(async move { manager.rotate_webhook_secret(&caller, &id).await }).await?;
        Ok(Response::new(webhook_to_pb(view)))
    }

    pub(super) async fn list_dead_letters_pb(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, id) = (self.manager.clone(), request.into_inner().webhook_id);
        let dead = detached(async move { manager.dead_letters(&caller, &id).await }).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: dead.into_iter().map(dead_letter_to_pb).collect(),
        }))
    }

    pub(super) async fn redeliver_pb(
        &self,
        request: Request<pb::RedeliverRequest>,
    ) -> Result<Response<pb::RedeliverResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let manager = self.manager.clone();
        let moved = detached(async move {
            manager
                .redeliver(&caller, &request.webhook_id, &request.event_id)
                .await
        })
        .await?;
        Ok(Response::new(pb::RedeliverResponse {
            redelivered: moved.min(u32::MAX as usize) as u32,
        }))
    }
}
