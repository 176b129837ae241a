//! The built-in answering test phone, used by `otpdial demo` and by tests.
//!
//! A small tokio SIP UAS on a loopback UDP socket: it answers INVITEs (or rejects them,
//! as configured), records the RTP it receives and, when the call ends, recognises the
//! prompts in that audio by comparing it with the prompt packs ([`recognize`]). It learns
//! the code only from what it heard: there is no side channel from the gateway.
//!
//! Self-contained on purpose: it depends on `rsip`, tokio and `media` (packs, G.711),
//! never on `crate::sip`, so it can test that code as an independent peer.

pub mod capture;
pub mod meter;
pub mod recognize;
pub mod sdp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsip::prelude::*;
use rsip::{Header, Method, SipMessage};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::media::{Phrase, PromptLibrary, G711};
use capture::RtpCapture;
use recognize::Recognizer;

/// How the phone answers an INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerMode {
    /// 100 Trying, 180 Ringing, wait `ring`, then 200 OK with SDP.
    Answer {
        /// Time between 180 and 200.
        ring: Duration,
    },
    /// 100 Trying, then this final status (e.g. 486 Busy Here, 603 Decline).
    Reject {
        /// The final status code (300..=699).
        status: u16,
    },
}

/// Test phone settings.
#[derive(Clone, Debug)]
pub struct TestPhoneConfig {
    /// SIP address to bind, e.g. `127.0.0.1:0`. RTP is bound on the same IP when it is
    /// a specific address, else on 127.0.0.1.
    pub bind: SocketAddr,
    /// Answer or reject.
    pub answer: AnswerMode,
    /// Packs whose audio the phone can recognise.
    pub library: Arc<PromptLibrary>,
}

/// What the phone heard in one call.
#[derive(Clone, Debug, PartialEq)]
pub struct HeardCall {
    /// Call-ID of the INVITE.
    pub call_id: String,
    /// Request-URI of the INVITE.
    pub request_uri: String,
    /// From header value of the INVITE.
    pub from: String,
    /// The final status the phone answered (200, or the reject/487/488 status).
    pub status: u16,
    /// Negotiated codec, if the call was answered.
    pub codec: Option<G711>,
    /// RTP packets received (any payload type).
    pub rtp_packets: u64,
    /// Recognised phrases, in order.
    pub phrases: Vec<Phrase>,
    /// Each reading of the code as a digit string, in order.
    pub readings: Vec<String>,
    /// Locale of the pack whose intro (or press-key prompt) was heard.
    pub locale: Option<String>,
}

impl HeardCall {
    /// The code, if it was read at least once and every reading agrees.
    pub fn code(&self) -> Option<&str> {
        let first = self.readings.first()?;
        self.readings
            .iter()
            .all(|r| r == first)
            .then_some(first.as_str())
    }
}

/// A running test phone. Dropping it stops it.
#[derive(Debug)]
pub struct TestPhone {
    sip_addr: SocketAddr,
    calls: mpsc::UnboundedReceiver<HeardCall>,
    task: JoinHandle<()>,
}

impl TestPhone {
    /// Binds the SIP socket and starts answering.
    pub async fn start(config: TestPhoneConfig) -> std::io::Result<TestPhone> {
        let socket = Arc::new(UdpSocket::bind(config.bind).await?);
        let sip_addr = socket.local_addr()?;
        let rtp_ip = match config.bind.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        let (heard_tx, calls) = mpsc::unbounded_channel();
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let uas = Uas {
            socket,
            sip_addr,
            rtp_ip,
            answer: config.answer,
            recognizer: Arc::new(Recognizer::new(&config.library)),
            calls: HashMap::new(),
            heard: heard_tx,
            timer_tx,
        };
        let task = tokio::spawn(uas.run(timer_rx));
        Ok(TestPhone {
            sip_addr,
            calls,
            task,
        })
    }

    /// Where to send SIP.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    /// The next call that has ended (BYE, CANCEL or rejection) and been recognised.
    /// `None` if the phone stopped.
    pub async fn next_call(&mut self) -> Option<HeardCall> {
        self.calls.recv().await
    }
}

impl Drop for TestPhone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RFC 3261 timers for the 200 OK retransmission (§13.3.1.4).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Ringing,
    Answered,
    Ended,
}

#[derive(Debug)]
struct Call {
    invite: rsip::Request,
    invite_cseq: u32,
    peer: SocketAddr,
    to_tag: String,
    state: CallState,
    status: u16,
    /// The last response to the INVITE, resent on a retransmitted INVITE.
    last_response: Vec<u8>,
    offer: Option<sdp::Offer>,
    rtp_addr: Option<SocketAddr>,
    acked: Arc<AtomicBool>,
    capture: Option<(oneshot::Sender<()>, JoinHandle<RtpCapture>)>,
}

#[derive(Debug)]
enum Timer {
    Answer(String),
}

struct Uas {
    socket: Arc<UdpSocket>,
    sip_addr: SocketAddr,
    rtp_ip: IpAddr,
    answer: AnswerMode,
    recognizer: Arc<Recognizer>,
    calls: HashMap<String, Call>,
    heard: mpsc::UnboundedSender<HeardCall>,
    timer_tx: mpsc::UnboundedSender<Timer>,
}

impl Uas {
    async fn run(mut self, mut timers: mpsc::UnboundedReceiver<Timer>) {
        let mut buf = vec![0u8; 65_535];
        let mut errors = 0u32;
        loop {
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        errors = 0;
                        self.on_datagram(&buf[..n], from).await;
                    }
                    // ICMP errors from earlier sends surface here on Linux; a few are
                    // normal, an endless stream means the socket is broken.
                    Err(e) => {
                        errors += 1;
                        if errors > 100 {
                            tracing::error!(error = %e, "test phone: SIP socket failing, stopping");
                            return;
                        }
                    }
                },
                Some(timer) = timers.recv() => self.on_timer(timer).await,
            }
        }
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::debug!(error = %e, %to, "test phone: SIP send failed");
        }
    }

    async fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        // Keep-alive CRLFs (RFC 5626) and garbage are not requests.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let req = match SipMessage::try_from(bytes) {
            Ok(SipMessage::Request(req)) => req,
            Ok(SipMessage::Response(_)) => return, // the phone sends no requests
            Err(e) => {
                tracing::debug!(error = %e, %from, "test phone: unparsable SIP");
                return;
            }
        };
        let Ok(call_id) = req.call_id_header().map(|h| h.value().to_owned()) else {
            return; // cannot even address a 400 without Call-ID/Via
        };
        match req.method {
            Method::Invite => self.on_invite(req, call_id, from).await,
            Method::Ack => {
                if let Some(call) = self.calls.get(&call_id) {
                    call.acked.store(true, Ordering::Relaxed);
                }
            }
            Method::Bye => {
                let known = self
                    .calls
                    .get(&call_id)
                    .is_some_and(|c| c.state != CallState::Ended);
                let code = if known { 200 } else { 481 };
                let to_tag = self.calls.get(&call_id).map(|c| c.to_tag.clone());
                self.send(&response(&req, code, to_tag.as_deref(), &[], None), from)
                    .await;
                if known {
                    self.end_call(&call_id);
                }
            }
            Method::Cancel => {
                let ringing = self
                    .calls
                    .get(&call_id)
                    .is_some_and(|c| c.state == CallState::Ringing);
                let code = if self.calls.contains_key(&call_id) {
                    200
                } else {
                    481
                };
                self.send(&response(&req, code, None, &[], None), from)
                    .await;
                if ringing {
                    if let Some(call) = self.calls.get_mut(&call_id) {
                        let resp = response(&call.invite, 487, Some(&call.to_tag), &[], None);
                        call.status = 487;
                        call.last_response = resp.clone();
                        let peer = call.peer;
                        self.send(&resp, peer).await;
                    }
                    self.end_call(&call_id);
                }
            }
            Method::Options => {
                let allow = allow_header();
                let accept = Header::Other("Accept".into(), "application/sdp".into());
                self.send(&response(&req, 200, None, &[allow, accept], None), from)
                    .await;
            }
            Method::Info | Method::Update | Method::Notify | Method::Message => {
                let code = if self.calls.contains_key(&call_id) {
                    200
                } else {
                    481
                };
                self.send(&response(&req, code, None, &[], None), from)
                    .await;
            }
            _ => {
                let allow = allow_header();
                self.send(&response(&req, 405, None, &[allow], None), from)
                    .await;
            }
        }
    }

    async fn on_invite(&mut self, req: rsip::Request, call_id: String, from: SocketAddr) {
        let cseq = cseq_number(&req);
        if let Some(call) = self.calls.get(&call_id) {
            if cseq == Some(call.invite_cseq) || call.state != CallState::Answered {
                // A retransmission: answer exactly as before.
                let resp = call.last_response.clone();
                self.send(&resp, from).await;
            } else {
                // A re-INVITE (session refresh, hold): keep our side as it is.
                let body = call
                    .offer
                    .zip(call.rtp_addr)
                    .map(|(offer, addr)| sdp::answer(&offer, addr, 1));
                let extra = [contact_header(self.sip_addr), sdp_type_header()];
                let resp = response(&req, 200, Some(&call.to_tag), &extra, body.as_deref());
                self.send(&resp, from).await;
            }
            return;
        }

        self.send(&response(&req, 100, None, &[], None), from).await;
        let mut call = Call {
            invite_cseq: cseq.unwrap_or(0),
            peer: from,
            to_tag: format!("tp{:08x}", rand::random::<u32>()),
            state: CallState::Ringing,
            status: 0,
            last_response: Vec::new(),
            offer: None,
            rtp_addr: None,
            acked: Arc::new(AtomicBool::new(false)),
            capture: None,
            invite: req,
        };

        let final_status = match self.answer {
            AnswerMode::Reject { status } => Some(status),
            AnswerMode::Answer { ring } => {
                let body = String::from_utf8_lossy(&call.invite.body).into_owned();
                match sdp::parse_offer(&body) {
                    Err(e) => {
                        tracing::debug!(error = %e, "test phone: offer not acceptable");
                        Some(488)
                    }
                    Ok(offer) => match self.start_capture(&offer).await {
                        Err(e) => {
                            tracing::warn!(error = %e, "test phone: cannot bind RTP");
                            Some(500)
                        }
                        Ok((addr, stop, handle)) => {
                            call.offer = Some(offer);
                            call.rtp_addr = Some(addr);
                            call.capture = Some((stop, handle));
                            let resp = response(&call.invite, 180, Some(&call.to_tag), &[], None);
                            self.send(&resp, from).await;
                            call.last_response = resp;
                            let timers = self.timer_tx.clone();
                            let id = call_id.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(ring).await;
                                let _ = timers.send(Timer::Answer(id));
                            });
                            None
                        }
                    },
                }
            }
        };
        let rejected = final_status.is_some();
        if let Some(status) = final_status {
            let resp = response(&call.invite, status, Some(&call.to_tag), &[], None);
            self.send(&resp, from).await;
            call.status = status;
            call.last_response = resp;
        }
        self.calls.insert(call_id.clone(), call);
        if rejected {
            self.end_call(&call_id);
        }
    }

    async fn start_capture(
        &self,
        offer: &sdp::Offer,
    ) -> std::io::Result<(SocketAddr, oneshot::Sender<()>, JoinHandle<RtpCapture>)> {
        let socket = UdpSocket::bind(SocketAddr::new(self.rtp_ip, 0)).await?;
        let addr = socket.local_addr()?;
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let mut capture = RtpCapture::new(offer.codec, offer.payload_type);
        let handle = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    biased;
                    r = socket.recv(&mut buf) => {
                        if let Ok(n) = r {
                            capture.push(&buf[..n]);
                        }
                    }
                    _ = &mut stop_rx => break,
                }
            }
            // Packets already queued when the call ended still belong to it.
            while let Ok(n) = socket.try_recv(&mut buf) {
                capture.push(&buf[..n]);
            }
            capture
        });
        Ok((addr, stop_tx, handle))
    }

    async fn on_timer(&mut self, timer: Timer) {
        let Timer::Answer(call_id) = timer;
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return; // cancelled while ringing
        }
        let (Some(offer), Some(rtp_addr)) = (call.offer, call.rtp_addr) else {
            return;
        };
        let body = sdp::answer(&offer, rtp_addr, u64::from(rand::random::<u32>()));
        let extra = [contact_header(self.sip_addr), sdp_type_header()];
        let resp = response(&call.invite, 200, Some(&call.to_tag), &extra, Some(&body));
        call.state = CallState::Answered;
        call.status = 200;
        call.last_response = resp.clone();
        let (peer, acked, socket) = (call.peer, Arc::clone(&call.acked), Arc::clone(&self.socket));
        self.send(&resp, peer).await;
        // Resend the 200 until the ACK comes (T1 doubling to T2, give up after 64*T1).
        tokio::spawn(async move {
            let mut interval = T1;
            let mut waited = Duration::ZERO;
            while waited < T1 * 64 {
                tokio::time::sleep(interval).await;
                waited += interval;
                if acked.load(Ordering::Relaxed) {
                    return;
                }
                let _ = socket.send_to(&resp, peer).await;
                interval = (interval * 2).min(T2);
            }
        });
    }

    /// Ends a call: stops the RTP capture and recognises it off the async threads.
    fn end_call(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = CallState::Ended;
        // Stops 200 retransmission too: a BYE or CANCEL implies the peer got it.
        call.acked.store(true, Ordering::Relaxed);
        let mut heard = HeardCall {
            call_id: call_id.to_owned(),
            request_uri: call.invite.uri.to_string(),
            from: call
                .invite
                .from_header()
                .map(|h| h.value().to_owned())
                .unwrap_or_default(),
            status: call.status,
            codec: call.offer.filter(|_| call.status == 200).map(|o| o.codec),
            rtp_packets: 0,
            phrases: Vec::new(),
            readings: Vec::new(),
            locale: None,
        };
        let capture = call.capture.take();
        let recognizer = Arc::clone(&self.recognizer);
        let out = self.heard.clone();
        tokio::spawn(async move {
            if let Some((stop, handle)) = capture {
                let _ = stop.send(());
                if let Ok(capture) = handle.await {
                    heard.rtp_packets = capture.packets;
                    let pcm = capture.into_pcm();
                    // Recognition is CPU work of a second or so: keep it off the runtime.
                    let matches =
                        tokio::task::spawn_blocking(move || recognizer.recognize(&pcm)).await;
                    let matches = matches.unwrap_or_default();
                    heard.locale = matches
                        .iter()
                        .find(|m| matches!(m.phrase, Phrase::Intro | Phrase::PressKey))
                        .map(|m| m.locale.clone());
                    heard.phrases = matches.iter().map(|m| m.phrase).collect();
                    heard.readings = recognize::readings(&heard.phrases);
                }
            }
            let _ = out.send(heard);
        });
    }
}

fn cseq_number(req: &rsip::Request) -> Option<u32> {
    req.cseq_header()
        .ok()?
        .value()
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn allow_header() -> Header {
    Header::Other(
        "Allow".into(),
        "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE".into(),
    )
}

fn contact_header(sip_addr: SocketAddr) -> Header {
    Header::Contact(rsip::headers::Contact::new(format!(
        "<sip:testphone@{sip_addr}>"
    )))
}

fn sdp_type_header() -> Header {
    Header::ContentType(rsip::headers::ContentType::new("application/sdp"))
}

/// A response to `req`: its Via, From, Call-ID, CSeq and Record-Route copied, our tag
/// added to To when given and not already there (RFC 3261 §8.2.6.2).
fn response(
    req: &rsip::Request,
    code: u16,
    to_tag: Option<&str>,
    extra: &[Header],
    body: Option<&str>,
) -> Vec<u8> {
    let mut headers = rsip::Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::RecordRoute(_) if (101..300).contains(&code) => headers.push(h.clone()),
            Header::To(to) => {
                let value = to.value();
                let tagged = value.to_ascii_lowercase().contains(";tag=");
                match to_tag {
                    Some(tag) if !tagged && code > 100 => headers.push(Header::To(
                        rsip::headers::To::new(format!("{value};tag={tag}")),
                    )),
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    for h in extra {
        headers.push(h.clone());
    }
    headers.push(Header::Server(rsip::headers::Server::new(
        "otpdial-testphone",
    )));
    let body = body.unwrap_or("").as_bytes().to_vec();
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        body.len().to_string(),
    )));
    let resp = rsip::Response {
        status_code: code.into(),
        version: rsip::Version::V2,
        headers,
        body,
    };
    resp.to_string().into_bytes()
}

#[cfg(test)]
mod tests;
