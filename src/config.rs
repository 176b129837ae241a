//! Typed settings (SPEC §2): a TOML file layered with `OTPDIAL_*` environment
//! overrides (`OTPDIAL_DATABASE__URL` sets `database.url`), secrets read from
//! the variables named by `*_env` keys, and validation whose messages name
//! the key and the file. Depends only on `domain`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::domain::NumberKind;
use crate::domain::Region;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config error: {0}")]
    Parse(String),
    #[error("config error in {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

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
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a database connection before it is
    /// answered 503 (database down, or every connection busy).
    pub acquire_timeout: HumanDuration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://otpdial.db".into(),
            max_connections: 8,
            acquire_timeout: HumanDuration(Duration::from_millis(800)),
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
    pub ban_time: HumanDuration,
    /// Requests per source (trunks excepted) and window, e.g. `50/1s`.
    pub request_limit: RateLimit,
}

impl SipSettings {
    /// The User-Agent/Server value in effect (`server_header`, else the deprecated
    /// `user_agent`, else none).
    pub fn server_header_value(&self) -> String {
        self.server_header
            .clone()
            .or_else(|| self.user_agent.clone())
            .unwrap_or_default()
    }

    /// The listener policy these settings describe.
    pub fn policy(&self) -> crate::sip::policy::PolicyConfig {
        crate::sip::policy::PolicyConfig {
            unknown_sources: match self.unknown_sources {
                UnknownSourcesSetting::Drop => crate::sip::policy::UnknownSources::Drop,
                UnknownSourcesSetting::Forbid => crate::sip::policy::UnknownSources::Forbid,
            },
            ban_after_failures: self.ban_after_failures,
            ban_time: self.ban_time.0,
            request_limit: self.request_limit.count,
            request_window: self.request_limit.per,
        }
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
    pub ring_timeout: HumanDuration,
    pub phones: Vec<QaPhoneSettings>,
}

impl Default for QaSettings {
    fn default() -> Self {
        Self {
            realm: "otpdial-qa".into(),
            min_expires: 60,
            max_expires: 3600,
            ring_timeout: HumanDuration(Duration::from_secs(30)),
            phones: Vec::new(),
        }
    }
}

impl QaSettings {
    /// The registrar the SIP user agent runs; None without phones.
    pub fn registrar(&self) -> Option<crate::sip::RegistrarConfig> {
        if self.phones.is_empty() {
            return None;
        }
        Some(crate::sip::RegistrarConfig {
            realm: self.realm.clone(),
            accounts: self
                .phones
                .iter()
                .map(|p| crate::sip::QaAccount {
                    username: p.username.clone(),
                    password: p
                        .password
                        .as_ref()
                        .map(|s| s.expose().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
            min_expires: self.min_expires,
            max_expires: self.max_expires,
        })
    }

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
    #[serde(default, skip_deserializing)]
    pub password: Option<SecretString>,
    pub password_env: String,
    /// Verifications to this number (E.164) ring the phone instead of a trunk.
    pub number: String,
}

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
            ban_time: HumanDuration(Duration::from_secs(600)),
            request_limit: RateLimit {
                count: 50,
                per: Duration::from_secs(1),
            },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Verify,
    Admin,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerificationSettings {
    pub code_length: usize,
    pub ttl: HumanDuration,
    pub max_check_attempts: u32,
    pub default_locale: String,
    pub repeat: u32,
    pub require_keypress: bool,
    pub allow_unregistered_numbers: bool,
    /// Refuse numbers that libphonenumber does not know as mobile.
    pub mobile_only: bool,
    pub default_region: String,
    pub code_key_env: String,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        Self {
            code_length: 6,
            ttl: HumanDuration(Duration::from_secs(600)),
            max_check_attempts: 5,
            default_locale: "nl".into(),
            repeat: 3,
            require_keypress: false,
            allow_unregistered_numbers: false,
            mobile_only: false,
            default_region: "NL".into(),
            code_key_env: "OTPDIAL_CODE_KEY".into(),
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
    pub backoff: HumanDuration,
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
            backoff: HumanDuration(Duration::from_secs(2)),
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
    pub wrong_check_backoff: HumanDuration,
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
            wrong_check_backoff: HumanDuration(Duration::from_secs(1)),
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

/// What the pre-dial risk hook (or its absence of a usable answer) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskDecision {
    Allow,
    Deny,
}

/// `[risk]` (SPEC §6): a signed POST before each dial (SIM-swap, porting,
/// deny-list checks); its answer decides whether the number is called.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskSettings {
    /// Empty: no hook, every call is placed.
    pub hook_url: String,
    /// How long to wait for the answer.
    pub timeout: HumanDuration,
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
            timeout: HumanDuration(Duration::from_millis(1500)),
            on_timeout: RiskDecision::Allow,
            secret_env: "OTPDIAL_RISK_SECRET".into(),
            secret: None,
        }
    }
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
    pub retry_delay: HumanDuration,
    /// A retry calls the user's next registered number (primary first).
    pub next_number: bool,
    /// On SIGTERM/SIGINT, calls in progress may finish this long before
    /// they are hung up.
    pub shutdown_grace: HumanDuration,
    /// How long a claimed call stays owned without renewal. A call whose
    /// instance died is taken over once its lease ran out.
    pub lease: HumanDuration,
    /// Calls in progress on this instance over all trunks; 0 = the sum of
    /// the trunks' `max_concurrent_calls`.
    pub max_concurrent_calls: u32,
}

impl Default for DialerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            retry_on: vec![RetryOn::NoAnswer, RetryOn::Busy],
            retry_delay: HumanDuration(Duration::from_secs(30)),
            next_number: true,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            lease: HumanDuration(Duration::from_secs(20)),
            max_concurrent_calls: 0,
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
    #[serde(default)]
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
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout: HumanDuration,
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
    #[serde(default = "default_options_interval")]
    pub options_interval: HumanDuration,
    /// Consecutive failures (5xx, 408, no response, transport error) after
    /// which the trunk is marked down and tried only when no other can.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// A down trunk comes back when OPTIONS succeed again; without OPTIONS
    /// keepalive it gets one trial call after this long.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: HumanDuration,
    /// With `transport=tls`: PEM file of the CA(s) the trunk's certificate must chain
    /// to; empty = the public web PKI roots (Mozilla's, built in).
    #[serde(default)]
    pub tls_ca: String,
    /// Media encryption on this trunk (RFC 3711 SRTP keyed by SDES, RFC 4568): `off`
    /// sends plain RTP; `optional` offers SRTP and falls back to RTP when the answer
    /// has no usable key; `required` fails the attempt without a usable key.
    #[serde(default)]
    pub srtp: SrtpMode,
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

fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_register_expires() -> u32 {
    3600
}
fn default_options_interval() -> HumanDuration {
    HumanDuration(Duration::ZERO)
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
fn default_ring_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl TrunkSettings {
    /// Digest credentials: `auth_username` (else `username`) and the password, when both
    /// are set. None means an IP-authenticated trunk.
    pub fn credentials(&self) -> Option<crate::sip::digest::Credentials> {
        let user = self.auth_username.as_ref().or(self.username.as_ref())?;
        let password = self.password.as_ref()?;
        Some(crate::sip::digest::Credentials {
            username: user.clone(),
            password: password.expose().to_string(),
        })
    }

    /// Whether this trunk carries calls to `e164` (by its prefixes).
    pub fn routes(&self, e164: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| e164.starts_with(p.as_str()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum CodecName {
    #[serde(rename = "PCMA")]
    Pcma,
    #[serde(rename = "PCMU")]
    Pcmu,
}

/// A password: readable by the code that needs it, printed as `***`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A duration written as `30s`, `10m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e}")))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
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
}

impl SipTarget {
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
        write!(f, "sip:{};transport={t}", self.host_port())
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
        for p in parts {
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
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: bad port {p:?}"))?,
            None if transport == Transport::Tls => 5061,
            None => 5060,
        };
        Ok(SipTarget {
            host,
            port,
            transport,
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

impl Settings {
    /// Reads `path` (if any), applies `OTPDIAL_*` overrides, resolves secrets
    /// from the environment and validates everything.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            // Figment treats a missing file as empty; an operator who names
            // a file means it, so a missing or unreadable one is an error.
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env_overrides());
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        let origin = path.map_or_else(|| "environment".to_string(), |p| p.display().to_string());
        settings.resolve_secrets(&origin)?;
        settings.validate(&origin)?;
        Ok(settings)
    }

    /// Parses a TOML string (tests and embedded defaults); no environment.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let mut settings: Settings = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        settings.resolve_secrets("inline config")?;
        settings.validate("inline config")?;
        Ok(settings)
    }

    fn resolve_secrets(&mut self, origin: &str) -> Result<(), ConfigError> {
        if !self.risk.hook_url.trim().is_empty() {
            let var = &self.risk.secret_env;
            let value = std::env::var(var).ok().filter(|v| !v.is_empty());
            self.risk.secret = Some(SecretString(value.ok_or_else(|| ConfigError::Invalid {
                origin: origin.to_string(),
                key: "risk.secret_env".into(),
                message: format!(
                    "risk.hook_url is set, so the signing key must be in environment variable {var}, which is not set"
                ),
            })?));
        }
        if !self.webhooks.secret_env.is_empty() {
            self.webhooks.secret = std::env::var(&self.webhooks.secret_env)
                .ok()
                .filter(|s| !s.is_empty())
                .map(SecretString);
        }
        for (i, p) in self.qa.phones.iter_mut().enumerate() {
            let var = &p.password_env;
            let value = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    origin: origin.to_string(),
                    key: format!("qa.phones[{i}].password_env"),
                    message: format!("environment variable {var} is not set"),
                })?;
            p.password = Some(SecretString(value));
        }
        for (i, t) in self.trunks.iter_mut().enumerate() {
            if let Some(var) = &t.password_env {
                let value = std::env::var(var).map_err(|_| ConfigError::Invalid {
                    origin: origin.to_string(),
                    key: format!("trunks[{i}].password_env"),
                    message: format!("environment variable {var} is not set"),
                })?;
                t.password = Some(SecretString(value));
            }
        }
        Ok(())
    }

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
            if crate::sip_io::parse_ca_pem(&pem).map_or(true, |roots| roots.is_empty()) {
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
        let err = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        self.validate_qa(origin)?;
        self.validate_tls(origin)?;
        if self.media.realtime_priority > 99 {
            return Err(err(
                "media.realtime_priority".into(),
                format!(
                    "must be 0 (off) or a SCHED_FIFO priority 1..99, got {}",
                    self.media.realtime_priority
                ),
            ));
        }
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
        if v.ttl.0 < Duration::from_secs(30) || v.ttl.0 > Duration::from_secs(24 * 3600) {
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
        if !self.database.url.starts_with("sqlite:")
            && !self.database.url.starts_with("postgres:")
            && !self.database.url.starts_with("postgresql:")
        {
            return Err(err(
                "database.url".into(),
                "must start with sqlite: or postgres:".into(),
            ));
        }
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
        if self.risk.timeout.0.is_zero() || self.risk.timeout.0 > Duration::from_secs(30) {
            return Err(err(
                "risk.timeout".into(),
                "must be between 1ms and 30s".into(),
            ));
        }
        let d = &self.dialer;
        if !(1..=10).contains(&d.max_attempts) {
            return Err(err(
                "dialer.max_attempts".into(),
                format!("must be 1..10, got {}", d.max_attempts),
            ));
        }
        if d.lease.0 < Duration::from_secs(3) || d.lease.0 > Duration::from_secs(600) {
            return Err(err(
                "dialer.lease".into(),
                "must be between 3s and 10m".into(),
            ));
        }
        if d.shutdown_grace.0 > Duration::from_secs(3600) {
            return Err(err(
                "dialer.shutdown_grace".into(),
                "must be at most 1h".into(),
            ));
        }
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
            let every = t.options_interval.0;
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
fn is_e164_prefix(p: &str) -> bool {
    p.strip_prefix('+')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// `OTPDIAL_A__B=v` sets `a.b`. Variables without `__` (such as
/// `OTPDIAL_CONFIG` or `OTPDIAL_CODE_KEY`) are not settings and are skipped.
fn env_overrides() -> Env {
    Env::prefixed("OTPDIAL_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!(" (key `{}`)", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!(" in {s}"),
                    None => format!(" from {}", m.name),
                })
                .unwrap_or_default();
            format!("{}{key}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate("defaults").unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Settings::from_toml("[verification]\ncode_lenght = 6\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("code_lenght"), "{msg}");
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
        assert_eq!(t.options_interval.0, Duration::from_secs(30));
        let e = Settings::from_toml(&format!("{base}register_expires = 10\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].register_expires"), "{e}");
        let e = Settings::from_toml(&format!("{base}options_interval = \"1s\"\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].options_interval"), "{e}");
        let e = Settings::from_toml(&format!("{base}privacy = \"\"\n")).unwrap_err();
        assert!(e.to_string().contains("trunks[0].privacy"), "{e}");
        let d = Settings::from_toml(base).unwrap();
        assert_eq!(d.trunks[0].register_expires, 3600);
        assert!(
            d.trunks[0].options_interval.0.is_zero(),
            "keepalive off by default"
        );
        assert!(d.trunks[0].credentials().is_none());
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
        assert_eq!(t.to_string(), "sip:sip.example.com:5061;transport=tls");
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

    #[test]
    fn sip_listener_policy_keys() {
        let s = Settings::from_toml("").unwrap();
        assert_eq!(s.sip.unknown_sources, UnknownSourcesSetting::Drop);
        assert_eq!(
            s.sip.server_header_value(),
            "",
            "no product name by default"
        );
        let p = s.sip.policy();
        assert_eq!(
            (p.ban_after_failures, p.ban_time, p.request_limit),
            (10, Duration::from_secs(600), 50)
        );
        let s = Settings::from_toml(
            "[sip]\nunknown_sources = \"403\"\nban_time = \"1h\"\nuser_agent = \"pbx\"",
        )
        .unwrap();
        assert_eq!(s.sip.unknown_sources, UnknownSourcesSetting::Forbid);
        assert_eq!(s.sip.policy().ban_time, Duration::from_secs(3600));
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
    fn rate_limits_and_port_ranges_parse() {
        let r: RateLimit = "3/10m".parse().unwrap();
        assert_eq!((r.count, r.per), (3, Duration::from_secs(600)));
        assert!("0/1m".parse::<RateLimit>().is_err());
        let p: PortRange = "20000-20010".parse().unwrap();
        assert_eq!((p.first, p.last), (20000, 20010));
        assert!("30-20".parse::<PortRange>().is_err());
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let s = Settings::from_toml(
            "[[trunks]]\nname = \"a\"\nproxy = \"sip:127.0.0.1\"\nusername = \"u\"\npassword = \"hunter2\"\nfrom = \"sip:1@x\"\n",
        )
        .unwrap();
        let shown = toml::to_string(&s).unwrap();
        assert!(!shown.contains("hunter2"));
        assert!(format!("{s:?}").contains("***"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
