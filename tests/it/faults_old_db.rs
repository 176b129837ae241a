//! Databases written by old releases (tests/fixtures/db, see its README): the current
//! `otpdial migrate` brings each to the current schema with every old row intact
//! (compared column by column), `otpdial serve` then runs on it, the old verifications
//! answer checks as they should (pending ones approve with their code, finished ones
//! stay finished), the call that was dialling when the old gateway died is never dialled
//! again and the queued one is placed. A database newer than the binary is refused with
//! a message naming both versions, and left unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use otpdial::domain::{CallStatus, VerificationStatus};
use serde_json::{json, Value};
use sqlx::{AnyConnection, Connection as _, Row as _};

use crate::callee::SippUas;
use crate::helpers::{fresh_database, Db};
use crate::procs::{ServeConfig, ServeProc};

/// How long before "now" the old gateway was killed, as the test replays it: longer
/// than either release's call lease (0.1: 5 min, 0.2: 20 s), so the call it left
/// dialling is abandoned and taken over at once.
const KILLED_AGO_MS: i64 = 6 * 60 * 1000;

fn fixture_dir(release: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/db")
        .join(release)
}

fn backend_name(db: Db) -> &'static str {
    match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    }
}

/// The newest migration this build carries (the highest `NNNN_` prefix).
pub(crate) fn newest_known_migration() -> i64 {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    std::fs::read_dir(&dir)
        .expect("migrations dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .expect("at least one migration")
}

/// An old database loaded into a fresh SQLite file or PostgreSQL database, its clock
/// moved so that the old gateway was killed [`KILLED_AGO_MS`] ago.
pub(crate) struct OldDb {
    pub(crate) url: String,
    pub(crate) meta: Value,
    _dir: tempfile::TempDir,
}

impl OldDb {
    pub(crate) async fn load(release: &str, db: Db) -> OldDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = fresh_database(db, dir.path()).await;
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(release).join("meta.json")).expect("meta.json"),
        )
        .expect("meta.json parses");
        let dump =
            std::fs::read_to_string(fixture_dir(release).join(format!("{}.sql", backend_name(db))))
                .expect("dump");
        let meta = meta[backend_name(db)].clone();
        {
            let mut conn = connect(&url).await;
            sqlx::raw_sql(&dump)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("load the {release} dump into {url}: {e}"));
            conn.close().await.ok();
        }
        let dumped_at = meta["dumped_at_ms"].as_i64().expect("dumped_at_ms");
        let shift = otpdial::domain::now_ms() - KILLED_AGO_MS - dumped_at;
        shift_times(&url, db, shift).await;
        OldDb {
            url,
            meta,
            _dir: dir,
        }
    }

    /// `(name, id, code)` of each verification the old release left.
    pub(crate) fn cases(&self) -> BTreeMap<String, (String, String)> {
        self.meta["cases"]
            .as_object()
            .expect("cases")
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    (
                        c["id"].as_str().expect("id").to_owned(),
                        c["code"].as_str().expect("code").to_owned(),
                    ),
                )
            })
            .collect()
    }
}

pub(crate) async fn connect(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    AnyConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// `(table, column, declared type)` of every user table, `_sqlx_migrations` left out.
async fn columns(url: &str) -> Vec<(String, String, String)> {
    let mut conn = connect(url).await;
    let sql = if url.starts_with("sqlite:") {
        "SELECT m.name, p.name, UPPER(p.type) FROM sqlite_master m \
         JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations' \
         ORDER BY m.name, p.cid"
    } else {
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT), UPPER(CAST(data_type AS TEXT)) \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' \
         ORDER BY table_name, ordinal_position"
    };
    let rows = sqlx::query(sql)
        .fetch_all(&mut conn)
        .await
        .expect("columns");
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Adds `shift` ms to every time column (BIGINT unix ms named `*_at`, `*_until`, `at`).
pub(crate) async fn shift_times(url: &str, _db: Db, shift: i64) {
    let cols = columns(url).await;
    let mut conn = connect(url).await;
    for (table, column, kind) in cols {
        let is_time = column == "at" || column.ends_with("_at") || column.ends_with("_until");
        if is_time && kind == "BIGINT" {
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = {column} + $1 WHERE {column} IS NOT NULL"
            ))
            .bind(shift)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("shift {table}.{column}: {e}"));
        }
    }
}

/// Every row of every table, each column as text, in a stable order: the columns of
/// `only` (a snapshot taken before a migration) when given, else all of them.
pub(crate) type Snapshot = BTreeMap<String, (Vec<String>, Vec<Vec<Option<String>>>)>;

pub(crate) async fn snapshot(url: &str, only: Option<&Snapshot>) -> Snapshot {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, column, _) in columns(url).await {
        tables.entry(table).or_default().push(column);
    }
    if let Some(only) = only {
        for (table, (cols, _)) in only {
            let now = tables.get(table).cloned().unwrap_or_default();
            for c in cols {
                assert!(
                    now.contains(c),
                    "column {table}.{c} is gone after the migration"
                );
            }
            tables.insert(table.clone(), cols.clone());
        }
        tables.retain(|t, _| only.contains_key(t));
    }
    let mut conn = connect(url).await;
    let mut out = Snapshot::new();
    for (table, cols) in tables {
        let list: Vec<String> = cols
            .iter()
            .map(|c| {
                if c == "checksum" {
                    format!("CAST(LENGTH({c}) AS TEXT)")
                } else {
                    format!("CAST({c} AS TEXT)")
                }
            })
            .collect();
        let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
        let rows = sqlx::query(&format!(
            "SELECT {} FROM {table} ORDER BY {}",
            list.join(", "),
            order.join(", ")
        ))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"));
        let rows = rows
            .iter()
            .map(|r| {
                (0..cols.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect();
        out.insert(table, (cols, rows));
    }
    out
}

/// `otpdial migrate` on `url` (no config file: the URL from the environment).
pub(crate) fn run_migrate(url: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otpdial"));
    cmd.arg("migrate");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTPDIAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("OTPDIAL_DATABASE__URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run otpdial migrate")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_same_rows(before: &Snapshot, after: &Snapshot, what: &str) {
    for (table, (cols, rows)) in before {
        let (_, now) = &after[table];
        assert_eq!(
            rows.len(),
            now.len(),
            "{what}: {table} had {} rows, has {}",
            rows.len(),
            now.len()
        );
        for (i, (a, b)) in rows.iter().zip(now).enumerate() {
            assert_eq!(a, b, "{what}: {table} row {i} ({cols:?}) changed");
        }
    }
}

/// The whole path for one old database: migrate, compare, serve, check.
async fn old_database_upgrades(release: &str, db: Db) {
    let old = OldDb::load(release, db).await;
    let before = snapshot(&old.url, None).await;
    let old_rows: usize = before.values().map(|(_, r)| r.len()).sum();
    assert!(
        before["verifications"].1.len() == 10 && old_rows > 100,
        "the fixture loaded: {old_rows} rows"
    );

    let out = run_migrate(&old.url);
    assert!(out.status.success(), "migrate {release}: {}", text(&out));
    let from = if release == "0.1" { 2 } else { 4 };
    let newest = newest_known_migration();
    let expect = if from == newest {
        format!("schema version {newest} (up to date)")
    } else {
        format!("schema version {from} -> {newest}")
    };
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&expect),
        "{expect:?}: {}",
        text(&out)
    );
    let after = snapshot(&old.url, Some(&before)).await;
    assert_same_rows(&before, &after, &format!("{release} on {db:?}"));
    let again = run_migrate(&old.url);
    assert!(
        again.status.success()
            && String::from_utf8_lossy(&again.stdout)
                .contains(&format!("schema version {newest} (up to date)")),
        "{}",
        text(&again)
    );

    // The old gateway's trunks were "answer", "busy" and "hole"; the new one has
    // one callee for every number, so a dialled-again call would show there.
    let callee = SippUas::answer_many(Duration::from_millis(50)).await;
    let cfg = ServeConfig::new()
        .database(&old.url)
        .trunk("answer", callee.port(), "");
    let gw = ServeProc::start(cfg).await;
    let cases = old.cases();
    let case = |name: &str| cases[name].clone();

    for name in ["pending", "pending_wrong_once"] {
        let (id, code) = case(name);
        let v = gw.view(&id).await;
        assert_eq!(v.status, VerificationStatus::Pending, "{name}: {v:?}");
        let expect_left = if name == "pending" { 5 } else { 4 };
        assert_eq!(v.attempts_left, expect_left, "{name}");
        assert_eq!(v.call.status, CallStatus::Completed, "{name}");
        let wrong = if code.starts_with('0') { "1" } else { "0" }.repeat(code.len());
        let (status, r) = gw
            .post(
                &format!("/v1/verifications/{id}/check"),
                json!({ "code": wrong }),
            )
            .await;
        assert_eq!(status, 200, "{name}: {r}");
        assert_eq!(r["valid"], false, "{name}: {r}");
        assert_eq!(r["attempts_left"], expect_left - 1, "{name}: {r}");
        let (status, r) = gw
            .post(
                &format!("/v1/verifications/{id}/check"),
                json!({ "code": code }),
            )
            .await;
        assert_eq!(status, 200, "{name}: {r}");
        assert_eq!(r["valid"], true, "{name}: the old code still checks: {r}");
        assert_eq!(r["status"], "approved", "{name}: {r}");
    }
    let finished = [
        (
            "approved",
            VerificationStatus::Approved,
            CallStatus::Completed,
        ),
        (
            "failed_checks",
            VerificationStatus::Failed,
            CallStatus::Completed,
        ),
        ("busy", VerificationStatus::Failed, CallStatus::Busy),
        (
            "canceled",
            VerificationStatus::Canceled,
            CallStatus::Canceled,
        ),
        (
            "expired",
            VerificationStatus::Expired,
            CallStatus::Completed,
        ),
        (
            "expired_2",
            VerificationStatus::Expired,
            CallStatus::Completed,
        ),
    ];
    for (name, status, call) in finished {
        let (id, code) = case(name);
        let v = gw.view(&id).await;
        assert_eq!((v.status, v.call.status), (status, call), "{name}: {v:?}");
        let (code_status, r) = gw
            .post(
                &format!("/v1/verifications/{id}/check"),
                json!({ "code": code }),
            )
            .await;
        assert_eq!(code_status, 200, "{name}: {r}");
        assert_eq!(
            r["valid"], false,
            "{name}: a finished one never approves: {r}"
        );
    }

    // Killed mid-call: the one dialling ends (its INVITE may have left: never sent
    // again); the queued one is placed now, and its code approves.
    let (dialling, _) = case("dialling_at_kill");
    let (queued, queued_code) = case("queued_at_kill");
    let done = gw
        .wait_calls_final(&[dialling.clone(), queued.clone()], Duration::from_secs(30))
        .await;
    assert_eq!(done[0].call.status, CallStatus::Failed, "{:?}", done[0]);
    assert_eq!(
        done[0].call.reason.map(|r| r.as_str()),
        Some("gateway_restart")
    );
    assert_eq!(done[0].status, VerificationStatus::Failed);
    assert_eq!(done[1].call.status, CallStatus::Completed, "{:?}", done[1]);
    let (status, r) = gw
        .post(
            &format!("/v1/verifications/{queued}/check"),
            json!({ "code": queued_code }),
        )
        .await;
    assert_eq!((status.as_u16(), &r["valid"]), (200, &json!(true)), "{r}");
    let seen = callee
        .wait_calls(Duration::from_secs(10), |l| l.byes() == 1)
        .await;
    let per_number = seen.invites_per_user();
    assert_eq!(per_number.get("+31630000002"), Some(&1), "{per_number:?}");
    assert_eq!(
        per_number.get("+31630000001"),
        None,
        "the call dialling when the old gateway died is never dialled again"
    );
    assert_eq!(per_number.len(), 1, "{per_number:?}");
    assert!(gw.panics().is_empty(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_0_1_sqlite_database_upgrades_with_nothing_lost() {
    old_database_upgrades("0.1", Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_0_1_postgres_database_upgrades_with_nothing_lost() {
    old_database_upgrades("0.1", Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_0_2_sqlite_database_upgrades_with_nothing_lost() {
    old_database_upgrades("0.2", Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_0_2_postgres_database_upgrades_with_nothing_lost() {
    old_database_upgrades("0.2", Db::Postgres).await;
}

/// `serve` alone (no `migrate` first) migrates an old database on start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_migrates_an_old_database_on_start() {
    let old = OldDb::load("0.1", Db::Sqlite).await;
    let before = snapshot(&old.url, None).await;
    let gw = ServeProc::start(ServeConfig::new().database(&old.url)).await;
    let newest = newest_known_migration();
    assert!(
        gw.log().contains(&format!("schema version 2 -> {newest}")),
        "{}",
        gw.log()
    );
    let (id, _) = old.cases()["approved"].clone();
    assert_eq!(gw.view(&id).await.status, VerificationStatus::Approved);
    let after = snapshot(&old.url, None).await;
    for table in [
        "verifications",
        "phones",
        "audit_log",
        "webhook_outbox",
        "call_attempts",
    ] {
        assert!(
            after[table].1.len() >= before[table].1.len(),
            "{table}: {} rows before, {} after",
            before[table].1.len(),
            after[table].1.len()
        );
    }
}

/// A database that a newer release migrated: `migrate` and `serve` refuse it with
/// both versions named, and change nothing.
async fn newer_database_is_refused(db: Db) {
    let old = OldDb::load("0.2", db).await;
    let out = run_migrate(&old.url);
    assert!(out.status.success(), "{}", text(&out));
    let known = newest_known_migration();
    // Above every migration any helper may add: a release from the future.
    let future = known + 10_000;
    {
        let mut conn = connect(&old.url).await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, 'from a newer release', TRUE, $2, 1)",
        )
        .bind(future)
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .expect("insert a newer migration");
    }
    let before = snapshot(&old.url, None).await;
    let out = run_migrate(&old.url);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{}", text(&out));
    for needle in [
        format!("schema version {future}"),
        format!("up to {known}"),
        format!("otpdial {}", env!("CARGO_PKG_VERSION")),
        "was not changed".to_owned(),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in: {err}");
    }
    assert!(!err.contains("previously applied"), "{err}");

    let serve = serve_output(&old.url, Path::new(env!("CARGO_BIN_EXE_otpdial")));
    assert!(!serve.status.success(), "{}", text(&serve));
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains(&format!("schema version {future}")),
        "{}",
        text(&serve)
    );
    let after = snapshot(&old.url, None).await;
    assert_same_rows(&before, &after, "a refused database");
}

/// `otpdial serve` on `url` with a config of its own; returns once it exits (a
/// refused database makes it exit at once; 30 s bound).
fn serve_output(url: &str, bin: &Path) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ServeConfig::new()
        .database(url)
        .set("http.listen", "127.0.0.1:0")
        .set("sip.listen", "127.0.0.1:0");
    let path = dir.path().join("otpdial.toml");
    std::fs::write(&path, cfg.to_toml()).expect("config");
    let mut cmd = Command::new("timeout");
    cmd.arg("30")
        .arg(bin)
        .arg("serve")
        .arg("--config")
        .arg(&path);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTPDIAL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .output()
        .expect("run otpdial serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_sqlite_database_is_refused_naming_both_versions() {
    newer_database_is_refused(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_postgres_database_is_refused_naming_both_versions() {
    newer_database_is_refused(Db::Postgres).await;
}
