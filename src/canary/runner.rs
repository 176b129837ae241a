//! The calling side: schedules each `[[canaries]]` entry every `interval` (one instance
//! of all places each run: it moves the canary's `next_run_at` in the database first),
//! places the call with a fresh random code through the named trunk or by normal
//! routing, then matches it with what the answering side reported and records the run,
//! the canary's health and any alert in one transaction.
//!
//! Canary calls are not verifications: no verification row, no user limit, no fraud
//! budget; their own `[canary] daily_cap`. They do take a trunk slot like any call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::matching::{self, Pick};
use super::{classify, code_hash, CallerEnd, FarEnd, RunResult};
use crate::call::{AttemptOutcome, CallEngine, Hangup, HangupCause, KeyGate, PlaceCall, Progress};
use crate::config::{CanaryEntry, Settings};
use crate::domain::{self, CallStatus, OtpCode};
use crate::metrics::Metrics;
use crate::store::{CanaryArrivalRow, CanaryRunEnd, NewCanaryRun, Store, StoreError};
use crate::trunks::TrunkBoard;
use crate::verify::CodeKeys;

/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(250);
/// How often the answering side's reports are looked for when no local wake-up comes.
const REPORT_POLL: Duration = Duration::from_millis(250);
/// Once the call arrived, how much longer than `arrival_timeout` its report may take
/// (the answering side recognises the audio after the call, a second or more).
const REPORT_GRACE: Duration = Duration::from_secs(60);
/// Arrivals this much older than the run's start (clocks of two instances) still count.
const CLOCK_SLACK_MS: i64 = 5_000;
/// After shutdown is asked, how long runs in progress get to hang up and record.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Everything the calling side needs.
pub struct CanaryRunner {
    pub(super) store: Store,
    pub(super) keys: CodeKeys,
    pub(super) engine: Arc<CallEngine>,
    pub(super) board: Arc<TrunkBoard>,
    pub(super) settings: Arc<Settings>,
    pub(super) metrics: Arc<Metrics>,
    /// This instance's name in `canary_runs.placed_by`.
    pub(super) instance: String,
    /// Woken when the answering side of this instance reported an arrival.
    pub(super) reports: Arc<Notify>,
}

/// What the calling side saw of one run.
#[derive(Debug, Default)]
struct Placed {
    outcome: Option<AttemptOutcome>,
    trunk: Option<String>,
    attempt_at: i64,
    ringing_at: Option<i64>,
    answered_at: Option<i64>,
    ended_at: Option<i64>,
}

impl Placed {
    fn answered(&self) -> bool {
        self.answered_at.is_some()
            || self
                .outcome
                .as_ref()
                .is_some_and(|o| o.sip_code == Some(200) || o.times_played > 0)
    }

    fn caller_end(&self) -> CallerEnd {
        let Some(o) = &self.outcome else {
            return CallerEnd::Failed;
        };
        CallerEnd::from_sip(
            self.answered(),
            o.sip_code,
            o.status == CallStatus::NoAnswer,
        )
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl CanaryRunner {
    /// How long a run may stay open before it counts as abandoned: the longest ring,
    /// the longest call and the wait for the answering side, with room to spare.
    fn run_lifetime_ms(&self) -> i64 {
        let ring = self
            .settings
            .trunks
            .iter()
            .map(|t| t.ring_timeout)
            .chain([self.settings.qa.ring_timeout])
            .max()
            .unwrap_or_default();
        ms(ring + self.settings.canary.max_call + self.settings.canary.arrival_timeout) + 60_000
    }

    /// Schedules and runs the canaries until `shutdown`; runs in progress are then hung
    /// up and recorded.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let names: Vec<String> = self
            .settings
            .canaries
            .iter()
            .map(|c| c.name.clone())
            .collect();
        if let Err(e) = self.store.canary_register(&names, domain::now_ms()).await {
            tracing::warn!(error = %e, "cannot register the canaries; retrying on the next tick");
        }
        let hangup = Hangup::default();
        let mut running = JoinSet::new();
        let mut last_sweep = Instant::now();
        loop {
            while running.try_join_next().is_some() {}
            self.tick(&hangup, &mut running).await;
            if last_sweep.elapsed() >= Duration::from_secs(5) {
                last_sweep = Instant::now();
                self.settle_abandoned().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        hangup.request(HangupCause::Shutdown);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while !running.is_empty() {
            tokio::select! {
                _ = running.join_next() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    running.abort_all();
                    break;
                }
            }
        }
    }

    /// One look at the schedule: health gauges from the database, and each due canary
    /// this instance wins is started.
    async fn tick(self: &Arc<Self>, hangup: &Hangup, running: &mut JoinSet<()>) {
        let states = match self.store.canary_states().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the canary schedule");
                return;
            }
        };
        let now = domain::now_ms();
        for state in &states {
            self.metrics.canary.health(
                &state.canary,
                state.health.state == "failing",
                state.health.last_success_at,
            );
        }
        for entry in &self.settings.canaries {
            let due = match states.iter().find(|s| s.canary == entry.name) {
                Some(s) => s.next_run_at <= now,
                None => {
                    let names = [entry.name.clone()];
                    let _ = self.store.canary_register(&names, now).await;
                    true
                }
            };
            if !due {
                continue;
            }
            let next = now + ms(entry.interval);
            let open_since = now - self.run_lifetime_ms();
            match self
                .store
                .canary_claim(&entry.name, now, next, open_since)
                .await
            {
                Ok(true) => {
                    let me = self.clone();
                    let entry = entry.clone();
                    let hangup = hangup.clone();
                    running.spawn(async move {
                        let span = tracing::info_span!("canary", canary = %entry.name);
                        tracing::Instrument::instrument(me.run_once(&entry, &hangup), span).await;
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(canary = %entry.name, error = %e, "cannot claim a canary run")
                }
            }
        }
    }

    /// One run of `entry`, from the code to the recorded result.
    pub async fn run_once(&self, entry: &CanaryEntry, hangup: &Hangup) -> Option<RunResult> {
        let far = match self.settings.qa.phone_for(&entry.number) {
            Some(_) => FarEnd::QaPhone,
            None => FarEnd::OwnPhone,
        };
        let code = match OtpCode::generate(self.settings.verification.code_length) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no code for the canary run");
                return None;
            }
        };
        let hash = code_hash(&self.keys, &entry.number, code.expose());
        let run_id = format!("cr_{}", ulid::Ulid::new());
        let started_at = domain::now_ms();
        let run = NewCanaryRun {
            id: &run_id,
            canary: &entry.name,
            number: &entry.number,
            far_end: match far {
                FarEnd::OwnPhone => "own",
                FarEnd::QaPhone => "qa",
            },
            code_hash: &hash,
            placed_by: &self.instance,
            started_at,
        };
        let day_start = started_at - started_at.rem_euclid(86_400_000);
        let cap = i64::from(self.settings.canary.daily_cap);
        match self.store.canary_start_run(&run, day_start, cap).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(cap, "canary run skipped: [canary] daily_cap reached");
                self.metrics
                    .canary
                    .run(&entry.name, "skipped_daily_cap", None, None);
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the canary run; not placed");
                return None;
            }
        }
        tracing::info!(run = %run_id, number = %entry.number, "canary run placed");
        let placed = self.place(entry, far, &code, hangup).await;
        drop(code);
        let caller = placed.caller_end();
        let arrival = match (far, &caller) {
            (FarEnd::OwnPhone, CallerEnd::Answered | CallerEnd::NotAnswered) => {
                let wait = caller == CallerEnd::Answered;
                self.await_arrival(&run_id, &entry.number, &hash, started_at, wait, hangup)
                    .await
            }
            _ => None,
        };
        let heard = arrival.as_ref().map(|a| matching::heard(a, &hash));
        let result = classify(far, &caller, heard.as_ref());
        self.finish(entry, &run_id, result, &placed, arrival.as_ref())
            .await;
        Some(result)
    }

    /// Places the call: to the QA phone's registration, or through the named trunk, or
    /// by the routes of the number (failing over like a verification call).
    async fn place(
        &self,
        entry: &CanaryEntry,
        far: FarEnd,
        code: &OtpCode,
        hangup: &Hangup,
    ) -> Placed {
        let locale = if entry.locale.is_empty() {
            self.settings.verification.default_locale.as_str()
        } else {
            entry.locale.as_str()
        };
        let call = || PlaceCall {
            to: &entry.number,
            digits: code.digit_values(),
            locale,
            repeat: self.settings.verification.repeat,
            gate: KeyGate::Open,
            hangup: hangup.clone(),
        };
        let mut placed = Placed::default();
        if far == FarEnd::QaPhone {
            let phone = self.settings.qa.phone_for(&entry.number);
            let username = phone.map(|p| p.username.clone()).unwrap_or_default();
            let route = format!("qa:{username}");
            let binding = crate::sync::lock(&self.engine.qa_bindings())
                .get(&username)
                .filter(|b| b.expires_at > Instant::now())
                .cloned();
            placed.trunk = Some(route.clone());
            placed.attempt_at = domain::now_ms();
            let Some(binding) = binding else {
                placed.outcome = Some(AttemptOutcome::failed(
                    format!("QA phone {username} is not registered"),
                    false,
                ));
                return placed;
            };
            let ring = self.settings.qa.ring_timeout;
            let (tx, rx) = mpsc::unbounded_channel();
            let attempt = self.engine.place_qa(call(), &route, &binding, ring, tx);
            placed.outcome = Some(track(attempt, rx, &mut placed).await);
            placed.ended_at = Some(domain::now_ms());
            return placed;
        }
        let routes = match entry.trunk() {
            Some(t) => vec![t.to_string()],
            None => self.board.routes(&entry.number),
        };
        if routes.is_empty() {
            placed.outcome = Some(AttemptOutcome::failed(
                format!("no trunk routes {}", entry.number),
                false,
            ));
            return placed;
        }
        for trunk in &routes {
            placed.trunk = Some(trunk.clone());
            let Some(slot) = self.board.try_slot(trunk) else {
                placed.outcome = Some(AttemptOutcome::failed(
                    format!("trunk {trunk} has no free call slot"),
                    true,
                ));
                continue;
            };
            placed.attempt_at = domain::now_ms();
            placed.ringing_at = None;
            placed.answered_at = None;
            let (tx, rx) = mpsc::unbounded_channel();
            let attempt = self.engine.place(call(), slot, tx);
            let outcome = track(attempt, rx, &mut placed).await;
            placed.ended_at = Some(domain::now_ms());
            let failover = outcome.failover && hangup.cause().is_none();
            tracing::info!(
                trunk = %trunk,
                status = outcome.status.as_str(),
                sip_code = outcome.sip_code,
                reason = outcome.attempt_reason().unwrap_or(""),
                "canary attempt ended"
            );
            placed.outcome = Some(outcome);
            if !failover {
                break;
            }
        }
        placed
    }

    /// Waits for the answering side's report of this run's call and claims it. `wait`:
    /// the call was answered, so it may still arrive (for up to `arrival_timeout`) and,
    /// once it did, its report may still come (recognition takes a moment: up to
    /// [`REPORT_GRACE`] more); otherwise only what arrived already counts.
    async fn await_arrival(
        &self,
        run_id: &str,
        number: &str,
        hash: &str,
        started_at: i64,
        wait: bool,
        hangup: &Hangup,
    ) -> Option<CanaryArrivalRow> {
        let (arrive_in, report_in) = if wait {
            let t = self.settings.canary.arrival_timeout;
            (t, t + REPORT_GRACE)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let start = tokio::time::Instant::now();
        let (arrive_by, report_by) = (start + arrive_in, start + report_in);
        loop {
            let arrivals = match self
                .store
                .canary_unclaimed_arrivals(number, started_at - CLOCK_SLACK_MS)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read canary arrivals");
                    Vec::new()
                }
            };
            let deadline = if matching::has_candidate(&arrivals, hash) {
                report_by
            } else {
                arrive_by
            };
            let late = tokio::time::Instant::now() >= deadline || hangup.cause().is_some();
            match matching::pick_arrival(&arrivals, hash, late) {
                Pick::Take(i) => match self
                    .store
                    .canary_claim_arrival(&arrivals[i].id, run_id)
                    .await
                {
                    Ok(true) => return Some(arrivals[i].clone()),
                    Ok(false) => continue, // another run took it; look again
                    Err(e) => tracing::warn!(error = %e, "cannot claim a canary arrival"),
                },
                Pick::Nothing => return None,
                Pick::Wait => {}
            }
            if late {
                return None;
            }
            tokio::select! {
                _ = self.reports.notified() => {}
                _ = tokio::time::sleep(REPORT_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = hangup.requested() => {}
            }
        }
    }

    /// Records the run's end and the canary's health, queues an alert when it changed,
    /// and updates the metrics. Retries while the database is unreachable, for a while.
    async fn finish(
        &self,
        entry: &CanaryEntry,
        run_id: &str,
        result: RunResult,
        placed: &Placed,
        arrival: Option<&CanaryArrivalRow>,
    ) {
        let quality = arrival.and_then(|a| matching::quality(a, placed.answered_at));
        let heard = arrival
            .filter(|_| result == RunResult::WrongDigits)
            .and_then(|a| a.heard.clone());
        let outcome = placed.outcome.as_ref();
        let reason = match result {
            RunResult::Ok => None,
            _ => outcome.and_then(|o| o.attempt_reason().map(str::to_owned)),
        };
        let pdd = placed
            .ringing_at
            .or(placed.answered_at)
            .map(|t| t - placed.attempt_at);
        let setup = placed.answered_at.map(|t| t - placed.attempt_at);
        let now = domain::now_ms();
        let end = CanaryRunEnd {
            result: result.as_str(),
            reason: reason.as_deref(),
            trunk: placed.trunk.as_deref(),
            sip_code: outcome.and_then(|o| o.sip_code).map(i64::from),
            ringing_at: placed.ringing_at,
            answered_at: placed.answered_at,
            ended_at: placed.ended_at,
            post_dial_delay_ms: pdd,
            setup_ms: setup,
            loss: quality.map(|q| q.loss),
            jitter_ms: quality.map(|q| q.jitter_ms),
            mos: quality.map(|q| q.mos),
            codec: arrival.and_then(|a| a.codec.as_deref()),
            heard: heard.as_deref(),
            arrival_id: arrival.map(|a| a.id.as_str()),
            finished_at: now,
        };
        let alert_url = self.settings.canary.alert_url.trim().to_string();
        let fail_after = self.settings.canary.fail_after;
        let run_view = super::alerts::RunView::new(run_id, &end, now);
        let mut wait = Duration::from_millis(200);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let decide = |before: &crate::store::CanaryHealthRow| {
                super::alerts::decide(
                    entry, before, result, fail_after, &alert_url, &run_view, now,
                )
            };
            match self.store.canary_finish_run(run_id, &end, decide).await {
                Ok(_) => break,
                Err(e @ StoreError::Corrupt(_)) => {
                    tracing::error!(error = %e, "cannot record the canary run");
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot record the canary run; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record the canary run; it will count as abandoned");
                    return;
                }
            }
        }
        self.metrics
            .canary
            .run(&entry.name, result.as_str(), pdd, quality.map(|q| q.mos));
        tracing::info!(
            run = %run_id,
            result = result.as_str(),
            post_dial_delay_ms = pdd,
            mos = quality.map(|q| q.mos),
            "canary run ended"
        );
    }

    /// Runs whose instance died (or lost its database) end `failed`, reason
    /// `abandoned`; they count toward `fail_after` like any failure.
    async fn settle_abandoned(&self) {
        let before = domain::now_ms() - self.run_lifetime_ms();
        let abandoned = match self.store.canary_abandoned_runs(before).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for abandoned canary runs");
                return;
            }
        };
        for (run_id, canary) in abandoned {
            let Some(entry) = self.settings.canaries.iter().find(|c| c.name == canary) else {
                continue;
            };
            tracing::warn!(run = %run_id, canary = %canary, "canary run abandoned by its instance: ended failed");
            let placed = Placed {
                outcome: Some(AttemptOutcome::failed("abandoned", false)),
                ..Placed::default()
            };
            self.finish(entry, &run_id, RunResult::Failed, &placed, None)
                .await;
        }
    }
}

/// Drives one attempt while noting when it rang and was answered.
async fn track(
    attempt: impl std::future::Future<Output = AttemptOutcome>,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    placed: &mut Placed,
) -> AttemptOutcome {
    tokio::pin!(attempt);
    let note = |p: Progress, placed: &mut Placed| {
        let now = domain::now_ms();
        match p {
            Progress::Ringing => {
                placed.ringing_at.get_or_insert(now);
            }
            Progress::Answered => {
                placed.answered_at.get_or_insert(now);
            }
            Progress::Played(_) => {}
        }
    };
    let outcome = loop {
        tokio::select! {
            biased;
            Some(p) = progress.recv() => note(p, placed),
            outcome = &mut attempt => break outcome,
        }
    };
    while let Ok(p) = progress.try_recv() {
        note(p, placed);
    }
    outcome
}
