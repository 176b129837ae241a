//! Per-trunk registration (RFC 3261 §10: REGISTER, refresh before expiry, 423 Min-Expires,
//! retry with backoff) and OPTIONS keepalive (a trunk that stops answering is marked
//! unreachable). Part of the sans-IO user agent: same clock-in/datagrams-out rules, and
//! it uses the user agent's client non-INVITE transactions (Timers E, F, K).
//!
//! Registration hygiene (`trunk_hygiene.rs`): at shutdown
//! [`UserAgent::unregister_trunks`] removes our binding (REGISTER `Expires: 0`); and the
//! public address a registrar saw us at (RFC 3581 `received`/`rport` on its answer's Via)
//! becomes the trunk's Contact.

use super::transaction::ByePurpose;
use super::*;
use crate::sip::{ProbeKind, ProbeResult, TrunkConfig, TrunkStatus};

#[path = "trunk_hygiene.rs"]
mod hygiene;

/// First retry after a failed registration; doubles per failure up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// 423 rounds before we give up on a registrar that keeps raising Min-Expires.
const MAX_INTERVAL_TOO_BRIEF: u32 = 3;

#[derive(Debug)]
pub(super) struct TrunkState {
    id: TrunkId,
    cfg: TrunkConfig,
    registrar: Option<rsip::Uri>,
    /// REGISTERs of one trunk share a Call-ID and increase CSeq (RFC 3261 §10.2).
    reg_call_id: String,
    reg_from_tag: String,
    reg_cseq: u32,
    expires_wanted: u32,
    too_brief: u32,
    reg_auth: AuthSession,
    reg_pending: bool,
    reg_due: Option<Instant>,
    reg_failures: u32,
    expires_at: Option<Instant>,
    opt_call_id: String,
    opt_cseq: u32,
    opt_auth: AuthSession,
    opt_pending: bool,
    opt_due: Option<Instant>,
    status: TrunkStatus,
    /// host:port the registrar saw our REGISTER come from, when it differs from ours:
    /// the Contact towards this trunk from then on (UDP trunks only).
    public: Option<String>,
    /// A Contact host:port we registered before learning `public`: the next REGISTER
    /// removes it (`;expires=0`) while it adds the new one.
    stale_contact: Option<String>,
    /// Shutting down: nothing more is scheduled for this trunk.
    stopped: bool,
    /// A REGISTER `Expires: 0` is out and unanswered.
    unregistering: bool,
}

impl TrunkState {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let reg = self.reg_due.filter(|_| !self.reg_pending);
        let opt = self.opt_due.filter(|_| !self.opt_pending);
        let exp = self.expires_at.filter(|_| self.status.registered);
        [reg, opt, exp].into_iter().flatten().min()
    }
}

/// When to refresh a registration granted for `granted` seconds: well before it runs out,
/// but not so early that short registrations turn into a REGISTER storm.
fn refresh_after(granted: u32) -> Duration {
    let g = u64::from(granted.max(2));
    Duration::from_secs((g / 2).max(g.saturating_sub(60)))
}

fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (BASE_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

impl UserAgent {
    /// Adds a trunk: registers it (if `register`) and starts its OPTIONS keepalive (if an
    /// interval is set; a `one_shot` trunk without registration gets one OPTIONS).
    /// Outcomes arrive as [`Event::TrunkProbe`].
    pub fn add_trunk(&mut self, now: Instant, cfg: TrunkConfig) -> TrunkId {
        let id = TrunkId(self.trunks.len());
        self.policy.add_trunk(cfg.destination.ip());
        if cfg.transport.is_reliable() {
            self.tcp_peers.insert(cfg.destination, cfg.transport);
        }
        let registrar = parse_sip_uri(&cfg.registrar_uri).ok();
        let wants_options = cfg.options_interval.is_some() || (cfg.one_shot && !cfg.register);
        let mut status = TrunkStatus::default();
        if registrar.is_none() {
            status.last_error = Some(format!("bad registrar URI {:?}", cfg.registrar_uri));
        }
        let usable = registrar.is_some();
        self.trunks.push(TrunkState {
            id,
            registrar,
            reg_call_id: format!("{}@{}", random_token(), self.ident.host_port),
            reg_from_tag: random_token(),
            reg_cseq: 0,
            expires_wanted: cfg.register_expires.max(1),
            too_brief: 0,
            reg_auth: AuthSession::new(cfg.credentials.clone()),
            reg_pending: false,
            reg_due: (usable && cfg.register).then_some(now),
            reg_failures: 0,
            expires_at: None,
            opt_call_id: String::new(),
            opt_cseq: 0,
            opt_auth: AuthSession::new(cfg.credentials.clone()),
            opt_pending: false,
            opt_due: (usable && wants_options).then_some(now),
            status,
            public: None,
            stale_contact: None,
            stopped: false,
            unregistering: false,
            cfg,
        });
        self.trunk_timers(now);
        id
    }

    /// The trunk's proxy now resolves elsewhere (RFC 3263 re-resolution): later
    /// REGISTER and OPTIONS go to `destination` over `transport`, and a registering
    /// trunk registers there at once. Returns the previous destination.
    pub fn set_trunk_destination(
        &mut self,
        now: Instant,
        name: &str,
        destination: SocketAddr,
        transport: Transport,
    ) -> Option<SocketAddr> {
        let t = self.trunks.iter_mut().find(|t| t.cfg.name == name)?;
        let old = std::mem::replace(&mut t.cfg.destination, destination);
        t.cfg.transport = transport;
        if t.cfg.register && t.registrar.is_some() && !t.reg_pending {
            t.reg_due = Some(now);
        }
        self.policy.add_trunk(destination.ip());
        if transport.is_reliable() {
            self.tcp_peers.insert(destination, transport);
        }
        self.trunk_timers(now);
        Some(old)
    }

    pub fn trunk_status(&self, id: TrunkId) -> Option<TrunkStatus> {
        self.trunks.get(id.0).map(|t| t.status.clone())
    }

    pub(super) fn trunk_timers(&mut self, now: Instant) {
        for i in 0..self.trunks.len() {
            let t = &mut self.trunks[i];
            if t.stopped {
                continue;
            }
            if t.status.registered && t.expires_at.is_some_and(|e| e <= now) {
                t.status.registered = false;
                t.status.last_error =
                    Some("registration expired before a refresh succeeded".into());
                t.expires_at = None;
            }
            if !t.reg_pending && t.reg_due.is_some_and(|d| d <= now) {
                t.reg_due = None;
                // Each cycle starts without credentials: a refresh may meet a new nonce,
                // and answering an old one would look like refused credentials.
                t.reg_auth = AuthSession::new(t.cfg.credentials.clone());
                t.too_brief = 0;
                self.send_register(now, i);
            }
            let t = &mut self.trunks[i];
            if !t.opt_pending && t.opt_due.is_some_and(|d| d <= now) {
                t.opt_due = None;
                t.opt_auth = AuthSession::new(t.cfg.credentials.clone());
                t.opt_call_id = format!("{}@{}", random_token(), self.ident.host_port);
                t.opt_cseq = 0;
                self.send_options(now, i);
            }
        }
    }

    fn aor_user(aor: &str) -> &str {
        let rest = aor.split_once(':').map_or(aor, |(_, r)| r);
        rest.split_once('@').map_or("otpdial", |(u, _)| u)
    }

    fn send_register(&mut self, now: Instant, i: usize) {
        let t = &mut self.trunks[i];
        if t.registrar.is_none() {
            return;
        }
        t.reg_cseq += 1;
        t.reg_pending = true;
        let from = format!("<{}>;tag={}", t.cfg.aor, t.reg_from_tag);
        let to = format!("<{}>", t.cfg.aor);
        let wanted = if t.unregistering { 0 } else { t.expires_wanted };
        let mut extra = Vec::new();
        if let Some(old) = t.stale_contact.as_deref() {
            // RFC 3261 §10.2.1.1: a Contact's own expires wins over the Expires header.
            let transport = transaction::transport_for(&self.tcp_peers, t.cfg.destination);
            let old = contact_value(Self::aor_user(&t.cfg.aor), old, transport);
            extra.push(h::Contact::new(format!("{old};expires=0")).into());
        }
        extra.push(h::Expires::new(wanted.to_string()).into());
        self.send_trunk_request(now, i, Method::Register, &from, &to, extra);
    }

    fn send_options(&mut self, now: Instant, i: usize) {
        let t = &mut self.trunks[i];
        if t.registrar.is_none() {
            return;
        }
        t.opt_cseq += 1;
        t.opt_pending = true;
        let from = format!("<{}>;tag={}", t.cfg.aor, random_token());
        let to = format!("<{}>", t.cfg.registrar_uri);
        let accept = h::Accept::new("application/sdp").into();
        self.send_trunk_request(now, i, Method::Options, &from, &to, vec![accept]);
    }

    /// Sends the REGISTER or OPTIONS of trunk `i` with the Call-ID, CSeq and credentials
    /// of that kind of request; `extra` goes after the Contact (Expires or Accept).
    fn send_trunk_request(
        &mut self,
        now: Instant,
        i: usize,
        method: Method,
        from: &str,
        to: &str,
        extra: Vec<Header>,
    ) {
        let t = &mut self.trunks[i];
        let Some(registrar) = t.registrar.clone() else {
            return;
        };
        let (tx_method, call_id, cseq, auth) = match method {
            Method::Register => (
                TxMethod::Register,
                &t.reg_call_id,
                t.reg_cseq,
                &mut t.reg_auth,
            ),
            _ => (
                TxMethod::Options,
                &t.opt_call_id,
                t.opt_cseq,
                &mut t.opt_auth,
            ),
        };
        let branch = new_branch();
        let mut headers = common_headers(
            &self.ident,
            &branch,
            &[],
            from,
            to,
            call_id,
            cseq,
            method,
            transaction::transport_for(&self.tcp_peers, t.cfg.destination),
        );
        let transport = transaction::transport_for(&self.tcp_peers, t.cfg.destination);
        let host = t.public.as_deref().unwrap_or(&self.ident.host_port);
        let contact = contact_value(Self::aor_user(&t.cfg.aor), host, transport);
        headers.push(h::Contact::new(contact).into());
        headers.extend(extra);
        headers.extend(auth.headers(method, &registrar.to_string(), b""));
        let request = render::render_request(method, &registrar, headers, b"");
        let (dest, id) = (t.cfg.destination, t.id);
        self.start_trunk_tx(now, branch, tx_method, id, dest, request);
    }

    fn start_trunk_tx(
        &mut self,
        now: Instant,
        branch: String,
        method: TxMethod,
        trunk: TrunkId,
        dest: SocketAddr,
        request: Vec<u8>,
    ) {
        let key = (branch, method);
        self.start_client_tx(now, key.clone(), NO_CALL, dest, request, ByePurpose::Silent);
        if let Some(tx) = self.client_txs.get_mut(&key) {
            tx.trunk = Some(trunk);
        }
    }

    /// The registration ends with a failure: report it and schedule a retry.
    fn register_failed(
        &mut self,
        now: Instant,
        i: usize,
        status: Option<u16>,
        rtt: Option<Duration>,
        error: String,
    ) {
        if self.trunks[i].unregistering {
            self.unregister_done(i, Some(&error));
            return;
        }
        let t = &mut self.trunks[i];
        t.reg_pending = false;
        t.status.registered = false;
        t.status.reachable = Some(status.is_some());
        t.status.last_error = Some(error.clone());
        t.expires_at = None;
        t.reg_failures += 1;
        if !t.cfg.one_shot {
            t.reg_due = Some(now + backoff(t.reg_failures));
        }
        debug!(trunk = %t.cfg.name, %error, "registration failed");
        let result = ProbeResult {
            kind: ProbeKind::Register,
            status,
            rtt,
            authenticated: false,
            ok: false,
            expires: None,
            error: Some(error),
        };
        self.report(i, result);
    }

    fn report(&mut self, i: usize, result: ProbeResult) {
        let t = &self.trunks[i];
        self.events.push_back(Event::TrunkProbe {
            trunk: t.id,
            result,
            status: t.status.clone(),
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_trunk_response(
        &mut self,
        now: Instant,
        trunk: TrunkId,
        method: TxMethod,
        status: u16,
        reason: &str,
        rtt: Duration,
        msg: &Message,
    ) {
        let i = trunk.0;
        if i >= self.trunks.len() {
            return;
        }
        match method {
            TxMethod::Register => self.on_register_response(now, i, status, reason, rtt, msg),
            TxMethod::Options => self.on_options_response(now, i, status, reason, rtt, msg),
            _ => {}
        }
    }

    fn on_register_response(
        &mut self,
        now: Instant,
        i: usize,
        status: u16,
        reason: &str,
        rtt: Duration,
        msg: &Message,
    ) {
        let t = &mut self.trunks[i];
        if msg.cseq != t.reg_cseq {
            // The answer to a REGISTER since replaced (a refresh overtaken by the
            // unregistration at shutdown): the registrar orders them by CSeq too.
            debug!(trunk = %t.cfg.name, cseq = msg.cseq, "answer to an earlier REGISTER ignored");
            return;
        }
        if t.unregistering {
            self.on_unregister_response(now, i, status, reason, msg);
            return;
        }
        let host_port = t
            .public
            .clone()
            .unwrap_or_else(|| self.ident.host_port.clone());
        match status {
            401 | 407 => match t.reg_auth.on_challenge(status, msg) {
                Ok(()) => self.send_register(now, i),
                Err(why) => self.register_failed(
                    now,
                    i,
                    Some(status),
                    Some(rtt),
                    format!("REGISTER: {why}"),
                ),
            },
            423 => match msg.min_expires {
                Some(min) if min > t.expires_wanted && t.too_brief < MAX_INTERVAL_TOO_BRIEF => {
                    t.too_brief += 1;
                    t.expires_wanted = min;
                    self.send_register(now, i);
                }
                _ => self.register_failed(
                    now,
                    i,
                    Some(status),
                    Some(rtt),
                    format!("REGISTER: 423 {reason} without a usable Min-Expires"),
                ),
            },
            200..=299 => {
                // The registrar states what it granted per binding; ours is the one whose
                // URI names our host:port.
                let granted = msg
                    .contacts
                    .iter()
                    .find(|c| message::addr_uri(c).contains(host_port.as_str()))
                    .and_then(|c| message::addr_param(c, "expires"))
                    .and_then(|e| e.parse::<u32>().ok())
                    .or(msg.expires)
                    .unwrap_or(t.expires_wanted);
                if granted == 0 {
                    self.register_failed(
                        now,
                        i,
                        Some(status),
                        Some(rtt),
                        "REGISTER: registrar granted 0 seconds".into(),
                    );
                    return;
                }
                t.reg_pending = false;
                t.reg_failures = 0;
                // The REGISTER that removed an old Contact went through.
                t.stale_contact = None;
                t.status.registered = true;
                t.status.reachable = Some(true);
                t.status.last_error = None;
                t.status.probes_ok += 1;
                t.expires_at = Some(now + Duration::from_secs(u64::from(granted)));
                if !t.cfg.one_shot {
                    t.reg_due = Some(now + refresh_after(granted));
                }
                debug!(trunk = %t.cfg.name, granted, "registered");
                let result = ProbeResult {
                    kind: ProbeKind::Register,
                    status: Some(status),
                    rtt: Some(rtt),
                    authenticated: t.reg_auth.answered(),
                    ok: true,
                    expires: Some(granted),
                    error: None,
                };
                self.report(i, result);
                self.learn_address(now, i, msg);
            }
            _ => self.register_failed(
                now,
                i,
                Some(status),
                Some(rtt),
                format!("REGISTER: {status} {reason}"),
            ),
        }
    }

    fn on_options_response(
        &mut self,
        now: Instant,
        i: usize,
        status: u16,
        reason: &str,
        rtt: Duration,
        msg: &Message,
    ) {
        let t = &mut self.trunks[i];
        let mut error = None;
        if status == 401 || status == 407 {
            if t.opt_auth.credentials.is_some() {
                match t.opt_auth.on_challenge(status, msg) {
                    Ok(()) => {
                        self.send_options(now, i);
                        return;
                    }
                    Err(why) => error = Some(format!("OPTIONS: {why}")),
                }
            }
        } else if status >= 500 {
            error = Some(format!("OPTIONS: {status} {reason}"));
        }
        t.opt_pending = false;
        t.status.reachable = Some(true);
        if let Some(e) = &error {
            t.status.last_error = Some(e.clone());
        } else {
            t.status.probes_ok += 1;
            if !t.cfg.register {
                t.status.last_error = None;
            }
        }
        if let (Some(every), false) = (t.cfg.options_interval, t.cfg.one_shot) {
            t.opt_due = Some(now + every);
        }
        let result = ProbeResult {
            kind: ProbeKind::Options,
            status: Some(status),
            rtt: Some(rtt),
            authenticated: t.opt_auth.answered() && error.is_none(),
            ok: error.is_none(),
            expires: None,
            error,
        };
        self.report(i, result);
    }

    pub(super) fn on_trunk_timeout(&mut self, now: Instant, trunk: TrunkId, method: TxMethod) {
        let i = trunk.0;
        if i >= self.trunks.len() {
            return;
        }
        match method {
            TxMethod::Register => {
                self.register_failed(now, i, None, None, "REGISTER: no response (timeout)".into())
            }
            TxMethod::Options => {
                let t = &mut self.trunks[i];
                t.opt_pending = false;
                t.status.reachable = Some(false);
                t.status.last_error = Some("OPTIONS: no response (timeout)".into());
                if let (Some(every), false) = (t.cfg.options_interval, t.cfg.one_shot) {
                    t.opt_due = Some(now + every);
                }
                let result = ProbeResult {
                    kind: ProbeKind::Options,
                    status: None,
                    rtt: None,
                    authenticated: false,
                    ok: false,
                    expires: None,
                    error: t.status.last_error.clone(),
                };
                self.report(i, result);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "trunk_tests.rs"]
mod tests;
