//! Calling-by-country metrics (`/metrics`): attempts and answers per trunk × country,
//! the recent answer rate per trunk × country (refreshed from the database, so every
//! instance shows the same figures), calls per caller ID and caller IDs rested.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkCountryLabel {
    pub trunk: String,
    pub country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerIdLabel {
    pub pool: String,
    pub caller_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every calling-by-country metric family.
#[derive(Debug, Default)]
pub struct RoutingMetrics {
    /// Attempts through a trunk, by destination country.
    pub route_calls: Family<TrunkCountryLabel, Counter>,
    /// Of those, answered.
    pub route_answered: Family<TrunkCountryLabel, Counter>,
    /// Answer rate over `[dialer] quality_window`, all instances.
    pub route_answer_rate: Family<TrunkCountryLabel, FloatGauge>,
    /// Calls that showed a pool's caller ID.
    pub caller_id_calls: Family<CallerIdLabel, Counter>,
    /// Caller IDs taken out of rotation for a low answer rate.
    pub caller_id_rested: Family<PoolLabel, Counter>,
}

impl RoutingMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "route_calls",
            "Call attempts through a trunk, by trunk and destination country code",
            self.route_calls.clone(),
        );
        registry.register(
            "route_answered",
            "Call attempts answered, by trunk and destination country code",
            self.route_answered.clone(),
        );
        registry.register(
            "route_answer_rate",
            "Answer rate by trunk and destination country over [dialer] quality_window (all instances)",
            self.route_answer_rate.clone(),
        );
        registry.register(
            "caller_id_calls",
            "Calls that showed a [[caller_ids]] number, by pool and caller ID",
            self.caller_id_calls.clone(),
        );
        registry.register(
            "caller_id_rested",
            "Caller IDs rested for an answer rate well below their pool's, by pool",
            self.caller_id_rested.clone(),
        );
    }
}
