//! What this instance holds: its leases kept alive, calls of dead instances taken
//! over, and its calls hung up when their verification stops being pending.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Dialer;
use crate::call::HangupCause;
use crate::domain::{self, CallReason};
use crate::store::Recovered;
use crate::sync::lock;

/// How often the calls in progress are checked against their
/// verifications, to hang up when another instance canceled or approved it.
const CANCEL_POLL: Duration = Duration::from_secs(1);

impl Dialer {
    /// Hangs up the calls of this instance whose verification stopped
    /// being pending (canceled through the API of any instance, approved,
    /// expired) or that are no longer this instance's (taken over after a
    /// lapsed lease). One query per second for all calls, not one per call.
    pub async fn watch_cancellations(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.cancel_wake.notified() => {}
                _ = tokio::time::sleep(CANCEL_POLL) => {}
                _ = shutdown.cancelled() => return,
            }
            if lock(&self.inflight).is_empty() {
                continue;
            }
            // Calls that started before the query are judged by it; one
            // that started after it is judged next time.
            let before: Vec<String> = lock(&self.inflight).keys().cloned().collect();
            match self.store.verifications_held_by(&self.instance).await {
                Ok(held) => {
                    let held: std::collections::HashSet<String> = held.into_iter().collect();
                    let inflight = lock(&self.inflight);
                    for id in before.iter().filter(|id| !held.contains(*id)) {
                        if let Some(h) = inflight.get(id) {
                            h.request(HangupCause::Canceled);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read verification statuses"),
            }
        }
    }

    /// Keeps this instance's leases alive and takes over calls whose lease
    /// ran out (at start-up, then every third of a lease). Runs until
    /// `shutdown`; the leases of calls still finishing then lapse on their
    /// own if the process dies.
    pub async fn maintain_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.dialer.lease / 3;
        loop {
            let now = domain::now_ms();
            let wait = match self
                .store
                .renew_leases(&self.instance, now + self.lease_ms())
                .await
            {
                Ok(_) => {
                    self.routing_upkeep(now + self.lease_ms()).await;
                    self.recover_once().await;
                    every
                }
                Err(e) => {
                    // Renew again soon: after an outage our leases must be
                    // back before another instance decides we are dead.
                    tracing::warn!(error = %e, "cannot renew call leases");
                    Duration::from_secs(1).min(every)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One take-over pass; returns what it did.
    pub async fn recover_once(&self) -> Vec<Recovered> {
        match self
            .store
            .recover_abandoned(&self.instance, domain::now_ms())
            .await
        {
            Ok(done) => {
                for r in &done {
                    match r {
                        Recovered::Failed { call_id } => {
                            tracing::warn!(call = %call_id, reason = CallReason::GatewayRestart.as_str(),
                                "took over a call whose instance died after dialling: ended failed");
                            self.metrics.recovered("failed");
                        }
                        Recovered::Requeued { call_id } => {
                            tracing::info!(call = %call_id,
                                "took over a call whose instance died before dialling: queued again");
                            self.metrics.recovered("requeued");
                        }
                    }
                }
                if done.iter().any(|r| matches!(r, Recovered::Requeued { .. })) {
                    self.wake.notify_one();
                }
                done
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take over abandoned calls");
                Vec::new()
            }
        }
    }
}
