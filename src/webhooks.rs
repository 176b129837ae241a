//! Webhook delivery: a worker drains the persistent outbox, signs each body
//! (`Otpdial-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">`), and
//! retries non-2xx answers with exponential backoff, at most 5 tries. Rows
//! survive restarts; a lease keeps two instances from sending one twice at
//! the same time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ExposeSecret, SecretString};
use crate::domain;
use crate::egress::{check_url, resolver_for, TargetPolicy};
use crate::metrics::Metrics;
use crate::store::{Store, WebhookJob};
use crate::verify::{VerificationView, Verifier};

/// Tries per webhook before it is given up.
pub const MAX_TRIES: i64 = 5;
const LEASE_MS: i64 = 60_000;
const POLL: Duration = Duration::from_millis(250);

#[derive(serde::Serialize)]
struct Body<'a> {
    event: &'a str,
    verification: &'a VerificationView,
}

/// `t=<unix>,v1=<hex>` over `"<unix>.<body>"` (see [`crate::signing`]).
pub fn signature(secret: &[u8], unix: i64, body: &[u8]) -> String {
    crate::signing::sign(secret, unix, body)
}

pub struct WebhookWorker {
    store: Store,
    verifier: Verifier,
    secret: SecretString,
    backoff: Duration,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    targets: TargetPolicy,
}

impl WebhookWorker {
    pub fn new(
        store: Store,
        verifier: Verifier,
        secret: SecretString,
        backoff: Duration,
        metrics: Arc<Metrics>,
        targets: TargetPolicy,
    ) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("otpdial/", env!("CARGO_PKG_VERSION")));
        if let Some(resolver) = resolver_for(targets) {
            http = http.dns_resolver(resolver);
        }
        let http = http.build()?;
        Ok(Self {
            store,
            verifier,
            secret,
            backoff,
            http,
            metrics,
            targets,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let delivered = match self.deliver_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "webhook outbox failed");
                    0
                }
            };
            if delivered > 0 {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends every due webhook once; returns how many were tried.
    pub async fn deliver_due(&self) -> anyhow::Result<usize> {
        let now = domain::now_ms();
        let jobs = self.store.claim_webhooks(now, now + LEASE_MS, 20).await?;
        let n = jobs.len();
        for job in jobs {
            self.deliver(job).await?;
        }
        Ok(n)
    }

    async fn deliver(&self, job: WebhookJob) -> anyhow::Result<()> {
        let payload = match job.payload {
            Some(p) => p,
            None => {
                let view = self.verifier.view(&job.verification_id).await?;
                let body = serde_json::to_string(&Body {
                    event: &job.event,
                    verification: &view,
                })?;
                self.store.save_webhook_payload(&job.id, &body).await?;
                body
            }
        };
        let unix = domain::now_ms() / 1000;
        let sig = signature(
            self.secret.expose_secret().as_bytes(),
            unix,
            payload.as_bytes(),
        );
        let tries = job.attempts + 1;
        // Checked again at delivery: the rules may have tightened since the
        // start, and a name may now resolve elsewhere.
        if let Err(why) = check_url(&job.url, self.targets).await {
            tracing::warn!(webhook = %job.id, event = %job.event, %why, "webhook target refused");
            self.metrics.webhook("refused");
            self.store
                .webhook_failed(&job.id, MAX_TRIES, None, &format!("target refused: {why}"))
                .await?;
            return Ok(());
        }
        let result = self
            .http
            .post(&job.url)
            .header("content-type", "application/json")
            .header("Otpdial-Signature", sig)
            .header("Otpdial-Event", &job.event)
            .body(payload)
            .send()
            .await;
        let error = match result {
            Ok(resp) if resp.status().is_success() => {
                self.store
                    .webhook_delivered(&job.id, tries, domain::now_ms())
                    .await?;
                self.metrics.webhook("delivered");
                return Ok(());
            }
            Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
            Err(e) => format!("request failed: {}", e.without_url()),
        };
        let next = if tries >= MAX_TRIES {
            tracing::warn!(webhook = %job.id, event = %job.event, error, "webhook given up after {MAX_TRIES} tries");
            self.metrics.webhook("dead");
            None
        } else {
            let delay = self.backoff.saturating_mul(1 << (tries - 1).clamp(0, 16));
            self.metrics.webhook("retry");
            Some(domain::now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
        };
        self.store
            .webhook_failed(&job.id, tries, next, &error)
            .await?;
        Ok(())
    }
}
