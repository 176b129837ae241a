//! Checking a code: attempt counting, the wrong-check back-off and lock-out,
//! a constant-time comparison, approval at most once.

use super::{guard, CheckResult, Verifier, VerifyError};
use crate::domain::{self, OtpCode, VerificationStatus};
use crate::store::CheckSlot;

impl Verifier {
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
        if evaluable {
            if let guard::Gate::Wait {
                retry_after_ms,
                locked,
            } = checks.gate(wrong_so_far, now)
            {
                return Err(self.held_back(id, actor, retry_after_ms, locked).await);
            }
        }
        let slot = self.store.reserve_check(id, now).await?;
        let CheckSlot::Reserved {
            code_hash,
            attempts_left,
        } = slot
        else {
            let _ = self.keys.matches(id, candidate.as_bytes(), "");
            return self.closed(id, actor, known, &subject, now).await;
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
        self.wrong(id, actor, &subject, attempts_left, now).await
    }

    /// A check held back by the wrong-check limit (backoff, or locked out): counted,
    /// audited, answered with the time to wait.
    async fn held_back(
        &self,
        id: &str,
        actor: &str,
        retry_after_ms: i64,
        locked: bool,
    ) -> VerifyError {
        let outcome = if locked { "locked_out" } else { "backoff" };
        self.metrics.checked(outcome);
        self.audit(actor, "verification.check", Some(id), outcome, None)
            .await;
        VerifyError::RateLimited {
            limit: "wrong_checks_per_user",
            retry_after_secs: u64::try_from((retry_after_ms + 999) / 1000).unwrap_or(1),
        }
    }

    /// A check on a verification that takes none (ended, or unknown): not valid, with
    /// its status. The candidate was hashed all the same by the caller.
    async fn closed(
        &self,
        id: &str,
        actor: &str,
        known: Option<crate::store::VerificationRow>,
        subject: &str,
        now: i64,
    ) -> Result<CheckResult, VerifyError> {
        self.metrics.checked("closed");
        let Some(v) = known else {
            // Guessing ids is worth knowing about; the count and the
            // audit write keep this answer as slow as a wrong code's.
            self.store.record_wrong_check(subject, now).await?;
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
        Ok(CheckResult {
            id: id.to_string(),
            status,
            valid: false,
            attempts_left: v.attempts_left,
        })
    }

    /// A wrong code: counted against the subject, audited, and the verification failed
    /// when it has no attempt left. The status is read back, as a concurrent check may
    /// have approved or failed it.
    async fn wrong(
        &self,
        id: &str,
        actor: &str,
        subject: &str,
        attempts_left: i64,
        now: i64,
    ) -> Result<CheckResult, VerifyError> {
        self.metrics.checked("wrong");
        self.store.record_wrong_check(subject, now).await?;
        self.audit(actor, "verification.check", Some(id), "wrong", None)
            .await;
        if attempts_left == 0 {
            self.store
                .finish_verification(id, VerificationStatus::Failed, now)
                .await?;
        }
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
}
