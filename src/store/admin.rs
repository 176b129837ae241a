//! Audit log and the operations views (call records, dialer pacing).

use sqlx::Row;

use super::{Result, Store};
use crate::domain::CallStatus;

/// One audit record: who, what, on what, with which outcome. Never a code.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call_id: String,
    pub verification_id: String,
    pub phone: String,
    pub status: CallStatus,
    pub sip_code: Option<i64>,
    pub trunk: Option<String>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub times_played: i64,
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

    /// Calls created at or after `since`, oldest first, at most `limit`.
    pub async fn calls_since(&self, since: i64, limit: i64) -> Result<Vec<CallRecord>> {
        let rows = sqlx::query(&format!(
            "{CALL_RECORD_SELECT} WHERE c.created_at >= $1 ORDER BY c.created_at, c.id LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_record_from_row).collect()
    }

    /// The verifications whose call `instance` still holds in progress
    /// while they are pending. A call of this instance that is not in the
    /// list must be hung up: its verification was canceled, approved or
    /// expired, or another instance took the call over (its lease lapsed).
    pub async fn verifications_held_by(&self, instance: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT c.verification_id FROM calls c JOIN verifications v ON v.id = c.verification_id \
             WHERE c.claimed_by = $1 AND c.status IN ('dialing', 'ringing', 'answered') \
               AND v.status = 'pending'",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Calls claimed (placed) by any instance since `since`: the dialer's
    /// global calls-per-second pacing.
    pub async fn claims_since(&self, since: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM calls WHERE claimed_at >= $1")
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// The columns of a [`CallRecord`], for [`call_record_from_row`]. The number
/// is the one the call dials now (a retry may have moved to the user's next).
pub(super) const CALL_RECORD_SELECT: &str =
    "SELECT c.id, c.verification_id, COALESCE(c.phone, v.phone), c.status, c.sip_code, \
            c.trunk, c.created_at, c.answered_at, c.ended_at, c.times_played \
     FROM calls c JOIN verifications v ON v.id = c.verification_id";

pub(super) fn call_record_from_row(r: &sqlx::any::AnyRow) -> Result<CallRecord> {
    let status: String = r.try_get(3)?;
    Ok(CallRecord {
        call_id: r.try_get(0)?,
        verification_id: r.try_get(1)?,
        phone: r.try_get(2)?,
        status: CallStatus::parse(&status)
            .ok_or_else(|| super::StoreError::Corrupt(format!("call status {status:?}")))?,
        sip_code: r.try_get(4)?,
        trunk: r.try_get(5)?,
        created_at: r.try_get(6)?,
        answered_at: r.try_get(7)?,
        ended_at: r.try_get(8)?,
        times_played: r.try_get(9)?,
    })
}
