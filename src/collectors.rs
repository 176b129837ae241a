//! The figures other parts keep, read when `/metrics` is scraped: the RTP pacer's
//! packet counters, the SIP listener policy's and QA registrar's counters and the SIP
//! retransmission counts, and the trunk board. Each is a Prometheus collector that
//! `app.rs` registers with [`Metrics::register_collector`], so `metrics.rs` names none
//! of these parts.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::media::PacerStats;
use crate::metrics::{Metrics, ReasonLabel, ResultLabel, TrunkLabel};
use crate::sip_io::SipStats;
use crate::trunks::{BreakerState, TrunkBoard};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodKindLabel {
    method: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrunkStateLabel {
    trunk: String,
    state: &'static str,
}

/// Registers the live figures of the pacer, the SIP endpoint and the trunk board.
pub fn register(
    metrics: &Metrics,
    pacer: Arc<PacerStats>,
    sip: Arc<SipStats>,
    board: Arc<TrunkBoard>,
) {
    metrics.register_collector(Box::new(PacerFigures(pacer)));
    metrics.register_collector(Box::new(SipFigures(sip)));
    metrics.register_collector(Box::new(BoardFigures(board)));
}

/// `otpdial_rtp_packets_sent_total`, `otpdial_rtp_packets_late_total`,
/// `otpdial_srtp_packets_rejected_total`.
#[derive(Debug)]
struct PacerFigures(Arc<PacerStats>);

impl Collector for PacerFigures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pacer = &self.0;
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
        Ok(())
    }
}

#[derive(Debug)]
struct SipFigures(Arc<SipStats>);

impl Collector for SipFigures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        encode_sip(&self.0, &mut encoder)
    }
}

/// The SIP listener policy's counters, kept by the SIP driver and read at
/// scrape time (`otpdial_sip_dropped_total{reason}`, `otpdial_sip_bans_total`,
/// `otpdial_sip_banned_sources`), and the QA registrar's
/// (`otpdial_qa_registrations_total{result}`, `otpdial_qa_phones_registered`).
fn encode_sip(sip: &SipStats, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
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
    encode_retransmissions(sip, encoder)
}

/// `otpdial_sip_retransmissions_sent_total{method,kind}` and
/// `otpdial_sip_retransmissions_received_total{method,kind}` (kind: the repeated
/// message was a `request` or a `response`), every combination, zeros included.
fn encode_retransmissions(
    sip: &SipStats,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use crate::sip::Retransmissions;
    let counts = sip.retransmissions();
    for (name, help, table) in [
        (
            "sip_retransmissions_sent",
            "SIP retransmissions we sent (Timer A/E resends, 2xx until ACK, answers and ACKs repeated for a retransmitted message), by method and kind",
            &counts.sent,
        ),
        (
            "sip_retransmissions_received",
            "Retransmitted SIP requests and responses we received and absorbed, by method and kind",
            &counts.received,
        ),
    ] {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (method, kind, n) in Retransmissions::labelled(table) {
            let label = MethodKindLabel { method, kind };
            ConstCounter::new(n).encode(family.encode_family(&label)?)?;
        }
    }
    Ok(())
}

/// Calls in progress, and per trunk its registration, breaker and answer rate.
#[derive(Debug)]
struct BoardFigures(Arc<TrunkBoard>);

impl Collector for BoardFigures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let board = &self.0;
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
