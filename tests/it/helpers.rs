//! Boots the app and real peers for the tests.

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otpdial::app::{self, DialerMode, RunningApp};
use otpdial::config::{ApiKeySettings, Scope, Settings};
use otpdial::verify::VerificationView;
use reqwest::StatusCode;
use serde_json::Value;

/// For each `name(db: Db)` given, a module `name` with the tests
/// `name::sqlite` and `name::postgres`: the same test on both backends.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::helpers::Db::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Db::Postgres).await;
            }
        }
    )*};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub app: RunningApp,
    pub token: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub const TOKEN: &str = "test-token-verify";
pub const ADMIN_TOKEN: &str = "test-token-admin";

/// Settings for a gateway on loopback with one trunk at `trunk_port`.
///
/// RTP ports stay below Linux's ephemeral range (32768-60999), where the tests bind
/// their receivers and pick SIPp's port (`free_udp_port`): a gateway in a parallel
/// test could otherwise take a port between its pick and SIPp's bind.
pub fn base_settings(trunk_port: u16) -> Settings {
    let mut s = Settings::from_toml(&format!(
        r#"
[http]
listen = "127.0.0.1:0"
[sip]
listen = "127.0.0.1:0"
rtp_ports = "20000-29999"
[verification]
default_locale = "en"
repeat = 2
allow_unregistered_numbers = true
[[trunks]]
name = "trunk-a"
proxy = "sip:127.0.0.1:{trunk_port}"
from = "sip:+31508200000@otpdial.test"
codecs = ["PCMA", "PCMU"]
ring_timeout = "20s"
"#
    ))
    .expect("test settings");
    // Many tests check wrong codes in a row; the back-off of the brute-force
    // guard is tested on its own (api_rules::brute_force_across_verifications).
    s.limits.wrong_check_backoff = Duration::ZERO;
    // A test machine running the suite in parallel can be slow to hand out a
    // connection; the 503-within-a-second behaviour has its own test.
    s.database.acquire_timeout = Duration::from_secs(10);
    s.api.keys = vec![
        ApiKeySettings {
            name: "auth-service".into(),
            hash: otpdial::api::hash_token(TOKEN),
            scopes: vec![Scope::Verify],
        },
        ApiKeySettings {
            name: "ops".into(),
            hash: otpdial::api::hash_token(ADMIN_TOKEN),
            scopes: vec![Scope::Admin],
        },
    ];
    s
}

/// A fresh database of the given kind: a new SQLite file, or a new
/// PostgreSQL database on the test server: `OTPDIAL_TEST_PG` (a URL without the
/// database, e.g. `postgres://postgres@127.0.0.1:5433`, as scripts/test.sh sets it
/// when it starts its own server), else 127.0.0.1:5432; trust auth, database `test`.
pub async fn fresh_database(db: Db, dir: &std::path::Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", dir.join("otpdial.db").display()),
        Db::Postgres => {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let server = test_pg_server();
            let admin = format!("{server}/test");
            let mut conn = sqlx::AnyConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} (trust auth, database test; set OTPDIAL_TEST_PG or run scripts/test.sh): {e}")
                });
            let name = format!("otpdial_t_{}", ulid::Ulid::new()).to_lowercase();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            format!("{server}/{name}")
        }
    }
}

pub async fn spawn_app(settings: Settings, db: Db, mode: DialerMode) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fresh_database(db, dir.path()).await;
    spawn_app_on(settings, url, dir, mode).await
}

/// Starts the app on an existing database (e.g. again after a stop).
pub async fn spawn_app_on(
    mut settings: Settings,
    url: String,
    dir: tempfile::TempDir,
    mode: DialerMode,
) -> TestApp {
    settings.database.url = url;
    let app = app::start(settings, mode).await.expect("app starts");
    TestApp {
        app,
        token: TOKEN.into(),
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl TestApp {
    /// Stops the app, keeping its database for a restart.
    pub async fn stop_keep_db(self) -> (String, tempfile::TempDir) {
        let url = self.app.store_url.clone();
        self.app.stop().await;
        (url, self._dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base_url())
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        metrics_text(&self.http, &self.url("/metrics")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(&self.token, path).await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn start_verification(&self, body: Value) -> VerificationView {
        let (status, v) = self.post("/v1/verifications", body).await;
        assert_eq!(status, StatusCode::CREATED, "start: {v}");
        serde_json::from_value(v).expect("verification object")
    }

    pub async fn view(&self, id: &str) -> VerificationView {
        let (status, v) = self.get(&format!("/v1/verifications/{id}")).await;
        assert_eq!(status, StatusCode::OK, "get: {v}");
        serde_json::from_value(v).expect("verification object")
    }

    /// `call.reason` as GET /v1/verifications/{id} sends it (the wire string).
    pub async fn call_reason(&self, id: &str) -> Option<String> {
        let (status, v) = self.get(&format!("/v1/verifications/{id}")).await;
        assert_eq!(status, StatusCode::OK, "get: {v}");
        v["call"]["reason"].as_str().map(str::to_owned)
    }

    /// Polls until the call reaches a final status.
    pub async fn wait_call_final(&self, id: &str, within: Duration) -> VerificationView {
        let deadline = Instant::now() + within;
        loop {
            let v = self.view(id).await;
            if v.call.status.is_final() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "call still {:?} after {within:?}",
                v.call.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn check(&self, id: &str, code: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/verifications/{id}/check"),
            serde_json::json!({ "code": code }),
        )
        .await
    }
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn sipp_scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// SIPp as a callee (UAS) on 127.0.0.1:`port`, for exactly one call.
pub struct Sipp {
    child: Child,
    pub port: u16,
    log_dir: tempfile::TempDir,
}

impl Sipp {
    pub fn uas(scenario: &str, vars: &[(&str, String)]) -> Sipp {
        Sipp::uas_with_args(scenario, vars, &[])
    }

    /// Waits for SIPp to finish its one call; Ok(()) when its scenario
    /// passed (exit 0), Err with its error log otherwise.
    pub async fn finish(mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let log = std::fs::read_to_string(self.log_dir.path().join("errors.log"))
                        .unwrap_or_default();
                    return Err(format!("sipp exited with {status}: {log}"));
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    let _ = self.child.kill();
                    return Err("sipp did not finish in time".into());
                }
            }
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RTP packet as a loopback receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    pub marker: bool,
    pub payload_len: usize,
}

/// Receives RTP on a loopback socket until `idle` passes without a packet
/// (after the first one) or `within` runs out.
pub fn receive_rtp(socket: &UdpSocket, within: Duration, idle: Duration) -> Vec<Received> {
    let mut out = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut last = Instant::now();
    while start.elapsed() < within {
        match socket.recv_from(&mut buf) {
            Ok((n, _from)) => {
                last = Instant::now();
                if let Ok(p) = rtp_rs::RtpReader::new(&buf[..n]) {
                    out.push(Received {
                        at: last,
                        seq: u16::from(p.sequence_number()),
                        timestamp: p.timestamp(),
                        ssrc: p.ssrc(),
                        payload_type: p.payload_type(),
                        marker: p.mark(),
                        payload_len: p.payload().len(),
                    });
                }
            }
            Err(_) => {
                if !out.is_empty() && last.elapsed() > idle {
                    break;
                }
            }
        }
    }
    out
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---- added for the SIP scenario and Kamailio tests -----------------------------------

impl Sipp {
    /// Like [`Sipp::uas`], with extra SIPp arguments (e.g. `-trace_screen`).
    pub fn uas_with_args(scenario: &str, vars: &[(&str, String)], extra: &[&str]) -> Sipp {
        Self::spawn_uas(scenario, vars, extra, free_udp_port(), "127.0.0.1")
    }

    /// SIPp as a callee on `ip:port` with extra arguments.
    pub fn spawn_uas(
        scenario: &str,
        vars: &[(&str, String)],
        extra: &[&str],
        port: u16,
        ip: &str,
    ) -> Sipp {
        let log_dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(sipp_scenario(scenario))
            .args(["-i", ip, "-mi", ip])
            .args(["-p", &port.to_string()])
            .args(["-m", "1", "-timeout", "90s", "-nostdin"])
            .arg("-trace_err")
            .arg("-error_file")
            .arg(log_dir.path().join("errors.log"))
            .args(extra)
            .current_dir(log_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.args(["-set", k, v]);
        }
        let child = cmd
            .spawn()
            .expect("sipp runs (install Debian package sip-tester: scripts/test.sh does)");
        std::thread::sleep(Duration::from_millis(200));
        Sipp {
            child,
            port,
            log_dir,
        }
    }

    /// Waits for SIPp like [`Sipp::finish`] and returns its `-trace_screen` output.
    pub async fn finish_with_screen(mut self, within: Duration) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    let log = std::fs::read_to_string(self.log_dir.path().join("errors.log"))
                        .unwrap_or_default();
                    return Err(format!("sipp exited with {status}: {log}"));
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    let _ = self.child.kill();
                    return Err("sipp did not finish in time".into());
                }
            }
        }
        let screen = std::fs::read_dir(self.log_dir.path())
            .ok()
            .and_then(|entries| {
                entries
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().ends_with("_screen.log"))
            })
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .unwrap_or_default();
        Ok(screen)
    }
}

/// RTP packets the gateway sends for `digits` read `repeat` times with the
/// built-in `en` pack: every frame of the call script.
pub fn expected_frames(digits: &[u8], repeat: u32) -> usize {
    let lib = otpdial::media::PromptLibrary::builtin();
    let pack = lib.get("en").expect("en pack");
    otpdial::media::CallScript::build(&pack, digits, repeat).frame_count(&pack) as usize
}

/// The PostgreSQL server of the tests, without a database or trailing slash.
pub fn test_pg_server() -> String {
    std::env::var("OTPDIAL_TEST_PG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// `GET url` (a `/metrics` endpoint) as text.
/// The value of one sample line of a `/metrics` text, e.g.
/// `otpdial_sip_bans_total` or `name{label="x"}` (0 when absent).
pub fn metric_value(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// Waits until `path` holds at least `min` bytes and stopped growing (two polls 300 ms
/// apart read the same length): a phone finishes writing its recording after the call.
pub(crate) async fn settled_file(
    path: &std::path::Path,
    min: u64,
    within: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    let mut last = 0;
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= min && len == last {
            return;
        }
        last = len;
        assert!(
            Instant::now() < deadline,
            "{} has {len} bytes\n{}",
            path.display(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The operator dashboard at `url` (`.../admin`) as the holder of the admin `token`
/// sees it: its HTML, after asserting it answered 200.
pub async fn admin_page(http: &reqwest::Client, url: String, token: &str) -> String {
    let resp = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    resp.text().await.expect("dashboard body")
}
