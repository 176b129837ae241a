//! The softphones QA uses, as shipped (issue 21): Linphone's console client
//! `linphonec` (Debian `linphone-cli`) with its stock settings, which send the RFC 5626
//! instance id; Twinkle in console mode over TCP only; a phone behind a NAT (a UDP relay
//! of the test's own in front of it); a carrier registrar whose 200 OK lists other
//! devices' bindings with GRUUs; and the log line of a malformed REGISTER. Each phone
//! runs with its own `$HOME` in a tempdir, configured as docs/qa.md says.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::domain::{CallStatus, VerificationStatus};
use serde_json::{json, Value};

use crate::helpers::{
    free_udp_port, metric_value, settled_file, spawn_app, Db, TestApp, ADMIN_TOKEN,
};
use crate::qa_registrar::{qa_settings, readings_in, NUMBER, PASSWORD};

async fn phone_view(t: &TestApp) -> Value {
    let (status, v) = t.get_as(ADMIN_TOKEN, "/v1/qa/phones").await;
    assert_eq!(status, 200, "{v}");
    v["phones"][0].clone()
}

/// Polls GET /v1/qa/phones until `ok` holds for the phone's entry.
async fn wait_view(
    t: &TestApp,
    within: Duration,
    log: impl Fn() -> String,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = phone_view(t).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "phone view: {v}\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Puts the QA phone's number on the user `qa-alice`, as docs/qa.md step 4 does.
async fn own_number(t: &TestApp) {
    let status = t
        .http
        .put(t.url("/v1/users/qa-alice/phones"))
        .bearer_auth(&t.token)
        .json(&json!({ "phones": [{ "number": NUMBER, "primary": true }] }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

// ---- Linphone --------------------------------------------------------------------

/// `linphonec` as docs/qa.md sets it up: a linphonerc with the account and nothing
/// else (the instance id stays on, as in every stock Linphone), the data folder
/// `$HOME/.local/share/linphone` (without it linphonec sends no REGISTER at all),
/// auto-answer (`-a`), and `soundcard use files` + `record FILE.wav` typed at its prompt
/// so that what it hears goes to a WAV. Killed on drop.
struct Linphone {
    child: Child,
    /// Kept open: linphonec quits at the end of its input.
    stdin: ChildStdin,
    home: PathBuf,
    rc: PathBuf,
    out: PathBuf,
    /// Its SIP port.
    port: u16,
}

impl Linphone {
    /// A new phone in `dir` (its HOME and files) bound to `ip`, registering to
    /// `registrar` as qa-alice.
    fn first(dir: &Path, ip: &str, registrar: SocketAddr, password: &str) -> Linphone {
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let port = free_udp_port();
        let rc = dir.join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\n\
                 sip_port={port}\n\
                 sip_tcp_port=-1\n\
                 bind_address={ip}\n\
                 default_proxy=0\n\
                 \n\
                 [rtp]\n\
                 audio_rtp_port={rtp}\n\
                 \n\
                 [auth_info_0]\n\
                 username=qa-alice\n\
                 passwd={password}\n\
                 realm=otpdial-qa\n\
                 \n\
                 [proxy_0]\n\
                 reg_proxy=<sip:{registrar}>\n\
                 reg_identity=sip:qa-alice@{registrar}\n\
                 reg_expires=600\n\
                 reg_sendregister=1\n\
                 publish=0\n",
                rtp = free_udp_port(),
            ),
        )
        .unwrap();
        Linphone::spawn(dir, home, rc, port)
    }

    /// The same phone (same HOME and linphonerc, so the same instance id) started again
    /// on another SIP port, as after a crash or a network change.
    fn restart(mut self, dir: &Path) -> Linphone {
        // Killed, not quit: the old binding is not signed off.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (home, rc) = (self.home.clone(), self.rc.clone());
        drop(self);
        let port = free_udp_port();
        let text = std::fs::read_to_string(&rc).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("sip_port=") {
                    format!("sip_port={port}\n")
                } else if l.starts_with("audio_rtp_port=") {
                    format!("audio_rtp_port={}\n", free_udp_port())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&rc, text).unwrap();
        Linphone::spawn(dir, home, rc, port)
    }

    fn spawn(dir: &Path, home: PathBuf, rc: PathBuf, port: u16) -> Linphone {
        let out = dir.join(format!("linphonec-{port}.out"));
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .arg("-a")
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ))
            .spawn()
            .expect("linphonec runs (Debian package linphone-cli: scripts/test.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut phone = Linphone {
            child,
            stdin,
            home,
            rc,
            out,
            port,
        };
        let wav = phone.recording();
        let _ = std::fs::remove_file(&wav);
        phone.type_line("soundcard use files");
        phone.type_line(&format!("record {}", wav.display()));
        phone
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("linphonec reads its input");
        self.stdin.flush().unwrap();
    }

    /// Where it records what it hears.
    fn recording(&self) -> PathBuf {
        self.home.join("heard.wav")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The instance id linphonec made up and saved in its linphonerc (`[misc] uuid`).
    fn uuid(&self) -> Option<String> {
        std::fs::read_to_string(&self.rc)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("uuid=").map(str::to_owned))
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linphonec_with_stock_settings_registers_answers_and_hears_the_code() {
    let t = spawn_app(qa_settings(), Db::Sqlite, DialerMode::Background).await;
    let dir = tempfile::tempdir().unwrap();
    let phone = Linphone::first(dir.path(), "127.0.0.46", t.app.sip_addr, PASSWORD);
    let view = wait_view(
        &t,
        Duration::from_secs(30),
        || phone.log(),
        |v| v["registered"] == true,
    )
    .await;
    println!("linphonec registered: {view}");
    assert_eq!(
        view["source"],
        format!("udp:127.0.0.46:{}", phone.port),
        "{view}"
    );
    assert!(
        view["contact"]
            .as_str()
            .unwrap()
            .starts_with("sip:qa-alice@127.0.0.46:"),
        "{view}"
    );
    // Stock Linphone keeps an instance id (and sends it as +sip.instance); it is saved
    // in the linphonerc once it runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    let uuid = loop {
        if let Some(u) = phone.uuid() {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "no [misc] uuid in the linphonerc"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("linphonec instance id urn:uuid:{uuid}");

    own_number(&t).await;
    let v = t
        .start_verification(json!({ "user_id": "qa-alice", "locale": "en" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(90)).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        phone.log()
    );
    assert_eq!(done.call.trunk.as_deref(), Some("qa:qa-alice"));
    assert_eq!(done.call.times_played, 2);

    // linphonec finishes the WAV when the call ends.
    let wav = phone.recording();
    settled_file(&wav, 16_000, Duration::from_secs(20), || phone.log()).await;
    let heard = readings_in(&wav);
    println!(
        "linphonec heard the code read {} times: {heard:?}",
        heard.len()
    );
    assert_eq!(heard.len(), 2, "two readings: {heard:?}");
    assert_eq!(heard[0], heard[1]);
    assert_eq!(heard[0].len(), 6);
    let (status, body) = t.check(&v.id, &heard[0]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true, "{body}");
    assert_eq!(t.view(&v.id).await.status, VerificationStatus::Approved);

    // Restarted on another port without signing off: the new REGISTER (same
    // instance) replaces the binding; the gateway lists one, the new one.
    let old_port = phone.port;
    let phone = phone.restart(dir.path());
    assert_ne!(phone.port, old_port);
    assert_eq!(
        phone.uuid().as_deref(),
        Some(uuid.as_str()),
        "same instance"
    );
    let want = format!("udp:127.0.0.46:{}", phone.port);
    let view = wait_view(
        &t,
        Duration::from_secs(30),
        || phone.log(),
        |v| v["source"] == want.as_str(),
    )
    .await;
    println!("after the restart: {view}");
    let (_, all) = t.get_as(ADMIN_TOKEN, "/v1/qa/phones").await;
    let phones = all["phones"].as_array().unwrap();
    assert_eq!(phones.len(), 1, "{all}");
    assert_eq!(phones[0]["registered"], true);
    let metrics = t.metrics_text().await;
    assert!(
        metrics.contains("otpdial_qa_phones_registered 1"),
        "{metrics}"
    );
    let registered = metric_value(
        &metrics,
        "otpdial_qa_registrations_total{result=\"registered\"}",
    );
    assert!(registered >= 2, "{metrics}");
    t.app.stop().await;
}

/// Seconds from answer to end of a finished call (its RFC 3339 timestamps, whole
/// seconds: ±1 s).
fn talk_seconds(call: &otpdial::verify::CallView) -> f64 {
    let at = |s: &Option<String>| {
        time::OffsetDateTime::parse(
            s.as_deref().expect("timestamp"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339")
    };
    (at(&call.ended_at) - at(&call.answered_at)).as_seconds_f64()
}

/// How long the gateway reads `code` (built-in `en` pack, read twice as the test
/// settings say).
fn playout_seconds(code: &str) -> f64 {
    let digits: Vec<u8> = code.bytes().map(|b| b - b'0').collect();
    crate::helpers::expected_frames(&digits, 2) as f64 * 0.020
}

// ---- Twinkle -----------------------------------------------------------------------

/// Twinkle in console mode (`twinkle -c`, `QT_QPA_PLATFORM=offscreen`) with one profile
/// `qa` that signals over TCP only (`sip_transport=tcp`), publishes no presence
/// (`pres_publish_startup=no`) and answers by itself (`auto_answer -a on` typed at its
/// prompt; without a sound card only with `validate_audio_dev=no` in `twinkle.sys`,
/// else it never answers: the call ends `no_answer`, 480). It logs every SIP message it sends and receives, with the transport, to
/// `~/.twinkle/twinkle.log`. Killed on drop.
struct Twinkle {
    child: Child,
    _stdin: ChildStdin,
    home: PathBuf,
}

impl Twinkle {
    fn start(dir: &Path, registrar: SocketAddr, password: &str) -> Twinkle {
        let home = dir.join("home");
        let conf = home.join(".twinkle");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("qa.cfg"),
            format!(
                "user_name=qa-alice\n\
                 user_domain={registrar}\n\
                 auth_realm=otpdial-qa\n\
                 auth_name=qa-alice\n\
                 auth_pass={password}\n\
                 registrar={registrar}\n\
                 register_at_startup=yes\n\
                 registration_time=600\n\
                 sip_transport=tcp\n\
                 pres_publish_startup=no\n"
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("twinkle.sys"),
            format!(
                "sip_port={}\nrtp_port={}\nlog_show_sip=yes\nvalidate_audio_dev=no\n",
                crate::procs::free_sip_port(),
                free_udp_port() & !1,
            ),
        )
        .unwrap();
        let mut child = Command::new("twinkle")
            .args(["-c", "-f", "qa"])
            .env("HOME", &home)
            .env("QT_QPA_PLATFORM", "offscreen")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(dir.join("twinkle.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("twinkle runs (Debian package twinkle: scripts/test.sh installs it)");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "auto_answer -a on").unwrap();
        stdin.flush().unwrap();
        Twinkle {
            child,
            _stdin: stdin,
            home,
        }
    }

    /// Its SIP log: each message it sent or received with `Send to: tcp:…` or
    /// `Received from: tcp:…` before it.
    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(".twinkle/twinkle.log")).unwrap_or_default()
    }

    /// The requests it received: (how they came, e.g. `tcp:127.0.0.1:5060`, the
    /// request line).
    fn received_requests(&self) -> Vec<(String, String)> {
        let log = self.log();
        let mut out = Vec::new();
        let mut lines = log.lines();
        while let Some(line) = lines.next() {
            if let Some(from) = line.strip_prefix("Received from: ") {
                if let Some(first) = lines.next() {
                    if !first.starts_with("SIP/2.0") {
                        out.push((from.trim().to_owned(), first.trim().to_owned()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Twinkle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings whose trunk sits on 127.0.0.2: Twinkle binds every address, so its
/// REGISTER comes from 127.0.0.1 and must not look like the trunk.
fn settings_trunk_elsewhere() -> otpdial::config::Settings {
    let mut s = qa_settings();
    s.trunks[0].proxy.host = "127.0.0.2".into();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twinkle_over_tcp_only_gets_ack_and_bye_on_its_connection() {
    let t = spawn_app(
        settings_trunk_elsewhere(),
        Db::Sqlite,
        DialerMode::Background,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let phone = Twinkle::start(dir.path(), t.app.sip_addr, PASSWORD);
    let view = wait_view(
        &t,
        Duration::from_secs(30),
        || phone.log(),
        |v| v["registered"] == true,
    )
    .await;
    println!("twinkle registered: {view}");
    let source = view["source"].as_str().unwrap().to_owned();
    assert!(source.starts_with("tcp:127.0.0.1:"), "{view}");
    assert!(
        view["contact"].as_str().unwrap().contains("transport=tcp"),
        "{view}"
    );

    own_number(&t).await;
    let code = "482915";
    let v = t
        .start_verification(json!({ "user_id": "qa-alice", "locale": "en", "code": code }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(90)).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        phone.log()
    );
    assert_eq!(done.call.trunk.as_deref(), Some("qa:qa-alice"));
    assert_eq!(done.call.times_played, 2);
    let talk = talk_seconds(&done.call);
    let playout = playout_seconds(code);
    println!("twinkle call: {talk:.2} s answered, playout {playout:.2} s");
    assert!(
        talk >= playout - 1.2 && talk <= playout + 5.0,
        "the call lasted {talk} s, the playout {playout} s"
    );

    // What Twinkle received, and over what: INVITE, ACK and BYE, all on the TCP
    // connection its REGISTER opened (the gateway's address, over tcp).
    let gateway = format!("tcp:{}", t.app.sip_addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = phone.received_requests();
        if got.iter().any(|(_, l)| l.starts_with("BYE ")) || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("twinkle received: {got:?}");
    for method in ["INVITE", "ACK", "BYE"] {
        let over: Vec<_> = got
            .iter()
            .filter(|(_, l)| l.starts_with(&format!("{method} ")))
            .collect();
        assert!(!over.is_empty(), "no {method}: {got:?}\n{}", phone.log());
        for (from, line) in over {
            assert_eq!(from, &gateway, "{line} came over {from}");
        }
    }
    assert!(
        got.iter().all(|(from, _)| from.starts_with("tcp:")),
        "nothing over UDP: {got:?}"
    );

    // Twinkle goes away: its connection closes, the binding's flow with it. The phone
    // is no longer listed as registered and the next call fails at once, naming it.
    drop(phone);
    wait_view(&t, Duration::from_secs(20), String::new, |v| {
        v["registered"] == false
    })
    .await;
    let v = t
        .start_verification(json!({ "user_id": "qa-alice", "locale": "en" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    assert_eq!(done.call.status, CallStatus::Failed, "{done:?}");
    let reason = done.call.attempts[0].reason.clone().unwrap_or_default();
    println!("after twinkle left: {reason}");
    assert!(
        reason.starts_with("QA phone qa-alice is unreachable"),
        "{done:?}"
    );
    t.app.stop().await;
}

// ---- A phone behind a NAT ------------------------------------------------------------

/// A NAT of the test's own: the phone sends to `inside`, the relay forwards from
/// `outside` (its own port: the "public" mapping) to the gateway, and what comes back to
/// `outside` goes to the phone. It notes the first line of every message it carries
/// towards the phone.
struct Relay {
    inside: SocketAddr,
    outside: SocketAddr,
    to_phone: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(inside_ip: &str, outside_ip: &str, gateway: SocketAddr) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let inside = std::net::UdpSocket::bind((inside_ip, 0)).unwrap();
        let outside = std::net::UdpSocket::bind((outside_ip, 0)).unwrap();
        for s in [&inside, &outside] {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let relay = Relay {
            inside: inside.local_addr().unwrap(),
            outside: outside.local_addr().unwrap(),
            to_phone: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let phone: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        {
            // Phone → gateway.
            let (inside, outside) = (inside.try_clone().unwrap(), outside.try_clone().unwrap());
            let (phone, stop) = (phone.clone(), relay.stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = inside.recv_from(&mut buf) {
                        *phone.lock().unwrap() = Some(from);
                        let _ = outside.send_to(&buf[..n], gateway);
                    }
                }
            });
        }
        {
            // Gateway → phone.
            let (to_phone, stop) = (relay.to_phone.clone(), relay.stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = outside.recv_from(&mut buf) {
                        let first = String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        to_phone.lock().unwrap().push(first);
                        if let Some(p) = *phone.lock().unwrap() {
                            let _ = inside.send_to(&buf[..n], p);
                        }
                    }
                }
            });
        }
        relay
    }

    fn to_phone(&self) -> Vec<String> {
        self.to_phone.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_behind_a_nat_gets_ack_and_bye_through_the_mapping() {
    let t = spawn_app(qa_settings(), Db::Sqlite, DialerMode::Background).await;
    let relay = Relay::start("127.0.0.48", "127.0.0.49", t.app.sip_addr);
    // baresip on its "private" address; everything it sends goes to the relay
    // (its outbound proxy), its Contact names 127.0.0.47.
    let phone = crate::baresip::Baresip::start(
        "127.0.0.47",
        "",
        &format!(
            "<sip:qa-alice@{};transport=udp>;auth_pass={PASSWORD};answermode=auto;regint=600;outbound=\"sip:{};transport=udp\"",
            t.app.sip_addr, relay.inside
        ),
    );
    let view = wait_view(
        &t,
        Duration::from_secs(30),
        || phone.log(),
        |v| v["registered"] == true,
    )
    .await;
    println!("behind the NAT: {view}");
    assert_eq!(view["source"], format!("udp:{}", relay.outside), "{view}");
    assert!(
        view["contact"].as_str().unwrap().contains("@127.0.0.47:"),
        "the Contact names the private address: {view}"
    );

    own_number(&t).await;
    let code = "731406";
    let v = t
        .start_verification(json!({ "user_id": "qa-alice", "locale": "en", "code": code }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(90)).await;
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        phone.log()
    );
    let talk = talk_seconds(&done.call);
    let playout = playout_seconds(code);
    println!("call behind the NAT: {talk:.2} s answered, playout {playout:.2} s");
    assert!(
        talk >= playout - 1.2 && talk <= playout + 5.0,
        "the call lasted {talk} s, the playout {playout} s"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = relay.to_phone();
        if seen.iter().any(|l| l.starts_with("BYE ")) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("through the relay to the phone: {seen:?}");
    for method in ["INVITE", "ACK", "BYE"] {
        assert!(
            seen.iter().any(|l| l.starts_with(&format!("{method} "))),
            "no {method} through the relay: {seen:?}"
        );
    }
    t.app.stop().await;
}

// ---- A carrier registrar with other devices' bindings ------------------------------------

/// Settings whose one trunk registers to SIPp's registrar on `port` as otp-trunk.
fn registering_trunk(port: u16) -> otpdial::config::Settings {
    let mut s = crate::helpers::base_settings(port);
    let t = &mut s.trunks[0];
    t.register = true;
    t.username = Some("31508200000".into());
    t.auth_username = Some("otp-trunk".into());
    t.password = Some(otpdial::config::SecretString::from("trunk-Secret-7"));
    t.register_expires = 3600;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_listing_other_devices_with_gruus_registers_the_trunk() {
    // `otpdial trunk check`'s path first: it reports the lifetime granted to our own
    // binding (1800 s), picked out of the three in the 200 OK (3400, ours, 600; the
    // Expires header says 3600).
    let sipp = crate::helpers::Sipp::uas("uas_registrar_gruu_contacts.xml", &[]);
    let s = registering_trunk(sipp.port);
    let checks = otpdial::ops::trunk_check(&s, None).await.unwrap();
    let (_, reg) = &checks[0];
    println!("trunk check: {reg:?}");
    sipp.finish(Duration::from_secs(20)).await.unwrap();
    assert!(reg.ok, "{reg:?}");
    assert!(reg.authenticated, "{reg:?}");
    assert_eq!(reg.status, Some(200));
    assert_eq!(reg.expires, Some(1800), "{reg:?}");

    // The running gateway: the trunk shows registered.
    let sipp = crate::helpers::Sipp::uas("uas_registrar_gruu_contacts.xml", &[]);
    let t = spawn_app(registering_trunk(sipp.port), Db::Sqlite, DialerMode::Manual).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let trunk = loop {
        let (status, v) = t.get_as(ADMIN_TOKEN, "/v1/trunks").await;
        assert_eq!(status, 200, "{v}");
        let trunk = v["trunks"][0].clone();
        if trunk["registered"] == true {
            break trunk;
        }
        assert!(Instant::now() < deadline, "not registered: {trunk}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("GET /v1/trunks: {trunk}");
    assert_eq!(trunk["last_error"], Value::Null, "{trunk}");
    sipp.finish(Duration::from_secs(20)).await.unwrap();
    let metrics = t.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "otpdial_sip_dropped_total{reason=\"malformed\"}"),
        0,
        "{metrics}"
    );
    t.app.stop().await;
}

// ---- The log line of a malformed REGISTER ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_register_is_logged_once_per_source_a_minute() {
    use crate::procs::{ServeConfig, ServeProc};
    let gw = ServeProc::start(ServeConfig::new()).await;
    let to: SocketAddr = format!("127.0.0.1:{}", gw.sip_port()).parse().unwrap();
    // An unterminated quoted string in the Contact; the Authorization carries a
    // response that must never reach the log.
    let register = |n: u32| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.51:5062;branch=z9hG4bK-bad-{n};rport\r\n\
             From: <sip:qa-alice@127.0.0.1>;tag=b{n}\r\nTo: <sip:qa-alice@127.0.0.1>\r\n\
             Call-ID: bad-{n}\r\nCSeq: {n} REGISTER\r\nMax-Forwards: 70\r\n\
             Contact: <sip:qa-alice@127.0.0.51:5062>;+sip.instance=\"<urn:uuid:1234\r\n\
             Authorization: Digest username=\"qa-alice\", realm=\"otpdial-qa\", nonce=\"n\", uri=\"sip:127.0.0.1\", response=\"c0ffee5ecre7\"\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let phone = std::net::UdpSocket::bind("127.0.0.51:0").unwrap();
    let other = std::net::UdpSocket::bind("127.0.0.52:0").unwrap();
    let dropped =
        |text: &str| metric_value(text, "otpdial_sip_dropped_total{reason=\"malformed\"}");
    let metrics_url = gw.url("/metrics");
    let metrics = || crate::helpers::metrics_text(&gw.http, &metrics_url);
    for n in 1..=3 {
        phone.send_to(register(n).as_bytes(), to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped(&metrics().await) < 3 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another source gets its own line.
    other.send_to(register(4).as_bytes(), to).unwrap();
    while dropped(&metrics().await) < 4 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("malformed SIP message"))
        .collect();
    println!("log lines:\n{}", lines.join("\n"));
    let from = |ip: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("{ip}:")))
            .count()
    };
    assert_eq!(from("127.0.0.51"), 1, "one line for three drops: {log}");
    assert_eq!(from("127.0.0.52"), 1, "one for the other source: {log}");
    assert_eq!(lines.len(), 2, "{log}");
    for l in &lines {
        assert!(
            l.to_lowercase().contains("contact"),
            "the reason names the header: {l}"
        );
    }
    assert!(
        !log.contains("c0ffee5ecre7"),
        "the message reached the log: {log}"
    );
}
