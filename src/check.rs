//! The decision, finished, for every decision door (Authorize, ext_authz,
//! and any HTTP door to come): decided on one policy by the pure core
//! (`authz`), then the key's rate limits counted, in this one place. Doors
//! translate their request into an [`HttpQuestion`] or a scope list, and the
//! [`Checked`] answer back; none counts limits or routes on its own.

use std::net::IpAddr;
use std::sync::Arc;

use crate::authz::{self, Decision, HttpCheck, Policy, ScopeFrom};
use crate::balances::{Balances, Spent};
use crate::counters::{Admission, Counters};
use crate::key::KeyTable;
use crate::ratelimit::RateStatus;
use crate::scope::{Catalog, ScopeError, ScopeId, ScopeSet};
use crate::token::TokenFormat;
use crate::usage::Usage;

/// What every decision door reads.
pub struct CheckContext {
    pub keys: Arc<KeyTable>,
    pub format: TokenFormat,
    /// Catalog + routes, swapped whole on reload; a check loads it once and
    /// reads one policy from start to end.
    pub policy: arc_swap::ArcSwap<Policy>,
    /// Log one decision in this many (0: none).
    pub decision_log_every: u64,
    pub decisions_seen: std::sync::atomic::AtomicU64,
    /// Would-be denials let through by dry run (for sampled logs).
    pub dry_run_seen: std::sync::atomic::AtomicU64,
    /// The rate limits' counters.
    pub counters: Arc<Counters>,
    /// Every decision counted per key, outcome and scope (`None`: `--usage off`).
    pub usage: Option<Arc<Usage>>,
    /// Keys' credit balances.
    pub balances: Arc<Balances>,
    /// Where a refusal by a rate limit or the credits is offered as a
    /// webhook event (`None`: webhooks off). Never waits.
    pub signals: Option<Arc<crate::webhooks::Signals>>,
}

/// An HTTP request as a door saw it.
pub struct HttpQuestion<'a> {
    /// The bearer token ("" when none was sent).
    pub token: &'a str,
    /// The credential headers could not be read as one token: denied
    /// MALFORMED_TOKEN without routing.
    pub malformed: bool,
    pub method: &'a str,
    pub path: &'a str,
    /// The request carries a method-override header.
    pub method_override: bool,
    pub client_ip: Option<IpAddr>,
    /// The scope the proxy names for this route, instead of the routes'.
    pub proxy_scope: Option<&'a str>,
    /// Whether this door counts the key's rate limits (ext_authz may leave
    /// them to Envoy's rate-limit service).
    pub count: bool,
    /// What the request costs a key with credits, when its proxy or caller
    /// says (instead of its route's `cost`).
    pub cost: Option<u32>,
}

/// A finished decision.
pub struct Checked {
    pub decision: Decision,
    /// Where the key's closest limit stands, when limits were counted.
    pub rate: Option<RateStatus>,
    /// The scope the route required (HTTP checks).
    pub scope: Option<ScopeId>,
    /// Allowed on a path other than the one sent: the path decided on.
    pub canonical_path: Option<String>,
    /// A key with credits: what is left (allowed), or what could not pay.
    pub credits: Option<u64>,
}

impl Checked {
    /// An allowed request past one of its key's limits: RATE_LIMITED.
    fn over(self, status: RateStatus) -> Checked {
        match self.decision {
            Decision::Allowed {
                key_id, account_id, ..
            } => Checked {
                decision: Decision::RateLimited {
                    key_id,
                    account_id,
                    status: status.clone(),
                },
                rate: Some(status),
                canonical_path: None,
                ..self
            },
            _ => self,
        }
    }

    /// An allowed request its key's credits cannot pay for: USAGE_EXCEEDED.
    fn short(self, remaining: u64) -> Checked {
        match self.decision {
            Decision::Allowed {
                key_id, account_id, ..
            } => Checked {
                decision: Decision::UsageExceeded {
                    key_id,
                    account_id,
                    remaining,
                },
                credits: Some(remaining),
                canonical_path: None,
                ..self
            },
            _ => self,
        }
    }
}

/// Why a check has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("rate-limit counters are unreachable and --rate-limit-fail-closed is set")]
    CountersAway,
    #[error("credit balances are unreachable and --rate-limit-fail-closed is set")]
    CreditsAway,
    #[error("{0}")]
    Scope(#[from] ScopeError),
}

impl CheckContext {
    /// Decides `question` and counts its limits; `answer` gets the result
    /// with the policy it names scopes by (loaded once unless a count
    /// intervened: no policy is held across a Redis round trip).
    pub async fn check_http<R>(
        &self,
        question: &HttpQuestion<'_>,
        answer: impl FnOnce(Checked, &Policy) -> R,
    ) -> Result<R, CheckError> {
        let policy = self.policy.load();
        let mut cost = question.cost.unwrap_or(crate::route::DEFAULT_COST);
        let checked = if question.malformed {
            Checked {
                decision: Decision::MalformedToken,
                rate: None,
                scope: None,
                canonical_path: None,
                credits: None,
            }
        } else {
            let scope_from = match question.proxy_scope {
                None => ScopeFrom::Routes,
                Some(name) => proxy_scope(&policy.catalog, name)
                    .map_or(ScopeFrom::UnknownToProxy, ScopeFrom::Proxy),
            };
            let decided = authz::decide_http_noting(
                &self.keys,
                &self.format,
                &policy.routes,
                question.token,
                &HttpCheck {
                    method: question.method,
                    path: question.path,
                    method_override: question.method_override,
                    client_ip: question.client_ip,
                    scope_from,
                },
            );
            let canonical_path = match decided.decision {
                Decision::Allowed { .. } if decided.renormalized => {
                    policy.routes.canonical_path(question.path)
                }
                _ => None,
            };
            cost = question.cost.unwrap_or(decided.cost);
            Checked {
                decision: decided.decision,
                rate: None,
                scope: decided.scope,
                canonical_path,
                credits: None,
            }
        };
        let scopes = checked.scope.map_or(ScopeSet::EMPTY, ScopeSet::single);
        let subject = (question.token, scopes, cost);
        self.finish(checked, policy, question.count, subject, answer)
            .await
    }

    /// Decides whether `token` holds every one of `scopes` and counts its
    /// limits; `answer` as for [`CheckContext::check_http`].
    pub async fn check_scopes<R>(
        &self,
        token: &str,
        scopes: &[String],
        (client_ip, cost): (Option<IpAddr>, Option<u32>),
        answer: impl FnOnce(Checked, &Policy) -> R,
    ) -> Result<R, CheckError> {
        let policy = self.policy.load();
        let required = policy.catalog.resolve(scopes.iter().map(String::as_str))?;
        let checked = Checked {
            decision: authz::decide(&self.keys, &self.format, token, client_ip, &required),
            rate: None,
            scope: None,
            canonical_path: None,
            credits: None,
        };
        let cost = cost.unwrap_or(crate::route::DEFAULT_COST);
        self.finish(checked, policy, true, (token, required, cost), answer)
            .await
    }

    /// Answers at once, or (an allowed key with limits, `count`, or with
    /// credits and a cost) counts and spends first, and answers on the
    /// policy loaded again: none is held across a Redis round trip. Either
    /// way the decision's usage is counted, on the key `subject`'s token
    /// names and the scopes it required.
    async fn finish<R>(
        &self,
        checked: Checked,
        policy: arc_swap::Guard<Arc<Policy>>,
        count: bool,
        (token, scopes, cost): (&str, ScopeSet, u32),
        answer: impl FnOnce(Checked, &Policy) -> R,
    ) -> Result<R, CheckError> {
        let (limits, credits) = match &checked.decision {
            Decision::Allowed { rate, credits, .. } => {
                (count && rate.is_some(), credits.is_some() && cost > 0)
            }
            _ => (false, false),
        };
        if !limits && !credits {
            self.tally(&checked.decision, token, scopes);
            return Ok(answer(checked, &policy));
        }
        drop(policy);
        let counted = if limits {
            self.count(checked).await?
        } else {
            checked
        };
        let paid = if credits {
            self.spend(counted, cost).await?
        } else {
            counted
        };
        self.tally(&paid.decision, token, scopes);
        Ok(answer(paid, &self.policy.load()))
    }

    /// Spends an allowed request's cost of its key's credits, after every
    /// other rule (its rate limits included): it stays allowed with what is
    /// left, or turns USAGE_EXCEEDED, nothing spent.
    async fn spend(&self, checked: Checked, cost: u32) -> Result<Checked, CheckError> {
        let Decision::Allowed {
            key_id,
            credits: Some(credits),
            ..
        } = &checked.decision
        else {
            return Ok(checked);
        };
        match self.balances.spend(*key_id, credits, u64::from(cost)).await {
            Spent::Paid(left) => Ok(Checked {
                credits: Some(left),
                ..checked
            }),
            Spent::Short(left) => {
                if let (Some(signals), Decision::Allowed { account_id, .. }) =
                    (&self.signals, &checked.decision)
                {
                    signals.credits_exhausted(*key_id, account_id);
                }
                Ok(checked.short(left))
            }
            Spent::Away if self.balances.fail_closed() => Err(CheckError::CreditsAway),
            Spent::Away => Ok(checked),
        }
    }

    #[inline]
    fn tally(&self, decision: &Decision, token: &str, scopes: ScopeSet) {
        if let Some(usage) = &self.usage {
            usage.record(decision, token, &self.format, &self.keys, scopes);
        }
    }

    /// Counts an allowed request against the key's rate limits, after every
    /// other rule: the decision stands (with where its closest limit
    /// stands) or turns RATE_LIMITED.
    async fn count(&self, checked: Checked) -> Result<Checked, CheckError> {
        let applicable = match &checked.decision {
            Decision::Allowed {
                rate: Some(applicable),
                ..
            } => applicable,
            _ => return Ok(checked),
        };
        match self.counters.admit(applicable, 1).await {
            Admission::Within(status) => Ok(Checked {
                rate: status,
                ..checked
            }),
            Admission::Over(status) => {
                if let (
                    Some(signals),
                    Decision::Allowed {
                        key_id, account_id, ..
                    },
                ) = (&self.signals, &checked.decision)
                {
                    signals.rate_limited(*key_id, account_id, &status);
                }
                Ok(checked.over(status))
            }
            Admission::Unavailable => Err(CheckError::CountersAway),
        }
    }

    /// Sampled per-decision log line: ids, scope and outcome, never a token.
    pub fn log_decision(
        &self,
        api: &'static str,
        decision: &'static str,
        key_id: &str,
        account_id: &str,
        scope: Option<&str>,
    ) {
        if self.decision_log_every == 0 {
            return;
        }
        let seen = self
            .decisions_seen
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if seen % self.decision_log_every == 0 {
            tracing::info!(api, decision, key_id, account_id, scope, "decision");
        }
    }
}

/// A denial as an HTTP answer, for every door that answers in HTTP
/// (ext_authz's denied response, forward-auth): 401 with
/// `WWW-Authenticate` for a missing, malformed, unknown, expired or
/// disabled key; 429 with `Retry-After` and the X-RateLimit headers; 400 for
/// an unusable path or a method override; 403 otherwise. The body is
/// SendGrid's `{"errors":[…]}`.
pub struct HttpDenial {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub message: String,
    pub body: String,
}

pub fn http_denial(decision: &Decision, catalog: &Catalog) -> HttpDenial {
    let status = match decision {
        Decision::RateLimited { .. } | Decision::UsageExceeded { .. } => 429,
        Decision::MissingToken
        | Decision::MalformedToken
        | Decision::UnknownKey
        | Decision::Expired
        | Decision::Disabled => 401,
        Decision::InvalidPath | Decision::MethodOverride => 400,
        _ => 403,
    };
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if status == 401 {
        headers.push(("www-authenticate", "Bearer realm=\"scopegate\"".to_owned()));
    }
    if let Decision::RateLimited { status, .. } = decision {
        headers.push(("retry-after", status.reset_secs.to_string()));
        headers.extend(rate_headers(status));
    }
    if let Decision::UsageExceeded { remaining, .. } = decision {
        headers.push((CREDITS_HEADER, remaining.to_string()));
    }
    let message = decision.message(catalog);
    let body = serde_json::json!({"errors": [{"field": null, "message": message}]}).to_string();
    HttpDenial {
        status,
        headers,
        message,
        body,
    }
}

/// The header that tells what a key with credits has left.
pub const CREDITS_HEADER: &str = "x-credits-remaining";

/// The draft-03 rate-limit headers (as Envoy's rate-limit filter sends
/// them) for the limit closest to running out.
pub fn rate_headers(status: &RateStatus) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", status.quota.to_string()),
        ("x-ratelimit-remaining", status.remaining.to_string()),
        ("x-ratelimit-reset", status.reset_secs.to_string()),
    ]
}

/// The catalog's id for a scope the proxy names; an unknown one is logged
/// once (a misconfigured proxy), and its requests are denied NO_ROUTE.
fn proxy_scope(catalog: &Catalog, name: &str) -> Option<ScopeId> {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let found = catalog.scope_id(name);
    if found.is_none() && !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            scope = name,
            "the proxy names a scope the catalog does not have (context_extensions \"scope\"); such requests are denied NO_ROUTE (logged once)"
        );
    }
    found
}
