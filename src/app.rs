//! Builds and wires the parts: store, verification service, SIP endpoint,
//! RTP pacer, call engine, dialer and HTTP API. `start` is what `serve`,
//! `demo` and the integration tests all call.

mod sip_settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiKey, AppState};
use crate::call::CallEngine;
use crate::config::{Settings, TrunkSettings};
use crate::dialer::Dialer;
use crate::media::{Pacer, PacerOptions, PromptLibrary};
use crate::metrics::Metrics;
use crate::sip_io::SipEndpoint;
use crate::store::Store;
use crate::trunks::TrunkBoard;
use crate::verify::{CodeKeys, Verifier};
use crate::webhooks::WebhookWorker;

/// A running gateway.
pub struct RunningApp {
    pub http_addr: SocketAddr,
    /// The database URL this instance runs on.
    pub store_url: String,
    pub sip_addr: SocketAddr,
    pub store: Store,
    pub dialer: Arc<Dialer>,
    pub verifier: Verifier,
    pub trunks: Arc<TrunkBoard>,
    /// Cancelled first on stop: no new calls, `/readyz` answers 503 while calls drain.
    drain: CancellationToken,
    /// Cancelled once the calls are drained: HTTP and the background tasks end.
    shutdown: CancellationToken,
    http: JoinHandle<()>,
    dialer_task: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    engine: Arc<CallEngine>,
    /// The SIP endpoint the engine uses, for the trunks' unregistration at shutdown.
    sip: SipEndpoint,
}

/// How long a graceful stop waits for the registrars to answer REGISTER `Expires: 0`
/// (digest challenge included); what is left unanswered expires on its own.
const UNREGISTER_WITHIN: Duration = Duration::from_secs(2);

/// Whether `start` also runs the dialer loop. Tests that drive the dialer
/// step by step (`Dialer::claim_and_run_one`) turn it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialerMode {
    Background,
    Manual,
}

pub async fn start(settings: Settings, mode: DialerMode) -> anyhow::Result<RunningApp> {
    let settings = Arc::new(settings);
    let store = Store::connect(
        &settings.database.url,
        settings.database.max_connections,
        settings.database.acquire_timeout,
    )
    .await
    .with_context(|| {
        format!(
            "cannot open database {}",
            crate::config::masked_url(&settings.database.url)
        )
    })?;
    let schema = store.migrate().await.with_context(|| {
        format!(
            "database {}",
            crate::config::masked_url(&settings.database.url)
        )
    })?;
    tracing::info!("database {}", schema.describe());

    let keys = CodeKeys::load(&settings, &store).await?;

    let prompts = load_prompts(&settings)?;
    let locales = prompts.locales();
    let bind_locales: Vec<String> = prompts
        .packs()
        .filter(|p| p.has_bind())
        .map(|p| p.locale().to_owned())
        .collect();
    check_locales(&settings, &locales)?;
    let without_cost = settings.trunks_without_cost();
    if !without_cost.is_empty() {
        tracing::info!(
            trunks = %without_cost.join(", "),
            "routing = \"quality\": these trunks have no cost_per_minute and count as cost 0"
        );
    }

    let metrics = Metrics::new();
    let (sip, external_ip) = sip_endpoint(&settings, settings.trunks.first()).await?;
    let sip_addr = sip.local_addr();
    let registrations = sip.clone();
    let pacer = Pacer::start_with(PacerOptions {
        realtime_priority: settings.media.realtime_priority,
        ..PacerOptions::default()
    })
    .context("cannot start the RTP pacer thread")?;
    let engine = Arc::new(
        CallEngine::new(
            sip,
            pacer,
            Arc::new(prompts),
            settings.sip.rtp_ports,
            external_ip,
        )
        .with_metrics(metrics.clone())
        .with_resolver(crate::dns::SipResolver::from_settings(&settings.sip)),
    );
    engine
        .start_trunks(&settings.trunks)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let board = Arc::new(
        TrunkBoard::new(
            &settings.trunks,
            engine.trunk_status_map(),
            settings.dialer.max_concurrent_calls,
        )
        .with_dns(engine.dns_status_map()),
    );

    let wake = Arc::new(Notify::new());
    let cancel_wake = Arc::new(Notify::new());
    crate::collectors::register(
        &metrics,
        engine.pacer_stats(),
        engine.sip_stats(),
        board.clone(),
    );
    let verifier = Verifier::new(
        store.clone(),
        settings.clone(),
        keys.clone(),
        locales,
        wake.clone(),
        cancel_wake.clone(),
        metrics.clone(),
    )
    .with_bind_locales(bind_locales);
    let keys_for_canaries = keys.clone();
    let dialer = Arc::new(Dialer::new(
        store.clone(),
        keys.clone(),
        engine.clone(),
        board.clone(),
        settings.clone(),
        wake,
        cancel_wake,
        metrics.clone(),
        crate::risk::RiskHook::from_settings(&settings.risk)?,
    ));
    let drain = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let mut background = Vec::new();
    background.push(tokio::spawn(housekeeping(
        store.clone(),
        settings
            .limits
            .wrong_checks_per_user
            .per
            .max(Duration::from_secs(24 * 3600)),
        shutdown.clone(),
    )));
    match settings.webhooks.secret.clone() {
        Some(secret) => {
            let worker = WebhookWorker::new(
                store.clone(),
                verifier.clone(),
                secret,
                settings.webhooks.backoff,
                metrics.clone(),
                settings.webhooks.targets(),
            )?;
            background.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        None => tracing::info!(
            env = %settings.webhooks.secret_env,
            "webhooks off: no signing secret in the environment"
        ),
    }
    background.extend(crate::canary::spawn(
        crate::canary::CanaryDeps {
            settings: settings.clone(),
            store: store.clone(),
            keys: keys_for_canaries,
            engine: engine.clone(),
            board: board.clone(),
            metrics: metrics.clone(),
            instance: dialer.instance().to_string(),
        },
        // Canary runs are calls: none start once draining begins.
        &drain,
    )?);
    match crate::retention::RetentionPolicy::from_settings(&settings.database) {
        Some(policy) => background.push(tokio::spawn(crate::retention::run(
            store.clone(),
            keys.clone(),
            policy,
            metrics.clone(),
            shutdown.clone(),
        ))),
        None => tracing::warn!("database.retention = 0: nothing is ever purged"),
    }
    background.push(tokio::spawn(
        dialer.clone().watch_cancellations(shutdown.clone()),
    ));
    background.push(tokio::spawn(
        dialer.clone().maintain_leases(shutdown.clone()),
    ));
    let dialer_task = match mode {
        DialerMode::Background => Some(tokio::spawn(dialer.clone().run(drain.clone()))),
        DialerMode::Manual => None,
    };

    let state = AppState {
        verifier: verifier.clone(),
        store: store.clone(),
        api_keys: Arc::new(ApiKey::from_settings(&settings.api.keys)),
        settings: settings.clone(),
        trunks: board.clone(),
        metrics,
        qa: qa_registrations(engine.qa_bindings()),
        draining: drain.clone(),
    };
    let listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", settings.http.listen))?;
    let http_addr = listener.local_addr()?;
    let router = api::router(state);
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(http = %http_addr, sip = %sip_addr, trunks = settings.trunks.len(), "otpdial running");
    Ok(RunningApp {
        http_addr,
        store_url: settings.database.url.clone(),
        sip_addr,
        store,
        dialer,
        verifier,
        trunks: board,
        drain,
        shutdown,
        http,
        dialer_task,
        background,
        engine,
        sip: registrations,
    })
}

/// The prompt packs `[prompts] dir` holds, or the built-in ones.
pub fn load_prompts(settings: &Settings) -> anyhow::Result<PromptLibrary> {
    Ok(match &settings.prompts.dir {
        Some(dir) => PromptLibrary::load_dir(dir)
            .with_context(|| format!("cannot load prompt packs from {}", dir.display()))?,
        None => PromptLibrary::builtin(),
    })
}

/// Every locale the settings name has a prompt pack among `locales`: `default_locale`,
/// each `locale_by_prefix` value and each canary's `locale`. `serve` and `config check`
/// refuse the same settings with the same message, naming the key.
pub fn check_locales(settings: &Settings, locales: &[String]) -> anyhow::Result<()> {
    if !locales.contains(&settings.verification.default_locale) {
        anyhow::bail!(
            "config key `verification.default_locale`: no prompt pack {:?} (installed: {})",
            settings.verification.default_locale,
            locales.join(", ")
        );
    }
    for (prefix, locale) in &settings.verification.locale_by_prefix {
        if !locales.contains(locale) {
            anyhow::bail!(
                "config key `verification.locale_by_prefix.\"{prefix}\"`: no prompt pack {locale:?} (installed: {})",
                locales.join(", ")
            );
        }
    }
    for (i, c) in settings.canaries.iter().enumerate() {
        if !c.locale.is_empty() && !locales.contains(&c.locale) {
            anyhow::bail!(
                "config key `canaries[{i}].locale`: no prompt pack {:?} (installed: {})",
                c.locale,
                locales.join(", ")
            );
        }
    }
    Ok(())
}

impl RunningApp {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Graceful stop in two steps. Draining: no new calls are claimed, calls in
    /// progress finish (up to `[dialer] shutdown_grace`), while the API keeps answering
    /// (`/readyz` 503 `draining`, so a load balancer moves traffic away) and this
    /// instance keeps renewing its calls' leases, so no other instance takes them over.
    /// Then HTTP and the background tasks stop, and the trunks unregister (bounded by
    /// [`UNREGISTER_WITHIN`]).
    pub async fn stop(self) {
        self.drain.cancel();
        if let Some(t) = self.dialer_task {
            let _ = t.await;
        }
        self.shutdown.cancel();
        let _ = self.http.await;
        for task in self.background {
            let _ = task.await;
        }
        if !self.sip.unregister_trunks(UNREGISTER_WITHIN).await {
            tracing::warn!(within = ?UNREGISTER_WITHIN, "not every trunk was unregistered in time");
        }
        self.engine.shutdown().await;
        self.store.close().await;
    }
}

/// Periodic store upkeep: expires pending verifications whose time is up
/// (so their webhooks go out even if nobody reads them).
async fn housekeeping(store: Store, keep_wrong_checks: Duration, shutdown: CancellationToken) {
    let keep_ms = i64::try_from(keep_wrong_checks.as_millis()).unwrap_or(i64::MAX);
    for round in 0u64.. {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = crate::domain::now_ms();
        if let Err(e) = store.expire_due(now).await {
            tracing::warn!(error = %e, "expiring verifications failed");
        }
        // Once a minute: wrong checks older than the guard's window.
        if round % 30 == 0 {
            if let Err(e) = store.prune_wrong_checks(now.saturating_sub(keep_ms)).await {
                tracing::warn!(error = %e, "pruning wrong checks failed");
            }
        }
    }
}

/// The API's read model of the QA registrar: the registrations that can be called now
/// (not expired, their TCP/TLS connection still open), in the API's own terms.
fn qa_registrations(bindings: crate::sip_io::QaBindingMap) -> api::QaRegistrations {
    Arc::new(move || {
        let now = std::time::Instant::now();
        crate::sync::lock(&bindings)
            .iter()
            .filter(|(_, b)| b.expires_at > now && !b.flow_closed)
            .map(|(user, b)| {
                let registration = api::QaRegistration {
                    contact: b.contact.clone(),
                    source: format!(
                        "{}:{}",
                        b.transport.via_name().to_ascii_lowercase(),
                        b.source
                    ),
                    expires_in: b.expires_at.duration_since(now),
                };
                (user.clone(), registration)
            })
            .collect()
    })
}

/// Runs until `shutdown` resolves (Ctrl-C / SIGTERM for `serve`).
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = start(settings, DialerMode::Background).await?;
    shutdown.await;
    tracing::info!("shutting down: no new calls, waiting for calls in progress");
    app.stop().await;
    Ok(())
}

/// The SIP endpoint as `serve` and the ops commands set it up, and the IP
/// to announce in SDP (`sip.external_address`, if set). Via/Contact must
/// name an address the trunk can reach: without an external_address, a
/// wildcard listener advertises the address of the interface that routes to
/// `route_to` (the first trunk for `serve`).
pub(crate) async fn sip_endpoint(
    settings: &Settings,
    route_to: Option<&TrunkSettings>,
) -> anyhow::Result<(SipEndpoint, Option<IpAddr>)> {
    let external = settings.sip.external_address.trim();
    let external_ip = if external.is_empty() {
        None
    } else {
        Some(resolve_ip(external).await.with_context(|| {
            format!("config key `sip.external_address`: cannot resolve {external:?}")
        })?)
    };
    let advertised = if !external.is_empty() {
        Some(external.to_string())
    } else if settings.sip.listen.ip().is_unspecified() {
        match route_to {
            Some(t) => Some(advertised_towards(settings, t).await?.to_string()),
            None => None,
        }
    } else {
        None
    };
    let options = crate::sip_io::SipOptions {
        server_header: settings.sip.server_header_value(),
        policy: sip_settings::policy(&settings.sip),
        registrar: sip_settings::registrar(&settings.qa),
        inbound: crate::canary::inbound_config(settings),
    };
    let sip = SipEndpoint::bind(settings.sip.listen, advertised, options)
        .await
        .with_context(|| format!("cannot bind SIP on {}", settings.sip.listen))?;
    Ok((sip, external_ip))
}

/// The local address that routes to trunk `first`'s proxy, or when its name does not
/// resolve, to the first other trunk's that does.
async fn advertised_towards(settings: &Settings, first: &TrunkSettings) -> anyhow::Result<IpAddr> {
    let resolver = crate::dns::SipResolver::from_settings(&settings.sip);
    let others = settings.trunks.iter().filter(|t| t.name != first.name);
    let mut first_error = None;
    for t in std::iter::once(first).chain(others) {
        let target = match resolver.resolve(&t.proxy).await {
            Ok(r) => r.targets[0].addr,
            Err(e) => {
                tracing::warn!(trunk = %t.name, error = %e, "trunk proxy does not resolve");
                first_error.get_or_insert_with(|| format!("trunk {}: {e}", t.name));
                continue;
            }
        };
        return crate::call::route_source(target).with_context(|| {
            format!(
                "cannot find the local address that routes to trunk {}",
                t.name
            )
        });
    }
    anyhow::bail!(
        "sip.listen is a wildcard address and no trunk proxy resolves to tell which local address to advertise ({}); set sip.external_address",
        first_error.unwrap_or_default()
    )
}

async fn resolve_ip(host: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let mut addrs = tokio::net::lookup_host((host, 0)).await?;
    addrs
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| anyhow::anyhow!("no address"))
}
