//! Verification rules: start (registered numbers, toll-fraud controls, rate
//! limits, the code and its keyed hash), read, check (attempt counting,
//! expiry, approve once), cancel, and the registered numbers of a user.
//! Knows the store, not HTTP or SIP.

mod guard;
mod keys;

pub use keys::{CodeKeys, SealError};

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::{self, CallStatus, OtpCode, PhoneNumber, VerificationStatus};
use crate::media::Keys;
use crate::metrics::Metrics;
use crate::store::{
    AuditEntry, BudgetCheck, CheckSlot, LimitCheck, LimitColumn, NewVerification, PhoneRow,
    StartGuards, StartOutcome, Store, StoreError, VerificationRow,
};

/// At most this many registered numbers per user (SPEC §3).
pub const MAX_PHONES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A toll-fraud control refused the destination.
    #[error("to: {0}")]
    Refused(String),
    #[error("rate limit {limit} reached")]
    RateLimited {
        limit: &'static str,
        retry_after_secs: u64,
    },
    #[error("verification is already {0}")]
    Conflict(&'static str),
    #[error("verification not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seal the code: {0}")]
    Seal(#[from] SealError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> VerifyError {
    VerifyError::Invalid {
        field,
        message: message.into(),
    }
}

/// What the auth service sends to start a verification.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The user whose registered number to call (the primary one unless `to`
    /// names another of theirs).
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: Option<String>,
    /// E.164 (`+31612345678`), or national with the configured default region.
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9 ().-]+$")]
    pub to: Option<String>,
    /// One of the installed prompt packs (e.g. `nl`, `en`).
    #[schema(min_length = 1, max_length = 16)]
    pub locale: Option<String>,
    /// A code chosen by the caller; otherwise the gateway generates one.
    #[schema(pattern = "^[0-9]{4,10}$")]
    pub code: Option<String>,
    /// Receives signed webhooks on every status change.
    #[schema(max_length = 2048, pattern = "^https?://")]
    pub callback_url: Option<String>,
    /// Session-bound call: the 201 answer carries two random digits
    /// (`bind_digits`) for the login screen, and the call reads the code only
    /// after the person keys them (SPEC §6).
    #[serde(default)]
    pub bind_digits: bool,
}

/// The verification object of SPEC §3.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VerificationView {
    pub id: String,
    pub status: VerificationStatus,
    pub to: String,
    pub locale: String,
    pub expires_at: String,
    pub attempts_left: i64,
    pub call: CallView,
    /// Only in the answer to the start (and its idempotent replay) of a
    /// verification asked with `"bind_digits": true`: the two digits to show on
    /// the login screen. Never in later reads.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bind_digits: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
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
    /// Why the call ended as it did when its status alone does not say:
    /// `expired` (still queued when the verification expired),
    /// `gateway_restart` (its instance died after dialling), `shutdown`,
    /// `no_keypress` (a key gate got no key, or not the digit asked for),
    /// `bind_mismatch` (not the `bind_digits` shown), `srtp_unavailable`,
    /// `risk_denied`, `canceled`, `internal_error`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CheckResult {
    pub id: String,
    pub status: VerificationStatus,
    pub valid: bool,
    pub attempts_left: i64,
}

/// A registered number as the API shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PhoneEntry {
    /// E.164 (`+31612345678`), or national with the configured default region.
    #[schema(min_length = 3, max_length = 32, pattern = "^\\+?[0-9 ().-]+$")]
    pub number: String,
    #[serde(default)]
    pub primary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhoneList {
    /// At most 8; exactly one primary (none when empty).
    #[schema(max_items = 8)]
    pub phones: Vec<PhoneEntry>,
}

#[derive(Clone)]
pub struct Verifier {
    store: Store,
    settings: Arc<Settings>,
    keys: CodeKeys,
    locales: Arc<Vec<String>>,
    /// Locales whose prompt pack can ask for `bind_digits` (has `bind.wav`).
    bind_locales: Arc<Vec<String>>,
    dialer_wake: Arc<Notify>,
    cancel_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        keys: CodeKeys,
        locales: Vec<String>,
        dialer_wake: Arc<Notify>,
        cancel_wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            settings,
            keys,
            locales: Arc::new(locales),
            bind_locales: Arc::new(Vec::new()),
            dialer_wake,
            cancel_wake,
            metrics,
        }
    }

    /// The locales whose packs can serve `bind_digits`.
    pub fn with_bind_locales(mut self, locales: Vec<String>) -> Self {
        self.bind_locales = Arc::new(locales);
        self
    }

    fn parse_number(&self, input: &str) -> Result<PhoneNumber, VerifyError> {
        PhoneNumber::parse(input, self.settings.verification.region())
            .map_err(|e| invalid("to", e.to_string()))
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        outcome: &str,
        detail: Option<&str>,
    ) {
        let entry = AuditEntry {
            actor,
            action,
            target,
            outcome,
            detail,
        };
        if let Err(e) = self.store.audit(entry, domain::now_ms()).await {
            tracing::error!(error = %e, action, "writing the audit log failed");
        }
    }

    /// Refuses a start: audited, counted, never a call.
    async fn refuse(
        &self,
        actor: &str,
        number: &PhoneNumber,
        reason: &str,
        detail: String,
    ) -> VerifyError {
        self.metrics.refused(reason);
        self.audit(
            actor,
            "verification.start",
            Some(&number.masked()),
            reason,
            Some(&detail),
        )
        .await;
        VerifyError::Refused(detail)
    }

    /// Which number to call for this request (SPEC §3 rules on `user_id`
    /// and `to`).
    async fn destination(
        &self,
        req: &StartRequest,
        actor: &str,
    ) -> Result<PhoneNumber, VerifyError> {
        let allow_any = self.settings.verification.allow_unregistered_numbers;
        match (req.user_id.as_deref(), req.to.as_deref()) {
            (None, None) => Err(invalid("to", "give `to`, `user_id`, or both")),
            (Some(user), to) => {
                validate_user_id(user)?;
                let phones = self.store.phones(user).await?;
                match to {
                    Some(to) => {
                        let number = self.parse_number(to)?;
                        if !allow_any && !phones.iter().any(|p| p.number == number.as_str()) {
                            self.metrics.refused("not_registered");
                            self.audit(
                                actor,
                                "verification.start",
                                Some(&number.masked()),
                                "not_registered",
                                None,
                            )
                            .await;
                            return Err(invalid("to", "not one of this user's registered numbers"));
                        }
                        Ok(number)
                    }
                    None => phones
                        .iter()
                        .find(|p| p.primary)
                        .map(|p| PhoneNumber::from_trusted(p.number.clone()))
                        .ok_or_else(|| {
                            invalid("user_id", "this user has no registered primary number")
                        }),
                }
            }
            (None, Some(to)) => {
                let number = self.parse_number(to)?;
                if !allow_any && !self.store.number_is_registered(number.as_str()).await? {
                    self.metrics.refused("not_registered");
                    self.audit(
                        actor,
                        "verification.start",
                        Some(&number.masked()),
                        "not_registered",
                        None,
                    )
                    .await;
                    return Err(invalid("to", "number is not registered for any user"));
                }
                Ok(number)
            }
        }
    }

    /// Toll-fraud controls on the destination: prefix allowlist, line type.
    async fn screen(&self, number: &PhoneNumber, actor: &str) -> Result<(), VerifyError> {
        if let Some(prefixes) = self.settings.allowed_prefixes() {
            if !prefixes
                .iter()
                .any(|p| number.as_str().starts_with(p.as_str()))
            {
                return Err(self
                    .refuse(
                        actor,
                        number,
                        "prefix_not_allowed",
                        "destination prefix is not allowed on this gateway".into(),
                    )
                    .await);
            }
        }
        let kind = number.kind();
        if self.settings.verification.mobile_only && !kind.is_mobile() {
            return Err(self
                .refuse(
                    actor,
                    number,
                    "not_mobile",
                    "only mobile numbers may be called".into(),
                )
                .await);
        }
        if !self.settings.fraud.allowed_number_types.contains(&kind) {
            return Err(self
                .refuse(
                    actor,
                    number,
                    "number_type",
                    format!("numbers of type {kind:?} may not be called"),
                )
                .await);
        }
        Ok(())
    }

    pub async fn start(
        &self,
        req: StartRequest,
        api_key: &str,
        idempotency_key: Option<&str>,
    ) -> Result<VerificationView, VerifyError> {
        let vs = &self.settings.verification;
        if let Some(k) = idempotency_key {
            if k.is_empty() || k.len() > 255 {
                return Err(invalid("Idempotency-Key", "must be 1..255 characters"));
            }
        }
        let number = self.destination(&req, api_key).await?;
        let locale = req
            .locale
            .clone()
            .unwrap_or_else(|| vs.default_locale.clone());
        if !self.locales.contains(&locale) {
            return Err(invalid(
                "locale",
                format!(
                    "no prompt pack for {locale:?}; installed: {}",
                    self.locales.join(", ")
                ),
            ));
        }
        if req.bind_digits && !self.bind_locales.contains(&locale) {
            return Err(invalid(
                "bind_digits",
                format!(
                    "the prompt pack for {locale:?} cannot ask for the digits (it has no bind.wav); packs that can: {}",
                    if self.bind_locales.is_empty() {
                        "none".to_owned()
                    } else {
                        self.bind_locales.join(", ")
                    }
                ),
            ));
        }
        let code = match req.code.as_deref() {
            Some(c) => OtpCode::parse(c).map_err(|e| invalid("code", e.to_string()))?,
            None => {
                OtpCode::generate(vs.code_length).map_err(|e| invalid("code", e.to_string()))?
            }
        };
        if let Some(url) = req.callback_url.as_deref() {
            if url.len() > 2048 {
                return Err(invalid("callback_url", "must be at most 2048 characters"));
            }
            crate::egress::check_url(url, self.settings.webhooks.targets())
                .await
                .map_err(|why| invalid("callback_url", why))?;
            if self.settings.webhooks.secret.is_none() {
                return Err(invalid(
                    "callback_url",
                    format!(
                        "webhooks are off on this gateway: the signing secret (env {}) is not set",
                        self.settings.webhooks.secret_env
                    ),
                ));
            }
        }
        self.screen(&number, api_key).await?;

        let id = domain::new_verification_id();
        let call_id = domain::new_call_id();
        let now = domain::now_ms();
        let ttl_ms = i64::try_from(vs.ttl.as_millis()).unwrap_or(i64::MAX);
        let code_hash = self.keys.hash(&id, code.expose());
        let bind = req.bind_digits.then(|| Keys::random(2));
        let sealed = self.keys.seal(&id, &code, bind)?;
        drop(code);

        let limits = &self.settings.limits;
        let window = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let mut guards = StartGuards::default();
        guards.limits.push(LimitCheck {
            name: "per_number",
            exact: true,
            column: LimitColumn::Phone,
            value: number.as_str(),
            max: i64::from(limits.per_number.count),
            window_ms: window(limits.per_number.per),
        });
        if let Some(user) = req.user_id.as_deref() {
            guards.limits.push(LimitCheck {
                name: "per_user",
                exact: true,
                column: LimitColumn::User,
                value: user,
                max: i64::from(limits.per_user.count),
                window_ms: window(limits.per_user.per),
            });
        }
        guards.limits.push(LimitCheck {
            name: "per_api_key",
            exact: false,
            column: LimitColumn::ApiKey,
            value: api_key,
            max: i64::from(limits.per_api_key.count),
            window_ms: window(limits.per_api_key.per),
        });
        let country = number.country_code();
        let budget = self.settings.daily_budget_for(&country);
        if budget > 0 {
            guards.budget = Some(BudgetCheck {
                day: domain::format_ms(now).chars().take(10).collect(),
                country: country.clone(),
                max: i64::try_from(budget).unwrap_or(i64::MAX),
            });
        }

        let outcome = self
            .store
            .start_verification(
                &NewVerification {
                    id: &id,
                    user_id: req.user_id.as_deref(),
                    phone: number.as_str(),
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
                },
                &guards,
            )
            .await?;
        match outcome {
            StartOutcome::New { superseded } => {
                self.metrics.verifications_started.inc();
                if !superseded.is_empty() {
                    self.cancel_wake.notify_waiters();
                }
                // Everything in the answer is known: no read-back. It shows
                // the call as queued, as it was when committed.
                let view = VerificationView {
                    id,
                    status: VerificationStatus::Pending,
                    to: number.masked(),
                    locale,
                    expires_at: domain::format_ms(now.saturating_add(ttl_ms)),
                    attempts_left: i64::from(vs.max_check_attempts),
                    call: CallView {
                        status: CallStatus::Queued,
                        sip_code: None,
                        trunk: None,
                        answered_at: None,
                        ended_at: None,
                        times_played: 0,
                        reason: None,
                        attempts: Vec::new(),
                    },
                    bind_digits: bind.map(|k| k.to_text()),
                };
                self.dialer_wake.notify_one();
                Ok(view)
            }
            StartOutcome::Existing(first) => {
                let mut view = self.view(&first).await?;
                if req.bind_digits {
                    // The replay of a start answers as the start did: with the same
                    // digits, while the call still holds them.
                    view.bind_digits = match self.store.sealed_code_of(&first).await? {
                        Some(sealed) => self
                            .keys
                            .open(&first, &sealed)
                            .ok()
                            .and_then(|(_, bind)| bind)
                            .map(|k| k.to_text()),
                        None => None,
                    };
                }
                Ok(view)
            }
            StartOutcome::Limited {
                limit,
                retry_after_ms,
            } => {
                self.metrics.limited(limit);
                self.audit(
                    api_key,
                    "verification.start",
                    Some(&number.masked()),
                    "rate_limited",
                    Some(limit),
                )
                .await;
                Err(VerifyError::RateLimited {
                    limit,
                    retry_after_secs: u64::try_from((retry_after_ms + 999) / 1000).unwrap_or(1),
                })
            }
            StartOutcome::BudgetExhausted => Err(self
                .refuse(
                    api_key,
                    &number,
                    "daily_budget",
                    format!("today's call budget for {country} is spent"),
                )
                .await),
        }
    }

    /// The stored status, with a pending verification past its expiry
    /// marked expired on the way (the housekeeping sweep may not have run).
    async fn current_status(
        &self,
        v: &VerificationRow,
        now: i64,
    ) -> Result<VerificationStatus, VerifyError> {
        if v.status == VerificationStatus::Pending && now >= v.expires_at {
            self.store
                .finish_verification(&v.id, VerificationStatus::Expired, now)
                .await?;
            return Ok(VerificationStatus::Expired);
        }
        Ok(v.status)
    }

    pub async fn view(&self, id: &str) -> Result<VerificationView, VerifyError> {
        // The call first: a call's end and its verification's end are written
        // in one transaction, so reading the call before the verification
        // never shows an ended call beside a verification that looks pending
        // (two statements are two snapshots under READ COMMITTED).
        let c = self.store.get_call_of(id).await?;
        let v = self
            .store
            .get_verification(id)
            .await?
            .ok_or(VerifyError::NotFound)?;
        let status = self.current_status(&v, domain::now_ms()).await?;
        let c = c.ok_or_else(|| {
            VerifyError::Store(StoreError::Corrupt(format!(
                "verification {id} has no call"
            )))
        })?;
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
        Ok(VerificationView {
            id: v.id,
            status,
            to: PhoneNumber::from_trusted(v.phone).masked(),
            locale: v.locale,
            expires_at: domain::format_ms(v.expires_at),
            attempts_left: v.attempts_left,
            call: CallView {
                status: c.status,
                sip_code: c.sip_code,
                trunk: c.trunk,
                answered_at: c.answered_at.map(domain::format_ms),
                ended_at: c.ended_at.map(domain::format_ms),
                times_played: c.times_played,
                reason: c.reason,
                attempts,
            },
            bind_digits: None,
        })
    }

    /// Checks a code the user typed. Each evaluation costs one attempt; the
    /// comparison is constant-time; a verification is approved at most once.
    /// An unknown id is answered like a closed verification, after the same
    /// hashing work, so neither shape nor timing tells them apart.
    pub async fn check(
        &self,
        id: &str,
        candidate: &str,
        actor: &str,
    ) -> Result<CheckResult, VerifyError> {
        let now = domain::now_ms();
        // The same reads and writes happen for an unknown id as for a wrong
        // code (its subject is the API key, which is counted but never
        // locked out: that would lock every user of the auth service), so
        // neither the answer nor its timing tells them apart.
        let known = self.store.get_verification(id).await?;
        let subject = match &known {
            Some(v) => guard::subject_of(v),
            None => format!("unknown:{actor}"),
        };
        let checks = guard::CheckGuard {
            limit: self.settings.limits.wrong_checks_per_user,
            backoff_ms: i64::try_from(self.settings.limits.wrong_check_backoff.as_millis())
                .unwrap_or(i64::MAX),
        };
        let wrong_so_far = self
            .store
            .wrong_checks_since(&subject, now - checks.window_ms())
            .await?;
        // Only a check that would be evaluated is held back.
        let evaluable = known
            .as_ref()
            .is_some_and(|v| v.status == VerificationStatus::Pending);
        if let (
            true,
            guard::Gate::Wait {
                retry_after_ms,
                locked,
            },
        ) = (evaluable, checks.gate(wrong_so_far, now))
        {
            let outcome = if locked { "locked_out" } else { "backoff" };
            self.metrics.checked(outcome);
            self.audit(actor, "verification.check", Some(id), outcome, None)
                .await;
            let secs = u64::try_from((retry_after_ms + 999) / 1000).unwrap_or(1);
            return Err(VerifyError::RateLimited {
                limit: "wrong_checks_per_user",
                retry_after_secs: secs,
            });
        }
        let slot = self.store.reserve_check(id, now).await?;
        let CheckSlot::Reserved {
            code_hash,
            attempts_left,
        } = slot
        else {
            let _ = self.keys.matches(id, candidate.as_bytes(), "");
            self.metrics.checked("closed");
            let Some(v) = known else {
                // Guessing ids is worth knowing about; the count and the
                // audit write keep this answer as slow as a wrong code's.
                self.store.record_wrong_check(&subject, now).await?;
                self.audit(actor, "verification.check", Some(id), "unknown_id", None)
                    .await;
                let _ = self.store.verification_status(id).await?;
                return Ok(CheckResult {
                    id: id.to_string(),
                    status: VerificationStatus::Failed,
                    valid: false,
                    attempts_left: 0,
                });
            };
            let status = self.current_status(&v, now).await?;
            return Ok(CheckResult {
                id: id.to_string(),
                status,
                valid: false,
                attempts_left: v.attempts_left,
            });
        };
        // A malformed candidate is simply wrong, and is hashed all the same.
        let well_formed = OtpCode::parse(candidate).is_ok();
        let matches = self.keys.matches(id, candidate.as_bytes(), &code_hash) && well_formed;
        if matches
            && self
                .store
                .finish_verification(id, VerificationStatus::Approved, now)
                .await?
        {
            self.metrics.checked("approved");
            self.audit(actor, "verification.check", Some(id), "approved", None)
                .await;
            // The user has the code: a call still reading it can stop.
            self.cancel_wake.notify_waiters();
            return Ok(CheckResult {
                id: id.to_string(),
                status: VerificationStatus::Approved,
                valid: true,
                attempts_left,
            });
        }
        self.metrics.checked("wrong");
        self.store.record_wrong_check(&subject, now).await?;
        self.audit(actor, "verification.check", Some(id), "wrong", None)
            .await;
        if attempts_left == 0 {
            self.store
                .finish_verification(id, VerificationStatus::Failed, now)
                .await?;
        }
        // Read back: a concurrent check may have approved or failed it.
        let status = self
            .store
            .verification_status(id)
            .await?
            .unwrap_or(VerificationStatus::Failed);
        Ok(CheckResult {
            id: id.to_string(),
            status,
            valid: false,
            attempts_left,
        })
    }

    /// Cancels a pending verification (and hangs up its call). Canceling a
    /// canceled one again is harmless; any other final status is a conflict.
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<VerificationView, VerifyError> {
        let now = domain::now_ms();
        if self.store.cancel_verification(id, now).await? {
            self.cancel_wake.notify_waiters();
            self.audit(actor, "verification.cancel", Some(id), "canceled", None)
                .await;
            return self.view(id).await;
        }
        let view = self.view(id).await?;
        match view.status {
            VerificationStatus::Canceled => Ok(view),
            VerificationStatus::Pending => Err(VerifyError::Conflict("changing")),
            other => Err(VerifyError::Conflict(other.as_str())),
        }
    }

    /// Replaces a user's registered numbers: at most 8, exactly one
    /// primary, each a valid number (normalised to E.164), no duplicates.
    pub async fn set_phones(
        &self,
        user_id: &str,
        list: PhoneList,
        actor: &str,
    ) -> Result<PhoneList, VerifyError> {
        validate_user_id(user_id)?;
        if list.phones.len() > MAX_PHONES {
            return Err(invalid(
                "phones",
                format!("at most {MAX_PHONES} numbers per user"),
            ));
        }
        let primaries = list.phones.iter().filter(|p| p.primary).count();
        if !list.phones.is_empty() && primaries != 1 {
            return Err(invalid(
                "phones",
                format!("exactly one number must be primary, got {primaries}"),
            ));
        }
        let mut rows: Vec<PhoneRow> = Vec::with_capacity(list.phones.len());
        for (i, p) in list.phones.iter().enumerate() {
            let n = PhoneNumber::parse(&p.number, self.settings.verification.region())
                .map_err(|e| invalid("phones", format!("phones[{i}].number: {e}")))?;
            if rows.iter().any(|r| r.number == n.as_str()) {
                return Err(invalid(
                    "phones",
                    format!("phones[{i}].number: listed twice"),
                ));
            }
            if let Some(label) = &p.label {
                if label.chars().count() > 64 || label.chars().any(char::is_control) {
                    return Err(invalid(
                        "phones",
                        format!("phones[{i}].label: at most 64 printable characters"),
                    ));
                }
            }
            rows.push(PhoneRow {
                number: n.as_str().to_string(),
                primary: p.primary,
                label: p.label.clone(),
            });
        }
        self.store
            .replace_phones(user_id, &rows, domain::now_ms())
            .await?;
        self.audit(
            actor,
            "phones.replace",
            Some(user_id),
            "ok",
            Some(&format!("{} numbers", rows.len())),
        )
        .await;
        self.phones(user_id).await
    }

    pub async fn phones(&self, user_id: &str) -> Result<PhoneList, VerifyError> {
        validate_user_id(user_id)?;
        let rows = self.store.phones(user_id).await?;
        Ok(PhoneList {
            phones: rows
                .into_iter()
                .map(|r| PhoneEntry {
                    number: r.number,
                    primary: r.primary,
                    label: r.label,
                })
                .collect(),
        })
    }

    pub async fn delete_phone(
        &self,
        user_id: &str,
        number: &str,
        actor: &str,
    ) -> Result<(), VerifyError> {
        validate_user_id(user_id)?;
        let n = PhoneNumber::parse(number, self.settings.verification.region())
            .map_err(|e| invalid("number", e.to_string()))?;
        if !self.store.delete_phone(user_id, n.as_str()).await? {
            return Err(VerifyError::NotFound);
        }
        self.audit(
            actor,
            "phones.delete",
            Some(user_id),
            "ok",
            Some(&n.masked()),
        )
        .await;
        Ok(())
    }
}

fn validate_user_id(u: &str) -> Result<(), VerifyError> {
    if u.is_empty() || u.chars().count() > 128 || u.chars().any(|c| c.is_control() || c == '/') {
        return Err(invalid(
            "user_id",
            "must be 1..128 printable characters without '/'",
        ));
    }
    Ok(())
}
