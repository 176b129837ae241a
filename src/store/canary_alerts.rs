//! Canary alerts to `[canary] alert_url`: rows written with the health change that
//! raised them (`canary_finish_run`), claimed with a lease by the alert worker.

use sqlx::Row;

use super::{Result, Store};

/// One alert to deliver.
#[derive(Debug, Clone)]
pub struct CanaryAlertJob {
    pub id: String,
    pub canary: String,
    pub event: String,
    pub url: String,
    pub payload: String,
    pub attempts: i64,
}

impl Store {
    /// Claims up to `limit` due alerts until `lease_until`, oldest first.
    pub async fn claim_canary_alerts(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<CanaryAlertJob>> {
        let rows = sqlx::query(
            "UPDATE canary_alerts SET lease_until = $2 WHERE id IN ( \
                SELECT id FROM canary_alerts \
                WHERE delivered_at IS NULL AND dead = 0 AND next_attempt_at <= $1 \
                  AND (lease_until IS NULL OR lease_until < $1) \
                ORDER BY created_at LIMIT $3) \
             RETURNING id, canary, event, url, payload, attempts",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        let mut jobs: Vec<CanaryAlertJob> = rows
            .iter()
            .map(|r| {
                Ok(CanaryAlertJob {
                    id: r.try_get(0)?,
                    canary: r.try_get(1)?,
                    event: r.try_get(2)?,
                    url: r.try_get(3)?,
                    payload: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                })
            })
            .collect::<Result<_>>()?;
        // RETURNING order is unspecified; ids are ULIDs.
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    pub async fn canary_alert_delivered(&self, id: &str, attempts: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE canary_alerts SET delivered_at = $2, attempts = $3, lease_until = NULL, \
             last_error = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(attempts)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A failed try: again at `next_attempt_at`, or given up (`None`).
    pub async fn canary_alert_failed(
        &self,
        id: &str,
        attempts: i64,
        next_attempt_at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE canary_alerts SET attempts = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at), dead = $4, last_error = $5, \
             lease_until = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(attempts)
        .bind(next_attempt_at)
        .bind(i64::from(next_attempt_at.is_none()))
        .bind(error)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
