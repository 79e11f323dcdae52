//! RotateKey: a new secret for the same key; the previous one decides for
//! its overlap and never manages.

use super::audit::audit_event;
use super::change::not_found_as;
use super::error::{invalid, ManageError};
use super::rules::{caller_reads, changeable};
use super::types::{Caller, KeyView};
use super::validate::parse_key_id;
use super::{record_mutation, Manager};
use crate::authz::now_unix_ms;
use crate::scope::ManageAction;
use crate::store::Change;

pub(super) const MAX_ROTATION_OVERLAP: std::time::Duration =
    std::time::Duration::from_secs(30 * 86_400);

impl Manager {
    /// A new secret for the same key; the previous one keeps working for
    /// `overlap` (zero: it stops at once). At most one previous secret: a
    /// second rotation drops the one before.
    pub async fn rotate(
        &self,
        caller: &Caller,
        key_id: &str,
        overlap: std::time::Duration,
    ) -> Result<(KeyView, String), ManageError> {
        let result = self.rotate_key(caller, key_id, overlap).await;
        record_mutation("rotate", &result);
        result
    }

    async fn rotate_key(
        &self,
        caller: &Caller,
        key_id: &str,
        overlap: std::time::Duration,
    ) -> Result<(KeyView, String), ManageError> {
        self.require(caller, ManageAction::Update)?;
        self.admit_mutation(caller)?;
        let id = parse_key_id(key_id)?;
        if overlap > MAX_ROTATION_OVERLAP {
            return Err(invalid(
                "overlap",
                format!(
                    "is longer than {} days",
                    MAX_ROTATION_OVERLAP.as_secs() / 86_400
                ),
            ));
        }
        let issued = self.format.reissue(id);
        let secret_hash = issued.secret_hash;
        let catalog = self.catalog.load_full();
        let guard = caller.clone();
        let key_id_text = key_id.to_owned();
        let (_, rotated) = self
            .store
            .mutate(caller_reads(caller, Some(id)), move |snapshot| {
                let (current, caller) = changeable(
                    snapshot,
                    &catalog,
                    &guard,
                    &id,
                    &key_id_text,
                    ManageAction::Update,
                )?;
                let now = now_unix_ms();
                let mut rotated = current.clone();
                if overlap.is_zero() {
                    rotated.previous_secret_hash.clear();
                    rotated.previous_secret_expire_unix_ms = 0;
                } else {
                    rotated.previous_secret_hash = current.secret_hash.clone();
                    rotated.previous_secret_expire_unix_ms = now + overlap.as_millis() as i64;
                }
                rotated.secret_hash = secret_hash.to_vec();
                rotated.version = rotated.required_version();
                rotated.update_time_unix_ms = now;
                let event = audit_event("rotate", &caller, Some(current), Some(&rotated));
                Ok::<_, ManageError>((
                    Change::Update(rotated.clone()),
                    event,
                    (current.clone(), rotated),
                ))
            })
            .await
            .map_err(|error| not_found_as(error, key_id))?;
        tracing::info!(%caller, key_id = %id, overlap_secs = overlap.as_secs(), "key rotated");
        Ok((self.view(&rotated)?, issued.token))
    }
}
