//! Value types of settings: secrets, durations, rate limits, port ranges, SIP
//! targets and the small enums keys take.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `sip.unknown_sources`: `"drop"` or `"403"` (also as the number 403, as an
/// environment override gives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSourcesSetting {
    #[default]
    Drop,
    Forbid,
}

impl<'de> Deserialize<'de> for UnknownSourcesSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) if t.eq_ignore_ascii_case("drop") => Ok(Self::Drop),
            Raw::Text(t) if t.trim() == "403" => Ok(Self::Forbid),
            Raw::Number(403) => Ok(Self::Forbid),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "must be \"drop\" or \"403\", got {t:?}"
            ))),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "must be \"drop\" or \"403\", got {n}"
            ))),
        }
    }
}

impl Serialize for UnknownSourcesSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Self::Drop => "drop",
            Self::Forbid => "403",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Verify,
    Admin,
}

/// What the pre-dial risk hook (or its absence of a usable answer) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskDecision {
    Allow,
    Deny,
}

/// Outcomes of a call round that `[dialer] retry_on` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    NoAnswer,
    Busy,
    Rejected,
    Failed,
}

/// `[[trunks]] srtp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpMode {
    #[default]
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum CodecName {
    #[serde(rename = "PCMA")]
    Pcma,
    #[serde(rename = "PCMU")]
    Pcmu,
}

/// Secrets (trunk and QA phone passwords, webhook and risk keys) are `secrecy`'s
/// `SecretString`: zeroed on drop, `[REDACTED]` in `Debug`, read only through an
/// explicit `expose_secret()`, and not `Serialize` by themselves, so each secret
/// field says how it is printed ([`mask_secret`]).
pub use secrecy::{ExposeSecret, SecretString};

/// Prints a set secret as `***` (what `otpdial config check` shows), an unset one
/// as absent.
pub(super) fn mask_secret<S: Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

/// Prints a URL with the secrets it may hold masked (for `database.url` and
/// `risk.hook_url`).
pub(super) fn mask_url_secrets<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&masked_url(url))
}

/// `url` with the password of its user info (`postgres://user:***@host/db`) and the
/// values of query parameters that name a password, secret, token or key
/// (`?password=***`, as PostgreSQL URLs may carry one) replaced by `***`.
pub fn masked_url(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The last `@` ends the user info, so a password holding `@` or `/` is masked
    // whole.
    let mut out = match (before_query.find("://"), before_query.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &before_query[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    &before_query[..scheme_end + 3],
                    &before_query[at..]
                ),
                None => before_query.to_owned(),
            }
        }
        _ => before_query.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "sig", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

/// `count/window`, e.g. `3/10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, per) = s
            .split_once('/')
            .ok_or_else(|| format!("rate limit {s:?} must look like \"3/10m\""))?;
        let count = count
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("rate limit {s:?}: count must be a whole number"))?;
        let per = humantime::parse_duration(per.trim())
            .map_err(|e| format!("rate limit {s:?}: bad window: {e}"))?;
        if count == 0 || per.is_zero() {
            return Err(format!("rate limit {s:?}: count and window must be > 0"));
        }
        Ok(RateLimit { count, per })
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!(
            "{}/{}",
            self.count,
            humantime::format_duration(self.per)
        ))
    }
}

/// `first-last` UDP ports for RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("port range {s:?} must look like \"20000-29999\""))?;
        let first = a
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("port range {s:?}: bad first port"))?;
        let last = b
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("port range {s:?}: bad last port"))?;
        if first == 0 || last < first {
            return Err(format!("port range {s:?}: need 0 < first <= last"));
        }
        Ok(PortRange { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}-{}", self.first, self.last))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TCP with TLS (RFC 3261 §26.2); the certificate is verified against the trunk's
    /// host name and `tls_ca` (or the public roots).
    Tls,
}

/// A trunk proxy: `sip:host[:port][;transport=udp|tcp|tls]` (port 5060, or 5061 with TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    /// The URI named the port: no SRV/NAPTR look-up (RFC 3263 §4.2).
    pub explicit_port: bool,
    /// The URI had a `transport=` parameter: no NAPTR, SRV for that transport only.
    pub explicit_transport: bool,
}

impl SipTarget {
    /// The port a URI without one means for `transport` (RFC 3261 §19.1.2).
    pub fn default_port(transport: Transport) -> u16 {
        match transport {
            Transport::Tls => 5061,
            Transport::Udp | Transport::Tcp => 5060,
        }
    }

    /// Whether the host is an IP literal (no DNS at all).
    pub fn is_ip_literal(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// `host`, bracketed when it is an IPv6 literal.
    pub fn host_for_uri(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host[:port]` as written: the port only when it was given (or set), so a URI
    /// without one keeps meaning RFC 3263 resolution.
    pub fn uri_host_port(&self) -> String {
        if self.explicit_port || self.port != Self::default_port(self.transport) {
            self.host_port()
        } else {
            self.host_for_uri()
        }
    }

    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for SipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        };
        write!(f, "sip:{}", self.uri_host_port())?;
        if self.explicit_transport || self.transport != Transport::Udp {
            write!(f, ";transport={t}")?;
        }
        Ok(())
    }
}

impl FromStr for SipTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("sip:")
            .ok_or_else(|| format!("{s:?} must be a sip: URI such as \"sip:host:5060\""))?;
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let mut transport = Transport::Udp;
        let mut explicit_transport = false;
        for p in parts {
            if p.starts_with("transport=") {
                explicit_transport = true;
            }
            match p.split_once('=') {
                Some(("transport", "udp" | "UDP")) => transport = Transport::Udp,
                Some(("transport", "tcp" | "TCP")) => transport = Transport::Tcp,
                Some(("transport", "tls" | "TLS")) => transport = Transport::Tls,
                Some(("transport", t)) => {
                    return Err(format!(
                        "{s:?}: unsupported transport {t:?} (udp, tcp or tls)"
                    ))
                }
                _ => {}
            }
        }
        let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: junk after IPv6 address")),
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        {
            return Err(format!("{s:?}: bad host {host:?}"));
        }
        let explicit_port = port.is_some();
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: bad port {p:?}"))?,
            None => Self::default_port(transport),
        };
        Ok(SipTarget {
            host,
            explicit_port,
            port,
            transport,
            explicit_transport,
        })
    }
}

impl<'de> Deserialize<'de> for SipTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for SipTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_printed_without_their_secrets() {
        for (url, shown) in [
            (
                "postgres://otpdial:Db-Pass@db.example:5432/otpdial",
                "postgres://otpdial:***@db.example:5432/otpdial",
            ),
            (
                "postgres://otpdial:p@ss:w@rd@db/otpdial?sslmode=require",
                "postgres://otpdial:***@db/otpdial?sslmode=require",
            ),
            (
                "postgres://db/otpdial?user=otpdial&password=Q-Pass&sslpassword=K-Pass",
                "postgres://db/otpdial?user=otpdial&password=***&sslpassword=***",
            ),
            (
                "https://hook:H-Pass@risk.example/check?token=T-1&region=nl",
                "https://hook:***@risk.example/check?token=***&region=nl",
            ),
            (
                "postgres://otpdial:pa/ss@db/otpdial",
                "postgres://otpdial:***@db/otpdial",
            ),
            (
                "postgres://otpdial@db/otpdial",
                "postgres://otpdial@db/otpdial",
            ),
            ("sqlite://otpdial.db", "sqlite://otpdial.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("", ""),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
    }

    #[test]
    fn sip_target_parses() {
        let t: SipTarget = "sip:sip.provider.example:5080;transport=tcp"
            .parse()
            .unwrap();
        assert_eq!(t.host, "sip.provider.example");
        assert_eq!(t.port, 5080);
        assert_eq!(t.transport, Transport::Tcp);
        let t: SipTarget = "sip:[::1]".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5060));
        assert!("http://x".parse::<SipTarget>().is_err());
        assert!("sip:host:99999".parse::<SipTarget>().is_err());
        assert!("sip:ho st".parse::<SipTarget>().is_err());
    }

    #[test]
    fn sip_target_remembers_what_was_written() {
        let t: SipTarget = "sip:sip.provider.example".parse().unwrap();
        assert_eq!(
            (t.port, t.explicit_port, t.explicit_transport),
            (5060, false, false)
        );
        assert!(!t.is_ip_literal());
        assert_eq!(t.to_string(), "sip:sip.provider.example");
        let t: SipTarget = "sip:sip.provider.example;transport=tcp".parse().unwrap();
        assert_eq!((t.explicit_port, t.explicit_transport), (false, true));
        assert_eq!(t.to_string(), "sip:sip.provider.example;transport=tcp");
        let t: SipTarget = "sip:[::1]:5070".parse().unwrap();
        assert!(t.explicit_port && t.is_ip_literal());
        assert_eq!(t.to_string(), "sip:[::1]:5070");
        assert_eq!(t.to_string().parse::<SipTarget>().unwrap(), t);
    }

    #[test]
    fn rate_limits_and_port_ranges_parse() {
        let r: RateLimit = "3/10m".parse().unwrap();
        assert_eq!((r.count, r.per), (3, Duration::from_secs(600)));
        assert!("0/1m".parse::<RateLimit>().is_err());
        let p: PortRange = "20000-20010".parse().unwrap();
        assert_eq!((p.first, p.last), (20000, 20010));
        assert!("30-20".parse::<PortRange>().is_err());
    }
}

/// Serde for long durations (`[database] retention`): read as humantime (`90d`,
/// `1y`, `36h`), written as whole days or hours when they are (`"90d"`, not
/// humantime's `"2months 29days 2h 52m 48s"`).
pub mod days {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let secs = d.as_secs();
        let text = if d.subsec_nanos() == 0 && secs > 0 && secs % 86_400 == 0 {
            format!("{}d", secs / 86_400)
        } else if d.subsec_nanos() == 0 && secs > 0 && secs % 3600 == 0 {
            format!("{}h", secs / 3600)
        } else {
            humantime::format_duration(*d).to_string()
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}: write a duration such as \"90d\", \"36h\" or \"1y\""
            ))
        })
    }
}
