//! The canaries' metrics (`/metrics`): runs by result, and per canary the time of the
//! last success, the last post-dial delay and MOS, and whether it is failing. Bumped by
//! the runner of this instance; the state gauges are refreshed from the database, so
//! every instance shows the same health.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabel {
    pub canary: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryResultLabel {
    pub canary: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every canary metric family.
#[derive(Debug, Default)]
pub struct CanaryMetrics {
    pub runs: Family<CanaryResultLabel, Counter>,
    pub last_success: Family<CanaryLabel, Gauge>,
    pub post_dial_delay: Family<CanaryLabel, FloatGauge>,
    pub mos: Family<CanaryLabel, FloatGauge>,
    pub failing: Family<CanaryLabel, Gauge>,
    /// Inbound calls the answering side took, by what became of them.
    pub inbound: Family<OutcomeLabel, Counter>,
    pub alerts: Family<OutcomeLabel, Counter>,
    /// Runs not placed, by reason (`daily_cap`).
    pub skipped: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl CanaryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "canary_runs",
            "Canary runs by canary and result (ok, wrong_digits, not_heard, not_answered, not_delivered, failed)",
            self.runs.clone(),
        );
        registry.register(
            "canary_last_success_timestamp_seconds",
            "Unix time of the canary's last ok run",
            self.last_success.clone(),
        );
        registry.register(
            "canary_post_dial_delay_seconds",
            "Post-dial delay (INVITE to first 18x, or to the answer) of the canary's last run",
            self.post_dial_delay.clone(),
        );
        registry.register(
            "canary_mos",
            "Estimated MOS (ITU-T G.107 E-model) of the canary's last run that was heard",
            self.mos.clone(),
        );
        registry.register(
            "canary_failing",
            "1 while the canary is failing (fail_after failed runs in a row)",
            self.failing.clone(),
        );
        registry.register(
            "canary_inbound_calls",
            "Inbound canary calls at the answering side, by result (answered, refused)",
            self.inbound.clone(),
        );
        registry.register(
            "canary_skipped",
            "Canary runs not placed, by reason (daily_cap)",
            self.skipped.clone(),
        );
        registry.register(
            "canary_alerts",
            "Canary alert deliveries by result (delivered, retry, given_up)",
            self.alerts.clone(),
        );
    }

    fn label(canary: &str) -> CanaryLabel {
        CanaryLabel {
            canary: canary.into(),
        }
    }

    /// One run of `canary` ended with `result`.
    pub fn run(
        &self,
        canary: &str,
        result: &str,
        post_dial_delay_ms: Option<i64>,
        mos: Option<f64>,
    ) {
        self.runs
            .get_or_create(&CanaryResultLabel {
                canary: canary.into(),
                result: result.into(),
            })
            .inc();
        if let Some(ms) = post_dial_delay_ms {
            self.post_dial_delay
                .get_or_create(&Self::label(canary))
                .set(ms as f64 / 1000.0);
        }
        if let Some(mos) = mos {
            self.mos.get_or_create(&Self::label(canary)).set(mos);
        }
    }

    /// The health as stored: failing or not, and the last success (unix ms).
    pub fn health(&self, canary: &str, failing: bool, last_success_ms: Option<i64>) {
        self.failing
            .get_or_create(&Self::label(canary))
            .set(i64::from(failing));
        if let Some(ms) = last_success_ms {
            self.last_success
                .get_or_create(&Self::label(canary))
                .set(ms / 1000);
        }
    }

    pub fn inbound(&self, result: &str) {
        self.inbound
            .get_or_create(&OutcomeLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn skipped(&self, reason: &str) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn alert(&self, result: &str) {
        self.alerts
            .get_or_create(&OutcomeLabel {
                result: result.into(),
            })
            .inc();
    }
}
