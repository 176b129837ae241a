//! A full disk under SQLite: the database lives on a small tmpfs the test mounts
//! (needs CAP_SYS_ADMIN: root here and in CI; skipped with a message where mount is
//! not permitted), a filler file takes the last byte while calls are playing. Starts
//! are answered 503 with a problem that says why, calls in progress play to the end,
//! `PRAGMA integrity_check` stays `ok`, and once the filler is removed new starts are
//! accepted and every verification reaches a final state.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use otpdial::domain::CallStatus;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row as _;

use crate::callee::SippUas;
use crate::faults_old_db::connect;
use crate::procs::{nl_mobile, ServeConfig, ServeProc};

/// A tmpfs of a fixed size on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (and a message on stderr) where mounting is not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0xA5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // The last partial block too.
        while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
        let _ = f.sync_all();
        path
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn integrity(url: &str) -> String {
    let mut conn = connect(url).await;
    let row = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity_check runs");
    row.get::<String, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_starts_keeps_calls_and_data_then_recovers() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let url = format!("sqlite://{}", fs.path().join("otpdial.db").display());
    let callee = SippUas::answer_many(Duration::from_millis(20)).await;
    // The built-in packs: a call plays for several seconds.
    let gw = ServeProc::start(ServeConfig::new().database(&url).builtin_prompts().trunk(
        "answer",
        callee.port(),
        "",
    ))
    .await;

    let mut playing = Vec::new();
    for i in 0..2 {
        let v = gw
            .start_verification(json!({ "to": nl_mobile(i), "code": "4815" }))
            .await;
        playing.push(v.id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &playing {
        while gw.view(id).await.call.status != CallStatus::Answered {
            assert!(Instant::now() < deadline, "{id} not answered\n{}", gw.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let filler = fs.fill();
    // Space in files SQLite already has (the WAL, free pages) may take a few more
    // starts; the first that needs a new block is refused.
    let mut accepted = Vec::new();
    let problem = loop {
        assert!(accepted.len() < 200, "200 starts accepted on a full disk");
        let r = gw
            .http
            .post(gw.url("/v1/verifications"))
            .bearer_auth(crate::helpers::TOKEN)
            .json(&json!({ "to": nl_mobile(100 + accepted.len() as u32), "code": "4815" }))
            .send()
            .await
            .expect("an answer");
        let status = r.status();
        let headers = r.headers().clone();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        match status {
            StatusCode::CREATED => accepted.push(body["id"].as_str().unwrap().to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    headers["content-type"], "application/problem+json",
                    "{body}"
                );
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                break body;
            }
            other => panic!("start on a full disk: {other} {body}\n{}", gw.log()),
        }
    };
    eprintln!(
        "full disk: {} starts accepted, then {problem}",
        accepted.len()
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("full"), "the problem says why: {problem}");
    // Reads still work, and the data is sound.
    gw.view(&playing[0]).await;
    assert_eq!(integrity(&url).await, "ok");

    // The calls that were playing play to the end (BYE after the whole script).
    let seen = callee
        .wait_calls(Duration::from_secs(60), |l| l.byes() >= 2)
        .await;
    assert!(seen.byes() >= 2, "{seen:#?}");

    // Space returns: service resumes, every verification ends.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let (status, body) = gw
            .post(
                "/v1/verifications",
                json!({ "to": nl_mobile(500), "code": "4815" }),
            )
            .await;
        if status == StatusCode::CREATED {
            break body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "still {status} 30 s after space returned: {body}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut all = playing.clone();
    all.extend(accepted);
    all.push(resumed);
    let done = gw.wait_calls_final(&all, Duration::from_secs(120)).await;
    for v in &done[..2] {
        assert_eq!(v.call.status, CallStatus::Completed, "{v:?}");
        assert_eq!(v.call.times_played, 1, "played to the end: {v:?}");
    }
    assert!(
        done.iter().all(|v| v.call.status == CallStatus::Completed),
        "{done:#?}"
    );
    let seen = callee.calls();
    assert!(
        seen.invited_twice().is_empty(),
        "{:?}",
        seen.invited_twice()
    );
    assert_eq!(integrity(&url).await, "ok");
    assert!(gw.panics().is_empty(), "{}", gw.log());
    if std::env::var_os("OTPDIAL_TEST_SHOW_LOG").is_some() {
        eprintln!("{}", gw.log());
    }
}
