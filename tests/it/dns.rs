//! Trunks given by name (issue 18, RFC 3263): a real DNS server (dnsmasq in the
//! foreground on a loopback port) publishes SRV, A and AAAA records; SIPp callees on
//! 127.0.0.x and ::1 are the carrier's hosts.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use otpdial::app::DialerMode;
use otpdial::config::{SipTarget, TrunkSettings};
use otpdial::dns::SipResolver;
use otpdial::domain::CallStatus;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    base_settings, metric_value, receive_rtp, spawn_app, Db, Sipp, TestApp, ADMIN_TOKEN,
};
use crate::procs::{fast_prompts_dir, free_sip_port};

/// dnsmasq answering for `*.test` from the records it was started with (TTL 1 s),
/// NXDOMAIN for any other name under `.test`, nothing forwarded.
struct Dnsmasq {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn dnsmasq_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq" // scripts/test.sh installs dnsmasq-base
    }
}

impl Dnsmasq {
    /// `records`: dnsmasq options such as `--srv-host=...` and `--host-record=...`.
    async fn start(port: u16, records: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dnsmasq.log");
        let child = Command::new(dnsmasq_binary())
            .args([
                "-k",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/test/",
                "--local-ttl=1",
                "--pid-file",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            // As root it would switch to `nobody`; nothing here needs that.
            .arg("--user=root")
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("dnsmasq runs (Debian dnsmasq-base; scripts/test.sh installs it)");
        let mut d = Dnsmasq {
            child,
            port,
            log,
            _dir: dir,
        };
        d.wait_ready().await;
        d
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Until it answers a query (a name of its own), within a deadline.
    async fn wait_ready(&mut self) {
        let probe: SipTarget = "sip:ready.test:5060".parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "dnsmasq exited: {}",
                self.log()
            );
            // A fresh resolver each time: no cached answer.
            match SipResolver::new(&[self.addr()]).resolve(&probe).await {
                Err(otpdial::dns::DnsError::Lookup { .. }) => {}
                _ => return, // NXDOMAIN or an answer: it is up
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq not answering: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("--srv-host={name},{target},{port},{priority},{weight}")
}

fn host(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

/// SIPp answering one call on `ip`, its SDP pointing RTP at `rtp`.
fn answering_callee(ip: &str, rtp: &UdpSocket) -> Sipp {
    let rtp_port = rtp.local_addr().unwrap().port();
    Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", rtp_port.to_string())],
        &[],
        free_sip_port(),
        ip,
    )
}

/// A trunk as a config file would have it (priority `priority`).
fn trunk(name: &str, proxy: &str, priority: u32) -> TrunkSettings {
    let mut t = base_settings(5060).trunks[0].clone();
    t.name = name.into();
    t.proxy = proxy.parse().unwrap();
    t.priority = priority;
    t
}

async fn trunk_view(t: &TestApp, name: &str) -> Value {
    let (status, body) = t.get_as(ADMIN_TOKEN, "/v1/trunks").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["trunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no trunk {name} in {body}"))
}

fn addresses(view: &Value) -> Vec<String> {
    view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}

/// (a) `_sip._udp.carrier.test` has two hosts, priorities 10 and 20; the first
/// answers 503: the call completes on the second, and the other trunk gets nothing.
/// (b) dnsmasq restarts publishing a new host (TTL 1 s): the next call goes there,
/// without a restart of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_failover_stays_within_the_trunk_and_follows_a_dns_change() {
    let (down_port, up_port, new_port) = (free_sip_port(), free_sip_port(), free_sip_port());
    let records = vec![
        srv(
            "_sip._udp.carrier.test",
            "a.carrier.test",
            down_port,
            10,
            60,
        ),
        srv("_sip._udp.carrier.test", "b.carrier.test", up_port, 20, 0),
        host("a.carrier.test", "127.0.0.2"),
        host("b.carrier.test", "127.0.0.3"),
    ];
    let mut dns = Dnsmasq::start(free_sip_port(), &records).await;
    // The priority-10 host is down for calls (503, no provisional).
    let down = Sipp::spawn_uas("uas_503_options_ok.xml", &[], &[], down_port, "127.0.0.2");
    let up_rtp = UdpSocket::bind("127.0.0.3:0").unwrap();
    let up = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", up_rtp.local_addr().unwrap().port().to_string())],
        &[],
        up_port,
        "127.0.0.3",
    );
    // The other trunk: a socket that records whatever reaches it.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let other_port = other.local_addr().unwrap().port();

    let mut settings = base_settings(other_port);
    settings.prompts.dir = Some(fast_prompts_dir());
    settings.sip.dns_servers = vec![dns.addr().to_string()];
    settings.trunks = vec![
        trunk("carrier", "sip:carrier.test", 10),
        trunk("backup", &format!("sip:127.0.0.1:{other_port}"), 20),
    ];
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;

    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "481526" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(40)).await;
    down.finish(Duration::from_secs(10))
        .await
        .expect("the priority-10 host got the INVITE, answered 503 and got the ACK");
    up.finish(Duration::from_secs(10))
        .await
        .expect("the priority-20 host answered the call");
    println!("(a) call: {:?}", done.call);
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.trunk.as_deref(), Some("carrier"));
    assert_eq!(done.call.attempts.len(), 1, "one attempt, on one trunk");
    let mut buf = [0u8; 2048];
    assert!(
        other.recv_from(&mut buf).is_err(),
        "the backup trunk received nothing"
    );
    let metrics = t.metrics_text().await;
    let sample = r#"otpdial_trunk_target_failovers_total{trunk="carrier"}"#;
    println!("(a) {sample} {}", metric_value(&metrics, sample));
    assert_eq!(
        metric_value(&metrics, sample),
        1,
        "one move to the next host"
    );
    let view = trunk_view(&t, "carrier").await;
    println!("(a) /v1/trunks carrier: {view}");
    assert_eq!(
        addresses(&view),
        [
            format!("127.0.0.2:{down_port}"),
            format!("127.0.0.3:{up_port}")
        ]
    );
    assert!(
        view["targets"][0]["record"]
            .as_str()
            .unwrap()
            .starts_with("SRV _sip._udp.carrier.test 10 60"),
        "{view}"
    );

    // (b) The carrier moves to a new host; the records' TTL is 1 s.
    dns.stop();
    let records = vec![
        srv("_sip._udp.carrier.test", "c.carrier.test", new_port, 10, 0),
        host("c.carrier.test", "127.0.0.4"),
    ];
    let dns = Dnsmasq::start(dns.port, &records).await;
    let new_rtp = UdpSocket::bind("127.0.0.4:0").unwrap();
    let new_host = Sipp::spawn_uas(
        "uas_answer.xml",
        &[("rtp_port", new_rtp.local_addr().unwrap().port().to_string())],
        &[],
        new_port,
        "127.0.0.4",
    );
    // The gateway's cached records (TTL 1 s) have run out by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = t
        .start_verification(json!({ "to": "+31612345679", "code": "172839" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(40)).await;
    new_host
        .finish(Duration::from_secs(10))
        .await
        .expect("the new host answered the call");
    println!("(b) call: {:?}", done.call);
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    let view = trunk_view(&t, "carrier").await;
    println!("(b) /v1/trunks carrier: {view}");
    assert_eq!(addresses(&view), [format!("127.0.0.4:{new_port}")]);
    assert!(other.recv_from(&mut buf).is_err(), "backup still untouched");
    drop(dns);
    t.app.stop().await;
}

/// (c) A name with only an AAAA record (::1): the gateway on [::1] calls the SIPp
/// callee there, and the code arrives as RTP over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aaaa_only_name_calls_over_ipv6() {
    let dns = Dnsmasq::start(free_sip_port(), &[host("v6.carrier.test", "::1")]).await;
    let rtp = UdpSocket::bind("[::1]:0").unwrap();
    let callee = answering_callee("::1", &rtp);
    let callee_port = callee.port;
    let mut settings = base_settings(callee_port);
    settings.sip.listen = "[::1]:0".parse().unwrap();
    settings.sip.dns_servers = vec![dns.addr().to_string()];
    settings.trunks[0].proxy = format!("sip:v6.carrier.test:{callee_port}")
        .parse()
        .unwrap();
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;

    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "481526" }))
        .await;
    let packets = tokio::task::spawn_blocking(move || {
        receive_rtp(&rtp, Duration::from_secs(60), Duration::from_millis(1500))
    })
    .await
    .unwrap();
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    callee
        .finish(Duration::from_secs(10))
        .await
        .expect("SIPp on ::1 passed its scenario");
    let view = trunk_view(&t, "trunk-a").await;
    println!(
        "(c) call: {:?}\n(c) /v1/trunks: {view}\n(c) RTP packets over IPv6: {}",
        done.call,
        packets.len()
    );
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(addresses(&view), [format!("[::1]:{callee_port}")]);
    assert_eq!(view["targets"][0]["record"], "AAAA v6.carrier.test");
    assert!(!packets.is_empty(), "RTP over IPv6 arrived");
    t.app.stop().await;
}

/// (d) A trunk whose name does not resolve: the gateway starts anyway, the call fails
/// over to the next trunk with a DNS reason (no SIP status), and `/v1/trunks` and
/// `trunk check` show the DNS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_fails_over_to_the_next_trunk() {
    let dns = Dnsmasq::start(free_sip_port(), &[host("other.test", "127.0.0.1")]).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = answering_callee("127.0.0.1", &rtp);
    let mut settings = base_settings(callee.port);
    settings.prompts.dir = Some(fast_prompts_dir());
    settings.sip.dns_servers = vec![dns.addr().to_string()];
    let backup = settings.trunks[0].clone();
    settings.trunks = vec![trunk("nowhere", "sip:nowhere.test", 10), {
        let mut b = backup;
        b.name = "backup".into();
        b.priority = 20;
        b
    }];
    let checks = otpdial::ops::trunk_check_targets(&settings, Some("nowhere"))
        .await
        .unwrap();
    let check = checks[0].render();
    println!("(d) trunk check:\n{check}");
    assert!(
        check.contains("nowhere: DNS: nowhere.test has no NAPTR, SRV, A or AAAA record")
            && check.contains("FAILED"),
        "{check}"
    );
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;

    let v = t
        .start_verification(json!({ "to": "+31612345678", "code": "481526" }))
        .await;
    let done = t.wait_call_final(&v.id, Duration::from_secs(30)).await;
    callee
        .finish(Duration::from_secs(10))
        .await
        .expect("the backup trunk's callee answered");
    println!("(d) call: {:?}", done.call);
    assert_eq!(done.call.status, CallStatus::Completed, "{done:?}");
    assert_eq!(done.call.trunk.as_deref(), Some("backup"));
    let first = &done.call.attempts[0];
    assert_eq!(first.trunk, "nowhere");
    assert_eq!(first.sip_code, None, "no SIP status: nothing was sent");
    let reason = first.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("DNS") && reason.contains("nowhere.test"),
        "{reason}"
    );
    let view = trunk_view(&t, "nowhere").await;
    println!("(d) /v1/trunks nowhere: {view}");
    assert!(
        view["dns_error"]
            .as_str()
            .is_some_and(|e| e.contains("nowhere.test")),
        "{view}"
    );
    assert_eq!(view["targets"], json!([]));
    t.app.stop().await;
}

/// Registration and OPTIONS follow the DNS too: the trunk's OPTIONS go to the host its
/// SRV record names, and after the record changes (TTL 1 s) to the new host, without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_keepalive_follows_a_dns_change() {
    let (old_port, new_port) = (free_sip_port(), free_sip_port());
    let records = vec![
        srv("_sip._udp.keep.test", "a.keep.test", old_port, 10, 0),
        host("a.keep.test", "127.0.0.2"),
    ];
    let mut dns = Dnsmasq::start(free_sip_port(), &records).await;
    // Each answers one OPTIONS with 200 and exits (its scenario then passed).
    let old_host = Sipp::spawn_uas("uas_503_options_ok.xml", &[], &[], old_port, "127.0.0.2");
    let mut settings = base_settings(5060);
    settings.sip.dns_servers = vec![dns.addr().to_string()];
    settings.trunks = vec![trunk("carrier", "sip:keep.test", 10)];
    settings.trunks[0].options_interval = Duration::from_secs(5);
    let t = spawn_app(settings, Db::Sqlite, DialerMode::Background).await;
    old_host
        .finish(Duration::from_secs(15))
        .await
        .expect("the first OPTIONS went to the SRV record's host");

    dns.stop();
    let records = vec![
        srv("_sip._udp.keep.test", "b.keep.test", new_port, 10, 0),
        host("b.keep.test", "127.0.0.3"),
    ];
    let dns = Dnsmasq::start(dns.port, &records).await;
    let new_host = Sipp::spawn_uas("uas_503_options_ok.xml", &[], &[], new_port, "127.0.0.3");
    new_host
        .finish(Duration::from_secs(20))
        .await
        .expect("a later OPTIONS went to the new host");
    let view = trunk_view(&t, "carrier").await;
    println!("(e) /v1/trunks carrier: {view}");
    assert_eq!(addresses(&view), [format!("127.0.0.3:{new_port}")]);
    drop(dns);
    t.app.stop().await;
}
