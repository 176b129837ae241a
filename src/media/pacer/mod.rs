//! The pacer: one dedicated OS thread that sends the RTP of every call and reads what
//! the far ends send back.
//!
//! - this file: the handles the async world holds ([`Pacer`], [`Playout`]), what a
//!   call asks for ([`PlayoutSpec`]) and what it hears back ([`PlayoutEvent`]);
//! - [`stream`]: one call's media as a pure value (packets, RTCP, latching, keys):
//!   no clock, no socket, tested on a fake clock;
//! - `thread`: the only code here with sockets and clocks: the epoll loop that wakes
//!   for the next deadline, sends what the streams hand it and feeds them what
//!   arrives.
//!
//! Each stream's packet `n` is due at `start + n * 20 ms` (absolute deadlines, so send
//! delays never accumulate into drift), and its RTP timestamp is `ts0 + n * 160`
//! whatever the wall clock says. Due streams sit in a binary heap keyed by deadline, so
//! a wake-up costs O(log streams) per packet and nothing per idle stream. The audio
//! frames are borrowed from the `Arc`'d [`PromptPack`].
//!
//! The thread reads the far end's packets as they come: RFC 4733 key presses and
//! in-band DTMF (judged by the script cursor, `media::cursor`), and the source address
//! to latch onto (symmetric RTP: once the far end's RTP arrives, ours goes to where it
//! came from, which is what gets through NATs). RTCP sender reports go out about every
//! 5 s and a BYE when the stream ends (RFC 3550).
//!
//! The thread talks to the async world only through channels: commands in
//! (`std::sync::mpsc` plus a mio waker), events out (tokio unbounded mpsc, whose `send`
//! never blocks). It can run under SCHED_FIFO ([`PacerOptions::realtime_priority`]).

pub mod receive;
pub mod stream;
mod thread;
mod uring;

pub use receive::ReceiveStats;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mio::{Poll, Waker};
use tokio::sync::mpsc as tokio_mpsc;

use super::script::CallScript;
use super::srtp::SrtpSession;
use super::{PromptPack, G711};
use stream::{Stream, StreamParams};

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
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// The script waited for keys ([`super::ScriptItem::AwaitKey`]) and they did not
    /// all come in time; the stream ends without reading the code. `Finished` follows.
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
        /// What the far end sent us: packets, loss, jitter, codec.
        received: ReceiveStats,
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

    /// Stops the stream and waits for its end: what the far end sent
    /// ([`ReceiveStats`], as in [`PlayoutEvent::Finished`]). For a call that ends
    /// while it plays (the far end hangs up) and still wants the figures. `None` when
    /// `Finished` was already taken from [`Playout::events`] or the pacer is gone
    /// before saying it. Events before `Finished` are dropped. Takes one wake-up of
    /// the pacer thread (well under a millisecond unless it is overloaded).
    pub async fn finish(mut self) -> Option<ReceiveStats> {
        self.stop();
        while let Some(ev) = self.events.recv().await {
            if let PlayoutEvent::Finished { received, .. } = ev {
                return Some(received);
            }
        }
        None
    }
}

impl Drop for Playout {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A new stream for the thread: the pure stream, its sockets, where its events go.
#[derive(Debug)]
struct NewStream {
    id: u64,
    stream: Stream,
    socket: UdpSocket,
    rtcp_socket: Option<UdpSocket>,
    events: tokio_mpsc::UnboundedSender<PlayoutEvent>,
}

#[derive(Debug)]
enum Command {
    Play(Box<NewStream>),
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
    /// Send each packet with its own `sendto` even where io_uring would batch the
    /// sends of a wake-up into one system call (tests and A/B measurements; the
    /// pacer falls back to it by itself when io_uring is unavailable).
    pub direct_sends: bool,
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
/// packet time, well past timer noise and the [`stream::GRID`] of wake-ups, and the
/// point where a jitter buffer starts to need its slack.
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

impl Pacer {
    /// Starts the pacing thread at normal priority.
    pub fn start() -> std::io::Result<Pacer> {
        Pacer::start_with(PacerOptions::default())
    }

    /// Starts the pacing thread.
    pub fn start_with(options: PacerOptions) -> std::io::Result<Pacer> {
        let (tx, rx) = mpsc::channel();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), thread::WAKER)?);
        let active = Arc::new(AtomicUsize::new(0));
        let thread_active = Arc::clone(&active);
        let stats = Arc::new(PacerStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("rtp-pacer".to_owned())
            .spawn(move || {
                thread::apply_priority(options.realtime_priority);
                thread::run(
                    poll,
                    rx,
                    &thread_active,
                    &thread_stats,
                    !options.direct_sends,
                )
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
                received: ReceiveStats::default(),
            });
            return playout;
        }
        let params = StreamParams {
            remote: spec.remote,
            rtcp: spec.rtcp_socket.is_some(),
            codec: spec.codec,
            payload_type: spec.payload_type,
            telephone_event_pt: spec.telephone_event_pt,
            pack: spec.pack,
            script: spec.script,
            srtp: spec.srtp,
        };
        let stream = Stream::new(params, Instant::now(), SystemTime::now());
        // Counted here, not on the thread, so the count is right as soon as play returns.
        self.active.fetch_add(1, Ordering::Relaxed);
        let new = NewStream {
            id,
            stream,
            socket: spec.socket,
            rtcp_socket: spec.rtcp_socket,
            events: events_tx,
        };
        if let Err(Command::Play(new)) = self.inbox.send(Command::Play(Box::new(new))) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            let _ = new.events.send(new.stream.finished());
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

/// Bytes of pacer state per stream, without its script (for the benchmark's memory
/// figures).
pub fn stream_state_bytes() -> usize {
    std::mem::size_of::<Stream>()
}

#[cfg(test)]
mod tests;
