//! The pacer: one dedicated OS thread that sends the RTP of every call and reads what
//! the far ends send back.
//!
//! Each stream's packet `n` is due at `start + n * 20 ms` (absolute deadlines, so send
//! delays never accumulate into drift), and its RTP timestamp is `ts0 + n * 160`
//! whatever the wall clock says. Due streams sit in a binary heap keyed by deadline, so
//! a wake-up costs O(log streams) per packet and nothing per idle stream. A stream is
//! a few hundred bytes: a cursor into its script and header state; the audio frames
//! are borrowed from the `Arc`'d [`PromptPack`].
//!
//! The thread sleeps in one `epoll` (mio) over every call's RTP and RTCP socket, so it
//! reads the far end's packets as they come: RFC 4733 key presses and in-band DTMF
//! (which restart the reading of the code, [`CallScript::after_key`]), and the source
//! address to latch onto (symmetric RTP: once the far end's RTP arrives, ours goes to
//! where it came from, which is what gets through NATs). RTCP sender reports go out
//! about every 5 s and a BYE when the stream ends (RFC 3550).
//!
//! The thread talks to the async world only through channels: commands in
//! (`std::sync::mpsc` plus a mio waker), events out (tokio unbounded mpsc, whose `send`
//! never blocks). It can run under SCHED_FIFO ([`PacerOptions::realtime_priority`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::mpsc as tokio_mpsc;

use super::dtmf::{RtpInput, RtpKeyInput};
use super::rtcp::{self, SenderInfo};
use super::rtp::{RtpStreamHeader, PACKET_LEN};
use super::script::{CallScript, ScriptItem};
use super::srtp::{self, SrtpSession};
use super::{g711, PromptPack, FRAME_DURATION, FRAME_SAMPLES, G711, SAMPLE_RATE};

/// What to play, to whom.
#[derive(Debug)]
pub struct PlayoutSpec {
    /// Our RTP socket, already bound; the pacer sets it non-blocking.
    pub socket: UdpSocket,
    /// Our RTCP socket (normally RTP port + 1, see [`rtcp_socket_beside`]); `None` sends
    /// no RTCP.
    pub rtcp_socket: Option<UdpSocket>,
    /// Where the far end wants our RTP (from its SDP); replaced by the source of its
    /// first RTP packet (symmetric RTP).
    pub remote: SocketAddr,
    /// Law of the frames to send.
    pub codec: G711,
    /// Payload type to put in the header (normally `codec.payload_type()`).
    pub payload_type: u8,
    /// The telephone-event payload type of the far end's SDP answer; `None` when it
    /// offered none, which turns on in-band (Goertzel) DTMF detection instead.
    pub telephone_event_pt: Option<u8>,
    /// The pack the script refers to.
    pub pack: Arc<PromptPack>,
    /// What to say.
    pub script: CallScript,
    /// SRTP for this call (keys from SDES): every packet we send is protected and every
    /// packet we read must authenticate. `None`: plain RTP and RTCP.
    pub srtp: Option<SrtpSession>,
}

/// Binds the RTCP socket for an RTP socket: same address, port + 1 (RFC 3550 §11).
/// `None` (and no RTCP for the call) when that port is taken or the RTP port is odd.
pub fn rtcp_socket_beside(rtp: &UdpSocket) -> Option<UdpSocket> {
    let addr = rtp.local_addr().ok()?;
    if addr.port() % 2 != 0 {
        return None;
    }
    let port = addr.port().checked_add(1)?;
    UdpSocket::bind(SocketAddr::new(addr.ip(), port)).ok()
}

/// Progress of one playout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayoutEvent {
    /// A complete reading of the code has been sent (`times` readings so far).
    CodePlayed {
        /// Readings completed so far.
        times: u32,
    },
    /// A key press arrived in the media (RFC 4733 or in-band). SIP INFO keys passed
    /// in with [`Playout::key`] are not echoed back.
    KeyPressed {
        /// 0-9, *, #, A-D.
        key: char,
    },
    /// The script waited for keys ([`ScriptItem::AwaitKey`]) and they did not all come
    /// in time; the stream ends without reading the code. `Finished` follows.
    NoKeypress,
    /// A key other than the one expected came at a key gate; the stream ends without
    /// reading the code. `Finished` follows.
    WrongKey,
    /// The stream ended (script done, stopped, or pacer shut down). Always the last event.
    Finished {
        /// Complete readings sent.
        times_played: u32,
        /// Packets the kernel accepted.
        packets_sent: u64,
    },
}

/// The way into the pacer thread: a command, then a wake-up of its epoll.
#[derive(Debug, Clone)]
struct Inbox {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
}

impl Inbox {
    /// Err when the pacer thread is gone.
    fn send(&self, c: Command) -> Result<(), Command> {
        self.commands.send(c).map_err(|mpsc::SendError(c)| c)?;
        // A failed wake-up (eventfd full) means one is already pending.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// Handle of one stream. Dropping it stops the stream (a call's media must not outlive
/// the call), so keep it for as long as the call plays.
#[derive(Debug)]
pub struct Playout {
    /// Progress events; ends with exactly one `Finished`.
    pub events: tokio_mpsc::UnboundedReceiver<PlayoutEvent>,
    id: u64,
    inbox: Inbox,
}

impl Playout {
    /// Stops the stream: no packet is sent after the pacer sees this; `Finished` follows.
    pub fn stop(&self) {
        // If the pacer is gone, the stream already finished.
        let _ = self.inbox.send(Command::Stop(self.id));
    }

    /// A key press that came by signalling (SIP INFO): acts as one in the media does.
    pub fn key(&self, key: char) {
        let _ = self.inbox.send(Command::Key(self.id, key));
    }
}

impl Drop for Playout {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
enum Command {
    Play(Box<Stream>),
    Stop(u64),
    Key(u64, char),
    Shutdown,
}

/// How the pacer thread runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacerOptions {
    /// 0: normal scheduling. 1..=99: SCHED_FIFO at this priority, so that the thread
    /// wakes on time on a busy machine (DESIGN: timer wake-up p99 3.3 ms at normal
    /// priority, 51 µs under SCHED_FIFO). Without the permission (CAP_SYS_NICE or
    /// RLIMIT_RTPRIO) the thread logs a warning and runs at normal priority.
    pub realtime_priority: u8,
}

/// Packet counters over every stream since the pacer started, for `/metrics`. The
/// thread adds to them once per wake-up, not per packet.
#[derive(Debug, Default)]
pub struct PacerStats {
    sent: AtomicU64,
    late: AtomicU64,
    srtp_rejected: AtomicU64,
}

/// A packet that leaves more than this after its due time counts as late: half a
/// packet time, well past timer noise and the [`SEND_AHEAD`] batching, and the point
/// where a jitter buffer starts to need its slack.
pub const LATE_AFTER: Duration = Duration::from_millis(10);

impl PacerStats {
    /// RTP packets the kernel accepted.
    pub fn packets_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Of those, packets sent more than [`LATE_AFTER`] after they were due.
    pub fn packets_late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Packets received on SRTP calls that failed authentication or the replay check
    /// (dropped unread).
    pub fn srtp_rejected(&self) -> u64 {
        self.srtp_rejected.load(Ordering::Relaxed)
    }
}

/// The shared RTP sending thread. Dropping it stops all streams and joins the thread.
#[derive(Debug)]
pub struct Pacer {
    inbox: Inbox,
    active: Arc<AtomicUsize>,
    stats: Arc<PacerStats>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

/// Token of the waker; stream sockets use `id << 1 | is_rtcp`, ids start at 1.
const WAKER: Token = Token(0);

impl Pacer {
    /// Starts the pacing thread at normal priority.
    pub fn start() -> std::io::Result<Pacer> {
        Pacer::start_with(PacerOptions::default())
    }

    /// Starts the pacing thread.
    pub fn start_with(options: PacerOptions) -> std::io::Result<Pacer> {
        let (tx, rx) = mpsc::channel();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let active = Arc::new(AtomicUsize::new(0));
        let thread_active = Arc::clone(&active);
        let stats = Arc::new(PacerStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("rtp-pacer".to_owned())
            .spawn(move || {
                apply_priority(options.realtime_priority);
                run(poll, rx, &thread_active, &thread_stats)
            })?;
        Ok(Pacer {
            inbox: Inbox {
                commands: tx,
                waker,
            },
            active,
            stats,
            next_id: AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    /// Starts playing `spec.script`; the first packet goes out at once.
    pub fn play(&self, spec: PlayoutSpec) -> Playout {
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let playout = Playout {
            events,
            id,
            inbox: self.inbox.clone(),
        };
        let nonblocking = spec.socket.set_nonblocking(true).and_then(|()| {
            spec.rtcp_socket
                .as_ref()
                .map_or(Ok(()), |s| s.set_nonblocking(true))
        });
        if let Err(e) = nonblocking {
            // A blocking socket would stall every call on this thread; refuse it.
            tracing::error!(error = %e, remote = %spec.remote, "cannot make RTP socket non-blocking");
            let _ = events_tx.send(PlayoutEvent::Finished {
                times_played: 0,
                packets_sent: 0,
            });
            return playout;
        }
        let stream = Stream::new(id, spec, events_tx);
        // Counted here, not on the thread, so the count is right as soon as play returns.
        self.active.fetch_add(1, Ordering::Relaxed);
        if let Err(Command::Play(stream)) = self.inbox.send(Command::Play(Box::new(stream))) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            stream.finish();
        }
        playout
    }

    /// Streams currently playing.
    pub fn active_streams(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Packet counters of all streams so far.
    pub fn stats(&self) -> Arc<PacerStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let _ = self.inbox.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("RTP pacer thread panicked");
            }
        }
    }
}

/// Puts the calling thread under SCHED_FIFO at `priority` (0: leave it alone). Through
/// the `thread-priority` crate, which wraps `pthread_setschedparam` safely, so this
/// crate keeps `unsafe_code = "deny"`.
fn apply_priority(priority: u8) {
    if priority == 0 {
        return;
    }
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    let value = match ThreadPriorityValue::try_from(priority.min(99)) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(priority, error = ?e, "invalid real-time priority; pacer runs at normal priority");
            return;
        }
    };
    let result = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    );
    match result {
        Ok(()) => tracing::info!(priority, "RTP pacer runs under SCHED_FIFO"),
        Err(e) => tracing::warn!(
            priority,
            error = ?e,
            "cannot set SCHED_FIFO for the RTP pacer (needs CAP_SYS_NICE or an RLIMIT_RTPRIO); running at normal priority"
        ),
    }
}

/// Per-stream state (about 300 bytes plus the script's items).
#[derive(Debug)]
struct Stream {
    id: u64,
    socket: mio::net::UdpSocket,
    rtcp_socket: Option<mio::net::UdpSocket>,
    remote: SocketAddr,
    rtcp_remote: SocketAddr,
    /// The far end's RTP (resp. RTCP) has arrived and `remote` (`rtcp_remote`) is now
    /// its source address.
    latched: bool,
    rtcp_latched: bool,
    codec: G711,
    pack: Arc<PromptPack>,
    script: CallScript,
    header: RtpStreamHeader,
    /// Deadline of packet 0; packet n is due at `start + n * 20 ms`.
    start: Instant,
    /// Index of the next packet to send.
    index: u64,
    /// Position in the script: item, and frame within that item.
    item: usize,
    frame: u32,
    /// The last packet sent was silence (or none was sent): the next speech frame
    /// starts a talk spurt and carries the marker bit.
    after_silence: bool,
    times_played: u32,
    /// Key presses that restarted the reading; capped so a stuck key cannot hold the
    /// line open forever.
    restarts: u8,
    /// Digits keyed correctly so far at the current key gate.
    keyed: u8,
    packets_sent: u64,
    send_errors: u64,
    /// Times the timeline was re-anchored after a stall (see `limit_lag`).
    resyncs: u32,
    /// Packet index after which the next RTCP sender report goes out.
    next_report: u64,
    /// Key presses in what arrives on the RTP socket.
    keys: RtpKeyInput,
    events: tokio_mpsc::UnboundedSender<PlayoutEvent>,
    /// SRTP keys and state, and the received packets dropped for failing its
    /// authentication or replay checks (boxed: about 2 KB, and plain calls have none).
    srtp: Option<Box<StreamSrtp>>,
}

#[derive(Debug)]
struct StreamSrtp {
    session: SrtpSession,
    rejected: u64,
}

/// Send buffer: an RTP packet and room for its SRTP tag.
const SEND_BUF_LEN: usize = PACKET_LEN + srtp::MAX_RTP_OVERHEAD;

/// Bytes of pacer state per stream, without its script (for the benchmark's memory
/// figures); the Box adds the allocator's few bytes.
pub fn stream_state_bytes() -> usize {
    std::mem::size_of::<Stream>()
}

/// Largest lateness sent as a burst: 10 packets, which jitter buffers absorb.
const MAX_LAG: Duration = Duration::from_millis(200);
/// Packets due within this much of a wake-up go out in that wake-up, up to this much
/// early. Bounds wake-ups to about 5,000 a second whatever the number of calls (each
/// costs an epoll and a nanosleep, several µs), at a spacing error far below what a
/// jitter buffer notices.
const SEND_AHEAD: Duration = Duration::from_micros(200);
/// Restarts of the reading allowed per call.
const MAX_RESTARTS: u8 = 10;
/// Packets read from one socket per wake-up; the rest wait for the next round so one
/// flooded port cannot stall every other call.
const READ_BUDGET: usize = 16;

/// What the script wants in the next packet.
enum Next<'a> {
    Speech(&'a [u8; FRAME_SAMPLES]),
    Silence,
    End,
}

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
    fn new(
        id: u64,
        spec: PlayoutSpec,
        events: tokio_mpsc::UnboundedSender<PlayoutEvent>,
    ) -> Stream {
        let rtcp_remote = SocketAddr::new(spec.remote.ip(), spec.remote.port().saturating_add(1));
        Stream {
            id,
            socket: mio::net::UdpSocket::from_std(spec.socket),
            rtcp_socket: spec.rtcp_socket.map(mio::net::UdpSocket::from_std),
            remote: spec.remote,
            rtcp_remote,
            latched: false,
            rtcp_latched: false,
            codec: spec.codec,
            pack: spec.pack,
            script: spec.script,
            header: RtpStreamHeader::random(spec.payload_type),
            start: Instant::now(),
            index: 0,
            item: 0,
            frame: 0,
            after_silence: true,
            times_played: 0,
            restarts: 0,
            keyed: 0,
            packets_sent: 0,
            send_errors: 0,
            resyncs: 0,
            // The first report after half an interval (RFC 3550 §6.2 "initial").
            next_report: report_interval_packets() / 2,
            keys: RtpKeyInput::new(spec.telephone_event_pt),
            events,
            srtp: spec.srtp.map(|session| {
                Box::new(StreamSrtp {
                    session,
                    rejected: 0,
                })
            }),
        }
    }

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

    /// Advances the script cursor to the next frame, handling the markers on the way.
    fn next_frame(&mut self) -> Next<'_> {
        loop {
            let Some(item) = self.script.items.get(self.item).copied() else {
                return Next::End;
            };
            match item {
                ScriptItem::CodeStart => {}
                ScriptItem::CodeEnd => {
                    self.times_played += 1;
                    let _ = self.events.send(PlayoutEvent::CodePlayed {
                        times: self.times_played,
                    });
                }
                ScriptItem::Silence { frames } => {
                    if self.frame < frames {
                        self.frame += 1;
                        return Next::Silence;
                    }
                }
                ScriptItem::AwaitKey { frames, .. } => {
                    if self.frame < frames {
                        self.frame += 1;
                        return Next::Silence;
                    }
                    // No key in time: the code must not be spoken (SPEC §4).
                    let _ = self.events.send(PlayoutEvent::NoKeypress);
                    self.item = self.script.items.len();
                    return Next::End;
                }
                ScriptItem::Say(p) => {
                    let idx = self.frame as usize;
                    if let Some(f) = self.pack.frames(p, self.codec).get(idx) {
                        self.frame += 1;
                        return Next::Speech(f);
                    }
                }
            }
            self.item += 1;
            self.frame = 0;
        }
    }

    /// A key press from any source. At a key gate it must be the next expected digit
    /// (all of them: on past the gate; a wrong one: the stream ends unread); before a
    /// gate (its request still playing) it counts for nothing; past every gate it
    /// restarts the reading of the code.
    fn on_key(&mut self, key: char) {
        let at = self.item.min(self.script.items.len());
        match self.script.gate_from(at) {
            Some(gate) if self.judges_keys(gate) => {
                let Some(ScriptItem::AwaitKey { expect, .. }) = self.script.items.get(gate) else {
                    return;
                };
                if !expect.matches(usize::from(self.keyed), key) {
                    // The code must not be spoken (SPEC §6): a forwarded line or a
                    // greeting with tones does not get to try every digit.
                    let _ = self.events.send(PlayoutEvent::WrongKey);
                    self.item = self.script.items.len();
                    self.frame = 0;
                    return;
                }
                self.keyed += 1;
                if usize::from(self.keyed) == expect.digits().len() {
                    self.keyed = 0;
                    self.item = gate + 1;
                    self.frame = 0;
                }
            }
            Some(_) => {} // the request is still being said
            None => {
                if self.restarts >= MAX_RESTARTS {
                    return;
                }
                if let Some(next) = self.script.after_key(self.item) {
                    self.restarts += 1;
                    self.item = next;
                    self.frame = 0;
                }
            }
        }
    }

    /// Whether a key now counts at the gate `gate`: the request before it has been said
    /// in full, or the gate takes keys early.
    fn judges_keys(&self, gate: usize) -> bool {
        matches!(
            self.script.items.get(gate),
            Some(ScriptItem::AwaitKey { early: true, .. })
        ) || self.nothing_left_before(gate)
    }

    /// Whether every frame before item `gate` has been sent: the cursor is at the gate,
    /// or only finished items and markers (no frames) lie between. Keys count at a gate
    /// only then: the request has been said in full.
    fn nothing_left_before(&self, gate: usize) -> bool {
        let items = &self.script.items;
        (self.item..gate.min(items.len())).all(|i| {
            let len = match items[i] {
                ScriptItem::Say(p) => self.pack.frames(p, self.codec).len(),
                ScriptItem::Silence { frames } | ScriptItem::AwaitKey { frames, .. } => {
                    frames as usize
                }
                ScriptItem::CodeStart | ScriptItem::CodeEnd => 0,
            };
            let played = if i == self.item {
                self.frame as usize
            } else {
                0
            };
            played >= len
        })
    }

    /// Sends the packet that is due. Returns false when the script is over.
    fn send_one(&mut self, send_buf: &mut [u8; SEND_BUF_LEN]) -> bool {
        // Copied out (a few bytes) so the frame can be written straight from the pack
        // while `next_frame` still borrows the stream: no 160-byte copy per packet.
        let (index, after_silence, header, codec) =
            (self.index, self.after_silence, self.header, self.codec);
        // SEND_BUF_LEN >= PACKET_LEN, so this is always Some.
        let Some(buf) = send_buf.first_chunk_mut::<PACKET_LEN>() else {
            return false;
        };
        // The first packet of the stream also carries the marker so that the
        // far end's jitter buffer starts cleanly (as Asterisk and FreeSWITCH do).
        let (len, speech) = match self.next_frame() {
            Next::End => return false,
            Next::Speech(f) => (
                header.write(index, after_silence || index == 0, f, buf),
                true,
            ),
            Next::Silence => (
                header.write(index, index == 0, silence_frame(codec), buf),
                false,
            ),
        };
        self.after_silence = !speech;
        self.index += 1;
        let len = match &mut self.srtp {
            None => len,
            // Encrypted in place with its tag appended; a packet that cannot be
            // protected is not sent at all (never in clear).
            Some(s) => match s.session.protect_rtp(send_buf, len) {
                Ok(n) => n,
                Err(_) => {
                    self.send_errors += 1;
                    return true;
                }
            },
        };
        match self.socket.send_to(&send_buf[..len], self.remote) {
            Ok(_) => self.packets_sent += 1,
            // WouldBlock (socket buffer full) and ECONNREFUSED (ICMP port unreachable
            // from an earlier packet) are normal under load or before the far end
            // opens its port: the packet is lost, the stream goes on.
            Err(_) => self.send_errors += 1,
        }
        if self.index >= self.next_report {
            self.next_report = self.index + report_interval_packets();
            self.send_rtcp(false);
        }
        true
    }

    /// Sends a sender report (and BYE when `bye`) if the stream has an RTCP socket; as
    /// SRTCP when the call has SRTP.
    fn send_rtcp(&mut self, bye: bool) {
        let Some(socket) = &self.rtcp_socket else {
            return;
        };
        // The media-clock time of this instant: packet index time elapsed since the
        // anchor, on the ideal clock the RTP timestamps follow.
        let elapsed = Instant::now().saturating_duration_since(self.start);
        let samples = (elapsed.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u32;
        let info = SenderInfo {
            ssrc: self.header.ssrc,
            ntp: rtcp::ntp_timestamp(SystemTime::now()),
            rtp_timestamp: self.header.initial_timestamp.wrapping_add(samples),
            // RFC 3550: both counters wrap modulo 2^32.
            packets: self.packets_sent as u32,
            octets: (self.packets_sent as u32).wrapping_mul(FRAME_SAMPLES as u32),
        };
        let mut buf = [0u8; rtcp::MAX_COMPOUND_LEN + srtp::SRTCP_TRAILER_LEN];
        let Some(compound) = buf.first_chunk_mut::<{ rtcp::MAX_COMPOUND_LEN }>() else {
            return;
        };
        let mut len = rtcp::write_compound(&info, bye, compound);
        if let Some(s) = &mut self.srtp {
            match s.session.protect_rtcp(&mut buf, len) {
                Ok(n) => len = n,
                Err(_) => return, // never in clear
            }
        }
        // Lost like any UDP packet if the far end does not listen; nothing to do.
        let _ = socket.send_to(&buf[..len], self.rtcp_remote);
    }

    /// Reads what the far end sent to our RTP socket; true when the read budget ran out
    /// (more may be waiting). Packets failing SRTP checks are counted in `rejected`
    /// (the pacer's total) as well as the stream's own count.
    fn read_rtp(&mut self, buf: &mut [u8], rejected: &AtomicU64) -> bool {
        for _ in 0..READ_BUDGET {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                // WouldBlock: drained. Other errors (ICMP errors queued on the socket)
                // say nothing about incoming media.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => continue,
            };
            let n = match &mut self.srtp {
                None => n,
                // Only what authenticates is read (keys, latching); the rest is
                // dropped and counted.
                Some(s) => match s.session.unprotect_rtp(&mut buf[..n]) {
                    Ok(n) => n,
                    Err(_) => {
                        s.rejected += 1;
                        rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            self.on_rtp(&buf[..n], from);
        }
        true
    }

    fn on_rtp(&mut self, data: &[u8], from: SocketAddr) {
        let RtpInput::Media { key } = self.keys.on_datagram(data) else {
            return; // not media of this call: never latch onto it
        };
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
            let _ = self.events.send(PlayoutEvent::KeyPressed { key });
            self.on_key(key);
        }
    }

    /// Drains our RTCP socket (true when the budget ran out); the far end's reports
    /// only tell us where to send ours. SRTP rejects are counted as in `read_rtp`.
    fn read_rtcp(&mut self, buf: &mut [u8], rejected: &AtomicU64) -> bool {
        let Some(socket) = &self.rtcp_socket else {
            return false;
        };
        for _ in 0..READ_BUDGET {
            match socket.recv_from(buf) {
                Ok((n, from)) => {
                    let n = match &mut self.srtp {
                        None => n,
                        Some(s) => match s.session.unprotect_rtcp(&mut buf[..n]) {
                            Ok(n) => n,
                            Err(_) => {
                                s.rejected += 1;
                                rejected.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        },
                    };
                    let rtcp_like = rtcp::is_rtcp(&buf[..n]);
                    if rtcp_like && !self.rtcp_latched {
                        self.rtcp_latched = true;
                        self.rtcp_remote = from;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => {}
            }
        }
        true
    }

    /// Received packets dropped by SRTP checks so far.
    fn srtp_rejected(&self) -> u64 {
        self.srtp.as_ref().map_or(0, |s| s.rejected)
    }

    fn finish(mut self) {
        if self.packets_sent > 0 {
            self.send_rtcp(true);
        }
        let rejected = self.srtp_rejected();
        if rejected > 0 {
            tracing::debug!(
                remote = %self.remote,
                rejected,
                "SRTP/SRTCP packets failed authentication or replay checks and were dropped"
            );
        }
        if self.send_errors > 0 || self.resyncs > 0 {
            tracing::debug!(
                remote = %self.remote,
                errors = self.send_errors,
                resyncs = self.resyncs,
                "RTP stream had send errors or fell behind"
            );
        }
        let _ = self.events.send(PlayoutEvent::Finished {
            times_played: self.times_played,
            packets_sent: self.packets_sent,
        });
    }
}

/// Sleeps until `deadline` or an event on `poll`. epoll only takes whole milliseconds
/// (mio rounds up), which would make every wake-up up to 1 ms late; so epoll waits the
/// whole milliseconds and a precise sleep the rest. A command or packet that arrives
/// during that last sub-millisecond sleep waits for it, which is harmless.
fn wait(poll: &mut Poll, events: &mut Events, deadline: Option<Instant>) {
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let result = match timeout {
        Some(t) if t < Duration::from_millis(1) => {
            if !t.is_zero() {
                std::thread::sleep(t);
            }
            poll.poll(events, Some(Duration::ZERO))
        }
        Some(t) => poll.poll(events, Some(Duration::from_millis(t.as_millis() as u64))),
        None => poll.poll(events, None),
    };
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::Interrupted {
            // Cannot happen with a valid epoll fd; do not spin if it somehow does.
            tracing::error!(error = %e, "RTP pacer epoll failed");
            events.clear();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The thread body.
fn run(
    mut poll: Poll,
    commands: mpsc::Receiver<Command>,
    active: &AtomicUsize,
    stats: &PacerStats,
) {
    let mut streams: HashMap<u64, Box<Stream>> = HashMap::new();
    // (deadline, stream id); entries of stopped streams are skipped when popped.
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut events = Events::with_capacity(1024);
    // Sockets whose read budget ran out: read again next round (epoll is
    // edge-triggered and will not report them again).
    let mut unread: Vec<Token> = Vec::new();
    let mut ready: Vec<Token> = Vec::new();
    let mut buf = [0u8; SEND_BUF_LEN];
    let mut rx_buf = [0u8; 2048];
    let finish = |s: Box<Stream>| {
        active.fetch_sub(1, Ordering::Relaxed);
        s.finish();
    };

    'outer: loop {
        let deadline = if unread.is_empty() {
            due.peek().map(|Reverse((d, _))| *d)
        } else {
            Some(Instant::now())
        };
        wait(&mut poll, &mut events, deadline);

        loop {
            match commands.try_recv() {
                Ok(Command::Play(mut stream)) => {
                    let token = Token((stream.id as usize) << 1);
                    let registry = poll.registry();
                    let ok = registry
                        .register(&mut stream.socket, token, Interest::READABLE)
                        .is_ok();
                    if let Some(rtcp) = &mut stream.rtcp_socket {
                        let rtcp_token = Token(token.0 | 1);
                        if registry
                            .register(rtcp, rtcp_token, Interest::READABLE)
                            .is_err()
                        {
                            stream.rtcp_socket = None;
                        }
                    }
                    if !ok {
                        // Unreadable socket: still play (DTMF and latching are lost).
                        tracing::warn!(remote = %stream.remote, "cannot watch RTP socket");
                    }
                    due.push(Reverse((stream.deadline(), stream.id)));
                    streams.insert(stream.id, stream);
                }
                Ok(Command::Stop(id)) => {
                    if let Some(s) = streams.remove(&id) {
                        finish(s);
                    }
                }
                Ok(Command::Key(id, key)) => {
                    if let Some(s) = streams.get_mut(&id) {
                        s.on_key(key);
                    }
                }
                Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => break 'outer,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }

        ready.clear();
        ready.extend(events.iter().map(|e| e.token()).filter(|t| *t != WAKER));
        ready.append(&mut unread);
        for &token in &ready {
            let Some(stream) = streams.get_mut(&((token.0 >> 1) as u64)) else {
                continue;
            };
            let more = if token.0 & 1 == 0 {
                stream.read_rtp(&mut rx_buf, &stats.srtp_rejected)
            } else {
                stream.read_rtcp(&mut rx_buf, &stats.srtp_rejected)
            };
            if more {
                unread.push(token);
            }
        }

        // Send everything that is due. A stream that fell behind (thread descheduled)
        // catches up in a burst of at most MAX_LAG: its packets keep their ideal
        // timestamps, and the far end's jitter buffer absorbs a short burst better
        // than it would absorb gaps.
        let now = Instant::now();
        let send_until = now + SEND_AHEAD;
        let (mut sent, mut late) = (0u64, 0u64);
        while let Some(&Reverse((deadline, id))) = due.peek() {
            if deadline > send_until {
                break;
            }
            due.pop();
            let Some(stream) = streams.get_mut(&id) else {
                continue; // stopped earlier
            };
            stream.limit_lag(now);
            let before = stream.packets_sent;
            let more = stream.send_one(&mut buf);
            if stream.packets_sent > before {
                sent += 1;
                late += u64::from(now.saturating_duration_since(deadline) > LATE_AFTER);
            }
            if more {
                due.push(Reverse((stream.deadline(), id)));
            } else if let Some(s) = streams.remove(&id) {
                finish(s);
            }
        }
        if sent > 0 {
            stats.sent.fetch_add(sent, Ordering::Relaxed);
            stats.late.fetch_add(late, Ordering::Relaxed);
        }
    }

    for (_, s) in streams.drain() {
        finish(s);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::media::Keys;
    use crate::media::{Phrase, PromptLibrary};
    use rtp_rs::RtpReader;

    fn loopback() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// Receives packets until `quiet` passes without one.
    fn receive_all(sock: &UdpSocket, quiet: Duration) -> Vec<(Instant, Vec<u8>)> {
        sock.set_read_timeout(Some(quiet)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push((Instant::now(), buf[..n].to_vec()));
        }
        out
    }

    #[test]
    fn plays_a_script_with_correct_rtp_headers() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let script = CallScript {
            items: vec![
                ScriptItem::Silence { frames: 2 },
                ScriptItem::Say(Phrase::Digit(1)),
                ScriptItem::Silence { frames: 3 },
                ScriptItem::CodeStart,
                ScriptItem::Say(Phrase::Digit(2)),
                ScriptItem::CodeEnd,
                ScriptItem::Say(Phrase::Digit(3)), // straight after speech: no new spurt
                ScriptItem::Silence { frames: 1 },
            ],
        };
        let codec = G711::Alaw;
        let n1 = pack.frames(Phrase::Digit(1), codec).len();
        let n2 = pack.frames(Phrase::Digit(2), codec).len();
        let total = script.frame_count(&pack) as usize;
        // The stream start, then each talk spurt after silence.
        let expected_markers = vec![0, 2, 2 + n1 + 3];

        let rx = loopback();
        let pacer = Pacer::start().unwrap();
        let started = Instant::now();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            remote: rx.local_addr().unwrap(),
            codec,
            payload_type: codec.payload_type(),
            rtcp_socket: None,
            telephone_event_pt: None,
            pack: Arc::clone(&pack),
            script,
            srtp: None,
        });
        assert_eq!(pacer.active_streams(), 1);
        let packets = receive_all(&rx, Duration::from_millis(300));
        assert_eq!(packets.len(), total);

        let first = RtpReader::new(&packets[0].1).unwrap();
        let mut markers = Vec::new();
        for (i, (_, p)) in packets.iter().enumerate() {
            let r = RtpReader::new(p).unwrap();
            assert_eq!(r.payload_type(), 8);
            assert_eq!(r.ssrc(), first.ssrc());
            assert_eq!(r.payload().len(), FRAME_SAMPLES);
            let seq = u16::from(first.sequence_number()).wrapping_add(i as u16);
            assert_eq!(u16::from(r.sequence_number()), seq);
            let ts = first.timestamp().wrapping_add(160 * i as u32);
            assert_eq!(r.timestamp(), ts);
            if r.mark() {
                markers.push(i);
            }
        }
        assert_eq!(markers, expected_markers);
        // Silence frames carry the law's silence byte; the digit frames the pack's.
        assert!(RtpReader::new(&packets[0].1)
            .unwrap()
            .payload()
            .iter()
            .all(|&b| b == 0xd5));
        assert_eq!(
            RtpReader::new(&packets[2].1).unwrap().payload(),
            &pack.frames(Phrase::Digit(1), codec)[0][..]
        );
        assert_eq!(
            RtpReader::new(&packets[2 + n1 + 3 + n2 - 1].1)
                .unwrap()
                .payload(),
            &pack.frames(Phrase::Digit(2), codec)[n2 - 1][..]
        );

        // Paced, not burst: the last packet leaves about (total-1)*20 ms after the first.
        let span = packets[total - 1].0 - packets[0].0;
        let ideal = FRAME_DURATION * (total as u32 - 1);
        assert!(
            span + Duration::from_millis(15) >= ideal,
            "{span:?} < {ideal:?}"
        );
        assert!(packets[0].0 - started < Duration::from_millis(100));

        assert_eq!(
            playout.events.blocking_recv(),
            Some(PlayoutEvent::CodePlayed { times: 1 })
        );
        assert_eq!(
            playout.events.blocking_recv(),
            Some(PlayoutEvent::Finished {
                times_played: 1,
                packets_sent: total as u64
            })
        );
        assert_eq!(pacer.active_streams(), 0);
    }

    #[test]
    fn per_stream_state_is_small() {
        let pack = PromptLibrary::builtin().get("nl").unwrap();
        let script = CallScript::build(&pack, &[1, 2, 3, 4, 5, 6], 3);
        let heap = script.items.capacity() * std::mem::size_of::<ScriptItem>();
        let total = std::mem::size_of::<Stream>() + heap;
        // 256 before SRTP, + 8 for its optional box.
        assert!(
            std::mem::size_of::<Stream>() <= 264,
            "{}",
            std::mem::size_of::<Stream>()
        );
        assert!(total <= 1024, "{total} bytes for a 6-digit, 3-reading call");
    }

    /// A short script: one reading of "1" between silences.
    fn one_reading(tail: u32) -> CallScript {
        CallScript {
            items: vec![
                ScriptItem::Silence { frames: 2 },
                ScriptItem::CodeStart,
                ScriptItem::Say(Phrase::Digit(1)),
                ScriptItem::CodeEnd,
                ScriptItem::Silence { frames: tail },
            ],
        }
    }

    /// An RTP packet as the far end would send it.
    fn rtp_packet(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        rtp_rs::RtpPacketBuilder::new()
            .payload_type(pt)
            .ssrc(0x5151_5151)
            .sequence(rtp_rs::Seq::from(seq))
            .timestamp(ts)
            .marked(marker)
            .payload(payload)
            .build()
            .unwrap()
    }

    fn next_event(p: &mut Playout) -> PlayoutEvent {
        p.events.blocking_recv().expect("an event")
    }

    /// Waits (up to 2 s) for the first packet at `sock`; returns where it came from.
    fn first_packet_source(sock: &UdpSocket) -> SocketAddr {
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        sock.recv_from(&mut buf).unwrap().1
    }

    #[test]
    fn rfc4733_key_restarts_the_reading_and_rtp_latches_to_its_source() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let sdp_addr = loopback(); // where the far end's SDP says to send
        let far_end = loopback(); // where its packets actually come from (a NAT)
        let pacer = Pacer::start().unwrap();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            rtcp_socket: None,
            remote: sdp_addr.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            telephone_event_pt: Some(96),
            pack,
            script: one_reading(50),
            srtp: None,
        });
        // Our RTP arrives where the SDP said; its source is our socket.
        let ours = first_packet_source(&sdp_addr);
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 1 }
        );
        // During the closing silence the far end presses 5: start, update, End x3,
        // all with one timestamp (RFC 4733 §2.5.1).
        for (i, (end, dur)) in [
            (false, 160u16),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ]
        .into_iter()
        .enumerate()
        {
            let d = dur.to_be_bytes();
            let payload = [5, u8::from(end) << 7 | 10, d[0], d[1]];
            let p = rtp_packet(96, 100 + i as u16, 8000, i == 0, &payload);
            far_end.send_to(&p, ours).unwrap();
        }
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::KeyPressed { key: '5' }
        );
        // Read again from the start of the reading, once (one event, not five).
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 2 }
        );
        let Some(PlayoutEvent::Finished { times_played, .. }) = playout.events.blocking_recv()
        else {
            panic!("expected Finished");
        };
        assert_eq!(times_played, 2);
        // Symmetric RTP: since the far end's first packet, ours go to its source.
        let latched = receive_all(&far_end, Duration::from_millis(200));
        assert!(
            latched.len() > 20,
            "{} packets at the latched address",
            latched.len()
        );
        assert!(latched
            .iter()
            .all(|(_, p)| RtpReader::new(p).unwrap().payload_type() == 0));
    }

    /// Our session and the far end's mirror of it (each side's key protects what it
    /// sends).
    fn srtp_pair() -> (SrtpSession, SrtpSession) {
        use crate::media::srtp::{MasterKey, Suite};
        let ours = MasterKey::random().unwrap();
        let theirs = MasterKey::random().unwrap();
        (
            SrtpSession::new(Suite::AesCm128HmacSha1_80, &ours, &theirs),
            SrtpSession::new(Suite::AesCm128HmacSha1_80, &theirs, &ours),
        )
    }

    #[test]
    fn srtp_stream_sends_nothing_in_clear_and_reads_only_authentic_keys() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let (ours, mut far) = srtp_pair();
        let far_end = loopback();
        let stranger = loopback();
        let pacer = Pacer::start().unwrap();
        let script = one_reading(50);
        let total = script.frame_count(&pack) as usize;
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            rtcp_socket: None,
            remote: far_end.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            telephone_event_pt: Some(101),
            pack: Arc::clone(&pack),
            script,
            srtp: Some(ours),
        });
        let ours_addr = first_packet_source(&far_end);
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 1 }
        );
        // A key press in plain RTP (from anyone) and one under a key nobody agreed on:
        // dropped, counted, and not latched onto.
        let press = |seq: u16| {
            let payload = [5, 0x80 | 10, 1, 0xe0];
            rtp_packet(101, seq, 8000, true, &payload)
        };
        stranger.send_to(&press(1), ours_addr).unwrap();
        let (mut forger, _) = srtp_pair();
        let mut forged = press(2);
        let len = forged.len();
        forged.resize(len + srtp::MAX_RTP_OVERHEAD, 0);
        let n = forger.protect_rtp(&mut forged, len).unwrap();
        stranger.send_to(&forged[..n], ours_addr).unwrap();
        let stats = pacer.stats();
        let deadline = Instant::now() + Duration::from_secs(2);
        while stats.srtp_rejected() < 2 {
            assert!(Instant::now() < deadline, "{}", stats.srtp_rejected());
            std::thread::sleep(Duration::from_millis(5));
        }
        // The far end's own key press, under its key: read.
        let mut real = press(3);
        let len = real.len();
        real.resize(len + srtp::MAX_RTP_OVERHEAD, 0);
        let n = far.protect_rtp(&mut real, len).unwrap();
        far_end.send_to(&real[..n], ours_addr).unwrap();
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::KeyPressed { key: '5' }
        );
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 2 }
        );
        let Some(PlayoutEvent::Finished { packets_sent, .. }) = playout.events.blocking_recv()
        else {
            panic!("expected Finished");
        };
        // Every packet the far end got (the first was read above) authenticates and
        // decrypts to a G.711 frame; none carries a frame of the pack in clear.
        let got = receive_all(&far_end, Duration::from_millis(200));
        assert_eq!(got.len() as u64 + 1, packets_sent);
        assert!(packets_sent as usize > total, "read twice: {packets_sent}");
        let digit = &pack.frames(Phrase::Digit(1), G711::Ulaw);
        for (_, p) in &got {
            assert_eq!(p.len(), PACKET_LEN + 10);
            assert!(!digit.iter().any(|f| p[12..PACKET_LEN] == f[..]));
            assert!(p[12..PACKET_LEN].iter().any(|&b| b != g711::ULAW_SILENCE));
            let mut p = p.clone();
            let n = far.unprotect_rtp(&mut p).unwrap();
            assert_eq!(n, PACKET_LEN);
            assert_eq!(RtpReader::new(&p[..n]).unwrap().payload_type(), 0);
        }
        assert_eq!(stats.srtp_rejected(), 2);
    }

    #[test]
    fn srtcp_reports_and_bye_are_protected() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let (ours, mut far) = srtp_pair();
        let rtp_rx = loopback();
        let rtcp_rx = loopback();
        let (tx, _rx) = tokio_mpsc::unbounded_channel();
        let mut s = Stream::new(
            1,
            PlayoutSpec {
                socket: loopback(),
                rtcp_socket: Some(loopback()),
                remote: rtp_rx.local_addr().unwrap(),
                codec: G711::Ulaw,
                payload_type: 0,
                telephone_event_pt: Some(101),
                pack: Arc::clone(&pack),
                script: CallScript {
                    items: vec![ScriptItem::Say(Phrase::Digit(7))],
                },
                srtp: Some(ours),
            },
            tx,
        );
        s.rtcp_remote = rtcp_rx.local_addr().unwrap();
        s.next_report = 3;
        let mut buf = [0u8; SEND_BUF_LEN];
        for _ in 0..3 {
            assert!(s.send_one(&mut buf));
        }
        let ssrc = s.header.ssrc;
        s.finish();
        let frames = pack.frames(Phrase::Digit(7), G711::Ulaw);
        for (i, (_, mut p)) in receive_all(&rtp_rx, Duration::from_millis(200))
            .into_iter()
            .enumerate()
        {
            assert_ne!(&p[12..PACKET_LEN], &frames[i][..], "frame {i} in clear");
            let n = far.unprotect_rtp(&mut p).unwrap();
            assert_eq!(&p[12..n], &frames[i][..]);
        }
        let got = receive_all(&rtcp_rx, Duration::from_millis(200));
        assert_eq!(got.len(), 2, "one report, then the BYE");
        for (i, (_, p)) in got.iter().enumerate() {
            // Header and SSRC clear, E flag and index, the rest encrypted.
            assert_eq!(&p[4..8], &ssrc.to_be_bytes());
            let trailer = p.len() - srtp::SRTCP_TRAILER_LEN;
            assert_eq!(
                &p[trailer..trailer + 4],
                &(0x8000_0000u32 | i as u32).to_be_bytes()
            );
            let mut p = p.clone();
            let n = far.unprotect_rtcp(&mut p).unwrap();
            assert_eq!(&p[20..24], &3u32.to_be_bytes(), "packet count");
            assert_eq!(p[29], 202, "SDES follows");
            if i == 1 {
                assert_eq!(n, 64);
                assert_eq!(&p[56..58], &[0x81, 203]);
            }
        }
    }

    #[test]
    fn only_this_calls_media_latches() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let (tx, _rx) = tokio_mpsc::unbounded_channel();
        let sdp = loopback().local_addr().unwrap();
        let mut s = Stream::new(
            1,
            PlayoutSpec {
                socket: loopback(),
                rtcp_socket: None,
                remote: sdp,
                codec: G711::Alaw,
                payload_type: 8,
                telephone_event_pt: Some(101),
                pack,
                script: CallScript::default(),
                srtp: None,
            },
            tx,
        );
        let stray: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // An RTCP sender report (reads as RTP payload type 72) and a comfort-noise
        // packet: not this call's media.
        let mut sr = [0u8; 28];
        sr[0] = 0x80;
        sr[1] = 200;
        s.on_rtp(&sr, stray);
        s.on_rtp(&rtp_packet(13, 1, 0, false, &[0]), stray);
        assert_eq!((s.latched, s.remote), (false, sdp));
        // The first A-law packet latches, and only the first.
        let nat: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        s.on_rtp(&rtp_packet(8, 2, 160, false, &[0xd5; 160]), nat);
        s.on_rtp(&rtp_packet(8, 3, 320, false, &[0xd5; 160]), stray);
        assert_eq!((s.latched, s.remote), (true, nat));
        assert_eq!(s.rtcp_remote, "127.0.0.1:40001".parse().unwrap());
    }

    #[test]
    fn inband_key_restarts_when_no_telephone_event_was_negotiated() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let far_end = loopback();
        let pacer = Pacer::start().unwrap();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            rtcp_socket: None,
            remote: far_end.local_addr().unwrap(),
            codec: G711::Alaw,
            payload_type: 8,
            telephone_event_pt: None,
            pack,
            script: one_reading(50),
            srtp: None,
        });
        let ours = first_packet_source(&far_end);
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 1 }
        );
        // Key '9' (852 + 1477 Hz) for 60 ms, A-law.
        for i in 0..3u16 {
            let pcm: Vec<i16> = (0..160)
                .map(|n| {
                    let t = f32::from(i * 160 + n) / 8000.0;
                    let v = 6000.0 * (2.0 * std::f32::consts::PI * 852.0 * t).sin()
                        + 6000.0 * (2.0 * std::f32::consts::PI * 1477.0 * t).sin();
                    v as i16
                })
                .collect();
            let payload = crate::media::g711::encode(G711::Alaw, &pcm);
            let p = rtp_packet(8, i, u32::from(i) * 160, false, &payload);
            far_end.send_to(&p, ours).unwrap();
        }
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::KeyPressed { key: '9' }
        );
        assert_eq!(
            next_event(&mut playout),
            PlayoutEvent::CodePlayed { times: 2 }
        );
    }

    #[test]
    fn key_gate_times_out_opens_with_the_right_keys_and_ends_on_a_wrong_one() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let expect = Keys::two(4, 7).unwrap();
        let gated = |lead: u32| CallScript {
            items: [
                ScriptItem::Silence { frames: lead },
                ScriptItem::AwaitKey {
                    frames: 25,
                    expect,
                    early: false,
                },
            ]
            .into_iter()
            .chain(one_reading(1).items)
            .collect(),
        };
        let rx = loopback();
        let pacer = Pacer::start().unwrap();
        let spec = |script| PlayoutSpec {
            socket: loopback(),
            rtcp_socket: None,
            remote: rx.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            telephone_event_pt: Some(101),
            pack: Arc::clone(&pack),
            script,
            srtp: None,
        };
        // No key: 25 frames of waiting, then the end, the code never sent.
        let mut silent = pacer.play(spec(gated(0)));
        assert_eq!(next_event(&mut silent), PlayoutEvent::NoKeypress);
        assert_eq!(
            next_event(&mut silent),
            PlayoutEvent::Finished {
                times_played: 0,
                packets_sent: 25
            }
        );
        // The right keys (as from SIP INFO) open the gate at once.
        let mut pressed = pacer.play(spec(gated(0)));
        pressed.key('4');
        pressed.key('7');
        assert_eq!(
            next_event(&mut pressed),
            PlayoutEvent::CodePlayed { times: 1 }
        );
        let PlayoutEvent::Finished { packets_sent, .. } = next_event(&mut pressed) else {
            panic!("expected Finished");
        };
        assert!(
            packets_sent < 25 + 3 + 40,
            "did not wait out the gate: {packets_sent}"
        );
        // A wrong key ends the stream unread, even after a right first one.
        let mut wrong = pacer.play(spec(gated(0)));
        wrong.key('4');
        wrong.key('1');
        assert_eq!(next_event(&mut wrong), PlayoutEvent::WrongKey);
        assert!(matches!(
            next_event(&mut wrong),
            PlayoutEvent::Finished {
                times_played: 0,
                ..
            }
        ));
        // Keys while the request still plays (1 s of lead here) count for nothing:
        // the gate then waits its 25 frames and gives up.
        let mut early = pacer.play(spec(gated(50)));
        early.key('4');
        early.key('7');
        assert_eq!(next_event(&mut early), PlayoutEvent::NoKeypress);
        assert_eq!(
            next_event(&mut early),
            PlayoutEvent::Finished {
                times_played: 0,
                packets_sent: 75
            }
        );
        // A gate that takes keys early (bind_digits): the same keys during the 1 s
        // lead open it, and the rest of the lead is skipped.
        let mut eager = gated(50);
        if let Some(ScriptItem::AwaitKey { early, .. }) = eager.items.get_mut(1) {
            *early = true;
        }
        let mut bound = pacer.play(spec(eager));
        bound.key('4');
        bound.key('7');
        assert_eq!(
            next_event(&mut bound),
            PlayoutEvent::CodePlayed { times: 1 }
        );
        let PlayoutEvent::Finished { packets_sent, .. } = next_event(&mut bound) else {
            panic!("expected Finished");
        };
        assert!(packets_sent < 50, "skipped the lead: {packets_sent}");
    }

    #[test]
    fn rtcp_sender_reports_and_bye_go_to_rtp_port_plus_one() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let rtcp_rx = loopback();
        let (tx, _rx) = tokio_mpsc::unbounded_channel();
        let mut s = Stream::new(
            1,
            PlayoutSpec {
                socket: loopback(),
                rtcp_socket: Some(loopback()),
                remote: loopback().local_addr().unwrap(),
                codec: G711::Ulaw,
                payload_type: 0,
                telephone_event_pt: Some(101),
                pack,
                script: CallScript {
                    items: vec![ScriptItem::Silence { frames: 10 }],
                },
                srtp: None,
            },
            tx,
        );
        // By default reports go to the SDP port + 1 (RFC 3550 §11).
        assert_eq!(s.rtcp_remote.port(), s.remote.port() + 1);
        s.rtcp_remote = rtcp_rx.local_addr().unwrap();
        s.next_report = 3;
        let mut buf = [0u8; SEND_BUF_LEN];
        for _ in 0..3 {
            assert!(s.send_one(&mut buf));
        }
        let (ssrc, ts0) = (s.header.ssrc, s.header.initial_timestamp);
        s.finish();
        let got = receive_all(&rtcp_rx, Duration::from_millis(200));
        assert_eq!(got.len(), 2, "one report, then the BYE");
        let (sr, bye) = (&got[0].1, &got[1].1);
        assert_eq!((sr[0] >> 6, sr[1]), (2, 200));
        assert_eq!(&sr[4..8], &ssrc.to_be_bytes());
        assert_eq!(&sr[20..24], &3u32.to_be_bytes(), "packet count");
        assert_eq!(&sr[24..28], &480u32.to_be_bytes(), "octet count");
        // The report's RTP timestamp is on the stream's media clock: the test sent
        // its packets without pacing, so it is within 100 ms of packet 0's.
        let ts = u32::from_be_bytes([sr[16], sr[17], sr[18], sr[19]]);
        assert!(ts.wrapping_sub(ts0) < 800, "{}", ts.wrapping_sub(ts0));
        assert_eq!(sr[29], 202, "SDES follows");
        assert_eq!(bye.len(), 64);
        assert_eq!(
            &bye[56..64],
            &[&[0x81u8, 203, 0, 1][..], &ssrc.to_be_bytes()].concat()[..]
        );
    }

    #[test]
    fn a_stall_is_caught_up_in_a_bounded_burst() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let (tx, _rx) = tokio_mpsc::unbounded_channel();
        let spec = PlayoutSpec {
            socket: loopback(),
            remote: loopback().local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            rtcp_socket: None,
            telephone_event_pt: None,
            pack,
            script: CallScript::default(),
            srtp: None,
        };
        let mut s = Stream::new(1, spec, tx);
        let t0 = s.start;
        s.index = 7;
        // 150 ms late: within the burst allowance, timeline untouched.
        let now = t0 + FRAME_DURATION * 7 + Duration::from_millis(150);
        s.limit_lag(now);
        assert_eq!((s.start, s.resyncs), (t0, 0));
        // 5 s late: re-anchored so the packet due goes out now, next one in 20 ms.
        let now = t0 + Duration::from_secs(5);
        s.limit_lag(now);
        assert_eq!((s.deadline(), s.resyncs), (now, 1));
        s.index += 1;
        assert_eq!(s.deadline(), now + FRAME_DURATION);
        // Timestamps never depend on the wall clock.
        assert_eq!(
            s.header.timestamp(8),
            s.header.initial_timestamp.wrapping_add(8 * 160)
        );
    }

    #[test]
    fn stop_ends_the_stream_and_reports_finished() {
        let pack = PromptLibrary::builtin().get("nl").unwrap();
        let script = CallScript::build(&pack, &[1, 2, 3, 4, 5, 6], 3);
        let rx = loopback();
        let pacer = Pacer::start().unwrap();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            remote: rx.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            rtcp_socket: None,
            telephone_event_pt: None,
            pack,
            script,
            srtp: None,
        });
        std::thread::sleep(Duration::from_millis(200));
        playout.stop();
        let Some(PlayoutEvent::Finished {
            times_played,
            packets_sent,
        }) = playout.events.blocking_recv()
        else {
            panic!("expected Finished");
        };
        assert_eq!(times_played, 0);
        assert!((5..=20).contains(&packets_sent), "{packets_sent}");
        let packets = receive_all(&rx, Duration::from_millis(200));
        assert_eq!(
            packets.len() as u64,
            packets_sent,
            "nothing sent after stop"
        );
        assert_eq!(pacer.active_streams(), 0);
    }

    #[test]
    fn many_streams_share_the_thread_and_unreachable_peers_are_not_fatal() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let script = CallScript {
            items: vec![ScriptItem::Silence { frames: 5 }],
        };
        let pacer = Pacer::start().unwrap();
        // A port nobody listens on: ECONNREFUSED after the first packet, counted only.
        let dead = loopback().local_addr().unwrap();
        let rx = loopback();
        let mut playouts: Vec<Playout> = (0..50)
            .map(|i| {
                pacer.play(PlayoutSpec {
                    socket: loopback(),
                    remote: if i == 0 {
                        dead
                    } else {
                        rx.local_addr().unwrap()
                    },
                    codec: G711::Ulaw,
                    payload_type: 0,
                    rtcp_socket: None,
                    telephone_event_pt: None,
                    pack: Arc::clone(&pack),
                    script: script.clone(),
                    srtp: None,
                })
            })
            .collect();
        assert_eq!(pacer.active_streams(), 50);
        for p in &mut playouts[1..] {
            assert_eq!(
                p.events.blocking_recv(),
                Some(PlayoutEvent::Finished {
                    times_played: 0,
                    packets_sent: 5
                })
            );
        }
        assert!(matches!(
            playouts[0].events.blocking_recv(),
            Some(PlayoutEvent::Finished { .. })
        ));
        assert_eq!(receive_all(&rx, Duration::from_millis(100)).len(), 49 * 5);
    }

    #[test]
    fn dropping_the_pacer_finishes_streams() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let script = CallScript::build(&pack, &[1, 2, 3, 4], 2);
        let rx = loopback();
        let pacer = Pacer::start().unwrap();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            remote: rx.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            rtcp_socket: None,
            telephone_event_pt: None,
            pack,
            script,
            srtp: None,
        });
        drop(pacer);
        assert!(matches!(
            playout.events.blocking_recv(),
            Some(PlayoutEvent::Finished { .. })
        ));
        assert_eq!(playout.events.blocking_recv(), None);
    }

    #[test]
    fn realtime_priority_is_applied_or_falls_back_and_plays_either_way() {
        // As root (CAP_SYS_NICE) this runs under SCHED_FIFO; without the permission
        // the pacer warns and runs at normal priority. Both must play.
        let pacer = Pacer::start_with(PacerOptions {
            realtime_priority: 10,
        })
        .unwrap();
        let rx = loopback();
        let mut playout = pacer.play(PlayoutSpec {
            socket: loopback(),
            rtcp_socket: None,
            remote: rx.local_addr().unwrap(),
            codec: G711::Ulaw,
            payload_type: 0,
            telephone_event_pt: None,
            pack: PromptLibrary::builtin().get("en").unwrap(),
            script: CallScript {
                items: vec![ScriptItem::Silence { frames: 3 }],
            },
            srtp: None,
        });
        assert_eq!(
            playout.events.blocking_recv(),
            Some(PlayoutEvent::Finished {
                times_played: 0,
                packets_sent: 3
            })
        );
    }
}
