//! `scopegate.v1.ManageKey`: authenticate the caller, call [`Manager`], encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    audit_event_to_pb, credits_from_pb, grants_from_pb, key_to_pb, rate_limits_from_pb,
    scopes_to_pb, unix_ms, usage_row_to_pb, usage_to_pb,
};
use super::pb::{self, manage_key_server::ManageKey};
use super::status::bad_request;
use crate::manage::{
    AuditQuery, Caller, ExportQuery, KeyChange, KeyTerms, ListQuery, ManageError, Manager, NewKey,
    UsageQuery,
};
use crate::stats::RangeQuery;

pub struct ManageKeyService {
    pub manager: Arc<Manager>,
    /// What a reported leak does to its key (`serve --leak-action`).
    pub leak_action: crate::manage::LeakAction,
}

impl ManageKeyService {
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let client_ip = request.remote_addr().map(|addr| addr.ip());
        Ok(self
            .manager
            .authenticate_from(bearer(request)?, client_ip)?)
    }
}

/// The token of `authorization: Bearer <token>`, if the header is there.
pub(super) fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    crate::token::bearer(value.as_bytes())
        .map(Some)
        .map_err(Status::unauthenticated)
}

/// Runs a key change on its own task. A request cut by its deadline stops
/// waiting, but the change, its log line and its metrics complete (or the
/// change never starts): never half.
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ManageError>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|_| Status::internal("the change task failed"))?
        .map_err(Status::from)
}

/// Runs a blocking read (sled) on the blocking pool, never on a decision worker.
pub(super) async fn off_workers<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ManageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| Status::internal("the read task failed"))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl ManageKey for ManageKeyService {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let terms = KeyTerms {
            expire_time: request
                .expire_time
                .as_ref()
                .map(|time| unix_ms("expire_time", time))
                .transpose()?,
            not_before: request
                .not_before
                .as_ref()
                .map(|time| unix_ms("not_before", time))
                .transpose()?,
            allowed_cidrs: request.allowed_cidrs,
            metadata: request.metadata.into_iter().collect(),
            rate_limits: rate_limits_from_pb(request.rate_limits)?,
            credits: request.credits.map(credits_from_pb).transpose()?,
        };
        let new_key = NewKey {
            account_id: request.account_id,
            name: request.name,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
            terms,
            all_my_scopes_except_billing: request.all_my_scopes_except_billing,
            request_id: request.request_id,
            roles: request.role_ids,
        };
        let manager = self.manager.clone();
        let (view, token) = detached(async move { manager.create(&caller, new_key).await }).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_to_pb(view)),
            token,
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.caller(&request)?;
        let (manager, key_id) = (self.manager.clone(), request.into_inner().key_id);
        let view = off_workers(move || manager.get(&caller, &key_id)).await?;
        Ok(Response::new(key_to_pb(
            self.manager.live_credits(view).await,
        )))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let query = ListQuery {
            account_id: request.account_id,
            page_size: request.page_size,
            page_token: request.page_token,
        };
        let manager = self.manager.clone();
        let (views, next_page_token) = off_workers(move || manager.list(&caller, query)).await?;
        let mut keys = Vec::with_capacity(views.len());
        for view in views {
            keys.push(key_to_pb(self.manager.live_credits(view).await));
        }
        Ok(Response::new(pb::ListKeysResponse {
            keys,
            next_page_token,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let time_change =
            |field: &str, time: &Option<prost_types::Timestamp>, clear: bool| match (time, clear) {
                (Some(_), true) => Err(bad_request(
                    field,
                    format!("give {field} or clear_{field}, not both"),
                )),
                (Some(time), false) => Ok(Some(Some(unix_ms(field, time)?))),
                (None, true) => Ok(Some(None)),
                (None, false) => Ok(None),
            };
        let change = KeyChange {
            expire_time: time_change(
                "expire_time",
                &request.expire_time,
                request.clear_expire_time,
            )?,
            not_before: time_change("not_before", &request.not_before, request.clear_not_before)?,
            key_id: request.key_id,
            name: request.name,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
            all_my_scopes_except_billing: request.all_my_scopes_except_billing,
            enabled: request.enabled,
            allowed_cidrs: request.allowed_cidrs.map(|list| list.values),
            metadata: request
                .metadata
                .map(|map| map.entries.into_iter().collect()),
            rate_limits: request
                .rate_limits
                .map(|list| rate_limits_from_pb(list.limits))
                .transpose()?,
            credits: request
                .credits
                .map(|change| change.credits.map(credits_from_pb).transpose())
                .transpose()?,
            roles: request.role_ids.map(|list| list.values),
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.update(&caller, change).await }).await?;
        Ok(Response::new(key_to_pb(
            self.manager.live_credits(view).await,
        )))
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        self.create_role_pb(request).await
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        self.get_role_pb(request).await
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        self.list_roles_pb(request).await
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        self.update_role_pb(request).await
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        self.delete_role_pb(request).await
    }

    async fn report_leak(
        &self,
        request: Request<pb::ReportLeakRequest>,
    ) -> Result<Response<pb::ReportLeakResponse>, Status> {
        self.report_leak_pb(request).await
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.create_webhook_pb(request).await
    }

    async fn get_webhook(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.get_webhook_pb(request).await
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        self.list_webhooks_pb(request).await
    }

    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.update_webhook_pb(request).await
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        self.delete_webhook_pb(request).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        self.rotate_webhook_secret_pb(request).await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.list_dead_letters_pb(request).await
    }

    async fn redeliver(
        &self,
        request: Request<pb::RedeliverRequest>,
    ) -> Result<Response<pb::RedeliverResponse>, Status> {
        self.redeliver_pb(request).await
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, key_id) = (self.manager.clone(), request.into_inner().key_id);
        detached(async move { manager.delete(&caller, &key_id).await }).await?;
        Ok(Response::new(pb::DeleteKeyResponse {}))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let time = |field: &str, time: &Option<prost_types::Timestamp>| {
            time.as_ref().map_or(Ok(0), |time| unix_ms(field, time))
        };
        let query = AuditQuery {
            start_unix_ms: time("start_time", &request.start_time)?,
            end_unix_ms: time("end_time", &request.end_time)?,
            account_id: request.account_id,
            key_id: request.key_id,
            page_size: request.page_size,
            page_token: request.page_token,
        };
        let (events, next_page_token) = self.manager.audit(&caller, query).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(audit_event_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let top_keys = usize::try_from(request.top_keys)
            .map_err(|_| bad_request("top_keys", "must not be negative"))?;
        let (start_time, end_time) = (
            request.start_time.map(|time| time.to_string()),
            request.end_time.map(|time| time.to_string()),
        );
        let text = |text: &str| {
            Some(text)
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        let (aggregated_by, start_date, end_date) = (
            text(&request.aggregated_by),
            text(&request.start_date),
            text(&request.end_date),
        );
        let query = UsageQuery {
            key_id: Some(request.key_id.as_str()).filter(|id| !id.is_empty()),
            account_id: &request.account_id,
            range: RangeQuery {
                aggregated_by: aggregated_by.as_deref(),
                start_date: start_date.as_deref(),
                end_date: end_date.as_deref(),
                start_time: start_time.as_deref(),
                end_time: end_time.as_deref(),
            },
            group_by_scope: request.group_by_scope,
            top_keys,
        };
        let report = self.manager.usage(&caller, query).await?;
        Ok(Response::new(usage_to_pb(report)))
    }

    async fn export_usage(
        &self,
        request: Request<pb::ExportUsageRequest>,
    ) -> Result<Response<pb::ExportUsageResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let query = ExportQuery {
            account_id: &request.account_id,
            grain: &request.grain,
            start_time: request.start_time,
            end_time: request.end_time,
            page_size: request.page_size,
            page_token: &request.page_token,
        };
        let (rows, next_page_token) = self.manager.export_usage(&caller, query).await?;
        Ok(Response::new(pb::ExportUsageResponse {
            rows: rows.into_iter().map(usage_row_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_credits(
        &self,
        request: Request<pb::UpdateCreditsRequest>,
    ) -> Result<Response<pb::UpdateCreditsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let manager = self.manager.clone();
        let remaining = detached(async move {
            manager
                .update_credits(&caller, &request.key_id, (&request.op, request.amount))
                .await
        })
        .await?;
        Ok(Response::new(pb::UpdateCreditsResponse { remaining }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let overlap = match request.overlap {
            None => std::time::Duration::ZERO,
            Some(overlap) => std::time::Duration::try_from(overlap)
                .map_err(|_| bad_request("overlap", "must not be negative"))?,
        };
        let manager = self.manager.clone();
        let (view, token) =
            detached(async move { manager.rotate(&caller, &request.key_id, overlap).await })
                .await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_to_pb(view)),
            token,
        }))
    }

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(scopes_to_pb(self.manager.scopes(&caller))))
    }
}
