//! Keys derived from the server's code key: one for the keyed hash that the
//! check compares against, one for sealing the code so the dialer (possibly
//! on another instance) can speak it. Neither the code nor the key is ever
//! stored in clear.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use anyhow::Context as _;

use crate::config::Settings;
use crate::domain::Keys;
use crate::domain::OtpCode;
use crate::store::Store;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct CodeKeys {
    hash_key: [u8; 32],
    seal_key: [u8; 32],
    /// Keys the one-way hash that replaces personal data in audit rows kept past
    /// `[database] retention` (`crate::retention`).
    pseudonym_key: [u8; 32],
}

impl std::fmt::Debug for CodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKeys(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed code is malformed")]
    Malformed,
    #[error("sealed code does not open with this key (wrong OTPDIAL_CODE_KEY?)")]
    Key,
    #[error("random number generator failed")]
    Rng,
}

fn derive(master: &[u8], label: &[u8]) -> [u8; 32] {
    // HMAC as a KDF: HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(master) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl CodeKeys {
    /// The code keys: from the environment variable `verification.code_key_env`
    /// names, else the key generated once and kept in the database.
    pub async fn load(settings: &Settings, store: &Store) -> anyhow::Result<Self> {
        let master = match std::env::var(&settings.verification.code_key_env) {
            Ok(k) if !k.is_empty() => k,
            _ => {
                let mut fresh = [0u8; 32];
                getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("OS RNG failed: {e}"))?;
                store
                    .server_secret("code_key", &hex::encode(fresh))
                    .await
                    .context("cannot read or store the code key")?
            }
        };
        Ok(CodeKeys::from_master(master.as_bytes()))
    }

    pub fn from_master(master: &[u8]) -> Self {
        Self {
            hash_key: derive(master, b"otpdial/code-hash/v1"),
            seal_key: derive(master, b"otpdial/code-seal/v1"),
            pseudonym_key: derive(master, b"otpdial/audit-pseudonym/v1"),
        }
    }

    /// A one-way keyed hash of a piece of personal data (a number, a user id):
    /// `h:` and 16 hex digits of HMAC-SHA256. Equal values give equal hashes, so
    /// kept audit rows about one person still line up; without the key nobody can
    /// test a guessed number against them.
    pub fn pseudonym(&self, value: &str) -> String {
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.pseudonym_key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("h:{}", hex::encode(&digest[..8]))
    }

    /// HMAC-SHA256 over the verification id and the code, hex. Binding the id
    /// means equal codes of two verifications hash differently.
    pub fn hash(&self, verification_id: &str, code: &[u8]) -> String {
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.hash_key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(verification_id.as_bytes());
        mac.update(b":");
        mac.update(code);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time comparison of a candidate code against a stored hash.
    pub fn matches(&self, verification_id: &str, candidate: &[u8], stored_hash: &str) -> bool {
        let computed = self.hash(verification_id, candidate);
        computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }

    /// Encrypts the code (and the `bind_digits` keys, if any) for the dialer:
    /// hex(nonce || ciphertext), with the verification id as associated data so a
    /// sealed code cannot be moved to another row. The plaintext is the code's
    /// digits, then `/` and the bind digits when there are some.
    pub fn seal(
        &self,
        verification_id: &str,
        code: &OtpCode,
        bind: Option<Keys>,
    ) -> Result<String, SealError> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.seal_key));
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Rng)?;
        let mut msg = code.expose().to_vec();
        if let Some(keys) = bind {
            msg.push(b'/');
            msg.extend_from_slice(keys.to_text().as_bytes());
        }
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &msg,
                    aad: verification_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Key)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(hex::encode(out))
    }

    /// The code and the bind digits sealed by [`CodeKeys::seal`].
    pub fn open(
        &self,
        verification_id: &str,
        sealed: &str,
    ) -> Result<(OtpCode, Option<Keys>), SealError> {
        let bytes = hex::decode(sealed).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = bytes.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.seal_key));
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: verification_id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Key)?;
        let text = String::from_utf8(plain).map_err(|_| SealError::Malformed)?;
        let (code, bind) = match text.split_once('/') {
            Some((code, bind)) => (code, Some(Keys::parse(bind).ok_or(SealError::Malformed)?)),
            None => (text.as_str(), None),
        };
        Ok((
            OtpCode::parse(code).map_err(|_| SealError::Malformed)?,
            bind,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_keyed_and_bound_to_the_id() {
        let k = CodeKeys::from_master(b"master");
        let h = k.hash("vf_1", b"481526");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("481526"));
        assert_ne!(h, k.hash("vf_2", b"481526"));
        assert_ne!(h, CodeKeys::from_master(b"other").hash("vf_1", b"481526"));
        assert!(k.matches("vf_1", b"481526", &h));
        assert!(!k.matches("vf_1", b"481527", &h));
    }

    #[test]
    fn seal_round_trips_and_is_bound_to_the_id() {
        let k = CodeKeys::from_master(b"master");
        let code = OtpCode::parse("0042").unwrap();
        let sealed = k.seal("vf_1", &code, None).unwrap();
        assert_eq!(k.open("vf_1", &sealed).unwrap(), (code.clone(), None));
        // A fresh nonce each time: the same code never seals to the same text.
        assert_ne!(k.seal("vf_1", &code, None).unwrap(), sealed);
        let keys = Keys::two(4, 7);
        let both = k.seal("vf_1", &code, keys).unwrap();
        assert_eq!(k.open("vf_1", &both).unwrap(), (code, keys));
        assert!(k.open("vf_2", &both).is_err());
        assert!(k.open("vf_2", &sealed).is_err());
        assert!(CodeKeys::from_master(b"x").open("vf_1", &sealed).is_err());
        assert!(k.open("vf_1", "zz").is_err());
        assert!(k.open("vf_1", "00").is_err());
    }
}
