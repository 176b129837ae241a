//! What a received RTP stream says about the path it came over: packets lost (RFC 3550
//! A.3, from sequence numbers), interarrival jitter (RFC 3550 A.8), gaps in arrival, and
//! how bursty the loss was (the E-model's BurstR). Pure code: arrival times are passed
//! in as microseconds since any fixed point.

use rtp_rs::RtpReader;

/// A silence longer than this between two arrivals is a gap (five 20 ms frames).
pub const GAP_US: u64 = 100_000;
/// At most this many sequence numbers are tracked (10 minutes of 20 ms packets).
const MAX_SPAN: usize = 30_000;
/// RTP clock of G.711.
const CLOCK_HZ: f64 = 8000.0;

/// The measurements of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamQuality {
    /// Audio packets received (duplicates once).
    pub received: u64,
    /// Packets the sequence numbers say were sent, first to last received.
    pub expected: u64,
    /// `expected - received` (never negative).
    pub lost: u64,
    /// Interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Silences between arrivals longer than [`GAP_US`].
    pub gaps: u32,
    /// The longest silence between two arrivals, ms.
    pub max_gap_ms: f64,
    /// 1 for random loss, above 1 when losses come in runs (G.107 BurstR from a
    /// two-state Markov model: 1 / (p + q)).
    pub burst_ratio: f64,
    /// Arrival of the first audio packet (µs, on the caller's clock).
    pub first_arrival_us: Option<u64>,
}

impl StreamQuality {
    /// Lost packets as a fraction of those expected (0 when none was expected).
    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// Measures one RTP stream of one payload type and SSRC (the first seen).
#[derive(Debug)]
pub struct RtpMeter {
    payload_type: u8,
    ssrc: Option<u32>,
    /// Extended sequence number of the first packet.
    base: u64,
    /// Highest extended sequence number seen.
    highest: u64,
    /// Received, by extended sequence number minus `base`.
    seen: Vec<bool>,
    received: u64,
    /// RFC 3550 A.8 state, in timestamp units.
    jitter: f64,
    last_transit: Option<f64>,
    last_arrival_us: Option<u64>,
    first_arrival_us: Option<u64>,
    gaps: u32,
    max_gap_us: u64,
}

impl RtpMeter {
    pub fn new(payload_type: u8) -> RtpMeter {
        RtpMeter {
            payload_type,
            ssrc: None,
            base: 0,
            highest: 0,
            seen: Vec::new(),
            received: 0,
            jitter: 0.0,
            last_transit: None,
            last_arrival_us: None,
            first_arrival_us: None,
            gaps: 0,
            max_gap_us: 0,
        }
    }

    /// Takes one datagram that arrived at `arrival_us`. Anything that is not RTP of
    /// the audio payload type and the first SSRC is ignored.
    pub fn push(&mut self, arrival_us: u64, datagram: &[u8]) {
        let Ok(rtp) = RtpReader::new(datagram) else {
            return;
        };
        if rtp.payload_type() != self.payload_type {
            return;
        }
        let ssrc = *self.ssrc.get_or_insert(rtp.ssrc());
        if rtp.ssrc() != ssrc {
            return;
        }
        let seq = u16::from(rtp.sequence_number());
        let Some(ext) = self.extend(seq) else {
            return;
        };
        let Some(index) = ext.checked_sub(self.base).map(|i| i as usize) else {
            return; // before the first packet: too late to place
        };
        if index >= MAX_SPAN {
            return;
        }
        if self.seen.len() <= index {
            self.seen.resize(index + 1, false);
        }
        if self.seen[index] {
            return; // duplicate
        }
        self.seen[index] = true;
        self.received += 1;
        self.highest = self.highest.max(ext);
        self.arrival(arrival_us, rtp.timestamp());
    }

    /// The extended sequence number of `seq` (wrap-aware around the highest seen).
    fn extend(&mut self, seq: u16) -> Option<u64> {
        if self.received == 0 {
            // Start one cycle up so that a packet from just before the first one
            // (reordering) still has an extended number.
            self.base = (1 << 16) + u64::from(seq);
            self.highest = self.base;
            return Some(self.base);
        }
        let cycle = self.highest & !0xffff;
        let candidates = [
            cycle.checked_sub(1 << 16).map(|c| c | u64::from(seq)),
            Some(cycle | u64::from(seq)),
            Some((cycle + (1 << 16)) | u64::from(seq)),
        ];
        candidates
            .into_iter()
            .flatten()
            .min_by_key(|c| c.abs_diff(self.highest))
    }

    fn arrival(&mut self, arrival_us: u64, timestamp: u32) {
        self.first_arrival_us.get_or_insert(arrival_us);
        // Transit time in RTP units; only differences matter, so wrapping the
        // timestamp into f64 via i64 arithmetic is fine for a call's length.
        let arrival_units = arrival_us as f64 * CLOCK_HZ / 1e6;
        let transit = arrival_units - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A timestamp wrap between two packets shows up as a 2^32 jump.
            if d > f64::from(u32::MAX) / 2.0 {
                d = (d - f64::from(u32::MAX) - 1.0).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        if let Some(prev) = self.last_arrival_us {
            let gap = arrival_us.saturating_sub(prev);
            self.max_gap_us = self.max_gap_us.max(gap);
            if gap > GAP_US {
                self.gaps += 1;
            }
        }
        self.last_arrival_us = Some(arrival_us);
    }

    /// The measurements so far.
    pub fn quality(&self) -> StreamQuality {
        let expected = if self.received == 0 {
            0
        } else {
            self.highest - self.base + 1
        };
        StreamQuality {
            received: self.received,
            expected,
            lost: expected.saturating_sub(self.received),
            jitter_ms: self.jitter / CLOCK_HZ * 1000.0,
            gaps: self.gaps,
            max_gap_ms: self.max_gap_us as f64 / 1000.0,
            burst_ratio: self.burst_ratio(),
            first_arrival_us: self.first_arrival_us,
        }
    }

    /// BurstR = 1 / (p + q), p = P(loss | previous received), q = P(received | previous
    /// lost), over the packets between the first and the highest received.
    fn burst_ratio(&self) -> f64 {
        let (mut to_loss, mut from_received, mut to_received, mut from_lost) = (0u64, 0, 0, 0);
        for pair in self.seen.windows(2) {
            match (pair[0], pair[1]) {
                (true, next) => {
                    from_received += 1;
                    to_loss += u64::from(!next);
                }
                (false, next) => {
                    from_lost += 1;
                    to_received += u64::from(next);
                }
            }
        }
        if from_lost == 0 || from_received == 0 {
            return 1.0;
        }
        let p = to_loss as f64 / from_received as f64;
        let q = to_received as f64 / from_lost as f64;
        if p + q <= 0.0 {
            1.0
        } else {
            1.0 / (p + q)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::media::rtp::{RtpStreamHeader, PACKET_LEN};

    fn packet(h: &RtpStreamHeader, n: u64) -> Vec<u8> {
        let mut buf = [0u8; PACKET_LEN];
        let len = h.write(n, false, &[0xff; 160], &mut buf);
        buf[..len].to_vec()
    }

    fn header(initial_seq: u16) -> RtpStreamHeader {
        RtpStreamHeader {
            ssrc: 7,
            initial_seq,
            initial_timestamp: 1000,
            payload_type: 0,
        }
    }

    #[test]
    fn a_clean_stream_has_no_loss_jitter_or_gap() {
        let h = header(65_500); // wraps at 65536
        let mut m = RtpMeter::new(0);
        for n in 0..100 {
            m.push(n * 20_000, &packet(&h, n));
        }
        let q = m.quality();
        assert_eq!((q.received, q.expected, q.lost), (100, 100, 0));
        assert!(q.jitter_ms.abs() < 1e-9, "{}", q.jitter_ms);
        assert_eq!(q.gaps, 0);
        assert_eq!(q.max_gap_ms, 20.0);
        assert_eq!(q.burst_ratio, 1.0);
        assert_eq!(q.first_arrival_us, Some(0));
        assert_eq!(q.loss_ratio(), 0.0);
    }

    #[test]
    fn losses_bursts_reordering_and_duplicates() {
        let h = header(10);
        let mut m = RtpMeter::new(0);
        // 0..50 with 20..30 lost in one run; 41 arrives before 40; 5 twice.
        let mut order: Vec<u64> = (0..50).filter(|n| !(20..30).contains(n)).collect();
        let i40 = order.iter().position(|&n| n == 40).unwrap();
        order.swap(i40, i40 + 1);
        order.insert(6, 5);
        for (i, n) in order.iter().enumerate() {
            m.push(i as u64 * 20_000, &packet(&h, *n));
        }
        let q = m.quality();
        assert_eq!((q.received, q.expected, q.lost), (40, 50, 10));
        assert!((q.loss_ratio() - 0.2).abs() < 1e-12);
        // One run of ten: p = 1/39, q = 1/10, so BurstR ≈ 7.96 (random loss ≈ 1).
        assert!(q.burst_ratio > 7.0, "{}", q.burst_ratio);
    }

    #[test]
    fn late_packets_make_jitter_and_silences_make_gaps() {
        let h = header(0);
        let mut m = RtpMeter::new(0);
        let mut t = 0;
        for n in 0..50u64 {
            // Every other packet 10 ms late; a 300 ms hole after packet 25.
            t = n * 20_000 + if n % 2 == 1 { 10_000 } else { 0 } + if n > 25 { 300_000 } else { 0 };
            m.push(t, &packet(&h, n));
        }
        let _ = t;
        let q = m.quality();
        assert!(q.jitter_ms > 5.0 && q.jitter_ms < 20.0, "{}", q.jitter_ms);
        assert_eq!(q.gaps, 1);
        assert!(q.max_gap_ms >= 300.0, "{}", q.max_gap_ms);
        assert_eq!(q.lost, 0);
    }

    #[test]
    fn other_payloads_and_sources_are_ignored() {
        let mut m = RtpMeter::new(8);
        m.push(0, &packet(&header(0), 0)); // PCMU, not ours
        m.push(0, b"garbage");
        assert_eq!(
            m.quality(),
            StreamQuality {
                burst_ratio: 1.0,
                ..StreamQuality::default()
            }
        );
        let mut m = RtpMeter::new(0);
        m.push(0, &packet(&header(0), 0));
        let other = RtpStreamHeader {
            ssrc: 99,
            ..header(0)
        };
        m.push(20_000, &packet(&other, 1));
        assert_eq!(m.quality().received, 1);
    }
}
