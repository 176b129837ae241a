//! The webhook outbox: rows written in the same transaction as the status
//! change they report, claimed with a lease by the delivery worker.

use sqlx::Row;

use super::delivery::Deliveries;
use super::{Result, Store};

#[derive(Debug, Clone)]
pub struct WebhookJob {
    pub id: String,
    pub verification_id: String,
    pub url: String,
    pub event: String,
    pub payload: Option<String>,
    pub attempts: i64,
}

/// Queues a webhook for `event` if the verification has a callback URL.
/// The body is rendered at the first delivery attempt and then kept, so
/// every retry sends the same bytes.
pub(super) async fn enqueue_webhook(
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

impl Store {
    /// Claims up to `limit` due deliveries until `lease_until`.
    pub async fn claim_webhooks(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<WebhookJob>> {
        let rows = self
            .claim_deliveries(
                Deliveries::Webhooks,
                "id, verification_id, url, event, payload, attempts",
                now,
                lease_until,
                limit,
            )
            .await?;
        let mut jobs: Vec<WebhookJob> = rows
            .iter()
            .map(|r| {
                Ok(WebhookJob {
                    id: r.try_get(0)?,
                    verification_id: r.try_get(1)?,
                    url: r.try_get(2)?,
                    event: r.try_get(3)?,
                    payload: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                })
            })
            .collect::<Result<_>>()?;
        // RETURNING order is unspecified; deliver oldest first (ids are ULIDs).
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    pub async fn save_webhook_payload(&self, id: &str, payload: &str) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET payload = $2 WHERE id = $1")
            .bind(id)
            .bind(payload)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn webhook_delivered(&self, id: &str, attempts: i64, now: i64) -> Result<()> {
        self.delivery_done(Deliveries::Webhooks, id, attempts, now)
            .await
    }

    /// Records a failed try: retry at `next_attempt_at`, or give up.
    pub async fn webhook_failed(
        &self,
        id: &str,
        attempts: i64,
        next_attempt_at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        self.delivery_failed(Deliveries::Webhooks, id, attempts, next_attempt_at, error)
            .await
    }

    /// (delivered, dead, pending) counts for one verification, for tests
    /// and ops.
    pub async fn webhook_counts(&self, verification_id: &str) -> Result<(i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(dead), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN delivered_at IS NULL AND dead = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM webhook_outbox WHERE verification_id = $1",
        )
        .bind(verification_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}
