//! Soak (issue 20), part of the gateway bench: `cargo bench --bench gateway -- --soak
//! 30m --n 500` keeps about N calls up for the whole duration and records, every
//! minute, what would show a leak: the gateway's RSS, its open file descriptors
//! (`/proc/PID/fd`), its threads, the database size (SQLite: the file with its `-wal`
//! and `-shm`), and the p99 of |packet spacing − 20 ms| of that minute's RTP.
//!
//! Same layout as the gateway bench (`otpdial serve` alone on core 0, the SIPp callee
//! and this process on core 1, the kernel-timestamping receiver). Calls are started at
//! the constant rate N / L (L = the call length, about 22 s), so a new call starts as
//! an old one ends and about N are up from the end of the first L on; the table shows
//! how many were up at each minute (`otpdial_active_calls` of `/metrics`).
//!
//! The table is printed as it grows and written to
//! `target/bench-results/soak-<UTC time>.md`. Only the gateway bench includes this
//! file (`#[path]`): it uses that bench's helpers.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{free_port, pct, start_receiver, Receiver};
use crate::{
    choose_script, gateway_config, sample, start_callee, start_gateway, stop_child, wait_quiet,
    wait_ready, Args, Plan, TOKEN,
};

/// One row per this long.
const MINUTE: Duration = Duration::from_secs(60);

/// Starts that were answered 201 and those that were not.
#[derive(Default)]
struct Starts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One minute's figures.
struct Row {
    minute: u64,
    up: u64,
    started: u64,
    failed: u64,
    rss_mb: f64,
    fds: usize,
    threads: u64,
    db_mb: f64,
    packets: u64,
    lost: u64,
    dev_p50: f64,
    dev_p99: f64,
}

const HEADER: &str = "| min | calls up | started / failed (total) | RSS MB | open fds | threads | database MB | packets | lost | spacing dev p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|---|";

impl Row {
    fn line(&self) -> String {
        let db = if self.db_mb.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}", self.db_mb)
        };
        format!(
            "| {} | {} | {} / {} | {:.1} | {} | {} | {db} | {} | {} | {:.3} / {:.3} |",
            self.minute,
            self.up,
            self.started,
            self.failed,
            self.rss_mb,
            self.fds,
            self.threads,
            self.packets,
            self.lost,
            self.dev_p50,
            self.dev_p99,
        )
    }
}

/// Open file descriptors of `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The SQLite database with its `-wal` and `-shm` files, MB; NaN for PostgreSQL.
fn sqlite_mb(db: &Path, postgres: bool) -> f64 {
    if postgres {
        return f64::NAN;
    }
    let len = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
    };
    (len("") + len("-wal") + len("-shm")) as f64 / 1e6
}

async fn active_calls(http: &reqwest::Client, base: &str) -> u64 {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("otpdial_active_calls{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Starts verifications at one per `every` until `until`; each start is its own task.
async fn feed(
    base: String,
    plan_code: String,
    every: Duration,
    until: tokio::time::Instant,
    starts: Arc<Starts>,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let t0 = tokio::time::Instant::now();
    for i in 0u64.. {
        let at = t0 + every.mul_f64(i as f64);
        if at >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        let (http, url, code, starts) = (
            http.clone(),
            format!("{base}/v1/verifications"),
            plan_code.clone(),
            Arc::clone(&starts),
        );
        let number = format!("+3163{:07}", i % 10_000_000);
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({ "to": number, "code": code }))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 201 => starts.ok.fetch_add(1, Ordering::Relaxed),
                _ => starts.failed.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
}

/// What the sampler needs to read a row.
struct Probe<'a> {
    pid: u32,
    base: &'a str,
    db: &'a Path,
    postgres: bool,
    rx: &'a Receiver,
    starts: &'a Starts,
}

impl Probe<'_> {
    async fn row(&self, minute: u64, http: &reqwest::Client, before: &mut (u64, u64)) -> Row {
        let up = active_calls(http, self.base).await;
        let (mut devs, lost) = self.rx.take_window();
        devs.sort_unstable();
        let packets = self.rx.packets.load(Ordering::Relaxed);
        let rss = sample(self.pid).map_or(0, |s| s.rss);
        let row = Row {
            minute,
            up,
            started: self.starts.ok.load(Ordering::Relaxed),
            failed: self.starts.failed.load(Ordering::Relaxed),
            rss_mb: rss as f64 / 1e6,
            fds: open_fds(self.pid),
            threads: threads(self.pid),
            db_mb: sqlite_mb(self.db, self.postgres),
            packets: packets - before.0,
            lost: lost.saturating_sub(before.1),
            dev_p50: pct(&devs, 0.5),
            dev_p99: pct(&devs, 0.99),
        };
        *before = (packets, lost.max(before.1));
        row
    }
}

/// Runs the soak: N calls up for `duration`, a row per minute.
pub(crate) fn run(bin: &Path, args: &Args, duration: Duration) {
    let n = args.ns.first().copied().unwrap_or(500);
    let (code, repeat, frames) = choose_script(args.secs);
    let plan = Plan {
        code,
        repeat,
        frames,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = start_receiver(n * 50 * 60);
    let (callee, callee_port) = start_callee(dir.path(), rx.addr.port());
    let http_port = free_port_tcp();
    let cfg = gateway_config(
        dir.path(),
        n,
        http_port,
        free_port(),
        callee_port,
        &plan,
        args.fifo,
        &args.database_url,
    );
    let gateway = start_gateway(bin, dir.path(), &cfg);
    let pid = gateway.id();
    let base = format!("http://127.0.0.1:{http_port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
        return;
    }
    let mut out = results_file();
    let title = format!(
        "# soak: {n} calls of {:.2} s (code {}, read {}x) started at {n} / {:.2} s for {}, {}; calls up, started and failed are counts at the minute's end",
        plan.secs(),
        plan.code,
        plan.repeat,
        plan.secs(),
        humantime::format_duration(duration),
        args.database_url.as_deref().map_or("SQLite", |u| u.split(':').next().unwrap_or("?")),
    );
    emit(&mut out, &format!("{title}\n\n{HEADER}"));
    let starts = Arc::new(Starts::default());
    let probe = Probe {
        pid,
        base: &base,
        db: &dir.path().join("gateway.db"),
        postgres: args.database_url.is_some(),
        rx: &rx,
        starts: &starts,
    };
    rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        let every = Duration::from_secs_f64(plan.secs() / n as f64);
        let feeder = tokio::spawn(feed(
            base.clone(),
            plan.code.clone(),
            every,
            t0 + duration,
            Arc::clone(&starts),
        ));
        let http = reqwest::Client::new();
        let mut before = (0, 0);
        let minutes = duration.as_secs().div_ceil(60).max(1);
        for minute in 1..=minutes {
            tokio::time::sleep_until(t0 + MINUTE * minute as u32).await;
            let row = probe.row(minute, &http, &mut before).await;
            emit(&mut out, &row.line());
        }
        let _ = feeder.await;
    });
    finish(&rt, &probe, &mut out, &plan);
    stop_child(gateway);
    stop_child(callee);
    let _ = rx.finish();
}

/// After the last start: the calls still up play to their end; one more row, then the
/// gateway's own count of calls by outcome.
fn finish(
    rt: &tokio::runtime::Runtime,
    probe: &Probe<'_>,
    out: &mut Option<std::fs::File>,
    plan: &Plan,
) {
    let limit = std::time::Instant::now() + Duration::from_secs_f64(plan.secs() * 2.0 + 30.0);
    let _ = wait_quiet(&probe.rx.packets, limit);
    let http = reqwest::Client::new();
    let mut before = (0, 0);
    let row = rt.block_on(probe.row(0, &http, &mut before));
    emit(
        out,
        &format!(
            "\nAfter the calls ended: RSS {:.1} MB, {} open fds, {} threads, database {} MB, {} calls up",
            row.rss_mb,
            row.fds,
            row.threads,
            if row.db_mb.is_nan() { "-".into() } else { format!("{:.2}", row.db_mb) },
            row.up
        ),
    );
    let metrics = rt.block_on(async {
        let r = http
            .get(format!("{}/metrics", probe.base))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    });
    let finished: Vec<String> = metrics
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("otpdial_calls_finished"))
        .map(str::to_owned)
        .collect();
    emit(out, &format!("Calls by outcome: {}", finished.join("; ")));
}

fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free tcp port")
}

/// `target/bench-results/soak-<UTC>.md`, created; None (print only) if it cannot be.
fn results_file() -> Option<std::fs::File> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let path = dir.join(format!("soak-{stamp}.md"));
    let file = std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path));
    match file {
        Ok(f) => {
            println!("(results also in {})", path.display());
            Some(f)
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            None
        }
    }
}

/// Prints a line (or several) and appends it to the results file.
fn emit(out: &mut Option<std::fs::File>, text: &str) {
    println!("{text}");
    let _ = std::io::stdout().flush();
    if let Some(f) = out {
        let _ = writeln!(f, "{text}");
    }
}
