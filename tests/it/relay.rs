//! A fault-injecting UDP relay between the gateway and its SIP peer, for SIP and RTP:
//! the kernel's `netem` is not available on every machine, so the network faults of
//! `faults_net.rs` are made here. It loses packets (each direction on its own), delays
//! them by a base plus a uniform jitter (which reorders them when the jitter is larger
//! than the packets' spacing), and can black out everything for a while.
//!
//! It stands between the two like a NAT that knows SIP and SDP: the gateway's trunk
//! proxy is the relay's gateway-facing SIP socket, and every `ip:port` of one side in a
//! SIP message (Via, Contact, Request-URI, …) is rewritten to the relay's address that
//! faces the other side, so requests and responses in both directions pass through it.
//! Each SDP's `c=`/`m=audio` (and `a=rtcp:`) is pointed at a media leg of the relay (a
//! pair of RTP/RTCP sockets per side, per Call-ID), so the media passes through it too.
//!
//! Deterministic: every decision (lose, how long to delay) comes from a seeded RNG of
//! its own per kind (SIP, RTP) and direction, so a run is reproducible up to the order
//! packets arrive in. Bounded: at most `MAX_IN_FLIGHT` packets wait in delay at once
//! (more are dropped and counted), and it stops when dropped.

#![allow(unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Packets waiting out their delay at most; more are dropped (and counted).
const MAX_IN_FLIGHT: usize = 4096;

/// What happens to packets of one kind, in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability 0–1 that a packet is lost, drawn for each packet and direction.
    pub loss: f64,
    /// Every packet is held this long…
    pub delay: Duration,
    /// …plus or minus up to this much (uniform), never below zero.
    pub jitter: Duration,
}

/// The relay's settings.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// SIP messages (both directions).
    pub sip: Faults,
    /// RTP and RTCP (both directions).
    pub rtp: Faults,
    /// Seed of the RNGs.
    pub seed: u64,
    /// The address the relay faces the gateway on (the trunk proxy's host).
    pub gateway_side: IpAddr,
    /// The address the relay faces the peer on.
    pub peer_side: IpAddr,
}

/// Which way a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    ToPeer,
    ToGateway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Sip,
    Rtp,
    /// RTCP: the RTP faults, counted apart (so that RTP counts compare with what the
    /// gateway measured from sequence numbers).
    Rtcp,
}

/// Counters, per direction.
#[derive(Debug, Default)]
pub struct WayCounts {
    pub sip_forwarded: AtomicU64,
    pub sip_lost: AtomicU64,
    pub rtp_forwarded: AtomicU64,
    pub rtp_lost: AtomicU64,
    pub rtcp_forwarded: AtomicU64,
    pub rtcp_lost: AtomicU64,
    /// Dropped in a blackout (any kind).
    pub blacked_out: AtomicU64,
    /// Dropped because `MAX_IN_FLIGHT` packets were already waiting.
    pub overflow: AtomicU64,
}

/// A SIP message seen arriving at the relay (before the fault decides its fate).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SipKey {
    call_id: String,
    cseq: String,
    /// The request line, or the status code of a response.
    first: String,
}

#[derive(Default)]
struct SipLog {
    /// Every distinct message by direction, and how often each was seen.
    seen: HashMap<(Way, SipKey), u32>,
    /// Call-IDs of the INVITEs that reached the peer (forwarded, not lost).
    invites_delivered: HashSet<String>,
}

/// What the relay saw, for the test's assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Distinct INVITE dialogs (Call-IDs) the peer was sent at least once.
    pub invite_dialogs_delivered: usize,
    /// Distinct INVITE Call-IDs the gateway sent.
    pub invite_dialogs_sent: usize,
    /// Requests the gateway sent again (same Call-ID, CSeq and request line): its
    /// retransmissions (INVITE before a response, BYE, ACK for a repeated 2xx, …).
    pub gateway_retransmissions: u32,
    /// The same for the peer's requests and responses (e.g. its repeated 200 OK).
    pub peer_retransmissions: u32,
    /// Indexed [to the peer, to the gateway], like the other pairs.
    pub sip_lost: [u64; 2],
    pub rtp_lost: [u64; 2],
    pub rtp_forwarded: [u64; 2],
    pub rtcp_lost: [u64; 2],
    pub blacked_out: u64,
    pub overflow: u64,
}

struct Shared {
    config: RelayConfig,
    rngs: Mutex<HashMap<(Kind, Way), StdRng>>,
    to_peer: WayCounts,
    to_gateway: WayCounts,
    in_flight: AtomicUsize,
    blackout_until: Mutex<Option<Instant>>,
    sip: Mutex<SipLog>,
}

impl Shared {
    fn counts(&self, way: Way) -> &WayCounts {
        match way {
            Way::ToPeer => &self.to_peer,
            Way::ToGateway => &self.to_gateway,
        }
    }

    /// The fate of one packet: `None` to drop it, else how long to hold it.
    fn decide(&self, kind: Kind, way: Way) -> Option<Duration> {
        let counts = self.counts(way);
        if let Some(until) = *self.blackout_until.lock().unwrap() {
            if Instant::now() < until {
                counts.blacked_out.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let faults = match kind {
            Kind::Sip => self.config.sip,
            Kind::Rtp | Kind::Rtcp => self.config.rtp,
        };
        let (lost, offset) = {
            let mut rngs = self.rngs.lock().unwrap();
            let rng = rngs.get_mut(&(kind, way)).expect("an RNG per kind and way");
            let lost = rng.random::<f64>() < faults.loss;
            let j = faults.jitter.as_secs_f64();
            let offset = if j > 0.0 {
                rng.random_range(-j..=j)
            } else {
                0.0
            };
            (lost, offset)
        };
        if lost {
            match kind {
                Kind::Sip => counts.sip_lost.fetch_add(1, Ordering::Relaxed),
                Kind::Rtp => counts.rtp_lost.fetch_add(1, Ordering::Relaxed),
                Kind::Rtcp => counts.rtcp_lost.fetch_add(1, Ordering::Relaxed),
            };
            return None;
        }
        match kind {
            Kind::Sip => counts.sip_forwarded.fetch_add(1, Ordering::Relaxed),
            Kind::Rtp => counts.rtp_forwarded.fetch_add(1, Ordering::Relaxed),
            Kind::Rtcp => counts.rtcp_forwarded.fetch_add(1, Ordering::Relaxed),
        };
        Some(Duration::from_secs_f64(
            (faults.delay.as_secs_f64() + offset).max(0.0),
        ))
    }

    /// Sends `bytes` from `socket` to `to` after the packet's fate allows it.
    fn forward(
        self: &Arc<Self>,
        kind: Kind,
        way: Way,
        socket: &Arc<UdpSocket>,
        bytes: Vec<u8>,
        to: SocketAddr,
    ) -> bool {
        let Some(hold) = self.decide(kind, way) else {
            return false;
        };
        if hold.is_zero() {
            let _ = socket.try_send_to(&bytes, to);
            return true;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.counts(way).overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let socket = socket.clone();
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let _ = socket.send_to(&bytes, to).await;
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        true
    }
}

/// One call's media through the relay: a socket pair (RTP, RTCP) facing each side.
struct MediaLeg {
    gateway_facing: [Arc<UdpSocket>; 2],
    peer_facing: [Arc<UdpSocket>; 2],
    /// Where the gateway receives RTP (from its offer or answer).
    gateway_rtp: Arc<Mutex<Option<SocketAddr>>>,
    peer_rtp: Arc<Mutex<Option<SocketAddr>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The SIP side of the relay and the per-call state its tasks share.
struct SipState {
    gateway_facing: Arc<UdpSocket>,
    peer_facing: Arc<UdpSocket>,
    peer: SocketAddr,
    gateway: Mutex<Option<SocketAddr>>,
    legs: Mutex<HashMap<String, MediaLeg>>,
}

/// A running relay. Dropping it stops it.
pub struct Relay {
    shared: Arc<Shared>,
    sip: Arc<SipState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying between the gateway (whose trunk proxy must be
    /// [`Relay::gateway_sip_addr`]) and the SIP peer at `peer`.
    pub async fn start(config: RelayConfig, peer: SocketAddr) -> Relay {
        let mut rngs = HashMap::new();
        for (i, key) in [
            (Kind::Sip, Way::ToPeer),
            (Kind::Sip, Way::ToGateway),
            (Kind::Rtp, Way::ToPeer),
            (Kind::Rtp, Way::ToGateway),
            (Kind::Rtcp, Way::ToPeer),
            (Kind::Rtcp, Way::ToGateway),
        ]
        .into_iter()
        .enumerate()
        {
            rngs.insert(key, StdRng::seed_from_u64(config.seed ^ (i as u64 + 1)));
        }
        let shared = Arc::new(Shared {
            config,
            rngs: Mutex::new(rngs),
            to_peer: WayCounts::default(),
            to_gateway: WayCounts::default(),
            in_flight: AtomicUsize::new(0),
            blackout_until: Mutex::new(None),
            sip: Mutex::new(SipLog::default()),
        });
        let sip = Arc::new(SipState {
            gateway_facing: Arc::new(
                UdpSocket::bind(SocketAddr::new(config.gateway_side, 0))
                    .await
                    .expect("relay SIP socket"),
            ),
            peer_facing: Arc::new(
                UdpSocket::bind(SocketAddr::new(config.peer_side, 0))
                    .await
                    .expect("relay SIP socket"),
            ),
            peer,
            gateway: Mutex::new(None),
            legs: Mutex::new(HashMap::new()),
        });
        let tasks = vec![
            tokio::spawn(sip_loop(shared.clone(), sip.clone(), Way::ToPeer)),
            tokio::spawn(sip_loop(shared.clone(), sip.clone(), Way::ToGateway)),
        ];
        Relay { shared, sip, tasks }
    }

    /// The trunk proxy address for the gateway.
    pub fn gateway_sip_addr(&self) -> SocketAddr {
        self.sip.gateway_facing.local_addr().expect("bound")
    }

    /// Drops every packet, both ways, for `d` from now.
    pub fn blackout(&self, d: Duration) {
        *self.shared.blackout_until.lock().unwrap() = Some(Instant::now() + d);
    }

    pub fn report(&self) -> RelayReport {
        let log = self.shared.sip.lock().unwrap();
        let mut r = RelayReport {
            invite_dialogs_delivered: log.invites_delivered.len(),
            ..RelayReport::default()
        };
        let mut sent = HashSet::new();
        for ((way, key), n) in &log.seen {
            match way {
                Way::ToPeer => {
                    r.gateway_retransmissions += n - 1;
                    if key.first.starts_with("INVITE ") {
                        sent.insert(key.call_id.clone());
                    }
                }
                Way::ToGateway => r.peer_retransmissions += n - 1,
            }
        }
        r.invite_dialogs_sent = sent.len();
        for (i, c) in [&self.shared.to_peer, &self.shared.to_gateway]
            .into_iter()
            .enumerate()
        {
            r.sip_lost[i] = c.sip_lost.load(Ordering::Relaxed);
            r.rtp_lost[i] = c.rtp_lost.load(Ordering::Relaxed);
            r.rtp_forwarded[i] = c.rtp_forwarded.load(Ordering::Relaxed);
            r.rtcp_lost[i] = c.rtcp_lost.load(Ordering::Relaxed);
            r.blacked_out += c.blacked_out.load(Ordering::Relaxed);
            r.overflow += c.overflow.load(Ordering::Relaxed);
        }
        r
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for leg in self.sip.legs.lock().unwrap().values() {
            for t in &leg.tasks {
                t.abort();
            }
        }
    }
}

/// Receives SIP on one side and forwards it, rewritten, to the other.
async fn sip_loop(shared: Arc<Shared>, sip: Arc<SipState>, way: Way) {
    let (from_socket, to_socket) = match way {
        Way::ToPeer => (sip.gateway_facing.clone(), sip.peer_facing.clone()),
        Way::ToGateway => (sip.peer_facing.clone(), sip.gateway_facing.clone()),
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = from_socket.recv_from(&mut buf).await else {
            continue;
        };
        let destination = match way {
            Way::ToPeer => {
                *sip.gateway.lock().unwrap() = Some(from);
                sip.peer
            }
            Way::ToGateway => match *sip.gateway.lock().unwrap() {
                Some(g) => g,
                None => continue,
            },
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        if text.trim().is_empty() {
            continue; // keep-alive CRLF
        }
        let rewritten = match rewrite(&shared, &sip, way, from, text).await {
            Some(r) => r,
            None => continue,
        };
        let key = sip_key(text);
        if let Some(key) = &key {
            *shared
                .sip
                .lock()
                .unwrap()
                .seen
                .entry((way, key.clone()))
                .or_insert(0) += 1;
        }
        let delivered = shared.forward(
            Kind::Sip,
            way,
            &to_socket,
            rewritten.into_bytes(),
            destination,
        );
        if let (true, Way::ToPeer, Some(key)) = (delivered, way, key) {
            if key.first.starts_with("INVITE ") {
                shared
                    .sip
                    .lock()
                    .unwrap()
                    .invites_delivered
                    .insert(key.call_id);
            }
        }
    }
}

fn header<'a>(text: &'a str, names: &[&str]) -> Option<&'a str> {
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        names
            .iter()
            .any(|n| name.trim().eq_ignore_ascii_case(n))
            .then(|| value.trim())
    })
}

fn sip_key(text: &str) -> Option<SipKey> {
    let line = text.lines().next()?;
    let first = match line.strip_prefix("SIP/2.0 ") {
        Some(status) => status.split(' ').next()?.to_owned(),
        None => line.to_owned(),
    };
    Some(SipKey {
        call_id: header(text, &["Call-ID", "i"])?.to_owned(),
        cseq: header(text, &["CSeq"])?.to_owned(),
        first,
    })
}

/// The message for the other side: every `ip:port` of this side's SIP endpoints
/// turned into the relay's on the other, the SDP pointed at the call's media leg, and
/// Content-Length fixed. `None` when the media leg cannot be made.
async fn rewrite(
    shared: &Arc<Shared>,
    sip: &Arc<SipState>,
    way: Way,
    from: SocketAddr,
    text: &str,
) -> Option<String> {
    let gateway_facing = sip.gateway_facing.local_addr().ok()?;
    let peer_facing = sip.peer_facing.local_addr().ok()?;
    let subs: [(String, String); 2] = match way {
        Way::ToPeer => [
            (from.to_string(), peer_facing.to_string()),
            (gateway_facing.to_string(), sip.peer.to_string()),
        ],
        Way::ToGateway => [
            (sip.peer.to_string(), gateway_facing.to_string()),
            (peer_facing.to_string(), from_gateway(sip)?.to_string()),
        ],
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut head = head.to_owned();
    for (a, b) in &subs {
        head = head.replace(a, b);
    }
    let mut body = body.to_owned();
    if body.contains("m=audio ") {
        let call_id = header(text, &["Call-ID", "i"])?.to_owned();
        body = rewrite_sdp(shared, sip, way, &call_id, &body).await?;
    } else {
        for (a, b) in &subs {
            body = body.replace(a, b);
        }
    }
    // Content-Length to the new body.
    let head = head
        .split("\r\n")
        .map(|l| match l.split_once(':') {
            Some((name, _))
                if name.trim().eq_ignore_ascii_case("Content-Length")
                    || name.trim().eq_ignore_ascii_case("l") =>
            {
                format!("{}: {}", name.trim(), body.len())
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    Some(format!("{head}\r\n\r\n{body}"))
}

fn from_gateway(sip: &SipState) -> Option<SocketAddr> {
    *sip.gateway.lock().unwrap()
}

/// Points an SDP at the call's media leg: the side it goes to sends its media to the
/// relay, which passes it on to where this SDP said.
async fn rewrite_sdp(
    shared: &Arc<Shared>,
    sip: &Arc<SipState>,
    way: Way,
    call_id: &str,
    body: &str,
) -> Option<String> {
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("c=IN IP4 ") {
            ip = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("m=audio ") {
            port = rest.split(' ').next()?.parse().ok();
        }
    }
    let media = SocketAddr::new(ip?, port?);
    let (announce_ip, announce_port) = {
        let has_leg = sip.legs.lock().unwrap().contains_key(call_id);
        if !has_leg {
            let leg = MediaLeg::start(shared, &shared.config).await?;
            sip.legs.lock().unwrap().insert(call_id.to_owned(), leg);
        }
        let legs = sip.legs.lock().unwrap();
        let leg = legs.get(call_id)?;
        // This SDP says where its sender receives; the other side is told the relay's
        // socket that faces it.
        let facing = match way {
            Way::ToPeer => {
                *leg.gateway_rtp.lock().unwrap() = Some(media);
                &leg.peer_facing[0]
            }
            Way::ToGateway => {
                *leg.peer_rtp.lock().unwrap() = Some(media);
                &leg.gateway_facing[0]
            }
        };
        let a = facing.local_addr().ok()?;
        (a.ip(), a.port())
    };
    let out: Vec<String> = body
        .split("\r\n")
        .map(|line| {
            if line.starts_with("c=IN IP4 ") {
                format!("c=IN IP4 {announce_ip}")
            } else if let Some(rest) = line.strip_prefix("m=audio ") {
                let tail = rest.split_once(' ').map_or("", |(_, t)| t);
                format!("m=audio {announce_port} {tail}")
            } else if line.starts_with("a=rtcp:") {
                format!("a=rtcp:{}", announce_port + 1)
            } else {
                line.to_owned()
            }
        })
        .collect();
    Some(out.join("\r\n"))
}

impl MediaLeg {
    async fn start(shared: &Arc<Shared>, config: &RelayConfig) -> Option<MediaLeg> {
        let gateway_facing = bind_pair(config.gateway_side).await?;
        let peer_facing = bind_pair(config.peer_side).await?;
        let gateway_rtp = Arc::new(Mutex::new(None));
        let peer_rtp = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        for i in 0..2 {
            // From the peer (arriving on the peer-facing socket) to the gateway.
            tasks.push(tokio::spawn(media_loop(
                shared.clone(),
                Way::ToGateway,
                peer_facing[i].clone(),
                gateway_facing[i].clone(),
                gateway_rtp.clone(),
                peer_rtp.clone(),
                i == 1,
            )));
            tasks.push(tokio::spawn(media_loop(
                shared.clone(),
                Way::ToPeer,
                gateway_facing[i].clone(),
                peer_facing[i].clone(),
                peer_rtp.clone(),
                gateway_rtp.clone(),
                i == 1,
            )));
        }
        Some(MediaLeg {
            gateway_facing,
            peer_facing,
            gateway_rtp,
            peer_rtp,
            tasks,
        })
    }
}

/// An even port and the odd one above it on `ip`, bound (RTP and RTCP).
async fn bind_pair(ip: IpAddr) -> Option<[Arc<UdpSocket>; 2]> {
    for _ in 0..100 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await.ok()?;
        let port = rtp.local_addr().ok()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            return Some([Arc::new(rtp), Arc::new(rtcp)]);
        }
    }
    None
}

/// Forwards one socket's datagrams to the destination the other side's SDP named (RTP
/// port, or the one above it for RTCP). Until that SDP is known, the source of the
/// packets seen on `to` latches it.
async fn media_loop(
    shared: Arc<Shared>,
    way: Way,
    from: Arc<UdpSocket>,
    to: Arc<UdpSocket>,
    destination: Arc<Mutex<Option<SocketAddr>>>,
    source: Arc<Mutex<Option<SocketAddr>>>,
    rtcp: bool,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, src)) = from.recv_from(&mut buf).await else {
            continue;
        };
        if source.lock().unwrap().is_none() && !rtcp {
            *source.lock().unwrap() = Some(src);
        }
        let Some(mut dest) = *destination.lock().unwrap() else {
            continue;
        };
        if rtcp {
            dest.set_port(dest.port() + 1);
        }
        let kind = if rtcp { Kind::Rtcp } else { Kind::Rtp };
        shared.forward(kind, way, &to, buf[..n].to_vec(), dest);
    }
}
