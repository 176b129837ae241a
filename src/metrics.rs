//! Prometheus metrics (prometheus-client): counters the layers bump, and
//! the text exposition served at `/metrics`. Labels carry no numbers, ids
//! or codes.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabel {
    pub trunk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkStatusLabel {
    pub trunk: String,
    pub status: String,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub verifications_started: Counter,
    pub refusals: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ReasonLabel, Counter>,
    pub checks: Family<ResultLabel, Counter>,
    pub calls_finished: Family<StatusLabel, Counter>,
    pub call_attempts: Family<TrunkStatusLabel, Counter>,
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    pub active_calls: Family<TrunkLabel, Gauge>,
    /// 1 while a trunk's circuit breaker holds it down.
    pub trunk_down: Family<TrunkLabel, Gauge>,
    pub calls_recovered: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("otpdial");
        let m = Metrics {
            verifications_started: Counter::default(),
            refusals: Family::default(),
            rate_limited: Family::default(),
            checks: Family::default(),
            calls_finished: Family::default(),
            call_attempts: Family::default(),
            webhook_deliveries: Family::default(),
            active_calls: Family::default(),
            trunk_down: Family::default(),
            calls_recovered: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "verifications_started",
            "Verifications created",
            m.verifications_started.clone(),
        );
        registry.register(
            "verification_refusals",
            "Verification starts refused by toll-fraud or registration rules",
            m.refusals.clone(),
        );
        registry.register(
            "rate_limited",
            "Verification starts refused by a rate limit",
            m.rate_limited.clone(),
        );
        registry.register("checks", "Code checks by result", m.checks.clone());
        registry.register(
            "calls_finished",
            "Calls by final status",
            m.calls_finished.clone(),
        );
        registry.register(
            "call_attempts",
            "Call attempts by trunk and status",
            m.call_attempts.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery tries by result",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "active_calls",
            "Calls in progress per trunk",
            m.active_calls.clone(),
        );
        registry.register(
            "trunk_down",
            "1 while the trunk's circuit breaker marks it down",
            m.trunk_down.clone(),
        );
        registry.register(
            "calls_recovered",
            "Calls of a dead instance taken over, by result (failed, requeued)",
            m.calls_recovered.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn refused(&self, reason: &str) {
        bump(
            &self.refusals,
            ReasonLabel {
                reason: reason.into(),
            },
        );
    }

    pub fn limited(&self, limit: &str) {
        bump(
            &self.rate_limited,
            ReasonLabel {
                reason: limit.into(),
            },
        );
    }

    pub fn checked(&self, result: &str) {
        bump(
            &self.checks,
            ResultLabel {
                result: result.into(),
            },
        );
    }

    pub fn call_finished(&self, status: &str) {
        bump(
            &self.calls_finished,
            StatusLabel {
                status: status.into(),
            },
        );
    }

    pub fn call_attempt(&self, trunk: &str, status: &str) {
        bump(
            &self.call_attempts,
            TrunkStatusLabel {
                trunk: trunk.into(),
                status: status.into(),
            },
        );
    }

    pub fn recovered(&self, result: &str) {
        bump(
            &self.calls_recovered,
            ResultLabel {
                result: result.into(),
            },
        );
    }

    pub fn webhook(&self, result: &str) {
        bump(
            &self.webhook_deliveries,
            ResultLabel {
                result: result.into(),
            },
        );
    }

    /// The gateway's metrics plus the SIP listener policy's counters
    /// (`otpdial_sip_dropped_total{reason}`, `otpdial_sip_bans_total`,
    /// `otpdial_sip_banned_sources`) and the QA registrar's
    /// (`otpdial_qa_registrations_total{result}`, `otpdial_qa_phones_registered`),
    /// read from `sip` at each scrape.
    pub fn with_sip(sip: Arc<crate::sip_io::SipStats>) -> Arc<Metrics> {
        match Arc::try_unwrap(Self::new()) {
            Ok(mut m) => {
                m.registry.register_collector(Box::new(SipCollector(sip)));
                Arc::new(m)
            }
            Err(shared) => shared,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn bump<L>(family: &Family<L, Counter>, label: L)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    family.get_or_create(&label).inc();
}

/// The SIP listener policy's counters, kept by the SIP driver and read at scrape time.
#[derive(Debug)]
struct SipCollector(Arc<crate::sip_io::SipStats>);

impl prometheus_client::collector::Collector for SipCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let mut family = encoder.encode_descriptor(
            "sip_dropped",
            "SIP messages dropped (or refused with 403) by the listener policy, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in self.0.dropped() {
            let label = ReasonLabel {
                reason: reason.to_string(),
            };
            ConstCounter::new(n).encode(family.encode_family(&label)?)?;
        }
        let bans = ConstCounter::new(self.0.bans());
        bans.encode(encoder.encode_descriptor(
            "sip_bans",
            "SIP sources banned (too many failed authentications or requests)",
            None,
            bans.metric_type(),
        )?)?;
        let banned = ConstGauge::new(i64::try_from(self.0.banned_now()).unwrap_or(i64::MAX));
        banned.encode(encoder.encode_descriptor(
            "sip_banned_sources",
            "SIP sources under a ban now",
            None,
            banned.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "qa_registrations",
            "QA registrar: REGISTERs that bound a phone, bindings removed (unregistered or expired), refused authentications",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in self.0.registrations() {
            let label = ResultLabel {
                result: result.to_string(),
            };
            ConstCounter::new(n).encode(family.encode_family(&label)?)?;
        }
        let bound = ConstGauge::new(i64::try_from(self.0.qa_registered_now()).unwrap_or(i64::MAX));
        bound.encode(encoder.encode_descriptor(
            "qa_phones_registered",
            "QA phones registered now",
            None,
            bound.metric_type(),
        )?)?;
        Ok(())
    }
}
