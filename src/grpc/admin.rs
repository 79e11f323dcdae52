//! `scopegate.v1.Admin`: operator-only RPCs (backup).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::manage::bearer;
use super::pb::{self, admin_server::Admin};
use crate::manage::Manager;

pub struct AdminService {
    pub manager: Arc<Manager>,
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::BackupRecord, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    type BackupStream = RecordStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let caller = self.manager.authenticate(bearer(&request)?)?;
        let manager = self.manager.clone();
        let exported = tokio::task::spawn_blocking(move || manager.backup(&caller))
            .await
            .map_err(|_| Status::unavailable("shutting down"))??;
        let roles = exported.roles.into_iter().map(|role| pb::BackupRecord {
            role_record: role.to_vec(),
            ..Default::default()
        });
        let keys = exported.keys.into_iter().map(|key| pb::BackupRecord {
            key_record: key.to_vec(),
            ..Default::default()
        });
        let stream = tokio_stream::iter(roles.chain(keys).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}
