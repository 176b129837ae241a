//! What the far end sends us, measured per call: packets, loss from sequence numbers
//! (RFC 3550 A.1, A.3), interarrival jitter (A.8) and codec. Pure code: arrival times
//! come in as `now`. The stream feeds it every RTP packet that is this call's
//! (authenticated when the call has SRTP; not RTCP sent to the RTP port).

use std::time::Instant;

use crate::media::{G711, SAMPLE_RATE};

/// The far end's media as one call received it; in [`super::PlayoutEvent::Finished`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReceiveStats {
    /// RTP packets received (audio, telephone-events and comfort noise; under SRTP only
    /// those that authenticated).
    pub packets: u64,
    /// Packets lost on the way: expected from the sequence numbers minus received
    /// (RFC 3550 A.3), summed over the far end's SSRCs; 0 when duplicates outnumber
    /// the losses.
    pub lost: u64,
    /// Interarrival jitter (RFC 3550 A.8) at the end of the call, in milliseconds, on
    /// the 8 kHz media clock. Arrival is when the pacer read the packet, which is
    /// within a wake-up (about 0.2 ms) of when it came.
    pub jitter_ms: f64,
    /// The payload type of the far end's last audio packet (not telephone-event, not
    /// comfort noise); `None` before any.
    pub payload_type: Option<u8>,
    /// The G.711 law of that payload type, when it is one.
    pub codec: Option<G711>,
    /// Packets dropped for failing SRTP/SRTCP authentication or the replay check.
    pub srtp_rejected: u64,
}

/// RFC 3550 A.1: packets in order before a new source is trusted, and the largest
/// jumps treated as in order (forward) or as a late packet (back).
const MIN_SEQUENTIAL: u8 = 2;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// Sequence state of one SSRC (RFC 3550 A.1).
#[derive(Clone, Copy, Debug)]
struct SeqState {
    ssrc: u32,
    max_seq: u16,
    /// Shifted count of sequence number cycles.
    cycles: u32,
    base_seq: u32,
    /// Last 'bad' sequence number + 1.
    bad_seq: u32,
    /// Sequential packets still needed before the source is valid.
    probation: u8,
    received: u64,
}

impl SeqState {
    /// A new source at its first packet: on probation until it sends in order.
    fn new(ssrc: u32, seq: u16) -> SeqState {
        SeqState {
            ssrc,
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base_seq: u32::from(seq),
            bad_seq: RTP_SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
        }
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// RFC 3550 A.1 `update_seq`: false when the packet is not counted (source on
    /// probation out of order, or a jump not yet confirmed).
    fn update(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += RTP_SEQ_MOD;
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: the far end restarted; confirmed by the next packet.
            if u32::from(seq) == self.bad_seq {
                self.init(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        // else: a duplicate or a late packet, counted.
        self.received += 1;
        true
    }

    /// Expected packets (A.3) and received ones.
    fn counts(&self) -> (u64, u64) {
        if self.probation > 0 {
            return (0, 0);
        }
        let extended_max = u64::from(self.cycles) + u64::from(self.max_seq);
        let expected = (extended_max + 1).saturating_sub(u64::from(self.base_seq));
        (expected, self.received)
    }
}

/// Receive-side measurement of one stream.
#[derive(Clone, Debug, Default)]
pub struct ReceiveMeter {
    packets: u64,
    /// Expected and received of the SSRCs before the current one.
    done_expected: u64,
    done_received: u64,
    seq: Option<SeqState>,
    /// Transit time of the previous packet and jitter, in 1/16 timestamp units
    /// (the fixed-point form of A.8).
    last_transit: Option<i64>,
    jitter16: u64,
    /// The instant arrival times are measured from.
    origin: Option<Instant>,
    payload_type: Option<u8>,
    srtp_rejected: u64,
}

impl ReceiveMeter {
    /// One RTP packet of the call, read at `now`. `audio`: it carries audio (not a
    /// telephone-event or comfort noise), whose payload type is then the codec.
    pub fn on_packet(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        pt: u8,
        audio: bool,
    ) {
        self.packets += 1;
        if audio {
            self.payload_type = Some(pt);
        }
        match &mut self.seq {
            Some(s) if s.ssrc == ssrc => {
                s.update(seq);
            }
            other => {
                // A new SSRC (the far end restarted its stream, or re-INVITEd): close
                // the old one's books, start the new one on probation.
                if let Some(old) = other.take() {
                    let (e, r) = old.counts();
                    self.done_expected += e;
                    self.done_received += r;
                }
                self.seq = Some(SeqState::new(ssrc, seq));
                self.last_transit = None;
                if let Some(s) = &mut self.seq {
                    s.update(seq);
                }
            }
        }
        self.jitter(now, timestamp);
    }

    /// RFC 3550 A.8, with arrival on the 8 kHz clock.
    fn jitter(&mut self, now: Instant, timestamp: u32) {
        let origin = *self.origin.get_or_insert(now);
        let arrival = (now.saturating_duration_since(origin).as_micros() * u128::from(SAMPLE_RATE)
            / 1_000_000) as i64;
        // Differences of 32-bit timestamps: wrap-around cancels out in the subtraction.
        let transit = arrival.wrapping_sub(i64::from(timestamp));
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last);
            // Transit differences of one SSRC are on the order of a few thousand
            // samples; mod 2^32 so a timestamp wrap does not show as a huge jump.
            let d = i64::from(d as i32).unsigned_abs();
            // J += (|D| - J) / 16, kept times 16: J16 += |D| - J16 / 16.
            self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// A packet dropped for failing SRTP checks.
    pub fn on_rejected(&mut self) {
        self.srtp_rejected += 1;
    }

    /// The figures so far.
    pub fn stats(&self) -> ReceiveStats {
        let (e, r) = self.seq.map_or((0, 0), |s| s.counts());
        let expected = self.done_expected + e;
        let received = self.done_received + r;
        ReceiveStats {
            packets: self.packets,
            lost: expected.saturating_sub(received),
            jitter_ms: (self.jitter16 as f64 / 16.0) * 1000.0 / f64::from(SAMPLE_RATE),
            payload_type: self.payload_type,
            codec: self.payload_type.and_then(G711::from_payload_type),
            srtp_rejected: self.srtp_rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed(m: &mut ReceiveMeter, t0: Instant, seqs: impl IntoIterator<Item = (u16, u64)>) {
        // (seq, arrival ms); timestamps on the ideal 20 ms grid of the sequence number.
        for (seq, ms) in seqs {
            m.on_packet(
                t0 + Duration::from_millis(ms),
                7,
                seq,
                u32::from(seq).wrapping_mul(160).wrapping_add(1000),
                8,
                true,
            );
        }
    }

    #[test]
    fn a_clean_stream_has_no_loss_and_no_jitter() {
        let t0 = Instant::now();
        let mut m = ReceiveMeter::default();
        feed(&mut m, t0, (0..500u16).map(|i| (i, u64::from(i) * 20)));
        let s = m.stats();
        assert_eq!((s.packets, s.lost), (500, 0));
        assert!(s.jitter_ms < 0.01, "{}", s.jitter_ms);
        assert_eq!((s.payload_type, s.codec), (Some(8), Some(G711::Alaw)));
    }

    #[test]
    fn gaps_in_sequence_numbers_count_as_lost_across_the_wrap() {
        let t0 = Instant::now();
        let mut m = ReceiveMeter::default();
        // 65530 .. 65535, 0 .. 99 with 5 and 6 missing, and 40 missing: 3 lost.
        let seqs = (65530u16..=65535)
            .chain(0..100)
            .filter(|s| ![5, 6, 40].contains(s));
        feed(
            &mut m,
            t0,
            seqs.enumerate().map(|(i, s)| (s, i as u64 * 20)),
        );
        let s = m.stats();
        assert_eq!(s.lost, 3);
        assert_eq!(s.packets, 103);
    }

    #[test]
    fn jitter_follows_rfc_3550_a8() {
        let t0 = Instant::now();
        let mut m = ReceiveMeter::default();
        // Every other packet 4 ms late: |D| = 32 samples each time, so J tends to 32
        // samples = 4 ms.
        feed(
            &mut m,
            t0,
            (0..2000u16).map(|i| (i, u64::from(i) * 20 + if i % 2 == 1 { 4 } else { 0 })),
        );
        let j = m.stats().jitter_ms;
        assert!((3.9..=4.0).contains(&j), "{j}");
        // One packet's transit differing by D from the last moves J by (|D| - J) / 16.
        let mut m = ReceiveMeter::default();
        feed(&mut m, t0, [(0, 0), (1, 36)]);
        assert!(
            (m.stats().jitter_ms - 1.0).abs() < 0.01,
            "{}",
            m.stats().jitter_ms
        );
    }

    #[test]
    fn a_new_ssrc_keeps_the_old_ones_books() {
        let t0 = Instant::now();
        let mut m = ReceiveMeter::default();
        feed(&mut m, t0, [(10, 0), (11, 20), (13, 40)]); // 12 lost
        for (i, seq) in [500u16, 501, 502].into_iter().enumerate() {
            m.on_packet(
                t0 + Duration::from_millis(60 + 20 * i as u64),
                9,
                seq,
                0,
                0,
                true,
            );
        }
        let s = m.stats();
        assert_eq!((s.packets, s.lost), (6, 1));
        assert_eq!(s.codec, Some(G711::Ulaw));
    }
}
