//! Batched sends for the pacer thread: the datagrams of one wake-up go to the kernel in
//! one `io_uring_enter` instead of one `sendto` each (issue 16: the kernel's per-packet
//! send was most of the gateway's CPU). Each datagram still leaves from its own call's
//! socket towards the address the stream chose (`IORING_OP_SEND` with a destination,
//! the `sendto` of io_uring), so what the far ends see does not change: a distinct
//! media address per call, symmetric-RTP latching, RTCP from the RTCP port.
//!
//! When io_uring cannot be had (kernel older than 6.0, which rejects a destination
//! on `IORING_OP_SEND`; io_uring disabled by `kernel.io_uring_disabled` or a seccomp
//! filter), [`Sender::start`] says so once and the thread sends each datagram with
//! `send_to` as before ([`Sender::Direct`]).
//!
//! This module is the only one in the crate with `unsafe` code: handing the kernel
//! pointers to memory it reads later. The argument that it is sound is in
//! [`Batch`]'s comments.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use io_uring::{opcode, types, IoUring};
use socket2::SockAddr;

use super::stream::SEND_BUF_LEN;

/// Datagrams in flight per submission. At 2,000 calls a 1 ms wake-up has about 100
/// packets due; a bigger wake-up (after a stall) is sent in several submissions.
pub(super) const BATCH: usize = 256;

/// What the caller wants back about a datagram once it is sent: which stream, and
/// whether it was an RTP packet counted as sent (and as late).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tag {
    pub slot: u32,
    /// An RTP packet (counted as sent when queued; a failure un-counts it).
    pub rtp: bool,
    pub late: bool,
}

/// How the pacer thread hands datagrams to the kernel.
pub(super) enum Sender {
    /// One `io_uring_enter` per batch (boxed: the ring's handles are a few hundred
    /// bytes).
    Batched(Box<Batch>),
    /// One `sendto` per datagram (no io_uring here, or asked for).
    Direct,
}

/// What became of [`Sender::send`]'s datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// Sent now (direct).
    Ok,
    /// Refused now (direct): socket buffer full, ICMP error queued, ...
    Failed,
    /// In the batch: its fate comes from [`Sender::flush`].
    Queued,
}

impl Sender {
    /// Batched sends when io_uring works here (checked with one real datagram over
    /// loopback, so an old kernel that accepts the ring but not a destination on
    /// `IORING_OP_SEND` is caught too); direct sends otherwise, or when `batched` is
    /// false.
    pub(super) fn start(batched: bool) -> Sender {
        if !batched {
            return Sender::Direct;
        }
        match Batch::new(BATCH).and_then(|mut b| b.self_test().map(|()| b)) {
            Ok(b) => {
                tracing::debug!("RTP pacer sends through io_uring, in batches");
                Sender::Batched(Box::new(b))
            }
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable: the RTP pacer sends each packet with sendto");
                Sender::Direct
            }
        }
    }

    /// Sends `bytes` from `socket` to `to`, now or in the batch. A full batch is
    /// flushed first (its failures go to `failed`).
    pub(super) fn send(
        &mut self,
        socket: &(impl AsFd + AsRawFd),
        bytes: &[u8],
        to: SocketAddr,
        tag: Tag,
        failed: &mut Vec<Tag>,
    ) -> Sent {
        let direct = |bytes: &[u8]| {
            let socket = socket2::SockRef::from(socket);
            match socket.send_to(bytes, &SockAddr::from(to)) {
                Ok(_) => Sent::Ok,
                // WouldBlock (socket buffer full) and ECONNREFUSED (ICMP port
                // unreachable from an earlier packet) are normal under load or before
                // the far end opens its port: the packet is lost, the stream goes on.
                Err(_) => Sent::Failed,
            }
        };
        match self {
            Sender::Direct => direct(bytes),
            Sender::Batched(b) => {
                if b.is_full() {
                    b.flush(failed);
                }
                if b.push(socket.as_raw_fd(), bytes, to, tag) {
                    Sent::Queued
                } else {
                    // The ring is broken (see `Batch::flush`): from now on direct.
                    *self = Sender::Direct;
                    direct(bytes)
                }
            }
        }
    }

    /// Sends what is queued; the tag of each datagram the kernel refused goes to
    /// `failed`. Every socket given to [`Sender::send`] since the last flush must still
    /// be open.
    pub(super) fn flush(&mut self, failed: &mut Vec<Tag>) {
        if let Sender::Batched(b) = self {
            b.flush(failed);
            if b.broken {
                *self = Sender::Direct;
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_batched(&self) -> bool {
        matches!(self, Sender::Batched(_))
    }
}

/// One queued datagram: its bytes and destination, where the kernel reads them.
struct Pending {
    buf: [u8; SEND_BUF_LEN],
    to: SockAddr,
    tag: Tag,
}

/// An io_uring and the datagrams of one submission.
///
/// Soundness. An `IORING_OP_SEND` entry holds three things the kernel uses after
/// `push` returns: a file descriptor, a pointer to the bytes, a pointer to the
/// destination address. They stay valid until the kernel is done with them because:
///
/// 1. the bytes and the address live in `pending`, a boxed slice allocated once in
///    `new` and never resized or moved (only its elements are written), so the
///    pointers taken in `push` stay valid as long as the `Batch` lives;
/// 2. an element is written only in `push`, at index `queued`, and `queued` only goes
///    back to 0 in `flush` after a completion was reaped for every entry submitted
///    (the kernel is then done with all of them: a completion is posted only after
///    the send, successful or not, has finished with its buffers);
/// 3. the descriptor belongs to a socket the caller keeps open until `flush` returns
///    (the pacer thread flushes before it drops any stream: see `thread.rs`);
/// 4. if the kernel stops answering while entries are in flight (an `io_uring_enter`
///    error other than an interruption), the batch is marked broken and, when
///    dropped, leaks `pending` instead of freeing it, so memory the kernel might
///    still read is never reused; the thread goes on with direct sends.
///
/// The ring's own memory (the queues the kernel maps) is managed by the `io-uring`
/// crate. `MSG_DONTWAIT` on every send makes a full socket buffer a failed
/// completion (EAGAIN) at once instead of a wait, so `flush` does not block.
pub(super) struct Batch {
    ring: IoUring,
    pending: Box<[Pending]>,
    queued: usize,
    broken: bool,
}

impl Batch {
    /// A ring and room for `cap` datagrams in flight.
    fn new(cap: usize) -> std::io::Result<Batch> {
        // Few threads share this ring (one): completions can be posted lazily, at the
        // next enter, instead of interrupting the thread (COOP_TASKRUN, 5.19+).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(cap as u32)
            .or_else(|_| IoUring::new(cap as u32))?;
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let pending = (0..cap)
            .map(|_| Pending {
                buf: [0; SEND_BUF_LEN],
                to: unspecified.clone(),
                tag: Tag {
                    slot: 0,
                    rtp: false,
                    late: false,
                },
            })
            .collect();
        Ok(Batch {
            ring,
            pending,
            queued: 0,
            broken: false,
        })
    }

    /// Sends one datagram between two loopback sockets of our own through the ring.
    fn self_test(&mut self) -> std::io::Result<()> {
        let rx = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        let tx = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        let mut error = None;
        if !self.push(
            tx.as_raw_fd(),
            b"otpdial",
            rx.local_addr()?,
            Tag {
                slot: 0,
                rtp: false,
                late: false,
            },
        ) {
            return Err(std::io::Error::other("io_uring submission queue unusable"));
        }
        let mut result = 0;
        self.flush_with(&mut |_, r| result = r);
        if self.broken {
            error = Some(std::io::Error::other("io_uring_enter failed"));
        } else if result < 0 {
            error = Some(std::io::Error::from_raw_os_error(-result));
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn is_full(&self) -> bool {
        self.queued == self.pending.len()
    }

    /// Queues a datagram; false when it cannot be (the batch is full or broken).
    fn push(&mut self, fd: RawFd, bytes: &[u8], to: SocketAddr, tag: Tag) -> bool {
        if self.broken || self.queued == self.pending.len() || bytes.len() > SEND_BUF_LEN {
            return false;
        }
        let i = self.queued;
        let p = &mut self.pending[i];
        p.buf[..bytes.len()].copy_from_slice(bytes);
        p.to = SockAddr::from(to);
        p.tag = tag;
        let entry = opcode::Send::new(types::Fd(fd), p.buf.as_ptr(), bytes.len() as u32)
            .dest_addr(p.to.as_ptr().cast())
            .dest_addr_len(p.to.len())
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(i as u64);
        // SAFETY: the entry points into `self.pending[i]` and at `fd`, which stay valid
        // and unwritten until the entry's completion is reaped in `flush` (points 1-3
        // of the type's comment); `queued` counts it from here on.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen: the queue has room for a whole batch and is empty after
            // every flush. Do not count an entry the kernel will never see.
            return false;
        }
        self.queued += 1;
        true
    }

    /// Submits what is queued and waits until every entry has completed; `failed`
    /// gets the tag of each send the kernel refused.
    fn flush(&mut self, failed: &mut Vec<Tag>) {
        self.flush_with(&mut |tag, result| {
            if result < 0 {
                failed.push(tag);
            }
        });
    }

    fn flush_with(&mut self, done: &mut impl FnMut(Tag, i32)) {
        let mut reaped = 0;
        while reaped < self.queued {
            match self.ring.submit_and_wait(self.queued - reaped) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    // EBUSY/EAGAIN: completions to reap first (below), then again.
                }
                Err(e) => {
                    // The ring no longer works; entries may still be in flight, so
                    // `pending` must never be reused or freed (point 4).
                    tracing::error!(error = %e, "io_uring_enter failed: the RTP pacer sends each packet with sendto from now on");
                    self.broken = true;
                    return;
                }
            }
            for cqe in self.ring.completion() {
                let Some(p) = self.pending.get(cqe.user_data() as usize) else {
                    continue;
                };
                reaped += 1;
                done(p.tag, cqe.result());
            }
        }
        self.queued = 0;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.broken && self.queued > 0 {
            // Point 4: the kernel may still read these buffers.
            std::mem::forget(std::mem::take(&mut self.pending));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn tag(slot: u32) -> Tag {
        Tag {
            slot,
            rtp: true,
            late: false,
        }
    }

    /// A batched sender with room for 8 datagrams (the receiver's socket buffer holds
    /// a few small batches, not one of 256 datagrams), or `None` without io_uring.
    fn small_batches() -> Option<Sender> {
        let mut b = Batch::new(8).ok()?;
        b.self_test().ok()?;
        Some(Sender::Batched(Box::new(b)))
    }

    /// Both kinds of sender deliver each datagram, from its own socket, byte for byte,
    /// and report nothing as failed.
    fn delivers(mut sender: Sender) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let senders: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut failed = Vec::new();
        // More than two batches, so full batches are flushed on the way.
        let count = 21;
        for i in 0..count {
            let s = &senders[i % 3];
            let bytes = format!("packet {i}");
            let r = sender.send(
                s,
                bytes.as_bytes(),
                rx.local_addr().unwrap(),
                tag(i as u32),
                &mut failed,
            );
            assert_ne!(r, Sent::Failed);
        }
        sender.flush(&mut failed);
        assert!(failed.is_empty(), "{failed:?}");
        let mut buf = [0u8; 64];
        for i in 0..count {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("packet {i}").as_bytes());
            assert_eq!(from, senders[i % 3].local_addr().unwrap());
        }
    }

    #[test]
    fn batched_sends_deliver_every_datagram_from_its_socket() {
        let sender = small_batches().unwrap_or(Sender::Direct);
        // This kernel (6.x, io_uring enabled) must batch; elsewhere the fallback is
        // what runs, and is tested below.
        if !sender.is_batched() {
            eprintln!("io_uring unavailable here: only the direct path is tested");
        }
        delivers(sender);
    }

    #[test]
    fn direct_sends_deliver_every_datagram_from_its_socket() {
        delivers(Sender::start(false));
    }

    /// A send the kernel refuses (UDP to port 0: EINVAL) comes back as failed with
    /// its tag, batched or not, and the sends around it are not affected.
    fn reports_refusal(mut sender: Sender) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port_zero = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut failed = Vec::new();
        for (i, to) in [
            rx.local_addr().unwrap(),
            port_zero,
            rx.local_addr().unwrap(),
        ]
        .into_iter()
        .enumerate()
        {
            if sender.send(&tx, b"x", to, tag(i as u32), &mut failed) == Sent::Failed {
                failed.push(tag(i as u32));
            }
        }
        sender.flush(&mut failed);
        assert_eq!(failed, vec![tag(1)]);
        let mut buf = [0u8; 8];
        for _ in 0..2 {
            assert_eq!(rx.recv_from(&mut buf).unwrap().0, 1);
        }
    }

    #[test]
    fn a_refused_send_is_reported_batched() {
        let sender = Sender::start(true);
        reports_refusal(sender);
    }

    #[test]
    fn a_refused_send_is_reported_direct() {
        reports_refusal(Sender::start(false));
    }
}
