//! RTP packetisation of one outgoing G.711 stream (RFC 3550 header via rtp-rs).
//!
//! Sequence numbers and timestamps come from the packet index on the ideal 20 ms clock,
//! never from the wall clock, so a late send does not bend the media timeline.

use rtp_rs::{RtpPacketBuilder, Seq};

use super::FRAME_SAMPLES;

/// RTP header (no CSRC, no extension) plus one 20 ms G.711 payload.
pub const PACKET_LEN: usize = 12 + FRAME_SAMPLES;

/// Header state of one outgoing stream: 12 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpStreamHeader {
    /// Synchronisation source of the stream.
    pub ssrc: u32,
    /// Sequence number of packet 0.
    pub initial_seq: u16,
    /// Timestamp of packet 0.
    pub initial_timestamp: u32,
    /// Payload type of every packet.
    pub payload_type: u8,
}

impl RtpStreamHeader {
    /// Random SSRC, initial sequence number and timestamp, as RFC 3550 §5.1 asks (makes
    /// known-plaintext attacks on SRTP harder and streams from restarts distinguishable).
    pub fn random(payload_type: u8) -> RtpStreamHeader {
        RtpStreamHeader {
            ssrc: rand::random(),
            initial_seq: rand::random(),
            initial_timestamp: rand::random(),
            payload_type,
        }
    }

    /// Sequence number of packet `index`.
    pub fn seq(&self, index: u64) -> u16 {
        // Truncation is the RFC 3550 wrap-around.
        self.initial_seq.wrapping_add(index as u16)
    }

    /// Timestamp of packet `index`: +160 per packet.
    pub fn timestamp(&self, index: u64) -> u32 {
        let step = (index as u32).wrapping_mul(FRAME_SAMPLES as u32);
        self.initial_timestamp.wrapping_add(step)
    }

    /// Writes packet `index` into `buf` and returns its length.
    pub fn write(
        &self,
        index: u64,
        marker: bool,
        payload: &[u8; FRAME_SAMPLES],
        buf: &mut [u8; PACKET_LEN],
    ) -> usize {
        let builder = RtpPacketBuilder::new()
            .payload_type(self.payload_type & 0x7f)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq(index)))
            .timestamp(self.timestamp(index))
            .marked(marker)
            .payload(payload);
        // The buffer is exactly header + payload and nothing optional is set, so the
        // checked build cannot fail; fall back to 0 (nothing sent) rather than panic.
        builder.build_into(buf).unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use rtp_rs::RtpReader;

    #[test]
    fn writes_a_readable_packet_with_ideal_clock() {
        let h = RtpStreamHeader {
            ssrc: 0xdead_beef,
            initial_seq: 65535,
            initial_timestamp: u32::MAX - 100,
            payload_type: 8,
        };
        let payload = [0xd5; FRAME_SAMPLES];
        let mut buf = [0; PACKET_LEN];
        let n = h.write(1, true, &payload, &mut buf);
        assert_eq!(n, PACKET_LEN);
        let r = RtpReader::new(&buf[..n]).unwrap();
        assert_eq!(r.ssrc(), 0xdead_beef);
        assert_eq!(u16::from(r.sequence_number()), 0);
        assert_eq!(r.timestamp(), 59);
        assert_eq!(r.payload_type(), 8);
        assert!(r.mark());
        assert_eq!(r.payload(), &payload[..]);
    }
}
