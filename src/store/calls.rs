//! The durable life of a call: its rows (the call, its attempts, its status
//! events), recording each status and attempt, re-queuing for a retry, and
//! ending calls whose verification expired in the queue. The row is the
//! truth; an instance only borrows it. Claiming and take-over: `queue.rs`.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{enqueue_webhook, Result, Store, StoreError};
use crate::domain::{CallReason, CallStatus, RtpReceived};

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
    pub reason: Option<CallReason>,
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
    /// What the gateway measured of the far end's RTP; `None` when no media came
    /// (or the attempt predates migration 0008).
    pub received: Option<RtpReceived>,
}

/// Optional fields written together with a call status change.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallUpdate<'a> {
    pub sip_code: Option<i64>,
    pub trunk: Option<&'a str>,
    pub answered_at: Option<i64>,
    pub times_played: Option<i64>,
    pub reason: Option<CallReason>,
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

pub(super) const IN_PROGRESS: &str = "('dialing', 'ringing', 'answered')";

impl Store {
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
            "SELECT seq, number, trunk, status, sip_code, reason, started_at, ended_at, \
                    rtp_received, rtp_lost, rtp_jitter_us, rtp_codec, rtp_srtp_rejected \
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
                    received: received_from_row(r, 8)?,
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
        received: Option<&RtpReceived>,
        now: i64,
        then: AfterAttempt<'_>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE call_attempts SET status = $3, sip_code = $4, reason = $5, ended_at = $6, \
                    rtp_received = $7, rtp_lost = $8, rtp_jitter_us = $9, rtp_codec = $10, \
                    rtp_srtp_rejected = $11 \
             WHERE call_id = $1 AND seq = $2 AND ended_at IS NULL",
        )
        .bind(call_id)
        .bind(seq)
        .bind(status.as_str())
        .bind(sip_code)
        .bind(reason)
        .bind(now)
        .bind(received.map(|r| count(r.packets)))
        .bind(received.map(|r| count(r.lost)))
        .bind(received.map(|r| count(r.jitter_us)))
        .bind(received.and_then(|r| r.codec.clone()))
        .bind(received.map(|r| count(r.srtp_rejected)))
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
                "UPDATE calls SET status = 'failed', reason = $3, ended_at = $2, updated_at = $2, \
                   code_sealed = NULL, claimed_by = NULL \
                 WHERE verification_id = $1 AND status = 'queued' RETURNING id",
            )
            .bind(&id)
            .bind(now)
            .bind(CallReason::Expired.as_str())
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

pub(super) async fn advance_in(
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
    .bind(update.reason.map(CallReason::as_str))
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

pub(super) async fn insert_event(
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

/// The measured RTP figures in the five columns from `first` on (`rtp_received`,
/// `rtp_lost`, `rtp_jitter_us`, `rtp_codec`, `rtp_srtp_rejected`); `None` when the
/// attempt recorded none.
pub(super) fn received_from_row(r: &AnyRow, first: usize) -> Result<Option<RtpReceived>> {
    let packets: Option<i64> = r.try_get(first)?;
    let Some(packets) = packets else {
        return Ok(None);
    };
    let count = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
    Ok(Some(RtpReceived {
        packets: count(Some(packets)),
        lost: count(r.try_get(first + 1)?),
        jitter_us: count(r.try_get(first + 2)?),
        codec: r.try_get(first + 3)?,
        srtp_rejected: count(r.try_get(first + 4)?),
    }))
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
        reason: r
            .try_get::<Option<String>, _>(8)?
            .map(|s| {
                CallReason::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("call reason {s:?}")))
            })
            .transpose()?,
    })
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
