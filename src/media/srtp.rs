//! SRTP and SRTCP (RFC 3711) with AES-128 counter mode and HMAC-SHA1, sans-IO.
//!
//! Two suites (RFC 4568 §6.2): `AES_CM_128_HMAC_SHA1_80` (what we offer) and
//! `AES_CM_128_HMAC_SHA1_32` (4-byte RTP tag; SRTCP keeps its 10-byte tag). Key
//! derivation is the AES-CM PRF with a key derivation rate of 0 (session keys derived
//! once), no MKI.
//!
//! A [`SrtpSession`] holds both directions of one call: our master key protects what we
//! send, the far end's (from its SDES `a=crypto`) what it sends. Session keys are
//! expanded once per stream (AES key schedule, HMAC inner and outer pads); protecting a
//! packet works in the caller's buffer and allocates nothing.
//!
//! Receiving follows RFC 3711 §3.3: the rollover counter is estimated from the sequence
//! number (§3.3.1, Appendix A), the tag checked in constant time before anything is
//! decrypted or remembered, and a 64-packet replay window (§3.3.2) kept per SSRC and per
//! SRTCP index. A packet that fails any check is an error and leaves no trace in the
//! state.

use aes::cipher::{InnerIvInit, KeyInit, KeyIvInit, StreamCipher, StreamCipherCoreWrapper};
use aes::{Aes128, Aes128Enc};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

pub use crate::domain::sdes::{MasterKey, Suite, MASTER_KEY_LEN, MASTER_SALT_LEN};

type HmacSha1 = Hmac<Sha1>;
type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type Aes128CtrCore = ctr::CtrCore<Aes128Enc, ctr::flavors::Ctr128BE>;

/// Longest authentication tag either suite appends (80 bits).
pub const MAX_TAG_LEN: usize = 10;
/// What SRTCP appends to an RTCP packet: E flag + 31-bit index, then the 80-bit tag.
pub const SRTCP_TRAILER_LEN: usize = 4 + MAX_TAG_LEN;
/// Bytes an SRTP packet may grow by over its RTP packet (no MKI).
pub const MAX_RTP_OVERHEAD: usize = MAX_TAG_LEN;

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;
const REPLAY_WINDOW: u64 = 64;
/// SSRCs of the far end tracked at once (it normally sends one; a re-INVITE or a
/// transfer may bring another). The least recently used is replaced.
const MAX_REMOTE_SSRCS: usize = 4;

/// Why a packet could not be protected or was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short or malformed")]
    Malformed,
    #[error("buffer too small for the authentication tag")]
    NoRoom,
    #[error("authentication failed")]
    AuthFailed,
    #[error("replayed or too old")]
    Replayed,
    /// SRTCP index space (2^31 packets) used up: the key must not be used further.
    #[error("key exhausted")]
    KeyExhausted,
}

/// Key-derivation labels (RFC 3711 §4.3.1 and §4.3.2).
#[derive(Clone, Copy)]
enum Label {
    RtpCipher = 0,
    RtpAuth = 1,
    RtpSalt = 2,
    RtcpCipher = 3,
    RtcpAuth = 4,
    RtcpSalt = 5,
}

/// The AES-CM PRF (§4.3.3) with key derivation rate 0: `out` gets the keystream of the
/// master key at IV `(label << 48 XOR master_salt) * 2^16`.
fn derive(master: &MasterKey, label: Label, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(&master.salt);
    // key_id = label || r (48 bits, 0 at rate 0), right-aligned in the 112-bit salt:
    // the label lands on byte 14 - 7 = 7.
    iv[7] ^= label as u8;
    out.fill(0);
    let mut ctr = Aes128Ctr::new((&master.key).into(), (&iv).into());
    ctr.apply_keystream(out);
}

/// Session keys of one direction of SRTP or SRTCP.
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128Enc,
    salt: [u8; MASTER_SALT_LEN],
    /// HMAC keyed once; cloned per packet (copies the two hash states, no re-keying).
    auth: HmacSha1,
}

impl SessionKeys {
    fn derive(master: &MasterKey, cipher: Label, auth: Label, salt: Label) -> SessionKeys {
        let mut k = [0u8; 16];
        derive(master, cipher, &mut k);
        let mut a = [0u8; 20];
        derive(master, auth, &mut a);
        let mut s = [0u8; MASTER_SALT_LEN];
        derive(master, salt, &mut s);
        let keys = SessionKeys {
            cipher: Aes128Enc::new((&k).into()),
            salt: s,
            // HMAC takes keys of any length; this cannot fail.
            auth: <HmacSha1 as Mac>::new_from_slice(&a)
                .unwrap_or_else(|_| <HmacSha1 as KeyInit>::new(&Default::default())),
        };
        k.fill(0);
        a.fill(0);
        keys
    }

    /// XORs `data` with the AES-CM keystream for (ssrc, index) (§4.1.1):
    /// IV = (salt * 2^16) XOR (ssrc * 2^64) XOR (index * 2^16).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        // The 48-bit index occupies bytes 8..14.
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        // The key schedule is copied, not recomputed.
        let core = Aes128CtrCore::inner_iv_init(self.cipher.clone(), (&iv).into());
        let mut ctr = StreamCipherCoreWrapper::from_core(core);
        ctr.apply_keystream(data);
    }

    /// Full 20-byte HMAC-SHA1 over `parts`.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut m = self.auth.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

/// Replay window over indices (§3.3.2): the highest index seen and a bitmap of the 64
/// indices up to it.
#[derive(Clone, Copy, Debug, Default)]
struct ReplayWindow {
    top: u64,
    bits: u64,
    any: bool,
}

impl ReplayWindow {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.any || index > self.top {
            return Ok(());
        }
        let age = self.top - index;
        if age >= REPLAY_WINDOW || self.bits & (1 << age) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records an authenticated index (after `check` passed).
    fn accept(&mut self, index: u64) {
        if !self.any {
            *self = ReplayWindow {
                top: index,
                bits: 1,
                any: true,
            };
        } else if index > self.top {
            let shift = index - self.top;
            self.bits = if shift >= REPLAY_WINDOW {
                1
            } else {
                (self.bits << shift) | 1
            };
            self.top = index;
        } else {
            self.bits |= 1 << (self.top - index);
        }
    }
}

/// Receive state of one far-end SSRC.
#[derive(Clone, Copy, Debug)]
struct RemoteSsrc {
    ssrc: u32,
    /// Rollover counter and highest sequence number authenticated so far (s_l).
    roc: u32,
    s_l: u16,
    rtp: ReplayWindow,
    rtcp: ReplayWindow,
    /// For least-recently-used replacement.
    last_used: u64,
}

impl RemoteSsrc {
    /// The packet index a sequence number most likely has (§3.3.1, Appendix A).
    fn estimate(&self, seq: u16) -> (u32, u64) {
        let (s_l, roc) = (i64::from(self.s_l), i64::from(self.roc));
        let seq_i = i64::from(seq);
        let v = if s_l < 32768 {
            if seq_i - s_l > 32768 {
                roc - 1
            } else {
                roc
            }
        } else if s_l - 32768 > seq_i {
            roc + 1
        } else {
            roc
        };
        // v = -1 (a packet from before a wrap when ROC is 0) has no valid index; map
        // it to a ROC that cannot authenticate and an index the window refuses.
        let v = u32::try_from(v.rem_euclid(1 << 32)).unwrap_or(0);
        (v, (u64::from(v) << 16) | u64::from(seq))
    }
}

/// Where the payload of an RTP packet starts (after CSRCs and header extension).
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER_LEN || packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

fn ssrc_at(packet: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
}

/// Both directions of SRTP and SRTCP for one call.
#[derive(Clone)]
pub struct SrtpSession {
    suite: Suite,
    out_rtp: SessionKeys,
    out_rtcp: SessionKeys,
    in_rtp: SessionKeys,
    in_rtcp: SessionKeys,
    /// Our rollover counter and last sequence number sent (one outgoing SSRC).
    out_roc: u32,
    out_last_seq: Option<u16>,
    /// Next SRTCP index to send (31 bits).
    out_rtcp_index: u32,
    remotes: [Option<RemoteSsrc>; MAX_REMOTE_SSRCS],
    uses: u64,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SrtpSession {
    /// `ours` protects what we send, `theirs` what the far end sends; `suite` is the
    /// one the answer chose (both directions).
    pub fn new(suite: Suite, ours: &MasterKey, theirs: &MasterKey) -> SrtpSession {
        SrtpSession {
            suite,
            out_rtp: SessionKeys::derive(ours, Label::RtpCipher, Label::RtpAuth, Label::RtpSalt),
            out_rtcp: SessionKeys::derive(
                ours,
                Label::RtcpCipher,
                Label::RtcpAuth,
                Label::RtcpSalt,
            ),
            in_rtp: SessionKeys::derive(theirs, Label::RtpCipher, Label::RtpAuth, Label::RtpSalt),
            in_rtcp: SessionKeys::derive(
                theirs,
                Label::RtcpCipher,
                Label::RtcpAuth,
                Label::RtcpSalt,
            ),
            out_roc: 0,
            out_last_seq: None,
            out_rtcp_index: 0,
            remotes: [None; MAX_REMOTE_SSRCS],
            uses: 0,
        }
    }

    /// The suite in use.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Encrypts and authenticates the RTP packet in `buf[..len]` in place and appends
    /// the tag; returns the SRTP length. `buf` needs [`MAX_RTP_OVERHEAD`] spare bytes.
    /// Packets must be given in sending order (the rollover counter follows the
    /// sequence numbers).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let packet = buf.get(..len).ok_or(SrtpError::Malformed)?;
        let header = rtp_header_len(packet)?;
        if buf.len() < len + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = ssrc_at(buf, 8);
        if let Some(last) = self.out_last_seq {
            // Sequence numbers only go forward here; a smaller one is a wrap.
            if seq < last && last - seq > 0x8000 {
                self.out_roc = self.out_roc.wrapping_add(1);
            }
        }
        self.out_last_seq = Some(seq);
        let index = (u64::from(self.out_roc) << 16) | u64::from(seq);
        self.out_rtp
            .apply_keystream(ssrc, index, &mut buf[header..len]);
        let tag = self
            .out_rtp
            .mac(&[&buf[..len], &self.out_roc.to_be_bytes()]);
        buf[len..len + tag_len].copy_from_slice(&tag[..tag_len]);
        Ok(len + tag_len)
    }

    /// Checks and decrypts the SRTP packet `buf` in place; returns the length of the
    /// RTP packet now at the start of `buf`.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let len = buf.len().checked_sub(tag_len).ok_or(SrtpError::Malformed)?;
        let header = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = ssrc_at(buf, 8);
        let slot = self
            .remotes
            .iter()
            .position(|r| r.is_some_and(|r| r.ssrc == ssrc));
        let state = slot.and_then(|i| self.remotes[i]).unwrap_or(RemoteSsrc {
            // A new SSRC: s_l starts at this packet's sequence number (§3.3.1).
            ssrc,
            roc: 0,
            s_l: seq,
            rtp: ReplayWindow::default(),
            rtcp: ReplayWindow::default(),
            last_used: 0,
        });
        let mut state = state;
        if !state.rtp.any {
            // Known from SRTCP only: its first RTP packet sets s_l.
            state.s_l = seq;
        }
        let (v, index) = state.estimate(seq);
        state.rtp.check(index)?;
        let tag = self.in_rtp.mac(&[&buf[..len], &v.to_be_bytes()]);
        if !bool::from(tag[..tag_len].ct_eq(&buf[len..])) {
            return Err(SrtpError::AuthFailed);
        }
        self.in_rtp
            .apply_keystream(ssrc, index, &mut buf[header..len]);
        state.rtp.accept(index);
        if v == state.roc.wrapping_add(1) {
            state.roc = v;
            state.s_l = seq;
        } else if v == state.roc && seq > state.s_l {
            state.s_l = seq;
        }
        self.store_remote(slot, state);
        Ok(len)
    }

    /// Encrypts and authenticates the RTCP compound packet in `buf[..len]` in place and
    /// appends the SRTCP index (E flag set) and tag; returns the SRTCP length. `buf`
    /// needs [`SRTCP_TRAILER_LEN`] spare bytes.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < RTCP_HEADER_LEN || buf.len() < len {
            return Err(SrtpError::Malformed);
        }
        if buf.len() < len + SRTCP_TRAILER_LEN {
            return Err(SrtpError::NoRoom);
        }
        let index = self.out_rtcp_index;
        if index >= 1 << 31 {
            return Err(SrtpError::KeyExhausted);
        }
        let ssrc = ssrc_at(buf, 4);
        self.out_rtcp
            .apply_keystream(ssrc, u64::from(index), &mut buf[RTCP_HEADER_LEN..len]);
        buf[len..len + 4].copy_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.out_rtcp.mac(&[&buf[..len + 4]]);
        buf[len + 4..len + SRTCP_TRAILER_LEN].copy_from_slice(&tag[..MAX_TAG_LEN]);
        self.out_rtcp_index = index + 1;
        Ok(len + SRTCP_TRAILER_LEN)
    }

    /// Checks and decrypts the SRTCP packet `buf` in place; returns the length of the
    /// RTCP compound packet now at the start of `buf`.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let len = buf
            .len()
            .checked_sub(SRTCP_TRAILER_LEN)
            .filter(|&l| l >= RTCP_HEADER_LEN)
            .ok_or(SrtpError::Malformed)?;
        let tag = self.in_rtcp.mac(&[&buf[..len + 4]]);
        if !bool::from(tag[..MAX_TAG_LEN].ct_eq(&buf[len + 4..])) {
            return Err(SrtpError::AuthFailed);
        }
        let e_index = ssrc_at(buf, len);
        let (encrypted, index) = (e_index & 0x8000_0000 != 0, u64::from(e_index & 0x7fff_ffff));
        let ssrc = ssrc_at(buf, 4);
        let slot = self
            .remotes
            .iter()
            .position(|r| r.is_some_and(|r| r.ssrc == ssrc));
        let mut state = slot.and_then(|i| self.remotes[i]).unwrap_or(RemoteSsrc {
            ssrc,
            roc: 0,
            s_l: 0,
            rtp: ReplayWindow::default(),
            rtcp: ReplayWindow::default(),
            last_used: 0,
        });
        state.rtcp.check(index)?;
        if encrypted {
            self.in_rtcp
                .apply_keystream(ssrc, index, &mut buf[RTCP_HEADER_LEN..len]);
        }
        state.rtcp.accept(index);
        self.store_remote(slot, state);
        Ok(len)
    }

    /// Saves an SSRC's state, replacing the least recently used one when all slots are
    /// taken (only ever after the packet authenticated).
    fn store_remote(&mut self, slot: Option<usize>, mut state: RemoteSsrc) {
        self.uses += 1;
        state.last_used = self.uses;
        let i = slot
            .or_else(|| self.remotes.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                self.remotes
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| r.map_or(0, |r| r.last_used))
                    .map_or(0, |(i, _)| i)
            });
        self.remotes[i] = Some(state);
    }
}

/// Raw AES-128 block encryption, for the keystream test vectors.
#[cfg(test)]
fn encrypt_block(key: &[u8; 16], block: &mut [u8; 16]) {
    use aes::cipher::BlockEncrypt;
    Aes128::new(key.into()).encrypt_block(block.into());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn rfc_master() -> MasterKey {
        MasterKey {
            key: hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            salt: hex("0EC675AD498AFEEBB6960B3AABE6"),
        }
    }

    /// RFC 3711 Appendix B.3.
    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let m = rfc_master();
        let mut k = [0u8; 16];
        derive(&m, Label::RtpCipher, &mut k);
        assert_eq!(k, hex::<16>("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(&m, Label::RtpSalt, &mut s);
        assert_eq!(s, hex::<14>("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 20];
        derive(&m, Label::RtpAuth, &mut a);
        assert_eq!(a, hex::<20>("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    /// RFC 3711 Appendix B.2: the AES-CM keystream for session key
    /// 2B7E1516..., salt F0F1...FD, SSRC 0, index 0, at counter blocks 0, 1, 2 and
    /// 0xFEFF..0xFF01 (the IV's low 16 bits are the block counter).
    #[test]
    fn keystream_matches_rfc3711_b2() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C");
        let keys = SessionKeys {
            cipher: Aes128Enc::new((&key).into()),
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"),
            auth: <HmacSha1 as Mac>::new_from_slice(&[0; 20]).unwrap(),
        };
        let mut stream = vec![0u8; 16 * 0xff02];
        keys.apply_keystream(0, 0, &mut stream);
        let block = |n: usize| &stream[n * 16..n * 16 + 16];
        for (n, expected) in [
            (0, "E03EAD0935C95E80E166B16DD92B4EB4"),
            (1, "D23513162B02D0F72A43A2FE4A5F97AB"),
            (2, "41E95B3BB0A2E8DD477901E4FCA894C0"),
            (0xfeff, "EC8CDF7398607CB0F2D21675EA9EA1E4"),
            (0xff00, "362B7C3C6773516318A077D7FC5073AE"),
            (0xff01, "6A2CC3787889374FBEB4C81B17BA6C44"),
        ] {
            assert_eq!(block(n), &hex::<16>(expected)[..], "block {n:#x}");
        }
        // The same as AES of the counter block (the definition of AES-CM).
        let mut ctr_block: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0002");
        encrypt_block(&key, &mut ctr_block);
        assert_eq!(block(2), &ctr_block[..]);
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// Protects `plain` into a fresh buffer with room for the tag.
    fn protect(s: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + MAX_RTP_OVERHEAD, 0);
        let n = s.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn pair(suite: Suite) -> (SrtpSession, SrtpSession) {
        let a = MasterKey::random().unwrap();
        let b = MasterKey::random().unwrap();
        (
            SrtpSession::new(suite, &a, &b),
            SrtpSession::new(suite, &b, &a),
        )
    }

    /// libsrtp's own known-answer packet (its srtp_driver test) for the 80-bit suite
    /// with the RFC 3711 B.3 master key: interop, not only self-consistency.
    #[test]
    fn known_srtp_packet() {
        let m = rfc_master();
        let mut s = SrtpSession::new(Suite::AesCm128HmacSha1_80, &m, &m);
        let mut plain = hex::decode("800f1234decafbadcafebabe").unwrap();
        plain.extend_from_slice(&[0xab; 16]);
        let out = protect(&mut s, &plain);
        assert_eq!(
            hex::encode(&out),
            "800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"
        );
        let mut back = out.clone();
        let n = s.unprotect_rtp(&mut back).unwrap();
        assert_eq!(&back[..n], &plain[..]);
    }

    #[test]
    fn rtp_round_trip_both_suites_and_directions() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let (mut a, mut b) = pair(suite);
            for seq in 100..110u16 {
                let plain = rtp(seq, 0x1234, &[0xd5; 160]);
                let mut sent = protect(&mut a, &plain);
                assert_eq!(sent.len(), plain.len() + suite.rtp_tag_len());
                assert_eq!(&sent[..12], &plain[..12], "header stays clear");
                assert_ne!(&sent[12..172], &plain[12..], "payload encrypted");
                let n = b.unprotect_rtp(&mut sent).unwrap();
                assert_eq!(&sent[..n], &plain[..]);
                // And the other way.
                let mut back = protect(&mut b, &plain);
                let n = a.unprotect_rtp(&mut back).unwrap();
                assert_eq!(&back[..n], &plain[..]);
            }
        }
    }

    #[test]
    fn header_extension_and_csrcs_stay_clear() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        // CC = 1, X = 1, one extension word.
        let mut plain = vec![0x91, 0x00, 0, 7, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4];
        plain.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        plain.extend_from_slice(b"payload");
        let mut sent = protect(&mut a, &plain);
        assert_eq!(&sent[..24], &plain[..24]);
        assert_ne!(&sent[24..31], b"payload");
        let n = b.unprotect_rtp(&mut sent).unwrap();
        assert_eq!(&sent[..n], &plain[..]);
        // An extension longer than the packet is refused, not read past.
        let mut bad = vec![
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff,
        ];
        bad.extend_from_slice(&[0; 10]);
        assert_eq!(b.unprotect_rtp(&mut bad), Err(SrtpError::Malformed));
    }

    #[test]
    fn wrong_tag_or_key_is_refused_and_leaves_no_state() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        let plain = rtp(5, 7, &[1; 160]);
        let good = protect(&mut a, &plain);
        for i in [0, 3, 12, 100, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(b.unprotect_rtp(&mut bad), Err(SrtpError::AuthFailed), "{i}");
        }
        // A key we do not know.
        let (mut stranger, _) = pair(Suite::AesCm128HmacSha1_80);
        let mut forged = protect(&mut stranger, &plain);
        assert_eq!(b.unprotect_rtp(&mut forged), Err(SrtpError::AuthFailed));
        // Plain RTP is not SRTP.
        let mut clear = plain.clone();
        assert_eq!(b.unprotect_rtp(&mut clear), Err(SrtpError::AuthFailed));
        assert!(
            b.remotes.iter().all(Option::is_none),
            "no state from forgeries"
        );
        let mut ok = good.clone();
        assert!(b.unprotect_rtp(&mut ok).is_ok());
        let mut short = vec![0x80; 5];
        assert_eq!(b.unprotect_rtp(&mut short), Err(SrtpError::Malformed));
    }

    #[test]
    fn replays_are_refused_reordering_within_the_window_is_not() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        let sent: Vec<Vec<u8>> = (0..100u16)
            .map(|s| protect(&mut a, &rtp(1000 + s, 9, &[s as u8; 20])))
            .collect();
        // 0..=79 in order, then 90, then the late 85, then 85 again.
        for p in &sent[..80] {
            assert!(b.unprotect_rtp(&mut p.clone()).is_ok());
        }
        assert!(b.unprotect_rtp(&mut sent[90].clone()).is_ok());
        assert!(
            b.unprotect_rtp(&mut sent[85].clone()).is_ok(),
            "late, in window"
        );
        assert_eq!(
            b.unprotect_rtp(&mut sent[85].clone()),
            Err(SrtpError::Replayed)
        );
        assert_eq!(
            b.unprotect_rtp(&mut sent[90].clone()),
            Err(SrtpError::Replayed)
        );
        // 20 is 70 behind the highest: outside the 64-packet window.
        assert_eq!(
            b.unprotect_rtp(&mut sent[20].clone()),
            Err(SrtpError::Replayed)
        );
    }

    #[test]
    fn rollover_counter_follows_the_sequence_wrap() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_80);
        let seqs = [65530u16, 65533, 65535, 0, 1, 2];
        let sent: Vec<Vec<u8>> = seqs
            .iter()
            .map(|&s| protect(&mut a, &rtp(s, 3, &[0x55; 40])))
            .collect();
        assert_eq!(a.out_roc, 1);
        // Receive with a packet from before the wrap arriving after it.
        for i in [0, 1, 3, 2, 4, 5] {
            let mut p = sent[i].clone();
            let n = b
                .unprotect_rtp(&mut p)
                .unwrap_or_else(|e| panic!("packet {i}: {e}"));
            assert_eq!(&p[..n], &rtp(seqs[i], 3, &[0x55; 40])[..]);
        }
        let st = b.remotes.iter().flatten().next().unwrap();
        assert_eq!((st.roc, st.s_l), (1, 2));
        // The index after the wrap includes the ROC: a sender that did not count the
        // wrap (ROC 0 at seq 3) does not authenticate.
        let mut stale = SrtpSession::new(
            Suite::AesCm128HmacSha1_80,
            &MasterKey::random().unwrap(),
            &MasterKey::random().unwrap(),
        );
        stale.out_rtp = a.out_rtp.clone();
        let mut p = protect(&mut stale, &rtp(3, 3, &[0x55; 40]));
        assert_eq!(b.unprotect_rtp(&mut p), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn srtcp_round_trip_index_and_replay() {
        let (mut a, mut b) = pair(Suite::AesCm128HmacSha1_32);
        let mut sr = [0u8; 28];
        sr[0] = 0x80;
        sr[1] = 200;
        sr[3] = 6;
        sr[4..8].copy_from_slice(&0xabcd_0123u32.to_be_bytes());
        sr[8..].fill(0x42);
        let mut packets = Vec::new();
        for i in 0..3u32 {
            let mut buf = [0u8; 28 + SRTCP_TRAILER_LEN];
            buf[..28].copy_from_slice(&sr);
            let n = a.protect_rtcp(&mut buf, 28).unwrap();
            assert_eq!(n, 28 + 14, "SRTCP keeps the 80-bit tag under SHA1_32");
            assert_eq!(&buf[..8], &sr[..8]);
            assert_ne!(&buf[8..28], &sr[8..]);
            assert_eq!(
                &buf[28..32],
                &(0x8000_0000 | i).to_be_bytes(),
                "E flag + index"
            );
            packets.push(buf);
        }
        for p in &packets {
            let mut p = *p;
            let n = b.unprotect_rtcp(&mut p).unwrap();
            assert_eq!(&p[..n], &sr[..]);
        }
        assert_eq!(
            b.unprotect_rtcp(&mut packets[1].clone()),
            Err(SrtpError::Replayed)
        );
        let mut bad = packets[2];
        bad[10] ^= 1;
        assert_eq!(b.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
        // Plain RTCP is refused.
        let mut plain = [0u8; 28 + SRTCP_TRAILER_LEN];
        plain[..28].copy_from_slice(&sr);
        assert_eq!(b.unprotect_rtcp(&mut plain), Err(SrtpError::AuthFailed));
        assert_eq!(b.unprotect_rtcp(&mut [0u8; 12]), Err(SrtpError::Malformed));
        // No room for the trailer.
        let mut tight = sr;
        assert_eq!(a.protect_rtcp(&mut tight, 28), Err(SrtpError::NoRoom));
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let m = rfc_master();
        let s = SrtpSession::new(Suite::AesCm128HmacSha1_80, &m, &m);
        let text = format!("{m:?} {s:?}").to_lowercase();
        assert!(!text.contains("e1f97a"), "{text}");
        assert!(!text.contains("225, 249"), "{text}");
    }

    #[test]
    fn suite_names() {
        assert_eq!(
            Suite::from_name("AES_CM_128_HMAC_SHA1_80"),
            Some(Suite::AesCm128HmacSha1_80)
        );
        assert_eq!(
            Suite::from_name("AES_CM_128_HMAC_SHA1_32"),
            Some(Suite::AesCm128HmacSha1_32)
        );
        assert_eq!(Suite::from_name("AEAD_AES_128_GCM"), None);
    }
}
