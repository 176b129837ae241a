//! Starting a verification: which number to call, the toll-fraud screens, the
//! rate limits and budget (counted by the store), the code, its keyed hash and
//! sealed copy, and the queued call.

use super::{
    invalid, validate_user_id, CallView, StartRequest, VerificationView, Verifier, VerifyError,
};
use crate::domain::Keys;
use crate::domain::{self, CallStatus, OtpCode, PhoneNumber, VerificationStatus};
use crate::store::{
    BudgetCheck, LimitCheck, LimitColumn, NewVerification, StartGuards, StartOutcome,
};

impl Verifier {
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
    /// With the number, the prompt pack its registration names, if any.
    async fn destination(
        &self,
        req: &StartRequest,
        actor: &str,
    ) -> Result<(PhoneNumber, Option<String>), VerifyError> {
        let allow_any = self.settings.verification.allow_unregistered_numbers;
        match (req.user_id.as_deref(), req.to.as_deref()) {
            (None, None) => Err(invalid("to", "give `to`, `user_id`, or both")),
            (Some(user), to) => {
                validate_user_id(user)?;
                let phones = self.store.phones(user).await?;
                match to {
                    Some(to) => {
                        let number = self.parse_number(to)?;
                        let registered = phones.iter().find(|p| p.number == number.as_str());
                        if !allow_any && registered.is_none() {
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
                        let locale = registered.and_then(|p| p.locale.clone());
                        Ok((number, locale))
                    }
                    None => phones
                        .iter()
                        .find(|p| p.primary)
                        .map(|p| {
                            (
                                PhoneNumber::from_trusted(p.number.clone()),
                                p.locale.clone(),
                            )
                        })
                        .ok_or_else(|| {
                            invalid("user_id", "this user has no registered primary number")
                        }),
                }
            }
            (None, Some(to)) => {
                let number = self.parse_number(to)?;
                let registration = self.store.registration_of(number.as_str()).await?;
                if !allow_any && registration.is_none() {
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
                Ok((number, registration.flatten()))
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
        let (number, registered_locale) = self.destination(&req, api_key).await?;
        let locale = self.choose_locale(&req, &number, registered_locale)?;
        let code = match req.code.as_deref() {
            Some(c) => OtpCode::parse(c).map_err(|e| invalid("code", e.to_string()))?,
            None => {
                OtpCode::generate(vs.code_length).map_err(|e| invalid("code", e.to_string()))?
            }
        };
        self.check_callback(req.callback_url.as_deref()).await?;
        self.screen(&number, api_key).await?;

        let id = domain::new_verification_id();
        let call_id = domain::new_call_id();
        let now = domain::now_ms();
        let ttl_ms = i64::try_from(vs.ttl.as_millis()).unwrap_or(i64::MAX);
        let code_hash = self.keys.hash(&id, code.expose());
        let bind = req.bind_digits.then(|| Keys::random(2));
        let sealed = self.keys.seal(&id, &code, bind)?;
        drop(code);

        let guards = self.guards(&req, &number, api_key, now);
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
                let view = VerificationView {
                    id,
                    status: VerificationStatus::Pending,
                    to: number.masked(),
                    locale,
                    expires_at: domain::format_ms(now.saturating_add(ttl_ms)),
                    attempts_left: i64::from(vs.max_check_attempts),
                    call: queued_call(),
                    bind_digits: bind.map(|k| k.to_text()),
                };
                self.dialer_wake.notify_one();
                Ok(view)
            }
            StartOutcome::Existing(first) => self.replayed(&first, req.bind_digits).await,
            StartOutcome::Limited {
                limit,
                retry_after_ms,
            } => Err(self
                .rate_limited(api_key, &number, limit, retry_after_ms)
                .await),
            StartOutcome::BudgetExhausted => Err(self
                .refuse(
                    api_key,
                    &number,
                    "daily_budget",
                    format!("today's call budget for {} is spent", number.country_code()),
                )
                .await),
        }
    }

    /// A start refused by one of the limits: counted, audited, and answered with the
    /// time until the window lets one more through.
    async fn rate_limited(
        &self,
        api_key: &str,
        number: &PhoneNumber,
        limit: &'static str,
        retry_after_ms: i64,
    ) -> VerifyError {
        self.metrics.limited(limit);
        self.audit(
            api_key,
            "verification.start",
            Some(&number.masked()),
            "rate_limited",
            Some(limit),
        )
        .await;
        VerifyError::RateLimited {
            limit,
            retry_after_secs: u64::try_from((retry_after_ms + 999) / 1000).unwrap_or(1),
        }
    }

    /// The prompt pack of a new verification (SPEC §7): the request's, then the
    /// registered number's, then the country's, then `default_locale`; refused when no
    /// pack is installed for it, or when `bind_digits` is asked of a pack without
    /// bind.wav.
    fn choose_locale(
        &self,
        req: &StartRequest,
        number: &PhoneNumber,
        registered_locale: Option<String>,
    ) -> Result<String, VerifyError> {
        let locale = req
            .locale
            .clone()
            // A pack removed since the number was registered: by country instead.
            .or(registered_locale.filter(|l| self.locales.contains(l)))
            .or_else(|| {
                self.settings
                    .locale_by_country(number.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.settings.verification.default_locale.clone());
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
        Ok(locale)
    }

    /// A `callback_url` must be short, allowed by `[webhooks]` (scheme, target) and
    /// signable (the secret is set).
    async fn check_callback(&self, url: Option<&str>) -> Result<(), VerifyError> {
        let Some(url) = url else {
            return Ok(());
        };
        if url.len() > 2048 {
            return Err(invalid("callback_url", "must be at most 2048 characters"));
        }
        crate::egress::check_url(url, self.settings.webhooks.targets())
            .await
            .map_err(|why| invalid("callback_url", why.to_string()))?;
        if self.settings.webhooks.secret.is_none() {
            return Err(invalid(
                "callback_url",
                format!(
                    "webhooks are off on this gateway: the signing secret (env {}) is not set",
                    self.settings.webhooks.secret_env
                ),
            ));
        }
        Ok(())
    }

    /// The limits and the daily budget the store checks in the start's transaction
    /// (QA numbers are exempt from the per-number, per-user and budget ones).
    fn guards<'a>(
        &self,
        req: &'a StartRequest,
        number: &'a PhoneNumber,
        api_key: &'a str,
        now: i64,
    ) -> StartGuards<'a> {
        let limits = &self.settings.limits;
        let window = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let applies = super::guard::StartLimits::for_number(&self.settings.qa, number.as_str());
        let mut guards = StartGuards::default();
        if applies.per_number {
            guards.limits.push(LimitCheck {
                name: "per_number",
                exact: true,
                column: LimitColumn::Phone,
                value: number.as_str(),
                max: i64::from(limits.per_number.count),
                window_ms: window(limits.per_number.per),
            });
        }
        if let Some(user) = req.user_id.as_deref().filter(|_| applies.per_user) {
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
        if budget > 0 && applies.budget {
            guards.budget = Some(BudgetCheck {
                day: domain::format_ms(now).chars().take(10).collect(),
                country,
                max: i64::try_from(budget).unwrap_or(i64::MAX),
            });
        }
        guards
    }

    /// The answer to a replayed start (same Idempotency-Key): the verification as it is
    /// now, with the same bind digits while the call still holds them.
    async fn replayed(
        &self,
        first: &str,
        bind_digits: bool,
    ) -> Result<VerificationView, VerifyError> {
        let mut view = self.view(first).await?;
        if bind_digits {
            view.bind_digits = match self.store.sealed_code_of(first).await? {
                Some(sealed) => self
                    .keys
                    .open(first, &sealed)
                    .ok()
                    .and_then(|(_, bind)| bind)
                    .map(|k| k.to_text()),
                None => None,
            };
        }
        Ok(view)
    }
}

/// The call of a verification just committed: queued, nothing known yet. Everything in
/// the start's answer is known without a read-back.
fn queued_call() -> CallView {
    CallView {
        status: CallStatus::Queued,
        sip_code: None,
        trunk: None,
        answered_at: None,
        ended_at: None,
        times_played: 0,
        reason: None,
        attempts: Vec::new(),
    }
}
