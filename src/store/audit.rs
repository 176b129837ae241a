//! The audit log: who did what to which verification or setting, with which outcome.

use sqlx::Row;

use super::{Result, Store};

/// One audit record: who, what, on what, with which outcome. Never a code.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

/// Writes an audit record inside a caller's transaction.
pub(super) async fn audit_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: AuditEntry<'_>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(format!("au_{}", ulid::Ulid::new()))
    .bind(now)
    .bind(e.actor)
    .bind(e.action)
    .bind(e.target)
    .bind(e.outcome)
    .bind(e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn audit(&self, e: AuditEntry<'_>, now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        audit_in_tx(&mut tx, e, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many audit records of `action` (and `outcome`, if given) name
    /// `target`.
    pub async fn audit_count(
        &self,
        action: &str,
        target: &str,
        outcome: Option<&str>,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM audit_log WHERE action = $1 AND target = $2 \
             AND ($3 = '' OR outcome = $3)",
        )
        .bind(action)
        .bind(target)
        .bind(outcome.unwrap_or(""))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
