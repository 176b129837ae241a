//! Retention: deleting what is older than `[database] retention`, in small batches,
//! one short write transaction each, so the dialer and the API never wait long for
//! the writer (on SQLite there is one). Never a verification that is still pending,
//! never a call still in progress (queued, dialling, ringing, answered).
//!
//! Which audit rows stay longer and how their personal data is hashed is decided by
//! the caller (`crate::retention`); this file only reads and writes rows.

use sqlx::Row;

use super::{Backend, Result, Store};

/// What one batch of [`Store::purge_verifications`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedRows {
    pub verifications: u64,
    pub calls: u64,
    pub attempts: u64,
    pub call_events: u64,
    pub webhooks: u64,
}

impl std::ops::AddAssign for PurgedRows {
    fn add_assign(&mut self, o: PurgedRows) {
        self.verifications += o.verifications;
        self.calls += o.calls;
        self.attempts += o.attempts;
        self.call_events += o.call_events;
        self.webhooks += o.webhooks;
    }
}

/// An audit row old enough for retention that was not handled yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldAuditRow {
    pub id: String,
    pub action: String,
    pub outcome: String,
    pub target: Option<String>,
    pub detail: Option<String>,
}

/// An audit row kept past retention, with its personal data replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PseudonymisedAudit {
    pub id: String,
    pub target: Option<String>,
    pub detail: Option<String>,
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Deletes up to `limit` verifications created before `cutoff` that are finished
    /// and whose calls have all ended, with their calls, attempts, call events and
    /// webhook deliveries, in one transaction. Oldest first.
    pub async fn purge_verifications(&self, cutoff: i64, limit: i64) -> Result<PurgedRows> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.write_tx().await?;
        let ids: Vec<String> = sqlx::query(&format!(
            "SELECT v.id FROM verifications v WHERE v.created_at < $1 AND v.status <> 'pending' \
               AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.verification_id = v.id \
                 AND c.status IN ('queued', 'dialing', 'ringing', 'answered')) \
             ORDER BY v.created_at LIMIT $2{lock}"
        ))
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(PurgedRows::default());
        }
        let list = placeholders(1, ids.len());
        let calls_of = format!("SELECT id FROM calls WHERE verification_id IN ({list})");
        let mut out = PurgedRows::default();
        for (sql, count) in [
            (
                format!("DELETE FROM call_events WHERE call_id IN ({calls_of})"),
                &mut out.call_events,
            ),
            (
                format!("DELETE FROM call_attempts WHERE call_id IN ({calls_of})"),
                &mut out.attempts,
            ),
            (
                format!("DELETE FROM calls WHERE verification_id IN ({list})"),
                &mut out.calls,
            ),
            (
                format!("DELETE FROM webhook_outbox WHERE verification_id IN ({list})"),
                &mut out.webhooks,
            ),
            (
                format!("DELETE FROM verifications WHERE id IN ({list})"),
                &mut out.verifications,
            ),
        ] {
            let mut q = sqlx::query(&sql);
            for id in &ids {
                q = q.bind(id);
            }
            *count = q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Up to `limit` audit rows written before `cutoff` that retention has not
    /// handled yet (not pseudonymised), oldest first.
    pub async fn old_audit_rows(&self, cutoff: i64, limit: i64) -> Result<Vec<OldAuditRow>> {
        let rows = sqlx::query(
            "SELECT id, action, outcome, target, detail FROM audit_log \
             WHERE pseudonymised_at IS NULL AND at < $1 ORDER BY at LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OldAuditRow {
                    id: r.try_get(0)?,
                    action: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    target: r.try_get(3)?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Deletes the audit rows `delete` and rewrites `keep` with their personal data
    /// replaced, in one transaction. Returns the rows deleted.
    pub async fn retire_audit_rows(
        &self,
        delete: &[String],
        keep: &[PseudonymisedAudit],
        now: i64,
    ) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut deleted = 0;
        if !delete.is_empty() {
            let sql = format!(
                "DELETE FROM audit_log WHERE id IN ({})",
                placeholders(1, delete.len())
            );
            let mut q = sqlx::query(&sql);
            for id in delete {
                q = q.bind(id);
            }
            deleted = q.execute(&mut *tx).await?.rows_affected();
        }
        for row in keep {
            sqlx::query(
                "UPDATE audit_log SET target = $2, detail = $3, pseudonymised_at = $4 WHERE id = $1",
            )
            .bind(&row.id)
            .bind(row.target.as_deref())
            .bind(row.detail.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes up to `limit` audit rows of any kind written before `cutoff` (the end
    /// of `audit_retention`). Returns how many.
    pub async fn delete_audit_before(&self, cutoff: i64, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE id IN \
             (SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes the per-country call budgets of days before `day` (`YYYY-MM-DD`).
    pub async fn prune_daily_budget(&self, day: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM daily_budget WHERE day < $1")
            .bind(day)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
