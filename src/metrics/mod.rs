//! Prometheus metrics (prometheus-client): counters and histograms the
//! layers bump, collectors that `app.rs` registers for values read at scrape
//! time ([`Metrics::register_collector`], `collectors.rs`), and the text exposition served at
//! `/metrics`. Labels carry no numbers, ids or codes; `route` is the
//! route's pattern (`/v1/verifications/{id}`), never the path itself.
//! `docs/operations.md` lists every family: keep it in step.

pub mod canary;
pub mod routing;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sync::lock;

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
    /// Calls that moved to a trunk's next DNS target (RFC 3263: no response or 503).
    pub target_failovers: Family<TrunkLabel, Counter>,
    pub calls_recovered: Family<ResultLabel, Counter>,
    /// INVITE sent to 200 OK, per trunk.
    pub call_setup: HistogramFamily<TrunkLabel>,
    /// INVITE sent to the first 18x, per trunk.
    pub post_dial_delay: HistogramFamily<TrunkLabel>,
    /// HTTP API latency by method, route pattern and status.
    pub http_requests: HistogramFamily<RouteLabel>,
    /// Canary runs, health and the answering side (`otpdial_canary_*`).
    pub canary: canary::CanaryMetrics,
    /// Rows removed by retention (`[database] retention`).
    pub retention_rows: Family<RetentionLabel, Counter>,
    /// Calling by country: routes, caller IDs (`otpdial_route_*`, `otpdial_caller_id_*`).
    pub routing: routing::RoutingMetrics,
    /// Collectors registered after start-up ([`Self::register_collector`]).
    collectors: Mutex<Registry>,
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
            target_failovers: Family::default(),
            calls_recovered: Family::default(),
            call_setup: Family::new_with_constructor(call_seconds),
            post_dial_delay: Family::new_with_constructor(call_seconds),
            http_requests: Family::new_with_constructor(request_seconds),
            canary: Default::default(),
            retention_rows: Family::default(),
            routing: Default::default(),
            collectors: Mutex::new(Registry::with_prefix("otpdial")),
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
            "trunk_target_failovers",
            "Calls that moved on to the trunk's next DNS target (no response or 503 from one of its hosts)",
            m.target_failovers.clone(),
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
        m.routing.register(&mut registry);
        Arc::new(Metrics { registry, ..m })
    }

    /// Adds values read at scrape time from the part that keeps them (the pacer's
    /// packets, the SIP listener's drops, the trunk board: `collectors.rs`). Called
    /// when the gateway is wired.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        lock(&self.collectors).register_collector(collector);
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

    /// A call left one of `trunk`'s DNS targets for the next.
    pub fn target_failover(&self, trunk: &str) {
        bump(
            &self.target_failovers,
            TrunkLabel {
                trunk: trunk.into(),
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
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let collectors = lock(&self.collectors);
        if encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &collectors))
            .and_then(|()| encode_eof(&mut out))
            .is_err()
        {
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
