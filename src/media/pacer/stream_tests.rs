//! The stream on a fake clock: every rule that used to need real time over loopback
//! (pacing, catch-up, RTCP, latching, SRTP, the key gates) runs here in milliseconds.

#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use crate::media::pacer::ReceiveStats;
use crate::media::script::{ScriptItem, KEYPRESS_TIMEOUT_FRAMES};
use crate::media::srtp::{MasterKey, Suite};
use crate::media::{Keys, Phrase, PromptLibrary};
use rtp_rs::RtpReader;

/// A fake clock: an arbitrary origin and an offset moved by hand.
struct Clock {
    t0: Instant,
    offset: Duration,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            t0: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    fn now(&self) -> Instant {
        self.t0 + self.offset
    }
    fn advance(&mut self, d: Duration) {
        self.offset += d;
    }
}

const WALL: SystemTime = SystemTime::UNIX_EPOCH;

fn far() -> SocketAddr {
    "192.0.2.10:4000".parse().unwrap()
}

fn params(script: CallScript) -> StreamParams {
    StreamParams {
        remote: far(),
        rtcp: false,
        codec: G711::Ulaw,
        payload_type: 0,
        telephone_event_pt: Some(101),
        pack: PromptLibrary::builtin().get("en").unwrap(),
        script,
        srtp: None,
    }
}

/// Every datagram due at `now`, as (via, to, bytes).
fn drain(s: &mut Stream, now: Instant) -> Vec<(Via, SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; SEND_BUF_LEN];
    let mut out = Vec::new();
    while let Some(t) = s.poll_packet(now, &mut buf) {
        out.push((t.via, t.to, buf[..t.len].to_vec()));
    }
    out
}

fn events(s: &mut Stream) -> Vec<PlayoutEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Runs the stream on the fake clock, waking exactly at each `poll_timeout`, until it
/// is over or `limit` passes; returns the RTP packets with their send times and the
/// events.
fn run(
    s: &mut Stream,
    clock: &mut Clock,
    limit: Duration,
) -> (Vec<(Instant, Vec<u8>)>, Vec<PlayoutEvent>) {
    let mut rtp = Vec::new();
    let mut evs = Vec::new();
    let end = clock.now() + limit;
    while let Some(at) = s.poll_timeout() {
        if at > end {
            break;
        }
        if at > clock.now() {
            clock.advance(at - clock.now());
        }
        for (via, _, p) in drain(s, clock.now()) {
            if via == Via::Rtp {
                rtp.push((clock.now(), p));
            }
        }
        evs.extend(events(s));
    }
    (rtp, evs)
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

/// The packets of one RFC 4733 key press: start, update, End ×3, one timestamp.
fn key_press(key: u8, seq: u16, ts: u32) -> Vec<Vec<u8>> {
    [
        (false, 160u16),
        (false, 320),
        (true, 480),
        (true, 480),
        (true, 480),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (end, dur))| {
        let d = dur.to_be_bytes();
        let payload = [key, u8::from(end) << 7 | 10, d[0], d[1]];
        rtp_packet(101, seq + i as u16, ts, i == 0, &payload)
    })
    .collect()
}

fn press(s: &mut Stream, now: Instant, key: u8, seq: u16) {
    for mut p in key_press(key, seq, u32::from(seq) * 160) {
        s.handle_packet(now, far(), Via::Rtp, &mut p);
    }
}

#[test]
fn packets_leave_on_absolute_deadlines_with_ideal_headers_and_markers() {
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
    let n1 = pack.frames(Phrase::Digit(1), G711::Alaw).len();
    let n2 = pack.frames(Phrase::Digit(2), G711::Alaw).len();
    let total = script.frame_count(&pack) as usize;
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut p = params(script);
    p.codec = G711::Alaw;
    p.payload_type = 8;
    let mut s = Stream::new(p, t0, WALL);
    assert_eq!(
        s.poll_timeout(),
        Some(t0),
        "the first packet is due at once"
    );
    let (packets, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert_eq!(packets.len(), total);
    assert_eq!(
        evs,
        vec![PlayoutEvent::CodePlayed { times: 1 }],
        "one reading"
    );
    assert!(s.is_finished());
    assert_eq!(
        s.finished(),
        PlayoutEvent::Finished {
            times_played: 1,
            packets_sent: total as u64,
            received: ReceiveStats::default(),
        }
    );
    let first = RtpReader::new(&packets[0].1).unwrap();
    let mut markers = Vec::new();
    for (i, (at, p)) in packets.iter().enumerate() {
        assert_eq!(
            *at,
            t0 + FRAME_DURATION * i as u32,
            "packet {i} on its deadline"
        );
        let r = RtpReader::new(p).unwrap();
        assert_eq!((r.payload_type(), r.ssrc()), (8, first.ssrc()));
        assert_eq!(r.payload().len(), FRAME_SAMPLES);
        let seq = u16::from(first.sequence_number()).wrapping_add(i as u16);
        assert_eq!(u16::from(r.sequence_number()), seq);
        assert_eq!(
            r.timestamp(),
            first.timestamp().wrapping_add(160 * i as u32)
        );
        if r.mark() {
            markers.push(i);
        }
    }
    // The stream start, then each talk spurt after silence.
    assert_eq!(markers, vec![0, 2, 2 + n1 + 3]);
    assert!(RtpReader::new(&packets[0].1)
        .unwrap()
        .payload()
        .iter()
        .all(|&b| b == 0xd5));
    assert_eq!(
        RtpReader::new(&packets[2 + n1 + 3 + n2 - 1].1)
            .unwrap()
            .payload(),
        &pack.frames(Phrase::Digit(2), G711::Alaw)[n2 - 1][..]
    );
}

#[test]
fn nothing_is_sent_before_its_time_but_a_packet_due_within_send_ahead_is() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut s = Stream::new(
        params(CallScript {
            items: vec![ScriptItem::Silence { frames: 5 }],
        }),
        t0,
        WALL,
    );
    assert_eq!(drain(&mut s, t0).len(), 1);
    assert_eq!(s.poll_timeout(), Some(t0 + FRAME_DURATION));
    clock.advance(FRAME_DURATION - SEND_AHEAD - Duration::from_micros(1));
    assert!(drain(&mut s, clock.now()).is_empty(), "too early");
    clock.advance(Duration::from_micros(1));
    assert_eq!(drain(&mut s, clock.now()).len(), 1, "within SEND_AHEAD");
    // The next deadline stays on the grid, not 20 ms after the early send.
    assert_eq!(s.poll_timeout(), Some(t0 + FRAME_DURATION * 2));
}

#[test]
fn a_stall_is_caught_up_in_a_bounded_burst_with_ideal_timestamps() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut s = Stream::new(
        params(CallScript {
            items: vec![ScriptItem::Silence { frames: 1000 }],
        }),
        t0,
        WALL,
    );
    // 150 ms late: within MAX_LAG, the backlog goes at once (8 packets: 0..=7).
    clock.advance(Duration::from_millis(150));
    assert_eq!(drain(&mut s, clock.now()).len(), 8);
    assert_eq!(s.poll_timeout(), Some(t0 + FRAME_DURATION * 8));
    // 5 s late: re-anchored, the packet due goes now and the next in 20 ms.
    clock.advance(Duration::from_secs(5));
    let burst = drain(&mut s, clock.now());
    assert_eq!(burst.len(), 1);
    assert_eq!(s.poll_timeout(), Some(clock.now() + FRAME_DURATION));
    assert_eq!(s.trouble().1, 1, "one resync");
    // Timestamps never depend on the wall clock: packet 8 is stamped ts0 + 8 × 160.
    let r = RtpReader::new(&burst[0].2).unwrap();
    assert_eq!(r.timestamp(), s.header.timestamp(8));
}

#[test]
fn rtcp_reports_and_the_bye_go_to_rtp_port_plus_one_then_to_the_latched_source() {
    let mut clock = Clock::new();
    let t0 = clock.now();
    let mut p = params(CallScript {
        items: vec![ScriptItem::Silence { frames: 10 }],
    });
    p.rtcp = true;
    let mut s = Stream::new(p, t0, SystemTime::UNIX_EPOCH + Duration::from_secs(1000));
    s.next_report = 3;
    let mut rtcp = Vec::new();
    for i in 0..4 {
        clock.advance(if i == 0 {
            Duration::ZERO
        } else {
            FRAME_DURATION
        });
        for (via, to, p) in drain(&mut s, clock.now()) {
            if via == Via::Rtcp {
                rtcp.push((to, p));
            }
        }
    }
    assert_eq!(rtcp.len(), 1, "one report after packet 3");
    let (to, sr) = &rtcp[0];
    assert_eq!(*to, SocketAddr::new(far().ip(), far().port() + 1));
    assert_eq!((sr[0] >> 6, sr[1]), (2, 200));
    assert_eq!(&sr[4..8], &s.header.ssrc.to_be_bytes());
    assert_eq!(&sr[20..24], &3u32.to_be_bytes(), "packet count");
    assert_eq!(&sr[24..28], &480u32.to_be_bytes(), "octet count");
    // NTP time: the wall clock given at creation plus 40 ms of fake time.
    let ntp = rtcp::ntp_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_040));
    assert_eq!(&sr[8..16], &ntp.to_be_bytes());
    // RTP timestamp of the same instant: 40 ms = 320 samples after packet 0's.
    let ts = u32::from_be_bytes([sr[16], sr[17], sr[18], sr[19]]);
    assert_eq!(ts.wrapping_sub(s.header.initial_timestamp), 320);
    // The far end's report latches our RTCP destination; then stop: the BYE goes there.
    let theirs: SocketAddr = "198.51.100.7:7001".parse().unwrap();
    let mut their_sr = sr.clone();
    assert_eq!(
        s.handle_packet(clock.now(), theirs, Via::Rtcp, &mut their_sr),
        Inbound::Accepted
    );
    s.stop();
    let out = drain(&mut s, clock.now());
    assert_eq!(out.len(), 1);
    let (via, to, bye) = &out[0];
    assert_eq!((*via, *to), (Via::Rtcp, theirs));
    assert_eq!(bye.len(), 64);
    assert_eq!(&bye[56..58], &[0x81, 203]);
    assert!(s.is_finished());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_stream_that_never_sent_sends_no_bye() {
    let t0 = Instant::now();
    let mut p = params(CallScript::default());
    p.rtcp = true;
    let mut s = Stream::new(p, t0, WALL);
    assert!(drain(&mut s, t0).is_empty());
    assert!(s.is_finished());
}

#[test]
fn only_this_calls_media_latches_and_only_the_first_packet() {
    let t0 = Instant::now();
    let mut p = params(CallScript::default());
    p.codec = G711::Alaw;
    p.payload_type = 8;
    let mut s = Stream::new(p, t0, WALL);
    let stray: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // An RTCP sender report (reads as RTP payload type 72) and a comfort-noise packet:
    // not this call's media.
    let mut sr = [0u8; 28];
    sr[0] = 0x80;
    sr[1] = 200;
    assert_eq!(
        s.handle_packet(t0, stray, Via::Rtp, &mut sr),
        Inbound::Ignored
    );
    let mut cn = rtp_packet(13, 1, 0, false, &[0]);
    assert_eq!(
        s.handle_packet(t0, stray, Via::Rtp, &mut cn),
        Inbound::Ignored
    );
    assert_eq!((s.latched, s.remote()), (false, far()));
    let nat: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let mut a = rtp_packet(8, 2, 160, false, &[0xd5; 160]);
    assert_eq!(
        s.handle_packet(t0, nat, Via::Rtp, &mut a),
        Inbound::Accepted
    );
    let mut b = rtp_packet(8, 3, 320, false, &[0xd5; 160]);
    s.handle_packet(t0, stray, Via::Rtp, &mut b);
    assert_eq!((s.latched, s.remote()), (true, nat));
    assert_eq!(s.rtcp_remote, "203.0.113.5:40001".parse().unwrap());
}

/// `require_keypress` with digit 7 before a one-reading code: the script, and the
/// frames of its request (lead-in, "press", "seven").
fn keypress_call() -> (Stream, u32) {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let script = CallScript::with_keypress(&pack, &[1, 2, 3], 1, Keys::one(7).unwrap());
    let gate = script.gate_from(0).unwrap();
    let request = CallScript {
        items: script.items[..gate].to_vec(),
    }
    .frame_count(&pack);
    (
        Stream::new(params(script), Instant::now(), WALL),
        request as u32,
    )
}

#[test]
fn no_key_within_fifteen_seconds_ends_the_call_unread() {
    let (mut s, request) = keypress_call();
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    let (rtp, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert_eq!(evs, vec![PlayoutEvent::NoKeypress]);
    assert_eq!(rtp.len() as u32, request + KEYPRESS_TIMEOUT_FRAMES);
    // 15 s of waiting after the request, on the fake clock.
    assert_eq!(
        rtp.last().unwrap().0 - rtp[0].0,
        FRAME_DURATION * (request + KEYPRESS_TIMEOUT_FRAMES - 1)
    );
    assert_eq!(
        s.finished(),
        PlayoutEvent::Finished {
            times_played: 0,
            packets_sent: u64::from(request + KEYPRESS_TIMEOUT_FRAMES),
            received: ReceiveStats::default(),
        }
    );
}

#[test]
fn a_key_during_the_request_counts_for_nothing() {
    let (mut s, request) = keypress_call();
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    run(&mut s, &mut clock, FRAME_DURATION * (request - 2));
    press(&mut s, clock.now(), 7, 100);
    assert_eq!(events(&mut s), vec![PlayoutEvent::KeyPressed { key: '7' }]);
    let (_, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert_eq!(evs, vec![PlayoutEvent::NoKeypress]);
    assert_eq!(s.cursor.times_played(), 0);
}

#[test]
fn the_right_key_at_the_gate_opens_it_once_for_five_packets() {
    let (mut s, request) = keypress_call();
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    run(&mut s, &mut clock, FRAME_DURATION * (request + 10));
    // One press is five packets (start, update, End ×3): one key, judged once.
    press(&mut s, clock.now(), 7, 100);
    assert_eq!(events(&mut s), vec![PlayoutEvent::KeyPressed { key: '7' }]);
    let (_, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert_eq!(evs, vec![PlayoutEvent::CodePlayed { times: 1 }]);
    assert_eq!(s.cursor.times_played(), 1);
}

#[test]
fn a_wrong_key_at_the_gate_ends_the_call_before_the_next_packet() {
    let (mut s, request) = keypress_call();
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    run(&mut s, &mut clock, FRAME_DURATION * (request + 10));
    let sent = s.packets_sent;
    // By SIP INFO: no KeyPressed echo, only the verdict.
    s.handle_key('3');
    assert_eq!(events(&mut s), vec![PlayoutEvent::WrongKey]);
    let (rtp, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert!(rtp.is_empty() && evs.is_empty());
    assert!(s.is_finished());
    assert_eq!(
        s.finished(),
        PlayoutEvent::Finished {
            times_played: 0,
            packets_sent: sent,
            received: ReceiveStats::default(),
        }
    );
}

#[test]
fn bind_digits_keyed_during_the_request_open_the_gate_and_skip_the_rest() {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let keys = Keys::two(4, 7).unwrap();
    let script = CallScript::with_bind(&pack, &[1, 2, 3], 1, keys);
    let plain = CallScript::build(&pack, &[1, 2, 3], 1).frame_count(&pack);
    let mut s = Stream::new(params(script.clone()), Instant::now(), WALL);
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    run(&mut s, &mut clock, FRAME_DURATION * 3); // 4 packets, in the lead-in
    press(&mut s, clock.now(), 4, 100);
    press(&mut s, clock.now(), 7, 200);
    let (rtp, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert!(evs.contains(&PlayoutEvent::CodePlayed { times: 1 }));
    assert_eq!(
        rtp.len() as u64,
        plain,
        "the whole plain script, nothing of the request"
    );
    // A wrong second digit: over, unread.
    let mut s = Stream::new(params(script), Instant::now(), WALL);
    let t0 = s.start;
    press(&mut s, t0, 4, 100);
    press(&mut s, t0, 1, 200);
    assert_eq!(
        events(&mut s),
        vec![
            PlayoutEvent::KeyPressed { key: '4' },
            PlayoutEvent::KeyPressed { key: '1' },
            PlayoutEvent::WrongKey
        ]
    );
}

#[test]
fn a_key_during_the_code_restarts_the_reading() {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let script = CallScript::build(&pack, &[1, 2, 3], 2);
    let total = script.frame_count(&pack);
    let mut s = Stream::new(params(script), Instant::now(), WALL);
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    let (first, evs) = run(&mut s, &mut clock, FRAME_DURATION * (total as u32 - 20));
    assert_eq!(evs.len(), 2, "both readings done: {evs:?}");
    press(&mut s, clock.now(), 5, 100);
    let (rest, evs) = run(&mut s, &mut clock, Duration::from_secs(60));
    assert_eq!(
        evs,
        vec![
            PlayoutEvent::KeyPressed { key: '5' },
            PlayoutEvent::CodePlayed { times: 3 },
            PlayoutEvent::CodePlayed { times: 4 }
        ]
    );
    assert!(first.len() as u64 + rest.len() as u64 > total);
}

fn srtp_pair() -> (SrtpSession, SrtpSession) {
    let ours = MasterKey::random().unwrap();
    let theirs = MasterKey::random().unwrap();
    (
        SrtpSession::new(Suite::AesCm128HmacSha1_80, &ours, &theirs),
        SrtpSession::new(Suite::AesCm128HmacSha1_80, &theirs, &ours),
    )
}

#[test]
fn srtp_sends_nothing_in_clear_and_reads_only_what_authenticates() {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let (ours, mut far_end) = srtp_pair();
    let script = CallScript {
        items: vec![
            ScriptItem::Say(Phrase::Digit(7)),
            ScriptItem::Silence { frames: 5 },
        ],
    };
    let mut p = params(script);
    p.rtcp = true;
    p.srtp = Some(ours);
    let mut s = Stream::new(p, Instant::now(), WALL);
    s.next_report = 2;
    let mut clock = Clock {
        t0: s.start,
        offset: Duration::ZERO,
    };
    let mut out = Vec::new();
    for _ in 0..3 {
        out.extend(drain(&mut s, clock.now()));
        clock.advance(FRAME_DURATION);
    }
    let frames = pack.frames(Phrase::Digit(7), G711::Ulaw);
    let rtp: Vec<_> = out.iter().filter(|(v, _, _)| *v == Via::Rtp).collect();
    assert_eq!(rtp.len(), 3);
    for (i, (_, _, p)) in rtp.iter().enumerate() {
        assert_eq!(p.len(), PACKET_LEN + 10);
        assert_ne!(&p[12..PACKET_LEN], &frames[i][..], "frame {i} in clear");
        let mut p = p.clone();
        let n = far_end.unprotect_rtp(&mut p).unwrap();
        assert_eq!(&p[12..n], &frames[i][..]);
    }
    let (_, _, sr) = out.iter().find(|(v, _, _)| *v == Via::Rtcp).unwrap();
    let trailer = sr.len() - srtp::SRTCP_TRAILER_LEN;
    assert_eq!(
        &sr[trailer..trailer + 4],
        &0x8000_0000u32.to_be_bytes(),
        "E flag, index 0"
    );
    let mut sr = sr.clone();
    assert!(far_end.unprotect_rtcp(&mut sr).is_ok());

    // A key in plain RTP, and one under a key nobody agreed on: dropped, counted, no
    // latch. The far end's own, under its key: read.
    let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
    let plain = key_press(5, 1, 8000)[0].clone();
    let mut p = plain.clone();
    p.resize(p.len() + 10, 0);
    assert_eq!(
        s.handle_packet(clock.now(), stranger, Via::Rtp, &mut p),
        Inbound::Rejected
    );
    let (mut forger, _) = srtp_pair();
    let mut forged = plain.clone();
    let len = forged.len();
    forged.resize(len + 10, 0);
    let n = forger.protect_rtp(&mut forged, len).unwrap();
    assert_eq!(
        s.handle_packet(clock.now(), stranger, Via::Rtp, &mut forged[..n]),
        Inbound::Rejected
    );
    assert!(events(&mut s).is_empty());
    assert_eq!(s.remote(), far());
    let mut real = plain;
    let len = real.len();
    real.resize(len + 10, 0);
    let n = far_end.protect_rtp(&mut real, len).unwrap();
    assert_eq!(
        s.handle_packet(clock.now(), far(), Via::Rtp, &mut real[..n]),
        Inbound::Accepted
    );
    assert_eq!(events(&mut s), vec![PlayoutEvent::KeyPressed { key: '5' }]);
    assert_eq!(s.trouble().2, 2, "two rejected");
}

#[test]
fn a_refused_send_is_counted_as_an_error_not_as_sent() {
    let t0 = Instant::now();
    let mut s = Stream::new(
        params(CallScript {
            items: vec![ScriptItem::Silence { frames: 2 }],
        }),
        t0,
        WALL,
    );
    assert_eq!(drain(&mut s, t0).len(), 1);
    s.send_failed();
    assert_eq!(drain(&mut s, t0 + FRAME_DURATION).len(), 1);
    assert!(drain(&mut s, t0 + FRAME_DURATION * 2).is_empty());
    assert_eq!(
        s.finished(),
        PlayoutEvent::Finished {
            times_played: 0,
            packets_sent: 1,
            received: ReceiveStats::default(),
        }
    );
    assert_eq!(s.trouble().0, 1);
}

#[test]
fn state_per_stream_is_small() {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let script = CallScript::build(&pack, &[1, 2, 3, 4, 5, 6], 3);
    let s = Stream::new(params(script), Instant::now(), WALL);
    assert!(s.state_bytes() <= 1024, "{} bytes", s.state_bytes());
}

#[test]
fn the_end_event_says_what_the_far_end_sent() {
    let mut clock = Clock::new();
    let mut s = Stream::new(
        params(CallScript {
            items: vec![ScriptItem::Silence { frames: 100 }],
        }),
        clock.now(),
        WALL,
    );
    let nat: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    // 50 A-law packets, 20 ms apart, but seq 20 and 21 lost and seq 30 2 ms late; a
    // comfort-noise packet and a telephone-event in the same sequence space; a stray
    // from elsewhere (not counted: it is not the latched source's).
    for seq in 0..50u16 {
        clock.advance(FRAME_DURATION);
        if seq == 20 || seq == 21 {
            continue;
        }
        let late = if seq == 30 {
            Duration::from_millis(2)
        } else {
            Duration::ZERO
        };
        let pt = match seq {
            40 => 13,
            41 => 101,
            _ => 8,
        };
        let payload: &[u8] = if pt == 101 {
            &[1, 10, 0, 160]
        } else {
            &[0xd5; 160]
        };
        let mut p = rtp_packet(pt, seq, u32::from(seq) * 160, false, payload);
        s.handle_packet(clock.now() + late, nat, Via::Rtp, &mut p);
    }
    let mut stray = rtp_packet(13, 9, 0, false, &[0]);
    s.handle_packet(clock.now(), far(), Via::Rtp, &mut stray);
    s.stop();
    let PlayoutEvent::Finished { received, .. } = s.finished() else {
        panic!("not Finished");
    };
    assert_eq!(received.packets, 48);
    assert_eq!(received.lost, 2);
    assert_eq!(
        (received.payload_type, received.codec),
        (Some(8), Some(G711::Alaw))
    );
    // One packet 2 ms late: |D| = 16 samples twice (late, then back on time), each
    // decaying by 15/16 per packet after: well above 0, well below 2 ms.
    assert!(
        received.jitter_ms > 0.05 && received.jitter_ms < 0.25,
        "{}",
        received.jitter_ms
    );
    assert_eq!(received.srtp_rejected, 0);
    assert_ne!(received, ReceiveStats::default());
}
