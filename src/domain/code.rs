//! `OtpCode`: 4 to 10 decimal digits. Its `Debug` never shows the digits, so a
//! code cannot leak into a log line by accident.

use std::fmt;

pub(crate) const MIN_LEN: usize = 4;
pub(crate) const MAX_LEN: usize = 10;

#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtpCodeError {
    #[error("code must be {MIN_LEN} to {MAX_LEN} digits, got {0}")]
    Length(usize),
    #[error("code must contain digits only")]
    NotDigits,
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
}

impl OtpCode {
    pub fn parse(input: &str) -> Result<Self, OtpCodeError> {
        if !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OtpCodeError::NotDigits);
        }
        if !(MIN_LEN..=MAX_LEN).contains(&input.len()) {
            return Err(OtpCodeError::Length(input.len()));
        }
        Ok(OtpCode(input.as_bytes().to_vec()))
    }

    /// A fresh code of `len` digits: HOTP (RFC 4226, through totp-rs) over a
    /// per-verification 160-bit secret from the OS CSPRNG, which is then
    /// wiped. Six-digit HOTP values for counters 0, 1, ... are concatenated,
    /// so lengths above 6 keep the standard truncation's near-uniformity
    /// (a 31-bit value mod 10^6) instead of stretching one value over 10
    /// digits, where the leading digit could only be 0, 1 or 2.
    pub fn generate(len: usize) -> Result<Self, OtpCodeError> {
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(OtpCodeError::Length(len));
        }
        let mut secret = [0u8; 20];
        getrandom::fill(&mut secret).map_err(|e| OtpCodeError::Rng(e.to_string()))?;
        // Step 1 s, so "time" t is simply the HOTP counter t.
        let hotp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 0, 1, secret.to_vec());
        secret.fill(0);
        let mut digits = Vec::with_capacity(len + 6);
        let mut counter = 0u64;
        while digits.len() < len {
            digits.extend(hotp.generate(counter).bytes());
            counter += 1;
        }
        digits.truncate(len);
        Ok(OtpCode(digits))
    }

    /// The ASCII digits. Callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Digit values 0..=9, in order, for the call script.
    pub fn digit_values(&self) -> Vec<u8> {
        self.expose().iter().map(|b| b - b'0').collect()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OtpCode(<{} digits>)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_4_to_10_digits_only() {
        assert!(OtpCode::parse("1234").is_ok());
        assert!(OtpCode::parse("0123456789").is_ok());
        assert_eq!(OtpCode::parse("123"), Err(OtpCodeError::Length(3)));
        assert_eq!(OtpCode::parse("12345678901"), Err(OtpCodeError::Length(11)));
        assert_eq!(OtpCode::parse("12a456"), Err(OtpCodeError::NotDigits));
        assert_eq!(OtpCode::parse(" 123456"), Err(OtpCodeError::NotDigits));
        assert_eq!(OtpCode::parse("١٢٣٤٥٦"), Err(OtpCodeError::NotDigits));
    }

    #[test]
    fn generate_gives_requested_length_and_all_digits_appear() {
        let mut seen = [0u32; 10];
        for _ in 0..2000 {
            let c = OtpCode::generate(6).unwrap();
            assert_eq!(c.len(), 6);
            for d in c.digit_values() {
                seen[d as usize] += 1;
            }
        }
        // 12,000 digits: each should appear about 1,200 times.
        for (d, n) in seen.iter().enumerate() {
            assert!((900..1500).contains(n), "digit {d} seen {n} times");
        }
        assert!(OtpCode::generate(3).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_accepts_exactly_digit_strings_of_4_to_10(s in "\\PC{0,14}") {
            let ok = (4..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
            proptest::prop_assert_eq!(OtpCode::parse(&s).is_ok(), ok);
        }

        #[test]
        fn parse_round_trips_digits(s in "[0-9]{4,10}") {
            let c = OtpCode::parse(&s).unwrap();
            proptest::prop_assert_eq!(c.expose(), s.as_bytes());
            let values: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
            proptest::prop_assert_eq!(c.digit_values(), values);
        }

        #[test]
        fn generated_codes_parse(len in 4usize..=10) {
            let c = OtpCode::generate(len).unwrap();
            proptest::prop_assert_eq!(c.len(), len);
            let text = String::from_utf8(c.expose().to_vec()).unwrap();
            proptest::prop_assert!(OtpCode::parse(&text).is_ok());
        }
    }

    #[test]
    fn debug_hides_digits() {
        let c = OtpCode::parse("481526").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("481526"));
        assert_eq!(shown, "OtpCode(<6 digits>)");
    }
}
