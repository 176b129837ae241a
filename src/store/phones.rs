//! Registered numbers per user.

use sqlx::Row;

use super::{Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneRow {
    pub number: String,
    pub primary: bool,
    pub label: Option<String>,
}

impl Store {
    /// Replaces the user's list in one transaction (the caller validated it).
    pub async fn replace_phones(&self, user_id: &str, phones: &[PhoneRow], now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM phones WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for p in phones {
            sqlx::query(
                "INSERT INTO phones (user_id, number, is_primary, label, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user_id)
            .bind(&p.number)
            .bind(i64::from(p.primary))
            .bind(p.label.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's numbers, primary first.
    pub async fn phones(&self, user_id: &str) -> Result<Vec<PhoneRow>> {
        let rows = sqlx::query(
            "SELECT number, is_primary, label FROM phones WHERE user_id = $1 \
             ORDER BY is_primary DESC, created_at, number",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PhoneRow {
                    number: r.try_get(0)?,
                    primary: r.try_get::<i64, _>(1)? != 0,
                    label: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn delete_phone(&self, user_id: &str, number: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM phones WHERE user_id = $1 AND number = $2")
            .bind(user_id)
            .bind(number)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether any user registered `number`.
    pub async fn number_is_registered(&self, number: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM phones WHERE number = $1 LIMIT 1")
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
