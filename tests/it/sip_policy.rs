//! The SIP listener policy against real attack tools, on loopback only: SIPVicious
//! (`svmap`, `svwar` from PyPI `sipvicious`) scanning from a non-trunk address finds
//! nothing, and SIPp OPTIONS and INVITE floods from non-trunk addresses do not disturb
//! real verifications, keep memory flat and show up in the metrics. Another loopback
//! address (127.0.0.x) stands for "another host": the trunk is 127.0.0.1.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otpdial::app::DialerMode;
use otpdial::config::Settings;
use otpdial::domain::CallStatus;
use serde_json::json;

use crate::callee::SippUas;
use crate::helpers::{
    base_settings, free_udp_port, metric_value, metrics_text, sipp_scenario, spawn_app, Db, TestApp,
};
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// Test settings that wait longer for the database: these tests run beside others on
/// a loaded machine, where opening SQLite can take more than the default 800 ms.
fn patient(mut s: Settings) -> Settings {
    s.database.acquire_timeout = Duration::from_secs(10);
    s
}

/// Runs a SIPVicious tool (installed by scripts/test.sh with pip) with a time bound;
/// returns what it printed.
fn sipvicious(tool: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(format!("sipvicious_{tool}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sipvicious_{tool} runs (pip install sipvicious): {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `otpdial_sip_dropped_total{reason="..."}` from `/metrics`.
async fn dropped(t: &TestApp, reason: &str) -> u64 {
    metric(
        t,
        &format!("otpdial_sip_dropped_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// The value of one sample line of `/metrics` (0 when absent).
async fn metric(t: &TestApp, sample: &str) -> u64 {
    metric_value(&t.metrics_text().await, sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svmap_and_svwar_from_a_non_trunk_address_find_nothing() {
    let trunk = SippUas::answer_many(Duration::from_millis(100)).await;
    let t = spawn_app(
        patient(base_settings(trunk.port())),
        Db::Sqlite,
        DialerMode::Manual,
    )
    .await;
    let port = t.app.sip_addr.port().to_string();

    // Control: from the trunk's address the same scan finds the gateway (and learns no
    // product name: the Server header is empty by default).
    let seen = sipvicious("svmap", &["-b", "127.0.0.1", "-p", &port, "127.0.0.1"]);
    let found = format!("127.0.0.1:{port}");
    assert!(seen.contains(&found), "control scan found nothing:\n{seen}");
    assert!(!seen.contains("otpdial"), "product name leaked:\n{seen}");

    for method in ["OPTIONS", "INVITE", "REGISTER"] {
        let out = sipvicious(
            "svmap",
            &["-b", "127.0.0.23", "-p", &port, "-m", method, "127.0.0.1"],
        );
        assert!(!out.contains(&found), "svmap -m {method} found us:\n{out}");
    }
    assert!(dropped(&t, "unknown_source").await > 0);
    t.app.stop().await;

    // svwar (0.3.8) ignores its -b option and always sends from 127.0.0.1, so it runs
    // against a gateway whose trunk is not on 127.0.0.1 (here: no trunk at all).
    let mut s = patient(base_settings(trunk.port()));
    s.trunks.clear();
    // A canary answer number among the extensions it tries: not found either.
    s.canary.answer_numbers = vec!["+31201234567".into()];
    let t = spawn_app(s, Db::Sqlite, DialerMode::Manual).await;
    let port = t.app.sip_addr.port().to_string();
    let target = format!("udp://127.0.0.1:{port}");
    for (method, range) in [
        ("REGISTER", "100-140"),
        ("INVITE", "100-140"),
        ("OPTIONS", "100-140"),
        ("INVITE", "31201234560-31201234570"),
    ] {
        let out = sipvicious("svwar", &["-e", range, "-m", method, &target]);
        assert!(
            out.contains("found nothing")
                && !out.contains("| reqauth")
                && !out.contains("| noauth"),
            "svwar -m {method} -e {range} found extensions:\n{out}"
        );
    }
    assert!(dropped(&t, "unknown_source").await > 0);
    assert_eq!(canary_arrivals(&t, "+31201234567").await, 0);
    t.app.stop().await;
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One sample of the gateway's `/metrics` (0 when absent).
async fn gw_metric(gw: &ServeProc, sample: &str) -> u64 {
    metric_value(&metrics_text(&gw.http, &gw.url("/metrics")).await, sample)
}

/// SIPp as a flooding UAC from `ip`: `count` messages of `scenario` at `rate` per second
/// towards 127.0.0.1:`port`; it stops by itself after `count` (or 60 s).
fn flood(scenario: &str, ip: &str, port: u16, rate: u32, count: u32) -> std::process::Child {
    Command::new("sipp")
        .arg("-sf")
        .arg(sipp_scenario(scenario))
        .args(["-i", ip, "-mi", ip, "-p", &free_udp_port().to_string()])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args(["-m", &count.to_string(), "-l", "100000"])
        .args(["-timeout", "60s", "-nostdin"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs (Debian package sip-tester)")
}

/// SIPp flooding INVITEs to the canary answer number +31201234567 from `ip`.
fn canary_flood(ip: &str, port: u16, rate: u32, count: u32) -> std::process::Child {
    Command::new("sipp")
        .arg("-sf")
        .arg(sipp_scenario("uac_invite_canary.xml"))
        .args(["-i", ip, "-mi", ip, "-p", &free_udp_port().to_string()])
        .args(["-r", &rate.to_string(), "-rp", "1000"])
        .args(["-m", &count.to_string(), "-l", "100000"])
        .args(["-set", "number", "+31201234567"])
        .args(["-timeout", "60s", "-nostdin"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp runs (Debian package sip-tester)")
}

/// Kills a flood still running when the test ends early.
struct Flood(std::process::Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_invite_floods_do_not_disturb_real_calls() {
    const RATE: u32 = 500;
    const SECONDS: u32 = 10;
    const CALLS: u32 = 8;
    const CANARY_RATE: u32 = 100;
    let trunk = SippUas::answer_many(Duration::from_millis(300)).await;
    let cfg = ServeConfig::new()
        .trunk("t", trunk.port(), "")
        .set("database.acquire_timeout", "10s")
        .merge_toml("[canary]\nanswer_numbers = [\"+31201234567\"]\n");
    let gw = ServeProc::start(cfg).await;
    let pid = gw.pid().expect("gateway pid");
    let port = gw.sip_port();
    // Warm up: one call before measuring, so the baseline has every lazy allocation.
    let v = gw
        .start_verification(json!({ "to": nl_mobile(7000) }))
        .await;
    gw.wait_calls_final(&[v.id], Duration::from_secs(30)).await;
    let rss_before = rss_kib(pid);

    let started = Instant::now();
    let mut floods = [
        Flood(flood(
            "uac_options_flood.xml",
            "127.0.0.31",
            port,
            RATE,
            RATE * SECONDS,
        )),
        Flood(flood(
            "uac_invite_flood.xml",
            "127.0.0.32",
            port,
            RATE,
            RATE * SECONDS,
        )),
        // INVITEs to the canary answer number: the test phone answers trunks only.
        Flood(canary_flood(
            "127.0.0.33",
            port,
            CANARY_RATE,
            CANARY_RATE * SECONDS,
        )),
    ];
    // Real verifications while the floods run, one a second.
    let mut ids = Vec::new();
    let mut peak_rss = rss_before;
    for i in 0..CALLS {
        let v = gw
            .start_verification(json!({ "to": nl_mobile(7001 + i) }))
            .await;
        ids.push(v.id);
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(rss_kib(pid));
    }
    let views = gw.wait_calls_final(&ids, Duration::from_secs(60)).await;
    for v in &views {
        assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
    }
    for f in &mut floods {
        let deadline = Instant::now() + Duration::from_secs(30);
        while f.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            peak_rss = peak_rss.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak_rss = peak_rss.max(rss_kib(pid));

    let d = |r: &'static str| format!("otpdial_sip_dropped_total{{reason=\"{r}\"}}");
    let unknown = gw_metric(&gw, &d("unknown_source")).await;
    let limited = gw_metric(&gw, &d("rate_limited")).await;
    let banned = gw_metric(&gw, &d("banned")).await;
    let bans = gw_metric(&gw, "otpdial_sip_bans_total").await;
    let sent = u64::from(2 * RATE * SECONDS + CANARY_RATE * SECONDS);
    let total = unknown + limited + banned;
    let canary_answered = gw_metric(
        &gw,
        "otpdial_canary_inbound_calls_total{result=\"answered\"}",
    )
    .await;
    eprintln!(
        "flood: {sent} messages in {flood_secs:.1} s from 3 sources; dropped \
         unknown_source={unknown} rate_limited={limited} banned={banned}; bans={bans}; \
         {CALLS} real calls completed; gateway RSS {rss_before} KiB -> peak {peak_rss} KiB"
    );
    // A datagram or two may be lost on a loaded loopback; the flood is counted.
    assert!(total >= sent * 95 / 100, "flood counted: {total} of {sent}");
    assert_eq!(bans, 3, "each flooding source banned once");
    assert_eq!(canary_answered, 0, "the test phone answered a stranger");
    assert!(
        peak_rss < rss_before + 20 * 1024,
        "memory grew under the flood: {rss_before} -> {peak_rss} KiB"
    );
    // The trunk saw only our real calls.
    let log = trunk.calls();
    assert_eq!(
        log.answered(),
        CALLS as usize + 1,
        "callee answered only real calls"
    );
}

/// SIPp as a caller from `ip`: `count` calls of `scenario` (with `-set number`) to the
/// gateway on 127.0.0.1:`port`, ten a second; its exit status, once done.
async fn sipp_calls(scenario: &str, ip: &str, port: u16, count: u32, number: &str) -> bool {
    let mut child = Flood(
        Command::new("sipp")
            .arg("-sf")
            .arg(sipp_scenario(scenario))
            .args(["-i", ip, "-mi", ip, "-p", &free_udp_port().to_string()])
            .args(["-r", "10", "-m", &count.to_string(), "-l", "10"])
            .args(["-set", "number", number])
            .args(["-timeout", "30s", "-timeout_error", "-nostdin"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp runs (Debian package sip-tester)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.0.try_wait().ok().flatten() {
            return status.success();
        }
        assert!(Instant::now() < deadline, "sipp {scenario} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Arrivals the canaries' answering side recorded for `number`.
async fn canary_arrivals(t: &TestApp, number: &str) -> usize {
    t.app
        .store
        .canary_unclaimed_arrivals(number, 0)
        .await
        .expect("arrivals readable")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_to_a_canary_number_from_a_stranger_is_not_answered() {
    const NUMBER: &str = "+31201234567";
    let trunk = SippUas::answer_many(Duration::from_millis(100)).await;
    for unknown in ["drop", "403"] {
        let mut s = patient(base_settings(trunk.port()));
        s.canary.answer_numbers = vec![NUMBER.into()];
        if unknown == "403" {
            s.sip.unknown_sources = otpdial::config::UnknownSourcesSetting::Forbid;
        }
        let t = spawn_app(s, Db::Sqlite, DialerMode::Manual).await;
        let port = t.app.sip_addr.port();
        let before = dropped(&t, "unknown_source").await;
        // From a stranger: with "drop" nothing comes back (SIPp times out waiting for
        // nothing: its one message is sent), with "403" only a 403 (the scenario fails
        // on anything else, a 100 Trying or a 200 included).
        let scenario = match unknown {
            "drop" => "uac_invite_canary.xml",
            _ => "uac_invite_canary_403.xml",
        };
        let ok = sipp_calls(scenario, "127.0.0.41", port, 5, NUMBER).await;
        assert!(ok, "{unknown}: the stranger's INVITEs got something else");
        let counted = dropped(&t, "unknown_source").await - before;
        assert!(counted >= 5, "{unknown}: {counted} dropped");
        assert_eq!(canary_arrivals(&t, NUMBER).await, 0, "{unknown}: answered");
        assert_eq!(
            metric(
                &t,
                "otpdial_canary_inbound_calls_total{result=\"answered\"}"
            )
            .await,
            0
        );
        // The control: from the trunk's address the same INVITE is answered.
        let ok = sipp_calls(
            "uac_invite_canary_answered.xml",
            "127.0.0.1",
            port,
            1,
            NUMBER,
        )
        .await;
        assert!(ok, "{unknown}: the trunk's INVITE was not answered");
        assert_eq!(
            metric(
                &t,
                "otpdial_canary_inbound_calls_total{result=\"answered\"}"
            )
            .await,
            1
        );
        assert_eq!(canary_arrivals(&t, NUMBER).await, 1);
        t.app.stop().await;
    }
}
