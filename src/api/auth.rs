//! Bearer-token authentication: the token's SHA-256 is compared in constant
//! time against the hashes in the config; the token itself is never stored.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::{ApiKeySettings, Scope};

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    hash: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl ApiKey {
    /// Keys from validated settings; entries whose hash is not 64 hex digits
    /// were refused at config load.
    pub fn from_settings(keys: &[ApiKeySettings]) -> Vec<ApiKey> {
        keys.iter()
            .filter_map(|k| {
                let hex = k.hash.strip_prefix("sha256:")?;
                let bytes: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
                Some(ApiKey {
                    name: k.name.clone(),
                    hash: bytes,
                    scopes: k.scopes.clone(),
                })
            })
            .collect()
    }
}

/// `sha256:<hex>` of a token, the form the config holds.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// The caller, authenticated by its bearer token.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Caller {
    pub(super) fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(match scope {
                Scope::Verify => "verify",
                Scope::Admin => "admin",
            }))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or_else(ApiError::unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized());
        }
        Caller::for_token(state, token).ok_or_else(ApiError::unauthorized)
    }
}

impl Caller {
    /// The key a token belongs to, if any (an empty token matches none).
    pub(super) fn for_token(state: &AppState, token: &str) -> Option<Caller> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every key so the time taken does not reveal which
        // (if any) matched.
        let mut found = None;
        for key in state.api_keys.iter() {
            if bool::from(key.hash.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found.map(|key| Caller {
            name: key.name.clone(),
            scopes: key.scopes.clone(),
        })
    }

    pub(super) fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A fresh bearer token: 32 bytes from the OS CSPRNG, hex, with a prefix
/// that secret scanners can recognise.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS RNG failed: {e}"))?;
    Ok(format!("otpd_{}", hex::encode(bytes)))
}
