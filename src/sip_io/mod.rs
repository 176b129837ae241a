//! The only SIP code that touches sockets and clocks: a tokio task that owns one UDP
//! socket, a TCP listener on the same port and one TCP connection per TCP peer, and a
//! sans-IO [`UserAgent`]; it feeds the UA datagrams, framed stream messages, commands and
//! timer wake-ups, sends what it wants sent and routes its events to one channel per call.
//! May depend on `crate::sip`, tokio and tracing.
//!
//! TCP: a connection per peer address, opened when the UA first sends there (or accepted
//! from the peer) and forgotten when it closes; the next message to that peer opens a new
//! one (reconnect). Messages are framed by Content-Length (`sip::frame_stream`).

mod conn;
mod driver;
mod inbound;
mod stats;

pub use inbound::IncomingCall;
pub use stats::SipStats;

use crate::sip::policy::PolicyConfig;
use crate::sip::{
    sdp, CallHandle, EndReason, OutgoingCall, ProbeResult, TrunkConfig, TrunkStatus, UaConfig,
    UserAgent,
};
use crate::sip::{QaBinding, RegistrarConfig};
use crate::sync::lock;
use driver::{drive, Shared};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

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

pub(crate) enum Command {
    Invite {
        call: OutgoingCall,
        /// For a TLS call: how to reach `call.destination` when no TLS client is set up
        /// for that address yet (another SRV target of the trunk).
        tls: Option<crate::sip::TlsTarget>,
        events: mpsc::UnboundedSender<CallEvent>,
        reply: oneshot::Sender<(CallHandle, String)>,
    },
    Hangup(CallHandle),
    /// Answer an inbound call with this SDP.
    Answer {
        call: CallHandle,
        sdp: String,
    },
    /// Refuse an inbound call that is not answered yet.
    Reject {
        call: CallHandle,
        status: u16,
    },
    AddTrunk {
        config: TrunkConfig,
        probes: mpsc::UnboundedSender<ProbeResult>,
    },
    /// REGISTER `Expires: 0` for every registered trunk; `done` is sent once none is
    /// waiting for its answer any more.
    Unregister {
        done: oneshot::Sender<()>,
    },
    /// A trunk's proxy resolved to a new first target.
    SetTrunkDestination {
        name: String,
        destination: SocketAddr,
        transport: crate::sip::Transport,
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
    /// Inbound calls, until the application takes the receiver.
    incoming: Mutex<Option<mpsc::UnboundedReceiver<IncomingCall>>>,
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
    /// Inbound calls to answer (canary answer numbers); None = every new INVITE is
    /// refused.
    pub inbound: Option<crate::sip::InboundConfig>,
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
            Command::Answer { call, .. } => write!(f, "Answer({call})"),
            Command::Reject { call, status } => write!(f, "Reject({call}, {status})"),
            Command::AddTrunk { config, .. } => write!(f, "AddTrunk({})", config.name),
            Command::Unregister { .. } => f.write_str("Unregister"),
            Command::SetTrunkDestination {
                name, destination, ..
            } => write!(f, "SetTrunkDestination({name} -> {destination})"),
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
        let mut ua = UserAgent::new(UaConfig {
            local_addr,
            advertised_host,
            server_header: options.server_header,
            policy: options.policy,
            registrar: options.registrar,
        });
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let inbound_on = options.inbound.is_some();
        if let Some(inbound) = options.inbound {
            ua.set_inbound(inbound);
        }
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
            inbound: inbound_on.then(|| inbound::InboundRoute {
                calls: incoming_tx,
                commands: tx.clone(),
            }),
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
                incoming: Mutex::new(inbound_on.then_some(incoming_rx)),
            }),
        })
    }

    /// The inbound calls the user agent accepted (see [`SipOptions::inbound`]); the
    /// first caller gets the receiver, later ones `None`.
    pub fn take_incoming(&self) -> Option<mpsc::UnboundedReceiver<IncomingCall>> {
        lock(&self.inner.incoming).take()
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
        self.invite_with(call, None).await
    }

    /// [`Self::invite`] with the TLS settings for a TLS call's destination (a trunk's
    /// SRV target other than the one it registers with has none yet).
    pub async fn invite_with(
        &self,
        call: OutgoingCall,
        tls: Option<crate::sip::TlsTarget>,
    ) -> Result<CallSession, SipIoError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Invite {
                call,
                tls,
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

    /// Sends a trunk's later REGISTER/OPTIONS to `destination` (its proxy name now
    /// resolves there; RFC 3263).
    pub fn set_trunk_destination(
        &self,
        name: &str,
        destination: SocketAddr,
        transport: crate::sip::Transport,
    ) -> Result<(), SipIoError> {
        self.inner
            .commands
            .send(Command::SetTrunkDestination {
                name: name.to_string(),
                destination,
                transport,
            })
            .map_err(|_| SipIoError::Closed)
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

    /// Graceful shutdown of the registrations: every trunk holding one sends REGISTER
    /// `Expires: 0` (see [`UserAgent::unregister_trunks`]); waits until all are
    /// answered or `within` passes. Each outcome is logged per trunk. True when none is
    /// left unanswered. Trunks schedule nothing after this (no refresh, no OPTIONS).
    pub async fn unregister_trunks(&self, within: std::time::Duration) -> bool {
        let (done, finished) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Unregister { done })
            .is_err()
        {
            return false;
        }
        matches!(tokio::time::timeout(within, finished).await, Ok(Ok(())))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sip::sdp::{AudioCodec, MediaOffer};
    use crate::sip::Transport;
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
                pin_flow: false,
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
                pin_flow: false,
            })
            .await,
            Err(SipIoError::Closed)
        ));
    }
}
