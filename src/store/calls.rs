//! The durable life of a call: claiming queued calls under a lease,
//! recording each status and attempt, re-queuing for a retry, ending calls
//! whose verification expired in the queue, and taking over calls whose
//! instance died. The row is the truth; an instance only borrows it.
//!
//! The one rule for a call whose lease ran out: if one of its attempts is
//! still open (its INVITE may have left), it ends `failed` with reason
//! `gateway_restart` and is never dialled again; otherwise it goes back to
//! the queue and is placed normally.

use sqlx::Row;

use super::{enqueue_webhook, insert_event, Backend, Result, Store, StoreError};
use crate::domain::{CallStatus, VerificationStatus};

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

/// Optional fields written together with a call status change.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallUpdate<'a> {
    pub sip_code: Option<i64>,
    pub trunk: Option<&'a str>,
    pub answered_at: Option<i64>,
    pub times_played: Option<i64>,
    pub reason: Option<&'a str>,
    /// With a final status: fail the verification too, if still pending
    /// (the call ended without the code being read).
    pub fail_verification: bool,
}

/// What follows the end of an attempt, written in the same transaction so
/// that a crash can never leave an attempt closed but its call in limbo.
#[derive(Debug, Clone, Copy)]
pub enum AfterAttempt<'a> {
    /// Another trunk is tried next (failover).
    Continue,
    /// The call ends with this status.
    Finish(CallStatus, CallUpdate<'a>),
    /// The call goes back to the queue for another round at `at`, dialling
    /// `phone`.
    Retry { at: i64, phone: &'a str },
}

/// What the take-over did to one abandoned call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// Its INVITE may have left: ended `failed`, reason `gateway_restart`.
    Failed { call_id: String },
    /// It was never dialled: back in the queue.
    Requeued { call_id: String },
}

const IN_PROGRESS: &str = "('dialing', 'ringing', 'answered')";

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

    /// Records a forward move of the call's status (ignored if the call
    /// already moved past it, e.g. a late `ringing` after `answered`).
    pub async fn advance_call(
        &self,
        call_id: &str,
        to: CallStatus,
        now: i64,
        update: CallUpdate<'_>,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let changed = advance_in(&mut tx, call_id, to, now, update).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Opens an attempt (one number through one trunk). From here on the
    /// INVITE may leave: a take-over will not dial this call again.
    pub async fn start_attempt(
        &self,
        call_id: &str,
        number: &str,
        trunk: &str,
        now: i64,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO call_attempts (call_id, seq, number, trunk, status, started_at) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM call_attempts WHERE call_id = $1), \
                     $2, $3, 'dialing', $4) RETURNING seq",
        )
        .bind(call_id)
        .bind(number)
        .bind(trunk)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let seq: i64 = row.try_get(0)?;
        advance_in(
            &mut tx,
            call_id,
            CallStatus::Dialing,
            now,
            CallUpdate {
                trunk: Some(trunk),
                ..CallUpdate::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Closes an attempt and, in the same transaction, does what follows.
    #[allow(clippy::too_many_arguments)]
    pub async fn end_attempt(
        &self,
        call_id: &str,
        seq: i64,
        status: CallStatus,
        sip_code: Option<i64>,
        reason: Option<&str>,
        now: i64,
        then: AfterAttempt<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE call_attempts SET status = $3, sip_code = $4, reason = $5, ended_at = $6 \
             WHERE call_id = $1 AND seq = $2 AND ended_at IS NULL",
        )
        .bind(call_id)
        .bind(seq)
        .bind(status.as_str())
        .bind(sip_code)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        match then {
            AfterAttempt::Continue => {}
            AfterAttempt::Finish(to, update) => {
                advance_in(&mut tx, call_id, to, now, update).await?;
            }
            AfterAttempt::Retry { at, phone } => {
                requeue_in(&mut tx, call_id, at, phone, now).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues a claimed call again for another round at `at`, dialling
    /// `phone`.
    pub async fn requeue(&self, call_id: &str, at: i64, phone: &str, now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        requeue_in(&mut tx, call_id, at, phone, now).await?;
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
                        reason: Some("gateway_restart"),
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

    /// Marks pending verifications past their expiry as expired, and ends
    /// their calls that are still queued `failed` with reason `expired`
    /// (a call in progress is hung up by its dialer, which watches the
    /// status). Returns the verification ids.
    pub async fn expire_due(&self, now: i64) -> Result<Vec<String>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE verifications SET status = 'expired', updated_at = $1 \
             WHERE status = 'pending' AND expires_at <= $1 RETURNING id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0)?;
            enqueue_webhook(&mut tx, &id, "verification.expired", now).await?;
            let queued = sqlx::query(
                "UPDATE calls SET status = 'failed', reason = 'expired', ended_at = $2, updated_at = $2, \
                   code_sealed = NULL, claimed_by = NULL \
                 WHERE verification_id = $1 AND status = 'queued' RETURNING id",
            )
            .bind(&id)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for q in queued {
                let call_id: String = q.try_get(0)?;
                insert_event(&mut tx, &call_id, CallStatus::Failed, now).await?;
                enqueue_webhook(&mut tx, &id, "call.failed", now).await?;
            }
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// The number after `current` in the user's registered list (primary
    /// first, then in the order they were registered), wrapping around;
    /// `current` itself when the user has no other.
    pub async fn next_number(&self, user_id: &str, current: &str) -> Result<String> {
        let rows = sqlx::query(
            "SELECT number FROM phones WHERE user_id = $1 \
             ORDER BY is_primary DESC, created_at, number",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let numbers: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        Ok(next_in_cycle(&numbers, current)
            .unwrap_or(current)
            .to_string())
    }
}

/// The entry after `current` in `list`, wrapping; the first entry when
/// `current` is not in it; `None` for an empty list.
fn next_in_cycle<'a>(list: &'a [String], current: &str) -> Option<&'a str> {
    let first = list.first()?;
    let next = match list.iter().position(|n| n == current) {
        Some(i) => list.get(i + 1).unwrap_or(first),
        None => first,
    };
    Some(next.as_str())
}

async fn requeue_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    call_id: &str,
    at: i64,
    phone: &str,
    now: i64,
) -> Result<()> {
    let moved = sqlx::query(&format!(
        "UPDATE calls SET status = 'queued', claimed_by = NULL, lease_until = NULL, \
           next_attempt_at = $2, phone = $3, updated_at = $4 \
         WHERE id = $1 AND status IN {IN_PROGRESS}"
    ))
    .bind(call_id)
    .bind(at)
    .bind(phone)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() == 1 {
        insert_event(tx, call_id, CallStatus::Queued, now).await?;
        let vid = verification_of(tx, call_id).await?;
        enqueue_webhook(tx, &vid, "call.queued", now).await?;
    }
    Ok(())
}

async fn verification_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    call_id: &str,
) -> Result<String> {
    let row = sqlx::query("SELECT verification_id FROM calls WHERE id = $1")
        .bind(call_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(row.try_get(0)?)
}

async fn advance_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    call_id: &str,
    to: CallStatus,
    now: i64,
    update: CallUpdate<'_>,
) -> Result<bool> {
    let row = sqlx::query("SELECT status, verification_id FROM calls WHERE id = $1")
        .bind(call_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let current: String = row.try_get(0)?;
    let verification_id: String = row.try_get(1)?;
    let current = CallStatus::parse(&current)
        .ok_or_else(|| StoreError::Corrupt(format!("call status {current:?}")))?;
    let status_changes = current != to;
    if status_changes && !current.can_become(to) {
        return Ok(false);
    }
    let final_status = to.is_final();
    sqlx::query(
        "UPDATE calls SET status = $2, updated_at = $3, \
           sip_code = COALESCE($4, sip_code), trunk = COALESCE($5, trunk), \
           answered_at = COALESCE($6, answered_at), \
           times_played = CASE WHEN $7 > times_played THEN $7 ELSE times_played END, \
           reason = COALESCE($9, reason), \
           ended_at = CASE WHEN $8 = 1 THEN $3 ELSE ended_at END, \
           code_sealed = CASE WHEN $8 = 1 THEN NULL ELSE code_sealed END, \
           claimed_by = CASE WHEN $8 = 1 THEN NULL ELSE claimed_by END \
         WHERE id = $1",
    )
    .bind(call_id)
    .bind(to.as_str())
    .bind(now)
    .bind(update.sip_code)
    .bind(update.trunk)
    .bind(update.answered_at)
    .bind(update.times_played.unwrap_or(0))
    .bind(i64::from(final_status))
    .bind(update.reason)
    .execute(&mut **tx)
    .await?;
    if status_changes {
        insert_event(tx, call_id, to, now).await?;
        enqueue_webhook(tx, &verification_id, &format!("call.{}", to.as_str()), now).await?;
    }
    if final_status && update.fail_verification {
        // In the same transaction: nobody sees the call ended while its
        // verification still looks pending.
        let failed = sqlx::query(
            "UPDATE verifications SET status = 'failed', updated_at = $2 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(&verification_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if failed.rows_affected() == 1 {
            enqueue_webhook(tx, &verification_id, "verification.failed", now).await?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::next_in_cycle;

    #[test]
    fn next_number_cycles_through_the_list() {
        let list: Vec<String> = ["+31600000001", "+31600000002", "+31600000003"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(next_in_cycle(&list, "+31600000001"), Some("+31600000002"));
        assert_eq!(next_in_cycle(&list, "+31600000003"), Some("+31600000001"));
        assert_eq!(next_in_cycle(&list, "+44700000000"), Some("+31600000001"));
        assert_eq!(next_in_cycle(&[], "+31600000001"), None);
    }
}
