//! Whole-gateway benchmark (issue 10): the real `otpdial serve` on one core, driven over
//! HTTP at a fixed start rate to N concurrent calls through one trunk to a SIPp callee,
//! against SIPp 3.6 as the caller (`rtp_stream`) on the same core with the same callee.
//!
//! ```text
//! cargo bench --bench gateway                           # N = 500, 1000, 2000, 3000, 4000, ... until a side fails
//! cargo bench --bench gateway -- --n 2000 --runs 3      # one N, median of 3 runs per side
//! cargo bench --bench gateway -- --n 200 --secs 10      # quick: 10 s calls
//! cargo bench --bench gateway -- --fifo 50              # otpdial's pacer under SCHED_FIFO 50 ([media] realtime_priority)
//! cargo bench --bench gateway -- --only otpdial         # one side only (otpdial | sipp)
//! cargo bench --bench gateway -- --n 2000 --count 8      # + syscalls and context switches per packet (perf stat, 8 s at the plateau)
//! cargo bench --bench gateway -- --otpdial /tmp/otpdial-before  # another build of otpdial (A/B)
//! cargo bench --bench gateway -- --database-url postgres://postgres@127.0.0.1/bench  # PostgreSQL (a fresh, empty database)
//! cargo bench --bench gateway -- --soak 30m --n 500      # soak: N calls up for 30 min, a row a minute (benches/common/soak.rs)
//! ```
//!
//! Needs `sipp` and `taskset` (what `./scripts/test.sh` installs) and two CPUs. Cargo
//! builds the `otpdial` binary with the bench, in the bench profile (= release), and
//! hands its path over in `CARGO_BIN_EXE_otpdial` (`target/release/otpdial`); the bench
//! starts `otpdial serve` itself, once per run, with a fresh SQLite database in a
//! temporary directory.
//!
//! Layout, per run (one side at a time):
//! - core 1: this process (HTTP client and the receiver thread) and the SIPp callee
//!   (`benches/sipp/uas_rtp_sink.xml`), which answers every INVITE with an SDP pointing
//!   at the receiver; the receiver timestamps every RTP packet in the kernel
//!   (SO_TIMESTAMPNS, `benches/common`), and the callee logs every SIP message it reads
//!   with its time (`-trace_msg`), which gives request → INVITE;
//! - core 0: the caller under test, alone: (a) `otpdial serve` (`taskset -c 0`), sent
//!   `POST /v1/verifications` at N / L per second (L = the planned call length, about
//!   22 s), so about N calls are up at once when the last one starts; or (b) SIPp
//!   (`benches/sipp/uac_rtp_stream.xml`, `-r N -rp L`) streaming A-law with
//!   `rtp_stream` for L per call, the same start rate and length.
//!
//! Figures: calls completed/failed (otpdial: the call status read back over the API;
//! SIPp: its own successful/failed counters); CPU % of core 0 (mean over the run and the
//! highest 2 s window, from /proc/PID/stat); CPU per RTP packet (process CPU over the run
//! / packets received; SIPp: getrusage of the waited child); peak RSS (VmHWM) and its
//! growth over the idle process per concurrent call; packets received / expected;
//! |spacing − 20 ms| of consecutive packets of each stream (p50, p99, max); call length
//! planned and measured (first to last packet of each stream + 20 ms: mean and max);
//! for otpdial the HTTP start latency and request → INVITE at the callee (p50, p99).
//!
//! Bounded: each run has a time limit, N grows until a side fails (a failed or missing
//! call, < 99 % of packets, calls more than 1 % longer than planned on average (its
//! playout fell behind: overloaded), or the time limit) and then that side stops, and the whole
//! bench stops starting runs after `--budget` seconds (default 1800).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use otpdial::media::{CallScript, PromptLibrary};

mod common;
use common::{children_cpu_ns, free_port, pct, start_receiver, Received};
#[path = "common/soak.rs"]
mod soak;

const TOKEN: &str = "bench-gateway-token";
/// Jiffies per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICK_NS: u64 = 10_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Otpdial,
    Sipp,
}

struct Args {
    ns: Vec<usize>,
    runs: usize,
    secs: f64,
    budget: Duration,
    only: Option<Side>,
    fifo: u8,
    database_url: Option<String>,
    /// Seconds of `perf stat` on the caller at the plateau (0: none).
    count_secs: f64,
    /// Another `otpdial` binary to run instead of the one cargo built (A/B).
    otpdial: Option<PathBuf>,
    /// `--soak 30m`: the soak instead of the sweep (the first `--n`, default 500).
    soak: Option<Duration>,
}

fn parse_args() -> Args {
    let mut args = Args {
        ns: vec![500, 1000, 2000, 3000, 4000, 5000, 6000, 8000],
        runs: 1,
        secs: 22.0,
        budget: Duration::from_secs(1800),
        only: None,
        fifo: 0,
        database_url: None,
        count_secs: 0.0,
        otpdial: None,
        soak: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match a.as_str() {
            "--n" => {
                args.ns = val()
                    .split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
            }
            "--runs" => args.runs = val().parse().unwrap_or(1).max(1),
            "--secs" => args.secs = val().parse().unwrap_or(22.0),
            "--budget" => args.budget = Duration::from_secs(val().parse().unwrap_or(1800)),
            "--fifo" => args.fifo = val().parse().unwrap_or(0),
            "--only" => {
                args.only = match val().as_str() {
                    "otpdial" => Some(Side::Otpdial),
                    "sipp" => Some(Side::Sipp),
                    _ => None,
                }
            }
            "--database-url" => args.database_url = Some(val()),
            "--count" => args.count_secs = val().parse().unwrap_or(0.0),
            "--otpdial" => args.otpdial = Some(PathBuf::from(val())),
            "--soak" => {
                let v = val();
                match humantime::parse_duration(&v) {
                    Ok(d) => args.soak = Some(d),
                    Err(e) => {
                        eprintln!("--soak {v:?}: {e} (e.g. --soak 30m)");
                        std::process::exit(2);
                    }
                }
            }
            _ => {} // `cargo bench` passes --bench; ignore what is not ours
        }
    }
    args
}

/// What one run of one side measured. NaN where a figure does not apply.
#[derive(Clone, Debug, Default)]
struct Figures {
    completed: f64,
    failed: f64,
    cpu_mean_pct: f64,
    cpu_peak_pct: f64,
    cpu_per_packet_us: f64,
    peak_rss_mb: f64,
    rss_per_call_kb: f64,
    received: f64,
    expected: f64,
    /// RTP streams (SSRCs) the receiver saw: one per call that got media.
    streams: f64,
    dev_p50: f64,
    dev_p99: f64,
    dev_max: f64,
    len_planned: f64,
    len_mean: f64,
    len_max: f64,
    http_p50: f64,
    http_p99: f64,
    invite_p50: f64,
    invite_p99: f64,
    /// System calls and context switches of the caller per RTP packet received, over a
    /// `perf stat` window at the plateau (`--count`); NaN without it.
    syscalls_per_packet: f64,
    switches_per_packet: f64,
    load_max: f64,
    timed_out: bool,
}

impl Figures {
    fn ok(&self) -> bool {
        !self.timed_out
            && self.failed == 0.0
            && self.received >= 0.99 * self.expected
            && self.len_mean <= 1.01 * self.len_planned
    }

    /// Field by field median of several runs.
    fn median(runs: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Figures {
            completed: m(|f| f.completed),
            failed: m(|f| f.failed),
            cpu_mean_pct: m(|f| f.cpu_mean_pct),
            cpu_peak_pct: m(|f| f.cpu_peak_pct),
            cpu_per_packet_us: m(|f| f.cpu_per_packet_us),
            peak_rss_mb: m(|f| f.peak_rss_mb),
            rss_per_call_kb: m(|f| f.rss_per_call_kb),
            received: m(|f| f.received),
            expected: m(|f| f.expected),
            streams: m(|f| f.streams),
            dev_p50: m(|f| f.dev_p50),
            dev_p99: m(|f| f.dev_p99),
            dev_max: m(|f| f.dev_max),
            len_planned: m(|f| f.len_planned),
            len_mean: m(|f| f.len_mean),
            len_max: m(|f| f.len_max),
            http_p50: m(|f| f.http_p50),
            http_p99: m(|f| f.http_p99),
            invite_p50: m(|f| f.invite_p50),
            invite_p99: m(|f| f.invite_p99),
            syscalls_per_packet: m(|f| f.syscalls_per_packet),
            switches_per_packet: m(|f| f.switches_per_packet),
            load_max: m(|f| f.load_max),
            timed_out: runs.iter().any(|f| f.timed_out),
        }
    }

    fn row(&self, n: usize, label: &str) -> String {
        let opt = |v: f64, d: usize| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.d$}")
            }
        };
        format!(
            "| {n} | {label}{} | {:.0} / {:.0} | {:.0} / {:.0} | {} | {:.0} / {:.0} ({:.3} %), {:.0} streams | {:.3} / {:.3} / {:.3} | {:.2} / {:.2} / {:.2} | {:.1} | {:.2} | {} / {} | {} / {} | {} / {} | {:.1} |",
            if self.timed_out { " (timed out)" } else { "" },
            self.completed,
            self.failed,
            self.cpu_mean_pct,
            self.cpu_peak_pct,
            opt(self.cpu_per_packet_us, 2),
            self.received,
            self.expected,
            100.0 * self.received / self.expected.max(1.0),
            self.streams,
            self.dev_p50,
            self.dev_p99,
            self.dev_max,
            self.len_planned,
            self.len_mean,
            self.len_max,
            self.peak_rss_mb,
            self.rss_per_call_kb,
            opt(self.http_p50, 1),
            opt(self.http_p99, 1),
            opt(self.invite_p50, 1),
            opt(self.invite_p99, 1),
            opt(self.syscalls_per_packet, 3),
            opt(self.switches_per_packet, 3),
            self.load_max,
        )
    }
}

const HEADER: &str = "| N | caller | calls ok / failed | CPU % mean / peak 2 s | CPU/packet µs | packets received / expected | dev p50 / p99 / max ms | call s planned / mean / max | peak RSS MB | RSS/call KB | HTTP start p50 / p99 ms | request→INVITE p50 / p99 ms | syscalls / ctx switches per packet | load max |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The call script the gateway will play (en pack, `digits`, `repeat` readings):
/// chosen as the one closest to `secs` long. Returns (code, repeat, frames).
fn choose_script(secs: f64) -> (String, u32, u64) {
    let pack = PromptLibrary::builtin()
        .get("en")
        .expect("built-in en pack");
    let mut best = (String::new(), 1, 0u64);
    let mut best_err = f64::MAX;
    for len in 4..=10usize {
        let code: String = "4815260937".chars().take(len).collect();
        let digits: Vec<u8> = code.bytes().map(|b| b - b'0').collect();
        for repeat in 1..=10u32 {
            let frames = CallScript::build(&pack, &digits, repeat).frame_count(&pack);
            let err = (frames as f64 * 0.02 - secs).abs();
            if err < best_err {
                best_err = err;
                best = (code.clone(), repeat, frames);
            }
        }
    }
    best
}

/// One sample of a process: when, CPU so far (ns), RSS and peak RSS (bytes), load.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_ns: u64,
    rss: u64,
    hwm: u64,
    load1: f64,
}

fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Some(Sample {
        at: Instant::now(),
        cpu_ns: cpu * TICK_NS,
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
        load1: load1(),
    })
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Samples a process every 250 ms until stopped or it is gone.
struct Monitor {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Monitor {
    fn start(pid: u32) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match sample(pid) {
                        Some(s) => samples.lock().expect("samples").push(s),
                        None => return,
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        Monitor {
            stop,
            samples,
            thread,
        }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let s = self.samples.lock().expect("samples");
        s.clone()
    }
}

/// Highest CPU % over any window of about 2 s between samples.
fn peak_cpu_pct(samples: &[Sample]) -> f64 {
    let mut best = 0.0f64;
    let mut j = 0;
    for i in 0..samples.len() {
        while j < i && samples[i].at - samples[j].at > Duration::from_secs(2) {
            j += 1;
        }
        if j > 0 && samples[i].at - samples[j - 1].at >= Duration::from_secs(2) {
            let (a, b) = (samples[j - 1], samples[i]);
            let wall = (b.at - a.at).as_nanos() as f64;
            best = best.max(100.0 * b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / wall);
        }
    }
    best
}

fn ms_pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Fills in the receiver's figures: packets, spacing, call length.
fn media_figures(f: &mut Figures, got: &mut Received, expected: u64, planned_s: f64) {
    got.deviations.sort_unstable();
    f.received = got.packets as f64;
    f.expected = expected as f64;
    f.streams = got.streams.len() as f64;
    f.dev_p50 = pct(&got.deviations, 0.5);
    f.dev_p99 = pct(&got.deviations, 0.99);
    f.dev_max = pct(&got.deviations, 1.0);
    f.len_planned = planned_s;
    let lens: Vec<f64> = got
        .streams
        .iter()
        .map(|s| (s.last_ns - s.first_ns) as f64 / 1e9 + 0.02)
        .collect();
    f.len_mean = lens.iter().sum::<f64>() / lens.len().max(1) as f64;
    f.len_max = lens.iter().copied().fold(0.0, f64::max);
}

fn quiet(c: &mut Command, dir: &Path) {
    c.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

/// The SIPp callee on core 1: answers with the receiver's port, logs messages with times.
fn start_callee(dir: &Path, rx_port: u16) -> (Child, u16) {
    let port = free_port();
    let mut c = Command::new("taskset");
    c.args(["-c", "1", "sipp", "-sf"])
        .arg(scenarios().join("uas_rtp_sink.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin"])
        .args(["-set", "rx_port", &rx_port.to_string()])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("callee_messages.log"))
        .env("TZ", "UTC");
    quiet(&mut c, dir);
    let child = c.spawn().expect("sipp callee (is sipp installed?)");
    std::thread::sleep(Duration::from_millis(300));
    (child, port)
}

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sipp")
}

fn stop_child(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..100 {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "2026-11-28 09:51:22.352055" (UTC) -> ns since the epoch.
fn parse_sipp_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.')?;
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let us: i64 = frac.get(..6)?.parse().ok()?;
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    Some(secs * 1_000_000_000 + us * 1000)
}

/// First INVITE per destination number in the callee's message log: number -> ns.
fn invites_seen(log: &Path) -> HashMap<String, i64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = HashMap::new();
    let mut at = None;
    for line in text.lines() {
        if let Some(ts) = line.strip_prefix("-----------------------------------------------") {
            at = parse_sipp_time(ts);
        } else if let Some(rest) = line.trim_start().strip_prefix("INVITE sip:") {
            if let (Some(at), Some((user, _))) = (at, rest.split_once('@')) {
                out.entry(user.to_string()).or_insert(at);
            }
        }
    }
    out
}

fn epoch_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The `otpdial` binary: cargo builds it, in the same (bench = release) profile,
/// before it builds a benchmark, and names it here.
fn gateway_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_otpdial"));
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

struct Plan {
    code: String,
    repeat: u32,
    frames: u64,
}

impl Plan {
    fn secs(&self) -> f64 {
        self.frames as f64 * 0.02
    }
}

#[allow(clippy::too_many_arguments)]
fn gateway_config(
    dir: &Path,
    n: usize,
    http: u16,
    sip: u16,
    callee: u16,
    plan: &Plan,
    fifo: u8,
    database_url: &Option<String>,
) -> PathBuf {
    let db = database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/gateway.db", dir.display()));
    // RTP on even ports, RTCP on the odd one: 2 per call, below the ephemeral range.
    let rtp_last = 10_000 + 2 * n + 200;
    let cfg = format!(
        r#"
[http]
listen = "127.0.0.1:{http}"
[database]
url = "{db}"
[sip]
listen = "127.0.0.1:{sip}"
rtp_ports = "10000-{rtp_last}"
[media]
realtime_priority = {fifo}
[[api.keys]]
name = "bench"
hash = "{hash}"
scopes = ["verify", "admin"]
[verification]
code_length = {code_len}
repeat = {repeat}
default_locale = "en"
allow_unregistered_numbers = true
[limits]
per_number = "1000000/1m"
per_user = "1000000/1m"
per_api_key = "1000000/1m"
global_calls_per_second = 0
[fraud]
default_daily_budget = 100000000
[dialer]
max_concurrent_calls = 0
[[trunks]]
name = "bench"
proxy = "sip:127.0.0.1:{callee}"
from = "sip:+31508200000@127.0.0.1"
codecs = ["PCMA"]
max_concurrent_calls = {slots}
"#,
        hash = otpdial::api::hash_token(TOKEN),
        code_len = plan.code.len(),
        repeat = plan.repeat,
        slots = n + 100,
    );
    let path = dir.join("otpdial.toml");
    std::fs::write(&path, cfg).expect("write config");
    path
}

/// One start request: when it left (epoch ns), its latency, and the id if it was 201.
struct Started {
    number: String,
    sent_ns: i64,
    latency_ms: f64,
    id: Option<String>,
}

/// Drives the gateway: N starts at a fixed rate; returns them once all are answered.
async fn drive(base: &str, n: usize, ramp: Duration, plan: &Plan, seq0: usize) -> Vec<Started> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let interval = ramp.div_f64(n as f64);
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(t0 + interval.mul_f64(i as f64)).await;
        let (http, url, code) = (
            http.clone(),
            format!("{base}/v1/verifications"),
            plan.code.clone(),
        );
        let number = format!("+3162{:07}", (seq0 + i) % 10_000_000);
        tasks.push(tokio::spawn(async move {
            let sent_ns = epoch_ns();
            let t = Instant::now();
            let resp = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "to": number, "code": code }))
                .send()
                .await;
            let id = match resp {
                Ok(r) if r.status() == 201 => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string)),
                Ok(r) => {
                    eprintln!("start answered {}", r.status());
                    None
                }
                Err(e) => {
                    eprintln!("start failed: {e}");
                    None
                }
            };
            Started {
                number,
                sent_ns,
                latency_ms: t.elapsed().as_secs_f64() * 1000.0,
                id,
            }
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(s) = t.await {
            out.push(s);
        }
    }
    out
}

/// Call status of each verification over the API: (completed, other statuses).
async fn call_outcomes(base: &str, ids: &[String]) -> (usize, HashMap<String, usize>) {
    let http = reqwest::Client::new();
    let mut pending: Vec<String> = ids.to_vec();
    let mut completed = 0;
    let mut other = HashMap::new();
    for round in 0..6 {
        let mut still = Vec::new();
        other.clear();
        for chunk in pending.chunks(32) {
            let mut tasks = Vec::new();
            for id in chunk {
                let (http, url, id) = (
                    http.clone(),
                    format!("{base}/v1/verifications/{id}"),
                    id.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let status = match http.get(url).bearer_auth(TOKEN).send().await {
                        Ok(r) => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["call"]["status"].as_str().map(str::to_string))
                            .unwrap_or_else(|| "unreadable".into()),
                        Err(_) => "unreachable".into(),
                    };
                    (id, status)
                }));
            }
            for t in tasks {
                if let Ok((id, status)) = t.await {
                    match status.as_str() {
                        "completed" => completed += 1,
                        "queued" | "dialing" | "ringing" | "answered" if round < 5 => {
                            still.push(id)
                        }
                        _ => *other.entry(status).or_insert(0) += 1,
                    }
                }
            }
        }
        if still.is_empty() {
            break;
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (completed, other)
}

/// Waits until packets stop arriving for 1.5 s (or `limit`); returns when the last
/// packet came, and whether the limit was hit first.
fn wait_quiet(packets: &std::sync::atomic::AtomicU64, limit: Instant) -> (Instant, bool) {
    let mut last = (packets.load(Ordering::Relaxed), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let p = packets.load(Ordering::Relaxed);
        if p != last.0 {
            last = (p, Instant::now());
        } else if p > 0 && last.1.elapsed() > Duration::from_millis(1500) {
            return (last.1, false);
        }
        if Instant::now() > limit {
            return (last.1, true);
        }
    }
}

/// `otpdial serve --config CFG` on core 0, its log in `dir/gateway.log`.
fn start_gateway(bin: &Path, dir: &Path, cfg: &Path) -> Child {
    let log = std::fs::File::create(dir.join("gateway.log")).expect("log file");
    Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .args(["serve", "--config"])
        .arg(cfg)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("otpdial serve")
}

/// Polls `/readyz` for up to 30 s; whether it answered 200.
async fn wait_ready(base: &str) -> bool {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn run_gateway(bin: &Path, n: usize, plan: &Plan, args: &Args, seq0: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Figures {
        load_max: load1(),
        syscalls_per_packet: f64::NAN,
        switches_per_packet: f64::NAN,
        ..Figures::default()
    };
    let rx = start_receiver(n * plan.frames as usize);
    let (callee, callee_port) = start_callee(dir.path(), rx.addr.port());
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free tcp port");
    let cfg = gateway_config(
        dir.path(),
        n,
        http_port,
        free_port(),
        callee_port,
        plan,
        args.fifo,
        &args.database_url,
    );
    let gateway = start_gateway(bin, dir.path(), &cfg);
    let pid = gateway.id();
    let base = format!("http://127.0.0.1:{http_port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(wait_ready(&base)) {
        eprintln!(
            "otpdial serve did not become ready; log:\n{}",
            std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
        );
        stop_child(gateway);
        stop_child(callee);
        let _ = rx.finish();
        f.timed_out = true;
        f.failed = n as f64;
        return f;
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = sample(pid).expect("gateway alive");
    let monitor = Monitor::start(pid);
    let ramp = Duration::from_secs_f64(plan.secs());
    // Around the end of the ramp, when about N calls are up.
    let counts = (args.count_secs > 0.0).then(|| {
        let secs = args.count_secs.min(plan.secs() / 2.0);
        let start = Instant::now() + ramp - Duration::from_secs_f64(secs / 2.0);
        count_window(pid, start, secs, Arc::clone(&rx.packets))
    });
    let started = rt.block_on(drive(&base, n, ramp, plan, seq0));
    let limit = idle.at + ramp + ramp.mul_f64(1.5) + Duration::from_secs(30);
    let (last_packet, timed_out) = wait_quiet(&rx.packets, limit);
    let end = sample(pid).unwrap_or(idle);
    let samples = monitor.finish();
    (f.syscalls_per_packet, f.switches_per_packet) = counts
        .and_then(|c| c.join().ok())
        .unwrap_or((f64::NAN, f64::NAN));
    let ids: Vec<String> = started.iter().filter_map(|s| s.id.clone()).collect();
    let (completed, other) = rt.block_on(call_outcomes(&base, &ids));
    if !other.is_empty() {
        eprintln!("{n} calls: not completed: {other:?}");
    }
    stop_child(gateway);
    stop_child(callee);
    let mut got = rx.finish();

    f.timed_out = timed_out;
    f.completed = completed as f64;
    f.failed = (n - completed) as f64;
    let cpu = end.cpu_ns.saturating_sub(idle.cpu_ns) as f64;
    f.cpu_mean_pct = 100.0 * cpu / (last_packet - idle.at).as_nanos().max(1) as f64;
    f.cpu_peak_pct = peak_cpu_pct(&samples);
    f.cpu_per_packet_us = cpu / got.packets.max(1) as f64 / 1000.0;
    let hwm = samples
        .iter()
        .map(|s| s.hwm)
        .max()
        .unwrap_or(0)
        .max(end.hwm);
    f.peak_rss_mb = hwm as f64 / 1e6;
    f.rss_per_call_kb = hwm.saturating_sub(idle.rss) as f64 / n as f64 / 1000.0;
    f.load_max = samples.iter().map(|s| s.load1).fold(f.load_max, f64::max);
    media_figures(&mut f, &mut got, n as u64 * plan.frames, plan.secs());

    let mut http: Vec<f64> = started.iter().map(|s| s.latency_ms).collect();
    http.sort_by(|a, b| a.total_cmp(b));
    f.http_p50 = ms_pct(&http, 0.5);
    f.http_p99 = ms_pct(&http, 0.99);
    let invites = invites_seen(&dir.path().join("callee_messages.log"));
    let mut to_invite: Vec<f64> = started
        .iter()
        .filter_map(|s| {
            invites
                .get(&s.number)
                .map(|&at| (at - s.sent_ns) as f64 / 1e6)
        })
        .collect();
    if to_invite.len() < n {
        eprintln!(
            "{n} calls: {} INVITEs matched in the callee's log",
            to_invite.len()
        );
    }
    to_invite.sort_by(|a, b| a.total_cmp(b));
    f.invite_p50 = ms_pct(&to_invite, 0.5);
    f.invite_p99 = ms_pct(&to_invite, 0.99);
    f
}

/// `Successful call` / `Failed call` (cumulative column) of SIPp's final screen.
fn sipp_counts(dir: &Path) -> (f64, f64) {
    let mut ok = f64::NAN;
    let mut failed = f64::NAN;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.starts_with("uac_rtp_stream") && name.ends_with("_screen.log")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let last_num = |l: &str| {
            l.split(|c: char| !c.is_ascii_digit())
                .rfind(|x| !x.is_empty())
                .and_then(|x| x.parse::<f64>().ok())
        };
        for l in text.lines() {
            let t = l.trim_start();
            if t.starts_with("Successful call") {
                ok = last_num(t).unwrap_or(ok);
            } else if t.starts_with("Failed call") {
                failed = last_num(t).unwrap_or(failed);
            }
        }
    }
    (ok, failed)
}

fn run_sipp(n: usize, plan: &Plan, count_secs: f64) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Figures {
        load_max: load1(),
        syscalls_per_packet: f64::NAN,
        switches_per_packet: f64::NAN,
        ..Figures::default()
    };
    common::write_alaw_wav(
        dir.path(),
        &PromptLibrary::builtin().get("en").expect("en pack"),
    );
    let rx = start_receiver(n * plan.frames as usize);
    let (callee, callee_port) = start_callee(dir.path(), rx.addr.port());
    let ramp_ms = (plan.secs() * 1000.0).round() as u64;
    let call_ms = plan.frames * 20;
    let cpu0 = children_cpu_ns();
    let mut c = Command::new("taskset");
    c.args(["-c", "0", "sipp", "-sf"])
        .arg(scenarios().join("uac_rtp_stream.xml"))
        .arg(format!("127.0.0.1:{callee_port}"))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin"])
        .args(["-p", &free_port().to_string()])
        .args(["-l", &n.to_string(), "-m", &n.to_string()])
        .args(["-r", &n.to_string(), "-rp", &ramp_ms.to_string()])
        .args(["-d", &call_ms.to_string(), "-trace_screen"]);
    quiet(&mut c, dir.path());
    let started = Instant::now();
    let mut uac = c.spawn().expect("sipp caller");
    let pid = uac.id();
    let idle = sample(pid);
    let monitor = Monitor::start(pid);
    let counts = (count_secs > 0.0).then(|| {
        let secs = count_secs.min(plan.secs() / 2.0);
        let start = started + Duration::from_secs_f64(plan.secs() - secs / 2.0);
        count_window(pid, start, secs, Arc::clone(&rx.packets))
    });
    let limit = Duration::from_secs_f64(plan.secs() * 2.5) + Duration::from_secs(30);
    let finished = loop {
        match uac.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = uac.kill();
                let _ = uac.wait();
                break false;
            }
        }
    };
    let wall = started.elapsed();
    let cpu = children_cpu_ns().saturating_sub(cpu0) as f64;
    let samples = monitor.finish();
    (f.syscalls_per_packet, f.switches_per_packet) = counts
        .and_then(|c| c.join().ok())
        .unwrap_or((f64::NAN, f64::NAN));
    stop_child(callee);
    let mut got = rx.finish();
    let (ok, failed) = sipp_counts(dir.path());

    f.timed_out = !finished;
    f.completed = ok;
    f.failed = if ok.is_nan() { n as f64 } else { n as f64 - ok };
    if failed > 0.0 {
        eprintln!("{n} calls: SIPp counted {failed} failed calls");
    }
    f.cpu_mean_pct = 100.0 * cpu / wall.as_nanos().max(1) as f64;
    f.cpu_peak_pct = peak_cpu_pct(&samples);
    f.cpu_per_packet_us = cpu / got.packets.max(1) as f64 / 1000.0;
    let hwm = samples.iter().map(|s| s.hwm).max().unwrap_or(0);
    let base = idle.map_or(0, |s| s.rss);
    f.peak_rss_mb = hwm as f64 / 1e6;
    f.rss_per_call_kb = hwm.saturating_sub(base) as f64 / n as f64 / 1000.0;
    f.load_max = samples.iter().map(|s| s.load1).fold(f.load_max, f64::max);
    f.http_p50 = f64::NAN;
    f.http_p99 = f64::NAN;
    f.invite_p50 = f64::NAN;
    f.invite_p99 = f64::NAN;
    media_figures(&mut f, &mut got, n as u64 * plan.frames, plan.secs());
    f
}

fn ratio_row(n: usize, a: &Figures, b: &Figures) -> String {
    let r = |x: f64, y: f64| format!("{:.2}×", x / y);
    format!(
        "| {n} | **otpdial / SIPp** | | {} / {} | {} | {} | {} | | | {} | {} | | | {} | |",
        r(a.cpu_mean_pct, b.cpu_mean_pct),
        r(a.cpu_peak_pct, b.cpu_peak_pct),
        r(a.cpu_per_packet_us, b.cpu_per_packet_us),
        r(a.received, b.received),
        format_args!(
            "{} / {} / {}",
            r(a.dev_p50, b.dev_p50),
            r(a.dev_p99, b.dev_p99),
            r(a.dev_max, b.dev_max)
        ),
        r(a.peak_rss_mb, b.peak_rss_mb),
        r(a.rss_per_call_kb, b.rss_per_call_kb),
        if a.syscalls_per_packet.is_nan() || b.syscalls_per_packet.is_nan() {
            String::new()
        } else {
            r(a.syscalls_per_packet, b.syscalls_per_packet)
        },
    )
}

/// Counts the system calls and context switches of process `pid` (all threads) with
/// `perf stat` for `secs` from `start` on, and the RTP packets the receiver got
/// meanwhile. Events, not times: load on the machine does not change them much.
/// Returns (syscalls, switches) per packet; NaN when perf is missing or fails.
fn count_window(
    pid: u32,
    start: Instant,
    secs: f64,
    packets: Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<(f64, f64)> {
    std::thread::spawn(move || {
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        let p0 = packets.load(Ordering::Relaxed);
        let out = Command::new("taskset")
            .args(["-c", "1", "perf", "stat", "-x", ",", "--no-big-num"])
            .args(["-e", "raw_syscalls:sys_enter,context-switches"])
            .args(["-p", &pid.to_string(), "--", "sleep", &format!("{secs}")])
            .stdout(Stdio::null())
            .output();
        let p1 = packets.load(Ordering::Relaxed);
        let Ok(out) = out else {
            return (f64::NAN, f64::NAN);
        };
        let text = String::from_utf8_lossy(&out.stderr);
        let value = |event: &str| {
            text.lines()
                .find(|l| l.split(',').nth(2).is_some_and(|e| e.trim() == event))
                .and_then(|l| l.split(',').next()?.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let per = (p1.saturating_sub(p0)).max(1) as f64;
        (
            value("raw_syscalls:sys_enter") / per,
            value("context-switches") / per,
        )
    })
}

/// Puts this process (the HTTP client and the receiver) on core 1, beside the callee.
fn pin_self_to_core_1() {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("taskset failed: the bench is not pinned");
    }
}

fn main() {
    let args = parse_args();
    let bin = if args.only == Some(Side::Sipp) {
        PathBuf::new()
    } else if let Some(bin) = &args.otpdial {
        bin.clone()
    } else {
        gateway_binary()
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    pin_self_to_core_1();
    if let Some(duration) = args.soak {
        soak::run(&bin, &args, duration);
        return;
    }
    let (code, repeat, frames) = choose_script(args.secs);
    let plan = Plan {
        code,
        repeat,
        frames,
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    println!(
        "# gateway bench: calls of {:.2} s (code {}, read {}×, en), started at N / {:.2} s; {} CPUs ({cpu_model}); otpdial pacer {}; database {}",
        plan.secs(),
        plan.code,
        plan.repeat,
        plan.secs(),
        cpus,
        if args.fifo > 0 { format!("SCHED_FIFO {}", args.fifo) } else { "normal priority".into() },
        args.database_url.as_deref().map_or("SQLite", |u| u.split(':').next().unwrap_or("?")),
    );
    println!("{HEADER}");
    let _ = std::io::stdout().flush();
    let began = Instant::now();
    let mut alive = [
        args.only != Some(Side::Sipp),
        args.only != Some(Side::Otpdial),
    ];
    let mut seq = 0usize;
    'ns: for &n in &args.ns {
        let mut medians: [Option<Figures>; 2] = [None, None];
        for (k, side) in [Side::Otpdial, Side::Sipp].into_iter().enumerate() {
            if !alive[k] {
                continue;
            }
            let mut runs = Vec::new();
            for run in 0..args.runs {
                // A run takes the ramp, a call, and start-up and wind-down.
                let need = Duration::from_secs_f64(2.0 * plan.secs() + 15.0);
                if began.elapsed() + need > args.budget {
                    println!("(budget of {} s reached)", args.budget.as_secs());
                    break 'ns;
                }
                let f = match side {
                    Side::Otpdial => run_gateway(&bin, n, &plan, &args, seq),
                    Side::Sipp => run_sipp(n, &plan, args.count_secs),
                };
                seq += n;
                let label = match side {
                    Side::Otpdial => "otpdial",
                    Side::Sipp => "SIPp",
                };
                if args.runs > 1 {
                    println!("{}", f.row(n, &format!("{label} run {}", run + 1)));
                } else {
                    println!("{}", f.row(n, label));
                }
                let _ = std::io::stdout().flush();
                runs.push(f);
            }
            if runs.is_empty() {
                continue;
            }
            let m = Figures::median(&runs);
            if args.runs > 1 {
                let label = match side {
                    Side::Otpdial => "otpdial median",
                    Side::Sipp => "SIPp median",
                };
                println!("{}", m.row(n, label));
            }
            if !m.ok() {
                println!("({side:?} failed at {n} calls: no larger N for it)");
                alive[k] = false;
            }
            medians[k] = Some(m);
        }
        if let [Some(a), Some(b)] = &medians {
            println!("{}", ratio_row(n, a, b));
        }
        let _ = std::io::stdout().flush();
        if !alive.iter().any(|&a| a) {
            break;
        }
    }
}
