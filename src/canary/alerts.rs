//! Alerts to `[canary] alert_url`: when a canary turns `failing` and when it recovers,
//! one signed POST each (the webhook `Otpdial-Signature`), queued in the same
//! transaction as the health change and delivered, with retries, by [`AlertWorker`].
//!
//! Body: `{"event": "canary.failing" | "canary.recovered", "canary": {...}, "run": {...}}`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Alert, CanaryState, Health, RunResult};
use crate::config::{CanaryEntry, ExposeSecret, SecretString};
use crate::domain;
use crate::metrics::Metrics;
use crate::store::{CanaryAlertJob, CanaryHealthRow, CanaryRunEnd, NewCanaryAlert, Store};

/// Tries per alert before it is given up.
pub const MAX_TRIES: i64 = 5;
const LEASE_MS: i64 = 60_000;
const POLL: Duration = Duration::from_millis(250);

/// The run that changed the state, as the alert shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub id: String,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip_code: Option<i64>,
    pub post_dial_delay_ms: Option<i64>,
    pub setup_ms: Option<i64>,
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
    /// Digits heard, only when they were not the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heard: Option<String>,
    pub at: String,
}

impl RunView {
    pub fn new(id: &str, end: &CanaryRunEnd<'_>, at_ms: i64) -> RunView {
        RunView {
            id: id.into(),
            result: end.result.into(),
            reason: end.reason.map(str::to_string),
            trunk: end.trunk.map(str::to_string),
            sip_code: end.sip_code,
            post_dial_delay_ms: end.post_dial_delay_ms,
            setup_ms: end.setup_ms,
            loss: end.loss,
            jitter_ms: end.jitter_ms,
            mos: end.mos,
            heard: end.heard.map(str::to_string),
            at: domain::format_ms(at_ms),
        }
    }
}

#[derive(Serialize)]
struct CanaryView<'a> {
    name: &'a str,
    number: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trunk: Option<&'a str>,
    state: &'a str,
    consecutive_failures: i64,
    last_success_at: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    event: &'a str,
    canary: CanaryView<'a>,
    run: &'a RunView,
}

/// The health after `result`, and the alert to queue if the state changed and an
/// `alert_url` is set. Runs inside the store's transaction.
pub fn decide(
    entry: &CanaryEntry,
    before: &CanaryHealthRow,
    result: RunResult,
    fail_after: u32,
    alert_url: &str,
    run: &RunView,
    now: i64,
) -> (CanaryHealthRow, Option<NewCanaryAlert>) {
    let mut health = Health {
        state: CanaryState::parse(&before.state),
        consecutive_failures: u32::try_from(before.consecutive_failures.max(0)).unwrap_or(u32::MAX),
    };
    let alert = health.record(result, fail_after);
    let after = CanaryHealthRow {
        state: health.state.as_str().into(),
        consecutive_failures: i64::from(health.consecutive_failures),
        last_success_at: if result == RunResult::Ok {
            Some(now)
        } else {
            before.last_success_at
        },
    };
    let alert = alert
        .filter(|_| !alert_url.is_empty())
        .and_then(|a: Alert| {
            let body = Body {
                event: a.event(),
                canary: CanaryView {
                    name: &entry.name,
                    number: &entry.number,
                    trunk: entry.trunk(),
                    state: &after.state,
                    consecutive_failures: after.consecutive_failures,
                    last_success_at: after.last_success_at.map(domain::format_ms),
                },
                run,
            };
            let payload = serde_json::to_string(&body).ok()?;
            Some(NewCanaryAlert {
                event: a.event().into(),
                url: alert_url.into(),
                payload,
            })
        });
    (after, alert)
}

/// Delivers queued alerts: signs, POSTs, retries non-2xx with exponential backoff.
pub struct AlertWorker {
    store: Store,
    secret: SecretString,
    backoff: Duration,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl AlertWorker {
    /// `alert_url` is the operator's own configuration, so it is not held to the
    /// webhook target rules (a private address is allowed).
    pub fn new(
        store: Store,
        secret: SecretString,
        backoff: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<AlertWorker> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("otpdial/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(AlertWorker {
            store,
            secret,
            backoff,
            http,
            metrics,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let now = domain::now_ms();
            let jobs = match self
                .store
                .claim_canary_alerts(now, now + LEASE_MS, 20)
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, "canary alert queue unreadable");
                    Vec::new()
                }
            };
            let busy = !jobs.is_empty();
            for job in jobs {
                self.deliver(job).await;
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn deliver(&self, job: CanaryAlertJob) {
        let unix = domain::now_ms() / 1000;
        let signature = crate::signing::sign(
            self.secret.expose_secret().as_bytes(),
            unix,
            job.payload.as_bytes(),
        );
        let sent = self
            .http
            .post(&job.url)
            .header("Content-Type", "application/json")
            .header("Otpdial-Signature", signature)
            .body(job.payload.clone())
            .send()
            .await;
        let attempts = job.attempts + 1;
        let error = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Some(format!("request failed: {e}")),
        };
        let now = domain::now_ms();
        let write = match &error {
            None => {
                self.metrics.canary.alert("delivered");
                tracing::info!(canary = %job.canary, event = %job.event, "canary alert delivered");
                self.store
                    .canary_alert_delivered(&job.id, attempts, now)
                    .await
            }
            Some(err) => {
                let next = (attempts < MAX_TRIES).then(|| {
                    let factor = 1u32 << (attempts - 1).clamp(0, 10);
                    now + i64::try_from((self.backoff * factor).as_millis()).unwrap_or(i64::MAX)
                });
                let outcome = if next.is_some() { "retry" } else { "given_up" };
                self.metrics.canary.alert(outcome);
                tracing::warn!(canary = %job.canary, event = %job.event, error = %err, attempts, outcome, "canary alert not delivered");
                self.store
                    .canary_alert_failed(&job.id, attempts, next, err)
                    .await
            }
        };
        if let Err(e) = write {
            tracing::warn!(error = %e, "cannot record the canary alert delivery");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry() -> CanaryEntry {
        CanaryEntry {
            name: "nl".into(),
            number: "+31201234567".into(),
            trunk: "t1".into(),
            interval: Duration::from_secs(60),
            locale: String::new(),
        }
    }

    fn run(result: &str) -> RunView {
        RunView {
            id: "cr_1".into(),
            result: result.into(),
            reason: None,
            trunk: Some("t1".into()),
            sip_code: Some(503),
            post_dial_delay_ms: None,
            setup_ms: None,
            loss: None,
            jitter_ms: None,
            mos: None,
            heard: None,
            at: "2026-11-27T14:10:00Z".into(),
        }
    }

    fn ok_health() -> CanaryHealthRow {
        CanaryHealthRow {
            state: "ok".into(),
            consecutive_failures: 1,
            last_success_at: Some(5),
        }
    }

    #[test]
    fn second_failure_turns_failing_with_one_alert_body() {
        let (after, alert) = decide(
            &entry(),
            &ok_health(),
            RunResult::Failed,
            2,
            "http://ops/alert",
            &run("failed"),
            10,
        );
        assert_eq!(after.state, "failing");
        assert_eq!(after.consecutive_failures, 2);
        assert_eq!(after.last_success_at, Some(5));
        let alert = alert.unwrap();
        assert_eq!(alert.event, "canary.failing");
        let body: serde_json::Value = serde_json::from_str(&alert.payload).unwrap();
        assert_eq!(body["event"], "canary.failing");
        assert_eq!(body["canary"]["name"], "nl");
        assert_eq!(body["canary"]["state"], "failing");
        assert_eq!(body["run"]["result"], "failed");
        assert_eq!(body["run"]["sip_code"], 503);
    }

    #[test]
    fn no_url_no_alert_but_the_state_still_moves() {
        let (after, alert) = decide(
            &entry(),
            &ok_health(),
            RunResult::NotHeard,
            2,
            "",
            &run("not_heard"),
            10,
        );
        assert_eq!(after.state, "failing");
        assert!(alert.is_none());
    }

    #[test]
    fn recovery_alerts_and_records_the_success() {
        let failing = CanaryHealthRow {
            state: "failing".into(),
            consecutive_failures: 4,
            last_success_at: None,
        };
        let (after, alert) = decide(
            &entry(),
            &failing,
            RunResult::Ok,
            2,
            "http://ops/alert",
            &run("ok"),
            99,
        );
        assert_eq!(after.state, "ok");
        assert_eq!(after.last_success_at, Some(99));
        assert_eq!(alert.unwrap().event, "canary.recovered");
    }
}
