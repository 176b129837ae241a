//! SIPp callees that take any number of calls and keep a message log ([`SippUas`]),
//! the digest of that log per call ([`CalleeLog::parse`]: INVITEs per number, BYEs,
//! CANCELs, most calls up at once), and a UDP [`BlackHole`] that never answers.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{free_udp_port, sipp_scenario};
use crate::procs::{poll_until, udp_port_bound};

// ---- SIPp callees that take many calls ---------------------------------------------

/// SIPp as a UAS on 127.0.0.1 for any number of calls (no `-m`), logging every SIP
/// message it receives and sends (`-trace_msg`), so a test can count at the callee
/// what the gateway did ([`SippUas::calls`]). Killed on drop.
pub struct SippUas {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    rtp: Option<BlackHole>,
}

impl SippUas {
    /// Runs `tests/sipp/<scenario>` with `-set` variables and extra SIPp arguments on
    /// 127.0.0.1:`port`; returns once SIPp has bound its port.
    pub async fn start(
        scenario: &str,
        vars: &[(&str, String)],
        extra: &[&str],
        port: u16,
    ) -> SippUas {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(sipp_scenario(scenario))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            // A safety net for a test process killed before its Drop ran.
            .args(["-timeout", "300s", "-nostdin"])
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(dir.path().join("messages.log"))
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.path().join("errors.log"))
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.log")).expect("stderr log"));
        for (k, v) in vars {
            cmd.args(["-set", k, v]);
        }
        let mut child = cmd
            .spawn()
            .expect("sipp runs (Debian package sip-tester: scripts/test.sh installs it)");
        let bound = poll_until(Duration::from_secs(10), || {
            udp_port_bound(port) || matches!(child.try_wait(), Ok(Some(_)))
        })
        .await;
        let uas = SippUas {
            child: Some(child),
            port,
            dir,
            rtp: None,
        };
        assert!(
            bound && udp_port_bound(port),
            "sipp {scenario} did not bind 127.0.0.1:{port}: {}{}",
            uas.errors(),
            std::fs::read_to_string(uas.dir.path().join("stderr.log")).unwrap_or_default()
        );
        uas
    }

    /// `uas_answer_many.xml` on a free port: rings `ring`, answers with PCMA/PCMU,
    /// RTP goes to a [`BlackHole`] it owns, waits for the BYE; CANCEL while ringing is
    /// answered 200 + 487. Answers OPTIONS 200 (`-aa`).
    pub async fn answer_many(ring: Duration) -> SippUas {
        Self::answer_many_on(free_udp_port(), ring).await
    }

    /// [`SippUas::answer_many`] on a given port (e.g. where a black hole was).
    pub async fn answer_many_on(port: u16, ring: Duration) -> SippUas {
        Self::answering_on("uas_answer_many.xml", port, ring).await
    }

    /// An answering `scenario` (its variables `rtp_port` and `ring_ms`, like
    /// `uas_answer_many.xml`) on a free port, RTP into a [`BlackHole`] it owns, OPTIONS
    /// answered 200 (`-aa`).
    pub async fn answering(scenario: &str, ring: Duration) -> SippUas {
        Self::answering_on(scenario, free_udp_port(), ring).await
    }

    async fn answering_on(scenario: &str, port: u16, ring: Duration) -> SippUas {
        let rtp = BlackHole::bind();
        let vars = [
            ("rtp_port", rtp.port().to_string()),
            ("ring_ms", ring.as_millis().to_string()),
        ];
        let mut uas = Self::start(scenario, &vars, &["-aa"], port).await;
        uas.rtp = Some(rtp);
        uas
    }

    /// `uas_503_options_ok.xml` on `port`: a trunk that answers every INVITE 503 and
    /// every OPTIONS 200 (down for calls, up for keepalives).
    pub async fn unavailable_on(port: u16) -> SippUas {
        Self::start("uas_503_options_ok.xml", &[], &[], port).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The RTP sink of [`SippUas::answer_many`] (datagrams the gateway sent).
    pub fn rtp(&self) -> Option<&BlackHole> {
        self.rtp.as_ref()
    }

    /// SIPp's message log so far (SIPp writes it as it goes).
    pub fn messages(&self) -> String {
        std::fs::read(self.dir.path().join("messages.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the callee saw so far, per call.
    pub fn calls(&self) -> CalleeLog {
        CalleeLog::parse(&self.messages())
    }

    /// SIPp's error log (unexpected messages, failed calls).
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("errors.log")).unwrap_or_default()
    }

    /// Polls the message log until `done` holds for it; fails the test with the log
    /// summary when `within` passes.
    pub async fn wait_calls(
        &self,
        within: Duration,
        done: impl Fn(&CalleeLog) -> bool,
    ) -> CalleeLog {
        let deadline = Instant::now() + within;
        loop {
            let log = self.calls();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "callee on port {}: condition not met after {within:?}: {log:#?}\nerrors: {}",
                self.port,
                self.errors()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills SIPp and returns the final message log.
    pub fn stop(&mut self) -> CalleeLog {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.calls()
    }
}

impl Drop for SippUas {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One call (one Call-ID) as the callee saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalleeCall {
    pub call_id: String,
    /// User part of the first INVITE's Request-URI: the number dialled.
    pub user: String,
    /// INVITE transactions (distinct CSeq numbers; a re-INVITE counts, a
    /// retransmission does not).
    pub invites: usize,
    /// Requests of this call received again with the same CSeq (UDP retransmissions).
    pub retransmissions: usize,
    /// Our final response to the first INVITE (200, 487, 503, ...), if sent.
    pub final_status: Option<u16>,
    /// BYE and CANCEL transactions received from the caller.
    pub byes: usize,
    pub cancels: usize,
    /// Timestamps from SIPp's log: INVITE received, 2xx sent, call ended (BYE or
    /// CANCEL received, or a final error response sent).
    pub invited_at: Option<time::PrimitiveDateTime>,
    pub answered_at: Option<time::PrimitiveDateTime>,
    pub ended_at: Option<time::PrimitiveDateTime>,
}

impl CalleeCall {
    pub fn answered(&self) -> bool {
        self.answered_at.is_some()
    }

    pub fn ended(&self) -> bool {
        self.ended_at.is_some()
    }
}

/// SIPp's `-trace_msg` log of a callee, digested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalleeLog {
    /// One entry per Call-ID that brought an INVITE, in order of the first INVITE.
    pub calls: Vec<CalleeCall>,
    /// Most calls answered (2xx sent) and not yet ended at any one time.
    pub max_up: usize,
    /// Most calls between INVITE received and end at any one time.
    pub max_in_progress: usize,
    /// OPTIONS requests received (distinct transactions).
    pub options: usize,
}

impl CalleeLog {
    /// Parses SIPp's message log: entries start with a line of dashes and a timestamp,
    /// then `UDP message received [N] bytes :` or `UDP message sent (N bytes):`, a
    /// blank line and the SIP message. Other entries are skipped. Pure: no I/O.
    pub fn parse(text: &str) -> CalleeLog {
        let mut log = CalleeLog::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut seen_requests: HashSet<(String, u32, String)> = HashSet::new();
        let mut up: HashSet<String> = HashSet::new();
        let mut in_progress: HashSet<String> = HashSet::new();
        for entry in split_entries(text) {
            let Some(msg) = SipMsg::parse(entry.body) else {
                continue;
            };
            let Some((cseq, cseq_method)) = msg.cseq() else {
                continue;
            };
            let Some(call_id) = msg.header(&["call-id", "i"]) else {
                continue;
            };
            let call_id = call_id.to_owned();
            let at = entry.at;
            match (&msg.start, entry.received) {
                (Start::Request { method, uri }, true) => {
                    let fresh = seen_requests.insert((call_id.clone(), cseq, method.clone()));
                    if method == "OPTIONS" {
                        log.options += usize::from(fresh);
                        continue;
                    }
                    if method == "INVITE" && !index.contains_key(&call_id) {
                        index.insert(call_id.clone(), log.calls.len());
                        log.calls.push(CalleeCall {
                            call_id: call_id.clone(),
                            user: uri_user(uri),
                            invites: 0,
                            retransmissions: 0,
                            final_status: None,
                            byes: 0,
                            cancels: 0,
                            invited_at: at,
                            answered_at: None,
                            ended_at: None,
                        });
                        in_progress.insert(call_id.clone());
                    }
                    let Some(&i) = index.get(&call_id) else {
                        continue;
                    };
                    let call = &mut log.calls[i];
                    if !fresh {
                        call.retransmissions += 1;
                        continue;
                    }
                    match method.as_str() {
                        "INVITE" => call.invites += 1,
                        "BYE" | "CANCEL" => {
                            if method == "BYE" {
                                call.byes += 1;
                            } else {
                                call.cancels += 1;
                            }
                            // A CANCEL that crossed our 200 ends nothing.
                            let ends = method == "BYE" || !call.answered();
                            if ends && call.ended_at.is_none() {
                                call.ended_at = at;
                                up.remove(&call_id);
                                in_progress.remove(&call_id);
                            }
                        }
                        _ => {}
                    }
                }
                (Start::Response { code }, false) if cseq_method == "INVITE" => {
                    let Some(&i) = index.get(&call_id) else {
                        continue;
                    };
                    let call = &mut log.calls[i];
                    if *code < 200 || call.final_status.is_some() {
                        continue;
                    }
                    call.final_status = Some(*code);
                    if (200..300).contains(code) {
                        call.answered_at = at;
                        if call.ended_at.is_none() {
                            up.insert(call_id.clone());
                        }
                    } else if call.ended_at.is_none() {
                        call.ended_at = at;
                        in_progress.remove(&call_id);
                    }
                }
                _ => {}
            }
            log.max_up = log.max_up.max(up.len());
            log.max_in_progress = log.max_in_progress.max(in_progress.len());
        }
        log
    }

    /// Calls (distinct Call-IDs with an INVITE) per dialled number.
    pub fn invites_per_user(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in &self.calls {
            *out.entry(c.user.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Numbers called more than once, with how often.
    pub fn invited_twice(&self) -> Vec<(String, usize)> {
        self.invites_per_user()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect()
    }

    pub fn byes(&self) -> usize {
        self.calls.iter().map(|c| c.byes).sum()
    }

    pub fn cancels(&self) -> usize {
        self.calls.iter().map(|c| c.cancels).sum()
    }

    pub fn answered(&self) -> usize {
        self.calls.iter().filter(|c| c.answered()).count()
    }

    /// Calls that were INVITEd and have not ended (no BYE/CANCEL, no final error).
    pub fn open(&self) -> Vec<&CalleeCall> {
        self.calls.iter().filter(|c| !c.ended()).collect()
    }
}

/// One entry of SIPp's message log.
struct LogEntry<'a> {
    at: Option<time::PrimitiveDateTime>,
    received: bool,
    body: &'a str,
}

const ENTRY_RULE: &str = "-----------------------------------------------";

fn split_entries(text: &str) -> Vec<LogEntry<'_>> {
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
    );
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(ENTRY_RULE) {
        let after = &rest[start + ENTRY_RULE.len()..];
        let end = after.find(ENTRY_RULE).unwrap_or(after.len());
        let entry = &after[..end];
        rest = &after[end..];
        let mut lines = entry.splitn(3, '\n');
        let stamp = lines.next().unwrap_or("").trim();
        let kind = lines.next().unwrap_or("");
        let body = lines.next().unwrap_or("");
        let received = kind.contains("message received");
        if !received && !kind.contains("message sent") {
            continue;
        }
        out.push(LogEntry {
            at: time::PrimitiveDateTime::parse(stamp, &format).ok(),
            received,
            body,
        });
    }
    out
}

enum Start {
    Request { method: String, uri: String },
    Response { code: u16 },
}

struct SipMsg<'a> {
    start: Start,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> SipMsg<'a> {
    fn parse(body: &'a str) -> Option<SipMsg<'a>> {
        let mut lines = body
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .skip_while(|l| l.trim().is_empty());
        let first = lines.next()?;
        let start = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            Start::Response {
                code: rest.split_whitespace().next()?.parse().ok()?,
            }
        } else {
            let mut parts = first.split_whitespace();
            let method = parts.next()?.to_owned();
            let uri = parts.next()?.to_owned();
            (parts.next()? == "SIP/2.0").then_some(())?;
            Start::Request { method, uri }
        };
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        Some(SipMsg { start, headers })
    }

    fn header(&self, names: &[&str]) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| *v)
    }

    fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header(&["cseq"])?;
        let mut parts = v.split_whitespace();
        let n = parts.next()?.parse().ok()?;
        Some((n, parts.next()?.to_owned()))
    }
}

/// `sip:+31612345678@host;params` -> `+31612345678`; no user part -> "".
fn uri_user(uri: &str) -> String {
    let uri = uri.trim_start_matches('<');
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    match rest.split_once('@') {
        Some((user, _)) => user.split(';').next().unwrap_or("").to_owned(),
        None if uri.starts_with("tel:") => rest.split(';').next().unwrap_or("").to_owned(),
        None => String::new(),
    }
}

// ---- a UDP black hole -------------------------------------------------------------------

/// A UDP socket on 127.0.0.1 that reads and discards everything: a trunk that never
/// answers (INVITEs time out), or an RTP sink. Counts what arrives.
pub struct BlackHole {
    port: u16,
    datagrams: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    /// On a port of the kernel's choice.
    pub fn bind() -> BlackHole {
        Self::bind_on(0)
    }

    /// On 127.0.0.1:`port` (0: any).
    pub fn bind_on(port: u16) -> BlackHole {
        let socket = UdpSocket::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("black hole on 127.0.0.1:{port}: {e}"));
        let port = socket.local_addr().expect("local addr").port();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let datagrams = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (datagrams, requests, stop) = (datagrams.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    datagrams.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let first = text.lines().next().unwrap_or("");
                    if first.ends_with("SIP/2.0") {
                        requests
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(first.to_owned());
                    }
                }
            })
        };
        BlackHole {
            port,
            datagrams,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams.load(Ordering::Relaxed)
    }

    /// Request lines of the SIP requests received so far (retransmissions included),
    /// e.g. `INVITE sip:+31612345678@127.0.0.1:PORT SIP/2.0`.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use otpdial::domain::CallStatus;
    use serde_json::json;

    use super::*;
    use crate::procs::{nl_mobile, ServeConfig, ServeProc};

    fn captured() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sipp/answer_many_messages.log");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn callee_log_counts_calls_byes_cancels_and_overlap() {
        let log = CalleeLog::parse(&captured());
        assert_eq!(log.calls.len(), 3, "{log:#?}");
        assert_eq!(
            log.invites_per_user().into_iter().collect::<Vec<_>>(),
            vec![
                ("+31620000001".to_owned(), 1),
                ("+31620000002".to_owned(), 1),
                ("+31620000003".to_owned(), 1)
            ]
        );
        assert!(log.invited_twice().is_empty());
        // The copied BYE is a retransmission: counted as such, not as a second BYE.
        assert_eq!(log.byes(), 2);
        assert_eq!(log.calls[0].retransmissions, 1);
        assert_eq!(log.cancels(), 1);
        assert_eq!(log.answered(), 2);
        assert_eq!(log.calls[2].final_status, Some(487));
        assert_eq!(log.calls[2].cancels, 1);
        // Both answered calls were up together; the cancelled one came later.
        assert_eq!(log.max_up, 2);
        assert_eq!(log.max_in_progress, 2);
        assert!(log.open().is_empty());
        let first = &log.calls[0];
        let talk = first.ended_at.unwrap() - first.answered_at.unwrap();
        assert_eq!(
            talk.whole_milliseconds(),
            741,
            "answer 27.655443, BYE 28.397122"
        );
    }

    #[test]
    fn callee_log_sees_a_second_call_to_a_number_and_an_open_call() {
        // The first call again under a new Call-ID, cut off after its 200 OK: the same
        // number INVITEd twice, and a call left up (no BYE).
        let text = captured();
        let second: String = text
            .split(ENTRY_RULE)
            .skip(1)
            .filter(|e| e.contains("c08c95a779c1006d") && !e.contains("CSeq: 2 BYE"))
            .map(|e| format!("{ENTRY_RULE}{}", e.replace("c08c95a779c1006d", "5ec0nd")))
            .collect();
        let log = CalleeLog::parse(&format!("{text}{second}"));
        assert_eq!(log.invited_twice(), vec![("+31620000001".to_owned(), 2)]);
        assert_eq!(log.open().len(), 1);
        assert_eq!(log.open()[0].call_id, "5ec0nd@127.0.0.1:15060");
        assert!(log.open()[0].answered());
    }

    #[test]
    fn callee_log_ignores_noise() {
        assert_eq!(CalleeLog::parse(""), CalleeLog::default());
        let junk = format!("{ENTRY_RULE} not a date\nsomething else\n\nhello\n");
        assert_eq!(CalleeLog::parse(&junk), CalleeLog::default());
        assert_eq!(
            uri_user("sip:+31612345678@127.0.0.1:5060;user=phone"),
            "+31612345678"
        );
        assert_eq!(uri_user("sip:127.0.0.1:5060"), "");
        assert_eq!(uri_user("tel:+31612345678;npdi"), "+31612345678");
    }

    #[test]
    fn black_hole_swallows_and_counts() {
        let hole = BlackHole::bind();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(
            b"INVITE sip:+31612345678@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\n\r\n",
            ("127.0.0.1", hole.port()),
        )
        .unwrap();
        s.send_to(&[0x80, 8, 0, 1], ("127.0.0.1", hole.port()))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while hole.datagrams() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(hole.datagrams(), 2);
        assert_eq!(
            hole.requests(),
            vec!["INVITE sip:+31612345678@127.0.0.1 SIP/2.0".to_owned()]
        );
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 100];
        assert!(s.recv_from(&mut buf).is_err(), "nothing ever answers");
    }

    /// A trunk that answers 503 is failed over to the next; it still answers OPTIONS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unavailable_trunk_answers_503_and_options_200() {
        let down = SippUas::unavailable_on(free_udp_port()).await;
        let up = SippUas::answer_many(Duration::ZERO).await;
        let cfg = ServeConfig::new()
            .trunk(
                "down",
                down.port(),
                "priority = 1\noptions_interval = \"5s\"",
            )
            .trunk("up", up.port(), "priority = 2");
        let gw = ServeProc::start(cfg).await;
        let v = gw
            .start_verification(json!({ "to": nl_mobile(3), "code": "4812" }))
            .await;
        let done = gw
            .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(10))
            .await;
        assert_eq!(done[0].call.status, CallStatus::Completed, "{done:?}");
        assert_eq!(done[0].call.trunk.as_deref(), Some("up"));
        let at_down = down
            .wait_calls(Duration::from_secs(5), |l| l.options >= 1)
            .await;
        assert_eq!(at_down.calls.len(), 1);
        assert_eq!(at_down.calls[0].final_status, Some(503));
        assert_eq!(at_down.answered(), 0);
        assert_eq!(up.calls().answered(), 1);
        assert!(down.errors().is_empty(), "{}", down.errors());
    }

    /// A callee that rings longer than the trunk's ring timeout: the gateway
    /// CANCELs, the scenario answers 200 + 487.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answer_many_takes_a_cancel_while_ringing() {
        let callee = SippUas::answer_many(Duration::from_secs(30)).await;
        let cfg = ServeConfig::new().trunk("a", callee.port(), "ring_timeout = \"1s\"");
        let gw = ServeProc::start(cfg).await;
        let v = gw
            .start_verification(json!({ "to": nl_mobile(4), "code": "4812" }))
            .await;
        let done = gw
            .wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(10))
            .await;
        assert_eq!(done[0].call.status, CallStatus::NoAnswer, "{done:?}");
        let seen = callee
            .wait_calls(Duration::from_secs(5), |l| {
                l.calls.iter().all(|c| c.ended())
            })
            .await;
        assert_eq!(seen.cancels(), 1);
        assert_eq!(seen.calls[0].final_status, Some(487));
        assert_eq!(seen.answered(), 0);
        assert!(callee.errors().is_empty(), "{}", callee.errors());
    }

    /// Trunk keepalives to the many-calls callee get 200 (`-aa`) and are counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answer_many_answers_options() {
        let callee = SippUas::answer_many(Duration::ZERO).await;
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = s.local_addr().unwrap();
        let options = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-opt1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@{me}>;tag=p1\r\n\
             To: <sip:127.0.0.1:{port}>\r\n\
             Call-ID: options-probe-1\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            port = callee.port()
        );
        s.send_to(options.as_bytes(), ("127.0.0.1", callee.port()))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
        let seen = callee
            .wait_calls(Duration::from_secs(5), |l| l.options == 1)
            .await;
        assert!(seen.calls.is_empty(), "an OPTIONS is not a call: {seen:#?}");
    }

    /// One trunk port that goes 503, then silent, then answers again: each stage
    /// takes the port the previous one released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trunk_port_changes_hands_503_black_hole_answer() {
        let mut down = SippUas::unavailable_on(free_udp_port()).await;
        let port = down.port();
        down.stop();
        let hole = BlackHole::bind_on(port);
        drop(hole);
        let up = SippUas::answer_many_on(port, Duration::ZERO).await;
        assert_eq!(up.port(), port);
    }
}
