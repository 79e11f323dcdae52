//! Leak reports: tokens a scanner found in public (GitHub's secret scanning,
//! or `scopegate keys report-leak`). A token whose secret is a key's current
//! or previous one is a true positive: the key is marked exposed (where and
//! when), and disabled, deleted or only marked (`--leak-action`), audited as
//! `leak`. Anything else is a false positive, and the answer says nothing
//! more about which keys exist.

use super::audit::audit_event;
use super::error::ManageError;
use super::types::Caller;
use super::Manager;
use crate::authz::now_unix_ms;
use crate::store::{Change, KeyRecord};
use crate::token::{KeyId, TokenFormat};

/// What a true leak does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeakAction {
    /// Disabled at once (Check answers DISABLED) and marked exposed.
    #[default]
    Disable,
    /// Deleted at once.
    Delete,
    /// Only marked exposed (and audited): the provider decides.
    Notify,
}

impl LeakAction {
    pub fn parse(text: &str) -> Result<LeakAction, String> {
        match text {
            "disable" => Ok(LeakAction::Disable),
            "delete" => Ok(LeakAction::Delete),
            "notify" => Ok(LeakAction::Notify),
            other => Err(format!("`{other}` is not disable, delete or notify")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LeakAction::Disable => "disable",
            LeakAction::Delete => "delete",
            LeakAction::Notify => "notify",
        }
    }
}

/// One reported token: the token, where it was seen, and by what.
#[derive(Debug, Clone, Default)]
pub struct LeakReport {
    pub token: String,
    pub url: String,
    pub source: String,
}

impl Manager {
    /// Judges each reported token; for each, whether it is one of ours
    /// (true positive), acting on its key as `action` says. The reporter
    /// is authenticated by the edge (GitHub's signature, or the admin).
    pub async fn report_leaks(
        &self,
        reports: Vec<LeakReport>,
        action: LeakAction,
    ) -> Result<Vec<bool>, ManageError> {
        let mut labels = Vec::with_capacity(reports.len());
        for report in reports {
            let leaked = self.leaked_key(&report.token)?;
            if let Some(key_id) = leaked {
                self.act_on_leak(key_id, &report, action).await?;
            }
            labels.push(leaked.is_some());
        }
        Ok(labels)
    }

    /// The key whose current or previous secret this token carries.
    fn leaked_key(&self, token: &str) -> Result<Option<KeyId>, ManageError> {
        let Ok(parsed) = self.format.parse(token.trim()) else {
            return Ok(None);
        };
        let Some(record) = self.store.get(&parsed.key_id)? else {
            return Ok(None);
        };
        Ok(carries_secret(&self.format, token.trim(), &record).then_some(parsed.key_id))
    }

    async fn act_on_leak(
        &self,
        key_id: KeyId,
        report: &LeakReport,
        action: LeakAction,
    ) -> Result<(), ManageError> {
        let token = zeroize::Zeroizing::new(report.token.trim().to_owned());
        let url: String = report.url.chars().take(2048).collect();
        let source: String = report
            .source
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        let format = self.format.clone();
        let acted = self
            .store
            .mutate(vec![key_id], move |snapshot| {
                let current = snapshot
                    .get(&key_id)
                    .ok_or(crate::store::StoreError::NotFound)?;
                // Still the same secret when the change applies.
                if !carries_secret(&format, &token, current) {
                    return Err(ManageError::NotFound(key_id.to_string()));
                }
                let now = now_unix_ms();
                let mut exposed = current.clone();
                exposed.exposed_time_unix_ms = now;
                exposed.exposed_url = url.clone();
                exposed.update_time_unix_ms = now;
                let change = match action {
                    LeakAction::Delete => Change::Delete(current.clone()),
                    LeakAction::Disable => {
                        exposed.disabled = true;
                        Change::Update(exposed.clone())
                    }
                    LeakAction::Notify => Change::Update(exposed.clone()),
                };
                let after = (action != LeakAction::Delete).then_some(&exposed);
                let mut event = audit_event("leak", &Caller::Admin, Some(current), after);
                event.actor = format!("leak report ({source})");
                Ok::<_, ManageError>((change, event, ()))
            })
            .await;
        match acted {
            // Deleted or rotated meanwhile: nothing of it is left to act on.
            Ok(()) | Err(ManageError::NotFound(_)) => {}
            Err(ManageError::Store(crate::store::StoreError::NotFound)) => {}
            Err(error) => return Err(error),
        }
        tracing::warn!(%key_id, action = action.name(), "key reported leaked");
        metrics::counter!(crate::telemetry::LEAKS_TOTAL, "action" => action.name()).increment(1);
        Ok(())
    }
}

/// In constant time per hash: the token's secret is the record's current or
/// previous one.
fn carries_secret(format: &TokenFormat, token: &str, record: &KeyRecord) -> bool {
    let Ok(parsed) = format.parse(token) else {
        return false;
    };
    [&record.secret_hash, &record.previous_secret_hash]
        .into_iter()
        .filter_map(|hash| <&[u8; 32]>::try_from(hash.as_slice()).ok())
        .any(|hash| format.verify(&parsed, hash))
}
