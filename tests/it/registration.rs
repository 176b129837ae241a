//! Registration hygiene (issue 18) against real registrars, with `otpdial serve` as a
//! child process stopped by a real SIGTERM:
//! - Kamailio (`tests/kamailio/registrar.cfg`, digest auth, bindings in memory): the
//!   gateway's binding is in the location table (`kamcmd ul.dump` over the control
//!   socket the test names) while it runs, and gone once it exited 0 after SIGTERM.
//! - SIPp (`tests/sipp/uas_registrar_nat.xml`), a registrar whose 200 OK says the
//!   REGISTER came from `received=203.0.113.7;rport=40000`: the next REGISTER's
//!   Contact carries that address and removes the first binding, and the shutdown
//!   REGISTER `Expires: 0` names the public Contact (the scenario's regexps check each).

use std::process::Command;
use std::time::Duration;

use crate::helpers::Sipp;
use crate::procs::{poll_until, ServeConfig, ServeProc};
use crate::sip_kamailio::{Kamailio, AUTH_USER, PASSWORD};

/// The trunk keys of a registering trunk with digest credentials.
fn registering_trunk() -> String {
    format!(
        "register = true\nusername = \"31508200000\"\nauth_username = \"{AUTH_USER}\"\n\
         password = \"{PASSWORD}\"\nregister_expires = 300\n"
    )
}

/// Kamailio's location table as `kamcmd ul.dump` prints it.
fn location_table(ctl: &str) -> String {
    let out = Command::new("kamcmd")
        .args(["-s", ctl, "ul.dump"])
        .output()
        .expect("kamcmd runs (Debian package kamailio)");
    assert!(
        out.status.success(),
        "kamcmd ul.dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_unregisters_from_kamailio() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = format!("unix:{}", dir.path().join("ctl.sock").display());
    let kamailio = Kamailio::start_config(
        "registrar.cfg",
        &[
            ("CTL", ctl.clone()),
            ("AUTH_USER", AUTH_USER.into()),
            ("PASSWORD", PASSWORD.into()),
        ],
        None,
    );
    let mut gateway =
        ServeProc::start(ServeConfig::new().trunk("carrier", kamailio.port, &registering_trunk()))
            .await;
    let ours = format!("sip:31508200000@127.0.0.1:{}", gateway.sip_port());

    let bound = poll_until(Duration::from_secs(10), || {
        location_table(&ctl).contains(&ours)
    })
    .await;
    let table = location_table(&ctl);
    assert!(
        bound,
        "binding {ours} never appeared:\n{table}\n{}\n{}",
        gateway.log(),
        kamailio.log()
    );
    println!("registered: {ours} in Kamailio's location table");

    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}\n{}", gateway.log());
    let table = location_table(&ctl);
    assert!(
        !table.contains(&ours) && table.contains("Records: 0"),
        "binding left after shutdown:\n{table}\n{}",
        kamailio.log()
    );
    let log = gateway.log();
    assert!(log.contains("trunk carrier: unregistered"), "{log}");
    // The REGISTER Expires: 0 met the digest challenge and answered it.
    let kam = kamailio.log();
    let zeros = kam
        .lines()
        .filter(|l| l.contains("registrar: REGISTER") && l.contains("expires=0 "))
        .count();
    assert_eq!(zeros, 2, "challenged, then answered:\n{kam}");
    println!("after SIGTERM: exit {status}, location table empty, {zeros} REGISTER Expires: 0 (401, then 200)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_received_rport_becomes_the_contact() {
    let sipp = Sipp::uas("uas_registrar_nat.xml", &[]);
    let mut gateway =
        ServeProc::start(ServeConfig::new().trunk("carrier", sipp.port, &registering_trunk()))
            .await;
    let learned = poll_until(Duration::from_secs(10), || {
        gateway
            .log()
            .contains("trunk carrier: the registrar sees us at 203.0.113.7:40000")
    })
    .await;
    assert!(learned, "{}", gateway.log());

    gateway.sigterm();
    let status = gateway.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}\n{}", gateway.log());
    // SIPp checked the second REGISTER (public Contact, first binding expires=0) and
    // the shutdown one (public Contact, Expires: 0); a miss fails its call.
    sipp.finish(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let log = gateway.log();
    assert!(log.contains("trunk carrier: unregistered"), "{log}");
    println!(
        "SIPp saw: Contact @203.0.113.7:40000 (old binding expires=0), then Expires: 0 for it"
    );
}
