//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie names
//! a server-side session holding who signed in (the admin, or a key id and
//! its secret's hash: never the credential itself), a CSRF token bound to
//! it, and its idle and absolute expiry. Each caller keeps at most
//! [`MAX_PER_CALLER`] sessions (its own oldest goes first); a full table
//! refuses new sign-ins rather than end anyone else's session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::manage::Caller;

pub const COOKIE: &str = "scopegate_console";
/// The sign-in form's own token (double-submit: cookie and form field).
pub const SIGN_IN_COOKIE: &str = "scopegate_sign_in";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most.
const MAX_SESSIONS: usize = 10_000;
/// Sessions one caller (the admin, or one key) keeps at most.
pub const MAX_PER_CALLER: usize = 16;

pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Who a session is for: sessions of one caller count together.
fn principal(caller: &Caller) -> Option<crate::token::KeyId> {
    match caller {
        Caller::Admin => None,
        Caller::Key { key_id, .. } => Some(*key_id),
    }
}

impl Sessions {
    /// A new session for `caller`; its id, or `None` when the table is
    /// full of live sessions.
    pub fn start(&self, caller: Caller) -> Option<String> {
        let id = random_token();
        let now = Instant::now();
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let who = principal(&caller);
        let mut own: Vec<(Instant, String)> = sessions
            .iter()
            .filter(|(_, session)| principal(&session.caller) == who)
            .map(|(id, session)| (session.created, id.clone()))
            .collect();
        if own.len() >= MAX_PER_CALLER {
            own.sort();
            for (_, oldest) in &own[..=own.len() - MAX_PER_CALLER] {
                sessions.remove(oldest);
            }
        }
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, session| session.live(now));
            if sessions.len() >= MAX_SESSIONS {
                return None;
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                caller,
                csrf: random_token(),
                created: now,
                last_seen: now,
            },
        );
        Some(id)
    }

    /// The session's (caller as signed in, CSRF token), if it is live;
    /// touches it.
    pub fn get(&self, id: &str) -> Option<(Caller, String)> {
        let now = Instant::now();
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(id)?;
        if !session.live(now) {
            sessions.remove(id);
            return None;
        }
        session.last_seen = now;
        Some((session.caller.clone(), session.csrf.clone()))
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

/// The value of cookie `name` in the request.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.to_owned())
}

/// The session id from the request's cookies.
pub fn cookie_id(headers: &axum::http::HeaderMap) -> Option<String> {
    cookie(headers, COOKIE)
}

/// Compares two secrets in constant time.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Caller {
        Caller::Key {
            key_id: crate::token::KeyId::from_bytes([byte; 16]),
            account_id: "acme".into(),
            scopes: crate::scope::ScopeSet::EMPTY,
            secret_hash: [byte; 32],
        }
    }

    /// One caller signing in again and again ends only its own oldest
    /// sessions; the admin's stays.
    #[test]
    fn a_caller_evicts_only_its_own_sessions() {
        let sessions = Sessions::default();
        let admin = sessions.start(Caller::Admin).unwrap();
        let first = sessions.start(key(1)).unwrap();
        for _ in 0..100 {
            sessions.start(key(1)).unwrap();
        }
        assert!(sessions.get(&admin).is_some());
        assert!(sessions.get(&first).is_none());
        let held = sessions.by_id.lock().unwrap().len();
        assert_eq!(held, 1 + MAX_PER_CALLER);
    }
}
