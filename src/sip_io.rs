//! The only SIP code that touches sockets and clocks: a tokio task that owns one UDP
//! socket, a TCP listener on the same port and one TCP connection per TCP peer, and a
//! sans-IO [`UserAgent`]; it feeds the UA datagrams, framed stream messages, commands and
//! timer wake-ups, sends what it wants sent and routes its events to one channel per call.
//! May depend on `crate::sip`, tokio and tracing.
//!
//! TCP: a connection per peer address, opened when the UA first sends there (or accepted
//! from the peer) and forgotten when it closes; the next message to that peer opens a new
//! one (reconnect). Messages are framed by Content-Length (`sip::frame_stream`).

use crate::sip::policy::{DropReason, PolicyConfig, PolicyCounters};
use crate::sip::{
    sdp, CallHandle, EndReason, Event, OutgoingCall, ProbeResult, Transport, TrunkConfig, TrunkId,
    TrunkStatus, UaConfig, UserAgent,
};
use crate::sip::{QaBinding, RegistrarConfig, TlsTarget};
use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Largest UDP payload; SIP over UDP should stay far below, but never truncate.
const RECV_BUFFER: usize = 65535;

/// An event for one call (the per-call view of [`crate::sip::Event`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    Progress {
        status: u16,
        early_media: Option<sdp::MediaAnswer>,
    },
    Answered {
        media: sdp::MediaAnswer,
    },
    Dtmf {
        digit: char,
    },
    /// Always the last event; the channel closes after it.
    Ended {
        reason: EndReason,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SipIoError {
    #[error("the SIP endpoint has shut down")]
    Closed,
}

enum Command {
    Invite {
        call: OutgoingCall,
        events: mpsc::UnboundedSender<CallEvent>,
        reply: oneshot::Sender<(CallHandle, String)>,
    },
    Hangup(CallHandle),
    AddTrunk {
        config: TrunkConfig,
        probes: mpsc::UnboundedSender<ProbeResult>,
    },
    Shutdown,
}

/// Trunk status by trunk name, written by the driver task, read by anyone.
pub type TrunkStatusMap = Arc<Mutex<HashMap<String, TrunkStatus>>>;
type StatusMap = TrunkStatusMap;

/// Handle to the SIP driver task. Cheap to clone.
#[derive(Clone)]
pub struct SipEndpoint {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
    trunks: StatusMap,
    stats: Arc<SipStats>,
    qa: QaBindingMap,
}

/// QA phones' registrations by username, written by the driver task, read by anyone.
pub type QaBindingMap = Arc<Mutex<HashMap<String, QaBinding>>>;

/// How the endpoint presents itself and whom it answers.
#[derive(Debug, Clone, Default)]
pub struct SipOptions {
    /// User-Agent/Server value; empty = omitted.
    pub server_header: String,
    pub policy: PolicyConfig,
    /// The QA registrar; None = REGISTER is not served.
    pub registrar: Option<RegistrarConfig>,
}

/// Counters of the listener policy, copied from the user agent by the driver after
/// each step; read by `/metrics`.
#[derive(Debug, Default)]
pub struct SipStats {
    /// Indexed like [`DropReason::ALL`].
    dropped: [AtomicU64; 5],
    bans: AtomicU64,
    banned_now: AtomicU64,
    /// QA registrar: REGISTERs that bound or refreshed a phone, bindings removed
    /// (unregistered or expired), refused authentications.
    qa_registered: AtomicU64,
    qa_removed: AtomicU64,
    qa_auth_failed: AtomicU64,
    qa_bound: AtomicU64,
}

impl SipStats {
    fn store(&self, c: &PolicyCounters) {
        for (slot, v) in self.dropped.iter().zip(c.dropped) {
            slot.store(v, Ordering::Relaxed);
        }
        self.bans.store(c.bans, Ordering::Relaxed);
        self.banned_now.store(c.banned_now, Ordering::Relaxed);
    }

    /// Dropped (or 403-refused) messages so far, by reason label.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(r, v)| (r.as_str(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// Sources banned so far.
    pub fn bans(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Sources under a ban now.
    pub fn banned_now(&self) -> u64 {
        self.banned_now.load(Ordering::Relaxed)
    }

    /// QA phones registered now.
    pub fn qa_registered_now(&self) -> u64 {
        self.qa_bound.load(Ordering::Relaxed)
    }

    /// QA registrar outcomes so far: (registered, removed, auth_failed).
    pub fn registrations(&self) -> [(&'static str, u64); 3] {
        [
            ("registered", self.qa_registered.load(Ordering::Relaxed)),
            ("removed", self.qa_removed.load(Ordering::Relaxed)),
            ("auth_failed", self.qa_auth_failed.load(Ordering::Relaxed)),
        ]
    }
}

impl std::fmt::Debug for SipEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipEndpoint")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

/// One placed call: its handle, its events, and a way to hang it up.
#[derive(Debug)]
pub struct CallSession {
    pub handle: CallHandle,
    /// The SIP Call-ID (for logs; it names the call on the trunk's side too).
    pub call_id: String,
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    commands: mpsc::UnboundedSender<Command>,
    ended: bool,
}

/// The live-call guard of the SIP side: a session dropped before its call
/// ended (an early return, an error, a panic, a cancelled future) hangs the
/// call up: BYE once answered, CANCEL while it rings (or as soon as it
/// does), ACK+BYE for a 200 that still arrives.
impl Drop for CallSession {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.commands.send(Command::Hangup(self.handle));
        }
    }
}

impl CallSession {
    /// Ends the call (BYE, CANCEL, or whatever its state calls for). The outcome arrives
    /// as [`CallEvent::Ended`]. Harmless after the call ended or the endpoint shut down.
    pub fn hangup(&self) {
        let _ = self.commands.send(Command::Hangup(self.handle));
    }

    /// Marks the call as over (its `Ended` event arrived), so that dropping
    /// the session sends nothing more.
    pub fn ended(&mut self) {
        self.ended = true;
    }

    /// A clonable way to hang up this call from elsewhere (e.g. a ring-timeout task).
    pub fn hangup_handle(&self) -> HangupHandle {
        HangupHandle {
            handle: self.handle,
            commands: self.commands.clone(),
        }
    }
}

/// Hangs up one call; see [`CallSession::hangup_handle`].
#[derive(Debug, Clone)]
pub struct HangupHandle {
    handle: CallHandle,
    commands: mpsc::UnboundedSender<Command>,
}

impl HangupHandle {
    pub fn hangup(&self) {
        let _ = self.commands.send(Command::Hangup(self.handle));
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Invite { call, .. } => write!(f, "Invite({})", call.request_uri),
            Command::Hangup(h) => write!(f, "Hangup({h})"),
            Command::AddTrunk { config, .. } => write!(f, "AddTrunk({})", config.name),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl SipEndpoint {
    /// Binds the UDP socket and spawns the driver task.
    pub async fn bind(
        listen: SocketAddr,
        advertised_host: Option<String>,
        options: SipOptions,
    ) -> std::io::Result<SipEndpoint> {
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        if local_addr.ip().is_unspecified() && advertised_host.is_none() {
            warn!(%local_addr, "SIP bound to a wildcard address without advertised_host: Via/Contact will be unusable");
        }
        let ua = UserAgent::new(UaConfig {
            local_addr,
            advertised_host,
            server_header: options.server_header,
            policy: options.policy,
            registrar: options.registrar,
        });
        // TCP on the same address and port; without it outbound TCP still works, only
        // peers that open connections to us cannot.
        let tcp = match TcpListener::bind(local_addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(%local_addr, error = %e, "no SIP TCP listener");
                None
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let trunks: StatusMap = Arc::default();
        let stats = Arc::new(SipStats::default());
        let qa: QaBindingMap = Arc::default();
        let shared = Shared {
            statuses: trunks.clone(),
            stats: stats.clone(),
            qa: qa.clone(),
        };
        let task = tokio::spawn(drive(socket, tcp, ua, rx, shared));
        Ok(SipEndpoint {
            inner: Arc::new(Inner {
                commands: tx,
                local_addr,
                task: Mutex::new(Some(task)),
                trunks,
                stats,
                qa,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The registered QA phones by username (the binding each REGISTER left).
    pub fn qa_bindings(&self) -> QaBindingMap {
        self.inner.qa.clone()
    }

    /// The listener policy's counters, for metrics.
    pub fn stats(&self) -> Arc<SipStats> {
        self.inner.stats.clone()
    }

    /// Places a call; its progress arrives on [`CallSession::events`].
    pub async fn invite(&self, call: OutgoingCall) -> Result<CallSession, SipIoError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Invite {
                call,
                events: events_tx,
                reply: reply_tx,
            })
            .map_err(|_| SipIoError::Closed)?;
        let (handle, call_id) = reply_rx.await.map_err(|_| SipIoError::Closed)?;
        Ok(CallSession {
            handle,
            call_id,
            events: events_rx,
            commands: self.inner.commands.clone(),
            ended: false,
        })
    }

    /// Starts registration and/or OPTIONS keepalive for a trunk. Every REGISTER/OPTIONS
    /// outcome is also sent on the returned channel (drop it if you only want
    /// [`Self::trunk_status`]).
    pub fn add_trunk(
        &self,
        config: TrunkConfig,
    ) -> Result<mpsc::UnboundedReceiver<ProbeResult>, SipIoError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.trunks).insert(config.name.clone(), TrunkStatus::default());
        self.inner
            .commands
            .send(Command::AddTrunk { config, probes: tx })
            .map_err(|_| SipIoError::Closed)?;
        Ok(rx)
    }

    /// The map the driver writes each trunk's registration/keepalive status
    /// into; the trunk board reads it.
    pub fn status_map(&self) -> TrunkStatusMap {
        self.inner.trunks.clone()
    }

    /// The last known status of a trunk added with [`Self::add_trunk`].
    pub fn trunk_status(&self, name: &str) -> Option<TrunkStatus> {
        lock(&self.inner.trunks).get(name).cloned()
    }

    /// Stops the driver task and waits for it. Calls in progress get no further events
    /// (their channels close); hang them up first for a clean end.
    pub async fn shutdown(&self) {
        let _ = self.inner.commands.send(Command::Shutdown);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                warn!(error = %e, "SIP driver task failed");
            }
        }
    }
}

/// Where trunk events go: the shared status map and the probe channel of each trunk.
struct TrunkRoutes {
    statuses: StatusMap,
    by_id: HashMap<TrunkId, (String, mpsc::UnboundedSender<ProbeResult>)>,
}

/// What the driver writes and others read.
struct Shared {
    statuses: StatusMap,
    stats: Arc<SipStats>,
    qa: QaBindingMap,
}

/// What connection tasks tell the driver.
enum StreamEvent {
    Message(SocketAddr, Vec<u8>),
    Closed(SocketAddr),
}

/// How a connection comes about.
enum Connect {
    /// The peer connected to our listener.
    Accepted(TcpStream),
    /// We connect, plain TCP.
    Tcp,
    /// We connect and then do a TLS handshake, verifying the peer's certificate.
    Tls(TlsPeer),
}

/// What a TLS connection to one peer checks: the name its certificate must carry and
/// the roots it must chain to.
#[derive(Clone)]
struct TlsPeer {
    server_name: rustls::pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

/// The certificates in a PEM file (for a trunk's `tls_ca`).
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}

/// A TLS client for `target`: its CA file's roots, else the public web PKI roots.
fn tls_peer(target: &TlsTarget) -> Result<TlsPeer, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &target.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in parse_ca_pem(&pem)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(target.server_name.clone())
        .map_err(|e| format!("{:?}: {e}", target.server_name))?;
    Ok(TlsPeer {
        server_name,
        config: Arc::new(config),
    })
}

/// One TCP (or TLS) connection: writes what arrives on `outgoing`, frames what it reads.
async fn run_connection(
    connect: Connect,
    peer: SocketAddr,
    outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<StreamEvent>,
) {
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    let dial = async {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "SIP TCP connect failed");
                None
            }
            Err(_) => {
                debug!(%peer, "SIP TCP connect timed out");
                None
            }
        }
    };
    let (stream, tls) = match connect {
        Connect::Accepted(s) => (Some(s), None),
        Connect::Tcp => (dial.await, None),
        Connect::Tls(t) => (dial.await, Some(t)),
    };
    let Some(stream) = stream else {
        let _ = events.send(StreamEvent::Closed(peer));
        return;
    };
    let _ = stream.set_nodelay(true);
    let Some(t) = tls else {
        return pump(stream, peer, outgoing, events).await;
    };
    let connector = tokio_rustls::TlsConnector::from(t.config);
    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(t.server_name, stream)).await {
        Ok(Ok(tls)) => pump(tls, peer, outgoing, events).await,
        Ok(Err(e)) => {
            // E.g. a certificate that does not verify: nothing is sent.
            warn!(%peer, error = %e, "SIP TLS handshake failed");
            let _ = events.send(StreamEvent::Closed(peer));
        }
        Err(_) => {
            warn!(%peer, "SIP TLS handshake timed out");
            let _ = events.send(StreamEvent::Closed(peer));
        }
    }
}

/// Moves SIP messages over one established stream until either side closes.
async fn pump<S>(
    stream: S,
    peer: SocketAddr,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<StreamEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        tokio::select! {
            out = outgoing.recv() => match out {
                Some(bytes) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        debug!(%peer, error = %e, "SIP TCP write failed");
                        break;
                    }
                }
                None => break,
            },
            read = reader.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match crate::sip::frame_stream(&buf) {
                            Ok(Some((skip, len))) => {
                                let msg = buf[skip..skip + len].to_vec();
                                buf.drain(..skip + len);
                                let _ = events.send(StreamEvent::Message(peer, msg));
                            }
                            Ok(None) => break,
                            Err(e) => {
                                // A stream that cannot be framed cannot be resynchronised.
                                debug!(%peer, error = %e, "closing unframeable SIP TCP stream");
                                let _ = events.send(StreamEvent::Closed(peer));
                                return;
                            }
                        }
                    }
                }
            },
        }
    }
    let _ = events.send(StreamEvent::Closed(peer));
}

async fn drive(
    socket: UdpSocket,
    tcp: Option<TcpListener>,
    mut ua: UserAgent,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Shared,
) {
    let Shared {
        statuses,
        stats,
        qa,
    } = shared;
    let (stream_tx, mut stream_rx) = mpsc::unbounded_channel::<StreamEvent>();
    let mut connections: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    let mut tls_peers: HashMap<SocketAddr, TlsPeer> = HashMap::new();
    let mut conn_tasks = tokio::task::JoinSet::new();
    let mut routes: HashMap<CallHandle, mpsc::UnboundedSender<CallEvent>> = HashMap::new();
    let mut trunks = TrunkRoutes {
        statuses,
        by_id: HashMap::new(),
    };
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let deadline = ua.poll_timeout();
        let timer = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = async {
                match &tcp {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((stream, peer)) = accepted {
                    let (tx, rx) = mpsc::unbounded_channel();
                    connections.insert(peer, tx);
                    conn_tasks.spawn(run_connection(Connect::Accepted(stream), peer, rx, stream_tx.clone()));
                }
            }
            event = stream_rx.recv() => match event {
                Some(StreamEvent::Message(peer, bytes)) => {
                    ua.handle_stream_message(Instant::now(), peer, &bytes)
                }
                Some(StreamEvent::Closed(peer)) => {
                    connections.remove(&peer);
                }
                None => {}
            },
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => ua.handle_datagram(Instant::now(), from, &buf[..n]),
                // Some platforms report an earlier ICMP port unreachable here; the
                // transaction timers deal with the silence, so just note it.
                Err(e) => debug!(error = %e, "SIP socket receive error"),
            },
            command = commands.recv() => match command {
                None | Some(Command::Shutdown) => break,
                Some(Command::Invite { call, events, reply }) => {
                    let handle = ua.invite(Instant::now(), call);
                    routes.insert(handle, events);
                    let call_id = ua.call_id(handle).unwrap_or_default().to_string();
                    // The caller may have given up waiting; the call still runs and
                    // its events are dropped with the channel.
                    let _ = reply.send((handle, call_id));
                }
                Some(Command::Hangup(handle)) => ua.hangup(Instant::now(), handle),
                Some(Command::AddTrunk { config, probes }) => {
                    let name = config.name.clone();
                    if let Some(target) = &config.tls {
                        match tls_peer(target) {
                            Ok(p) => {
                                tls_peers.insert(config.destination, p);
                            }
                            Err(e) => warn!(trunk = %name, error = %e, "trunk TLS settings unusable"),
                        }
                    }
                    let id = ua.add_trunk(Instant::now(), config);
                    if let Some(st) = ua.trunk_status(id) {
                        lock(&trunks.statuses).insert(name.clone(), st);
                    }
                    trunks.by_id.insert(id, (name, probes));
                }
            },
            () = timer => ua.handle_timeout(Instant::now()),
        }

        while let Some(t) = ua.poll_transmit() {
            if t.transport.is_reliable() {
                // A failed send hands the payload back, so nothing is copied per message.
                let unsent = match connections.get(&t.destination) {
                    Some(c) => c.send(t.payload).err().map(|e| e.0),
                    None => Some(t.payload),
                };
                if let Some(payload) = unsent {
                    // No (live) connection: open one; it sends once connected.
                    let connect = match t.transport {
                        Transport::Tls => match tls_peers.get(&t.destination) {
                            Some(p) => Connect::Tls(p.clone()),
                            None => {
                                warn!(destination = %t.destination, "no TLS settings for this peer; message dropped");
                                continue;
                            }
                        },
                        _ => Connect::Tcp,
                    };
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(payload);
                    connections.insert(t.destination, tx);
                    conn_tasks.spawn(run_connection(
                        connect,
                        t.destination,
                        rx,
                        stream_tx.clone(),
                    ));
                }
                continue;
            }
            if let Err(e) = socket.send_to(&t.payload, t.destination).await {
                // E.g. ECONNREFUSED after ICMP port unreachable: retransmission timers
                // and Timer B/F decide what that means for the call.
                debug!(destination = %t.destination, error = %e, "SIP send failed");
            }
        }
        while let Some(event) = ua.poll_event() {
            match &event {
                Event::QaRegistration { username, binding } => {
                    let mut map = lock(&qa);
                    match binding {
                        Some(b) => {
                            stats.qa_registered.fetch_add(1, Ordering::Relaxed);
                            map.insert(username.clone(), b.clone());
                        }
                        None => {
                            stats.qa_removed.fetch_add(1, Ordering::Relaxed);
                            map.remove(username);
                        }
                    }
                    stats.qa_bound.store(map.len() as u64, Ordering::Relaxed);
                    continue;
                }
                Event::QaAuthFailed { .. } => {
                    stats.qa_auth_failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
            if let Event::TrunkProbe {
                trunk,
                result,
                status,
            } = event
            {
                if let Some((name, probes)) = trunks.by_id.get(&trunk) {
                    lock(&trunks.statuses).insert(name.clone(), status);
                    let _ = probes.send(result);
                }
                continue;
            }
            route_event(&mut routes, event);
        }
        stats.store(&ua.policy_counters());
    }
    conn_tasks.abort_all();
    debug!("SIP driver stopped");
}

fn route_event(routes: &mut HashMap<CallHandle, mpsc::UnboundedSender<CallEvent>>, event: Event) {
    let (call, call_event) = match event {
        Event::Progress {
            call,
            status,
            early_media,
        } => (
            call,
            CallEvent::Progress {
                status,
                early_media,
            },
        ),
        Event::Answered { call, media } => (call, CallEvent::Answered { media }),
        Event::Dtmf { call, digit } => (call, CallEvent::Dtmf { digit }),
        Event::Ended { call, reason } => {
            if let Some(tx) = routes.remove(&call) {
                let _ = tx.send(CallEvent::Ended { reason });
            }
            return;
        }
        Event::TrunkProbe { .. } | Event::QaRegistration { .. } | Event::QaAuthFailed { .. } => {
            return
        }
    };
    if let Some(tx) = routes.get(&call) {
        // A dropped receiver just means nobody listens any more.
        let _ = tx.send(call_event);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::sdp::{AudioCodec, MediaOffer};
    use std::time::Duration;

    /// Copies Via/From/To/Call-ID/CSeq of `req` into a response, as a UAS would.
    fn respond(req: &str, status: &str, to_tag: &str, extra: &str, body: &str) -> String {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in req.split("\r\n\r\n").next().unwrap().lines().skip(1) {
            let name = line.split(':').next().unwrap().trim().to_ascii_lowercase();
            match name.as_str() {
                "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
                "to" if line.contains(";tag=") => out.push_str(&format!("{line}\r\n")),
                "to" => out.push_str(&format!("{line};tag={to_tag}\r\n")),
                _ => {}
            }
        }
        out.push_str(extra);
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        out
    }

    async fn recv_text(peer: &UdpSocket) -> String {
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    async fn next_event(s: &mut CallSession) -> CallEvent {
        tokio::time::timeout(Duration::from_secs(5), s.events.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn loopback_call_answer_and_hangup() {
        let options = SipOptions {
            server_header: "otpdial-test".into(),
            ..SipOptions::default()
        };
        let ep = SipEndpoint::bind("127.0.0.1:0".parse().unwrap(), None, options)
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut session = ep
            .invite(OutgoingCall {
                request_uri: format!("sip:+31612345678@{peer_addr}"),
                destination: peer_addr,
                from_uri: "sip:+31508200000@example.invalid".into(),
                from_display: None,
                media: MediaOffer {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 40000,
                    codecs: vec![AudioCodec::Pcmu],
                    telephone_event_pt: 101,
                    ptime_ms: 20,
                    srtp: None,
                },
                credentials: None,
                extra_headers: Vec::new(),
                transport: Transport::Udp,
            })
            .await
            .unwrap();

        let invite = recv_text(&peer).await;
        assert!(invite.starts_with("INVITE "), "{invite}");
        peer.send_to(
            respond(&invite, "180 Ringing", "p1", "", "").as_bytes(),
            ep.local_addr(),
        )
        .await
        .unwrap();
        assert_eq!(
            next_event(&mut session).await,
            CallEvent::Progress {
                status: 180,
                early_media: None
            }
        );
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 30000 RTP/AVP 0\r\n";
        let ok = respond(
            &invite,
            "200 OK",
            "p1",
            &format!("Contact: <sip:callee@{peer_addr}>\r\nContent-Type: application/sdp\r\n"),
            sdp,
        );
        peer.send_to(ok.as_bytes(), ep.local_addr()).await.unwrap();
        match next_event(&mut session).await {
            CallEvent::Answered { media } => assert_eq!(media.port, 30000),
            other => panic!("{other:?}"),
        }
        let ack = recv_text(&peer).await;
        assert!(ack.starts_with("ACK "), "{ack}");

        session.hangup();
        let bye = recv_text(&peer).await;
        assert!(bye.starts_with("BYE "), "{bye}");
        peer.send_to(
            respond(&bye, "200 OK", "p1", "", "").as_bytes(),
            ep.local_addr(),
        )
        .await
        .unwrap();
        assert_eq!(
            next_event(&mut session).await,
            CallEvent::Ended {
                reason: EndReason::LocalHangup
            }
        );
        // Routing entry dropped after Ended: the channel closes.
        assert!(session.events.recv().await.is_none());

        ep.shutdown().await;
        assert!(matches!(
            ep.invite(OutgoingCall {
                request_uri: "sip:x@127.0.0.1".into(),
                destination: peer_addr,
                from_uri: "sip:a@b".into(),
                from_display: None,
                media: MediaOffer {
                    address: "127.0.0.1".parse().unwrap(),
                    port: 1,
                    codecs: vec![AudioCodec::Pcma],
                    telephone_event_pt: 101,
                    ptime_ms: 20,
                    srtp: None,
                },
                credentials: None,
                extra_headers: Vec::new(),
                transport: Transport::Udp,
            })
            .await,
            Err(SipIoError::Closed)
        ));
    }
}
