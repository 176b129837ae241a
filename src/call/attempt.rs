//! One attempt: INVITE, ringing, answer, playout and hang-up, driven from the SIP
//! session's and the playout's events.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use super::outcome::end_outcome;
use super::route::Target;
use super::{AttemptOutcome, CallEngine, HangupCause, PlaceCall, Progress};
use crate::config::SrtpMode;
use crate::domain::RtpReceived;
use crate::media::pacer::ReceiveStats;
use crate::media::srtp::SrtpSession;
use crate::media::{rtcp_socket_beside, Playout, PlayoutEvent, PlayoutSpec, G711};
use crate::sip::sdp::{AudioCodec, MediaOffer, SdesOffer};
use crate::sip::{EndReason, OutgoingCall};
use crate::sip_io::CallEvent;
use crate::trunks::TrunkSlot;

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
        *alerted = false;
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
        let mut playout: Option<Playout> = None;
        // What the far end sent, once the stream has finished (any ending).
        let mut received: Option<RtpReceived> = None;
        let mut times_played = 0u32;
        let mut answered = false;
        // Why we hung up, when we did.
        let mut ours: Option<HangupCause> = None;
        loop {
            tokio::select! {
                ev = session.events.recv() => {
                    let Some(ev) = ev else {
                        session.ended();
                        return AttemptOutcome {
                            received: final_stats(playout.take(), received).await,
                            ..AttemptOutcome::failed("SIP endpoint stopped", false)
                        };
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
                                if !*alerted {
                                    *alerted = true;
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
                            // Their BYE (or ours crossing it, or a cancel) while the
                            // stream still plays: stop it and take its figures.
                            let received = final_stats(playout.take(), received).await;
                            if let (Some(phone), EndReason::Timeout, None) = (&qa_phone, &reason, ours) {
                                // Nothing to fail over to; and not a trunk that was silent.
                                return AttemptOutcome {
                                    received,
                                    ..AttemptOutcome::failed(
                                        format!("no response from {phone} (timeout)"),
                                        false,
                                    )
                                };
                            }
                            return AttemptOutcome {
                                received,
                                ..end_outcome(reason, answered, times_played, ours)
                            };
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
                        Some(PlayoutEvent::Finished { times_played: t, received: r, .. }) => {
                            times_played = times_played.max(t);
                            received = measured(&r);
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
mod tests {
    use super::*;

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
