//! A throwaway PostgreSQL server for tests that must stop the database under a
//! running gateway: its own data directory in a temp dir, its own port on 127.0.0.1,
//! trust auth, `fsync` off. Never the shared server on 5432, which other tests use.
//!
//! Uses the Debian binaries (`/usr/lib/postgresql/<version>/bin/initdb`, `pg_ctl`;
//! the newest version installed), or the directory in `OTPDIAL_TEST_PG_BIN`.
//! PostgreSQL refuses to run as root, so as root every command runs as the `postgres`
//! user (`runuser -u postgres`) and the temp dir is handed to that user.
//!
//! The calls block (initdb takes a second or two, a start or stop well under one):
//! they are meant for test set-up and for the moment a test takes the database away
//! from a gateway that runs in another process.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::procs::free_tcp_port;

/// A PostgreSQL server of its own; stopped and deleted on drop.
pub struct TempGres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `Some("postgres")` when the commands must run as another user (we are root).
    run_as: Option<String>,
    running: bool,
}

impl TempGres {
    /// `initdb` in a fresh temp dir and start on a free port. Fails the test with the
    /// server's log if it does not come up.
    pub fn start_new() -> TempGres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("otpdial-tempgres-")
            .tempdir()
            .expect("tempdir");
        let run_as = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("postgres")
                .expect("read the user database")
                .expect("running as root: PostgreSQL needs the `postgres` user (Debian package postgresql)");
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("hand the temp dir to postgres");
            "postgres".to_owned()
        });
        let mut pg = TempGres {
            dir,
            bin,
            port: free_tcp_port(),
            run_as,
            running: false,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.start();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs one PostgreSQL program (as the postgres user when we are root); fails the
    /// test with its output and the server log when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data_dir().display().to_string();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Starts the server (again) on the same data dir and port; returns when it
    /// accepts connections (`pg_ctl start -w`).
    pub fn start(&mut self) {
        assert!(!self.running, "TempGres::start: already running");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=200",
            port = self.port,
            dir = self.dir.path().display(),
        );
        let log = self.log_path().display().to_string();
        self.pg_ctl(&["-l", &log, "-o", &options, "-w", "-t", "30", "start"]);
        self.running = true;
    }

    /// Stops the server, `pg_ctl stop -m fast`: open connections are cut at once (what
    /// a client sees when its database goes away). Returns when it is down.
    pub fn stop(&mut self) {
        assert!(self.running, "TempGres::stop: not running");
        self.pg_ctl(&["-m", "fast", "-w", "-t", "30", "stop"]);
        self.running = false;
    }

    /// Stops the server like a crash (`-m immediate`: no shutdown checkpoint).
    pub fn stop_immediate(&mut self) {
        assert!(self.running, "TempGres::stop_immediate: not running");
        self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
        self.running = false;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of another database on this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new empty database on this server and returns its URL.
    pub async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.log()));
        let name = format!("otpdial_t_{}", ulid::Ulid::new()).to_lowercase();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.url_of(&name)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temp dir (data dir, log, socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempGres {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing of this server needs to survive; the dir goes next.
            let data = self.data_dir().display().to_string();
            let exe = self.bin.join("pg_ctl");
            let args = ["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"];
            let _ = match &self.run_as {
                Some(user) => Command::new("runuser")
                    .args(["-u", user, "--"])
                    .arg(&exe)
                    .args(args)
                    .output(),
                None => Command::new(&exe).args(args).output(),
            };
        }
    }
}

/// The directory with initdb and pg_ctl: `OTPDIAL_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OTPDIAL_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "no /usr/lib/postgresql/<version>/bin/initdb: install the Debian package postgresql \
         (scripts/test.sh does), or set OTPDIAL_TEST_PG_BIN",
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::Connection;

    use super::*;

    async fn answer(url: &str) -> Result<i64, sqlx::Error> {
        let mut conn = sqlx::AnyConnection::connect(url).await?;
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
            .fetch_one(&mut conn)
            .await?;
        Ok(n)
    }

    /// Start, write, stop (the client sees the server gone), start again on the same
    /// port: the data is still there. Drop removes everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tempgres_starts_stops_and_starts_again_with_its_data() {
        sqlx::any::install_default_drivers();
        let mut pg = TempGres::start_new();
        assert_ne!(pg.port(), 5432);
        let url = pg.fresh_database().await;
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1), (2)")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(answer(&url).await.unwrap(), 2);

        let t = Instant::now();
        pg.stop();
        assert!(t.elapsed() < Duration::from_secs(5), "fast stop");
        assert!(!pg.is_running());
        let cut = sqlx::query("SELECT 1").execute(&mut conn).await;
        assert!(cut.is_err(), "the open connection is cut");
        assert!(answer(&url).await.is_err(), "no server to connect to");

        pg.start();
        assert_eq!(answer(&url).await.unwrap(), 2, "same data dir and port");
        let dir = pg.dir().to_path_buf();
        drop(pg);
        assert!(!dir.exists(), "temp dir removed");
        assert!(answer(&url).await.is_err(), "server gone after drop");
    }

    /// A gateway process on a TempGres database: it calls, it keeps running while the
    /// database is stopped, and it reads from the database again once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_proc_runs_on_tempgres_across_a_database_stop() {
        use crate::callee::SippUas;
        use crate::procs::{nl_mobile, ServeConfig, ServeProc};

        let mut pg = TempGres::start_new();
        let callee = SippUas::answer_many(Duration::ZERO).await;
        let cfg = ServeConfig::new()
            .database(&pg.fresh_database().await)
            .trunk("a", callee.port(), "");
        let mut gw = ServeProc::start(cfg).await;
        let v = gw
            .start_verification(serde_json::json!({ "to": nl_mobile(5), "code": "4812" }))
            .await;
        gw.wait_calls_final(std::slice::from_ref(&v.id), Duration::from_secs(10))
            .await;

        pg.stop();
        let (status, _) = gw.get("/healthz").await;
        assert_eq!(status, 200, "the process is up without its database");
        assert!(gw.is_running());

        pg.start();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = gw
                .try_request(
                    reqwest::Method::GET,
                    &format!("/v1/verifications/{}", v.id),
                    crate::helpers::TOKEN,
                    None,
                )
                .await;
            if let Ok((status, body)) = r {
                if status == 200 {
                    assert_eq!(body["call"]["status"], "completed");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                Instant::now() < deadline,
                "no answer from the database again\n{}",
                gw.log()
            );
        }
        assert!(gw.panics().is_empty(), "{}", gw.log());
    }
}
