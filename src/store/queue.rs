//! The call queue across instances: claiming a due call under a lease, giving it
//! back, renewing the leases of this instance's calls, and taking over calls whose
//! instance died.
//!
//! The one rule for a call whose lease ran out: if one of its attempts is
//! still open (its INVITE may have left), it ends `failed` with reason
//! `gateway_restart` and is never dialled again; otherwise it goes back to
//! the queue and is placed normally.

use sqlx::Row;

use super::calls::{advance_in, IN_PROGRESS};
use super::{insert_event, Backend, CallUpdate, Result, Store, StoreError};
use crate::domain::{CallReason, CallStatus, VerificationStatus};

/// A queued call claimed by one dialer instance.
#[derive(Debug, Clone)]
pub struct ClaimedCall {
    pub call_id: String,
    pub verification_id: String,
    /// The number this round dials.
    pub phone: String,
    pub user_id: Option<String>,
    pub locale: String,
    pub code_sealed: Option<String>,
    pub expires_at: i64,
    pub verification_status: VerificationStatus,
    /// 1 for the first round, 2 for the first retry, …
    pub round: u32,
}

/// What the take-over did to one abandoned call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Its INVITE may have left: ended `failed`, reason `gateway_restart`.
    Failed { call_id: String },
    /// It was never dialled: back in the queue.
    Requeued { call_id: String },
}

impl Store {
    /// Claims the oldest due queued call for `instance` until `lease_until`.
    /// With `prefixes`, only a call whose number starts with one of them
    /// (the numbers some trunk with a free slot carries); `Some(&[])`
    /// claims nothing.
    pub async fn claim_next_call(
        &self,
        instance: &str,
        now: i64,
        lease_until: i64,
        prefixes: Option<&[String]>,
    ) -> Result<Option<ClaimedCall>> {
        let filter = match prefixes {
            None => String::new(),
            Some([]) => return Ok(None),
            Some(list) => {
                let ors: Vec<String> = (0..list.len())
                    .map(|i| format!("COALESCE(c.phone, v.phone) LIKE ${}", i + 4))
                    .collect();
                format!(" AND ({})", ors.join(" OR "))
            }
        };
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE OF c SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE calls SET status = 'dialing', claimed_by = $1, lease_until = $3, updated_at = $2, \
               claimed_at = $2, rounds = rounds + 1 \
             WHERE id = (SELECT c.id FROM calls c JOIN verifications v ON v.id = c.verification_id \
                         WHERE c.status = 'queued' AND c.next_attempt_at <= $2{filter} \
                         ORDER BY c.next_attempt_at, c.created_at LIMIT 1{lock}) \
               AND status = 'queued' \
             RETURNING id, verification_id, code_sealed, phone, rounds"
        );
        let mut tx = self.write_tx().await?;
        let mut query = sqlx::query(&sql).bind(instance).bind(now).bind(lease_until);
        for p in prefixes.unwrap_or_default() {
            // Prefixes are validated E.164 (`+` and digits): no LIKE wildcards.
            query = query.bind(format!("{p}%"));
        }
        let Some(row) = query.fetch_optional(&mut *tx).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let call_id: String = row.try_get(0)?;
        let verification_id: String = row.try_get(1)?;
        let code_sealed: Option<String> = row.try_get(2)?;
        let call_phone: Option<String> = row.try_get(3)?;
        let rounds: i64 = row.try_get(4)?;
        insert_event(&mut tx, &call_id, CallStatus::Dialing, now).await?;
        let v = sqlx::query(
            "SELECT phone, locale, expires_at, status, user_id FROM verifications WHERE id = $1",
        )
        .bind(&verification_id)
        .fetch_one(&mut *tx)
        .await?;
        let status: String = v.try_get(3)?;
        let claimed = ClaimedCall {
            call_id,
            verification_id,
            phone: match call_phone {
                Some(p) => p,
                None => v.try_get(0)?,
            },
            locale: v.try_get(1)?,
            code_sealed,
            expires_at: v.try_get(2)?,
            verification_status: VerificationStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("verification status {status:?}")))?,
            user_id: v.try_get(4)?,
            round: u32::try_from(rounds).unwrap_or(u32::MAX),
        };
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// Gives a claimed call that was not dialled back to the queue (no slot
    /// after all). Its round does not count.
    pub async fn unclaim(&self, call_id: &str, now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE calls SET status = 'queued', claimed_by = NULL, lease_until = NULL, \
               rounds = rounds - 1, updated_at = $2 WHERE id = $1 AND status = 'dialing'",
        )
        .bind(call_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, call_id, CallStatus::Queued, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Renews the lease of every call `instance` has in progress.
    pub async fn renew_leases(&self, instance: &str, lease_until: i64) -> Result<u64> {
        let done = sqlx::query(&format!(
            "UPDATE calls SET lease_until = $2 WHERE claimed_by = $1 AND status IN {IN_PROGRESS}"
        ))
        .bind(instance)
        .bind(lease_until)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Takes over the calls in progress whose lease ran out (their instance
    /// died or lost the database), except `instance`'s own, by the one rule
    /// in the module comment.
    pub async fn recover_abandoned(&self, instance: &str, now: i64) -> Result<Vec<Recovered>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(&format!(
            "SELECT c.id, c.status, \
               (SELECT COUNT(*) FROM call_attempts a WHERE a.call_id = c.id AND a.ended_at IS NULL) \
             FROM calls c WHERE c.status IN {IN_PROGRESS} AND c.lease_until < $1 \
               AND (c.claimed_by IS NULL OR c.claimed_by <> $2) LIMIT 500{lock}"
        ))
        .bind(now)
        .bind(instance)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let call_id: String = r.try_get(0)?;
            let status: String = r.try_get(1)?;
            let open_attempts: i64 = r.try_get(2)?;
            if open_attempts > 0 || status != CallStatus::Dialing.as_str() {
                sqlx::query(
                    "UPDATE call_attempts SET status = 'failed', reason = 'gateway_restart', ended_at = $2 \
                     WHERE call_id = $1 AND ended_at IS NULL",
                )
                .bind(&call_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                advance_in(
                    &mut tx,
                    &call_id,
                    CallStatus::Failed,
                    now,
                    CallUpdate {
                        reason: Some(CallReason::GatewayRestart),
                        fail_verification: true,
                        ..CallUpdate::default()
                    },
                )
                .await?;
                out.push(Recovered::Failed { call_id });
            } else {
                sqlx::query(
                    "UPDATE calls SET status = 'queued', claimed_by = NULL, lease_until = NULL, \
                       rounds = CASE WHEN rounds > 0 THEN rounds - 1 ELSE 0 END, updated_at = $2 \
                     WHERE id = $1",
                )
                .bind(&call_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                insert_event(&mut tx, &call_id, CallStatus::Queued, now).await?;
                out.push(Recovered::Requeued { call_id });
            }
        }
        tx.commit().await?;
        Ok(out)
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
