//! Persistence through sqlx on SQLite (default) or PostgreSQL (several
//! instances sharing the work). One repository type, one error type; the SQL
//! is written once in the dialect both accept (`$n` placeholders, BIGINT
//! unix-millisecond times, `RETURNING`). Depends on `domain` only.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::domain::{CallStatus, VerificationStatus};

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

pub type Result<T> = std::result::Result<T, StoreError>;

mod admin;
mod calls;
mod canaries;
mod canary_alerts;
mod checks;
mod dashboard;
mod outbox;
mod phones;
pub mod schema;

use admin::audit_in_tx;
pub use admin::{AuditEntry, CallRecord};
pub use calls::{AfterAttempt, CallUpdate, ClaimedCall, Recovered};
pub use canaries::{
    CanaryArrivalReport, CanaryArrivalRow, CanaryHealthRow, CanaryRunEnd, CanaryRunRow,
    CanaryStateRow, NewCanaryAlert, NewCanaryArrival, NewCanaryRun,
};
pub use canary_alerts::CanaryAlertJob;
pub use checks::WrongChecks;
pub use dashboard::CallBucket;
pub use outbox::WebhookJob;
pub use phones::PhoneRow;

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

/// A verification as stored (the code only as its keyed hash).
#[derive(Debug, Clone)]
pub struct VerificationRow {
    pub id: String,
    pub user_id: Option<String>,
    pub phone: String,
    pub locale: String,
    pub code_hash: String,
    pub status: VerificationStatus,
    pub attempts_left: i64,
    pub expires_at: i64,
    pub created_at: i64,
    pub callback_url: Option<String>,
    pub api_key: String,
}

#[derive(Debug, Clone)]
pub struct CallRow {
    pub id: String,
    pub verification_id: String,
    pub status: CallStatus,
    pub sip_code: Option<i64>,
    pub trunk: Option<String>,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub times_played: i64,
    /// Why the call ended as it did, when there is more to say than its
    /// status (`expired`, `gateway_restart`, `shutdown`, …).
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub seq: i64,
    pub number: String,
    pub trunk: String,
    pub status: String,
    pub sip_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

pub struct NewVerification<'a> {
    pub id: &'a str,
    pub user_id: Option<&'a str>,
    pub phone: &'a str,
    pub locale: &'a str,
    pub code_hash: &'a str,
    pub attempts_left: i64,
    pub expires_at: i64,
    pub callback_url: Option<&'a str>,
    pub api_key: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub call_id: &'a str,
    pub code_sealed: &'a str,
    pub now: i64,
}

/// What one wrong-or-right check did to the stored verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckSlot {
    /// An attempt was reserved; compare against this hash.
    Reserved {
        code_hash: String,
        attempts_left: i64,
    },
    /// Not pending (or expired, or out of attempts): nothing was evaluated.
    Closed,
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
        // A database that is gone must turn into a quick 503 for the API and a
        // retry for the dialer, not a request that hangs for the default 30 s.
        let options = |connections: u32| {
            let options = AnyPoolOptions::new()
                .max_connections(connections.max(1))
                .acquire_timeout(acquire_timeout);
            if backend != Backend::Sqlite {
                return options;
            }
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
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
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

    /// Starts a verification in one transaction: idempotency, the rate
    /// limits, the daily country budget, superseding the pending
    /// verifications of the same number or user, then the verification row
    /// and its queued call. Limits are counted under a lock per limited key
    /// (PostgreSQL advisory locks; SQLite's write lock, taken at BEGIN), so several
    /// instances cannot overshoot them together.
    pub async fn start_verification(
        &self,
        v: &NewVerification<'_>,
        guards: &StartGuards<'_>,
    ) -> Result<StartOutcome> {
        let mut tx = self.write_tx().await?;
        if self.backend == Backend::Postgres {
            let mut keys: Vec<i64> = guards
                .limits
                .iter()
                .filter(|l| l.exact)
                .map(|l| lock_key(l.column.name(), l.value))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            if !keys.is_empty() {
                // One round trip; the select list is evaluated left to
                // right, so the locks are taken in key order (no deadlock).
                let sql = format!(
                    "SELECT {}",
                    (1..=keys.len())
                        .map(|i| format!("pg_advisory_xact_lock(${i})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut q = sqlx::query(&sql);
                for k in keys {
                    q = q.bind(k);
                }
                q.execute(&mut *tx).await?;
            }
        }
        if let Some(key) = v.idempotency_key {
            let row = sqlx::query(
                "SELECT id FROM verifications WHERE api_key = $1 AND idempotency_key = $2",
            )
            .bind(v.api_key)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                tx.rollback().await?;
                return Ok(StartOutcome::Existing(row.try_get(0)?));
            }
        }
        if !guards.limits.is_empty() {
            // All windows counted in one round trip: per limit, the count
            // and the oldest start inside its window.
            let parts: Vec<String> = guards
                .limits
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let (a, b) = (2 * i + 1, 2 * i + 2);
                    let col = l.column.name();
                    format!(
                        "(SELECT COUNT(*) FROM verifications WHERE {col} = ${a} AND created_at > ${b}), \
                         (SELECT MIN(created_at) FROM verifications WHERE {col} = ${a} AND created_at > ${b})"
                    )
                })
                .collect();
            let sql = format!("SELECT {}", parts.join(", "));
            let mut q = sqlx::query(&sql);
            for l in &guards.limits {
                q = q.bind(l.value).bind(v.now - l.window_ms);
            }
            let row = q.fetch_one(&mut *tx).await?;
            for (i, limit) in guards.limits.iter().enumerate() {
                let count: i64 = row.try_get(2 * i)?;
                if count >= limit.max {
                    let oldest: Option<i64> = row.try_get(2 * i + 1)?;
                    tx.rollback().await?;
                    let retry_after_ms =
                        oldest.map_or(limit.window_ms, |o| o + limit.window_ms - v.now);
                    return Ok(StartOutcome::Limited {
                        limit: limit.name,
                        retry_after_ms: retry_after_ms.max(1000),
                    });
                }
            }
        }
        if let Some(b) = &guards.budget {
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM daily_budget \
                 WHERE day = $1 AND country = $2",
            )
            .bind(&b.day)
            .bind(&b.country)
            .fetch_one(&mut *tx)
            .await?;
            let used: i64 = row.try_get(0)?;
            if used >= b.max {
                tx.rollback().await?;
                return Ok(StartOutcome::BudgetExhausted);
            }
            sqlx::query(
                "INSERT INTO daily_budget (day, country, shard, count) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (day, country, shard) DO UPDATE SET count = daily_budget.count + 1",
            )
            .bind(&b.day)
            .bind(&b.country)
            .bind(i64::from(rand::random::<u8>() % BUDGET_SHARDS))
            .execute(&mut *tx)
            .await?;
        }
        let mut superseded = Vec::new();
        let pending = match v.user_id {
            Some(user) => {
                sqlx::query(
                    "SELECT id FROM verifications WHERE status = 'pending' AND phone = $1 \
                     UNION SELECT id FROM verifications WHERE status = 'pending' AND user_id = $2",
                )
                .bind(v.phone)
                .bind(user)
                .fetch_all(&mut *tx)
                .await?
            }
            None => {
                sqlx::query("SELECT id FROM verifications WHERE status = 'pending' AND phone = $1")
                    .bind(v.phone)
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        for row in pending {
            let id: String = row.try_get(0)?;
            cancel_in_tx(&mut tx, &id, v.now).await?;
            superseded.push(id);
        }
        let inserted = sqlx::query(
            "INSERT INTO verifications (id, user_id, phone, locale, code_hash, status, attempts_left, \
             expires_at, created_at, updated_at, callback_url, api_key, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $8, $9, $10, $11) \
             ON CONFLICT DO NOTHING",
        )
        .bind(v.id)
        .bind(v.user_id)
        .bind(v.phone)
        .bind(v.locale)
        .bind(v.code_hash)
        .bind(v.attempts_left)
        .bind(v.expires_at)
        .bind(v.now)
        .bind(v.callback_url)
        .bind(v.api_key)
        .bind(v.idempotency_key)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::Corrupt(
                "verification insert conflicted with an existing row".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO calls (id, verification_id, status, code_sealed, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, 'queued', $3, $4, $4, $4)",
        )
        .bind(v.call_id)
        .bind(v.id)
        .bind(v.code_sealed)
        .bind(v.now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, v.call_id, CallStatus::Queued, v.now).await?;
        // The audit record commits with the verification: one write, and
        // never a verification without its record.
        audit_in_tx(
            &mut tx,
            AuditEntry {
                actor: v.api_key,
                action: "verification.start",
                target: Some(v.id),
                outcome: "created",
                detail: None,
            },
            v.now,
        )
        .await?;
        tx.commit().await?;
        Ok(StartOutcome::New { superseded })
    }

    /// Cancels a pending verification and its call if it was not placed
    /// yet. A call in progress is hung up by the dialer, which watches the
    /// verification's status. False if it was not pending.
    pub async fn cancel_verification(&self, id: &str, now: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = cancel_in_tx(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// The verification's current status (cheap; the dialer polls it while
    /// a call is up).
    pub async fn verification_status(&self, id: &str) -> Result<Option<VerificationStatus>> {
        let row = sqlx::query("SELECT status FROM verifications WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let s: String = r.try_get(0)?;
            VerificationStatus::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("verification status {s:?}")))
        })
        .transpose()
    }

    pub async fn get_verification(&self, id: &str) -> Result<Option<VerificationRow>> {
        let row = sqlx::query(
            "SELECT id, user_id, phone, locale, code_hash, status, attempts_left, expires_at, \
             created_at, callback_url, api_key FROM verifications WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| verification_from_row(&r)).transpose()
    }

    pub async fn get_call_of(&self, verification_id: &str) -> Result<Option<CallRow>> {
        let row = sqlx::query(
            "SELECT id, verification_id, status, sip_code, trunk, answered_at, ended_at, times_played, reason \
             FROM calls WHERE verification_id = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(verification_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| call_from_row(&r)).transpose()
    }

    /// The sealed code of a verification's call, while the call still holds it (it
    /// is cleared when the call ends).
    pub async fn sealed_code_of(&self, verification_id: &str) -> Result<Option<String>> {
        let sealed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT code_sealed FROM calls WHERE verification_id = $1 \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(verification_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(sealed.flatten())
    }

    pub async fn attempts(&self, call_id: &str) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT seq, number, trunk, status, sip_code, reason, started_at, ended_at \
             FROM call_attempts WHERE call_id = $1 ORDER BY seq",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    seq: r.try_get(0)?,
                    number: r.try_get(1)?,
                    trunk: r.try_get(2)?,
                    status: r.try_get(3)?,
                    sip_code: r.try_get(4)?,
                    reason: r.try_get(5)?,
                    started_at: r.try_get(6)?,
                    ended_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Every status the call went through, oldest first.
    pub async fn call_events(&self, call_id: &str) -> Result<Vec<CallStatus>> {
        let rows = sqlx::query("SELECT status FROM call_events WHERE call_id = $1 ORDER BY seq")
            .bind(call_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                CallStatus::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("call status {s:?}")))
            })
            .collect()
    }

    /// Reserves one check attempt atomically: of many concurrent checks at
    /// most `attempts_left` get a slot, so brute force cannot outrun the
    /// counter.
    pub async fn reserve_check(&self, id: &str, now: i64) -> Result<CheckSlot> {
        let row = sqlx::query(
            "UPDATE verifications SET attempts_left = attempts_left - 1, updated_at = $2 \
             WHERE id = $1 AND status = 'pending' AND attempts_left > 0 AND expires_at > $2 \
             RETURNING code_hash, attempts_left",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(match row {
            Some(r) => CheckSlot::Reserved {
                code_hash: r.try_get(0)?,
                attempts_left: r.try_get(1)?,
            },
            None => CheckSlot::Closed,
        })
    }

    /// Moves a pending verification to `to`; false if it was not pending.
    pub async fn finish_verification(
        &self,
        id: &str,
        to: VerificationStatus,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE verifications SET status = $2, updated_at = $3 WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let changed = done.rows_affected() == 1;
        if changed {
            enqueue_webhook(&mut tx, id, &format!("verification.{}", to.as_str()), now).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Created; these pending verifications of the same number or user
    /// were canceled by it.
    New { superseded: Vec<String> },
    /// The idempotency key was used before: the id of that verification.
    Existing(String),
    /// A rate limit is reached; retry after this many milliseconds.
    Limited {
        limit: &'static str,
        retry_after_ms: i64,
    },
    /// Today's call budget for the destination's country is spent.
    BudgetExhausted,
}

/// What a start must respect.
#[derive(Debug, Default)]
pub struct StartGuards<'a> {
    pub limits: Vec<LimitCheck<'a>>,
    pub budget: Option<BudgetCheck>,
}

#[derive(Debug)]
pub struct LimitCheck<'a> {
    pub name: &'static str,
    /// Counted under a lock, so concurrent starts cannot overshoot it. A
    /// coarse limit shared by every request of a client (per API key) is
    /// counted without one: locking it would serialise all of that client's
    /// starts, and overshooting a large window by the number of requests in
    /// flight is harmless.
    pub exact: bool,
    pub column: LimitColumn,
    pub value: &'a str,
    pub max: i64,
    pub window_ms: i64,
}

#[derive(Debug, Clone, Copy)]
pub enum LimitColumn {
    Phone,
    User,
    ApiKey,
}

impl LimitColumn {
    fn name(self) -> &'static str {
        match self {
            LimitColumn::Phone => "phone",
            LimitColumn::User => "user_id",
            LimitColumn::ApiKey => "api_key",
        }
    }
}

#[derive(Debug)]
pub struct BudgetCheck {
    /// UTC day, `2026-11-27`.
    pub day: String,
    /// Country calling code, `+31`.
    pub country: String,
    pub max: i64,
}

/// Rows the daily budget of one country is spread over. The budget may be
/// overshot by the starts in flight at the same moment, never more.
const BUDGET_SHARDS: u8 = 16;

/// A stable 64-bit key for a PostgreSQL advisory lock.
fn lock_key(kind: &str, value: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(value.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Cancels a pending verification and, if still queued, its call.
async fn cancel_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE verifications SET status = 'canceled', updated_at = $2 WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    enqueue_webhook(tx, id, "verification.canceled", now).await?;
    let queued = sqlx::query(
        "UPDATE calls SET status = 'canceled', ended_at = $2, updated_at = $2, code_sealed = NULL \
         WHERE verification_id = $1 AND status = 'queued' RETURNING id",
    )
    .bind(id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for row in queued {
        let call_id: String = row.try_get(0)?;
        insert_event(tx, &call_id, CallStatus::Canceled, now).await?;
        enqueue_webhook(tx, id, "call.canceled", now).await?;
    }
    Ok(true)
}

/// Queues a webhook for `event` if the verification has a callback URL.
/// The body is rendered at the first delivery attempt and then kept, so
/// every retry sends the same bytes.
pub(crate) async fn enqueue_webhook(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    verification_id: &str,
    event: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_outbox (id, verification_id, url, event, next_attempt_at, created_at) \
         SELECT $1, id, callback_url, $2, $3, $3 FROM verifications \
         WHERE id = $4 AND callback_url IS NOT NULL",
    )
    .bind(format!("wh_{}", ulid::Ulid::new()))
    .bind(event)
    .bind(now)
    .bind(verification_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    call_id: &str,
    status: CallStatus,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO call_events (call_id, seq, status, at) \
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM call_events WHERE call_id = $1), $2, $3)",
    )
    .bind(call_id)
    .bind(status.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn verification_from_row(r: &AnyRow) -> Result<VerificationRow> {
    let status: String = r.try_get(5)?;
    Ok(VerificationRow {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        phone: r.try_get(2)?,
        locale: r.try_get(3)?,
        code_hash: r.try_get(4)?,
        status: VerificationStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("verification status {status:?}")))?,
        attempts_left: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        callback_url: r.try_get(9)?,
        api_key: r.try_get(10)?,
    })
}

fn call_from_row(r: &AnyRow) -> Result<CallRow> {
    let status: String = r.try_get(2)?;
    Ok(CallRow {
        id: r.try_get(0)?,
        verification_id: r.try_get(1)?,
        status: CallStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("call status {status:?}")))?,
        sip_code: r.try_get(3)?,
        trunk: r.try_get(4)?,
        answered_at: r.try_get(5)?,
        ended_at: r.try_get(6)?,
        times_played: r.try_get(7)?,
        reason: r.try_get(8)?,
    })
}
