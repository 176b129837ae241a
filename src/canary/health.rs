//! A canary's health across runs (SPEC §7 `state`, `[canary] fail_after`): `ok` until
//! `fail_after` failed runs in a row, then `failing` until a run succeeds. Each change of
//! state raises one alert; nothing repeats while the state holds. Pure code; the store
//! keeps the value between runs and instances.

use super::RunResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryState {
    Ok,
    Failing,
}

impl CanaryState {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryState::Ok => "ok",
            CanaryState::Failing => "failing",
        }
    }

    /// As stored; anything unknown reads as `ok` (the next runs set it right).
    pub fn parse(s: &str) -> CanaryState {
        match s {
            "failing" => CanaryState::Failing,
            _ => CanaryState::Ok,
        }
    }
}

/// What to tell `[canary] alert_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// The canary just turned `failing`.
    Failing,
    /// It just recovered.
    Recovered,
}

impl Alert {
    /// The `event` of the alert body.
    pub fn event(self) -> &'static str {
        match self {
            Alert::Failing => "canary.failing",
            Alert::Recovered => "canary.recovered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub state: CanaryState,
    /// Failed runs since the last `ok` one.
    pub consecutive_failures: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: CanaryState::Ok,
            consecutive_failures: 0,
        }
    }
}

impl Health {
    /// Takes one run's result; returns the alert to send, if the state changed.
    pub fn record(&mut self, result: RunResult, fail_after: u32) -> Option<Alert> {
        if result.is_failure() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.state == CanaryState::Ok && self.consecutive_failures >= fail_after.max(1) {
                self.state = CanaryState::Failing;
                return Some(Alert::Failing);
            }
            return None;
        }
        self.consecutive_failures = 0;
        if self.state == CanaryState::Failing {
            self.state = CanaryState::Ok;
            return Some(Alert::Recovered);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Health, results: &[RunResult], fail_after: u32) -> Vec<Option<Alert>> {
        results.iter().map(|r| h.record(*r, fail_after)).collect()
    }

    #[test]
    fn fails_after_n_recovers_once_never_repeats() {
        use RunResult::*;
        let mut h = Health::default();
        let alerts = run(
            &mut h,
            &[Ok, Failed, NotHeard, Failed, Failed, Ok, Ok, Failed, Ok],
            2,
        );
        assert_eq!(
            alerts,
            vec![
                None,
                None,
                Some(Alert::Failing),
                None,
                None,
                Some(Alert::Recovered),
                None,
                None, // one failure is not enough
                None,
            ]
        );
        assert_eq!(h.state, CanaryState::Ok);
        assert_eq!(h.consecutive_failures, 0);
    }

    #[test]
    fn fail_after_one_and_zero_alert_on_the_first_failure() {
        for n in [0, 1] {
            let mut h = Health::default();
            assert_eq!(h.record(RunResult::NotDelivered, n), Some(Alert::Failing));
            assert_eq!(h.record(RunResult::NotDelivered, n), None);
            assert_eq!(h.consecutive_failures, 2);
        }
    }

    #[test]
    fn states_read_back() {
        assert_eq!(CanaryState::parse("failing"), CanaryState::Failing);
        assert_eq!(CanaryState::parse("ok"), CanaryState::Ok);
        assert_eq!(CanaryState::parse("?"), CanaryState::Ok);
    }
}
