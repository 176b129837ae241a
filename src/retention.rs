//! Retention, the GDPR data-minimisation setting (`[database] retention`, `otpdial
//! purge`): finished verifications with their calls, attempts, call events and webhook
//! deliveries, and audit rows, are deleted once older than `retention`. Audit rows
//! that are evidence of abuse (refused starts, wrong and unknown-id checks, risk
//! denials, admin logins) stay until `audit_retention`, with the numbers and user ids
//! in them replaced by a one-way keyed hash ([`CodeKeys::pseudonym`]).
//!
//! The work goes in small batches with a pause between them, so the dialer and the
//! API (which share the database writer) never wait behind it for long. What to keep
//! and how to hash it is pure ([`keeps_longer`], [`pseudonymise`]); the SQL is in
//! `store::retention`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain;
use crate::metrics::Metrics;
use crate::store::{OldAuditRow, PseudonymisedAudit, PurgedRows, Store, StoreError};
use crate::verify::CodeKeys;

/// Verifications (or audit rows) per batch: one short write transaction.
const BATCH: i64 = 200;
/// Between batches: the writer is free for the dialer and the API.
const PAUSE: Duration = Duration::from_millis(20);
/// The background job's first run after start, then its period.
const FIRST_RUN: Duration = Duration::from_secs(5);
const PERIOD: Duration = Duration::from_secs(600);

/// How old a row must be to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Verifications, calls, attempts, deliveries, routine audit rows.
    pub older_than: Duration,
    /// Audit rows kept as evidence (pseudonymised after `older_than`).
    pub audit_older_than: Duration,
}

impl RetentionPolicy {
    /// The policy of `[database]`; None when `retention` is 0 (off).
    pub fn from_settings(db: &crate::config::DatabaseSettings) -> Option<RetentionPolicy> {
        (!db.retention.is_zero()).then_some(RetentionPolicy {
            older_than: db.retention,
            audit_older_than: db.audit_retention.max(db.retention),
        })
    }
}

/// What one purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub rows: PurgedRows,
    pub audit_deleted: u64,
    pub audit_pseudonymised: u64,
    pub budget_days: u64,
}

impl PurgeReport {
    pub fn is_empty(&self) -> bool {
        *self == PurgeReport::default()
    }

    /// One line per kind of row, as `otpdial purge` prints them.
    pub fn render(&self) -> String {
        let r = &self.rows;
        format!(
            "verifications deleted: {}\ncalls deleted: {}\ncall attempts deleted: {}\n\
             call events deleted: {}\nwebhook deliveries deleted: {}\n\
             audit rows deleted: {}\naudit rows kept with numbers and user ids hashed: {}\n\
             daily call budgets deleted: {}\n",
            r.verifications,
            r.calls,
            r.attempts,
            r.call_events,
            r.webhooks,
            self.audit_deleted,
            self.audit_pseudonymised,
            self.budget_days
        )
    }
}

/// Whether an audit row is evidence kept until `audit_retention` (pseudonymised)
/// rather than deleted with the rest at `retention`. Pure.
pub fn keeps_longer(action: &str, outcome: &str) -> bool {
    match action {
        "admin.login" => true,
        "verification.start" => outcome != "created",
        "verification.check" => outcome != "approved",
        "call.risk" => outcome != "allow",
        _ => false,
    }
}

/// The row with its target (a user id, a number, a verification id) and every
/// number in its detail replaced by keyed hashes. Pure.
pub fn pseudonymise(keys: &CodeKeys, row: &OldAuditRow) -> PseudonymisedAudit {
    PseudonymisedAudit {
        id: row.id.clone(),
        target: row.target.as_deref().map(|t| keys.pseudonym(t)),
        detail: row.detail.as_deref().map(|d| hash_numbers(keys, d)),
    }
}

/// Replaces every `+` followed by four or more digits or mask stars (`+31612345678`,
/// `+316******78`) with its keyed hash.
fn hash_numbers(keys: &CodeKeys, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('+') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let len = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '*'))
            .unwrap_or(tail.len());
        if len >= 4 {
            out.push_str(&keys.pseudonym(&rest[at..at + 1 + len]));
        } else {
            out.push_str(&rest[at..at + 1 + len]);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn cutoff(now: i64, age: Duration) -> i64 {
    now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Runs retention once to the end: every batch until none is left (or `stop` is
/// cancelled between batches).
pub async fn purge(
    store: &Store,
    keys: &CodeKeys,
    policy: RetentionPolicy,
    now: i64,
    metrics: Option<&Metrics>,
    stop: &CancellationToken,
) -> Result<PurgeReport, StoreError> {
    let before = cutoff(now, policy.older_than);
    let mut report = PurgeReport::default();
    loop {
        let batch = store.purge_verifications(before, BATCH).await?;
        report.rows += batch;
        if let Some(m) = metrics {
            count_rows(m, &batch);
        }
        if batch.verifications < u64::try_from(BATCH).unwrap_or(0) || !pause(stop).await {
            break;
        }
    }
    loop {
        let rows = store.old_audit_rows(before, BATCH).await?;
        let (keep, delete): (Vec<_>, Vec<_>) = rows
            .iter()
            .partition(|r| keeps_longer(&r.action, &r.outcome));
        let delete: Vec<String> = delete.into_iter().map(|r| r.id.clone()).collect();
        let keep: Vec<PseudonymisedAudit> =
            keep.into_iter().map(|r| pseudonymise(keys, r)).collect();
        let deleted = store.retire_audit_rows(&delete, &keep, now).await?;
        report.audit_deleted += deleted;
        report.audit_pseudonymised += keep.len() as u64;
        if let Some(m) = metrics {
            m.retention("audit_log", "deleted", deleted);
            m.retention("audit_log", "pseudonymised", keep.len() as u64);
        }
        if rows.len() < usize::try_from(BATCH).unwrap_or(0) || !pause(stop).await {
            break;
        }
    }
    let audit_before = cutoff(now, policy.audit_older_than.max(policy.older_than));
    loop {
        let deleted = store.delete_audit_before(audit_before, BATCH).await?;
        report.audit_deleted += deleted;
        if let Some(m) = metrics {
            m.retention("audit_log", "deleted", deleted);
        }
        if deleted < u64::try_from(BATCH).unwrap_or(0) || !pause(stop).await {
            break;
        }
    }
    let day: String = domain::format_ms(before).chars().take(10).collect();
    report.budget_days = store.prune_daily_budget(&day).await?;
    Ok(report)
}

fn count_rows(m: &Metrics, r: &PurgedRows) {
    m.retention("verifications", "deleted", r.verifications);
    m.retention("calls", "deleted", r.calls);
    m.retention("call_attempts", "deleted", r.attempts);
    m.retention("call_events", "deleted", r.call_events);
    m.retention("webhook_outbox", "deleted", r.webhooks);
}

/// `otpdial purge [--older-than AGE]`: one purge to the end on `[database] url`
/// (migrated first, as `serve` would), with `older_than` in place of `retention`.
/// Returns the text to print.
pub async fn purge_command(
    settings: &crate::config::Settings,
    older_than: Option<Duration>,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let db = &settings.database;
    let age = match older_than {
        Some(age) => age,
        None if db.retention.is_zero() => anyhow::bail!(
            "database.retention is 0 (keep everything): give --older-than, e.g. --older-than 90d"
        ),
        None => db.retention,
    };
    if age < crate::config::MIN_RETENTION {
        anyhow::bail!(
            "--older-than {}: must be at least 1h",
            humantime::format_duration(age)
        );
    }
    let policy = RetentionPolicy {
        older_than: age,
        audit_older_than: db.audit_retention.max(age),
    };
    let url = crate::config::masked_url(&db.url);
    let store = Store::connect(&db.url, 2, db.acquire_timeout.max(Duration::from_secs(10)))
        .await
        .with_context(|| format!("cannot open database {url}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("database {url}"))?;
    let keys = crate::verify::CodeKeys::load(settings, &store).await?;
    let now = domain::now_ms();
    let report = purge(&store, &keys, policy, now, None, &CancellationToken::new())
        .await
        .with_context(|| format!("purge on {url}"))?;
    store.close().await;
    Ok(format!(
        "purged {url}: rows older than {} (before {}), evidence in the audit log kept until {} old\n{}",
        age_text(age),
        domain::format_ms(cutoff(now, age)),
        age_text(policy.audit_older_than),
        report.render()
    ))
}

/// `30d`, `12h`, else humantime's form (`1h 30m`).
fn age_text(age: Duration) -> String {
    let secs = age.as_secs();
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else {
        humantime::format_duration(age).to_string()
    }
}

/// Sleeps [`PAUSE`]; false when `stop` was cancelled instead.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(PAUSE) => true,
        _ = stop.cancelled() => false,
    }
}

/// The background job: a purge shortly after start, then every ten minutes, until
/// `shutdown`. A failed purge is logged and tried again next period.
pub async fn run(
    store: Store,
    keys: CodeKeys,
    policy: RetentionPolicy,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut wait = FIRST_RUN;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = PERIOD;
        let now = domain::now_ms();
        match purge(&store, &keys, policy, now, Some(&metrics), &shutdown).await {
            Ok(report) if report.is_empty() => {}
            Ok(r) => tracing::info!(
                verifications = r.rows.verifications,
                calls = r.rows.calls,
                attempts = r.rows.attempts,
                audit_deleted = r.audit_deleted,
                audit_pseudonymised = r.audit_pseudonymised,
                "retention: old rows purged"
            ),
            Err(e) => tracing::warn!(error = %e, "retention: purge failed; next try in 10 minutes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_is_kept_routine_rows_are_not() {
        assert!(keeps_longer("admin.login", "ok"));
        assert!(keeps_longer("verification.start", "number_type"));
        assert!(keeps_longer("verification.start", "not_registered"));
        assert!(!keeps_longer("verification.start", "created"));
        assert!(keeps_longer("verification.check", "wrong"));
        assert!(keeps_longer("verification.check", "unknown_id"));
        assert!(!keeps_longer("verification.check", "approved"));
        assert!(keeps_longer("call.risk", "deny"));
        assert!(!keeps_longer("call.risk", "allow"));
        assert!(!keeps_longer("phones.replace", "ok"));
        assert!(!keeps_longer("verification.cancel", "canceled"));
    }

    #[test]
    fn numbers_and_targets_are_hashed_with_the_key() {
        let keys = CodeKeys::from_master(b"k1");
        let row = OldAuditRow {
            id: "au_1".into(),
            action: "verification.start".into(),
            outcome: "number_type".into(),
            target: Some("+316******78".into()),
            detail: Some("removed +31612345678 and +316******78; +31 is a prefix".into()),
        };
        let p = pseudonymise(&keys, &row);
        let target = p.target.unwrap();
        assert!(target.starts_with("h:") && target.len() == 18, "{target}");
        let detail = p.detail.unwrap();
        assert!(
            !detail.contains("612345678") && !detail.contains("******"),
            "{detail}"
        );
        assert!(
            detail.contains("+31 is a prefix"),
            "short prefixes stay: {detail}"
        );
        assert_eq!(detail.matches("h:").count(), 2, "{detail}");
        // One-way and keyed: the same value hashes alike under one key, not another.
        assert_eq!(keys.pseudonym("u-1"), keys.pseudonym("u-1"));
        assert_ne!(keys.pseudonym("u-1"), keys.pseudonym("u-2"));
        assert_ne!(
            keys.pseudonym("u-1"),
            CodeKeys::from_master(b"k2").pseudonym("u-1")
        );
    }
}
