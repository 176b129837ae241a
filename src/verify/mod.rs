//! Verification rules: start (validate, generate or accept the code, store
//! its keyed hash and the sealed copy for the dialer), read, check (attempt
//! counting, expiry, approve once). Knows the store, not HTTP or SIP.

mod keys;

pub use keys::{CodeKeys, SealError};

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::{self, CallStatus, OtpCode, PhoneNumber, VerificationStatus};
use crate::store::{CheckSlot, Inserted, NewVerification, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("verification not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seal the code: {0}")]
    Seal(#[from] SealError),
}

/// What the auth service sends to start a verification.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub user_id: Option<String>,
    pub to: Option<String>,
    pub locale: Option<String>,
    pub code: Option<String>,
    pub callback_url: Option<String>,
}

/// The verification object of SPEC §3.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct VerificationView {
    pub id: String,
    pub status: VerificationStatus,
    pub to: String,
    pub locale: String,
    pub expires_at: String,
    pub attempts_left: i64,
    pub call: CallView,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CallView {
    pub status: CallStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sip_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trunk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub answered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended_at: Option<String>,
    pub times_played: i64,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AttemptView {
    pub to: String,
    pub trunk: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sip_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct CheckResult {
    pub id: String,
    pub status: VerificationStatus,
    pub valid: bool,
    pub attempts_left: i64,
}

#[derive(Debug, Clone)]
pub enum Started {
    Created(VerificationView),
    /// Same idempotency key as before: the first answer again.
    Repeated(VerificationView),
}

#[derive(Clone)]
pub struct Verifier {
    store: Store,
    settings: Arc<Settings>,
    keys: CodeKeys,
    locales: Arc<Vec<String>>,
    dialer_wake: Arc<Notify>,
}

impl Verifier {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        keys: CodeKeys,
        locales: Vec<String>,
        dialer_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            settings,
            keys,
            locales: Arc::new(locales),
            dialer_wake,
        }
    }

    pub fn keys(&self) -> &CodeKeys {
        &self.keys
    }

    pub async fn start(
        &self,
        req: StartRequest,
        api_key: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Started, VerifyError> {
        let vs = &self.settings.verification;
        let to = match req.to.as_deref() {
            Some(to) => PhoneNumber::parse(to, vs.region()).map_err(|e| VerifyError::Invalid {
                field: "to",
                message: e.to_string(),
            })?,
            None => {
                return Err(VerifyError::Invalid {
                    field: "to",
                    message: "a number to call is required (registered numbers per user are not \
                              enabled on this gateway)"
                        .into(),
                })
            }
        };
        if !vs.allow_unregistered_numbers {
            return Err(VerifyError::Invalid {
                field: "to",
                message: "number is not registered for this user".into(),
            });
        }
        if let Some(u) = req.user_id.as_deref() {
            if u.is_empty() || u.len() > 128 || u.chars().any(char::is_control) {
                return Err(VerifyError::Invalid {
                    field: "user_id",
                    message: "must be 1..128 printable characters".into(),
                });
            }
        }
        let locale = req.locale.unwrap_or_else(|| vs.default_locale.clone());
        if !self.locales.contains(&locale) {
            return Err(VerifyError::Invalid {
                field: "locale",
                message: format!(
                    "no prompt pack for locale {locale:?}; installed: {}",
                    self.locales.join(", ")
                ),
            });
        }
        let code = match req.code.as_deref() {
            Some(c) => OtpCode::parse(c).map_err(|e| VerifyError::Invalid {
                field: "code",
                message: e.to_string(),
            })?,
            None => OtpCode::generate(vs.code_length).map_err(|e| VerifyError::Invalid {
                field: "code",
                message: e.to_string(),
            })?,
        };
        if let Some(url) = req.callback_url.as_deref() {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(VerifyError::Invalid {
                    field: "callback_url",
                    message: "must be an http(s) URL of at most 2048 characters".into(),
                });
            }
        }
        if let Some(k) = idempotency_key {
            if k.is_empty() || k.len() > 255 {
                return Err(VerifyError::Invalid {
                    field: "Idempotency-Key",
                    message: "must be 1..255 characters".into(),
                });
            }
        }

        let id = domain::new_verification_id();
        let call_id = domain::new_call_id();
        let now = domain::now_ms();
        let ttl_ms = i64::try_from(vs.ttl.0.as_millis()).unwrap_or(i64::MAX);
        let code_hash = self.keys.hash(&id, code.expose());
        let sealed = self.keys.seal(&id, &code)?;
        let inserted = self
            .store
            .insert_verification(&NewVerification {
                id: &id,
                user_id: req.user_id.as_deref(),
                phone: to.as_str(),
                locale: &locale,
                code_hash: &code_hash,
                attempts_left: i64::from(vs.max_check_attempts),
                expires_at: now.saturating_add(ttl_ms),
                callback_url: req.callback_url.as_deref(),
                api_key,
                idempotency_key,
                call_id: &call_id,
                code_sealed: &sealed,
                now,
            })
            .await?;
        match inserted {
            Inserted::New => {
                self.dialer_wake.notify_one();
                Ok(Started::Created(self.view(&id).await?))
            }
            Inserted::Existing(first) => Ok(Started::Repeated(self.view(&first).await?)),
        }
    }

    pub async fn view(&self, id: &str) -> Result<VerificationView, VerifyError> {
        let v = self
            .store
            .get_verification(id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let now = domain::now_ms();
        let mut status = v.status;
        if status == VerificationStatus::Pending && now >= v.expires_at {
            self.store
                .finish_verification(id, VerificationStatus::Expired, now)
                .await?;
            status = VerificationStatus::Expired;
        }
        let call = match self.store.get_call_of(id).await? {
            Some(c) => {
                let attempts = self
                    .store
                    .attempts(&c.id)
                    .await?
                    .into_iter()
                    .map(|a| AttemptView {
                        to: PhoneNumber::from_trusted(a.number).masked(),
                        trunk: a.trunk,
                        status: a.status,
                        sip_code: a.sip_code,
                        reason: a.reason,
                        started_at: domain::format_ms(a.started_at),
                        ended_at: a.ended_at.map(domain::format_ms),
                    })
                    .collect();
                CallView {
                    status: c.status,
                    sip_code: c.sip_code,
                    trunk: c.trunk,
                    answered_at: c.answered_at.map(domain::format_ms),
                    ended_at: c.ended_at.map(domain::format_ms),
                    times_played: c.times_played,
                    attempts,
                }
            }
            None => {
                return Err(VerifyError::Store(StoreError::Corrupt(format!(
                    "verification {id} has no call"
                ))))
            }
        };
        Ok(VerificationView {
            id: v.id,
            status,
            to: PhoneNumber::from_trusted(v.phone).masked(),
            locale: v.locale,
            expires_at: domain::format_ms(v.expires_at),
            attempts_left: v.attempts_left,
            call,
        })
    }

    /// Checks a code the user typed. Each evaluation costs one attempt; the
    /// comparison is constant-time; a verification is approved at most once.
    pub async fn check(&self, id: &str, candidate: &str) -> Result<CheckResult, VerifyError> {
        let now = domain::now_ms();
        let slot = self.store.reserve_check(id, now).await?;
        let CheckSlot::Reserved {
            code_hash,
            attempts_left,
        } = slot
        else {
            let view = self.view(id).await?;
            return Ok(CheckResult {
                id: view.id,
                status: view.status,
                valid: false,
                attempts_left: view.attempts_left,
            });
        };
        // A malformed candidate is simply wrong, and is hashed all the same
        // so that its answer takes as long as any other wrong code.
        let well_formed = OtpCode::parse(candidate).is_ok();
        let matches = self.keys.matches(id, candidate.as_bytes(), &code_hash) && well_formed;
        if matches
            && self
                .store
                .finish_verification(id, VerificationStatus::Approved, now)
                .await?
        {
            return Ok(CheckResult {
                id: id.to_string(),
                status: VerificationStatus::Approved,
                valid: true,
                attempts_left,
            });
        }
        if attempts_left == 0 {
            self.store
                .finish_verification(id, VerificationStatus::Failed, now)
                .await?;
        }
        // Read back: a concurrent check may have approved or failed it.
        let status = self.view(id).await?.status;
        Ok(CheckResult {
            id: id.to_string(),
            status,
            valid: false,
            attempts_left,
        })
    }
}
