//! Calling by country, the dialer's side (SPEC §7): trunks ordered by measured
//! quality, the caller ID a call shows and the resting of caller IDs, what each
//! attempt achieved, and trunk channels shared by every instance on PostgreSQL.
//! The decisions are the pure functions of `routing.rs` and `callerid.rs`; this file
//! reads their inputs from the store and records their results.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::callerid;
use super::routing::{order_by_quality, Candidate, RouteStats};
use super::Dialer;
use crate::call::AttemptOutcome;
use crate::config::{RoutingMode, TrunkSettings};
use crate::domain::{self, CallStatus, PhoneNumber};
use crate::metrics::Metrics;
use crate::store::{CallerIdRest, RouteOutcome, Store};
use crate::sync::lock;

/// The window a caller ID's answer rate is judged over.
pub const CALLER_ID_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Route outcomes older than this are deleted (the longest window that reads them
/// is `dialer.quality_window`, at most 7 days).
const OUTCOME_KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

/// The caller ID a call shows, from a `[[caller_ids]]` pool.
#[derive(Debug, Clone)]
pub(super) struct ShownCallerId {
    pub(super) pool: String,
    pub(super) number: String,
    /// The trunk's `from` with the number as its user part.
    pub(super) from: String,
}

/// What an attempt showed of the callee, from its progress.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seen {
    pub(super) rang: bool,
    pub(super) answered: bool,
}

/// A channel of a trunk held in the database for this call; dropping it gives the
/// channel back (from a task of its own). If the instance dies the slot's lease runs
/// out and another instance may take it.
pub(super) struct SharedSlot {
    store: Store,
    trunk: String,
    slot: i64,
    holder: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: the lease runs out
        };
        let store = self.store.clone();
        let (trunk, slot, holder) = (
            std::mem::take(&mut self.trunk),
            self.slot,
            std::mem::take(&mut self.holder),
        );
        rt.spawn(async move {
            if let Err(e) = store.release_trunk_slot(&trunk, slot, &holder).await {
                tracing::warn!(trunk, slot, error = %e, "cannot give back a shared trunk slot; its lease will run out");
            }
        });
    }
}

fn country_of(number: &str) -> String {
    PhoneNumber::from_trusted(number.to_owned()).country_code()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Dialer {
    pub(super) fn trunk_settings(&self, name: &str) -> Option<&TrunkSettings> {
        self.settings.trunks.iter().find(|t| t.name == name)
    }

    /// Whether trunk channels are counted in the database (several instances on
    /// one PostgreSQL) rather than in this process alone.
    pub(super) fn shared_slots(&self) -> bool {
        self.store.backend() == crate::store::Backend::Postgres
    }

    /// The trunks for `number` in the order to try them: as the board gives them
    /// (`priority`), or by quality with `routing = "quality"`.
    pub(super) async fn order_routes(&self, number: &str, routes: Vec<String>) -> Vec<String> {
        let dialer = &self.settings.dialer;
        if dialer.routing != RoutingMode::Quality || routes.len() < 2 {
            return routes;
        }
        let since = domain::now_ms() - millis(dialer.quality_window);
        let tallies = match self.store.route_tallies(&country_of(number), since).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read route answer rates; routing by priority");
                return routes;
            }
        };
        let snapshot = self.board.snapshot();
        let candidates: Vec<Candidate> = routes
            .iter()
            .map(|name| {
                let t = tallies.iter().find(|t| &t.key == name);
                Candidate {
                    name: name.clone(),
                    usable: snapshot.iter().any(|s| &s.name == name && s.usable()),
                    priority: self.trunk_settings(name).map_or(u32::MAX, |t| t.priority),
                    cost_per_minute: self
                        .trunk_settings(name)
                        .and_then(|t| t.cost_per_minute)
                        .unwrap_or(0.0),
                    stats: RouteStats {
                        calls: t.map_or(0, |t| t.calls.max(0) as u64),
                        answered: t.map_or(0, |t| t.answered.max(0) as u64),
                    },
                }
            })
            .collect();
        let order = order_by_quality(&candidates, self.draws.draw(), dialer.explore_share);
        tracing::debug!(order = ?order, "routes by quality");
        order
    }

    /// The caller ID a call to `number` through `trunk` shows, when a pool covers it
    /// and not all its numbers rest.
    pub(super) async fn caller_id_for(
        &self,
        number: &str,
        trunk: &TrunkSettings,
    ) -> Option<ShownCallerId> {
        let pool = self.settings.caller_id_pool(number, &trunk.name)?;
        let resting = self
            .store
            .resting_caller_ids(domain::now_ms())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read resting caller IDs; using the whole pool");
                Vec::new()
            });
        let name = pool.name();
        let turn = {
            let mut turns = lock(&self.turns);
            let t = turns.entry(name.clone()).or_insert(0);
            *t += 1;
            *t - 1
        };
        let Some(shown) = callerid::choose(&pool.numbers, &resting, turn) else {
            tracing::warn!(pool = %name, "every caller ID of the pool rests; showing the trunk's from");
            return None;
        };
        let Some(from) = callerid::from_with_caller_id(&trunk.from, shown) else {
            tracing::warn!(trunk = %trunk.name, "the trunk's from has no user part to put a caller ID in");
            return None;
        };
        Some(ShownCallerId {
            pool: name,
            number: shown.to_owned(),
            from,
        })
    }

    /// Records what an attempt through `trunk` achieved, and rests a caller ID of its
    /// pool whose answer rate fell well below the pool's. Figures are worth having but
    /// not worth failing a call for: errors are logged.
    pub(super) async fn note_outcome(
        &self,
        trunk: &str,
        number: &str,
        caller: Option<&ShownCallerId>,
        outcome: &AttemptOutcome,
        seen: Seen,
    ) {
        let answered = seen.answered;
        let reached = answered
            || seen.rang
            || matches!(outcome.status, CallStatus::Busy | CallStatus::NoAnswer)
            || (!outcome.failover && outcome.sip_code.is_some_and(|c| c >= 400));
        let country = country_of(number);
        note_metrics(&self.metrics, trunk, &country, caller, answered);
        let now = domain::now_ms();
        let record = RouteOutcome {
            at: now,
            trunk,
            country: &country,
            caller_id: caller.map(|c| c.number.as_str()),
            pool: caller.map(|c| c.pool.as_str()),
            answered,
            reached,
        };
        if let Err(e) = self.store.record_route_outcome(&record).await {
            tracing::warn!(error = %e, "cannot record the route outcome");
            return;
        }
        if let Some(c) = caller.filter(|_| reached) {
            self.rest_if_below(&c.pool, now).await;
        }
    }

    /// Rests the numbers of `pool_name` whose answer rate is well below the pool's.
    async fn rest_if_below(&self, pool_name: &str, now: i64) {
        let Some(pool) = self
            .settings
            .caller_ids
            .iter()
            .find(|p| p.name() == pool_name)
        else {
            return;
        };
        let since = now - millis(CALLER_ID_WINDOW);
        let (tallies, resting) = match tokio::try_join!(
            self.store.caller_id_tallies(Some(pool_name), since),
            self.store.resting_caller_ids(now)
        ) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read caller ID answer rates");
                return;
            }
        };
        let stats = |calls: i64, answered: i64| RouteStats {
            calls: calls.max(0) as u64,
            answered: answered.max(0) as u64,
        };
        let pool_stats = stats(
            tallies.iter().map(|t| t.calls).sum(),
            tallies.iter().map(|t| t.answered).sum(),
        );
        for t in &tallies {
            let own = stats(t.calls, t.answered);
            if resting.contains(&t.key)
                || !callerid::should_rest(own, pool_stats, pool.rest_below, pool.rest_min_calls)
            {
                continue;
            }
            let rest = CallerIdRest {
                number: t.key.clone(),
                pool: pool_name.to_owned(),
                rested_at: now,
                resting_until: now.saturating_add(millis(pool.rest_time)),
                answer_rate: own.answer_rate(),
                pool_rate: pool_stats.answer_rate(),
            };
            match self.store.rest_caller_id(&rest).await {
                Ok(()) => {
                    tracing::warn!(
                        pool = pool_name,
                        caller_id = %rest.number,
                        answer_rate = rest.answer_rate,
                        pool_rate = rest.pool_rate,
                        calls = own.calls,
                        until = %domain::format_ms(rest.resting_until),
                        "caller ID rested: its answer rate is well below its pool's (spam-labelled?)"
                    );
                    self.metrics
                        .routing
                        .caller_id_rested
                        .get_or_create(&crate::metrics::routing::PoolLabel {
                            pool: pool_name.to_owned(),
                        })
                        .inc();
                }
                Err(e) => tracing::warn!(error = %e, "cannot rest a caller ID"),
            }
        }
    }

    /// Takes a channel of `trunk` in the database for `call_id` (PostgreSQL);
    /// `Ok(None)` when every channel is held by some instance.
    pub(super) async fn take_shared_slot(
        &self,
        trunk: &TrunkSettings,
        call_id: &str,
    ) -> Result<Option<SharedSlot>, crate::store::StoreError> {
        self.slots_ready
            .get_or_try_init(|| async {
                for t in &self.settings.trunks {
                    self.store
                        .ensure_trunk_slots(&t.name, t.max_concurrent_calls)
                        .await?;
                }
                Ok::<(), crate::store::StoreError>(())
            })
            .await?;
        let now = domain::now_ms();
        let slot = self
            .store
            .take_trunk_slot(
                &trunk.name,
                trunk.max_concurrent_calls,
                &self.instance,
                call_id,
                now,
                now + self.lease_ms(),
            )
            .await?;
        Ok(slot.map(|slot| SharedSlot {
            store: self.store.clone(),
            trunk: trunk.name.clone(),
            slot,
            holder: self.instance.clone(),
        }))
    }

    /// The E.164 prefixes a queued call may have to be claimable now: those of trunks
    /// with room here and, on PostgreSQL, a channel no instance holds. `None`: no
    /// filter (a trunk that carries every number has room).
    pub(super) async fn claimable_prefixes(&self) -> Option<Vec<String>> {
        let local = self.board.claimable_prefixes();
        if !self.shared_slots() {
            return local;
        }
        let held: HashMap<String, i64> = match self.store.held_trunk_slots(domain::now_ms()).await {
            Ok(h) => h.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read shared trunk slots");
                return local;
            }
        };
        let full: HashSet<&str> = self
            .settings
            .trunks
            .iter()
            .filter(|t| {
                held.get(&t.name).copied().unwrap_or(0) >= i64::from(t.max_concurrent_calls)
            })
            .map(|t| t.name.as_str())
            .collect();
        if full.is_empty() {
            return local;
        }
        let mut prefixes = Vec::new();
        for snap in self.board.snapshot() {
            if full.contains(snap.name.as_str()) || snap.active_calls >= snap.max_concurrent_calls {
                continue;
            }
            let Some(t) = self.trunk_settings(&snap.name) else {
                continue;
            };
            if t.prefixes.is_empty() {
                return None;
            }
            prefixes.extend(t.prefixes.iter().cloned());
        }
        Some(prefixes)
    }

    /// Keeps this instance's shared trunk slots, refreshes the answer-rate gauges
    /// and forgets old outcomes (with the lease upkeep).
    pub(super) async fn routing_upkeep(&self, lease_until: i64) {
        if self.shared_slots() {
            if let Err(e) = self
                .store
                .renew_trunk_slots(&self.instance, lease_until)
                .await
            {
                tracing::warn!(error = %e, "cannot renew shared trunk slots");
            }
        }
        let now = domain::now_ms();
        let since = now - millis(self.settings.dialer.quality_window);
        match self.store.all_route_tallies(since).await {
            Ok(all) => {
                for t in all {
                    let rate = RouteStats {
                        calls: t.calls.max(0) as u64,
                        answered: t.answered.max(0) as u64,
                    }
                    .answer_rate();
                    self.metrics
                        .routing
                        .route_answer_rate
                        .get_or_create(&crate::metrics::routing::TrunkCountryLabel {
                            trunk: t.trunk,
                            country: t.country,
                        })
                        .set(rate);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read route answer rates"),
        }
        let prune_due = {
            let mut last = lock(&self.last_prune);
            let due = last.is_none_or(|at| at.elapsed() > Duration::from_secs(3600));
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if prune_due {
            if let Err(e) = self
                .store
                .prune_route_outcomes(now - millis(OUTCOME_KEEP))
                .await
            {
                tracing::warn!(error = %e, "cannot prune old route outcomes");
            }
        }
    }
}

fn note_metrics(
    metrics: &Metrics,
    trunk: &str,
    country: &str,
    caller: Option<&ShownCallerId>,
    answered: bool,
) {
    let label = crate::metrics::routing::TrunkCountryLabel {
        trunk: trunk.to_owned(),
        country: country.to_owned(),
    };
    metrics.routing.route_calls.get_or_create(&label).inc();
    if answered {
        metrics.routing.route_answered.get_or_create(&label).inc();
    }
    if let Some(c) = caller {
        metrics
            .routing
            .caller_id_calls
            .get_or_create(&crate::metrics::routing::CallerIdLabel {
                pool: c.pool.clone(),
                caller_id: c.number.clone(),
            })
            .inc();
    }
}
