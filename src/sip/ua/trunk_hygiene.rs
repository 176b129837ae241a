//! Registration hygiene of a trunk (part of [`super`], whose state it shares): at
//! graceful shutdown REGISTER `Expires: 0` removes our binding; and the public address
//! a registrar saw our REGISTER come from (RFC 3581 `received`/`rport` on its answer's
//! top Via) becomes the Contact towards that trunk, REGISTER and INVITE alike.

use super::super::*;
use tracing::info;

impl UserAgent {
    /// Our host:port in a Contact sent to `dest`: the public address a trunk there
    /// learned from its registrar (RFC 3581), else ours.
    pub(in crate::sip::ua) fn contact_host_towards(&self, dest: SocketAddr) -> &str {
        self.trunks
            .iter()
            .filter(|t| t.cfg.destination == dest)
            .find_map(|t| t.public.as_deref())
            .unwrap_or(&self.ident.host_port)
    }

    /// Our Contact header for a message to `peer` (INVITE, and the answers to an inbound
    /// INVITE or a re-INVITE): the address a trunk there learned from its registrar,
    /// with `;transport=` when `peer` is reached over TCP/TLS.
    pub(in crate::sip::ua) fn contact_towards(&self, peer: SocketAddr) -> Header {
        let host = self.contact_host_towards(peer);
        h::Contact::new(contact_value("otpdial", host, self.transport_to(peer))).into()
    }

    /// RFC 3581: the registrar's answer says where our REGISTER came from. When that is
    /// not the Contact we registered (a NAT between us), the Contact towards this trunk
    /// becomes that address and we register again at once. The old binding is removed in
    /// that same REGISTER (a second Contact with `expires=0`): without RFC 5626
    /// instance ids a registrar keys bindings by Contact URI (RFC 3261 §10.3 step 7),
    /// so the new one would not replace it, and calls would keep forking to an address
    /// nobody reaches until it expired. UDP only: over TCP/TLS `rport` is the source
    /// port of our connection, not a port that listens. Not for one-shot checks.
    pub(super) fn learn_address(&mut self, now: Instant, i: usize, msg: &Message) {
        let t = &mut self.trunks[i];
        if t.cfg.transport.is_reliable() || t.cfg.one_shot {
            return;
        }
        let ours = t
            .public
            .clone()
            .unwrap_or_else(|| self.ident.host_port.clone());
        let Some(seen) = msg.vias.first().and_then(|v| learned_address(v, &ours)) else {
            return;
        };
        info!(
            trunk = %t.cfg.name,
            old = %ours,
            new = %seen,
            "trunk {}: the registrar sees us at {seen}, not {ours}: Contact changed, registering again",
            t.cfg.name
        );
        t.public = Some(seen);
        t.stale_contact = Some(ours);
        t.reg_due = Some(now);
    }

    /// Graceful shutdown: each trunk that holds (or is getting) a registration sends
    /// REGISTER `Expires: 0` for the Contact it registered, not `Contact: *`, which would
    /// remove other devices' bindings of the same address of record; a digest challenge
    /// is answered as usual. No trunk schedules anything after this (no refresh, no
    /// OPTIONS). Returns how many were sent; [`Self::unregistering`] names those still
    /// unanswered. The caller bounds the wait; Timer F ends an unanswered one.
    pub fn unregister_trunks(&mut self, now: Instant) -> usize {
        let mut sent = 0;
        for i in 0..self.trunks.len() {
            let t = &mut self.trunks[i];
            t.stopped = true;
            if !t.cfg.register || t.registrar.is_none() || t.unregistering {
                continue;
            }
            if !t.status.registered && !t.reg_pending {
                info!(trunk = %t.cfg.name, "trunk {}: not registered, nothing to unregister", t.cfg.name);
                continue;
            }
            t.unregistering = true;
            t.reg_auth = AuthSession::new(t.cfg.credentials.clone());
            self.send_register(now, i);
            sent += 1;
        }
        sent
    }

    /// Names of the trunks whose REGISTER `Expires: 0` is still unanswered.
    pub fn unregistering(&self) -> Vec<String> {
        self.trunks
            .iter()
            .filter(|t| t.unregistering)
            .map(|t| t.cfg.name.clone())
            .collect()
    }

    pub(super) fn on_unregister_response(
        &mut self,
        now: Instant,
        i: usize,
        status: u16,
        reason: &str,
        msg: &Message,
    ) {
        let t = &mut self.trunks[i];
        match status {
            401 | 407 => match t.reg_auth.on_challenge(status, msg) {
                Ok(()) => self.send_register(now, i),
                Err(why) => self.unregister_done(i, Some(&why.to_string())),
            },
            200..=299 => self.unregister_done(i, None),
            _ => self.unregister_done(i, Some(&format!("{status} {reason}"))),
        }
    }

    /// The unregistration of trunk `i` is over: removed (`failure` None) or not.
    pub(super) fn unregister_done(&mut self, i: usize, failure: Option<&str>) {
        let t = &mut self.trunks[i];
        t.unregistering = false;
        t.reg_pending = false;
        t.status.registered = false;
        t.expires_at = None;
        match failure {
            None => {
                t.status.last_error = Some("unregistered (shutting down)".into());
                info!(trunk = %t.cfg.name, "trunk {}: unregistered", t.cfg.name);
            }
            Some(why) => {
                t.status.last_error = Some(format!("REGISTER Expires: 0: {why}"));
                warn!(trunk = %t.cfg.name, error = %why, "trunk {}: not unregistered; the registrar keeps the binding until it expires", t.cfg.name);
            }
        }
    }
}

/// The host:port a registrar saw our request come from (RFC 3581: `received` and `rport`
/// of the top Via of its answer; either may be missing, then ours stands), when it is not
/// `ours` (the host:port our Contact names). None when the Via says nothing new.
pub(super) fn learned_address(top_via: &str, ours: &str) -> Option<String> {
    let received = message::via_param(top_via, "received").filter(|r| !r.is_empty());
    let rport = message::via_param(top_via, "rport").and_then(|p| p.parse::<u16>().ok());
    if received.is_none() && rport.is_none() {
        return None;
    }
    let (our_host, our_port) = split_host_port(ours)?;
    let host = received.as_deref().unwrap_or(our_host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = rport.unwrap_or(our_port);
    let seen = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    let same = match (seen.parse::<SocketAddr>(), ours.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => seen.eq_ignore_ascii_case(ours),
    };
    (!same).then_some(seen)
}

/// `host:port` or `[v6]:port` split; None without a port.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}
