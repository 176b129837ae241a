//! Registered numbers per user.

use sqlx::Row;

use super::{Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneRow {
    pub number: String,
    pub primary: bool,
    pub label: Option<String>,
    /// The prompt pack this number hears when the request names none.
    pub locale: Option<String>,
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
                "INSERT INTO phones (user_id, number, is_primary, label, created_at, locale) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(user_id)
            .bind(&p.number)
            .bind(i64::from(p.primary))
            .bind(p.label.as_deref())
            .bind(now)
            .bind(p.locale.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's numbers, primary first.
    pub async fn phones(&self, user_id: &str) -> Result<Vec<PhoneRow>> {
        let rows = sqlx::query(
            "SELECT number, is_primary, label, locale FROM phones WHERE user_id = $1 \
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
                    locale: r.try_get(3)?,
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
        Ok(self.registration_of(number).await?.is_some())
    }

    /// Whether any user registered `number` (`None`: nobody), and the prompt pack a
    /// registration of it names (the earliest that names one).
    pub async fn registration_of(&self, number: &str) -> Result<Option<Option<String>>> {
        let row = sqlx::query(
            "SELECT locale FROM phones WHERE number = $1 \
             ORDER BY locale IS NULL, created_at LIMIT 1",
        )
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()
            .map_err(Into::into)
    }
}
