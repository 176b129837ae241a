//! Client and server transactions (RFC 3261 §17): client INVITE/non-INVITE transactions
//! keyed by (Via branch, method) as §17.1.3 matches responses to them, with Timers A/B/D
//! (INVITE, RFC 6026 "Accepted" state) and E/F/K (non-INVITE); server transactions keyed
//! by (top Via branch, method), a cache of the response for retransmitted requests, and the
//! 2xx-until-ACK retransmission of a re-INVITE answer (§13.3.1.4). Sans-IO like the rest of
//! the user agent: every deadline is an `Instant` handed in by the caller.

pub(super) use super::keys::TxMethod;
use super::keys::{ClientKey, ServerKey, TimerKey};
use super::*;

/// RTT estimate (RFC 3261 §17.1.1.1).
pub(super) const T1: Duration = Duration::from_millis(500);
/// Cap on non-INVITE and 2xx retransmission intervals.
pub(super) const T2: Duration = Duration::from_secs(4);
/// How long the network may hold a message.
pub(super) const T4: Duration = Duration::from_secs(5);
/// 64*T1: Timer B (INVITE), Timer F (non-INVITE), Timer J, Timer M, 2xx retransmission.
pub(super) const TIMEOUT_64T1: Duration = Duration::from_secs(32);
/// Timer D: absorb retransmitted non-2xx finals (at least 32 s for UDP).
pub(super) const TIMER_D: Duration = Duration::from_secs(32);
/// Timer K: absorb retransmitted non-INVITE finals.
pub(super) const TIMER_K: Duration = T4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxState {
    /// Calling (INVITE) / Trying (non-INVITE): retransmitting.
    Calling,
    Proceeding,
    /// Final non-2xx seen (INVITE) or any final (non-INVITE): absorbing retransmissions.
    Completed,
    /// INVITE got a 2xx: stays to route retransmitted and forked 2xx (RFC 6026).
    Accepted,
}

/// What finishing a BYE means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ByePurpose {
    /// Our hangup: the call ends (LocalHangup) when the BYE completes.
    Hangup,
    /// Clean-up of a fork or of a media failure already reported: no event.
    Silent,
}

#[derive(Debug)]
pub(super) struct ClientTx {
    /// The call it belongs to; `NO_CALL` for a trunk's REGISTER/OPTIONS.
    pub(super) call: CallHandle,
    /// The trunk a REGISTER/OPTIONS belongs to.
    pub(super) trunk: Option<TrunkId>,
    pub(super) sent_at: Instant,
    pub(super) method: TxMethod,
    pub(super) destination: SocketAddr,
    pub(super) request: Vec<u8>,
    pub(super) state: TxState,
    pub(super) retransmit_at: Option<Instant>,
    pub(super) interval: Duration,
    /// Timer B / F (or the 64*T1 guard after CANCEL).
    pub(super) timeout_at: Option<Instant>,
    /// Timer D / K / M: when the transaction is forgotten.
    pub(super) remove_at: Option<Instant>,
    /// ACK for a non-2xx final, resent when the final is retransmitted.
    pub(super) ack: Option<Vec<u8>>,
    pub(super) bye_purpose: ByePurpose,
    /// Where it sits in the deadline heap ([`super::timers`]).
    pub(super) queued: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct ServerTx {
    pub(super) destination: SocketAddr,
    pub(super) response: Vec<u8>,
    pub(super) remove_at: Instant,
    pub(super) awaiting_ack: Option<AckWait>,
    /// Where it sits in the deadline heap ([`super::timers`]).
    pub(super) queued: Option<Instant>,
}

/// A 2xx to a re-INVITE is retransmitted by the UAS core until the ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
pub(super) struct AckWait {
    pub(super) call_id: String,
    pub(super) cseq: u32,
    pub(super) retransmit_at: Instant,
    pub(super) interval: Duration,
    pub(super) give_up_at: Instant,
}

pub(super) fn transport_for(
    tcp_peers: &HashMap<SocketAddr, Transport>,
    dest: SocketAddr,
) -> Transport {
    tcp_peers.get(&dest).copied().unwrap_or(Transport::Udp)
}

impl ClientTx {
    /// The earliest instant something is due for this transaction.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.remove_at]
            .into_iter()
            .flatten()
            .min()
    }
}

impl ServerTx {
    /// The earliest instant something is due for this transaction.
    pub(super) fn next_deadline(&self) -> Instant {
        match &self.awaiting_ack {
            Some(w) => self.remove_at.min(w.retransmit_at).min(w.give_up_at),
            None => self.remove_at,
        }
    }
}

impl UserAgent {
    /// Sends `request` and starts its client transaction (INVITE or non-INVITE: Timer
    /// A/E retransmits only over unreliable transports, Timer B/F bounds it).
    pub(super) fn start_client_tx(
        &mut self,
        now: Instant,
        key: ClientKey,
        call: CallHandle,
        destination: SocketAddr,
        request: Vec<u8>,
        bye_purpose: ByePurpose,
    ) {
        self.transmit(destination, request.clone());
        let method = key.1;
        let tcp = self.tcp_peers.contains_key(&destination);
        let tx = ClientTx {
            call,
            trunk: None,
            sent_at: now,
            method,
            destination,
            request,
            state: TxState::Calling,
            // Timers A and E only on unreliable transports (RFC 3261 §17.1.1.2, §17.1.2.2).
            retransmit_at: (!tcp).then_some(now + T1),
            interval: T1,
            timeout_at: Some(now + TIMEOUT_64T1),
            remove_at: None,
            ack: None,
            bye_purpose,
            queued: None,
        };
        self.insert_client_tx(key, tx);
    }

    /// One client transaction whose deadline came: a retransmission (A, E), a timeout
    /// (B, F) or forgetting it (D, K, M). A timeout ends the call or probe it belongs to.
    pub(super) fn client_tx_timer(&mut self, now: Instant, key: &ClientKey) {
        let Some(tx) = self.client_txs.get_mut(key) else {
            return;
        };
        if tx.remove_at.is_some_and(|t| t <= now) {
            self.remove_client_tx(key);
            return;
        }
        if tx.timeout_at.is_some_and(|t| t <= now) {
            let (handle, method, purpose, trunk) = (tx.call, tx.method, tx.bye_purpose, tx.trunk);
            self.remove_client_tx(key);
            match method {
                TxMethod::Invite => {
                    let reason = match self.calls.get(&handle) {
                        Some(c) if c.hangup_requested => EndReason::Canceled,
                        _ => EndReason::Timeout,
                    };
                    self.end_call(now, handle, reason);
                }
                TxMethod::Bye if purpose == ByePurpose::Hangup => {
                    self.end_call(now, handle, EndReason::LocalHangup)
                }
                TxMethod::Register | TxMethod::Options => {
                    if let Some(trunk) = trunk {
                        self.on_trunk_timeout(now, trunk, method);
                    }
                }
                TxMethod::Bye | TxMethod::Cancel => {}
            }
            return;
        }
        if let Some(at) = tx.retransmit_at.filter(|t| *t <= now) {
            tx.interval = match tx.method {
                TxMethod::Invite => tx.interval * 2,
                _ => (tx.interval * 2).min(T2),
            };
            // Scheduled from the previous deadline, so a late wake-up does not drift.
            tx.retransmit_at = Some(at + tx.interval);
            self.retransmits.count_sent(tx.method, Repeated::Request);
            let t = Transmit {
                destination: tx.destination,
                transport: transport_for(&self.tcp_peers, tx.destination),
                payload: tx.request.clone(),
            };
            self.transmits.push_back(t);
        }
    }

    /// One server transaction whose deadline came: forget it, or resend a 2xx awaiting
    /// its ACK.
    pub(super) fn server_tx_timer(&mut self, now: Instant, key: &ServerKey) {
        let Some(stx) = self.server_txs.get_mut(key) else {
            return;
        };
        if stx.remove_at <= now {
            self.server_txs.remove(key);
            return;
        }
        if let Some(w) = &mut stx.awaiting_ack {
            if w.give_up_at <= now {
                stx.awaiting_ack = None;
            } else if w.retransmit_at <= now {
                w.interval = (w.interval * 2).min(T2);
                w.retransmit_at += w.interval;
                self.retransmits
                    .count_sent(Method::Invite, Repeated::Response);
                let t = Transmit {
                    destination: stx.destination,
                    transport: Transport::Udp,
                    payload: stx.response.clone(),
                };
                self.transmits.push_back(t);
            }
        }
    }

    // ---- responses: matched to their client transaction (RFC 3261 §17.1.3) ---------

    pub(super) fn on_response(&mut self, now: Instant, msg: Message) {
        let StartLine::Response { status, reason } = &msg.start else {
            return;
        };
        let (status, reason) = (*status, reason.clone());
        let Some(branch) = msg.top_branch() else {
            debug!("response without a Via branch dropped");
            self.policy.count(DropReason::StrayResponse);
            return;
        };
        let method = match msg.cseq_method {
            Method::Invite => TxMethod::Invite,
            Method::Bye => TxMethod::Bye,
            Method::Cancel => TxMethod::Cancel,
            Method::Register => TxMethod::Register,
            Method::Options => TxMethod::Options,
            other => {
                debug!(method = %other, "response to a method we never send");
                self.policy.count(DropReason::StrayResponse);
                return;
            }
        };
        let key = (branch, method);
        if !self.client_txs.contains_key(&key) {
            // A 2xx outliving its INVITE transaction (e.g. after Timer B) still creates a
            // dialog at the far end: ACK it and BYE it rather than let it dangle.
            let late_2xx_of = (method == TxMethod::Invite && (200..300).contains(&status))
                .then(|| self.by_call_id.get(&msg.call_id).copied())
                .flatten()
                .filter(|h| self.calls.get(h).is_some_and(|c| c.invite_branch == key.0));
            match late_2xx_of {
                Some(handle) => self.on_invite_2xx(now, handle, &msg),
                None => {
                    debug!(branch = %key.0, status, "response matches no transaction");
                    self.policy.count(DropReason::StrayResponse);
                }
            }
            return;
        }
        let timer = TimerKey::Client(key.clone());
        match method {
            TxMethod::Invite => self.on_invite_response(now, key, status, reason, &msg),
            _ => self.on_non_invite_response(now, key, status, reason, &msg),
        }
        // A final response moves the transaction's deadlines (Timer D/K/M).
        self.schedule(timer);
    }

    pub(super) fn on_non_invite_response(
        &mut self,
        now: Instant,
        key: (String, TxMethod),
        status: u16,
        reason: String,
        msg: &Message,
    ) {
        let Some(tx) = self.client_txs.get_mut(&key) else {
            return;
        };
        if status < 200 {
            if tx.state == TxState::Calling {
                // Proceeding: keep retransmitting, at T2 (RFC 3261 §17.1.2.2).
                tx.state = TxState::Proceeding;
                tx.interval = T2;
            }
            return;
        }
        if tx.state == TxState::Completed {
            // A retransmitted final: absorbed (Timer K keeps the transaction for it).
            self.retransmits.count_received(key.1, Repeated::Response);
            return;
        }
        tx.state = TxState::Completed;
        tx.retransmit_at = None;
        tx.timeout_at = None;
        // Timer K is zero on reliable transports: no retransmitted finals to absorb.
        let reliable = self.tcp_peers.contains_key(&tx.destination);
        tx.remove_at = Some(now + if reliable { Duration::ZERO } else { TIMER_K });
        let (handle, purpose, sent_at) = (tx.call, tx.bye_purpose, tx.sent_at);
        if let Some(trunk) = tx.trunk {
            self.on_trunk_response(now, trunk, key.1, status, &reason, now - sent_at, msg);
            return;
        }
        if key.1 == TxMethod::Bye {
            self.on_bye_final(now, handle, purpose, status, msg);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PEER: &str = "127.0.0.1:5070";

    fn ua() -> UserAgent {
        UserAgent::new(UaConfig {
            local_addr: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: None,
            server_header: String::new(),
            policy: Default::default(),
            registrar: None,
        })
    }

    /// Runs a bare client transaction on a fake clock and returns the offsets (in ms) at
    /// which the request went out, and whether the transaction is gone at the end.
    fn run(method: TxMethod, tcp: bool, for_secs: u64) -> (Vec<u128>, bool) {
        let mut ua = ua();
        let dest: SocketAddr = PEER.parse().unwrap();
        if tcp {
            ua.tcp_peers.insert(dest, Transport::Tcp);
        }
        let start = Instant::now();
        let key = ("z9hG4bKt".to_string(), method);
        ua.start_client_tx(start, key, NO_CALL, dest, b"X".to_vec(), ByePurpose::Silent);
        let mut sent = Vec::new();
        let mut now = start;
        loop {
            while let Some(t) = ua.poll_transmit() {
                assert_eq!(t.destination, dest);
                sent.push((now - start).as_millis());
            }
            match ua.poll_timeout() {
                Some(t) if t <= start + Duration::from_secs(for_secs) => {
                    now = t;
                    ua.handle_timeout(now);
                }
                _ => break,
            }
        }
        (sent, ua.client_txs.is_empty())
    }

    #[test]
    fn non_invite_retransmits_on_timer_e_capped_at_t2_until_timer_f() {
        let (sent, gone) = run(TxMethod::Options, false, 40);
        let want: Vec<u128> = vec![
            0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
        ];
        assert_eq!(sent, want);
        assert!(gone, "Timer F ends it at 32 s");
    }

    #[test]
    fn invite_retransmits_on_timer_a_doubling_without_cap() {
        let (sent, gone) = run(TxMethod::Invite, false, 40);
        assert_eq!(sent, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert!(gone);
    }

    #[test]
    fn reliable_transport_sends_once() {
        let (sent, gone) = run(TxMethod::Options, true, 40);
        assert_eq!(sent, vec![0]);
        assert!(gone, "Timer F still bounds it");
    }

    #[test]
    fn response_matching_no_transaction_changes_nothing() {
        let mut ua = ua();
        let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnone\r\n\
                     From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\n\
                     CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        ua.handle_datagram(Instant::now(), PEER.parse().unwrap(), stray.as_bytes());
        assert!(ua.poll_transmit().is_none());
        assert!(ua.poll_event().is_none());
        assert!(ua.is_idle());
    }
}
