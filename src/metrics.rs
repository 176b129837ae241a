//! Prometheus metrics (prometheus-client): counters and histograms the
//! layers bump, values read at scrape time from the trunk board and the RTP
//! pacer ([`Metrics::watch`]), and the text exposition served at
//! `/metrics`. Labels carry no numbers, ids or codes; `route` is the
//! route's pattern (`/v1/verifications/{id}`), never the path itself.
//! `docs/operations.md` lists every family: keep it in step.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::media::PacerStats;
use crate::trunks::{BreakerState, TrunkBoard};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    /// The matched route pattern, or `unmatched`.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionLabel {
    pub table: &'static str,
    /// `deleted`, or `pseudonymised` (audit rows kept with their personal data hashed).
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrunkStateLabel {
    trunk: String,
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Call setup and post-dial delay, in seconds: carriers answer INVITEs in
/// tens of milliseconds and people pick up after seconds.
fn call_seconds() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0,
    ])
}

/// API request duration, in seconds.
fn request_seconds() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
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
    /// INVITE sent to 200 OK, per trunk.
    pub call_setup: HistogramFamily<TrunkLabel>,
    /// INVITE sent to the first 18x, per trunk.
    pub post_dial_delay: HistogramFamily<TrunkLabel>,
    /// HTTP API latency by method, route pattern and status.
    pub http_requests: HistogramFamily<RouteLabel>,
    /// Canary runs, health and the answering side (`otpdial_canary_*`).
    pub canary: crate::canary::metrics::CanaryMetrics,
    /// Rows removed by retention (`[database] retention`).
    pub retention_rows: Family<RetentionLabel, Counter>,
    live: Arc<Live>,
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
            call_setup: Family::new_with_constructor(call_seconds),
            post_dial_delay: Family::new_with_constructor(call_seconds),
            http_requests: Family::new_with_constructor(request_seconds),
            canary: Default::default(),
            retention_rows: Family::default(),
            live: Arc::new(Live::default()),
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
        registry.register(
            "call_setup_seconds",
            "Time from sending the INVITE to its 200 OK (answer), per trunk",
            m.call_setup.clone(),
        );
        registry.register(
            "post_dial_delay_seconds",
            "Time from sending the INVITE to the first 18x (ringing or early media), per trunk",
            m.post_dial_delay.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP API request latency by method, route pattern and status",
            m.http_requests.clone(),
        );
        m.canary.register(&mut registry);
        registry.register(
            "retention_rows",
            "Rows removed by retention ([database] retention, otpdial purge), by table and action (deleted, pseudonymised)",
            m.retention_rows.clone(),
        );
        registry.register_collector(Box::new(m.live.clone()));
        Arc::new(Metrics { registry, ..m })
    }

    /// Where the scrape-time values come from: the trunk board (registration,
    /// breaker, answer rate, calls in progress), the RTP pacer (packets) and
    /// the SIP listener policy (drops, bans). Set once when the gateway is
    /// wired; later calls are ignored.
    pub fn watch(
        &self,
        board: Arc<TrunkBoard>,
        pacer: Arc<PacerStats>,
        sip: Arc<crate::sip_io::SipStats>,
    ) {
        let _ = self.live.board.set(board);
        let _ = self.live.pacer.set(pacer);
        let _ = self.live.sip.set(sip);
    }

    /// An INVITE through `trunk` was answered `after` it was sent.
    pub fn call_answered(&self, trunk: &str, after: Duration) {
        self.call_setup
            .get_or_create(&TrunkLabel {
                trunk: trunk.into(),
            })
            .observe(after.as_secs_f64());
    }

    /// The first 18x for an INVITE through `trunk` came `after` it was sent.
    pub fn call_alerting(&self, trunk: &str, after: Duration) {
        self.post_dial_delay
            .get_or_create(&TrunkLabel {
                trunk: trunk.into(),
            })
            .observe(after.as_secs_f64());
    }

    /// One API request answered.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&RouteLabel {
                method: method.into(),
                route: route.into(),
                status: status.to_string(),
            })
            .observe(took.as_secs_f64());
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

    /// `n` rows of `table` removed by retention (`action`: deleted or pseudonymised).
    pub fn retention(&self, table: &'static str, action: &'static str, n: u64) {
        if n > 0 {
            self.retention_rows
                .get_or_create(&RetentionLabel { table, action })
                .inc_by(n);
        }
    }

    pub fn webhook(&self, result: &str) {
        bump(
            &self.webhook_deliveries,
            ResultLabel {
                result: result.into(),
            },
        );
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

/// The SIP listener policy's counters, kept by the SIP driver and read at
/// scrape time (`otpdial_sip_dropped_total{reason}`, `otpdial_sip_bans_total`,
/// `otpdial_sip_banned_sources`), and the QA registrar's
/// (`otpdial_qa_registrations_total{result}`, `otpdial_qa_phones_registered`).
fn encode_sip(
    sip: &crate::sip_io::SipStats,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::MetricType;
    let mut family = encoder.encode_descriptor(
        "sip_dropped",
        "SIP messages dropped (or refused with 403) by the listener policy, by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in sip.dropped() {
        let label = ReasonLabel {
            reason: reason.to_string(),
        };
        ConstCounter::new(n).encode(family.encode_family(&label)?)?;
    }
    let bans = ConstCounter::new(sip.bans());
    bans.encode(encoder.encode_descriptor(
        "sip_bans",
        "SIP sources banned (too many failed authentications or requests)",
        None,
        bans.metric_type(),
    )?)?;
    let banned = ConstGauge::new(i64::try_from(sip.banned_now()).unwrap_or(i64::MAX));
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
    for (result, n) in sip.registrations() {
        let label = ResultLabel {
            result: result.to_string(),
        };
        ConstCounter::new(n).encode(family.encode_family(&label)?)?;
    }
    let bound = ConstGauge::new(i64::try_from(sip.qa_registered_now()).unwrap_or(i64::MAX));
    bound.encode(encoder.encode_descriptor(
        "qa_phones_registered",
        "QA phones registered now",
        None,
        bound.metric_type(),
    )?)?;
    Ok(())
}

/// Values read when `/metrics` is scraped, from the parts that own them.
#[derive(Debug, Default)]
struct Live {
    board: OnceLock<Arc<TrunkBoard>>,
    pacer: OnceLock<Arc<PacerStats>>,
    sip: OnceLock<Arc<crate::sip_io::SipStats>>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(pacer) = self.pacer.get() {
            let sent = ConstCounter::new(pacer.packets_sent());
            sent.encode(encoder.encode_descriptor(
                "rtp_packets_sent",
                "RTP packets the kernel accepted, all calls.",
                None,
                sent.metric_type(),
            )?)?;
            let late = ConstCounter::new(pacer.packets_late());
            late.encode(encoder.encode_descriptor(
                "rtp_packets_late",
                "RTP packets sent more than 10 ms after they were due.",
                None,
                late.metric_type(),
            )?)?;
            let rejected = ConstCounter::new(pacer.srtp_rejected());
            rejected.encode(encoder.encode_descriptor(
                "srtp_packets_rejected",
                "SRTP/SRTCP packets received that failed authentication or the replay check (dropped).",
                None,
                rejected.metric_type(),
            )?)?;
        }
        if let Some(sip) = self.sip.get() {
            encode_sip(sip, &mut encoder)?;
        }
        let Some(board) = self.board.get() else {
            return Ok(());
        };
        let in_progress = ConstGauge::new(i64::from(board.active_calls()));
        in_progress.encode(encoder.encode_descriptor(
            "calls_in_progress",
            "Calls in progress on this instance, all trunks.",
            None,
            in_progress.metric_type(),
        )?)?;
        let trunks = board.snapshot();
        let gauge = ConstGauge::new(0i64);
        let mut registered = encoder.encode_descriptor(
            "trunk_registered",
            "1 while a trunk with register = true holds a registration, else 0.",
            None,
            gauge.metric_type(),
        )?;
        for t in trunks.iter().filter(|t| t.register) {
            let label = TrunkLabel {
                trunk: t.name.clone(),
            };
            ConstGauge::new(i64::from(t.status.registered))
                .encode(registered.encode_family(&label)?)?;
        }
        let mut breaker = encoder.encode_descriptor(
            "trunk_breaker",
            "1 for the state the trunk's circuit breaker is in (closed, open, half_open), 0 for the others.",
            None,
            gauge.metric_type(),
        )?;
        for t in &trunks {
            for state in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                let label = TrunkStateLabel {
                    trunk: t.name.clone(),
                    state: state.as_str(),
                };
                ConstGauge::new(i64::from(t.breaker == state))
                    .encode(breaker.encode_family(&label)?)?;
            }
        }
        let mut answer_rate = encoder.encode_descriptor(
            "trunk_answer_rate",
            "Answered / placed calls per trunk since start (0..1); absent before the trunk's first call.",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        for t in trunks.iter().filter(|t| t.calls_total > 0) {
            let label = TrunkLabel {
                trunk: t.name.clone(),
            };
            ConstGauge::new(t.answer_rate()).encode(answer_rate.encode_family(&label)?)?;
        }
        Ok(())
    }
}
