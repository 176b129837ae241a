//! `otpdial config check` prints the effective settings with every secret
//! masked: trunk and QA phone passwords, the database password (in the user
//! info or the query), the risk hook URL's credentials, webhook and risk keys.

use std::process::Command;

#[test]
fn config_check_masks_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otpdial.toml");
    std::fs::write(
        &file,
        r#"
[database]
url = "postgres://otpdial:Db-Pass-7a1c@db.example:5432/otpdial?sslmode=require&sslpassword=Ssl-Pass-2f11"
[risk]
hook_url = "https://hook:Hook-Pass-81aa@risk.example/hook?token=Hook-Token-6d3e"
[[api.keys]]
name = "ops"
hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
scopes = ["admin"]
[[qa.phones]]
username = "qa1"
password_env = "TEST_QA_PW"
number = "+31612000001"
[[trunks]]
name = "primary"
proxy = "sip:sip.example:5060"
register = true
username = "31508200000"
password_env = "TEST_TRUNK_PW"
from = "sip:+31508200000@sip.example"
[[trunks]]
name = "inline"
proxy = "sip:sip2.example:5060"
password = "Inline-Pass-93d2"
username = "u2"
from = "sip:+31508200001@sip2.example"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .args(["config", "check"])
        .arg(&file)
        .env("TEST_TRUNK_PW", "Trunk-Pass-55e0")
        .env("TEST_QA_PW", "Qa-Pass-1e7b")
        .env("OTPDIAL_WEBHOOK_SECRET", "Webhook-Key-0b9f")
        .env("OTPDIAL_RISK_SECRET", "Risk-Key-4c2e")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
    for secret in [
        "Db-Pass-7a1c",
        "Ssl-Pass-2f11",
        "Hook-Pass-81aa",
        "Hook-Token-6d3e",
        "Trunk-Pass-55e0",
        "Qa-Pass-1e7b",
        "Inline-Pass-93d2",
        "Webhook-Key-0b9f",
        "Risk-Key-4c2e",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} printed:\n{stderr}");
    }
    assert!(
        stdout.contains("otpdial:***@db.example:5432/otpdial?sslmode=require&sslpassword=***"),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://hook:***@risk.example/hook?token=***"),
        "{stdout}"
    );
    // Each set password shows as "***": two trunks and the QA phone.
    assert_eq!(stdout.matches("password = \"***\"").count(), 3, "{stdout}");
    // Durations print as people write them.
    for line in [
        "acquire_timeout = \"800ms\"",
        "ttl = \"10m\"",
        "ring_timeout = \"30s\"",
        "options_interval = \"0s\"",
    ] {
        assert!(stdout.contains(line), "{line} not in:\n{stdout}");
    }
    assert!(
        stdout.contains("\"***\""),
        "masked passwords shown as ***: {stdout}"
    );
}

/// Every subcommand's `--help` says what it does and shows an example.
#[test]
fn every_subcommand_help_has_an_example() {
    for cmd in [
        &["serve"][..],
        &["demo"],
        &["trunk"],
        &["apikey"],
        &["config"],
        &["prompts"],
        &["call"],
        &["migrate"],
        &["prompts", "check"],
        &["trunk", "check"],
        &["apikey", "new"],
        &["config", "check"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_otpdial"))
            .args(cmd)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            text.contains("Example"),
            "{cmd:?} --help has no example:\n{text}"
        );
        assert!(
            text.contains(&format!("otpdial {}", cmd.join(" "))),
            "{cmd:?} example shows the command:\n{text}"
        );
    }
}

/// A `[verification] locale_by_prefix` value naming a pack that is not installed:
/// `config check` refuses it with the message `serve` refuses it with, naming the key.
#[test]
fn config_check_refuses_a_locale_by_prefix_without_a_pack() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otpdial.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[sip]\nlisten = \"127.0.0.1:0\"\n\
             [database]\nurl = \"sqlite://{}\"\n\
             [verification]\nlocale_by_prefix = {{ \"+31\" = \"nl\", \"+49\" = \"de\" }}\n",
            dir.path().join("otpdial.db").display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(
        !check.status.success(),
        "accepted:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let want = "config key `verification.locale_by_prefix.\"+49\"`: no prompt pack \"de\"";
    assert!(stderr.contains(want), "{stderr}");

    // `serve` on the same file: the same line, and it does not start.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_otpdial"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve started with a locale_by_prefix pack that does not exist");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = serve.wait_with_output().unwrap();
    assert!(!status.success());
    let served = String::from_utf8_lossy(&out.stderr);
    let line = |text: &str| {
        text.lines()
            .find(|l| l.contains(want))
            .map(|l| l[l.find("config key").unwrap()..].to_owned())
    };
    assert_eq!(line(&stderr), line(&served), "{served}");
}
