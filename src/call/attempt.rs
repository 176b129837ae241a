//! One attempt: INVITE, ringing, answer, playout and hang-up. [`Attempt`] is the
//! attempt as a small state machine (`on_sip`, `on_playout`, `on_ring_timeout`,
//! `on_hangup`, then `end`): pure code that answers each event with the [`Action`]s to
//! take, and that tests drive without sockets. [`CallEngine::place_to`] sets the call
//! up and carries the actions out on the SIP session, the pacer and the ring timer.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use tokio::sync::mpsc;

use super::outcome::end_outcome;
use super::route::Target;
use super::{AttemptOutcome, CallEngine, HangupCause, PlaceCall, Progress};
use crate::config::SrtpMode;
use crate::domain::RtpReceived;
use crate::media::pacer::ReceiveStats;
use crate::media::srtp::SrtpSession;
use crate::media::{rtcp_socket_beside, Playout, PlayoutEvent, PlayoutSpec, G711};
use crate::sip::sdp::{AudioCodec, MediaAnswer, MediaOffer, SdesOffer};
use crate::sip::{EndReason, OutgoingCall};
use crate::sip_io::{CallEvent, CallSession};
use crate::trunks::TrunkSlot;

/// What the driver does for the attempt after an event.
#[derive(Debug)]
pub(super) enum Action {
    /// The first provisional response: the ring timer starts now.
    StartRingTimer,
    /// The first 180/183: time to alert, for the metrics.
    Alerting,
    /// Tell the dialer.
    Progress(Progress),
    /// The call was answered: the trunk's answer count and the metrics.
    Answered,
    /// Start the prompts towards the answer's media address.
    Play {
        /// The negotiated media.
        media: MediaAnswer,
        /// SRTP with the far end's key and ours for the tag it chose (boxed: the
        /// session's key schedules are large beside the other actions).
        srtp: Option<Box<SrtpSession>>,
    },
    /// A key that came by SIP INFO: same effect as one in the media.
    Key(char),
    /// Stop the stream (its figures are taken at the end).
    StopPlayout,
    /// The stream said it is over: drop it.
    PlayoutOver,
    /// BYE (after the answer) or CANCEL (before).
    Hangup,
}

/// One attempt's state between the INVITE and its end.
#[derive(Debug)]
pub(super) struct Attempt {
    /// Our SDES offer, when SRTP was offered.
    our_keys: Option<SdesOffer>,
    /// How reasons name the far end when it is a QA phone, not "the trunk".
    qa_phone: Option<String>,
    /// What a wrong key means for this call's key gate.
    wrong_key: HangupCause,
    ringing: bool,
    alerted: bool,
    answered: bool,
    hung_up: bool,
    times_played: u32,
    /// Why we hung up, when we did.
    ours: Option<HangupCause>,
    /// What the far end sent, once the stream has finished (any ending).
    received: Option<RtpReceived>,
}

impl Attempt {
    pub(super) fn new(
        our_keys: Option<SdesOffer>,
        qa_phone: Option<String>,
        wrong_key: HangupCause,
    ) -> Attempt {
        Attempt {
            our_keys,
            qa_phone,
            wrong_key,
            ringing: false,
            alerted: false,
            answered: false,
            hung_up: false,
            times_played: 0,
            ours: None,
            received: None,
        }
    }

    /// Whether the far end alerted (a provisional beyond 100): it then has the call,
    /// and no other target of the trunk may get it.
    pub(super) fn alerted(&self) -> bool {
        self.alerted
    }

    /// The ring timer runs from the first provisional response until the answer or
    /// our hang-up. Before it, the INVITE transaction's Timer B decides: no response
    /// at all is a trunk failure worth failing over, not a user not answering.
    pub(super) fn ring_timer_armed(&self) -> bool {
        self.ringing && !self.answered && !self.hung_up
    }

    /// Whether a hang-up request still has something to do.
    pub(super) fn may_hang_up(&self) -> bool {
        !self.hung_up
    }

    /// A SIP event other than the end of the call (see [`Self::end`]).
    pub(super) fn on_sip(&mut self, ev: CallEvent) -> Vec<Action> {
        match ev {
            CallEvent::Progress { status, .. } => {
                let mut out = Vec::new();
                if !self.ringing {
                    self.ringing = true;
                    out.push(Action::StartRingTimer);
                }
                if (180..200).contains(&status) {
                    if !self.alerted {
                        self.alerted = true;
                        out.push(Action::Alerting);
                    }
                    out.push(Action::Progress(Progress::Ringing));
                }
                out
            }
            CallEvent::Answered { media } => self.on_answer(media),
            CallEvent::Dtmf { digit } => vec![Action::Key(digit)],
            // The driver ends the attempt on it (`end`); nothing to do here.
            CallEvent::Ended { .. } => Vec::new(),
        }
    }

    fn on_answer(&mut self, media: MediaAnswer) -> Vec<Action> {
        if self.hung_up || self.answered {
            return Vec::new(); // a 200 that crossed our CANCEL; the UA BYEs it
        }
        self.answered = true;
        let mut out = vec![Action::Answered, Action::Progress(Progress::Answered)];
        let srtp = match (&self.our_keys, &media.srtp) {
            (Some(mine), Some(theirs)) => mine
                .key(theirs.tag)
                .map(|k| Box::new(SrtpSession::new(theirs.suite, k, &theirs.key))),
            _ => None,
        };
        if srtp.is_none() && self.our_keys.as_ref().is_some_and(|o| o.required) {
            // parse_answer already refuses such answers; kept as the last guard
            // before the pacer: hang up before any RTP.
            self.hung_up = true;
            self.ours = Some(HangupCause::SrtpUnavailable);
            out.push(Action::Hangup);
            return out;
        }
        out.push(Action::Play { media, srtp });
        out
    }

    /// An event of the playing stream; `None`: the stream is gone.
    pub(super) fn on_playout(&mut self, ev: Option<PlayoutEvent>) -> Vec<Action> {
        match ev {
            Some(PlayoutEvent::CodePlayed { times }) => {
                self.times_played = times;
                vec![Action::Progress(Progress::Played(times))]
            }
            Some(PlayoutEvent::KeyPressed { .. }) => Vec::new(),
            Some(PlayoutEvent::NoKeypress) => {
                // Finished follows and hangs up; the call fails unread.
                self.ours = Some(HangupCause::NoKeypress);
                Vec::new()
            }
            Some(PlayoutEvent::WrongKey) => {
                self.ours = Some(self.wrong_key);
                Vec::new()
            }
            Some(PlayoutEvent::Finished {
                times_played,
                received,
                ..
            }) => {
                self.times_played = self.times_played.max(times_played);
                self.received = measured(&received);
                let mut out = vec![Action::PlayoutOver];
                if !self.hung_up {
                    self.hung_up = true;
                    out.push(Action::Hangup);
                }
                out
            }
            None => vec![Action::PlayoutOver],
        }
    }

    /// The ring timer ran out: give up on the callee.
    pub(super) fn on_ring_timeout(&mut self) -> Vec<Action> {
        self.hung_up = true;
        self.ours = Some(HangupCause::RingTimeout);
        vec![Action::Hangup]
    }

    /// The dialer asked to hang up (cancel, a check approved it, shutdown).
    pub(super) fn on_hangup(&mut self, cause: HangupCause) -> Vec<Action> {
        self.hung_up = true;
        self.ours = Some(cause);
        vec![Action::StopPlayout, Action::Hangup]
    }

    /// The figures of what the far end sent, as the stream's `Finished` gave them.
    pub(super) fn received(&self) -> Option<RtpReceived> {
        self.received.clone()
    }

    /// The outcome once the SIP session ended for `reason`; `received` is the final
    /// media figures.
    pub(super) fn end(&self, reason: EndReason, received: Option<RtpReceived>) -> AttemptOutcome {
        if let (Some(phone), EndReason::Timeout, None) = (&self.qa_phone, &reason, self.ours) {
            // Nothing to fail over to; and not a trunk that was silent.
            return AttemptOutcome {
                received,
                ..AttemptOutcome::failed(format!("no response from {phone} (timeout)"), false)
            };
        }
        AttemptOutcome {
            received,
            ..end_outcome(reason, self.answered, self.times_played, self.ours)
        }
    }
}

/// What an attempt needs once the INVITE is ready to go.
struct Prepared {
    outgoing: OutgoingCall,
    tls: Option<crate::sip::TlsTarget>,
    rtp_socket: UdpSocket,
    our_keys: Option<SdesOffer>,
}

impl CallEngine {
    /// One attempt to `target`; `slot` (a trunk's) hears about the answer. `alerted`
    /// is set when the far end sent a provisional response beyond 100 (it then has the
    /// call: no other target of the trunk may get it).
    pub(super) async fn place_to(
        &self,
        call: &PlaceCall<'_>,
        target: Target,
        slot: Option<&TrunkSlot>,
        progress: mpsc::UnboundedSender<Progress>,
        alerted: &mut bool,
    ) -> AttemptOutcome {
        let Some(pack) = self.prompts.get(call.locale) else {
            return AttemptOutcome::failed(format!("no prompt pack for {}", call.locale), false);
        };
        let qa_phone = target
            .pin_flow
            .then(|| format!("QA phone {}", target.name.trim_start_matches("qa:")));
        let name = target.name.clone();
        let ring_after = target.ring_timeout;
        let prepared = match self.prepare(target, qa_phone.as_deref()) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let invite_sent = std::time::Instant::now();
        *alerted = false;
        let mut session = match self.sip.invite_with(prepared.outgoing, prepared.tls).await {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::failed(format!("SIP: {e}"), true),
        };
        // Every log line of the attempt from here on names the SIP call.
        tracing::Span::current().record("sip_call_id", session.call_id.as_str());

        let ctx = Context {
            engine: self,
            call,
            pack: &pack,
            slot,
            progress,
            name: &name,
            invite_sent,
        };
        let mut attempt = Attempt::new(prepared.our_keys, qa_phone, call.gate.wrong_key());
        let mut media = Media {
            socket: Some(prepared.rtp_socket),
            playout: None,
        };
        let ring_timeout = tokio::time::sleep(ring_after);
        tokio::pin!(ring_timeout);
        loop {
            let actions = tokio::select! {
                ev = session.events.recv() => match ev {
                    Some(CallEvent::Ended { reason }) => {
                        session.ended();
                        // Their BYE (or ours crossing it, or a cancel) while the stream
                        // still plays: stop it and take its figures.
                        let received = final_stats(media.playout.take(), attempt.received()).await;
                        *alerted = attempt.alerted();
                        return attempt.end(reason, received);
                    }
                    Some(ev) => attempt.on_sip(ev),
                    None => {
                        session.ended();
                        *alerted = attempt.alerted();
                        return AttemptOutcome {
                            received: final_stats(media.playout.take(), attempt.received()).await,
                            ..AttemptOutcome::failed("SIP endpoint stopped", false)
                        };
                    }
                },
                ev = async {
                    match media.playout.as_mut() {
                        Some(p) => p.events.recv().await,
                        None => std::future::pending().await,
                    }
                } => attempt.on_playout(ev),
                _ = &mut ring_timeout, if attempt.ring_timer_armed() => attempt.on_ring_timeout(),
                _ = call.hangup.requested(), if attempt.may_hang_up() => {
                    attempt.on_hangup(call.hangup.cause().unwrap_or(HangupCause::Canceled))
                }
            };
            for action in actions {
                if let Action::StartRingTimer = action {
                    ring_timeout
                        .as_mut()
                        .reset(tokio::time::Instant::now() + ring_after);
                } else {
                    ctx.carry_out(action, &mut media, &session, alerted);
                }
            }
        }
    }

    /// The RTP socket, the SDES keys and the INVITE of an attempt; an outcome when the
    /// call cannot be set up here (no route, no port, no randomness).
    fn prepare(&self, target: Target, qa_phone: Option<&str>) -> Result<Prepared, AttemptOutcome> {
        let destination = target.destination;
        let local_ip: IpAddr = self.local_ip_towards(destination).map_err(|e| {
            let to = qa_phone.unwrap_or("trunk");
            AttemptOutcome::failed(format!("no route to {to}: {e}"), true)
        })?;
        let rtp_socket = self
            .rtp
            .bind(local_ip)
            .map_err(|e| AttemptOutcome::failed(format!("no free RTP port: {e}"), false))?;
        let rtp_port = rtp_socket
            .local_addr()
            .map_err(|e| AttemptOutcome::failed(format!("RTP socket: {e}"), false))?
            .port();
        // Fresh SDES keys for every attempt (never logged: their Debug is redacted).
        let srtp = match target.srtp {
            SrtpMode::Off => None,
            mode => Some(SdesOffer::random(mode == SrtpMode::Required).map_err(|e| {
                AttemptOutcome::failed(format!("no randomness for SRTP keys: {e}"), false)
            })?),
        };
        let our_keys = srtp.clone();
        let tls = target.tls;
        let outgoing = OutgoingCall {
            request_uri: target.request_uri,
            destination,
            from_uri: target.from_uri,
            from_display: target.from_display,
            media: MediaOffer {
                address: self.external_ip.unwrap_or(local_ip),
                port: rtp_port,
                codecs: target.codecs,
                telephone_event_pt: 101,
                ptime_ms: 20,
                srtp,
            },
            credentials: target.credentials,
            extra_headers: target.extra_headers,
            transport: target.transport,
            pin_flow: target.pin_flow,
        };
        Ok(Prepared {
            outgoing,
            tls,
            rtp_socket,
            our_keys,
        })
    }

    /// Starts the prompts on the attempt's RTP socket towards the answer's address.
    fn play(
        &self,
        call: &PlaceCall<'_>,
        pack: &std::sync::Arc<crate::media::PromptPack>,
        media: &mut Media,
        answer: MediaAnswer,
        srtp: Option<Box<SrtpSession>>,
    ) {
        tracing::debug!(
            srtp = srtp.as_ref().map(|s| s.suite().name()),
            "media negotiated"
        );
        let Some(socket) = media.socket.take() else {
            return;
        };
        let codec = match answer.codec {
            AudioCodec::Pcmu => G711::Ulaw,
            AudioCodec::Pcma => G711::Alaw,
        };
        let script = call.gate.script(pack, &call.digits, call.repeat);
        media.playout = Some(self.pacer.play(PlayoutSpec {
            rtcp_socket: rtcp_socket_beside(&socket),
            socket,
            remote: SocketAddr::new(answer.address, answer.port),
            codec,
            payload_type: codec.payload_type(),
            telephone_event_pt: answer.telephone_event_pt,
            pack: pack.clone(),
            script,
            srtp: srtp.map(|s| *s),
        }));
    }
}

/// What carrying out an attempt's actions needs besides its media and SIP session.
struct Context<'a, 'c> {
    engine: &'a CallEngine,
    call: &'a PlaceCall<'c>,
    pack: &'a std::sync::Arc<crate::media::PromptPack>,
    slot: Option<&'a TrunkSlot>,
    progress: mpsc::UnboundedSender<Progress>,
    /// The trunk's name (`qa:<user>` for a QA phone), for the metrics.
    name: &'a str,
    invite_sent: std::time::Instant,
}

impl Context<'_, '_> {
    /// Does what `action` says (the ring timer excepted: the driver owns it).
    fn carry_out(
        &self,
        action: Action,
        media: &mut Media,
        session: &CallSession,
        alerted: &mut bool,
    ) {
        let metrics = self.engine.metrics.as_ref();
        match action {
            Action::Alerting => {
                *alerted = true;
                if let Some(m) = metrics {
                    m.call_alerting(self.name, self.invite_sent.elapsed());
                }
            }
            Action::Progress(p) => {
                let _ = self.progress.send(p);
            }
            Action::Answered => {
                if let Some(slot) = self.slot {
                    slot.answered();
                }
                if let Some(m) = metrics {
                    m.call_answered(self.name, self.invite_sent.elapsed());
                }
            }
            Action::Play {
                media: answer,
                srtp,
            } => {
                self.engine.play(self.call, self.pack, media, answer, srtp);
            }
            other => media.apply(other, session),
        }
    }
}

/// The attempt's media: its RTP socket until the answer, then the stream playing on it.
struct Media {
    socket: Option<UdpSocket>,
    playout: Option<Playout>,
}

impl Media {
    /// The actions that touch only the stream or the SIP session.
    fn apply(&mut self, action: Action, session: &CallSession) {
        match action {
            Action::Key(digit) => {
                if let Some(p) = &self.playout {
                    p.key(digit);
                }
            }
            Action::StopPlayout => {
                if let Some(p) = &self.playout {
                    p.stop();
                }
            }
            Action::PlayoutOver => self.playout = None,
            Action::Hangup => session.hangup(),
            Action::StartRingTimer
            | Action::Alerting
            | Action::Progress(_)
            | Action::Answered
            | Action::Play { .. } => {}
        }
    }
}

/// How long a stream that is still playing when the call ends may take to say
/// `Finished` (one wake-up of the pacer thread; generous for an overloaded one).
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The far end's media figures at the end of an attempt: the stream's own when it is
/// still playing (stopped now), else those its `Finished` already gave.
async fn final_stats(
    playout: Option<Playout>,
    received: Option<RtpReceived>,
) -> Option<RtpReceived> {
    let Some(p) = playout else { return received };
    match tokio::time::timeout(FINISH_WAIT, p.finish()).await {
        Ok(Some(stats)) => measured(&stats),
        _ => received,
    }
}

/// The attempt's record of what the far end sent; `None` when nothing came.
fn measured(stats: &ReceiveStats) -> Option<RtpReceived> {
    (stats.packets > 0 || stats.srtp_rejected > 0).then(|| RtpReceived {
        packets: stats.packets,
        lost: stats.lost,
        jitter_us: (stats.jitter_ms * 1000.0).round().max(0.0) as u64,
        codec: stats.codec.map(|c| {
            match c {
                G711::Ulaw => "PCMU",
                G711::Alaw => "PCMA",
            }
            .to_owned()
        }),
        srtp_rejected: stats.srtp_rejected,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::domain::{CallReason, CallStatus};

    fn plain() -> Attempt {
        Attempt::new(None, None, HangupCause::NoKeypress)
    }

    fn answer(srtp: Option<crate::sip::sdp::SdesAnswer>) -> CallEvent {
        CallEvent::Answered {
            media: MediaAnswer {
                address: IpAddr::from([127, 0, 0, 1]),
                port: 40000,
                codec: AudioCodec::Pcma,
                telephone_event_pt: Some(101),
                ptime_ms: Some(20),
                srtp,
            },
        }
    }

    fn progress(status: u16) -> CallEvent {
        CallEvent::Progress {
            status,
            early_media: None,
        }
    }

    fn finished(times_played: u32) -> Option<PlayoutEvent> {
        Some(PlayoutEvent::Finished {
            times_played,
            packets_sent: 900,
            received: ReceiveStats {
                packets: 850,
                ..ReceiveStats::default()
            },
        })
    }

    fn names(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::StartRingTimer => "ring_timer",
                Action::Alerting => "alerting",
                Action::Progress(Progress::Ringing) => "ringing",
                Action::Progress(Progress::Answered) => "answered_progress",
                Action::Progress(Progress::Played(_)) => "played",
                Action::Answered => "answered",
                Action::Play { .. } => "play",
                Action::Key(_) => "key",
                Action::StopPlayout => "stop",
                Action::PlayoutOver => "over",
                Action::Hangup => "hangup",
            })
            .collect()
    }

    #[test]
    fn the_ring_timer_starts_at_the_first_provisional_and_alerting_is_told_once() {
        let mut a = plain();
        assert!(!a.ring_timer_armed(), "Timer B decides until a provisional");
        assert_eq!(names(&a.on_sip(progress(100))), ["ring_timer"]);
        assert!(a.ring_timer_armed());
        assert!(!a.alerted(), "a 100 is no alert");
        assert_eq!(names(&a.on_sip(progress(180))), ["alerting", "ringing"]);
        assert_eq!(names(&a.on_sip(progress(183))), ["ringing"]);
        assert!(a.alerted());
    }

    #[test]
    fn an_answer_plays_then_the_end_of_the_stream_hangs_up_once() {
        let mut a = plain();
        a.on_sip(progress(180));
        assert_eq!(
            names(&a.on_sip(answer(None))),
            ["answered", "answered_progress", "play"]
        );
        assert!(!a.ring_timer_armed(), "answered: no ring timeout");
        assert_eq!(
            names(&a.on_playout(Some(PlayoutEvent::CodePlayed { times: 1 }))),
            ["played"]
        );
        assert_eq!(names(&a.on_playout(finished(2))), ["over", "hangup"]);
        assert!(!a.may_hang_up(), "our BYE is out already");
        let outcome = a.end(EndReason::LocalHangup, a.received());
        assert_eq!(outcome.status, CallStatus::Completed);
        assert_eq!(outcome.times_played, 2);
        assert_eq!(outcome.received.map(|r| r.packets), Some(850));
    }

    #[test]
    fn a_200_that_crossed_our_cancel_is_not_played() {
        let mut a = plain();
        a.on_sip(progress(180));
        assert_eq!(
            names(&a.on_hangup(HangupCause::Canceled)),
            ["stop", "hangup"]
        );
        assert!(a.on_sip(answer(None)).is_empty());
        let outcome = a.end(EndReason::Canceled, None);
        assert_eq!(outcome.status, CallStatus::Canceled);
        assert_eq!(outcome.reason, Some(CallReason::Canceled));
    }

    #[test]
    fn nobody_answering_within_the_ring_timeout_is_no_answer() {
        let mut a = plain();
        a.on_sip(progress(180));
        assert_eq!(names(&a.on_ring_timeout()), ["hangup"]);
        let outcome = a.end(EndReason::Canceled, None);
        assert_eq!(outcome.status, CallStatus::NoAnswer);
        assert!(
            !outcome.failover,
            "the callee did not answer: no other trunk"
        );
    }

    #[test]
    fn required_srtp_without_a_usable_key_hangs_up_before_any_rtp() {
        let offer = SdesOffer::random(true).unwrap();
        let mut a = Attempt::new(Some(offer), None, HangupCause::NoKeypress);
        let actions = a.on_sip(answer(None));
        assert_eq!(names(&actions), ["answered", "answered_progress", "hangup"]);
        let outcome = a.end(EndReason::LocalHangup, None);
        assert_eq!(outcome.reason, Some(CallReason::SrtpUnavailable));
        assert_eq!(outcome.times_played, 0);
    }

    #[test]
    fn a_wrong_key_fails_the_call_with_the_gate_s_reason() {
        let mut a = Attempt::new(None, None, HangupCause::BindMismatch);
        a.on_sip(answer(None));
        assert!(a.on_playout(Some(PlayoutEvent::WrongKey)).is_empty());
        assert_eq!(names(&a.on_playout(finished(0))), ["over", "hangup"]);
        let outcome = a.end(EndReason::LocalHangup, None);
        assert_eq!(outcome.status, CallStatus::Failed);
        assert_eq!(outcome.reason, Some(CallReason::BindMismatch));
    }

    #[test]
    fn a_silent_qa_phone_is_named_and_not_failed_over() {
        let a = Attempt::new(
            None,
            Some("QA phone qa-alice".into()),
            HangupCause::NoKeypress,
        );
        let outcome = a.end(EndReason::Timeout, None);
        assert_eq!(
            outcome.attempt_reason(),
            Some("no response from QA phone qa-alice (timeout)")
        );
        assert!(!outcome.failover);
        let trunk = plain().end(EndReason::Timeout, None);
        assert!(trunk.failover, "a silent trunk is worth the next one");
    }

    #[test]
    fn a_key_by_sip_info_goes_to_the_stream() {
        let mut a = plain();
        assert_eq!(names(&a.on_sip(CallEvent::Dtmf { digit: '4' })), ["key"]);
    }

    #[test]
    fn nothing_received_records_nothing() {
        assert_eq!(measured(&ReceiveStats::default()), None);
    }

    #[test]
    fn measured_figures_carry_over() {
        let m = measured(&ReceiveStats {
            packets: 340,
            lost: 60,
            jitter_ms: 41.2504,
            payload_type: Some(8),
            codec: Some(G711::Alaw),
            srtp_rejected: 3,
        });
        assert_eq!(
            m,
            Some(RtpReceived {
                packets: 340,
                lost: 60,
                jitter_us: 41250,
                codec: Some("PCMA".into()),
                srtp_rejected: 3,
            })
        );
    }
}
