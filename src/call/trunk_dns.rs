//! Trunk proxies through the DNS (RFC 3263): resolved per call (the resolver's cache
//! honours the TTLs), and for registration and OPTIONS followed by one task per trunk
//! that re-resolves when the records expire and moves the SIP driver to the new first
//! target, so a carrier's DNS change needs no restart.

use std::net::IpAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{trunk_config, CallEngine};
use crate::config::TrunkSettings;
use crate::dns::{DnsError, DnsStatusMap, DnsTarget, Resolution, SipResolver};
use crate::sip_io::SipEndpoint;
use crate::sync::lock;

/// Re-resolution no more often than this, whatever the TTL (a TTL of 0 would spin)…
const MIN_FOLLOW: Duration = Duration::from_secs(1);
/// …and at least this often, whatever the TTL.
const MAX_FOLLOW: Duration = Duration::from_secs(300);
/// After a failed resolution, the next try.
const RETRY_FOLLOW: Duration = Duration::from_secs(10);

impl CallEngine {
    /// The trunk's targets in the order to try them; the result is also kept for
    /// `/v1/trunks`.
    pub(super) async fn resolve_trunk(&self, t: &TrunkSettings) -> Result<Resolution, DnsError> {
        resolve_and_record(&self.resolver, &self.dns, t, self.sip.local_addr().ip()).await
    }

    /// Starts registration (`register = true`) and OPTIONS keepalive for each trunk.
    /// Call once after start-up; the state is then kept by the SIP driver. A trunk
    /// whose name does not resolve yet is added once it does (calls to it fail over
    /// meanwhile); a trunk given by name is re-resolved as its records expire.
    pub async fn start_trunks(&self, trunks: &[TrunkSettings]) -> Result<(), String> {
        for t in trunks {
            let current = match self.resolve_trunk(t).await {
                Ok(r) => {
                    let first = r.targets[0].clone();
                    // Outcomes are read through `trunk_status`; nobody waits on the channel.
                    self.sip
                        .add_trunk(trunk_config(t, &first, false))
                        .map_err(|e| format!("trunk {}: {e}", t.name))?;
                    if r.ttl.is_none() {
                        continue; // an IP address: nothing to follow
                    }
                    Some(first)
                }
                Err(e) => {
                    tracing::warn!(trunk = %t.name, error = %e, "trunk proxy does not resolve; registration and OPTIONS wait until it does");
                    None
                }
            };
            tokio::spawn(follow(
                Follower {
                    sip: self.sip.clone(),
                    resolver: self.resolver.clone(),
                    dns: self.dns.clone(),
                    trunk: t.clone(),
                },
                current,
                self.dns_followers.clone(),
            ));
        }
        Ok(())
    }
}

/// Resolves `t`'s proxy, keeps the targets our listener (`listen`) can reach, and
/// records the result for `/v1/trunks`.
async fn resolve_and_record(
    resolver: &SipResolver,
    dns: &DnsStatusMap,
    t: &TrunkSettings,
    listen: IpAddr,
) -> Result<Resolution, DnsError> {
    let result = resolver
        .resolve(&t.proxy)
        .await
        .and_then(|r| r.reachable_from(&t.proxy.host, listen));
    lock(dns).insert(t.name.clone(), result.clone());
    result
}

struct Follower {
    sip: SipEndpoint,
    resolver: SipResolver,
    dns: DnsStatusMap,
    trunk: TrunkSettings,
}

/// How long the records just used stay valid, within bounds.
fn next_wait(result: &Result<Resolution, DnsError>) -> Duration {
    match result {
        Ok(r) => r.ttl.unwrap_or(MAX_FOLLOW).clamp(MIN_FOLLOW, MAX_FOLLOW),
        Err(_) => RETRY_FOLLOW,
    }
}

/// Re-resolves the trunk's proxy when its records expire and moves registration and
/// OPTIONS to the new first target (or starts them, for a trunk that did not resolve
/// at start-up). Ends with `stop` or when the SIP endpoint is gone.
async fn follow(f: Follower, mut current: Option<DnsTarget>, stop: CancellationToken) {
    let name = f.trunk.name.clone();
    let mut wait = match lock(&f.dns).get(&name) {
        Some(last) => next_wait(last),
        None => RETRY_FOLLOW,
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let listen = f.sip.local_addr().ip();
        let result = resolve_and_record(&f.resolver, &f.dns, &f.trunk, listen).await;
        wait = next_wait(&result);
        let Ok(r) = result else { continue };
        let first = &r.targets[0];
        let sent = match &current {
            None => {
                tracing::info!(trunk = %name, target = %first, "trunk proxy resolves now; registration and OPTIONS start");
                f.sip
                    .add_trunk(trunk_config(&f.trunk, first, false))
                    .map(drop)
            }
            Some(c) if c.addr != first.addr || c.transport != first.transport => {
                tracing::info!(trunk = %name, from = %c, to = %first, "trunk proxy resolves elsewhere now; registration and OPTIONS follow");
                f.sip.set_trunk_destination(
                    &name,
                    first.addr,
                    super::route::sip_transport(first.transport),
                )
            }
            Some(_) => Ok(()),
        };
        if sent.is_err() {
            return; // the SIP endpoint stopped
        }
        current = Some(first.clone());
    }
}
