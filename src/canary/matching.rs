//! Which arrival at the answer number belongs to a run, what it heard, and the quality
//! figures of the run from what it measured. Pure code over the stored rows.
//!
//! A run is matched to an arrival (any instance may have answered it) by the keyed hash
//! of its code first. Failing that, by elimination: an arrival whose code matched another
//! run that was open at the time (it holds a hash but no digits in clear) belongs to that
//! run; of the others the oldest is taken, once every candidate has reported, or at the
//! deadline whatever state it is in.

use super::emodel::{self, CodecImpairment, Conditions};
use super::Heard;
use crate::store::CanaryArrivalRow;

/// What to do with the arrivals seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Claim this arrival (index into the list).
    Take(usize),
    /// Look again later: a candidate has not reported yet.
    Wait,
    /// No arrival is this run's.
    Nothing,
}

/// Chooses the run's arrival among `arrivals` (oldest first); `deadline`: the time to
/// wait is over.
pub fn pick_arrival(arrivals: &[CanaryArrivalRow], code_hash: &str, deadline: bool) -> Pick {
    if let Some(i) = arrivals
        .iter()
        .position(|a| a.heard_hash.as_deref() == Some(code_hash))
    {
        return Pick::Take(i);
    }
    // Heard some open run's code (no digits kept in clear): that run's, not ours.
    let others_code = |a: &CanaryArrivalRow| a.heard_hash.is_some() && a.heard.is_none();
    let candidates: Vec<usize> = (0..arrivals.len())
        .filter(|&i| !others_code(&arrivals[i]))
        .collect();
    let Some(&first) = candidates.first() else {
        return if deadline { Pick::Nothing } else { Pick::Wait };
    };
    if deadline
        || candidates
            .iter()
            .all(|&i| arrivals[i].reported_at.is_some())
    {
        Pick::Take(first)
    } else {
        Pick::Wait
    }
}

/// Whether an arrival that may be this run's is there (reported or not).
pub fn has_candidate(arrivals: &[CanaryArrivalRow], code_hash: &str) -> bool {
    arrivals.iter().any(|a| {
        a.heard_hash.as_deref() == Some(code_hash) || !(a.heard_hash.is_some() && a.heard.is_none())
    })
}

/// What the arrival heard, against the run's code.
pub fn heard(arrival: &CanaryArrivalRow, code_hash: &str) -> Heard {
    if arrival.heard_hash.as_deref() == Some(code_hash) {
        Heard::Code
    } else if arrival.heard_hash.is_some() || arrival.heard.is_some() {
        Heard::Other
    } else {
        Heard::Nothing
    }
}

/// Loss, jitter and MOS of what an arrival received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Lost packets as a fraction (0..=1).
    pub loss: f64,
    pub jitter_ms: f64,
    pub mos: f64,
}

/// The largest one-way delay taken from clocks of two instances; more is a clock apart.
const MAX_ONE_WAY_MS: i64 = 2_000;

/// Scores a reported arrival. `answered_at`: when the calling side got its 200 OK (unix
/// ms); the first RTP packet's arrival after it estimates the one-way delay of the
/// media (both clocks are the same host's, or NTP-synchronised instances').
pub fn quality(arrival: &CanaryArrivalRow, answered_at: Option<i64>) -> Option<Quality> {
    arrival.reported_at?;
    let expected = arrival.expected.unwrap_or(0).max(0);
    let lost = arrival.lost.unwrap_or(0).clamp(0, expected);
    let loss = if expected == 0 {
        1.0
    } else {
        lost as f64 / expected as f64
    };
    let jitter_ms = arrival.jitter_ms.unwrap_or(0.0).max(0.0);
    let one_way = match (arrival.first_rtp_at, answered_at) {
        (Some(first), Some(answer)) if (0..=MAX_ONE_WAY_MS).contains(&(first - answer)) => {
            (first - answer) as f64
        }
        _ => 0.0,
    };
    let rating = emodel::rate(Conditions {
        delay_ms: emodel::mouth_to_ear_ms(one_way, jitter_ms),
        loss_percent: loss * 100.0,
        burst_ratio: arrival.burst_ratio.unwrap_or(1.0),
        codec: CodecImpairment::G711_PLC,
    });
    Some(Quality {
        loss: round(loss, 4),
        jitter_ms: round(jitter_ms, 2),
        mos: round(rating.mos(), 2),
    })
}

/// The reading heard most often (the first of equals): one reading garbled by a lost
/// packet does not outvote two clean ones.
pub fn consensus(readings: &[String]) -> Option<String> {
    let mut best: Option<(&String, usize)> = None;
    for r in readings {
        let n = readings.iter().filter(|x| *x == r).count();
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((r, n));
        }
    }
    best.map(|(r, _)| r.clone())
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(id: &str) -> CanaryArrivalRow {
        CanaryArrivalRow {
            id: id.into(),
            sip_call_id: format!("{id}@x"),
            answered_by: "i1".into(),
            arrived_at: 1_000,
            reported_at: Some(2_000),
            heard_hash: None,
            heard: None,
            codec: Some("PCMA".into()),
            received: Some(500),
            expected: Some(500),
            lost: Some(0),
            jitter_ms: Some(0.3),
            burst_ratio: Some(1.0),
            first_rtp_at: Some(1_105),
        }
    }

    #[test]
    fn the_most_heard_reading_wins() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            consensus(&r(&["123456", "128456", "123456"])).as_deref(),
            Some("123456")
        );
        assert_eq!(consensus(&r(&["12", "34"])).as_deref(), Some("12"));
        assert_eq!(consensus(&[]), None);
    }

    #[test]
    fn the_hash_wins_wherever_it_is() {
        let mut a = vec![arrival("a"), arrival("b")];
        a[1].heard_hash = Some("mine".into());
        assert_eq!(pick_arrival(&a, "mine", false), Pick::Take(1));
        assert_eq!(heard(&a[1], "mine"), Heard::Code);
    }

    #[test]
    fn another_runs_code_is_left_to_it() {
        let mut a = vec![arrival("a"), arrival("b")];
        a[0].heard_hash = Some("theirs".into());
        a[1].heard = Some("1234".into());
        a[1].heard_hash = Some("h(1234)".into());
        assert_eq!(pick_arrival(&a, "mine", false), Pick::Take(1));
        assert_eq!(heard(&a[1], "mine"), Heard::Other);
        assert_eq!(pick_arrival(&a[..1], "mine", true), Pick::Nothing);
        assert!(!has_candidate(&a[..1], "mine"));
        assert!(has_candidate(&a, "mine"));
        assert!(has_candidate(&a[..1], "theirs"));
    }

    #[test]
    fn waits_for_reports_until_the_deadline() {
        let mut a = vec![arrival("a")];
        a[0].reported_at = None;
        assert_eq!(pick_arrival(&a, "mine", false), Pick::Wait);
        assert_eq!(pick_arrival(&a, "mine", true), Pick::Take(0));
        assert_eq!(heard(&a[0], "mine"), Heard::Nothing);
        assert_eq!(pick_arrival(&[], "mine", false), Pick::Wait);
        assert_eq!(pick_arrival(&[], "mine", true), Pick::Nothing);
    }

    #[test]
    fn a_clean_fast_path_scores_above_four() {
        let q = quality(&arrival("a"), Some(1_100)).unwrap();
        assert_eq!(q.loss, 0.0);
        assert!(q.mos >= 4.3, "{q:?}");
    }

    #[test]
    fn loss_and_silence_score_low() {
        let mut lossy = arrival("a");
        lossy.lost = Some(50);
        let q = quality(&lossy, Some(1_100)).unwrap();
        assert_eq!(q.loss, 0.1);
        assert!(q.mos < 3.6, "{q:?}");
        let mut silent = arrival("b");
        silent.expected = Some(0);
        silent.received = Some(0);
        let q = quality(&silent, None).unwrap();
        assert!(q.loss == 1.0 && q.mos < 1.5, "{q:?}");
        let mut unreported = arrival("c");
        unreported.reported_at = None;
        assert_eq!(quality(&unreported, None), None);
    }

    #[test]
    fn clocks_far_apart_do_not_count_as_delay() {
        let near = quality(&arrival("a"), Some(1_100)).unwrap();
        let skewed = quality(&arrival("a"), Some(-100_000)).unwrap();
        assert_eq!(near.mos, skewed.mos);
        let slow = quality(&arrival("a"), Some(1_105 - 600)).unwrap();
        assert!(slow.mos < near.mos, "{slow:?} vs {near:?}");
    }
}
