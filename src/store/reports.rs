//! Read-only queries for the operators: the call records (`GET /v1/calls`
//! and the dashboard's latest calls) and calls per time bucket for the
//! dashboard's chart (`GET /admin`). No codes, no writes.

use sqlx::Row;

use super::{Result, Store, StoreError};
use crate::domain::{CallStatus, RtpReceived};

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
    /// What the gateway measured of the far end's RTP in the call's latest attempt
    /// that received any.
    pub received: Option<RtpReceived>,
}

/// Calls created in one time bucket `[start_ms, start_ms + bucket)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallBucket {
    pub start_ms: i64,
    /// Calls created (queued) in the bucket.
    pub calls: i64,
    /// Of those, calls that were placed (claimed by a dialer).
    pub dialled: i64,
    /// Of those, calls that were answered.
    pub answered: i64,
    /// Of those, calls that ended `completed` (the code was read).
    pub completed: i64,
}

impl CallBucket {
    /// Answered / placed, 0..1; `None` when nothing was placed.
    pub fn answer_rate(&self) -> Option<f64> {
        (self.dialled > 0).then(|| self.answered as f64 / self.dialled as f64)
    }
}

impl Store {
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

    /// Calls created in `[since, until)` counted per bucket of `bucket_ms`,
    /// one entry per bucket including empty ones, oldest first. Bucket `i`
    /// starts at `since + i * bucket_ms`.
    pub async fn call_buckets(
        &self,
        since: i64,
        until: i64,
        bucket_ms: i64,
    ) -> Result<Vec<CallBucket>> {
        let bucket_ms = bucket_ms.max(1);
        let span = (until - since).max(0);
        let count = usize::try_from((span + bucket_ms - 1) / bucket_ms).unwrap_or(0);
        let mut buckets: Vec<CallBucket> = (0..count)
            .map(|i| CallBucket {
                start_ms: since + i as i64 * bucket_ms,
                ..CallBucket::default()
            })
            .collect();
        // Integer division on BIGINT means the same in SQLite and PostgreSQL;
        // each SUM is over an integer CASE, so PostgreSQL returns BIGINT too.
        let rows = sqlx::query(
            "SELECT (created_at - $1) / $2 AS bucket, COUNT(*), \
                    SUM(CASE WHEN claimed_at IS NOT NULL THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN answered_at IS NOT NULL THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) \
             FROM calls WHERE created_at >= $1 AND created_at < $3 \
             GROUP BY 1",
        )
        .bind(since)
        .bind(bucket_ms)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let index: i64 = r.try_get(0)?;
            let Some(b) = usize::try_from(index).ok().and_then(|i| buckets.get_mut(i)) else {
                continue;
            };
            b.calls = r.try_get(1)?;
            b.dialled = r.try_get::<Option<i64>, _>(2)?.unwrap_or(0);
            b.answered = r.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
            b.completed = r.try_get::<Option<i64>, _>(4)?.unwrap_or(0);
        }
        Ok(buckets)
    }

    /// The `limit` most recently created calls, newest first.
    pub async fn latest_calls(&self, limit: i64) -> Result<Vec<CallRecord>> {
        let rows = sqlx::query(&format!(
            "{} ORDER BY c.created_at DESC, c.id DESC LIMIT $1",
            CALL_RECORD_SELECT
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_record_from_row).collect()
    }
}

/// The columns of a [`CallRecord`], for [`call_record_from_row`]. The number
/// is the one the call dials now (a retry may have moved to the user's next); the
/// RTP figures are those of its latest attempt that received media.
const CALL_RECORD_SELECT: &str =
    "SELECT c.id, c.verification_id, COALESCE(c.phone, v.phone), c.status, c.sip_code, \
            c.trunk, c.created_at, c.answered_at, c.ended_at, c.times_played, \
            a.rtp_received, a.rtp_lost, a.rtp_jitter_us, a.rtp_codec, a.rtp_srtp_rejected \
     FROM calls c JOIN verifications v ON v.id = c.verification_id \
     LEFT JOIN call_attempts a ON a.call_id = c.id AND a.seq = \
         (SELECT MAX(m.seq) FROM call_attempts m \
          WHERE m.call_id = c.id AND m.rtp_received IS NOT NULL)";

fn call_record_from_row(r: &sqlx::any::AnyRow) -> Result<CallRecord> {
    let status: String = r.try_get(3)?;
    Ok(CallRecord {
        call_id: r.try_get(0)?,
        verification_id: r.try_get(1)?,
        phone: r.try_get(2)?,
        status: CallStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("call status {status:?}")))?,
        sip_code: r.try_get(4)?,
        trunk: r.try_get(5)?,
        created_at: r.try_get(6)?,
        answered_at: r.try_get(7)?,
        ended_at: r.try_get(8)?,
        times_played: r.try_get(9)?,
        received: super::calls::received_from_row(r, 10)?,
    })
}
