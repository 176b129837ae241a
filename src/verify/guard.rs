//! The brute-force guard across verifications: wrong code checks are
//! counted per subject (the user, or the number when the verification has
//! no user) over `limits.wrong_checks_per_user`. Past the first few, each
//! further try must wait a doubling back-off; at the limit the subject is
//! locked out until the oldest wrong check leaves the window. Starting new
//! verifications does not reset it: that is the point. Pure: counts and
//! time are passed in.

use crate::config::{QaSettings, RateLimit};
use crate::store::{VerificationRow, WrongChecks};

/// Wrong checks allowed back to back before the back-off starts (one
/// verification's worth at the default `max_check_attempts`).
const FREE: i64 = 5;
/// The back-off doubles per further wrong check, up to this.
const BACKOFF_MAX_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    Open,
    /// Not now: back-off (or lock-out when `locked`) for this long.
    Wait {
        retry_after_ms: i64,
        locked: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct CheckGuard {
    pub(super) limit: RateLimit,
    /// The first back-off (`limits.wrong_check_backoff`); 0 = none.
    pub(super) backoff_ms: i64,
}

impl CheckGuard {
    pub(super) fn window_ms(&self) -> i64 {
        i64::try_from(self.limit.per.as_millis()).unwrap_or(i64::MAX)
    }

    pub(super) fn gate(&self, w: WrongChecks, now: i64) -> Gate {
        if self.limit.count == 0 {
            return Gate::Open;
        }
        if w.count >= i64::from(self.limit.count) {
            let until = w.first_at.unwrap_or(now).saturating_add(self.window_ms());
            return Gate::Wait {
                retry_after_ms: (until - now).max(1),
                locked: true,
            };
        }
        if w.count >= FREE && self.backoff_ms > 0 {
            let doublings = u32::try_from(w.count - FREE).unwrap_or(u32::MAX).min(20);
            let backoff = self
                .backoff_ms
                .saturating_mul(1i64 << doublings)
                .min(BACKOFF_MAX_MS);
            let next = w.last_at.unwrap_or(now).saturating_add(backoff);
            if now < next {
                return Gate::Wait {
                    retry_after_ms: next - now,
                    locked: false,
                };
            }
        }
        Gate::Open
    }
}

/// Which of the start limits apply to a destination. Calls to a `[[qa.phones]]` number
/// are test traffic (SPEC §6, docs/qa.md): a tester calls their own softphone many
/// times in a row, so the per-number and per-user limits and the daily country budget
/// (toll-fraud controls for real numbers) do not apply to them; the API key's limit
/// always does, so a leaked key cannot use a QA number to flood anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StartLimits {
    pub(super) per_number: bool,
    pub(super) per_user: bool,
    pub(super) budget: bool,
}

impl StartLimits {
    pub(super) fn for_number(qa: &QaSettings, number: &str) -> StartLimits {
        let real = qa.phone_for(number).is_none();
        StartLimits {
            per_number: real,
            per_user: real,
            budget: real,
        }
    }
}

/// Whose wrong checks a verification's count against.
pub(super) fn subject_of(v: &VerificationRow) -> String {
    match &v.user_id {
        Some(user) => format!("user:{user}"),
        None => format!("number:{}", v.phone),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn guard(count: u32) -> CheckGuard {
        CheckGuard {
            limit: RateLimit {
                count,
                per: Duration::from_secs(3600),
            },
            backoff_ms: 1_000,
        }
    }

    fn w(count: i64, first: i64, last: i64) -> WrongChecks {
        WrongChecks {
            count,
            first_at: (count > 0).then_some(first),
            last_at: (count > 0).then_some(last),
        }
    }

    #[test]
    fn first_tries_are_free_then_back_off_doubles() {
        let g = guard(10);
        assert_eq!(g.gate(w(0, 0, 0), 1_000), Gate::Open);
        assert_eq!(g.gate(w(4, 0, 1_000), 1_000), Gate::Open);
        // Fifth wrong check done at t=1000: the next waits 1 s, then 2 s...
        assert_eq!(
            g.gate(w(5, 0, 1_000), 1_500),
            Gate::Wait {
                retry_after_ms: 500,
                locked: false
            }
        );
        assert_eq!(g.gate(w(5, 0, 1_000), 2_000), Gate::Open);
        assert_eq!(
            g.gate(w(7, 0, 10_000), 10_000),
            Gate::Wait {
                retry_after_ms: 4_000,
                locked: false
            }
        );
    }

    #[test]
    fn the_limit_locks_out_until_the_window_moves() {
        let g = guard(10);
        let gate = g.gate(w(10, 60_000, 900_000), 1_000_000);
        assert_eq!(
            gate,
            Gate::Wait {
                retry_after_ms: 60_000 + 3_600_000 - 1_000_000,
                locked: true
            }
        );
        assert_eq!(guard(0).gate(w(50, 0, 0), 1), Gate::Open, "0 turns it off");
    }

    #[test]
    fn qa_phone_numbers_are_exempt_from_the_number_user_and_budget_limits() {
        let qa: QaSettings = toml::from_str(
            "[[phones]]\nusername = \"qa-alice\"\npassword_env = \"X\"\nnumber = \"+31612000001\"\n",
        )
        .unwrap();
        assert_eq!(
            StartLimits::for_number(&qa, "+31612000001"),
            StartLimits {
                per_number: false,
                per_user: false,
                budget: false
            }
        );
        let all = StartLimits {
            per_number: true,
            per_user: true,
            budget: true,
        };
        assert_eq!(StartLimits::for_number(&qa, "+31612000002"), all);
        assert_eq!(
            StartLimits::for_number(&QaSettings::default(), "+31612000001"),
            all
        );
    }

    #[test]
    fn back_off_is_capped() {
        let g = guard(1000);
        assert_eq!(
            g.gate(w(100, 0, 0), 0),
            Gate::Wait {
                retry_after_ms: BACKOFF_MAX_MS,
                locked: false
            }
        );
    }
}
