//! Canaries (SPEC §7): when each runs next and how healthy it is (`canary_state`), its
//! runs (`canary_runs`), and the calls the answering side took (`canary_arrivals`).
//! Codes only as keyed hashes; heard digits in clear only when they matched no run.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Result, Store};

/// A run about to be placed.
#[derive(Debug, Clone)]
pub struct NewCanaryRun<'a> {
    pub id: &'a str,
    pub canary: &'a str,
    pub number: &'a str,
    /// `own` (the test phone behind an answer number) or `qa` (a QA phone).
    pub far_end: &'a str,
    pub code_hash: &'a str,
    pub placed_by: &'a str,
    pub started_at: i64,
}

/// How a run ended, as recorded.
#[derive(Debug, Clone, Default)]
pub struct CanaryRunEnd<'a> {
    pub result: &'a str,
    pub reason: Option<&'a str>,
    pub trunk: Option<&'a str>,
    pub sip_code: Option<i64>,
    pub ringing_at: Option<i64>,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub post_dial_delay_ms: Option<i64>,
    pub setup_ms: Option<i64>,
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
    pub codec: Option<&'a str>,
    pub heard: Option<&'a str>,
    pub arrival_id: Option<&'a str>,
    pub finished_at: i64,
}

/// A canary's health as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryHealthRow {
    pub state: String,
    pub consecutive_failures: i64,
    pub last_success_at: Option<i64>,
}

/// An alert to queue with the health change that raised it.
#[derive(Debug, Clone)]
pub struct NewCanaryAlert {
    pub event: String,
    pub url: String,
    pub payload: String,
}

/// A canary's row: schedule and health.
#[derive(Debug, Clone)]
pub struct CanaryStateRow {
    pub canary: String,
    pub next_run_at: i64,
    pub health: CanaryHealthRow,
}

/// One run as the operations views show it.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryRunRow {
    pub id: String,
    pub canary: String,
    pub number: String,
    pub trunk: Option<String>,
    pub started_at: i64,
    pub result: Option<String>,
    pub reason: Option<String>,
    pub sip_code: Option<i64>,
    pub post_dial_delay_ms: Option<i64>,
    pub setup_ms: Option<i64>,
    pub loss: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub mos: Option<f64>,
    pub codec: Option<String>,
    pub heard: Option<String>,
    pub placed_by: String,
    pub answered_by: Option<String>,
}

/// An inbound call the test phone answered.
#[derive(Debug, Clone)]
pub struct NewCanaryArrival<'a> {
    pub id: &'a str,
    pub number: &'a str,
    pub sip_call_id: &'a str,
    pub answered_by: &'a str,
    pub arrived_at: i64,
}

/// What the test phone measured and heard in one inbound call.
#[derive(Debug, Clone, Default)]
pub struct CanaryArrivalReport<'a> {
    pub reported_at: i64,
    /// Keyed hash of the code heard, if a code was heard.
    pub heard_hash: Option<&'a str>,
    /// The digits heard, only when they are no open run's code.
    pub heard: Option<&'a str>,
    pub codec: Option<&'a str>,
    pub received: i64,
    pub expected: i64,
    pub lost: i64,
    pub jitter_ms: f64,
    pub gaps: i64,
    pub max_gap_ms: f64,
    pub burst_ratio: f64,
    pub first_rtp_at: Option<i64>,
}

/// An arrival as the calling side reads it to match its run.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryArrivalRow {
    pub id: String,
    pub sip_call_id: String,
    pub answered_by: String,
    pub arrived_at: i64,
    pub reported_at: Option<i64>,
    pub heard_hash: Option<String>,
    pub heard: Option<String>,
    pub codec: Option<String>,
    pub received: Option<i64>,
    pub expected: Option<i64>,
    pub lost: Option<i64>,
    pub jitter_ms: Option<f64>,
    pub burst_ratio: Option<f64>,
    pub first_rtp_at: Option<i64>,
}

const RUN_COLUMNS: &str = "r.id, r.canary, r.number, r.trunk, r.started_at, r.result, r.reason, \
     r.sip_code, r.post_dial_delay_ms, r.setup_ms, r.loss, r.jitter_ms, r.mos, r.codec, \
     r.heard, r.placed_by, a.answered_by";

fn run_from_row(r: &AnyRow) -> Result<CanaryRunRow> {
    Ok(CanaryRunRow {
        id: r.try_get(0)?,
        canary: r.try_get(1)?,
        number: r.try_get(2)?,
        trunk: r.try_get(3)?,
        started_at: r.try_get(4)?,
        result: r.try_get(5)?,
        reason: r.try_get(6)?,
        sip_code: r.try_get(7)?,
        post_dial_delay_ms: r.try_get(8)?,
        setup_ms: r.try_get(9)?,
        loss: r.try_get(10)?,
        jitter_ms: r.try_get(11)?,
        mos: r.try_get(12)?,
        codec: r.try_get(13)?,
        heard: r.try_get(14)?,
        placed_by: r.try_get(15)?,
        answered_by: r.try_get(16)?,
    })
}

fn arrival_from_row(r: &AnyRow) -> Result<CanaryArrivalRow> {
    Ok(CanaryArrivalRow {
        id: r.try_get(0)?,
        sip_call_id: r.try_get(1)?,
        answered_by: r.try_get(2)?,
        arrived_at: r.try_get(3)?,
        reported_at: r.try_get(4)?,
        heard_hash: r.try_get(5)?,
        heard: r.try_get(6)?,
        codec: r.try_get(7)?,
        received: r.try_get(8)?,
        expected: r.try_get(9)?,
        lost: r.try_get(10)?,
        jitter_ms: r.try_get(11)?,
        burst_ratio: r.try_get(12)?,
        first_rtp_at: r.try_get(13)?,
    })
}

impl Store {
    /// Gives every canary in `names` a state row, due at `now` when it is new.
    pub async fn canary_register(&self, names: &[String], now: i64) -> Result<()> {
        for name in names {
            sqlx::query(
                "INSERT INTO canary_state (canary, next_run_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (canary) DO NOTHING",
            )
            .bind(name)
            .bind(now)
            .execute(&self.writer)
            .await?;
        }
        Ok(())
    }

    /// Every canary's schedule and health.
    pub async fn canary_states(&self) -> Result<Vec<CanaryStateRow>> {
        let rows = sqlx::query(
            "SELECT canary, next_run_at, state, consecutive_failures, last_success_at \
             FROM canary_state ORDER BY canary",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CanaryStateRow {
                    canary: r.try_get(0)?,
                    next_run_at: r.try_get(1)?,
                    health: CanaryHealthRow {
                        state: r.try_get(2)?,
                        consecutive_failures: r.try_get(3)?,
                        last_success_at: r.try_get(4)?,
                    },
                })
            })
            .collect()
    }

    /// Takes the run of `canary` that is due at `now`, moving its next run to `next_at`,
    /// unless a run of it started after `open_since` is still open. True: the caller
    /// (one instance of all) places it.
    pub async fn canary_claim(
        &self,
        canary: &str,
        now: i64,
        next_at: i64,
        open_since: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE canary_state SET next_run_at = $3, updated_at = $2 \
             WHERE canary = $1 AND next_run_at <= $2 AND NOT EXISTS ( \
                SELECT 1 FROM canary_runs WHERE canary = $1 AND result IS NULL \
                AND started_at > $4)",
        )
        .bind(canary)
        .bind(now)
        .bind(next_at)
        .bind(open_since)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a new run, unless `cap` runs started since `day_start` already (then
    /// false, nothing written).
    pub async fn canary_start_run(
        &self,
        run: &NewCanaryRun<'_>,
        day_start: i64,
        cap: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT COUNT(*) FROM canary_runs WHERE started_at >= $1")
            .bind(day_start)
            .fetch_one(&mut *tx)
            .await?;
        let today: i64 = row.try_get(0)?;
        if today >= cap {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO canary_runs (id, canary, number, far_end, code_hash, placed_by, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(run.id)
        .bind(run.canary)
        .bind(run.number)
        .bind(run.far_end)
        .bind(run.code_hash)
        .bind(run.placed_by)
        .bind(run.started_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a run once and updates its canary's health in the same transaction:
    /// `decide` gets the health as stored and returns it as it is now, and an alert to
    /// queue if the state changed. `None` when the run had ended already.
    pub async fn canary_finish_run<F>(
        &self,
        id: &str,
        end: &CanaryRunEnd<'_>,
        decide: F,
    ) -> Result<Option<CanaryHealthRow>>
    where
        F: FnOnce(&CanaryHealthRow) -> (CanaryHealthRow, Option<NewCanaryAlert>),
    {
        let mut tx = self.write_tx().await?;
        let ended = sqlx::query(
            "UPDATE canary_runs SET result = $2, reason = $3, trunk = COALESCE($4, trunk), \
             sip_code = $5, ringing_at = $6, answered_at = $7, ended_at = $8, \
             post_dial_delay_ms = $9, setup_ms = $10, loss = $11, jitter_ms = $12, mos = $13, \
             codec = $14, heard = $15, arrival_id = $16, finished_at = $17 \
             WHERE id = $1 AND result IS NULL RETURNING canary",
        )
        .bind(id)
        .bind(end.result)
        .bind(end.reason)
        .bind(end.trunk)
        .bind(end.sip_code)
        .bind(end.ringing_at)
        .bind(end.answered_at)
        .bind(end.ended_at)
        .bind(end.post_dial_delay_ms)
        .bind(end.setup_ms)
        .bind(end.loss)
        .bind(end.jitter_ms)
        .bind(end.mos)
        .bind(end.codec)
        .bind(end.heard)
        .bind(end.arrival_id)
        .bind(end.finished_at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = ended else {
            tx.rollback().await?;
            return Ok(None);
        };
        let canary: String = row.try_get(0)?;
        let row = sqlx::query(
            "SELECT state, consecutive_failures, last_success_at FROM canary_state WHERE canary = $1",
        )
        .bind(&canary)
        .fetch_optional(&mut *tx)
        .await?;
        let before = match row {
            Some(r) => CanaryHealthRow {
                state: r.try_get(0)?,
                consecutive_failures: r.try_get(1)?,
                last_success_at: r.try_get(2)?,
            },
            None => CanaryHealthRow {
                state: "ok".into(),
                consecutive_failures: 0,
                last_success_at: None,
            },
        };
        let (after, alert) = decide(&before);
        sqlx::query(
            "INSERT INTO canary_state (canary, next_run_at, state, consecutive_failures, \
             last_success_at, updated_at) VALUES ($1, $5, $2, $3, $4, $5) \
             ON CONFLICT (canary) DO UPDATE SET state = $2, consecutive_failures = $3, \
             last_success_at = $4, updated_at = $5",
        )
        .bind(&canary)
        .bind(&after.state)
        .bind(after.consecutive_failures)
        .bind(after.last_success_at)
        .bind(end.finished_at)
        .execute(&mut *tx)
        .await?;
        if let Some(a) = alert {
            sqlx::query(
                "INSERT INTO canary_alerts (id, canary, event, url, payload, created_at, \
                 next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(format!("cal_{}", ulid::Ulid::new()))
            .bind(&canary)
            .bind(&a.event)
            .bind(&a.url)
            .bind(&a.payload)
            .bind(end.finished_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(after))
    }

    /// Runs still open that started before `before` (their instance died or lost its
    /// database): (id, canary).
    pub async fn canary_abandoned_runs(&self, before: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, canary FROM canary_runs WHERE result IS NULL AND started_at < $1",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The latest `limit` runs of `canary`, newest first, with who answered them.
    pub async fn canary_recent_runs(&self, canary: &str, limit: i64) -> Result<Vec<CanaryRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM canary_runs r \
             LEFT JOIN canary_arrivals a ON a.id = r.arrival_id \
             WHERE r.canary = $1 ORDER BY r.started_at DESC, r.id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(canary)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Records that an inbound call for an answer number arrived (before it is answered).
    pub async fn canary_arrival_start(&self, a: &NewCanaryArrival<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO canary_arrivals (id, number, sip_call_id, answered_by, arrived_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(a.id)
        .bind(a.number)
        .bind(a.sip_call_id)
        .bind(a.answered_by)
        .bind(a.arrived_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// What the test phone heard and measured in an arrival, once its call ended.
    pub async fn canary_arrival_report(&self, id: &str, r: &CanaryArrivalReport<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE canary_arrivals SET reported_at = $2, heard_hash = $3, heard = $4, \
             codec = $5, received = $6, expected = $7, lost = $8, jitter_ms = $9, gaps = $10, \
             max_gap_ms = $11, burst_ratio = $12, first_rtp_at = $13 WHERE id = $1",
        )
        .bind(id)
        .bind(r.reported_at)
        .bind(r.heard_hash)
        .bind(r.heard)
        .bind(r.codec)
        .bind(r.received)
        .bind(r.expected)
        .bind(r.lost)
        .bind(r.jitter_ms)
        .bind(r.gaps)
        .bind(r.max_gap_ms)
        .bind(r.burst_ratio)
        .bind(r.first_rtp_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The code hashes of the open runs to `number` (the answering side checks what it
    /// heard against them, without any code in clear).
    pub async fn canary_open_code_hashes(&self, number: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT code_hash FROM canary_runs WHERE number = $1 AND result IS NULL")
                .bind(number)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Arrivals at `number` since `since` that no run claimed yet, oldest first.
    pub async fn canary_unclaimed_arrivals(
        &self,
        number: &str,
        since: i64,
    ) -> Result<Vec<CanaryArrivalRow>> {
        let rows = sqlx::query(
            "SELECT id, sip_call_id, answered_by, arrived_at, reported_at, heard_hash, heard, \
             codec, received, expected, lost, jitter_ms, burst_ratio, first_rtp_at \
             FROM canary_arrivals WHERE number = $1 AND arrived_at >= $2 AND run_id IS NULL \
             ORDER BY arrived_at, id",
        )
        .bind(number)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(arrival_from_row).collect()
    }

    /// Claims an arrival for a run; false when another run took it first.
    pub async fn canary_claim_arrival(&self, arrival_id: &str, run_id: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE canary_arrivals SET run_id = $2 WHERE id = $1 AND run_id IS NULL")
                .bind(arrival_id)
                .bind(run_id)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Arrivals no run claimed, that arrived before `before` (late or unexpected calls).
    pub async fn canary_count_unclaimed_before(&self, before: i64) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM canary_arrivals WHERE run_id IS NULL AND arrived_at < $1",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
