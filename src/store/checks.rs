//! Wrong code checks per subject, for the brute-force guard across
//! verifications (`verify::CheckGuard`).

use sqlx::Row;

use super::{Result, Store};

/// Wrong checks of one subject in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WrongChecks {
    pub count: i64,
    /// When the latest one was (unix ms), if any.
    pub last_at: Option<i64>,
    /// When the oldest one in the window was.
    pub first_at: Option<i64>,
}

impl Store {
    pub async fn wrong_checks_since(&self, subject: &str, since: i64) -> Result<WrongChecks> {
        let row = sqlx::query(
            "SELECT COUNT(*), MAX(at), MIN(at) FROM wrong_checks WHERE subject = $1 AND at >= $2",
        )
        .bind(subject)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(WrongChecks {
            count: row.try_get(0)?,
            last_at: row.try_get(1)?,
            first_at: row.try_get(2)?,
        })
    }

    pub async fn record_wrong_check(&self, subject: &str, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO wrong_checks (subject, at) VALUES ($1, $2)")
            .bind(subject)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Forgets wrong checks older than `before`.
    pub async fn prune_wrong_checks(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM wrong_checks WHERE at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
