//! The pacer thread over real loopback sockets: what only the I/O can show (pacing in
//! real time, SIP INFO keys through the command channel, latching and SRTP rejects
//! counted by the thread, many streams on one thread, shutdown). The rules themselves
//! are tested on a fake clock in `stream_tests.rs` and `media::cursor`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use crate::media::rtp::PACKET_LEN;
use crate::media::script::ScriptItem;
use crate::media::srtp::{self, SrtpSession};
use crate::media::Keys;
use crate::media::{g711, FRAME_DURATION, FRAME_SAMPLES};
use crate::media::{Phrase, PromptLibrary};
use rtp_rs::RtpReader;
use std::time::{Duration, Instant};

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
    plays_a_script(PacerOptions::default());
}

/// The same with one `sendto` per packet (what the pacer falls back to without
/// io_uring): the same packets at the same pace.
#[test]
fn plays_a_script_with_correct_rtp_headers_direct_sends() {
    plays_a_script(PacerOptions {
        direct_sends: true,
        ..PacerOptions::default()
    });
}

fn plays_a_script(options: PacerOptions) {
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
    let pacer = Pacer::start_with(options).unwrap();
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
            packets_sent: total as u64,
            received: ReceiveStats::default(),
        })
    );
    assert_eq!(pacer.active_streams(), 0);
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
    let Some(PlayoutEvent::Finished { times_played, .. }) = playout.events.blocking_recv() else {
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
    let Some(PlayoutEvent::Finished { packets_sent, .. }) = playout.events.blocking_recv() else {
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
            packets_sent: 25,
            received: ReceiveStats::default(),
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
            packets_sent: 75,
            received: ReceiveStats::default(),
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
        ..
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
    many_streams(PacerOptions::default());
}

#[test]
fn many_streams_share_the_thread_and_unreachable_peers_are_not_fatal_direct_sends() {
    many_streams(PacerOptions {
        direct_sends: true,
        ..PacerOptions::default()
    });
}

fn many_streams(options: PacerOptions) {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let script = CallScript {
        items: vec![ScriptItem::Silence { frames: 5 }],
    };
    let pacer = Pacer::start_with(options).unwrap();
    // A port nobody listens on: ECONNREFUSED after the first packet, counted only.
    let dead = loopback().local_addr().unwrap();
    // Port 0: the kernel refuses every send (EINVAL), batched or not.
    let refused = SocketAddr::from(([127, 0, 0, 1], 0));
    let rx = loopback();
    let mut playouts: Vec<Playout> = (0..50)
        .map(|i| {
            pacer.play(PlayoutSpec {
                socket: loopback(),
                remote: match i {
                    0 => dead,
                    1 => refused,
                    _ => rx.local_addr().unwrap(),
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
    // None of the refused sends counts as sent.
    assert_eq!(
        playouts[1].events.blocking_recv(),
        Some(PlayoutEvent::Finished {
            times_played: 0,
            packets_sent: 0,
            received: ReceiveStats::default(),
        })
    );
    for p in &mut playouts[2..] {
        assert_eq!(
            p.events.blocking_recv(),
            Some(PlayoutEvent::Finished {
                times_played: 0,
                packets_sent: 5,
                received: ReceiveStats::default(),
            })
        );
    }
    assert!(matches!(
        playouts[0].events.blocking_recv(),
        Some(PlayoutEvent::Finished { .. })
    ));
    assert_eq!(receive_all(&rx, Duration::from_millis(100)).len(), 48 * 5);
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
        ..PacerOptions::default()
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
            packets_sent: 3,
            received: ReceiveStats::default(),
        })
    );
}

#[test]
fn finish_stops_the_stream_and_hands_back_what_the_far_end_sent() {
    let pack = PromptLibrary::builtin().get("en").unwrap();
    let sdp_addr = loopback();
    let nat = loopback();
    let pacer = Pacer::start().unwrap();
    let playout = pacer.play(PlayoutSpec {
        socket: loopback(),
        rtcp_socket: None,
        remote: sdp_addr.local_addr().unwrap(),
        codec: G711::Alaw,
        payload_type: 8,
        telephone_event_pt: Some(101),
        pack,
        script: CallScript {
            items: vec![ScriptItem::Silence { frames: 500 }],
        },
        srtp: None,
    });
    let ours = first_packet_source(&sdp_addr);
    // Five packets from behind a "NAT", seq 3 missing. On loopback they are in our
    // socket's queue when send_to returns.
    for seq in [1u16, 2, 4, 5, 6] {
        let p = rtp_packet(8, seq, u32::from(seq) * 160, false, &[0xd5; 160]);
        nat.send_to(&p, ours).unwrap();
    }
    // The thread has read them once our packets come to their source (the latch);
    // it reads what is queued before it takes the stop that `finish` sends.
    first_packet_source(&nat);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let received = rt.block_on(playout.finish()).unwrap();
    assert_eq!((received.packets, received.lost), (5, 1));
    assert_eq!(received.codec, Some(G711::Alaw));
    assert!(pacer.stats().packets_sent() < 500, "stopped early");
}
