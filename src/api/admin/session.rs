//! Dashboard sessions: after a login with an admin token the browser holds
//! a random session id in an HttpOnly cookie; the server keeps only the
//! id's SHA-256, who logged in, when it expires and the session's CSRF
//! token. Memory only: a restart logs everyone out, which is fine for an
//! operator page, and several instances each have their own sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::sync::lock;

/// How long a session lasts from its login (not extended by use).
pub(super) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest goes when a login would pass it.
const MAX_SESSIONS: usize = 256;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The name of the API key that logged in (for the page and the audit log).
    pub key_name: String,
    /// Put in every form of the page and checked on POST.
    pub csrf: String,
    expires: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 bytes from the OS CSPRNG, hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session for `key_name`; returns the id for the cookie (never
    /// stored here) and the session. `None` only if the OS RNG fails.
    pub(super) fn create(&self, key_name: &str) -> Option<(String, Session)> {
        let id = random_hex()?;
        let session = Session {
            key_name: key_name.to_string(),
            csrf: random_hex()?,
            expires: Instant::now() + SESSION_TTL,
        };
        let mut map = lock(&self.by_hash);
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(digest(&id), session.clone());
        Some((id, session))
    }

    /// The live session with this id, if any.
    pub(super) fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut map = lock(&self.by_hash);
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session if `csrf` is its token; false otherwise.
    pub(super) fn end(&self, id: &str, csrf: &str) -> bool {
        let key = digest(id);
        let mut map = lock(&self.by_hash);
        let matches = map
            .get(&key)
            .is_some_and(|s| bool::from(s.csrf.as_bytes().ct_eq(csrf.as_bytes())));
        if matches {
            map.remove(&key);
        }
        matches
    }

    /// Seconds a new session's cookie lives.
    pub(super) fn max_age_secs() -> u64 {
        SESSION_TTL.as_secs()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_and_ended_only_with_its_csrf_token() {
        let sessions = Sessions::default();
        let (id, s) = sessions.create("ops").unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.csrf);
        assert_eq!(sessions.get(&id).unwrap().key_name, "ops");
        assert!(sessions.get("not-a-session").is_none());
        assert!(!sessions.end(&id, "wrong"));
        assert!(sessions.get(&id).is_some());
        assert!(sessions.end(&id, &s.csrf));
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.create("ops").unwrap().0;
        for _ in 0..MAX_SESSIONS {
            sessions.create("ops").unwrap();
        }
        assert!(sessions.get(&first).is_none(), "the oldest went");
        assert_eq!(lock(&sessions.by_hash).len(), MAX_SESSIONS);
    }
}
