//! The ITU-T G.107 E-model (06/2015): a transmission rating R from delay, packet loss and
//! codec, and its mapping to an estimated MOS (G.107 Annex B). Pure arithmetic, no I/O.
//!
//! Everything the canary cannot measure keeps the standard's default value (G.107
//! Table 3: SLR 8 dB, RLR 2 dB, STMR 15 dB, LSTR 18 dB, Ds = Dr = 3, TELR 65 dB,
//! WEPL 110 dB, qdu 1, Nc −70 dBm0p, Nfor −64 dBmp, Ps = Pr = 35 dB(A), A = 0). With
//! those and no delay or loss the rating is the standard's R = 93.2 (MOS 4.41). A
//! digital path has no separate echo path, so the mean one-way delay T and the absolute
//! delay Ta are both the mouth-to-ear delay and the round trip Tr is twice it.

/// A codec's equipment impairment Ie and packet-loss robustness Bpl (ITU-T G.113
/// Appendix I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    pub ie: f64,
    pub bpl: f64,
}

impl CodecImpairment {
    /// G.711 (either law) with packet-loss concealment (G.711 Appendix I), as telephones
    /// play it: Ie = 0, Bpl = 25.1.
    pub const G711_PLC: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// G.711 without concealment (a lost packet is silence): Ie = 0, Bpl = 4.3.
    pub const G711_NO_PLC: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 4.3 };
}

/// What the E-model is given for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Mouth-to-ear delay, ms (see [`mouth_to_ear_ms`]).
    pub delay_ms: f64,
    /// Packets lost, percent (0..=100).
    pub loss_percent: f64,
    /// Burst ratio: 1 for random loss, above 1 for bursty loss.
    pub burst_ratio: f64,
    pub codec: CodecImpairment,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            delay_ms: 0.0,
            loss_percent: 0.0,
            burst_ratio: 1.0,
            codec: CodecImpairment::G711_PLC,
        }
    }
}

/// The rating and its parts (G.107 §7: R = Ro − Is − Id − Ie,eff + A).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rating {
    pub ro: f64,
    pub is: f64,
    pub id: f64,
    pub ie_eff: f64,
    pub r: f64,
}

impl Rating {
    /// The estimated mean opinion score of this rating.
    pub fn mos(&self) -> f64 {
        mos_from_r(self.r)
    }
}

// G.107 Table 3 defaults.
const SLR: f64 = 8.0;
const RLR: f64 = 2.0;
const STMR: f64 = 15.0;
const LSTR: f64 = 18.0;
const DS: f64 = 3.0;
const TELR: f64 = 65.0;
const WEPL: f64 = 110.0;
const QDU: f64 = 1.0;
const NC: f64 = -70.0;
const NFOR: f64 = -64.0;
const PS: f64 = 35.0;
const PR: f64 = 35.0;
const A: f64 = 0.0;

fn db_sum(levels: &[f64]) -> f64 {
    10.0 * levels
        .iter()
        .map(|l| 10f64.powf(l / 10.0))
        .sum::<f64>()
        .log10()
}

/// Total noise No (G.107 §7.2, eq. 7-3 to 7-7).
fn noise() -> f64 {
    let olr = SLR + RLR;
    let nos = PS - SLR - DS - 100.0 + 0.004 * (PS - olr - DS - 14.0).powi(2);
    let pre = PR + 10.0 * (1.0 + 10f64.powf((10.0 - LSTR) / 10.0)).log10();
    let nor = RLR - 121.0 + pre + 0.008 * (pre - 35.0).powi(2);
    let nfo = NFOR + RLR;
    db_sum(&[NC, nos, nor, nfo])
}

/// Simultaneous impairment Is = Iolr + Ist + Iq (G.107 §7.3); `t` is the one-way delay.
fn simultaneous(ro: f64, no: f64, t: f64) -> f64 {
    let olr = SLR + RLR;
    let xolr = olr + 0.2 * (64.0 + no - RLR);
    let iolr = 20.0 * ((1.0 + (xolr / 8.0).powi(8)).powf(1.0 / 8.0) - xolr / 8.0);
    let stmro =
        -10.0 * (10f64.powf(-STMR / 10.0) + (-t / 4.0).exp() * 10f64.powf(-TELR / 10.0)).log10();
    let ist = 12.0 * (1.0 + ((stmro - 13.0) / 6.0).powi(8)).powf(1.0 / 8.0)
        - 28.0 * (1.0 + ((stmro + 1.0) / 19.4).powi(35)).powf(1.0 / 35.0)
        - 13.0 * (1.0 + ((stmro - 3.0) / 33.0).powi(13)).powf(1.0 / 13.0)
        + 29.0;
    let q = 37.0 - 15.0 * QDU.log10();
    let g = 1.07 + 0.258 * q + 0.0602 * q * q;
    let y = (ro - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0;
    let z = 46.0 / 30.0 - g / 40.0;
    let iq = 15.0 * (1.0 + 10f64.powf(y) + 10f64.powf(z)).log10();
    iolr + ist + iq
}

/// Delay impairment Id = Idte + Idle + Idd (G.107 §7.4) for a mouth-to-ear delay `ta`
/// (T = Ta, Tr = 2 Ta).
fn delay_impairment(ro: f64, no: f64, ta: f64) -> f64 {
    let (t, tr) = (ta, 2.0 * ta);
    let roe = -1.5 * (no - RLR);
    let terv =
        TELR - 40.0 * ((1.0 + t / 10.0) / (1.0 + t / 150.0)).log10() + 6.0 * (-0.3 * t * t).exp();
    let re = 80.0 + 2.5 * (terv - 14.0);
    let idte =
        ((roe - re) / 2.0 + ((roe - re).powi(2) / 4.0 + 100.0).sqrt() - 1.0) * (1.0 - (-t).exp());
    let rle = 10.5 * (WEPL + 7.0) * (tr + 1.0).powf(-0.25);
    let idle = (ro - rle) / 2.0 + ((ro - rle).powi(2) / 4.0 + 169.0).sqrt();
    idte + idle + absolute_delay_impairment(ta)
}

/// Idd, the impairment of absolute delay alone: 0 up to 100 ms (G.107 eq. 7-28).
pub fn absolute_delay_impairment(ta: f64) -> f64 {
    if ta <= 100.0 {
        return 0.0;
    }
    let x = (ta / 100.0).log10() / 2f64.log10();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
        + 2.0)
}

/// Effective equipment impairment under packet loss (G.107 eq. 7-29).
pub fn effective_equipment_impairment(
    codec: CodecImpairment,
    loss_percent: f64,
    burst_ratio: f64,
) -> f64 {
    let ppl = loss_percent.clamp(0.0, 100.0);
    let burst = if burst_ratio.is_finite() && burst_ratio > 0.0 {
        burst_ratio
    } else {
        1.0
    };
    if ppl == 0.0 {
        return codec.ie;
    }
    codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst + codec.bpl)
}

/// The transmission rating for `c`.
pub fn rate(c: Conditions) -> Rating {
    let ta = if c.delay_ms.is_finite() {
        c.delay_ms.max(0.0)
    } else {
        0.0
    };
    let no = noise();
    let ro = 15.0 - 1.5 * (SLR + no);
    let is = simultaneous(ro, no, ta);
    let id = delay_impairment(ro, no, ta);
    let ie_eff = effective_equipment_impairment(c.codec, c.loss_percent, c.burst_ratio);
    Rating {
        ro,
        is,
        id,
        ie_eff,
        r: ro - is - id - ie_eff + A,
    }
}

/// MOS (conversational quality, estimated) from R (G.107 eq. B-4).
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// Mouth-to-ear delay of a VoIP path from what a receiver measures: the network's
/// one-way delay, one 20 ms frame of packetisation, and a jitter buffer of twice the
/// interarrival jitter (at least one frame).
pub fn mouth_to_ear_ms(network_one_way_ms: f64, jitter_ms: f64) -> f64 {
    let network = if network_one_way_ms.is_finite() {
        network_one_way_ms.max(0.0)
    } else {
        0.0
    };
    let jitter = if jitter_ms.is_finite() {
        jitter_ms.max(0.0)
    } else {
        0.0
    };
    network + 20.0 + (2.0 * jitter).max(20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn default_values_give_the_standards_rating() {
        // G.107 §7.7: "the default values ... result in a very high quality with a
        // rating factor of R = 93.2"; Ro = 94.77 and Is = 1.41 with them.
        let r = rate(Conditions::default());
        assert!(close(r.ro, 94.77, 0.01), "Ro {}", r.ro);
        assert!(close(r.is, 1.41, 0.01), "Is {}", r.is);
        assert!(close(r.r, 93.2, 0.05), "R {}", r.r);
        assert!(close(r.mos(), 4.41, 0.005), "MOS {}", r.mos());
    }

    #[test]
    fn r_to_mos_follows_annex_b() {
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(100.0), 4.5);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        // 1 + 0.035 R + R (R − 60)(100 − R) 7e-6
        assert!(close(mos_from_r(50.0), 2.575, 1e-9));
        assert!(close(mos_from_r(80.0), 4.024, 1e-9));
        assert!(close(mos_from_r(70.0), 3.597, 1e-9));
    }

    #[test]
    fn absolute_delay_impairment_matches_the_formula_points() {
        assert_eq!(absolute_delay_impairment(50.0), 0.0);
        assert_eq!(absolute_delay_impairment(100.0), 0.0);
        // X = 1 at 200 ms and X = 2 at 400 ms (eq. 7-28 evaluated by hand).
        assert!(close(absolute_delay_impairment(200.0), 3.044, 0.001));
        assert!(close(absolute_delay_impairment(400.0), 24.07, 0.01));
    }

    #[test]
    fn loss_impairs_by_g113_robustness() {
        // G.711 without PLC (Bpl 4.3), 2 % random loss: 95 · 2 / (2 + 4.3).
        let ie = effective_equipment_impairment(CodecImpairment::G711_NO_PLC, 2.0, 1.0);
        assert!(close(ie, 30.159, 0.001), "{ie}");
        // Concealment makes the same loss cost far less.
        let plc = effective_equipment_impairment(CodecImpairment::G711_PLC, 2.0, 1.0);
        assert!(close(plc, 7.011, 0.001), "{plc}");
        // Bursty loss hurts more than random loss of the same rate.
        let bursty = effective_equipment_impairment(CodecImpairment::G711_PLC, 2.0, 2.0);
        assert!(bursty > plc);
        assert_eq!(
            effective_equipment_impairment(CodecImpairment::G711_PLC, 0.0, 1.0),
            0.0
        );
    }

    #[test]
    fn rating_falls_with_delay_and_loss() {
        let base = rate(Conditions::default()).r;
        let slow = rate(Conditions {
            delay_ms: 400.0,
            ..Conditions::default()
        });
        assert!(slow.r < base - 25.0, "{}", slow.r);
        let lossy = rate(Conditions {
            loss_percent: 5.0,
            codec: CodecImpairment::G711_NO_PLC,
            ..Conditions::default()
        });
        assert!(lossy.mos() < 3.0, "{}", lossy.mos());
        // A clean loopback path (a few ms, no loss) is still "toll quality" or better.
        let lan = rate(Conditions {
            delay_ms: mouth_to_ear_ms(1.0, 0.5),
            ..Conditions::default()
        });
        assert!(lan.mos() > 4.3, "{}", lan.mos());
    }

    #[test]
    fn nonsense_inputs_stay_in_range() {
        for c in [
            Conditions {
                delay_ms: f64::NAN,
                ..Conditions::default()
            },
            Conditions {
                delay_ms: -10.0,
                loss_percent: 250.0,
                burst_ratio: 0.0,
                ..Conditions::default()
            },
            Conditions {
                delay_ms: 1e9,
                ..Conditions::default()
            },
        ] {
            let m = rate(c).mos();
            assert!((1.0..=4.5).contains(&m), "{c:?}: {m}");
        }
    }

    #[test]
    fn mouth_to_ear_adds_packetisation_and_buffer() {
        assert_eq!(mouth_to_ear_ms(0.0, 0.0), 40.0);
        assert_eq!(mouth_to_ear_ms(30.0, 25.0), 100.0);
        assert_eq!(mouth_to_ear_ms(f64::NAN, -1.0), 40.0);
    }
}
