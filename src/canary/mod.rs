//! Canaries (SPEC §7 `[[canaries]]`, `[canary]`): scheduled calls through each trunk
//! with a fresh random code, heard and scored at the far end by the built-in test phone,
//! with alerts when a canary keeps failing.
//!
//! Pure parts: [`emodel`] (ITU-T G.107 rating and MOS), [`verdict`] (a run's result from
//! what both ends saw), [`health`] (`ok`/`failing` and when to alert).
//! May depend on `config`, `domain`, `store`, `call`, `sip_io`, `media`, `testphone`;
//! the API only reads what the store holds.

pub mod alerts;
pub mod answer;
pub mod emodel;
pub mod health;
pub mod matching;
pub mod runner;
pub mod verdict;

pub use health::{Alert, CanaryState, Health};
pub use verdict::{classify, CallerEnd, FarEnd, Heard, RunResult};

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::call::CallEngine;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::trunks::TrunkBoard;
use crate::verify::CodeKeys;

/// The keyed hash of a canary code (or of digits heard) for `number`: both ends compute
/// it, so a run and what was heard of it meet in the database without the code.
pub fn code_hash(keys: &CodeKeys, number: &str, digits: &[u8]) -> String {
    keys.hash(&format!("canary:{number}"), digits)
}

/// What the canaries need from the rest of the gateway.
pub struct CanaryDeps {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub keys: CodeKeys,
    pub engine: Arc<CallEngine>,
    pub board: Arc<TrunkBoard>,
    pub metrics: Arc<Metrics>,
    /// This instance's name (as the dialer's).
    pub instance: String,
}

/// Starts what the config asks for: the runner when there are `[[canaries]]`, the
/// answering side when there are `[canary] answer_numbers`, the alert worker when
/// there is an `alert_url`. Their tasks end with `shutdown`.
pub fn spawn(
    deps: CanaryDeps,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let reports = Arc::new(Notify::new());
    let s = &deps.settings;
    if let Some(incoming) = deps.engine.take_incoming() {
        let recognizer = Arc::new(crate::testphone::recognize::Recognizer::new(
            &deps.engine.prompt_library(),
        ));
        let answerer = Arc::new(answer::CanaryAnswerer {
            store: deps.store.clone(),
            keys: deps.keys.clone(),
            engine: deps.engine.clone(),
            recognizer,
            metrics: deps.metrics.clone(),
            instance: deps.instance.clone(),
            reports: reports.clone(),
            max_call: s.canary.max_call,
        });
        tasks.push(tokio::spawn(answerer.run(incoming, shutdown.clone())));
    }
    if !s.canaries.is_empty() {
        let runner = Arc::new(runner::CanaryRunner {
            store: deps.store.clone(),
            keys: deps.keys.clone(),
            engine: deps.engine.clone(),
            board: deps.board.clone(),
            settings: s.clone(),
            metrics: deps.metrics.clone(),
            instance: deps.instance.clone(),
            reports,
        });
        tasks.push(tokio::spawn(runner.run(shutdown.clone())));
    }
    if !s.canary.alert_url.trim().is_empty() {
        let secret = s
            .webhooks
            .secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("[canary] alert_url needs the webhook secret"))?;
        let worker = alerts::AlertWorker::new(
            deps.store.clone(),
            secret,
            s.webhooks.backoff,
            deps.metrics.clone(),
        )?;
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    Ok(tasks)
}

/// The user agent's inbound settings for `[canary] answer_numbers` (None when there are
/// none): each number also answers to its national form (`0` and the national number).
pub fn inbound_config(settings: &crate::config::Settings) -> Option<crate::sip::InboundConfig> {
    let c = &settings.canary;
    if c.answer_numbers.is_empty() {
        return None;
    }
    let numbers = c
        .answer_numbers
        .iter()
        .map(|n| {
            let number = crate::sip::InboundNumber::new(n);
            let national = crate::domain::PhoneNumber::parse(n, None)
                .ok()
                .and_then(|p| {
                    n.strip_prefix(&p.country_code())
                        .map(|nsn| format!("0{nsn}"))
                });
            match national {
                Some(alias) => number.with_alias(alias),
                None => number,
            }
        })
        .collect();
    Some(crate::sip::InboundConfig {
        numbers,
        max_calls: c.max_inbound_calls as usize,
    })
}
