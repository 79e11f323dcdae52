//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie names
//! a server-side session holding the credential (never the browser), a CSRF
//! token bound to it, and its idle and absolute expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use zeroize::Zeroizing;

pub const COOKIE: &str = "scopegate_console";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (expired ones go first, then the oldest).
const MAX_SESSIONS: usize = 10_000;

pub struct Session {
    pub credential: Zeroizing<String>,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// A new session for `credential`; returns its id.
    pub fn start(&self, credential: &str) -> String {
        let id = random_token();
        let now = Instant::now();
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, session| session.live(now));
            if sessions.len() >= MAX_SESSIONS {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, session)| session.created)
                    .map(|(id, _)| id.clone())
                {
                    sessions.remove(&oldest);
                }
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                credential: Zeroizing::new(credential.to_owned()),
                csrf: random_token(),
                created: now,
                last_seen: now,
            },
        );
        id
    }

    /// The session's (credential, CSRF token), if it is live; touches it.
    pub fn get(&self, id: &str) -> Option<(Zeroizing<String>, String)> {
        let now = Instant::now();
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(id)?;
        if !session.live(now) {
            sessions.remove(id);
            return None;
        }
        session.last_seen = now;
        Some((session.credential.clone(), session.csrf.clone()))
    }

    pub fn end(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) < IDLE && now.duration_since(self.created) < ABSOLUTE
    }
}

/// The session id from the request's cookies.
pub fn cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Compares two secrets in constant time.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
