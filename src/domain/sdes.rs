//! SDES key material (RFC 4568): the crypto suites and a master key with its salt. Shared
//! by the SDP negotiation (`sip::sdp`, which carries them in `a=crypto`) and the SRTP
//! engine (`media::srtp`, which keys the streams with them), so neither imports the other.

/// Master key length (AES-128).
pub const MASTER_KEY_LEN: usize = 16;

/// Master salt length.
pub const MASTER_SALT_LEN: usize = 14;

/// Crypto suites of RFC 4568 §6.2 that we implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag on SRTP and SRTCP.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit tag on SRTP (SRTCP keeps 80 bits, RFC 4568 §6.2.2).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The SDES name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite an SDES name denotes (names are case-sensitive, RFC 4568 §9.2).
    pub fn from_name(name: &str) -> Option<Suite> {
        [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Tag length on SRTP packets.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt (RFC 3711 §8.2). Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// The 128-bit master key.
    pub key: [u8; MASTER_KEY_LEN],
    /// The 112-bit master salt.
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh key and salt from the operating system's CSPRNG.
    pub fn random() -> Result<MasterKey, getrandom::Error> {
        let mut bytes = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(MasterKey::from_concatenated(&bytes))
    }

    /// Key then salt, as SDES `inline:` carries them (30 bytes).
    pub fn from_concatenated(bytes: &[u8; MASTER_KEY_LEN + MASTER_SALT_LEN]) -> MasterKey {
        let mut key = [0u8; MASTER_KEY_LEN];
        let mut salt = [0u8; MASTER_SALT_LEN];
        key.copy_from_slice(&bytes[..MASTER_KEY_LEN]);
        salt.copy_from_slice(&bytes[MASTER_KEY_LEN..]);
        MasterKey { key, salt }
    }

    /// Key then salt (30 bytes).
    pub fn concatenated(&self) -> [u8; MASTER_KEY_LEN + MASTER_SALT_LEN] {
        let mut out = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        out[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        out[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        out
    }
}
