//! Verification rules: start (registered numbers, toll-fraud controls, rate
//! limits, the code and its keyed hash), read, check (attempt counting,
//! expiry, approve once), cancel, and the registered numbers of a user.
//! Knows the store, not HTTP or SIP.

mod check;
mod guard;
mod keys;
mod phones;
mod start;
mod view;

pub use keys::{CodeKeys, SealError};
pub use phones::{PhoneEntry, PhoneList, MAX_PHONES};
pub use view::{AttemptView, CallView, CheckResult, ReceivedView, StartRequest, VerificationView};

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::domain::{self, PhoneNumber};
use crate::metrics::Metrics;
use crate::store::{AuditEntry, Store, StoreError};

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
