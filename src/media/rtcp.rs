//! RTCP sender reports and BYE for one outgoing stream (RFC 3550 §6). Pure code.
//!
//! Every compound packet starts with a sender report and carries an SDES CNAME, as
//! RFC 3550 §6.1 requires; the BYE one adds a BYE. The CNAME is derived from the SSRC,
//! which RFC 7022 allows (short-term persistent, unique per stream).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Longest compound packet built here: SR 28 + SDES 24 + BYE 8.
pub const MAX_COMPOUND_LEN: usize = 64;

/// RFC 3550 minimum interval between reports; actual intervals are randomised around it.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What a sender report says about the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    /// SSRC of the stream.
    pub ssrc: u32,
    /// Wall clock of the report, as 64-bit NTP.
    pub ntp: u64,
    /// RTP timestamp of the same instant (on the stream's ideal media clock).
    pub rtp_timestamp: u32,
    /// Packets sent so far.
    pub packets: u32,
    /// Payload octets sent so far.
    pub octets: u32,
}

/// `t` as a 64-bit NTP timestamp (32.32 fixed point seconds since 1900).
pub fn ntp_timestamp(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Writes SR + SDES(CNAME) (+ BYE when `bye`) into `buf`; returns the length.
pub fn write_compound(info: &SenderInfo, bye: bool, buf: &mut [u8; MAX_COMPOUND_LEN]) -> usize {
    // SR: V=2, RC=0, PT=200, length 6 (words - 1).
    buf[0] = 0x80;
    buf[1] = 200;
    buf[2..4].copy_from_slice(&6u16.to_be_bytes());
    put_u32(buf, 4, info.ssrc);
    put_u32(buf, 8, (info.ntp >> 32) as u32);
    put_u32(buf, 12, info.ntp as u32);
    put_u32(buf, 16, info.rtp_timestamp);
    put_u32(buf, 20, info.packets);
    put_u32(buf, 24, info.octets);

    // SDES: V=2, SC=1, PT=202; one chunk: SSRC, CNAME item, end item, padding to 32 bits.
    let cname = cname(info.ssrc);
    let mut n = 28;
    buf[n] = 0x81;
    buf[n + 1] = 202;
    put_u32(buf, n + 4, info.ssrc);
    buf[n + 8] = 1; // CNAME
    buf[n + 9] = cname.len() as u8;
    buf[n + 10..n + 10 + cname.len()].copy_from_slice(&cname);
    // Item bytes + at least one zero byte (end of list), padded to a 4-byte boundary.
    let chunk = 4 + (2 + cname.len() + 1).div_ceil(4) * 4;
    for b in &mut buf[n + 10 + cname.len()..n + 4 + chunk] {
        *b = 0;
    }
    let words = (4 + chunk) / 4 - 1;
    buf[n + 2..n + 4].copy_from_slice(&(words as u16).to_be_bytes());
    n += 4 + chunk;

    if bye {
        // BYE: V=2, SC=1, PT=203, length 1; no reason text.
        buf[n] = 0x81;
        buf[n + 1] = 203;
        buf[n + 2..n + 4].copy_from_slice(&1u16.to_be_bytes());
        put_u32(buf, n + 4, info.ssrc);
        n += 8;
    }
    n
}

/// Whether a datagram received on our RTCP port looks like RTCP: version 2, at least
/// the 8-byte common header, and an RTCP packet type (RFC 5761 §4: 192..=223). The
/// far end's reports only tell us where to send ours, so nothing more is read.
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram, [first, pt, _, _, _, _, _, _, ..] if first >> 6 == 2 && (192..=223).contains(pt))
}

/// `otpdial-xxxxxxxx`: 16 bytes.
fn cname(ssrc: u32) -> [u8; 16] {
    let mut out = *b"otpdial-00000000";
    let hex = b"0123456789abcdef";
    for i in 0..8 {
        out[8 + i] = hex[((ssrc >> (28 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn ntp_of_the_unix_epoch_and_a_half_second() {
        assert_eq!(ntp_timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(
            ntp_timestamp(t),
            ((NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000
        );
    }

    /// Walks a compound packet by its length fields: (packet type, bytes) per packet.
    fn split(p: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < p.len() {
            assert_eq!(p[at] >> 6, 2, "version 2");
            let len = (usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]])) + 1) * 4;
            out.push((p[at + 1], &p[at..at + len]));
            at += len;
        }
        assert_eq!(at, p.len(), "lengths add up to the datagram");
        out
    }

    #[test]
    fn rtcp_is_recognised_by_version_and_packet_type() {
        let mut buf = [0u8; MAX_COMPOUND_LEN];
        let info = SenderInfo {
            ssrc: 1,
            ntp: 2,
            rtp_timestamp: 3,
            packets: 4,
            octets: 5,
        };
        let n = write_compound(&info, true, &mut buf);
        assert!(is_rtcp(&buf[..n]));
        assert!(is_rtcp(&[0x81, 201, 0, 1, 0, 0, 0, 1]), "receiver report");
        assert!(!is_rtcp(&buf[..7]), "shorter than a header");
        assert!(
            !is_rtcp(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            "RTP, PCMU"
        );
        assert!(!is_rtcp(&[0x41, 200, 0, 1, 0, 0, 0, 1]), "version 1");
        assert!(!is_rtcp(&[]));
    }

    #[test]
    fn sender_report_with_cname_and_bye() {
        let info = SenderInfo {
            ssrc: 0x1234_abcd,
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 0xdead_beef,
            packets: 250,
            octets: 40_000,
        };
        let mut buf = [0u8; MAX_COMPOUND_LEN];
        let n = write_compound(&info, false, &mut buf);
        let parts = split(&buf[..n]);
        assert_eq!(
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![200, 202]
        );
        let sr = parts[0].1;
        assert_eq!(sr.len(), 28);
        assert_eq!(sr[0] & 0x1f, 0, "no report blocks");
        assert_eq!(&sr[4..8], &0x1234_abcdu32.to_be_bytes());
        assert_eq!(&sr[8..16], &0x0102_0304_0506_0708u64.to_be_bytes());
        assert_eq!(&sr[16..20], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&sr[20..24], &250u32.to_be_bytes());
        assert_eq!(&sr[24..28], &40_000u32.to_be_bytes());
        let sdes = parts[1].1;
        assert_eq!(sdes[0] & 0x1f, 1, "one chunk");
        assert_eq!(&sdes[4..8], &0x1234_abcdu32.to_be_bytes());
        assert_eq!(sdes[8], 1, "CNAME");
        let len = usize::from(sdes[9]);
        assert_eq!(&sdes[10..10 + len], b"otpdial-1234abcd");
        assert!(sdes[10 + len..].iter().all(|&b| b == 0) && sdes.len() > 10 + len);

        let n = write_compound(&info, true, &mut buf);
        let parts = split(&buf[..n]);
        assert_eq!(
            parts.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![200, 202, 203]
        );
        assert_eq!(parts[2].1, &[0x81, 203, 0, 1, 0x12, 0x34, 0xab, 0xcd]);
    }
}
