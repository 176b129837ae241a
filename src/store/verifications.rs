//! The verification aggregate: starting one (idempotency, rate limits, the daily
//! budget, superseding, the row and its queued call in one transaction), reading,
//! cancelling and finishing it, and reserving check attempts.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{
    audit_in_tx, enqueue_webhook, insert_event, AuditEntry, Backend, Result, Store, StoreError,
};
use crate::domain::{CallStatus, VerificationStatus};

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

impl Store {
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
            lock_exact_limits(&mut tx, guards).await?;
        }
        if let Some(key) = v.idempotency_key {
            if let Some(first) = started_with_key(&mut tx, v.api_key, key).await? {
                tx.rollback().await?;
                return Ok(StartOutcome::Existing(first));
            }
        }
        if let Some(limited) = over_a_limit(&mut tx, guards, v.now).await? {
            tx.rollback().await?;
            return Ok(limited);
        }
        if let Some(b) = &guards.budget {
            if !spend_budget(&mut tx, b).await? {
                tx.rollback().await?;
                return Ok(StartOutcome::BudgetExhausted);
            }
        }
        let superseded = supersede_pending(&mut tx, v).await?;
        insert_verification(&mut tx, v).await?;
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

/// PostgreSQL: takes the advisory locks of the exact limits (per number, per user) for
/// the transaction, so two starts for one number count each other. SQLite's writer lock
/// already serialises them.
async fn lock_exact_limits(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    guards: &StartGuards<'_>,
) -> Result<()> {
    let mut keys: Vec<i64> = guards
        .limits
        .iter()
        .filter(|l| l.exact)
        .map(|l| lock_key(l.column.name(), l.value))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    // One round trip; the select list is evaluated left to right, so the locks are
    // taken in key order (no deadlock).
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
    q.execute(&mut **tx).await?;
    Ok(())
}

/// The verification an earlier start with this API key and Idempotency-Key created.
async fn started_with_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    api_key: &str,
    key: &str,
) -> Result<Option<String>> {
    let row =
        sqlx::query("SELECT id FROM verifications WHERE api_key = $1 AND idempotency_key = $2")
            .bind(api_key)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// The first limit this start would break, as the outcome to answer; None when every
/// window has room. All windows are counted in one round trip: per limit, the count
/// and the oldest start inside its window.
async fn over_a_limit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    guards: &StartGuards<'_>,
    now: i64,
) -> Result<Option<StartOutcome>> {
    if guards.limits.is_empty() {
        return Ok(None);
    }
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
        q = q.bind(l.value).bind(now - l.window_ms);
    }
    let row = q.fetch_one(&mut **tx).await?;
    for (i, limit) in guards.limits.iter().enumerate() {
        let count: i64 = row.try_get(2 * i)?;
        if count >= limit.max {
            let oldest: Option<i64> = row.try_get(2 * i + 1)?;
            let retry_after_ms = oldest.map_or(limit.window_ms, |o| o + limit.window_ms - now);
            return Ok(Some(StartOutcome::Limited {
                limit: limit.name,
                retry_after_ms: retry_after_ms.max(1000),
            }));
        }
    }
    Ok(None)
}

/// Takes one call from the country's daily budget; false when it is spent. The count
/// is spread over shards so concurrent starts do not all update one row.
async fn spend_budget(tx: &mut sqlx::Transaction<'_, sqlx::Any>, b: &BudgetCheck) -> Result<bool> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM daily_budget \
         WHERE day = $1 AND country = $2",
    )
    .bind(&b.day)
    .bind(&b.country)
    .fetch_one(&mut **tx)
    .await?;
    let used: i64 = row.try_get(0)?;
    if used >= b.max {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO daily_budget (day, country, shard, count) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (day, country, shard) DO UPDATE SET count = daily_budget.count + 1",
    )
    .bind(&b.day)
    .bind(&b.country)
    .bind(i64::from(rand::random::<u8>() % BUDGET_SHARDS))
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Cancels the pending verifications of the same number (and of the same user): a new
/// start replaces them. Their ids, for the dialer to hang up their calls.
async fn supersede_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    v: &NewVerification<'_>,
) -> Result<Vec<String>> {
    let pending = match v.user_id {
        Some(user) => {
            sqlx::query(
                "SELECT id FROM verifications WHERE status = 'pending' AND phone = $1 \
                 UNION SELECT id FROM verifications WHERE status = 'pending' AND user_id = $2",
            )
            .bind(v.phone)
            .bind(user)
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query("SELECT id FROM verifications WHERE status = 'pending' AND phone = $1")
                .bind(v.phone)
                .fetch_all(&mut **tx)
                .await?
        }
    };
    let mut superseded = Vec::with_capacity(pending.len());
    for row in pending {
        let id: String = row.try_get(0)?;
        cancel_in_tx(tx, &id, v.now).await?;
        superseded.push(id);
    }
    Ok(superseded)
}

/// The verification row, its queued call with the sealed code, the call's first event
/// and the audit record: one write, never a verification without its record.
async fn insert_verification(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    v: &NewVerification<'_>,
) -> Result<()> {
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
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
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
    .execute(&mut **tx)
    .await?;
    insert_event(tx, v.call_id, CallStatus::Queued, v.now).await?;
    audit_in_tx(
        tx,
        AuditEntry {
            actor: v.api_key,
            action: "verification.start",
            target: Some(v.id),
            outcome: "created",
            detail: None,
        },
        v.now,
    )
    .await
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
