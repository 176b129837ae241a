//! The `Settings` sections as the TOML file spells them, and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::*;
use super::NumberKind;
use crate::domain::Region;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub sip: SipSettings,
    pub api: ApiSettings,
    pub verification: VerificationSettings,
    pub webhooks: WebhookSettings,
    pub limits: LimitSettings,
    pub fraud: FraudSettings,
    pub prompts: PromptSettings,
    pub media: MediaSettings,
    pub dialer: DialerSettings,
    pub risk: RiskSettings,
    pub trunks: Vec<TrunkSettings>,
    pub qa: QaSettings,
    pub canaries: Vec<super::CanaryEntry>,
    pub canary: super::CanarySettings,
    /// Caller IDs by destination prefix (SPEC §7).
    pub caller_ids: Vec<super::CallerIdPool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Printed with its password masked.
    #[serde(serialize_with = "mask_url_secrets")]
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a database connection before it is
    /// answered 503 (database down, or every connection busy).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// GDPR data minimisation: finished verifications, their calls, attempts and
    /// webhook deliveries, and routine audit rows older than this are deleted; 0 =
    /// keep everything (not recommended).
    #[serde(with = "super::values::days")]
    pub retention: Duration,
    /// Audit rows that are evidence of abuse stay this long, their numbers and user
    /// ids replaced by a keyed hash once older than `retention`.
    #[serde(with = "super::values::days")]
    pub audit_retention: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://otpdial.db".into(),
            max_connections: 8,
            acquire_timeout: Duration::from_millis(800),
            retention: Duration::from_secs(90 * 24 * 3600),
            audit_retention: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSettings {
    pub listen: SocketAddr,
    /// Public IP or host name for Contact and SDP when behind NAT; empty = the
    /// address of the interface that routes to the trunk.
    pub external_address: String,
    pub rtp_ports: PortRange,
    /// User-Agent (requests) and Server (responses) value; empty = header omitted.
    pub server_header: Option<String>,
    /// Deprecated alias of `server_header`, used when that is not set.
    pub user_agent: Option<String>,
    /// Requests from neither a trunk nor a registered QA phone: `drop` (nothing back)
    /// or `403` (a uniform 403 Forbidden).
    pub unknown_sources: UnknownSourcesSetting,
    /// Failed authentications (and requests over `request_limit`) from one source
    /// within `ban_time` that ban it for `ban_time`; 0 = never ban.
    pub ban_after_failures: u32,
    #[serde(with = "humantime_serde")]
    pub ban_time: Duration,
    /// Requests per source (trunks excepted) and window, e.g. `50/1s`.
    pub request_limit: RateLimit,
    /// DNS servers (`"IP:port"`) that resolve trunk names (RFC 3263: NAPTR, SRV,
    /// A/AAAA); empty = the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<String>,
}

impl SipSettings {
    /// `dns_servers` as addresses; the error names the entry (`sip.dns_servers[1]`).
    pub fn dns_server_addrs(&self) -> Result<Vec<SocketAddr>, (String, String)> {
        self.dns_servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.trim().parse::<SocketAddr>().map_err(|_| {
                    (
                        format!("sip.dns_servers[{i}]"),
                        format!("{s:?} is not IP:port, such as \"127.0.0.1:53\" or \"[::1]:53\""),
                    )
                })
            })
            .collect()
    }

    /// The User-Agent/Server value in effect (`server_header`, else the deprecated
    /// `user_agent`, else none).
    pub fn server_header_value(&self) -> String {
        self.server_header
            .clone()
            .or_else(|| self.user_agent.clone())
            .unwrap_or_default()
    }
}

/// `[qa]`: the registrar softphones register to, so that QA can make the gateway ring
/// them (SPEC §6).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QaSettings {
    /// Digest realm of the registrar's challenges.
    pub realm: String,
    /// Shorter registrations are refused with 423 (Min-Expires).
    pub min_expires: u32,
    /// Longer registrations are shortened to this.
    pub max_expires: u32,
    /// How long a QA phone may ring before the call is given up (no_answer).
    #[serde(with = "humantime_serde")]
    pub ring_timeout: Duration,
    pub phones: Vec<QaPhoneSettings>,
}

impl Default for QaSettings {
    fn default() -> Self {
        Self {
            realm: "otpdial-qa".into(),
            min_expires: 60,
            max_expires: 3600,
            ring_timeout: Duration::from_secs(30),
            phones: Vec::new(),
        }
    }
}

impl QaSettings {
    /// The QA phone that answers for `number` (E.164), if any.
    pub fn phone_for(&self, number: &str) -> Option<&QaPhoneSettings> {
        self.phones.iter().find(|p| p.number == number)
    }
}

/// One `[[qa.phones]]` entry: a softphone account and the number it answers for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QaPhoneSettings {
    pub username: String,
    /// Read from `password_env` at start-up; never written in the file.
    #[serde(default, skip_deserializing, serialize_with = "mask_secret")]
    pub password: Option<SecretString>,
    pub password_env: String,
    /// Verifications to this number (E.164) ring the phone instead of a trunk.
    pub number: String,
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            external_address: String::new(),
            rtp_ports: PortRange {
                first: 20000,
                last: 29999,
            },
            server_header: None,
            user_agent: None,
            unknown_sources: UnknownSourcesSetting::Drop,
            ban_after_failures: 10,
            ban_time: Duration::from_secs(600),
            request_limit: RateLimit {
                count: 50,
                per: Duration::from_secs(1),
            },
            dns_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub keys: Vec<ApiKeySettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub name: String,
    /// `sha256:<64 hex>` of the bearer token.
    pub hash: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerificationSettings {
    pub code_length: usize,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub max_check_attempts: u32,
    pub default_locale: String,
    pub repeat: u32,
    pub require_keypress: bool,
    pub allow_unregistered_numbers: bool,
    /// Refuse numbers that libphonenumber does not know as mobile.
    pub mobile_only: bool,
    pub default_region: String,
    pub code_key_env: String,
    /// The prompt pack by E.164 prefix of the number called (longest match), when
    /// neither the request nor the registered number names one.
    pub locale_by_prefix: std::collections::BTreeMap<String, String>,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        Self {
            code_length: 6,
            ttl: Duration::from_secs(600),
            max_check_attempts: 5,
            default_locale: "nl".into(),
            repeat: 3,
            require_keypress: false,
            allow_unregistered_numbers: false,
            mobile_only: false,
            default_region: "NL".into(),
            code_key_env: "OTPDIAL_CODE_KEY".into(),
            locale_by_prefix: Default::default(),
        }
    }
}

impl VerificationSettings {
    pub fn region(&self) -> Option<Region> {
        if self.default_region.trim().is_empty() {
            None
        } else {
            self.default_region.parse().ok()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    pub secret_env: String,
    /// First retry delay; doubles with each try (at most 5 tries).
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Resolved from `secret_env` at load; never printed.
    #[serde(skip)]
    pub secret: Option<SecretString>,
    /// Let `callback_url` reach loopback, private, link-local (metadata)
    /// and other internal addresses. Off: such a URL is refused with 422.
    pub allow_private_targets: bool,
    /// Let `callback_url` be plain http. Off: https only.
    pub allow_http: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret_env: "OTPDIAL_WEBHOOK_SECRET".into(),
            backoff: Duration::from_secs(2),
            secret: None,
            allow_private_targets: false,
            allow_http: false,
        }
    }
}

impl WebhookSettings {
    pub fn targets(&self) -> crate::egress::TargetPolicy {
        crate::egress::TargetPolicy {
            allow_http: self.allow_http,
            allow_private: self.allow_private_targets,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub per_number: RateLimit,
    pub per_user: RateLimit,
    pub per_api_key: RateLimit,
    /// Wrong code checks per user (or per number, for verifications without
    /// a user) across all their verifications; past 5 each try waits a
    /// doubling back-off (1 s … 5 min), at the limit checks are refused
    /// (429) until the window moves.
    pub wrong_checks_per_user: RateLimit,
    /// The first back-off after five wrong checks, doubling per further
    /// one (at most 5 min); `0s` = no back-off, only the limit.
    #[serde(with = "humantime_serde")]
    pub wrong_check_backoff: Duration,
    /// Calls placed per second across all instances (the dialer paces
    /// itself; requests are not refused for it).
    pub global_calls_per_second: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_number: RateLimit {
                count: 3,
                per: Duration::from_secs(600),
            },
            per_user: RateLimit {
                count: 5,
                per: Duration::from_secs(3600),
            },
            per_api_key: RateLimit {
                count: 600,
                per: Duration::from_secs(60),
            },
            wrong_checks_per_user: RateLimit {
                count: 10,
                per: Duration::from_secs(3600),
            },
            wrong_check_backoff: Duration::from_secs(1),
            global_calls_per_second: 20,
        }
    }
}

/// Toll-fraud controls: which destinations may be called at all.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudSettings {
    /// E.164 prefixes that may be called; empty = the trunks' `prefixes`
    /// (and everything if some trunk routes everything).
    pub allowed_prefixes: Vec<String>,
    /// libphonenumber number types that may be called.
    pub allowed_number_types: Vec<NumberKind>,
    /// Calls per country calling code per UTC day, unless listed in
    /// `daily_budget`; 0 = unlimited.
    pub default_daily_budget: u64,
    /// Per country calling code (`"+31" = 20000`).
    pub daily_budget: std::collections::BTreeMap<String, u64>,
}

impl Default for FraudSettings {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            allowed_number_types: vec![
                NumberKind::Mobile,
                NumberKind::FixedLine,
                NumberKind::FixedLineOrMobile,
            ],
            default_daily_budget: 10_000,
            daily_budget: Default::default(),
        }
    }
}

impl Settings {
    /// The destination prefixes that may be called: `fraud.allowed_prefixes`
    /// or, when empty, the trunks' prefixes. `None` = no prefix restriction.
    pub fn allowed_prefixes(&self) -> Option<Vec<String>> {
        if !self.fraud.allowed_prefixes.is_empty() {
            return Some(self.fraud.allowed_prefixes.clone());
        }
        if self.trunks.is_empty() || self.trunks.iter().any(|t| t.prefixes.is_empty()) {
            return None;
        }
        let mut all: Vec<String> = self
            .trunks
            .iter()
            .flat_map(|t| t.prefixes.clone())
            .collect();
        all.sort();
        all.dedup();
        Some(all)
    }

    /// Calls allowed today to numbers with this country calling code (`"+31"`).
    pub fn daily_budget_for(&self, country: &str) -> u64 {
        self.fraud
            .daily_budget
            .get(country)
            .copied()
            .unwrap_or(self.fraud.default_daily_budget)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptSettings {
    /// Directory of prompt packs (`<dir>/<locale>/pack.toml`); unset = the
    /// `en` and `nl` packs built into the binary.
    pub dir: Option<PathBuf>,
}

/// `[media]`: the RTP pacer thread.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// 0 = normal scheduling; 1..=99 = SCHED_FIFO at this priority for the
    /// RTP pacer thread (needs CAP_SYS_NICE or RLIMIT_RTPRIO; without it the
    /// gateway warns and runs at normal priority).
    pub realtime_priority: u8,
}

/// `[risk]` (SPEC §6): a signed POST before each dial (SIM-swap, porting,
/// deny-list checks); its answer decides whether the number is called.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskSettings {
    /// Empty: no hook, every call is placed.
    #[serde(serialize_with = "mask_url_secrets")]
    pub hook_url: String,
    /// How long to wait for the answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The decision when no usable answer comes in time (timeout, error,
    /// unsigned or badly signed answer).
    pub on_timeout: RiskDecision,
    /// Environment variable with the HMAC key that signs requests and that
    /// the hook signs its answers with.
    pub secret_env: String,
    #[serde(skip)]
    pub secret: Option<SecretString>,
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            hook_url: String::new(),
            timeout: Duration::from_millis(1500),
            on_timeout: RiskDecision::Allow,
            secret_env: "OTPDIAL_RISK_SECRET".into(),
            secret: None,
        }
    }
}

/// `[dialer]` (SPEC §6): retries, take-over of calls whose instance died,
/// capacity, and what a shutdown waits for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialerSettings {
    /// Call rounds per verification, across numbers and retries (a round
    /// may itself fail over across trunks).
    pub max_attempts: u32,
    /// Round outcomes that may be retried when `max_attempts > 1`.
    pub retry_on: Vec<RetryOn>,
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// A retry calls the user's next registered number (primary first).
    pub next_number: bool,
    /// On SIGTERM/SIGINT, calls in progress may finish this long before
    /// they are hung up.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a claimed call stays owned without renewal. A call whose
    /// instance died is taken over once its lease ran out.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Calls in progress on this instance over all trunks; 0 = the sum of
    /// the trunks' `max_concurrent_calls`.
    pub max_concurrent_calls: u32,
    /// How the trunks that carry a number are ordered: `priority` or `quality`.
    pub routing: super::RoutingMode,
    /// The recent past whose answer rates `routing = "quality"` compares.
    #[serde(with = "humantime_serde")]
    pub quality_window: Duration,
    /// With `routing = "quality"`: the share of calls that go to a trunk other than
    /// the best, so that a trunk that recovered is noticed.
    pub explore_share: f64,
}

impl Default for DialerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            retry_on: vec![RetryOn::NoAnswer, RetryOn::Busy],
            retry_delay: Duration::from_secs(30),
            next_number: true,
            shutdown_grace: Duration::from_secs(30),
            lease: Duration::from_secs(20),
            max_concurrent_calls: 0,
            routing: super::RoutingMode::Priority,
            quality_window: Duration::from_secs(3600),
            explore_share: 0.05,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSettings {
    pub name: String,
    pub proxy: SipTarget,
    #[serde(default)]
    pub register: bool,
    #[serde(default)]
    pub username: Option<String>,
    /// Digest user name when it differs from `username`.
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default, serialize_with = "mask_secret")]
    pub password: Option<SecretString>,
    #[serde(default)]
    pub password_env: Option<String>,
    pub from: String,
    #[serde(default)]
    pub from_display: Option<String>,
    #[serde(default = "default_codecs")]
    pub codecs: Vec<CodecName>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default = "default_max_calls")]
    pub max_concurrent_calls: u32,
    #[serde(default = "default_ring_timeout", with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// `P-Asserted-Identity` value for INVITEs (RFC 3325), e.g. `<sip:+31508200000@host>`.
    #[serde(default)]
    pub p_asserted_identity: Option<String>,
    /// `Privacy` value for INVITEs (RFC 3323/3325), e.g. `id` or `none`.
    #[serde(default)]
    pub privacy: Option<String>,
    /// Registration lifetime asked for, in seconds (the registrar may change it).
    #[serde(default = "default_register_expires")]
    pub register_expires: u32,
    /// OPTIONS keepalive period; `0s` (the default) turns it off. Off by default because
    /// some carriers rate-limit or blocklist unsolicited OPTIONS.
    #[serde(default = "default_options_interval", with = "humantime_serde")]
    pub options_interval: Duration,
    /// Consecutive failures (5xx, 408, no response, transport error) after
    /// which the trunk is marked down and tried only when no other can.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// A down trunk comes back when OPTIONS succeed again; without OPTIONS
    /// keepalive it gets one trial call after this long.
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// With `transport=tls`: PEM file of the CA(s) the trunk's certificate must chain
    /// to; empty = the public web PKI roots (Mozilla's, built in).
    #[serde(default)]
    pub tls_ca: String,
    /// Media encryption on this trunk (RFC 3711 SRTP keyed by SDES, RFC 4568): `off`
    /// sends plain RTP; `optional` offers SRTP and falls back to RTP when the answer
    /// has no usable key; `required` fails the attempt without a usable key.
    #[serde(default)]
    pub srtp: SrtpMode,
    /// Price of a minute on this trunk (any currency, the same for every trunk):
    /// `routing = "quality"` breaks near-ties in answer rate by it; unset = 0.
    #[serde(default)]
    pub cost_per_minute: Option<f64>,
}

fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(30)
}

fn default_register_expires() -> u32 {
    3600
}
fn default_options_interval() -> Duration {
    Duration::ZERO
}

fn default_codecs() -> Vec<CodecName> {
    vec![CodecName::Pcma, CodecName::Pcmu]
}
fn default_priority() -> u32 {
    10
}
fn default_max_calls() -> u32 {
    100
}
fn default_ring_timeout() -> Duration {
    Duration::from_secs(30)
}

impl TrunkSettings {
    /// Digest credentials: `auth_username` (else `username`) and the password, when both
    /// are set. None means an IP-authenticated trunk.
    pub fn credentials(&self) -> Option<crate::sip::digest::Credentials> {
        let user = self.auth_username.as_ref().or(self.username.as_ref())?;
        let password = self.password.as_ref()?;
        Some(crate::sip::digest::Credentials {
            username: user.clone(),
            password: password.expose_secret().to_string(),
        })
    }

    /// Whether this trunk carries calls to `e164` (by its prefixes).
    pub fn routes(&self, e164: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| e164.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_as_people_write_them() {
        let s = Settings::from_toml(
            "[dialer]\nlease = \"1m 30s\"\nretry_delay = \"250ms\"\n[verification]\nttl = \"2h\"",
        )
        .unwrap();
        assert_eq!(s.dialer.lease, Duration::from_secs(90));
        assert_eq!(s.dialer.retry_delay, Duration::from_millis(250));
        let shown = toml::to_string(&s).unwrap();
        for line in [
            "lease = \"1m 30s\"",
            "retry_delay = \"250ms\"",
            "ttl = \"2h\"",
        ] {
            assert!(shown.contains(line), "{line} not in {shown}");
        }
        let e = Settings::from_toml("[dialer]\nlease = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("dialer.lease"), "{e}");
        let e = Settings::from_toml("[dialer]\nlease = 20").unwrap_err();
        assert!(e.to_string().contains("dialer.lease"), "{e}");
    }

    #[test]
    fn sip_listener_policy_keys() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.sip.unknown_sources, UnknownSourcesSetting::Drop);
        assert_eq!(
            s.sip.server_header_value(),
            "",
            "no product name by default"
        );
        assert_eq!(
            (
                s.sip.ban_after_failures,
                s.sip.ban_time,
                s.sip.request_limit.count
            ),
            (10, Duration::from_secs(600), 50)
        );
        let s = Settings::from_toml(
            "[sip]\nunknown_sources = \"403\"\nban_time = \"1h\"\nuser_agent = \"pbx\"",
        )
        .unwrap();
        assert_eq!(s.sip.unknown_sources, UnknownSourcesSetting::Forbid);
        assert_eq!(s.sip.ban_time, Duration::from_secs(3600));
        assert_eq!(s.sip.server_header_value(), "pbx", "deprecated alias");
        let s = Settings::from_toml(
            "[sip]\nunknown_sources = 403\nserver_header = \"\"\nuser_agent = \"pbx\"",
        )
        .unwrap();
        assert_eq!(s.sip.unknown_sources, UnknownSourcesSetting::Forbid);
        assert_eq!(s.sip.server_header_value(), "", "server_header wins");
        let err = Settings::from_toml("[sip]\nunknown_sources = \"reject\"").unwrap_err();
        assert!(err.to_string().contains("unknown_sources"), "{err}");
    }
}
