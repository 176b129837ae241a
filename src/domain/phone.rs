//! `PhoneNumber`: an E.164 number that has been validated against the
//! libphonenumber metadata. Once constructed it cannot hold an invalid value.

use std::fmt;
use std::str::FromStr;

use phonenumber::country;

/// Line types of libphonenumber, as configured in `fraud.allowed_number_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    Mobile,
    FixedLine,
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    Uan,
    Voicemail,
    Unknown,
}

impl NumberKind {
    pub fn is_mobile(self) -> bool {
        matches!(self, NumberKind::Mobile | NumberKind::FixedLineOrMobile)
    }
}

/// A valid phone number in E.164 form (`+31612345678`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number contains characters other than digits, spaces, dashes, dots, parentheses and a leading '+'")]
    BadCharacters,
    #[error("phone number is not in international form (+country code) and no default region is configured")]
    NoRegion,
    #[error("unknown default region {0:?}")]
    UnknownRegion(String),
    #[error("phone number could not be parsed: {0}")]
    Unparseable(String),
    #[error("phone number is not a valid number for its country")]
    Invalid,
}

/// The ISO 3166 region used to read national numbers such as `0612345678`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region(country::Id);

impl FromStr for Region {
    type Err = PhoneNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .to_ascii_uppercase()
            .parse::<country::Id>()
            .map(Region)
            .map_err(|_| PhoneNumberError::UnknownRegion(s.to_string()))
    }
}

impl PhoneNumber {
    /// Parses international input, or national input read in `region`.
    pub fn parse(input: &str, region: Option<Region>) -> Result<Self, PhoneNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        if trimmed.len() > 32
            || !trimmed.chars().enumerate().all(|(i, c)| {
                c.is_ascii_digit()
                    || matches!(c, ' ' | '-' | '.' | '(' | ')')
                    || (c == '+' && i == 0)
            })
        {
            return Err(PhoneNumberError::BadCharacters);
        }
        let international = trimmed.starts_with('+') || trimmed.starts_with("00");
        if !international && region.is_none() {
            return Err(PhoneNumberError::NoRegion);
        }
        let normalised = match trimmed.strip_prefix("00") {
            Some(rest) => format!("+{rest}"),
            None => trimmed.to_string(),
        };
        let parsed = phonenumber::parse(region.map(|r| r.0), &normalised)
            .map_err(|e| PhoneNumberError::Unparseable(e.to_string()))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneNumberError::Invalid);
        }
        Ok(PhoneNumber(
            parsed.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    /// Rebuilds a number that was validated before (read back from the store).
    pub fn from_trusted(e164: String) -> Self {
        PhoneNumber(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `+31612345678` -> `+316******78`: enough for a user to recognise
    /// their own number, not enough to harvest it.
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        let keep_head = 4.min(chars.len());
        let keep_tail = 2.min(chars.len().saturating_sub(keep_head));
        let hidden = chars.len() - keep_head - keep_tail;
        let mut out: String = chars[..keep_head].iter().collect();
        out.extend(std::iter::repeat_n('*', hidden));
        out.extend(chars[chars.len() - keep_tail..].iter());
        out
    }

    fn parsed(&self) -> Option<phonenumber::PhoneNumber> {
        phonenumber::parse(None, &self.0).ok()
    }

    /// What kind of line this is, per the libphonenumber metadata.
    pub fn kind(&self) -> NumberKind {
        use phonenumber::Type;
        let Some(n) = self.parsed() else {
            return NumberKind::Unknown;
        };
        match n.number_type(&phonenumber::metadata::DATABASE) {
            Type::Mobile => NumberKind::Mobile,
            Type::FixedLine => NumberKind::FixedLine,
            Type::FixedLineOrMobile => NumberKind::FixedLineOrMobile,
            Type::TollFree => NumberKind::TollFree,
            Type::PremiumRate => NumberKind::PremiumRate,
            Type::SharedCost => NumberKind::SharedCost,
            Type::Voip => NumberKind::Voip,
            Type::PersonalNumber => NumberKind::PersonalNumber,
            Type::Pager => NumberKind::Pager,
            Type::Uan => NumberKind::Uan,
            Type::Voicemail => NumberKind::Voicemail,
            _ => NumberKind::Unknown,
        }
    }

    /// The country calling code with its plus, e.g. `+31`.
    pub fn country_code(&self) -> String {
        match self.parsed() {
            Some(n) => format!("+{}", n.code().value()),
            None => String::from("+0"),
        }
    }

    /// Digits without the leading '+', for SIP Request-URI user parts.
    pub fn digits(&self) -> &str {
        self.0.trim_start_matches('+')
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nl() -> Option<Region> {
        Some("NL".parse().unwrap())
    }

    #[test]
    fn international_and_national_forms_normalise_to_e164() {
        for input in [
            "+31612345678",
            "0612345678",
            "06-12345678",
            "+31 6 1234 5678",
            "0031612345678",
        ] {
            let n = PhoneNumber::parse(input, nl()).unwrap();
            assert_eq!(n.as_str(), "+31612345678", "input {input}");
        }
    }

    #[test]
    fn national_form_needs_a_region() {
        assert_eq!(
            PhoneNumber::parse("0612345678", None),
            Err(PhoneNumberError::NoRegion)
        );
    }

    #[test]
    fn rejects_garbage_and_invalid_numbers() {
        assert_eq!(PhoneNumber::parse("", nl()), Err(PhoneNumberError::Empty));
        assert_eq!(
            PhoneNumber::parse("+31abc", nl()),
            Err(PhoneNumberError::BadCharacters)
        );
        assert_eq!(
            PhoneNumber::parse("+3161234+5678", nl()),
            Err(PhoneNumberError::BadCharacters)
        );
        assert!(PhoneNumber::parse("+31123", nl()).is_err());
        assert!(PhoneNumber::parse("+999123456789", nl()).is_err());
    }

    #[test]
    fn kinds_and_country_codes() {
        let mobile = PhoneNumber::parse("+31612345678", None).unwrap();
        assert_eq!(mobile.kind(), NumberKind::Mobile);
        assert_eq!(mobile.country_code(), "+31");
        let premium = PhoneNumber::parse("+319001234567", None).unwrap();
        assert_eq!(premium.kind(), NumberKind::PremiumRate);
        let fixed = PhoneNumber::parse("+31201234567", None).unwrap();
        assert_eq!(fixed.kind(), NumberKind::FixedLine);
        let us = PhoneNumber::parse("+12015550123", None).unwrap();
        assert_eq!(us.country_code(), "+1");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_output_is_e164(s in "\\PC{0,40}") {
            if let Ok(n) = PhoneNumber::parse(&s, nl()) {
                let e = n.as_str();
                proptest::prop_assert!(e.starts_with('+'));
                proptest::prop_assert!(e[1..].bytes().all(|b| b.is_ascii_digit()));
                proptest::prop_assert!((8..=16).contains(&e.len()));
            }
        }

        #[test]
        fn dutch_mobiles_normalise_and_reparse(rest in "[1-5][0-9]{7}") {
            let national = format!("06{rest}");
            let n = PhoneNumber::parse(&national, nl()).unwrap();
            proptest::prop_assert_eq!(n.as_str(), format!("+316{rest}"));
            // Parsing is idempotent on its own output.
            let again = PhoneNumber::parse(n.as_str(), None).unwrap();
            proptest::prop_assert_eq!(&again, &n);
            let masked = n.masked();
            proptest::prop_assert_eq!(masked.len(), n.as_str().len());
            proptest::prop_assert!(!masked.contains(&rest[..6]));
        }
    }

    #[test]
    fn masks_the_middle() {
        let n = PhoneNumber::parse("+31612345678", None).unwrap();
        assert_eq!(n.masked(), "+316******78");
        assert_eq!(n.masked().len(), n.as_str().len());
    }
}
