//! Checks that turn a parsed config into errors naming the key (`trunks[0].tls_ca`)
//! and the file.

use std::time::Duration;

use super::{ConfigError, Settings, Transport};
use crate::domain::Region;

/// The shortest `[database] retention` (and `otpdial purge --older-than`): nothing
/// that is still in use is that old, and no operator means less.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

impl Settings {
    fn validate_tls(&self, origin: &str) -> Result<(), ConfigError> {
        for (i, t) in self.trunks.iter().enumerate() {
            if t.tls_ca.is_empty() {
                continue;
            }
            let key = format!("trunks[{i}].tls_ca");
            let invalid = |message: String| ConfigError::Invalid {
                origin: origin.to_string(),
                key: key.clone(),
                message,
            };
            if t.proxy.transport != Transport::Tls {
                return Err(invalid(
                    "only used with transport=tls in the proxy URI".into(),
                ));
            }
            let pem = std::fs::read(&t.tls_ca)
                .map_err(|e| invalid(format!("cannot read {:?}: {e}", t.tls_ca)))?;
            if !holds_pem_certificates(&pem) {
                return Err(invalid(format!("{:?} holds no PEM certificate", t.tls_ca)));
            }
        }
        Ok(())
    }

    fn validate_qa(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        let qa = &self.qa;
        if qa.realm.trim().is_empty() {
            return Err(err("qa.realm".into(), "must not be empty".into()));
        }
        if qa.min_expires == 0 || qa.min_expires > qa.max_expires {
            return Err(err(
                "qa.min_expires".into(),
                format!(
                    "must be at least 1 and at most qa.max_expires ({})",
                    qa.max_expires
                ),
            ));
        }
        for (i, p) in qa.phones.iter().enumerate() {
            let valid_user = !p.username.is_empty()
                && p.username
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c));
            if !valid_user {
                return Err(err(
                    format!("qa.phones[{i}].username"),
                    format!("{:?}: letters, digits and - _ . + only", p.username),
                ));
            }
            match crate::domain::PhoneNumber::parse(&p.number, None) {
                Ok(n) if n.as_str() == p.number => {}
                _ => {
                    return Err(err(
                        format!("qa.phones[{i}].number"),
                        format!(
                            "{:?} is not a valid E.164 number such as +31612000001",
                            p.number
                        ),
                    ))
                }
            }
            if qa.phones[..i].iter().any(|q| q.username == p.username) {
                return Err(err(
                    format!("qa.phones[{i}].username"),
                    format!("{:?} is used twice", p.username),
                ));
            }
            if qa.phones[..i].iter().any(|q| q.number == p.number) {
                return Err(err(
                    format!("qa.phones[{i}].number"),
                    format!("{} is used twice", p.number),
                ));
            }
        }
        Ok(())
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        self.validate_qa(origin)?;
        self.validate_tls(origin)?;
        self.validate_canaries(origin)?;
        self.validate_routing(origin)?;
        if let Err((key, message)) = self.sip.dns_server_addrs() {
            return Err(err(key, message));
        }
        if self.media.realtime_priority > 99 {
            return Err(err(
                "media.realtime_priority".into(),
                format!(
                    "must be 0 (off) or a SCHED_FIFO priority 1..99, got {}",
                    self.media.realtime_priority
                ),
            ));
        }
        self.validate_verification(origin)?;
        self.validate_database(origin)?;
        self.validate_access(origin)?;
        self.validate_dialer(origin)?;
        self.validate_trunks(origin)?;
        Ok(())
    }

    /// The `[verification]` keys.
    fn validate_verification(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        let v = &self.verification;
        if !(4..=10).contains(&v.code_length) {
            return Err(err(
                "verification.code_length".into(),
                format!("must be 4..10, got {}", v.code_length),
            ));
        }
        if v.max_check_attempts == 0 {
            return Err(err(
                "verification.max_check_attempts".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=10).contains(&v.repeat) {
            return Err(err(
                "verification.repeat".into(),
                format!("must be 1..10, got {}", v.repeat),
            ));
        }
        if v.ttl < Duration::from_secs(30) || v.ttl > Duration::from_secs(24 * 3600) {
            return Err(err(
                "verification.ttl".into(),
                "must be between 30s and 24h".into(),
            ));
        }
        if !v.default_region.trim().is_empty() && v.default_region.parse::<Region>().is_err() {
            return Err(err(
                "verification.default_region".into(),
                format!(
                    "unknown region {:?} (ISO 3166 code such as NL)",
                    v.default_region
                ),
            ));
        }
        Ok(())
    }

    /// The `[database]` keys.
    fn validate_database(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        if !self.database.url.starts_with("sqlite:")
            && !self.database.url.starts_with("postgres:")
            && !self.database.url.starts_with("postgresql:")
        {
            return Err(err(
                "database.url".into(),
                "must start with sqlite: or postgres:".into(),
            ));
        }
        let db = &self.database;
        if !db.retention.is_zero() && db.retention < MIN_RETENTION {
            return Err(err(
                "database.retention".into(),
                "must be at least 1h (or 0s to keep everything), e.g. \"90d\"".into(),
            ));
        }
        if !db.retention.is_zero() && db.audit_retention < db.retention {
            return Err(err(
                "database.audit_retention".into(),
                "must not be shorter than database.retention".into(),
            ));
        }
        Ok(())
    }

    /// API keys, the toll-fraud screens and the risk hook.
    fn validate_access(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        for (i, k) in self.api.keys.iter().enumerate() {
            let hex = k.hash.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    format!("api.keys[{i}].hash"),
                    "must be \"sha256:\" followed by 64 hex digits (from `otpdial apikey new`)"
                        .into(),
                ));
            }
            if k.name.trim().is_empty() {
                return Err(err(
                    format!("api.keys[{i}].name"),
                    "must not be empty".into(),
                ));
            }
        }
        for p in &self.fraud.allowed_prefixes {
            if !is_e164_prefix(p) {
                return Err(err(
                    "fraud.allowed_prefixes".into(),
                    format!("{p:?} must be an E.164 prefix such as \"+31\""),
                ));
            }
        }
        for p in self.fraud.daily_budget.keys() {
            if !is_e164_prefix(p) {
                return Err(err(
                    "fraud.daily_budget".into(),
                    format!("{p:?} must be a country calling code such as \"+31\""),
                ));
            }
        }
        let hook = self.risk.hook_url.trim();
        if !(hook.is_empty() || hook.starts_with("https://") || hook.starts_with("http://")) {
            return Err(err(
                "risk.hook_url".into(),
                format!("must be an http(s) URL, got {hook:?}"),
            ));
        }
        if self.risk.timeout.is_zero() || self.risk.timeout > Duration::from_secs(30) {
            return Err(err(
                "risk.timeout".into(),
                "must be between 1ms and 30s".into(),
            ));
        }
        Ok(())
    }

    /// The `[dialer]` keys.
    fn validate_dialer(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        let d = &self.dialer;
        if !(1..=10).contains(&d.max_attempts) {
            return Err(err(
                "dialer.max_attempts".into(),
                format!("must be 1..10, got {}", d.max_attempts),
            ));
        }
        if d.lease < Duration::from_secs(3) || d.lease > Duration::from_secs(600) {
            return Err(err(
                "dialer.lease".into(),
                "must be between 3s and 10m".into(),
            ));
        }
        if d.shutdown_grace > Duration::from_secs(3600) {
            return Err(err(
                "dialer.shutdown_grace".into(),
                "must be at most 1h".into(),
            ));
        }
        Ok(())
    }

    /// Every `[[trunks]]` entry: breaker, names, prefixes, headers.
    fn validate_trunks(&self, origin: &str) -> Result<(), ConfigError> {
        let err = invalid_in(origin);
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            if t.breaker_failures == 0 {
                return Err(err(
                    format!("trunks[{i}].breaker_failures"),
                    "must be at least 1".into(),
                ));
            }
            if t.name.trim().is_empty() || !names.insert(t.name.as_str()) {
                return Err(err(
                    format!("trunks[{i}].name"),
                    format!("must be non-empty and unique, got {:?}", t.name),
                ));
            }
            if t.register && (t.username.is_none() || t.password.is_none()) {
                return Err(err(
                    format!("trunks[{i}].register"),
                    format!(
                        "trunk {:?} has register = true but no username and password/password_env",
                        t.name
                    ),
                ));
            }
            if !t.from.starts_with("sip:") && !t.from.starts_with("sips:") {
                return Err(err(
                    format!("trunks[{i}].from"),
                    format!("must be a sip: URI, got {:?}", t.from),
                ));
            }
            if t.codecs.is_empty() {
                return Err(err(
                    format!("trunks[{i}].codecs"),
                    "must not be empty".into(),
                ));
            }
            for p in &t.prefixes {
                if !is_e164_prefix(p) {
                    return Err(err(
                        format!("trunks[{i}].prefixes"),
                        format!("{p:?} must be an E.164 prefix such as \"+31\""),
                    ));
                }
            }
            if t.max_concurrent_calls == 0 {
                return Err(err(
                    format!("trunks[{i}].max_concurrent_calls"),
                    "must be at least 1".into(),
                ));
            }
            if !(60..=86_400).contains(&t.register_expires) {
                return Err(err(
                    format!("trunks[{i}].register_expires"),
                    format!("must be 60..=86400 seconds, got {}", t.register_expires),
                ));
            }
            let every = t.options_interval;
            if !every.is_zero() && every < Duration::from_secs(5) {
                return Err(err(
                    format!("trunks[{i}].options_interval"),
                    "must be 0s (off) or at least 5s".into(),
                ));
            }
            for (key, value) in [
                ("p_asserted_identity", &t.p_asserted_identity),
                ("privacy", &t.privacy),
            ] {
                if value
                    .as_deref()
                    .is_some_and(|v| v.trim().is_empty() || v.contains(['\r', '\n']))
                {
                    return Err(err(
                        format!("trunks[{i}].{key}"),
                        "must be a non-empty single-line header value".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `+` and at least one digit: an E.164 prefix or country calling code.
pub(super) fn is_e164_prefix(p: &str) -> bool {
    p.strip_prefix('+')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Makes the [`ConfigError::Invalid`] of one config file, naming the key.
fn invalid_in(origin: &str) -> impl Fn(String, String) -> ConfigError + '_ {
    move |key, message| ConfigError::Invalid {
        origin: origin.to_string(),
        key,
        message,
    }
}

/// Whether `pem` parses as PEM and holds at least one certificate (a trunk's `tls_ca`);
/// the same reading the TLS client makes of it later.
fn holds_pem_certificates(pem: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .is_ok_and(|certs| !certs.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SipTarget;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate("defaults").unwrap();
    }

    #[test]
    fn bad_value_is_named() {
        let e = Settings::from_toml("[verification]\ncode_length = 3\n").unwrap_err();
        assert!(e.to_string().contains("verification.code_length"), "{e}");
        let e = Settings::from_toml("[limits]\nper_number = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("per_number"), "{e}");
    }

    #[test]
    fn trunk_sip_keys_are_validated_by_name() {
        let base = "[[trunks]]\nname = \"a\"\nproxy = \"sip:127.0.0.1:5070;transport=tcp\"\nfrom = \"sip:1@x\"\n";
        let s = Settings::from_toml(&format!(
            "{base}p_asserted_identity = \"<sip:+31508200000@x>\"\nprivacy = \"id\"\nregister_expires = 600\noptions_interval = \"30s\"\n"
        ))
        .unwrap();
        let t = &s.trunks[0];
        assert_eq!(t.proxy.transport, Transport::Tcp);
        assert_eq!(t.privacy.as_deref(), Some("id"));
        assert_eq!(t.options_interval, Duration::from_secs(30));
        let e = Settings::from_toml(&format!("{base}register_expires = 10\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].register_expires"), "{e}");
        let e = Settings::from_toml(&format!("{base}options_interval = \"1s\"\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].options_interval"), "{e}");
        let e = Settings::from_toml(&format!("{base}privacy = \"\"\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].privacy"), "{e}");
        let d = Settings::from_toml(base).unwrap();
        assert_eq!(d.trunks[0].register_expires, 3600);
        assert!(
            d.trunks[0].options_interval.is_zero(),
            "keepalive off by default"
        );
        assert!(d.trunks[0].credentials().is_none());
    }

    #[test]
    fn dns_servers_must_be_ip_and_port() {
        let s = Settings::from_toml("[sip]\ndns_servers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n")
            .unwrap();
        assert_eq!(s.sip.dns_server_addrs().unwrap().len(), 2);
        assert!(Settings::default().sip.dns_servers.is_empty());
        for bad in ["127.0.0.1", "dns.example:53", "1.2.3.4:99999"] {
            let e = Settings::from_toml(&format!(
                "[sip]\ndns_servers = [\"127.0.0.1:53\", \"{bad}\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains("sip.dns_servers[1]") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn media_realtime_priority_is_checked() {
        let s = Settings::from_toml("[media]\nrealtime_priority = 50\n").unwrap();
        assert_eq!(s.media.realtime_priority, 50);
        assert_eq!(Settings::default().media.realtime_priority, 0);
        let e = Settings::from_toml("[media]\nrealtime_priority = 120\n").unwrap_err();
        assert!(e.to_string().contains("media.realtime_priority"), "{e}");
    }

    #[test]
    fn register_without_credentials_is_an_error() {
        let e = Settings::from_toml(
            "[[trunks]]\nname = \"a\"\nproxy = \"sip:127.0.0.1:5070\"\nregister = true\nfrom = \"sip:1@x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("trunks[0].register"), "{e}");
    }

    #[test]
    fn tls_trunks_default_to_5061_and_check_their_ca_file() {
        let t: SipTarget = "sip:sip.example.com;transport=tls".parse().unwrap();
        assert_eq!((t.port, t.transport), (5061, Transport::Tls));
        assert_eq!(t.to_string(), "sip:sip.example.com;transport=tls");
        let base = "[[trunks]]\nname = \"t\"\nfrom = \"sip:+31508200000@x\"\n";
        let err = Settings::from_toml(&format!(
            "{base}proxy = \"sip:x.example;transport=tls\"\ntls_ca = \"/nonexistent.pem\""
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("trunks[0].tls_ca") && err.contains("cannot read"),
            "{err}"
        );
        let err = Settings::from_toml(&format!(
            "{base}proxy = \"sip:x.example\"\ntls_ca = \"/etc/hostname\""
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("only used with transport=tls"), "{err}");
    }
}
