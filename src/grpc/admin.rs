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
        let records = tokio::task::spawn_blocking(move || manager.backup(&caller))
            .await
            .map_err(|_| Status::unavailable("shutting down"))??;
        let stream = tokio_stream::iter(records.into_iter().map(|record| {
            Ok(pb::BackupRecord {
                key_record: record.to_vec(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}
