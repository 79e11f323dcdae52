//! `POST /secret-scanning/github`: GitHub's secret scanning partner
//! contract. The report is verified against GitHub's published keys
//! (`--github-scanning-keys`, reloaded on SIGHUP) before anything is read
//! from it; each token is labelled true or false positive, and a true one's
//! key is acted on (`--leak-action`). The gate reads the body under the
//! deadline first (up to 1 MiB); a bad signature is 401 and counts as a
//! failed credential of its address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{json_response, RestApi};
use crate::manage::{LeakAction, LeakReport};
use crate::secret_scanning::{ScanningKeys, MAX_REPORTED_TOKENS};

/// The leak intake's settings and GitHub's keys as last read.
pub struct LeakIntake {
    pub action: LeakAction,
    path: Option<PathBuf>,
    keys: ArcSwapOption<ScanningKeys>,
}

impl LeakIntake {
    /// Reads GitHub's keys (if a file is named) and reloads them on SIGHUP;
    /// a file that no longer parses leaves the previous keys in force.
    pub fn start(action: LeakAction, path: Option<PathBuf>) -> Arc<LeakIntake> {
        let keys = path
            .as_deref()
            .and_then(|path| crate::secret_scanning::read_keys(path).ok())
            .map(Arc::new);
        let intake = Arc::new(LeakIntake {
            action,
            path,
            keys: ArcSwapOption::new(keys),
        });
        if intake.path.is_some() {
            let reloading = intake.clone();
            tokio::spawn(async move {
                let Ok(mut hangups) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hangups.recv().await.is_some() {
                    reloading.reload();
                }
            });
        }
        intake
    }

    fn reload(&self) {
        let Some(path) = &self.path else { return };
        match crate::secret_scanning::read_keys(path) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "GitHub secret scanning keys reloaded");
                self.keys.store(Some(Arc::new(keys)));
            }
            Err(error) => {
                tracing::error!(%error, "GitHub secret scanning keys not reloaded; the previous ones stay")
            }
        }
    }
}

#[derive(Deserialize)]
struct Reported {
    token: String,
    #[serde(default, rename = "type")]
    _kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

pub(super) async fn github(
    State(api): State<Arc<RestApi>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(keys) = api.leaks.keys.load_full() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "GitHub secret scanning is not set up here (serve --github-scanning-keys)",
        ));
    };
    api.manager
        .signature_throttled(peer.ip())
        .map_err(ApiError::from)?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Err(error) = keys.verify(
        header("github-public-key-identifier"),
        header("github-public-key-signature"),
        &body,
    ) {
        api.manager.signature_failed(peer.ip());
        metrics::counter!(crate::telemetry::LEAK_REPORTS_REFUSED_TOTAL).increment(1);
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, error.to_string()));
    }
    let reported: Vec<Reported> = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(None, format!("not a list of reported tokens: {error}"))
    })?;
    if reported.len() > MAX_REPORTED_TOKENS {
        return Err(ApiError::bad_request(
            None,
            format!("at most {MAX_REPORTED_TOKENS} tokens per report"),
        ));
    }
    let tokens: Vec<String> = reported.iter().map(|report| report.token.clone()).collect();
    let reports = reported
        .into_iter()
        .map(|report| LeakReport {
            token: report.token,
            url: report.url,
            source: report.source,
        })
        .collect();
    let (manager, action) = (api.manager.clone(), api.leaks.action);
    let labels = api
        .detached(async move { manager.report_leaks(reports, action).await })
        .await?;
    let answer: Vec<_> = tokens
        .into_iter()
        .zip(labels)
        .map(|(token, leaked)| {
            json!({
                "token_raw": token,
                "token_type": "scopegate_api_key",
                "label": if leaked { "true_positive" } else { "false_positive" },
            })
        })
        .collect();
    Ok(json_response(&json!(answer)).into_response())
}
