//! Media benchmark: N concurrent synthetic calls played by one [`Pacer`] thread to a
//! loopback receiver that timestamps every packet in the kernel (SO_TIMESTAMPNS), so
//! the spacing measured is when packets left, not when a busy receiver got to them.
//!
//! ```text
//! cargo bench --bench playout                          # N = 500, 1000, 2000, 4000; 10 s each
//! cargo bench --bench playout -- --n 2000 --secs 5     # one N, shorter
//! cargo bench --bench playout -- --fifo 50             # pacer under SCHED_FIFO 50 (root)
//! cargo bench --bench playout -- --direct              # one sendto per packet instead of io_uring batches
//! cargo bench --bench playout -- --sipp                # the same N with SIPp 3.6's RTP sender
//! ```
//!
//! `--sipp` measures SIPp's `rtp_stream` sender instead, with the same receiver: a SIPp
//! callee (`benches/sipp/uas_rtp_sink.xml`) answers with the receiver's port and a
//! SIPp caller (`benches/sipp/uac_rtp_stream.xml`, `-l N -r 1000`) streams A-law for
//! the same time per call. Its CPU is the caller process's user+system time
//! (getrusage of children), per packet received.
//!
//! Per N it prints: packets sent (accepted by the kernel) and received, lost, CPU time
//! of the pacer thread per packet (from /proc/self/task/TID/schedstat, in ns), the
//! deviation of each stream's inter-packet spacing from 20 ms (p50, p99, max), and
//! memory per call (growth of the process RSS while the N streams are created and
//! running, divided by N; plus the pacer's own per-stream state computed from sizes).
//!
//! Each call streams a real script (intro and digits of the `en` pack between short
//! silences) from its own UDP socket, as in production; calls start spread over the
//! start-up time, as calls arrive at random. RTCP is off (one report per 5 s per call
//! would not change the figures). Not a `cargo test`: timing targets are checked here
//! only, never by timed unit tests.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpdial::media::{
    CallScript, Pacer, PacerOptions, Phrase, PlayoutEvent, PlayoutSpec, PromptLibrary, ScriptItem,
    G711,
};

mod common;
use common::{children_cpu_ns, free_port, pct, start_receiver};

struct Args {
    ns: Vec<usize>,
    secs: u64,
    fifo: u8,
    sipp: bool,
    /// One `sendto` per packet instead of io_uring batches (A/B).
    direct: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        ns: vec![500, 1000, 2000, 4000],
        secs: 10,
        fifo: 0,
        sipp: false,
        direct: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => {
                if let Some(v) = it.next() {
                    args.ns = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                }
            }
            "--secs" => {
                if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                    args.secs = v;
                }
            }
            "--fifo" => {
                if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                    args.fifo = v;
                }
            }
            "--sipp" => args.sipp = true,
            "--direct" => args.direct = true,
            _ => {} // `cargo bench` passes --bench; ignore what is not ours
        }
    }
    args
}

/// Run time of a thread of this process, found by name, in ns (schedstat field 1).
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            return stat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A script of about `secs` seconds: intro and digits between short silences.
fn script(pack: &otpdial::media::PromptPack, secs: u64) -> CallScript {
    let frames = secs * 50;
    let mut items = Vec::new();
    let mut d = 0u8;
    while (CallScript {
        items: items.clone(),
    })
    .frame_count(pack)
        < frames
    {
        items.push(ScriptItem::Say(if d == 0 {
            Phrase::Intro
        } else {
            Phrase::Digit(d % 10)
        }));
        items.push(ScriptItem::Silence { frames: 10 });
        d = d.wrapping_add(1);
    }
    CallScript { items }
}

fn run_one(n: usize, secs: u64, fifo: u8, direct: bool) {
    let lib = PromptLibrary::builtin();
    let pack = lib.get("en").expect("built-in en pack");
    let script = script(&pack, secs);
    let frames = script.frame_count(&pack);
    let rx = start_receiver(n * frames as usize);
    let to = rx.addr;

    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind sender"))
        .collect();
    let pacer = Pacer::start_with(PacerOptions {
        realtime_priority: fifo,
        direct_sends: direct,
    })
    .expect("pacer");
    let rss0 = rss_bytes();
    let cpu0 = thread_cpu_ns("rtp-pacer").unwrap_or(0);
    let started = Instant::now();
    let mut playouts = Vec::with_capacity(n);
    for socket in sockets {
        playouts.push(pacer.play(PlayoutSpec {
            socket,
            rtcp_socket: None,
            remote: to,
            codec: G711::Alaw,
            payload_type: 8,
            telephone_event_pt: Some(101),
            pack: Arc::clone(&pack),
            script: script.clone(),
            srtp: None,
        }));
        // Calls arrive at random times, not all on one 20 ms tick.
        std::thread::sleep(Duration::from_micros(20));
    }
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = rss_bytes();

    let mut sent = 0u64;
    for p in &mut playouts {
        while let Some(ev) = p.events.blocking_recv() {
            if let PlayoutEvent::Finished { packets_sent, .. } = ev {
                sent += packets_sent;
            }
        }
    }
    let cpu1 = thread_cpu_ns("rtp-pacer").unwrap_or(0);
    drop(playouts);
    drop(pacer);
    let mut got = rx.finish();
    if got.lost > 0 {
        eprintln!("{n} calls: {} sequence gaps seen by the receiver", got.lost);
    }
    got.deviations.sort_unstable();

    let cpu_per_packet_us = (cpu1.saturating_sub(cpu0)) as f64 / sent.max(1) as f64 / 1000.0;
    let mem_per_call = rss1.saturating_sub(rss0) as f64 / n as f64;
    // What a production call holds: the stream plus a 6-digit, 2-reading script.
    let call_script = CallScript::build(&pack, &[4, 8, 1, 5, 2, 6], 2);
    let state = otpdial::media::pacer::stream_state_bytes()
        + std::mem::size_of::<ScriptItem>() * call_script.items.len();
    let expected = n as u64 * frames;
    println!(
        "| {n} | {} | {expected} | {sent} | {} | {} | {cpu_per_packet_us:.2} | {:.3} | {:.3} | {:.3} | {:.0} | {state} | {:.1} |",
        if fifo > 0 { format!("FIFO {fifo}") } else { "normal".into() },
        got.packets,
        expected.saturating_sub(got.packets),
        pct(&got.deviations, 0.5),
        pct(&got.deviations, 0.99),
        pct(&got.deviations, 1.0),
        mem_per_call,
        ramp.as_secs_f64(),
    );
}

/// The same measurement of SIPp's RTP sender: N calls of `secs` each.
fn run_sipp(n: usize, secs: u64) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let scenarios = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sipp");
    common::write_alaw_wav(
        dir.path(),
        &PromptLibrary::builtin().get("en").expect("en pack"),
    );

    let rx = start_receiver(n * secs as usize * 50);
    let to = rx.addr;
    let uas_port = free_port();
    let quiet = |c: &mut Command| {
        c.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenarios.join("uas_rtp_sink.xml"))
        .args(["-i", "127.0.0.1", "-p", &uas_port.to_string(), "-nostdin"])
        .args(["-set", "rx_port", &to.port().to_string()]);
    quiet(&mut uas);
    let Ok(mut uas) = uas.spawn() else {
        println!("| {n} | SIPp 3.6 | (sipp not installed) |");
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = children_cpu_ns();
    let mut uac = Command::new("sipp");
    uac.arg("-sf")
        .arg(scenarios.join("uac_rtp_stream.xml"))
        .arg(format!("127.0.0.1:{uas_port}"))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin"])
        .args(["-p", &free_port().to_string()])
        .args(["-l", &n.to_string(), "-m", &n.to_string(), "-r", "1000"])
        .args(["-d", &(secs * 1000).to_string()]);
    quiet(&mut uac);
    let started = Instant::now();
    let mut uac = uac.spawn().expect("sipp caller");
    // Bounded: the calls, their ramp-up at 1000/s, and a margin.
    let limit = Duration::from_secs(secs + n as u64 / 1000 + 30);
    let finished = loop {
        match uac.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = uac.kill();
                let _ = uac.wait();
                break false;
            }
        }
    };
    let cpu1 = children_cpu_ns();
    let _ = uas.kill();
    let _ = uas.wait();
    let mut got = rx.finish();
    got.deviations.sort_unstable();
    let cpu_per_packet_us = cpu1.saturating_sub(cpu0) as f64 / got.packets.max(1) as f64 / 1000.0;
    println!(
        "| {n} | SIPp 3.6{} | {} | - | {} | {} (gaps) | {cpu_per_packet_us:.2} | {:.3} | {:.3} | {:.3} | - | - | {:.1} |",
        if finished { "" } else { " (timed out)" },
        n as u64 * secs * 50,
        got.packets,
        got.lost,
        pct(&got.deviations, 0.5),
        pct(&got.deviations, 0.99),
        pct(&got.deviations, 1.0),
        n as f64 / 1000.0,
    );
}

fn main() {
    let args = parse_args();
    println!(
        "# playout bench: {} s of audio per call, {} CPUs, pacer {}",
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.sipp {
            "SIPp 3.6 rtp_stream"
        } else if args.fifo > 0 {
            "SCHED_FIFO"
        } else {
            "normal priority"
        }
    );
    println!("| calls | sched | packets due | sent | received | lost | CPU/packet µs | dev p50 ms | dev p99 ms | dev max ms | RSS/call B | state/call B | ramp s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.ns {
        if args.sipp {
            run_sipp(n, args.secs);
        } else {
            run_one(n, args.secs, args.fifo, args.direct);
        }
    }
}
