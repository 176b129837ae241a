//! Persistence through sqlx on SQLite (default) or PostgreSQL (several
//! instances sharing the work). One repository type, one error type; the SQL
//! is written once in the dialect both accept (`$n` placeholders, BIGINT
//! unix-millisecond times, `RETURNING`). Depends on `domain` only.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database could not be reached (down, restarting, network gone,
    /// pool exhausted), as opposed to a query or data problem.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    // PostgreSQL: 57P01 admin shutdown, 57P02 crash shutdown,
                    // 57P03 cannot connect now (starting up), class 08 connection.
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// The database's storage is full (SQLite SQLITE_FULL, PostgreSQL 53100
    /// disk_full, or ENOSPC from the file system): nothing can be written until an
    /// operator frees space; reads still work.
    pub fn is_storage_full(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        if let sqlx::Error::Io(io) = e {
            return io.raw_os_error() == Some(28);
        }
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "13" || c == "53100")
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

mod audit;
mod calls;
mod canaries;
mod canary_alerts;
mod checks;
mod delivery;
mod outbox;
mod phones;
mod queue;
mod reports;
mod retention;
mod routing;
pub mod schema;
mod verifications;

use audit::audit_in_tx;
use calls::insert_event;
use outbox::enqueue_webhook;

pub use audit::AuditEntry;
pub use calls::{AfterAttempt, AttemptRow, CallRow, CallUpdate};
pub use canaries::{
    CanaryArrivalReport, CanaryArrivalRow, CanaryHealthRow, CanaryRunEnd, CanaryRunRow,
    CanaryStateRow, NewCanaryAlert, NewCanaryArrival, NewCanaryRun,
};
pub use canary_alerts::CanaryAlertJob;
pub use checks::WrongChecks;
pub use outbox::WebhookJob;
pub use phones::PhoneRow;
pub use queue::{ClaimedCall, Recovered};
pub use reports::{CallBucket, CallRecord};
pub use retention::{OldAuditRow, PseudonymisedAudit, PurgedRows};
pub use routing::{CallerIdRest, RouteOutcome, RouteTally, Tally};
pub use verifications::{
    BudgetCheck, CheckSlot, LimitCheck, LimitColumn, NewVerification, StartGuards, StartOutcome,
    VerificationRow,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    /// Reads (and, on PostgreSQL, everything).
    pool: AnyPool,
    /// Writes. On SQLite a pool of its own with one connection: SQLite has one writer at
    /// a time anyway, and writers queued here wait in order without holding a connection,
    /// instead of several connections each holding one while SQLite's busy handler
    /// sleeps and retries (1 ms to 100 ms at a time), which left the API's reads with no
    /// connection at a peak. On PostgreSQL the same pool as `pool`.
    writer: AnyPool,
    backend: Backend,
}

impl Store {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = if backend == Backend::Sqlite && !url.contains("mode=") {
            // Create the file on first start.
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_string()
        };
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // A database that is gone must turn into a quick 503 for the API and a
        // retry for the dialer, not a request that hangs for the default 30 s.
        let options = |connections: u32| {
            let options = AnyPoolOptions::new()
                .max_connections(connections.max(1))
                .acquire_timeout(acquire_timeout);
            if backend != Backend::Sqlite {
                return options;
            }
            let options = if in_memory {
                options
            } else {
                options.after_release(|conn, _meta| {
                    Box::pin(async move {
                        // A COMMIT that failed (SQLITE_FULL on a full disk) leaves sqlx's
                        // transaction depth at 1 after SQLite has rolled back by itself;
                        // the ROLLBACK on drop then fails and every later BEGIN on this
                        // connection would fail ("begin_with at non-zero transaction
                        // depth"), so the writer would stay dead after space returns. Such a
                        // connection is closed instead of reused. The ping goes through the
                        // connection's queue, so a rollback queued on drop has run first.
                        use sqlx::Connection as _;
                        conn.ping().await?;
                        Ok(!conn.is_in_transaction())
                    })
                })
            };
            options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets the API read while the dialer writes; the busy
                    // timeout turns writer contention (another process) into
                    // waiting, not errors.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        };
        if backend == Backend::Sqlite && !in_memory {
            // The writer first: it creates the file and switches it to WAL.
            let writer = options(1).connect(&url).await?;
            let pool = options(max_connections).connect(&url).await?;
            return Ok(Store {
                pool,
                writer,
                backend,
            });
        }
        let pool = options(max_connections).connect(&url).await?;
        Ok(Store {
            writer: pool.clone(),
            pool,
            backend,
        })
    }

    /// A transaction that will write. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
    /// writes fails with SQLITE_BUSY_SNAPSHOT when another connection wrote
    /// in between, and the busy timeout cannot retry that. It also makes the
    /// limit counts inside `start_verification` exact.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Brings the schema to this binary's version; refuses (and changes nothing in) a
    /// database that a newer or another build migrated (`schema::compare`).
    pub async fn migrate(&self) -> Result<schema::SchemaChange> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let known = schema::known(migrator);
        let applied = schema::applied(&self.writer, self.backend).await?;
        let from = schema::compare(&applied, &known)?;
        migrator.run(&self.writer).await?;
        let to = known.iter().map(|k| k.version).max().unwrap_or(0);
        Ok(schema::SchemaChange { from, to })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// Returns the secret stored under `name`, storing `fresh` first if there
    /// is none yet. Several instances racing here all end up with one value.
    pub async fn server_secret(&self, name: &str, fresh: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<String, _>(0)?)
    }
}
