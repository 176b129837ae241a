//! Received RTP, kept by timestamp so that loss and reordering put each payload where
//! it belongs in time (gaps become silence), then decoded to 8 kHz PCM.

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

    /// The audio: payloads at their timestamp positions, silence in the gaps.
    pub fn into_pcm(self) -> Vec<i16> {
        let Some(first) = self.payloads.keys().next().copied() else {
            return Vec::new();
        };
        let mut pcm: Vec<i16> = Vec::new();
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
            g711::decode_into(self.codec, payload, &mut pcm[pos..end]);
        }
        pcm
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
        assert_eq!(pcm[320], 0);
        assert!((pcm[480] - 4000).abs() < 128);
    }
}
