//! Received RTP, kept by timestamp so that loss and reordering put each payload where
//! it belongs in time, then decoded to 8 kHz PCM. A lost packet is a gap at the right
//! time, never a shift of what follows; it is concealed the way a phone would play it:
//! the frame before it once more, fading out over the 20 ms, then silence for any
//! further frame of the gap (no click, no invented speech).

use std::collections::BTreeMap;

use rtp_rs::RtpReader;

use crate::media::{g711, G711};

/// Ten minutes of audio: the most a capture assembles, whatever timestamps claim.
const MAX_SAMPLES: i64 = 8000 * 600;

/// The RTP of one call.
#[derive(Debug)]
pub struct RtpCapture {
    codec: G711,
    payload_type: u8,
    /// SSRC and timestamp of the first audio packet: the reference for placement.
    reference: Option<(u32, u32)>,
    /// Offset from the reference timestamp (signed, wrap-aware) -> payload.
    payloads: BTreeMap<i64, Vec<u8>>,
    /// Every packet that parsed as RTP, any payload type.
    pub packets: u64,
}

impl RtpCapture {
    /// An empty capture of the negotiated codec/payload type.
    pub fn new(codec: G711, payload_type: u8) -> RtpCapture {
        RtpCapture {
            codec,
            payload_type,
            reference: None,
            payloads: BTreeMap::new(),
            packets: 0,
        }
    }

    /// Takes one datagram; anything that is not RTP of our payload type and first
    /// SSRC is counted (if RTP) and otherwise ignored.
    pub fn push(&mut self, datagram: &[u8]) {
        let Ok(rtp) = RtpReader::new(datagram) else {
            return;
        };
        self.packets += 1;
        if rtp.payload_type() != self.payload_type {
            return; // telephone-event, comfort noise, ...
        }
        let (ssrc, ts0) = *self.reference.get_or_insert((rtp.ssrc(), rtp.timestamp()));
        if rtp.ssrc() != ssrc {
            return;
        }
        // Wrapping difference read as signed: packets from before the first one that
        // arrived (reordering) land at a negative offset.
        let offset = i64::from(rtp.timestamp().wrapping_sub(ts0) as i32);
        if offset.abs() < MAX_SAMPLES {
            self.payloads.insert(offset, rtp.payload().to_vec());
        }
    }

    /// The audio: payloads at their timestamp positions, gaps concealed ([`conceal`]).
    pub fn into_pcm(self) -> Vec<i16> {
        let Some(first) = self.payloads.keys().next().copied() else {
            return Vec::new();
        };
        let mut pcm: Vec<i16> = Vec::new();
        // End of the audio placed so far and the frame that ended there.
        let mut last: Option<(usize, usize)> = None;
        for (offset, payload) in &self.payloads {
            let Ok(pos) = usize::try_from(offset - first) else {
                continue;
            };
            let end = pos + payload.len();
            if end as i64 > MAX_SAMPLES {
                break;
            }
            if pcm.len() < end {
                pcm.resize(end, 0);
            }
            if let Some((prev_start, prev_end)) = last.filter(|&(_, e)| e < pos) {
                conceal(&mut pcm, prev_start..prev_end, pos);
            }
            g711::decode_into(self.codec, payload, &mut pcm[pos..end]);
            last = Some((pos, end));
        }
        pcm
    }
}

/// Fills the gap from the end of `prev` (a frame already in `pcm`) up to `gap_end`:
/// `prev` once more, fading linearly to nothing, then silence (already zero).
pub fn conceal(pcm: &mut [i16], prev: std::ops::Range<usize>, gap_end: usize) {
    let len = prev.len().min(gap_end.saturating_sub(prev.end));
    for i in 0..len {
        let fade = (len - i) as f32 / (len + 1) as f32;
        pcm[prev.end + i] = (f32::from(pcm[prev.start + i]) * fade) as i16;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::media::rtp::{RtpStreamHeader, PACKET_LEN};

    #[test]
    fn reorders_and_fills_gaps() {
        let h = RtpStreamHeader {
            ssrc: 5,
            initial_seq: 1,
            initial_timestamp: u32::MAX - 200, // wraps during the stream
            payload_type: 0,
        };
        let frames: Vec<[u8; 160]> = (0..4u8)
            .map(|i| [g711::encode_sample(G711::Ulaw, 1000 * i16::from(i + 1)); 160])
            .collect();
        let mut cap = RtpCapture::new(G711::Ulaw, 0);
        let mut buf = [0; PACKET_LEN];
        for i in [1usize, 0, 3] {
            // packet 2 lost, 0 after 1
            let n = h.write(i as u64, false, &frames[i], &mut buf);
            cap.push(&buf[..n]);
        }
        cap.push(b"not rtp");
        assert_eq!(cap.packets, 3);
        let pcm = cap.into_pcm();
        assert_eq!(pcm.len(), 640);
        assert!((pcm[0] - 1000).abs() < 64);
        assert!((pcm[160] - 2000).abs() < 64);
        // The lost packet 2 is frame 1 again, fading: louder at its start than its end.
        assert!(pcm[320] > 1900 && pcm[320] <= pcm[160], "{}", pcm[320]);
        assert!(pcm[479] > 0 && pcm[479] < 50, "{}", pcm[479]);
        assert!((pcm[480] - 4000).abs() < 128);
    }

    /// Frame i carries the constant 100 (i + 1); a fixed drop pattern (frames 2, 5, 6
    /// and 7 lost) leaves every received frame at its own time, and each gap starts
    /// with the frame before it fading out, silence after.
    #[test]
    fn lost_packets_are_gaps_at_their_time_concealed() {
        let h = RtpStreamHeader {
            ssrc: 9,
            initial_seq: 100,
            initial_timestamp: 8000,
            payload_type: 8,
        };
        let lost = [2u64, 5, 6, 7];
        let mut cap = RtpCapture::new(G711::Alaw, 8);
        let mut buf = [0; PACKET_LEN];
        for i in (0..10u64).filter(|i| !lost.contains(i)) {
            let frame = [g711::encode_sample(G711::Alaw, 100 * (i as i16 + 1)); 160];
            let n = h.write(i, false, &frame, &mut buf);
            cap.push(&buf[..n]);
        }
        let pcm = cap.into_pcm();
        assert_eq!(pcm.len(), 1600, "ten frames of time");
        let level = |i: usize| f32::from(pcm[i * 160 + 80]);
        for i in (0..10).filter(|i| !lost.contains(&(*i as u64))) {
            let want = 100.0 * (i as f32 + 1.0);
            assert!(
                (level(i) - want).abs() < want * 0.07,
                "frame {i}: {}",
                level(i)
            );
        }
        // Frame 2 conceals frame 1 (200), frame 5 frame 4 (500): halfway, half level.
        assert!((level(2) - 100.0).abs() < 15.0, "{}", level(2));
        assert!((level(5) - 250.0).abs() < 25.0, "{}", level(5));
        assert!(pcm[320] > pcm[479] && pcm[800] > pcm[959]);
        assert!(
            pcm[960..1280].iter().all(|&s| s == 0),
            "frames 6, 7: silence"
        );
    }
}
