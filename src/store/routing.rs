//! Calling by country: what each route (trunk × destination country) and each caller
//! ID achieved, caller IDs at rest, and trunk channels shared by every instance on
//! one PostgreSQL database (`trunk_slots`).

use sqlx::Row;

use super::{Backend, Result, Store};

/// How one attempt through a trunk went, for routing and caller-ID figures.
#[derive(Debug, Clone, Copy)]
pub struct RouteOutcome<'a> {
    pub at: i64,
    pub trunk: &'a str,
    /// Country calling code of the destination (`+31`).
    pub country: &'a str,
    /// The caller ID shown, when it came from a pool.
    pub caller_id: Option<&'a str>,
    /// That pool's name.
    pub pool: Option<&'a str>,
    pub answered: bool,
    /// Got past the trunk to the callee (ringing or the callee's own final answer).
    pub reached: bool,
}

/// Calls and answers of one key (a trunk, a caller ID) over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub key: String,
    pub calls: i64,
    pub answered: i64,
}

/// Calls and answers of one trunk to one country.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTally {
    pub trunk: String,
    pub country: String,
    pub calls: i64,
    pub answered: i64,
}

/// A caller ID at rest.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerIdRest {
    pub number: String,
    pub pool: String,
    pub rested_at: i64,
    pub resting_until: i64,
    pub answer_rate: f64,
    pub pool_rate: f64,
}

impl Store {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn record_route_outcome(&self, o: &RouteOutcome<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO route_outcomes (at, trunk, country, caller_id, pool, answered, reached) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(o.at)
        .bind(o.trunk)
        .bind(o.country)
        .bind(o.caller_id)
        .bind(o.pool)
        .bind(i64::from(o.answered))
        .bind(i64::from(o.reached))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Per trunk, the attempts to `country` since `since`.
    pub async fn route_tallies(&self, country: &str, since: i64) -> Result<Vec<Tally>> {
        let rows = sqlx::query(
            "SELECT trunk, COUNT(*), CAST(COALESCE(SUM(answered), 0) AS BIGINT) \
             FROM route_outcomes WHERE country = $1 AND at >= $2 GROUP BY trunk",
        )
        .bind(country)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tally_of).collect()
    }

    /// Every trunk × country since `since` (for `/v1/trunks`, metrics, `/admin`).
    pub async fn all_route_tallies(&self, since: i64) -> Result<Vec<RouteTally>> {
        let rows = sqlx::query(
            "SELECT trunk, country, COUNT(*), CAST(COALESCE(SUM(answered), 0) AS BIGINT) \
             FROM route_outcomes WHERE at >= $1 GROUP BY trunk, country ORDER BY trunk, country",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RouteTally {
                    trunk: r.try_get(0)?,
                    country: r.try_get(1)?,
                    calls: r.try_get(2)?,
                    answered: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Per caller ID of `pool` (or of every pool when `None`), the calls that reached
    /// the callee since `since`, counting for a number that rested only its calls
    /// after the rest.
    pub async fn caller_id_tallies(&self, pool: Option<&str>, since: i64) -> Result<Vec<Tally>> {
        let rows = sqlx::query(
            "SELECT o.caller_id, COUNT(*), CAST(COALESCE(SUM(o.answered), 0) AS BIGINT) \
             FROM route_outcomes o LEFT JOIN caller_id_rests r ON r.number = o.caller_id \
             WHERE o.caller_id IS NOT NULL AND (CAST($1 AS TEXT) IS NULL OR o.pool = $1) \
               AND o.reached = 1 AND o.at >= $2 \
               AND (r.resting_until IS NULL OR o.at >= r.resting_until) \
             GROUP BY o.caller_id",
        )
        .bind(pool)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tally_of).collect()
    }

    /// Rests `r.number` until `r.resting_until` (replacing an earlier rest).
    pub async fn rest_caller_id(&self, r: &CallerIdRest) -> Result<()> {
        sqlx::query(
            "INSERT INTO caller_id_rests (number, pool, rested_at, resting_until, answer_rate, pool_rate) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (number) DO UPDATE SET pool = excluded.pool, rested_at = excluded.rested_at, \
               resting_until = excluded.resting_until, answer_rate = excluded.answer_rate, \
               pool_rate = excluded.pool_rate",
        )
        .bind(&r.number)
        .bind(&r.pool)
        .bind(r.rested_at)
        .bind(r.resting_until)
        .bind(r.answer_rate)
        .bind(r.pool_rate)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Every caller ID that rested at some time (the latest rest of each).
    pub async fn caller_id_rests(&self) -> Result<Vec<CallerIdRest>> {
        let rows = sqlx::query(
            "SELECT number, pool, rested_at, resting_until, answer_rate, pool_rate \
             FROM caller_id_rests ORDER BY number",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CallerIdRest {
                    number: r.try_get(0)?,
                    pool: r.try_get(1)?,
                    rested_at: r.try_get(2)?,
                    resting_until: r.try_get(3)?,
                    answer_rate: r.try_get(4)?,
                    pool_rate: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// The caller IDs resting at `now`.
    pub async fn resting_caller_ids(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT number FROM caller_id_rests WHERE resting_until > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Into::into))
            .collect()
    }

    /// Forgets route outcomes older than `before`.
    pub async fn prune_route_outcomes(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM route_outcomes WHERE at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    // ---- trunk channels shared by every instance (PostgreSQL) -------------------

    /// Makes sure `trunk` has slot rows `0..max`.
    pub async fn ensure_trunk_slots(&self, trunk: &str, max: u32) -> Result<()> {
        for slot in 0..i64::from(max) {
            sqlx::query(
                "INSERT INTO trunk_slots (trunk, slot) VALUES ($1, $2) \
                 ON CONFLICT (trunk, slot) DO NOTHING",
            )
            .bind(trunk)
            .bind(slot)
            .execute(&self.writer)
            .await?;
        }
        Ok(())
    }

    /// Takes a free slot (never held, released, or its holder's lease ran out) of
    /// `trunk` below `max` for `holder`; the slot number, or `None` when all are taken.
    pub async fn take_trunk_slot(
        &self,
        trunk: &str,
        max: u32,
        holder: &str,
        call_id: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<i64>> {
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            // One writer at a time: nothing to skip.
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE trunk_slots SET holder = $1, call_id = $2, lease_until = $3 \
             WHERE trunk = $4 AND (holder IS NULL OR lease_until < $6) AND slot = ( \
               SELECT slot FROM trunk_slots WHERE trunk = $4 AND slot < $5 \
                 AND (holder IS NULL OR lease_until < $6) ORDER BY slot LIMIT 1 {lock}) \
             RETURNING slot"
        ))
        .bind(holder)
        .bind(call_id)
        .bind(lease_until)
        .bind(trunk)
        .bind(i64::from(max))
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    pub async fn release_trunk_slot(&self, trunk: &str, slot: i64, holder: &str) -> Result<()> {
        sqlx::query(
            "UPDATE trunk_slots SET holder = NULL, call_id = NULL, lease_until = NULL \
             WHERE trunk = $1 AND slot = $2 AND holder = $3",
        )
        .bind(trunk)
        .bind(slot)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Keeps the slots `holder` holds for another lease.
    pub async fn renew_trunk_slots(&self, holder: &str, lease_until: i64) -> Result<u64> {
        let done = sqlx::query("UPDATE trunk_slots SET lease_until = $2 WHERE holder = $1")
            .bind(holder)
            .bind(lease_until)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    /// Per trunk, the slots held at `now` (by any instance).
    pub async fn held_trunk_slots(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT trunk, COUNT(*) FROM trunk_slots \
             WHERE holder IS NOT NULL AND lease_until >= $1 GROUP BY trunk",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// A `(key, calls, answered)` row of the tally queries.
fn tally_of(r: &sqlx::any::AnyRow) -> Result<Tally> {
    Ok(Tally {
        key: r.try_get(0)?,
        calls: r.try_get(1)?,
        answered: r.try_get(2)?,
    })
}
