//! `scopegate.v1.ManageKey`: authenticate the caller, call [`Manager`], encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{grants_from_pb, key_to_pb, scopes_to_pb};
use super::pb::{self, manage_key_server::ManageKey};
use super::Readiness;
use crate::manage::{Caller, KeyChange, ListQuery, ManageError, Manager, NewKey};

pub struct ManageKeyService {
    pub manager: Arc<Manager>,
    pub readiness: Arc<Readiness>,
}

impl ManageKeyService {
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.readiness.check()?;
        Ok(self.manager.authenticate(bearer(request)?)?)
    }
}

/// The token of `authorization: Bearer <token>`, if the header is there.
pub(super) fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("invalid credentials"))?;
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Some(token.trim()))
        .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))
}

/// Runs a key change on its own task. A request cut by its deadline stops
/// waiting, but the change, its log line and its metrics complete (or the
/// change never starts): never half.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ManageError>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|_| Status::internal("the change task failed"))?
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
        let new_key = NewKey {
            account_id: request.account_id,
            name: request.name,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
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
        let view = self.manager.get(&caller, &request.into_inner().key_id)?;
        Ok(Response::new(key_to_pb(view)))
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
        let (views, next_page_token) = self.manager.list(&caller, query)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: views.into_iter().map(key_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let change = KeyChange {
            key_id: request.key_id,
            name: request.name,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.update(&caller, change).await }).await?;
        Ok(Response::new(key_to_pb(view)))
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

    async fn list_scopes(
        &self,
        request: Request<pb::ListScopesRequest>,
    ) -> Result<Response<pb::ListScopesResponse>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(scopes_to_pb(self.manager.scopes(&caller))))
    }
}
