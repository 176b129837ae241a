//! What the gateway measured of the far end's RTP during one call attempt (RFC 3550
//! receive statistics), as the attempt records and the API shows it.

/// The far end's media as one attempt received it. Recorded whenever media was
/// received, however the call ended (our BYE, theirs, a cancel).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RtpReceived {
    /// RTP packets received (under SRTP, only those that authenticated).
    pub packets: u64,
    /// Packets lost on the way: expected from the sequence numbers minus received.
    pub lost: u64,
    /// Interarrival jitter at the end of the call, in microseconds.
    pub jitter_us: u64,
    /// `PCMU` or `PCMA`: the law of the far end's last audio packet; `None` when no
    /// audio came or its payload type is not G.711.
    pub codec: Option<String>,
    /// Packets dropped for failing SRTP authentication or the replay check.
    pub srtp_rejected: u64,
}

impl RtpReceived {
    /// Lost / expected (received + lost), 0–1; 0 when nothing was expected.
    pub fn loss(&self) -> f64 {
        let expected = self.packets + self.lost;
        if expected == 0 {
            0.0
        } else {
            self.lost as f64 / expected as f64
        }
    }

    /// The jitter in milliseconds, to the microsecond.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_us as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_lost_over_expected() {
        let r = RtpReceived {
            packets: 85,
            lost: 15,
            jitter_us: 2500,
            ..RtpReceived::default()
        };
        assert!((r.loss() - 0.15).abs() < 1e-12);
        assert!((r.jitter_ms() - 2.5).abs() < 1e-12);
        assert_eq!(RtpReceived::default().loss(), 0.0);
    }
}
