//! The leased delivery queue that the webhook outbox and the canary alerts share: due
//! rows are claimed with a lease by one worker (so several instances never send one
//! twice at once), then marked delivered, or failed with the time of the next try, or
//! given up (`dead`). The two tables differ only in their payload columns.

use sqlx::any::AnyRow;

use super::{Result, Store};

/// A table of leased deliveries.
#[derive(Clone, Copy, Debug)]
pub(super) enum Deliveries {
    Webhooks,
    CanaryAlerts,
}

impl Deliveries {
    fn table(self) -> &'static str {
        match self {
            Self::Webhooks => "webhook_outbox",
            Self::CanaryAlerts => "canary_alerts",
        }
    }
}

impl Store {
    /// Claims up to `limit` due rows of `queue` until `lease_until` and returns their
    /// `columns` (in unspecified order: callers sort by id, a ULID).
    pub(super) async fn claim_deliveries(
        &self,
        queue: Deliveries,
        columns: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<AnyRow>> {
        let table = queue.table();
        let rows = sqlx::query(&format!(
            "UPDATE {table} SET lease_until = $2 WHERE id IN ( \
                SELECT id FROM {table} \
                WHERE delivered_at IS NULL AND dead = 0 AND next_attempt_at <= $1 \
                  AND (lease_until IS NULL OR lease_until < $1) \
                ORDER BY created_at LIMIT $3) \
             RETURNING {columns}"
        ))
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        Ok(rows)
    }

    /// Delivered at `now` after `attempts` tries.
    pub(super) async fn delivery_done(
        &self,
        queue: Deliveries,
        id: &str,
        attempts: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET delivered_at = $2, attempts = $3, lease_until = NULL, \
             last_error = NULL WHERE id = $1",
            queue.table()
        ))
        .bind(id)
        .bind(now)
        .bind(attempts)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A failed try: again at `next_attempt_at`, or given up (`None`).
    pub(super) async fn delivery_failed(
        &self,
        queue: Deliveries,
        id: &str,
        attempts: i64,
        next_attempt_at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET attempts = $2, next_attempt_at = COALESCE($3, next_attempt_at), \
             dead = $4, last_error = $5, lease_until = NULL WHERE id = $1",
            queue.table()
        ))
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
