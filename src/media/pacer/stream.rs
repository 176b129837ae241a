//! One call's media as a value: the RTP it sends, the RTCP beside it, and what it makes
//! of the packets the far end sends back. Pure code: it never reads a clock or touches
//! a socket (DESIGN principle 10; the shape of str0m's `streams/send.rs`). Time comes
//! in as `now`, packets go out as [`Transmit`]s written into the caller's buffer, and
//! what happened comes out of [`Stream::poll_event`]. The pacer thread
//! (`thread.rs`) does the I/O; tests drive a stream on a fake clock.
//!
//! Packet `n` is due at `start + n × 20 ms` (absolute deadlines: a late send never
//! shifts the ones after it) and stamped `ts0 + 160 n` (the ideal media clock).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::receive::ReceiveMeter;
use super::PlayoutEvent;
use crate::media::cursor::{EndCause, Frame, KeyVerdict, ScriptCursor};
use crate::media::dtmf::{RtpInput, RtpKeyInput};
use crate::media::rtcp::{self, SenderInfo};
use crate::media::rtp::{RtpStreamHeader, PACKET_LEN};
use crate::media::script::CallScript;
use crate::media::srtp::{self, SrtpSession};
use crate::media::{g711, PromptPack, FRAME_DURATION, FRAME_SAMPLES, G711, SAMPLE_RATE};

/// Send buffer: an RTP packet and room for its SRTP tag (an RTCP compound with its
/// SRTCP trailer is smaller).
pub const SEND_BUF_LEN: usize = PACKET_LEN + srtp::MAX_RTP_OVERHEAD;
const _: () = assert!(rtcp::MAX_COMPOUND_LEN + srtp::SRTCP_TRAILER_LEN <= SEND_BUF_LEN);

/// Largest lateness sent as a burst: 10 packets, which jitter buffers absorb.
pub const MAX_LAG: Duration = Duration::from_millis(200);
/// A packet due within this much after `now` is sent at `now`, up to this much early.
/// The pacer thread wakes on a grid of this step ([`GRID`]) and sends, at each grid
/// point, every packet due before the next one: each stream then leaves at the same
/// offset before its deadline every 20 ms (20 ms is a whole number of steps), so its
/// spacing stays exactly 20 ms, while the thread wakes at most 1,000 times a second
/// whatever the number of calls (each wake-up costs a sleep and an epoll: with one
/// wake-up per due packet, as before, that was 2-3 system calls per packet at low
/// load).
pub const SEND_AHEAD: Duration = GRID;
/// The step of the pacer thread's wake-ups.
pub const GRID: Duration = Duration::from_millis(1);

/// Which of the call's two ports a datagram goes out of or came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The RTP port.
    Rtp,
    /// The RTCP port (RTP port + 1).
    Rtcp,
}

/// A datagram to send: `len` bytes of the buffer given to [`Stream::poll_packet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which port to send it from.
    pub via: Via,
    /// Where to.
    pub to: SocketAddr,
    /// Bytes of the buffer.
    pub len: usize,
    /// For RTP, when the packet was due (for the lateness count).
    pub due: Option<Instant>,
}

/// What became of a received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Read: this call's media or RTCP.
    Accepted,
    /// Not this call's media (not RTP, comfort noise, RTCP on the RTP port): ignored,
    /// and never latched onto.
    Ignored,
    /// Failed SRTP/SRTCP authentication or the replay check: dropped unread.
    Rejected,
}

/// Everything a stream is given when it starts (the sockets stay with the thread).
#[derive(Debug)]
pub struct StreamParams {
    /// Where the far end wants our RTP (its SDP); replaced by the source of its first
    /// RTP packet (symmetric RTP).
    pub remote: SocketAddr,
    /// Whether the call has an RTCP port (reports and BYE are sent only then).
    pub rtcp: bool,
    /// Law of the frames sent.
    pub codec: G711,
    /// Payload type put in the header.
    pub payload_type: u8,
    /// The far end's telephone-event payload type; `None` turns on in-band detection.
    pub telephone_event_pt: Option<u8>,
    /// The pack the script refers to.
    pub pack: Arc<PromptPack>,
    /// What to say.
    pub script: CallScript,
    /// SRTP keys: every packet sent is protected, every packet read must authenticate.
    pub srtp: Option<SrtpSession>,
}

/// An RTCP compound waiting to go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RtcpDue {
    None,
    Report,
    Bye,
}

/// One call's outgoing stream and what it reads back.
#[derive(Debug)]
pub struct Stream {
    remote: SocketAddr,
    rtcp_remote: SocketAddr,
    /// The far end's RTP (resp. RTCP) has arrived and `remote` (`rtcp_remote`) is now
    /// its source address.
    latched: bool,
    rtcp_latched: bool,
    has_rtcp: bool,
    header: RtpStreamHeader,
    /// Deadline of packet 0; packet n is due at `start + n * 20 ms`. Moved forward only
    /// by [`Stream::limit_lag`].
    start: Instant,
    /// The instant and wall-clock time the stream was created: the NTP time of a
    /// sender report is read off them (no wall-clock read per report).
    created: Instant,
    created_wall: SystemTime,
    /// Index of the next packet to send.
    index: u64,
    /// The last packet sent was silence (or none was sent): the next speech frame
    /// starts a talk spurt and carries the marker bit.
    after_silence: bool,
    cursor: ScriptCursor,
    /// Set once the stream is over (script done, stopped): nothing but a pending RTCP
    /// BYE goes out after.
    ended: bool,
    rtcp_due: RtcpDue,
    packets_sent: u64,
    send_errors: u64,
    /// Times the timeline was re-anchored after a stall (see `limit_lag`).
    resyncs: u32,
    /// Packet index after which the next RTCP sender report goes out.
    next_report: u64,
    /// Key presses in what arrives on the RTP port.
    keys: RtpKeyInput,
    events: VecDeque<PlayoutEvent>,
    /// What the far end sends: packets, loss, jitter, codec.
    meter: ReceiveMeter,
    /// SRTP keys and state (boxed: about 2 KB, and plain calls have none).
    srtp: Option<Box<SrtpSession>>,
}

/// RFC 3389 comfort noise (static payload type 13).
const COMFORT_NOISE: u8 = 13;

/// A 20 ms frame of digital silence in `codec`, built once rather than per packet.
fn silence_frame(codec: G711) -> &'static [u8; FRAME_SAMPLES] {
    static ULAW: [u8; FRAME_SAMPLES] = [g711::ULAW_SILENCE; FRAME_SAMPLES];
    static ALAW: [u8; FRAME_SAMPLES] = [g711::ALAW_SILENCE; FRAME_SAMPLES];
    match codec {
        G711::Ulaw => &ULAW,
        G711::Alaw => &ALAW,
    }
}

/// Packets between sender reports: 5 s randomised to 2.5-7.5 s (RFC 3550 §6.2 asks
/// for randomisation so that reports of many streams do not synchronise).
fn report_interval_packets() -> u64 {
    let base = (rtcp::REPORT_INTERVAL.as_millis() / FRAME_DURATION.as_millis()) as u64;
    base / 2 + rand::random_range(0..=base)
}

impl Stream {
    /// A stream whose first packet is due at `now`; `wall` is the wall-clock time of
    /// `now` (for the NTP time in sender reports).
    pub fn new(params: StreamParams, now: Instant, wall: SystemTime) -> Stream {
        let remote = params.remote;
        Stream {
            remote,
            rtcp_remote: SocketAddr::new(remote.ip(), remote.port().saturating_add(1)),
            latched: false,
            rtcp_latched: false,
            has_rtcp: params.rtcp,
            header: RtpStreamHeader::random(params.payload_type),
            start: now,
            created: now,
            created_wall: wall,
            index: 0,
            after_silence: true,
            cursor: ScriptCursor::new(params.script, params.pack, params.codec),
            ended: false,
            rtcp_due: RtcpDue::None,
            packets_sent: 0,
            send_errors: 0,
            resyncs: 0,
            // The first report after half an interval (RFC 3550 §6.2 "initial").
            next_report: report_interval_packets() / 2,
            keys: RtpKeyInput::new(params.telephone_event_pt),
            events: VecDeque::new(),
            meter: ReceiveMeter::default(),
            srtp: params.srtp.map(Box::new),
        }
    }

    /// When [`Stream::poll_packet`] next has something to send: the deadline of the
    /// next RTP packet, an instant already past when an RTCP packet is pending (after
    /// [`Stream::stop`] or the end of the script), `None` once the stream is over.
    /// Changed by `poll_packet` (each packet moves it 20 ms on), by `stop` and by the
    /// `handle_*` calls (a key can end the stream or restart its script, which does not
    /// move the deadline itself).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.rtcp_due != RtcpDue::None {
            Some(self.created)
        } else if self.ended {
            None
        } else {
            Some(self.deadline())
        }
    }

    /// The next datagram due at `now` (RTP due up to [`SEND_AHEAD`] later counts as
    /// due), written into `buf`; `None` when nothing is due. Call it until it returns
    /// `None`: after an RTP packet a sender report may follow, and a stream that fell
    /// behind sends its backlog (at most [`MAX_LAG`] of it). May queue events
    /// (a reading completed, the key gate gave up).
    #[must_use]
    pub fn poll_packet(&mut self, now: Instant, buf: &mut [u8; SEND_BUF_LEN]) -> Option<Transmit> {
        if self.rtcp_due != RtcpDue::None {
            return self.rtcp_packet(now, buf);
        }
        if self.ended || self.deadline() > now + SEND_AHEAD {
            return None;
        }
        self.limit_lag(now);
        let due = self.deadline();
        let Some(len) = self.write_rtp(buf) else {
            // The script is over: a BYE if anything was sent, then nothing.
            return self.rtcp_packet(now, buf);
        };
        if self.index >= self.next_report {
            self.next_report = self.index + report_interval_packets();
            if self.has_rtcp {
                self.rtcp_due = RtcpDue::Report;
            }
        }
        let len = match &mut self.srtp {
            None => len,
            // Encrypted in place with its tag appended; a packet that cannot be
            // protected is not sent at all (never in clear).
            Some(s) => match s.protect_rtp(buf, len) {
                Ok(n) => n,
                Err(_) => {
                    self.packets_sent -= 1;
                    self.send_errors += 1;
                    return None;
                }
            },
        };
        Some(Transmit {
            via: Via::Rtp,
            to: self.remote,
            len,
            due: Some(due),
        })
    }

    /// Writes the next RTP packet into `buf`; `None` (and the stream ended) when the
    /// script is over.
    fn write_rtp(&mut self, send_buf: &mut [u8; SEND_BUF_LEN]) -> Option<usize> {
        let (index, after_silence, header) = (self.index, self.after_silence, self.header);
        let codec = self.cursor.codec();
        let buf = send_buf.first_chunk_mut::<PACKET_LEN>()?;
        let played = self.cursor.times_played();
        // The first packet of the stream also carries the marker so that the far
        // end's jitter buffer starts cleanly (as Asterisk and FreeSWITCH do).
        let (len, speech) = match self.cursor.next_frame() {
            Frame::Speech(f) => (
                header.write(index, after_silence || index == 0, f, buf),
                true,
            ),
            Frame::Silence => (
                header.write(index, index == 0, silence_frame(codec), buf),
                false,
            ),
            Frame::End(cause) => {
                self.note_readings(played);
                if cause == EndCause::NoKeypress {
                    self.events.push_back(PlayoutEvent::NoKeypress);
                }
                self.end();
                return None;
            }
        };
        self.note_readings(played);
        self.after_silence = !speech;
        self.index += 1;
        self.packets_sent += 1;
        Some(len)
    }

    /// One `CodePlayed` per reading completed since the cursor said `before`.
    fn note_readings(&mut self, before: u32) {
        for times in before + 1..=self.cursor.times_played() {
            self.events.push_back(PlayoutEvent::CodePlayed { times });
        }
    }

    /// The pending RTCP compound (sender report, or the BYE one), as SRTCP when the
    /// call has SRTP. Clears what was pending.
    fn rtcp_packet(&mut self, now: Instant, buf: &mut [u8; SEND_BUF_LEN]) -> Option<Transmit> {
        let bye = match std::mem::replace(&mut self.rtcp_due, RtcpDue::None) {
            RtcpDue::None => return None,
            RtcpDue::Report => false,
            RtcpDue::Bye => true,
        };
        // The media-clock time of this instant: time elapsed since the anchor, on the
        // ideal clock the RTP timestamps follow.
        let elapsed = now.saturating_duration_since(self.start);
        let samples = (elapsed.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u32;
        let wall = self.created_wall + now.saturating_duration_since(self.created);
        let info = SenderInfo {
            ssrc: self.header.ssrc,
            ntp: rtcp::ntp_timestamp(wall),
            rtp_timestamp: self.header.initial_timestamp.wrapping_add(samples),
            // RFC 3550: both counters wrap modulo 2^32.
            packets: self.packets_sent as u32,
            octets: (self.packets_sent as u32).wrapping_mul(FRAME_SAMPLES as u32),
        };
        let compound = buf.first_chunk_mut::<{ rtcp::MAX_COMPOUND_LEN }>()?;
        let mut len = rtcp::write_compound(&info, bye, compound);
        if let Some(s) = &mut self.srtp {
            // Never in clear: an SRTCP failure sends nothing.
            len = s.protect_rtcp(buf, len).ok()?;
        }
        Some(Transmit {
            via: Via::Rtcp,
            to: self.rtcp_remote,
            len,
            due: None,
        })
    }

    /// Ends the stream: no RTP after this; an RTCP BYE follows if anything was sent
    /// and the call has an RTCP port. [`PlayoutEvent::Finished`] comes from
    /// [`Stream::finished`].
    pub fn stop(&mut self) {
        self.end();
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.rtcp_due = if self.has_rtcp && self.packets_sent > 0 {
                RtcpDue::Bye
            } else {
                RtcpDue::None
            };
        }
    }

    /// Over, and nothing more to send: time for [`Stream::finished`].
    pub fn is_finished(&self) -> bool {
        self.ended && self.rtcp_due == RtcpDue::None
    }

    /// The last event of the stream.
    pub fn finished(&self) -> PlayoutEvent {
        PlayoutEvent::Finished {
            times_played: self.cursor.times_played(),
            packets_sent: self.packets_sent,
            received: self.meter.stats(),
        }
    }

    /// The next event to hand to the call, oldest first. Events are queued by
    /// `poll_packet` (readings, the gate giving up) and the `handle_*` calls (keys).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PlayoutEvent> {
        self.events.pop_front()
    }

    /// The kernel refused the last RTP packet `poll_packet` gave (socket buffer full,
    /// ICMP port unreachable): counted as an error, not as sent.
    pub fn send_failed(&mut self) {
        self.packets_sent = self.packets_sent.saturating_sub(1);
        self.send_errors += 1;
    }

    /// A key press that came by signalling (SIP INFO): judged as one in the media is,
    /// but not echoed as [`PlayoutEvent::KeyPressed`].
    pub fn handle_key(&mut self, key: char) {
        if self.cursor.on_key(key) == KeyVerdict::Wrong {
            self.events.push_back(PlayoutEvent::WrongKey);
        }
    }

    /// A datagram that came in on the call's RTP or RTCP port from `from` (decrypted
    /// in place when the call has SRTP). Latches our destination onto its source once
    /// it proves to be this call's media (symmetric RTP), and reads key presses.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        via: Via,
        data: &mut [u8],
    ) -> Inbound {
        let n = match (&mut self.srtp, via) {
            (None, _) => data.len(),
            // Only what authenticates is read (keys, latching).
            (Some(s), Via::Rtp) => match s.unprotect_rtp(data) {
                Ok(n) => n,
                Err(_) => {
                    self.meter.on_rejected();
                    return Inbound::Rejected;
                }
            },
            (Some(s), Via::Rtcp) => match s.unprotect_rtcp(data) {
                Ok(n) => n,
                Err(_) => {
                    self.meter.on_rejected();
                    return Inbound::Rejected;
                }
            },
        };
        let data = &data[..n];
        match via {
            Via::Rtp => self.on_rtp(now, data, from),
            Via::Rtcp => {
                // The far end's reports only tell us where to send ours.
                if !rtcp::is_rtcp(data) {
                    return Inbound::Ignored;
                }
                if !self.rtcp_latched {
                    self.rtcp_latched = true;
                    self.rtcp_remote = from;
                }
                Inbound::Accepted
            }
        }
    }

    fn on_rtp(&mut self, now: Instant, data: &[u8], from: SocketAddr) -> Inbound {
        let RtpInput::Media { key } = self.keys.on_datagram(data) else {
            // Not media of this call: never latch onto it. Comfort noise from the far
            // end still counts in the receive figures (it uses sequence numbers).
            if let Ok(p) = rtp_rs::RtpReader::new(data) {
                if p.payload_type() == COMFORT_NOISE && self.latched && from == self.remote {
                    self.meter.on_packet(
                        now,
                        p.ssrc(),
                        p.sequence_number().into(),
                        p.timestamp(),
                        13,
                        false,
                    );
                }
            }
            return Inbound::Ignored;
        };
        if let Ok(p) = rtp_rs::RtpReader::new(data) {
            let pt = p.payload_type();
            let audio = Some(pt) != self.keys.telephone_event_pt();
            self.meter.on_packet(
                now,
                p.ssrc(),
                p.sequence_number().into(),
                p.timestamp(),
                pt,
                audio,
            );
        }
        if !self.latched {
            // Symmetric RTP: the far end's packets come from where ours reach it (a
            // NAT's public mapping rather than the private address in its SDP).
            self.latched = true;
            if from != self.remote {
                tracing::debug!(sdp = %self.remote, actual = %from, "RTP latched to source address");
                self.remote = from;
                if !self.rtcp_latched {
                    self.rtcp_remote = SocketAddr::new(from.ip(), from.port().saturating_add(1));
                }
            }
        }
        if let Some(key) = key {
            self.events.push_back(PlayoutEvent::KeyPressed { key });
            self.handle_key(key);
        }
        Inbound::Accepted
    }

    /// Deadline of the next packet.
    fn deadline(&self) -> Instant {
        // 2^32 packets is 2.7 years of call; saturate rather than wrap.
        let n = u32::try_from(self.index).unwrap_or(u32::MAX);
        self.start + FRAME_DURATION * n
    }

    /// Bounds the catch-up burst after a stall (thread descheduled, VM paused): more
    /// than [`MAX_LAG`] behind, the timeline is re-anchored so the packet due goes out
    /// now and the rest follow at the normal rate. Nothing is skipped and RTP
    /// timestamps stay on the packet index, so the far end sees a delay spike, not a
    /// burst that would overflow its jitter buffer, nor a gap in the audio.
    fn limit_lag(&mut self, now: Instant) {
        if now.saturating_duration_since(self.deadline()) > MAX_LAG {
            let n = u32::try_from(self.index).unwrap_or(u32::MAX);
            if let Some(start) = now.checked_sub(FRAME_DURATION * n) {
                self.start = start;
                self.resyncs += 1;
            }
        }
    }

    /// Where our RTP goes now (the SDP address, or the latched source).
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Counters for the end-of-stream log line: send errors, re-anchors after a
    /// stall, received packets dropped by SRTP checks.
    pub fn trouble(&self) -> (u64, u32, u64) {
        (
            self.send_errors,
            self.resyncs,
            self.meter.stats().srtp_rejected,
        )
    }

    /// Bytes of state per stream, its own and on the heap (script, SRTP), for the
    /// memory figures.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Stream>()
            + self.cursor.heap_bytes()
            + self
                .srtp
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<SrtpSession>())
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
