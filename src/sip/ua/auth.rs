//! Digest authentication as a client (RFC 7616 through [`crate::sip::digest`]): what one
//! call or trunk has been challenged with so far, and the (Proxy-)Authorization headers
//! that answer those challenges on the next request, nonce counts included.

use crate::sip::digest::{self, Challenge, Credentials};
use crate::sip::message::Message;
use rsip::headers::UntypedHeader;
use rsip::{headers as h, Header, Method};
use std::collections::HashMap;

/// How many challenged requests one call or probe may resend before giving up.
pub(super) const MAX_AUTH_TRIES: u32 = 4;

/// Why a challenged request is not resent; the text goes after the method in logs and
/// call reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthGiveUp {
    /// Challenged, but the trunk has no username/password.
    #[error("{status} challenge but no credentials configured")]
    NoCredentials {
        /// 401 or 407.
        status: u16,
    },
    /// [`MAX_AUTH_TRIES`] answered challenges already.
    #[error("{status} again after {tries} authenticated tries")]
    TooManyTries {
        /// 401 or 407.
        status: u16,
        /// Challenges answered so far.
        tries: u32,
    },
    /// No challenge we can answer (algorithm, qop, syntax).
    #[error("{status} with an unusable challenge: {error}")]
    Unusable {
        /// 401 or 407.
        status: u16,
        /// What is wrong with the challenges.
        error: String,
    },
    /// The same realm challenged again without `stale=true`: wrong credentials.
    #[error("{status}: credentials refused for realm {realm:?}")]
    Refused {
        /// 401 or 407.
        status: u16,
        /// The realm.
        realm: String,
    },
}

/// Digest state of one call or trunk: the challenges answered so far (one per realm,
/// WWW and Proxy kept apart) and a nonce count per nonce.
#[derive(Debug, Default)]
pub(super) struct AuthSession {
    pub(super) credentials: Option<Credentials>,
    pub(super) challenges: Vec<(bool, Challenge)>,
    pub(super) nonce_counts: HashMap<String, u32>,
    pub(super) tries: u32,
}

impl AuthSession {
    pub(super) fn new(credentials: Option<Credentials>) -> Self {
        AuthSession {
            credentials,
            ..AuthSession::default()
        }
    }

    /// Takes in the challenges of a 401/407. Ok = resend with [`Self::headers`]; Err =
    /// give up, with the reason. A challenge for a realm we already answered means the
    /// credentials were refused, unless it says `stale=true` (only the nonce expired).
    pub(super) fn on_challenge(&mut self, status: u16, msg: &Message) -> Result<(), AuthGiveUp> {
        if self.credentials.is_none() {
            return Err(AuthGiveUp::NoCredentials { status });
        }
        if self.tries >= MAX_AUTH_TRIES {
            return Err(AuthGiveUp::TooManyTries {
                status,
                tries: self.tries,
            });
        }
        let proxy = status == 407;
        let offered = msg
            .challenges
            .iter()
            .filter(|(p, _)| *p == proxy)
            .map(|(_, v)| v.as_str());
        let challenge = Challenge::pick(offered).map_err(|e| AuthGiveUp::Unusable {
            status,
            error: e.to_string(),
        })?;
        match self
            .challenges
            .iter_mut()
            .find(|(p, c)| *p == proxy && c.realm == challenge.realm)
        {
            Some(slot) if challenge.stale => slot.1 = challenge,
            Some(_) => {
                return Err(AuthGiveUp::Refused {
                    status,
                    realm: challenge.realm,
                })
            }
            None => self.challenges.push((proxy, challenge)),
        }
        self.tries += 1;
        Ok(())
    }

    /// (Proxy-)Authorization headers answering every stored challenge for this request.
    pub(super) fn headers(&mut self, method: Method, uri: &str, body: &[u8]) -> Vec<Header> {
        let Some(creds) = &self.credentials else {
            return Vec::new();
        };
        let method = method.to_string();
        let mut out = Vec::new();
        for (proxy, ch) in &self.challenges {
            let nc = self.nonce_counts.entry(ch.nonce.clone()).or_insert(0);
            *nc += 1;
            let value = digest::answer(
                ch,
                creds,
                digest::RequestParts {
                    method: &method,
                    uri,
                    body,
                },
                *nc,
                &digest::new_cnonce(),
            );
            out.push(if *proxy {
                h::ProxyAuthorization::new(value).into()
            } else {
                h::Authorization::new(value).into()
            });
        }
        out
    }

    pub(super) fn answered(&self) -> bool {
        !self.challenges.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn creds() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "pw".into(),
        }
    }

    fn challenged(status: u16, header: &str, nonce: &str, extra: &str) -> Message {
        let text = format!(
            "SIP/2.0 {status} Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
             {header}: Digest realm=\"r1\", nonce=\"{nonce}\", qop=\"auth\"{extra}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn no_credentials_gives_up_at_once() {
        let mut a = AuthSession::new(None);
        let err = a
            .on_challenge(401, &challenged(401, "WWW-Authenticate", "n1", ""))
            .unwrap_err();
        assert_eq!(err, AuthGiveUp::NoCredentials { status: 401 });
        assert!(err.to_string().contains("no credentials"), "{err}");
        assert!(a.headers(Method::Invite, "sip:x", b"").is_empty());
        assert!(!a.answered());
    }

    #[test]
    fn www_and_proxy_challenges_give_their_own_header() {
        let mut a = AuthSession::new(Some(creds()));
        a.on_challenge(401, &challenged(401, "WWW-Authenticate", "n1", ""))
            .unwrap();
        a.on_challenge(
            407,
            &challenged(407, "Proxy-Authenticate", "n2", ", opaque=\"o\""),
        )
        .unwrap();
        let hs = a.headers(Method::Invite, "sip:x", b"");
        assert_eq!(hs.len(), 2);
        assert!(matches!(hs[0], Header::Authorization(_)));
        assert!(matches!(hs[1], Header::ProxyAuthorization(_)));
        assert!(a.answered());
    }

    #[test]
    fn nonce_count_rises_in_hex_per_request() {
        let mut a = AuthSession::new(Some(creds()));
        a.on_challenge(401, &challenged(401, "WWW-Authenticate", "n1", ""))
            .unwrap();
        let mut last = String::new();
        for _ in 0..10 {
            last = a.headers(Method::Bye, "sip:x", b"")[0].to_string();
        }
        assert!(last.contains("nc=0000000a"), "{last}");
    }

    #[test]
    fn same_realm_again_is_a_refusal_unless_stale() {
        let mut a = AuthSession::new(Some(creds()));
        a.on_challenge(401, &challenged(401, "WWW-Authenticate", "n1", ""))
            .unwrap();
        // Stale: only the nonce expired; answer the new one.
        a.on_challenge(
            401,
            &challenged(401, "WWW-Authenticate", "n2", ", stale=true"),
        )
        .unwrap();
        let h = a.headers(Method::Invite, "sip:x", b"")[0].to_string();
        assert!(h.contains("nonce=\"n2\""), "{h}");
        let err = a
            .on_challenge(401, &challenged(401, "WWW-Authenticate", "n3", ""))
            .unwrap_err();
        assert!(
            matches!(err, AuthGiveUp::Refused { status: 401, .. }),
            "{err}"
        );
    }

    #[test]
    fn tries_are_bounded() {
        let mut a = AuthSession::new(Some(creds()));
        for i in 0..MAX_AUTH_TRIES {
            a.on_challenge(
                401,
                &challenged(401, "WWW-Authenticate", &format!("n{i}"), ", stale=true"),
            )
            .unwrap();
        }
        assert!(a
            .on_challenge(
                401,
                &challenged(401, "WWW-Authenticate", "last", ", stale=true")
            )
            .is_err());
    }
}
