//! The role calls of `scopegate.v1.ManageKey`, and ReportLeak: translate,
//! call [`Manager`], encode.

use tonic::{Request, Response, Status};

use super::convert::{grants_from_pb, role_to_pb};
use super::manage::{detached, off_workers, ManageKeyService};
use super::pb;
use crate::manage::{LeakReport, NewRole, RoleChange};

impl ManageKeyService {
    pub(super) async fn create_role_pb(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let new_role = NewRole {
            account_id: request.account_id,
            name: request.name,
            description: request.description,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
            template: request.template,
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.create_role(&caller, new_role).await }).await?;
        Ok(Response::new(role_to_pb(view)))
    }

    pub(super) async fn get_role_pb(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request)?;
        let (manager, role_id) = (self.manager.clone(), request.into_inner().role_id);
        let view = off_workers(move || manager.get_role(&caller, &role_id)).await?;
        Ok(Response::new(role_to_pb(view)))
    }

    pub(super) async fn list_roles_pb(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, account) = (self.manager.clone(), request.into_inner().account_id);
        let views = off_workers(move || manager.list_roles(&caller, &account)).await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: views.into_iter().map(role_to_pb).collect(),
        }))
    }

    pub(super) async fn update_role_pb(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let change = RoleChange {
            role_id: request.role_id,
            name: request.name,
            description: request.description,
            scopes: request.scopes,
            grants: grants_from_pb(request.grants)?,
        };
        let manager = self.manager.clone();
        let view = detached(async move { manager.update_role(&caller, change).await }).await?;
        Ok(Response::new(role_to_pb(view)))
    }

    pub(super) async fn report_leak_pb(
        &self,
        request: Request<pb::ReportLeakRequest>,
    ) -> Result<Response<pb::ReportLeakResponse>, Status> {
        let caller = self.caller(&request)?;
        if !matches!(caller, crate::manage::Caller::Admin) {
            return Err(crate::manage::ManageError::AdminOnly.into());
        }
        let reports = request.into_inner().reports;
        if reports.len() > crate::secret_scanning::MAX_REPORTED_TOKENS {
            return Err(super::status::bad_request(
                "reports",
                format!(
                    "at most {} tokens per report",
                    crate::secret_scanning::MAX_REPORTED_TOKENS
                ),
            ));
        }
        let reports = reports.into_iter().map(leak_report).collect();
        let (manager, action) = (self.manager.clone(), self.leak_action);
        let leaked = detached(async move { manager.report_leaks(reports, action).await }).await?;
        Ok(Response::new(pb::ReportLeakResponse { leaked }))
    }

    pub(super) async fn delete_role_pb(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let caller = self.caller(&request)?;
        let (manager, role_id) = (self.manager.clone(), request.into_inner().role_id);
        detached(async move { manager.delete_role(&caller, &role_id).await }).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }
}

fn leak_report(report: pb::LeakReport) -> LeakReport {
    let pb::LeakReport { token, url, source } = report;
    LeakReport { token, url, source }
}
