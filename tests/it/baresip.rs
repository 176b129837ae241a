//! baresip (Debian `baresip-core`) as a real SIP phone for the tests: no sound card
//! (the aubridge module gives the call a player and a source), answering every call
//! at once and recording the decoded audio it receives (sndfile) into `dir/rec`.
//! Killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::helpers::free_udp_port;

pub(crate) struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
    /// Its SIP address.
    pub(crate) addr: SocketAddr,
}

impl Baresip {
    /// Starts baresip listening on `ip` (a free port), with `extra` config lines (more
    /// modules, `rtp_ports`, …) and the one account line `account`.
    pub(crate) fn start(ip: &str, extra: &str, account: &str) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = dir.path().join("rec");
        std::fs::create_dir(&rec).expect("rec dir");
        let port = free_udp_port();
        let config = format!(
            "poll_method epoll\n\
             sip_listen {ip}:{port}\n\
             audio_player aubridge,test\n\
             audio_source aubridge,test\n\
             audio_alert aubridge,test\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aubridge.so\n\
             module sndfile.so\n\
             {extra}\
             module_tmp account.so\n\
             module_app menu.so\n\
             snd_path {}\n",
            rec.display()
        );
        std::fs::write(dir.path().join("config"), config).expect("config");
        std::fs::write(dir.path().join("accounts"), format!("{account}\n")).expect("accounts");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .args(["-t", "120"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("baresip.log")).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip runs (Debian package baresip-core: scripts/test.sh installs it)");
        let addr = format!("{ip}:{port}").parse().expect("ip:port");
        Baresip { child, dir, addr }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// The WAV of what the phone heard (written as the call ends).
    pub(crate) fn heard(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.dir.path().join("rec"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
