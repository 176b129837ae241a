//! The call engine: places one call attempt through one trunk and plays the
//! code when it is answered. It drives the SIP endpoint (`sip_io`) and the
//! RTP pacer (`media`) and reports progress on a channel; it knows nothing of
//! HTTP or SQL.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{CodecName, PortRange, SipTarget, TrunkSettings};
use crate::domain::CallStatus;
use crate::media::{
    rtcp_socket_beside, CallScript, Pacer, PlayoutEvent, PlayoutSpec, PromptLibrary, G711,
};
use crate::sip::sdp::{AudioCodec, MediaOffer};
use crate::sip::{EndReason, OutgoingCall, TrunkConfig, TrunkStatus};
use crate::sip_io::{CallEvent, SipEndpoint};

/// Progress of one attempt, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Ringing,
    Answered,
    /// The code has now been read `n` times.
    Played(u32),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    pub status: CallStatus,
    pub sip_code: Option<u16>,
    pub reason: Option<String>,
    pub times_played: u32,
    /// Worth trying the next trunk (5xx, 6xx other than busy/decline, no
    /// response at all, or no trunk capacity).
    pub failover: bool,
}

impl AttemptOutcome {
    pub fn failed(reason: impl Into<String>, failover: bool) -> Self {
        Self {
            status: CallStatus::Failed,
            sip_code: None,
            reason: Some(reason.into()),
            times_played: 0,
            failover,
        }
    }
}

/// What to say to whom.
pub struct PlaceCall<'a> {
    /// E.164 number (`+31612345678`) or a full `sip:` URI.
    pub to: &'a str,
    pub trunk: &'a TrunkSettings,
    pub digits: Vec<u8>,
    pub locale: &'a str,
    pub repeat: u32,
    /// Ask for a key first and read the code only after one (SPEC §4).
    pub require_keypress: bool,
    /// Hang up (or cancel) when this fires, e.g. when the verification is
    /// canceled.
    pub cancel: CancellationToken,
}

/// Live per-trunk counters, shared with the dialer for routing decisions
/// and with the ops API.
#[derive(Debug, Default)]
pub struct TrunkCounters {
    pub active: AtomicU32,
    pub total: AtomicU64,
    pub answered: AtomicU64,
}

pub struct CallEngine {
    sip: SipEndpoint,
    pacer: Pacer,
    prompts: Arc<PromptLibrary>,
    rtp: RtpPorts,
    external_ip: Option<IpAddr>,
    counters: Mutex<HashMap<String, Arc<TrunkCounters>>>,
}

/// Hands out RTP ports from the configured range, round robin, binding
/// each to prove it is free.
struct RtpPorts {
    range: PortRange,
    next: AtomicU32,
}

impl RtpPorts {
    fn bind(&self, ip: IpAddr) -> std::io::Result<UdpSocket> {
        let first = u32::from(self.range.first);
        let span = u32::from(self.range.last) - first + 1;
        let mut last_err = None;
        for _ in 0..span.min(2000) {
            let offset = self.next.fetch_add(2, Ordering::Relaxed) % span;
            // RTP on even ports, RTCP (later) on the odd one above.
            let port = (first + offset) & !1;
            let Ok(port) = u16::try_from(port.max(first)) else {
                continue;
            };
            match UdpSocket::bind(SocketAddr::new(ip, port)) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("RTP port range exhausted")))
    }
}

impl CallEngine {
    pub fn new(
        sip: SipEndpoint,
        pacer: Pacer,
        prompts: Arc<PromptLibrary>,
        rtp_ports: PortRange,
        external_ip: Option<IpAddr>,
    ) -> Self {
        Self {
            sip,
            pacer,
            prompts,
            rtp: RtpPorts {
                range: rtp_ports,
                next: AtomicU32::new(rand::random::<u32>() % 1000 * 2),
            },
            external_ip,
            counters: Mutex::new(HashMap::new()),
        }
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    pub fn prompts(&self) -> &PromptLibrary {
        &self.prompts
    }

    pub fn counters(&self, trunk: &str) -> Arc<TrunkCounters> {
        let mut map = match self.counters.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(trunk.to_string()).or_default().clone()
    }

    pub async fn shutdown(&self) {
        self.sip.shutdown().await;
    }

    /// Starts registration (`register = true`) and OPTIONS keepalive for each trunk.
    /// Call once after start-up; the state is then kept by the SIP driver.
    pub async fn start_trunks(&self, trunks: &[TrunkSettings]) -> Result<(), String> {
        for t in trunks {
            let cfg = trunk_config(t, false).await?;
            // Outcomes are read through `trunk_status`; nobody waits on the channel.
            self.sip
                .add_trunk(cfg)
                .map_err(|e| format!("trunk {}: {e}", t.name))?;
        }
        Ok(())
    }

    /// What registration and keepalive know about a trunk (`registered`, `reachable`,
    /// `last_error`); the default (nothing known) before `start_trunks`.
    pub fn trunk_status(&self, name: &str) -> TrunkStatus {
        self.sip.trunk_status(name).unwrap_or_default()
    }

    /// Whether the dialer should offer calls to this trunk now: registered when it must
    /// register, and not known to be unreachable.
    pub fn trunk_usable(&self, trunk: &TrunkSettings) -> bool {
        let st = self.trunk_status(&trunk.name);
        (!trunk.register || st.registered) && st.reachable != Some(false)
    }

    /// Places one attempt and plays the code if answered. Never panics on
    /// anything the network does; every way it can end is an outcome.
    pub async fn place(
        &self,
        call: PlaceCall<'_>,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        let counters = self.counters(&call.trunk.name);
        if counters.active.load(Ordering::Relaxed) >= call.trunk.max_concurrent_calls {
            return AttemptOutcome::failed(
                format!("trunk {} is at max_concurrent_calls", call.trunk.name),
                true,
            );
        }
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        let outcome = self.place_inner(call, &counters, progress).await;
        counters.active.fetch_sub(1, Ordering::Relaxed);
        outcome
    }

    async fn place_inner(
        &self,
        call: PlaceCall<'_>,
        counters: &TrunkCounters,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        let Some(pack) = self.prompts.get(call.locale) else {
            return AttemptOutcome::failed(format!("no prompt pack for {}", call.locale), false);
        };
        let proxy = &call.trunk.proxy;
        let destination = match resolve(proxy).await {
            Ok(a) => a,
            Err(e) => return AttemptOutcome::failed(e, true),
        };
        let local_ip = match self.local_ip_towards(destination) {
            Ok(ip) => ip,
            Err(e) => return AttemptOutcome::failed(format!("no route to trunk: {e}"), true),
        };
        let rtp_socket = match self.rtp.bind(local_ip) {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::failed(format!("no free RTP port: {e}"), false),
        };
        let rtp_port = match rtp_socket.local_addr() {
            Ok(a) => a.port(),
            Err(e) => return AttemptOutcome::failed(format!("RTP socket: {e}"), false),
        };
        let codecs = call
            .trunk
            .codecs
            .iter()
            .map(|c| match c {
                CodecName::Pcma => AudioCodec::Pcma,
                CodecName::Pcmu => AudioCodec::Pcmu,
            })
            .collect();
        let request_uri = if call.to.starts_with("sip:") {
            call.to.to_string()
        } else {
            format!("sip:{}@{}", call.to, proxy.host_port())
        };
        let outgoing = OutgoingCall {
            request_uri,
            destination,
            from_uri: call.trunk.from.clone(),
            from_display: call.trunk.from_display.clone(),
            media: MediaOffer {
                address: self.external_ip.unwrap_or(local_ip),
                port: rtp_port,
                codecs,
                telephone_event_pt: 101,
                ptime_ms: 20,
            },
            credentials: call.trunk.credentials(),
            extra_headers: caller_id_headers(call.trunk),
            tcp: proxy.transport == crate::config::Transport::Tcp,
        };
        let mut session = match self.sip.invite(outgoing).await {
            Ok(s) => s,
            Err(e) => return AttemptOutcome::failed(format!("SIP: {e}"), true),
        };

        // The ring timer starts with the first provisional response: until
        // then the INVITE transaction's Timer B decides (no response at all
        // is a trunk failure worth failing over, not a user not answering).
        let ring_timeout = tokio::time::sleep(call.trunk.ring_timeout.0);
        tokio::pin!(ring_timeout);
        let mut ringing = false;
        let mut hung_up = false;
        let mut rtp_socket = Some(rtp_socket);
        let mut playout: Option<crate::media::Playout> = None;
        let mut times_played = 0u32;
        let mut answered = false;
        let mut hangup_reason: Option<String> = None;
        loop {
            tokio::select! {
                ev = session.events.recv() => {
                    let Some(ev) = ev else {
                        return AttemptOutcome::failed("SIP endpoint stopped", false);
                    };
                    match ev {
                        CallEvent::Progress { status, .. } => {
                            if !ringing {
                                ringing = true;
                                ring_timeout
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + call.trunk.ring_timeout.0);
                            }
                            if (180..200).contains(&status) {
                                let _ = progress.send(Progress::Ringing);
                            }
                        }
                        CallEvent::Answered { media } => {
                            if hung_up || answered {
                                continue; // a 200 that crossed our CANCEL; the UA BYEs it
                            }
                            answered = true;
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                            let _ = progress.send(Progress::Answered);
                            let Some(socket) = rtp_socket.take() else { continue };
                            let codec = match media.codec {
                                AudioCodec::Pcmu => G711::Ulaw,
                                AudioCodec::Pcma => G711::Alaw,
                            };
                            let script = if call.require_keypress {
                                CallScript::with_keypress(&pack, &call.digits, call.repeat)
                            } else {
                                CallScript::build(&pack, &call.digits, call.repeat)
                            };
                            playout = Some(self.pacer.play(PlayoutSpec {
                                rtcp_socket: rtcp_socket_beside(&socket),
                                socket,
                                remote: SocketAddr::new(media.address, media.port),
                                codec,
                                payload_type: codec.payload_type(),
                                telephone_event_pt: media.telephone_event_pt,
                                pack: pack.clone(),
                                script,
                            }));
                        }
                        CallEvent::Dtmf { digit } => {
                            // SIP INFO key: same effect as one in the media.
                            if let Some(p) = &playout {
                                p.key(digit);
                            }
                        }
                        CallEvent::Ended { reason } => {
                            if let Some(p) = &playout {
                                p.stop();
                            }
                            return end_outcome(reason, answered, times_played, hangup_reason);
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
                            hangup_reason = Some("no key pressed within 15 s".into());
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
                    hangup_reason = Some("no answer within ring_timeout".into());
                    session.hangup();
                }
                _ = call.cancel.cancelled(), if !hung_up => {
                    hung_up = true;
                    hangup_reason = Some("canceled".into());
                    if let Some(p) = &playout {
                        p.stop();
                    }
                    session.hangup();
                }
            }
        }
    }

    /// The address we send from to reach `dest`: the SIP listener's, or
    /// when that is a wildcard, the interface that routes there.
    fn local_ip_towards(&self, dest: SocketAddr) -> std::io::Result<IpAddr> {
        let sip_ip = self.sip.local_addr().ip();
        if sip_ip.is_unspecified() {
            route_source(dest)
        } else {
            Ok(sip_ip)
        }
    }
}

/// The first address of a trunk proxy.
pub(crate) async fn resolve(target: &SipTarget) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(target.host_port())
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))
}

/// The local IP the kernel would use to reach `dest` (connecting a UDP
/// socket only selects the route; nothing is sent).
pub(crate) fn route_source(dest: SocketAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = if dest.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    let probe = UdpSocket::bind(SocketAddr::new(any, 0))?;
    probe.connect(dest)?;
    Ok(probe.local_addr()?.ip())
}

/// What the SIP user agent needs to register with / probe a trunk. Resolves the proxy.
pub async fn trunk_config(t: &TrunkSettings, one_shot: bool) -> Result<TrunkConfig, String> {
    let proxy = &t.proxy;
    let destination = resolve(proxy)
        .await
        .map_err(|e| format!("trunk {}: {e}", t.name))?;
    let aor = match &t.username {
        Some(user) => format!("sip:{user}@{}", proxy.host),
        None => t.from.clone(),
    };
    let every = t.options_interval.0;
    Ok(TrunkConfig {
        name: t.name.clone(),
        destination,
        registrar_uri: format!("sip:{}", proxy.host_port()),
        aor,
        credentials: t.credentials(),
        register: t.register,
        register_expires: t.register_expires,
        options_interval: (!every.is_zero()).then_some(every),
        one_shot,
        tcp: proxy.transport == crate::config::Transport::Tcp,
    })
}

/// P-Asserted-Identity and Privacy as configured for the trunk.
fn caller_id_headers(trunk: &TrunkSettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(pai) = &trunk.p_asserted_identity {
        out.push(("P-Asserted-Identity".to_string(), pai.clone()));
    }
    if let Some(privacy) = &trunk.privacy {
        out.push(("Privacy".to_string(), privacy.clone()));
    }
    out
}

/// Maps how the SIP call ended to a call status (SPEC §4).
fn end_outcome(
    reason: EndReason,
    answered: bool,
    times_played: u32,
    hangup_reason: Option<String>,
) -> AttemptOutcome {
    let canceled = hangup_reason.as_deref() == Some("canceled");
    let played = AttemptOutcome {
        status: if times_played > 0 {
            CallStatus::Completed
        } else if canceled {
            CallStatus::Canceled
        } else {
            CallStatus::Failed
        },
        sip_code: Some(200),
        reason: None,
        times_played,
        failover: false,
    };
    match reason {
        EndReason::RemoteHangup | EndReason::LocalHangup if answered => AttemptOutcome {
            reason: match (&reason, times_played) {
                (_, n) if n > 0 => None,
                (EndReason::RemoteHangup, _) => {
                    Some("callee hung up before the code was read".into())
                }
                _ => hangup_reason.or_else(|| Some("hung up before the code was read".into())),
            },
            ..played
        },
        EndReason::MediaFailed { reason } => AttemptOutcome {
            status: CallStatus::Failed,
            sip_code: Some(200),
            reason: Some(reason),
            times_played: 0,
            failover: false,
        },
        EndReason::Rejected { status, reason } => {
            let (call_status, failover) = classify_final(status);
            let call_status = if status == 487 && hangup_reason.as_deref() == Some("canceled") {
                CallStatus::Canceled
            } else {
                call_status
            };
            AttemptOutcome {
                status: call_status,
                sip_code: Some(status),
                reason: Some(format!("{status} {reason}")),
                times_played: 0,
                failover,
            }
        }
        EndReason::Canceled => AttemptOutcome {
            status: if hangup_reason.as_deref() == Some("canceled") {
                CallStatus::Canceled
            } else {
                CallStatus::NoAnswer
            },
            sip_code: None,
            reason: hangup_reason,
            times_played: 0,
            failover: false,
        },
        EndReason::Timeout => AttemptOutcome::failed("no response from the trunk (timeout)", true),
        EndReason::RemoteHangup | EndReason::LocalHangup => AttemptOutcome {
            status: if hangup_reason.as_deref() == Some("canceled") {
                CallStatus::Canceled
            } else if hangup_reason.is_some() {
                CallStatus::NoAnswer
            } else {
                CallStatus::Failed
            },
            sip_code: None,
            reason: hangup_reason.or_else(|| Some("call ended before it was answered".into())),
            times_played: 0,
            failover: false,
        },
    }
}

/// Final non-2xx response -> call status, and whether to try the next trunk.
pub fn classify_final(status: u16) -> (CallStatus, bool) {
    match status {
        486 | 600 => (CallStatus::Busy, false),
        408 | 480 | 487 => (CallStatus::NoAnswer, false),
        603 => (CallStatus::Rejected, false),
        488 | 606 => (CallStatus::Failed, false),
        400..=499 => (CallStatus::Rejected, false),
        500..=599 | 601..=699 => (CallStatus::Failed, true),
        _ => (CallStatus::Failed, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_responses_map_to_statuses() {
        assert_eq!(classify_final(486), (CallStatus::Busy, false));
        assert_eq!(classify_final(600), (CallStatus::Busy, false));
        assert_eq!(classify_final(603), (CallStatus::Rejected, false));
        assert_eq!(classify_final(404), (CallStatus::Rejected, false));
        assert_eq!(classify_final(480), (CallStatus::NoAnswer, false));
        assert_eq!(classify_final(503), (CallStatus::Failed, true));
        assert_eq!(classify_final(604), (CallStatus::Failed, true));
        assert_eq!(classify_final(488), (CallStatus::Failed, false));
    }

    #[test]
    fn answered_call_completes_only_if_code_was_read() {
        let o = end_outcome(EndReason::LocalHangup, true, 3, None);
        assert_eq!(o.status, CallStatus::Completed);
        let o = end_outcome(EndReason::RemoteHangup, true, 0, None);
        assert_eq!(o.status, CallStatus::Failed);
        assert!(o.reason.unwrap().contains("hung up"));
        let o = end_outcome(EndReason::RemoteHangup, true, 1, None);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn canceled_answered_call_is_canceled_unless_the_code_was_read() {
        let o = end_outcome(EndReason::LocalHangup, true, 0, Some("canceled".into()));
        assert_eq!(o.status, CallStatus::Canceled);
        let o = end_outcome(EndReason::LocalHangup, true, 1, Some("canceled".into()));
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn ring_timeout_cancel_is_no_answer() {
        let o = end_outcome(
            EndReason::Canceled,
            false,
            0,
            Some("no answer within ring_timeout".into()),
        );
        assert_eq!(o.status, CallStatus::NoAnswer);
        let o = end_outcome(
            EndReason::Rejected {
                status: 487,
                reason: "Request Terminated".into(),
            },
            false,
            0,
            Some("no answer within ring_timeout".into()),
        );
        assert_eq!(o.status, CallStatus::NoAnswer);
    }
}
