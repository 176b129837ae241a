//! Who may talk to our SIP port (SPEC §6 `[sip]`): the listener policy. Pure code with a
//! clock passed in, like the rest of `sip`; the user agent asks it about every request
//! before answering anything, and reports failed authentications to it.
//!
//! Rules, in order, for a request from IP `src`:
//! 1. it belongs to one of our live dialogs (Call-ID and both tags match): accepted from
//!    anywhere (a callee reached by URI, or a trunk's media gateway, sends its BYE from an
//!    address we never configured; the random Call-ID and tags cannot be guessed);
//! 2. `src` is a configured trunk's resolved address: accepted, never limited or banned;
//! 3. `src` is banned (too many failures within `ban_time`): dropped, no answer;
//! 4. `src` sent more than `request_limit` requests in its window: dropped, and each such
//!    drop counts as a failure (a flood bans itself);
//! 5. a REGISTER while the QA registrar is on, or any request from the address of a
//!    registered QA phone: accepted (the registrar challenges REGISTER);
//! 6. anything else is from an unknown source: dropped, or answered with a uniform 403
//!    when `unknown_sources = "403"`.
//!
//! Responses that match no transaction are dropped by the user agent and counted here.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What to do with a request from a source that is neither a trunk nor a QA phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSources {
    /// Send nothing back: a scanner learns nothing, not even that something listens.
    #[default]
    Drop,
    /// Answer 403 Forbidden, the same for every such request.
    Forbid,
}

/// Settings of the listener policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub unknown_sources: UnknownSources,
    /// Failures (refused authentication, requests over the limit) within `ban_time`
    /// that ban a source; 0 = never ban.
    pub ban_after_failures: u32,
    pub ban_time: Duration,
    /// At most this many requests per source (not trunks) ...
    pub request_limit: u32,
    /// ... within this window.
    pub request_window: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            unknown_sources: UnknownSources::Drop,
            ban_after_failures: 10,
            ban_time: Duration::from_secs(600),
            request_limit: 50,
            request_window: Duration::from_secs(1),
        }
    }
}

/// Why something that arrived got no (or only a 403) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A request from neither a trunk nor a registered QA phone.
    UnknownSource,
    /// A request from a banned source.
    Banned,
    /// A request over the per-source limit.
    RateLimited,
    /// A response that matches no transaction of ours.
    StrayResponse,
    /// Bytes that do not parse as SIP.
    Malformed,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::UnknownSource,
        DropReason::Banned,
        DropReason::RateLimited,
        DropReason::StrayResponse,
        DropReason::Malformed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label of `otpdial_sip_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::Banned => "banned",
            DropReason::RateLimited => "rate_limited",
            DropReason::StrayResponse => "stray_response",
            DropReason::Malformed => "malformed",
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Send nothing.
    Drop(DropReason),
    /// Answer 403 and nothing else.
    Forbid(DropReason),
}

/// What the user agent knows about a request when it asks.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    pub in_dialog: bool,
    pub is_register: bool,
    /// The source address holds a QA phone's registration.
    pub registered_phone: bool,
}

/// Counters since start, by what happened: the driver exports them as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Indexed like [`DropReason::ALL`].
    pub dropped: [u64; 5],
    /// Sources banned so far (a source banned twice counts twice).
    pub bans: u64,
    /// Sources under a ban right now (counted up at each ban, recounted at the sweeps,
    /// at most once a second while requests arrive).
    pub banned_now: u64,
}

#[derive(Debug)]
struct Source {
    window_start: Instant,
    requests: u32,
    failures: u32,
    first_failure: Option<Instant>,
    banned_until: Option<Instant>,
    last_seen: Instant,
}

/// Most sources tracked at once; beyond it the idle ones are swept (and if every one is
/// busy, new sources are judged without a record: unknown ones are dropped anyway).
const MAX_SOURCES: usize = 100_000;

/// The listener policy: per-source counters and bans, and the addresses we trust.
#[derive(Debug)]
pub struct SourcePolicy {
    config: PolicyConfig,
    trunks: HashSet<IpAddr>,
    pub(crate) registrar_on: bool,
    sources: HashMap<IpAddr, Source>,
    counters: PolicyCounters,
    next_sweep: Option<Instant>,
}

impl SourcePolicy {
    pub fn new(config: PolicyConfig) -> Self {
        SourcePolicy {
            config,
            trunks: HashSet::new(),
            registrar_on: false,
            sources: HashMap::new(),
            counters: PolicyCounters::default(),
            next_sweep: None,
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Trusts the address of a configured trunk (its resolved proxy).
    pub fn add_trunk(&mut self, ip: IpAddr) {
        self.trunks.insert(ip);
    }

    pub fn is_trunk(&self, ip: IpAddr) -> bool {
        self.trunks.contains(&ip)
    }

    /// Whether `ip` is under a ban at `now`.
    pub fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        !self.trunks.contains(&ip)
            && self
                .sources
                .get(&ip)
                .and_then(|s| s.banned_until)
                .is_some_and(|t| t > now)
    }

    /// Judges one request from `ip` (rules in the module docs) and counts what it drops.
    pub fn check_request(&mut self, now: Instant, ip: IpAddr, facts: RequestFacts) -> Verdict {
        if facts.in_dialog || self.trunks.contains(&ip) {
            return Verdict::Accept;
        }
        self.sweep(now);
        let window = self.config.request_window;
        let limit = self.config.request_limit;
        let verdict = if let Some(s) = self.source(now, ip) {
            if s.banned_until.is_some_and(|t| t > now) {
                Some(Verdict::Drop(DropReason::Banned))
            } else {
                if now.duration_since(s.window_start) >= window {
                    s.window_start = now;
                    s.requests = 0;
                }
                s.requests = s.requests.saturating_add(1);
                (s.requests > limit).then_some(Verdict::Drop(DropReason::RateLimited))
            }
        } else {
            None
        };
        if verdict == Some(Verdict::Drop(DropReason::RateLimited)) {
            self.failure(now, ip);
        }
        let verdict = match verdict {
            Some(v) => v,
            None if (facts.is_register && self.registrar_on) || facts.registered_phone => {
                Verdict::Accept
            }
            None => match self.config.unknown_sources {
                UnknownSources::Drop => Verdict::Drop(DropReason::UnknownSource),
                UnknownSources::Forbid => Verdict::Forbid(DropReason::UnknownSource),
            },
        };
        match verdict {
            Verdict::Drop(r) | Verdict::Forbid(r) => self.count(r),
            Verdict::Accept => {}
        }
        verdict
    }

    /// A failed authentication (or a request over the limit) from `ip`; bans the source
    /// when it reaches `ban_after_failures` within `ban_time`. Returns true if it is now
    /// banned. Trunks are never banned.
    pub fn failure(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.trunks.contains(&ip) || self.config.ban_after_failures == 0 {
            return false;
        }
        let ban_time = self.config.ban_time;
        let ban_after = self.config.ban_after_failures;
        let Some(s) = self.source(now, ip) else {
            return false;
        };
        if s.banned_until.is_some_and(|t| t > now) {
            return true;
        }
        if s.first_failure
            .is_none_or(|t| now.duration_since(t) >= ban_time)
        {
            s.first_failure = Some(now);
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures >= ban_after {
            s.banned_until = Some(now + ban_time);
            s.failures = 0;
            s.first_failure = None;
            self.counters.bans += 1;
            self.counters.banned_now += 1;
            tracing::info!(source = %ip, ban_time = ?ban_time, "SIP source banned");
            return true;
        }
        false
    }

    /// The record of `ip`, made on first sight and marked seen `now`; `None` when the
    /// table is full and `ip` has no record (it is judged without one).
    fn source(&mut self, now: Instant, ip: IpAddr) -> Option<&mut Source> {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            return None;
        }
        let s = self.sources.entry(ip).or_insert(Source {
            window_start: now,
            requests: 0,
            failures: 0,
            first_failure: None,
            banned_until: None,
            last_seen: now,
        });
        s.last_seen = now;
        Some(s)
    }

    /// A successful authentication from `ip`: its failures are forgiven.
    pub fn success(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip) {
            s.failures = 0;
            s.first_failure = None;
        }
    }

    /// Counts something dropped for `reason` (the user agent reports stray responses
    /// and malformed datagrams here).
    pub fn count(&mut self, reason: DropReason) {
        self.counters.dropped[reason.index()] += 1;
    }

    pub fn counters(&self) -> &PolicyCounters {
        &self.counters
    }

    /// Forgets sources with nothing left to remember: no ban in force, no failure within
    /// `ban_time`, no request in the current window. At most once a second.
    fn sweep(&mut self, now: Instant) {
        // Once a second, full table or not: a sweep walks every record, and a flood
        // from many addresses that fills the table must not buy a walk per datagram.
        if self.next_sweep.is_some_and(|t| t > now) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_secs(1));
        let keep_for = self.config.ban_time.max(self.config.request_window);
        self.sources.retain(|_, s| {
            s.banned_until.is_some_and(|t| t > now) || now.duration_since(s.last_seen) < keep_for
        });
        self.counters.banned_now = self
            .sources
            .values()
            .filter(|s| s.banned_until.is_some_and(|t| t > now))
            .count() as u64;
    }

    /// Sources tracked right now (for tests: memory stays bounded).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STRANGER: &str = "127.0.0.66";
    const TRUNK: &str = "127.0.0.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn plain() -> RequestFacts {
        RequestFacts {
            in_dialog: false,
            is_register: false,
            registered_phone: false,
        }
    }

    fn register() -> RequestFacts {
        RequestFacts {
            is_register: true,
            ..plain()
        }
    }

    fn policy(cfg: PolicyConfig) -> SourcePolicy {
        let mut p = SourcePolicy::new(cfg);
        p.add_trunk(ip(TRUNK));
        p
    }

    #[test]
    fn strangers_are_dropped_trunks_and_dialogs_accepted() {
        let now = Instant::now();
        let mut p = policy(PolicyConfig::default());
        assert_eq!(
            p.check_request(now, ip(STRANGER), plain()),
            Verdict::Drop(DropReason::UnknownSource)
        );
        assert_eq!(p.check_request(now, ip(TRUNK), plain()), Verdict::Accept);
        let in_dialog = RequestFacts {
            in_dialog: true,
            ..plain()
        };
        assert_eq!(
            p.check_request(now, ip(STRANGER), in_dialog),
            Verdict::Accept
        );
        assert_eq!(p.counters().dropped[DropReason::UnknownSource as usize], 1);
    }

    #[test]
    fn forbid_mode_answers_403_uniformly() {
        let now = Instant::now();
        let mut p = policy(PolicyConfig {
            unknown_sources: UnknownSources::Forbid,
            ..PolicyConfig::default()
        });
        assert_eq!(
            p.check_request(now, ip(STRANGER), plain()),
            Verdict::Forbid(DropReason::UnknownSource)
        );
        // Without the registrar a REGISTER is just another request.
        assert_eq!(
            p.check_request(now, ip(STRANGER), register()),
            Verdict::Forbid(DropReason::UnknownSource)
        );
    }

    #[test]
    fn register_reaches_the_registrar_only_when_it_is_on() {
        let now = Instant::now();
        let mut p = policy(PolicyConfig::default());
        assert_eq!(
            p.check_request(now, ip(STRANGER), register()),
            Verdict::Drop(DropReason::UnknownSource)
        );
        p.registrar_on = true;
        assert_eq!(
            p.check_request(now, ip(STRANGER), register()),
            Verdict::Accept
        );
        let phone = RequestFacts {
            registered_phone: true,
            ..plain()
        };
        assert_eq!(p.check_request(now, ip(STRANGER), phone), Verdict::Accept);
    }

    #[test]
    fn failures_ban_for_ban_time_then_the_ban_lifts() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig::default());
        p.registrar_on = true;
        let s = ip(STRANGER);
        for i in 0..9 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(p.check_request(now, s, register()), Verdict::Accept);
            assert!(!p.failure(now, s), "failure {i} does not ban yet");
        }
        let now = t0 + Duration::from_secs(9);
        assert!(p.failure(now, s), "the 10th failure bans");
        assert_eq!(p.counters().banned_now, 1);
        assert_eq!(
            p.check_request(now, s, register()),
            Verdict::Drop(DropReason::Banned)
        );
        let later = now + Duration::from_secs(599);
        assert_eq!(
            p.check_request(later, s, register()),
            Verdict::Drop(DropReason::Banned)
        );
        let after = now + Duration::from_secs(600);
        assert_eq!(p.check_request(after, s, register()), Verdict::Accept);
        assert_eq!(p.counters().bans, 1);
        // Other sources are not affected, and trunks never get banned.
        assert_eq!(
            p.check_request(now, ip("127.0.0.67"), register()),
            Verdict::Accept
        );
        for _ in 0..20 {
            assert!(!p.failure(now, ip(TRUNK)));
        }
    }

    #[test]
    fn failures_spread_beyond_ban_time_do_not_add_up() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig::default());
        let s = ip(STRANGER);
        for i in 0..30u64 {
            // One failure every 70 s: never 10 within 10 minutes of the first.
            assert!(!p.failure(t0 + Duration::from_secs(70 * i), s), "{i}");
        }
        // A success forgives.
        let now = t0 + Duration::from_secs(10_000);
        for _ in 0..9 {
            p.failure(now, s);
        }
        p.success(s);
        assert!(!p.failure(now, s));
    }

    #[test]
    fn a_flood_is_limited_then_banned() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig {
            request_limit: 5,
            ..PolicyConfig::default()
        });
        p.registrar_on = true;
        let s = ip(STRANGER);
        let verdicts: Vec<Verdict> = (0..30)
            .map(|i| p.check_request(t0 + Duration::from_millis(i), s, register()))
            .collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Accept));
        assert!(verdicts[5..15]
            .iter()
            .all(|v| *v == Verdict::Drop(DropReason::RateLimited)));
        assert!(verdicts[15..]
            .iter()
            .all(|v| *v == Verdict::Drop(DropReason::Banned)));
        assert_eq!(p.counters().dropped[DropReason::RateLimited as usize], 10);
        assert_eq!(p.counters().dropped[DropReason::Banned as usize], 15);
        // A new window does not lift the ban.
        assert_eq!(
            p.check_request(t0 + Duration::from_secs(5), s, register()),
            Verdict::Drop(DropReason::Banned)
        );
        // Trunks are never limited.
        for i in 0..100 {
            assert_eq!(
                p.check_request(t0 + Duration::from_millis(i), ip(TRUNK), plain()),
                Verdict::Accept
            );
        }
    }

    #[test]
    fn the_window_refills() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig {
            request_limit: 3,
            ban_after_failures: 0,
            ..PolicyConfig::default()
        });
        p.registrar_on = true;
        let s = ip(STRANGER);
        for sec in 0..5u64 {
            let now = t0 + Duration::from_secs(sec);
            for _ in 0..3 {
                assert_eq!(p.check_request(now, s, register()), Verdict::Accept);
            }
            assert_eq!(
                p.check_request(now, s, register()),
                Verdict::Drop(DropReason::RateLimited)
            );
        }
        assert_eq!(p.counters().bans, 0, "ban_after_failures = 0 never bans");
    }

    #[test]
    fn sources_are_forgotten_when_idle() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig::default());
        for i in 0..200u8 {
            p.check_request(t0, IpAddr::from([10, 0, 0, i]), plain());
        }
        assert_eq!(p.tracked_sources(), 200);
        p.check_request(t0 + Duration::from_secs(601), ip(STRANGER), plain());
        assert_eq!(p.tracked_sources(), 1);
    }
}
