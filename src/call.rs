//! The call engine: places one call attempt through one trunk and plays the
//! code when it is answered. It drives the SIP endpoint (`sip_io`) and the
//! RTP pacer (`media`) and reports progress on a channel; it knows nothing of
//! HTTP or SQL.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{CodecName, PortRange, SipTarget, SrtpMode, TrunkSettings};
use crate::domain::CallStatus;
use crate::media::srtp::SrtpSession;
use crate::media::{
    rtcp_socket_beside, CallScript, Keys, Pacer, PlayoutEvent, PlayoutSpec, PromptLibrary,
    PromptPack, G711,
};
use crate::metrics::Metrics;
use crate::sip::sdp::{AudioCodec, MediaOffer, SdesOffer};
use crate::sip::QaBinding;
use crate::sip::{EndReason, OutgoingCall, TrunkConfig};
use crate::sip_io::{CallEvent, SipEndpoint};
use crate::trunks::TrunkSlot;

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

/// Why we hang up a call ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupCause {
    /// The verification stopped being pending (canceled, approved, expired).
    Canceled,
    /// Nobody answered within the trunk's `ring_timeout`.
    RingTimeout,
    /// A key gate (`require_keypress`, `bind_digits`): no key within the time allowed,
    /// or (`require_keypress`) not the digit asked for.
    NoKeypress,
    /// `bind_digits`: the digits keyed are not the two on the login screen.
    BindMismatch,
    /// The gateway is stopping and the call outlived `shutdown_grace`.
    Shutdown,
    /// `srtp = "required"` and the answer gave no key we can use: not one packet of
    /// plain RTP goes out.
    SrtpUnavailable,
}

impl HangupCause {
    /// The reason recorded for the attempt (and the call).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::RingTimeout => "no answer within ring_timeout",
            Self::NoKeypress => "no_keypress",
            Self::BindMismatch => "bind_mismatch",
            Self::Shutdown => "shutdown",
            Self::SrtpUnavailable => "srtp_unavailable",
        }
    }
}

/// A request to hang up one call, with its cause; the first cause wins.
#[derive(Debug, Clone, Default)]
pub struct Hangup {
    token: CancellationToken,
    cause: Arc<OnceLock<HangupCause>>,
}

impl Hangup {
    pub fn request(&self, cause: HangupCause) {
        let _ = self.cause.set(cause);
        self.token.cancel();
    }

    pub fn cause(&self) -> Option<HangupCause> {
        self.cause.get().copied()
    }

    pub async fn requested(&self) {
        self.token.cancelled().await
    }
}

/// What a call asks the person to key before it reads the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyGate {
    /// Nothing: the code is read at once.
    #[default]
    Open,
    /// `require_keypress` (the voicemail guard): a random digit, said and asked for.
    Keypress,
    /// `bind_digits`: the two digits the login screen shows (never said).
    Bind(Keys),
}

impl KeyGate {
    /// The script of a call behind this gate.
    fn script(self, pack: &PromptPack, digits: &[u8], repeat: u32) -> CallScript {
        match self {
            KeyGate::Open => CallScript::build(pack, digits, repeat),
            KeyGate::Keypress => {
                // A fresh digit per call, so that a recorded answer does not pass the
                // next call.
                CallScript::with_keypress(pack, digits, repeat, Keys::random(1))
            }
            KeyGate::Bind(keys) => CallScript::with_bind(pack, digits, repeat, keys),
        }
    }

    /// Why the call ended when the pacer saw a wrong key at the gate.
    fn wrong_key(self) -> HangupCause {
        match self {
            KeyGate::Bind(_) => HangupCause::BindMismatch,
            KeyGate::Open | KeyGate::Keypress => HangupCause::NoKeypress,
        }
    }
}

/// What to say to whom.
pub struct PlaceCall<'a> {
    /// E.164 number (`+31612345678`) or a full `sip:` URI.
    pub to: &'a str,
    pub digits: Vec<u8>,
    pub locale: &'a str,
    pub repeat: u32,
    /// Keys to ask for before the code is read (SPEC §4, §6).
    pub gate: KeyGate,
    /// Hang up (or cancel) when this is requested, e.g. when the
    /// verification is canceled.
    pub hangup: Hangup,
}

pub struct CallEngine {
    sip: SipEndpoint,
    pacer: Pacer,
    prompts: Arc<PromptLibrary>,
    rtp: RtpPorts,
    external_ip: Option<IpAddr>,
    /// Setup-time and post-dial-delay histograms, when the gateway exports metrics.
    metrics: Option<Arc<Metrics>>,
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
            metrics: None,
        }
    }

    /// Records each attempt's setup time and post-dial delay in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The RTP pacer's packet counters.
    pub fn pacer_stats(&self) -> Arc<crate::media::PacerStats> {
        self.pacer.stats()
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    /// The SIP listener policy's counters (for metrics).
    pub fn sip_stats(&self) -> Arc<crate::sip_io::SipStats> {
        self.sip.stats()
    }

    pub fn prompts(&self) -> &PromptLibrary {
        &self.prompts
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

    /// The map the SIP driver keeps trunk registration/keepalive status in
    /// (read through the trunk board).
    pub fn trunk_status_map(&self) -> crate::sip_io::TrunkStatusMap {
        self.sip.status_map()
    }

    /// Places one attempt and plays the code if answered. Never panics on
    /// anything the network does; every way it can end is an outcome.
    ///
    /// Everything the call holds lives in this future: the trunk `slot`,
    /// the SIP session and the RTP stream. However it stops (it returns, or
    /// it is dropped mid-call by a cancel, an error or a panic of its
    /// caller), their guards hang the call up (BYE after the answer, CANCEL
    /// before), stop the stream and give the slot back.
    pub async fn place(
        &self,
        call: PlaceCall<'_>,
        slot: TrunkSlot,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        let trunk = slot.trunk().clone();
        if self.prompts.get(call.locale).is_none() {
            return AttemptOutcome::failed(format!("no prompt pack for {}", call.locale), false);
        }
        let proxy = &trunk.proxy;
        let destination = match resolve(proxy).await {
            Ok(a) => a,
            Err(e) => return AttemptOutcome::failed(e, true),
        };
        let codecs = trunk
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
        let target = Target {
            destination,
            request_uri,
            from_uri: trunk.from.clone(),
            from_display: trunk.from_display.clone(),
            credentials: trunk.credentials(),
            extra_headers: caller_id_headers(&trunk),
            transport: sip_transport(proxy.transport),
            codecs,
            ring_timeout: trunk.ring_timeout,
            name: trunk.name.clone(),
            srtp: trunk.srtp,
        };
        self.place_to(call, target, Some(&slot), progress).await
    }

    /// Places one attempt to a registered QA phone instead of a trunk: the INVITE goes
    /// to the address and transport its REGISTER came from, with its Contact as the
    /// Request-URI. Same outcomes as [`Self::place`]; nothing to fail over to. `route`
    /// names it in metrics (`qa:<username>`).
    pub async fn place_qa(
        &self,
        call: PlaceCall<'_>,
        route: &str,
        phone: &QaBinding,
        ring_timeout: std::time::Duration,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        let target = Target {
            destination: phone.source,
            request_uri: phone.contact.clone(),
            from_uri: format!("sip:otpdial@{}", self.sip.local_addr()),
            from_display: Some("otpdial".into()),
            credentials: None,
            extra_headers: Vec::new(),
            transport: phone.transport,
            codecs: vec![AudioCodec::Pcmu, AudioCodec::Pcma],
            ring_timeout,
            name: route.to_string(),
            // QA phones are on the operator's own network; plain RTP as before.
            srtp: SrtpMode::Off,
        };
        self.place_to(call, target, None, progress).await
    }

    /// The registered QA phones by username (see [`crate::sip_io::QaBindingMap`]).
    pub fn qa_bindings(&self) -> crate::sip_io::QaBindingMap {
        self.sip.qa_bindings()
    }

    /// One attempt to `target`; `slot` (a trunk's) hears about the answer.
    async fn place_to(
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

/// Where and how one attempt is sent: a trunk's proxy, or a registered QA phone.
struct Target {
    destination: SocketAddr,
    request_uri: String,
    from_uri: String,
    from_display: Option<String>,
    credentials: Option<crate::sip::digest::Credentials>,
    extra_headers: Vec<(String, String)>,
    transport: crate::sip::Transport,
    codecs: Vec<AudioCodec>,
    ring_timeout: std::time::Duration,
    /// The trunk's name, or `qa:<user>` (metrics labels).
    name: String,
    /// The trunk's `srtp` setting.
    srtp: SrtpMode,
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
    let every = t.options_interval;
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
        transport: sip_transport(proxy.transport),
        tls: (proxy.transport == crate::config::Transport::Tls).then(|| crate::sip::TlsTarget {
            server_name: proxy.host.clone(),
            ca_file: (!t.tls_ca.is_empty()).then(|| std::path::PathBuf::from(&t.tls_ca)),
        }),
    })
}

fn sip_transport(t: crate::config::Transport) -> crate::sip::Transport {
    match t {
        crate::config::Transport::Udp => crate::sip::Transport::Udp,
        crate::config::Transport::Tcp => crate::sip::Transport::Tcp,
        crate::config::Transport::Tls => crate::sip::Transport::Tls,
    }
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

/// Maps how the SIP call ended to a call status (SPEC §4). `ours` is why we
/// hung up, if we did.
fn end_outcome(
    reason: EndReason,
    answered: bool,
    times_played: u32,
    ours: Option<HangupCause>,
) -> AttemptOutcome {
    let canceled = ours == Some(HangupCause::Canceled);
    let unanswered_status = match ours {
        Some(HangupCause::Canceled) => CallStatus::Canceled,
        Some(HangupCause::RingTimeout) => CallStatus::NoAnswer,
        Some(
            HangupCause::NoKeypress
            | HangupCause::BindMismatch
            | HangupCause::Shutdown
            | HangupCause::SrtpUnavailable,
        )
        | None => CallStatus::Failed,
    };
    let ours_reason = ours.map(|c| c.reason().to_string());
    match reason {
        EndReason::RemoteHangup | EndReason::LocalHangup if answered => AttemptOutcome {
            status: if times_played > 0 {
                CallStatus::Completed
            } else if canceled {
                CallStatus::Canceled
            } else {
                CallStatus::Failed
            },
            sip_code: Some(200),
            reason: match (&reason, times_played) {
                (_, n) if n > 0 => None,
                (EndReason::RemoteHangup, _) => {
                    Some("callee hung up before the code was read".into())
                }
                _ => ours_reason.or_else(|| Some("hung up before the code was read".into())),
            },
            times_played,
            failover: false,
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
            let (call_status, failover) = match (status, ours) {
                // The 487 that answers our CANCEL: our cause decides.
                (487, Some(_)) => (unanswered_status, false),
                _ => (call_status, failover && ours.is_none()),
            };
            AttemptOutcome {
                status: call_status,
                sip_code: Some(status),
                reason: Some(match &ours_reason {
                    Some(r) if status == 487 => r.clone(),
                    _ => format!("{status} {reason}"),
                }),
                times_played: 0,
                failover,
            }
        }
        EndReason::Canceled => AttemptOutcome {
            status: match ours {
                Some(_) => unanswered_status,
                None => CallStatus::NoAnswer,
            },
            sip_code: None,
            reason: ours_reason,
            times_played: 0,
            failover: false,
        },
        EndReason::Timeout if ours.is_none() => {
            AttemptOutcome::failed("no response from the trunk (timeout)", true)
        }
        EndReason::Timeout | EndReason::RemoteHangup | EndReason::LocalHangup => AttemptOutcome {
            status: match ours {
                Some(_) => unanswered_status,
                None => CallStatus::Failed,
            },
            sip_code: None,
            reason: ours_reason.or_else(|| Some("call ended before it was answered".into())),
            times_played: 0,
            failover: false,
        },
    }
}

/// Final non-2xx response -> call status, and whether to try the next trunk.
pub fn classify_final(status: u16) -> (CallStatus, bool) {
    match status {
        486 | 600 => (CallStatus::Busy, false),
        // 408 from a trunk: nothing downstream answered its INVITE, worth
        // another trunk (issue 8); 480/487: the callee did not pick up.
        408 => (CallStatus::Failed, true),
        480 | 487 => (CallStatus::NoAnswer, false),
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
        let c = Some(HangupCause::Canceled);
        let o = end_outcome(EndReason::LocalHangup, true, 0, c);
        assert_eq!(o.status, CallStatus::Canceled);
        let o = end_outcome(EndReason::LocalHangup, true, 1, c);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn ring_timeout_cancel_is_no_answer() {
        let rt = Some(HangupCause::RingTimeout);
        let o = end_outcome(EndReason::Canceled, false, 0, rt);
        assert_eq!(o.status, CallStatus::NoAnswer);
        let o = end_outcome(
            EndReason::Rejected {
                status: 487,
                reason: "Request Terminated".into(),
            },
            false,
            0,
            rt,
        );
        assert_eq!(o.status, CallStatus::NoAnswer);
    }

    #[test]
    fn shutdown_hangup_fails_unread_calls_and_never_fails_over() {
        let s = Some(HangupCause::Shutdown);
        let o = end_outcome(EndReason::LocalHangup, true, 0, s);
        assert_eq!(o.status, CallStatus::Failed);
        assert_eq!(o.reason.as_deref(), Some("shutdown"));
        let o = end_outcome(EndReason::Canceled, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::Timeout, false, 0, s);
        assert_eq!((o.status, o.failover), (CallStatus::Failed, false));
        let o = end_outcome(EndReason::LocalHangup, true, 2, s);
        assert_eq!(o.status, CallStatus::Completed);
    }

    #[test]
    fn a_408_fails_over_to_the_next_trunk() {
        assert_eq!(classify_final(408), (CallStatus::Failed, true));
    }
}
