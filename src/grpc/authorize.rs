//! `scopegate.v1.Authorize`: decode, [`authz::decide`], encode.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::{self, authorize_server::Authorize};
use super::status::{bad_request, scope_status};
use super::Readiness;
use crate::authz::{self, Decision};
use crate::key::KeyTable;
use crate::scope::Catalog;
use crate::token::TokenFormat;

pub struct AuthorizeService {
    pub catalog: Arc<Catalog>,
    pub keys: Arc<KeyTable>,
    pub format: TokenFormat,
    pub readiness: Arc<Readiness>,
}

#[tonic::async_trait]
impl Authorize for AuthorizeService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        self.readiness.check()?;
        let request = request.into_inner();
        if request.http.is_some() {
            if !request.scopes.is_empty() {
                return Err(bad_request("http", "give either scopes or http, not both"));
            }
            return Err(Status::unimplemented(
                "http checks need the route table, which this version does not have yet: send scopes",
            ));
        }
        if request.scopes.is_empty() {
            return Err(bad_request("scopes", "at least one scope is required"));
        }
        let required = self
            .catalog
            .resolve(request.scopes.iter().map(String::as_str))
            .map_err(|error| scope_status("scopes", &error))?;
        let started = std::time::Instant::now();
        let decision = authz::decide(&self.keys, &self.format, &request.token, &required);
        metrics::histogram!("scopegate_decision_seconds").record(started.elapsed());
        Ok(Response::new(self.response(decision)))
    }
}

impl AuthorizeService {
    fn response(&self, decision: Decision) -> pb::CheckResponse {
        let mut response = pb::CheckResponse::default();
        let (code, message) = match decision {
            Decision::Allowed { key_id, account_id } => {
                response.allowed = true;
                response.key_id = key_id.to_string();
                response.account_id = account_id.to_string();
                (pb::Decision::Allowed, String::new())
            }
            Decision::MissingToken => (pb::Decision::MissingToken, "no token was sent".into()),
            Decision::MalformedToken => (
                pb::Decision::MalformedToken,
                "the token is malformed (wrong shape, prefix or checksum)".into(),
            ),
            Decision::UnknownKey => (pb::Decision::UnknownKey, "the key does not exist".into()),
            Decision::InsufficientScope {
                key_id,
                account_id,
                missing,
            } => {
                response.key_id = key_id.to_string();
                response.account_id = account_id.to_string();
                response.missing_scopes = self.catalog.names(&missing);
                let message = format!(
                    "the key lacks scopes: {}",
                    response.missing_scopes.join(", ")
                );
                (pb::Decision::InsufficientScope, message)
            }
        };
        metrics::counter!("scopegate_decisions_total", "api" => "check", "decision" => code.as_str_name()).increment(1);
        response.decision = code as i32;
        response.message = message;
        response
    }
}
