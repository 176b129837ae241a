//! One attempt: INVITE, ringing, answer, playout and hang-up, driven from the SIP
//! session's and the playout's events.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use super::outcome::end_outcome;
use super::route::Target;
use super::{AttemptOutcome, CallEngine, HangupCause, PlaceCall, Progress};
use crate::config::SrtpMode;
use crate::media::srtp::SrtpSession;
use crate::media::{rtcp_socket_beside, PlayoutEvent, PlayoutSpec, G711};
use crate::sip::sdp::{AudioCodec, MediaOffer, SdesOffer};
use crate::sip::{EndReason, OutgoingCall};
use crate::sip_io::CallEvent;
use crate::trunks::TrunkSlot;

impl CallEngine {
    /// One attempt to `target`; `slot` (a trunk's) hears about the answer.
    pub(super) async fn place_to(
        &self,
        call: PlaceCall<'_>,
        target: Target,
        slot: Option<&TrunkSlot>,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        let Some(pack) = self.prompts.get(call.locale) else {
            return AttemptOutcome::failed(format!("no prompt pack for {}", call.locale), false);
        };
        let destination = target.destination;
        // How reasons name the far end: a QA phone is not "the trunk".
        let qa_phone = target
            .pin_flow
            .then(|| format!("QA phone {}", target.name.trim_start_matches("qa:")));
        let local_ip = match self.local_ip_towards(destination) {
            Ok(ip) => ip,
            Err(e) => {
                let to = qa_phone.as_deref().unwrap_or("trunk");
                return AttemptOutcome::failed(format!("no route to {to}: {e}"), true);
            }
        };
        let rtp_socket = match self.rtp.bind(local_ip) {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::failed(format!("no free RTP port: {e}"), false),
        };
        let rtp_port = match rtp_socket.local_addr() {
            Ok(a) => a.port(),
            Err(e) => return AttemptOutcome::failed(format!("RTP socket: {e}"), false),
        };
        // Fresh SDES keys for every attempt (never logged: their Debug is redacted).
        let srtp = match target.srtp {
            SrtpMode::Off => None,
            mode => match SdesOffer::random(mode == SrtpMode::Required) {
                Ok(o) => Some(o),
                Err(e) => {
                    return AttemptOutcome::failed(
                        format!("no randomness for SRTP keys: {e}"),
                        false,
                    )
                }
            },
        };
        let our_keys = srtp.clone();
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
        let invite_sent = std::time::Instant::now();
        let mut alerted = false;
        let mut session = match self.sip.invite(outgoing).await {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::failed(format!("SIP: {e}"), true),
        };
        // Every log line of the attempt from here on names the SIP call.
        tracing::Span::current().record("sip_call_id", session.call_id.as_str());

        // The ring timer starts with the first provisional response: until
        // then the INVITE transaction's Timer B decides (no response at all
        // is a trunk failure worth failing over, not a user not answering).
        let ring_timeout = tokio::time::sleep(target.ring_timeout);
        tokio::pin!(ring_timeout);
        let mut ringing = false;
        let mut hung_up = false;
        let mut rtp_socket = Some(rtp_socket);
        let mut playout: Option<crate::media::Playout> = None;
        let mut times_played = 0u32;
        let mut answered = false;
        // Why we hung up, when we did.
        let mut ours: Option<HangupCause> = None;
        loop {
            tokio::select! {
                ev = session.events.recv() => {
                    let Some(ev) = ev else {
                        session.ended();
                        return AttemptOutcome::failed("SIP endpoint stopped", false);
                    };
                    match ev {
                        CallEvent::Progress { status, .. } => {
                            if !ringing {
                                ringing = true;
                                ring_timeout
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + target.ring_timeout);
                            }
                            if (180..200).contains(&status) {
                                if !alerted {
                                    alerted = true;
                                    if let Some(m) = &self.metrics {
                                        m.call_alerting(&target.name, invite_sent.elapsed());
                                    }
                                }
                                let _ = progress.send(Progress::Ringing);
                            }
                        }
                        CallEvent::Answered { media } => {
                            if hung_up || answered {
                                continue; // a 200 that crossed our CANCEL; the UA BYEs it
                            }
                            answered = true;
                            if let Some(slot) = slot {
                                slot.answered();
                            }
                            if let Some(m) = &self.metrics {
                                m.call_answered(&target.name, invite_sent.elapsed());
                            }
                            let _ = progress.send(Progress::Answered);
                            // SRTP with the far end's key and ours for the tag it chose;
                            // `required` without one: hang up before any RTP.
                            let srtp = match (&our_keys, &media.srtp) {
                                (Some(mine), Some(theirs)) => mine
                                    .key(theirs.tag)
                                    .map(|k| SrtpSession::new(theirs.suite, k, &theirs.key)),
                                _ => None,
                            };
                            if srtp.is_none() && our_keys.as_ref().is_some_and(|o| o.required) {
                                // parse_answer already refuses such answers; kept as
                                // the last guard before the pacer.
                                hung_up = true;
                                ours = Some(HangupCause::SrtpUnavailable);
                                session.hangup();
                                continue;
                            }
                            tracing::debug!(
                                srtp = srtp.as_ref().map(|s| s.suite().name()),
                                "media negotiated"
                            );
                            let Some(socket) = rtp_socket.take() else { continue };
                            let codec = match media.codec {
                                AudioCodec::Pcmu => G711::Ulaw,
                                AudioCodec::Pcma => G711::Alaw,
                            };
                            let script = call.gate.script(&pack, &call.digits, call.repeat);
                            playout = Some(self.pacer.play(PlayoutSpec {
                                rtcp_socket: rtcp_socket_beside(&socket),
                                socket,
                                remote: SocketAddr::new(media.address, media.port),
                                codec,
                                payload_type: codec.payload_type(),
                                telephone_event_pt: media.telephone_event_pt,
                                pack: pack.clone(),
                                script,
                                srtp,
                            }));
                        }
                        CallEvent::Dtmf { digit } => {
                            // SIP INFO key: same effect as one in the media.
                            if let Some(p) = &playout {
                                p.key(digit);
                            }
                        }
                        CallEvent::Ended { reason } => {
                            session.ended();
                            if let Some(p) = &playout {
                                p.stop();
                            }
                            if let (Some(phone), EndReason::Timeout, None) = (&qa_phone, &reason, ours) {
                                // Nothing to fail over to; and not a trunk that was silent.
                                return AttemptOutcome::failed(
                                    format!("no response from {phone} (timeout)"),
                                    false,
                                );
                            }
                            return end_outcome(reason, answered, times_played, ours);
                        }
                    }
                }
                ev = async {
                    match playout.as_mut() {
                        Some(p) => p.events.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match ev {
                        Some(PlayoutEvent::CodePlayed { times }) => {
                            times_played = times;
                            let _ = progress.send(Progress::Played(times));
                        }
                        Some(PlayoutEvent::KeyPressed { .. }) => {}
                        Some(PlayoutEvent::NoKeypress) => {
                            // Finished follows and hangs up; the call fails unread.
                            ours = Some(HangupCause::NoKeypress);
                        }
                        Some(PlayoutEvent::WrongKey) => {
                            ours = Some(call.gate.wrong_key());
                        }
                        Some(PlayoutEvent::Finished { times_played: t, .. }) => {
                            times_played = times_played.max(t);
                            playout = None;
                            if !hung_up {
                                hung_up = true;
                                session.hangup();
                            }
                        }
                        None => playout = None,
                    }
                }
                _ = &mut ring_timeout, if ringing && !answered && !hung_up => {
                    hung_up = true;
                    ours = Some(HangupCause::RingTimeout);
                    session.hangup();
                }
                _ = call.hangup.requested(), if !hung_up => {
                    hung_up = true;
                    ours = Some(call.hangup.cause().unwrap_or(HangupCause::Canceled));
                    if let Some(p) = &playout {
                        p.stop();
                    }
                    session.hangup();
                }
            }
        }
    }
}
