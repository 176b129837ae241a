//! The answering side: the built-in test phone behind `[canary] answer_numbers`. Each
//! inbound call the SIP user agent accepted (from a trunk, for an answer number, within
//! `max_inbound_calls`) is recorded as an arrival, answered, and its RTP recorded and
//! measured (loss, jitter, gaps, codec) until the caller hangs up; then the prompts are
//! recognised and the arrival reported: what was heard, as a keyed hash (and in clear
//! only when it is no open run's code), and the measurements. The calling side, on this
//! instance or another, matches the arrival to its run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{code_hash, matching};
use crate::call::CallEngine;
use crate::domain;
use crate::metrics::Metrics;
use crate::sip_io::{CallEvent, IncomingCall};
use crate::store::{CanaryArrivalReport, NewCanaryArrival, Store};
use crate::testphone::capture::RtpCapture;
use crate::testphone::meter::{RtpMeter, StreamQuality};
use crate::testphone::recognize::{self, Recognizer};
use crate::testphone::sdp;
use crate::verify::CodeKeys;

/// After we hang up a call that ran too long, how long its end may take.
const HANGUP_WAIT: Duration = Duration::from_secs(5);

/// Everything the answering side needs.
pub struct CanaryAnswerer {
    pub(super) store: Store,
    pub(super) keys: CodeKeys,
    pub(super) engine: Arc<CallEngine>,
    pub(super) recognizer: Arc<Recognizer>,
    pub(super) metrics: Arc<Metrics>,
    /// This instance's name in `canary_arrivals.answered_by`.
    pub(super) instance: String,
    /// Woken after each report, for a runner on this instance.
    pub(super) reports: Arc<Notify>,
    pub(super) max_call: Duration,
}

/// What one call delivered.
struct Received {
    quality: StreamQuality,
    pcm: Vec<i16>,
    /// Wall clock (unix ms) of the first audio packet.
    first_rtp_at: Option<i64>,
}

impl CanaryAnswerer {
    /// Answers inbound canary calls until `shutdown`; calls in progress are then hung up.
    pub async fn run(
        self: Arc<Self>,
        mut incoming: mpsc::UnboundedReceiver<IncomingCall>,
        shutdown: CancellationToken,
    ) {
        let mut calls = JoinSet::new();
        loop {
            while calls.try_join_next().is_some() {}
            tokio::select! {
                call = incoming.recv() => match call {
                    Some(call) => {
                        let me = self.clone();
                        calls.spawn(async move { me.answer(call).await });
                    }
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        // Dropping a call hangs it up (BYE, or 480 before the answer).
        calls.abort_all();
        while calls.join_next().await.is_some() {}
    }

    async fn answer(&self, mut call: IncomingCall) {
        let number = call.invite.number.clone();
        let arrival_id = format!("ca_{}", ulid::Ulid::new());
        let arrival = NewCanaryArrival {
            id: &arrival_id,
            number: &number,
            sip_call_id: &call.invite.call_id,
            answered_by: &self.instance,
            arrived_at: domain::now_ms(),
        };
        if let Err(e) = self.store.canary_arrival_start(&arrival).await {
            // Nobody could match the call to its run: better not answer at all.
            tracing::warn!(error = %e, "cannot record an inbound canary call; refused");
            self.metrics.canary.inbound("refused");
            call.reject(503);
            return;
        }
        tracing::info!(arrival = %arrival_id, %number, source = %call.invite.source, "inbound canary call");
        let received = match self.take_media(&mut call).await {
            Ok(r) => r,
            Err(status) => {
                self.metrics.canary.inbound("refused");
                call.reject(status);
                self.wait_end(&mut call).await;
                Received {
                    quality: StreamQuality::default(),
                    pcm: Vec::new(),
                    first_rtp_at: None,
                }
            }
        };
        self.report(&arrival_id, &number, &call, received).await;
    }

    /// Answers and records the call until it ends; the refusal status when it cannot be
    /// answered (no usable offer 488, no RTP port 503).
    async fn take_media(&self, call: &mut IncomingCall) -> Result<Received, u16> {
        let offer = sdp::parse_offer(&call.invite.offer).map_err(|e| {
            tracing::info!(error = %e, "inbound canary call: offer not acceptable");
            488u16
        })?;
        let (socket, announce) = self.engine.media_socket_towards(offer.rtp).map_err(|e| {
            tracing::warn!(error = %e, "inbound canary call: no RTP port");
            503u16
        })?;
        let local = socket.local_addr().map_err(|_| 503u16)?;
        socket.set_nonblocking(true).map_err(|_| 503u16)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(|_| 503u16)?;
        let answer = sdp::answer(
            &offer,
            SocketAddr::new(announce, local.port()),
            u64::from(rand::random::<u32>()),
        );
        call.answer(answer);
        self.metrics.canary.inbound("answered");
        let mut capture = RtpCapture::new(offer.codec, offer.payload_type);
        let mut meter = RtpMeter::new(offer.payload_type);
        let epoch = Instant::now();
        let epoch_wall = domain::now_ms();
        let mut buf = [0u8; 2048];
        let limit = tokio::time::sleep(self.max_call);
        tokio::pin!(limit);
        loop {
            tokio::select! {
                r = socket.recv(&mut buf) => {
                    if let Ok(n) = r {
                        let at = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                        capture.push(&buf[..n]);
                        meter.push(at, &buf[..n]);
                    }
                }
                ev = call.events.recv() => match ev {
                    Some(CallEvent::Ended { .. }) | None => {
                        call.ended();
                        break;
                    }
                    Some(_) => {}
                },
                _ = &mut limit => {
                    tracing::info!(max_call = ?self.max_call, "inbound canary call too long: hanging up");
                    call.hangup();
                    let _ = tokio::time::timeout(HANGUP_WAIT, self.wait_end(call)).await;
                    break;
                }
            }
        }
        // Packets already queued when the call ended still belong to it.
        while let Ok(n) = socket.try_recv(&mut buf) {
            let at = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            capture.push(&buf[..n]);
            meter.push(at, &buf[..n]);
        }
        let quality = meter.quality();
        let first_rtp_at = quality
            .first_arrival_us
            .map(|us| epoch_wall + i64::try_from(us / 1000).unwrap_or(0));
        Ok(Received {
            quality,
            pcm: capture.into_pcm(),
            first_rtp_at,
        })
    }

    async fn wait_end(&self, call: &mut IncomingCall) {
        while let Some(ev) = call.events.recv().await {
            if matches!(ev, CallEvent::Ended { .. }) {
                break;
            }
        }
        call.ended();
    }

    /// Recognises what was heard and reports the arrival.
    async fn report(&self, arrival_id: &str, number: &str, call: &IncomingCall, got: Received) {
        let recognizer = self.recognizer.clone();
        let pcm = got.pcm;
        let phrases = tokio::task::spawn_blocking(move || recognizer.recognize(&pcm))
            .await
            .unwrap_or_default();
        let phrases: Vec<_> = phrases.iter().map(|m| m.phrase).collect();
        let readings = recognize::readings(&phrases);
        let digits = matching::consensus(&readings);
        let heard_hash = digits
            .as_deref()
            .map(|d| code_hash(&self.keys, number, d.as_bytes()));
        let open = match &heard_hash {
            Some(_) => self
                .store
                .canary_open_code_hashes(number)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // In clear only what is no open run's code.
        let heard = digits
            .as_deref()
            .filter(|_| heard_hash.as_ref().is_some_and(|h| !open.contains(h)));
        let q = got.quality;
        let report = CanaryArrivalReport {
            reported_at: domain::now_ms(),
            heard_hash: heard_hash.as_deref(),
            heard,
            codec: None,
            received: i64::try_from(q.received).unwrap_or(i64::MAX),
            expected: i64::try_from(q.expected).unwrap_or(i64::MAX),
            lost: i64::try_from(q.lost).unwrap_or(i64::MAX),
            jitter_ms: q.jitter_ms,
            gaps: i64::from(q.gaps),
            max_gap_ms: q.max_gap_ms,
            burst_ratio: q.burst_ratio,
            first_rtp_at: got.first_rtp_at,
        };
        let codec = sdp::parse_offer(&call.invite.offer)
            .ok()
            .map(|o| o.codec.encoding_name());
        let report = CanaryArrivalReport { codec, ..report };
        tracing::info!(
            arrival = %arrival_id,
            readings = readings.len(),
            heard_a_code = digits.is_some(),
            packets = q.received,
            lost = q.lost,
            jitter_ms = q.jitter_ms,
            "inbound canary call ended"
        );
        if let Err(e) = self.store.canary_arrival_report(arrival_id, &report).await {
            tracing::warn!(error = %e, "cannot report an inbound canary call");
        }
        self.reports.notify_waiters();
    }
}
