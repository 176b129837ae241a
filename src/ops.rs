//! Operator commands that talk SIP without the API or the database:
//! `otpdial call` (one call now, prints the SIP outcome) and `otpdial trunk check`
//! (REGISTER or OPTIONS to each trunk, prints reachability, RTT and the auth result).
//! Builds its own SIP endpoint, pacer and call engine from the settings; depends on
//! `call`, `sip_io`, `media`, `config`, never on `api`/`store`/`dialer`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::call::{trunk_config, AttemptOutcome, CallEngine, Hangup, PlaceCall, Progress};
use crate::config::{Settings, TrunkSettings};
use crate::dns::{DnsError, Resolution, SipResolver};
use crate::domain::OtpCode;
use crate::media::{Pacer, PromptLibrary};
use crate::sip::{ProbeKind, ProbeResult};
use crate::trunks::TrunkBoard;

/// Longer than a REGISTER/OPTIONS can take (Timer F = 32 s) plus one auth round.
const PROBE_WAIT: Duration = Duration::from_secs(70);

/// What `otpdial call` asks for.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// E.164 number or a `sip:` URI.
    pub to: String,
    /// Digits to read; None = random, `verification.code_length` long.
    pub code: Option<String>,
    pub locale: Option<String>,
    /// Trunk name; None = the first trunk (by priority) whose prefixes match.
    pub trunk: Option<String>,
}

/// How one `otpdial call` went.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub trunk: String,
    pub code: String,
    pub progress: Vec<Progress>,
    pub outcome: AttemptOutcome,
    /// The registration attempted first for `register = true` trunks.
    pub registration: Option<ProbeResult>,
}

impl CallReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "trunk:        {}", self.trunk);
        if let Some(r) = &self.registration {
            let _ = writeln!(s, "registration: {}", describe_probe(r));
        }
        let _ = writeln!(s, "code:         {}", self.code);
        for p in &self.progress {
            let _ = writeln!(s, "progress:     {p:?}");
        }
        let o = &self.outcome;
        let _ = writeln!(
            s,
            "sip status:   {}",
            o.sip_code.map_or("none".to_string(), |c| c.to_string())
        );
        let _ = writeln!(s, "call status:  {}", o.status.as_str());
        let _ = writeln!(s, "times played: {}", o.times_played);
        if let Some(r) = o.attempt_reason() {
            let _ = writeln!(s, "reason:       {r}");
        }
        if o.failover {
            let _ = writeln!(s, "failover:     the dialer would try the next trunk");
        }
        s
    }

    /// The code was read at least once.
    pub fn success(&self) -> bool {
        self.outcome.times_played > 0
    }
}

/// One line about a probe, e.g. `REGISTER 200 in 3 ms, authenticated, expires 3600 s`.
pub fn describe_probe(r: &ProbeResult) -> String {
    let kind = match r.kind {
        ProbeKind::Register => "REGISTER",
        ProbeKind::Options => "OPTIONS",
    };
    let mut s = match (r.status, r.rtt) {
        (Some(st), Some(rtt)) => format!("{kind} {st} in {} ms", rtt.as_millis()),
        (Some(st), None) => format!("{kind} {st}"),
        _ => format!("{kind} unreachable (no response)"),
    };
    if r.authenticated {
        s.push_str(", authenticated");
    }
    if let Some(e) = r.expires {
        let _ = write!(s, ", expires {e} s");
    }
    s.push_str(if r.ok { ", OK" } else { ", FAILED" });
    if let Some(e) = &r.error {
        let _ = write!(s, ": {e}");
    }
    s
}

fn pick_trunk<'a>(settings: &'a Settings, req: &CallRequest) -> anyhow::Result<&'a TrunkSettings> {
    if let Some(name) = &req.trunk {
        return settings
            .trunks
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| anyhow::anyhow!("no trunk named {name:?} in the config"));
    }
    let mut candidates: Vec<&TrunkSettings> = settings
        .trunks
        .iter()
        .filter(|t| req.to.starts_with("sip:") || t.routes(&req.to))
        .collect();
    candidates.sort_by_key(|t| t.priority);
    candidates
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no trunk routes {}", req.to))
}

/// `otpdial call`: registers first if the trunk wants it, places one call, plays the
/// code, and reports what SIP said. Errors are configuration problems; every network
/// outcome is in the report.
pub async fn call(settings: &Settings, req: CallRequest) -> anyhow::Result<CallReport> {
    let trunk = pick_trunk(settings, &req)?;
    // The same rules as the API: 4 to 10 digits, generated from the CSPRNG
    // when not given.
    let code = match &req.code {
        Some(c) => OtpCode::parse(c).map_err(|e| anyhow::anyhow!("--code: {e}"))?,
        None => OtpCode::generate(settings.verification.code_length)?,
    };
    let locale = req
        .locale
        .clone()
        .unwrap_or_else(|| settings.verification.default_locale.clone());
    let prompts = match &settings.prompts.dir {
        Some(dir) => PromptLibrary::load_dir(dir)
            .with_context(|| format!("cannot load prompt packs from {}", dir.display()))?,
        None => PromptLibrary::builtin(),
    };
    if !prompts.locales().contains(&locale) {
        bail!("no prompt pack for locale {locale:?}");
    }
    let to = if req.to.starts_with("sip:") {
        req.to.clone()
    } else {
        crate::domain::PhoneNumber::parse(&req.to, settings.verification.region())
            .map_err(|e| anyhow::anyhow!("--to {:?}: {e}", req.to))?
            .to_string()
    };
    let (sip, external_ip) = crate::app::sip_endpoint(settings, Some(trunk)).await?;
    let resolver = SipResolver::from_settings(&settings.sip);
    let registration = if trunk.register {
        let targets = resolver
            .resolve(&trunk.proxy)
            .await
            .and_then(|r| r.reachable_from(&trunk.proxy.host, sip.local_addr().ip()))
            .with_context(|| format!("trunk {}", trunk.name))?;
        let mut rx = sip.add_trunk(trunk_config(trunk, &targets.targets[0], true))?;
        tokio::time::timeout(PROBE_WAIT, rx.recv())
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let pacer = Pacer::start().context("cannot start the RTP pacer thread")?;
    let engine = CallEngine::new(
        sip,
        pacer,
        Arc::new(prompts),
        settings.sip.rtp_ports,
        external_ip,
    )
    .with_resolver(resolver);
    let board = TrunkBoard::new(std::slice::from_ref(trunk), engine.trunk_status_map(), 1);
    let slot = board
        .try_slot(&trunk.name)
        .ok_or_else(|| anyhow::anyhow!("trunk {} allows no calls", trunk.name))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = engine
        .place(
            PlaceCall {
                to: &to,
                digits: code.digit_values(),
                locale: &locale,
                repeat: settings.verification.repeat,
                gate: if settings.verification.require_keypress {
                    crate::call::KeyGate::Keypress
                } else {
                    crate::call::KeyGate::Open
                },
                hangup: Hangup::default(),
            },
            slot,
            tx,
        )
        .await;
    engine.shutdown().await;
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    Ok(CallReport {
        trunk: trunk.name.clone(),
        // Printed for the person testing: it is what they should hear.
        code: String::from_utf8_lossy(code.expose()).into_owned(),
        progress,
        outcome,
        registration,
    })
}

/// One trunk's `otpdial trunk check`: where its proxy resolves (RFC 3263) and how the
/// REGISTER or OPTIONS to the first target went.
#[derive(Debug, Clone)]
pub struct TrunkCheck {
    pub name: String,
    pub targets: Result<Resolution, DnsError>,
    pub probe: ProbeResult,
}

impl TrunkCheck {
    /// The targets in order, one line each (none for an IP address), then the probe.
    pub fn render(&self) -> String {
        let mut s = String::new();
        match &self.targets {
            Ok(r) if r.ttl.is_none() => {}
            Ok(r) => {
                for (i, t) in r.targets.iter().enumerate() {
                    let _ = writeln!(s, "{}: target {}: {t}", self.name, i + 1);
                }
            }
            Err(e) => {
                let _ = writeln!(s, "{}: {e}", self.name);
            }
        }
        let _ = writeln!(s, "{}: {}", self.name, describe_probe(&self.probe));
        s
    }
}

/// `otpdial trunk check`: REGISTER for `register = true` trunks, else OPTIONS, all in
/// parallel; one result per trunk, in config order.
pub async fn trunk_check(
    settings: &Settings,
    name: Option<&str>,
) -> anyhow::Result<Vec<(String, ProbeResult)>> {
    Ok(trunk_check_targets(settings, name)
        .await?
        .into_iter()
        .map(|c| (c.name, c.probe))
        .collect())
}

fn no_probe(kind: ProbeKind, error: String) -> ProbeResult {
    ProbeResult {
        kind,
        status: None,
        rtt: None,
        authenticated: false,
        ok: false,
        expires: None,
        error: Some(error),
    }
}

/// [`trunk_check`] with each trunk's resolved targets. A trunk whose proxy does not
/// resolve gets a failed probe that names the DNS error.
pub async fn trunk_check_targets(
    settings: &Settings,
    name: Option<&str>,
) -> anyhow::Result<Vec<TrunkCheck>> {
    let trunks: Vec<&TrunkSettings> = settings
        .trunks
        .iter()
        .filter(|t| name.is_none_or(|n| n == t.name))
        .collect();
    if trunks.is_empty() {
        match name {
            Some(n) => bail!("no trunk named {n:?} in the config"),
            None => bail!("the config has no [[trunks]]"),
        }
    }
    let (sip, _) = crate::app::sip_endpoint(settings, trunks.first().copied()).await?;
    let resolver = SipResolver::from_settings(&settings.sip);
    let mut waits = Vec::new();
    for t in &trunks {
        let listen = sip.local_addr().ip();
        let targets = resolver
            .resolve(&t.proxy)
            .await
            .and_then(|r| r.reachable_from(&t.proxy.host, listen));
        let rx = match &targets {
            Ok(r) => Some(sip.add_trunk(trunk_config(t, &r.targets[0], true))?),
            Err(_) => None,
        };
        waits.push((t, targets, rx));
    }
    let mut out = Vec::new();
    for (t, targets, rx) in waits {
        let kind = if t.register {
            ProbeKind::Register
        } else {
            ProbeKind::Options
        };
        let probe = match (&targets, rx) {
            (Err(e), _) => no_probe(kind, format!("not sent: {e}")),
            (Ok(_), Some(mut rx)) => tokio::time::timeout(PROBE_WAIT, rx.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| no_probe(kind, "no result (SIP endpoint stopped?)".into())),
            (Ok(_), None) => no_probe(kind, "not sent".into()),
        };
        out.push(TrunkCheck {
            name: t.name.clone(),
            targets,
            probe,
        });
    }
    sip.shutdown().await;
    Ok(out)
}
