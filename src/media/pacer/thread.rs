//! The pacer thread: the only code of the pacer with sockets and clocks. It waits in
//! one `epoll` (mio) for the next deadline or a datagram, reads the clock once per
//! wake-up, feeds the streams what arrived, and sends what they hand out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tokio::sync::mpsc as tokio_mpsc;

use super::stream::{Inbound, Stream, Via, GRID, SEND_AHEAD, SEND_BUF_LEN};
use super::uring::{Sender, Sent, Tag};
use super::{Command, NewStream, PacerStats, PlayoutEvent, LATE_AFTER};

/// Token of the waker; stream sockets use `(slot + 1) << 1 | is_rtcp`.
pub(super) const WAKER: Token = Token(0);

/// Packets read from one socket per wake-up; the rest wait for the next round so one
/// flooded port cannot stall every other call.
const READ_BUDGET: usize = 16;

/// A stream with its sockets and the way to its call.
struct Entry {
    /// The id of its [`Playout`](super::Playout) handle.
    id: u64,
    stream: Stream,
    socket: mio::net::UdpSocket,
    rtcp_socket: Option<mio::net::UdpSocket>,
    events: tokio_mpsc::UnboundedSender<PlayoutEvent>,
}

impl Entry {
    fn new(n: NewStream) -> Entry {
        Entry {
            id: n.id,
            stream: n.stream,
            socket: mio::net::UdpSocket::from_std(n.socket),
            rtcp_socket: n.rtcp_socket.map(mio::net::UdpSocket::from_std),
            events: n.events,
        }
    }

    /// Hands the stream's queued events to its call.
    fn forward_events(&mut self) {
        while let Some(ev) = self.stream.poll_event() {
            // The call may have gone (its handle dropped): nothing to tell.
            let _ = self.events.send(ev);
        }
    }

    /// Hands `sender` what the stream has due at `now`; returns (RTP packets sent or
    /// queued, of them late). Sends the batch refuses come back in `failures`, tagged
    /// with `slot`, once the batch is flushed: see [`apply_failures`].
    fn send_due(
        &mut self,
        now: Instant,
        buf: &mut [u8; SEND_BUF_LEN],
        sender: &mut Sender,
        slot: u32,
        failures: &mut Vec<Tag>,
    ) -> (u64, u64) {
        let (mut sent, mut late) = (0, 0);
        while let Some(t) = self.stream.poll_packet(now, buf) {
            let socket = match t.via {
                Via::Rtp => &self.socket,
                Via::Rtcp => match &self.rtcp_socket {
                    Some(s) => s,
                    None => continue,
                },
            };
            let is_late = t
                .due
                .is_some_and(|due| now.saturating_duration_since(due) > LATE_AFTER);
            let tag = Tag {
                slot,
                rtp: t.due.is_some(),
                late: is_late,
            };
            match sender.send(socket, &buf[..t.len], t.to, tag, failures) {
                Sent::Ok | Sent::Queued => {
                    if tag.rtp {
                        sent += 1;
                        late += u64::from(is_late);
                    }
                }
                // RTCP is lost like any UDP packet: nothing to do.
                Sent::Failed => {
                    if tag.rtp {
                        self.stream.send_failed();
                    }
                }
            }
        }
        self.forward_events();
        (sent, late)
    }

    /// Reads what arrived on one of the stream's sockets; true when the read budget ran
    /// out (more may be waiting). Packets failing SRTP checks are counted in `rejected`.
    fn read(&mut self, via: Via, now: Instant, buf: &mut [u8], rejected: &mut u64) -> bool {
        let socket = match via {
            Via::Rtp => &self.socket,
            Via::Rtcp => match &self.rtcp_socket {
                Some(s) => s,
                None => return false,
            },
        };
        let mut more = true;
        for _ in 0..READ_BUDGET {
            let (n, from) = match socket.recv_from(buf) {
                Ok(r) => r,
                // WouldBlock: drained. Other errors (ICMP errors queued on the socket)
                // say nothing about incoming media.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(_) => continue,
            };
            if self.stream.handle_packet(now, from, via, &mut buf[..n]) == Inbound::Rejected {
                *rejected += 1;
            }
        }
        self.forward_events();
        more
    }

    /// The stream's last words: the end-of-stream log line and `Finished`.
    fn finish(self, active: &AtomicUsize) {
        active.fetch_sub(1, Ordering::Relaxed);
        let (errors, resyncs, rejected) = self.stream.trouble();
        let remote = self.stream.remote();
        if rejected > 0 {
            tracing::debug!(
                %remote,
                rejected,
                "SRTP/SRTCP packets failed authentication or replay checks and were dropped"
            );
        }
        if errors > 0 || resyncs > 0 {
            tracing::debug!(%remote, errors, resyncs, "RTP stream had send errors or fell behind");
        }
        let _ = self.events.send(self.stream.finished());
    }
}

/// Puts the calling thread under SCHED_FIFO at `priority` (0: leave it alone). Through
/// the `thread-priority` crate, which wraps `pthread_setschedparam` safely, so this
/// crate keeps `unsafe_code = "deny"`.
pub(super) fn apply_priority(priority: u8) {
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

/// The instants the thread wakes at: `origin + k × GRID`.
struct Grid {
    origin: Instant,
}

impl Grid {
    /// The grid point at or before `t` (the origin for anything earlier).
    fn floor(&self, t: Instant) -> Instant {
        let since = t.saturating_duration_since(self.origin);
        let steps = since.as_nanos() / GRID.as_nanos();
        self.origin + GRID * u32::try_from(steps).unwrap_or(u32::MAX)
    }
}

/// Reads every socket epoll reported ready (token: slot + 1, shifted, low bit RTCP);
/// a socket whose read budget ran out goes to `unread` for the next round. Returns
/// the SRTP packets refused.
fn read_ready(
    table: &mut Table,
    ready: &[Token],
    now: Instant,
    rx_buf: &mut [u8],
    unread: &mut Vec<Token>,
) -> u64 {
    let mut rejected = 0;
    for &token in ready {
        let Some(slot) = (token.0 >> 1).checked_sub(1) else {
            continue;
        };
        let Some(entry) = table.get_mut(slot as u32) else {
            continue;
        };
        let via = if token.0 & 1 == 0 {
            Via::Rtp
        } else {
            Via::Rtcp
        };
        if entry.read(via, now, rx_buf, &mut rejected) {
            unread.push(token);
        }
    }
    rejected
}

/// Sends everything due by `now` (plus [`SEND_AHEAD`]) as one batch, then counts what
/// the kernel refused and puts each served stream back on the schedule (or finishes
/// it). Returns (sent, late) after the refusals.
fn send_all_due(
    table: &mut Table,
    sender: &mut Sender,
    now: Instant,
    buf: &mut [u8; SEND_BUF_LEN],
    failures: &mut Vec<Tag>,
    served: &mut Vec<u32>,
    active: &AtomicUsize,
) -> (u64, u64) {
    let (mut sent, mut late) = (0u64, 0u64);
    while let Some(slot) = table.pop_due(now + SEND_AHEAD) {
        if let Some(entry) = table.get_mut(slot) {
            let (s, l) = entry.send_due(now, buf, sender, slot, failures);
            sent += s;
            late += l;
        }
        served.push(slot);
    }
    // One submission for the wake-up (with io_uring). Until it is flushed no stream
    // leaves the table (their sockets are in the batch): streams that are over are
    // finished below, after their failed sends are counted.
    sender.flush(failures);
    let (failed, failed_late) = apply_failures(table, failures);
    for slot in served.drain(..) {
        table.reschedule(slot, active);
    }
    (
        sent.saturating_sub(failed),
        late.saturating_sub(failed_late),
    )
}

/// Sleeps until `deadline` or, when it is far enough off to be worth it, an event on
/// `poll`. epoll only takes whole milliseconds (mio rounds up), which would make every
/// wake-up up to 1 ms late; so a wait of less than 2 ms is a precise sleep followed by
/// a look at what is ready (`epoll` with no timeout), and a longer one an `epoll` that
/// ends a millisecond early. Under load every grid step has packets due, so the thread
/// sleeps between steps and is not woken by each datagram the far ends send: what came
/// meanwhile is read at the next step, and a command waits for it too (under 1 ms).
fn wait(poll: &mut Poll, events: &mut Events, deadline: Option<Instant>) {
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let result = match timeout {
        Some(t) if t < Duration::from_millis(2) => {
            if !t.is_zero() {
                std::thread::sleep(t);
            }
            poll.poll(events, Some(Duration::ZERO))
        }
        Some(t) => {
            let ms = t.as_millis() as u64 - 1;
            poll.poll(events, Some(Duration::from_millis(ms)))
        }
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

/// The streams of the thread, in a flat table (a slab: a stream's slot is its index,
/// freed slots are reused), and the heap of their deadlines. The per-packet path
/// (pop a deadline, find the stream, send, push the next deadline) touches the heap
/// and one slot, no hash map; the ids of [`Playout`](super::Playout) handles are
/// looked up only for their commands.
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_id: HashMap<u64, u32>,
    /// (deadline, slot, generation): one live entry per stream; entries of streams
    /// gone since (their slot's generation moved on) are skipped when popped.
    due: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

impl Table {
    fn new() -> Table {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// Puts a stream in a free slot; returns the slot.
    fn insert(&mut self, id: u64, entry: Entry) -> u32 {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].entry = Some(entry);
        self.by_id.insert(id, slot);
        slot
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    fn slot_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Takes a stream out; its slot's generation moves on, so its heap entry is stale.
    fn remove(&mut self, slot: u32) -> Option<Entry> {
        let s = self.slots.get_mut(slot as usize)?;
        let entry = s.entry.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.by_id.remove(&entry.id);
        self.free.push(slot);
        Some(entry)
    }

    /// Queues the stream's next deadline, or finishes it when it is over.
    fn reschedule(&mut self, slot: u32, active: &AtomicUsize) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        let Some(entry) = &s.entry else {
            return;
        };
        match entry.stream.poll_timeout() {
            Some(at) => self.due.push(Reverse((at, slot, s.generation))),
            None => {
                if let Some(e) = self.remove(slot) {
                    e.finish(active);
                }
            }
        }
    }

    /// Pops the next stream due by `until`: its slot, and when it was due.
    fn pop_due(&mut self, until: Instant) -> Option<u32> {
        while let Some(&Reverse((at, slot, generation))) = self.due.peek() {
            if at > until {
                return None;
            }
            self.due.pop();
            let live = self
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.generation == generation && s.entry.is_some());
            if live {
                return Some(slot);
            }
        }
        None
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((d, _, _))| *d)
    }

    fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.by_id.clear();
        self.slots.drain(..).filter_map(|s| s.entry)
    }
}

/// The thread body.
pub(super) fn run(
    mut poll: Poll,
    commands: mpsc::Receiver<Command>,
    active: &AtomicUsize,
    stats: &PacerStats,
    batched: bool,
) {
    let mut table = Table::new();
    let mut sender = Sender::start(batched);
    // Sends the kernel refused, and the streams served in this wake-up: both wait for
    // the batch to be flushed (reused, so no allocation per wake-up).
    let mut failures: Vec<Tag> = Vec::new();
    let mut served: Vec<u32> = Vec::new();
    let grid = Grid {
        origin: Instant::now(),
    };
    let mut events = Events::with_capacity(1024);
    // Sockets whose read budget ran out: read again next round (epoll is
    // edge-triggered and will not report them again).
    let mut unread: Vec<Token> = Vec::new();
    let mut ready: Vec<Token> = Vec::new();
    let mut buf = [0u8; SEND_BUF_LEN];
    let mut rx_buf = [0u8; 2048];

    loop {
        let deadline = if unread.is_empty() {
            table.next_deadline()
        } else {
            Some(Instant::now())
        };
        wait(&mut poll, &mut events, deadline.map(|d| grid.floor(d)));
        // The one clock read of this wake-up, put on the grid: every packet sent and
        // read in it is timed by it (so a stream's packets leave at the same offset
        // from their deadlines every time, whatever the wake-up's own delay).
        let now = grid.floor(Instant::now());

        ready.clear();
        ready.extend(events.iter().map(|e| e.token()).filter(|t| *t != WAKER));
        ready.append(&mut unread);
        let rejected = read_ready(&mut table, &ready, now, &mut rx_buf, &mut unread);
        if rejected > 0 {
            stats.srtp_rejected.fetch_add(rejected, Ordering::Relaxed);
        }
        // After the reads: what came before a stop counts in the stream's figures.
        if !take_commands(&commands, &mut table, &poll, now, &mut buf, active) {
            break;
        }

        // Send everything that is due. A stream that fell behind (thread descheduled)
        // catches up in a burst of at most MAX_LAG: its packets keep their ideal
        // timestamps, and the far end's jitter buffer absorbs a short burst better
        // than it would absorb gaps.
        let (sent, late) = send_all_due(
            &mut table,
            &mut sender,
            now,
            &mut buf,
            &mut failures,
            &mut served,
            active,
        );
        if sent > 0 {
            stats.sent.fetch_add(sent, Ordering::Relaxed);
            stats.late.fetch_add(late, Ordering::Relaxed);
        }
    }

    let now = Instant::now();
    for mut e in table.drain() {
        stop_now(&mut e, now, &mut buf);
        e.finish(active);
    }
}

/// Counts the sends the kernel refused against their streams; returns (RTP packets
/// refused, of them counted late). The streams are all still in the table: none
/// leaves it while its datagrams are in a batch.
fn apply_failures(table: &mut Table, failures: &mut Vec<Tag>) -> (u64, u64) {
    let (mut failed, mut late) = (0, 0);
    for tag in failures.drain(..) {
        if !tag.rtp {
            continue;
        }
        failed += 1;
        late += u64::from(tag.late);
        if let Some(e) = table.get_mut(tag.slot) {
            e.stream.send_failed();
        }
    }
    (failed, late)
}

/// Stops a stream that is leaving the table and sends its last words (the RTCP BYE)
/// at once, outside any batch: its socket closes right after.
fn stop_now(e: &mut Entry, now: Instant, buf: &mut [u8; SEND_BUF_LEN]) {
    e.stream.stop();
    let mut failures = Vec::new();
    e.send_due(now, buf, &mut Sender::Direct, 0, &mut failures);
}

/// Applies the queued commands; false on shutdown.
fn take_commands(
    commands: &mpsc::Receiver<Command>,
    table: &mut Table,
    poll: &Poll,
    now: Instant,
    buf: &mut [u8; SEND_BUF_LEN],
    active: &AtomicUsize,
) -> bool {
    loop {
        match commands.try_recv() {
            Ok(Command::Play(new)) => {
                let id = new.id;
                let slot = table.insert(id, Entry::new(*new));
                if let Some(entry) = table.get_mut(slot) {
                    register(poll, slot, entry);
                }
                table.reschedule(slot, active);
            }
            Ok(Command::Stop(id)) => {
                if let Some(mut e) = table.slot_of(id).and_then(|slot| table.remove(slot)) {
                    stop_now(&mut e, now, buf);
                    e.finish(active);
                }
            }
            Ok(Command::Key(id, key)) => {
                if let Some(e) = table.slot_of(id).and_then(|slot| table.get_mut(slot)) {
                    e.stream.handle_key(key);
                    e.forward_events();
                }
            }
            Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
            Err(mpsc::TryRecvError::Empty) => return true,
        }
    }
}

/// Watches a new stream's sockets for reading: tokens `slot << 1 | is_rtcp`.
fn register(poll: &Poll, slot: u32, entry: &mut Entry) {
    let token = Token(((slot as usize) << 1) + 2);
    let registry = poll.registry();
    let ok = registry
        .register(&mut entry.socket, token, Interest::READABLE)
        .is_ok();
    if let Some(rtcp) = &mut entry.rtcp_socket {
        if registry
            .register(rtcp, Token(token.0 | 1), Interest::READABLE)
            .is_err()
        {
            // As if the call had no RTCP port: what the stream hands out for it is
            // dropped.
            entry.rtcp_socket = None;
        }
    }
    if !ok {
        // Unreadable socket: still play (DTMF and latching are lost).
        tracing::warn!(remote = %entry.stream.remote(), "cannot watch RTP socket");
    }
}
