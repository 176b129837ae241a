//! Real processes for the fault tests: the `otpdial serve` binary as a child process
//! ([`ServeProc`]) with its config ([`ServeConfig`]), and free ports for children.
//! SIPp callees and the UDP black hole are in `callee.rs`, the throwaway PostgreSQL
//! server in `tempgres.rs`.
//!
//! Nothing here sleeps for a fixed time in place of an event: every wait polls for the
//! thing it waits for (an HTTP answer, a bound socket, an exit status) up to a deadline,
//! and a deadline that passes fails the test with the process's log.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use otpdial::verify::VerificationView;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{fresh_database, Db, ADMIN_TOKEN, TOKEN};

// ---- ports ----------------------------------------------------------------------------

/// Ports handed out by [`free_tcp_port`] and [`free_sip_port`]: below the RTP range the
/// gateways use (20000-29999) and below Linux's ephemeral range (32768-60999), so that
/// no outgoing connection or RTP socket of a parallel test can take a port between
/// its pick and the child's bind. Random within the range, checked by binding.
const PICK_RANGE: std::ops::Range<u16> = 10_000..20_000;

/// Ports given out by this test binary, never given out twice (a restarted child
/// binds its port again; another test must not get it in between).
fn taken() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: std::sync::OnceLock<Mutex<HashSet<u16>>> = std::sync::OnceLock::new();
    TAKEN.get_or_init(Mutex::default)
}

fn pick_port(free: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(PICK_RANGE);
        let mut taken = taken().lock().unwrap_or_else(|e| e.into_inner());
        if !taken.contains(&port) && free(port) {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port in {PICK_RANGE:?} after 1000 tries");
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a child's HTTP listener or
/// a throwaway PostgreSQL). Not in the ephemeral range; never handed out twice.
pub fn free_tcp_port() -> u16 {
    pick_port(tcp_free)
}

/// A port free for both UDP and TCP on 127.0.0.1: the gateway's SIP listener binds
/// both on the same number.
pub fn free_sip_port() -> u16 {
    pick_port(|p| udp_free(p) && tcp_free(p))
}

/// Whether some process has a UDP socket bound to `port` (any address), read from
/// /proc/net/udp{,6} so that probing never takes the port itself.
pub fn udp_port_bound(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                line.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| local.ends_with(&hex))
            })
        })
    })
}

/// Polls `ready` every 20 ms until it holds; false if `within` passes first.
pub async fn poll_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test prompt pack: 40 ms tones, a call is over in under a second.
pub fn fast_prompts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts")
}

/// A distinct valid Dutch mobile number per `i` (+3162xxxxxxx), for tests that place
/// many calls: the per-number limit and the callee's count are per number.
pub fn nl_mobile(i: u32) -> String {
    format!("+3162{:07}", i % 10_000_000)
}

// ---- configuration ----------------------------------------------------------------------

/// The TOML config a [`ServeProc`] runs with, as a table that tests adjust.
///
/// Starts from test defaults: HTTP and SIP on 127.0.0.1 (ports filled in by
/// [`ServeProc::start`]), RTP in 20000-29999, the fast test prompt pack, locale `en`,
/// the code read once, unregistered numbers allowed, a generous per-API-key limit, the
/// test tokens [`TOKEN`] (verify) and [`ADMIN_TOKEN`] (admin), no trunks. The database
/// is a SQLite file in the process's temp dir unless [`ServeConfig::database`] says
/// otherwise.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    table: toml::Table,
    env: Vec<(String, String)>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeConfig {
    pub fn new() -> ServeConfig {
        let text = format!(
            r#"
[sip]
rtp_ports = "20000-29999"
[prompts]
dir = {prompts:?}
[verification]
default_locale = "en"
repeat = 1
allow_unregistered_numbers = true
[limits]
per_api_key = "100000/1m"
[database]
acquire_timeout = "10s"
[[api.keys]]
name = "auth-service"
hash = "{verify}"
scopes = ["verify"]
[[api.keys]]
name = "ops"
hash = "{admin}"
scopes = ["admin"]
"#,
            prompts = fast_prompts_dir().display().to_string(),
            verify = otpdial::api::hash_token(TOKEN),
            admin = otpdial::api::hash_token(ADMIN_TOKEN),
        );
        ServeConfig {
            table: toml::from_str(&text).expect("default test config"),
            env: Vec::new(),
        }
    }

    /// A config on a fresh database of the kind: for PostgreSQL a new database on the
    /// test server (`OTPDIAL_TEST_PG`), for SQLite a file in the process's temp dir.
    pub async fn on(db: Db) -> ServeConfig {
        let cfg = ServeConfig::new();
        match db {
            Db::Sqlite => cfg,
            Db::Postgres => {
                let unused = tempfile::tempdir().expect("tempdir");
                cfg.database(&fresh_database(Db::Postgres, unused.path()).await)
            }
        }
    }

    /// `[database] url`. Two processes given the same URL share the work.
    pub fn database(self, url: &str) -> ServeConfig {
        self.set("database.url", url)
    }

    /// Plays the built-in packs (`en`, `nl`; calls of several seconds) instead of the
    /// fast test pack: for tests that need a call to last.
    pub fn builtin_prompts(mut self) -> ServeConfig {
        self.table.remove("prompts");
        self
    }

    /// Adds a `[[trunks]]` entry for a UDP trunk on 127.0.0.1:`port`, with a caller ID,
    /// PCMA/PCMU and a 20 s ring timeout; `extra` is more TOML keys of that trunk,
    /// e.g. `"priority = 20\nmax_concurrent_calls = 20"`.
    pub fn trunk(mut self, name: &str, port: u16, extra: &str) -> ServeConfig {
        let text = format!(
            "name = {name:?}\nproxy = \"sip:127.0.0.1:{port}\"\nfrom = \"sip:+31508200000@otpdial.test\"\ncodecs = [\"PCMA\", \"PCMU\"]\nring_timeout = \"20s\"\n"
        );
        let mut trunk: toml::Table = toml::from_str(&text).expect("trunk toml");
        let extra: toml::Table =
            toml::from_str(extra).unwrap_or_else(|e| panic!("extra trunk keys {extra:?}: {e}"));
        merge(&mut trunk, extra);
        let trunks = self
            .table
            .entry("trunks")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        match trunks {
            toml::Value::Array(list) => list.push(toml::Value::Table(trunk)),
            other => panic!("`trunks` is not an array: {other}"),
        }
        self
    }

    /// Deep-merges TOML text into the config: tables merge key by key, any other value
    /// (arrays too) replaces what was there. E.g. `"[dialer]\nshutdown_grace = \"5s\""`.
    pub fn merge_toml(mut self, text: &str) -> ServeConfig {
        let extra: toml::Table =
            toml::from_str(text).unwrap_or_else(|e| panic!("merge_toml {text:?}: {e}"));
        merge(&mut self.table, extra);
        self
    }

    /// Sets one key by dotted path (`"verification.repeat"`); numeric segments index
    /// arrays (`"trunks.0.priority"`). Missing tables are created.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> ServeConfig {
        let mut root = toml::Value::Table(std::mem::take(&mut self.table));
        let parts: Vec<&str> = path.split('.').collect();
        let (last, init) = parts.split_last().expect("non-empty path");
        let mut node = &mut root;
        for part in init {
            node = slot(node, part, path);
        }
        *slot(node, last, path) = value.into();
        let toml::Value::Table(table) = root else {
            unreachable!("the root stays a table")
        };
        self.table = table;
        self
    }

    /// An environment variable for the child (e.g. `RUST_LOG`, a `*_env` secret).
    pub fn env(mut self, key: &str, value: &str) -> ServeConfig {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("config serialises")
    }

    fn get_str(&self, path: &str) -> Option<String> {
        let mut node = &self.table;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let v = node.get(part)?;
            if parts.peek().is_none() {
                return v.as_str().map(str::to_owned);
            }
            node = v.as_table()?;
        }
        None
    }
}

/// The value at `part` below `node`: a table key (created as an empty table if
/// missing) or an array index.
fn slot<'a>(node: &'a mut toml::Value, part: &str, path: &str) -> &'a mut toml::Value {
    match node {
        toml::Value::Table(t) => t
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new())),
        toml::Value::Array(list) => {
            let i: usize = part
                .parse()
                .unwrap_or_else(|_| panic!("{path}: {part} must be an array index"));
            list.get_mut(i)
                .unwrap_or_else(|| panic!("{path}: no element {i}"))
        }
        other => panic!("{path}: {part} is below {other}, not a table or array"),
    }
}

/// Tables merge key by key; anything else from `extra` replaces.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

// ---- otpdial serve as a child process ------------------------------------------------

/// How long a start may take until `/healthz` answers (migrations on PostgreSQL
/// included) before the test fails with the log.
const START_WITHIN: Duration = Duration::from_secs(20);

/// `otpdial serve --config FILE` as a child process, on its own HTTP and SIP ports.
///
/// The config, the child's log (stderr and stdout) and, by default, its SQLite
/// database live in a temp dir that the struct owns. Dropping it kills the child
/// (SIGKILL) and removes the dir.
pub struct ServeProc {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    http_port: u16,
    sip_port: u16,
    db_url: String,
    starts: u32,
    pub http: reqwest::Client,
}

impl ServeProc {
    /// Writes the config (with a free HTTP port and a free SIP port filled in) and
    /// starts the binary; returns once `GET /healthz` answers 200. Fails the test,
    /// showing the log, if the process exits or does not answer within 20 s.
    pub async fn start(cfg: ServeConfig) -> ServeProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = free_tcp_port();
        let sip_port = free_sip_port();
        let db_url = cfg
            .get_str("database.url")
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("otpdial.db").display()));
        let env = cfg.env.clone();
        let cfg = cfg
            .set("http.listen", format!("127.0.0.1:{http_port}"))
            .set("sip.listen", format!("127.0.0.1:{sip_port}"))
            .set("database.url", db_url.clone());
        let config_path = dir.path().join("otpdial.toml");
        std::fs::write(&config_path, cfg.to_toml()).expect("write config");
        let log_path = dir.path().join("serve.log");
        let mut proc = ServeProc {
            config_path,
            log_path,
            env,
            child: None,
            exit: None,
            http_port,
            sip_port,
            db_url,
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            dir,
        };
        proc.spawn_and_wait().await;
        proc
    }

    async fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "the process is still running");
        self.starts += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open log");
        writeln!(log, "==== otpdial serve, start {} ====", self.starts).expect("write log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otpdial"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // The config file is the whole truth: no OTPDIAL_ overrides from the test's
        // environment (OTPDIAL_TEST_PG and the like have no `__` and are ignored anyway).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTPDIAL_") {
                cmd.env_remove(k);
            }
        }
        // Plain text in the log file (tracing colours it otherwise).
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start otpdial serve"));
        self.exit = None;
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "otpdial serve exited with {status} during start-up\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self
                .http
                .get(self.url("/healthz"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "otpdial serve: /healthz did not answer within {START_WITHIN:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:PORT` (the same across restarts).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The gateway's SIP port on 127.0.0.1 (UDP and TCP).
    pub fn sip_port(&self) -> u16 {
        self.sip_port
    }

    /// The database URL it runs on (give it to a second instance to share the work).
    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    /// The temp dir with the config, the log and (by default) the SQLite database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the process has ended (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.exit = Some(status);
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    fn signal(&self, sig: Signal) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("signal {sig}: the process is not running"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// `kill -9`: the process dies at once, with whatever it had in flight. Returns
    /// when it is gone (reaped), so a restart can bind its ports again.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("reap otpdial serve");
        self.exit = Some(status);
        status
    }

    /// SIGTERM (graceful shutdown); see [`ServeProc::wait_exit`].
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGINT (Ctrl-C), the other graceful shutdown.
    pub fn sigint(&self) {
        self.signal(Signal::SIGINT);
    }

    /// Waits for the process to exit; fails the test with the log if it is still
    /// running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "otpdial serve still running {within:?} after the signal\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the binary again on the same config, ports and database, after
    /// [`ServeProc::kill9`] or [`ServeProc::wait_exit`]. The log keeps both runs.
    pub async fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "restart: stop it first (kill9, or sigterm + wait_exit)"
        );
        self.spawn_and_wait().await;
    }

    /// Everything the process wrote (all runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Lines of the log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("panicked"))
            .map(str::to_owned)
            .collect()
    }

    // ---- the HTTP API -------------------------------------------------------------

    /// A request with the verify token; Err when no HTTP answer came (process down).
    pub async fn try_request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    fn expect_answer<T>(&self, what: &str, r: Result<T, reqwest::Error>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}\n{}", self.log()))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .try_request(reqwest::Method::POST, path, TOKEN, Some(&body))
            .await;
        self.expect_answer(path, r)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(TOKEN, path).await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .try_request(reqwest::Method::GET, path, token, None)
            .await;
        self.expect_answer(path, r)
    }

    /// `POST /v1/verifications`, expecting 201.
    pub async fn start_verification(&self, body: Value) -> VerificationView {
        let (status, v) = self.post("/v1/verifications", body).await;
        assert_eq!(status, StatusCode::CREATED, "start: {v}");
        serde_json::from_value(v).expect("verification object")
    }

    /// `GET /v1/verifications/{id}`. A 503 (database unreachable, e.g. just
    /// after it came back) is retried as `Retry-After` asks, for up to 20 s.
    pub async fn view(&self, id: &str) -> VerificationView {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = self.get(&format!("/v1/verifications/{id}")).await;
            if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            assert_eq!(status, StatusCode::OK, "get {id}: {v}");
            return serde_json::from_value(v).expect("verification object");
        }
    }

    /// Polls until the call of each verification has a final status; fails the test
    /// with the ones still open and the log when `within` passes.
    pub async fn wait_calls_final(
        &self,
        ids: &[String],
        within: Duration,
    ) -> Vec<VerificationView> {
        let deadline = Instant::now() + within;
        let mut done: HashMap<String, VerificationView> = HashMap::new();
        loop {
            for id in ids {
                if !done.contains_key(id) {
                    let v = self.view(id).await;
                    if v.call.status.is_final() {
                        done.insert(id.clone(), v);
                    }
                }
            }
            if done.len() == ids.len() {
                return ids.iter().map(|id| done[id].clone()).collect();
            }
            if Instant::now() >= deadline {
                let open: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
                panic!(
                    "{} of {} calls not final after {within:?}: {open:?}\n{}",
                    open.len(),
                    ids.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::time::Duration;

    use otpdial::domain::CallStatus;
    use serde_json::json;

    use super::*;
    use crate::callee::SippUas;

    #[test]
    fn config_merges_and_sets_keys() {
        let cfg = ServeConfig::new()
            .trunk("a", 5070, "priority = 20")
            .trunk("b", 5080, "")
            .merge_toml("[verification]\nrepeat = 2\n[dialer]\nshutdown_grace = \"5s\"")
            .set("trunks.1.max_concurrent_calls", 20);
        let t: toml::Table = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(t["verification"]["repeat"].as_integer(), Some(2));
        assert_eq!(t["verification"]["default_locale"].as_str(), Some("en"));
        assert_eq!(t["dialer"]["shutdown_grace"].as_str(), Some("5s"));
        assert_eq!(t["trunks"][0]["priority"].as_integer(), Some(20));
        assert_eq!(
            t["trunks"][1]["max_concurrent_calls"].as_integer(),
            Some(20)
        );
        assert_eq!(t["trunks"][1]["proxy"].as_str(), Some("sip:127.0.0.1:5080"));
    }

    #[test]
    fn ports_are_free_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_sip_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| PICK_RANGE.contains(p)));
        let bound = UdpSocket::bind(("127.0.0.1", ports[0])).unwrap();
        assert!(udp_port_bound(ports[0]));
        drop(bound);
        assert!(!udp_port_bound(ports[0]));
    }

    /// The real binary serves one verification that SIPp answers; after kill -9 and
    /// a restart it serves the next one on the same database; SIGTERM ends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_proc_calls_survives_kill9_restart_and_stops_on_sigterm() {
        let callee = SippUas::answer_many(Duration::from_millis(50)).await;
        let cfg = ServeConfig::new().trunk("trunk-a", callee.port(), "");
        let mut gw = ServeProc::start(cfg).await;

        let v = gw
            .start_verification(json!({ "to": nl_mobile(1), "code": "4812" }))
            .await;
        let done = gw
            .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(10))
            .await;
        assert_eq!(done[0].call.status, CallStatus::Completed, "{done:?}");
        assert_eq!(done[0].call.times_played, 1);
        let seen = callee
            .wait_calls(Duration::from_secs(5), |l| l.byes() == 1)
            .await;
        assert_eq!(seen.invites_per_user()[&nl_mobile(1)], 1);
        assert_eq!(seen.max_up, 1);
        assert!(
            callee.rtp().unwrap().datagrams() > 10,
            "RTP reached the sink"
        );

        let status = gw.kill9();
        assert_eq!(status.signal(), Some(9));
        assert!(
            gw.try_request(reqwest::Method::GET, "/healthz", TOKEN, None)
                .await
                .is_err(),
            "nobody answers after kill -9"
        );
        gw.restart().await;
        let again = gw.view(&v.id).await;
        assert_eq!(
            again.call.status,
            CallStatus::Completed,
            "kept in the database"
        );
        let v2 = gw
            .start_verification(json!({ "to": nl_mobile(2), "code": "4812" }))
            .await;
        gw.wait_calls_final(std::slice::from_ref(&v2.id), Duration::from_secs(10))
            .await;
        let seen = callee
            .wait_calls(Duration::from_secs(5), |l| l.byes() == 2)
            .await;
        assert!(seen.invited_twice().is_empty(), "{seen:#?}");
        assert!(gw.log().contains("==== otpdial serve, start 2 ===="));

        gw.sigterm();
        let status = gw.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "graceful exit: {status}\n{}", gw.log());
        assert!(gw.panics().is_empty(), "{}", gw.log());
    }
}
