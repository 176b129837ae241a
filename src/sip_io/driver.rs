//! The driver task: owns the UDP socket, the TCP listener and the sans-IO user agent;
//! feeds it input, sends what it wants sent and routes its events.

use super::conn::{run_connection, tls_peer, Connect, StreamEvent, TlsPeer};
use super::{CallEvent, Command, QaBindingMap, SipStats, TrunkStatusMap};
use crate::sip::{CallHandle, Event, ProbeResult, Transport, TrunkId, UserAgent};
use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Largest UDP payload; SIP over UDP should stay far below, but never truncate.
const RECV_BUFFER: usize = 65535;

/// Where trunk events go: the shared status map and the probe channel of each trunk.
struct TrunkRoutes {
    statuses: TrunkStatusMap,
    by_id: HashMap<TrunkId, (String, mpsc::UnboundedSender<ProbeResult>)>,
}

/// What the driver writes and others read.
pub(super) struct Shared {
    pub(super) statuses: TrunkStatusMap,
    pub(super) stats: Arc<SipStats>,
    pub(super) qa: QaBindingMap,
    /// Where inbound calls go, when they are on.
    pub(super) inbound: Option<super::inbound::InboundRoute>,
}

pub(super) async fn drive(
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
        inbound,
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
    let mut retransmits = crate::sip::Retransmissions::default();
    // Who waits for the unregistrations at shutdown.
    let mut unregistered: Option<tokio::sync::oneshot::Sender<()>> = None;
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
                    ua.handle_connection_closed(Instant::now(), peer);
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
                None | Some(Command::Shutdown) => {
                    for name in ua.unregistering() {
                        warn!(trunk = %name, "trunk {name}: not unregistered: no answer before shutdown; the registrar keeps the binding until it expires");
                    }
                    break;
                }
                Some(Command::Unregister { done }) => {
                    ua.unregister_trunks(Instant::now());
                    unregistered = Some(done);
                }
                Some(Command::Invite {
                    call,
                    tls,
                    events,
                    reply,
                }) => {
                    set_up_tls(&mut tls_peers, &call, tls.as_ref());
                    let handle = ua.invite(Instant::now(), call);
                    routes.insert(handle, events);
                    let call_id = ua.call_id(handle).unwrap_or_default().to_string();
                    // The caller may have given up waiting; the call still runs and
                    // its events are dropped with the channel.
                    let _ = reply.send((handle, call_id));
                }
                Some(Command::Hangup(handle)) => ua.hangup(Instant::now(), handle),
                Some(Command::Answer { call, sdp }) => ua.answer(Instant::now(), call, sdp),
                Some(Command::Reject { call, status }) => ua.reject(Instant::now(), call, status),
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
                Some(Command::SetTrunkDestination { name, destination, transport }) => {
                    let old = ua.set_trunk_destination(Instant::now(), &name, destination, transport);
                    // The same certificate checks for the new address.
                    if let Some(peer) = old.and_then(|o| tls_peers.get(&o).cloned()) {
                        tls_peers.insert(destination, peer);
                    }
                }
            },
            () = timer => ua.handle_timeout(Instant::now()),
        }

        // Events first: answering one (an inbound call refused) may queue a message.
        while let Some(event) = ua.poll_event() {
            match &event {
                Event::QaRegistration { username, binding } => {
                    let mut map = lock(&qa);
                    // A binding whose connection closed is kept (calls to it say why
                    // they fail) but counts as removed, once.
                    let was_open = map.get(username).is_some_and(|b| !b.flow_closed);
                    let open = binding.as_ref().is_some_and(|b| !b.flow_closed);
                    match binding {
                        Some(b) => map.insert(username.clone(), b.clone()),
                        None => map.remove(username),
                    };
                    if open {
                        stats.qa_registered.fetch_add(1, Ordering::Relaxed);
                    } else if was_open {
                        stats.qa_removed.fetch_add(1, Ordering::Relaxed);
                    }
                    let bound = map.values().filter(|b| !b.flow_closed).count();
                    stats.qa_bound.store(bound as u64, Ordering::Relaxed);
                    continue;
                }
                Event::QaAuthFailed { .. } => {
                    stats.qa_auth_failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => {}
            }
            if let Event::Incoming { call, invite } = event {
                match &inbound {
                    Some(route) => route.offer(&mut ua, &mut routes, call, invite),
                    None => ua.reject(Instant::now(), call, 503),
                }
                continue;
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
        stats.store(&ua.policy_counters());
        stats.store_retransmits(ua.retransmissions(), &mut retransmits);
        if unregistered.is_some() && ua.unregistering().is_empty() {
            if let Some(done) = unregistered.take() {
                let _ = done.send(());
            }
        }
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
        Event::TrunkProbe { .. }
        | Event::QaRegistration { .. }
        | Event::QaAuthFailed { .. }
        | Event::Incoming { .. } => return,
    };
    if let Some(tx) = routes.get(&call) {
        // A dropped receiver just means nobody listens any more.
        let _ = tx.send(call_event);
    }
}

/// A TLS call to an address with no TLS client yet (a trunk's SRV target other than
/// the one it registers with) gets one from the trunk's settings.
fn set_up_tls(
    tls_peers: &mut HashMap<SocketAddr, TlsPeer>,
    call: &crate::sip::OutgoingCall,
    tls: Option<&crate::sip::TlsTarget>,
) {
    let (Some(target), Transport::Tls) = (tls, call.transport) else {
        return;
    };
    if let std::collections::hash_map::Entry::Vacant(slot) = tls_peers.entry(call.destination) {
        match tls_peer(target) {
            Ok(p) => {
                slot.insert(p);
            }
            Err(e) => warn!(destination = %call.destination, error = %e, "TLS settings unusable"),
        }
    }
}
