//! The docker set-up without a container engine (none runs here or in CI): the files
//! under `docker/` are run as they are, outside containers.
//!
//! - `otpdial config check docker/otpdial.toml` with exactly the environment that
//!   `docker/compose.yaml` gives the `otpdial` service (its `${VAR:-default}`s at their
//!   demo defaults); without the trunk password it fails, naming the variable.
//! - The Dockerfile, compose file and configs agree: multi-stage, non-root, a
//!   `/healthz` healthcheck, the config and prompts where the config expects them,
//!   every secret the config names set by compose, SIP 5060 published on UDP and TCP.
//! - Kamailio with `docker/kamailio.cfg` (only its listen address given by `-l`), the
//!   demo phone by `docker/baresip/entrypoint.sh` with `docker/baresip/config`, and
//!   `otpdial serve --config docker/otpdial.toml` (only HTTP, SIP and database
//!   addresses overridden by environment): otpdial registers to Kamailio, a
//!   verification rings the phone through it, the phone answers and records the code,
//!   and the Dockerfile's own HEALTHCHECK command passes against the running gateway.
//!
//! Compose runs the trunk, the phone and the gateway in one network namespace, so
//! their addresses are 127.0.0.1:5060 (Kamailio), :5080 (baresip) and :5070 (otpdial);
//! this test uses the first two as they are (they must be free on this machine) and
//! gives otpdial free ports.

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::admin_page;
use crate::procs::{free_sip_port, free_tcp_port};

const VERIFY_TOKEN: &str = "demo-verify-token";
const ADMIN_TOKEN: &str = "demo-admin-token";
/// The code the demo phone must hear (passed in, as a 2FA core that owns its codes does).
const CODE: &str = "481526";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_file(name: &str) -> String {
    let path = repo().join("docker").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- docker/compose.yaml, the subset it uses ----------------------------------------

/// `${NAME:-default}` → `default` (compose with none of the variables set).
fn demo_default(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .unwrap_or_else(|| panic!("unclosed ${{ in {value:?}"));
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// One service of docker/compose.yaml as the test needs it: its `environment:` map
/// (demo defaults resolved), its `ports:` and its scalar keys (`network_mode`).
#[derive(Debug, Default)]
struct Service {
    env: BTreeMap<String, String>,
    ports: Vec<String>,
    scalars: BTreeMap<String, String>,
}

/// Reads the services of a compose file written in block style with two-space
/// indents: `services:` / `  name:` / `    key: value` or `    key:` and under it
/// `      KEY: value` (maps) or `      - item` (lists). Enough for our own file.
fn compose_services(text: &str) -> BTreeMap<String, Service> {
    let unquote = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_owned();
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let (mut in_services, mut service, mut key) = (false, String::new(), String::new());
    for raw in text.lines() {
        // Comments: a `#` at the start or after a space (values here have none).
        let line = match raw.find(" #") {
            Some(i) => &raw[..i],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let item = line.trim();
        match indent {
            0 => in_services = item == "services:",
            2 if in_services => {
                service = item.trim_end_matches(':').to_owned();
                services.entry(service.clone()).or_default();
            }
            4 if in_services => {
                let (k, v) = item.split_once(':').expect("key: value");
                key = k.to_owned();
                if !v.trim().is_empty() {
                    let s = services.get_mut(&service).expect("service");
                    s.scalars.insert(key.clone(), unquote(v));
                }
            }
            6 if in_services => {
                let s = services.get_mut(&service).expect("service");
                match (key.as_str(), item.strip_prefix("- ")) {
                    ("ports", Some(port)) => s.ports.push(unquote(port)),
                    ("environment", None) => {
                        let (k, v) = item.split_once(':').expect("KEY: value");
                        s.env.insert(k.to_owned(), demo_default(&unquote(v)));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    services
}

fn compose() -> BTreeMap<String, Service> {
    compose_services(&docker_file("compose.yaml"))
}

/// A command with exactly `env` (and PATH): nothing from the test's environment.
fn with_env(cmd: &mut Command, env: &BTreeMap<String, String>) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.envs(env);
}

fn otpdial() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otpdial"));
    cmd.current_dir(repo());
    cmd
}

#[test]
fn compose_parser_reads_env_ports_and_scalars() {
    let text = "# c\nservices:\n  a:\n    image: x # why\n    network_mode: \"service:b\"\n    environment:\n      K: ${V:-dflt}\n      URL: p://u:${P:-pw}@h/db\n      E: ${X:-}\n    ports:\n      - \"1:1/udp\"\nvolumes:\n  v:\n";
    let s = compose_services(text);
    let a = &s["a"];
    assert_eq!(a.env["K"], "dflt");
    assert_eq!(a.env["URL"], "p://u:pw@h/db");
    assert_eq!(a.env["E"], "");
    assert_eq!(a.ports, vec!["1:1/udp"]);
    assert_eq!(a.scalars["network_mode"], "service:b");
    assert_eq!(s.len(), 1, "volumes are not services");
}

#[test]
fn docker_files_fit_together_and_config_checks_with_the_compose_env() {
    let services = compose();
    for name in ["postgres", "kamailio", "otpdial", "phone"] {
        assert!(
            services.contains_key(name),
            "service {name} in compose.yaml"
        );
    }
    let gw = &services["otpdial"];
    let kamailio = &services["kamailio"];
    let phone = &services["phone"];

    // `otpdial config check` with the compose environment: valid, secrets masked.
    let mut cmd = otpdial();
    cmd.args(["config", "check", "docker/otpdial.toml"]);
    with_env(&mut cmd, &gw.env);
    let out = cmd.output().expect("otpdial config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("docker/otpdial.toml is valid"), "{stdout}");
    assert!(stdout.contains("name = \"demo-trunk\""), "{stdout}");
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(!stdout.contains(&gw.env["TRUNK_PASSWORD"]), "{stdout}");
    assert!(
        stdout.contains("url = \"postgres://otpdial:***@postgres/otpdial\""),
        "compose's database URL applied, its password masked: {stdout}"
    );

    // Without the trunk password the gateway cannot start: the variable is named.
    let mut env = gw.env.clone();
    env.remove("TRUNK_PASSWORD");
    let mut cmd = otpdial();
    cmd.args(["config", "check", "docker/otpdial.toml"]);
    with_env(&mut cmd, &env);
    let out = cmd.output().expect("otpdial config check");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TRUNK_PASSWORD"));

    // Every secret variable the config names is set by compose, with the same demo
    // default as the trunk that checks it.
    let cfg: toml::Table = toml::from_str(&docker_file("otpdial.toml")).expect("toml");
    let mut named = vec![cfg["webhooks"]["secret_env"].as_str().unwrap().to_owned()];
    for t in cfg["trunks"].as_array().unwrap() {
        if let Some(var) = t.get("password_env") {
            named.push(var.as_str().unwrap().to_owned());
        }
    }
    for var in &named {
        assert!(
            gw.env.get(var).is_some_and(|v| !v.is_empty()),
            "compose sets {var} for otpdial"
        );
    }
    assert_eq!(gw.env["TRUNK_PASSWORD"], kamailio.env["TRUNK_PASSWORD"]);
    assert_eq!(phone.env["PHONE_PASSWORD"], kamailio.env["PHONE_PASSWORD"]);
    // One network namespace, so the configs' 127.0.0.1 addresses hold in compose.
    for s in [gw, phone] {
        assert_eq!(s.scalars["network_mode"], "service:kamailio");
    }
    assert_eq!(phone.env["TRUNK_ADDRESS"], "127.0.0.1:5060");
    for port in ["5060:5060/udp", "5060:5060/tcp", "8080:8080/tcp"] {
        assert!(kamailio.ports.iter().any(|p| p == port), "{port} published");
    }

    // The image: multi-stage, non-root, the demo config and the prompt packs where
    // the config looks for them, a healthcheck on /healthz.
    let dockerfile = docker_file("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("FROM ")).count(), 2);
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(user != "root" && user != "0", "runs as {user}");
    assert!(lines.contains(&"COPY docker/otpdial.toml /etc/otpdial/otpdial.toml"));
    assert_eq!(cfg["prompts"]["dir"].as_str(), Some("prompts"));
    assert!(lines.contains(&"WORKDIR /opt/otpdial"));
    for locale in ["en", "nl"] {
        assert!(lines
            .contains(&format!("COPY prompts/{locale} /opt/otpdial/prompts/{locale}").as_str()));
        assert!(repo()
            .join("prompts")
            .join(locale)
            .join("pack.toml")
            .is_file());
    }
    assert!(healthcheck_command(&dockerfile).contains("/healthz"));
    assert!(dockerfile.contains("CMD [\"serve\", \"--config\", \"/etc/otpdial/otpdial.toml\"]"));
}

/// The Dockerfile's HEALTHCHECK as the argv it runs.
fn healthcheck_command(dockerfile: &str) -> String {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("CMD [") + 4..];
    let argv: Vec<String> = serde_json::from_str(json.trim()).expect("exec-form CMD");
    argv.join("\u{0}")
}

/// The readings of the code in a recording, by the test phone's recogniser with the
/// packs in prompts/ (the ones docker/otpdial.toml plays).
fn code_readings(wav: &Path) -> Vec<String> {
    let mut reader = hound::WavReader::open(wav).expect("a WAV recording");
    let spec = reader.spec();
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    // Mono 8 kHz is what the recogniser takes: keep the first channel, and every
    // n-th sample of a higher rate (the prompts have nothing above 4 kHz).
    let channels = usize::from(spec.channels.max(1));
    let step = (spec.sample_rate / 8000).max(1) as usize;
    let audio: Vec<i16> = samples
        .iter()
        .step_by(channels)
        .step_by(step)
        .copied()
        .collect();
    let library =
        otpdial::media::PromptLibrary::load_dir(&repo().join("prompts")).expect("prompt packs");
    let recognizer = otpdial::testphone::recognize::Recognizer::new(&library);
    let phrases: Vec<_> = recognizer
        .recognize(&audio)
        .into_iter()
        .map(|m| m.phrase)
        .collect();
    otpdial::testphone::recognize::readings(&phrases)
}

// ---- the demo trunk, phone and gateway as processes ------------------------------

/// A child in its own process group, stopped with its group (SIGTERM, then SIGKILL).
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

async fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn port_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The phone's recordings: WAV files and their sizes.
fn recordings(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wav"))
                .map(|p| {
                    let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    (p, len)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_trunk_phone_and_gateway_run_outside_containers() {
    // The fixed ports of compose's namespace; another test's process may hold one
    // for a while, so wait for them rather than fail at once.
    let wanted = [
        (5060, "Kamailio (docker/kamailio.cfg)"),
        (5080, "baresip (docker/baresip/config)"),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|(port, _)| port_free(*port)) {
        let busy: Vec<_> = wanted.iter().filter(|(p, _)| !port_free(*p)).collect();
        assert!(
            Instant::now() < deadline,
            "127.0.0.1 ports still taken after 60 s: {busy:?}; the docker configs use them as compose does"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let services = compose();
    let dir = tempfile::tempdir().expect("tempdir");

    // The trunk: docker/kamailio.cfg, listening where compose's namespace has it.
    let mut cmd = Command::new("kamailio");
    cmd.arg("-f")
        .arg(repo().join("docker/kamailio.cfg"))
        .args(["-DD", "-E", "-m", "64", "-M", "8"])
        .arg("-Y")
        .arg(dir.path())
        .arg("-w")
        .arg(dir.path())
        .args(["-l", "udp:127.0.0.1:5060", "-l", "tcp:127.0.0.1:5060"]);
    with_env(&mut cmd, &services["kamailio"].env);
    let kamailio = Proc::spawn(cmd, dir.path().join("kamailio.log"));
    wait_for(
        "Kamailio listening on 127.0.0.1:5060",
        Duration::from_secs(10),
        || crate::procs::udp_port_bound(5060),
        || kamailio.log(),
    )
    .await;

    // The phone: docker/baresip/entrypoint.sh with compose's environment; its
    // recordings and scratch files in the test's dir.
    let recorded = dir.path().join("recordings");
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("docker/baresip/entrypoint.sh"))
        .args(["-t", "180"]);
    let mut env = services["phone"].env.clone();
    env.insert("RECORDINGS".into(), recorded.display().to_string());
    env.insert("TMPDIR".into(), dir.path().display().to_string());
    with_env(&mut cmd, &env);
    let mut phone = Proc::spawn(cmd, dir.path().join("baresip.log"));
    wait_for(
        "the phone registered at the trunk",
        Duration::from_secs(15),
        || kamailio.log().contains("demo-trunk: phone registered"),
        || format!("{}\n{}", kamailio.log(), phone.log()),
    )
    .await;

    // The gateway: docker/otpdial.toml with compose's environment; only its own
    // addresses (HTTP, SIP: free ports here) and the database (a file here, compose's
    // PostgreSQL is not reachable) differ.
    let http_port = free_tcp_port();
    let mut env = services["otpdial"].env.clone();
    env.insert(
        "OTPDIAL_HTTP__LISTEN".into(),
        format!("127.0.0.1:{http_port}"),
    );
    env.insert(
        "OTPDIAL_SIP__LISTEN".into(),
        format!("127.0.0.1:{}", free_sip_port()),
    );
    env.insert(
        "OTPDIAL_DATABASE__URL".into(),
        format!("sqlite://{}", dir.path().join("otpdial.db").display()),
    );
    env.insert("RUST_LOG".into(), "info".into());
    let mut cmd = otpdial();
    cmd.args(["serve", "--config", "docker/otpdial.toml"]);
    with_env(&mut cmd, &env);
    let mut gateway = Proc::spawn(cmd, dir.path().join("otpdial.log"));
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(gateway.running(), "otpdial serve exited\n{}", gateway.log());
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no /healthz\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The image's HEALTHCHECK command, pointed at this port.
    let argv =
        healthcheck_command(&docker_file("Dockerfile")).replace("8080", &http_port.to_string());
    let argv: Vec<&str> = argv.split('\u{0}').collect();
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .expect("healthcheck runs");
    assert!(status.success(), "HEALTHCHECK {argv:?}: {status}");

    // otpdial registers with the trunk's digest challenge.
    let trunk = || async {
        let r = http
            .get(format!("{base}/v1/trunks"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["trunks"][0].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = trunk().await;
        if t["registered"] == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered: {t}\n{}\n{}",
            kamailio.log(),
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kamailio.log().contains("demo-trunk: otpdial registered"));

    // A verification rings the phone through the trunk; the phone answers and hears it.
    let r = http
        .post(format!("{base}/v1/verifications"))
        .bearer_auth(VERIFY_TOKEN)
        .json(&json!({ "to": "+31612345678", "code": CODE }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let view = loop {
        let v: Value = http
            .get(format!("{base}/v1/verifications/{id}"))
            .bearer_auth(VERIFY_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = v["call"]["status"].as_str().unwrap_or("").to_owned();
        if !["queued", "dialing", "ringing", "answered"].contains(&status.as_str()) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "call still {status}\n{}\n{}\n{}",
            kamailio.log(),
            phone.log(),
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        view["call"]["status"],
        "completed",
        "{view}\n{}\n{}\n{}",
        kamailio.log(),
        phone.log(),
        gateway.log()
    );
    assert_eq!(view["call"]["trunk"], "demo-trunk");
    let log = kamailio.log();
    assert!(
        log.matches("demo-trunk: INVITE").count() >= 2,
        "challenged, then authenticated: {log}"
    );
    assert!(log.contains("demo-trunk: call to the phone"), "{log}");
    assert!(phone.running(), "{}", phone.log());

    // What the phone recorded (sndfile's `-dec.wav`: the audio it received), run
    // through the test phone's recogniser: the code, read twice (docker/otpdial.toml
    // has repeat = 2).
    let files = recordings(&recorded);
    println!("demo phone recordings: {files:?}");
    let heard = files
        .iter()
        .find(|(p, _)| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no decode recording in {files:?}\n{}", phone.log()));
    let readings = code_readings(&heard.0);
    assert_eq!(readings, vec![CODE, CODE], "what the phone heard");

    // Registration and the call in the metrics and on the dashboard.
    let metrics = crate::helpers::metrics_text(&http, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("otpdial_trunk_registered{trunk=\"demo-trunk\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("otpdial_call_setup_seconds_count{trunk=\"demo-trunk\"} 1"));
    let page = admin_page(&http, format!("{base}/admin"), ADMIN_TOKEN).await;
    assert!(
        page.contains(">registered<") && page.contains(">completed<"),
        "{page}"
    );
    let gateway_log = gateway.log();
    for secret in ["TRUNK_PASSWORD", "OTPDIAL_WEBHOOK_SECRET"] {
        let value = &services["otpdial"].env[secret];
        assert!(
            !gateway_log.contains(value.as_str()),
            "{secret} leaked into the log"
        );
    }
}
