//! Kamailio (Debian `kamailio`, config `tests/kamailio/trunk.cfg`) as the SIP trunk: it
//! demands digest auth for REGISTER (401) and INVITE (407), answers a too-short
//! registration with 423, and relays the call to a SIPp callee. otpdial registers
//! (`otpdial trunk check`'s code path), then calls through it (`otpdial call`'s), and the
//! callee receives the whole code as RTP.

use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otpdial::config::{SecretString, Settings, Transport};
use otpdial::domain::CallStatus;
use otpdial::ops::{self, CallRequest};
use otpdial::sip::ProbeKind;

use crate::helpers::{base_settings, free_udp_port, receive_rtp, Sipp};

pub(crate) const PASSWORD: &str = "s3cret-pass";
pub(crate) const AUTH_USER: &str = "otp-auth";

/// A Kamailio process in its own process group, stopped (SIGTERM to the group) on drop.
pub(crate) struct Kamailio {
    child: Child,
    pub(crate) port: u16,
    /// SIP over TLS, when started with [`Kamailio::start_tls`].
    pub(crate) tls_port: Option<u16>,
    _dir: tempfile::TempDir,
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (openssl CLI), and
/// Kamailio's tls.cfg using them, in `dir`. Returns the CA's PEM path.
pub(crate) fn make_certificates(dir: &std::path::Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=otpdial test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    std::fs::write(
        dir.join("tls.cfg"),
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
             require_certificate = no\nprivate_key = {d}/server.key\n\
             certificate = {d}/server.pem\n",
            d = dir.display()
        ),
    )
    .unwrap();
    dir.join("ca.pem")
}

impl Kamailio {
    fn start(callee_port: u16, algorithm: &str) -> Kamailio {
        Self::start_with(callee_port, algorithm, None)
    }

    /// Also listens for SIP over TLS with the certificate `make_certificates` wrote in
    /// `certs` (then `tls_port` is set).
    pub(crate) fn start_tls(
        callee_port: u16,
        algorithm: &str,
        certs: &std::path::Path,
    ) -> Kamailio {
        Self::start_with(callee_port, algorithm, Some(certs))
    }

    fn start_with(callee_port: u16, algorithm: &str, tls: Option<&std::path::Path>) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kamailio/trunk.cfg");
        // UDP and TCP on the same number; a UDP port that was free is almost always
        // free for TCP too, and a clash shows up as a start-up failure below.
        let port = free_udp_port();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log file");
        let tls_port = tls.map(|_| crate::procs::free_tcp_port());
        let tls_args: Vec<String> = match (tls, tls_port) {
            (Some(certs), Some(p)) => vec![
                "-l".into(),
                format!("tls:127.0.0.1:{p}"),
                "-A".into(),
                "WITH_TLS".into(),
                "-A".into(),
                format!("TLS_CFG=\"{}\"", certs.join("tls.cfg").display()),
            ],
            _ => Vec::new(),
        };
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-n", "1", "-m", "32", "-M", "8"])
            .arg("-Y")
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .args(["-l", &format!("udp:127.0.0.1:{port}")])
            .args(["-l", &format!("tcp:127.0.0.1:{port}")])
            .args(["-A", &format!("CALLEE=\"sip:127.0.0.1:{callee_port}\"")])
            .args(["-A", &format!("AUTH_USER=\"{AUTH_USER}\"")])
            .args(["-A", &format!("PASSWORD=\"{PASSWORD}\"")])
            .args(["-A", &format!("ALGORITHM=\"{algorithm}\"")])
            .args(tls_args.iter())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kamailio runs (install Debian package kamailio: scripts/test.sh does)");
        let k = Kamailio {
            child,
            port,
            tls_port,
            _dir: dir,
        };
        k.wait_ready();
        k
    }

    /// Kamailio on another config of `tests/kamailio/` (e.g. `canary.cfg`), UDP and TCP
    /// on loopback `port` (a free one if `None`), with `-A NAME="value"` for each of
    /// `defines`.
    pub(crate) fn start_config(
        cfg: &str,
        defines: &[(&str, String)],
        port: Option<u16>,
    ) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/kamailio")
            .join(cfg);
        let port = port.unwrap_or_else(free_udp_port);
        let log = std::fs::File::create(dir.path().join("kamailio.log")).expect("log file");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-n", "1", "-m", "32", "-M", "8"])
            .arg("-Y")
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .args(["-l", &format!("udp:127.0.0.1:{port}")])
            .args(["-l", &format!("tcp:127.0.0.1:{port}")])
            .args(
                defines
                    .iter()
                    .flat_map(|(k, v)| ["-A".to_string(), format!("{k}=\"{v}\"")]),
            )
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kamailio runs (install Debian package kamailio: scripts/test.sh does)");
        let k = Kamailio {
            child,
            port,
            tls_port: None,
            _dir: dir,
        };
        k.wait_ready();
        k
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("kamailio.log")).unwrap_or_default()
    }

    /// Kamailio answers OPTIONS 200 once its workers run.
    fn wait_ready(&self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let me = probe.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let options = format!(
                "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKready{n}\r\n\
                 From: <sip:probe@{me}>;tag=1\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: ready{n}@{me}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                p = self.port,
                n = rand::random::<u32>()
            );
            let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", self.port));
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    return;
                }
            }
        }
        panic!("kamailio did not come up:\n{}", self.log());
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // The whole group: the main process and the workers it forked.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn trunk_settings(kamailio_port: u16, password: &str) -> Settings {
    let mut s = base_settings(kamailio_port);
    s.verification.repeat = 1;
    let t = &mut s.trunks[0];
    t.register = true;
    t.username = Some("31508200000".into());
    t.auth_username = Some(AUTH_USER.into());
    t.password = Some(SecretString::from(password));
    // Below Kamailio's min_expires (120): the first answer is 423 Min-Expires.
    t.register_expires = 60;
    t.ring_timeout = Duration::from_secs(5);
    s
}

async fn register_and_call(algorithm: &str, transport: Transport) {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp = Sipp::uas(
        "uas_answer_via_proxy.xml",
        &[("rtp_port", rtp_port.to_string())],
    );
    let certs = tempfile::tempdir().unwrap();
    let kamailio = match transport {
        Transport::Tls => {
            make_certificates(certs.path());
            Kamailio::start_tls(sipp.port, algorithm, certs.path())
        }
        _ => Kamailio::start(sipp.port, algorithm),
    };
    let mut s = trunk_settings(kamailio.port, PASSWORD);
    s.trunks[0].proxy.transport = transport;
    if let Some(p) = kamailio.tls_port {
        // Certificates verified against the test CA: the name is the IP in the URI.
        s.trunks[0].proxy.port = p;
        s.trunks[0].tls_ca = certs.path().join("ca.pem").display().to_string();
    }

    let checks = ops::trunk_check(&s, None).await.unwrap();
    let (name, reg) = &checks[0];
    assert_eq!(name, "trunk-a");
    assert_eq!(reg.kind, ProbeKind::Register);
    assert!(reg.ok, "{reg:?}\n{}", kamailio.log());
    assert!(reg.authenticated, "401 answered");
    assert_eq!(
        reg.expires,
        Some(120),
        "re-registered with Min-Expires after 423"
    );

    let packets = tokio::task::spawn_blocking(move || {
        receive_rtp(&rtp, Duration::from_secs(40), Duration::from_millis(1500))
    });
    let report = ops::call(
        &s,
        CallRequest {
            to: "+31612345678".into(),
            code: Some("2468".into()),
            locale: Some("en".into()),
            trunk: Some("trunk-a".into()),
        },
    )
    .await
    .unwrap();
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", report.render(), kamailio.log()));
    let registration = report.registration.clone().expect("registered first");
    assert!(registration.ok && registration.authenticated);
    assert_eq!(
        report.outcome.status,
        CallStatus::Completed,
        "{}\n{}",
        report.render(),
        kamailio.log()
    );
    assert_eq!(report.outcome.times_played, 1);
    let packets = packets.await.unwrap();
    let expected = crate::helpers::expected_frames(&[2, 4, 6, 8], 1);
    assert_eq!(packets.len(), expected, "the callee heard the whole code");
    assert!(packets.iter().all(|p| p.payload_type == 8));
    // Kamailio saw the challenged and the authenticated INVITE, and routed ACK and BYE
    // (its Record-Route made it part of the dialog).
    let log = kamailio.log();
    assert!(log.matches("trunk: INVITE").count() >= 2, "{log}");
    assert!(log.contains("trunk: ACK"), "{log}");
    assert!(log.contains("trunk: BYE"), "{log}");
    let proto = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    };
    for method in ["REGISTER", "INVITE", "ACK", "BYE"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("trunk: {method} "))
                && l.contains(&format!(" from {proto}:"))),
            "{method} over {proto}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_sha256_register_and_call() {
    register_and_call("SHA-256", Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_md5_register_and_call() {
    register_and_call("MD5", Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_wrong_password_fails_trunk_check() {
    let kamailio = Kamailio::start(9, "MD5");
    let s = trunk_settings(kamailio.port, "not-the-password");
    let checks = ops::trunk_check(&s, Some("trunk-a")).await.unwrap();
    let (_, reg) = &checks[0];
    assert!(!reg.ok, "{reg:?}");
    assert_eq!(reg.status, Some(401));
    assert!(
        reg.error
            .as_deref()
            .unwrap()
            .contains("credentials refused"),
        "{reg:?}"
    );
    assert!(!format!("{reg:?}").contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_over_tcp_register_and_call() {
    register_and_call("SHA-256", Transport::Tcp).await;
}

/// SIP over TLS (`transport=tls` in the proxy URI, `tls_ca` the test CA): REGISTER,
/// INVITE, ACK and BYE reach Kamailio on its TLS listener ("from tls:" in its log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_over_tls_register_and_call() {
    register_and_call("SHA-256", Transport::Tls).await;
}

/// A trunk whose certificate does not chain to `tls_ca` gets nothing sent: the
/// handshake fails, REGISTER never reaches Kamailio, the check reports no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_kamailio_tls_with_an_unknown_ca_sends_nothing() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let other = tempfile::tempdir().unwrap();
    let other_ca = make_certificates(other.path());
    let kamailio = Kamailio::start_tls(9, "MD5", certs.path());
    let mut s = trunk_settings(kamailio.port, PASSWORD);
    s.trunks[0].proxy.transport = Transport::Tls;
    s.trunks[0].proxy.port = kamailio.tls_port.unwrap();
    s.trunks[0].tls_ca = other_ca.display().to_string();
    let checks = ops::trunk_check(&s, Some("trunk-a")).await.unwrap();
    let (_, reg) = &checks[0];
    assert!(!reg.ok, "{reg:?}");
    assert_eq!(reg.status, None, "no answer: {reg:?}");
    assert!(
        !kamailio.log().contains("trunk: REGISTER"),
        "{}",
        kamailio.log()
    );
}

/// The `otpdial trunk check` command itself: output per trunk and the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_cli_trunk_check_against_kamailio() {
    let kamailio = Kamailio::start(9, "MD5");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("otpdial.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sip]
listen = "127.0.0.1:0"
[[trunks]]
name = "kam"
proxy = "sip:127.0.0.1:{port}"
register = true
username = "31508200000"
auth_username = "{AUTH_USER}"
password_env = "OTPDIAL_TEST_TRUNK_PASSWORD"
from = "sip:+31508200000@otpdial.test"
register_expires = 300
"#,
            port = kamailio.port
        ),
    )
    .unwrap();
    let run = move |password: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_otpdial"))
            .args(["trunk", "check", "kam", "--config"])
            .arg(&config)
            .env("OTPDIAL_TEST_TRUNK_PASSWORD", password)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, text) = tokio::task::spawn_blocking(move || {
        let good = run(PASSWORD);
        let bad = run("wrong");
        (good, bad)
    })
    .await
    .unwrap();
    let ((good_ok, good), (bad_ok, bad)) = (ok, text);
    assert!(good_ok, "{good}");
    assert!(
        good.starts_with("kam: REGISTER 200 in ")
            && good.contains("authenticated, expires 300 s, OK"),
        "{good}"
    );
    assert!(!bad_ok, "{bad}");
    assert!(
        bad.contains("FAILED") && bad.contains("credentials refused"),
        "{bad}"
    );
    assert!(
        !bad.contains("wrong") && !good.contains(PASSWORD),
        "no secrets printed"
    );
}

/// The whole gateway (API, dialer, registration) with Kamailio as its trunk:
/// it registers by itself, `/v1/trunks` says so, and a verification started
/// over HTTP is called through Kamailio to the SIPp callee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_registers_and_calls_through_kamailio() {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let sipp = Sipp::uas(
        "uas_answer_via_proxy.xml",
        &[("rtp_port", rtp_port.to_string())],
    );
    let kamailio = Kamailio::start(sipp.port, "SHA-256");
    let t = crate::helpers::spawn_app(
        trunk_settings(kamailio.port, PASSWORD),
        crate::helpers::Db::Sqlite,
        otpdial::app::DialerMode::Background,
    )
    .await;

    let mut trunk = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, list) = t.get_as(crate::helpers::ADMIN_TOKEN, "/v1/trunks").await;
        trunk = list["trunks"][0].clone();
        if trunk["registered"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(trunk["registered"], true, "{trunk}\n{}", kamailio.log());
    assert_eq!(trunk["last_error"], serde_json::Value::Null, "{trunk}");
    let ready = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let packets = tokio::task::spawn_blocking(move || {
        receive_rtp(&rtp, Duration::from_secs(40), Duration::from_millis(1500))
    });
    let v = t
        .start_verification(
            serde_json::json!({"to": "+31612345678", "code": "1357", "locale": "en"}),
        )
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(40)).await;
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", kamailio.log()));
    assert_eq!(
        done.call.status,
        CallStatus::Completed,
        "{done:?}\n{}",
        kamailio.log()
    );
    assert_eq!(done.call.times_played, 1);
    let expected = crate::helpers::expected_frames(&[1, 3, 5, 7], 1);
    assert_eq!(packets.await.unwrap().len(), expected);
    let (_, list) = t.get_as(crate::helpers::ADMIN_TOKEN, "/v1/trunks").await;
    assert_eq!(list["trunks"][0]["calls_total"], 1);
    assert_eq!(list["trunks"][0]["answer_rate"], 1.0);
    t.app.stop().await;
}
