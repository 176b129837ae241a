//! Where an attempt goes: targets (a trunk or a QA phone), trunk resolution and
//! the trunk's SIP settings, and the RTP ports an attempt binds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{PortRange, SrtpMode, TrunkSettings};
use crate::dns::DnsTarget;
use crate::sip::sdp::AudioCodec;
use crate::sip::TrunkConfig;

/// Hands out RTP ports from the configured range, round robin, binding
/// each to prove it is free.
pub(super) struct RtpPorts {
    pub(super) range: PortRange,
    pub(super) next: AtomicU32,
}

impl RtpPorts {
    pub(super) fn bind(&self, ip: IpAddr) -> std::io::Result<UdpSocket> {
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

/// Where and how one attempt is sent: a trunk's proxy, or a registered QA phone.
pub(super) struct Target {
    pub(super) destination: SocketAddr,
    pub(super) request_uri: String,
    pub(super) from_uri: String,
    pub(super) from_display: Option<String>,
    pub(super) credentials: Option<crate::sip::digest::Credentials>,
    pub(super) extra_headers: Vec<(String, String)>,
    pub(super) transport: crate::sip::Transport,
    pub(super) codecs: Vec<AudioCodec>,
    pub(super) ring_timeout: std::time::Duration,
    /// The trunk's name, or `qa:<user>` (metrics labels).
    pub(super) name: String,
    /// The trunk's `srtp` setting.
    pub(super) srtp: SrtpMode,
    /// A QA phone: every request of the call goes over the flow its REGISTER came on.
    pub(super) pin_flow: bool,
    /// TLS: the name the certificate must carry (the trunk's domain, RFC 3263 §4.1,
    /// whatever SRV target the call goes to) and the roots.
    pub(super) tls: Option<crate::sip::TlsTarget>,
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

/// What the SIP user agent needs to register with / probe a trunk whose proxy
/// resolved to `target` (the first of its RFC 3263 targets).
pub fn trunk_config(t: &TrunkSettings, target: &DnsTarget, one_shot: bool) -> TrunkConfig {
    let proxy = &t.proxy;
    let aor = match &t.username {
        Some(user) => format!("sip:{user}@{}", proxy.host_for_uri()),
        None => t.from.clone(),
    };
    let every = t.options_interval;
    TrunkConfig {
        name: t.name.clone(),
        destination: target.addr,
        registrar_uri: format!("sip:{}", proxy.uri_host_port()),
        aor,
        credentials: t.credentials(),
        register: t.register,
        register_expires: t.register_expires,
        options_interval: (!every.is_zero()).then_some(every),
        one_shot,
        transport: sip_transport(target.transport),
        tls: trunk_tls(t, target.transport),
    }
}

/// A trunk's TLS settings when `transport` (of a resolved target) is TLS: the
/// certificate must name the trunk's domain, not the SRV target's host.
pub(super) fn trunk_tls(
    t: &TrunkSettings,
    transport: crate::config::Transport,
) -> Option<crate::sip::TlsTarget> {
    (transport == crate::config::Transport::Tls).then(|| crate::sip::TlsTarget {
        server_name: t.proxy.host.clone(),
        ca_file: (!t.tls_ca.is_empty()).then(|| std::path::PathBuf::from(&t.tls_ca)),
    })
}

pub(super) fn sip_transport(t: crate::config::Transport) -> crate::sip::Transport {
    match t {
        crate::config::Transport::Udp => crate::sip::Transport::Udp,
        crate::config::Transport::Tcp => crate::sip::Transport::Tcp,
        crate::config::Transport::Tls => crate::sip::Transport::Tls,
    }
}

/// P-Asserted-Identity and Privacy as configured for the trunk.
pub(super) fn caller_id_headers(trunk: &TrunkSettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(pai) = &trunk.p_asserted_identity {
        out.push(("P-Asserted-Identity".to_string(), pai.clone()));
    }
    if let Some(privacy) = &trunk.privacy {
        out.push(("Privacy".to_string(), privacy.clone()));
    }
    out
}
