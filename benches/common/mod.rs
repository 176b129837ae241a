//! Shared by the media benchmarks (`playout`, `gateway`): the loopback receiver that
//! timestamps every RTP packet in the kernel (SO_TIMESTAMPNS, `recvmsg`), so the
//! spacing measured is when packets left, not when a busy receiver read them; the
//! A-law WAV that SIPp's `rtp_stream` plays; and small process helpers.
//!
//! Each bench compiles this module on its own (`mod common;`) and uses a different
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use nix::sys::time::TimeSpec;
use otpdial::media::{Phrase, PromptPack, G711};

/// One RTP stream (SSRC) as the receiver saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamSeen {
    /// Kernel arrival time of the first and the last packet, ns (CLOCK_REALTIME).
    pub(crate) first_ns: i64,
    pub(crate) last_ns: i64,
    pub(crate) packets: u64,
}

/// What the receiver measured.
pub(crate) struct Received {
    pub(crate) packets: u64,
    /// Packets missing from sequence gaps inside streams.
    pub(crate) lost: u64,
    /// |spacing - 20 ms| of consecutive packets of one stream, ns.
    pub(crate) deviations: Vec<u32>,
    /// Per stream (SSRC): first and last arrival, packet count.
    pub(crate) streams: Vec<StreamSeen>,
}

/// A window of spacing deviations (ns) and the packets lost so far, handed from the
/// receiver thread to [`Receiver::take_window`].
type Handover = Arc<Mutex<Option<(Vec<u32>, u64)>>>;

/// A running receiver: where to send, how many packets so far, and how to stop it.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    /// Packets received so far (read while it runs, to see when the calls are over).
    pub(crate) packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Set to ask the receiver thread for the spacing deviations since the last window.
    take: Arc<AtomicBool>,
    /// Where the receiver thread hands a window over: (deviations, packets lost so far).
    window: Handover,
    thread: std::thread::JoinHandle<Received>,
    /// Bound on the odd port above `addr` so that RTCP sent there is dropped quietly
    /// (no ICMP port unreachable back to the sender); never read.
    _rtcp_sink: Option<UdpSocket>,
}

impl Receiver {
    /// Stops once the socket has been quiet for 300 ms, and returns what it measured.
    pub(crate) fn finish(self) -> Received {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("receiver thread")
    }

    /// The |spacing - 20 ms| values (ns) measured since the previous window (or the
    /// start), which [`Receiver::finish`] then no longer returns, and the packets lost
    /// so far. For runs too long to keep every value (the soak). Waits up to a second
    /// for the receiver thread to hand them over (it checks after every packet and
    /// every 100 ms read timeout); empty if it did not.
    pub(crate) fn take_window(&self) -> (Vec<u32>, u64) {
        self.take.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Some(w) = self.window.lock().expect("window").take() {
                return w;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (Vec::new(), 0)
    }
}

/// The receiver thread's links to its [`Receiver`]: when to stop, the packet count, and
/// the window hand-over.
struct Shared {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    take: Arc<AtomicBool>,
    window: Handover,
}

/// Receives until `stop` is set and the socket has been quiet for 300 ms.
fn receive(sock: UdpSocket, expected: usize, shared: &Shared) -> Received {
    let (stop, count) = (&*shared.stop, &*shared.count);
    // One entry per packet, touched now so that its growth does not count as the
    // sender's memory.
    let mut deviations: Vec<u32> = vec![1; expected];
    deviations.clear();
    // SSRC -> (last arrival, last seq, index into `streams`)
    let mut last: HashMap<u32, (i64, u16, usize)> = HashMap::with_capacity(8192);
    let mut streams: Vec<StreamSeen> = Vec::with_capacity(8192);
    let (mut packets, mut lost) = (0u64, 0u64);
    let mut buf = [0u8; 512];
    let mut cmsg = nix::cmsg_space!(TimeSpec);
    let fd = sock.as_raw_fd();
    let mut quiet_since: Option<Instant> = None;
    loop {
        if shared.take.swap(false, Ordering::Relaxed) {
            let handed = (std::mem::take(&mut deviations), lost);
            *shared.window.lock().expect("window") = Some(handed);
        }
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty());
        let msg = match r {
            Ok(m) => m,
            Err(_) => {
                // Read timeout (EAGAIN): finished once the senders are done and all is in.
                if stop.load(Ordering::Relaxed) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                }
                continue;
            }
        };
        quiet_since = None;
        let mut at = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = c {
                    at = Some(ts.tv_sec() * 1_000_000_000 + ts.tv_nsec());
                }
            }
        }
        let n = msg.bytes;
        let (Some(at), true) = (at, n >= 12) else {
            continue;
        };
        packets += 1;
        count.store(packets, Ordering::Relaxed);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        match last.get_mut(&ssrc) {
            Some((t0, s0, i)) => {
                let gap = seq.wrapping_sub(*s0);
                if gap == 1 {
                    let dev = (at - *t0 - 20_000_000).unsigned_abs();
                    deviations.push(u32::try_from(dev).unwrap_or(u32::MAX));
                } else if gap > 1 && gap < 1000 {
                    lost += u64::from(gap - 1);
                }
                let s = &mut streams[*i];
                s.last_ns = at;
                s.packets += 1;
                (*t0, *s0) = (at, seq);
            }
            None => {
                last.insert(ssrc, (at, seq, streams.len()));
                streams.push(StreamSeen {
                    first_ns: at,
                    last_ns: at,
                    packets: 1,
                });
            }
        }
    }
    Received {
        packets,
        lost,
        deviations,
        streams,
    }
}

/// Binds the kernel-timestamping receiver (on an even port, with the odd port above
/// it bound as an RTCP sink when free) and starts its thread. `expected` sizes its
/// buffers up front.
pub(crate) fn start_receiver(expected: usize) -> Receiver {
    let (rx, rtcp_sink) = bind_even_pair();
    // 4000 calls are 200k packets/s: a deep buffer so the receiver never drops.
    if setsockopt(&rx, sockopt::RcvBufForce, &(64 << 20)).is_err() {
        let _ = setsockopt(&rx, sockopt::RcvBuf, &(64 << 20));
    }
    setsockopt(&rx, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let addr = rx.local_addr().expect("addr");
    let shared = Shared {
        stop: Arc::new(AtomicBool::new(false)),
        count: Arc::new(AtomicU64::new(0)),
        take: Arc::new(AtomicBool::new(false)),
        window: Arc::new(Mutex::new(None)),
    };
    let (stop, packets, take, window) = (
        Arc::clone(&shared.stop),
        Arc::clone(&shared.count),
        Arc::clone(&shared.take),
        Arc::clone(&shared.window),
    );
    let thread = std::thread::Builder::new()
        .name("bench-rx".into())
        .spawn(move || receive(rx, expected, &shared))
        .expect("receiver thread");
    Receiver {
        addr,
        packets,
        stop,
        take,
        window,
        thread,
        _rtcp_sink: rtcp_sink,
    }
}

/// A loopback UDP socket on an even port and, if it could be had, one on the port above.
fn bind_even_pair() -> (UdpSocket, Option<UdpSocket>) {
    for _ in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
        let port = s.local_addr().expect("addr").port();
        if port % 2 == 0 {
            if let Ok(sink) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                return (s, Some(sink));
            }
        }
    }
    (UdpSocket::bind("127.0.0.1:0").expect("bind receiver"), None)
}

/// The `q` quantile of sorted nanosecond values, in ms.
pub(crate) fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i]) / 1e6
}

/// Child processes' CPU time (user + system) so far, ns: the children that have
/// been waited for.
pub(crate) fn children_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1000
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// A UDP port that was free a moment ago on loopback.
pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes `alaw.wav` into `dir`: 2 s of the intro in A-law, as a WAV whose header
/// SIPp's `rtp_stream` skips; it loops it for as long as a call lasts.
pub(crate) fn write_alaw_wav(dir: &Path, pack: &PromptPack) {
    let mut data: Vec<u8> = Vec::new();
    while data.len() < 16_000 {
        for f in pack.frames(Phrase::Intro, G711::Alaw) {
            data.extend_from_slice(f);
        }
    }
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(4 + 26 + 8 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for (v, len) in [
        (18u32, 4),
        (6, 2),
        (1, 2),
        (8000, 4),
        (8000, 4),
        (1, 2),
        (8, 2),
        (0, 2),
    ] {
        wav.extend_from_slice(&v.to_le_bytes()[..len]);
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    std::fs::write(dir.join("alaw.wav"), wav).expect("write wav");
}
