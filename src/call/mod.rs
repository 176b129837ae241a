//! The call engine: places one call attempt through one trunk and plays the
//! code when it is answered. It drives the SIP endpoint (`sip_io`) and the
//! RTP pacer (`media`) and reports progress on a channel; it knows nothing of
//! HTTP or SQL.

mod attempt;
mod outcome;
mod route;
mod trunk_dns;

pub use outcome::{classify_final, AttemptOutcome, HangupCause};
pub(crate) use route::route_source;
pub use route::trunk_config;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{CodecName, PortRange, SrtpMode, TrunkSettings};
use crate::dns::{DnsStatusMap, DnsTarget, SipResolver};
use crate::media::{CallScript, Keys, Pacer, PromptLibrary, PromptPack};
use crate::metrics::Metrics;
use crate::sip::sdp::AudioCodec;
use crate::sip::QaBinding;
use crate::sip_io::SipEndpoint;
use crate::trunks::TrunkSlot;
use route::{caller_id_headers, sip_transport, RtpPorts, Target};

/// Progress of one attempt, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Ringing,
    Answered,
    /// The code has now been read `n` times.
    Played(u32),
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
#[derive(Clone)]
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
    /// Resolves trunk proxies (RFC 3263) per call; its cache honours the TTLs.
    resolver: SipResolver,
    /// Each trunk's latest resolution (for `/v1/trunks`).
    dns: DnsStatusMap,
    /// Stops the tasks that follow the trunks' DNS for registration and OPTIONS.
    dns_followers: CancellationToken,
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
            resolver: SipResolver::system(),
            dns: DnsStatusMap::default(),
            dns_followers: CancellationToken::new(),
        }
    }

    /// Resolves trunk names with `resolver` (`[sip] dns_servers`) instead of the
    /// system's.
    pub fn with_resolver(mut self, resolver: SipResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Each trunk's latest DNS resolution, by trunk name (the trunk board shows it).
    pub fn dns_status_map(&self) -> DnsStatusMap {
        self.dns.clone()
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

    /// The prompt packs, shared (the canaries' answering side recognises them).
    pub fn prompt_library(&self) -> Arc<PromptLibrary> {
        self.prompts.clone()
    }

    /// The inbound calls the SIP endpoint accepted (`[canary] answer_numbers`); the
    /// first caller gets them.
    pub fn take_incoming(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::sip_io::IncomingCall>> {
        self.sip.take_incoming()
    }

    /// An RTP socket from `[sip] rtp_ports` to receive media from `peer`, and the
    /// address to announce for it in SDP (`external_address` if set).
    pub fn media_socket_towards(
        &self,
        peer: SocketAddr,
    ) -> std::io::Result<(std::net::UdpSocket, IpAddr)> {
        let ip = self.local_ip_towards(peer)?;
        let socket = self.rtp.bind(ip)?;
        Ok((socket, self.external_ip.unwrap_or(ip)))
    }

    pub async fn shutdown(&self) {
        self.dns_followers.cancel();
        self.sip.shutdown().await;
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
        self.place_from(call, slot, None, progress).await
    }

    /// [`Self::place`] showing `from` (a `[[caller_ids]]` number in the trunk's
    /// `from` URI) instead of the trunk's `from`, when given.
    pub async fn place_from(
        &self,
        call: PlaceCall<'_>,
        slot: TrunkSlot,
        from: Option<String>,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> AttemptOutcome {
        // Every call placed on a trunk slot counts, whoever places it (a slot taken and
        // given back unused does not).
        slot.dialing();
        let trunk = slot.trunk().clone();
        if self.prompts.get(call.locale).is_none() {
            return AttemptOutcome::failed(format!("no prompt pack for {}", call.locale), false);
        }
        let targets = match self.resolve_trunk(&trunk).await {
            Ok(r) => r.targets,
            // Another trunk has another proxy: worth trying, like an unreachable one.
            Err(e) => return AttemptOutcome::not_sent(format!("trunk {}: {e}", trunk.name)),
        };
        let from_uri = from.unwrap_or_else(|| trunk.from.clone());
        let mut last: Option<AttemptOutcome> = None;
        for (i, dns) in targets.iter().enumerate() {
            if let Some(previous) = &last {
                tracing::warn!(
                    trunk = %trunk.name,
                    failed = %targets[i - 1],
                    next = %dns,
                    why = previous.attempt_reason().unwrap_or("failed"),
                    "trunk target failed, trying the trunk's next target"
                );
                if let Some(m) = &self.metrics {
                    m.target_failover(&trunk.name);
                }
            }
            let target = self.trunk_target(&trunk, dns, call.to, from_uri.clone());
            let mut alerted = false;
            let outcome = self
                .place_to(&call, target, Some(&slot), progress.clone(), &mut alerted)
                .await;
            if alerted || !outcome::next_target(&outcome) {
                return outcome;
            }
            last = Some(outcome);
        }
        // Every target failed the way that moves on: the dialer tries the next trunk.
        last.unwrap_or_else(|| AttemptOutcome::not_sent(format!("trunk {}: no target", trunk.name)))
    }

    /// The attempt to one of a trunk's resolved targets.
    fn trunk_target(
        &self,
        trunk: &TrunkSettings,
        dns: &DnsTarget,
        to: &str,
        from_uri: String,
    ) -> Target {
        let codecs = trunk
            .codecs
            .iter()
            .map(|c| match c {
                CodecName::Pcma => AudioCodec::Pcma,
                CodecName::Pcmu => AudioCodec::Pcmu,
            })
            .collect();
        let request_uri = if to.starts_with("sip:") {
            to.to_string()
        } else {
            format!("sip:{to}@{}", trunk.proxy.uri_host_port())
        };
        Target {
            destination: dns.addr,
            request_uri,
            from_uri,
            from_display: trunk.from_display.clone(),
            credentials: trunk.credentials(),
            extra_headers: caller_id_headers(trunk),
            transport: sip_transport(dns.transport),
            codecs,
            ring_timeout: trunk.ring_timeout,
            name: trunk.name.clone(),
            srtp: trunk.srtp,
            pin_flow: false,
            tls: route::trunk_tls(trunk, dns.transport),
        }
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
            pin_flow: true,
            tls: None,
        };
        self.place_to(&call, target, None, progress, &mut false)
            .await
    }

    /// The registered QA phones by username (see [`crate::sip_io::QaBindingMap`]).
    pub fn qa_bindings(&self) -> crate::sip_io::QaBindingMap {
        self.sip.qa_bindings()
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
