//! Canary alerts to `[canary] alert_url`: rows written with the health change that
//! raised them (`canary_finish_run`), claimed with a lease by the alert worker.

use sqlx::Row;

use super::delivery::Deliveries;
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
        let rows = self
            .claim_deliveries(
                Deliveries::CanaryAlerts,
                "id, canary, event, url, payload, attempts",
                now,
                lease_until,
                limit,
            )
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
        self.delivery_done(Deliveries::CanaryAlerts, id, attempts, now)
            .await
    }

    /// A failed try: again at `next_attempt_at`, or given up (`None`).
    pub async fn canary_alert_failed(
        &self,
        id: &str,
        attempts: i64,
        next_attempt_at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        self.delivery_failed(
            Deliveries::CanaryAlerts,
            id,
            attempts,
            next_attempt_at,
            error,
        )
        .await
    }
}
